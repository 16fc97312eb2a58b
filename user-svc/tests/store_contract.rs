//! The contract every user store keeps, run against SQLite always and against MongoDB
//! when MONGO_URI is set (each test in a database of its own).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tandem::domain::{ContactChange, UserId};
use tandem_messaging::UserUpdated;
use tandem_testkit::{domain_address as address, emails};
use user_svc::model::User;
use user_svc::store::{
    MongoUserStore, OutboxEvent, OutboxLease, SqliteUserStore, StoreError, UserStore,
};

fn user(list: &[&str]) -> User {
    User {
        user_id: UserId::new_random(),
        first_name: Some("Robert".into()),
        last_name: None,
        phone_number: Some("+1-438-222-7890".into()),
        emails: emails(list),
        delivery_address: address("456 Elm Avenue"),
        contact_version: 1,
        created_at: None,
        updated_at: None,
    }
}

fn change(list: Option<&[&str]>, street: Option<&str>) -> ContactChange {
    ContactChange {
        emails: list.map(emails),
        delivery_address: street.map(address),
    }
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Applies a change made by request "req-1" in trace TRACEPARENT, stamped at `stamp`
/// (as v2 does) or not.
async fn update(
    store: &dyn UserStore,
    user_id: UserId,
    change: &ContactChange,
    stamp: Option<DateTime<Utc>>,
) -> Result<User, StoreError> {
    store
        .update_contact(
            user_id,
            change,
            stamp,
            user_svc::store::EventOrigin {
                request_id: Some("req-1".into()),
                traceparent: Some(TRACEPARENT.into()),
                tracestate: Some("vendor=1".into()),
            },
            None,
        )
        .await
        .map(|updated| updated.user)
}

async fn create_then_get_round_trips(store: Arc<dyn UserStore>) {
    let plain = user(&["Robert.Williams@hotmail.com", "rob.w@gouv.qc.ca"]);
    store.create_user(&plain).await.unwrap();
    assert_eq!(store.get_user(plain.user_id).await.unwrap(), Some(plain));

    let stamped = User {
        created_at: Some(tandem::domain::now()),
        updated_at: Some(tandem::domain::now()),
        first_name: None,
        phone_number: None,
        ..user(&["stamped@x.io"])
    };
    store.create_user(&stamped).await.unwrap();
    assert_eq!(
        store.get_user(stamped.user_id).await.unwrap(),
        Some(stamped)
    );
    assert_eq!(store.get_user(UserId::new_random()).await.unwrap(), None);
}

async fn emails_are_unique_ignoring_case(store: Arc<dyn UserStore>) {
    store.create_user(&user(&["rob@x.io"])).await.unwrap();
    let clash = user(&["other@x.io", "ROB@X.IO"]);
    match store.create_user(&clash).await {
        Err(StoreError::EmailTaken { email }) => assert_eq!(email, "ROB@X.IO"),
        other => panic!("expected EmailTaken, got {other:?}"),
    }
    // Nothing of the refused user remains: its other address is still free.
    assert_eq!(store.get_user(clash.user_id).await.unwrap(), None);
    store.create_user(&user(&["other@x.io"])).await.unwrap();
}

async fn concurrent_creates_with_one_email_admit_exactly_one(store: Arc<dyn UserStore>) {
    let attempts = (0..20).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { store.create_user(&user(&["race@x.io"])).await })
    });
    let results = futures::future::join_all(attempts).await;
    let created = results.iter().filter(|r| matches!(r, Ok(Ok(())))).count();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Ok(Err(StoreError::EmailTaken { .. }))))
        .count();
    assert_eq!((created, refused), (1, 19), "{results:?}");
}

async fn contact_change_bumps_version_and_records_event(store: Arc<dyn UserStore>) {
    let original = user(&["a@x.io"]);
    store.create_user(&original).await.unwrap();
    let stamp = Some(tandem::domain::now());
    let changed = update(
        &*store,
        original.user_id,
        &change(Some(&["b@x.io", "c@x.io"]), Some("99 Park Ave")),
        stamp,
    )
    .await
    .unwrap();
    assert_eq!(changed.contact_version, 2);
    assert_eq!(changed.emails, emails(&["b@x.io", "c@x.io"]));
    assert_eq!(changed.delivery_address.street(), "99 Park Ave");
    assert_eq!(changed.updated_at, stamp);
    assert_eq!(changed.first_name, original.first_name);
    assert_eq!(
        store.get_user(original.user_id).await.unwrap(),
        Some(changed.clone())
    );

    // An address-only change keeps the emails and bumps the version again.
    let again = update(
        &*store,
        original.user_id,
        &change(None, Some("1 Main St")),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        (again.contact_version, again.emails.clone()),
        (3, changed.emails.clone())
    );

    let events = store
        .claim_outbox("relay-a", Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events.iter().map(|e| e.version).collect::<Vec<_>>(), [2, 3]);
    let event = UserUpdated::parse(events[0].payload.as_bytes()).unwrap();
    let body = &event.contact;
    assert_eq!(body.user_id, original.user_id);
    assert_eq!(body.version, 2);
    assert_eq!(body.emails, emails(&["b@x.io", "c@x.io"]));
    assert_eq!(body.delivery_address.street(), "99 Park Ave");
    assert_eq!(events[0].origin.request_id.as_deref(), Some("req-1"));
    assert_eq!(events[0].origin.traceparent.as_deref(), Some(TRACEPARENT));
    assert_eq!(events[0].origin.tracestate.as_deref(), Some("vendor=1"));
    assert_eq!(events[0].event_id, event.event_id);

    // The old address is free again; the new ones are taken.
    store.create_user(&user(&["A@x.io"])).await.unwrap();
    assert!(matches!(
        store.create_user(&user(&["c@X.io"])).await,
        Err(StoreError::EmailTaken { .. })
    ));
}

async fn refused_changes_leave_no_trace(store: Arc<dyn UserStore>) {
    let missing = update(
        &*store,
        UserId::new_random(),
        &change(Some(&["z@x.io"]), None),
        None,
    )
    .await;
    assert!(matches!(missing, Err(StoreError::NotFound)), "{missing:?}");

    let holder = user(&["held@x.io"]);
    let other = user(&["mine@x.io"]);
    store.create_user(&holder).await.unwrap();
    store.create_user(&other).await.unwrap();
    let taken = update(
        &*store,
        other.user_id,
        &change(Some(&["mine@x.io", "HELD@x.io"]), Some("2 Elm")),
        None,
    )
    .await;
    assert!(
        matches!(taken, Err(StoreError::EmailTaken { .. })),
        "{taken:?}"
    );
    assert_eq!(
        store.get_user(other.user_id).await.unwrap(),
        Some(other.clone())
    );
    assert_eq!(store.outbox_stats().await.unwrap().pending, 0);

    // Keeping one's own address, in another case, is not a clash.
    let kept = update(
        &*store,
        other.user_id,
        &change(Some(&["MINE@x.io"]), None),
        None,
    )
    .await
    .unwrap();
    assert_eq!(kept.emails, emails(&["MINE@x.io"]));
}

async fn outbox_leases_keep_relays_apart(store: Arc<dyn UserStore>) {
    let u = user(&["lease@x.io"]);
    store.create_user(&u).await.unwrap();
    for street in ["1 A St", "2 B St", "3 C St"] {
        update(&*store, u.user_id, &change(None, Some(street)), None)
            .await
            .unwrap();
    }
    let stats = store.outbox_stats().await.unwrap();
    assert_eq!(stats.pending, 3);
    assert!(stats.oldest.is_some());

    let first = store
        .claim_outbox("relay-a", Duration::from_secs(30), 2)
        .await
        .unwrap();
    assert_eq!(first.iter().map(|e| e.version).collect::<Vec<_>>(), [2, 3]);
    assert!(first.iter().all(|e| e.attempts == 1));
    // The other relay only gets what relay-a has not leased.
    let second = store
        .claim_outbox("relay-b", Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(second.iter().map(|e| e.version).collect::<Vec<_>>(), [4]);
    assert!(
        store
            .claim_outbox("relay-b", Duration::from_secs(30), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // relay-a publishes one and gives the other back; relay-b can take it at once.
    store
        .complete_outbox(&[first[0].event_id.clone()])
        .await
        .unwrap();
    store
        .release_outbox("relay-a", &[first[1].event_id.clone()])
        .await
        .unwrap();
    let retaken = store
        .claim_outbox("relay-b", Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(retaken.iter().map(|e| e.version).collect::<Vec<_>>(), [3]);
    assert_eq!(retaken[0].attempts, 2);

    // A relay that dies keeps its lease only until it runs out.
    update(&*store, u.user_id, &change(None, Some("4 D St")), None)
        .await
        .unwrap();
    // (A zero lease has run out as soon as it is taken.)
    let doomed = store
        .claim_outbox("relay-c", Duration::ZERO, 10)
        .await
        .unwrap();
    assert_eq!(doomed.len(), 1);
    let rescued = store
        .claim_outbox("relay-a", Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(
        rescued.iter().map(|e| &e.event_id).collect::<Vec<_>>(),
        [&doomed[0].event_id]
    );

    let all: Vec<String> = [second, retaken, rescued]
        .concat()
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    store.complete_outbox(&all).await.unwrap();
    assert_eq!(store.outbox_stats().await.unwrap().pending, 0);
    store.ping().await.unwrap();
}

/// The hand-over path of the relay (its own process's writes): the event is written
/// leased to the relay named, no other relay claims it while the lease holds, and it is
/// the very event the outbox holds.
async fn an_event_written_leased_waits_for_its_relay(store: Arc<dyn UserStore>) {
    let u = user(&["handed@x.io"]);
    store.create_user(&u).await.unwrap();
    let origin = user_svc::store::EventOrigin {
        request_id: Some("req-2".into()),
        traceparent: Some(TRACEPARENT.into()),
        tracestate: None,
    };
    let lease = |owner: &str, lease: Duration| OutboxLease {
        owner: owner.into(),
        lease,
    };
    let updated = store
        .update_contact(
            u.user_id,
            &change(None, Some("9 Handed St")),
            None,
            origin.clone(),
            Some(&lease("relay-a", Duration::from_secs(30))),
        )
        .await
        .unwrap();
    assert_eq!(updated.user.contact_version, 2);
    let handed = updated.event;
    assert_eq!((handed.version, handed.attempts), (2, 1));
    assert_eq!(handed.user_id, u.user_id.to_string());
    assert_eq!(handed.origin, origin);
    let body = UserUpdated::parse(handed.payload.as_bytes()).unwrap();
    assert_eq!(body.contact.delivery_address.street(), "9 Handed St");
    assert_eq!(store.outbox_stats().await.unwrap().pending, 1);
    assert!(
        store
            .claim_outbox("relay-b", Duration::from_secs(30), 10)
            .await
            .unwrap()
            .is_empty(),
        "leased to relay-a as it was written"
    );

    // Given back (the relay lost its broker before publishing it): any relay takes it, and
    // it is the event relay-a was handed.
    store
        .release_outbox("relay-a", std::slice::from_ref(&handed.event_id))
        .await
        .unwrap();
    let retaken = store
        .claim_outbox("relay-b", Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(
        retaken,
        [OutboxEvent {
            attempts: 2,
            ..handed.clone()
        }]
    );

    // A relay that died with an event handed to it: the lease runs out, and another takes it.
    let doomed = store
        .update_contact(
            u.user_id,
            &change(None, Some("10 Doomed St")),
            None,
            origin,
            Some(&lease("relay-c", Duration::ZERO)),
        )
        .await
        .unwrap()
        .event;
    let rescued = store
        .claim_outbox("relay-b", Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(
        rescued
            .iter()
            .map(|e| (&e.event_id, e.attempts))
            .collect::<Vec<_>>(),
        [(&doomed.event_id, 2)]
    );
    store
        .complete_outbox(&[handed.event_id, doomed.event_id])
        .await
        .unwrap();
    assert_eq!(store.outbox_stats().await.unwrap().pending, 0);
}

// === harness ===

async fn sqlite_store() -> (Arc<dyn UserStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteUserStore::open(&dir.path().join("user_db.sqlite"))
        .await
        .unwrap();
    (Arc::new(store), dir)
}

async fn mongo_store() -> Arc<dyn UserStore> {
    let uri = tandem_testkit::contract::mongo_uri("user_db_test");
    Arc::new(MongoUserStore::connect(&uri).await.unwrap())
}

tandem_testkit::store_contract!(
    sqlite: sqlite_store,
    mongo: mongo_store,
    cases: [
    create_then_get_round_trips,
    emails_are_unique_ignoring_case,
    concurrent_creates_with_one_email_admit_exactly_one,
    contact_change_bumps_version_and_records_event,
    refused_changes_leave_no_trace,
    outbox_leases_keep_relays_apart,
    an_event_written_leased_waits_for_its_relay,
    ]
);
