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
