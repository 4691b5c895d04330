//! The `RetryPolicy` trait: after a decline, when (and whether) to try again.
//!
//! Policies are synchronous and pure: no I/O, no `&mut self`, deterministic for the
//! same input, so that a restarted or a second engine instance decides the same.

use std::fmt::Debug;

use crate::attempt::{AttemptRecord, DeclineCategory, DeclineCodes};
use crate::payment::{FailureReason, OffSessionPayment};
use crate::processor::PaymentMethodDetails;
use crate::time::Timestamp;

/// One earlier attempt on the same card, from any payment (for network caps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CardAttempt {
    /// When it was sent.
    pub at: Timestamp,
    /// Whether it was declined.
    pub declined: bool,
}

/// Everything a policy may look at.
#[derive(Debug, Clone, Copy)]
pub struct RetryContext<'a> {
    /// The payment, with `retry_details.attempts` already counting the failed attempt.
    pub payment: &'a OffSessionPayment,
    /// The payment method's type and card facts.
    pub method: Option<&'a PaymentMethodDetails>,
    /// This payment's attempts, oldest first, the failed one last.
    pub attempts: &'a [AttemptRecord],
    /// Earlier attempts on the same payment method across all payments.
    pub card_history: &'a [CardAttempt],
    /// The decline being decided on.
    pub decline: &'a DeclineCodes,
    /// Its category.
    pub category: DeclineCategory,
    /// When the first attempt of this payment was made.
    pub first_attempt_at: Timestamp,
    /// Now, by the payment's clock.
    pub now: Timestamp,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryDecision {
    /// Attempt again, not before this time.
    RetryAt {
        /// Earliest time of the next attempt.
        not_before: Timestamp,
    },
    /// Stop: the payment fails for this reason.
    Stop(FailureReason),
}

/// A retry strategy.
pub trait RetryPolicy: Send + Sync + Debug {
    /// The policy's name (`none`, a configured policy's name, …).
    fn name(&self) -> &str;

    /// The decision after a failed attempt.
    fn decide(&self, context: &RetryContext<'_>) -> RetryDecision;
}

/// Policies live behind `Arc<dyn RetryPolicy>`: keep the trait object-safe.
fn _object_safe(_: &dyn RetryPolicy) {}

/// The failure reason for a category that must stop regardless of policy, if any.
pub fn terminal_reason(category: DeclineCategory) -> Option<FailureReason> {
    match category {
        DeclineCategory::Hard => Some(FailureReason::RejectedByPartner),
        DeclineCategory::NeedsNewCardData | DeclineCategory::NeedsCustomer => {
            Some(FailureReason::NoValidPaymentMethod)
        }
        DeclineCategory::SoftFunds
        | DeclineCategory::SoftIssuer
        | DeclineCategory::SoftTransient => None,
    }
}
