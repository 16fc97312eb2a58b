//! The strangler dial: P splits user traffic between v1 and v2 as configured, sticks each
//! user to one flavor, changes live (by file and by admin API, under load, dropping
//! nothing), and fails over when a flavor is unreachable. Upstreams that are too slow
//! give 504 within the deadline.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use tandem_testkit::*;

async fn count_creates(http: &Http, n: usize) -> (usize, usize) {
    let mut v1 = 0;
    for _ in 0..n {
        let reply = http.post("/users", &user_body(&unique_email("w"))).await;
        assert_eq!(reply.status, 201, "{}", reply.text);
        match reply.served_by() {
            "user-svc-v1" => v1 += 1,
            "user-svc-v2" => {}
            other => panic!("X-Served-By {other:?}"),
        }
    }
    (v1, n - v1)
}

async fn set_p(http: &Http, p: u8) -> Reply {
    http.send(
        http.request(Method::PUT, "/admin/routing")
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .header("content-type", "application/json")
            .body(json!({"P": p}).to_string()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p_splits_traffic_as_configured() {
    let stack = StackBuilder::edge().start().await;
    let http = &stack.http();
    // No routing file: P = 100.
    assert_eq!(count_creates(http, 50).await, (50, 0));
    assert_eq!(set_p(http, 0).await.status, 200);
    assert_eq!(count_creates(http, 50).await, (0, 50));

    assert_eq!(set_p(http, 50).await.status, 200);
    let (v1, _) = count_creates(http, 1000).await;
    // Binomial(1000, 0.5): sd ≈ 15.8; ±80 is more than 5 sd.
    assert!((420..=580).contains(&v1), "v1 served {v1} of 1000 at P=50");

    // Existing users at P=50: each sticks to one flavor, and both flavors get users.
    let mut ids = Vec::new();
    for _ in 0..60 {
        ids.push(http.create_user(&unique_email("s")).await);
    }
    let mut flavors = HashMap::new();
    for round in 0..3 {
        for id in &ids {
            let reply = http.get(&format!("/users/{id}")).await;
            assert_eq!(reply.status, 200);
            let flavor = reply.served_by().to_owned();
            if round == 0 {
                flavors.insert(id.clone(), flavor);
            } else {
                assert_eq!(
                    flavors[id], flavor,
                    "user {id} changed flavor at the same P"
                );
            }
        }
    }
    let on_v1 = flavors.values().filter(|f| *f == "user-svc-v1").count();
    assert!(on_v1 > 0 && on_v1 < 60, "{on_v1} of 60 users on v1");

    // Lowering P only moves users from v1 to v2.
    assert_eq!(set_p(http, 20).await.status, 200);
    for id in &ids {
        let now = http
            .get(&format!("/users/{id}"))
            .await
            .served_by()
            .to_owned();
        if now == "user-svc-v1" {
            assert_eq!(
                flavors[id], "user-svc-v1",
                "{id} moved from v2 to v1 when P went down"
            );
        }
    }

    // X-User-Version overrides the dial.
    let forced = http
        .send(
            http.request(Method::GET, &format!("/users/{}", ids[0]))
                .header("x-user-version", "v1"),
        )
        .await;
    assert_eq!(forced.served_by(), "user-svc-v1");
    let routing = http
        .send(
            http.request(Method::GET, "/admin/routing")
                .header("authorization", format!("Bearer {ADMIN_TOKEN}")),
        )
        .await;
    let view = routing.json();
    assert_eq!(view["P"], 20);
    assert!(
        view["flavors"]["v1"]["requests"].as_u64().unwrap() > 0,
        "{view}"
    );
    assert!(
        view["flavors"]["v2"]["requests"].as_u64().unwrap() > 0,
        "{view}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dial_follows_its_file_and_the_admin_api() {
    let stack = StackBuilder::edge().p(100).start().await;
    let http = &stack.http();
    let file = stack.routing_file();

    std::fs::write(&file, r#"{"P": 0}"#).unwrap();
    eventually(
        Duration::from_secs(5),
        "the edge to read P=0 from its file",
        || async {
            let reply = http.post("/users", &user_body(&unique_email("f"))).await;
            (reply.served_by() == "user-svc-v2").then_some(())
        },
    )
    .await;
    assert_eq!(count_creates(http, 20).await, (0, 20));

    // A broken file is ignored (and counted): the last good value stays.
    std::fs::write(&file, r#"{"P": "everything"}"#).unwrap();
    eventually(
        Duration::from_secs(5),
        "the edge to reject the broken file",
        || async {
            let metrics = http.get("/metrics").await.text;
            metrics
                .contains("tandem_edge_routing_file_rejections_total 1")
                .then_some(())
        },
    )
    .await;
    assert_eq!(count_creates(http, 20).await, (0, 20));
    std::fs::write(&file, r#"{"P": 100, "mode": "sticky"}"#).unwrap();
    eventually(Duration::from_secs(5), "P=100 from the file", || async {
        let reply = http.post("/users", &user_body(&unique_email("f"))).await;
        (reply.served_by() == "user-svc-v1").then_some(())
    })
    .await;

    // The admin API: token required, change is live and written back to the file.
    let no_token = http
        .send(
            http.request(Method::PUT, "/admin/routing")
                .header("content-type", "application/json")
                .body(r#"{"P": 30}"#),
        )
        .await;
    assert_eq!(
        (no_token.status, no_token.json()["code"].clone()),
        (401, json!("UNAUTHENTICATED"))
    );
    let wrong = http
        .send(
            http.request(Method::GET, "/admin/routing")
                .header("authorization", "Bearer not-the-token"),
        )
        .await;
    assert_eq!(wrong.status, 401);
    let out_of_range = set_p(http, 101).await;
    assert_eq!(
        (out_of_range.status, out_of_range.fields()),
        (400, vec!["P".to_string()])
    );
    let changed = set_p(http, 0).await;
    assert_eq!(changed.status, 200, "{}", changed.text);
    assert_eq!(changed.json()["P"], 0);
    assert_eq!(count_creates(http, 20).await, (0, 20));
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(written["P"], 0);

    // A random mode flips a coin per request, even for one user.
    let mode = http
        .send(
            http.request(Method::PUT, "/admin/routing")
                .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
                .header("content-type", "application/json")
                .body(r#"{"P": 50, "mode": "random"}"#),
        )
        .await;
    assert_eq!(mode.json()["mode"], "random");
    let id = http.create_user(&unique_email("coin")).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..100 {
        seen.insert(
            http.get(&format!("/users/{id}"))
                .await
                .served_by()
                .to_owned(),
        );
    }
    assert_eq!(seen.len(), 2, "one user saw both flavors in random mode");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_is_off_without_a_token() {
    let stack = StackBuilder::edge().admin_token(None).start().await;
    let reply = set_p(&stack.http(), 0).await;
    assert_eq!(
        (reply.status, reply.json()["code"].clone()),
        (404, json!("NOT_FOUND"))
    );
    assert_eq!(count_creates(&stack.http(), 5).await, (5, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_flavor_fails_over_to_the_other() {
    let mut stack = StackBuilder::edge().p(100).start().await;
    let http = stack.http();
    let id = http.create_user(&unique_email("fo")).await;
    stack.stop(Service::UserV1).await;

    assert_eq!(count_creates(&http, 10).await, (0, 10));
    let got = http.get(&format!("/users/{id}")).await;
    assert_eq!((got.status, got.served_by()), (200, "user-svc-v2"));
    let put = http
        .put(
            &format!("/users/{id}"),
            &json!({"deliveryAddress": address_json("3 St")}),
        )
        .await;
    assert_eq!((put.status, put.served_by()), (200, "user-svc-v2"));

    let view = http
        .send(
            http.request(Method::GET, "/admin/routing")
                .header("authorization", format!("Bearer {ADMIN_TOKEN}")),
        )
        .await
        .json();
    // All 12 were served by v2: the first 5 after a failed try of v1, the rest straight
    // away, v1 being ejected after 5 failures in a row.
    assert_eq!(view["flavors"]["v1"]["failovers"], 5, "{view}");
    assert_eq!(view["ejection"]["v1"]["state"], "open", "{view}");
    let metrics = http.get("/metrics").await.text;
    assert!(
        metrics.contains(r#"tandem_edge_user_failovers_total{flavor="v1"}"#),
        "{metrics}"
    );
    let health = http.get("/health").await;
    assert_eq!(health.status, 503);
    assert_ne!(health.json()["dependencies"]["user-svc-v1"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_is_a_504_within_the_deadline() {
    let deadline = Duration::from_millis(400);
    let stack = StackBuilder::edge()
        .upstream_timeout(deadline)
        .start()
        .await;
    let http = &stack.http();
    let id = http.create_user(&unique_email("slow")).await;

    // Hold the user store's write lock, so user-svc's write waits (it would wait up to
    // its 5 s busy timeout): a real slow upstream.
    let mut lock = rusqlite::Connection::open(stack.user_db()).unwrap();
    let tx = lock
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    let started = Instant::now();
    let reply = http
        .put(
            &format!("/users/{id}"),
            &json!({"emails": [unique_email("late")]}),
        )
        .await;
    let waited = started.elapsed();
    assert_eq!(
        (reply.status, reply.json()["code"].clone()),
        (504, json!("DEADLINE_EXCEEDED")),
        "{}",
        reply.text
    );
    assert!(
        waited < deadline + Duration::from_secs(1),
        "answered after {waited:?}"
    );
    // Reads do not wait for the writer (WAL) and still work meanwhile.
    assert_eq!(http.get(&format!("/users/{id}")).await.status, 200);
    tx.rollback().unwrap();
    let after = http
        .put(
            &format!("/users/{id}"),
            &json!({"emails": [unique_email("ok")]}),
        )
        .await;
    assert_eq!(after.status, 200, "{}", after.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_the_dial_under_load_drops_no_request() {
    let stack = StackBuilder::edge().start().await;
    let http = stack.http();
    let ids: Vec<String> = {
        let mut ids = vec![];
        for _ in 0..20 {
            ids.push(http.create_user(&unique_email("load")).await);
        }
        ids
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let http = http.clone();
            let ids = ids.clone();
            let stop = stop.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u32, Vec::new());
                let mut i = 0usize;
                while !stop.is_cancelled() {
                    i += 1;
                    let reply = if i.is_multiple_of(3) {
                        http.post("/users", &user_body(&unique_email("l"))).await
                    } else {
                        http.get(&format!("/users/{}", ids[(w + i) % ids.len()]))
                            .await
                    };
                    if (200..300).contains(&reply.status) {
                        ok += 1;
                    } else {
                        failed.push(reply.text);
                    }
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                (ok, failed)
            })
        })
        .collect();
    for p in [90, 10, 60, 0, 100, 30, 70, 50, 20, 80, 40, 100, 0, 55] {
        assert_eq!(set_p(&http, p).await.status, 200);
        // Let some traffic flow at this P before turning the dial again.
        let before = done.load(std::sync::atomic::Ordering::Relaxed);
        eventually(Duration::from_secs(10), "requests at this P", || {
            let now = done.load(std::sync::atomic::Ordering::Relaxed);
            async move { (now >= before + 12).then_some(()) }
        })
        .await;
    }
    stop.cancel();
    let mut total = 0;
    for worker in workers {
        let (ok, failed) = worker.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        total += ok;
    }
    assert!(total > 50, "only {total} requests ran");
    println!("dial turned 14 times under load: {total} requests, 0 failed");
}
