//! The rule for the free text tandem stores (names, phone numbers, address parts, item
//! ids): bounded, printable, and for required fields not blank. The OpenAPI document states
//! the same rule as patterns, written here next to the code they describe.

/// Longest text field (name, street, item id, …) the services store, in characters.
pub const MAX_TEXT_CHARS: usize = 256;

/// A required, bounded, printable piece of text.
pub fn required_text(raw: &str) -> Result<String, String> {
    if raw.trim().is_empty() {
        return Err("must not be empty".into());
    }
    optional_text(raw)
}

/// Bounded, printable text (may be empty).
pub fn optional_text(raw: &str) -> Result<String, String> {
    if raw.chars().count() > MAX_TEXT_CHARS {
        return Err(format!("must be at most {MAX_TEXT_CHARS} characters"));
    }
    if raw.chars().any(|c| c.is_control() && c != '\t') {
        return Err("must not contain control characters".into());
    }
    Ok(raw.to_owned())
}

/// [`optional_text`] as a regular expression: no control character but tab
/// (`char::is_control` is Unicode's Cc category: U+0000–U+001F and U+007F–U+009F).
pub const OPTIONAL_TEXT_PATTERN: &str = r"^[^\u0000-\u0008\u000A-\u001F\u007F-\u009F]*$";

/// [`required_text`] as a regular expression: the same, with at least one character
/// that is neither a space nor a control character.
pub const REQUIRED_TEXT_PATTERN: &str = r"^[^\u0000-\u0008\u000A-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u0008\u000A-\u001F\u007F-\u009F]*$";

/// The schema of a text field, for the OpenAPI document.
#[cfg(feature = "openapi")]
pub fn text_schema(required: bool, example: &str) -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(if required {
            REQUIRED_TEXT_PATTERN
        } else {
            OPTIONAL_TEXT_PATTERN
        }))
        .max_length(Some(MAX_TEXT_CHARS))
        .examples([serde_json::json!(example)])
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_bounded_and_printable() {
        assert!(required_text("Ottawa").is_ok());
        assert!(required_text(" \t").is_err());
        assert!(optional_text("").is_ok());
        assert!(optional_text("tab\tok").is_ok());
        assert!(optional_text("bell\u{7}").is_err());
        assert!(optional_text(&"x".repeat(MAX_TEXT_CHARS + 1)).is_err());
    }
}
