//! Prometheus exporter: the runner installs the `metrics` recorder and serves
//! `/metrics`. Library crates only emit through the `metrics` facade, so an embedding
//! application can install its own recorder instead.

use std::net::SocketAddr;
use std::sync::Mutex;

use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::error::RunnerError;

/// Latency buckets in seconds, for every `_seconds` histogram.
const SECONDS_BUCKETS: &[f64] = &[
    0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Installs the Prometheus recorder for this process (once, even when called from
/// several threads) and returns its handle.
pub fn install() -> Result<PrometheusHandle, RunnerError> {
    let mut installed = HANDLE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets(SECONDS_BUCKETS)
        .map_err(RunnerError::setup("setting the histogram buckets"))?
        .install_recorder()
        .map_err(RunnerError::setup("installing the Prometheus recorder"))?;
    describe();
    *installed = Some(handle.clone());
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "offsession_payments_created_total",
        "Payments accepted, by cadence and retry strategy."
    );
    describe_counter!(
        "offsession_attempts_total",
        "Authorization attempts and their outcomes, by processor, outcome and decline category."
    );
    describe_histogram!(
        "offsession_attempt_duration_seconds",
        Unit::Seconds,
        "Time a processor took to answer an authorization."
    );
    describe_counter!(
        "offsession_payments_terminal_total",
        "Payments that reached a terminal status, by status and failure reason."
    );
    describe_counter!(
        "offsession_retries_scheduled_total",
        "Retries scheduled, by strategy."
    );
    describe_gauge!(
        "offsession_pending_retries",
        "Payments waiting for a scheduled retry."
    );
    describe_histogram!(
        "offsession_rate_limit_wait_seconds",
        Unit::Seconds,
        "Time attempts waited for a processor's rate-limit permit."
    );
    describe_counter!(
        "offsession_cascade_failovers_total",
        "Cascades from one processor to the next."
    );
    describe_histogram!(
        "offsession_engine_overhead_seconds",
        Unit::Seconds,
        "Engine time per handled attempt, excluding rate-limit waits and the processor."
    );
    describe_counter!(
        "offsession_attempt_faults_total",
        "Processor answers that settled nothing, by kind: unknown, refused, rate_limited, unavailable."
    );
    describe_counter!(
        "offsession_payments_unsettled_total",
        "Payments ended by faults after their replays (refused, or outcome unknown: reconcile)."
    );
    describe_gauge!(
        "offsession_circuit_state",
        "Circuit breaker per processor: 0 closed, 1 half-open, 2 open."
    );
}

/// Serves `/metrics` (and `/healthz`, answering 200 while the process runs) on `addr` until the process ends; returns the bound address.
pub async fn serve(addr: SocketAddr, handle: PrometheusHandle) -> Result<SocketAddr, RunnerError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(RunnerError::setup("binding the metrics listener"))?;
    let bound = listener
        .local_addr()
        .map_err(RunnerError::setup("reading the metrics listener's address"))?;
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move { handle.render() }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            eprintln!("metrics listener stopped: {err}");
        }
    });
    Ok(bound)
}
