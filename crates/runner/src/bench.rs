//! `offsession bench`: drives payments through the engine against the mock processor
//! on the real clock, and reports throughput, engine overhead, Little's-law
//! efficiency, peak memory and rate-limit use.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use offsession_core::{DiscardEvents, SystemClock};
use offsession_mock::{LatencyModel, MockConfig, MockProcessor};
use offsession_orchestrator::{AttemptTiming, EngineConfig, RateLimit, TimingObserver};
use offsession_store::MemoryStore;
use serde::Serialize;

use crate::error::RunnerError;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The configuration file whose engine settings and policies the bench uses
    /// (its processors, store and clock are the bench's own).
    pub config_path: std::path::PathBuf,
    /// That file, loaded.
    pub config: crate::config::Config,
    /// How many payments to create and settle.
    pub payments: u64,
    /// Attempts in flight.
    pub concurrency: usize,
    /// Mock latency.
    pub latency: LatencyModel,
    /// Requests per second the mock accepts (and the engine paces to); none: no limit.
    pub rate_limit: Option<u32>,
}

/// The measurements.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Payments created and settled.
    pub payments: u64,
    /// Attempts in flight.
    pub concurrency: usize,
    /// Seconds to create (validate, preflight, store) every payment.
    pub intake_seconds: f64,
    /// Payments created per second.
    pub intake_per_second: f64,
    /// Seconds from the first claim to the last stored outcome.
    pub settle_seconds: f64,
    /// Payments settled per second.
    pub settled_per_second: f64,
    /// Mean processor answer time, seconds.
    pub mean_processor_seconds: f64,
    /// settled_per_second ÷ (concurrency ÷ mean processor time); none at zero latency.
    pub littles_law_efficiency: Option<f64>,
    /// Engine time per attempt excluding the processor and rate-limit waits, p50 (µs).
    pub overhead_p50_us: f64,
    /// Same, p99 (µs).
    pub overhead_p99_us: f64,
    /// Peak resident memory of the process (MiB), from /proc/self/status.
    pub peak_memory_mib: Option<f64>,
    /// Processor requests answered (not 429) per second ÷ the rate limit.
    pub rate_limit_utilization: Option<f64>,
    /// 429s the processor returned.
    pub rate_limited: u64,
}

fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index] as f64 / 1_000.0
}

/// Runs the benchmark.
pub async fn run(options: &BenchOptions) -> Result<BenchReport, RunnerError> {
    let mock = Arc::new(MockProcessor::new(
        "mock",
        MockConfig {
            latency: options.latency.clone(),
            enforce_rate_limit: options.rate_limit,
            ..MockConfig::default()
        },
    ));
    let timings: Arc<Mutex<Vec<AttemptTiming>>> =
        Arc::new(Mutex::new(Vec::with_capacity(options.payments as usize)));
    let sink = timings.clone();
    let decisions = crate::wiring::policies(&options.config_path, &options.config)?;
    let mut builder = decisions
        .builder
        .config(EngineConfig {
            concurrency: options.concurrency,
            claim_batch: options.concurrency.max(1_024),
            // A 429 is replayed after the shortest wait the engine allows (1s); the
            // pacer keeps the engine under the limit, so none are expected.
            replay_backoff: vec![Duration::from_secs(1)],
            ..options.config.engine.clone()
        })
        .processor(mock.clone())
        .store(Arc::new(MemoryStore::new()))
        .clock(Arc::new(SystemClock))
        .events(Arc::new(DiscardEvents))
        .timing_observer(TimingObserver(Arc::new(move |timing| {
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(timing);
        })));
    if let Some(per_second) = options.rate_limit {
        // The engine's burst (1/50 s of requests) stays under the mock's (1/20 s), so
        // timer jitter lets the engine catch up on slots it missed without ever
        // presenting more than the processor accepts.
        builder = builder.rate_limit(
            "mock",
            RateLimit {
                per_second,
                burst: (per_second / 50).max(1),
            },
        );
    }
    let engine = builder
        .build()
        .map_err(RunnerError::engine("building the engine"))?;

    let intake_started = Instant::now();
    for i in 0..options.payments {
        let body = format!(
            r#"{{"amount":{{"value":2000,"currency":"usd"}},"cadence":"recurring","customer":"cus_{i}","payment_method":"pm_card_visa__{i}","retry_details":{{"retry_strategy":"none"}}}}"#
        );
        engine
            .create_json(body.as_bytes(), None)
            .await
            .map_err(RunnerError::api("creating a benchmark payment"))?;
    }
    let intake = intake_started.elapsed();

    let settle_started = Instant::now();
    loop {
        engine
            .run_due()
            .await
            .map_err(RunnerError::engine("running due payments"))?;
        match engine
            .next_due()
            .await
            .map_err(RunnerError::engine("reading the next due time"))?
        {
            None => break,
            Some(next) => {
                let wait = next.as_millis() - engine.now().as_millis();
                if wait > 0 {
                    tokio::time::sleep(Duration::from_millis(wait as u64)).await;
                }
            }
        }
    }
    let settle = settle_started.elapsed();

    let timings = std::mem::take(&mut *timings.lock().unwrap_or_else(|p| p.into_inner()));
    let mut overheads: Vec<u64> = timings
        .iter()
        .map(|t| t.overhead().as_nanos() as u64)
        .collect();
    overheads.sort_unstable();
    let processor_total: f64 = timings.iter().map(|t| t.processor.as_secs_f64()).sum();
    let mean_processor = processor_total / timings.len().max(1) as f64;
    let settled_per_second = options.payments as f64 / settle.as_secs_f64();
    let latency_floor = match options.latency {
        LatencyModel::Fixed { millis } => millis > 0,
        _ => true,
    };
    let answered = mock.requests() - mock.rate_limited();
    Ok(BenchReport {
        payments: options.payments,
        concurrency: options.concurrency,
        intake_seconds: intake.as_secs_f64(),
        intake_per_second: options.payments as f64 / intake.as_secs_f64(),
        settle_seconds: settle.as_secs_f64(),
        settled_per_second,
        mean_processor_seconds: mean_processor,
        littles_law_efficiency: (latency_floor
            && options.rate_limit.is_none()
            && mean_processor > 0.0)
            .then(|| settled_per_second / (options.concurrency as f64 / mean_processor)),
        overhead_p50_us: percentile(&overheads, 0.50),
        overhead_p99_us: percentile(&overheads, 0.99),
        peak_memory_mib: peak_memory_mib(),
        rate_limit_utilization: options
            .rate_limit
            .map(|limit| answered as f64 / settle.as_secs_f64() / f64::from(limit)),
        rate_limited: mock.rate_limited(),
    })
}

impl BenchReport {
    /// The human-readable report.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "offsession bench: {} payments, concurrency {}",
            self.payments, self.concurrency
        );
        let _ = writeln!(
            out,
            "  intake               {:>10.0} payments/s  ({:.2} s)",
            self.intake_per_second, self.intake_seconds
        );
        let _ = writeln!(
            out,
            "  settle               {:>10.0} payments/s  ({:.2} s)",
            self.settled_per_second, self.settle_seconds
        );
        let _ = writeln!(
            out,
            "  processor latency    {:>10.2} ms mean",
            self.mean_processor_seconds * 1_000.0
        );
        if let Some(efficiency) = self.littles_law_efficiency {
            let _ = writeln!(
                out,
                "  Little's law         {:>10.1} % of concurrency / latency",
                efficiency * 100.0
            );
        }
        let _ = writeln!(
            out,
            "  engine overhead      {:>10.1} µs p50, {:.1} µs p99",
            self.overhead_p50_us, self.overhead_p99_us
        );
        if let Some(memory) = self.peak_memory_mib {
            let _ = writeln!(out, "  peak memory          {memory:>10.1} MiB");
        }
        if let Some(utilization) = self.rate_limit_utilization {
            let _ = writeln!(
                out,
                "  rate-limit use       {:>10.1} % of the limit, {} × 429",
                utilization * 100.0,
                self.rate_limited
            );
        }
        out
    }
}
