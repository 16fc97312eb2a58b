use super::Violations;

/// Which contact fields an update request replaces (user contact, order details).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContactFields {
    pub emails: bool,
    pub delivery_address: bool,
}

impl ContactFields {
    /// Reads an update mask that may name `emails` and `delivery_address`. With no mask,
    /// the fields that are set are replaced (AIP-134). Asking for nothing is a violation.
    pub fn from_mask(
        mask: Option<prost_types::FieldMask>,
        has_emails: bool,
        has_address: bool,
        violations: &mut Violations,
    ) -> ContactFields {
        let paths = mask.map(|m| m.paths).unwrap_or_default();
        let mut fields = ContactFields {
            emails: paths.is_empty() && has_emails,
            delivery_address: paths.is_empty() && has_address,
        };
        for (i, path) in paths.iter().enumerate() {
            match path.as_str() {
                "emails" => fields.emails = true,
                "delivery_address" => fields.delivery_address = true,
                other => violations.add(
                    format!("update_mask.paths[{i}]"),
                    format!("{other:?} cannot be updated: only emails and delivery_address"),
                ),
            }
        }
        if !fields.emails && !fields.delivery_address && violations.is_empty() {
            violations.add(
                "update_mask",
                "nothing to update: give emails and/or delivery_address",
            );
        }
        fields
    }
}
