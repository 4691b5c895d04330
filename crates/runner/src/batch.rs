//! `offsession run`: submit a batch of create requests and drive them to completion
//! on a simulated clock.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use offsession_core::{Clock, Event, EventSink, EventType, ManualClock, PaymentStatus, Timestamp};
use serde::Serialize;

use crate::config::{Config, ConfigError};
use crate::error::RunnerError;
use crate::wiring;

/// Counts settled payments as the events report them (for the progress bar).
#[derive(Debug, Default)]
pub struct Tally {
    terminal: AtomicU64,
}

impl EventSink for Tally {
    fn emit(&self, event: Event) {
        if matches!(
            event.event_type,
            EventType::Succeeded | EventType::Failed | EventType::Canceled
        ) {
            self.terminal.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A line of the input that was refused.
#[derive(Debug, Clone, Serialize)]
pub struct InvalidLine {
    /// 1-based line number.
    pub line: usize,
    /// API error code.
    pub code: String,
    /// Why the line was refused, naming the field.
    pub message: String,
}

impl InvalidLine {
    /// Line `line` (1-based) is not UTF-8: `err` says where.
    pub(crate) fn not_utf8(line: usize, err: std::str::Utf8Error) -> InvalidLine {
        InvalidLine {
            line,
            code: offsession_core::ErrorCode::OspGenericInvalidRequest
                .as_str()
                .to_owned(),
            message: format!(
                "line is not valid UTF-8 (invalid byte at column {})",
                err.valid_up_to() + 1
            ),
        }
    }
}

/// The outcome of a batch run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Non-empty input lines.
    pub submitted: u64,
    /// Accepted payments.
    pub accepted: u64,
    /// Refused lines.
    pub invalid: Vec<InvalidLine>,
    /// Payments per final status.
    pub statuses: BTreeMap<String, u64>,
    /// Failed payments per failure reason.
    pub failure_reasons: BTreeMap<String, u64>,
    /// Authorization attempts made.
    pub attempts: u64,
    /// Payments whose first attempt failed.
    pub first_attempt_failures: u64,
    /// Of those, payments that succeeded on a retry.
    pub recovered_by_retry: u64,
    /// `recovered_by_retry / first_attempt_failures`.
    pub recovery_rate: f64,
    /// Payments with at least one answer that settled nothing (processor fault,
    /// refusal, lost answer), however they ended.
    pub faulted: u64,
    /// Payments that ended because of faults, not the issuer's answer: replays
    /// were spent on refusals, or an outcome stayed unknown.
    pub ended_by_faults: u64,
    /// Of those, payments whose last attempt's outcome is unknown: reconcile them
    /// with the processor (same idempotency key) before charging again.
    pub outcome_unknown: u64,
    /// Payments still pending, processing or pending a retry when the run ended.
    pub stuck: u64,
    /// The simulated clock when the batch was submitted (RFC 3339).
    pub simulated_start: String,
    /// The simulated clock when the last due attempt ran (RFC 3339).
    pub simulated_end: String,
    /// Wall-clock seconds.
    pub wall_seconds: f64,
    /// Accepted payments per wall-clock second.
    pub payments_per_second: f64,
}

/// Runs the batch in `input` (`run.input` when `None`).
pub async fn run(
    config_path: &Path,
    config: &Config,
    input: Option<&Path>,
    show_progress: bool,
) -> Result<Summary, RunnerError> {
    let started = Instant::now();
    let start = Timestamp::parse_rfc3339(&config.run.start).ok_or_else(|| {
        RunnerError::Config(ConfigError::Invalid {
            key: "run.start".into(),
            message: format!("`{}` is not an RFC 3339 time", config.run.start),
        })
    })?;
    let horizon = config.run.horizon;
    let end_of_horizon = start.plus(horizon);
    let clock = Arc::new(ManualClock::new(start));
    let tally = Arc::new(Tally::default());
    if let Some(listen) = &config.metrics.listen {
        let handle = crate::exporter::install()?;
        let addr = listen.parse().map_err(|e: std::net::AddrParseError| {
            RunnerError::Config(ConfigError::Invalid {
                key: "metrics.listen".into(),
                message: e.to_string(),
            })
        })?;
        let bound = crate::exporter::serve(addr, handle).await?;
        eprintln!("serving Prometheus metrics on http://{bound}/metrics");
    }
    let _worker_lock = wiring::hold_sqlite_worker_lock(config_path, config)?;
    let wired = wiring::build(config_path, config, clock.clone(), tally.clone()).await?;
    let engine = wired.engine.clone();
    let stored: u64 = engine
        .count_by_status()
        .await
        .map_err(RunnerError::api("counting stored payments"))?
        .iter()
        .map(|(_, n)| n)
        .sum();
    if stored > 0 {
        return Err(RunnerError::Config(ConfigError::Invalid {
            key: "store.url".into(),
            message: format!(
                "the store already holds {stored} payments; `run` is a demo that starts from an empty store: point `store.url` at a new file or schema"
            ),
        }));
    }

    let input_path = match input {
        Some(path) => path.to_owned(),
        None => wiring::resolve(config_path, &config.run.input),
    };
    let file = std::fs::File::open(&input_path)
        .map_err(|e| RunnerError::file("opening the input", &input_path, e))?;
    let mut submitted = 0;
    let mut accepted = 0;
    let mut invalid = Vec::new();
    for (index, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
        let line = line.map_err(|e| RunnerError::file("reading the input", &input_path, e))?;
        if line.trim_ascii().is_empty() {
            continue;
        }
        submitted += 1;
        if let Err(err) = std::str::from_utf8(&line) {
            invalid.push(InvalidLine::not_utf8(index + 1, err));
            continue;
        }
        match engine.create_json(&line, None).await {
            Ok(_) => accepted += 1,
            Err(err) => invalid.push(InvalidLine {
                line: index + 1,
                code: err.code.as_str().to_owned(),
                message: err.message,
            }),
        }
    }

    let progress = if show_progress {
        let bar = ProgressBar::new(accepted);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{bar:40}] {pos}/{len} settled, simulated {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    loop {
        engine
            .run_due()
            .await
            .map_err(RunnerError::engine("running due payments"))?;
        if config.metrics.listen.is_some() {
            engine
                .update_gauges()
                .await
                .map_err(RunnerError::engine("updating gauges"))?;
        }
        progress.set_position(tally.terminal.load(Ordering::Relaxed));
        progress.set_message(clock.now().to_string());
        match engine
            .next_due()
            .await
            .map_err(RunnerError::engine("reading the next due time"))?
        {
            Some(next) if next <= end_of_horizon => {
                clock.set(next);
            }
            _ => break,
        }
    }
    progress.finish_and_clear();
    wired.save_smart_state(config_path, config).await?;

    let mut statuses = BTreeMap::new();
    let by_status = engine
        .count_by_status()
        .await
        .map_err(RunnerError::api("counting payments by status"))?;
    for (status, count) in by_status {
        if count > 0 || matches!(status, PaymentStatus::Succeeded | PaymentStatus::Failed) {
            statuses.insert(status.as_str().to_owned(), count);
        }
    }
    let counts = Counts::of(&engine).await?;
    let first_attempt_failures = counts.first_attempt_failures;
    let recovered_by_retry = counts.recovered_by_retry;
    let wall_seconds = started.elapsed().as_secs_f64();
    let failure_reasons = counts.failure_reasons;
    Ok(Summary {
        submitted,
        accepted,
        invalid,
        statuses,
        failure_reasons,
        attempts: counts.attempts,
        first_attempt_failures,
        recovered_by_retry,
        recovery_rate: if first_attempt_failures == 0 {
            0.0
        } else {
            recovered_by_retry as f64 / first_attempt_failures as f64
        },
        faulted: counts.faulted,
        ended_by_faults: counts.ended_by_faults,
        outcome_unknown: counts.outcome_unknown,
        stuck: counts.stuck,
        simulated_start: start.to_string(),
        simulated_end: clock.now().to_string(),
        wall_seconds,
        payments_per_second: accepted as f64 / wall_seconds.max(1e-9),
    })
}

/// What the store says of every payment at the end of a run.
#[derive(Debug, Default)]
struct Counts {
    attempts: u64,
    first_attempt_failures: u64,
    recovered_by_retry: u64,
    failure_reasons: BTreeMap<String, u64>,
    faulted: u64,
    ended_by_faults: u64,
    outcome_unknown: u64,
    stuck: u64,
}

impl Counts {
    async fn of(engine: &offsession_orchestrator::Engine) -> Result<Counts, RunnerError> {
        let mut counts = Counts::default();
        let mut after: Option<String> = None;
        loop {
            let page = engine
                .list(1_000, after.as_deref())
                .await
                .map_err(RunnerError::api("listing payments"))?;
            let Some(last) = page.last() else {
                break;
            };
            after = Some(last.id.clone());
            for payment in &page {
                let record = engine
                    .record(&payment.id)
                    .await
                    .map_err(RunnerError::api("reading a payment"))?;
                counts.add(&record);
            }
        }
        Ok(counts)
    }

    fn add(&mut self, record: &offsession_orchestrator::PaymentView) {
        use offsession_core::AttemptOutcome;
        let payment = &record.payment;
        self.attempts += u64::from(payment.retry_details.attempts);
        let first_declined = record
            .attempts
            .first()
            .is_some_and(|a| a.decline_category.is_some());
        if first_declined {
            self.first_attempt_failures += 1;
            if payment.status == PaymentStatus::Succeeded {
                self.recovered_by_retry += 1;
            }
        }
        if let Some(reason) = payment.failure_reason {
            *self
                .failure_reasons
                .entry(reason.as_str().to_owned())
                .or_default() += 1;
        }
        if record.attempts.iter().any(|a| a.first_fault_at.is_some()) {
            self.faulted += 1;
        }
        let last = record.attempts.last();
        if payment.status == PaymentStatus::Failed
            && last.is_some_and(|a| {
                matches!(
                    a.outcome,
                    Some(AttemptOutcome::ProcessorFault { .. } | AttemptOutcome::Unknown { .. })
                )
            })
        {
            self.ended_by_faults += 1;
            if last.is_some_and(|a| a.outcome_unknown) {
                self.outcome_unknown += 1;
            }
        }
        if matches!(
            payment.status,
            PaymentStatus::Pending | PaymentStatus::Processing | PaymentStatus::PendingRetry
        ) {
            self.stuck += 1;
        }
    }
}

impl Summary {
    /// Payments the run could not settle: still in flight at the end, or ended by
    /// faults instead of an answer. The runner exits non-zero when there are any.
    pub fn unsettled(&self) -> u64 {
        self.stuck + self.ended_by_faults
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(out, "offsession run summary");
        let _ = writeln!(out, "  submitted            {:>8}", self.submitted);
        let _ = writeln!(out, "  accepted             {:>8}", self.accepted);
        let _ = writeln!(out, "  invalid              {:>8}", self.invalid.len());
        for line in self.invalid.iter().take(20) {
            let _ = writeln!(
                out,
                "    line {:>5}: {} — {}",
                line.line, line.code, line.message
            );
        }
        if self.invalid.len() > 20 {
            let _ = writeln!(
                out,
                "    … {} more (use --json for all)",
                self.invalid.len() - 20
            );
        }
        let _ = writeln!(out, "  final status");
        for (status, count) in &self.statuses {
            let _ = writeln!(out, "    {status:<18} {count:>8}");
        }
        if !self.failure_reasons.is_empty() {
            let _ = writeln!(out, "  failure reasons");
            for (reason, count) in &self.failure_reasons {
                let _ = writeln!(out, "    {reason:<24} {count:>8}");
            }
        }
        let per_payment = self.attempts as f64 / (self.accepted.max(1)) as f64;
        let _ = writeln!(
            out,
            "  attempts             {:>8}  ({per_payment:.2} per payment)",
            self.attempts
        );
        let _ = writeln!(
            out,
            "  first attempt failed {:>8}",
            self.first_attempt_failures
        );
        let _ = writeln!(
            out,
            "  recovered by retry   {:>8}  ({:.1}% of first-attempt failures)",
            self.recovered_by_retry,
            self.recovery_rate * 100.0
        );
        let _ = writeln!(
            out,
            "  faulted              {:>8}  (an answer settled nothing at least once)",
            self.faulted
        );
        let _ = writeln!(
            out,
            "  ended by faults      {:>8}  (of which outcome unknown: {})",
            self.ended_by_faults, self.outcome_unknown
        );
        let _ = writeln!(
            out,
            "  stuck                {:>8}  (not settled when the run ended)",
            self.stuck
        );
        let _ = writeln!(
            out,
            "  simulated time       {} → {}",
            self.simulated_start, self.simulated_end
        );
        let _ = writeln!(
            out,
            "  wall time            {:.3} s  ({:.0} payments/s)",
            self.wall_seconds, self.payments_per_second
        );
        out
    }
}
