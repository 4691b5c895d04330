//! The `heuristic` strategy: fixed rules per decline category.
//!
//! - transient faults (processing errors, issuer unavailable) are retried soon;
//! - issuer declines back off over days;
//! - insufficient funds are retried at likely funding times in the card's or the bank
//!   account's country — the 1st and 15th of the month and Fridays (common paydays),
//!   at a morning hour, after the money has landed.
//!
//! Bank debits get fewer attempts: NACHA allows an ACH debit returned for
//! insufficient funds to be presented at most twice more, and SEPA practice is
//! similar, so debits stop after `debit_max_attempts`.

use std::time::Duration;

use offsession_core::policy::terminal_reason;
use offsession_core::{
    DeclineCategory, FailureReason, RetryContext, RetryDecision, RetryPolicy, Timestamp,
};
use serde::{Deserialize, Serialize};

use crate::calendar::{local, local_midnight, utc_offset_hours};
use crate::RetryConfigError;

/// Heuristic settings as written in configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeuristicConfig {
    /// Total attempts for cards.
    pub max_attempts: u32,
    /// Total attempts for bank debits.
    pub debit_max_attempts: u32,
    /// No attempt later than this after the first.
    #[serde(with = "offsession_core::duration::text")]
    pub window: Duration,
    /// Waits after transient declines, by retry number (the last repeats).
    #[serde(with = "offsession_core::duration::text_list")]
    pub transient_waits: Vec<Duration>,
    /// Waits after issuer declines, by retry number (the last repeats).
    #[serde(with = "offsession_core::duration::text_list")]
    pub issuer_waits: Vec<Duration>,
    /// Local hour at which funds retries are made.
    pub funding_hour: u32,
    /// Least time between a funds decline and its retry.
    #[serde(with = "offsession_core::duration::text")]
    pub funds_min_wait: Duration,
    /// Least time between a bank debit's funds return and its next presentment, by
    /// retry number (the last repeats); empty (the default): `funds_min_wait`, as for
    /// cards.
    #[serde(with = "offsession_core::duration::text_list")]
    pub debit_funds_waits: Vec<Duration>,
}

impl Default for HeuristicConfig {
    fn default() -> HeuristicConfig {
        HeuristicConfig {
            max_attempts: 6,
            debit_max_attempts: 3,
            window: Duration::from_secs(28 * DAY),
            transient_waits: vec![
                Duration::from_secs(HOUR),
                Duration::from_secs(6 * HOUR),
                Duration::from_secs(DAY),
            ],
            issuer_waits: [1, 3, 5, 7]
                .into_iter()
                .map(|d| Duration::from_secs(d * DAY))
                .collect(),
            funding_hour: 9,
            funds_min_wait: Duration::from_secs(12 * HOUR),
            debit_funds_waits: Vec::new(),
        }
    }
}

/// The heuristic strategy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeuristicPolicy {
    max_attempts: u32,
    debit_max_attempts: u32,
    window: Duration,
    transient_waits: Vec<Duration>,
    issuer_waits: Vec<Duration>,
    funding_hour: u32,
    funds_min_wait: Duration,
    debit_funds_waits: Vec<Duration>,
}

const HOUR: u64 = 3_600;
const DAY: u64 = 86_400;

impl HeuristicPolicy {
    /// Builds the policy from its settings.
    pub fn new(config: &HeuristicConfig) -> Result<HeuristicPolicy, RetryConfigError> {
        let err = |message: &str| RetryConfigError::Policy {
            policy: "heuristic".into(),
            message: message.into(),
        };
        let policy = HeuristicPolicy {
            max_attempts: config.max_attempts,
            debit_max_attempts: config.debit_max_attempts,
            window: config.window,
            transient_waits: config.transient_waits.clone(),
            issuer_waits: config.issuer_waits.clone(),
            funding_hour: config.funding_hour,
            funds_min_wait: config.funds_min_wait,
            debit_funds_waits: config.debit_funds_waits.clone(),
        };
        if policy.transient_waits.is_empty() || policy.issuer_waits.is_empty() {
            return Err(err(
                "`transient_waits` and `issuer_waits` need at least one wait",
            ));
        }
        if policy.funding_hour > 23 {
            return Err(err("`funding_hour` must be 0–23"));
        }
        if policy.max_attempts == 0 || policy.debit_max_attempts == 0 {
            return Err(err("attempt limits must be at least 1"));
        }
        Ok(policy)
    }

    /// The next likely funding time at or after `earliest` in a place `offset` hours
    /// east of UTC: the 1st, 2nd, 15th or 16th of the month, or a Friday, at the
    /// funding hour.
    pub fn next_funding_time(&self, earliest: Timestamp, offset: i32) -> Timestamp {
        let mut day = local_midnight(earliest, offset);
        for _ in 0..40 {
            let at = day.plus(Duration::from_secs(u64::from(self.funding_hour) * 3_600));
            let cal = local(at, offset);
            let payday = matches!(cal.day, 1 | 2 | 15 | 16) || cal.weekday == 5;
            if payday && at >= earliest {
                return at;
            }
            day = day.plus(Duration::from_secs(86_400));
        }
        earliest
    }
}

impl RetryPolicy for HeuristicPolicy {
    fn name(&self) -> &str {
        "heuristic"
    }

    fn decide(&self, context: &RetryContext<'_>) -> RetryDecision {
        if let Some(reason) = terminal_reason(context.category) {
            return RetryDecision::Stop(reason);
        }
        let attempts = context.payment.retry_details.attempts;
        let debit = context
            .method
            .is_some_and(|m| m.payment_method_type.is_bank_debit());
        let limit = if debit {
            self.debit_max_attempts
        } else {
            self.max_attempts
        };
        if attempts >= limit {
            return RetryDecision::Stop(FailureReason::RetriesExhausted);
        }
        let retry = attempts.saturating_sub(1) as usize;
        let pick = |waits: &[Duration]| waits[retry.min(waits.len() - 1)];
        let next = match context.category {
            DeclineCategory::SoftTransient => context.now.plus(pick(&self.transient_waits)),
            DeclineCategory::SoftFunds => {
                let country = context.method.and_then(|m| m.country());
                let wait = if debit && !self.debit_funds_waits.is_empty() {
                    pick(&self.debit_funds_waits)
                } else {
                    self.funds_min_wait
                };
                self.next_funding_time(context.now.plus(wait), utc_offset_hours(country))
            }
            _ => context.now.plus(pick(&self.issuer_waits)),
        };
        RetryDecision::RetryAt {
            not_before: next,
            latest: None,
        }
        .within(Some(context.window_end(self.window)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn funding_times_are_paydays_at_the_funding_hour() {
        let policy = HeuristicPolicy::new(&HeuristicConfig::default()).unwrap();
        // Tuesday 2026-01-06 10:00Z; next payday in the US is Friday the 9th, 09:00 local.
        let at = Timestamp::parse_rfc3339("2026-01-06T10:00:00Z").unwrap();
        assert_eq!(
            policy.next_funding_time(at, -5).to_string(),
            "2026-01-09T14:00:00.000Z"
        );
        // Tuesday 2026-01-13: the 15th (Thursday) comes first.
        let at = Timestamp::parse_rfc3339("2026-01-13T10:00:00Z").unwrap();
        assert_eq!(
            policy.next_funding_time(at, 0).to_string(),
            "2026-01-15T09:00:00.000Z"
        );
    }
}
