//! Domain value types shared by several services. Each can only hold valid data: it is
//! parsed once, at the boundary, and the parse error names the field it came from.

mod address;
mod email;
mod ids;
mod order_status;
mod price;
mod violations;

pub use address::Address;
pub use email::{Email, EmailCheck, EmailList};
pub use ids::{OrderId, UserId};
pub use order_status::{OrderStatus, StatusChange};
pub use price::Price;
pub use violations::{FieldViolation, Violations};

/// Longest text field (name, street, item id, …) the services store, in characters.
pub const MAX_TEXT_CHARS: usize = 256;

/// Most emails a user or an order may carry.
pub const MAX_EMAILS: usize = 20;
