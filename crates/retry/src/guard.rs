//! The card-network rules guard. It wraps every retry policy, so that no strategy —
//! however clever or however buggy — schedules an attempt the networks fine or forbid:
//! - never retry Visa category 1 codes or Mastercard advice codes 03 / 21;
//! - Mastercard advice codes 24–30 set the earliest next attempt;
//! - per-card caps across all payments of the card: Visa reattempts in 30 days,
//!   Mastercard declines in 24 hours and per amount in 30 days.
//!
//! The engine checks [`NetworkRules::earliest_allowed`] again just before it sends a
//! retry, because other payments of the same card may have been attempted since the
//! decision.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use offsession_core::policy::terminal_reason;
use offsession_core::{
    AttemptObservation, CardAttempt, CardBrand, DeclineCodes, FailureReason, RetryContext,
    RetryDecision, RetryPolicy, Timestamp,
};

pub use crate::declines::NetworkRules;

const DAY_MS: i64 = 86_400_000;
const MONTH_MS: i64 = 30 * DAY_MS;

/// Counts of the guard's interventions.
#[derive(Debug, Default)]
pub struct GuardCounters {
    /// Retries the guard refused (never-retry codes, or a window the rules push past).
    pub blocked: AtomicU64,
    /// Retries the guard moved later (advice-code waits, caps).
    pub deferred: AtomicU64,
}

impl NetworkRules {
    /// Whether the networks forbid any retry after this decline on a card of `brand`.
    pub fn forbids_retry(&self, brand: Option<&CardBrand>, codes: &DeclineCodes) -> bool {
        match brand {
            Some(CardBrand::Visa) => codes
                .network_decline_code
                .as_deref()
                .is_some_and(|c| self.visa_never_retry.contains(c)),
            Some(CardBrand::Mastercard) => codes
                .network_advice_code
                .as_deref()
                .is_some_and(|c| self.mastercard_never_retry.contains(c)),
            _ => false,
        }
    }

    /// The earliest time, at or after `at`, at which one more reattempt of `amount`
    /// on a card of `brand` with `history` (every attempt on the card, any payment)
    /// keeps within the caps.
    pub fn earliest_allowed(
        &self,
        brand: Option<&CardBrand>,
        history: &[CardAttempt],
        amount: i64,
        at: Timestamp,
    ) -> Timestamp {
        let mut t = at.as_millis();
        if let Some(until) = self.barred_until(brand, history) {
            t = t.max(until.as_millis());
        }
        // Each step moves `t` past the oldest attempt that keeps a cap full; history is
        // finite, so this ends after at most `history.len()` moves per rule.
        for _ in 0..=history.len() * 3 + 1 {
            let moved = match brand {
                Some(CardBrand::Visa) => push_past(
                    history.iter().filter(|a| a.attempt_number >= 2),
                    t,
                    MONTH_MS,
                    self.visa_max_reattempts_30d,
                ),
                Some(CardBrand::Mastercard) => push_past(
                    history.iter().filter(|a| a.declined || !a.answered),
                    t,
                    DAY_MS,
                    self.mastercard_max_declines_24h,
                )
                .or_else(|| {
                    push_past(
                        history
                            .iter()
                            .filter(|a| (a.declined || !a.answered) && a.amount == amount),
                        t,
                        MONTH_MS,
                        self.mastercard_max_declines_30d_same_amount,
                    )
                }),
                _ => None,
            };
            match moved {
                Some(later) => t = later,
                None => break,
            }
        }
        Timestamp::from_millis(t)
    }

    /// Until when a card is barred by a Mastercard `never_retry` advice code (03, 21)
    /// in its history: no attempt of any payment on it, first attempts included.
    pub fn barred_until(
        &self,
        brand: Option<&CardBrand>,
        history: &[CardAttempt],
    ) -> Option<Timestamp> {
        if brand != Some(&CardBrand::Mastercard) || self.mastercard_never_retry_days == 0 {
            return None;
        }
        history
            .iter()
            .filter(|a| {
                a.advice_code
                    .as_deref()
                    .is_some_and(|c| self.mastercard_never_retry.contains(c))
            })
            .map(|a| a.at.as_millis())
            .max()
            .map(|at| {
                Timestamp::from_millis(at + i64::from(self.mastercard_never_retry_days) * DAY_MS)
            })
    }

    /// The wait a Mastercard advice code 24–30 imposes after a decline.
    pub fn advice_wait(&self, brand: Option<&CardBrand>, codes: &DeclineCodes) -> Option<Duration> {
        if brand != Some(&CardBrand::Mastercard) {
            return None;
        }
        codes
            .network_advice_code
            .as_deref()
            .and_then(|mac| self.mastercard_retry_after.get(mac))
            .copied()
    }

    /// Applies the rules to a policy's decision.
    pub fn apply(
        &self,
        context: &RetryContext<'_>,
        decision: RetryDecision,
        counters: Option<&GuardCounters>,
    ) -> RetryDecision {
        let RetryDecision::RetryAt { not_before, latest } = decision else {
            return decision;
        };
        let count = |c: fn(&GuardCounters) -> &AtomicU64| {
            if let Some(counters) = counters {
                c(counters).fetch_add(1, Ordering::Relaxed);
            }
        };
        if let Some(reason) = terminal_reason(context.category) {
            count(|c| &c.blocked);
            return RetryDecision::Stop(reason);
        }
        let brand = context
            .method
            .and_then(|m| m.card.as_ref())
            .map(|c| &c.brand);
        if context
            .method
            .is_some_and(|m| m.payment_method_type.is_bank_debit())
            && context.payment.retry_details.attempts >= self.debit_max_presentments
        {
            count(|c| &c.blocked);
            return RetryDecision::Stop(FailureReason::RetriesExhausted);
        }
        if self.forbids_retry(brand, context.decline) {
            count(|c| &c.blocked);
            return RetryDecision::Stop(FailureReason::RejectedByPartner);
        }
        let mut t = not_before.max(context.now);
        if let Some(wait) = self.advice_wait(brand, context.decline) {
            t = t.max(context.now.plus(wait));
        }
        t = self.earliest_allowed(
            brand,
            context.card_history,
            context.payment.amount_requested.value,
            t,
        );
        if t > not_before.max(context.now) {
            count(|c| &c.deferred);
        }
        if latest.is_some_and(|latest| t > latest) {
            count(|c| &c.blocked);
            return RetryDecision::Stop(FailureReason::ExceededRetryWindow);
        }
        RetryDecision::RetryAt {
            not_before: t,
            latest,
        }
    }
}

/// How far ahead of the time checked an attempt may be stamped and still count: an
/// instance whose clock runs ahead stamps real attempts "in the future". Not further:
/// a card's history also holds attempts made on test clocks set far ahead, which
/// say nothing of the card today.
const MAX_CLOCK_SKEW_MS: i64 = 10 * 60 * 1_000;

/// If the attempts after `t - window` (up to [`MAX_CLOCK_SKEW_MS`] after `t`) already
/// fill `cap`, the earliest time after `t` at which one of them leaves the window.
fn push_past<'a>(
    attempts: impl Iterator<Item = &'a CardAttempt>,
    t: i64,
    window: i64,
    cap: u32,
) -> Option<i64> {
    if cap == 0 {
        // 0 switches the cap off.
        return None;
    }
    let mut inside: Vec<i64> = attempts
        .map(|a| a.at.as_millis())
        .filter(|&at| at > t - window && at <= t + MAX_CLOCK_SKEW_MS)
        .collect();
    if (inside.len() as u64) < u64::from(cap) {
        return None;
    }
    inside.sort_unstable();
    // Drop the oldest `len - cap + 1` so that, with the new attempt, `cap` is kept.
    let leave = inside.len() + 1 - cap as usize;
    Some(inside[leave - 1] + window)
}

/// A retry policy wrapped by the network rules.
#[derive(Debug)]
pub struct NetworkGuard {
    inner: Arc<dyn RetryPolicy>,
    rules: NetworkRules,
    counters: GuardCounters,
}

impl NetworkGuard {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn RetryPolicy>, rules: NetworkRules) -> NetworkGuard {
        NetworkGuard {
            inner,
            rules,
            counters: GuardCounters::default(),
        }
    }

    /// How often the guard intervened.
    pub fn counters(&self) -> &GuardCounters {
        &self.counters
    }
}

impl RetryPolicy for NetworkGuard {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn decide(&self, context: &RetryContext<'_>) -> RetryDecision {
        let decision = self.inner.decide(context);
        self.rules.apply(context, decision, Some(&self.counters))
    }

    fn observe(&self, observation: &AttemptObservation<'_>) {
        self.inner.observe(observation);
    }
}
