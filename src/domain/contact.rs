//! A user's contact, the part of a user its orders carry copies of: the emails and the
//! delivery address. It is known in two forms, each with one type:
//! - [`ContactChange`]: new emails and/or a new address, as an update asks for them
//!   (`UpdateUserContact`, `UpdateOrderDetails`, and their REST routes);
//! - [`UserContact`]: a user's whole contact at one version, as the `user.updated` event
//!   carries it and `ApplyUserContact` copies it onto the user's orders.

use prost_types::FieldMask;

use super::{Address, EmailCheck, EmailList, UserId, Violations};
use crate::proto::common::v1 as pb;

/// The update-mask path of the emails.
pub const EMAILS_PATH: &str = "emails";
/// The update-mask path of the delivery address.
pub const DELIVERY_ADDRESS_PATH: &str = "delivery_address";

/// New emails and/or a new delivery address; at least one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactChange {
    pub emails: Option<EmailList>,
    pub delivery_address: Option<Address>,
}

impl ContactChange {
    /// Reads the fields of an update request that its mask names; with no mask, the fields
    /// that are set (AIP-134). Asking for nothing is a violation, and so is a mask naming
    /// anything else. Violations go to `violations`, named as the request names its
    /// fields; `None` when this part of the request had any.
    pub fn parse(
        mask: Option<&FieldMask>,
        emails: &[String],
        delivery_address: Option<&pb::Address>,
        check: EmailCheck,
        violations: &mut Violations,
    ) -> Option<ContactChange> {
        let before = violations.len();
        let paths = mask.map(|m| m.paths.as_slice()).unwrap_or_default();
        let mut wants_emails = paths.is_empty() && !emails.is_empty();
        let mut wants_address = paths.is_empty() && delivery_address.is_some();
        for (i, path) in paths.iter().enumerate() {
            match path.as_str() {
                EMAILS_PATH => wants_emails = true,
                DELIVERY_ADDRESS_PATH => wants_address = true,
                other => violations.add(
                    format!("update_mask.paths[{i}]"),
                    format!("{other:?} cannot be updated: only emails and delivery_address"),
                ),
            }
        }
        if !wants_emails && !wants_address && violations.is_empty() {
            violations.add(
                "update_mask",
                "nothing to update: give emails and/or delivery_address",
            );
        }
        let emails = wants_emails
            .then(|| violations.check_nested(EMAILS_PATH, EmailList::parse(emails, check)))
            .flatten();
        let delivery_address = wants_address
            .then(|| {
                violations.check_nested(DELIVERY_ADDRESS_PATH, Address::parse(delivery_address))
            })
            .flatten();
        (violations.len() == before).then_some(ContactChange {
            emails,
            delivery_address,
        })
    }

    /// The update mask naming the given fields: what a client sends with a change.
    pub fn mask(emails: bool, delivery_address: bool) -> FieldMask {
        let paths = [
            (emails, EMAILS_PATH),
            (delivery_address, DELIVERY_ADDRESS_PATH),
        ]
        .into_iter()
        .filter(|(wanted, _)| *wanted)
        .map(|(_, path)| path.to_owned())
        .collect();
        FieldMask { paths }
    }
}

/// A user's whole contact after its `version`-th change: what each of the user's orders
/// should show once the sync has run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserContact {
    pub user_id: UserId,
    /// 1 at creation, one more with each change; orders only ever move to a higher one.
    pub version: i64,
    pub emails: EmailList,
    pub delivery_address: Address,
}

impl UserContact {
    /// Violations are named as `ApplyUserContactRequest` names its fields. The emails
    /// are checked leniently: the user service already applied its flavor's rules, and
    /// a copy only needs to be well-formed enough to store.
    pub fn parse(
        user_id: &str,
        version: i64,
        emails: &[String],
        delivery_address: Option<&pb::Address>,
    ) -> Result<UserContact, Violations> {
        let mut violations = Violations::new();
        let user_id = violations.check("user_id", UserId::parse(user_id));
        if version < 1 {
            violations.add("contact_version", "must be at least 1");
        }
        let emails =
            violations.check_nested(EMAILS_PATH, EmailList::parse(emails, EmailCheck::Lenient));
        let delivery_address =
            violations.check_nested(DELIVERY_ADDRESS_PATH, Address::parse(delivery_address));
        match (user_id, emails, delivery_address) {
            (Some(user_id), Some(emails), Some(delivery_address)) if violations.is_empty() => {
                Ok(UserContact {
                    user_id,
                    version,
                    emails,
                    delivery_address,
                })
            }
            _ => Err(violations),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address() -> pb::Address {
        pb::Address {
            street: "1 A St".into(),
            city: "Ottawa".into(),
            province: "ON".into(),
            postal_code: "K1A".into(),
            country: "Canada".into(),
        }
    }

    fn fields(v: &Violations) -> Vec<&str> {
        v.iter().map(|v| v.field.as_str()).collect()
    }

    #[test]
    fn without_a_mask_the_fields_that_are_set_change() {
        let mut v = Violations::new();
        let change =
            ContactChange::parse(None, &["a@b.co".into()], None, EmailCheck::Lenient, &mut v)
                .unwrap();
        assert!(change.emails.is_some() && change.delivery_address.is_none());

        let mut v = Violations::new();
        assert_eq!(
            ContactChange::parse(None, &[], None, EmailCheck::Lenient, &mut v),
            None
        );
        assert_eq!(fields(&v), ["update_mask"]);
    }

    #[test]
    fn a_mask_names_what_changes_and_nothing_else() {
        let mask = ContactChange::mask(false, true);
        assert_eq!(mask.paths, ["delivery_address"]);
        let mut v = Violations::new();
        let change = ContactChange::parse(
            Some(&mask),
            &["ignored@b.co".into()],
            Some(&address()),
            EmailCheck::Lenient,
            &mut v,
        )
        .unwrap();
        assert_eq!(change.emails, None, "emails are not in the mask");

        let odd = FieldMask {
            paths: vec!["first_name".into()],
        };
        let mut v = Violations::new();
        assert!(ContactChange::parse(Some(&odd), &[], None, EmailCheck::Lenient, &mut v).is_none());
        assert_eq!(fields(&v), ["update_mask.paths[0]"]);

        // A mask that names the address of a request without one: the address is required.
        let mut v = Violations::new();
        assert!(
            ContactChange::parse(
                Some(&ContactChange::mask(true, true)),
                &["x@y.co".into()],
                None,
                EmailCheck::Syntax,
                &mut v
            )
            .is_none()
        );
        assert_eq!(fields(&v), ["delivery_address"]);
    }

    #[test]
    fn a_user_contact_names_each_bad_field() {
        let ok = UserContact::parse(
            "8eab397f-6890-4c61-b3f8-4f6c099e4c90",
            3,
            &["a@b.co".into()],
            Some(&address()),
        )
        .unwrap();
        assert_eq!(ok.version, 3);
        let err = UserContact::parse("nope", 0, &[], None).unwrap_err();
        assert_eq!(
            fields(&err),
            ["user_id", "contact_version", "emails", "delivery_address"]
        );
    }
}
