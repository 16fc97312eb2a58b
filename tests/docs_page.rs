//! GET /docs renders an interactive page listing every endpoint in a real browser
//! (headless Chromium) with every host but this one unreachable: nothing comes from a CDN.
//! Needs `chromium` on PATH (scripts/test installs it with apt when run as root).

use std::process::Command;
use std::time::Duration;

use tandem_testkit::*;

fn chromium() -> String {
    for candidate in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new(candidate)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return candidate.to_owned();
        }
    }
    panic!("no Chromium on PATH: apt-get install chromium (scripts/test does this as root)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_page_renders_offline_and_lists_every_endpoint() {
    let stack = StackBuilder::edge().start().await;
    let url = format!(
        "http://127.0.0.1:{}/docs/",
        stack.addr(Service::Edge).port()
    );
    let profile = tempfile::tempdir().unwrap();
    let browser = chromium();
    let dom = tokio::task::spawn_blocking(move || {
        Command::new(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                // Every host but localhost fails to resolve: a CDN script would not load.
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                "--virtual-time-budget=15000",
                &format!("--user-data-dir={}", profile.path().display()),
                "--dump-dom",
                &url,
            ])
            .output()
            .expect("chromium runs")
    });
    let output = tokio::time::timeout(Duration::from_secs(120), dom)
        .await
        .expect("chromium finished within 2 minutes")
        .unwrap();
    let dom = String::from_utf8_lossy(&output.stdout);
    for path in [
        "/users",
        "/users/{userId}",
        "/orders",
        "/orders/{orderId}",
        "/orders/{orderId}/status",
        "/orders/{orderId}/details",
        "/health",
        "/admin/routing",
    ] {
        assert!(
            dom.contains(&format!(r#"data-path="{path}""#)),
            "the rendered page does not list {path}; page:\n{}",
            &dom[..dom.len().min(2000)]
        );
    }
}
