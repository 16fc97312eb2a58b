//! The `user.updated` event. On the wire it is the proto3 JSON form of
//! `tandem.events.v1.UserUpdated`, readable in the RabbitMQ UI and by consumers that only
//! know the documented fields (`userId`, `emails`, `deliveryAddress`); in code it is a
//! checked [`UserContact`] with the event's id and time.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tandem::domain::{UserContact, Violations, json_path};
use tandem::proto::common::v1 as pb;

/// The `event` field, the AMQP `type` property and the routing key.
pub const USER_UPDATED: &str = "user.updated";

/// A user's contact after a change, as the event announces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserUpdated {
    /// Unique per event (UUIDv7, so ids sort by creation); also the AMQP message id.
    pub event_id: String,
    /// When the change was committed.
    pub occurred_at: DateTime<Utc>,
    pub contact: UserContact,
}

/// The body, field for field as proto3 JSON writes it (camelCase, int64 as a string,
/// RFC 3339 UTC timestamps).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    event: String,
    event_id: String,
    user_id: String,
    #[serde(with = "int64_json")]
    version: i64,
    emails: Vec<String>,
    delivery_address: pb::Address,
    occurred_at: DateTime<Utc>,
}

impl UserUpdated {
    /// A new event (with a fresh id) announcing `contact`.
    pub fn new(contact: UserContact, occurred_at: DateTime<Utc>) -> UserUpdated {
        UserUpdated {
            event_id: uuid::Uuid::now_v7().to_string(),
            occurred_at,
            contact,
        }
    }

    pub fn to_json(&self) -> String {
        let c = &self.contact;
        let wire = Wire {
            event: USER_UPDATED.to_owned(),
            event_id: self.event_id.clone(),
            user_id: c.user_id.to_string(),
            version: c.version,
            emails: c.emails.to_strings(),
            delivery_address: c.delivery_address.to_proto(),
            occurred_at: self.occurred_at,
        };
        serde_json::to_string(&wire).expect("an event always serializes")
    }

    /// Reads a message body. An error says why the event can never be applied, so it
    /// belongs in the dead-letter queue; it names every bad field at once.
    pub fn parse(body: &[u8]) -> Result<UserUpdated, String> {
        let wire: Wire =
            serde_json::from_slice(body).map_err(|e| format!("not a user.updated event: {e}"))?;
        if wire.event != USER_UPDATED {
            return Err(format!(
                "event is {:?}, expected {USER_UPDATED:?}",
                wire.event
            ));
        }
        let contact = UserContact::parse(
            &wire.user_id,
            wire.version,
            &wire.emails,
            Some(&wire.delivery_address),
        )
        .map_err(|v| format!("invalid user.updated event: {}", as_event_fields(v)))?;
        Ok(UserUpdated {
            event_id: wire.event_id,
            occurred_at: wire.occurred_at,
            contact,
        })
    }
}

/// Violations named as the event names its fields (`userId`, `version`, …).
fn as_event_fields(violations: Violations) -> Violations {
    let mut renamed = Violations::new();
    for v in violations.into_vec() {
        let field = match v.field.as_str() {
            "contact_version" => "version".to_owned(),
            other => json_path(other),
        };
        renamed.add(field, v.description);
    }
    renamed
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
    use tandem::domain::{Address, EmailCheck, EmailList, UserId};

    fn sample() -> UserUpdated {
        let address = Address::parse(Some(&pb::Address {
            street: "99 Park Ave".into(),
            city: "Montreal".into(),
            province: "QC".into(),
            postal_code: "H3A 1B1".into(),
            country: "Canada".into(),
        }))
        .unwrap();
        let contact = UserContact {
            user_id: UserId::new_random(),
            version: 3,
            emails: EmailList::parse(&["rob@x.io".into()], EmailCheck::Syntax).unwrap(),
            delivery_address: address,
        };
        UserUpdated::new(contact, "2026-11-22T10:00:00.123Z".parse().unwrap())
    }

    fn to_proto(e: &UserUpdated) -> tandem::proto::events::v1::UserUpdated {
        tandem::proto::events::v1::UserUpdated {
            event: USER_UPDATED.into(),
            event_id: e.event_id.clone(),
            user_id: e.contact.user_id.to_string(),
            version: e.contact.version,
            emails: e.contact.emails.to_strings(),
            delivery_address: Some(e.contact.delivery_address.to_proto()),
            occurred_at: Some(prost_types::Timestamp {
                seconds: e.occurred_at.timestamp(),
                nanos: e.occurred_at.timestamp_subsec_nanos() as i32,
            }),
        }
    }

    /// The serde form must be exactly what a proto3 JSON library produces and accepts, or
    /// consumers in other languages would disagree with us.
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
        assert_eq!(UserUpdated::parse(json.as_bytes()).unwrap(), event);
    }

    #[test]
    fn consumers_read_valid_events_and_explain_bad_ones() {
        let event = sample();
        let update = UserUpdated::parse(event.to_json().as_bytes()).unwrap();
        assert_eq!(update.contact.version, 3);
        assert_eq!(update.contact.user_id, event.contact.user_id);

        let mut numeric: serde_json::Value = serde_json::from_str(&event.to_json()).unwrap();
        numeric["version"] = serde_json::json!(4);
        assert_eq!(
            UserUpdated::parse(numeric.to_string().as_bytes())
                .unwrap()
                .contact
                .version,
            4
        );

        assert!(
            UserUpdated::parse(b"{not json")
                .unwrap_err()
                .contains("not a user.updated")
        );
        let mut bad: serde_json::Value = serde_json::from_str(&event.to_json()).unwrap();
        bad["userId"] = serde_json::json!("nope");
        bad["emails"] = serde_json::json!([]);
        let reason = UserUpdated::parse(bad.to_string().as_bytes()).unwrap_err();
        assert!(
            reason.contains("userId") && reason.contains("emails"),
            "{reason}"
        );
    }
}
