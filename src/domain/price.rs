use rust_decimal::Decimal;

/// The largest price tandem takes (10^18): far beyond any real price, and exact both
/// as a decimal and as the `maximum` of the OpenAPI document (a double).
pub const MAX_PRICE: u64 = 1_000_000_000_000_000_000;

/// A unit price: an exact decimal, zero or more. It keeps the scale it was given, so
/// `29.99` is stored and returned as `29.99` and `5.50` as `5.50`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price(Decimal);

impl Price {
    /// Accepts plain (`29.99`) and scientific (`2.999e1`) notation, as JSON numbers may
    /// arrive in either.
    pub fn parse(raw: &str) -> Result<Price, String> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err("is required".into());
        }
        let plain = raw
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-');
        let value = if plain {
            Decimal::from_str_exact(raw)
        } else if raw.contains(['e', 'E']) {
            Decimal::from_scientific(raw)
        } else {
            return Err(format!("{raw:?} is not a decimal number"));
        }
        .map_err(|_| format!("{raw:?} is not a decimal number within ±7.9e28 and 28 decimals"))?;
        Price::from_decimal(value)
    }

    pub fn as_decimal(&self) -> Decimal {
        self.0
    }

    pub fn from_decimal(value: Decimal) -> Result<Price, String> {
        if value.is_sign_negative() && !value.is_zero() {
            return Err("must not be negative".into());
        }
        if value > Decimal::from(MAX_PRICE) {
            return Err(format!("must be at most {MAX_PRICE}"));
        }
        // -0 and 0 are one price.
        Ok(Price(value.abs()))
    }
}

impl std::fmt::Display for Price {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// In JSON a price is a number with its exact digits (`29.99`, `5.50`), never one that went
/// through binary floating point. Written for serde_json, the only JSON writer tandem uses.
impl serde::Serialize for Price {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Display is plain decimal notation, always a valid JSON number.
        let raw = serde_json::value::RawValue::from_string(self.to_string())
            .map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

/// Reads a JSON number (`29.99`, `2.999e1`) or a string holding one (`"29.99"`), from its
/// text: the digits are never parsed into a binary float first.
impl<'de> serde::Deserialize<'de> for Price {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let raw: Box<serde_json::value::RawValue> = serde::Deserialize::deserialize(d)?;
        let text = raw.get();
        let digits = if text.starts_with('"') {
            serde_json::from_str::<String>(text).map_err(D::Error::custom)?
        } else if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
            text.to_owned()
        } else {
            return Err(D::Error::custom("expected a decimal number such as 29.99"));
        };
        Price::parse(&digits).map_err(D::Error::custom)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Price {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::Number)
            .minimum(Some(0))
            .maximum(Some(MAX_PRICE as f64))
            .description(Some(
                "Unit price from 0 to 10^18: an exact decimal (a JSON number, or a string \
                 holding one), at most 28 digits after the point.",
            ))
            .examples([serde_json::json!(29.99)])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Price {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_keep_their_exact_digits() {
        for raw in [
            "29.99",
            "15.99",
            "0",
            "5.50",
            "0.1",
            "123456789012345678.99",
        ] {
            assert_eq!(Price::parse(raw).unwrap().to_string(), raw);
        }
        assert_eq!(Price::parse("2.999e1").unwrap().to_string(), "29.99");
        assert_eq!(Price::parse("-0").unwrap().to_string(), "0");
    }

    #[test]
    fn json_keeps_the_digits_both_ways() {
        let big: Price = serde_json::from_str("123456789012345678.99").unwrap();
        assert_eq!(
            serde_json::to_string(&big).unwrap(),
            "123456789012345678.99"
        );
        let quoted: Price = serde_json::from_str(r#""15.990""#).unwrap();
        assert_eq!(serde_json::to_string(&quoted).unwrap(), "15.990");
        assert!(serde_json::from_str::<Price>("true").is_err());
        assert!(serde_json::from_str::<Price>("-1").is_err());
    }

    #[test]
    fn bad_prices_are_refused_with_a_reason() {
        assert!(Price::parse("-1").unwrap_err().contains("negative"));
        for raw in [
            "",
            "abc",
            "1.2.3",
            "1e999",
            "NaN",
            "99999999999999999999999999999999",
        ] {
            assert!(Price::parse(raw).is_err(), "{raw}");
        }
    }
}
