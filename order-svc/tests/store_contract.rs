//! The contract every order store keeps, run against SQLite always and against MongoDB
//! when MONGO_URI is set (each case in a database of its own).

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use order_svc::model::{ListFilter, Order, OrderItem, PageCursor};
use order_svc::store::{
    DetailsOutcome, MongoOrderStore, OrderStore, SqliteOrderStore, StatusOutcome,
};
use tandem::domain::{ContactChange, OrderId, OrderStatus, Price, UserContact, UserId};
use tandem_testkit::{domain_address as address, emails};

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_764_000_000_000 + ms).unwrap()
}

fn order(user_id: UserId, status: OrderStatus, created_at: DateTime<Utc>) -> Order {
    Order {
        order_id: OrderId::new_random(),
        user_id,
        items: vec![
            OrderItem {
                item_id: "Study table".into(),
                quantity: 1,
                price: Price::parse("29.99").unwrap(),
            },
            OrderItem {
                item_id: "Chair".into(),
                quantity: 3,
                price: Price::parse("15.990").unwrap(),
            },
        ],
        emails: emails(&["robert.williams@hotmail.com"]),
        delivery_address: address("456 Elm Avenue"),
        status,
        contact_version: 0,
        created_at,
        updated_at: created_at,
    }
}

/// Adds an item of 27 significant digits (named `name`, nine billion of them) and a free
/// one: prices a float would round.
fn add_exact_items(o: &mut Order, name: &str) {
    o.items.push(OrderItem {
        item_id: name.into(),
        quantity: 9_000_000_000,
        price: Price::parse("123456789012345678.123456789").unwrap(),
    });
    o.items.push(OrderItem {
        item_id: "Free".into(),
        quantity: 1,
        price: Price::parse("0").unwrap(),
    });
}

fn contact(user_id: UserId, version: i64, email: &str, street: &str) -> UserContact {
    UserContact {
        user_id,
        version,
        emails: emails(&[email]),
        delivery_address: address(street),
    }
}

async fn orders_round_trip_with_exact_prices(store: Arc<dyn OrderStore>) {
    let mut o = order(UserId::new_random(), OrderStatus::UnderProcess, at(0));
    add_exact_items(&mut o, "Precise");
    store.create_order(&o).await.unwrap();
    let back = store.get_order(o.order_id).await.unwrap().unwrap();
    assert_eq!(back, o);
    let prices: Vec<String> = back.items.iter().map(|i| i.price.to_string()).collect();
    assert_eq!(
        prices,
        ["29.99", "15.990", "123456789012345678.123456789", "0"]
    );
    assert_eq!(store.get_order(OrderId::new_random()).await.unwrap(), None);
}

/// Walks every page of a listing.
async fn all_pages(store: &dyn OrderStore, filter: ListFilter, page: usize) -> Vec<OrderId> {
    let mut seen = Vec::new();
    let mut after: Option<PageCursor> = None;
    loop {
        let orders = store.list_orders(filter, after, page).await.unwrap();
        seen.extend(orders.iter().map(|o| o.order_id));
        if orders.len() < page {
            return seen;
        }
        after = orders.last().map(Order::cursor);
    }
}

async fn listing_filters_and_pages_without_gaps(store: Arc<dyn OrderStore>) {
    let alice = UserId::new_random();
    let bob = UserId::new_random();
    let mut expected_all = Vec::new();
    for i in 0..23 {
        let status = OrderStatus::ALL[i % 3];
        let user = if i % 2 == 0 { alice } else { bob };
        // Several orders share a timestamp: the order id breaks the tie.
        let o = order(user, status, at((i / 4) as i64));
        store.create_order(&o).await.unwrap();
        expected_all.push(o);
    }
    expected_all.sort_by_key(|o| (o.created_at, o.order_id.to_string()));

    let everything = all_pages(store.as_ref(), ListFilter::default(), 5).await;
    assert_eq!(
        everything,
        expected_all.iter().map(|o| o.order_id).collect::<Vec<_>>()
    );

    let filter = ListFilter {
        status: Some(OrderStatus::Shipping),
        user_id: Some(alice),
    };
    let shipping_of_alice = all_pages(store.as_ref(), filter, 2).await;
    let expected: Vec<OrderId> = expected_all
        .iter()
        .filter(|o| o.status == OrderStatus::Shipping && o.user_id == alice)
        .map(|o| o.order_id)
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(shipping_of_alice, expected);

    let by_status = ListFilter {
        status: Some(OrderStatus::Delivered),
        user_id: None,
    };
    let delivered = all_pages(store.as_ref(), by_status, 100).await;
    assert_eq!(
        delivered.len(),
        expected_all
            .iter()
            .filter(|o| o.status == OrderStatus::Delivered)
            .count()
    );
    let unique: HashSet<_> = everything.iter().collect();
    assert_eq!(unique.len(), 23);
}

async fn status_moves_forward_only(store: Arc<dyn OrderStore>) {
    let o = order(UserId::new_random(), OrderStatus::UnderProcess, at(0));
    store.create_order(&o).await.unwrap();
    let later = at(1000);

    let StatusOutcome::Moved(shipped) = store
        .update_status(o.order_id, OrderStatus::Shipping, later)
        .await
        .unwrap()
    else {
        panic!("expected a move");
    };
    assert_eq!(
        (shipped.status, shipped.updated_at),
        (OrderStatus::Shipping, later)
    );

    // Again: nothing changes, not even updated_at.
    match store
        .update_status(o.order_id, OrderStatus::Shipping, at(2000))
        .await
        .unwrap()
    {
        StatusOutcome::Unchanged(same) => assert_eq!(same, shipped),
        other => panic!("expected unchanged, got {other:?}"),
    }
    match store
        .update_status(o.order_id, OrderStatus::UnderProcess, at(3000))
        .await
        .unwrap()
    {
        StatusOutcome::Backward(current) => assert_eq!(current.status, OrderStatus::Shipping),
        other => panic!("expected backward, got {other:?}"),
    }
    assert!(matches!(
        store
            .update_status(o.order_id, OrderStatus::Delivered, at(4000))
            .await
            .unwrap(),
        StatusOutcome::Moved(_)
    ));
    assert_eq!(
        store
            .update_status(OrderId::new_random(), OrderStatus::Shipping, at(0))
            .await
            .unwrap(),
        StatusOutcome::NotFound
    );
}

async fn details_keep_shipped_addresses(store: Arc<dyn OrderStore>) {
    let open = order(UserId::new_random(), OrderStatus::UnderProcess, at(0));
    let shipped = order(UserId::new_random(), OrderStatus::Shipping, at(0));
    store.create_order(&open).await.unwrap();
    store.create_order(&shipped).await.unwrap();

    let both = ContactChange {
        emails: Some(emails(&["new@x.io"])),
        delivery_address: Some(address("12 Main St")),
    };
    match store
        .update_details(open.order_id, &both, at(5))
        .await
        .unwrap()
    {
        DetailsOutcome::Updated(o) => {
            assert_eq!(o.emails, emails(&["new@x.io"]));
            assert_eq!(o.delivery_address.street(), "12 Main St");
            assert_eq!(o.updated_at, at(5));
            assert_eq!(store.get_order(open.order_id).await.unwrap(), Some(o));
        }
        other => panic!("expected an update, got {other:?}"),
    }

    assert_eq!(
        store
            .update_details(shipped.order_id, &both, at(5))
            .await
            .unwrap(),
        DetailsOutcome::AddressIsHistory(OrderStatus::Shipping)
    );
    assert_eq!(
        store.get_order(shipped.order_id).await.unwrap(),
        Some(shipped.clone())
    );

    // Emails may still change, and so may the address "to" what it already is.
    let emails_and_same_address = ContactChange {
        emails: Some(emails(&["later@x.io"])),
        delivery_address: Some(shipped.delivery_address.clone()),
    };
    match store
        .update_details(shipped.order_id, &emails_and_same_address, at(6))
        .await
        .unwrap()
    {
        DetailsOutcome::Updated(o) => {
            assert_eq!(o.emails, emails(&["later@x.io"]));
            assert_eq!(o.delivery_address, shipped.delivery_address);
        }
        other => panic!("expected an update, got {other:?}"),
    }
    assert_eq!(
        store
            .update_details(OrderId::new_random(), &both, at(5))
            .await
            .unwrap(),
        DetailsOutcome::NotFound
    );
}

async fn user_contact_applies_once_and_in_version_order(store: Arc<dyn OrderStore>) {
    let user = UserId::new_random();
    let bystander = order(UserId::new_random(), OrderStatus::UnderProcess, at(0));
    let open = order(user, OrderStatus::UnderProcess, at(1));
    let shipped = order(user, OrderStatus::Shipping, at(2));
    let delivered = order(user, OrderStatus::Delivered, at(3));
    for o in [&bystander, &open, &shipped, &delivered] {
        store.create_order(o).await.unwrap();
    }

    let v3 = store
        .apply_user_contact(&contact(user, 3, "v3@x.io", "3 New St"), at(10))
        .await
        .unwrap();
    assert_eq!((v3.matched, v3.modified), (3, 3));

    let open_now = store.get_order(open.order_id).await.unwrap().unwrap();
    assert_eq!(open_now.emails, emails(&["v3@x.io"]));
    assert_eq!(open_now.delivery_address.street(), "3 New St");
    assert_eq!((open_now.contact_version, open_now.updated_at), (3, at(10)));
    for past in [&shipped, &delivered] {
        let now = store.get_order(past.order_id).await.unwrap().unwrap();
        assert_eq!(now.emails, emails(&["v3@x.io"]));
        assert_eq!(
            now.delivery_address, past.delivery_address,
            "a shipped address is history"
        );
        assert_eq!(now.contact_version, 3);
    }
    assert_eq!(
        store.get_order(bystander.order_id).await.unwrap(),
        Some(bystander)
    );

    // The same event again, and an older one arriving late, change nothing.
    let again = store
        .apply_user_contact(&contact(user, 3, "v3@x.io", "3 New St"), at(11))
        .await
        .unwrap();
    let late = store
        .apply_user_contact(&contact(user, 2, "v2@x.io", "2 Old St"), at(12))
        .await
        .unwrap();
    assert_eq!((again.matched, again.modified, late.modified), (3, 0, 0));
    assert_eq!(
        store.get_order(open.order_id).await.unwrap(),
        Some(open_now)
    );

    let nobody = store
        .apply_user_contact(&contact(UserId::new_random(), 1, "x@x.io", "1 St"), at(13))
        .await
        .unwrap();
    assert_eq!((nobody.matched, nobody.modified), (0, 0));
    store.ping().await.unwrap();
}

/// The worker's batch: outcomes in the order given, contacts of one user applied in
/// order (an older one after a newer changes nothing), other users untouched by each
/// other's contacts.
async fn a_batch_of_contacts_applies_in_order(store: Arc<dyn OrderStore>) {
    let (alice, bob) = (UserId::new_random(), UserId::new_random());
    let alices = order(alice, OrderStatus::UnderProcess, at(1));
    let bobs = order(bob, OrderStatus::UnderProcess, at(2));
    for o in [&alices, &bobs] {
        store.create_order(o).await.unwrap();
    }
    let outcomes = store
        .apply_user_contacts(
            vec![
                contact(alice, 4, "a4@x.io", "4 Batch St"),
                contact(bob, 2, "b2@x.io", "2 Batch St"),
                contact(alice, 3, "a3@x.io", "3 Batch St"),
                contact(UserId::new_random(), 1, "n@x.io", "1 St"),
            ],
            at(20),
        )
        .await
        .unwrap();
    let counts: Vec<(u64, u64)> = outcomes.iter().map(|o| (o.matched, o.modified)).collect();
    assert_eq!(counts, [(1, 1), (1, 1), (1, 0), (0, 0)]);
    let alice_now = store.get_order(alices.order_id).await.unwrap().unwrap();
    assert_eq!(
        (alice_now.emails, alice_now.contact_version),
        (emails(&["a4@x.io"]), 4)
    );
    let bob_now = store.get_order(bobs.order_id).await.unwrap().unwrap();
    assert_eq!(bob_now.delivery_address.street(), "2 Batch St");
    assert!(
        store
            .apply_user_contacts(Vec::new(), at(21))
            .await
            .unwrap()
            .is_empty()
    );
}

/// The list call's messages are the orders a get returns, as messages: exact prices
/// (trailing zeros, 27 digits, zero), text that JSON must escape, every status, applied
/// contacts and moved statuses alike, and pages that continue where they stopped.
async fn lists_serve_what_gets_serve(store: Arc<dyn OrderStore>) {
    let user = UserId::new_random();
    let mut made = Vec::new();
    for (i, status) in OrderStatus::ALL.into_iter().enumerate() {
        let mut o = order(user, status, at(i as i64));
        add_exact_items(&mut o, "Lamp \"Noguchi\" \\ 50\u{a0}cm \u{1F4A1}");
        store.create_order(&o).await.unwrap();
        made.push(o.order_id);
    }
    store
        .apply_user_contact(&contact(user, 4, "zoë@example.com", "9 Rue d'Été"), at(10))
        .await
        .unwrap();
    store
        .update_status(made[0], OrderStatus::Shipping, at(11))
        .await
        .unwrap();
    let mut expected = Vec::new();
    for id in &made {
        expected.push(store.get_order(*id).await.unwrap().unwrap().into_proto());
    }
    let filter = ListFilter {
        status: None,
        user_id: Some(user),
    };
    let page = store.list_page(filter, None, 10).await.unwrap();
    assert_eq!(page.next, None);
    let listed = page.decode_orders().unwrap();
    assert_eq!(listed, expected);
    assert_eq!(
        listed[1].items[2].price.as_ref().unwrap().value,
        "123456789012345678.123456789"
    );
    // A page, then the rest after where it says the next one starts.
    let first = store.list_page(filter, None, 2).await.unwrap();
    let after = first
        .next
        .expect("a page of 2 of 3 orders says where the next starts");
    let rest = store.list_page(filter, Some(after), 10).await.unwrap();
    assert_eq!(rest.next, None);
    let (first, rest) = (
        first.decode_orders().unwrap(),
        rest.decode_orders().unwrap(),
    );
    assert_eq!([first, rest].concat(), expected);
}

// === harness ===

async fn sqlite_store() -> (Arc<dyn OrderStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteOrderStore::open(&dir.path().join("order_db.sqlite"))
        .await
        .unwrap();
    (Arc::new(store), dir)
}

async fn mongo_store() -> Arc<dyn OrderStore> {
    let uri = tandem_testkit::contract::mongo_uri("order_db_test");
    Arc::new(MongoOrderStore::connect(&uri).await.unwrap())
}

tandem_testkit::store_contract!(
    sqlite: sqlite_store,
    mongo: mongo_store,
    cases: [
        orders_round_trip_with_exact_prices,
        listing_filters_and_pages_without_gaps,
        status_moves_forward_only,
        details_keep_shipped_addresses,
        user_contact_applies_once_and_in_version_order,
        a_batch_of_contacts_applies_in_order,
        lists_serve_what_gets_serve,
    ]
);
