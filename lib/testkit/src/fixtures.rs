//! Sample data, in the forms tests send it: proto messages, domain values, REST bodies.

use tandem::domain::{Address, EmailCheck, EmailList};
use tandem::proto::common::v1 as pb;

/// An address in Ottawa on `street`.
pub fn address(street: &str) -> pb::Address {
    pb::Address {
        street: street.into(),
        city: "Ottawa".into(),
        province: "ON".into(),
        postal_code: "K2P 1L4".into(),
        country: "Canada".into(),
    }
}

/// [`address`], checked.
pub fn domain_address(street: &str) -> Address {
    Address::parse(Some(&address(street))).expect("a complete address")
}

/// A list of emails, checked leniently (as orders and v1 take them).
pub fn emails(list: &[&str]) -> EmailList {
    let raw: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    EmailList::parse(&raw, EmailCheck::Lenient).expect("valid emails")
}

/// A unique email, so tests sharing a store never clash by accident.
pub fn unique_email(tag: &str) -> String {
    format!("{tag}.{}@example.com", uuid::Uuid::new_v4().simple())
}

pub fn address_json(street: &str) -> serde_json::Value {
    serde_json::json!({
        "street": street,
        "city": "Ottawa",
        "province": "ON",
        "postalCode": "K2P 1L4",
        "country": "Canada"
    })
}

pub fn user_body(email: &str) -> serde_json::Value {
    serde_json::json!({
        "firstName": "Robert",
        "lastName": "Williams",
        "phoneNumber": "+1-438-222-7890",
        "emails": [email],
        "deliveryAddress": address_json("456 Elm Avenue"),
    })
}

pub fn order_body(user_id: &str, email: &str) -> serde_json::Value {
    serde_json::json!({
        "userId": user_id,
        "items": [
            {"itemId": "Study table", "quantity": 1, "price": 29.99},
            {"itemId": "Chair", "quantity": 2, "price": 15.990}
        ],
        "emails": [email],
        "deliveryAddress": address_json("456 Elm Avenue"),
        "orderStatus": "under process"
    })
}
