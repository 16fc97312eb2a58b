//! GET /admin, the operator's page, in a real headless Chromium driven over WebDriver
//! (chromedriver): after scripted load and a rollout, every panel shows data, nothing
//! comes from anywhere but the edge, and moving P on the page moves the dial.
//! Needs `chromium` and `chromedriver` (scripts/test installs them with apt as root).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use fantoccini::{ClientBuilder, Locator};
use reqwest::Method;
use serde_json::{Value, json};
use tandem_testkit::*;

fn on_path(candidates: &[&str]) -> String {
    for candidate in candidates {
        if Command::new(candidate)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return (*candidate).to_owned();
        }
    }
    panic!(
        "none of {candidates:?} on PATH: apt-get install chromium chromium-driver (scripts/test does)"
    );
}

/// chromedriver on a port it picks; killed when dropped.
struct Driver {
    child: std::process::Child,
    url: String,
}

impl Driver {
    fn start() -> Driver {
        let mut child = Command::new(on_path(&["chromedriver"]))
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let stdout = child.stdout.take().expect("its output");
        let port = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| {
                line.strip_prefix("ChromeDriver was started successfully on port ")
                    .map(|p| p.trim_end_matches('.').to_owned())
            })
            .expect("chromedriver says its port");
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn admin(http: &Http, method: Method, path: &str, body: Value) -> Reply {
    http.send(
        http.request(method, path)
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .header("content-type", "application/json")
            .body(body.to_string()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_page_shows_every_panel_and_moves_the_dial() {
    let stack = StackBuilder::edge().python_v2().start().await;
    let http = stack.http();
    // Scripted load: users, reads shadowed against a v2 that differs for some users,
    // and a rollout that takes a step.
    stack
        .python()
        .set(json!({"mismatch": {"field": "first_name", "value": "Shadowed", "every": 2}}));
    let mut ids = Vec::new();
    for _ in 0..30 {
        ids.push(http.create_user(&unique_email("page")).await);
    }
    admin(
        &http,
        Method::PUT,
        "/admin/shadow",
        json!({"fraction": 0.5}),
    )
    .await;
    // Routing is sticky by user: at P=90 only the users hashed into v2's 10 buckets go
    // to v2, and 30 users miss them all 4 % of the time (0.9^30), leaving the first check
    // without v2 calls forever. At P=50 that is 0.5^30, about one run in a billion.
    let rollout = admin(
        &http,
        Method::PUT,
        "/admin/rollout",
        json!({"steps": [50, 20], "intervalSeconds": 1, "minRequests": 5, "maxP99Ms": 2000}),
    )
    .await;
    assert_eq!(rollout.status, 200, "{}", rollout.text);
    // Polled with a deadline; on time-out the last states seen say why.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        for id in &ids {
            http.get(&format!("/users/{id}")).await;
        }
        let state: Value = admin(&http, Method::GET, "/admin/rollout", Value::Null)
            .await
            .json();
        let shadow: Value = admin(&http, Method::GET, "/admin/shadow", Value::Null)
            .await
            .json();
        if state["P"] == 20 && shadow["mismatched"].as_u64() > Some(0) {
            break;
        }
        if std::time::Instant::now() > deadline {
            let routing = admin(&http, Method::GET, "/admin/routing", Value::Null)
                .await
                .text;
            panic!(
                "the rollout did not take its step or shadows did not mismatch in 30 s:\n\
                 rollout {state:#}\nshadow {shadow:#}\nrouting {routing}"
            );
        }
    }

    let driver = Driver::start();
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": which(&on_path(&["chromium", "chromium-browser", "google-chrome"])),
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                // Every host but this one fails to resolve: nothing may come from a CDN.
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                "--window-size=1400,1900",
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let browser = ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a WebDriver session");
    browser.goto(&format!("{}/admin", http.base)).await.unwrap();
    browser
        .find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(ADMIN_TOKEN)
        .await
        .unwrap();
    browser
        .find(Locator::Css("#login button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // Every panel draws its data.
    let panels = eventually(Duration::from_secs(30), "every panel to show data", || async {
        let panels = browser
            .execute(
                "return [...document.querySelectorAll('[data-panel]')].map(p => [p.id, p.dataset.hasData === 'true']);",
                vec![],
            )
            .await
            .ok()?;
        let all = panels.as_array()?.iter().all(|p| p[1] == true);
        all.then_some(panels)
    })
    .await;
    assert_eq!(panels.as_array().unwrap().len(), 5, "{panels}");
    let drawn = browser
        .execute(
            "return ['p-chart','rate-chart','error-chart','p50-chart','p99-chart'].map(id => document.querySelectorAll('#' + id + ' polyline').length);",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        drawn
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n.as_u64() > Some(0)),
        "charts without lines: {drawn}"
    );
    let page_text = browser
        .find(Locator::Css("main"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page_text.contains("firstName"),
        "the most mismatched field is shown"
    );
    assert!(
        page_text.contains("advanced"),
        "the rollout history is shown"
    );

    // Moving P on the page moves the dial.
    let input = browser.find(Locator::Id("p-input")).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys("37").await.unwrap();
    browser
        .find(Locator::Css("#set-p button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "P=37 through the page", || async {
        let routing: Value = admin(&http, Method::GET, "/admin/routing", Value::Null)
            .await
            .json();
        (routing["P"] == 37).then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), "the page to show P=37", || async {
        let shown = browser
            .find(Locator::Id("p"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (shown == "37").then_some(())
    })
    .await;

    let png = browser.screenshot().await.unwrap();
    let shot = std::env::var("OPERATOR_PAGE_SCREENSHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| stack.dir.path().join("operator-page.png"));
    std::fs::write(&shot, png).unwrap();
    browser.close().await.unwrap();
    println!(
        "the operator page showed all 5 panels with data; P=37 set on it reached the dial; screenshot {}",
        shot.display()
    );
}

fn which(program: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .expect("sh runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
