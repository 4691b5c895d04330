//! The plain-SQL baseline the bench compares the engine with, and dropping what the
//! bench made on Postgres.

use std::sync::Arc;

use offsession_core::Store;
use offsession_store::baseline::Baseline;
use offsession_store::PostgresStore;

use super::{payment_keys, BenchOptions};
use crate::config::StoreUrl;
use crate::error::RunnerError;

/// A stored payment's JSON and an event's body column, for the baseline's rows to be as
/// large as the engine's.
pub(super) async fn sample_rows(store: &Arc<dyn Store>) -> Result<(String, String), RunnerError> {
    let event = store
        .events_after(0, 1)
        .await
        .map_err(RunnerError::setup("reading a stored event"))?
        .first()
        .map(|e| offsession_store::event_body(&e.event).unwrap_or_default())
        .unwrap_or_else(|| "{}".into());
    let sample = store
        .list(1, None)
        .await
        .map_err(RunnerError::setup("reading a stored payment"))?;
    let body = sample
        .first()
        .map(|r| serde_json::to_string(r).unwrap_or_default())
        .unwrap_or_else(|| "{}".into());
    Ok((body, event))
}

/// Times the plain-SQL baseline on a store like the bench's (durable stores only).
pub(super) async fn baseline(
    url: &StoreUrl,
    schema: &str,
    options: &BenchOptions,
    (body, event): (String, String),
) -> Result<Option<f64>, RunnerError> {
    let failed = RunnerError::setup("running the plain-SQL baseline");
    let elapsed = match url {
        StoreUrl::Memory => return Ok(None),
        StoreUrl::Sqlite(path) => {
            let file = path.with_extension("baseline.db");
            let result = offsession_store::baseline::sqlite(
                &file,
                &Baseline {
                    payments: options.payments,
                    batch: options.concurrency,
                    body,
                    event,
                    keys: payment_keys,
                },
            );
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
            }
            result.map_err(failed)?
        }
        StoreUrl::Postgres(url) => {
            let baseline_schema = format!("{schema}_baseline");
            let store = PostgresStore::connect(url, &baseline_schema, 1)
                .await
                .map_err(RunnerError::setup("opening the baseline schema"))?;
            let result = offsession_store::baseline::postgres(
                url,
                &baseline_schema,
                &Baseline {
                    payments: options.payments,
                    batch: options.concurrency,
                    body,
                    event,
                    keys: payment_keys,
                },
            )
            .await;
            store
                .drop_schema()
                .await
                .map_err(RunnerError::setup("dropping the baseline schema"))?;
            result.map_err(failed)?
        }
    };
    Ok(Some(elapsed.as_secs_f64()))
}

/// Drops what the bench made on Postgres; a SQLite file is left for inspection.
pub(super) async fn drop_bench_store(url: &StoreUrl, schema: &str) -> Result<(), RunnerError> {
    if let StoreUrl::Postgres(url) = url {
        PostgresStore::connect(url, schema, 1)
            .await
            .map_err(RunnerError::setup("opening the bench schema"))?
            .drop_schema()
            .await
            .map_err(RunnerError::setup("dropping the bench schema"))?;
    }
    Ok(())
}
