//! Create requests: parsing and every validation rule that can be decided without a
//! processor ([`validate_create`]), and the rules that need the payment method's type
//! ([`resolve_for_method`]). Errors use the API's codes and name the field.

use std::collections::BTreeMap;

use crate::error::{ApiError, ErrorCode};
use crate::method::PaymentMethodType;
use crate::money::{Amount, Currency};
use crate::payment::{
    Capture, CaptureMethod, CardOptions, PaymentMethodOptions, RetryStrategy, TransferData,
};
use crate::processor::PaymentMethodDetails;
use crate::time::Timestamp;

mod checks;
mod method;
mod params;

pub use checks::check_id;
use checks::{check_card_options, check_descriptor, check_metadata, required};
pub use method::{resolve_for_method, MethodRules, ResolvedRetry};
pub use params::*;

/// Stripe allows 50 metadata keys; the engine reserves two of them for its own keys
/// on every processor request (`offsession_payment_id`, `offsession_attempt`), so a
/// merchant may set 48.
pub const METADATA_MAX_KEYS: usize = 48;
/// Metadata keys with this prefix are the engine's and refused on input.
pub const RESERVED_METADATA_PREFIX: &str = "offsession_";
/// Longest metadata key, in characters.
pub const METADATA_MAX_KEY_CHARS: usize = 40;
/// Longest metadata value, in characters.
pub const METADATA_MAX_VALUE_CHARS: usize = 500;
/// Longest statement descriptor or suffix, in characters.
pub const STATEMENT_DESCRIPTOR_MAX_CHARS: usize = 22;
/// Shortest full statement descriptor, in characters.
pub const STATEMENT_DESCRIPTOR_MIN_CHARS: usize = 5;
/// Longest id-like string (customer, payment method, account, test clock).
pub const ID_MAX_CHARS: usize = 255;
/// Longest description.
pub const DESCRIPTION_MAX_CHARS: usize = 1000;
/// Payment method types `payment_method_options` may name.
pub const OPTION_TYPES: [&str; 3] = ["card", "us_bank_account", "sepa_debit"];

/// Engine facts the processor-independent rules need.
#[derive(Debug, Clone, Copy)]
pub struct CreateRules<'a> {
    /// Live mode refuses test clocks.
    pub livemode: bool,
    /// Now, by the clock that will drive the payment.
    pub now: Timestamp,
    /// Names of the configured retry policies.
    pub retry_policies: &'a [String],
}

/// Parses a JSON create body; malformed JSON, wrong types and unknown fields give
/// `osp_generic_invalid_request` naming the field.
pub fn parse_create(body: &[u8]) -> Result<CreateOffSessionPayment, ApiError> {
    // serde reads a struct from a JSON array too, field by field in order: a body
    // must be an object, so that every value is named.
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(ApiError::new(
            ErrorCode::OspGenericInvalidRequest,
            "request body must be a JSON object (`{...}`)",
        ));
    }
    // The plain parse first; only a body it refuses is parsed again with the path
    // tracked, for an error that names the field (tracking costs about as much as
    // the parse itself).
    // The body's UTF-8 is checked once, whole: parsed from bytes, serde_json checks
    // each string on its own (a quarter of the parse).
    if let Ok(request) = std::str::from_utf8(body)
        .map_err(drop)
        .and_then(|text| serde_json::from_str::<CreateOffSessionPayment>(text).map_err(drop))
    {
        return Ok(request);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed: Result<CreateOffSessionPayment, _> = serde_path_to_error::deserialize(&mut de);
    match parsed {
        Ok(request) => {
            de.end().map_err(|e| {
                ApiError::new(
                    ErrorCode::OspGenericInvalidRequest,
                    format!("request body is not a single JSON object: {e}"),
                )
            })?;
            Ok(request)
        }
        Err(err) => {
            let path = err.path().to_string();
            let inner = err.into_inner();
            // A syntax error past the last field has no path of its own (`?`).
            if path.is_empty() || path == "." || path.contains('?') {
                Err(ApiError::new(
                    ErrorCode::OspGenericInvalidRequest,
                    format!("request body is not a valid create request: {inner}"),
                ))
            } else {
                Err(ApiError::invalid(&path, inner))
            }
        }
    }
}

/// Applies every rule that needs no processor.
pub fn validate_create(
    request: &CreateOffSessionPayment,
    rules: &CreateRules<'_>,
) -> Result<ValidCreate, ApiError> {
    let customer = required(&request.customer, "customer")?;
    check_id(customer, "customer")?;
    let payment_method = required(&request.payment_method, "payment_method")?;
    check_id(payment_method, "payment_method")?;

    let amount_param = required(&request.amount, "amount")?;
    let value = *required(&amount_param.value, "amount.value")?;
    let currency_code = required(&amount_param.currency, "amount.currency")?;
    let currency = Currency::parse(currency_code).ok_or_else(|| {
        ApiError::invalid(
            "amount.currency",
            format!("`{currency_code}` is not a supported ISO 4217 currency"),
        )
    })?;
    let limits = currency.rules();
    if value < limits.minimum {
        return Err(ApiError::new(
            ErrorCode::OspAmountTooSmall,
            format!(
                "`amount.value` {value} is below the minimum of {} ({} minor units)",
                Amount::new(limits.minimum, currency),
                limits.minimum
            ),
        )
        .with_param("amount.value"));
    }
    if value > limits.maximum {
        return Err(ApiError::new(
            ErrorCode::OspAmountTooLarge,
            format!(
                "`amount.value` {value} is above the maximum of {} ({} minor units)",
                Amount::new(limits.maximum, currency),
                limits.maximum
            ),
        )
        .with_param("amount.value"));
    }
    let amount = Amount::new(value, currency);

    let cadence = *required(&request.cadence, "cadence")?;

    let metadata = request.metadata.clone().unwrap_or_default();
    check_metadata(&metadata)?;

    if let Some(descriptor) = &request.statement_descriptor {
        check_descriptor(
            descriptor,
            "statement_descriptor",
            STATEMENT_DESCRIPTOR_MIN_CHARS,
        )?;
    }
    if let Some(suffix) = &request.statement_descriptor_suffix {
        check_descriptor(suffix, "statement_descriptor_suffix", 1)?;
    }
    if let Some(description) = &request.description {
        if description.chars().count() > DESCRIPTION_MAX_CHARS {
            return Err(ApiError::invalid(
                "description",
                format!("must be at most {DESCRIPTION_MAX_CHARS} characters"),
            ));
        }
    }
    if let Some(details) = &request.payment_details {
        for (param, value) in [
            (
                "payment_details.customer_reference",
                &details.customer_reference,
            ),
            ("payment_details.order_reference", &details.order_reference),
        ] {
            if value
                .as_ref()
                .is_some_and(|v| v.chars().count() > ID_MAX_CHARS)
            {
                return Err(ApiError::invalid(
                    param,
                    format!("must be at most {ID_MAX_CHARS} characters"),
                ));
            }
        }
    }

    if let Some(account) = &request.on_behalf_of {
        check_id(account, "on_behalf_of")?;
    }
    let transfer_data = match &request.transfer_data {
        None => None,
        Some(param) => {
            let destination = required(&param.destination, "transfer_data.destination")?;
            check_id(destination, "transfer_data.destination")?;
            if let Some(transfer) = param.amount {
                if transfer <= 0 {
                    return Err(ApiError::invalid(
                        "transfer_data.amount",
                        "must be a positive integer",
                    ));
                }
                if transfer > value {
                    return Err(ApiError::invalid(
                        "transfer_data.amount",
                        format!("must be at most `amount.value` ({value})"),
                    ));
                }
            }
            Some(TransferData {
                destination: destination.clone(),
                amount: param.amount,
            })
        }
    };
    let connect = request.on_behalf_of.is_some() || transfer_data.is_some();
    let application_fee_amount = match request.application_fee_amount {
        None => None,
        Some(fee) => {
            if !connect {
                return Err(ApiError::invalid(
                    "application_fee_amount",
                    "requires `on_behalf_of` or `transfer_data`",
                ));
            }
            if fee < 0 || fee > value {
                return Err(ApiError::invalid(
                    "application_fee_amount",
                    format!("must be between 0 and `amount.value` ({value})"),
                ));
            }
            Some(Amount::new(fee, currency))
        }
    };

    let retry_details = request.retry_details.clone().unwrap_or_default();
    let retry = match (&retry_details.retry_strategy, &retry_details.retry_policy) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                ErrorCode::OffSessionPaymentRetryPolicyStrategyMutuallyExclusive,
                "You may not specify both `retry_details.retry_policy` and `retry_details.retry_strategy`; they are mutually exclusive.",
            )
            .with_param("retry_details"))
        }
        (Some(strategy), None) => RetryRequest::Strategy(*strategy),
        (None, Some(policy)) => {
            if !rules.retry_policies.iter().any(|p| p == policy) {
                return Err(ApiError::invalid(
                    "retry_details.retry_policy",
                    format!(
                        "no retry policy named `{policy}` is configured (configured: {})",
                        rules.retry_policies.join(", ")
                    ),
                ));
            }
            RetryRequest::Policy(policy.clone())
        }
        (None, None) => RetryRequest::Strategy(RequestedRetryStrategy::BestAvailable),
    };
    if let Some(until) = retry_details.retry_until {
        if until <= rules.now {
            return Err(ApiError::invalid(
                "retry_details.retry_until",
                format!("must be in the future (now is {})", rules.now),
            ));
        }
    }

    let capture_param = request.capture.clone().unwrap_or_default();
    let capture_method = capture_param.capture_method.unwrap_or_default();
    if let Some(before) = capture_param.capture_before {
        if capture_method != CaptureMethod::Manual {
            return Err(ApiError::invalid(
                "capture.capture_before",
                "is only allowed with `capture.capture_method` = `manual`",
            ));
        }
        if before <= rules.now {
            return Err(ApiError::invalid(
                "capture.capture_before",
                format!("must be in the future (now is {})", rules.now),
            ));
        }
    }
    let capture = Capture {
        capture_method,
        capture_before: capture_param.capture_before,
    };

    let target_date = match &request.target_date {
        None => None,
        Some(text) => {
            let at = Timestamp::parse_date(text).ok_or_else(|| {
                ApiError::invalid("target_date", format!("`{text}` is not a YYYY-MM-DD date"))
            })?;
            let today = Timestamp::from_millis(rules.now.as_millis() - rules.now.millis_of_day());
            if at < today {
                return Err(ApiError::invalid(
                    "target_date",
                    format!("`{text}` is in the past"),
                ));
            }
            Some((text.clone(), at))
        }
    };
    // The first attempt is made at the start of `target_date` (UTC): a deadline before
    // it would leave no time for any attempt.
    if let Some((text, at)) = &target_date {
        let deadlines = [
            ("retry_details.retry_until", retry_details.retry_until),
            ("capture.capture_before", capture.capture_before),
        ];
        for (field, deadline) in deadlines {
            if let Some(deadline) = deadline.filter(|deadline| deadline < at) {
                return Err(ApiError::invalid(
                    "target_date",
                    format!(
                        "`{text}` starts after `{field}` ({deadline}): no attempt could be made"
                    ),
                ));
            }
        }
    }

    if let Some(clock) = &request.test_clock {
        if rules.livemode {
            return Err(ApiError::new(
                ErrorCode::OffSessionPaymentTestClockInLivemode,
                "Test clocks may not be used with the Off-Session Payments API in livemode. Use sandbox keys to test with test clocks.",
            )
            .with_param("test_clock"));
        }
        check_id(clock, "test_clock")?;
    }

    let requested_orchestration = request.payments_orchestration;
    let orchestration = requested_orchestration.unwrap_or_default();
    if orchestration.enabled && connect {
        return Err(ApiError::new(
            ErrorCode::OspPaymentsOrchestrationNotSupportedWithConnect,
            "Payments orchestration is not supported with connect (`on_behalf_of` or `transfer_data`).",
        )
        .with_param("payments_orchestration.enabled"));
    }
    if orchestration.enabled && retry == RetryRequest::Strategy(RequestedRetryStrategy::Smart) {
        return Err(ApiError::new(
            ErrorCode::OspPaymentsOrchestrationNotSupportedWithSmartRetries,
            "Smart retries are not supported for orchestrated off-session payments.",
        )
        .with_param("retry_details.retry_strategy"));
    }

    let mut option_types = Vec::new();
    let mut payment_method_options = None;
    if let Some(options) = &request.payment_method_options {
        let mut stored = PaymentMethodOptions::default();
        for (key, value) in options {
            let param = format!("payment_method_options.{key}");
            if !OPTION_TYPES.contains(&key.as_str()) {
                return Err(ApiError::invalid(
                    &param,
                    format!(
                        "unknown payment method type; expected one of {}",
                        OPTION_TYPES.join(", ")
                    ),
                ));
            }
            let Some(fields) = value.as_object() else {
                return Err(ApiError::invalid(&param, "must be an object"));
            };
            if key == "card" {
                stored.card = Some(check_card_options(value)?);
            } else if let Some(field) = fields.keys().next() {
                // Debit types have no options yet: only `{}` is accepted.
                return Err(ApiError::invalid(
                    &format!("{param}.{field}"),
                    "is not a known option",
                ));
            }
            option_types.push(key.clone());
        }
        payment_method_options = Some(stored);
    }

    Ok(ValidCreate {
        amount,
        cadence,
        customer: customer.clone(),
        payment_method: payment_method.clone(),
        metadata,
        on_behalf_of: request.on_behalf_of.clone(),
        transfer_data,
        application_fee_amount,
        statement_descriptor: request.statement_descriptor.clone(),
        statement_descriptor_suffix: request.statement_descriptor_suffix.clone(),
        description: request.description.clone(),
        payment_details: request.payment_details.clone(),
        option_types,
        payment_method_options,
        payments_orchestration: requested_orchestration,
        retry,
        retry_until: retry_details.retry_until,
        capture,
        target_date,
        test_clock: request.test_clock.clone(),
    })
}
