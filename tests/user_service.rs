//! user-svc over gRPC, both flavors, in-process on port 0 over a real SQLite file.

use std::time::Duration;

use prost_types::FieldMask;
use tandem::domain::Flavor;
use tandem::proto::user::v1::{CreateUserRequest, GetUserRequest, UpdateUserContactRequest, User};
use tandem_testkit::*;
use tonic::Code;

fn create(emails: &[&str]) -> CreateUserRequest {
    CreateUserRequest {
        first_name: Some("Robert".into()),
        last_name: Some("Williams".into()),
        phone_number: Some("+1-438-222-7890".into()),
        emails: emails.iter().map(|s| s.to_string()).collect(),
        delivery_address: Some(address("456 Elm Avenue")),
    }
}

fn update(user_id: &str, emails: &[&str], street: Option<&str>) -> UpdateUserContactRequest {
    UpdateUserContactRequest {
        user_id: user_id.into(),
        emails: emails.iter().map(|s| s.to_string()).collect(),
        delivery_address: street.map(address),
        update_mask: None,
    }
}

type Client =
    tandem::proto::user::v1::user_service_client::UserServiceClient<tonic::transport::Channel>;

async fn created(client: &mut Client, emails: &[&str]) -> User {
    client
        .create_user(create(emails))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap()
}

#[tokio::test]
async fn v1_keeps_legacy_behavior() {
    let stack = Stack::builder().with(Service::UserV1).start().await;
    let mut client = stack.user_client(Flavor::V1).await;
    let user = created(&mut client, &["not-an-email"]).await;
    assert_eq!(user.emails, ["not-an-email"]);
    assert_eq!((user.created_at, user.updated_at), (None, None));
    assert_eq!(user.contact_version, 1);
    assert_eq!(user.first_name.as_deref(), Some("Robert"));
    uuid::Uuid::parse_str(&user.user_id).expect("the service makes a UUID");

    let changed = client
        .update_user_contact(update(&user.user_id, &["still-not-one"], None))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!((changed.contact_version, changed.updated_at), (2, None));
}

#[tokio::test]
async fn v2_checks_emails_and_stamps_changes() {
    let stack = Stack::builder().with(Service::UserV2).start().await;
    let mut client = stack.user_client(Flavor::V2).await;

    let refused = client
        .create_user(create(&["rob@example.com", "not-an-email"]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(fields(&refused), ["emails[1]"]);

    let user = created(&mut client, &[&unique_email("rob")]).await;
    let created_at = user.created_at.expect("v2 stamps createdAt");
    assert_eq!(user.updated_at, Some(created_at));

    let refused = client
        .update_user_contact(update(&user.user_id, &["bad@"], None))
        .await
        .unwrap_err();
    assert_eq!(fields(&refused), ["emails[0]"]);

    let changed = eventually(Duration::from_secs(2), "a later updatedAt", || {
        let mut client = client.clone();
        let id = user.user_id.clone();
        async move {
            let u = client
                .update_user_contact(update(&id, &[], Some("99 Park Ave")))
                .await
                .unwrap()
                .into_inner()
                .user
                .unwrap();
            (u.updated_at != Some(created_at)).then_some(u)
        }
    })
    .await;
    assert_eq!(changed.created_at, Some(created_at));
    assert_eq!(
        changed.emails, user.emails,
        "an address change keeps the emails"
    );
    assert_eq!(changed.delivery_address.unwrap().street, "99 Park Ave");
}

#[tokio::test]
async fn flavors_share_one_store() {
    let stack = Stack::builder()
        .with(Service::UserV1)
        .with(Service::UserV2)
        .start()
        .await;
    let (mut c1, mut c2) = (
        stack.user_client(Flavor::V1).await,
        stack.user_client(Flavor::V2).await,
    );

    let from_v1 = created(&mut c1, &[&unique_email("one")]).await;
    let seen_by_v2 = c2
        .get_user(GetUserRequest {
            user_id: from_v1.user_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(seen_by_v2, from_v1);

    let from_v2 = created(&mut c2, &[&unique_email("two")]).await;
    // v1 changes a v2 user: the version moves, v1 leaves the stamps alone.
    let changed = c1
        .update_user_contact(update(&from_v2.user_id, &[], Some("1 Shared St")))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(changed.contact_version, 2);
    assert_eq!(changed.updated_at, from_v2.updated_at);
    let again = c2
        .get_user(GetUserRequest {
            user_id: from_v2.user_id,
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(again, changed);
}

#[tokio::test]
async fn an_email_belongs_to_one_user_whatever_the_case_or_flavor() {
    let stack = Stack::builder()
        .with(Service::UserV1)
        .with(Service::UserV2)
        .start()
        .await;
    let (mut c1, mut c2) = (
        stack.user_client(Flavor::V1).await,
        stack.user_client(Flavor::V2).await,
    );
    created(&mut c1, &["Robert.Williams@hotmail.com"]).await;

    let clash = c2
        .create_user(create(&[
            "other@example.com",
            "robert.williams@HOTMAIL.com",
        ]))
        .await
        .unwrap_err();
    assert_eq!(clash.code(), Code::AlreadyExists);
    assert_eq!(fields(&clash), ["emails[1]"]);

    let other = created(&mut c2, &["other@example.com"]).await;
    let clash = c1
        .update_user_contact(update(
            &other.user_id,
            &["ROBERT.WILLIAMS@hotmail.com"],
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(clash.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn concurrent_creates_with_one_email_admit_exactly_one() {
    let stack = Stack::builder()
        .with(Service::UserV1)
        .with(Service::UserV2)
        .start()
        .await;
    let clients = [
        stack.user_client(Flavor::V1).await,
        stack.user_client(Flavor::V2).await,
    ];
    let attempts = (0..20).map(|i| {
        let mut client = clients[i % 2].clone();
        tokio::spawn(async move { client.create_user(create(&["race@example.com"])).await })
    });
    let results: Vec<_> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let exists = results
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == Code::AlreadyExists))
        .count();
    assert_eq!((ok, exists), (1, 19));
}

#[tokio::test]
async fn bad_requests_name_every_bad_field() {
    let stack = Stack::builder().with(Service::UserV2).start().await;
    let mut client = stack.user_client(Flavor::V2).await;

    let mut request = create(&[]);
    request.delivery_address = Some(tandem::proto::common::v1::Address {
        city: String::new(),
        postal_code: " ".into(),
        ..address("1 Main St")
    });
    request.first_name = Some("a\u{0}b".into());
    let status = client.create_user(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        fields(&status),
        [
            "first_name",
            "emails",
            "delivery_address.city",
            "delivery_address.postal_code"
        ]
    );

    let mut no_address = create(&["a@example.com"]);
    no_address.delivery_address = None;
    let status = client.create_user(no_address).await.unwrap_err();
    assert_eq!(fields(&status), ["delivery_address"]);

    let status = client
        .get_user(GetUserRequest {
            user_id: "42".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), fields(&status)),
        (Code::InvalidArgument, vec!["user_id".to_string()])
    );

    let missing = uuid::Uuid::new_v4().to_string();
    let status = client
        .get_user(GetUserRequest {
            user_id: missing.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .update_user_contact(update(&missing, &["a@example.com"], None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    let status = client
        .update_user_contact(update(&missing, &[], None))
        .await
        .unwrap_err();
    assert_eq!(fields(&status), ["update_mask"]);

    let mut masked = update(&missing, &[], None);
    masked.update_mask = Some(FieldMask {
        paths: vec!["emails".into(), "first_name".into()],
    });
    let status = client.update_user_contact(masked).await.unwrap_err();
    assert_eq!(fields(&status), ["update_mask.paths[1]", "emails"]);

    let thousands: Vec<String> = (0..10_000).map(|i| format!("u{i}@example.com")).collect();
    let mut huge = create(&[]);
    huge.emails = thousands;
    let status = client.create_user(huge).await.unwrap_err();
    assert_eq!(
        (status.code(), fields(&status)),
        (Code::InvalidArgument, vec!["emails".to_string()])
    );
}

#[tokio::test]
async fn every_contact_change_leaves_an_event_in_the_outbox() {
    let stack = Stack::builder().with(Service::UserV1).start().await;
    let mut client = stack.user_client(Flavor::V1).await;
    let user = created(&mut client, &[&unique_email("a")]).await;
    let new_email = unique_email("b");
    client
        .update_user_contact(update(&user.user_id, &[&new_email], None))
        .await
        .unwrap();
    client
        .update_user_contact(update(&user.user_id, &[], Some("2 Second St")))
        .await
        .unwrap();

    let store = user_svc::store::SqliteUserStore::open(&stack.user_db())
        .await
        .unwrap();
    use user_svc::store::UserStore;
    let events = store
        .claim_outbox("test", Duration::from_secs(30), 10)
        .await
        .unwrap();
    let bodies: Vec<_> = events
        .iter()
        .map(|e| {
            tandem_messaging::UserUpdated::parse(e.payload.as_bytes())
                .unwrap()
                .contact
        })
        .collect();
    assert_eq!(bodies.iter().map(|b| b.version).collect::<Vec<_>>(), [2, 3]);
    assert!(bodies.iter().all(|b| b.user_id.to_string() == user.user_id));
    assert_eq!(bodies[1].emails.to_strings(), [new_email]);
    assert_eq!(bodies[1].delivery_address.street(), "2 Second St");
}
