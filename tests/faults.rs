//! Faults at the public door, with real processes: a user flavor killed mid-load,
//! order-svc restarted under load, one email raced by many clients. Each test prints what
//! it checked and the counts (`scripts/faults` runs them, and the sync faults, with the
//! output shown).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tandem_testkit::*;
use tokio_util::sync::CancellationToken;

/// The contact sync's processes (as binaries, to be killed and restarted) with user-svc
/// v2 and an edge in front, whose deadline for each call is 3 s.
async fn edge_over_sync(p: u8) -> Stack {
    StackBuilder::sync()
        .with(Service::UserV2)
        .with(Service::Edge)
        .p(p)
        .upstream_timeout(Duration::from_secs(3))
        .start()
        .await
}

/// Counts of a load run, by outcome.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    unavailable: AtomicU64,
    other: AtomicU64,
    slowest_ms: AtomicU64,
    failures: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, started: Instant, reply: &Reply) {
        let ms = started.elapsed().as_millis() as u64;
        self.slowest_ms.fetch_max(ms, Ordering::Relaxed);
        match reply.status {
            200..=299 => self.ok.fetch_add(1, Ordering::Relaxed),
            503 => self.unavailable.fetch_add(1, Ordering::Relaxed),
            _ => {
                self.failures
                    .lock()
                    .unwrap()
                    .push(format!("{} {}", reply.status, reply.text));
                self.other.fetch_add(1, Ordering::Relaxed)
            }
        };
    }

    fn line(&self, what: &str) -> String {
        format!(
            "{what}: {} ok, {} unavailable (503), {} other, slowest {} ms",
            self.ok.load(Ordering::Relaxed),
            self.unavailable.load(Ordering::Relaxed),
            self.other.load(Ordering::Relaxed),
            self.slowest_ms.load(Ordering::Relaxed)
        )
    }
}

/// Runs `workers` loops of `step` until `stop`; returns when all stopped.
fn load<F, Fut>(
    workers: usize,
    stop: &CancellationToken,
    done: &Arc<AtomicUsize>,
    step: F,
) -> Vec<tokio::task::JoinHandle<()>>
where
    F: Fn(usize, usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    (0..workers)
        .map(|w| {
            let (stop, done, step) = (stop.clone(), done.clone(), step.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.is_cancelled() {
                    step(w, i).await;
                    i += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect()
}

async fn progressed(done: &AtomicUsize, by: usize) {
    let start = done.load(Ordering::Relaxed);
    eventually(
        Duration::from_secs(30),
        &format!("{by} more requests"),
        || async { (done.load(Ordering::Relaxed) >= start + by).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_flavor_killed_mid_load_costs_no_read_and_no_later_write() {
    let mut stack = edge_over_sync(50).await;
    let http = stack.http();
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(http.create_user(&unique_email("k")).await);
    }
    let ids = Arc::new(ids);
    let (reads, writes_before, writes_after) = (
        Arc::new(Tally::default()),
        Arc::new(Tally::default()),
        Arc::new(Tally::default()),
    );
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = CancellationToken::new();
    let done = Arc::new(AtomicUsize::new(0));
    let tasks = {
        let (http, ids, reads, wb, wa, killed) = (
            http.clone(),
            ids.clone(),
            reads.clone(),
            writes_before.clone(),
            writes_after.clone(),
            killed.clone(),
        );
        load(6, &stop, &done, move |w, i| {
            let (http, ids, reads, wb, wa, killed) = (
                http.clone(),
                ids.clone(),
                reads.clone(),
                wb.clone(),
                wa.clone(),
                killed.clone(),
            );
            async move {
                let started = Instant::now();
                if i % 4 == 3 {
                    let after = killed.load(Ordering::Relaxed);
                    let reply = http.post("/users", &user_body(&unique_email("w"))).await;
                    if after {
                        wa.record(started, &reply)
                    } else {
                        wb.record(started, &reply)
                    }
                } else {
                    let reply = http
                        .get(&format!("/users/{}", ids[(w * 7 + i) % ids.len()]))
                        .await;
                    reads.record(started, &reply);
                }
            }
        })
    };
    progressed(&done, 200).await;
    stack.kill(Service::UserV1).await;
    // Writes that were in flight at the kill may answer 503 (they might have run; the edge
    // does not repeat them). From here on, v1 refuses connections and every request
    // fails over to v2.
    killed.store(true, Ordering::Relaxed);
    progressed(&done, 400).await;
    stop.cancel();
    for t in tasks {
        t.await.unwrap();
    }
    println!("{}", reads.line("reads across the kill"));
    println!("{}", writes_before.line("writes until the kill"));
    println!("{}", writes_after.line("writes after the kill"));
    let failovers = http.get("/metrics").await.text;
    let line = failovers
        .lines()
        .find(|l| l.starts_with(r#"tandem_edge_user_failovers_total{flavor="v1"}"#))
        .unwrap_or("")
        .to_owned();
    println!("failovers from v1: {line}");
    assert_eq!(
        reads.unavailable.load(Ordering::Relaxed) + reads.other.load(Ordering::Relaxed),
        0,
        "a read failed: {:?}",
        reads.failures.lock().unwrap()
    );
    assert_eq!(
        writes_after.unavailable.load(Ordering::Relaxed)
            + writes_after.other.load(Ordering::Relaxed),
        0,
        "a later write failed: {:?}",
        writes_after.failures.lock().unwrap()
    );
    assert_eq!(
        writes_before.other.load(Ordering::Relaxed),
        0,
        "{:?}",
        writes_before.failures.lock().unwrap()
    );
    assert!(writes_after.ok.load(Ordering::Relaxed) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_svc_restarted_under_load_answers_503_or_success_in_time() {
    let mut stack = edge_over_sync(100).await;
    let http = stack.http();
    let email = unique_email("o");
    let user = http.create_user(&email).await;
    let tally = Arc::new(Tally::default());
    let stop = CancellationToken::new();
    let done = Arc::new(AtomicUsize::new(0));
    let tasks = {
        let (http, tally) = (http.clone(), tally.clone());
        load(4, &stop, &done, move |_, i| {
            let (http, tally, user, email) =
                (http.clone(), tally.clone(), user.clone(), email.clone());
            async move {
                let started = Instant::now();
                let reply = if i % 2 == 0 {
                    http.post("/orders", &order_body(&user, &email)).await
                } else {
                    http.get(&format!("/orders?userId={user}&limit=5")).await
                };
                tally.record(started, &reply);
            }
        })
    };
    progressed(&done, 100).await;
    stack.stop(Service::Orders).await;
    progressed(&done, 100).await; // while it is down
    stack.start(Service::Orders).await;
    progressed(&done, 100).await;
    stop.cancel();
    for t in tasks {
        t.await.unwrap();
    }
    println!("{}", tally.line("order requests across the restart"));
    assert_eq!(
        tally.other.load(Ordering::Relaxed),
        0,
        "{:?}",
        tally.failures.lock().unwrap()
    );
    assert!(
        tally.unavailable.load(Ordering::Relaxed) > 0,
        "the outage was not seen"
    );
    // The edge's deadline is 3 s here: nobody waits much past it.
    assert!(
        tally.slowest_ms.load(Ordering::Relaxed) < 5_000,
        "{}",
        tally.line("slowest")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_email_raced_by_many_clients_goes_to_exactly_one_user() {
    let stack = edge_over_sync(50).await;
    let http = stack.http();
    for round in 0..5 {
        let email = unique_email(&format!("race{round}"));
        let attempts = (0..20).map(|_| {
            let (http, email) = (http.clone(), email.clone());
            tokio::spawn(async move { http.post("/users", &user_body(&email)).await })
        });
        let replies: Vec<Reply> = futures::future::join_all(attempts)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let created = replies.iter().filter(|r| r.status == 201).count();
        let conflicts = replies.iter().filter(|r| r.status == 409).count();
        let flavors: std::collections::HashSet<&str> =
            replies.iter().map(Reply::served_by).collect();
        println!(
            "round {round}: 20 concurrent creates of one email through both flavors ({flavors:?}): {created} created, {conflicts} conflicts"
        );
        assert_eq!((created, conflicts), (1, 19));
    }
}

/// Group commit answers a write only once the transaction holding it is synced: a
/// SIGKILL of user-svc at full write load (creates and contact changes from 32 clients)
/// may lose only writes that were never acknowledged. Every acknowledged create is a row
/// after the crash, and every acknowledged change is there (the user's contact version
/// is at least the one the reply gave). (The change's event is written in the same
/// transaction; that it is published after a crash is
/// `user_svc_killed_between_commit_and_publish_publishes_after_restart`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_kill_9_of_user_svc_at_full_load() {
    use tandem::proto::user::v1::{CreateUserRequest, UpdateUserContactRequest};
    let mut stack = StackBuilder::sync().start().await;
    let seeded: Vec<String> = stack.seed(16, 0).await.into_keys().collect();
    let seeded = Arc::new(seeded);
    let created = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    // user id -> highest contact version an acknowledged change returned
    let changed = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        String,
        i64,
    >::new()));
    let refused = Arc::new(AtomicU64::new(0));
    let users = stack.users().await;
    let stop = CancellationToken::new();
    let done = Arc::new(AtomicUsize::new(0));
    let workers = load(32, &stop, &done, {
        let (seeded, created, changed, refused) = (
            seeded.clone(),
            created.clone(),
            changed.clone(),
            refused.clone(),
        );
        move |w, i| {
            let mut users = users.clone();
            let (seeded, created, changed, refused) = (
                seeded.clone(),
                created.clone(),
                changed.clone(),
                refused.clone(),
            );
            async move {
                if w % 2 == 0 {
                    let reply = users
                        .create_user(CreateUserRequest {
                            emails: vec![unique_email(&format!("crash{w}-{i}"))],
                            delivery_address: Some(address("1 Crash Ct")),
                            ..Default::default()
                        })
                        .await;
                    match reply {
                        Ok(reply) => created
                            .lock()
                            .unwrap()
                            .push(reply.into_inner().user.unwrap().user_id),
                        Err(_) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                } else {
                    let user_id = seeded[(w + i) % seeded.len()].clone();
                    let reply = users
                        .update_user_contact(UpdateUserContactRequest {
                            user_id: user_id.clone(),
                            emails: vec![unique_email(&format!("crash{w}-{i}"))],
                            delivery_address: Some(address("2 Crash Ct")),
                            update_mask: None,
                        })
                        .await;
                    match reply {
                        Ok(reply) => {
                            let version = reply.into_inner().user.unwrap().contact_version;
                            let mut changed = changed.lock().unwrap();
                            let best = changed.entry(user_id).or_default();
                            *best = (*best).max(version);
                        }
                        Err(_) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    });
    // Well into the run, mid-stream.
    progressed(&done, 600).await;
    stack.kill(Service::UserV1).await;
    stop.cancel();
    for worker in workers {
        worker.await.unwrap();
    }
    let created = created.lock().unwrap().clone();
    let changed = changed.lock().unwrap().clone();
    assert!(created.len() >= 100 && !changed.is_empty(), "the load ran");

    let db = rusqlite::Connection::open(stack.user_db()).unwrap();
    let mut missing = Vec::new();
    let mut exists = db
        .prepare("SELECT count(*) FROM users WHERE user_id = ?1")
        .unwrap();
    for id in &created {
        let n: i64 = exists.query_row([id], |r| r.get(0)).unwrap();
        if n != 1 {
            missing.push(format!("created {id}"));
        }
    }
    let mut version = db
        .prepare("SELECT contact_version FROM users WHERE user_id = ?1")
        .unwrap();
    let mut acked_changes = 0;
    for (id, acked) in &changed {
        let stored: i64 = version.query_row([id], |r| r.get(0)).unwrap();
        if stored < *acked {
            missing.push(format!("{id}: version {stored} < acknowledged {acked}"));
        }
        acked_changes += acked - 1;
    }
    assert!(missing.is_empty(), "acknowledged writes lost: {missing:?}");
    println!(
        "user-svc SIGKILLed under 32 writers: {} acknowledged creates all present, {} \
         users' acknowledged contact versions all present (at least \
         {acked_changes} changes), {} calls failed (unanswered at the kill); lost \
         acknowledged writes: 0",
        created.len(),
        changed.len(),
        refused.load(Ordering::Relaxed)
    );
}
