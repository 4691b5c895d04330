//! The comparison report of `offsession simulate`: per-strategy figures, the text
//! table and the SVG chart.

use super::*;

/// One strategy's results.
#[derive(Debug, Clone, Serialize)]
pub struct StrategyReport {
    /// Strategy name.
    pub strategy: String,
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
    /// Attempts that broke a network rule (must be 0).
    pub network_rule_violations: u64,
    /// Retries the guard blocked.
    pub guard_blocked: u64,
    /// Retries the guard moved later.
    pub guard_deferred: u64,
    /// Estimated fines avoided: guard interventions × $0.10.
    pub fines_avoided_usd: f64,
    /// Cumulative recovered payments at the end of each simulated day.
    pub recovered_by_day: Vec<u64>,
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
            "scenario {} (seed {}): {} payments over {} days, {:.1} s",
            self.scenario, self.seed, self.customers, self.days, self.wall_seconds
        );
        let _ = writeln!(
            out,
            "{:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9}",
            "strategy",
            "failed",
            "recovered",
            "rate",
            "att/pay",
            "retry/rec",
            "median h",
            "violations",
            "guarded",
            "fines $"
        );
        for s in &self.strategies {
            let _ = writeln!(
                out,
                "{:<10} {:>9} {:>9} {:>8.1}% {:>9.3} {:>9.2} {:>9.1} {:>10} {:>9} {:>9.2}",
                s.strategy,
                s.first_attempt_failures,
                s.recovered,
                s.recovery_rate * 100.0,
                s.attempts_per_payment,
                s.retries_per_recovery,
                s.median_hours_to_recovery,
                s.network_rule_violations,
                s.guard_blocked + s.guard_deferred,
                s.fines_avoided_usd
            );
        }
        let by = |name: &str| self.strategies.iter().find(|s| s.strategy == name);
        if let (Some(smart), Some(scheduled)) = (by("smart"), by("scheduled")) {
            if scheduled.recovered > 0 {
                let _ = writeln!(
                    out,
                    "smart vs scheduled: {:+.1}% recovered, {:+.3} attempts per payment",
                    (smart.recovered as f64 / scheduled.recovered as f64 - 1.0) * 100.0,
                    smart.attempts_per_payment - scheduled.attempts_per_payment
                );
            }
        }
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
        let colors = [BLACK, BLUE, GREEN, RED];
        for (s, color) in self.strategies.iter().zip(colors) {
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
