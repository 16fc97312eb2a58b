//! A user as user-svc stores and serves it.

use chrono::{DateTime, Utc};
use tandem::domain::{Address, ContactChange, EmailList, UserContact, UserId};
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

    /// The user after `change`, its version one higher; `stamp` (the v2 flavor's) becomes
    /// `updated_at`.
    pub fn changed(mut self, change: &ContactChange, stamp: Option<DateTime<Utc>>) -> User {
        if let Some(emails) = &change.emails {
            self.emails = emails.clone();
        }
        if let Some(address) = &change.delivery_address {
            self.delivery_address = address.clone();
        }
        self.contact_version += 1;
        if stamp.is_some() {
            self.updated_at = stamp;
        }
        self
    }

    /// The user's contact, as the `user.updated` event announces it.
    pub fn contact(&self) -> UserContact {
        UserContact {
            user_id: self.user_id,
            version: self.contact_version,
            emails: self.emails.clone(),
            delivery_address: self.delivery_address.clone(),
        }
    }
}
