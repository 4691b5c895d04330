//! The decline classification table: processor decline signals → `DeclineCategory`.

use std::collections::{BTreeMap, BTreeSet};

use offsession_core::{CardBrand, DeclineCategory, DeclineCodes};
use serde::Deserialize;

use crate::RetryConfigError;

/// The shipped table (`config/declines.toml`).
pub const DEFAULT_DECLINE_TABLE: &str = include_str!("../../../config/declines.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CategoryRows {
    #[serde(default)]
    decline_codes: Vec<String>,
    #[serde(default)]
    codes: Vec<String>,
    #[serde(default)]
    advice_codes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VisaRows {
    max_reattempts_30d: u32,
    category_1: Vec<String>,
    // Categories 2 and 3 are listed in the table for operators; no rule reads them
    // (categories 2–4 share the reattempt cap).
    #[serde(default)]
    #[allow(dead_code)]
    category_2: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)]
    category_3: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MastercardRows {
    never_retry: Vec<String>,
    #[serde(default)]
    new_account_information: Vec<String>,
    max_declines_24h: u32,
    max_declines_30d_same_amount: u32,
    #[serde(default = "thirty")]
    never_retry_days: u32,
    #[serde(default)]
    retry_after: BTreeMap<String, String>,
}

fn thirty() -> u32 {
    30
}

fn three() -> u32 {
    3
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BankDebitRows {
    #[serde(default = "three")]
    max_presentments: u32,
}

impl Default for BankDebitRows {
    fn default() -> BankDebitRows {
        BankDebitRows {
            max_presentments: three(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TableFile {
    default_category: DeclineCategory,
    categories: BTreeMap<DeclineCategory, CategoryRows>,
    visa: VisaRows,
    mastercard: MastercardRows,
    #[serde(default)]
    bank_debits: BankDebitRows,
}

/// Card-network retry rules (see `declines-and-network-rules.md`); defaults in
/// `config/declines.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkRules {
    /// Visa category 1 response codes: never reattempt.
    pub visa_never_retry: BTreeSet<String>,
    /// Visa: reattempts per card in 30 days.
    pub visa_max_reattempts_30d: u32,
    /// Mastercard advice codes that forbid reattempts (03, 21).
    pub mastercard_never_retry: BTreeSet<String>,
    /// Mastercard: declines per card in 24 hours.
    pub mastercard_max_declines_24h: u32,
    /// Mastercard: declines per card and amount in 30 days.
    pub mastercard_max_declines_30d_same_amount: u32,
    /// Mastercard advice codes 24–30 → earliest next attempt.
    pub mastercard_retry_after: BTreeMap<String, std::time::Duration>,
    /// Days a Mastercard card stays barred, for every payment of the card (first
    /// attempts included), after a decline with a `never_retry` advice code.
    pub mastercard_never_retry_days: u32,
    /// Bank debits (ACH, SEPA): presentments per payment at most (NACHA: a debit
    /// returned for insufficient funds may be presented twice more).
    pub debit_max_presentments: u32,
}

/// Classifies declines. Built from TOML; see `config/declines.toml` for precedence.
#[derive(Debug, Clone)]
pub struct DeclineTable {
    rules: NetworkRules,
    default_category: DeclineCategory,
    by_decline_code: BTreeMap<String, DeclineCategory>,
    by_code: BTreeMap<String, DeclineCategory>,
    by_advice_code: BTreeMap<String, DeclineCategory>,
    visa_category_1: BTreeSet<String>,
    mastercard_never_retry: BTreeSet<String>,
    mastercard_new_account: BTreeSet<String>,
}

impl DeclineTable {
    /// Parses a table; a code listed under two categories is refused.
    pub fn from_toml(text: &str) -> Result<DeclineTable, RetryConfigError> {
        let file: TableFile =
            toml::from_str(text).map_err(|e| RetryConfigError::DeclineTable(e.to_string()))?;
        let mut retry_after = BTreeMap::new();
        for (mac, wait) in &file.mastercard.retry_after {
            let wait = offsession_core::duration::parse(wait).map_err(|e| {
                RetryConfigError::DeclineTable(format!("mastercard.retry_after.{mac}: {e}"))
            })?;
            retry_after.insert(mac.clone(), wait);
        }
        let rules = NetworkRules {
            visa_never_retry: file.visa.category_1.iter().cloned().collect(),
            visa_max_reattempts_30d: file.visa.max_reattempts_30d,
            mastercard_never_retry: file.mastercard.never_retry.iter().cloned().collect(),
            mastercard_max_declines_24h: file.mastercard.max_declines_24h,
            mastercard_max_declines_30d_same_amount: file.mastercard.max_declines_30d_same_amount,
            mastercard_retry_after: retry_after,
            mastercard_never_retry_days: file.mastercard.never_retry_days,
            debit_max_presentments: file.bank_debits.max_presentments,
        };
        if rules.debit_max_presentments == 0 {
            return Err(RetryConfigError::DeclineTable(
                "bank_debits.max_presentments must be at least 1".into(),
            ));
        }
        let mut table = DeclineTable {
            rules,
            default_category: file.default_category,
            by_decline_code: BTreeMap::new(),
            by_code: BTreeMap::new(),
            by_advice_code: BTreeMap::new(),
            visa_category_1: file.visa.category_1.into_iter().collect(),
            mastercard_never_retry: file.mastercard.never_retry.into_iter().collect(),
            mastercard_new_account: file
                .mastercard
                .new_account_information
                .into_iter()
                .collect(),
        };
        for (category, rows) in file.categories {
            for (kind, codes, map) in [
                (
                    "decline_codes",
                    rows.decline_codes,
                    &mut table.by_decline_code,
                ),
                ("codes", rows.codes, &mut table.by_code),
                ("advice_codes", rows.advice_codes, &mut table.by_advice_code),
            ] {
                for code in codes {
                    if let Some(previous) = map.insert(code.clone(), category) {
                        return Err(RetryConfigError::DeclineTable(format!(
                            "`{code}` is listed in {kind} of both `{previous}` and `{category}`"
                        )));
                    }
                }
            }
        }
        Ok(table)
    }

    /// The network rules from the same file.
    pub fn network_rules(&self) -> &NetworkRules {
        &self.rules
    }

    /// The shipped default table.
    pub fn standard() -> DeclineTable {
        // The shipped table is parsed by a unit test; failing here means the test
        // suite failed first.
        DeclineTable::from_toml(DEFAULT_DECLINE_TABLE).expect("config/declines.toml is valid")
    }

    /// Category of a decline on a card of `brand` (`visa`, `mastercard`, …; `None`
    /// for non-card methods).
    pub fn classify(&self, codes: &DeclineCodes, brand: Option<&CardBrand>) -> DeclineCategory {
        let advice = codes.advice_code.as_deref();
        let advice_category = advice.and_then(|a| self.by_advice_code.get(a).copied());
        let mac = codes.network_advice_code.as_deref();
        let network_code = codes.network_decline_code.as_deref();
        let is_mastercard = brand.is_none_or(|b| *b == CardBrand::Mastercard);
        let is_visa = brand == Some(&CardBrand::Visa);

        if advice_category == Some(DeclineCategory::Hard)
            || (is_mastercard && mac.is_some_and(|m| self.mastercard_never_retry.contains(m)))
            || (is_visa && network_code.is_some_and(|c| self.visa_category_1.contains(c)))
        {
            return DeclineCategory::Hard;
        }
        if advice_category == Some(DeclineCategory::NeedsNewCardData)
            || (is_mastercard && mac.is_some_and(|m| self.mastercard_new_account.contains(m)))
        {
            return DeclineCategory::NeedsNewCardData;
        }
        if let Some(category) = codes
            .decline_code
            .as_deref()
            .and_then(|d| self.by_decline_code.get(d))
        {
            return *category;
        }
        if let Some(category) = self.by_code.get(&codes.code) {
            return *category;
        }
        advice_category.unwrap_or(self.default_category)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decline(code: &str, decline_code: Option<&str>) -> DeclineCodes {
        DeclineCodes::new(code, decline_code)
    }

    #[test]
    fn the_shipped_table_parses() {
        DeclineTable::from_toml(DEFAULT_DECLINE_TABLE).unwrap();
    }

    #[test]
    fn stripe_decline_codes_land_in_their_categories() {
        let table = DeclineTable::standard();
        let cases = [
            ("lost_card", DeclineCategory::Hard),
            ("stolen_card", DeclineCategory::Hard),
            ("fraudulent", DeclineCategory::Hard),
            ("expired_card", DeclineCategory::NeedsNewCardData),
            ("incorrect_cvc", DeclineCategory::NeedsNewCardData),
            ("authentication_required", DeclineCategory::NeedsCustomer),
            ("insufficient_funds", DeclineCategory::SoftFunds),
            ("card_velocity_exceeded", DeclineCategory::SoftFunds),
            ("do_not_honor", DeclineCategory::SoftIssuer),
            ("generic_decline", DeclineCategory::SoftIssuer),
            ("processing_error", DeclineCategory::SoftTransient),
            ("issuer_not_available", DeclineCategory::SoftTransient),
        ];
        for (decline_code, category) in cases {
            assert_eq!(
                table.classify(
                    &decline("card_declined", Some(decline_code)),
                    Some(&offsession_core::CardBrand::Visa)
                ),
                category,
                "{decline_code}"
            );
        }
    }

    #[test]
    fn codes_without_decline_code_use_the_code() {
        let table = DeclineTable::standard();
        assert_eq!(
            table.classify(
                &decline("expired_card", None),
                Some(&offsession_core::CardBrand::Visa)
            ),
            DeclineCategory::NeedsNewCardData
        );
        assert_eq!(
            table.classify(
                &decline("processing_error", None),
                Some(&offsession_core::CardBrand::Visa)
            ),
            DeclineCategory::SoftTransient
        );
        assert_eq!(
            table.classify(
                &decline("something_new", None),
                Some(&offsession_core::CardBrand::Visa)
            ),
            DeclineCategory::SoftIssuer
        );
    }

    #[test]
    fn do_not_try_again_advice_is_hard_whatever_the_decline_code() {
        let table = DeclineTable::standard();
        let mut codes = decline("card_declined", Some("insufficient_funds"));
        codes.advice_code = Some("do_not_try_again".into());
        assert_eq!(
            table.classify(&codes, Some(&offsession_core::CardBrand::Visa)),
            DeclineCategory::Hard
        );
    }

    #[test]
    fn visa_category_1_codes_are_hard_only_on_visa() {
        let table = DeclineTable::standard();
        let mut codes = decline("card_declined", Some("do_not_honor"));
        codes.network_decline_code = Some("04".into());
        assert_eq!(
            table.classify(&codes, Some(&offsession_core::CardBrand::Visa)),
            DeclineCategory::Hard
        );
        assert_eq!(
            table.classify(&codes, Some(&CardBrand::Amex)),
            DeclineCategory::SoftIssuer
        );
    }

    #[test]
    fn mastercard_advice_codes_03_and_21_are_hard_and_01_needs_new_data() {
        let table = DeclineTable::standard();
        for (mac, category) in [
            ("03", DeclineCategory::Hard),
            ("21", DeclineCategory::Hard),
            ("01", DeclineCategory::NeedsNewCardData),
            ("02", DeclineCategory::SoftFunds),
        ] {
            let mut codes = decline("card_declined", Some("insufficient_funds"));
            codes.network_advice_code = Some(mac.into());
            assert_eq!(
                table.classify(&codes, Some(&offsession_core::CardBrand::Mastercard)),
                category,
                "MAC {mac}"
            );
        }
    }

    #[test]
    fn a_code_in_two_categories_is_refused() {
        let text = DEFAULT_DECLINE_TABLE.replace(
            "decline_codes = [\"insufficient_funds\"",
            "decline_codes = [\"lost_card\", \"insufficient_funds\"",
        );
        let err = DeclineTable::from_toml(&text).unwrap_err();
        assert!(err.to_string().contains("lost_card"), "{err}");
    }
}
