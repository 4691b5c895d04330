//! The plain-SQL baseline `offsession bench` compares the engine with: per payment,
//! one insert and three updates (claim, attempt start, outcome) and one outbox insert,
//! in the same tables and the same transaction shapes as the engine's store, with no
//! engine around them. It measures what the database allows on this machine, so that
//! the engine's figure can be read as a share of it.

use std::time::{Duration, Instant};

/// What the baseline writes per payment.
#[derive(Debug, Clone)]
pub struct Baseline {
    /// Payments.
    pub payments: u64,
    /// Payments per transaction (the engine's concurrency: the most its group commit
    /// can gather).
    pub batch: usize,
    /// The stored JSON of one payment (the engine's record, so rows are the same size).
    pub body: String,
    /// The stored JSON of one event (the engine's outbox row, for the same reason).
    pub event: String,
    /// The customer and payment method of payment `i`: the engine's values, so that
    /// the customer index takes the same keys in the same order (a constant made
    /// every insert an append to one index page) and the rows are the same size.
    pub keys: fn(u64) -> (String, String),
}

impl Baseline {
    /// Payment `i`'s id, customer and payment method.
    fn row(&self, i: u64) -> (String, String, String) {
        let (customer, method) = (self.keys)(i);
        (format!("osp_baseline_{i:010}"), customer, method)
    }
}

/// Runs the baseline against a new SQLite file at `path`; returns the elapsed time.
#[cfg(feature = "sqlite")]
pub fn sqlite(path: &std::path::Path, baseline: &Baseline) -> Result<Duration, String> {
    use rusqlite::params;
    drop(crate::SqliteStore::open(path, crate::Synchronous::Normal).map_err(|e| e.to_string())?);
    let mut conn = rusqlite::Connection::open(path).map_err(|e| e.to_string())?;
    crate::sqlite::configure(&conn, crate::Synchronous::Normal).map_err(|e| e.to_string())?;
    // The store's settings, its checkpoint thread included: the loop differs from the
    // store only in having no engine around it.
    let checkpoints = crate::sqlite::Checkpointer::start(path, crate::Synchronous::Normal, &conn)
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let batch = baseline.batch.max(1) as u64;
    let mut first = 0;
    while first < baseline.payments {
        let rows: Vec<(String, String, String)> = (first..(first + batch).min(baseline.payments))
            .map(|i| baseline.row(i))
            .collect();
        let step = |conn: &mut rusqlite::Connection, sql: &str, event: bool| {
            let tx = conn.transaction().map_err(|e| e.to_string())?;
            {
                let mut statement = tx.prepare_cached(sql).map_err(|e| e.to_string())?;
                let mut outbox = tx
                    .prepare_cached(
                        "INSERT INTO events (id, payment_id, type, created, body) VALUES (?1, ?2, 't', 0, ?3)",
                    )
                    .map_err(|e| e.to_string())?;
                let with_body = sql.contains("?2");
                let with_keys = sql.contains("?4");
                for (id, customer, method) in &rows {
                    if with_keys {
                        statement.execute(params![id, baseline.body, method, customer])
                    } else if with_body {
                        statement.execute(params![id, baseline.body])
                    } else {
                        statement.execute(params![id])
                    }
                    .map_err(|e| e.to_string())?;
                    if event {
                        outbox
                            .execute(params![
                                format!("evt_{id}_{}", sql.len()),
                                id,
                                baseline.event
                            ])
                            .map_err(|e| e.to_string())?;
                    }
                }
            }
            tx.commit().map_err(|e| e.to_string())
        };
        step(
            &mut conn,
            "INSERT INTO payments (id, version, status, scope, due_at, claimable_at, processor,
                 payment_method, customer, created, body)
             VALUES (?1, 1, 'pending', '', 0, 0, 'mock', ?3, ?4, 0, ?2)",
            false,
        )?;
        step(
            &mut conn,
            "UPDATE payments SET version = version + 1, lease_owner = 'bench', lease_until = 1,
                 claimable_at = 1 WHERE id = ?1",
            false,
        )?;
        step(
            &mut conn,
            "UPDATE payments SET version = version + 1, status = 'processing', body = ?2
             WHERE id = ?1",
            false,
        )?;
        step(
            &mut conn,
            "UPDATE payments SET version = version + 1, status = 'succeeded', claimable_at = NULL,
                 due_at = NULL, body = ?2 WHERE id = ?1",
            true,
        )?;
        first += batch;
    }
    let elapsed = started.elapsed();
    drop(checkpoints);
    Ok(elapsed)
}

/// Runs the baseline against `schema` (created by a `PostgresStore` first): two
/// connections (as the store's two group writers), each taking `batch` payments at a
/// time through four transactions — inserts, claims, attempt starts, outcomes with
/// their events — with the statements of a transaction pipelined, as the store's group
/// commit sends them. Returns the elapsed time.
#[cfg(feature = "postgres")]
pub async fn postgres(url: &str, schema: &str, baseline: &Baseline) -> Result<Duration, String> {
    use futures::future::try_join_all;
    use std::str::FromStr;
    const WORKERS: u64 = 2;
    let mut config = tokio_postgres::Config::from_str(url).map_err(|e| e.to_string())?;
    config.options(format!("-c search_path={schema}"));
    let mut clients = Vec::new();
    for _ in 0..WORKERS {
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        clients.push(client);
    }
    let batch = baseline.batch.max(1) as u64;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (worker, mut client) in clients.into_iter().enumerate() {
        let baseline = baseline.clone();
        let (body, event_body) = (baseline.body.clone(), baseline.event.clone());
        let payments = baseline.payments;
        tasks.push(tokio::spawn(async move {
            let mut first = worker as u64 * batch;
            while first < payments {
                let rows: Vec<(String, String, String)> = (first..(first + batch).min(payments))
                    .map(|i| baseline.row(i))
                    .collect();
                let steps: [(&str, bool, bool); 4] = [
                    (
                        "INSERT INTO payments (id, version, status, scope, due_at, claimable_at,
                             processor, payment_method, customer, created, body)
                         VALUES ($1, 1, 'pending', '', 0, 0, 'mock', $3, $4, 0, $2::text::json)",
                        true,
                        false,
                    ),
                    (
                        "UPDATE payments SET version = version + 1, lease_owner = 'bench',
                             lease_until = 1, claimable_at = 1 WHERE id = $1",
                        false,
                        false,
                    ),
                    (
                        "UPDATE payments SET version = version + 1, status = 'processing',
                             body = $2::text::json WHERE id = $1",
                        true,
                        false,
                    ),
                    (
                        "UPDATE payments SET version = version + 1, status = 'succeeded',
                             claimable_at = NULL, due_at = NULL, body = $2::text::json WHERE id = $1",
                        true,
                        true,
                    ),
                ];
                for (sql, with_body, event) in steps {
                    let tx = client.transaction().await?;
                    let statement = tx.prepare(sql).await?;
                    let outbox = tx
                        .prepare(
                            "INSERT INTO events (id, payment_id, type, created, body)
                             VALUES ($1, $2, 't', 0, $3::text::json)",
                        )
                        .await?;
                    let first_step = sql.contains("$4");
                    try_join_all(rows.iter().map(|(id, customer, method)| {
                        let (tx, statement, outbox, body, event_body) =
                            (&tx, &statement, &outbox, &body, &event_body);
                        async move {
                            if first_step {
                                tx.execute(statement, &[id, body, method, customer]).await?;
                            } else if with_body {
                                tx.execute(statement, &[id, body]).await?;
                            } else {
                                tx.execute(statement, &[id]).await?;
                            }
                            if event {
                                tx.execute(outbox, &[&format!("evt_{id}"), id, event_body])
                                    .await?;
                            }
                            Ok::<(), tokio_postgres::Error>(())
                        }
                    }))
                    .await?;
                    tx.commit().await?;
                }
                first += WORKERS * batch;
            }
            Ok::<(), tokio_postgres::Error>(())
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    }
    Ok(started.elapsed())
}
