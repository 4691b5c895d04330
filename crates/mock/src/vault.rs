//! Customers and their saved payment methods, as the mock knows them.

use offsession_core::{CardBrand, PaymentMethodType};
use serde::Deserialize;

/// A payment method in the vault.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultPaymentMethod {
    /// `pm_…`.
    pub id: String,
    /// The customer it is attached to.
    pub customer: String,
    /// `card`, `us_bank_account`, `sepa_debit`.
    #[serde(rename = "type", default = "default_type")]
    pub payment_method_type: PaymentMethodType,
    /// Card brand (`visa` when absent).
    #[serde(default)]
    pub brand: Option<CardBrand>,
    /// Card funding.
    #[serde(default)]
    pub funding: Option<String>,
    /// Issuing country of a card, or the country of a bank debit's account
    /// (`us_bank_account` is always `US`).
    #[serde(default)]
    pub country: Option<String>,
    /// Wallet the card was saved from (`apple_pay`, `google_pay`), if any.
    #[serde(default)]
    pub wallet: Option<String>,
    /// The card's fingerprint, which preflight reports: two payment methods of one
    /// card share it (none: the card is known by the payment method's id).
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// Whether a SetupIntent with `usage = off_session` succeeded for it.
    #[serde(default = "default_true")]
    pub off_session: bool,
    /// The `on_behalf_of` it was set up with (None: on the platform).
    #[serde(default)]
    pub on_behalf_of: Option<String>,
    /// A Stripe-style test name whose behaviour it copies; approves when absent.
    #[serde(default)]
    pub behaves_like: Option<String>,
}

impl VaultPaymentMethod {
    /// A bank debit's account country: `US` for ACH, `country` for SEPA; none for
    /// cards (their country is in the card's details).
    pub fn bank_country(&self) -> Option<String> {
        match self.payment_method_type.scheme_country() {
            Some(fixed) => Some(fixed.into()),
            None if self.payment_method_type == PaymentMethodType::Card => None,
            None => self.country.clone(),
        }
    }
}

fn default_type() -> PaymentMethodType {
    PaymentMethodType::Card
}

pub(crate) fn default_true() -> bool {
    true
}

/// Customers and their saved payment methods.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vault {
    /// Known customers; when empty, any customer id is accepted.
    #[serde(default)]
    pub customers: Vec<String>,
    /// Saved payment methods.
    #[serde(default)]
    pub payment_methods: Vec<VaultPaymentMethod>,
}

impl Vault {
    /// Parses a vault file.
    pub fn from_toml(text: &str) -> Result<Vault, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bank_debit_reports_its_accounts_country_and_a_card_none() {
        let vault = Vault::from_toml(
            r#"
            [[payment_methods]]
            id = "pm_ach"
            customer = "cus_1"
            type = "us_bank_account"

            [[payment_methods]]
            id = "pm_sepa"
            customer = "cus_1"
            type = "sepa_debit"
            country = "NL"

            [[payment_methods]]
            id = "pm_card"
            customer = "cus_1"
            country = "FR"
            "#,
        )
        .unwrap();
        let countries: Vec<_> = vault
            .payment_methods
            .iter()
            .map(VaultPaymentMethod::bank_country)
            .collect();
        assert_eq!(countries, [Some("US".into()), Some("NL".into()), None]);
    }
}
