//! The create request as sent, and as validated.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::money::Amount;
use crate::payment::{
    Cadence, Capture, CaptureMethod, PaymentDetails, PaymentMethodOptions, PaymentsOrchestration,
    TransferData,
};
use crate::time::Timestamp;

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
    /// `none`, `scheduled`, `heuristic`, `smart` or `best_available`; excludes
    /// `retry_policy`.
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
    /// What to charge, in minor units of its currency.
    pub amount: Amount,
    /// `recurring` or `unscheduled`: which network rules and retry budget apply.
    pub cadence: Cadence,
    /// The processor's customer id (`cus_…`).
    pub customer: String,
    /// The saved payment method to charge (`pm_…`).
    pub payment_method: String,
    /// Merchant key-value pairs, passed to the processor beside the engine's own.
    pub metadata: BTreeMap<String, String>,
    /// Connected account.
    pub on_behalf_of: Option<String>,
    /// Funds to move to a connected account on success.
    pub transfer_data: Option<TransferData>,
    /// Application fee.
    pub application_fee_amount: Option<Amount>,
    /// What the customer's statement shows instead of the account default.
    pub statement_descriptor: Option<String>,
    /// Appended to the account's statement descriptor prefix.
    pub statement_descriptor_suffix: Option<String>,
    /// Free text for the merchant, not shown to the customer.
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
