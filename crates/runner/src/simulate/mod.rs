//! `offsession simulate`: runs a scenario's population through the real engine once
//! per retry strategy and compares how many failed payments each recovers, at what
//! cost, and whether any attempt broke a card-network rule.
//!
//! Fair by construction:
//! - every strategy gets the same retry window and the same attempt budget
//!   (`--window`, `--max-attempts`);
//! - the fixed-schedule baseline is the best of a family of schedules with that
//!   window and budget, picked with hindsight on this very population (which
//!   favours the baseline);
//! - the oracle is the recovery an omniscient single retry reaches in the same
//!   window, and every strategy is reported as a share of it;
//! - the rule checker holds its own reference values, and a deliberately reckless
//!   strategy is run with and without the guard to show that it can fail.
//!
//! Every strategy sees the same world: the population and its issuers are generated
//! from the scenario seed, and each strategy gets its own engine, store, clock and
//! issuer state. The smart strategy starts from its prior and learns only from the
//! outcomes of its own run.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use offsession_core::{
    Event, EventSink, EventType, ManualClock, PaymentMethodType, RetryContext, RetryDecision,
    RetryPolicy, Timestamp,
};
use offsession_mock::issuer::{Population, Scenario, SimulatedIssuer};
use offsession_orchestrator::EngineConfig;
use offsession_retry::{DeclineTable, HeuristicPolicy, ScheduledPolicy, ScheduledPolicyConfig};
use offsession_store::MemoryStore;
use serde::Serialize;

use crate::config::{Config, ConfigError};
use crate::error::RunnerError;

const DAY_MS: i64 = 86_400_000;
/// Estimated fine per attempt that breaks a network rule (Visa's excessive-reattempt
/// fee is about $0.10 domestic).
const FINE_PER_VIOLATION_USD: f64 = 0.10;

/// The strategies compared, in report order. `reckless` retries every hour whatever
/// the decline; it runs once without the network guard (to show that the checker
/// finds what the guard prevents) and once with it.
pub const STRATEGIES: [&str; 7] = [
    "none",
    "scheduled",
    "heuristic",
    "smart",
    "best_available",
    "reckless_unguarded",
    "reckless",
];

mod paired;
mod recorder;
mod report;
mod world;

use recorder::{check, Recorder};

pub use report::{OracleReport, PairedHours, ScheduleCandidate, SimulationReport, StrategyReport};

/// The bounds every strategy of a simulation shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// No retry later than this after the first attempt.
    pub window: Duration,
    /// Attempts per payment at most, the first included.
    pub max_attempts: u32,
    /// The strategies to run (empty: all of [`STRATEGIES`]).
    pub strategies: Vec<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            window: Duration::from_secs(28 * 86_400),
            max_attempts: 8,
            strategies: Vec::new(),
        }
    }
}

/// Retries one hour after every decline, whatever it was: the strategy the guard
/// exists for.
#[derive(Debug)]
struct Reckless {
    window: Duration,
    max_attempts: u32,
}

impl RetryPolicy for Reckless {
    fn name(&self) -> &str {
        "reckless"
    }

    fn decide(&self, context: &RetryContext<'_>) -> RetryDecision {
        if context.payment.retry_details.attempts >= self.max_attempts {
            return RetryDecision::Stop(offsession_core::FailureReason::RetriesExhausted);
        }
        RetryDecision::RetryAt {
            not_before: context.now.plus(Duration::from_secs(3_600)),
            latest: None,
        }
        .within(Some(context.window_end(self.window)))
    }
}

#[derive(Debug, Default)]
struct Outcomes {
    succeeded_after_retry: Mutex<Vec<(String, Timestamp)>>,
    attempts: AtomicU64,
}

impl EventSink for Outcomes {
    fn emit(&self, event: Event) {
        match event.event_type {
            EventType::AuthorizationAttemptStarted => {
                self.attempts.fetch_add(1, Ordering::Relaxed);
            }
            EventType::Succeeded if event.data.retry_details.attempts > 1 => {
                self.succeeded_after_retry
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((event.data.id.clone(), event.created));
            }
            _ => {}
        }
    }
}

/// What a simulated create asks for. Debits can only be retried by `heuristic` (the
/// API refuses smart retries and custom policies for them), so every retrying
/// strategy sends `heuristic` for a debit.
fn retry_details(strategy: &str, baseline: &str, debit: bool) -> serde_json::Value {
    match (strategy, debit) {
        ("none", _) => serde_json::json!({"retry_strategy": "none"}),
        (_, true) => serde_json::json!({"retry_strategy": "heuristic"}),
        ("scheduled", _) => serde_json::json!({"retry_policy": baseline}),
        // The API refuses `heuristic` for cards; the simulator installs it as a named
        // policy to compare it on the same card population.
        ("heuristic", _) => serde_json::json!({"retry_policy": "heuristic"}),
        ("smart", _) => serde_json::json!({"retry_strategy": "smart"}),
        ("best_available", _) => serde_json::json!({"retry_strategy": "best_available"}),
        _ => serde_json::json!({"retry_policy": "reckless"}),
    }
}

async fn run_strategy(
    strategy: &'static str,
    population: Arc<Population>,
    config_path: std::path::PathBuf,
    mut config: Config,
    options: Options,
    baseline: (String, Vec<i64>),
) -> Result<StrategyReport, RunnerError> {
    let started = Instant::now();
    let scenario = population.scenario().clone();
    // Equal bounds for every strategy.
    config.heuristic.window = options.window;
    config.heuristic.max_attempts = options.max_attempts;
    config.smart.window = options.window;
    config.smart.max_attempts = options.max_attempts;
    // `smart` is the learned model alone; `best_available` (smart's default) also
    // weighs it against the rule-based plan by evidence.
    config.smart.select_by_evidence = strategy == "best_available";
    let start = scenario.start();
    let end = start.plus(std::time::Duration::from_secs(
        u64::from(scenario.days) * 86_400,
    ));
    let clock = Arc::new(ManualClock::new(start));
    let issuer = Arc::new(SimulatedIssuer::new(
        "issuers",
        population.clone(),
        clock.clone(),
    ));
    let recorder = Arc::new(Recorder {
        inner: issuer,
        clock: clock.clone(),
        sent: Mutex::new(Vec::new()),
        brands: Mutex::new(HashMap::new()),
    });
    let outcomes = Arc::new(Outcomes::default());
    // Every key of the configuration applies (engine, declines, policies,
    // strategies); the simulation sets only what makes a run reproducible.
    let decisions = crate::wiring::policies(&config_path, &config)?;
    let heuristic = HeuristicPolicy::new(&config.heuristic).map_err(|e| {
        RunnerError::Config(ConfigError::Invalid {
            key: "heuristic".into(),
            message: e.to_string(),
        })
    })?;
    let (baseline_name, offsets) = baseline;
    let schedule = ScheduledPolicy::new(
        &baseline_name,
        &ScheduledPolicyConfig {
            max_attempts: Some(options.max_attempts.min(offsets.len() as u32 + 1)),
            offsets: offsets
                .iter()
                .map(|ms| Duration::from_millis(*ms as u64))
                .collect(),
            window: options.window,
        },
    )
    .map_err(|e| {
        RunnerError::Config(ConfigError::Invalid {
            key: "simulate".into(),
            message: e.to_string(),
        })
    })?;
    let mut builder = decisions.builder.config(EngineConfig {
        id_seed: Some(scenario.seed),
        // The simulated issuers answer at once, so concurrency buys nothing here;
        // one attempt at a time keeps the smart model's learning order, and so
        // the whole run, reproducible.
        concurrency: 1,
        claim_batch: 4096,
        // Bank debits are retried (by `heuristic`), so its debit rules are
        // evaluated too.
        ach_retries_enabled: true,
        sepa_debit_retries_enabled: true,
        ..config.engine.clone()
    });
    if strategy == "reckless_unguarded" {
        builder = builder.without_network_guard();
    }
    let engine = builder
        .processor(recorder.clone())
        .store(Arc::new(MemoryStore::new()))
        .clock(clock.clone())
        .events(outcomes.clone())
        .retry_policy("heuristic", Arc::new(heuristic))
        .retry_policy(&baseline_name, Arc::new(schedule))
        .retry_policy(
            "reckless",
            Arc::new(Reckless {
                window: options.window,
                max_attempts: options.max_attempts,
            }),
        )
        .build()
        .map_err(RunnerError::engine("building the engine"))?;

    let mut charges: Vec<_> = population
        .customers()
        .iter()
        .flat_map(|c| {
            c.charges
                .iter()
                .map(move |charge| (charge.bill_at, c.index, charge.amount, c))
        })
        .collect();
    charges.sort_by_key(|(at, index, amount, _)| (*at, *index, *amount));
    // Each payment's charge (its place in `charges`, the same in every strategy's run),
    // so that strategies can be compared payment by payment.
    let mut charge_of: HashMap<String, usize> = HashMap::new();
    let mut next_charge = 0;
    loop {
        let next_bill = charges.get(next_charge).map(|c| c.0);
        let next_due = engine
            .next_due()
            .await
            .map_err(RunnerError::engine("reading the next due time"))?;
        let next = match (next_bill, next_due) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => break,
        };
        if next > end {
            break;
        }
        clock.set(next);
        while let Some((_, _, amount, customer)) = charges.get(next_charge).filter(|c| c.0 <= next)
        {
            let debit = customer.method_type != PaymentMethodType::Card;
            let currency = match customer.method_type {
                PaymentMethodType::UsBankAccount => "usd",
                PaymentMethodType::SepaDebit => "eur",
                _ => scenario.currency.as_str(),
            };
            let body = serde_json::json!({
                "amount": {"value": amount, "currency": currency},
                "cadence": "recurring",
                "customer": customer.customer_id(),
                "payment_method": customer.payment_method_id(),
                "retry_details": retry_details(strategy, &baseline_name, debit),
            });
            let created = engine
                .create_json(body.to_string().as_bytes(), None)
                .await
                .map_err(RunnerError::api("creating a simulated payment"))?;
            charge_of.insert(created.id, next_charge);
            next_charge += 1;
        }
        engine
            .run_due()
            .await
            .map_err(RunnerError::engine("running due payments"))?;
    }

    let sent = std::mem::take(&mut *recorder.sent.lock().unwrap_or_else(|p| p.into_inner()));
    let mut first_failure: HashMap<&str, Timestamp> = HashMap::new();
    for attempt in &sent {
        if attempt.number == 1 && attempt.declined.is_some() {
            first_failure.insert(&attempt.payment, attempt.at);
        }
    }
    let recoveries = outcomes
        .succeeded_after_retry
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let recovery_hours: Vec<(usize, f64)> = recoveries
        .iter()
        .filter_map(|(id, at)| {
            let failed = first_failure.get(id.as_str())?;
            let charge = charge_of.get(id)?;
            Some((
                *charge,
                (at.as_millis() - failed.as_millis()) as f64 / 3_600_000.0,
            ))
        })
        .collect();
    let mut hours: Vec<f64> = recovery_hours.iter().map(|(_, h)| *h).collect();
    hours.sort_by(f64::total_cmp);
    let mut recovered_by_day = vec![0u64; scenario.days as usize + 1];
    for (_, at) in &recoveries {
        let day = ((at.as_millis() - start.as_millis()) / DAY_MS).clamp(0, i64::from(scenario.days))
            as usize;
        recovered_by_day[day] += 1;
    }
    for day in 1..recovered_by_day.len() {
        recovered_by_day[day] += recovered_by_day[day - 1];
    }
    let attempts = outcomes.attempts.load(Ordering::Relaxed);
    let payments = charges.len() as u64;
    let failures = first_failure.len() as u64;
    let recovered = recoveries.len() as u64;
    let retries = attempts.saturating_sub(payments);
    let (blocked, deferred) = engine.guard_interventions();
    let violations = check(&sent);
    Ok(StrategyReport {
        strategy: strategy.to_owned(),
        guarded: strategy != "reckless_unguarded",
        payments,
        first_attempt_failures: failures,
        recovered,
        recovery_rate: if failures == 0 {
            0.0
        } else {
            recovered as f64 / failures as f64
        },
        attempts,
        attempts_per_payment: attempts as f64 / payments.max(1) as f64,
        retries_per_recovery: if recovered == 0 {
            0.0
        } else {
            retries as f64 / recovered as f64
        },
        median_hours_to_recovery: hours.get(hours.len() / 2).copied().unwrap_or(0.0),
        percent_of_oracle: 0.0,
        network_rule_violations: violations.values().sum(),
        violations_by_rule: violations
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        guard_blocked: blocked,
        guard_deferred: deferred,
        fines_avoided_usd: (blocked + deferred) as f64 * FINE_PER_VIOLATION_USD,
        recovered_by_day,
        wall_seconds: started.elapsed().as_secs_f64(),
        paired_with_heuristic: None,
        recovery_hours,
    })
}

/// Runs every strategy on `scenario` (all at once, one task each), after the oracle
/// and the choice of the fixed-schedule baseline. `config_path` resolves the
/// config's relative paths (`declines.path`).
pub async fn run(
    scenario: &Scenario,
    config_path: &Path,
    config: &Config,
    options: &Options,
) -> Result<SimulationReport, RunnerError> {
    let started = Instant::now();
    if let Some(unknown) = options
        .strategies
        .iter()
        .find(|s| !STRATEGIES.contains(&s.as_str()))
    {
        return Err(RunnerError::Config(ConfigError::Invalid {
            key: "--strategies".into(),
            message: format!("`{unknown}` is not one of {}", STRATEGIES.join(", ")),
        }));
    }
    let selected =
        |s: &str| options.strategies.is_empty() || options.strategies.iter().any(|x| x == s);
    if options.max_attempts < 2 || options.window < Duration::from_secs(3_600) {
        return Err(RunnerError::Config(ConfigError::Invalid {
            key: "simulate".into(),
            message: "`--max-attempts` must be at least 2 and `--window` at least 1h".into(),
        }));
    }
    let population = Arc::new(Population::generate(scenario));
    // The decline table the engines use, read the same way.
    let table: DeclineTable = crate::wiring::decline_table(config_path, config)?;
    let window_ms = options.window.as_millis() as i64;
    let debit_max = table.network_rules().debit_max_presentments;
    let world = |plan: &world::Plan| {
        world::run(
            &population,
            &table,
            plan,
            window_ms,
            options.max_attempts,
            debit_max,
            3_600_000,
        )
    };
    let oracle = world(&world::Plan::Oracle);
    let mut candidates: Vec<ScheduleCandidate> =
        world::schedule_candidates(window_ms, options.max_attempts)
            .into_iter()
            .map(|(name, offsets)| {
                let result = world(&world::Plan::Schedule(offsets.clone()));
                ScheduleCandidate {
                    name,
                    offsets_hours: offsets.iter().map(|ms| *ms as f64 / 3_600_000.0).collect(),
                    recovered: result.recovered,
                    attempts_per_payment: result.attempts as f64 / result.payments.max(1) as f64,
                    offsets_ms: offsets,
                }
            })
            .collect();
    // The best: most recovered, then fewest attempts.
    candidates.sort_by(|a, b| {
        b.recovered
            .cmp(&a.recovered)
            .then(a.attempts_per_payment.total_cmp(&b.attempts_per_payment))
    });
    let best = candidates
        .first()
        .map(|c| (c.name.clone(), c.offsets_ms.clone()))
        .ok_or_else(|| {
            RunnerError::Config(ConfigError::Invalid {
                key: "simulate".into(),
                message: "no fixed schedule fits the window and the attempt budget".into(),
            })
        })?;
    let mut tasks = Vec::new();
    for strategy in STRATEGIES.into_iter().filter(|s| selected(s)) {
        tasks.push(tokio::spawn(run_strategy(
            strategy,
            population.clone(),
            config_path.to_owned(),
            config.clone(),
            options.clone(),
            best.clone(),
        )));
    }
    let mut strategies = Vec::new();
    for task in tasks {
        let mut report = task
            .await
            .map_err(RunnerError::setup("running a simulation task"))??;
        report.percent_of_oracle = if oracle.recovered == 0 {
            0.0
        } else {
            report.recovered as f64 / oracle.recovered as f64 * 100.0
        };
        strategies.push(report);
    }
    paired::pair_with_heuristic(&mut strategies);
    // Charges billed less than the window before the run ends: every strategy's
    // retries of them are cut short alike.
    let end = scenario.start().as_millis() + i64::from(scenario.days) * DAY_MS;
    let window_ms = options.window.as_millis() as i64;
    let (charges, cut_short) = population
        .customers()
        .iter()
        .flat_map(|c| c.charges.iter())
        .fold((0u64, 0u64), |(all, cut), charge| {
            (
                all + 1,
                cut + u64::from(charge.bill_at.as_millis() + window_ms > end),
            )
        });
    let mut hours = oracle.hours_to_recovery.clone();
    hours.sort_by(f64::total_cmp);
    Ok(SimulationReport {
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        customers: scenario.customers,
        days: scenario.days,
        window_days: options.window.as_secs_f64() / 86_400.0,
        max_attempts: options.max_attempts,
        charges,
        charges_cut_short: cut_short,
        baseline: best.0,
        oracle: OracleReport {
            first_attempt_failures: oracle.first_attempt_failures,
            recovered: oracle.recovered,
            recovery_rate: if oracle.first_attempt_failures == 0 {
                0.0
            } else {
                oracle.recovered as f64 / oracle.first_attempt_failures as f64
            },
            attempts_per_payment: oracle.attempts as f64 / oracle.payments.max(1) as f64,
            median_hours_to_recovery: hours.get(hours.len() / 2).copied().unwrap_or(0.0),
        },
        schedule_candidates: candidates,
        wall_seconds: started.elapsed().as_secs_f64(),
        strategies,
    })
}
