//! The `v2.payments.off_session_payment` object, in the API's JSON shape.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::money::Amount;
use crate::time::Timestamp;

/// The value of the `object` field of an off-session payment.
pub const OBJECT_NAME: &str = "v2.payments.off_session_payment";

/// The `object` tag; serializes as `"v2.payments.off_session_payment"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectTag {
    /// The only value.
    #[default]
    #[serde(rename = "v2.payments.off_session_payment")]
    OffSessionPayment,
}

/// Lifecycle status of an off-session payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Not attempted yet.
    Pending,
    /// An authorization attempt is under way; manual operations are refused.
    Processing,
    /// A previous attempt failed; another is scheduled.
    PendingRetry,
    /// Retries suspended by the merchant until resumed.
    Paused,
    /// Authorized, waiting for capture.
    RequiresCapture,
    /// Money moved (terminal).
    Succeeded,
    /// Terminally failed, with a failure reason (terminal).
    Failed,
    /// Canceled by the merchant (terminal).
    Canceled,
}

impl PaymentStatus {
    /// Every status, in the API's order.
    pub const ALL: [PaymentStatus; 8] = [
        PaymentStatus::Pending,
        PaymentStatus::Processing,
        PaymentStatus::PendingRetry,
        PaymentStatus::Paused,
        PaymentStatus::RequiresCapture,
        PaymentStatus::Succeeded,
        PaymentStatus::Failed,
        PaymentStatus::Canceled,
    ];

    /// Whether the status can never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            PaymentStatus::Succeeded | PaymentStatus::Failed | PaymentStatus::Canceled
        )
    }

    /// The API's name for the status.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Pending => "pending",
            PaymentStatus::Processing => "processing",
            PaymentStatus::PendingRetry => "pending_retry",
            PaymentStatus::Paused => "paused",
            PaymentStatus::RequiresCapture => "requires_capture",
            PaymentStatus::Succeeded => "succeeded",
            PaymentStatus::Failed => "failed",
            PaymentStatus::Canceled => "canceled",
        }
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a payment ended in `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// An uncaptured authorization lapsed.
    AuthorizationExpired,
    /// The next attempt would have fallen after the retry window closed.
    ExceededRetryWindow,
    /// The payment method can no longer be charged (expired, needs new data, needs the customer).
    NoValidPaymentMethod,
    /// The processor or issuer returned a terminal failure.
    RejectedByPartner,
    /// The retry policy ran out of attempts.
    RetriesExhausted,
}

impl FailureReason {
    /// Every failure reason.
    pub const ALL: [FailureReason; 5] = [
        FailureReason::AuthorizationExpired,
        FailureReason::ExceededRetryWindow,
        FailureReason::NoValidPaymentMethod,
        FailureReason::RejectedByPartner,
        FailureReason::RetriesExhausted,
    ];

    /// The API's name for the reason.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::AuthorizationExpired => "authorization_expired",
            FailureReason::ExceededRetryWindow => "exceeded_retry_window",
            FailureReason::NoValidPaymentMethod => "no_valid_payment_method",
            FailureReason::RejectedByPartner => "rejected_by_partner",
            FailureReason::RetriesExhausted => "retries_exhausted",
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How often the underlying payment happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cadence {
    /// On a regular interval (subscriptions, instalments).
    Recurring,
    /// At irregular times (usage top-ups).
    Unscheduled,
}

/// The retry strategy a payment runs under (response side).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryStrategy {
    /// No retries.
    None,
    /// A configured policy with fixed times.
    Scheduled,
    /// Pre-determined rules per decline category.
    Heuristic,
    /// Learned predictions.
    Smart,
}

impl RetryStrategy {
    /// The API's name for the strategy.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryStrategy::None => "none",
            RetryStrategy::Scheduled => "scheduled",
            RetryStrategy::Heuristic => "heuristic",
            RetryStrategy::Smart => "smart",
        }
    }
}

impl fmt::Display for RetryStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When funds are captured after authorization.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureMethod {
    /// Captured as part of the authorization.
    #[default]
    Automatic,
    /// Authorized first; captured by a later `/capture` call.
    Manual,
}

/// Capture settings of a payment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capture {
    /// Automatic or manual capture.
    pub capture_method: CaptureMethod,
    /// Latest time to capture a manual authorization; it expires after that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_before: Option<Timestamp>,
}

/// Funds transfer to a connected account after success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferData {
    /// The connected account that receives the funds.
    pub destination: String,
    /// Minor units transferred; the whole amount when null.
    pub amount: Option<i64>,
}

/// Merchant references attached to the payment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentDetails {
    /// The merchant's reference for the customer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_reference: Option<String>,
    /// The merchant's reference for the order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_reference: Option<String>,
}

/// Whether the payment may be routed across processors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentsOrchestration {
    /// `true`: rule-based processor selection and cascade; `false`: primary processor only.
    pub enabled: bool,
}

/// `payment_method_options.card`: card facts the merchant passes to the networks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardOptions {
    /// Merchant category code for this transaction (four digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcc: Option<String>,
    /// Network transaction id of the customer-initiated transaction that set the card
    /// up (Visa Transaction ID, Mastercard Trace ID): it ties this merchant-initiated
    /// charge to the original consent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_transaction_id: Option<String>,
}

/// Options per payment method type, as stored and returned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentMethodOptions {
    /// Options for card payments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<CardOptions>,
}

/// Retry state of a payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryDetails {
    /// Authorization attempts so far; only grows.
    pub attempts: u32,
    /// The strategy the payment runs under, after `best_available` was resolved.
    pub retry_strategy: RetryStrategy,
    /// The configured policy, for `scheduled`.
    pub retry_policy: Option<String>,
    /// No attempt is made after this time.
    pub retry_until: Option<Timestamp>,
}

/// An off-session payment as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffSessionPayment {
    /// `osp_…`.
    pub id: String,
    /// Always `v2.payments.off_session_payment`.
    pub object: ObjectTag,
    /// The amount to collect.
    pub amount_requested: Amount,
    /// The owning compartment (workspace), from the engine's configuration.
    #[serde(default)]
    pub compartment_id: String,
    /// The authorized amount that can still be captured, while `requires_capture`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_capturable: Option<Amount>,
    /// Recurring or unscheduled.
    pub cadence: Cadence,
    /// Capture settings.
    pub capture: Capture,
    /// Creation time.
    pub created: Timestamp,
    /// The customer (`cus_…`).
    pub customer: String,
    /// The saved payment method (`pm_…`).
    pub payment_method: String,
    /// Merchant key-value pairs; always present.
    pub metadata: BTreeMap<String, String>,
    /// The connected account the funds are for.
    pub on_behalf_of: Option<String>,
    /// Transfer to a connected account after success.
    pub transfer_data: Option<TransferData>,
    /// Platform fee taken from a connect payment.
    pub application_fee_amount_requested: Option<Amount>,
    /// Statement descriptor for non-card charges.
    pub statement_descriptor: Option<String>,
    /// Suffix appended to the account's card statement descriptor.
    pub statement_descriptor_suffix: Option<String>,
    /// Free-text description.
    pub description: Option<String>,
    /// Merchant references.
    pub payment_details: Option<PaymentDetails>,
    /// Options per payment method type, as the request gave them.
    #[serde(default)]
    pub payment_method_options: Option<PaymentMethodOptions>,
    /// Processor orchestration switch; `null` when the request did not ask for it.
    pub payments_orchestration: Option<PaymentsOrchestration>,
    /// Retry state.
    pub retry_details: RetryDetails,
    /// Current status.
    pub status: PaymentStatus,
    /// Set only when `failed`.
    pub failure_reason: Option<FailureReason>,
    /// Error of the previous authorization attempt.
    pub last_authorization_attempt_error: Option<String>,
    /// Id of the latest attempt record.
    pub latest_payment_attempt_record: Option<String>,
    /// Payment record id (set on success).
    pub payment_record: Option<String>,
    /// Deferred first attempt date, `YYYY-MM-DD`.
    pub target_date: Option<String>,
    /// Test clock that drives this payment.
    pub test_clock: Option<String>,
    /// Live or test mode.
    pub livemode: bool,
}

impl OffSessionPayment {
    /// Whether payments orchestration (routing across processors, cascades) is on.
    pub fn orchestrated(&self) -> bool {
        self.payments_orchestration.is_some_and(|o| o.enabled)
    }

    /// The latest time an attempt may be sent: `retry_details.retry_until`, and for a
    /// manual capture `capture.capture_before` (an authorization made after it could
    /// not be captured), whichever comes first.
    pub fn attempts_end(&self) -> Option<Timestamp> {
        let capture_before = match self.capture.capture_method {
            CaptureMethod::Manual => self.capture.capture_before,
            CaptureMethod::Automatic => None,
        };
        match (self.retry_details.retry_until, capture_before) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_reasons_use_the_api_names() {
        for status in PaymentStatus::ALL {
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::Value::String(status.as_str().to_owned())
            );
        }
        for reason in FailureReason::ALL {
            assert_eq!(
                serde_json::to_value(reason).unwrap(),
                serde_json::Value::String(reason.as_str().to_owned())
            );
        }
        assert_eq!(
            PaymentStatus::ALL
                .iter()
                .filter(|s| s.is_terminal())
                .count(),
            3
        );
    }
}
