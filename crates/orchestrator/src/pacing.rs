//! Pacing: a rate limit per processor (governor, GCRA, on the std monotonic clock),
//! slowed further while the processor answers 429.
//!
//! Attempts wait for a permit instead of failing. On a 429 the pace drops to 70 %
//! of what it was (never below 10 % of the quota); every answer that is not a 429
//! gives back 1 % of the quota, so the pace returns to the full quota once the
//! processor stops complaining.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::DefaultClock;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use serde::Deserialize;

/// A processor's rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Requests per second.
    pub per_second: u32,
    /// Requests allowed at once above the steady rate.
    #[serde(default = "default_burst")]
    pub burst: u32,
}

impl RateLimit {
    /// Refuses a limit that paces nothing: `per_second = 0` would switch pacing off
    /// without a word, `burst = 0` would never grant a permit.
    pub fn check(&self) -> Result<(), String> {
        if self.per_second == 0 {
            return Err(
                "`per_second` must be at least 1 (leave `rate_limit` out for no pacing)".into(),
            );
        }
        if self.burst == 0 {
            return Err("`burst` must be at least 1".into());
        }
        Ok(())
    }
}

fn default_burst() -> u32 {
    1
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;

/// A paced processor.
#[derive(Debug)]
pub struct Pacer {
    /// Replaced when the number of instances sharing the quota changes.
    limiter: std::sync::RwLock<std::sync::Arc<Limiter>>,
    per_second: u32,
    burst: u32,
    /// Instances sharing the processor account's quota (this one included).
    sharing: std::sync::atomic::AtomicU32,
    /// Pace as a fraction of the quota, in millionths.
    pace: AtomicU64,
    rate_limited: AtomicU64,
}

const FULL: u64 = 1_000_000;

impl Pacer {
    /// A pacer for `limit`; `None` when the limit is zero.
    pub fn new(limit: RateLimit) -> Option<Pacer> {
        let per_second = NonZeroU32::new(limit.per_second)?;
        let burst = NonZeroU32::new(limit.burst.max(1))?;
        Some(Pacer {
            limiter: std::sync::RwLock::new(std::sync::Arc::new(RateLimiter::direct(
                Quota::per_second(per_second).allow_burst(burst),
            ))),
            per_second: limit.per_second,
            burst: limit.burst.max(1),
            sharing: std::sync::atomic::AtomicU32::new(1),
            pace: AtomicU64::new(FULL),
            rate_limited: AtomicU64::new(0),
        })
    }

    /// Waits for a permit; returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        let started = Instant::now();
        let current = || {
            self.limiter
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        };
        // A permit of a limiter replaced while it was awaited (the share changed) is
        // the old rate's: wait again on the new one, so that the waiters take up the
        // new share too.
        loop {
            let limiter = current();
            limiter.until_ready().await;
            if std::sync::Arc::ptr_eq(&limiter, &current()) {
                break;
            }
        }
        let pace = self.pace.load(Ordering::Relaxed).max(1);
        if pace < FULL {
            // Below the full quota: stretch the interval between permits.
            let share = f64::from(self.per_second) / f64::from(self.sharing().max(1));
            let interval = 1.0 / share;
            let extra = interval * (FULL as f64 / pace as f64 - 1.0);
            tokio_sleep(Duration::from_secs_f64(extra)).await;
        }
        started.elapsed()
    }

    /// Shares the quota among `instances` engine instances sending to the same
    /// processor account: this one then paces at `per_second / instances` (and a burst
    /// of `burst / instances`, at least 1), so together they stay within the quota.
    pub fn share_among(&self, instances: u32) {
        let instances = instances.max(1);
        if self.sharing.swap(instances, Ordering::Relaxed) == instances {
            return;
        }
        let period = Duration::from_secs_f64(f64::from(instances) / f64::from(self.per_second));
        let burst = NonZeroU32::new((self.burst / instances).max(1)).unwrap_or(NonZeroU32::MIN);
        if let Some(quota) = Quota::with_period(period) {
            let limiter = RateLimiter::direct(quota.allow_burst(burst));
            // A new limiter starts with its whole burst, which the old one may have
            // spent a moment ago: started empty, the change of share never lets a
            // burst through on top of what was just sent.
            let _ = limiter.check_n(burst);
            *self.limiter.write().unwrap_or_else(|p| p.into_inner()) = std::sync::Arc::new(limiter);
        }
    }

    /// This instance's share of the quota, per second.
    pub fn per_second_share(&self) -> f64 {
        f64::from(self.per_second) / f64::from(self.sharing().max(1))
    }

    /// How many instances the quota is shared among.
    pub fn sharing(&self) -> u32 {
        self.sharing.load(Ordering::Relaxed)
    }

    /// Adjusts the pace after an answer.
    pub fn observe(&self, rate_limited: bool) {
        if rate_limited {
            self.rate_limited.fetch_add(1, Ordering::Relaxed);
            let _ = self
                .pace
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                    Some((p * 7 / 10).max(FULL / 10))
                });
        } else {
            let _ = self
                .pace
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                    (p < FULL).then(|| (p + FULL / 100).min(FULL))
                });
        }
    }

    /// The current pace as a fraction of the quota.
    pub fn pace(&self) -> f64 {
        self.pace.load(Ordering::Relaxed) as f64 / FULL as f64
    }

    /// 429s seen.
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }
}

async fn tokio_sleep(duration: Duration) {
    // governor's futures-timer is already a dependency; use it so the orchestrator
    // needs no tokio runtime features of its own.
    futures_timer::Delay::new(duration).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_429_slows_the_pace_and_good_answers_restore_it() {
        let pacer = Pacer::new(RateLimit {
            per_second: 100,
            burst: 1,
        })
        .unwrap();
        assert_eq!(pacer.pace(), 1.0);
        pacer.observe(true);
        assert!((pacer.pace() - 0.7).abs() < 1e-9);
        for _ in 0..10 {
            pacer.observe(true);
        }
        assert!((pacer.pace() - 0.1).abs() < 1e-9, "floor at 10 %");
        for _ in 0..200 {
            pacer.observe(false);
        }
        assert_eq!(pacer.pace(), 1.0);
        assert_eq!(pacer.rate_limited(), 11);
        assert!(Pacer::new(RateLimit {
            per_second: 0,
            burst: 1
        })
        .is_none());
    }

    #[test]
    fn a_new_share_starts_without_a_burst() {
        let pacer = Pacer::new(RateLimit {
            per_second: 10,
            burst: 10,
        })
        .unwrap();
        let limiter = pacer.limiter.read().unwrap().clone();
        assert!(
            limiter
                .check_n(NonZeroU32::new(10).unwrap())
                .is_ok_and(|r| r.is_ok()),
            "the configured burst at the start"
        );
        pacer.share_among(2);
        let limiter = pacer.limiter.read().unwrap().clone();
        assert!(
            limiter.check().is_err(),
            "no new burst on a change of share"
        );
    }
}
