//! Stripe wire types and their translation to and from the engine's domain. Nothing
//! outside this file sees Stripe's field names.

use std::collections::BTreeMap;

use offsession_core::{
    AttemptOutcome, Cadence, CaptureMethod, CardDetails, DeclineCodes, OffSessionPayment,
    PaymentMethodDetails, ProcessorReference,
};
use serde::Deserialize;

/// Form parameters, in order, as `key=value` pairs (`a[b]` for nested fields).
pub type Form = Vec<(String, String)>;

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
    for (key, value) in &payment.metadata {
        form.push((format!("metadata[{key}]"), value.clone()));
    }
    form.push(("metadata[offsession_payment_id]".into(), payment.id.clone()));
    form.push((
        "metadata[offsession_attempt]".into(),
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
        let code = self.code.clone().unwrap_or_else(|| "card_declined".into());
        DeclineCodes {
            decline_code: self.decline_code.clone().or_else(|| {
                // Errors such as `expired_card` carry no decline_code; the code is the reason.
                (code != "card_declined").then(|| code.clone())
            }),
            code,
            advice_code: self.advice_code.clone(),
            network_decline_code: self.network_decline_code.clone(),
            network_advice_code: self.network_advice_code.clone(),
            message: self.message.clone(),
        }
    }

    /// The PaymentIntent and charge ids the error names.
    pub fn reference(&self) -> ProcessorReference {
        ProcessorReference {
            payment: self.payment_intent.as_ref().map(|pi| pi.id.clone()),
            charge: self.charge.clone(),
        }
    }
}

/// The parts of a PaymentIntent the adapter reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PaymentIntent {
    /// `pi_…`.
    pub id: String,
    /// Status.
    #[serde(default)]
    pub status: String,
    /// Latest charge id (or expanded object).
    #[serde(default)]
    pub latest_charge: Option<serde_json::Value>,
    /// Error of the last confirmation.
    #[serde(default)]
    pub last_payment_error: Option<Box<StripeError>>,
}

impl PaymentIntent {
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
    /// it is still `processing` (bank debits settle later).
    pub fn outcome(&self) -> Option<AttemptOutcome> {
        let reference = self.reference();
        Some(match self.status.as_str() {
            "succeeded" => AttemptOutcome::Approved { reference },
            "requires_capture" => AttemptOutcome::RequiresCapture { reference },
            "processing" => return None,
            "requires_action" | "requires_confirmation" => AttemptOutcome::Declined {
                codes: DeclineCodes::new(
                    "authentication_required",
                    Some("authentication_required"),
                ),
                reference,
            },
            _ => AttemptOutcome::Declined {
                codes: self
                    .last_payment_error
                    .as_ref()
                    .map(|e| e.decline_codes())
                    .unwrap_or_else(|| DeclineCodes::new("card_declined", Some("generic_decline"))),
                reference,
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
