use super::Violations;
use super::text::required_text;
use crate::proto::common::v1 as pb;

/// A delivery address whose five parts are all present and printable.
///
/// On the wire (gRPC, the REST API, the `user.updated` event) an address is the proto
/// message `tandem.common.v1.Address`, whose JSON form is its proto3 JSON mapping; this is
/// the checked value the services work with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    street: String,
    city: String,
    province: String,
    postal_code: String,
    country: String,
}

impl Address {
    /// Violations are named relative to the address (`postal_code`); a missing address
    /// is reported as `""`.
    pub fn parse(raw: Option<&pb::Address>) -> Result<Address, Violations> {
        let mut violations = Violations::new();
        let Some(raw) = raw else {
            violations.add("", "is required");
            return Err(violations);
        };
        let mut part = |name: &str, value: &str| {
            violations
                .check(name, required_text(value))
                .unwrap_or_default()
        };
        let address = Address {
            street: part("street", &raw.street),
            city: part("city", &raw.city),
            province: part("province", &raw.province),
            postal_code: part("postal_code", &raw.postal_code),
            country: part("country", &raw.country),
        };
        violations.finish(|| address)
    }

    /// Rebuilds an address read back from a store, which only ever holds parsed ones.
    pub fn from_stored(
        street: String,
        city: String,
        province: String,
        postal_code: String,
        country: String,
    ) -> Address {
        Address {
            street,
            city,
            province,
            postal_code,
            country,
        }
    }

    pub fn street(&self) -> &str {
        &self.street
    }

    pub fn city(&self) -> &str {
        &self.city
    }

    pub fn province(&self) -> &str {
        &self.province
    }

    pub fn postal_code(&self) -> &str {
        &self.postal_code
    }

    pub fn country(&self) -> &str {
        &self.country
    }

    pub fn to_proto(&self) -> pb::Address {
        self.clone().into_proto()
    }

    /// The proto message, taking the parts rather than copying them.
    pub fn into_proto(self) -> pb::Address {
        pb::Address {
            street: self.street,
            city: self.city,
            province: self.province,
            postal_code: self.postal_code,
            country: self.country,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> pb::Address {
        pb::Address {
            street: "456 Elm Avenue".into(),
            city: "Ottawa".into(),
            province: "ON".into(),
            postal_code: "K2P 1L4".into(),
            country: "Canada".into(),
        }
    }

    #[test]
    fn complete_address_parses() {
        assert_eq!(Address::parse(Some(&full())).unwrap().to_proto(), full());
    }

    #[test]
    fn every_missing_part_is_named() {
        let raw = pb::Address {
            city: " ".into(),
            country: String::new(),
            ..full()
        };
        let err = Address::parse(Some(&raw)).unwrap_err();
        let fields: Vec<_> = err.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["city", "country"]);
        assert_eq!(Address::parse(None).unwrap_err().iter().count(), 1);
    }

    #[test]
    fn the_wire_form_is_proto3_json_and_takes_state_for_province() {
        let json = serde_json::to_value(full()).unwrap();
        assert_eq!(json["postalCode"], "K2P 1L4");
        let old: pb::Address = serde_json::from_str(
            r#"{"street":"1","city":"c","state":"ON","postalCode":"z","country":"C"}"#,
        )
        .unwrap();
        assert_eq!(old.province, "ON");
        assert!(
            serde_json::from_str::<pb::Address>(
                r#"{"street":"1","city":"c","province":"ON","postalCode":"z","country":"C","x":1}"#
            )
            .is_err(),
            "unknown fields are refused"
        );
    }
}
