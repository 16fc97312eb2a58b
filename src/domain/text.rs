use super::MAX_TEXT_CHARS;

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
