//! `worker`, `submit` and `status`: the engine as a long-running process on the real
//! clock, against a durable store that several processes share.
//!
//! - `worker` attempts payments as they fall due until SIGTERM or SIGINT; on either
//!   it stops claiming, gives back the leases of payments claimed but not started,
//!   lets the attempts in flight write their outcomes (up to
//!   `worker.shutdown_deadline`), marks itself stopped and exits 0.
//! - `submit` validates and stores a batch of create requests and exits. Each line is
//!   created under the idempotency key `submit_<first 32 hex digits of the line's
//!   SHA-256>_<n>`, where `n` counts earlier lines of the same file with the same
//!   bytes: submitting the same file again (after a crash, say) creates nothing twice,
//!   and two identical lines are still two payments.
//! - `status` reads the store: counts by status and failure reason, what falls due in
//!   the next hour, what is stuck, and the instances alive.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use offsession_core::{Clock, DiscardEvents, PaymentRecord, Store, SystemClock, Timestamp};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::batch::InvalidLine;
use crate::config::{Config, ConfigError, StoreUrl};
use crate::error::RunnerError;
use crate::wiring::{self, SMART_STATE_KEY};

/// What a worker did before it stopped.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkerReport {
    /// Payments handled (attempts, replays, expiries).
    pub handled: u64,
    /// Handlings that lost a race to another instance and were skipped.
    pub conflicts: u64,
    /// Scheduler passes that failed (store unreachable, say) and were retried.
    pub failed_passes: u64,
    /// Attempts still in flight when the shutdown deadline passed (their leases
    /// lapse; another instance replays them with the same idempotency keys).
    pub abandoned: bool,
}

fn durable_only(config: &Config, command: &str) -> Result<(), RunnerError> {
    if let Some(seed) = config.engine.id_seed {
        return Err(RunnerError::Config(ConfigError::Invalid {
            key: "engine.id_seed".into(),
            message: format!(
                "`{command}` refuses seeded ids (seed {seed}): they repeat from run to run, so payment ids and attempt idempotency keys would collide in the store and at the processor; remove `id_seed`"
            ),
        }));
    }
    if matches!(config.store.parsed_url()?, StoreUrl::Memory) {
        return Err(RunnerError::Config(ConfigError::Invalid {
            key: "store.url".into(),
            message: format!(
                "`{command}` needs a durable store (`sqlite://PATH` or `postgres://…`): `memory:` keeps nothing between processes"
            ),
        }));
    }
    Ok(())
}

/// Completes when `stopped` turns true.
pub async fn stopped(mut stopped: tokio::sync::watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// Completes on SIGTERM or SIGINT.
pub async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Runs due work on the real clock until `shutdown` completes; see the module
/// documentation.
pub async fn run(
    config_path: &Path,
    config: &Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<WorkerReport, RunnerError> {
    durable_only(config, "worker")?;
    serve_metrics(config).await?;
    let wired = wiring::build(
        config_path,
        config,
        Arc::new(SystemClock),
        Arc::new(DiscardEvents),
    )
    .await?;
    run_wired(config_path, config, wired, shutdown).await
}

/// Serves `/metrics` and `/healthz` when `[metrics] listen` is set.
pub async fn serve_metrics(config: &Config) -> Result<(), RunnerError> {
    if let Some(listen) = &config.metrics.listen {
        let handle = crate::exporter::install()?;
        let addr = listen.parse().map_err(|e: std::net::AddrParseError| {
            RunnerError::Config(ConfigError::Invalid {
                key: "metrics.listen".into(),
                message: e.to_string(),
            })
        })?;
        let bound = crate::exporter::serve(addr, handle).await?;
        tracing::info!(%bound, "serving /metrics and /healthz");
    }
    Ok(())
}

/// The worker loop on an engine already built (`serve` shares it with the HTTP API).
pub async fn run_wired(
    config_path: &Path,
    config: &Config,
    wired: wiring::Wired,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<WorkerReport, RunnerError> {
    let settings = config.worker.clone();
    let engine = wired.engine.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    // Register before sending anything. When other instances are alive, wait until
    // each has had a heartbeat to see this one and lower its rate-limit share: until
    // then their shares and this one's would add up to more than the quota.
    match engine.heartbeat(settings.instance_timeout).await {
        Ok(alive) if alive > 1 => {
            tracing::info!(
                alive,
                "other instances are alive; waiting for them to share the rate limits"
            );
            tokio::select! {
                () = tokio::time::sleep(settings.heartbeat_interval.mul_f64(1.5)) => {}
                () = stopped(stop_rx.clone()) => {}
            }
        }
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "the first heartbeat failed"),
    }

    // Heartbeats, rate-limit shares, breakers and the smart model, in the background.
    let shared = {
        let engine = engine.clone();
        let smart = wired.smart.clone();
        let store = wired.store.clone();
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut base = smart.state();
            let mut tick = tokio::time::interval(settings.heartbeat_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stopped(stop.clone()) => break,
                }
                match engine.heartbeat(settings.instance_timeout).await {
                    Ok(alive) => tracing::debug!(alive, "heartbeat"),
                    Err(err) => tracing::warn!(error = %err, "heartbeat failed"),
                }
                if let Err(err) = engine.restore_breakers().await {
                    tracing::warn!(error = %err, "reloading circuit breakers failed");
                }
                match reconcile_smart(&smart, &store, &base).await {
                    Ok(next) => base = next,
                    Err(err) => tracing::warn!(error = %err, "reconciling the smart model failed"),
                }
            }
            base
        })
    };
    tracing::info!(instance = %config.engine.instance_id, store = %crate::config::redact(&config.store.url), "worker started");
    eprintln!(
        "worker {} started on {}; Ctrl-C or SIGTERM stops it after the attempts in flight",
        config.engine.instance_id,
        crate::config::redact(&config.store.url)
    );

    let mut report = WorkerReport::default();
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stop_rx.borrow() {
            break;
        }
        let deadline = {
            let stop = stop_rx.clone();
            let limit = settings.shutdown_deadline;
            async move {
                stopped(stop).await;
                tokio::time::sleep(limit).await;
            }
        };
        let pass = engine.run_due_until(stopped(stop_rx.clone()));
        tokio::select! {
            result = pass => match result {
                Ok(pass) => {
                    report.handled += pass.handled;
                    report.conflicts += pass.conflicts;
                    backoff = Duration::from_millis(100);
                }
                Err(err) => {
                    report.failed_passes += 1;
                    tracing::warn!(error = %crate::error::with_causes(&err), retry_in = ?backoff, "a pass failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stopped(stop_rx.clone()) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
            () = deadline => {
                tracing::warn!(deadline = ?settings.shutdown_deadline, "attempts were still in flight at the shutdown deadline; their leases will lapse");
                report.abandoned = true;
                break;
            }
        }
        if *stop_rx.borrow() {
            break;
        }
        let now = SystemClock.now();
        let wait = match engine.next_due().await {
            Ok(Some(next)) => Duration::from_millis(
                next.as_millis().saturating_sub(now.as_millis()).max(0) as u64,
            ),
            Ok(None) => settings.poll_interval,
            Err(err) => {
                tracing::warn!(error = %crate::error::with_causes(&err), "reading the next due time failed");
                settings.poll_interval
            }
        }
        .min(settings.poll_interval);
        if !wait.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stopped(stop_rx.clone()) => {}
            }
        }
    }

    // Stopping: no more heartbeats; this instance's rate-limit share goes back to the
    // others; what the smart model learned is folded into the store's.
    let base = match shared.await {
        Ok(base) => base,
        Err(err) => {
            tracing::warn!(error = %err, "the heartbeat task failed");
            wired.smart.state()
        }
    };
    if let Err(err) = engine.leave().await {
        tracing::warn!(error = %err, "could not mark this instance stopped");
    }
    if let Err(err) = reconcile_smart(&wired.smart, &wired.store, &base).await {
        tracing::warn!(error = %err, "could not save the smart model's learning");
    }
    if let Some(path) = &config.smart.state_path {
        wiring::save_smart_state(&wired.smart, &wiring::resolve(config_path, path))?;
    }
    tracing::info!(
        handled = report.handled,
        abandoned = report.abandoned,
        "worker stopped"
    );
    eprintln!(
        "worker stopped: {} payments handled{}",
        report.handled,
        if report.abandoned {
            "; attempts still in flight at the deadline were left (their leases lapse)"
        } else {
            ""
        }
    );
    Ok(report)
}

/// Folds the smart model's learning since `base` into the store's state and saves
/// the result, which becomes the next `base`.
async fn reconcile_smart(
    smart: &offsession_retry::SmartPolicy,
    store: &Arc<dyn Store>,
    base: &offsession_retry::SmartState,
) -> Result<offsession_retry::SmartState, String> {
    let stored = match store
        .load_state(SMART_STATE_KEY)
        .await
        .map_err(|e| e.to_string())?
    {
        Some(text) => serde_json::from_str(&text).map_err(|e| e.to_string())?,
        None => base.clone(),
    };
    let merged = smart.reconcile(base, stored).map_err(|e| e.to_string())?;
    let text = serde_json::to_string(&merged).map_err(|e| e.to_string())?;
    store
        .save_state(SMART_STATE_KEY, &text)
        .await
        .map_err(|e| e.to_string())?;
    Ok(merged)
}

/// What `submit` stored.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SubmitReport {
    /// Non-empty lines read.
    pub submitted: u64,
    /// Lines stored as new payments by this submission.
    pub created: u64,
    /// Lines whose payment an earlier submission already stored (same key).
    pub already_stored: u64,
    /// Lines refused, with their line number and error code.
    pub invalid: Vec<InvalidLine>,
}

impl SubmitReport {
    /// The report as text.
    pub fn render(&self) -> String {
        let mut out = format!(
            "offsession submit\n  submitted        {:>8}\n  created          {:>8}\n  already stored   {:>8}\n  invalid          {:>8}\n",
            self.submitted,
            self.created,
            self.already_stored,
            self.invalid.len()
        );
        for line in &self.invalid {
            out.push_str(&format!(
                "    line {:>6}: {} — {}\n",
                line.line, line.code, line.message
            ));
        }
        out
    }
}

/// The idempotency key of a submitted line: `submit_<32 hex digits of the line's
/// SHA-256>_<n>`, `n` counting earlier lines with the same bytes.
pub fn line_key(line: &[u8], occurrence: u32) -> String {
    let digest = Sha256::digest(line);
    let mut hex = String::with_capacity(32);
    for byte in &digest[..16] {
        hex.push_str(&format!("{byte:02x}"));
    }
    format!("submit_{hex}_{occurrence}")
}

/// Validates and stores every line of `input`; see the module documentation.
pub async fn submit(
    config_path: &Path,
    config: &Config,
    input: &Path,
) -> Result<SubmitReport, RunnerError> {
    durable_only(config, "submit")?;
    let text = std::fs::read(input).map_err(|e| RunnerError::file("reading", input, e))?;
    let wired = wiring::build(
        config_path,
        config,
        Arc::new(SystemClock),
        Arc::new(DiscardEvents),
    )
    .await?;
    let engine = wired.engine.clone();
    let started = SystemClock.now();
    let mut report = SubmitReport::default();
    let mut seen: std::collections::HashMap<&[u8], u32> = std::collections::HashMap::new();
    let mut lines = Vec::new();
    for (index, line) in text.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.trim_ascii().is_empty() {
            continue;
        }
        report.submitted += 1;
        let occurrence = seen.entry(line).or_insert(0);
        let key = line_key(line, *occurrence);
        *occurrence += 1;
        lines.push((index + 1, line, key));
    }
    let results: Vec<_> = futures::stream::iter(lines)
        .map(|(number, line, key)| {
            let engine = engine.clone();
            async move {
                if let Err(err) = std::str::from_utf8(line) {
                    return (
                        number,
                        Err(InvalidLine {
                            line: number,
                            code: offsession_core::ErrorCode::OspGenericInvalidRequest
                                .as_str()
                                .to_owned(),
                            message: format!(
                                "line is not valid UTF-8 (invalid byte at column {})",
                                err.valid_up_to() + 1
                            ),
                        }),
                    );
                }
                let result =
                    engine
                        .create_json(line, Some(&key))
                        .await
                        .map_err(|err| InvalidLine {
                            line: number,
                            code: err.code.as_str().to_owned(),
                            message: err.message,
                        });
                (number, result)
            }
        })
        .buffer_unordered(config.worker.submit_concurrency)
        .collect()
        .await;
    let mut results = results;
    results.sort_by_key(|(number, _)| *number);
    for (_, result) in results {
        match result {
            Ok(payment) if payment.created < started => report.already_stored += 1,
            Ok(_) => report.created += 1,
            Err(invalid) => report.invalid.push(invalid),
        }
    }
    Ok(report)
}

/// What `status` found in the store.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StatusReport {
    /// Payments stored.
    pub payments: u64,
    /// By status.
    pub statuses: BTreeMap<String, u64>,
    /// Failed payments by failure reason.
    pub failure_reasons: BTreeMap<String, u64>,
    /// Due now or earlier and not yet attempted.
    pub due_now: u64,
    /// Falling due in the next hour.
    pub due_next_hour: u64,
    /// Payments whose latest attempt's outcome is unknown (in flight when a worker
    /// died, or answered by a timeout) for longer than `--stuck-after`, or that were
    /// due longer ago than that and are still not attempted.
    pub stuck: u64,
    /// Their ids (at most 20).
    pub stuck_examples: Vec<String>,
    /// Instances by id, with the age of their last heartbeat in seconds
    /// (`null`: stopped).
    pub instances: BTreeMap<String, Option<f64>>,
    /// How late attempts were sent after they fell due, in milliseconds: first
    /// attempts (queued behind the work submitted with them) and retries (scheduled).
    pub due_to_attempt_ms: BTreeMap<&'static str, Lateness>,
}

/// Percentiles of how late attempts were sent, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Lateness {
    /// Attempts counted.
    pub attempts: u64,
    /// Median.
    pub p50: i64,
    /// 99th percentile.
    pub p99: i64,
    /// Largest.
    pub max: i64,
}

impl Lateness {
    fn of(mut late: Vec<i64>) -> Lateness {
        if late.is_empty() {
            return Lateness::default();
        }
        late.sort_unstable();
        let at = |q: f64| late[((late.len() - 1) as f64 * q).round() as usize];
        Lateness {
            attempts: late.len() as u64,
            p50: at(0.50),
            p99: at(0.99),
            max: late[late.len() - 1],
        }
    }
}

impl StatusReport {
    /// The report as text.
    pub fn render(&self) -> String {
        let mut out = format!(
            "offsession status\n  payments         {:>8}\n",
            self.payments
        );
        out.push_str("  by status\n");
        for (status, n) in &self.statuses {
            out.push_str(&format!("    {status:<24}{n:>8}\n"));
        }
        if !self.failure_reasons.is_empty() {
            out.push_str("  failure reasons\n");
            for (reason, n) in &self.failure_reasons {
                out.push_str(&format!("    {reason:<24}{n:>8}\n"));
            }
        }
        out.push_str(&format!(
            "  due now          {:>8}\n  due next hour    {:>8}\n  stuck            {:>8}\n",
            self.due_now, self.due_next_hour, self.stuck
        ));
        for id in &self.stuck_examples {
            out.push_str(&format!("    {id}\n"));
        }
        for (kind, late) in &self.due_to_attempt_ms {
            if late.attempts > 0 {
                out.push_str(&format!(
                    "  due to attempt, {kind:<15} p50 {} ms, p99 {} ms, max {} ms ({} attempts)\n",
                    late.p50, late.p99, late.max, late.attempts
                ));
            }
        }
        if !self.instances.is_empty() {
            out.push_str("  instances\n");
            for (id, age) in &self.instances {
                match age {
                    Some(age) => out.push_str(&format!("    {id:<24} heartbeat {age:.1}s ago\n")),
                    None => out.push_str(&format!("    {id:<24} stopped\n")),
                }
            }
        }
        out
    }
}

fn is_stuck(record: &PaymentRecord, now: Timestamp, stuck_after: Duration) -> bool {
    if record.payment.status.is_terminal() {
        return false;
    }
    let limit = stuck_after.as_millis() as i64;
    let older = |at: Timestamp| now.as_millis() - at.as_millis() > limit;
    if let Some(last) = record.attempts.last() {
        if last.outcome.is_none() || last.outcome_unknown {
            let since = last.first_fault_at.unwrap_or(last.started_at);
            if older(since) {
                return true;
            }
        }
    }
    record.due_at.is_some_and(older)
}

/// Reads the store named by the config; see the module documentation.
pub async fn status(
    config_path: &Path,
    config: &Config,
    stuck_after: Duration,
) -> Result<StatusReport, RunnerError> {
    let store = wiring::open_store(config_path, config).await?;
    let now = SystemClock.now();
    let hour = now.plus(Duration::from_secs(3_600));
    let mut report = StatusReport::default();
    let mut after: Option<String> = None;
    let (mut first_late, mut retry_late) = (Vec::new(), Vec::new());
    let read = |e: offsession_core::StoreError| RunnerError::Setup {
        action: "reading the store",
        message: crate::error::with_causes(&e),
    };
    loop {
        let page = store.list(1_000, after.as_deref()).await.map_err(read)?;
        let Some(last) = page.last() else { break };
        after = Some(last.payment.id.clone());
        for record in &page {
            report.payments += 1;
            *report
                .statuses
                .entry(record.payment.status.as_str().to_owned())
                .or_default() += 1;
            if let Some(reason) = record.payment.failure_reason {
                *report
                    .failure_reasons
                    .entry(reason.as_str().to_owned())
                    .or_default() += 1;
            }
            if !record.payment.status.is_terminal() {
                match record.due_at {
                    Some(due) if due <= now => report.due_now += 1,
                    Some(due) if due <= hour => report.due_next_hour += 1,
                    _ => {}
                }
            }
            for attempt in &record.attempts {
                if let Some(due) = attempt.due_at {
                    let late = attempt.started_at.as_millis() - due.as_millis();
                    if attempt.number == 1 {
                        first_late.push(late);
                    } else {
                        retry_late.push(late);
                    }
                }
            }
            if is_stuck(record, now, stuck_after) {
                report.stuck += 1;
                if report.stuck_examples.len() < 20 {
                    report.stuck_examples.push(record.payment.id.clone());
                }
            }
        }
    }
    report
        .due_to_attempt_ms
        .insert("first attempts", Lateness::of(first_late));
    report
        .due_to_attempt_ms
        .insert("retries", Lateness::of(retry_late));
    for (key, value) in store
        .list_state(offsession_orchestrator::INSTANCE_PREFIX)
        .await
        .map_err(read)?
    {
        let id = key
            .strip_prefix(offsession_orchestrator::INSTANCE_PREFIX)
            .unwrap_or(&key)
            .to_owned();
        let age = value
            .parse::<i64>()
            .ok()
            .map(|at| (now.as_millis() - at) as f64 / 1000.0);
        report.instances.insert(id, age);
    }
    Ok(report)
}
