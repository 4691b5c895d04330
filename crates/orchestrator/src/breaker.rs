//! A circuit breaker per processor: too many faults in a window open it (the
//! processor leaves routing), after a cool-down one probe is let through
//! (half-open), and a good answer closes it again. Declines are the issuer's answers
//! and count as good; processor faults and unknown outcomes count as bad.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use offsession_core::Timestamp;
use serde::{Deserialize, Serialize};

/// Breaker settings (`[circuit_breaker]`), one breaker per processor.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Outcomes looked at: older ones no longer count.
    #[serde(with = "offsession_core::duration::text")]
    pub window: Duration,
    /// Fewest outcomes in the window before the breaker may open.
    pub min_calls: u32,
    /// Share of bad outcomes that opens it.
    pub failure_rate: f64,
    /// How long it stays open before a probe.
    #[serde(with = "offsession_core::duration::text")]
    pub open_for: Duration,
}

impl BreakerConfig {
    /// Refuses settings under which the breaker never opens, never closes or
    /// divides by zero; the error names the setting.
    pub fn check(&self) -> Result<(), String> {
        if !(self.failure_rate > 0.0 && self.failure_rate <= 1.0) {
            return Err(format!(
                "`failure_rate` must be above 0 and at most 1 (got {})",
                self.failure_rate
            ));
        }
        if self.window < Duration::from_secs(1) {
            return Err(format!(
                "`window` must be at least 1s (got {:?})",
                self.window
            ));
        }
        if self.open_for.is_zero() {
            return Err("`open_for` must be longer than 0s".into());
        }
        if self.min_calls == 0 {
            return Err("`min_calls` must be at least 1".into());
        }
        Ok(())
    }
}

impl Default for BreakerConfig {
    fn default() -> BreakerConfig {
        BreakerConfig {
            window: Duration::from_secs(60),
            min_calls: 20,
            failure_rate: 0.5,
            open_for: Duration::from_secs(30),
        }
    }
}

/// Breaker state, as the metrics gauge shows it (0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Routing to the processor.
    Closed = 0,
    /// One probe allowed.
    HalfOpen = 1,
    /// Out of routing.
    Open = 2,
}

#[derive(Debug)]
struct Inner {
    /// Outcomes per whole second of the window: (second, total, bad). Memory is bound
    /// by the window's length in seconds, not by traffic.
    buckets: VecDeque<(i64, u32, u32)>,
    /// Totals over `buckets`, kept in step so a record is O(1) amortized.
    total: u32,
    bad: u32,
    open_until: Option<Timestamp>,
    /// When the half-open probe was let through. A probe whose answer is not recorded
    /// within [`PROBE_EXPIRY`] (or `open_for`, if longer) no longer blocks the next:
    /// its attempt was never sent (a write-ahead that lost its compare-and-set).
    probing: Option<Timestamp>,
}

impl Inner {
    fn reset(&mut self) {
        self.buckets.clear();
        self.total = 0;
        self.bad = 0;
    }
}

/// How long a probe may go unanswered before another is let through: longer than a
/// processor call takes with its transport retries (Stripe's defaults: three tries
/// of 30 s and their backoff), so a slow probe is not joined by a second.
pub const PROBE_EXPIRY: Duration = Duration::from_secs(300);

/// One processor's breaker.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            inner: Mutex::new(Inner {
                buckets: VecDeque::new(),
                total: 0,
                bad: 0,
                open_until: None,
                probing: None,
            }),
        }
    }

    /// Whether a call may go to the processor now; in half-open state only the first
    /// caller gets the probe.
    pub fn allow(&self, now: Timestamp) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let expiry = self.config.open_for.max(PROBE_EXPIRY);
        match inner.open_until {
            None => true,
            Some(until) if now < until => false,
            Some(_) if inner.probing.is_some_and(|at| now < at.plus(expiry)) => false,
            Some(_) => {
                inner.probing = Some(now);
                true
            }
        }
    }

    /// When an open breaker lets a probe through; `None` while closed.
    pub fn open_until(&self) -> Option<Timestamp> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .open_until
    }

    /// Takes in the state saved by any instance: open until `until`, or closed. It
    /// changes this breaker only where it says something new: opened (or opened
    /// until later) by another instance, or closed by another instance's good probe.
    /// A state that matches this one's keeps its counts and its probe, so reloading
    /// it often (every heartbeat) neither clears the failures counted towards opening
    /// nor lets a second probe through.
    pub fn restore(&self, until: Option<Timestamp>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match (inner.open_until, until) {
            (None, None) => {}
            (Some(mine), Some(saved)) if saved <= mine => {}
            (_, saved) => {
                inner.reset();
                inner.probing = None;
                inner.open_until = saved;
            }
        }
    }

    /// The state at `now`.
    pub fn state(&self, now: Timestamp) -> BreakerState {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match inner.open_until {
            None => BreakerState::Closed,
            Some(until) if now < until => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// Records an outcome; returns the state after it.
    pub fn record(&self, now: Timestamp, good: bool) -> BreakerState {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.open_until.is_some() {
            if inner.probing.is_some() || now >= inner.open_until.unwrap_or(now) {
                inner.probing = None;
                if good {
                    inner.open_until = None;
                    inner.reset();
                    return BreakerState::Closed;
                }
                inner.open_until = Some(now.plus(self.config.open_for));
                return BreakerState::Open;
            }
            return BreakerState::Open;
        }
        let second = now.as_millis().div_euclid(1_000);
        match inner.buckets.back_mut() {
            Some((at, total, bad)) if *at == second => {
                *total += 1;
                *bad += u32::from(!good);
            }
            _ => inner.buckets.push_back((second, 1, u32::from(!good))),
        }
        inner.total += 1;
        inner.bad += u32::from(!good);
        let horizon = second - self.config.window.as_secs() as i64;
        while let Some(&(at, total, bad)) = inner.buckets.front() {
            if at > horizon {
                break;
            }
            inner.buckets.pop_front();
            inner.total -= total;
            inner.bad -= bad;
        }
        if inner.total >= self.config.min_calls
            && f64::from(inner.bad) / f64::from(inner.total) >= self.config.failure_rate
        {
            inner.open_until = Some(now.plus(self.config.open_for));
            inner.reset();
            return BreakerState::Open;
        }
        BreakerState::Closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_millis(s * 1000)
    }

    #[test]
    fn opens_on_a_failure_rate_probes_after_the_cool_down_and_closes_on_success() {
        let breaker = Breaker::new(BreakerConfig {
            window: Duration::from_secs(60),
            min_calls: 4,
            failure_rate: 0.5,
            open_for: Duration::from_secs(30),
        });
        breaker.record(at(0), true);
        breaker.record(at(1), false);
        breaker.record(at(2), true);
        assert_eq!(
            breaker.record(at(3), false),
            BreakerState::Open,
            "2 of 4 bad"
        );
        assert!(!breaker.allow(at(10)));
        assert_eq!(breaker.state(at(33)), BreakerState::HalfOpen);
        assert!(breaker.allow(at(33)), "the probe");
        assert!(!breaker.allow(at(33)), "one probe at a time");
        assert_eq!(
            breaker.record(at(34), false),
            BreakerState::Open,
            "a failed probe reopens"
        );
        assert!(!breaker.allow(at(40)));
        assert!(breaker.allow(at(65)));
        assert_eq!(breaker.record(at(65), true), BreakerState::Closed);
        assert!(breaker.allow(at(66)));
    }

    #[test]
    fn memory_is_bound_by_the_window_not_by_traffic() {
        let breaker = Breaker::new(BreakerConfig::default());
        for ms in 0..200_000 {
            breaker.record(Timestamp::from_millis(ms * 3), ms % 10 != 0);
        }
        let inner = breaker.inner.lock().unwrap();
        assert!(inner.buckets.len() <= 61, "{} buckets", inner.buckets.len());
        assert_eq!(inner.total, inner.buckets.iter().map(|b| b.1).sum::<u32>());
        assert_eq!(inner.bad, inner.buckets.iter().map(|b| b.2).sum::<u32>());
    }

    #[test]
    fn reloading_the_same_state_keeps_the_counts_and_the_probe() {
        let breaker = Breaker::new(BreakerConfig {
            window: Duration::from_secs(60),
            min_calls: 4,
            failure_rate: 0.5,
            open_for: Duration::from_secs(30),
        });
        // Reloaded "closed" between bad outcomes (a worker's heartbeat): they add up.
        for s in 0..3 {
            breaker.record(at(s), false);
            breaker.restore(None);
        }
        assert_eq!(breaker.record(at(3), false), BreakerState::Open);
        let until = breaker.open_until();
        // A failed probe reopens it until later; the older saved time does not undo it.
        assert!(breaker.allow(at(40)));
        breaker.restore(until);
        assert!(!breaker.allow(at(40)), "one probe at a time");
        assert_eq!(breaker.record(at(41), false), BreakerState::Open);
        breaker.restore(until);
        assert!(
            !breaker.allow(at(50)),
            "reopened until 71, not the saved 33"
        );
        // Another instance's later opening, and its closing, are taken in.
        breaker.restore(Some(at(100)));
        assert!(!breaker.allow(at(80)));
        breaker.restore(None);
        assert!(breaker.allow(at(80)));
    }

    #[test]
    fn a_probe_never_answered_does_not_block_the_next() {
        let breaker = Breaker::new(BreakerConfig {
            window: Duration::from_secs(60),
            min_calls: 1,
            failure_rate: 0.5,
            open_for: Duration::from_secs(30),
        });
        assert_eq!(breaker.record(at(0), false), BreakerState::Open);
        assert!(
            breaker.allow(at(31)),
            "the probe, whose attempt is never sent"
        );
        assert!(!breaker.allow(at(40)));
        assert!(
            !breaker.allow(at(130)),
            "a slow probe is not joined by a second"
        );
        assert!(
            breaker.allow(at(331)),
            "a new probe once the first is overdue"
        );
    }

    #[test]
    fn too_few_calls_never_open_it() {
        let breaker = Breaker::new(BreakerConfig::default());
        for s in 0..10 {
            assert_eq!(breaker.record(at(s), false), BreakerState::Closed);
        }
    }
}
