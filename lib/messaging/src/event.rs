//! The `user.updated` event on the wire: the proto3 JSON form of
//! `tandem.events.v1.UserUpdated`, readable in the RabbitMQ UI and by consumers that only
//! know the documented fields (`userId`, `emails`, `deliveryAddress`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use tandem::domain::{Address, EmailCheck, EmailList, UserId, Violations};
use tandem::proto::common::v1 as pb;

/// The `event` field, the AMQP `type` property and the routing key.
pub const USER_UPDATED: &str = "user.updated";

/// The event body, field for field as proto3 JSON writes it (camelCase, int64 as string,
/// RFC 3339 UTC timestamps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserUpdated {
    pub event: String,
    pub event_id: String,
    pub user_id: String,
    #[serde(with = "int64_json")]
    pub version: i64,
    pub emails: Vec<String>,
    pub delivery_address: AddressJson,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddressJson {
    pub street: String,
    pub city: String,
    pub province: String,
    pub postal_code: String,
    pub country: String,
}

impl From<&Address> for AddressJson {
    fn from(a: &Address) -> Self {
        Self {
            street: a.street.clone(),
            city: a.city.clone(),
            province: a.province.clone(),
            postal_code: a.postal_code.clone(),
            country: a.country.clone(),
        }
    }
}

impl From<&AddressJson> for pb::Address {
    fn from(a: &AddressJson) -> Self {
        pb::Address {
            street: a.street.clone(),
            city: a.city.clone(),
            province: a.province.clone(),
            postal_code: a.postal_code.clone(),
            country: a.country.clone(),
        }
    }
}

/// A user's contact after a change, as a consumer needs it: checked, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactUpdate {
    pub event_id: String,
    pub user_id: UserId,
    pub version: i64,
    pub emails: EmailList,
    pub delivery_address: Address,
    /// When the change was committed.
    pub occurred_at: DateTime<Utc>,
}

impl UserUpdated {
    pub fn new(
        event_id: uuid::Uuid,
        user_id: UserId,
        version: i64,
        emails: &EmailList,
        address: &Address,
        occurred_at: DateTime<Utc>,
    ) -> Self {
        Self {
            event: USER_UPDATED.to_owned(),
            event_id: event_id.to_string(),
            user_id: user_id.to_string(),
            version,
            emails: emails.to_strings(),
            delivery_address: address.into(),
            occurred_at,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an event always serializes")
    }

    /// Reads a message body. An error says why the event can never be applied, so it
    /// belongs in the dead-letter queue.
    pub fn parse(body: &[u8]) -> Result<ContactUpdate, String> {
        let event: UserUpdated =
            serde_json::from_slice(body).map_err(|e| format!("not a user.updated event: {e}"))?;
        if event.event != USER_UPDATED {
            return Err(format!(
                "event is {:?}, expected {USER_UPDATED:?}",
                event.event
            ));
        }
        let mut violations = Violations::new();
        let user_id = violations.check("userId", UserId::parse(&event.user_id));
        if event.version < 1 {
            violations.add("version", "must be at least 1");
        }
        // The user service already checked the emails with its flavor's rules; a consumer
        // only insists they are present and well-formed enough to store.
        let emails = match EmailList::parse(&event.emails, EmailCheck::Lenient) {
            Ok(emails) => Some(emails),
            Err(nested) => {
                violations.extend_prefixed("emails", nested);
                None
            }
        };
        let address = match Address::parse(Some(&(&event.delivery_address).into())) {
            Ok(address) => Some(address),
            Err(nested) => {
                violations.extend_prefixed("deliveryAddress", nested);
                None
            }
        };
        match (user_id, emails, address) {
            (Some(user_id), Some(emails), Some(delivery_address)) if violations.is_empty() => {
                Ok(ContactUpdate {
                    event_id: event.event_id,
                    user_id,
                    version: event.version,
                    emails,
                    delivery_address,
                    occurred_at: event.occurred_at,
                })
            }
            _ => Err(format!("invalid user.updated event: {violations}")),
        }
    }
}

/// proto3 JSON writes int64 as a string; readers accept a string or a number.
mod int64_json {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum StringOrNumber {
        String(String),
        Number(i64),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        match StringOrNumber::deserialize(d)? {
            StringOrNumber::Number(n) => Ok(n),
            StringOrNumber::String(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use prost_reflect::{DescriptorPool, DynamicMessage};

    fn sample() -> UserUpdated {
        let emails = EmailList::parse(&["rob@x.io".into()], EmailCheck::Syntax).unwrap();
        let address = Address {
            street: "99 Park Ave".into(),
            city: "Montreal".into(),
            province: "QC".into(),
            postal_code: "H3A 1B1".into(),
            country: "Canada".into(),
        };
        UserUpdated::new(
            uuid::Uuid::now_v7(),
            UserId::new_random(),
            3,
            &emails,
            &address,
            "2026-11-22T10:00:00.123Z".parse().unwrap(),
        )
    }

    fn to_proto(e: &UserUpdated) -> tandem::proto::events::v1::UserUpdated {
        tandem::proto::events::v1::UserUpdated {
            event: e.event.clone(),
            event_id: e.event_id.clone(),
            user_id: e.user_id.clone(),
            version: e.version,
            emails: e.emails.clone(),
            delivery_address: Some((&e.delivery_address).into()),
            occurred_at: Some(prost_types::Timestamp {
                seconds: e.occurred_at.timestamp(),
                nanos: e.occurred_at.timestamp_subsec_nanos() as i32,
            }),
        }
    }

    /// The hand-written serde form must be exactly what a proto3 JSON library produces
    /// and accepts, or consumers in other languages would disagree with us.
    #[test]
    fn wire_form_is_canonical_proto3_json() {
        let pool = DescriptorPool::decode(tandem::proto::FILE_DESCRIPTOR_SET).unwrap();
        let desc = pool
            .get_message_by_name("tandem.events.v1.UserUpdated")
            .unwrap();
        let event = sample();
        let dynamic =
            DynamicMessage::decode(desc.clone(), to_proto(&event).encode_to_vec().as_slice())
                .unwrap();
        let canonical = serde_json::to_value(&dynamic).unwrap();
        let ours: serde_json::Value = serde_json::from_str(&event.to_json()).unwrap();
        assert_eq!(ours, canonical);
        assert_eq!(ours["version"], "3");

        let json = event.to_json();
        let mut de = serde_json::Deserializer::from_str(&json);
        let back = DynamicMessage::deserialize(desc, &mut de).unwrap();
        assert_eq!(back, dynamic);
    }

    #[test]
    fn consumers_read_valid_events_and_explain_bad_ones() {
        let event = sample();
        let update = UserUpdated::parse(event.to_json().as_bytes()).unwrap();
        assert_eq!(update.version, 3);
        assert_eq!(update.user_id.to_string(), event.user_id);

        let mut numeric: serde_json::Value = serde_json::from_str(&event.to_json()).unwrap();
        numeric["version"] = serde_json::json!(4);
        assert_eq!(
            UserUpdated::parse(numeric.to_string().as_bytes())
                .unwrap()
                .version,
            4
        );

        assert!(
            UserUpdated::parse(b"{not json")
                .unwrap_err()
                .contains("not a user.updated")
        );
        let mut bad = event.clone();
        bad.user_id = "nope".into();
        bad.emails.clear();
        let reason = UserUpdated::parse(bad.to_json().as_bytes()).unwrap_err();
        assert!(
            reason.contains("userId") && reason.contains("emails"),
            "{reason}"
        );
    }
}
