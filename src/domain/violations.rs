/// One problem with one field of a request, named by its path in the request message
/// (`emails[1]`, `delivery_address.postal_code`, `items[0].price`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// Collects every violation of a request, so a client learns all of them at once rather
/// than one per round trip.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    /// One violation.
    pub fn single(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self(vec![FieldViolation::new(field, description)])
    }

    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Keeps the value of a successful parse; records the error of a failed one under
    /// `field` and returns `None`.
    pub fn check<T>(&mut self, field: impl Into<String>, parsed: Result<T, String>) -> Option<T> {
        match parsed {
            Ok(value) => Some(value),
            Err(description) => {
                self.add(field, description);
                None
            }
        }
    }

    /// Like [`check`](Self::check) for a value that reports its own violations, which
    /// are moved under `prefix` (`delivery_address` + `city`).
    pub fn check_nested<T>(&mut self, prefix: &str, parsed: Result<T, Violations>) -> Option<T> {
        match parsed {
            Ok(value) => Some(value),
            Err(nested) => {
                self.extend_prefixed(prefix, nested);
                None
            }
        }
    }

    /// Moves violations found in a nested value under `prefix`.
    pub fn extend_prefixed(&mut self, prefix: &str, nested: Violations) {
        self.0.extend(nested.0.into_iter().map(|v| FieldViolation {
            field: join_path(prefix, &v.field),
            description: v.description,
        }));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn into_vec(self) -> Vec<FieldViolation> {
        self.0
    }

    pub fn iter(&self) -> impl Iterator<Item = &FieldViolation> {
        self.0.iter()
    }

    /// `Ok(value)` when nothing was recorded, the violations otherwise.
    pub fn finish<T>(self, value: impl FnOnce() -> T) -> Result<T, Violations> {
        if self.0.is_empty() {
            Ok(value())
        } else {
            Err(self)
        }
    }
}

/// A field path as a JSON body names it: `delivery_address.postal_code` →
/// `deliveryAddress.postalCode`, `items[0].item_id` → `items[0].itemId` (the proto3 JSON
/// mapping's names, which the REST API and the event use).
pub fn json_path(proto_path: &str) -> String {
    let mut out = String::with_capacity(proto_path.len());
    let mut upper_next = false;
    for c in proto_path.chars() {
        match c {
            '_' => upper_next = true,
            c if upper_next => {
                out.extend(c.to_uppercase());
                upper_next = false;
            }
            c => out.push(c),
        }
    }
    out
}

fn join_path(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_owned()
    } else if field.is_empty() {
        prefix.to_owned()
    } else if field.starts_with('[') {
        format!("{prefix}{field}")
    } else {
        format!("{prefix}.{field}")
    }
}

impl From<FieldViolation> for Violations {
    fn from(v: FieldViolation) -> Self {
        Self(vec![v])
    }
}

impl std::fmt::Display for Violations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect();
        f.write_str(&parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_paths_join_with_dots_and_brackets() {
        let mut inner = Violations::new();
        inner.add("postal_code", "must not be empty");
        inner.add("[2]", "duplicate");
        let mut outer = Violations::new();
        outer.extend_prefixed("delivery_address", inner);
        let fields: Vec<_> = outer.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            ["delivery_address.postal_code", "delivery_address[2]"]
        );
    }

    #[test]
    fn proto_paths_become_json_paths() {
        assert_eq!(
            json_path("delivery_address.postal_code"),
            "deliveryAddress.postalCode"
        );
        assert_eq!(json_path("items[10].item_id"), "items[10].itemId");
        assert_eq!(json_path("emails[0]"), "emails[0]");
    }

    #[test]
    fn finish_returns_value_only_when_clean() {
        assert_eq!(Violations::new().finish(|| 7), Ok(7));
        let mut v = Violations::new();
        assert_eq!(v.check::<u8>("x", Err("bad".into())), None);
        assert!(v.finish(|| 7).is_err());
    }
}
