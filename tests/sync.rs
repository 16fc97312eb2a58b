//! The contact sync under failure, with real processes and the real RabbitMQ: every user
//! change reaches that user's orders, and nothing is lost when the worker is killed, the
//! broker vanishes, order-svc is down, a poison message arrives, events come twice or out
//! of order, or user-svc dies between committing a change and publishing it.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use nix::sys::signal::Signal;
use tandem::domain::{Flavor, UserContact, UserId};
use tandem_messaging::UserUpdated;
use tandem_testkit::*;

const CONVERGE: Duration = Duration::from_secs(60);

async fn broker_channel() -> (lapin::Connection, lapin::Channel) {
    let connection = tandem_messaging::amqp::connect(&broker::amqp_url(), "tandem test")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    (connection, channel)
}

/// Publishes a raw body to the stack's events exchange, as a misbehaving or old producer
/// would.
async fn publish_raw(stack: &Stack, body: &[u8], message_id: &str) {
    publish_to(
        stack,
        &stack.topology().exchange,
        body,
        message_id,
        Some("rid-raw"),
    )
    .await;
}

/// Publishes a body to one of the stack's exchanges and waits for the broker's confirm.
async fn publish_to(
    stack: &Stack,
    exchange: &str,
    body: &[u8],
    message_id: &str,
    request_id: Option<&str>,
) {
    let (connection, channel) = broker_channel().await;
    tandem_messaging::amqp::declare(&connection, stack.topology())
        .await
        .unwrap();
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
        .basic_publish(
            exchange.into(),
            "user.updated".into(),
            BasicPublishOptions::default(),
            body,
            tandem_messaging::amqp::event_properties(
                message_id,
                &tandem_messaging::EventOrigin::request(request_id),
                "test",
            ),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

fn event(user_id: &str, version: i64, email: &str, street: &str) -> UserUpdated {
    let contact = UserContact {
        user_id: UserId::parse(user_id).unwrap(),
        version,
        emails: emails(&[email]),
        delivery_address: domain_address(street),
    };
    UserUpdated::new(contact, chrono::Utc::now())
}

async fn metric_at_least(ops: &str, name: &str, at_least: f64) {
    eventually(
        Duration::from_secs(30),
        &format!("{name} ≥ {at_least}"),
        || async { (metric(ops, name).await.unwrap_or(0.0) >= at_least).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_stream_loses_nothing() {
    let mut stack = StackBuilder::sync().start().await;
    let mut expected = stack.seed(10, 3).await;
    let ids: Vec<String> = expected.keys().cloned().collect();
    let mut users = stack.users().await;
    for step in 0..150 {
        if step == 50 {
            // Mid-stream, some deliveries in hand and unacknowledged.
            stack.kill(Service::Worker).await;
        }
        if step == 100 {
            stack.start(Service::Worker).await;
        }
        let id = &ids[step % ids.len()];
        let contact = stack.update(&mut users, id, step).await;
        expected.insert(id.clone(), contact);
    }
    stack.wait_converged(&expected, CONVERGE).await;
    println!(
        "worker SIGKILLed after 50 of 150 updates, restarted after 100: {} users' orders converged; lost updates: 0",
        expected.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_broker_is_away_the_api_answers_and_events_wait() {
    let stack = StackBuilder::sync().start().await;
    let mut expected = stack.seed(5, 2).await;
    let before = expected.clone();
    let ids: Vec<String> = expected.keys().cloned().collect();
    stack.proxy().cut();
    eventually(
        Duration::from_secs(30),
        "the relay to notice the broker is gone",
        || async {
            (metric(&stack.ops(Service::UserV1), "tandem_user_relay_connected").await == Some(0.0))
                .then_some(())
        },
    )
    .await;

    let mut users = stack.users().await;
    for step in 0..30 {
        let id = &ids[step % ids.len()];
        // Every change succeeds although no event can be published.
        let contact = stack.update(&mut users, id, step).await;
        expected.insert(id.clone(), contact);
    }
    metric_at_least(
        &stack.ops(Service::UserV1),
        "tandem_user_outbox_pending",
        30.0,
    )
    .await;
    let health = reqwest::get(format!("http://{}/healthz", stack.ops(Service::UserV1)))
        .await
        .unwrap();
    assert_eq!(
        health.status(),
        200,
        "the API stays ready without its broker"
    );
    assert!(
        health
            .text()
            .await
            .unwrap()
            .contains(r#""name":"broker","ok":false"#)
    );
    assert_eq!(
        stack.converged(&before).await,
        Ok(()),
        "nothing reached the orders yet"
    );

    stack.proxy().restore();
    stack.wait_converged(&expected, CONVERGE).await;
    println!(
        "broker away for 30 updates: 30 answered, 30 waited in the outbox, all applied after; lost updates: 0"
    );
    eventually(Duration::from_secs(10), "an empty outbox", || async {
        (metric(&stack.ops(Service::UserV1), "tandem_user_outbox_pending").await == Some(0.0))
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_order_svc_is_down_the_worker_waits_without_spinning() {
    let mut stack = StackBuilder::sync().start().await;
    let mut expected = stack.seed(5, 2).await;
    let ids: Vec<String> = expected.keys().cloned().collect();
    stack.stop(Service::Orders).await;
    // Down for 30 s, as in the quality bars: longer than any backoff step, and long
    // enough that a worker requeueing instead of waiting would pass a quorum queue's
    // delivery limit and lose events to the dead-letter queue.
    let down_since = std::time::Instant::now();
    const DOWN_FOR: Duration = Duration::from_secs(30);

    let mut users = stack.users().await;
    for step in 0..20 {
        let id = &ids[step % ids.len()];
        let contact = stack.update(&mut users, id, step).await;
        expected.insert(id.clone(), contact);
    }
    metric_at_least(
        &stack.ops(Service::Worker),
        "tandem_sync_apply_retries",
        1.0,
    )
    .await;
    let first = metric(&stack.ops(Service::Worker), "tandem_sync_apply_retries")
        .await
        .unwrap();
    // Watch the retries until order-svc has been down 30 s: they back off (100 ms,
    // doubling, up to 5 s) for each of the ≤ 20 events in hand, which is about ten
    // retries per event in 30 s; a hot loop would make thousands.
    // (A wait for time itself, the scenario's length, not for some state to be reached.)
    tokio::time::sleep_until((down_since + DOWN_FOR).into()).await;
    let retries = metric(&stack.ops(Service::Worker), "tandem_sync_apply_retries")
        .await
        .unwrap()
        - first;
    assert!(
        retries <= 20.0 * 15.0,
        "{retries} retries while order-svc was down: the worker is spinning"
    );
    assert_eq!(
        metric(
            &stack.ops(Service::Worker),
            "tandem_sync_events_dead_lettered"
        )
        .await,
        Some(0.0)
    );

    stack.start(Service::Orders).await;
    stack.wait_converged(&expected, CONVERGE).await;
    println!(
        "order-svc down 30 s during 20 updates: {retries} retries, 0 dead letters, all applied after its restart; lost updates: 0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_dead_lettered_and_the_rest_flow() {
    let stack = StackBuilder::sync().start().await;
    let mut expected = stack.seed(3, 2).await;
    let ids: Vec<String> = expected.keys().cloned().collect();

    publish_raw(&stack, b"{this is not json", "poison-1").await;
    let mut bad: serde_json::Value =
        serde_json::from_str(&event(&ids[0], 5, "x@x.io", "5 St").to_json()).unwrap();
    bad["version"] = serde_json::json!("0");
    publish_raw(&stack, bad.to_string().as_bytes(), "poison-2").await;

    let mut users = stack.users().await;
    for (step, id) in ids.iter().enumerate() {
        let contact = stack.update(&mut users, id, step).await;
        expected.insert(id.clone(), contact);
    }
    stack.wait_converged(&expected, CONVERGE).await;
    metric_at_least(
        &stack.ops(Service::Worker),
        "tandem_sync_events_dead_lettered",
        2.0,
    )
    .await;

    // The DLQ tool lists both, with their reasons, and leaves them there.
    for _ in 0..2 {
        let out = stack.worker_command(&["dlq", "list", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let letters: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let by_id: HashMap<String, String> = letters
            .iter()
            .map(|l| {
                (
                    l["messageId"].as_str().unwrap().to_owned(),
                    l["reason"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(by_id.len(), 2, "{letters:?}");
        assert!(
            by_id["poison-1"].contains("not a user.updated event"),
            "{by_id:?}"
        );
        assert!(by_id["poison-2"].contains("version"), "{by_id:?}");
        assert!(letters.iter().all(|l| l["requestId"] == "rid-raw"));
    }
    println!(
        "2 poison messages dead-lettered with their reasons; the {} updates behind them applied; lost updates: 0",
        ids.len()
    );
}

/// The worker holds many deliveries at once and applies them in batches: a poison
/// event among them goes to the dead-letter queue alone, the older versions of a user
/// are acknowledged as superseded by the newest, and every user converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_holding_a_poison_event_applies_the_rest_and_dead_letters_it_alone() {
    let mut stack = StackBuilder::sync().start().await;
    let mut expected = stack.seed(5, 2).await;
    let ids: Vec<String> = expected.keys().cloned().collect();
    // With order-svc frozen, everything below piles up in the worker's hands.
    stack.signal(Service::Orders, Signal::SIGSTOP);
    let mut users = stack.users().await;
    for step in 0..15 {
        if step == 7 {
            publish_raw(&stack, b"{\"event\":\"user.updated\",", "poison-in-batch").await;
        }
        let id = &ids[step % ids.len()];
        let contact = stack.update(&mut users, id, step).await;
        expected.insert(id.clone(), contact);
    }
    let ops = stack.ops(Service::Worker);
    metric_at_least(&ops, "tandem_sync_events_consumed", 16.0).await;
    stack.signal(Service::Orders, Signal::SIGCONT);
    stack.wait_converged(&expected, CONVERGE).await;
    metric_at_least(&ops, "tandem_sync_events_applied", 15.0).await;
    assert_eq!(
        metric(&ops, "tandem_sync_events_dead_lettered").await,
        Some(1.0),
        "only the poison event is dead-lettered"
    );
    let superseded = metric(&ops, "tandem_sync_events_superseded").await.unwrap();
    assert!(
        superseded >= 1.0,
        "3 versions of each user were in hand together, yet none was superseded"
    );
    let out = stack.worker_command(&["dlq", "list", "--json"]);
    let letters: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["messageId"], "poison-in-batch");
    println!(
        "15 updates of 5 users and 1 poison event held together: the poison dead-lettered alone, \
         {superseded} older versions acknowledged as superseded, all users converged"
    );
}

/// SIGKILL while a batch is in flight (order-svc frozen under it) and more wait behind
/// it: nothing was acknowledged, so RabbitMQ redelivers all of it to the next worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_batch_loses_nothing() {
    let mut stack = StackBuilder::sync().start().await;
    let mut expected = stack.seed(6, 2).await;
    let ids: Vec<String> = expected.keys().cloned().collect();
    stack.signal(Service::Orders, Signal::SIGSTOP);
    let mut users = stack.users().await;
    for step in 0..24 {
        let id = &ids[step % ids.len()];
        let contact = stack.update(&mut users, id, step).await;
        expected.insert(id.clone(), contact);
    }
    let ops = stack.ops(Service::Worker);
    metric_at_least(&ops, "tandem_sync_events_consumed", 24.0).await;
    assert_eq!(metric(&ops, "tandem_sync_events_applied").await, Some(0.0));
    stack.kill(Service::Worker).await;
    stack.signal(Service::Orders, Signal::SIGCONT);
    stack.start(Service::Worker).await;
    stack.wait_converged(&expected, CONVERGE).await;
    let redelivered = metric(
        &stack.ops(Service::Worker),
        "tandem_sync_events_redelivered",
    )
    .await
    .unwrap();
    assert!(redelivered >= 24.0, "redelivered {redelivered} of 24");
    println!(
        "worker SIGKILLed holding 24 updates in batches (order-svc frozen): {redelivered} redelivered, \
         all 6 users converged; lost updates: 0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_can_be_replayed_once_fixed() {
    let stack = StackBuilder::sync().start().await;
    let expected_before = stack.seed(1, 2).await;
    let user_id = expected_before.keys().next().unwrap().clone();
    // A good event that was dead-lettered earlier (say, while order-svc refused it).
    let good = event(&user_id, 7, "replayed@x.io", "7 Replay Rd");
    publish_to(
        &stack,
        &stack.topology().dead_letter,
        good.to_json().as_bytes(),
        &good.event_id,
        None,
    )
    .await;

    let out = stack.worker_command(&["dlq", "replay"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("replayed 1"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let expected = HashMap::from([(
        user_id,
        Contact {
            emails: vec!["replayed@x.io".into()],
            street: "7 Replay Rd".into(),
        },
    )]);
    stack.wait_converged(&expected, CONVERGE).await;
    let listed = stack.worker_command(&["dlq", "list", "--json"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).trim().is_empty(),
        "the DLQ is empty after the replay"
    );
    println!("a dead letter replayed with `sync-worker dlq replay`: applied; the DLQ is empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_reordering_cannot_undo_a_newer_change() {
    let stack = StackBuilder::sync().start().await;
    let seeded = stack.seed(1, 3).await;
    let user_id = seeded.keys().next().unwrap().clone();
    let newest = event(&user_id, 3, "v3@x.io", "3 New St");
    let older = event(&user_id, 2, "v2@x.io", "2 Old St");
    publish_raw(&stack, newest.to_json().as_bytes(), &newest.event_id).await;
    publish_raw(&stack, newest.to_json().as_bytes(), &newest.event_id).await; // again
    publish_raw(&stack, older.to_json().as_bytes(), &older.event_id).await; // late
    metric_at_least(
        &stack.ops(Service::Worker),
        "tandem_sync_events_applied",
        3.0,
    )
    .await;
    let expected = HashMap::from([(
        user_id,
        Contact {
            emails: vec!["v3@x.io".into()],
            street: "3 New St".into(),
        },
    )]);
    assert_eq!(stack.converged(&expected).await, Ok(()));
    // Three deliveries, one change: the duplicate and the late event modified nothing.
    assert_eq!(
        metric(&stack.ops(Service::Worker), "tandem_sync_orders_modified").await,
        Some(3.0)
    );
    println!(
        "v3, v3 again, then v2 late: 3 deliveries applied, 3 orders changed once; final contact v3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_with_sigterm_drains_and_loses_nothing() {
    let mut stack = StackBuilder::sync().start().await;
    let mut expected = stack.seed(8, 2).await;
    let ids: Vec<String> = expected.keys().cloned().collect();
    let mut users = stack.users().await;
    for step in 0..30 {
        let id = &ids[step % ids.len()];
        let contact = stack.update(&mut users, id, step).await;
        expected.insert(id.clone(), contact);
    }
    // The first 30 applied (so only what follows can pile up in hand), and
    // then, with order-svc frozen, the next updates pile up in the worker's hands.
    metric_at_least(
        &stack.ops(Service::Worker),
        "tandem_sync_events_applied",
        30.0,
    )
    .await;
    stack.signal(Service::Orders, Signal::SIGSTOP);
    for step in 30..40 {
        let id = &ids[step % ids.len()];
        let contact = stack.update(&mut users, id, step).await;
        expected.insert(id.clone(), contact);
    }
    let ops = stack.ops(Service::Worker);
    eventually(CONVERGE, "the worker to hold all 40 updates", || {
        let ops = ops.clone();
        async move {
            (metric(&ops, "tandem_sync_events_consumed").await >= Some(40.0)).then_some(())
        }
    })
    .await;
    let applied_before = metric(&ops, "tandem_sync_events_applied").await.unwrap();
    assert!(applied_before < 40.0, "some updates must still be in hand");
    // SIGTERM with deliveries in hand; order-svc comes back only once the worker is
    // draining, so what it held cannot have been finished before.
    stack.signal(Service::Worker, Signal::SIGTERM);
    eventually(CONVERGE, "the worker to start draining", || {
        let draining = stack
            .proc(Service::Worker)
            .output()
            .contains("stopping: finishing the deliveries in hand");
        async move { draining.then_some(()) }
    })
    .await;
    stack.signal(Service::Orders, Signal::SIGCONT);
    let status = stack
        .wait_exit(Service::Worker, Duration::from_secs(30))
        .await;
    assert!(status.success(), "the worker exited with {status}");
    // No worker runs now: the updates it held are applied only if it finished them
    // before exiting rather than handing them back.
    stack.wait_converged(&expected, CONVERGE).await;
    for step in 40..60 {
        let id = &ids[step % ids.len()];
        let contact = stack.update(&mut users, id, step).await;
        expected.insert(id.clone(), contact);
    }
    stack.start(Service::Worker).await;
    for step in 60..80 {
        let id = &ids[step % ids.len()];
        let contact = stack.update(&mut users, id, step).await;
        expected.insert(id.clone(), contact);
    }
    stack.wait_converged(&expected, CONVERGE).await;
    assert_eq!(
        metric(
            &stack.ops(Service::Worker),
            "tandem_sync_events_redelivered"
        )
        .await,
        Some(0.0),
        "the stopped worker handed deliveries back instead of finishing them"
    );
    println!(
        "worker stopped with SIGTERM holding {} of 40 updates (order-svc frozen): it \
         finished them before exiting cleanly; restarted after 60; all orders converged, \
         redeliveries 0, lost updates 0",
        40.0 - applied_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_keeps_failing_is_dead_lettered_once_its_retry_budget_is_spent() {
    // The worker calls a server that is not order-svc (user-svc v1 itself): every
    // ApplyUserContact answers UNIMPLEMENTED, a failure that never goes away. Retried
    // forever, such events would hold their delivery slots (and with 32 of them, all
    // sync) for good.
    let stack = StackBuilder::sync()
        .worker_applies_to(Service::UserV1)
        .retry_budget(Duration::from_secs(2))
        .start()
        .await;
    let seeded = stack.seed(3, 1).await;
    let mut users = stack.users().await;
    for (step, id) in seeded.keys().enumerate() {
        stack.update(&mut users, id, step).await;
    }
    let ops = stack.ops(Service::Worker);
    metric_at_least(&ops, "tandem_sync_events_dead_lettered", 3.0).await;
    assert!(metric(&ops, "tandem_sync_apply_retries").await >= Some(3.0));
    let out = stack.worker_command(&["dlq", "list", "--json"]);
    let reasons: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let letter: serde_json::Value = serde_json::from_str(l).unwrap();
            letter["reason"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .all(|r| r.contains("Unimplemented") && r.contains("retry budget is 2s")),
        "{reasons:?}"
    );
    println!(
        "3 events order-svc could never apply: retried for 2 s each, then dead-lettered with their reason"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_without_a_request_id_is_followed_under_a_fresh_one() {
    let stack = StackBuilder::sync().start().await;
    let seeded = stack.seed(1, 1).await;
    let user_id = seeded.keys().next().unwrap().clone();
    let old = event(&user_id, 2, "no-rid@x.io", "2 Quiet St");
    publish_to(
        &stack,
        &stack.topology().exchange,
        old.to_json().as_bytes(),
        &old.event_id,
        None,
    )
    .await;
    let expected = HashMap::from([(
        user_id.clone(),
        Contact {
            emails: vec!["no-rid@x.io".into()],
            street: "2 Quiet St".into(),
        },
    )]);
    stack.wait_converged(&expected, CONVERGE).await;
    // order-svc logs each ApplyUserContact inside a span naming the call's request id.
    let log = stack.proc(Service::Orders).output();
    let line = log
        .lines()
        .find(|l| l.contains("user contact applied") && l.contains(&user_id))
        .unwrap_or_else(|| panic!("no ApplyUserContact for {user_id} in:\n{log}"));
    let request_id = line
        .split("request_id=")
        .nth(1)
        .and_then(|rest| rest.split(['}', ' ']).next())
        .unwrap_or_default();
    assert!(
        uuid::Uuid::parse_str(request_id).is_ok(),
        "the call carried request id {request_id:?}: {line}"
    );
    println!("an event with no request id was applied under the fresh request id {request_id}");
}

/// What `sync-worker dlq replay` (and the worker's dead-lettering) publish with: a broker
/// that accepted the connection and then stopped answering must not hold the publisher
/// (and the message it took from the dead-letter queue) forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_to_a_broker_gone_silent_gives_up_within_its_timeout() {
    use tandem_messaging::amqp::{PublishError, publish_confirmed};
    let real = broker::amqp_url();
    let proxy = ChaosProxy::start(broker::broker_addr(&real).await).await;
    let connection =
        tandem_messaging::amqp::connect(&broker::url_via(&real, proxy.addr), "tandem test")
            .await
            .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let topology = broker::unique_topology("silent");
    tandem_messaging::amqp::declare(&connection, &topology)
        .await
        .unwrap();
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    proxy.silence();
    let started = std::time::Instant::now();
    let published = publish_confirmed(
        &channel,
        &topology.exchange,
        tandem_messaging::USER_UPDATED,
        b"{}",
        tandem_messaging::amqp::event_properties(
            "silent-1",
            &tandem_messaging::EventOrigin::default(),
            "test",
        ),
        Duration::from_secs(1),
    )
    .await;
    let waited = started.elapsed();
    proxy.restore();
    drop(connection);
    broker::remove_topology(&real, &topology);
    assert!(
        matches!(published, Err(PublishError::Timeout(_))),
        "{published:?}"
    );
    assert!(waited < Duration::from_secs(3), "waited {waited:?}");
    println!("a publish to a silent broker gave up after {waited:?} (timeout 1 s)");
}

/// An exclusive queue of the test's own on the stack's exchange: it sees every event
/// published at all.
async fn audit_queue(stack: &Stack) -> (lapin::Connection, lapin::Channel, String) {
    let (connection, channel) = broker_channel().await;
    tandem_messaging::amqp::declare(&connection, stack.topology())
        .await
        .unwrap();
    let audit = format!("{}.audit", stack.topology().queue);
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    channel
        .queue_declare(audit.as_str().into(), exclusive, FieldTable::default())
        .await
        .unwrap();
    channel
        .queue_bind(
            audit.as_str().into(),
            stack.topology().exchange.as_str().into(),
            "user.updated".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    (connection, channel, audit)
}

/// Takes `n` events from the audit queue (failing if they do not come), then checks that
/// no more follow for a moment.
async fn audited(channel: &lapin::Channel, audit: &str, n: usize) -> Vec<UserUpdated> {
    let tag = format!("audit-{}", uuid::Uuid::new_v4());
    let mut consumer = channel
        .basic_consume(
            audit.into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut events = Vec::new();
    while events.len() < n {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} events were published", events.len()))
            .unwrap()
            .unwrap();
        events.push(UserUpdated::parse(&delivery.data).unwrap());
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .unwrap();
    }
    let extra = tokio::time::timeout(Duration::from_secs(2), consumer.next()).await;
    assert!(
        extra.is_err(),
        "more events than changes were published: {extra:?}"
    );
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_share_the_outbox_without_publishing_twice() {
    let stack = StackBuilder::sync().binary(Service::UserV2).start().await;
    let (_connection, channel, audit) = audit_queue(&stack).await;
    let mut expected = stack.seed(6, 2).await;
    let ids: Vec<String> = expected.keys().cloned().collect();
    let mut clients = [stack.users().await, stack.user_client(Flavor::V2).await];
    for step in 0..60 {
        let id = &ids[step % ids.len()];
        let contact = stack.update(&mut clients[step % 2], id, step).await;
        expected.insert(id.clone(), contact);
    }
    stack.wait_converged(&expected, CONVERGE).await;
    let events = audited(&channel, &audit, 60).await;
    let unique: HashSet<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(unique.len(), 60, "each change was published once");
    println!("60 changes through v1 and v2 (two relays, one outbox): 60 events published, 0 twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_svc_killed_between_commit_and_publish_publishes_after_restart() {
    let mut stack = StackBuilder::sync().start().await;
    let (_connection, channel, audit) = audit_queue(&stack).await;
    let mut expected = stack.seed(8, 2).await;
    // Changes commit while nothing can be published…
    stack.proxy().cut();
    let changed = change_five(&stack, &mut expected).await;
    metric_at_least(
        &stack.ops(Service::UserV1),
        "tandem_user_outbox_pending",
        5.0,
    )
    .await;
    // …and user-svc dies before it could publish them.
    restart_user_v1_and_check_its_events(&mut stack, &expected, (&channel, &audit), &changed).await;
    println!(
        "user-svc SIGKILLed with 5 committed, unpublished changes: after restart 5 events \
         published, for exactly those 5 users; lost updates: 0"
    );
}

/// The hand-over path: while its relay is connected, user-svc writes each event leased to
/// that relay and hands it over in memory. Killed while the relay holds such events
/// unconfirmed (the broker gone silent), the process takes them with it; the outbox keeps
/// them, and once their lease runs out the restarted process publishes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_svc_killed_holding_handed_over_events_publishes_them_after_their_lease() {
    let mut stack = StackBuilder::sync()
        .env("USER_SVC_OUTBOX_LEASE_SECS", "3")
        .start()
        .await;
    let (_connection, channel, audit) = audit_queue(&stack).await;
    let mut expected = stack.seed(8, 2).await;
    let ops = stack.ops(Service::UserV1);
    let handed_before = metric(&ops, "tandem_user_outbox_handed_over_total")
        .await
        .unwrap_or(0.0);
    // The broker stops answering but the connection stays up: the relay is still
    // connected, takes each event as it is written and waits for confirms that never come.
    stack.proxy().silence();
    let changed = change_five(&stack, &mut expected).await;
    metric_at_least(
        &ops,
        "tandem_user_outbox_handed_over_total",
        handed_before + 5.0,
    )
    .await;
    assert!(
        stack.converged(&expected).await.is_err(),
        "nothing can have been applied through a silent broker"
    );
    restart_user_v1_and_check_its_events(&mut stack, &expected, (&channel, &audit), &changed).await;
    println!(
        "user-svc SIGKILLed holding 5 handed-over, unconfirmed events: after their 3 s lease \
         the restarted process published 5 events, for exactly those 5 users; lost updates: 0"
    );
}

/// Changes the contact of five of the `expected` users through user-svc v1 and records
/// the new contacts; returns those users.
async fn change_five(stack: &Stack, expected: &mut HashMap<String, Contact>) -> HashSet<String> {
    let mut users = stack.users().await;
    let changed: HashSet<String> = expected.keys().take(5).cloned().collect();
    for (step, id) in changed.iter().enumerate() {
        let contact = stack.update(&mut users, id, step).await;
        expected.insert(id.clone(), contact);
    }
    changed
}

/// SIGKILLs user-svc v1 (its relay cut off from the broker, holding committed changes),
/// lets the broker through again and restarts it: every order converges to `expected`,
/// and the audit queue sees an event for exactly the `changed` users.
async fn restart_user_v1_and_check_its_events(
    stack: &mut Stack,
    expected: &HashMap<String, Contact>,
    (channel, audit): (&lapin::Channel, &str),
    changed: &HashSet<String>,
) {
    stack.kill(Service::UserV1).await;
    stack.proxy().restore();
    stack.start(Service::UserV1).await;
    stack.wait_converged(expected, CONVERGE).await;
    let published: HashSet<String> = audited(channel, audit, changed.len())
        .await
        .into_iter()
        .map(|e| e.contact.user_id.to_string())
        .collect();
    assert_eq!(
        &published, changed,
        "exactly the changed users had their events published"
    );
}

/// Stops and restarts the real RabbitMQ application. It disturbs every user of the
/// broker, so it is left out of the normal run; `scripts/faults` runs it alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the shared RabbitMQ; run by scripts/faults, one test at a time"]
async fn rabbitmq_stopped_and_restarted_loses_nothing() {
    let stack = StackBuilder::sync().start().await;
    let mut expected = stack.seed(5, 2).await;
    let ids: Vec<String> = expected.keys().cloned().collect();
    let rabbitmqctl = |action: &str| {
        let status = std::process::Command::new("rabbitmqctl")
            .arg(action)
            .status()
            .unwrap();
        assert!(status.success(), "rabbitmqctl {action} failed");
    };
    rabbitmqctl("stop_app");
    let mut users = stack.users().await;
    for step in 0..20 {
        let id = &ids[step % ids.len()];
        let contact = stack.update(&mut users, id, step).await;
        expected.insert(id.clone(), contact);
    }
    metric_at_least(
        &stack.ops(Service::UserV1),
        "tandem_user_outbox_pending",
        20.0,
    )
    .await;
    rabbitmqctl("start_app");
    stack.wait_converged(&expected, CONVERGE).await;
    println!("RabbitMQ stopped for 20 updates and started again: all applied; lost updates: 0");
}

/// One trace from the REST call to the order row: the edge, user-svc's
/// UpdateUserContact, the relay's publish, the worker's handling and order-svc's
/// ApplyUserContacts each export a span to the OTLP receiver, all with one trace id and
/// each the parent of the next, and each process logs that trace id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_put_is_one_trace_through_the_outbox_the_broker_and_the_worker() {
    let receiver = OtlpReceiver::start().await;
    let stack = StackBuilder::sync()
        .with(Service::Edge)
        .binary(Service::Edge)
        .with(Service::UserV2)
        .p(100)
        .env("RUST_LOG", "info,tandem_serving=debug,user_svc=debug")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint())
        // Export within a tenth of a second, not the SDK's default five.
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .start()
        .await;
    let http = stack.http();
    let email = unique_email("trace");
    let user = http.create_user(&email).await;
    let order_id = http.create_order(&user, &email).await;

    let trace_id = format!("{:032x}", fastrand::u128(1..));
    let put = http
        .send(
            http.request(reqwest::Method::PUT, &format!("/users/{user}"))
                .header("content-type", "application/json")
                .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
                .body(
                    serde_json::json!({"deliveryAddress": address_json("7 Trace St")}).to_string(),
                ),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text);
    let answered = put.header("traceparent").unwrap().to_owned();
    assert!(
        answered.starts_with(&format!("00-{trace_id}-")),
        "{answered}"
    );
    // The order converges (the worker applied the event)…
    eventually(
        Duration::from_secs(10),
        "the order to follow the user",
        || {
            let (http, order_id) = (http.clone(), order_id.clone());
            async move {
                let order = http.get(&format!("/orders/{order_id}")).await.json();
                (order["order"]["deliveryAddress"]["street"] == "7 Trace St").then_some(())
            }
        },
    )
    .await;
    // …and every hop logged the trace.
    let hops = [
        (Service::Edge, "answered"),
        (Service::UserV1, "UpdateUserContact"),
        (Service::UserV1, "event published"),
        (Service::Worker, "event applied"),
        (Service::Orders, "ApplyUserContact"),
    ];
    for (service, line) in hops {
        let proc = stack.proc(service);
        eventually(Duration::from_secs(5), line, || async {
            proc.output()
                .lines()
                .any(|l| l.contains(&trace_id) && l.contains(line))
                .then_some(())
        })
        .await;
    }

    // The spans, as an OTLP collector got them: (service, span name, kind), in causal
    // order (P=100: v1 serves the PUT, and only v1 runs as a process with a relay).
    let chain = [
        ("edge", "PUT /users/{userId}", 2),
        (
            "user-svc-v1",
            "tandem.user.v1.UserService/UpdateUserContact",
            2,
        ),
        ("user-svc-v1", "publish user.updated", 4),
        ("sync-worker", "process user.updated", 5),
        (
            "order-svc",
            "tandem.order.v1.OrderService/ApplyUserContacts",
            2,
        ),
    ];
    let spans = eventually(
        Duration::from_secs(10),
        "the trace's five spans",
        || async {
            let spans = receiver.trace(&trace_id);
            chain
                .iter()
                .map(|(service, name, kind)| {
                    spans
                        .iter()
                        .find(|s| s.service == *service && s.name == *name && s.kind == *kind)
                        .cloned()
                })
                .collect::<Option<Vec<_>>>()
        },
    )
    .await;
    // The edge continued the client's span and answered with its own.
    assert_eq!(spans[0].parent_span_id, "00f067aa0ba902b7");
    assert_eq!(answered, format!("00-{trace_id}-{}-01", spans[0].span_id));
    assert_eq!(spans[0].attribute("http.response.status_code"), Some("200"));
    for pair in spans.windows(2) {
        assert_eq!(
            pair[1].parent_span_id, pair[0].span_id,
            "{} should be the child of {}",
            pair[1].name, pair[0].name
        );
    }
    assert_eq!(spans[4].attribute("rpc.grpc.status_code"), Some("0"));
    println!(
        "one trace {trace_id}: {}",
        spans
            .iter()
            .map(|s| format!("{} ({})", s.name, s.service))
            .collect::<Vec<_>>()
            .join(" -> ")
    );
}

/// A receiver that is down costs nothing but the spans: every process keeps answering
/// and syncing, and counts the failed exports on /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_otlp_receiver_is_counted_and_never_felt() {
    // A reserved port that never listens: every export is refused.
    let down = PortReservation::new();
    let stack = StackBuilder::sync()
        .with(Service::Edge)
        .with(Service::UserV2)
        .all_binaries()
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            &format!("http://{}", down.addr()),
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_EXPORTER_OTLP_TIMEOUT", "1000")
        .start()
        .await;
    let http = stack.http();
    let email = unique_email("otlp-down");
    let user = http.create_user(&email).await;
    let order_id = http.create_order(&user, &email).await;
    for i in 0..5 {
        let street = format!("{i} Unexported St");
        let put = http
            .put(
                &format!("/users/{user}"),
                &serde_json::json!({"deliveryAddress": address_json(&street)}),
            )
            .await;
        assert_eq!(put.status, 200, "{}", put.text);
    }
    eventually(CONVERGE, "the order to follow the user", || {
        let (http, order_id) = (http.clone(), order_id.clone());
        async move {
            let order = http.get(&format!("/orders/{order_id}")).await.json();
            (order["order"]["deliveryAddress"]["street"] == "4 Unexported St").then_some(())
        }
    })
    .await;
    let mut counted = Vec::new();
    for (service, prefix) in [
        (Service::UserV1, "tandem_user"),
        (Service::Orders, "tandem_order"),
        (Service::Worker, "tandem_sync"),
    ] {
        let ops = stack.ops(service);
        let failures_metric = format!("{prefix}_otlp_export_failures");
        let failures = eventually(Duration::from_secs(20), &failures_metric, || async {
            metric(&ops, &failures_metric).await.filter(|n| *n > 0.0)
        })
        .await;
        let exported = metric(&ops, &format!("{prefix}_otlp_spans_exported")).await;
        assert_eq!(exported, Some(0.0), "{}", service.name());
        counted.push(format!("{}: {failures}", service.name()));
    }
    let edge_failures = eventually(Duration::from_secs(20), "the edge's failures", || async {
        let text = http.get("/metrics").await.text;
        text.lines()
            .find(|l| l.starts_with("tandem_edge_otlp_export_failures_total "))
            .and_then(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .filter(|n| *n > 0.0)
    })
    .await;
    counted.push(format!("edge: {edge_failures}"));
    // Still answering after the failures were counted.
    assert_eq!(http.get(&format!("/users/{user}")).await.status, 200);
    println!("failed OTLP exports counted: {}", counted.join(", "));
}

/// An `AMQP_URL` listing several brokers (a cluster's nodes) connects to one that
/// answers, wherever in the list the node that is down stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_brokers_skips_the_node_that_is_down() {
    let down = PortReservation::new();
    let dead = format!("amqp://guest:guest@{}/%2f", down.addr());
    let list = format!("{dead},{}", broker::amqp_url());
    // Each connection starts at the next broker of the list: both orders are met.
    for _ in 0..2 {
        let connection = tandem_messaging::amqp::connect(&list, "tandem test")
            .await
            .expect("the live broker of the list");
        assert!(connection.status().connected());
    }
    let everything_down = format!("{dead},{dead}");
    assert!(
        tandem_messaging::amqp::connect(&everything_down, "tandem test")
            .await
            .is_err()
    );
}
