//! Strategies compared payment by payment: medians of hours to recovery over the
//! payments two strategies both recovered.

use std::collections::HashMap;

use super::{PairedHours, StrategyReport};

/// The median of `values` (the upper one of an even count; 0 when empty).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Each strategy's and `heuristic`'s median hours to recovery over the payments both
/// recovered: the plain medians are over each strategy's own recoveries, and a
/// strategy that recovers fewer, easier payments shows a shorter one.
pub(super) fn pair_with_heuristic(strategies: &mut [StrategyReport]) {
    let Some(heuristic) = strategies.iter().find(|s| s.strategy == "heuristic") else {
        return;
    };
    let by_charge: HashMap<usize, f64> = heuristic.recovery_hours.iter().copied().collect();
    let pairs: Vec<Option<PairedHours>> = strategies
        .iter()
        .map(|s| {
            let (own, theirs): (Vec<f64>, Vec<f64>) = s
                .recovery_hours
                .iter()
                .filter_map(|(charge, h)| by_charge.get(charge).map(|theirs| (*h, *theirs)))
                .unzip();
            (s.strategy != "heuristic" && !own.is_empty()).then(|| PairedHours {
                recovered_by_both: own.len() as u64,
                median_hours: median(own),
                heuristic_median_hours: median(theirs),
            })
        })
        .collect();
    for (s, pair) in strategies.iter_mut().zip(pairs) {
        s.paired_with_heuristic = pair;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(strategy: &str, recovery_hours: Vec<(usize, f64)>) -> StrategyReport {
        StrategyReport {
            strategy: strategy.to_owned(),
            guarded: true,
            payments: 10,
            first_attempt_failures: 10,
            recovered: recovery_hours.len() as u64,
            recovery_rate: 0.0,
            attempts: 0,
            attempts_per_payment: 0.0,
            retries_per_recovery: 0.0,
            median_hours_to_recovery: 0.0,
            percent_of_oracle: 0.0,
            network_rule_violations: 0,
            violations_by_rule: Default::default(),
            guard_blocked: 0,
            guard_deferred: 0,
            fines_avoided_usd: 0.0,
            recovered_by_day: Vec::new(),
            wall_seconds: 0.0,
            paired_with_heuristic: None,
            recovery_hours,
        }
    }

    /// A strategy that recovers only the quick payments has the shorter plain median;
    /// over the payments both recovered the two are compared like for like.
    #[test]
    fn medians_are_paired_over_the_payments_both_recovered() {
        let mut strategies = vec![
            report(
                "heuristic",
                vec![(0, 2.0), (1, 10.0), (2, 100.0), (3, 200.0)],
            ),
            report("smart", vec![(0, 4.0), (1, 20.0), (7, 1.0)]),
        ];
        pair_with_heuristic(&mut strategies);
        assert!(strategies[0].paired_with_heuristic.is_none());
        let paired = strategies[1].paired_with_heuristic.as_ref().unwrap();
        assert_eq!(paired.recovered_by_both, 2);
        assert_eq!(
            (paired.median_hours, paired.heuristic_median_hours),
            (20.0, 10.0)
        );
    }
}
