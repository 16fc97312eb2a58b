//! order-svc over gRPC, in-process on port 0 over a real SQLite file.

use prost_types::FieldMask;
use tandem::proto::common::v1::Decimal;
use tandem::proto::order::v1::order_service_client::OrderServiceClient;
use tandem::proto::order::v1::{
    ApplyUserContactRequest, CreateOrderRequest, GetOrderRequest, ListOrdersRequest, Order,
    OrderItem, OrderStatus, UpdateOrderDetailsRequest, UpdateOrderStatusRequest,
};
use tandem_testkit::*;
use tonic::Code;
use tonic::transport::Channel;

type Client = OrderServiceClient<Channel>;

fn item(id: &str, quantity: i64, price: &str) -> OrderItem {
    OrderItem {
        item_id: id.into(),
        quantity,
        price: Some(Decimal {
            value: price.into(),
        }),
    }
}

fn create(user_id: &str) -> CreateOrderRequest {
    CreateOrderRequest {
        user_id: user_id.into(),
        items: vec![item("Study table", 1, "29.99"), item("Chair", 2, "15.99")],
        emails: vec!["robert.williams@hotmail.com".into()],
        delivery_address: Some(address("456 Elm Avenue")),
        order_status: 0,
    }
}

async fn created(client: &mut Client, request: CreateOrderRequest) -> Order {
    client
        .create_order(request)
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap()
}

fn new_user() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn started() -> (Stack, Client) {
    let stack = Stack::builder().with(Service::Orders).start().await;
    let client = stack.orders().await;
    (stack, client)
}

#[tokio::test]
async fn orders_keep_exact_prices_and_start_under_process() {
    let (_stack, mut client) = started().await;
    let order = created(&mut client, create(&new_user())).await;
    assert_eq!(order.order_status, OrderStatus::UnderProcess as i32);
    let prices: Vec<_> = order
        .items
        .iter()
        .map(|i| i.price.clone().unwrap().value)
        .collect();
    assert_eq!(prices, ["29.99", "15.99"]);
    assert!(order.created_at.is_some() && order.created_at == order.updated_at);
    let fetched = client
        .get_order(GetOrderRequest {
            order_id: order.order_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(fetched, order);

    let mut shipped = create(&new_user());
    shipped.order_status = OrderStatus::Shipping as i32;
    assert_eq!(
        created(&mut client, shipped).await.order_status,
        OrderStatus::Shipping as i32
    );

    let missing = client
        .get_order(GetOrderRequest {
            order_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test]
async fn bad_orders_name_every_bad_field() {
    let (_stack, mut client) = started().await;
    let request = CreateOrderRequest {
        user_id: "not-a-uuid".into(),
        items: vec![
            item("", 0, "-1"),
            OrderItem {
                item_id: "x".into(),
                quantity: 1,
                price: None,
            },
            item("y", 1, "1e999"),
        ],
        emails: vec![],
        delivery_address: Some(tandem::proto::common::v1::Address {
            postal_code: String::new(),
            ..address("1 St")
        }),
        order_status: 9,
    };
    let status = client.create_order(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        fields(&status),
        [
            "user_id",
            "items[0].item_id",
            "items[0].quantity",
            "items[0].price",
            "items[1].price",
            "items[2].price",
            "emails",
            "delivery_address.postal_code",
            "order_status",
        ]
    );
    let mut no_items = create(&new_user());
    no_items.items.clear();
    assert_eq!(
        fields(&client.create_order(no_items).await.unwrap_err()),
        ["items"]
    );
    let status = client
        .get_order(GetOrderRequest {
            order_id: "123".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(fields(&status), ["order_id"]);
}

#[tokio::test]
async fn listing_pages_by_100_by_default_and_1000_at_most() {
    let (_stack, mut client) = started().await;
    let user = new_user();
    for _ in 0..1005 {
        created(&mut client, create(&user)).await;
    }
    let list = |page_size: i32, page_token: String| ListOrdersRequest {
        order_status: 0,
        user_id: user.clone(),
        page_size,
        page_token,
    };
    let first = client
        .list_orders(list(0, String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.orders.len(), 100);
    assert!(!first.next_page_token.is_empty());

    let big = client
        .list_orders(list(5000, String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(big.orders.len(), 1000);
    let rest = client
        .list_orders(list(5000, big.next_page_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.orders.len(), 5);
    assert!(
        rest.next_page_token.is_empty(),
        "the last page has no token"
    );
    assert_eq!(big.orders[..100], first.orders[..]);

    let status = client
        .list_orders(list(-1, "bogus".into()))
        .await
        .unwrap_err();
    assert_eq!(fields(&status), ["page_size", "page_token"]);

    // A token only continues the listing that made it.
    let mut other = list(10, first.next_page_token);
    other.order_status = OrderStatus::Shipping as i32;
    assert_eq!(
        fields(&client.list_orders(other).await.unwrap_err()),
        ["page_token"]
    );
}

#[tokio::test]
async fn listing_filters_by_status_and_user() {
    let (_stack, mut client) = started().await;
    let (alice, bob) = (new_user(), new_user());
    let a1 = created(&mut client, create(&alice)).await;
    let mut shipping = create(&alice);
    shipping.order_status = OrderStatus::Shipping as i32;
    let a2 = created(&mut client, shipping).await;
    created(&mut client, create(&bob)).await;

    let by = |status: OrderStatus, user: &str| ListOrdersRequest {
        order_status: status as i32,
        user_id: user.into(),
        page_size: 0,
        page_token: String::new(),
    };
    let ids = |orders: Vec<Order>| orders.into_iter().map(|o| o.order_id).collect::<Vec<_>>();
    let of_alice = client
        .list_orders(by(OrderStatus::Unspecified, &alice))
        .await
        .unwrap();
    assert_eq!(
        ids(of_alice.into_inner().orders),
        [a1.order_id.clone(), a2.order_id.clone()]
    );
    let shipped = client
        .list_orders(by(OrderStatus::Shipping, ""))
        .await
        .unwrap();
    assert_eq!(ids(shipped.into_inner().orders), [a2.order_id]);
    let status = client
        .list_orders(by(OrderStatus::Unspecified, "nope"))
        .await
        .unwrap_err();
    assert_eq!(fields(&status), ["user_id"]);
}

#[tokio::test]
async fn status_moves_forward_only() {
    let (_stack, mut client) = started().await;
    let order = created(&mut client, create(&new_user())).await;
    let set = |status: OrderStatus| UpdateOrderStatusRequest {
        order_id: order.order_id.clone(),
        order_status: status as i32,
    };
    let shipped = client
        .update_order_status(set(OrderStatus::Shipping))
        .await
        .unwrap();
    let shipped = shipped.into_inner().order.unwrap();
    assert_eq!(shipped.order_status, OrderStatus::Shipping as i32);

    let same = client
        .update_order_status(set(OrderStatus::Shipping))
        .await
        .unwrap();
    assert_eq!(
        same.into_inner().order.unwrap(),
        shipped,
        "same status: a no-op"
    );

    let back = client
        .update_order_status(set(OrderStatus::UnderProcess))
        .await
        .unwrap_err();
    assert_eq!(back.code(), Code::FailedPrecondition);
    assert_eq!(fields(&back), ["order_status"]);

    let unset = client
        .update_order_status(set(OrderStatus::Unspecified))
        .await
        .unwrap_err();
    assert_eq!(
        (unset.code(), fields(&unset)),
        (Code::InvalidArgument, vec!["order_status".to_string()])
    );
    let missing = client
        .update_order_status(UpdateOrderStatusRequest {
            order_id: uuid::Uuid::new_v4().to_string(),
            order_status: OrderStatus::Delivered as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test]
async fn details_change_but_shipped_addresses_do_not() {
    let (_stack, mut client) = started().await;
    let order = created(&mut client, create(&new_user())).await;
    let details = |emails: &[&str], street: Option<&str>| UpdateOrderDetailsRequest {
        order_id: order.order_id.clone(),
        emails: emails.iter().map(|s| s.to_string()).collect(),
        delivery_address: street.map(address),
        update_mask: None,
    };
    let changed = client
        .update_order_details(details(&[], Some("12 Main St")))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(changed.delivery_address.unwrap().street, "12 Main St");
    assert_eq!(changed.emails, order.emails);

    client
        .update_order_status(UpdateOrderStatusRequest {
            order_id: order.order_id.clone(),
            order_status: OrderStatus::Shipping as i32,
        })
        .await
        .unwrap();
    let refused = client
        .update_order_details(details(&["x@example.com"], Some("13 Main St")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(fields(&refused), ["delivery_address"]);
    let emails_only = client
        .update_order_details(details(&["x@example.com"], None))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(emails_only.emails, ["x@example.com"]);
    assert_eq!(emails_only.delivery_address.unwrap().street, "12 Main St");

    let mut nothing = details(&[], None);
    assert_eq!(
        fields(
            &client
                .update_order_details(nothing.clone())
                .await
                .unwrap_err()
        ),
        ["update_mask"]
    );
    nothing.update_mask = Some(FieldMask {
        paths: vec!["emails".into()],
    });
    assert_eq!(
        fields(&client.update_order_details(nothing).await.unwrap_err()),
        ["emails"]
    );
}

#[tokio::test]
async fn user_contact_reaches_only_that_users_older_orders() {
    let (_stack, mut client) = started().await;
    let user = new_user();
    let open = created(&mut client, create(&user)).await;
    let mut shipping = create(&user);
    shipping.order_status = OrderStatus::Shipping as i32;
    let shipped = created(&mut client, shipping).await;
    let bystander = created(&mut client, create(&new_user())).await;

    let apply = |version: i64, email: &str| ApplyUserContactRequest {
        user_id: user.clone(),
        contact_version: version,
        emails: vec![email.into()],
        delivery_address: Some(address("99 Park Ave")),
    };
    let reply = client
        .apply_user_contact(apply(2, "new@example.com"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.matched_count, reply.modified_count), (2, 2));
    let replay = client
        .apply_user_contact(apply(2, "new@example.com"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((replay.matched_count, replay.modified_count), (2, 0));

    let get = |id: &str| GetOrderRequest {
        order_id: id.into(),
    };
    let open_now = client
        .get_order(get(&open.order_id))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(
        (open_now.emails.clone(), open_now.contact_version),
        (vec!["new@example.com".to_string()], 2)
    );
    assert_eq!(open_now.delivery_address.unwrap().street, "99 Park Ave");
    let shipped_now = client
        .get_order(get(&shipped.order_id))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(shipped_now.emails, ["new@example.com"]);
    assert_eq!(shipped_now.delivery_address, shipped.delivery_address);
    let bystander_now = client
        .get_order(get(&bystander.order_id))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(bystander_now, bystander);

    let invalid = ApplyUserContactRequest {
        user_id: "x".into(),
        contact_version: 0,
        emails: vec![],
        delivery_address: None,
    };
    let status = client.apply_user_contact(invalid).await.unwrap_err();
    assert_eq!(
        fields(&status),
        ["user_id", "contact_version", "emails", "delivery_address"]
    );
}

/// The sync worker's batch call: each contact answered on its own (a refused one fails
/// alone), contacts of one user applied in order so an older one after a newer changes
/// nothing, and an oversized batch refused naming the field.
#[tokio::test]
async fn a_batch_of_contacts_is_applied_in_one_call_and_a_bad_one_fails_alone() {
    use tandem::proto::order::v1::ApplyUserContactsRequest;
    use tandem::proto::order::v1::apply_user_contact_result::Outcome;
    let (_stack, mut client) = started().await;
    let (alice, bob) = (new_user(), new_user());
    let alices = created(&mut client, create(&alice)).await;
    let bobs = created(&mut client, create(&bob)).await;
    let contact = |user: &str, version: i64, email: &str| ApplyUserContactRequest {
        user_id: user.into(),
        contact_version: version,
        emails: vec![email.into()],
        delivery_address: Some(address("1 Batch Rd")),
    };
    let batch = ApplyUserContactsRequest {
        contacts: vec![
            contact(&alice, 3, "alice3@example.com"),
            // Version 0 breaks a rule: refused, alone.
            contact(&bob, 0, "bob0@example.com"),
            // Older than the one before it: changes nothing.
            contact(&alice, 2, "alice2@example.com"),
            contact(&bob, 4, "bob4@example.com"),
        ],
    };
    let results = client
        .apply_user_contacts(batch)
        .await
        .unwrap()
        .into_inner()
        .results;
    let outcomes: Vec<String> = results
        .iter()
        .map(|r| match r.outcome.as_ref().unwrap() {
            Outcome::Applied(a) => format!("applied {}/{}", a.matched_count, a.modified_count),
            Outcome::Refused(refused) => format!("refused: {}", refused.message),
        })
        .collect();
    assert_eq!(outcomes[0], "applied 1/1");
    assert!(
        outcomes[1].starts_with("refused: ") && outcomes[1].contains("contact_version"),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[2..], ["applied 1/0", "applied 1/1"]);
    let order_of = |id: &str| GetOrderRequest {
        order_id: id.into(),
    };
    let alice_now = client
        .get_order(order_of(&alices.order_id))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(
        (alice_now.emails, alice_now.contact_version),
        (vec!["alice3@example.com".to_string()], 3)
    );
    let bob_now = client
        .get_order(order_of(&bobs.order_id))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(bob_now.emails, ["bob4@example.com"]);

    let too_many = ApplyUserContactsRequest {
        contacts: (0..1001)
            .map(|_| contact(&alice, 9, "a@example.com"))
            .collect(),
    };
    let status = client.apply_user_contacts(too_many).await.unwrap_err();
    assert_eq!(fields(&status), ["contacts"]);
}
