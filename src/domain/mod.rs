//! Domain value types shared by several crates. Each can only hold valid data: it is
//! parsed once, at the boundary, and the parse error names the field it came from.

mod address;
mod contact;
mod email;
mod flavor;
mod ids;
mod order_status;
mod price;
mod text;
mod violations;

pub use address::Address;
pub use contact::{ContactChange, DELIVERY_ADDRESS_PATH, EMAILS_PATH, UserContact};
#[cfg(feature = "openapi")]
pub use email::email_list_schema;
pub use email::{Email, EmailCheck, EmailList, MAX_EMAIL_CHARS};
pub use flavor::Flavor;
pub use ids::{OrderId, UserId};
pub use order_status::{OrderStatus, StatusChange};
pub use price::{MAX_PRICE, Price};
#[cfg(feature = "openapi")]
pub use text::text_schema;
pub use text::{
    MAX_TEXT_CHARS, OPTIONAL_TEXT_PATTERN, REQUIRED_TEXT_PATTERN, optional_text, required_text,
};
pub use violations::{FieldViolation, Violations, json_path};

/// Most emails a user or an order may carry.
pub const MAX_EMAILS: usize = 20;

/// The current instant at the precision every store keeps (milliseconds, as a BSON date
/// does), so a value reads back exactly as it was written, whichever the store.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    use chrono::DurationRound;
    let now = chrono::Utc::now();
    now.duration_trunc(chrono::TimeDelta::milliseconds(1))
        .unwrap_or(now)
}
