use email_address::{EmailAddress, Options};

use super::{MAX_EMAILS, Violations};

/// Longest address SMTP can carry (RFC 5321 path limit).
pub const MAX_EMAIL_CHARS: usize = 254;

/// How strictly an email address is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailCheck {
    /// Legacy behavior (user-svc v1, orders): any non-empty text without surrounding
    /// whitespace is accepted.
    Lenient,
    /// RFC 5322 syntax with a domain of at least two labels (user-svc v2).
    Syntax,
}

/// An email address as the client wrote it; compared case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str, check: EmailCheck) -> Result<Email, String> {
        if raw.is_empty() {
            return Err("must not be empty".into());
        }
        if raw.trim() != raw {
            return Err("must not start or end with whitespace".into());
        }
        if raw.chars().count() > MAX_EMAIL_CHARS {
            return Err(format!("must be at most {MAX_EMAIL_CHARS} characters"));
        }
        if raw.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        if check == EmailCheck::Syntax {
            let options = Options::default()
                .without_display_text()
                .without_domain_literal()
                .with_required_tld();
            EmailAddress::parse_with_options(raw, options)
                .map_err(|e| format!("is not a valid email address ({e})"))?;
        }
        Ok(Email(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form uniqueness is decided on: two addresses that differ only in letter case
    /// belong to one mailbox as far as tandem is concerned.
    pub fn normalized(&self) -> String {
        self.0.to_lowercase()
    }
}

impl std::fmt::Display for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One to [`MAX_EMAILS`] addresses, no two equal ignoring case, in the client's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailList(Vec<Email>);

impl EmailList {
    /// Violations are named relative to the list: `""` for the list, `[i]` for an item.
    pub fn parse(raw: &[String], check: EmailCheck) -> Result<EmailList, Violations> {
        let mut violations = Violations::new();
        if raw.is_empty() {
            violations.add("", "at least one email is required");
        }
        if raw.len() > MAX_EMAILS {
            violations.add("", format!("at most {MAX_EMAILS} emails are allowed"));
            return Err(violations);
        }
        let mut seen = std::collections::HashSet::new();
        let mut emails = Vec::with_capacity(raw.len());
        for (i, text) in raw.iter().enumerate() {
            if let Some(email) = violations.check(format!("[{i}]"), Email::parse(text, check)) {
                if seen.insert(email.normalized()) {
                    emails.push(email);
                } else {
                    violations.add(format!("[{i}]"), "is listed twice (ignoring case)");
                }
            }
        }
        violations.finish(|| EmailList(emails))
    }

    pub fn as_slice(&self) -> &[Email] {
        &self.0
    }

    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(|e| e.0.clone()).collect()
    }

    /// The addresses as text, taking them rather than copying them.
    pub fn into_strings(self) -> Vec<String> {
        self.0.into_iter().map(|e| e.0).collect()
    }

    pub fn normalized(&self) -> Vec<String> {
        self.0.iter().map(Email::normalized).collect()
    }

    /// Rebuilds a list read back from a store, which only ever holds parsed lists.
    pub fn from_stored(emails: Vec<String>) -> EmailList {
        EmailList(emails.into_iter().map(Email).collect())
    }
}

/// How the OpenAPI document describes an email list: what [`EmailList::parse`] accepts
/// with [`EmailCheck::Lenient`], which is every list the API as a whole accepts. Orders
/// hold copies of their user's addresses and legacy user-svc v1 never checked their
/// syntax, so neither does; v2 also requires valid syntax, which the description says and
/// `format` cannot (a schema promising `format: email` would be broken by v1's answers).
#[cfg(feature = "openapi")]
pub fn email_list_schema() -> utoipa::openapi::Array {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    utoipa::openapi::ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(MAX_EMAIL_CHARS))
                // Not blank, no surrounding space, no control character.
                .pattern(Some(
                    r"^[^\s\u0000-\u001F\u007F-\u009F](?:[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F])?$",
                )),
        )
        .min_items(Some(1))
        .max_items(Some(MAX_EMAILS))
        .unique_items(true)
        .description(Some(
            "Distinct ignoring letter case. user-svc v2 also requires valid address syntax \
             (RFC 5322, domain with a dot); v1 and orders keep any non-blank text.",
        ))
        .examples([serde_json::json!(["robert.williams@hotmail.com"])])
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_accepts_legacy_addresses_but_not_blank_ones() {
        assert!(Email::parse("not-an-email", EmailCheck::Lenient).is_ok());
        assert!(Email::parse("", EmailCheck::Lenient).is_err());
        assert!(Email::parse(" a@b.co", EmailCheck::Lenient).is_err());
        assert!(Email::parse("a\u{0}@b.co", EmailCheck::Lenient).is_err());
    }

    #[test]
    fn syntax_check_rejects_what_a_mail_server_would() {
        for ok in [
            "robert.williams@hotmail.com",
            "rob.w@gouv.qc.ca",
            "a+tag@x.io",
        ] {
            assert!(Email::parse(ok, EmailCheck::Syntax).is_ok(), "{ok}");
        }
        for bad in [
            "not-an-email",
            "a@localhost",
            "Rob <rob@x.io>",
            "a@@x.io",
            "a@[127.0.0.1]",
        ] {
            assert!(Email::parse(bad, EmailCheck::Syntax).is_err(), "{bad}");
        }
    }

    #[test]
    fn list_names_each_bad_item_and_case_insensitive_duplicates() {
        let raw = vec!["A@x.io".to_string(), "nope".into(), "a@X.io".into()];
        let err = EmailList::parse(&raw, EmailCheck::Syntax).unwrap_err();
        let fields: Vec<_> = err.iter().map(|v| v.field.clone()).collect();
        assert_eq!(fields, ["[1]", "[2]"]);
        assert!(EmailList::parse(&[], EmailCheck::Lenient).is_err());
    }

    #[test]
    fn normalized_form_ignores_case() {
        let e = Email::parse("Robert.Williams@Hotmail.com", EmailCheck::Syntax).unwrap();
        assert_eq!(e.normalized(), "robert.williams@hotmail.com");
        assert_eq!(e.as_str(), "Robert.Williams@Hotmail.com");
    }
}
