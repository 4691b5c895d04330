//! The rules that need the payment method's type (known after preflight), and the
//! retry strategy a payment runs under.

use super::*;

/// Engine facts the method-dependent rules need.
#[derive(Debug, Clone, Copy)]
pub struct MethodRules<'a> {
    /// Payment method types the chosen processor supports.
    pub supported_types: &'a [PaymentMethodType],
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
    let method_type = &method.payment_method_type;
    if !rules.supported_types.contains(method_type) {
        return Err(ApiError::new(
            ErrorCode::OspInvalidPaymentMethodType,
            format!(
                "payment method type `{method_type}` is not supported; supported types: {}",
                rules
                    .supported_types
                    .iter()
                    .map(PaymentMethodType::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .with_param("payment_method"));
    }
    if let Some(other) = valid
        .option_types
        .iter()
        .find(|t| t.as_str() != method_type.as_str())
    {
        return Err(ApiError::new(
            ErrorCode::OffSessionPaymentIncorrectPaymentMethodTypeForOptions,
            format!(
                "`payment_method_options.{other}` does not match the payment method's type `{method_type}`"
            ),
        )
        .with_param(&format!("payment_method_options.{other}")));
    }
    let debit = method_type.is_bank_debit();
    if valid.payments_orchestration.is_some_and(|o| o.enabled)
        && *method_type != PaymentMethodType::Card
    {
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
        if *method_type == PaymentMethodType::UsBankAccount && !rules.ach_retries_enabled {
            return Err(ApiError::new(
                ErrorCode::OspAchRetriesNotEnabled,
                "ACH retries are not enabled; set `engine.ach_retries_enabled = true` or use `retry_strategy: none`.",
            )
            .with_param("retry_details.retry_strategy"));
        }
        if *method_type == PaymentMethodType::SepaDebit && !rules.sepa_debit_retries_enabled {
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
