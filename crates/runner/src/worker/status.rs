//! `status`: what the store holds, what falls due, what is stuck, which instances are
//! alive, and how late attempts went out.

use super::*;

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
