//! A user as user-svc stores and serves it.

use chrono::{DateTime, Utc};
use tandem::domain::{Address, EmailList, UserId};
use tandem::proto::timestamp;
use tandem::proto::user::v1 as pb;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub user_id: UserId,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub phone_number: Option<String>,
    pub emails: EmailList,
    pub delivery_address: Address,
    /// 1 at creation, one more with each contact change.
    pub contact_version: i64,
    /// Only the v2 flavor stamps users.
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl User {
    pub fn to_proto(&self) -> pb::User {
        pb::User {
            user_id: self.user_id.to_string(),
            first_name: self.first_name.clone(),
            last_name: self.last_name.clone(),
            phone_number: self.phone_number.clone(),
            emails: self.emails.to_strings(),
            delivery_address: Some(self.delivery_address.to_proto()),
            created_at: self.created_at.map(timestamp),
            updated_at: self.updated_at.map(timestamp),
            contact_version: self.contact_version,
        }
    }
}

/// A change of a user's contact details, applied atomically together with its
/// `user.updated` outbox record.
#[derive(Debug, Clone)]
pub struct ContactChange {
    pub user_id: UserId,
    pub emails: Option<EmailList>,
    pub delivery_address: Option<Address>,
    /// `Some` when the flavor stamps changes (v2).
    pub updated_at: Option<DateTime<Utc>>,
    /// The id of the request that caused the change, carried by the event.
    pub request_id: Option<String>,
}

impl ContactChange {
    /// The user after this change (the version bump included).
    pub fn apply_to(&self, mut user: User) -> User {
        if let Some(emails) = &self.emails {
            user.emails = emails.clone();
        }
        if let Some(address) = &self.delivery_address {
            user.delivery_address = address.clone();
        }
        user.contact_version += 1;
        if self.updated_at.is_some() {
            user.updated_at = self.updated_at;
        }
        user
    }
}
