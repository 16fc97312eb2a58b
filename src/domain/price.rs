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
        if above_max(&value) {
            return Err(format!("must be at most {MAX_PRICE}"));
        }
        // -0 and 0 are one price.
        Ok(Price(value.abs()))
    }
}

/// `value > MAX_PRICE`, from the mantissa: Decimal's own comparison rescales both sides,
/// and every price order-svc reads from its store is checked.
fn above_max(value: &Decimal) -> bool {
    // MAX_PRICE at scales 0 to 10; 10^18 × 10^scale exceeds any 96-bit mantissa from
    // scale 11 on.
    const BOUNDS: [u128; 11] = {
        let mut bounds = [MAX_PRICE as u128; 11];
        let mut scale = 1;
        while scale < 11 {
            bounds[scale] = bounds[scale - 1] * 10;
            scale += 1;
        }
        bounds
    };
    BOUNDS
        .get(value.scale() as usize)
        .is_some_and(|bound| value.mantissa().unsigned_abs() > *bound)
}

/// Plain decimal notation with the price's own scale (`29.99`, `5.50`, `0.000`), as
/// rust_decimal writes it. Written here from the mantissa's digits because rust_decimal's
/// `Display` builds the text in a buffer of its own and then pads it through the
/// `Formatter`: some 290 instructions a price, 7 % of order-svc's list call (bench/
/// FINDINGS.md §10). With a width or a precision asked for, rust_decimal writes it.
impl std::fmt::Display for Price {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if f.width().is_some() || f.precision().is_some() {
            return self.0.fmt(f);
        }
        // A price is never negative (`from_decimal`), so the mantissa is its digits.
        // u64 digits when the mantissa fits (any price with fewer than 20 digits): itoa's
        // u128 path divides in 128 bits.
        let mantissa = self.0.mantissa().unsigned_abs();
        let mut digits = itoa::Buffer::new();
        let digits = match u64::try_from(mantissa) {
            Ok(small) => digits.format(small),
            Err(_) => digits.format(mantissa),
        };
        let scale = self.0.scale() as usize;
        if scale == 0 {
            return f.write_str(digits);
        }
        if digits.len() > scale {
            let (whole, fraction) = digits.split_at(digits.len() - scale);
            f.write_str(whole)?;
            f.write_str(".")?;
            return f.write_str(fraction);
        }
        f.write_str("0.")?;
        for _ in digits.len()..scale {
            f.write_str("0")?;
        }
        f.write_str(digits)
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

    /// The digits written here are rust_decimal's, for every scale and for mantissas at
    /// the edges of a scale's digits (and widths/precisions still honoured).
    #[test]
    fn prices_print_as_rust_decimal_prints_them() {
        // Up to 29 digits: past u64 (20 digits) and to 10^28, within Decimal's 96 bits.
        let mut mantissas = vec![0i128, 1, 5, 9, 10, 99, 100, 101, 1999, 123_456_789];
        for digits in 1..=29u32 {
            mantissas.push(10i128.pow(digits - 1));
            mantissas.push(10i128.pow(digits - 1) + 7);
            if digits <= 28 {
                mantissas.push(10i128.pow(digits) - 1);
            }
        }
        mantissas.push(i128::from(u64::MAX));
        mantissas.push(i128::from(u64::MAX) + 1);
        let mut checked = 0;
        for scale in 0..=28u32 {
            for &m in &mantissas {
                let value = Decimal::from_i128_with_scale(m, scale);
                let Ok(price) = Price::from_decimal(value) else {
                    continue;
                };
                assert_eq!(price.to_string(), value.to_string(), "{m} at scale {scale}");
                checked += 1;
            }
        }
        assert!(checked > 500, "{checked}");
        let price = Price::parse("29.99").unwrap();
        let decimal = price.as_decimal();
        assert_eq!(
            format!("{price:.1}|{price:>8}|{price:<7}|"),
            format!("{decimal:.1}|{decimal:>8}|{decimal:<7}|")
        );
        assert_eq!(format!("{price:>8}"), "   29.99");
        assert_eq!(Price::parse("0.000").unwrap().to_string(), "0.000");
    }

    #[test]
    fn the_largest_price_is_exactly_the_bound_whatever_its_scale() {
        assert!(Price::parse("1000000000000000000").is_ok());
        assert!(Price::parse("1000000000000000000.0000000000").is_ok());
        assert!(Price::parse("1000000000000000000.0000000001").is_err());
        assert!(Price::parse("1000000000000000001").is_err());
        assert!(Price::parse("999999999999999999.9999999999").is_ok());
        // Scale 11 and more: the mantissa cannot reach the bound.
        assert!(Price::parse("999999999999999.99999999999").is_ok());
        assert!(Price::parse("0.0000000000000000000000000001").is_ok());
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
