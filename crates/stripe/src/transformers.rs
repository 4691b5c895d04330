//! Stripe wire types and their translation to and from the engine's domain. Nothing
//! outside this file sees Stripe's field names.

use std::collections::BTreeMap;

use offsession_core::{
    AttemptOutcome, Cadence, CaptureMethod, CardDetails, DeclineCodes, OffSessionPayment,
    PaymentMethodDetails, ProcessorReference,
};
use serde::Deserialize;

use crate::quote;

/// Form parameters, in order, as `key=value` pairs (`a[b]` for nested fields).
pub type Form = Vec<(String, String)>;

/// Stripe's limit on metadata keys per object.
pub const STRIPE_MAX_METADATA_KEYS: usize = 50;

/// The metadata keys the engine sets on every PaymentIntent.
pub const ENGINE_METADATA_KEYS: [&str; 2] = ["offsession_payment_id", "offsession_attempt"];

/// How many of the merchant's metadata keys are sent at most.
pub const MAX_MERCHANT_METADATA_KEYS: usize = STRIPE_MAX_METADATA_KEYS - ENGINE_METADATA_KEYS.len();

/// Whether a metadata key belongs to the engine (`offsession_…`), so that a merchant's
/// key of that name is never sent.
pub fn is_reserved_metadata_key(key: &str) -> bool {
    key.starts_with("offsession_")
}

/// `POST /v1/payment_intents` parameters for one off-session attempt.
pub fn payment_intent_params(payment: &OffSessionPayment, attempt_number: u32) -> Form {
    let mut form: Form = vec![
        ("amount".into(), payment.amount_requested.value.to_string()),
        (
            "currency".into(),
            payment.amount_requested.currency.as_str().to_owned(),
        ),
        ("customer".into(), payment.customer.clone()),
        ("payment_method".into(), payment.payment_method.clone()),
        ("confirm".into(), "true".into()),
        (
            "off_session".into(),
            match payment.cadence {
                Cadence::Recurring => "recurring",
                Cadence::Unscheduled => "one_off",
            }
            .into(),
        ),
    ];
    if payment.capture.capture_method == CaptureMethod::Manual {
        form.push(("capture_method".into(), "manual".into()));
    }
    if let Some(account) = &payment.on_behalf_of {
        form.push(("on_behalf_of".into(), account.clone()));
    }
    if let Some(transfer) = &payment.transfer_data {
        form.push((
            "transfer_data[destination]".into(),
            transfer.destination.clone(),
        ));
        if let Some(amount) = transfer.amount {
            form.push(("transfer_data[amount]".into(), amount.to_string()));
        }
    }
    if let Some(fee) = &payment.application_fee_amount_requested {
        form.push(("application_fee_amount".into(), fee.value.to_string()));
    }
    for (key, value) in [
        ("statement_descriptor", &payment.statement_descriptor),
        (
            "statement_descriptor_suffix",
            &payment.statement_descriptor_suffix,
        ),
        ("description", &payment.description),
    ] {
        if let Some(value) = value {
            form.push((key.into(), value.clone()));
        }
    }
    // The engine's keys are reserved: a merchant key in the `offsession_` namespace is
    // never sent (intake refuses them; this is defence in depth), and at most
    // `MAX_MERCHANT_METADATA_KEYS` merchant keys are sent, in key order, so that with
    // the engine's two the total stays within Stripe's 50.
    for (key, value) in payment
        .metadata
        .iter()
        .filter(|(key, _)| !is_reserved_metadata_key(key))
        .take(MAX_MERCHANT_METADATA_KEYS)
    {
        form.push((format!("metadata[{key}]"), value.clone()));
    }
    let [payment_id_key, attempt_key] = ENGINE_METADATA_KEYS;
    form.push((format!("metadata[{payment_id_key}]"), payment.id.clone()));
    form.push((
        format!("metadata[{attempt_key}]"),
        attempt_number.to_string(),
    ));
    form
}

/// `POST /v1/payment_intents/{id}/capture` parameters.
pub fn capture_params(amount_to_capture: i64) -> Form {
    vec![("amount_to_capture".into(), amount_to_capture.to_string())]
}

/// A Stripe error body.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorBody {
    /// The error.
    #[serde(default)]
    pub error: StripeError,
}

/// `error` of a Stripe error body.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StripeError {
    /// `card_error`, `invalid_request_error`, `idempotency_error`, `api_error`, …
    #[serde(rename = "type", default)]
    pub error_type: Option<String>,
    /// `card_declined`, `rate_limit`, `lock_timeout`, `idempotency_key_in_use`, …
    #[serde(default)]
    pub code: Option<String>,
    /// Issuer's reason.
    #[serde(default)]
    pub decline_code: Option<String>,
    /// Stripe's advice.
    #[serde(default)]
    pub advice_code: Option<String>,
    /// Raw network response code.
    #[serde(default)]
    pub network_decline_code: Option<String>,
    /// Network advice (Mastercard MAC).
    #[serde(default)]
    pub network_advice_code: Option<String>,
    /// Message.
    #[serde(default)]
    pub message: Option<String>,
    /// Parameter at fault.
    #[serde(default)]
    pub param: Option<String>,
    /// Charge id of a declined charge.
    #[serde(default)]
    pub charge: Option<String>,
    /// The PaymentIntent, on PaymentIntent errors.
    #[serde(default)]
    pub payment_intent: Option<PaymentIntent>,
}

impl StripeError {
    /// The decline codes of a card error.
    pub fn decline_codes(&self) -> DeclineCodes {
        // Every string is capped: it is Stripe's text, stored and shown by the engine.
        let capped = |s: &Option<String>| s.as_deref().map(quote);
        let code = capped(&self.code).unwrap_or_else(|| "card_declined".into());
        DeclineCodes {
            decline_code: capped(&self.decline_code).or_else(|| {
                // Errors such as `expired_card` carry no decline_code; the code is the reason.
                (code != "card_declined").then(|| code.clone())
            }),
            code,
            advice_code: capped(&self.advice_code),
            network_decline_code: capped(&self.network_decline_code),
            network_advice_code: capped(&self.network_advice_code),
            message: capped(&self.message),
        }
    }

    /// The PaymentIntent and charge ids the error names.
    pub fn reference(&self) -> ProcessorReference {
        ProcessorReference {
            payment: self
                .payment_intent
                .as_ref()
                .map(|pi| pi.id.clone())
                .filter(|id| !id.is_empty()),
            charge: self.charge.clone(),
        }
    }
}

/// A PaymentIntent's `status`. Only these are read; any other string is `Unknown`,
/// which the adapter never treats as a decline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentStatus {
    /// Charged.
    Succeeded,
    /// Authorized, held for capture.
    RequiresCapture,
    /// Not settled yet (bank debits); look it up by id later.
    Processing,
    /// The confirmation failed (a decline); `last_payment_error` says why.
    RequiresPaymentMethod,
    /// Canceled.
    Canceled,
    /// The customer must authenticate.
    RequiresAction,
    /// Not confirmed.
    RequiresConfirmation,
    /// A status this adapter does not know.
    #[serde(other)]
    Unknown,
}

impl IntentStatus {
    /// Stripe's name of a status; `Unknown` for any other string.
    pub fn from_stripe(status: &str) -> IntentStatus {
        serde_json::from_value(serde_json::Value::String(status.to_owned()))
            .unwrap_or(IntentStatus::Unknown)
    }
}

/// The parts of a PaymentIntent the adapter reads.
///
/// Deserializing is lenient (it is also embedded in error bodies); an answer that is
/// meant to be a PaymentIntent is read with [`PaymentIntent::read`], which checks it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PaymentIntent {
    /// `pi_…`.
    #[serde(default)]
    pub id: String,
    /// `payment_intent`.
    #[serde(default)]
    pub object: Option<String>,
    /// Status, as Stripe spelled it.
    #[serde(default)]
    pub status: Option<String>,
    /// Latest charge id (or expanded object).
    #[serde(default)]
    pub latest_charge: Option<serde_json::Value>,
    /// Error of the last confirmation.
    #[serde(default)]
    pub last_payment_error: Option<Box<StripeError>>,
}

/// Longest PaymentIntent id accepted in an answer (the spec's `maxLength`).
const MAX_ID_LEN: usize = 5000;

impl PaymentIntent {
    /// Reads an answer that must be a PaymentIntent: JSON, `"object": "payment_intent"`,
    /// a non-empty `id`, and a `status`. The error says what is wrong (quoted, capped).
    pub fn read(body: &str) -> Result<PaymentIntent, String> {
        let intent = serde_json::from_str::<PaymentIntent>(body)
            .map_err(|e| format!("unreadable payment intent: {}", quote(&e.to_string())))?;
        match intent.object.as_deref() {
            Some("payment_intent") => {}
            Some(other) => {
                return Err(format!(
                    "expected a payment intent, got a `{}` object",
                    quote(other)
                ))
            }
            None => return Err("expected a payment intent; the answer has no `object`".into()),
        }
        if intent.id.is_empty() || intent.id.len() > MAX_ID_LEN {
            return Err("payment intent without a usable `id`".into());
        }
        if intent.status.is_none() {
            return Err(format!(
                "payment intent {} has no `status`",
                quote(&intent.id)
            ));
        }
        Ok(intent)
    }

    /// The typed status (`Unknown` when missing or not one Stripe documents).
    pub fn status(&self) -> IntentStatus {
        self.status
            .as_deref()
            .map_or(IntentStatus::Unknown, IntentStatus::from_stripe)
    }

    /// Processor ids.
    pub fn reference(&self) -> ProcessorReference {
        let charge = match &self.latest_charge {
            Some(serde_json::Value::String(id)) => Some(id.clone()),
            Some(serde_json::Value::Object(obj)) => {
                obj.get("id").and_then(|v| v.as_str()).map(str::to_owned)
            }
            _ => None,
        };
        ProcessorReference {
            payment: Some(self.id.clone()),
            charge,
        }
    }

    /// The engine's reading of a PaymentIntent returned with HTTP 200, or `None` while
    /// it is still `processing` (bank debits settle later). A status the adapter does
    /// not know is `Unknown` (money may have moved), never a decline.
    pub fn outcome(&self) -> Option<AttemptOutcome> {
        let reference = self.reference();
        Some(match self.status() {
            IntentStatus::Succeeded => AttemptOutcome::Approved { reference },
            IntentStatus::RequiresCapture => AttemptOutcome::RequiresCapture { reference },
            IntentStatus::Processing => return None,
            IntentStatus::RequiresAction | IntentStatus::RequiresConfirmation => {
                AttemptOutcome::Declined {
                    codes: DeclineCodes::new(
                        "authentication_required",
                        Some("authentication_required"),
                    ),
                    reference,
                }
            }
            IntentStatus::RequiresPaymentMethod | IntentStatus::Canceled => {
                AttemptOutcome::Declined {
                    codes: self
                        .last_payment_error
                        .as_ref()
                        .map(|e| e.decline_codes())
                        .unwrap_or_else(|| {
                            DeclineCodes::new("card_declined", Some("generic_decline"))
                        }),
                    reference,
                }
            }
            IntentStatus::Unknown => AttemptOutcome::Unknown {
                message: format!(
                    "stripe: payment intent {} has status `{}`, which the adapter does not know",
                    quote(&self.id),
                    quote(self.status.as_deref().unwrap_or(""))
                ),
            },
        })
    }
}

/// The parts of a PaymentMethod the adapter reads.
#[derive(Debug, Clone, Deserialize)]
pub struct PaymentMethod {
    /// `pm_…`.
    pub id: String,
    /// Type.
    #[serde(rename = "type")]
    pub method_type: String,
    /// Attached customer (id or expanded object).
    #[serde(default)]
    pub customer: Option<serde_json::Value>,
    /// Card facts.
    #[serde(default)]
    pub card: Option<Card>,
}

/// `card` of a PaymentMethod.
#[derive(Debug, Clone, Deserialize)]
pub struct Card {
    /// Brand.
    #[serde(default)]
    pub brand: Option<String>,
    /// Funding.
    #[serde(default)]
    pub funding: Option<String>,
    /// Issuing country.
    #[serde(default)]
    pub country: Option<String>,
    /// Wallet.
    #[serde(default)]
    pub wallet: Option<BTreeMap<String, serde_json::Value>>,
}

impl PaymentMethod {
    /// The attached customer's id.
    pub fn customer_id(&self) -> Option<&str> {
        match &self.customer {
            Some(serde_json::Value::String(id)) => Some(id),
            Some(serde_json::Value::Object(obj)) => obj.get("id").and_then(|v| v.as_str()),
            _ => None,
        }
    }

    /// The engine's view.
    pub fn details(&self) -> PaymentMethodDetails {
        PaymentMethodDetails {
            payment_method_type: self.method_type.clone(),
            card: self.card.as_ref().map(|card| CardDetails {
                brand: card.brand.clone().unwrap_or_else(|| "unknown".into()),
                funding: card.funding.clone().unwrap_or_else(|| "unknown".into()),
                country: card.country.clone(),
                wallet: card
                    .wallet
                    .as_ref()
                    .and_then(|w| w.get("type"))
                    .and_then(|t| t.as_str())
                    .map(str::to_owned),
            }),
        }
    }
}

/// A list response.
#[derive(Debug, Clone, Deserialize)]
pub struct List<T> {
    /// Items.
    pub data: Vec<T>,
}

/// The parts of a SetupIntent the adapter reads.
#[derive(Debug, Clone, Deserialize)]
pub struct SetupIntent {
    /// Status.
    #[serde(default)]
    pub status: String,
    /// `on_session` or `off_session`.
    #[serde(default)]
    pub usage: String,
    /// Connected account it was set up for (id or expanded object).
    #[serde(default)]
    pub on_behalf_of: Option<serde_json::Value>,
}

impl SetupIntent {
    /// Whether it set the method up for off-session use.
    pub fn is_off_session_setup(&self) -> bool {
        self.status == "succeeded" && self.usage == "off_session"
    }

    /// The connected account it was set up for.
    pub fn account(&self) -> Option<&str> {
        match &self.on_behalf_of {
            Some(serde_json::Value::String(id)) => Some(id),
            Some(serde_json::Value::Object(obj)) => obj.get("id").and_then(|v| v.as_str()),
            _ => None,
        }
    }
}
