//! Migration control, over real processes: shadow reads against a v2 that really differs
//! (a Python flavor built from the generated stubs, in front of the real v2), the
//! progressive rollout and its automatic rollback under load, restarts and manual
//! changes, two edges sharing one state through RabbitMQ, and every bad admin body.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tandem_testkit::*;

/// An admin call with the test token.
async fn admin(http: &Http, method: Method, path: &str, body: Option<Value>) -> Reply {
    let mut request = http
        .request(method, path)
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"));
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    http.send(request).await
}

async fn get(http: &Http, path: &str) -> Value {
    let reply = admin(http, Method::GET, path, None).await;
    assert_eq!(reply.status, 200, "{path}: {}", reply.text);
    reply.json()
}

async fn users(http: &Http, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(http.create_user(&unique_email("m")).await);
    }
    ids
}

/// Each user's flavors in the order its reads got them (repeats folded), and the reads
/// that failed.
type Seen = (HashMap<String, Vec<String>>, Vec<String>);

/// Reads users until stopped, recording the flavor each read got, per user, and any
/// failure.
struct Load {
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Seen>>,
}

impl Load {
    fn start(http: &Http, ids: &[String], workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let tasks = (0..workers)
            .map(|w| {
                // Each worker reads users of its own, so each user's reads are in order.
                let mine: Vec<String> = ids.iter().skip(w).step_by(workers).cloned().collect();
                let (http, stop, reads) = (http.clone(), stop.clone(), reads.clone());
                tokio::spawn(async move {
                    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
                    let mut failures = Vec::new();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let id = &mine[i % mine.len()];
                        i += 1;
                        let reply = http.get(&format!("/users/{id}")).await;
                        reads.fetch_add(1, Ordering::Relaxed);
                        if reply.status != 200 {
                            failures.push(format!("{} {}", reply.status, reply.text));
                        }
                        let flavors = seen.entry(id.clone()).or_default();
                        if flavors.last().map(String::as_str) != Some(reply.served_by()) {
                            flavors.push(reply.served_by().to_owned());
                        }
                    }
                    (seen, failures)
                })
            })
            .collect();
        Load { stop, reads, tasks }
    }

    /// Stops the load; returns each user's flavors in the order seen, and the failures.
    async fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        let mut seen = HashMap::new();
        let mut failures = Vec::new();
        for task in self.tasks {
            let (s, f) = task.await.unwrap();
            for (id, flavors) in s {
                let all: &mut Vec<String> = seen.entry(id).or_default();
                for flavor in flavors {
                    if all.last() != Some(&flavor) {
                        all.push(flavor);
                    }
                }
            }
            failures.extend(f);
        }
        (seen, failures)
    }
}

/// Polls the rollout until `done` holds; fails with the last state seen.
async fn rollout_until(
    http: &Http,
    timeout: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let rollout = get(http, "/admin/rollout").await;
        if done(&rollout) {
            return rollout;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; the rollout is {rollout:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// These tests load the machine (clients, two flavors, a Python one, an edge or two) and
/// judge latencies: one at a time, so they do not judge each other's load.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How a rollback went: how long after v2 turned bad, the rollout as it ended, its last
/// event, and the client reads that failed meanwhile.
struct Rollback {
    took: Duration,
    rollout: Value,
    last: Value,
    failures: Vec<String>,
}

/// Starts `plan` under steady reads, and once its first step has passed makes the Python
/// v2 behave as `bad` says; waits for the rollback.
async fn rollback_when_v2_turns(bad: Value, plan: Value, edge_args: &[&str]) -> Rollback {
    let stack = StackBuilder::edge()
        .python_v2()
        .edge_args(edge_args)
        .start()
        .await;
    let http = stack.http();
    let ids = users(&http, 100).await;
    let load = Load::start(&http, &ids, 4);
    let started = admin(&http, Method::PUT, "/admin/rollout", Some(plan)).await;
    assert_eq!(started.status, 200, "{}", started.text);
    assert_eq!(started.json()["P"], 90);
    rollout_until(
        &http,
        Duration::from_secs(30),
        "the first step to pass",
        |r| r["P"].as_u64() < Some(90),
    )
    .await;
    stack.python().set(bad);
    let turned_bad = chrono::Utc::now();
    let rollout = rollout_until(&http, Duration::from_secs(30), "the rollback", |r| {
        r["state"] == "rolledBack"
    })
    .await;
    stack.python().set(json!({}));
    let (_, failures) = load.finish().await;
    assert_eq!(rollout["P"], 100);
    let last = rollout["history"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["event"], "rolledBack", "{rollout:#}");
    // From the rollback's own time (the same clock), not from when this test saw it.
    let rolled_back: chrono::DateTime<chrono::Utc> = last["at"].as_str().unwrap().parse().unwrap();
    let took = (rolled_back - turned_bad).to_std().unwrap_or_default();
    Rollback {
        took,
        rollout,
        last,
        failures,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_turning_bad_mid_rollout_rolls_back_by_itself() {
    let _one = ONE_AT_A_TIME.lock().await;
    // v2 turns bad: half its calls fail.
    let Rollback {
        took,
        rollout,
        last,
        failures,
    } = rollback_when_v2_turns(
        json!({"errorRate": 0.5}),
        json!({"steps": [90, 75, 50, 25, 10, 0], "intervalSeconds": 2, "maxErrorRate": 0.05,
                "maxP99Ms": 1000, "minRequests": 10, "failureThreshold": 2}),
        &[],
    )
    .await;
    // intervalSeconds × failureThreshold + one interval.
    assert!(
        took <= Duration::from_secs(6),
        "rolled back {took:?} after v2 turned bad"
    );
    assert!(
        last["reason"].as_str().unwrap().contains("errorRate"),
        "{last}"
    );
    assert!(last["v2"]["errorRate"].as_f64().unwrap() > 0.05, "{last}");
    assert!(last["v2"]["requests"].as_u64().unwrap() >= 10, "{last}");
    println!(
        "v2 failing half its calls at P={}: rolled back to P=100 {took:?} later ({} failed checks; {} client reads answered 503 by the failing v2 meanwhile)",
        rollout["history"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .nth(1)
            .map(|e| e["P"].clone())
            .unwrap_or_default(),
        rollout["failedChecks"],
        failures.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejected_v2_fails_the_rollouts_checks_instead_of_hiding_from_them() {
    let _one = ONE_AT_A_TIME.lock().await;
    // Every v2 call fails: the edge ejects v2 after 3 (for longer than the test), so v2
    // gets no calls at all. The calls meant for it still count against it.
    let Rollback { took, last, .. } = rollback_when_v2_turns(
        json!({"errorRate": 1.0}),
        json!({"steps": [90, 75, 50, 25, 10, 0], "intervalSeconds": 2, "maxErrorRate": 0.05,
                "maxP99Ms": 1000, "minRequests": 10, "failureThreshold": 2}),
        &["--eject-after", "3", "--eject-base-seconds", "120"],
    )
    .await;
    // intervalSeconds × failureThreshold + one interval.
    assert!(
        took <= Duration::from_secs(6),
        "rolled back {took:?} after v2 turned bad"
    );
    assert!(
        last["reason"].as_str().unwrap().contains("errorRate"),
        "{last}"
    );
    assert!(last["v2"]["requests"].as_u64().unwrap() >= 10, "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_hanging_mid_rollout_rolls_back_though_its_calls_dwindle() {
    let _one = ONE_AT_A_TIME.lock().await;
    // v2 hangs: every call takes 1.5 s, so the clients stuck on it send it only a few
    // calls per window, fewer than minRequests. Those few already break maxP99Ms.
    let Rollback { took, last, .. } = rollback_when_v2_turns(
        json!({"latencyMs": 1500}),
        json!({"steps": [90, 75, 50, 25, 10, 0], "intervalSeconds": 2, "maxP99Ms": 1000,
                "minRequests": 20, "failureThreshold": 2}),
        &[],
    )
    .await;
    // intervalSeconds × failureThreshold + one interval, + the 1.5 s before the first
    // hung call can end.
    assert!(
        took <= Duration::from_millis(7500),
        "rolled back {took:?} after v2 began to hang"
    );
    assert!(last["reason"].as_str().unwrap().contains("p99Ms"), "{last}");
    assert!(last["v2"]["requests"].as_u64().unwrap() < 20, "{last}");
    println!(
        "v2 hanging (1.5 s a call): rolled back {took:?} later on windows of {} v2 calls",
        last["v2"]["requests"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_v2_is_rolled_out_step_by_step_and_no_user_flips_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    let stack = StackBuilder::edge().python_v2().start().await;
    let http = stack.http();
    let ids = users(&http, 1000).await;
    let load = Load::start(&http, &ids, 6);
    let started = admin(
        &http,
        Method::PUT,
        "/admin/rollout",
        Some(
            json!({"steps": [90, 75, 50, 25, 10, 0], "intervalSeconds": 1, "maxErrorRate": 0.01,
                    "maxP99Ms": 1000, "minRequests": 5, "failureThreshold": 2}),
        ),
    )
    .await;
    assert_eq!(started.status, 200, "{}", started.text);
    let done = rollout_until(
        &http,
        Duration::from_secs(60),
        "the rollout to complete",
        |r| r["state"] == "completed",
    )
    .await;
    // A few more reads at P=0, so every user is seen on v2.
    let reads = load.reads.load(Ordering::Relaxed);
    eventually(Duration::from_secs(30), "reads at P=0", || {
        let now = load.reads.load(Ordering::Relaxed);
        async move { (now >= reads + 2000).then_some(()) }
    })
    .await;
    let total_reads = load.reads.load(Ordering::Relaxed);
    let (seen, failures) = load.finish().await;
    assert_eq!(done["P"], 0);
    let steps: Vec<u64> = done["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "advanced" || e["event"] == "started")
        .map(|e| e["P"].as_u64().unwrap())
        .collect();
    assert_eq!(
        steps,
        [90, 75, 50, 25, 10, 0],
        "P took every step, in order"
    );
    assert!(
        failures.is_empty(),
        "{} reads failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    let flipped: Vec<_> = seen
        .iter()
        .filter(|(_, flavors)| {
            flavors
                .windows(2)
                .any(|w| w[0] == "user-svc-v2" && w[1] == "user-svc-v1")
        })
        .collect();
    assert!(
        flipped.is_empty(),
        "users moved back from v2 to v1: {flipped:?}"
    );
    assert_eq!(seen.len(), 1000, "every tracked user was read");
    assert!(
        seen.values()
            .all(|f| f.last().map(String::as_str) == Some("user-svc-v2"))
    );
    println!(
        "healthy Python v2: P 100 → 90 → 75 → 50 → 25 → 10 → 0 in {} checks; 1,000 users tracked over {total_reads} reads: 0 moved back to v1, 0 failed",
        done["history"].as_array().unwrap().len() - 1,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_traffic_the_rollout_holds() {
    let _one = ONE_AT_A_TIME.lock().await;
    let stack = StackBuilder::edge().start().await;
    let http = stack.http();
    let started = admin(
        &http,
        Method::PUT,
        "/admin/rollout",
        Some(json!({"steps": [50, 0], "intervalSeconds": 1, "minRequests": 5})),
    )
    .await;
    assert_eq!(started.status, 200, "{}", started.text);
    let held = rollout_until(
        &http,
        Duration::from_secs(20),
        "two inconclusive checks",
        |r| r["inconclusiveChecks"].as_u64() >= Some(2),
    )
    .await;
    assert_eq!(
        (held["state"].clone(), held["P"].clone()),
        (json!("progressing"), json!(50))
    );
    assert_eq!(held["failedChecks"], 0);
    let last = held["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["event"], "held");
    assert!(
        last["reason"].as_str().unwrap().contains("minRequests"),
        "{last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_edge_resumes_its_rollout_and_a_manual_change_pauses_it() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut stack = StackBuilder::edge().start().await;
    let http = stack.http();
    let ids = users(&http, 50).await;
    let load = Load::start(&http, &ids, 3);
    admin(
        &http,
        Method::PUT,
        "/admin/rollout",
        Some(json!({"steps": [90, 50, 10, 0], "intervalSeconds": 1, "minRequests": 3, "maxP99Ms": 1000})),
    )
    .await;
    let before = rollout_until(
        &http,
        Duration::from_secs(30),
        "a step past the first",
        |r| r["step"].as_u64() >= Some(1),
    )
    .await;
    load.finish().await;
    // Paused by hand first, so the restart finds it where the test left it.
    admin(&http, Method::POST, "/admin/rollout/pause", None).await;
    let paused = get(&http, "/admin/rollout").await;
    stack.stop(Service::Edge).await;
    assert!(stack.dir.path().join("control.json").exists());
    stack.start(Service::Edge).await;
    let after = get(&http, "/admin/rollout").await;
    assert_eq!(after["state"], "paused");
    assert_eq!(
        (after["step"].clone(), after["P"].clone()),
        (paused["step"].clone(), paused["P"].clone())
    );
    assert_eq!(after["history"], paused["history"]);
    assert!(before["step"].as_u64() <= after["step"].as_u64());

    // It resumes at its step after the restart…
    let resumed = admin(&http, Method::POST, "/admin/rollout/resume", None).await;
    assert_eq!(resumed.status, 200, "{}", resumed.text);
    assert_eq!(resumed.json()["state"], "progressing");
    assert_eq!(resumed.json()["P"], after["P"]);
    // …and a manual change wins over it.
    let manual = admin(&http, Method::PUT, "/admin/routing", Some(json!({"P": 80}))).await;
    assert_eq!(manual.status, 200, "{}", manual.text);
    assert_eq!(manual.json()["P"], 80);
    assert_eq!(manual.json()["rollout"], "paused");
    assert!(
        manual.json()["notice"].as_str().unwrap().contains("paused"),
        "{}",
        manual.text
    );
    let now = get(&http, "/admin/rollout").await;
    assert_eq!(
        (now["state"].clone(), now["P"].clone()),
        (json!("paused"), json!(80))
    );
    println!(
        "rollout at step {} (P={}) across an edge restart: resumed there; a manual P=80 paused it",
        after["step"], after["P"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_reads_catch_the_differing_flavor_and_drop_noise() {
    let _one = ONE_AT_A_TIME.lock().await;
    let stack = StackBuilder::edge().python_v2().start().await;
    let http = stack.http();
    let ids = users(&http, 20).await;
    // v2 answers firstName "Shadowed" for users whose id starts with an even hex digit.
    stack
        .python()
        .set(json!({"mismatch": {"field": "first_name", "value": "Shadowed", "every": 2}}));
    let differing = ids
        .iter()
        .filter(|id| u32::from_str_radix(&id[..1], 16).unwrap() % 2 == 0)
        .count() as u64;
    let set = admin(
        &http,
        Method::PUT,
        "/admin/shadow",
        Some(json!({"fraction": 1.0})),
    )
    .await;
    assert_eq!(set.status, 200, "{}", set.text);
    for id in &ids {
        let reply = http.get(&format!("/users/{id}")).await;
        assert_eq!((reply.status, reply.served_by()), (200, "user-svc-v1"));
        assert_eq!(
            reply.json()["user"]["firstName"],
            "Robert",
            "the client's answer is v1's"
        );
    }
    let shadow = eventually(Duration::from_secs(20), "20 comparisons", || async {
        let shadow = get(&http, "/admin/shadow").await;
        (shadow["compared"].as_u64() >= Some(20)).then_some(shadow)
    })
    .await;
    assert_eq!(shadow["mismatched"], differing, "{shadow}");
    assert_eq!(shadow["matched"], 20 - differing, "{shadow}");
    assert_eq!(shadow["fields"], json!({"firstName": differing}));
    let example = &shadow["recent"][0];
    assert_eq!(
        (
            example["field"].clone(),
            example["served"].clone(),
            example["servedValue"].clone(),
            example["otherValue"].clone()
        ),
        (
            json!("firstName"),
            json!("v1"),
            json!("Robert"),
            json!("Shadowed")
        )
    );
    assert!(ids.contains(&example["userId"].as_str().unwrap().to_owned()));
    assert!(!example["requestId"].as_str().unwrap().is_empty());
    let metrics = http.get("/metrics").await.text;
    assert!(
        metrics.contains(&format!(
            r#"tandem_edge_shadow_comparisons_total{{outcome="mismatched"}} {differing}"#
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            r#"tandem_edge_shadow_field_mismatches_total{{field="firstName"}} {differing}"#
        )),
        "{metrics}"
    );

    // The ignore list silences the field.
    admin(
        &http,
        Method::PUT,
        "/admin/shadow",
        Some(json!({"fraction": 1.0, "ignore": ["firstName"]})),
    )
    .await;
    for id in &ids {
        http.get(&format!("/users/{id}")).await;
    }
    let ignored = eventually(Duration::from_secs(20), "20 more comparisons", || async {
        let shadow = get(&http, "/admin/shadow").await;
        (shadow["compared"].as_u64() >= Some(40)).then_some(shadow)
    })
    .await;
    assert_eq!(
        ignored["mismatched"], differing,
        "no new mismatch: {ignored}"
    );
    assert_eq!(ignored["matched"], 40 - differing, "{ignored}");

    // The noise rule: v2 serving, and answering a fresh phoneNumber each time, so its
    // own two answers disagree on it: noise, not a mismatch.
    stack.python().set(json!({"noise": "phone_number"}));
    admin(
        &http,
        Method::PUT,
        "/admin/shadow",
        Some(json!({"fraction": 1.0})),
    )
    .await;
    admin(&http, Method::PUT, "/admin/routing", Some(json!({"P": 0}))).await;
    for id in &ids {
        let reply = http.get(&format!("/users/{id}")).await;
        assert_eq!(reply.served_by(), "user-svc-v2");
    }
    let noisy = eventually(Duration::from_secs(20), "20 more comparisons", || async {
        let shadow = get(&http, "/admin/shadow").await;
        (shadow["compared"].as_u64() >= Some(60)).then_some(shadow)
    })
    .await;
    assert_eq!(noisy["noise"], 20, "{noisy}");
    assert_eq!(
        noisy["mismatched"], differing,
        "phoneNumber is noise, not a mismatch: {noisy}"
    );
    assert!(noisy["fields"].get("phoneNumber").is_none(), "{noisy}");

    // v2 shedding load: its refusals to answer say nothing about what it would have
    // answered. They are failed shadows, not mismatches on every field.
    stack
        .python()
        .set(json!({"errorRate": 1.0, "errorCode": "RESOURCE_EXHAUSTED"}));
    admin(
        &http,
        Method::PUT,
        "/admin/routing",
        Some(json!({"P": 100})),
    )
    .await;
    for id in &ids {
        let reply = http.get(&format!("/users/{id}")).await;
        assert_eq!((reply.status, reply.served_by()), (200, "user-svc-v1"));
    }
    let shed = eventually(Duration::from_secs(20), "20 failed shadows", || async {
        let shadow = get(&http, "/admin/shadow").await;
        (shadow["failed"].as_u64() >= Some(20)).then_some(shadow)
    })
    .await;
    assert_eq!(shed["failed"], 20, "{shed}");
    assert_eq!(shed["mismatched"], differing, "{shed}");
    assert_eq!(shed["compared"], 60, "{shed}");
    println!(
        "shadow at fraction 1: {differing} of 20 users' firstName differed (caught, with examples); ignored, 0 more; a field v2 answers differently each time: 20 noise, 0 mismatches; v2 shedding load: 20 failed shadows, 0 mismatches"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_with_shadowing_on_reaches_the_store_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    let stack = StackBuilder::edge().start().await;
    let http = stack.http();
    admin(
        &http,
        Method::PUT,
        "/admin/shadow",
        Some(json!({"fraction": 1.0})),
    )
    .await;
    let user_id = http.create_user(&unique_email("w")).await;
    let put = http
        .put(
            &format!("/users/{user_id}"),
            &json!({"deliveryAddress": address_json("2 Once St")}),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text);
    let mut client = stack.users().await;
    let user = client
        .get_user(tandem::proto::user::v1::GetUserRequest {
            user_id: user_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(
        user.contact_version, 2,
        "one create, one change: nothing ran twice"
    );
    use user_svc::store::UserStore;
    let store = user_svc::store::SqliteUserStore::open(&stack.user_db())
        .await
        .unwrap();
    let events = store
        .claim_outbox("test", Duration::from_secs(30), 100)
        .await
        .unwrap();
    assert_eq!(events.iter().filter(|e| e.user_id == user_id).count(), 1);
    let shadow = get(&http, "/admin/shadow").await;
    assert_eq!(shadow["compared"], 0, "writes are not shadowed: {shadow}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_edges_share_one_dial_and_judge_one_rollout_on_both_edges_traffic() {
    let _one = ONE_AT_A_TIME.lock().await;
    let stack = StackBuilder::edge()
        .with(Service::EdgeB)
        .cluster()
        .start()
        .await;
    let (a, b) = (stack.http_of(Service::Edge), stack.http_of(Service::EdgeB));
    // Exactly one of them is leader.
    let (ra, rb) = eventually(Duration::from_secs(20), "a leader", || async {
        let (ra, rb) = (
            get(&a, "/admin/rollout").await,
            get(&b, "/admin/rollout").await,
        );
        (ra["leader"] != rb["leader"]).then_some((ra, rb))
    })
    .await;
    let (leader, follower) = if ra["leader"] == true {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert_ne!(ra["replica"], rb["replica"]);

    // A change through one is seen by the other within 2 s.
    for (through, seen_by, p) in [(&a, &b, 40), (&b, &a, 70)] {
        let changed = Instant::now();
        assert_eq!(
            admin(
                through,
                Method::PUT,
                "/admin/routing",
                Some(json!({"P": p}))
            )
            .await
            .status,
            200
        );
        eventually(
            Duration::from_secs(2),
            "the other edge to follow",
            || async { (get(seen_by, "/admin/routing").await["P"] == p).then_some(()) },
        )
        .await;
        println!(
            "P={p} set through one edge: the other followed in {:?}",
            changed.elapsed()
        );
    }
    admin(
        &b,
        Method::PUT,
        "/admin/shadow",
        Some(json!({"fraction": 0.5, "ignore": ["updatedAt"]})),
    )
    .await;
    eventually(
        Duration::from_secs(2),
        "the shadow settings to travel",
        || async { (get(&a, "/admin/shadow").await["fraction"] == 0.5).then_some(()) },
    )
    .await;
    admin(
        &a,
        Method::PUT,
        "/admin/shadow",
        Some(json!({"fraction": 0})),
    )
    .await;

    // One rollout, judged on traffic the leader never sees itself: all of it goes
    // through the follower.
    let ids = users(follower, 50).await;
    let load = Load::start(follower, &ids, 3);
    let started = admin(
        follower,
        Method::PUT,
        "/admin/rollout",
        Some(json!({"steps": [50, 0], "intervalSeconds": 1, "minRequests": 5, "maxP99Ms": 1000})),
    )
    .await;
    assert_eq!(started.status, 200, "{}", started.text);
    let done = rollout_until(
        leader,
        Duration::from_secs(30),
        "the rollout to complete",
        |r| r["state"] == "completed",
    )
    .await;
    load.finish().await;
    // The checks that moved the rollout on were judged on enough of the follower's
    // calls (a held window, under a loaded machine, may have had fewer).
    let checks: Vec<&Value> = done["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "advanced" || e["event"] == "completed")
        .collect();
    assert_eq!(checks.len(), 2, "{done}");
    assert!(
        checks
            .iter()
            .all(|e| e["v2"]["requests"].as_u64() >= Some(5)),
        "{checks:?}"
    );
    eventually(Duration::from_secs(2), "the follower to know", || async {
        let rollout = get(follower, "/admin/rollout").await;
        (rollout["state"] == "completed" && rollout["P"] == 0).then_some(())
    })
    .await;
    let stats = get(leader, "/admin/stats?step=1").await;
    let served: u64 = stats["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["v1"]["requests"].as_u64().unwrap() + p["v2"]["requests"].as_u64().unwrap())
        .sum();
    assert!(served > 0, "the leader's stats hold the follower's traffic");
    println!(
        "a rollout started through the follower, with all traffic through it: the leader judged {} checks on it and completed it",
        checks.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_admin_request_is_a_named_400_or_a_401_and_never_a_500() {
    let _one = ONE_AT_A_TIME.lock().await;
    // A wrong token on every route, many times over: past the default failed-login limit
    // the answer would be 429 (tests/guard.rs checks that lock-out).
    let stack = StackBuilder::edge()
        .edge_args(&["--admin-auth-limit", "1000/s"])
        .start()
        .await;
    let http = stack.http();
    let bad_bodies = [
        ("/admin/rollout", json!({"steps": [50, 60]}), "steps[1]"),
        ("/admin/rollout", json!({"steps": [101]}), "steps[0]"),
        ("/admin/rollout", json!({"steps": [300]}), "steps[0]"),
        ("/admin/rollout", json!({"steps": "fast"}), "steps"),
        (
            "/admin/rollout",
            json!({"intervalSeconds": 0}),
            "intervalSeconds",
        ),
        (
            "/admin/rollout",
            json!({"failureThreshold": -1}),
            "failureThreshold",
        ),
        (
            "/admin/rollout",
            json!({"failureThreshold": 0}),
            "failureThreshold",
        ),
        (
            "/admin/rollout",
            json!({"maxErrorRate": 1.5}),
            "maxErrorRate",
        ),
        ("/admin/rollout", json!({"maxP99Ms": 0}), "maxP99Ms"),
        ("/admin/rollout", json!({"minRequests": 0}), "minRequests"),
        (
            "/admin/rollout",
            json!({"maxShadowMismatchRate": -0.1}),
            "maxShadowMismatchRate",
        ),
        ("/admin/rollout", json!({"speed": "fast"}), "speed"),
        ("/admin/shadow", json!({"fraction": 1.5}), "fraction"),
        ("/admin/shadow", json!({"fraction": -1}), "fraction"),
        ("/admin/shadow", json!({"fraction": "half"}), "fraction"),
        ("/admin/shadow", json!({"ignore": [""]}), "ignore[0]"),
        ("/admin/shadow", json!({"sample": 1}), "sample"),
        ("/admin/routing", json!({"P": 101}), "P"),
        ("/admin/routing", json!({"P": -5}), "P"),
    ];
    for (path, body, field) in bad_bodies {
        let reply = admin(&http, Method::PUT, path, Some(body.clone())).await;
        assert_eq!(reply.status, 400, "{path} {body}: {}", reply.text);
        assert_eq!(reply.fields(), [field], "{path} {body}: {}", reply.text);
    }
    let malformed = http
        .send(
            http.request(Method::PUT, "/admin/rollout")
                .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
                .header("content-type", "application/json")
                .body("{\"steps\": ["),
        )
        .await;
    assert_eq!(malformed.status, 400);
    assert_eq!(
        admin(&http, Method::GET, "/admin/stats?step=0", None)
            .await
            .fields(),
        ["step"]
    );
    // Controls with nothing to control: refused, not failed.
    for control in ["pause", "resume", "abort", "promote"] {
        let reply = admin(
            &http,
            Method::POST,
            &format!("/admin/rollout/{control}"),
            None,
        )
        .await;
        assert_eq!(
            (reply.status, reply.json()["code"].clone()),
            (400, json!("FAILED_PRECONDITION")),
            "{control}: {}",
            reply.text
        );
    }
    // No token, or a wrong one: 401 everywhere.
    for (method, path) in [
        (Method::GET, "/admin/routing"),
        (Method::PUT, "/admin/routing"),
        (Method::GET, "/admin/shadow"),
        (Method::PUT, "/admin/shadow"),
        (Method::GET, "/admin/rollout"),
        (Method::PUT, "/admin/rollout"),
        (Method::POST, "/admin/rollout/pause"),
        (Method::POST, "/admin/rollout/resume"),
        (Method::POST, "/admin/rollout/abort"),
        (Method::POST, "/admin/rollout/promote"),
        (Method::GET, "/admin/stats"),
    ] {
        for token in [None, Some("Bearer wrong")] {
            let mut request = http
                .request(method.clone(), path)
                .header("content-type", "application/json")
                .body("{}");
            if let Some(token) = token {
                request = request.header("authorization", token);
            }
            let reply = http.send(request).await;
            assert_eq!(
                reply.status, 401,
                "{method} {path} with {token:?}: {}",
                reply.text
            );
        }
    }
}
