//! `offsession simulate`: runs a scenario's population through the real engine once
//! per retry strategy and compares how many failed payments each recovers, at what
//! cost, and whether any attempt broke a card-network rule.
//!
//! Every strategy sees the same world: the population and its issuers are generated
//! from the scenario seed, and each strategy gets its own engine, store, clock and
//! issuer state. The smart strategy starts from its prior and learns only from the
//! outcomes of its own run.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use offsession_core::{Event, EventSink, EventType, ManualClock, Timestamp};
use offsession_mock::issuer::{Population, Scenario, SimulatedIssuer};
use offsession_orchestrator::EngineConfig;
use offsession_retry::HeuristicPolicy;
use offsession_store::MemoryStore;
use serde::Serialize;

use crate::config::{Config, ConfigError};
use crate::error::RunnerError;

const DAY_MS: i64 = 86_400_000;
/// Estimated fine per attempt that breaks a network rule (Visa's excessive-reattempt
/// fee is about $0.10 domestic).
const FINE_PER_VIOLATION_USD: f64 = 0.10;

/// The strategies compared, in report order.
pub const STRATEGIES: [&str; 4] = ["none", "scheduled", "heuristic", "smart"];

mod recorder;
mod report;

use recorder::{count_violations, Recorder};

pub use report::{SimulationReport, StrategyReport};

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

fn retry_details(strategy: &str) -> serde_json::Value {
    match strategy {
        "none" => serde_json::json!({"retry_strategy": "none"}),
        "scheduled" => serde_json::json!({"retry_policy": "stripe_recommended"}),
        // The API refuses `heuristic` for cards; the simulator installs it as a named
        // policy to compare it on the same card population.
        "heuristic" => serde_json::json!({"retry_policy": "heuristic"}),
        _ => serde_json::json!({"retry_strategy": "smart"}),
    }
}

async fn run_strategy(
    strategy: &'static str,
    population: Arc<Population>,
    config_path: std::path::PathBuf,
    config: Config,
) -> Result<StrategyReport, RunnerError> {
    let scenario = population.scenario().clone();
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
    let rules = decisions.rules;
    let heuristic = HeuristicPolicy::new(&config.heuristic).map_err(|e| {
        RunnerError::Config(ConfigError::Invalid {
            key: "heuristic".into(),
            message: e.to_string(),
        })
    })?;
    let engine = decisions
        .builder
        .config(EngineConfig {
            id_seed: Some(scenario.seed),
            // The simulated issuers answer at once, so concurrency buys nothing here;
            // one attempt at a time keeps the smart model's learning order, and so
            // the whole run, reproducible.
            concurrency: 1,
            claim_batch: 4096,
            ..config.engine.clone()
        })
        .processor(recorder.clone())
        .store(Arc::new(MemoryStore::new()))
        .clock(clock.clone())
        .events(outcomes.clone())
        .retry_policy("heuristic", Arc::new(heuristic))
        .build()
        .map_err(RunnerError::engine("building the engine"))?;

    let mut customers: Vec<_> = population.customers().iter().collect();
    customers.sort_by_key(|c| (c.bill_at, c.index));
    let retry = retry_details(strategy);
    let mut next_customer = 0;
    loop {
        let next_bill = customers.get(next_customer).map(|c| c.bill_at);
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
        while let Some(customer) = customers.get(next_customer).filter(|c| c.bill_at <= next) {
            let body = serde_json::json!({
                "amount": {"value": customer.amount, "currency": scenario.currency},
                "cadence": "recurring",
                "customer": customer.customer_id(),
                "payment_method": customer.payment_method_id(),
                "retry_details": retry,
            });
            engine
                .create_json(body.to_string().as_bytes(), None)
                .await
                .map_err(RunnerError::api("creating a simulated payment"))?;
            next_customer += 1;
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
    let mut hours: Vec<f64> = recoveries
        .iter()
        .filter_map(|(id, at)| {
            first_failure
                .get(id.as_str())
                .map(|failed| (at.as_millis() - failed.as_millis()) as f64 / 3_600_000.0)
        })
        .collect();
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
    let payments = customers.len() as u64;
    let failures = first_failure.len() as u64;
    let recovered = recoveries.len() as u64;
    let retries = attempts.saturating_sub(payments);
    let (blocked, deferred) = engine.guard_interventions();
    Ok(StrategyReport {
        strategy: strategy.to_owned(),
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
        network_rule_violations: count_violations(&sent, &rules),
        guard_blocked: blocked,
        guard_deferred: deferred,
        fines_avoided_usd: (blocked + deferred) as f64 * FINE_PER_VIOLATION_USD,
        recovered_by_day,
    })
}

/// Runs every strategy on `scenario` (all at once, one task each).
/// `config_path` resolves the config's relative paths (`declines.path`).
pub async fn run(
    scenario: &Scenario,
    config_path: &Path,
    config: &Config,
) -> Result<SimulationReport, RunnerError> {
    let started = Instant::now();
    let population = Arc::new(Population::generate(scenario));
    let mut tasks = Vec::new();
    for strategy in STRATEGIES {
        tasks.push(tokio::spawn(run_strategy(
            strategy,
            population.clone(),
            config_path.to_owned(),
            config.clone(),
        )));
    }
    let mut strategies = Vec::new();
    for task in tasks {
        strategies.push(
            task.await
                .map_err(RunnerError::setup("running a simulation task"))??,
        );
    }
    Ok(SimulationReport {
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        customers: scenario.customers,
        days: scenario.days,
        wall_seconds: started.elapsed().as_secs_f64(),
        strategies,
    })
}
