//! Money: integer minor units with an ISO 4217 currency, and the currency table.
//!
//! The table (`data/currencies.toml`) is data, not code: the exponent decides what a
//! minor unit is (JPY has none, KWD has three) and the limits decide
//! `osp_amount_too_small` / `osp_amount_too_large`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

/// One row of the currency table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurrencyRules {
    /// Number of minor-unit digits (2 for USD, 0 for JPY, 3 for KWD).
    pub exponent: u8,
    /// Smallest chargeable amount, in minor units.
    pub minimum: i64,
    /// Largest chargeable amount, in minor units.
    pub maximum: i64,
}

static CURRENCY_TABLE: LazyLock<BTreeMap<Currency, CurrencyRules>> = LazyLock::new(|| {
    let raw: BTreeMap<String, CurrencyRules> =
        // The table is compiled into the binary and parsed by a unit test, so a
        // broken table fails the test suite rather than production.
        toml::from_str(include_str!("../data/currencies.toml")).expect("currencies.toml parses");
    raw.into_iter()
        .map(|(code, rules)| {
            let currency =
                Currency::from_code_unchecked(&code).expect("currency codes are 3 letters");
            (currency, rules)
        })
        .collect()
});

/// A lower-case ISO 4217 currency code that is present in the currency table.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Currency([u8; 3]);

impl Currency {
    /// Parses a currency code; accepts upper or lower case, returns `None` for codes
    /// that are not three ASCII letters or not in the currency table.
    pub fn parse(code: &str) -> Option<Currency> {
        let currency = Currency::from_code_unchecked(code)?;
        CURRENCY_TABLE.contains_key(&currency).then_some(currency)
    }

    fn from_code_unchecked(code: &str) -> Option<Currency> {
        let bytes = code.as_bytes();
        if bytes.len() != 3 || !bytes.iter().all(u8::is_ascii_alphabetic) {
            return None;
        }
        Some(Currency([
            bytes[0].to_ascii_lowercase(),
            bytes[1].to_ascii_lowercase(),
            bytes[2].to_ascii_lowercase(),
        ]))
    }

    /// The lower-case code, e.g. `"usd"`.
    pub fn as_str(&self) -> &str {
        // Constructed only from ASCII letters.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }

    /// Limits and exponent of this currency.
    pub fn rules(&self) -> CurrencyRules {
        // Every `Currency` value was checked against the table when parsed.
        CURRENCY_TABLE[self]
    }

    /// All currencies in the table.
    pub fn all() -> impl Iterator<Item = Currency> {
        CURRENCY_TABLE.keys().copied()
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = String::deserialize(d)?;
        Currency::parse(&code)
            .ok_or_else(|| serde::de::Error::custom(format!("unsupported currency `{code}`")))
    }
}

/// An amount of money in integer minor units of a currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Amount {
    /// Minor units (cents for USD, yen for JPY).
    pub value: i64,
    /// Currency of the amount.
    pub currency: Currency,
}

impl Amount {
    /// An amount of `value` minor units of `currency`.
    pub fn new(value: i64, currency: Currency) -> Amount {
        Amount { value, currency }
    }
}

impl fmt::Display for Amount {
    /// Formats in major units, e.g. `20.00 usd`, `5000 jpy`, `1.500 kwd`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exponent = u32::from(self.currency.rules().exponent);
        if exponent == 0 {
            return write!(f, "{} {}", self.value, self.currency);
        }
        let scale = 10_i64.pow(exponent);
        let sign = if self.value < 0 { "-" } else { "" };
        let abs = self.value.unsigned_abs();
        write!(
            f,
            "{sign}{}.{:0width$} {}",
            abs / scale as u64,
            abs % scale as u64,
            self.currency,
            width = exponent as usize
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_table_parses_and_limits_are_ordered() {
        assert!(Currency::all().count() >= 30);
        for currency in Currency::all() {
            let rules = currency.rules();
            assert!(
                rules.minimum > 0 && rules.minimum < rules.maximum,
                "{currency}"
            );
            assert!(rules.exponent <= 3, "{currency}");
        }
    }

    #[test]
    fn currency_codes_are_case_insensitive_and_checked_against_the_table() {
        assert_eq!(Currency::parse("USD"), Currency::parse("usd"));
        assert!(Currency::parse("usd").is_some());
        assert!(Currency::parse("xyz").is_none());
        assert!(Currency::parse("us").is_none());
        assert!(Currency::parse("u$d").is_none());
    }

    #[test]
    fn zero_and_three_decimal_currencies_format_in_major_units() {
        let usd = Currency::parse("usd").unwrap();
        let jpy = Currency::parse("jpy").unwrap();
        let kwd = Currency::parse("kwd").unwrap();
        assert_eq!(Amount::new(2000, usd).to_string(), "20.00 usd");
        assert_eq!(Amount::new(5, usd).to_string(), "0.05 usd");
        assert_eq!(Amount::new(5000, jpy).to_string(), "5000 jpy");
        assert_eq!(Amount::new(1500, kwd).to_string(), "1.500 kwd");
        assert_eq!(jpy.rules().exponent, 0);
    }

    #[test]
    fn amount_serializes_in_the_api_shape() {
        let usd = Currency::parse("usd").unwrap();
        let json = serde_json::to_string(&Amount::new(2000, usd)).unwrap();
        assert_eq!(json, r#"{"value":2000,"currency":"usd"}"#);
    }
}
