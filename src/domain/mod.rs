//! Domain value types shared by several services. Each can only hold valid data: it is
//! parsed once, at the boundary, and the parse error names the field it came from.

mod address;
mod contact;
mod email;
mod ids;
mod order_status;
mod price;
mod text;
mod violations;

pub use address::Address;
pub use contact::ContactFields;
pub use email::{Email, EmailCheck, EmailList};
pub use ids::{OrderId, UserId};
pub use order_status::{OrderStatus, StatusChange};
pub use price::{MAX_PRICE, Price};
pub use text::{optional_text, required_text};
pub use violations::{FieldViolation, Violations};

/// Longest text field (name, street, item id, …) the services store, in characters.
pub const MAX_TEXT_CHARS: usize = 256;

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
