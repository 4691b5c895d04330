//! Which plan a payment follows: the learned model or the rule-based plan, chosen by
//! the recoveries each has made on its share of payments.

use super::*;

/// Evidence of the two plans: matured counts `[model failed, model recovered, rules
/// failed, rules recovered]`, and counts still inside the horizon by failure hour.
/// Both plans are compared on recoveries within the retry window of the failure,
/// counted only once the window has passed, so that a plan that recovers sooner is
/// not favoured by the lag.
#[derive(Debug, Default)]
pub(super) struct Cohorts {
    horizon_ms: i64,
    matured: [u64; 4],
    pending: std::collections::BTreeMap<(i64, usize), u64>,
}

impl Cohorts {
    /// Evidence compared over a window of `horizon_ms`.
    pub(super) fn new(horizon_ms: i64) -> Cohorts {
        Cohorts {
            horizon_ms,
            ..Cohorts::default()
        }
    }

    pub(super) fn add(&mut self, failed_at: Timestamp, slot: usize, now: Timestamp) {
        *self
            .pending
            .entry((failed_at.as_millis() / HOUR_MS, slot))
            .or_default() += 1;
        self.mature(now);
    }

    fn mature(&mut self, now: Timestamp) {
        let cut = (now.as_millis() - self.horizon_ms) / HOUR_MS;
        while let Some(entry) = self.pending.first_entry() {
            if entry.key().0 > cut {
                break;
            }
            let ((_, slot), count) = entry.remove_entry();
            self.matured[slot] += count;
        }
    }
}

/// Which plan a payment follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arm {
    Model,
    Rules,
}

impl SmartPolicy {
    pub(super) fn cohorts(&self) -> std::sync::MutexGuard<'_, Cohorts> {
        self.evidence.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn evidence(&self) -> [u64; 4] {
        self.cohorts().matured
    }

    pub(super) fn set_evidence(&self, values: [u64; 4]) {
        self.cohorts().matured = values;
    }

    /// The plan a payment follows, and whether it is in the evidence share.
    pub(super) fn arm(&self, payment_id: &str) -> (Arm, bool) {
        if !self.select_by_evidence {
            return (Arm::Model, false);
        }
        let u = (mix(hash_str(payment_id) ^ 0x0e71_de9c) >> 11) as f64 / (1u64 << 53) as f64;
        if u < self.evidence_share / 2.0 {
            return (Arm::Model, true);
        }
        if u < self.evidence_share {
            return (Arm::Rules, true);
        }
        let [mf, mr, rf, rr] = self.evidence();
        // Share of each plan's failed payments recovered within the horizon
        // (Laplace-smoothed). Until both have 100 matured failures the rule-based
        // plan, which needs no data, leads.
        let rate = |recovered: u64, failed: u64| (recovered as f64 + 1.0) / (failed as f64 + 2.0);
        if mf.min(rf) >= 100 && rate(mr, mf) > rate(rr, rf) {
            (Arm::Model, false)
        } else {
            (Arm::Rules, false)
        }
    }
}
