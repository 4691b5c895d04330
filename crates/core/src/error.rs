//! The API's error body and the codes the engine answers with.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Error codes of the Off-Session Payments API, plus the few generic ones the engine
/// needs for requests that are not creates (not found, idempotency, state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Heuristic strategy asked for a card.
    OffSessionPaymentHeuristicRetriesNotSupportedForCards,
    /// `payment_method_options` do not match the payment method's type.
    OffSessionPaymentIncorrectPaymentMethodTypeForOptions,
    /// Custom retry policy on a debit method.
    OffSessionPaymentRetryPolicyNotSupportedForDebitPaymentMethods,
    /// Both `retry_policy` and `retry_strategy` given.
    OffSessionPaymentRetryPolicyStrategyMutuallyExclusive,
    /// Smart retries on a debit method.
    OffSessionPaymentSmartRetriesNotSupportedForDebitPaymentMethods,
    /// A test clock used in live mode.
    OffSessionPaymentTestClockInLivemode,
    /// ACH retries asked for but not enabled.
    OspAchRetriesNotEnabled,
    /// Above the currency's maximum.
    OspAmountTooLarge,
    /// Below the currency's minimum.
    OspAmountTooSmall,
    /// Anything else malformed; the message says what.
    OspGenericInvalidRequest,
    /// The payment method's type is not supported.
    OspInvalidPaymentMethodType,
    /// The payment method is not attached to the customer.
    OspPaymentMethodNotAttached,
    /// Orchestration with `on_behalf_of` / `transfer_data`.
    OspPaymentsOrchestrationNotSupportedWithConnect,
    /// Orchestration with smart retries.
    OspPaymentsOrchestrationNotSupportedWithSmartRetries,
    /// Orchestration for a non-card method.
    OspPaymentsOrchestrationOnlySupportedForCards,
    /// The method was never set up for off-session use.
    OspPmNotSetupForOffSession,
    /// Set up with an `on_behalf_of` the payment does not use.
    OspPmSetUpOnlyOnConnectedAccount,
    /// Set up on the platform, but the payment uses `on_behalf_of`.
    OspPmSetUpOnlyOnPlatform,
    /// SEPA Debit retries asked for but not enabled.
    OspSepaDebitRetriesNotEnabled,
    /// No object with that id (HTTP 404).
    ResourceMissing,
    /// An idempotency key reused with a different request (HTTP 400).
    IdempotencyError,
    /// The operation is not allowed in the payment's current status (HTTP 400).
    OffSessionPaymentInvalidStatus,
    /// Another change to the same payment won the race; retry (HTTP 409).
    OffSessionPaymentConcurrentUpdate,
    /// The engine could not reach its store or processor (HTTP 500).
    ApiError,
}

impl ErrorCode {
    /// The code as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::OffSessionPaymentHeuristicRetriesNotSupportedForCards => {
                "off_session_payment_heuristic_retries_not_supported_for_cards"
            }
            ErrorCode::OffSessionPaymentIncorrectPaymentMethodTypeForOptions => {
                "off_session_payment_incorrect_payment_method_type_for_options"
            }
            ErrorCode::OffSessionPaymentRetryPolicyNotSupportedForDebitPaymentMethods => {
                "off_session_payment_retry_policy_not_supported_for_debit_payment_methods"
            }
            ErrorCode::OffSessionPaymentRetryPolicyStrategyMutuallyExclusive => {
                "off_session_payment_retry_policy_strategy_mutually_exclusive"
            }
            ErrorCode::OffSessionPaymentSmartRetriesNotSupportedForDebitPaymentMethods => {
                "off_session_payment_smart_retries_not_supported_for_debit_payment_methods"
            }
            ErrorCode::OffSessionPaymentTestClockInLivemode => {
                "off_session_payment_test_clock_in_livemode"
            }
            ErrorCode::OspAchRetriesNotEnabled => "osp_ach_retries_not_enabled",
            ErrorCode::OspAmountTooLarge => "osp_amount_too_large",
            ErrorCode::OspAmountTooSmall => "osp_amount_too_small",
            ErrorCode::OspGenericInvalidRequest => "osp_generic_invalid_request",
            ErrorCode::OspInvalidPaymentMethodType => "osp_invalid_payment_method_type",
            ErrorCode::OspPaymentMethodNotAttached => "osp_payment_method_not_attached",
            ErrorCode::OspPaymentsOrchestrationNotSupportedWithConnect => {
                "osp_payments_orchestration_not_supported_with_connect"
            }
            ErrorCode::OspPaymentsOrchestrationNotSupportedWithSmartRetries => {
                "osp_payments_orchestration_not_supported_with_smart_retries"
            }
            ErrorCode::OspPaymentsOrchestrationOnlySupportedForCards => {
                "osp_payments_orchestration_only_supported_for_cards"
            }
            ErrorCode::OspPmNotSetupForOffSession => "osp_pm_not_setup_for_off_session",
            ErrorCode::OspPmSetUpOnlyOnConnectedAccount => {
                "osp_pm_set_up_only_on_connected_account"
            }
            ErrorCode::OspPmSetUpOnlyOnPlatform => "osp_pm_set_up_only_on_platform",
            ErrorCode::OspSepaDebitRetriesNotEnabled => "osp_sepa_debit_retries_not_enabled",
            ErrorCode::ResourceMissing => "resource_missing",
            ErrorCode::IdempotencyError => "idempotency_error",
            ErrorCode::OffSessionPaymentInvalidStatus => "off_session_payment_invalid_status",
            ErrorCode::OffSessionPaymentConcurrentUpdate => "off_session_payment_concurrent_update",
            ErrorCode::ApiError => "api_error",
        }
    }

    /// The HTTP status the API answers this code with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::ResourceMissing => 404,
            ErrorCode::OffSessionPaymentConcurrentUpdate => 409,
            ErrorCode::ApiError => 500,
            _ => 400,
        }
    }

    /// The error `type` field.
    pub fn error_type(self) -> &'static str {
        match self {
            ErrorCode::IdempotencyError => "idempotency_error",
            ErrorCode::ApiError => "api_error",
            _ => "invalid_request_error",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error the API returns: `{"error": {"type", "code", "message", "param"?}}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// The API's error code; decides the HTTP status.
    pub code: ErrorCode,
    /// What is wrong and, where it helps, what to do.
    pub message: String,
    /// The request field at fault, dotted (`amount.currency`).
    pub param: Option<String>,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            param: None,
        }
    }

    /// An `osp_generic_invalid_request` naming `param`.
    pub fn invalid(param: &str, message: impl fmt::Display) -> ApiError {
        ApiError {
            code: ErrorCode::OspGenericInvalidRequest,
            message: format!("`{param}`: {message}"),
            param: Some(param.to_owned()),
        }
    }

    /// Names the request field at fault.
    pub fn with_param(mut self, param: &str) -> ApiError {
        self.param = Some(param.to_owned());
        self
    }

    /// The API's JSON error body.
    pub fn body(&self) -> serde_json::Value {
        let mut error = serde_json::json!({
            "type": self.code.error_type(),
            "code": self.code.as_str(),
            "message": self.message,
        });
        if let Some(param) = &self.param {
            error["param"] = serde_json::Value::String(param.clone());
        }
        serde_json::json!({ "error": error })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_has_the_api_shape() {
        let err = ApiError::invalid("amount.currency", "unsupported currency `xyz`");
        let body = err.body();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["code"], "osp_generic_invalid_request");
        assert_eq!(body["error"]["param"], "amount.currency");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("amount.currency"));
    }

    #[test]
    fn codes_serialize_as_their_api_names() {
        let code = ErrorCode::OspPmSetUpOnlyOnConnectedAccount;
        assert_eq!(
            serde_json::to_value(code).unwrap(),
            serde_json::Value::String(code.as_str().to_owned())
        );
    }
}
