//! Avro decimals as text. JSON numbers are binary floating point, so a
//! `decimal` (an exact unscaled integer with a fixed scale) travels through
//! the steps as a string such as `"12.30"`, and is written back from a
//! string or a number without silent rounding.

use apache_avro::{BigDecimal, Decimal};

/// The text of an Avro decimal with `scale` digits after the point.
pub fn to_text(decimal: Decimal, scale: usize) -> String {
    // Schema parsing bounds the scale by the precision, far below i64::MAX.
    let scale = i64::try_from(scale).unwrap_or(i64::MAX);
    BigDecimal::new(decimal.into(), scale).to_plain_string()
}

/// The decimal for `text` (`-12.5`, `7`, `+0.25`; no exponent) with the
/// schema's `precision` and `scale`. More digits after the point than the
/// scale allows is an error unless they are zeros; so is a value with more
/// digits than the precision.
pub fn from_text(text: &str, precision: usize, scale: usize) -> Result<Decimal, String> {
    let plain = Plain::parse(text)?;
    let (kept, dropped) = plain.fraction.split_at(plain.fraction.len().min(scale));
    if dropped.bytes().any(|b| b != b'0') {
        return Err(format!(
            "`{text}` has more than {scale} digits after the point (the schema's scale)"
        ));
    }
    let mut unscaled = String::with_capacity(plain.integer.len() + scale + 1);
    unscaled.push_str(plain.integer.trim_start_matches('0'));
    unscaled.push_str(kept);
    unscaled.extend(std::iter::repeat_n('0', scale - kept.len()));
    let digits = unscaled.trim_start_matches('0');
    if digits.len() > precision {
        return Err(format!(
            "`{text}` has more than {precision} significant digits (the schema's precision)"
        ));
    }
    let digits = if digits.is_empty() { "0" } else { digits };
    let signed = if plain.negative {
        format!("-{digits}")
    } else {
        digits.to_string()
    };
    let integer: BigDecimal = signed
        .parse()
        .map_err(|e| format!("`{text}` is not a decimal number: {e}"))?;
    let (unscaled, _) = integer.into_bigint_and_scale();
    Ok(Decimal::from(unscaled.to_signed_bytes_be()))
}

/// The value of a `big-decimal` (arbitrary scale) from its text.
pub fn big_from_text(text: &str) -> Result<BigDecimal, String> {
    Plain::parse(text)?;
    text.trim()
        .parse()
        .map_err(|e| format!("`{text}` is not a decimal number: {e}"))
}

/// A decimal number written without an exponent, split into its parts.
struct Plain<'a> {
    negative: bool,
    integer: &'a str,
    fraction: &'a str,
}

impl<'a> Plain<'a> {
    /// Accepts `[+-]digits[.digits]` or `[+-].digits`. Exponents are refused:
    /// `1e999999999` would make the exact value a billion digits long.
    fn parse(text: &'a str) -> Result<Plain<'a>, String> {
        let trimmed = text.trim();
        let (negative, unsigned) = match trimmed.as_bytes().first() {
            Some(b'-') => (true, &trimmed[1..]),
            Some(b'+') => (false, &trimmed[1..]),
            _ => (false, trimmed),
        };
        let (integer, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        let dot_without_digits = unsigned.contains('.') && fraction.is_empty();
        if (integer.is_empty() && fraction.is_empty())
            || dot_without_digits
            || !all_digits(integer)
            || !all_digits(fraction)
        {
            return Err(format!(
                "`{text}` is not a decimal number such as `-12.34` (no exponent)"
            ));
        }
        Ok(Plain {
            negative,
            integer,
            fraction,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &str, precision: usize, scale: usize) -> String {
        to_text(from_text(text, precision, scale).unwrap(), scale)
    }

    #[test]
    fn text_round_trips_at_the_schema_scale() {
        assert_eq!(round_trip("12.34", 4, 2), "12.34");
        assert_eq!(round_trip("12.3", 4, 2), "12.30");
        assert_eq!(round_trip("-0.05", 4, 2), "-0.05");
        assert_eq!(round_trip("7", 9, 0), "7");
        assert_eq!(round_trip("+.5", 3, 1), "0.5");
        assert_eq!(round_trip("0", 3, 2), "0.00");
        assert_eq!(round_trip("1.2300", 5, 2), "1.23");
        assert_eq!(
            round_trip("-123456789012345678901234567890.12", 40, 2),
            "-123456789012345678901234567890.12"
        );
    }

    #[test]
    fn the_unscaled_value_is_twos_complement() {
        let bytes: Vec<u8> = (&from_text("-1.28", 3, 2).unwrap()).try_into().unwrap();
        assert_eq!(bytes, [0x80]);
        let bytes: Vec<u8> = (&from_text("1.28", 3, 2).unwrap()).try_into().unwrap();
        assert_eq!(bytes, [0x00, 0x80]);
    }

    #[test]
    fn nothing_is_rounded_silently() {
        let e = from_text("1.234", 9, 2).unwrap_err();
        assert!(e.contains("scale"), "{e}");
        let e = from_text("123.4", 4, 2).unwrap_err();
        assert!(e.contains("precision"), "{e}");
        assert!(from_text("0.01", 1, 2).is_ok());
    }

    #[test]
    fn only_plain_decimals_are_accepted() {
        for bad in [
            "", "-", ".", "1.", "1e3", "1.2.3", "0x10", "NaN", " 1 2", "--1",
        ] {
            assert!(from_text(bad, 9, 2).is_err(), "{bad:?}");
        }
        assert_eq!(
            big_from_text("3.14159").unwrap().to_plain_string(),
            "3.14159"
        );
        assert!(big_from_text("1e9").is_err());
    }
}
