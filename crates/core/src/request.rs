//! Create requests: parsing and every validation rule that can be decided without a
//! processor ([`validate_create`]), and the rules that need the payment method's type
//! ([`resolve_for_method`]). Errors use the API's codes and name the field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorCode};
use crate::money::{Amount, Currency};
use crate::payment::{
    is_debit_method_type, Cadence, Capture, CaptureMethod, CardOptions, PaymentDetails,
    PaymentMethodOptions, PaymentsOrchestration, RetryStrategy, TransferData,
};
use crate::processor::PaymentMethodDetails;
use crate::time::Timestamp;

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

/// `amount` as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmountParam {
    /// Minor units.
    pub value: Option<i64>,
    /// ISO 4217 code.
    pub currency: Option<String>,
}

/// `retry_strategy` as a request may name it: the request-side names plus, for
/// compatibility, the response-side ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestedRetryStrategy {
    /// The engine picks: `smart` for cards, `heuristic` for debits.
    BestAvailable,
    /// No retries.
    None,
    /// The default configured policy.
    Scheduled,
    /// Rules per decline category (debits only).
    Heuristic,
    /// Learned predictions (cards only).
    Smart,
}

/// `retry_details` as sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryDetailsParam {
    /// A strategy.
    pub retry_strategy: Option<RequestedRetryStrategy>,
    /// A configured policy's name.
    pub retry_policy: Option<String>,
    /// No attempt after this time.
    pub retry_until: Option<Timestamp>,
}

/// `capture` as sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureParam {
    /// Automatic (default) or manual.
    pub capture_method: Option<CaptureMethod>,
    /// Latest capture time for manual capture.
    pub capture_before: Option<Timestamp>,
}

/// `transfer_data` as sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferDataParam {
    /// Connected account.
    pub destination: Option<String>,
    /// Minor units to transfer.
    pub amount: Option<i64>,
}

/// Body of `POST /v2/payments/off_session_payments`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateOffSessionPayment {
    /// Amount to collect (required).
    pub amount: Option<AmountParam>,
    /// `recurring` or `unscheduled` (required).
    pub cadence: Option<Cadence>,
    /// Customer id (required).
    pub customer: Option<String>,
    /// Payment method id (required).
    pub payment_method: Option<String>,
    /// Merchant key-value pairs (`{}` when absent).
    pub metadata: Option<BTreeMap<String, String>>,
    /// Connected account the funds are for.
    pub on_behalf_of: Option<String>,
    /// Transfer to a connected account.
    pub transfer_data: Option<TransferDataParam>,
    /// Platform fee, minor units of the payment's currency (connect only).
    pub application_fee_amount: Option<i64>,
    /// Statement descriptor for non-card charges.
    pub statement_descriptor: Option<String>,
    /// Card statement descriptor suffix.
    pub statement_descriptor_suffix: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// Merchant references.
    pub payment_details: Option<PaymentDetails>,
    /// Options per payment method type (`{"card": {...}}`).
    pub payment_method_options: Option<BTreeMap<String, serde_json::Value>>,
    /// Orchestration switch.
    pub payments_orchestration: Option<PaymentsOrchestration>,
    /// Retry strategy or policy.
    pub retry_details: Option<RetryDetailsParam>,
    /// Capture settings.
    pub capture: Option<CaptureParam>,
    /// Deferred first attempt, `YYYY-MM-DD`.
    pub target_date: Option<String>,
    /// Test clock id.
    pub test_clock: Option<String>,
}

/// What the request asked for, before the payment method's type is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryRequest {
    /// A strategy (default `best_available`).
    Strategy(RequestedRetryStrategy),
    /// A configured policy by name.
    Policy(String),
}

/// A create request that passed every processor-independent rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidCreate {
    /// Amount.
    pub amount: Amount,
    /// Cadence.
    pub cadence: Cadence,
    /// Customer.
    pub customer: String,
    /// Payment method.
    pub payment_method: String,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
    /// Connected account.
    pub on_behalf_of: Option<String>,
    /// Transfer.
    pub transfer_data: Option<TransferData>,
    /// Application fee.
    pub application_fee_amount: Option<Amount>,
    /// Statement descriptor.
    pub statement_descriptor: Option<String>,
    /// Statement descriptor suffix.
    pub statement_descriptor_suffix: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Merchant references.
    pub payment_details: Option<PaymentDetails>,
    /// Payment method types named in `payment_method_options`.
    pub option_types: Vec<String>,
    /// The options as stored on the payment (`None` when not given).
    pub payment_method_options: Option<PaymentMethodOptions>,
    /// Orchestration, as requested (`None` when not given).
    pub payments_orchestration: Option<PaymentsOrchestration>,
    /// Retry request.
    pub retry: RetryRequest,
    /// Retry deadline.
    pub retry_until: Option<Timestamp>,
    /// Capture settings.
    pub capture: Capture,
    /// Deferred first attempt date and its instant (midnight UTC).
    pub target_date: Option<(String, Timestamp)>,
    /// Test clock id.
    pub test_clock: Option<String>,
}

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
            if path.is_empty() || path == "." {
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

fn required<'a, T>(value: &'a Option<T>, param: &str) -> Result<&'a T, ApiError> {
    value
        .as_ref()
        .ok_or_else(|| ApiError::invalid(param, "is required"))
}

/// Object ids (customer, payment method, account, test clock) are ASCII letters,
/// digits, `_` and `-`, at most [`ID_MAX_CHARS`] long: they end up in processor URLs,
/// so nothing that could change a URL's path or query (`/`, `.`, `?`, `#`, `%`, `&`,
/// white space, control characters) is accepted.
pub fn check_id(value: &str, param: &str) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(ApiError::invalid(param, "must not be empty"));
    }
    if value.len() > ID_MAX_CHARS {
        return Err(ApiError::invalid(
            param,
            format!(
                "must be at most {ID_MAX_CHARS} characters (got {})",
                value.chars().count()
            ),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(ApiError::invalid(
            param,
            format!(
                "must contain only ASCII letters, digits, `_` and `-` (found {})",
                bad.escape_default()
            ),
        ));
    }
    Ok(())
}

fn check_descriptor(value: &str, param: &str, min_chars: usize) -> Result<(), ApiError> {
    let chars = value.chars().count();
    if chars > STATEMENT_DESCRIPTOR_MAX_CHARS {
        return Err(ApiError::invalid(
            param,
            format!("must be at most {STATEMENT_DESCRIPTOR_MAX_CHARS} characters (got {chars})"),
        ));
    }
    if chars < min_chars {
        return Err(ApiError::invalid(
            param,
            format!("must be at least {min_chars} characters (got {chars})"),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| matches!(c, '<' | '>' | '\\' | '\'' | '"' | '*'))
    {
        return Err(ApiError::invalid(
            param,
            format!("must not contain the character `{bad}`"),
        ));
    }
    if !value.chars().any(char::is_alphabetic) {
        return Err(ApiError::invalid(param, "must contain at least one letter"));
    }
    Ok(())
}

fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if metadata.len() > METADATA_MAX_KEYS {
        return Err(ApiError::invalid(
            "metadata",
            format!(
                "at most {METADATA_MAX_KEYS} keys are allowed (got {}): two of Stripe's 50 are reserved for the engine",
                metadata.len()
            ),
        ));
    }
    for (key, value) in metadata {
        let param = format!("metadata.{key}");
        if key.is_empty() {
            return Err(ApiError::invalid("metadata", "keys must not be empty"));
        }
        if key.starts_with(RESERVED_METADATA_PREFIX) {
            return Err(ApiError::invalid(
                &param,
                format!(
                    "keys starting with `{RESERVED_METADATA_PREFIX}` are reserved for the engine"
                ),
            ));
        }
        if key.chars().count() > METADATA_MAX_KEY_CHARS {
            return Err(ApiError::invalid(
                &param,
                format!("keys must be at most {METADATA_MAX_KEY_CHARS} characters"),
            ));
        }
        if key.contains('[') || key.contains(']') {
            return Err(ApiError::invalid(
                &param,
                "keys must not contain `[` or `]`",
            ));
        }
        if value.chars().count() > METADATA_MAX_VALUE_CHARS {
            return Err(ApiError::invalid(
                &param,
                format!("values must be at most {METADATA_MAX_VALUE_CHARS} characters"),
            ));
        }
    }
    Ok(())
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

/// `payment_method_options.card`: known fields only, each checked.
fn check_card_options(value: &serde_json::Value) -> Result<CardOptions, ApiError> {
    let options: CardOptions = serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let path = e.path().to_string();
        let param = if path.is_empty() || path == "." {
            "payment_method_options.card".to_owned()
        } else {
            format!("payment_method_options.card.{path}")
        };
        ApiError::invalid(&param, e.into_inner())
    })?;
    if let Some(mcc) = &options.mcc {
        if mcc.len() != 4 || !mcc.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::invalid(
                "payment_method_options.card.mcc",
                format!("must be four digits (got `{}`)", mcc.escape_default()),
            ));
        }
    }
    if let Some(id) = &options.network_transaction_id {
        if id.is_empty()
            || id.len() > ID_MAX_CHARS
            || !id.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(ApiError::invalid(
                "payment_method_options.card.network_transaction_id",
                format!("must be 1 to {ID_MAX_CHARS} ASCII letters and digits"),
            ));
        }
    }
    Ok(options)
}

/// Engine facts the method-dependent rules need.
#[derive(Debug, Clone, Copy)]
pub struct MethodRules<'a> {
    /// Payment method types the chosen processor supports.
    pub supported_types: &'a [String],
    /// ACH (us_bank_account) retries switched on.
    pub ach_retries_enabled: bool,
    /// SEPA Debit retries switched on.
    pub sepa_debit_retries_enabled: bool,
    /// Strategies this engine has policies for.
    pub available: &'a [RetryStrategy],
    /// Policy `scheduled` and `best_available` fall back to.
    pub default_policy: &'a str,
}

/// The strategy (and policy) a payment runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedRetry {
    /// Response-side strategy.
    pub strategy: RetryStrategy,
    /// Policy name, for `scheduled`.
    pub policy: Option<String>,
}

impl ResolvedRetry {
    fn scheduled(policy: &str) -> ResolvedRetry {
        ResolvedRetry {
            strategy: RetryStrategy::Scheduled,
            policy: Some(policy.to_owned()),
        }
    }

    fn of(strategy: RetryStrategy) -> ResolvedRetry {
        ResolvedRetry {
            strategy,
            policy: None,
        }
    }
}

fn unavailable(strategy: RetryStrategy) -> ApiError {
    ApiError::invalid(
        "retry_details.retry_strategy",
        format!("the `{strategy}` retry strategy is not available in this engine (no policy is configured for it)"),
    )
}

/// Applies the rules that depend on the payment method's type and resolves the retry
/// strategy: `best_available` is `smart` for cards (the default scheduled policy when
/// orchestration is on or no smart policy is configured) and `heuristic` for debits.
pub fn resolve_for_method(
    valid: &ValidCreate,
    method: &PaymentMethodDetails,
    rules: &MethodRules<'_>,
) -> Result<ResolvedRetry, ApiError> {
    use RequestedRetryStrategy as R;
    let method_type = method.payment_method_type.as_str();
    if !rules.supported_types.iter().any(|t| t == method_type) {
        return Err(ApiError::new(
            ErrorCode::OspInvalidPaymentMethodType,
            format!(
                "payment method type `{method_type}` is not supported; supported types: {}",
                rules.supported_types.join(", ")
            ),
        )
        .with_param("payment_method"));
    }
    if let Some(other) = valid
        .option_types
        .iter()
        .find(|t| t.as_str() != method_type)
    {
        return Err(ApiError::new(
            ErrorCode::OffSessionPaymentIncorrectPaymentMethodTypeForOptions,
            format!(
                "`payment_method_options.{other}` does not match the payment method's type `{method_type}`"
            ),
        )
        .with_param(&format!("payment_method_options.{other}")));
    }
    let debit = is_debit_method_type(method_type);
    if valid.payments_orchestration.is_some_and(|o| o.enabled) && method_type != "card" {
        return Err(ApiError::new(
            ErrorCode::OspPaymentsOrchestrationOnlySupportedForCards,
            format!("Payments orchestration is only supported for card payment methods, not `{method_type}`."),
        )
        .with_param("payments_orchestration.enabled"));
    }
    let available = |s: RetryStrategy| rules.available.contains(&s);

    let resolved = if debit {
        match &valid.retry {
            RetryRequest::Strategy(R::Smart) => {
                return Err(ApiError::new(
                    ErrorCode::OffSessionPaymentSmartRetriesNotSupportedForDebitPaymentMethods,
                    "Debit payment methods do not support smart retries.",
                )
                .with_param("retry_details.retry_strategy"))
            }
            RetryRequest::Policy(_) | RetryRequest::Strategy(R::Scheduled) => {
                return Err(ApiError::new(
                    ErrorCode::OffSessionPaymentRetryPolicyNotSupportedForDebitPaymentMethods,
                    "Debit payment methods do not support custom retry policies.",
                )
                .with_param("retry_details.retry_policy"))
            }
            RetryRequest::Strategy(R::None) => ResolvedRetry::of(RetryStrategy::None),
            RetryRequest::Strategy(R::BestAvailable | R::Heuristic) => {
                ResolvedRetry::of(RetryStrategy::Heuristic)
            }
        }
    } else {
        match &valid.retry {
            RetryRequest::Strategy(R::Heuristic) => {
                return Err(ApiError::new(
                    ErrorCode::OffSessionPaymentHeuristicRetriesNotSupportedForCards,
                    "Card payment methods do not support heuristic retries.",
                )
                .with_param("retry_details.retry_strategy"))
            }
            RetryRequest::Strategy(R::None) => ResolvedRetry::of(RetryStrategy::None),
            RetryRequest::Strategy(R::Smart) => ResolvedRetry::of(RetryStrategy::Smart),
            RetryRequest::Strategy(R::Scheduled) => ResolvedRetry::scheduled(rules.default_policy),
            RetryRequest::Policy(name) => ResolvedRetry::scheduled(name),
            RetryRequest::Strategy(R::BestAvailable) => {
                if valid.payments_orchestration.is_some_and(|o| o.enabled)
                    || !available(RetryStrategy::Smart)
                {
                    ResolvedRetry::scheduled(rules.default_policy)
                } else {
                    ResolvedRetry::of(RetryStrategy::Smart)
                }
            }
        }
    };

    if debit && resolved.strategy != RetryStrategy::None {
        if method_type == "us_bank_account" && !rules.ach_retries_enabled {
            return Err(ApiError::new(
                ErrorCode::OspAchRetriesNotEnabled,
                "ACH retries are not enabled; set `engine.ach_retries_enabled = true` or use `retry_strategy: none`.",
            )
            .with_param("retry_details.retry_strategy"));
        }
        if method_type == "sepa_debit" && !rules.sepa_debit_retries_enabled {
            return Err(ApiError::new(
                ErrorCode::OspSepaDebitRetriesNotEnabled,
                "SEPA Debit retries are not enabled; set `engine.sepa_debit_retries_enabled = true` or use `retry_strategy: none`.",
            )
            .with_param("retry_details.retry_strategy"));
        }
    }
    if resolved.strategy != RetryStrategy::Scheduled && !available(resolved.strategy) {
        return Err(unavailable(resolved.strategy));
    }
    Ok(resolved)
}
