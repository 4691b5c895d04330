//! The `RetryPolicy` trait: after a decline, when (and whether) to try again.
//!
//! Policies are synchronous and do no I/O: a decision never waits on a store or a
//! network. Fixed policies (`scheduled`, `heuristic`) decide the same for the same
//! input on every instance. `smart` does not: it learns in process from what it is
//! told through `observe`, so two instances, or one instance before and after a
//! restart without its saved state, may choose different times for the same decline.
//! Every decision stays within the network rules and the payment's `retry_until`,
//! which the engine applies whatever the policy answers.

use std::fmt::Debug;

use crate::attempt::{AttemptRecord, DeclineCategory, DeclineCodes};
use crate::payment::{FailureReason, OffSessionPayment};
use crate::processor::PaymentMethodDetails;
use crate::time::Timestamp;

/// One attempt on the same card, from any payment (for network caps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardAttempt {
    /// The payment it belonged to.
    pub payment_id: String,
    /// Its attempt number in that payment (1 = first attempt, 2+ = reattempts).
    pub attempt_number: u32,
    /// When it was sent.
    pub at: Timestamp,
    /// Whether it was declined.
    pub declined: bool,
    /// Whether its answer is known. The decline caps count an unanswered attempt (in
    /// flight, or its answer lost) as a decline, so that attempts in flight at once
    /// on one card cannot together overrun a cap such as Mastercard's 10 declines in
    /// 24 hours.
    pub answered: bool,
    /// Amount in minor units (Mastercard counts declines per card and amount).
    pub amount: i64,
    /// The network advice code of its decline (Mastercard's merchant advice code),
    /// if any: codes 03 and 21 bar the card for 30 days, across payments.
    pub advice_code: Option<String>,
}

impl CardAttempt {
    /// Whether a network rule can count this attempt: every attempt but a first
    /// attempt answered without a decline (no cap counts it, and it bars nothing).
    /// `Store::card_history` answers only these.
    pub fn counted(&self) -> bool {
        !(self.attempt_number == 1 && self.answered && !self.declined)
    }

    /// An attempt of `payment` as the network rules read it.
    pub fn of(payment: &OffSessionPayment, attempt: &AttemptRecord) -> CardAttempt {
        CardAttempt {
            payment_id: payment.id.clone(),
            attempt_number: attempt.number,
            at: attempt.started_at,
            declined: attempt.decline_category.is_some(),
            answered: attempt.answered(),
            amount: payment.amount_requested.value,
            advice_code: match &attempt.outcome {
                Some(crate::attempt::AttemptOutcome::Declined { codes, .. }) => {
                    codes.network_advice_code.clone()
                }
                _ => None,
            },
        }
    }
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

impl RetryContext<'_> {
    /// The last moment a retry may run: `window` after the first attempt, or the
    /// payment's `retry_until` when that is earlier.
    pub fn window_end(&self, window: std::time::Duration) -> Timestamp {
        let end = self.first_attempt_at.plus(window);
        match self.payment.retry_details.retry_until {
            Some(until) => end.min(until),
            None => end,
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryDecision {
    /// Attempt again, not before this time.
    RetryAt {
        /// Earliest time of the next attempt.
        not_before: Timestamp,
        /// The policy's retry window: if the attempt cannot happen by then (because a
        /// network rule pushes it later), the payment fails with
        /// `exceeded_retry_window`.
        latest: Option<Timestamp>,
    },
    /// Stop: the payment fails for this reason.
    Stop(FailureReason),
}

impl RetryDecision {
    /// Keeps the decision within a window ending at `end`: a retry that cannot start
    /// by then stops the payment (`exceeded_retry_window`), and a retry's latest time
    /// is never later than `end`. Strategies apply their own window with it, and the
    /// engine applies the payment's `retry_until` with it whatever the policy said:
    /// the one place the rule is written.
    pub fn within(self, end: Option<Timestamp>) -> RetryDecision {
        match (self, end) {
            (RetryDecision::RetryAt { not_before, .. }, Some(end)) if not_before > end => {
                RetryDecision::Stop(FailureReason::ExceededRetryWindow)
            }
            (RetryDecision::RetryAt { not_before, latest }, end) => RetryDecision::RetryAt {
                not_before,
                latest: match (latest, end) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                },
            },
            (decision, _) => decision,
        }
    }
}

/// A retry strategy.
pub trait RetryPolicy: Send + Sync + Debug {
    /// The policy's name (`none`, a configured policy's name, …).
    fn name(&self) -> &str;

    /// The decision after a failed attempt.
    fn decide(&self, context: &RetryContext<'_>) -> RetryDecision;

    /// Told the outcome of every authorization attempt the engine makes, under any
    /// strategy. Learning policies update their model here; others ignore it.
    fn observe(&self, _observation: &AttemptObservation<'_>) {}
}

/// The outcome of one authorization attempt, with what was known when it was sent.
#[derive(Debug, Clone, Copy)]
pub struct AttemptObservation<'a> {
    /// The payment (its `retry_details.attempts` counts this attempt).
    pub payment: &'a OffSessionPayment,
    /// The payment method's type and card facts.
    pub method: Option<&'a PaymentMethodDetails>,
    /// The attempt's number (1 = first).
    pub attempt_number: u32,
    /// When it was sent.
    pub at: Timestamp,
    /// When the payment's first attempt failed (None for a first attempt).
    pub first_failure_at: Option<Timestamp>,
    /// When the previous attempt of the payment was sent (None for a first attempt).
    pub previous_attempt_at: Option<Timestamp>,
    /// The decline before this attempt, if this attempt is a retry.
    pub previous_decline: Option<(&'a DeclineCodes, DeclineCategory)>,
    /// Whether the issuer approved.
    pub approved: bool,
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
