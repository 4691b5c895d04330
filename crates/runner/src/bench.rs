//! `offsession bench`: drives payments through the engine against the mock processor
//! on the real clock, and reports throughput, engine overhead, Little's-law
//! efficiency, peak memory and rate-limit use.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use offsession_core::{DiscardEvents, Store, SystemClock};
use offsession_mock::{LatencyModel, MockConfig, MockProcessor};
use offsession_orchestrator::{AttemptTiming, Engine, EngineConfig, RateLimit, TimingObserver};
use serde::Serialize;

use crate::config::{StoreConfig, StoreUrl};
use crate::error::RunnerError;

mod baseline;
use baseline::{baseline, drop_bench_store, sample_rows};

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
    /// Where payments live: `memory:`, `sqlite://NEW_FILE` or `postgres://…` (a
    /// fresh schema is made and dropped).
    pub store: String,
    /// Engine instances sharing the store (Postgres only).
    pub instances: usize,
    /// Settle while the intake still creates, on another task (and so another core),
    /// as a service does; otherwise intake first, then settle. The plain-SQL baseline
    /// runs its steps one after another and is not timed in this mode.
    pub overlap: bool,
}

/// The measurements.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Payments created and settled.
    pub payments: u64,
    /// Payments the store holds as `succeeded` when the bench ends (read after the
    /// timing): every payment, unless one was lost or left unsettled.
    pub succeeded: u64,
    /// Authorization requests the mock received (429s and replays included): one per
    /// payment unless an attempt was sent twice or throttled.
    pub processor_requests: u64,
    /// Attempts in flight.
    pub concurrency: usize,
    /// Seconds to create (validate, preflight, store) every payment.
    pub intake_seconds: f64,
    /// Payments created per second.
    pub intake_per_second: f64,
    /// Seconds from the first claim to the last stored outcome; with `overlap`, from
    /// the first create.
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
    /// CPU time of the whole process (user + system, every thread: intake, claims,
    /// attempts, outcomes, the store's writer, the mock) from the first create to
    /// the last outcome, ÷ payments (µs): the engine's whole time per payment, where
    /// the overhead percentiles time only the attempt. From /proc/self/stat.
    pub cpu_per_payment_us: Option<f64>,
    /// Peak resident memory of the process (MiB), from /proc/self/status.
    pub peak_memory_mib: Option<f64>,
    /// Peak memory ÷ payments (KiB): an upper bound of the memory a stored payment
    /// costs (the memory store keeps every payment; durable stores keep none).
    pub peak_memory_per_payment_kib: Option<f64>,
    /// Processor requests answered (not 429) per second ÷ the rate limit.
    pub rate_limit_utilization: Option<f64>,
    /// 429s the processor returned.
    pub rate_limited: u64,
    /// The store (password redacted).
    pub store: String,
    /// Engine instances sharing it.
    pub instances: usize,
    /// Whether intake and settle ran at once (`--overlap`).
    pub overlap: bool,
    /// Payments per second end to end: payments ÷ (intake + settle) seconds, or with
    /// `overlap` ÷ the seconds from the first create to the last outcome.
    pub end_to_end_per_second: f64,
    /// Payments per second of the plain-SQL baseline (durable stores).
    pub baseline_per_second: Option<f64>,
    /// end_to_end_per_second ÷ baseline_per_second.
    pub baseline_ratio: Option<f64>,
}

fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// CPU time the process used so far (user + system), from /proc/self/stat, whose
/// counts are in the kernel's fixed user-visible tick of 1/100 s.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index] as f64 / 1_000.0
}

/// Runs the benchmark. A Postgres schema it made is dropped whether it succeeds or
/// fails.
pub async fn run(options: &BenchOptions) -> Result<BenchReport, RunnerError> {
    let schema = format!("offsession_bench_{}", std::process::id());
    let measured = measure(options, &schema).await;
    if let Ok(url) = store_section(options, &schema).parsed_url() {
        let dropped = drop_bench_store(&url, &schema).await;
        if measured.is_ok() {
            dropped?;
        }
    }
    measured
}

async fn measure(options: &BenchOptions, schema: &str) -> Result<BenchReport, RunnerError> {
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
    let section = store_section(options, schema);
    let url = section.parsed_url()?;
    let instances = options.instances.max(1);
    if instances > 1 && !matches!(url, StoreUrl::Postgres(_)) {
        return Err(RunnerError::Flag {
            flag: "--instances",
            message: "several instances share a store only on Postgres".into(),
        });
    }
    if let StoreUrl::Sqlite(path) = &url {
        if path.exists() {
            return Err(RunnerError::Flag {
                flag: "--store",
                message: format!("`{}` exists: the bench writes a new file", path.display()),
            });
        }
    }
    let mut stores: Vec<Arc<dyn Store>> = Vec::new();
    for _ in 0..instances {
        // Relative paths in `--store` are relative to the working folder.
        stores.push(crate::wiring::open_store_section(Path::new(""), &section, false).await?);
    }
    let mut engines = Vec::new();
    for (index, store) in stores.iter().enumerate() {
        let decisions = crate::wiring::policies(&options.config_path, &options.config)?;
        let sink = sink.clone();
        let mut builder = decisions
            .builder
            .config(EngineConfig {
                instance_id: format!("bench-{index}"),
                // Instances sharing a store draw ids from distinct seeds.
                id_seed: options
                    .config
                    .engine
                    .id_seed
                    .map(|seed| seed.wrapping_add(index as u64)),
                concurrency: options.concurrency,
                claim_batch: options.concurrency.max(1_024),
                // A 429 is replayed after the shortest wait the engine allows (1s); the
                // pacer keeps the engine under the limit, so none are expected.
                replay_backoff: vec![Duration::from_secs(1)],
                ..options.config.engine.clone()
            })
            .processor(mock.clone())
            .store(store.clone())
            .clock(Arc::new(SystemClock))
            .events(Arc::new(DiscardEvents))
            .timing_observer(TimingObserver(Arc::new(move |timing| {
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(timing);
            })));
        if let Some(per_second) = options.rate_limit {
            // The engine's burst (1/50 s of requests) stays under the mock's (1/20 s),
            // so timer jitter lets the engine catch up on slots it missed without
            // ever presenting more than the processor accepts.
            builder = builder.rate_limit(
                "mock",
                RateLimit {
                    per_second,
                    burst: (per_second / 50).max(1),
                },
            );
        }
        engines.push(
            builder
                .build()
                .map_err(RunnerError::engine("building the engine"))?,
        );
    }

    // Intake: `concurrency` creates in flight, spread over the instances.
    let cpu_started = process_cpu();
    let intake_started = Instant::now();
    let intake_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let overlapped: Vec<_> = if options.overlap {
        engines
            .iter()
            .map(|engine| {
                let (engine, done) = (engine.clone(), intake_done.clone());
                tokio::spawn(async move { settle(&engine, &done).await })
            })
            .collect()
    } else {
        Vec::new()
    };
    let creates = futures::stream::iter(0..options.payments).map(|i| {
        let engine = &engines[i as usize % engines.len()];
        async move {
            // Built by hand (`format!` cost about 1,100 instructions here): the
            // harness's own work is counted in the bench's instructions per
            // payment too.
            let mut digits = itoa::Buffer::new();
            let i = digits.format(i);
            let body = [
                r#"{"amount":{"value":2000,"currency":"usd"},"cadence":"recurring","customer":""#,
                CUSTOMER,
                i,
                r#"","payment_method":""#,
                METHOD,
                i,
                r#"","retry_details":{"retry_strategy":"none"}}"#,
            ]
            .concat();
            engine.create_json(body.as_bytes(), None).await
        }
    });
    let mut creates = creates.buffer_unordered(options.concurrency.max(1));
    while let Some(created) = creates.next().await {
        if let Err(err) = created {
            // The settle tasks would otherwise poll an abandoned store for ever.
            for task in &overlapped {
                task.abort();
            }
            return Err(RunnerError::api("creating a benchmark payment")(err));
        }
    }
    drop(creates);
    let intake = intake_started.elapsed();
    intake_done.store(true, std::sync::atomic::Ordering::Release);

    // Sequential: settle starts now. Overlapped: it started with the intake, and its
    // time is from the first create to the last outcome.
    let settle_started = if options.overlap {
        intake_started
    } else {
        Instant::now()
    };
    if options.overlap {
        for task in overlapped {
            task.await
                .map_err(RunnerError::setup("settling during the intake"))??;
        }
    } else {
        let settles = engines.iter().map(|engine| settle(engine, &intake_done));
        for settled in futures::future::join_all(settles).await {
            settled?;
        }
    }
    let settle = settle_started.elapsed();
    let cpu_used = process_cpu()
        .zip(cpu_started)
        .map(|(now, then)| now.saturating_sub(then));

    let succeeded = engines[0]
        .count_by_status()
        .await
        .map_err(RunnerError::api("counting the settled payments"))?
        .into_iter()
        .find(|(status, _)| *status == offsession_core::PaymentStatus::Succeeded)
        .map_or(0, |(_, count)| count);

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
    let baseline_seconds = if options.overlap || matches!(url, StoreUrl::Memory) {
        None
    } else {
        let rows = sample_rows(&stores[0]).await?;
        // The engine's stores are closed first (SQLite: its writer and checkpointer
        // finish, and closing checkpoints the WAL; Postgres: its schema is dropped), so
        // that the loop does not run beside, or absorb, work the engine left behind.
        drop(engines);
        drop(stores);
        drop_bench_store(&url, schema).await?;
        baseline(&url, schema, options, rows).await?
    };
    let baseline_per_second = baseline_seconds.map(|s| options.payments as f64 / s);
    let end_to_end_seconds = if options.overlap {
        settle
    } else {
        intake + settle
    };
    let end_to_end_per_second = options.payments as f64 / end_to_end_seconds.as_secs_f64();
    let peak_memory = peak_memory_mib();
    Ok(BenchReport {
        payments: options.payments,
        succeeded,
        processor_requests: mock.requests(),
        concurrency: options.concurrency,
        intake_seconds: intake.as_secs_f64(),
        intake_per_second: options.payments as f64 / intake.as_secs_f64(),
        settle_seconds: settle.as_secs_f64(),
        settled_per_second,
        mean_processor_seconds: mean_processor,
        // Overlapped, the settle time includes the intake: no Little's-law figure.
        littles_law_efficiency: (latency_floor
            && !options.overlap
            && options.rate_limit.is_none()
            && mean_processor > 0.0)
            .then(|| settled_per_second / (options.concurrency as f64 / mean_processor)),
        overhead_p50_us: percentile(&overheads, 0.50),
        overhead_p99_us: percentile(&overheads, 0.99),
        cpu_per_payment_us: cpu_used
            .map(|cpu| cpu.as_secs_f64() * 1e6 / options.payments.max(1) as f64),
        peak_memory_mib: peak_memory,
        peak_memory_per_payment_kib: peak_memory
            .map(|mib| mib * 1024.0 / options.payments.max(1) as f64),
        rate_limit_utilization: options
            .rate_limit
            .map(|limit| answered as f64 / settle.as_secs_f64() / f64::from(limit)),
        rate_limited: mock.rate_limited(),
        store: crate::config::redact(&options.store),
        instances,
        overlap: options.overlap,
        end_to_end_per_second,
        baseline_per_second,
        baseline_ratio: baseline_per_second.map(|b| end_to_end_per_second / b),
    })
}

/// The `[store]` section the bench runs on: `--store`, in a schema of its own, with a
/// pool sized to the concurrency.
fn store_section(options: &BenchOptions, schema: &str) -> StoreConfig {
    StoreConfig {
        url: options.store.clone(),
        schema: schema.to_owned(),
        max_connections: options.concurrency.clamp(4, 32),
        ..StoreConfig::default()
    }
}

/// Bench payment `i` is customer `cus_{i}`'s card `pm_card_visa__{i}`: a customer and a
/// card each, as a billing platform's payments have.
const CUSTOMER: &str = "cus_";
const METHOD: &str = "pm_card_visa__";

/// The customer and payment method of bench payment `i` (the plain-SQL baseline writes
/// the same).
fn payment_keys(i: u64) -> (String, String) {
    (format!("{CUSTOMER}{i}"), format!("{METHOD}{i}"))
}

/// Runs one instance's due work until nothing is due and the intake is done.
async fn settle(
    engine: &Engine,
    intake_done: &std::sync::atomic::AtomicBool,
) -> Result<(), RunnerError> {
    loop {
        // Read before the claim: a create that lands after it is seen by the next
        // round, which runs because the flag was still down.
        let done = intake_done.load(std::sync::atomic::Ordering::Acquire);
        engine
            .run_due()
            .await
            .map_err(RunnerError::engine("running due payments"))?;
        match engine
            .next_due()
            .await
            .map_err(RunnerError::engine("reading the next due time"))?
        {
            None if done => return Ok(()),
            None => tokio::time::sleep(Duration::from_millis(1)).await,
            Some(next) => {
                let wait = next.as_millis() - engine.now().as_millis();
                tokio::time::sleep(Duration::from_millis(wait.clamp(1, 1_000) as u64)).await;
            }
        }
    }
}

impl BenchReport {
    /// The human-readable report.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "offsession bench: {} payments, concurrency {}, store {}{}",
            self.payments,
            self.concurrency,
            self.store,
            if self.instances > 1 {
                format!(", {} instances", self.instances)
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            out,
            "  intake               {:>10.0} payments/s  ({:.2} s)",
            self.intake_per_second, self.intake_seconds
        );
        let _ = writeln!(
            out,
            "  settle               {:>10.0} payments/s  ({:.2} s{})",
            self.settled_per_second,
            self.settle_seconds,
            if self.overlap {
                ", from the first create"
            } else {
                ""
            }
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
            "  attempt overhead     {:>10.1} µs p50, {:.1} µs p99",
            self.overhead_p50_us, self.overhead_p99_us
        );
        if let Some(cpu) = self.cpu_per_payment_us {
            let _ = writeln!(
                out,
                "  CPU per payment      {cpu:>10.1} µs  (whole process, intake to last outcome)"
            );
        }
        if let Some(memory) = self.peak_memory_mib {
            let _ = writeln!(
                out,
                "  peak memory          {memory:>10.1} MiB  ({:.2} KiB per payment)",
                self.peak_memory_per_payment_kib.unwrap_or_default()
            );
        }
        let _ = writeln!(
            out,
            "  end to end           {:>10.0} payments/s  ({})",
            self.end_to_end_per_second,
            if self.overlap {
                "first create to last outcome, settling during the intake"
            } else {
                "intake + settle"
            }
        );
        if let (Some(baseline), Some(ratio)) = (self.baseline_per_second, self.baseline_ratio) {
            let _ = writeln!(
                out,
                "  plain-SQL baseline   {baseline:>10.0} payments/s  (engine end to end: {:.1} % of it)",
                ratio * 100.0
            );
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
