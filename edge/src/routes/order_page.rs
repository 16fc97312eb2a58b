//! The JSON of `GET /orders`, written straight from order-svc's answer.
//!
//! The page is the edge's largest answer (50 orders of 3 items are 25 KB), and going
//! through serde (proto → [`OrderView`] → serde_json) cost 40 % of the edge's
//! instructions on it: serde_json escapes every string byte by byte, keys included, and
//! each field is a call through the serializer (callgrind, bench/FINDINGS.md §9). Here
//! the fixed parts of an order (keys, punctuation) are byte strings copied whole, and a
//! value is checked for anything JSON must escape in one pass the compiler vectorizes;
//! only a value that holds such a character goes through serde_json's escaping.
//!
//! The bytes are exactly those serde_json writes for [`OrdersEnvelope`] (the type the
//! OpenAPI document describes); the tests hold the two together, and order-svc's answer
//! is checked the same way ([`OrderView`]'s conversion and this share the checks).
//!
//! [`OrderView`]: super::orders::OrderView
//! [`OrdersEnvelope`]: super::orders::OrdersEnvelope

use std::io::Write as _;

use tandem::domain::OrderStatus;
use tandem::proto::common::v1 as common;
use tandem::proto::order::v1 as pb;

use super::orders::{item_price, order_status};
use super::{SUCCESS, rfc3339};

/// JSON bytes an order of three items takes, about: the buffer is sized for the page.
const ORDER_BYTES: usize = 640;

/// `{"status":"success","orders":[…],"nextPageToken":…}` for `orders`, or what in
/// order-svc's answer is unusable (a price that is not one, an order without status).
pub fn write(orders: &[pb::Order], next_page_token: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(64 + orders.len() * ORDER_BYTES);
    out.extend_from_slice(br#"{"status":"#);
    string(&mut out, SUCCESS);
    out.extend_from_slice(br#","orders":["#);
    for (i, order) in orders.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_order(&mut out, order)?;
    }
    out.push(b']');
    if !next_page_token.is_empty() {
        out.extend_from_slice(br#","nextPageToken":"#);
        string(&mut out, next_page_token);
    }
    out.push(b'}');
    Ok(out)
}

fn write_order(out: &mut Vec<u8>, order: &pb::Order) -> Result<(), String> {
    // Checked first, so an unusable order leaves nothing half-written to report.
    let status: OrderStatus = order_status(order.order_status)?;
    out.extend_from_slice(br#"{"orderId":"#);
    string(out, &order.order_id);
    out.extend_from_slice(br#","userId":"#);
    string(out, &order.user_id);
    out.extend_from_slice(br#","items":["#);
    for (i, item) in order.items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"itemId":"#);
        string(out, &item.item_id);
        // Writing to a Vec cannot fail.
        let _ = write!(
            out,
            r#","quantity":{},"price":{}}}"#,
            item.quantity,
            item_price(item)?
        );
    }
    out.extend_from_slice(br#"],"emails":["#);
    for (i, email) in order.emails.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, email);
    }
    let no_address = common::Address::default();
    let address = order.delivery_address.as_ref().unwrap_or(&no_address);
    out.extend_from_slice(br#"],"deliveryAddress":{"street":"#);
    string(out, &address.street);
    out.extend_from_slice(br#","city":"#);
    string(out, &address.city);
    out.extend_from_slice(br#","province":"#);
    string(out, &address.province);
    out.extend_from_slice(br#","postalCode":"#);
    string(out, &address.postal_code);
    out.extend_from_slice(br#","country":"#);
    string(out, &address.country);
    out.extend_from_slice(br#"},"orderStatus":"#);
    string(out, status.as_str());
    out.extend_from_slice(br#","createdAt":"#);
    string(out, &rfc3339(order.created_at).unwrap_or_default());
    out.extend_from_slice(br#","updatedAt":"#);
    string(out, &rfc3339(order.updated_at).unwrap_or_default());
    out.push(b'}');
    Ok(())
}

/// A JSON string: copied whole between quotes when nothing in it needs escaping (the
/// usual case: ids, timestamps, most names), else escaped by serde_json.
fn string(out: &mut Vec<u8>, value: &str) {
    // No early exit: the fold runs over the whole string as SIMD; strings here are short.
    let needs_escape = value.bytes().fold(false, |seen, b| {
        seen | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if needs_escape {
        // serde_json's escaping, so the bytes are its own; a Vec cannot fail to take them.
        let _ = serde_json::to_writer(&mut *out, value);
    } else {
        out.reserve(value.len() + 2);
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    }
}

#[cfg(test)]
mod tests {
    use super::super::orders::{OrderView, OrdersEnvelope};
    use super::*;
    use tandem::proto::common::v1::{Address, Decimal};

    fn order(n: u32, item_id: &str, street: &str, email: &str) -> pb::Order {
        pb::Order {
            order_id: format!("0190b3c4-0000-7000-8000-{n:012}"),
            user_id: "6e3e7c1a-3c77-4c2e-9d3e-2f9a4e6d1b20".into(),
            items: vec![
                pb::OrderItem {
                    item_id: item_id.into(),
                    quantity: 2,
                    price: Some(Decimal {
                        value: "29.99".into(),
                    }),
                },
                pb::OrderItem {
                    item_id: "lamp".into(),
                    quantity: 1_000_000,
                    price: Some(Decimal {
                        value: "0.50".into(),
                    }),
                },
            ],
            emails: vec![email.into(), "second@example.com".into()],
            delivery_address: Some(Address {
                street: street.into(),
                city: "Montréal".into(),
                province: "QC".into(),
                postal_code: "H2X 1Y4".into(),
                country: "CA".into(),
            }),
            order_status: pb::OrderStatus::Delivered as i32,
            created_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 123_000_000,
            }),
            updated_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_360,
                nanos: 0,
            }),
            contact_version: 4,
        }
    }

    /// What serde_json writes for the documented shape.
    fn through_serde(orders: &[pb::Order], token: &str) -> Vec<u8> {
        let envelope = OrdersEnvelope {
            status: SUCCESS,
            orders: orders
                .iter()
                .cloned()
                .map(OrderView::try_from)
                .collect::<Result<_, _>>()
                .unwrap(),
            next_page_token: (!token.is_empty()).then(|| token.to_owned()),
        };
        serde_json::to_vec(&envelope).unwrap()
    }

    #[test]
    fn the_page_is_the_bytes_serde_writes() {
        let awkward = [
            ("plain", "1 Main St", "a@b.co"),
            ("quote\"d", "back\\slash", "tab\there@x.co"),
            ("newline\n", "ctrl \u{1} \u{1f}", "\u{7f}del@x.co"),
            ("ünïcødé ✓", "Straße 5 – 😀", "</script>@x.co"),
            ("", "", ""),
        ];
        let orders: Vec<pb::Order> = awkward
            .iter()
            .enumerate()
            .map(|(n, (item, street, email))| order(n as u32, item, street, email))
            .collect();
        for token in ["", "next/page+token=="] {
            for page in [&orders[..0], &orders[..1], &orders[..]] {
                let written = write(page, token).unwrap();
                assert_eq!(
                    String::from_utf8(written).unwrap(),
                    String::from_utf8(through_serde(page, token)).unwrap()
                );
            }
        }
        // A missing address and timestamps are written as serde writes their defaults.
        let mut bare = order(9, "x", "y", "z@x.co");
        bare.delivery_address = None;
        bare.created_at = None;
        let page = std::slice::from_ref(&bare);
        assert_eq!(write(page, "").unwrap(), through_serde(page, ""));
    }

    #[test]
    fn an_unusable_answer_is_refused_as_the_conversion_refuses_it() {
        let mut bad_price = order(1, "x", "y", "z@x.co");
        bad_price.items[0].price = Some(Decimal {
            value: "twelve".into(),
        });
        let mut no_status = order(2, "x", "y", "z@x.co");
        no_status.order_status = pb::OrderStatus::Unspecified as i32;
        for bad in [bad_price, no_status] {
            let written = write(std::slice::from_ref(&bad), "").unwrap_err();
            assert_eq!(written, OrderView::try_from(bad).unwrap_err());
        }
    }
}
