//! A PaymentMethod and its SetupIntents, and preflight's verdict on them: whether the
//! method may be charged off-session for a payment, and its details for the engine.

use std::collections::BTreeMap;

use offsession_core::{
    ApiError, Capabilities, CardBrand, CardDetails, ErrorCode, OffSessionPayment,
    PaymentMethodDetails, PaymentMethodType,
};
use serde::Deserialize;

use crate::quote;

/// The parts of a PaymentMethod the adapter reads.
#[derive(Debug, Clone, Deserialize)]
pub struct PaymentMethod {
    /// `pm_…`: quoted in preflight's refusals.
    pub id: String,
    /// Checked against the processor's capabilities; decides which retry rules apply.
    #[serde(rename = "type")]
    pub method_type: PaymentMethodType,
    /// The customer it is attached to (an id, or the object when expanded): it must
    /// be the payment's customer.
    #[serde(default)]
    pub customer: Option<serde_json::Value>,
    /// Card facts, on cards.
    #[serde(default)]
    pub card: Option<Card>,
    /// SEPA Direct Debit facts; only the bank's `country` is read.
    #[serde(default)]
    pub sepa_debit: Option<SepaDebit>,
}

/// `sepa_debit` of a PaymentMethod.
#[derive(Debug, Clone, Deserialize)]
pub struct SepaDebit {
    /// Country of the bank account (ISO 3166-1 alpha-2).
    #[serde(default)]
    pub country: Option<String>,
}

/// `card` of a PaymentMethod: what the network retry rules key on.
#[derive(Debug, Clone, Deserialize)]
pub struct Card {
    /// Which network's retry rules apply; missing reads as `unknown`.
    #[serde(default)]
    pub brand: Option<CardBrand>,
    /// `credit`, `debit`, `prepaid` or `unknown`.
    #[serde(default)]
    pub funding: Option<String>,
    /// Issuing country (ISO 3166-1 alpha-2).
    #[serde(default)]
    pub country: Option<String>,
    /// The wallet the card came from; only its `type` is read.
    #[serde(default)]
    pub wallet: Option<BTreeMap<String, serde_json::Value>>,
    /// Stripe's fingerprint of the card number, the same for every payment method of
    /// one card in an account: the network rules count per card by it.
    #[serde(default)]
    pub fingerprint: Option<String>,
}

/// One id, or an expanded object's `id`.
fn id_of(value: &Option<serde_json::Value>) -> Option<&str> {
    match value {
        Some(serde_json::Value::String(id)) => Some(id),
        Some(serde_json::Value::Object(obj)) => obj.get("id").and_then(|v| v.as_str()),
        _ => None,
    }
}

impl PaymentMethod {
    /// Reads a payment method answer; the error says what is wrong (quoted, capped).
    pub fn read(body: &str) -> Result<PaymentMethod, String> {
        serde_json::from_str(body)
            .map_err(|e| format!("unreadable payment method: {}", quote(&e.to_string())))
    }

    /// The attached customer's id.
    pub fn customer_id(&self) -> Option<&str> {
        id_of(&self.customer)
    }

    /// Type and card facts as the engine keeps them (missing card facts read as
    /// `unknown`).
    pub fn details(&self) -> PaymentMethodDetails {
        PaymentMethodDetails {
            payment_method_type: self.method_type.clone(),
            card: self.card.as_ref().map(|card| CardDetails {
                brand: card.brand.clone().unwrap_or(CardBrand::Unknown),
                funding: card.funding.clone().unwrap_or_else(|| "unknown".into()),
                country: card.country.clone(),
                wallet: card
                    .wallet
                    .as_ref()
                    .and_then(|w| w.get("type"))
                    .and_then(|t| t.as_str())
                    .map(str::to_owned),
                fingerprint: card.fingerprint.clone().filter(|f| !f.is_empty()),
                fingerprint_by: None,
            }),
            bank_country: match self.method_type.scheme_country() {
                Some(fixed) => Some(fixed.into()),
                None => self.sepa_debit.as_ref().and_then(|s| s.country.clone()),
            },
        }
    }
}

/// A page of a list endpoint; the adapter asks for one page of at most 100.
#[derive(Debug, Clone, Deserialize)]
pub struct List<T> {
    /// The page's objects.
    pub data: Vec<T>,
}

offsession_core::named_enum! {
    /// A SetupIntent's `status`; only `succeeded` set a method up.
    SetupIntentStatus {
        /// The method is set up.
        Succeeded => "succeeded",
        /// Still settling (bank debits).
        Processing => "processing",
        /// The customer must authenticate.
        RequiresAction => "requires_action",
        /// Not confirmed.
        RequiresConfirmation => "requires_confirmation",
        /// The setup failed; another method is needed.
        RequiresPaymentMethod => "requires_payment_method",
        /// Abandoned.
        Canceled => "canceled",
    }
}

offsession_core::named_enum! {
    /// A SetupIntent's `usage`: what the customer agreed the method may be used for.
    SetupUsage {
        /// Charges while the customer is present only.
        OnSession => "on_session",
        /// Charges while the customer is away: what the engine needs.
        OffSession => "off_session",
    }
}

/// The parts of a SetupIntent the adapter reads.
#[derive(Debug, Clone, Deserialize)]
pub struct SetupIntent {
    /// Only a succeeded setup counts.
    #[serde(default)]
    pub status: Option<SetupIntentStatus>,
    /// Only an `off_session` setup counts.
    #[serde(default)]
    pub usage: Option<SetupUsage>,
    /// The connected account it was set up for (an id, or the object when expanded);
    /// none when set up on the platform.
    #[serde(default)]
    pub on_behalf_of: Option<serde_json::Value>,
}

impl SetupIntent {
    /// Reads a list answer of SetupIntents; the error says what is wrong (quoted,
    /// capped).
    pub fn read_list(body: &str) -> Result<Vec<SetupIntent>, String> {
        serde_json::from_str::<List<SetupIntent>>(body)
            .map(|list| list.data)
            .map_err(|e| format!("unreadable setup intents: {}", quote(&e.to_string())))
    }

    /// Whether it set the method up for off-session use.
    pub fn is_off_session_setup(&self) -> bool {
        self.status == Some(SetupIntentStatus::Succeeded)
            && self.usage == Some(SetupUsage::OffSession)
    }

    /// The connected account it was set up for.
    pub fn account(&self) -> Option<&str> {
        id_of(&self.on_behalf_of)
    }
}

/// Preflight's verdict on `method` and its `setups` for `payment`: the method's
/// details when it can be charged off-session, else the API error saying why not
/// (not the customer's, a type `capabilities` lacks, never set up for off-session
/// use, or set up for another account than `on_behalf_of`).
pub fn preflight_details(
    payment: &OffSessionPayment,
    capabilities: &Capabilities,
    method: &PaymentMethod,
    setups: &[SetupIntent],
) -> Result<PaymentMethodDetails, ApiError> {
    if method.customer_id() != Some(payment.customer.as_str()) {
        return Err(ApiError::new(
            ErrorCode::OspPaymentMethodNotAttached,
            format!(
                "Payment method `{}` is not attached to customer `{}`; attach it with a SetupIntent first.",
                quote(&method.id),
                quote(&payment.customer)
            ),
        )
        .with_param("payment_method"));
    }
    if !capabilities.supports_type(&method.method_type) {
        return Err(ApiError::new(
            ErrorCode::OspInvalidPaymentMethodType,
            format!(
                "payment method type `{}` is not supported",
                quote(method.method_type.as_str())
            ),
        )
        .with_param("payment_method"));
    }
    let setups: Vec<&SetupIntent> = setups.iter().filter(|s| s.is_off_session_setup()).collect();
    if setups.is_empty() {
        return Err(ApiError::new(
            ErrorCode::OspPmNotSetupForOffSession,
            format!(
                "Payment method `{}` has no succeeded SetupIntent with `usage=off_session`; set it up on-session first.",
                quote(&method.id)
            ),
        )
        .with_param("payment_method"));
    }
    let on_platform = setups.iter().any(|s| s.account().is_none());
    match &payment.on_behalf_of {
        Some(account) if !setups.iter().any(|s| s.account() == Some(account.as_str())) => {
            return Err(if on_platform {
                ApiError::new(
                    ErrorCode::OspPmSetUpOnlyOnPlatform,
                    format!(
                        "Payment method `{}` was set up on the platform, not for `{}`.",
                        quote(&method.id),
                        quote(account)
                    ),
                )
            } else {
                ApiError::new(
                    ErrorCode::OspPmSetUpOnlyOnConnectedAccount,
                    format!(
                        "Payment method `{}` was set up for another connected account.",
                        quote(&method.id)
                    ),
                )
            }
            .with_param("on_behalf_of"));
        }
        None if !on_platform => {
            return Err(ApiError::new(
                ErrorCode::OspPmSetUpOnlyOnConnectedAccount,
                format!(
                    "Payment method `{}` was set up only on a connected account; pass the same `on_behalf_of`.",
                    quote(&method.id)
                ),
            )
            .with_param("on_behalf_of"));
        }
        _ => {}
    }
    Ok(method.details())
}
