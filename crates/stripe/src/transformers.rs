//! Stripe wire types and their translation to and from the engine's domain: request
//! parameters from a payment, and attempt outcomes, API errors and payment method
//! details from Stripe's answers. Nothing outside this module sees Stripe's field
//! names or branches on Stripe's strings.
//!
//! Every string the adapter branches on (a PaymentIntent's `status`, an error's
//! `type` and `code`, a SetupIntent's `status` and `usage`) is read into an enum
//! whose catch-all `Other` keeps what Stripe wrote: a value this adapter does not
//! know is never mistaken for a known one, and an unknown PaymentIntent status is an
//! `Unknown` outcome (money may have moved), never a decline.

use offsession_core::{ApiError, Cadence, CaptureMethod, OffSessionPayment};

mod error;
mod intent;
mod method;

pub use error::{
    error_code, error_outcome, is_stripe_error, ErrorBody, WireError, WireErrorCode, WireErrorType,
};
pub use intent::{IntentStatus, ObjectType, PaymentIntent};
pub use method::{
    preflight_details, Card, List, PaymentMethod, SetupIntent, SetupIntentStatus, SetupUsage,
};

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

/// Refuses a payment whose card options the pinned PaymentIntents API has no
/// parameter for: charging without them would not be what the merchant asked for.
/// `processor` and `stripe_version` name the adapter in the message.
pub fn check_card_options(
    payment: &OffSessionPayment,
    processor: &str,
    stripe_version: &str,
) -> Result<(), ApiError> {
    let Some(card) = payment
        .payment_method_options
        .as_ref()
        .and_then(|o| o.card.as_ref())
    else {
        return Ok(());
    };
    let unsupported = [
        ("mcc", card.mcc.is_some()),
        (
            "network_transaction_id",
            card.network_transaction_id.is_some(),
        ),
    ];
    match unsupported.iter().find(|(_, set)| *set) {
        Some((field, _)) => Err(ApiError::invalid(
            &format!("payment_method_options.card.{field}"),
            format!(
                "is not supported by processor `{processor}`: Stripe's PaymentIntents API (version {stripe_version}) has no such parameter"
            ),
        )),
        None => Ok(()),
    }
}

/// `POST /v1/payment_intents/{id}/capture` parameters.
pub fn capture_params(amount_to_capture: i64) -> Form {
    vec![("amount_to_capture".into(), amount_to_capture.to_string())]
}
