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
use offsession_core::{Clock, PaymentRecord, Store, SystemClock, Timestamp};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::batch::InvalidLine;
use crate::config::{Config, ConfigError, StoreUrl};
use crate::error::RunnerError;
use crate::wiring::{self, SMART_STATE_KEY};

mod status;
mod submit;

pub use status::{status, Lateness, StatusReport};
pub use submit::{line_key, submit, SubmitReport};

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

/// Refuses `engine.id_seed` for a command that keeps what it writes: seeded ids repeat
/// from run to run.
pub(crate) fn no_seeded_ids(config: &Config, command: &str) -> Result<(), RunnerError> {
    if let Some(seed) = config.engine.id_seed {
        return Err(RunnerError::Config(ConfigError::Invalid {
            key: "engine.id_seed".into(),
            message: format!(
                "`{command}` refuses seeded ids (seed {seed}): they repeat from run to run, so payment ids and attempt idempotency keys would collide in the store and at the processor; remove `id_seed`"
            ),
        }));
    }
    Ok(())
}

fn durable_only(config: &Config, command: &str) -> Result<(), RunnerError> {
    no_seeded_ids(config, command)?;
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
    let _worker_lock = wiring::hold_sqlite_worker_lock(config_path, config)?;
    serve_metrics(config).await?;
    let wired = wiring::build_live(config_path, config).await?;
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
                if let Err(err) = reconcile_smart(&smart, &store, &mut base).await {
                    tracing::warn!(error = %err, "reconciling the smart model failed");
                }
            }
            base
        })
    };
    let store_label = wiring::store_label(config_path, config);
    tracing::info!(instance = %config.engine.instance_id, store = %store_label, "worker started");
    eprintln!(
        "worker {} started on {}; Ctrl-C or SIGTERM stops it after the attempts in flight",
        config.engine.instance_id, store_label
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
    let mut base = match shared.await {
        Ok(base) => base,
        Err(err) => {
            tracing::warn!(error = %err, "the heartbeat task failed");
            wired.smart.state()
        }
    };
    if let Err(err) = engine.leave().await {
        tracing::warn!(error = %err, "could not mark this instance stopped");
    }
    if let Err(err) = reconcile_smart(&wired.smart, &wired.store, &mut base).await {
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
/// the result, which becomes the next `base`. The save is a compare-and-set: when
/// another worker saved its fold meanwhile, this one folds again onto that (its own
/// learning is then what it holds beyond the state it folded onto), so that no
/// worker's increment is lost. `base` always ends as the state the model was last
/// folded onto, also when this fails, so that the next fold counts nothing twice.
async fn reconcile_smart(
    smart: &offsession_retry::SmartPolicy,
    store: &Arc<dyn Store>,
    base: &mut offsession_retry::SmartState,
) -> Result<(), String> {
    let mine = smart.state();
    if mine.observations == base.observations && mine.evidence == base.evidence {
        // Nothing learned here since the last fold: take in what others saved, and
        // write nothing (the state is two vectors of 16,384 weights; an idle worker
        // rewrote it at every heartbeat).
        let Some(text) = store
            .load_state(SMART_STATE_KEY)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(());
        };
        let stored: offsession_retry::SmartState =
            serde_json::from_str(&text).map_err(|e| e.to_string())?;
        if stored != *base {
            // A fold, not a restore: whatever this worker learned since `mine` was
            // read is kept on top of it.
            smart
                .reconcile(base, stored.clone())
                .map_err(|e| e.to_string())?;
            *base = stored;
        }
        return Ok(());
    }
    for attempt in 0..RECONCILE_TRIES {
        if attempt > 0 {
            // Another worker saved between this one's read and write: let it finish.
            // Random (a fresh hasher's keys), so that workers do not retry in step.
            let jitter = {
                use std::hash::{BuildHasher, Hasher};
                std::collections::hash_map::RandomState::new()
                    .build_hasher()
                    .finish()
            };
            tokio::time::sleep(std::time::Duration::from_millis(1 + jitter % 20)).await;
        }
        let text = store
            .load_state(SMART_STATE_KEY)
            .await
            .map_err(|e| e.to_string())?;
        let stored: offsession_retry::SmartState = match &text {
            Some(text) => serde_json::from_str(text).map_err(|e| e.to_string())?,
            None => base.clone(),
        };
        let merged = smart
            .reconcile(base, stored.clone())
            .map_err(|e| e.to_string())?;
        // The model now holds `stored` plus this worker's learning.
        *base = stored;
        let merged_text = serde_json::to_string(&merged).map_err(|e| e.to_string())?;
        if store
            .swap_state(SMART_STATE_KEY, text.as_deref(), &merged_text)
            .await
            .map_err(|e| e.to_string())?
        {
            *base = merged;
            return Ok(());
        }
    }
    Err(format!(
        "the stored smart state kept changing over {RECONCILE_TRIES} tries; folding again at the next interval"
    ))
}

/// Tries at folding the smart model into the store against other workers' folds.
const RECONCILE_TRIES: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;

    /// Two workers folding into one store at once, many times: every increment of
    /// either is in the stored state at the end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_folds_lose_no_increment() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            offsession_store::SqliteStore::open(
                &dir.path().join("smart.db"),
                offsession_store::Synchronous::Normal,
            )
            .unwrap(),
        );
        const ROUNDS: u64 = 150;
        let worker = |store: Arc<dyn Store>| async move {
            let smart = offsession_retry::SmartPolicy::new(&Default::default()).unwrap();
            let mut base = smart.state();
            for _ in 0..ROUNDS {
                // One observation learned since the last fold; a fold that gave up
                // leaves it to the next.
                let mut learned = smart.state();
                learned.observations += 1;
                smart.restore(learned).unwrap();
                let _ = reconcile_smart(&smart, &store, &mut base).await;
            }
            while let Err(err) = reconcile_smart(&smart, &store, &mut base).await {
                eprintln!("{err}");
            }
        };
        let (a, b) = tokio::join!(
            tokio::spawn(worker(store.clone())),
            tokio::spawn(worker(store.clone()))
        );
        a.unwrap();
        b.unwrap();
        let stored: offsession_retry::SmartState =
            serde_json::from_str(&store.load_state(SMART_STATE_KEY).await.unwrap().unwrap())
                .unwrap();
        let prior = offsession_retry::SmartPolicy::new(&Default::default())
            .unwrap()
            .state()
            .observations;
        assert_eq!(stored.observations, prior + 2 * ROUNDS);
    }

    /// A worker that learned nothing since its last fold writes nothing, and takes in
    /// what another worker saved.
    #[tokio::test]
    async fn an_idle_fold_writes_nothing_and_takes_in_others_learning() {
        let store: Arc<dyn Store> = Arc::new(offsession_store::MemoryStore::new());
        let idle = offsession_retry::SmartPolicy::new(&Default::default()).unwrap();
        let mut base = idle.state();
        let mut busy_state = idle.state();
        busy_state.observations += 1;
        let busy = offsession_retry::SmartPolicy::new(&Default::default()).unwrap();
        let mut busy_base = busy.state();
        busy.restore(busy_state).unwrap();
        reconcile_smart(&busy, &store, &mut busy_base)
            .await
            .unwrap();
        let saved = store.load_state(SMART_STATE_KEY).await.unwrap();
        for _ in 0..3 {
            reconcile_smart(&idle, &store, &mut base).await.unwrap();
        }
        assert_eq!(store.load_state(SMART_STATE_KEY).await.unwrap(), saved);
        assert_eq!(idle.observations(), busy.observations());
        // Nothing saved yet and nothing learned: nothing written.
        let empty: Arc<dyn Store> = Arc::new(offsession_store::MemoryStore::new());
        let mut base = idle.state();
        reconcile_smart(&idle, &empty, &mut base).await.unwrap();
        assert_eq!(empty.load_state(SMART_STATE_KEY).await.unwrap(), None);
    }
}
