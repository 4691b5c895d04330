//! The comparison report of `offsession simulate`: per-strategy figures, the text
//! table and the SVG chart.

use super::*;

/// One strategy's results.
#[derive(Debug, Clone, Serialize)]
pub struct StrategyReport {
    /// Strategy name.
    pub strategy: String,
    /// Whether the network-rules guard was on (off only for `reckless_unguarded`).
    pub guarded: bool,
    /// Payments created.
    pub payments: u64,
    /// Payments whose first attempt failed.
    pub first_attempt_failures: u64,
    /// Of those, payments that succeeded on a retry.
    pub recovered: u64,
    /// `recovered / first_attempt_failures`.
    pub recovery_rate: f64,
    /// Authorization attempts.
    pub attempts: u64,
    /// Authorization attempts divided by payments (1.0: no retries).
    pub attempts_per_payment: f64,
    /// Retry attempts (after the first) per recovered payment.
    pub retries_per_recovery: f64,
    /// Median hours from first failure to recovery.
    pub median_hours_to_recovery: f64,
    /// Recovered payments as a percentage of the oracle's.
    pub percent_of_oracle: f64,
    /// Rule breaches the checker found (must be 0 with the guard).
    pub network_rule_violations: u64,
    /// The same, by rule.
    pub violations_by_rule: std::collections::BTreeMap<String, u64>,
    /// Retries the guard blocked.
    pub guard_blocked: u64,
    /// Retries the guard moved later.
    pub guard_deferred: u64,
    /// Estimated fines avoided: guard interventions × $0.10.
    pub fines_avoided_usd: f64,
    /// Cumulative recovered payments at the end of each simulated day.
    pub recovered_by_day: Vec<u64>,
    /// Wall-clock seconds of this strategy's run (runs share the cores).
    pub wall_seconds: f64,
    /// This strategy's and `heuristic`'s median hours over the payments both recovered
    /// (none for `heuristic` itself, or when `heuristic` did not run).
    pub paired_with_heuristic: Option<PairedHours>,
    /// Each recovery: the charge (its place in the run's charges, the same for every
    /// strategy) and the hours from its first failure.
    #[serde(skip)]
    pub recovery_hours: Vec<(usize, f64)>,
}

/// Medians of hours to recovery over the payments two strategies both recovered.
#[derive(Debug, Clone, Serialize)]
pub struct PairedHours {
    /// Payments both recovered.
    pub recovered_by_both: u64,
    /// This strategy's median hours over them.
    pub median_hours: f64,
    /// `heuristic`'s median hours over them.
    pub heuristic_median_hours: f64,
}

/// The omniscient single retry.
#[derive(Debug, Clone, Serialize)]
pub struct OracleReport {
    /// Payments whose first attempt failed (the same as every strategy's).
    pub first_attempt_failures: u64,
    /// Of those, payments one retry at the first approving hour recovers.
    pub recovered: u64,
    /// `recovered / first_attempt_failures`.
    pub recovery_rate: f64,
    /// Attempts per payment.
    pub attempts_per_payment: f64,
    /// Median hours from first failure to recovery.
    pub median_hours_to_recovery: f64,
}

/// A fixed schedule the baseline was chosen from.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleCandidate {
    /// Name (`every_2d`, `odd_days`, …).
    pub name: String,
    /// Retry offsets from the first attempt, hours.
    pub offsets_hours: Vec<f64>,
    /// Payments it recovers in the engine-free world run.
    pub recovered: u64,
    /// Its attempts per payment there.
    pub attempts_per_payment: f64,
    #[serde(skip)]
    pub(super) offsets_ms: Vec<i64>,
}

/// A scenario's results.
#[derive(Debug, Clone, Serialize)]
pub struct SimulationReport {
    /// Scenario name.
    pub scenario: String,
    /// Seed used.
    pub seed: u64,
    /// Customers in the population, one payment each.
    pub customers: u64,
    /// Simulated days.
    pub days: u32,
    /// Every strategy's retry window, days.
    pub window_days: f64,
    /// Every strategy's attempt budget per payment, the first attempt included.
    pub max_attempts: u32,
    /// Charges billed in the run.
    pub charges: u64,
    /// Of those, charges billed less than the window before the run ends: every
    /// strategy's retries of them are cut short alike.
    pub charges_cut_short: u64,
    /// The fixed schedule used as `scheduled`: the best candidate.
    pub baseline: String,
    /// The oracle.
    pub oracle: OracleReport,
    /// The fixed schedules tried, best first.
    pub schedule_candidates: Vec<ScheduleCandidate>,
    /// Wall-clock seconds for all strategies.
    pub wall_seconds: f64,
    /// Per strategy.
    pub strategies: Vec<StrategyReport>,
}

impl SimulationReport {
    /// The comparison table.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "scenario {} (seed {}): {} customers over {} days; every strategy: {:.0}-day window, {} attempts at most; {:.1} s",
            self.scenario, self.seed, self.customers, self.days, self.window_days, self.max_attempts, self.wall_seconds
        );
        if self.charges_cut_short > 0 {
            let _ = writeln!(
                out,
                "{} of {} charges ({:.1}%) are billed less than the window before the run ends: every strategy's retries of them stop at day {}",
                self.charges_cut_short,
                self.charges,
                self.charges_cut_short as f64 / self.charges.max(1) as f64 * 100.0,
                self.days
            );
        }
        let _ = writeln!(
            out,
            "{:<19} {:>8} {:>9} {:>7} {:>8} {:>8} {:>9} {:>8} {:>10} {:>8} {:>7}",
            "strategy",
            "failed",
            "recovered",
            "rate",
            "% oracle",
            "att/pay",
            "retry/rec",
            "median h",
            "violations",
            "guarded",
            "wall s"
        );
        let o = &self.oracle;
        let _ = writeln!(
            out,
            "{:<19} {:>8} {:>9} {:>6.1}% {:>7.1}% {:>8.3} {:>9} {:>8.1} {:>10} {:>8} {:>7}",
            "oracle",
            o.first_attempt_failures,
            o.recovered,
            o.recovery_rate * 100.0,
            100.0,
            o.attempts_per_payment,
            "-",
            o.median_hours_to_recovery,
            "-",
            "-",
            "-"
        );
        for s in &self.strategies {
            let name = if s.strategy == "scheduled" {
                format!("scheduled:{}", self.baseline)
            } else {
                s.strategy.clone()
            };
            let _ = writeln!(
                out,
                "{:<19} {:>8} {:>9} {:>6.1}% {:>7.1}% {:>8.3} {:>9.2} {:>8.1} {:>10} {:>8} {:>7.1}",
                name,
                s.first_attempt_failures,
                s.recovered,
                s.recovery_rate * 100.0,
                s.percent_of_oracle,
                s.attempts_per_payment,
                s.retries_per_recovery,
                s.median_hours_to_recovery,
                s.network_rule_violations,
                s.guard_blocked + s.guard_deferred,
                s.wall_seconds
            );
        }
        for s in self
            .strategies
            .iter()
            .filter(|s| s.network_rule_violations > 0)
        {
            let rules: Vec<String> = s
                .violations_by_rule
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(out, "violations of {}: {}", s.strategy, rules.join(", "));
        }
        let paired: Vec<String> = self
            .strategies
            .iter()
            .filter_map(|s| {
                let p = s.paired_with_heuristic.as_ref()?;
                Some(format!(
                    "{} {:.1} h vs {:.1} h ({:.2}x, {} payments)",
                    s.strategy,
                    p.median_hours,
                    p.heuristic_median_hours,
                    p.median_hours / p.heuristic_median_hours.max(f64::MIN_POSITIVE),
                    p.recovered_by_both
                ))
            })
            .collect();
        if !paired.is_empty() {
            let _ = writeln!(
                out,
                "median hours to recovery over the payments both recovered, against heuristic: {}",
                paired.join("; ")
            );
        }
        let by = |name: &str| self.strategies.iter().find(|s| s.strategy == name);
        if let (Some(best), Some(scheduled)) = (by("best_available"), by("scheduled")) {
            if scheduled.recovered > 0 {
                let _ = writeln!(
                    out,
                    "best_available vs the best equal-window, equal-budget schedule ({}): {:+.1}% recovered, {:+.3} attempts per payment",
                    self.baseline,
                    (best.recovered as f64 / scheduled.recovered as f64 - 1.0) * 100.0,
                    best.attempts_per_payment - scheduled.attempts_per_payment
                );
            }
        }
        let _ = writeln!(
            out,
            "failed: payments whose first attempt failed; recovered: those a retry approved; rate: recovered / failed"
        );
        let candidates: Vec<String> = self
            .schedule_candidates
            .iter()
            .map(|c| format!("{} {}", c.name, c.recovered))
            .collect();
        let _ = writeln!(
            out,
            "schedules tried (recovered, engine-free replay): {}",
            candidates.join(", ")
        );
        out
    }

    /// Writes an SVG chart of cumulative recovery over time.
    pub fn chart(&self, path: &Path) -> Result<(), RunnerError> {
        use plotters::prelude::*;
        let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let most = self
            .strategies
            .iter()
            .map(|s| s.first_attempt_failures)
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "Recovered failed payments — scenario {} (seed {})",
                    self.scenario, self.seed
                ),
                ("sans-serif", 20),
            )
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..f64::from(self.days), 0f64..100f64)
            .map_err(drawing)?;
        chart
            .configure_mesh()
            .x_desc("simulated day")
            .y_desc("% of first-attempt failures recovered")
            .draw()
            .map_err(drawing)?;
        let colors = [BLACK, BLUE, GREEN, RED, MAGENTA];
        for (s, color) in self
            .strategies
            .iter()
            .filter(|s| !s.strategy.starts_with("reckless"))
            .zip(colors)
        {
            let points: Vec<(f64, f64)> = s
                .recovered_by_day
                .iter()
                .enumerate()
                .map(|(day, n)| (day as f64, *n as f64 / most * 100.0))
                .collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(drawing)?
                .label(s.strategy.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(drawing)?;
        root.present().map_err(drawing)
    }
}

fn drawing<E: std::fmt::Display>(e: E) -> RunnerError {
    RunnerError::Setup {
        action: "drawing the chart",
        message: e.to_string(),
    }
}
