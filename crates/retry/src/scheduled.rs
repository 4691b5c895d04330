//! The `none` and `scheduled` strategies.
//!
//! A scheduled policy is a fixed list of offsets from the first attempt: Stripe's
//! recommended "8 tries within 2 weeks" is seven offsets and a 14-day window. Hard
//! declines and declines that need new card data or the customer stop at once,
//! whatever the schedule says: retrying them only adds network fines.

use std::time::Duration;

use offsession_core::policy::terminal_reason;
use offsession_core::{FailureReason, RetryContext, RetryDecision, RetryPolicy};
use serde::{Deserialize, Serialize};

use crate::RetryConfigError;

/// Never retries: the first decline is final.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoRetry;

impl RetryPolicy for NoRetry {
    fn name(&self) -> &str {
        "none"
    }

    fn decide(&self, context: &RetryContext<'_>) -> RetryDecision {
        RetryDecision::Stop(
            terminal_reason(context.category).unwrap_or(FailureReason::RetriesExhausted),
        )
    }
}

/// A scheduled policy as written in configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduledPolicyConfig {
    /// Offsets from the first attempt of each retry, e.g. `["1d", "3d", "5d"]`.
    #[serde(with = "offsession_core::duration::text_list")]
    pub offsets: Vec<Duration>,
    /// Total authorization attempts including the first; default `offsets + 1`.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// No attempt later than this after the first attempt, e.g. `"14d"`.
    #[serde(with = "offsession_core::duration::text")]
    pub window: Duration,
}

/// Fixed retry times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledPolicy {
    name: String,
    offsets: Vec<Duration>,
    max_attempts: u32,
    window: Duration,
}

impl ScheduledPolicy {
    /// Builds a policy; offsets must increase and fit in the window.
    pub fn new(
        name: &str,
        config: &ScheduledPolicyConfig,
    ) -> Result<ScheduledPolicy, RetryConfigError> {
        let err = |message: String| RetryConfigError::Policy {
            policy: name.to_owned(),
            message,
        };
        let offsets = config.offsets.clone();
        let window = config.window;
        if offsets.windows(2).any(|w| w[1] <= w[0]) {
            return Err(err("`offsets` must strictly increase".into()));
        }
        if offsets.first().is_some_and(|o| o.is_zero()) {
            return Err(err("offsets must be greater than zero".into()));
        }
        if let Some(last) = offsets.last() {
            if *last > window {
                return Err(err(format!(
                    "the last offset ({}s) is past the window ({}s)",
                    last.as_secs(),
                    window.as_secs()
                )));
            }
        }
        let most = offsets.len() as u32 + 1;
        let max_attempts = config.max_attempts.unwrap_or(most);
        if max_attempts == 0 || max_attempts > most {
            return Err(err(format!(
                "`max_attempts` must be between 1 and offsets + 1 ({most})"
            )));
        }
        Ok(ScheduledPolicy {
            name: name.to_owned(),
            offsets,
            max_attempts,
            window,
        })
    }

    /// Stripe Billing's recommended default: 8 tries within 2 weeks.
    pub fn stripe_recommended() -> ScheduledPolicy {
        ScheduledPolicy {
            name: "stripe_recommended".into(),
            offsets: [1, 3, 5, 7, 9, 11, 13]
                .into_iter()
                .map(|d| Duration::from_secs(d * 86_400))
                .collect(),
            max_attempts: 8,
            window: Duration::from_secs(14 * 86_400),
        }
    }

    /// Total attempts allowed.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }
}

impl RetryPolicy for ScheduledPolicy {
    fn name(&self) -> &str {
        &self.name
    }

    fn decide(&self, context: &RetryContext<'_>) -> RetryDecision {
        if let Some(reason) = terminal_reason(context.category) {
            return RetryDecision::Stop(reason);
        }
        let attempts = context.payment.retry_details.attempts;
        if attempts >= self.max_attempts {
            return RetryDecision::Stop(FailureReason::RetriesExhausted);
        }
        let Some(offset) = self.offsets.get(attempts.saturating_sub(1) as usize) else {
            return RetryDecision::Stop(FailureReason::RetriesExhausted);
        };
        let window_end = context.window_end(self.window);
        RetryDecision::RetryAt {
            not_before: context.first_attempt_at.plus(*offset).max(context.now),
            latest: None,
        }
        .within(Some(window_end))
    }
}
