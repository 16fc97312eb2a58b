//! The REST shapes clients know (camelCase JSON), and their translation to and from the
//! gRPC messages. Only shape lives here; every business rule is the services'.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use tandem::proto::common::v1 as common;
use tandem::proto::order::v1 as order;
use tandem::proto::user::v1 as user;
use utoipa::ToSchema;

// === requests ===

/// A delivery address. `state` is accepted for `province` (older clients send it).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddressInput {
    #[schema(
        example = "456 Elm Avenue",
        pattern = r"^[^\u0000-\u0008\u000A-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u0008\u000A-\u001F\u007F-\u009F]*$",
        max_length = 256
    )]
    pub street: String,
    #[schema(
        example = "Ottawa",
        pattern = r"^[^\u0000-\u0008\u000A-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u0008\u000A-\u001F\u007F-\u009F]*$",
        max_length = 256
    )]
    pub city: String,
    #[serde(alias = "state")]
    #[schema(
        example = "ON",
        pattern = r"^[^\u0000-\u0008\u000A-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u0008\u000A-\u001F\u007F-\u009F]*$",
        max_length = 256
    )]
    pub province: String,
    #[schema(
        example = "K2P 1L4",
        pattern = r"^[^\u0000-\u0008\u000A-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u0008\u000A-\u001F\u007F-\u009F]*$",
        max_length = 256
    )]
    pub postal_code: String,
    #[schema(
        example = "Canada",
        pattern = r"^[^\u0000-\u0008\u000A-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u0008\u000A-\u001F\u007F-\u009F]*$",
        max_length = 256
    )]
    pub country: String,
}

impl From<AddressInput> for common::Address {
    fn from(a: AddressInput) -> Self {
        common::Address {
            street: a.street,
            city: a.city,
            province: a.province,
            postal_code: a.postal_code,
            country: a.country,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateUserInput {
    #[schema(
        example = "Robert",
        pattern = r"^[^\u0000-\u0008\u000A-\u001F\u007F-\u009F]*$",
        max_length = 256
    )]
    pub first_name: Option<String>,
    #[schema(
        example = "Williams",
        pattern = r"^[^\u0000-\u0008\u000A-\u001F\u007F-\u009F]*$",
        max_length = 256
    )]
    pub last_name: Option<String>,
    #[schema(
        example = "+1-438-222-7890",
        pattern = r"^[^\u0000-\u0008\u000A-\u001F\u007F-\u009F]*$",
        max_length = 256
    )]
    pub phone_number: Option<String>,
    /// At least one; unique across users, ignoring case.
    #[schema(schema_with = email_list)]
    pub emails: Vec<String>,
    pub delivery_address: AddressInput,
}

impl From<CreateUserInput> for user::CreateUserRequest {
    fn from(b: CreateUserInput) -> Self {
        user::CreateUserRequest {
            first_name: b.first_name,
            last_name: b.last_name,
            phone_number: b.phone_number,
            emails: b.emails,
            delivery_address: Some(b.delivery_address.into()),
        }
    }
}

/// New emails and/or a new delivery address (at least one, nothing else).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(min_properties = 1)]
pub struct ContactInput {
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = email_list, nullable = false)]
    pub emails: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    pub delivery_address: Option<AddressInput>,
}

/// New emails and/or a new delivery address (at least one, nothing else). Order bodies
/// also take `userEmails` for `emails`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(min_properties = 1)]
pub struct OrderContactInput {
    #[serde(default, alias = "userEmails", deserialize_with = "present")]
    #[schema(schema_with = email_list, nullable = false)]
    pub emails: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    pub delivery_address: Option<AddressInput>,
}

/// A whole number as JSON Schema counts them: `2` or `2.0` (an integer-valued number),
/// that fits `T`. serde alone refuses `2.0`.
pub fn whole_number<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64>,
{
    let raw: Box<RawValue> = Deserialize::deserialize(d)?;
    let text = raw.get();
    let n = match text.parse::<i64>() {
        Ok(n) => n,
        // i64::MAX as f64 rounds up to 2^63, which does not fit: compare strictly below.
        Err(_) => match text.parse::<f64>() {
            Ok(f) if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 => f as i64,
            _ => {
                return Err(D::Error::custom(format!(
                    "expected a whole number, got {text}"
                )));
            }
        },
    };
    T::try_from(n).map_err(|_| D::Error::custom(format!("{n} is out of range")))
}

/// A key that is present must hold a value: `"emails": null` is refused rather than
/// read as "no change".
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// The update mask and fields of a contact change: which fields the body names.
pub fn contact_update(
    emails: Option<Vec<String>>,
    address: Option<AddressInput>,
) -> (Vec<String>, Option<common::Address>, prost_types::FieldMask) {
    let mut paths = Vec::new();
    if emails.is_some() {
        paths.push("emails".to_owned());
    }
    if address.is_some() {
        paths.push("delivery_address".to_owned());
    }
    (
        emails.unwrap_or_default(),
        address.map(Into::into),
        prost_types::FieldMask { paths },
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum OrderStatus {
    #[serde(rename = "under process")]
    UnderProcess,
    #[serde(rename = "shipping")]
    Shipping,
    #[serde(rename = "delivered")]
    Delivered,
}

impl OrderStatus {
    pub fn to_proto(self) -> i32 {
        (match self {
            Self::UnderProcess => order::OrderStatus::UnderProcess,
            Self::Shipping => order::OrderStatus::Shipping,
            Self::Delivered => order::OrderStatus::Delivered,
        }) as i32
    }

    fn from_proto(raw: i32) -> Option<Self> {
        match order::OrderStatus::try_from(raw).ok()? {
            order::OrderStatus::UnderProcess => Some(Self::UnderProcess),
            order::OrderStatus::Shipping => Some(Self::Shipping),
            order::OrderStatus::Delivered => Some(Self::Delivered),
            order::OrderStatus::Unspecified => None,
        }
    }
}

/// How the OpenAPI document describes `emails`: 1 to 20 distinct addresses, each a
/// non-blank text without control characters or surrounding spaces. That is every
/// address the API as a whole accepts: orders hold copies of their user's addresses, and
/// legacy user-svc v1 never checked their syntax, so neither it nor order-svc does. v2
/// also requires a valid address, which the description says and `format` cannot: the
/// document serves both flavors, and a schema promising `format: email` would be broken by
/// every v1 answer.
fn email_list() -> utoipa::openapi::Array {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    utoipa::openapi::ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(254))
                .pattern(Some(
                    r"^[^\s\u0000-\u001F\u007F-\u009F](?:[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F])?$",
                )),
        )
        .min_items(Some(1))
        .max_items(Some(20))
        .unique_items(true)
        .description(Some(
            "Distinct ignoring letter case. user-svc v2 also requires valid address syntax \
             (RFC 5322, domain with a dot); v1 and orders keep any non-blank text.",
        ))
        .examples([serde_json::json!(["robert.williams@hotmail.com"])])
        .build()
}

/// An exact decimal: a JSON number (`29.99`) or a string holding one (`"29.99"`), kept as
/// the client wrote it; never parsed into binary floating point.
#[derive(Debug, Clone, PartialEq, Eq, ToSchema)]
#[schema(value_type = f64, example = 29.99)]
pub struct Price(String);

impl<'de> Deserialize<'de> for Price {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw: Box<RawValue> = Deserialize::deserialize(d)?;
        let text = raw.get();
        if text.starts_with('"') {
            let inner: String = serde_json::from_str(text).map_err(D::Error::custom)?;
            return Ok(Price(inner));
        }
        if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
            Ok(Price(text.to_owned()))
        } else {
            Err(D::Error::custom("expected a decimal number such as 29.99"))
        }
    }
}

impl Serialize for Price {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The services only hand out plain decimal text, so it is a valid JSON number.
        let raw = RawValue::from_string(self.0.clone()).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ItemInput {
    #[schema(
        example = "Study table",
        pattern = r"^[^\u0000-\u0008\u000A-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u0008\u000A-\u001F\u007F-\u009F]*$",
        max_length = 256
    )]
    pub item_id: String,
    /// At least 1.
    #[schema(example = 1, minimum = 1)]
    #[serde(deserialize_with = "whole_number")]
    pub quantity: i64,
    /// Unit price from 0 to 10^18: an exact decimal (a JSON number, or a string holding
    /// one), at most 28 digits after the point.
    #[schema(value_type = f64, example = 29.99, minimum = 0, maximum = 1e18)]
    pub price: Price,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateOrderInput {
    #[schema(example = "8eab397f-6890-4c61-b3f8-4f6c099e4c90", format = Uuid)]
    pub user_id: String,
    #[schema(min_items = 1, max_items = 1000)]
    pub items: Vec<ItemInput>,
    #[serde(alias = "userEmails")]
    #[schema(schema_with = email_list)]
    pub emails: Vec<String>,
    pub delivery_address: AddressInput,
    /// Defaults to "under process".
    pub order_status: Option<OrderStatus>,
}

impl From<CreateOrderInput> for order::CreateOrderRequest {
    fn from(b: CreateOrderInput) -> Self {
        order::CreateOrderRequest {
            user_id: b.user_id,
            items: b
                .items
                .into_iter()
                .map(|i| order::OrderItem {
                    item_id: i.item_id,
                    quantity: i.quantity,
                    price: Some(common::Decimal { value: i.price.0 }),
                })
                .collect(),
            emails: b.emails,
            delivery_address: Some(b.delivery_address.into()),
            order_status: b.order_status.map_or(0, OrderStatus::to_proto),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatusInput {
    pub order_status: OrderStatus,
}

/// Query of GET /orders.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only orders with this status.
    pub status: Option<OrderStatus>,
    /// Only orders of this user.
    #[param(format = Uuid)]
    pub user_id: Option<String>,
    /// Orders per page: 100 by default, 1000 at most (larger asks get 1000).
    #[param(minimum = 0)]
    pub limit: Option<i32>,
    /// `nextPageToken` of the previous page, with the same filters.
    pub page_token: Option<String>,
}

// === responses ===

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddressView {
    pub street: String,
    pub city: String,
    pub province: String,
    pub postal_code: String,
    pub country: String,
}

impl From<common::Address> for AddressView {
    fn from(a: common::Address) -> Self {
        AddressView {
            street: a.street,
            city: a.city,
            province: a.province,
            postal_code: a.postal_code,
            country: a.country,
        }
    }
}

fn rfc3339(ts: Option<prost_types::Timestamp>) -> Option<String> {
    let ts = ts?;
    DateTime::<Utc>::from_timestamp(ts.seconds, ts.nanos.max(0) as u32)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    #[schema(example = "8eab397f-6890-4c61-b3f8-4f6c099e4c90")]
    pub user_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone_number: Option<String>,
    pub emails: Vec<String>,
    pub delivery_address: AddressView,
    /// Set when the user was created by user-svc v2 (RFC 3339, UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// Set when the user was created or last changed by user-svc v2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

impl From<user::User> for UserView {
    fn from(u: user::User) -> Self {
        UserView {
            user_id: u.user_id,
            first_name: u.first_name,
            last_name: u.last_name,
            phone_number: u.phone_number,
            emails: u.emails,
            delivery_address: u.delivery_address.unwrap_or_default().into(),
            created_at: rfc3339(u.created_at),
            updated_at: rfc3339(u.updated_at),
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ItemView {
    pub item_id: String,
    pub quantity: i64,
    pub price: Price,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    pub order_id: String,
    pub user_id: String,
    pub items: Vec<ItemView>,
    pub emails: Vec<String>,
    pub delivery_address: AddressView,
    pub order_status: OrderStatus,
    pub created_at: String,
    pub updated_at: String,
}

impl TryFrom<order::Order> for OrderView {
    type Error = String;

    fn try_from(o: order::Order) -> Result<Self, String> {
        let items = o
            .items
            .into_iter()
            .map(|i| {
                let price = i.price.map(|p| p.value).unwrap_or_default();
                let plain = !price.is_empty()
                    && price
                        .bytes()
                        .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-');
                plain
                    .then(|| ItemView {
                        item_id: i.item_id,
                        quantity: i.quantity,
                        price: Price(price.clone()),
                    })
                    .ok_or(format!(
                        "order-svc sent a price that is not plain decimal: {price:?}"
                    ))
            })
            .collect::<Result<_, _>>()?;
        Ok(OrderView {
            order_id: o.order_id,
            user_id: o.user_id,
            items,
            emails: o.emails,
            delivery_address: o.delivery_address.unwrap_or_default().into(),
            order_status: OrderStatus::from_proto(o.order_status)
                .ok_or("order-svc sent an order without a status")?,
            created_at: rfc3339(o.created_at).unwrap_or_default(),
            updated_at: rfc3339(o.updated_at).unwrap_or_default(),
        })
    }
}

/// `{"status":"success","user":…}`
#[derive(Debug, Serialize, ToSchema)]
pub struct UserEnvelope {
    #[schema(example = "success")]
    pub status: &'static str,
    pub user: UserView,
}

/// `{"status":"success","after":…}` for a changed user.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserAfterEnvelope {
    #[schema(example = "success")]
    pub status: &'static str,
    pub after: UserView,
}

/// `{"status":"success","order":…}`
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderEnvelope {
    #[schema(example = "success")]
    pub status: &'static str,
    pub order: OrderView,
}

/// `{"status":"success","after":…}` for a changed order.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderAfterEnvelope {
    #[schema(example = "success")]
    pub status: &'static str,
    pub after: OrderView,
}

/// `{"status":"success","orders":[…],"nextPageToken":…}`
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrdersEnvelope {
    #[schema(example = "success")]
    pub status: &'static str,
    pub orders: Vec<OrderView>,
    /// Present when more orders follow; pass it as `pageToken`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

pub const SUCCESS: &str = "success";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_keep_their_digits_both_ways() {
        let item: ItemInput =
            serde_json::from_str(r#"{"itemId":"t","quantity":1,"price":123456789012345678.99}"#)
                .unwrap();
        assert_eq!(item.price.0, "123456789012345678.99");
        let quoted: ItemInput =
            serde_json::from_str(r#"{"itemId":"t","quantity":1,"price":"29.99"}"#).unwrap();
        assert_eq!(quoted.price.0, "29.99");
        let out = serde_json::to_string(&ItemView {
            item_id: "t".into(),
            quantity: 1,
            price: Price("29.990".into()),
        })
        .unwrap();
        assert_eq!(out, r#"{"itemId":"t","quantity":1,"price":29.990}"#);
        assert!(
            serde_json::from_str::<ItemInput>(r#"{"itemId":"t","quantity":1,"price":true}"#)
                .is_err()
        );
    }

    #[test]
    fn state_is_province_and_null_is_not_absent() {
        let a: AddressInput = serde_json::from_str(
            r#"{"street":"1","city":"c","state":"ON","postalCode":"z","country":"C"}"#,
        )
        .unwrap();
        assert_eq!(a.province, "ON");
        assert!(serde_json::from_str::<ContactInput>(r#"{"emails":null}"#).is_err());
        let c: OrderContactInput = serde_json::from_str(r#"{"userEmails":["a@b.co"]}"#).unwrap();
        assert_eq!(c.emails.unwrap(), ["a@b.co"]);
    }
}
