//! The SQLite store: one file, the embedded default of every long-running mode.
//!
//! # Durability
//! The database runs in WAL mode with `synchronous = NORMAL`. A commit is in the
//! write-ahead log, in the operating system's cache, when `commit` returns: a crash
//! of the process loses nothing. A power loss or kernel crash may lose the last
//! transactions before the next checkpoint's fsync. What is lost then is at most an
//! attempt's write-ahead record or its outcome; the engine re-sends that attempt with
//! the same idempotency key (keys depend only on the payment and the attempt number),
//! so the processor answers with the charge it already made instead of charging
//! again. `[store] synchronous = "full"` trades write speed for losing nothing on a
//! power loss too.
//!
//! # Concurrency
//! One thread owns the connection. Calls queue to it; the thread takes every call
//! waiting, runs them in one transaction and commits once — a group commit, so that
//! many small changes cost one write to the log. A call that is refused (duplicate id,
//! stale version, unknown payment) decides so before it writes anything, so it needs
//! no savepoint; a database failure inside a call rolls the whole group back and every
//! call of the group fails with it (savepoints per call cost a statement journal
//! write per page and halved the writer's throughput).

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use async_trait::async_trait;
use offsession_core::{
    CardAttempt, ClockScope, Event, Expected, IdempotencyClaim, Lease, NewIdempotencyKey,
    OutboxEvent, PaymentRecord, PaymentStatus, Store, StoreError, Timestamp,
};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::row::{self, RawRecord, RecordRow, SCHEMA_VERSION};

/// How many queued calls one transaction takes at most.
const GROUP_MAX: usize = 512;

const MIGRATIONS: [&str; 1] = [r#"
CREATE TABLE payments (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    version        INTEGER NOT NULL,
    status         TEXT NOT NULL,
    scope          TEXT NOT NULL,
    due_at         INTEGER,
    claimable_at   INTEGER,
    lease_owner    TEXT,
    lease_until    INTEGER,
    processor      TEXT NOT NULL,
    payment_method TEXT NOT NULL,
    customer       TEXT NOT NULL,
    created        INTEGER NOT NULL,
    body           TEXT NOT NULL
);
CREATE INDEX payments_claimable ON payments (scope, claimable_at, id)
    WHERE claimable_at IS NOT NULL;
CREATE INDEX payments_status ON payments (status);
CREATE INDEX payments_customer ON payments (customer);
CREATE TABLE attempts (
    payment_id     TEXT NOT NULL,
    number         INTEGER NOT NULL,
    payment_method TEXT NOT NULL,
    started_at     INTEGER NOT NULL,
    declined       INTEGER NOT NULL,
    amount         INTEGER NOT NULL,
    PRIMARY KEY (payment_id, number)
);
CREATE INDEX attempts_by_method ON attempts (payment_method, started_at);
CREATE TABLE idempotency_keys (
    key         TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    payment_id  TEXT NOT NULL,
    created_at  INTEGER
);
CREATE TABLE events (
    sequence   INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    payment_id TEXT NOT NULL,
    type       TEXT NOT NULL,
    created    INTEGER NOT NULL,
    body       TEXT NOT NULL
);
CREATE INDEX events_by_payment ON events (payment_id, sequence);
CREATE TABLE engine_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#];

/// How hard a commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// WAL with `synchronous = NORMAL`: a process crash loses nothing; a power loss
    /// may lose the last commits (see the module docs).
    #[default]
    Normal,
    /// `synchronous = FULL`: every commit waits for fsync.
    Full,
}

type Finish = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// A call queued to the writer thread.
trait Call: Send {
    /// Runs in the group transaction; returns the database failure that breaks the
    /// group, if any, and how to answer once the transaction ends.
    fn run(self: Box<Self>, tx: &Transaction<'_>) -> (Option<StoreError>, Finish);
    /// Answers without running (no transaction could be started).
    fn fail(self: Box<Self>, err: StoreError);
}

struct Typed<T, W> {
    work: W,
    reply: tokio::sync::oneshot::Sender<Result<T, StoreError>>,
}

impl<T, W> Call for Typed<T, W>
where
    T: Send + 'static,
    W: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send,
{
    fn run(self: Box<Self>, tx: &Transaction<'_>) -> (Option<StoreError>, Finish) {
        let Typed { work, reply } = *self;
        let result = work(tx);
        // Refusals (duplicate, conflict, not found) are decided before a call writes
        // anything; only a database failure can leave a call half-written.
        let broke = match &result {
            Err(err @ StoreError::Backend { .. }) => Some(err.clone()),
            _ => None,
        };
        let finish: Finish = Box::new(move |committed| {
            let _ = reply.send(committed.and(result));
        });
        (broke, finish)
    }

    fn fail(self: Box<Self>, err: StoreError) {
        let _ = self.reply.send(Err(err));
    }
}

type Job = Box<dyn Call>;

/// A SQLite database file behind one writer thread.
#[derive(Debug)]
pub struct SqliteStore {
    jobs: mpsc::Sender<Job>,
}

fn sql_error(action: &str) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
    move |e| {
        let retryable = matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        );
        StoreError::backend(format!("sqlite: {action}"), retryable, e)
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, applies the migrations this
    /// binary knows, and refuses a database whose schema is newer.
    pub fn open(path: &Path, synchronous: Synchronous) -> Result<SqliteStore, StoreError> {
        let conn = Connection::open(path).map_err(sql_error("opening the database"))?;
        Self::start(conn, synchronous)
    }

    /// A private database in memory, with the same schema (for tests).
    pub fn open_in_memory() -> Result<SqliteStore, StoreError> {
        let conn = Connection::open_in_memory().map_err(sql_error("opening the database"))?;
        Self::start(conn, Synchronous::Normal)
    }

    fn start(mut conn: Connection, synchronous: Synchronous) -> Result<SqliteStore, StoreError> {
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(sql_error("setting the busy timeout"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql_error("switching to WAL"))?;
        let sync = match synchronous {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        };
        conn.pragma_update(None, "synchronous", sync)
            .map_err(sql_error("setting synchronous"))?;
        conn.pragma_update(None, "temp_store", "MEMORY")
            .map_err(sql_error("setting temp_store"))?;
        migrate(&mut conn)?;
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("offsession-sqlite".into())
            .spawn(move || writer(conn, queue))
            .map_err(|e| StoreError::backend("sqlite: starting the writer thread", false, e))?;
        Ok(SqliteStore { jobs })
    }

    /// Runs `work` on the writer thread inside a group transaction; its result is
    /// returned once that transaction committed.
    async fn call<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(Typed { work, reply });
        self.jobs.send(job).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> StoreError {
    StoreError::Backend {
        message: "sqlite: the writer thread stopped".into(),
        retryable: false,
        source: None,
    }
}

/// Applies the migrations the database lacks; refuses a newer schema.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sql_error("starting the migration"))?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .map_err(sql_error("creating schema_version"))?;
    let current: i64 = tx
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_version",
            [],
            |r| r.get(0),
        )
        .map_err(sql_error("reading the schema version"))?;
    if current > SCHEMA_VERSION {
        return Err(row::newer_schema(current));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate() {
        let version = index as i64 + 1;
        if version > current {
            tx.execute_batch(migration)
                .map_err(sql_error("applying a migration"))?;
            tx.execute("DELETE FROM schema_version", [])
                .map_err(sql_error("recording the schema version"))?;
            tx.execute("INSERT INTO schema_version VALUES (?1)", [version])
                .map_err(sql_error("recording the schema version"))?;
        }
    }
    tx.commit().map_err(sql_error("committing the migration"))
}

/// The writer thread: takes every queued call, runs them in one transaction, commits,
/// then answers each.
fn writer(mut conn: Connection, queue: mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut jobs = vec![first];
        while jobs.len() < GROUP_MAX {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                let err = sql_error("starting a transaction")(e);
                for job in jobs {
                    job.fail(err.clone());
                }
                continue;
            }
        };
        let mut finishes = Vec::with_capacity(jobs.len());
        let mut broken = None;
        for job in jobs {
            if let Some(err) = &broken {
                job.fail(StoreError::clone(err));
                continue;
            }
            let (broke, finish) = job.run(&tx);
            broken = broke;
            finishes.push(finish);
        }
        let committed = match broken {
            // A call failed in the database, maybe half-way: commit nothing of the
            // group, and every call of it fails with that error (it may be retried).
            Some(err) => {
                let _ = tx.rollback();
                Err(err)
            }
            None => tx.commit().map_err(sql_error("committing a transaction")),
        };
        for finish in finishes {
            finish(committed.clone());
        }
    }
}

fn write_payment(tx: &Transaction<'_>, row: &RecordRow, version: i64) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO payments (id, version, status, scope, due_at, claimable_at, lease_owner,
             lease_until, processor, payment_method, customer, created, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )
    .and_then(|mut insert| {
        insert.execute(params![
            row.id,
            version,
            row.status,
            row.scope,
            row.due_at,
            row.claimable_at,
            row.lease_owner,
            row.lease_until,
            row.processor,
            row.payment_method,
            row.customer,
            row.created,
            row.body
        ])
    })
    .map_err(|e| {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) {
            StoreError::Duplicate(row.id.clone())
        } else {
            sql_error("inserting a payment")(e)
        }
    })?;
    Ok(())
}

fn write_attempts(tx: &Transaction<'_>, row: &RecordRow) -> Result<(), StoreError> {
    if row.attempts.is_empty() {
        return Ok(());
    }
    let mut upsert = tx
        .prepare_cached(
            "INSERT INTO attempts (payment_id, number, payment_method, started_at, declined, amount)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (payment_id, number) DO UPDATE
             SET started_at = excluded.started_at, declined = excluded.declined",
        )
        .map_err(sql_error("preparing the attempt upsert"))?;
    for attempt in &row.attempts {
        upsert
            .execute(params![
                attempt.payment_id,
                attempt.attempt_number,
                row.payment_method,
                attempt.at.as_millis(),
                attempt.declined,
                attempt.amount
            ])
            .map_err(sql_error("writing an attempt"))?;
    }
    Ok(())
}

fn write_events(tx: &Transaction<'_>, events: &[row::EventRow]) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO events (id, payment_id, type, created, body) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(sql_error("preparing the event insert"))?;
    for (id, payment_id, event_type, created, body) in events {
        insert
            .execute(params![id, payment_id, event_type, created, body])
            .map_err(sql_error("writing an event"))?;
    }
    Ok(())
}

fn raw_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRecord> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn read_records(
    tx: &Transaction<'_>,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<RawRecord>, StoreError> {
    let mut select = tx
        .prepare_cached(sql)
        .map_err(sql_error("preparing a payment query"))?;
    let rows = select
        .query_map(params, raw_row)
        .map_err(sql_error("querying payments"))?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(sql_error("reading a payment row"))
}

#[async_trait]
impl Store for SqliteStore {
    async fn create(
        &self,
        record: &PaymentRecord,
        key: Option<NewIdempotencyKey<'_>>,
        events: &[Event],
    ) -> Result<IdempotencyClaim, StoreError> {
        let row = RecordRow::of(record)?;
        let key = key.map(|k| {
            (
                k.key.to_owned(),
                k.fingerprint.to_owned(),
                k.now.as_millis(),
                k.ttl.as_millis() as i64,
            )
        });
        let events = row::event_rows(events)?;
        self.call(move |tx| {
            if let Some((key, _, now, ttl)) = &key {
                let existing = tx
                    .prepare_cached(
                        "SELECT fingerprint, payment_id, created_at FROM idempotency_keys WHERE key = ?1",
                    )
                    .and_then(|mut s| {
                        s.query_row([key], |r| {
                            Ok((
                                r.get::<_, String>(0)?,
                                r.get::<_, String>(1)?,
                                r.get::<_, Option<i64>>(2)?,
                            ))
                        })
                        .optional()
                    })
                    .map_err(sql_error("reading an idempotency key"))?;
                if let Some((fingerprint, payment_id, at)) = existing {
                    if at.is_none_or(|at| at + ttl > *now) {
                        return Ok(IdempotencyClaim::Existing {
                            fingerprint,
                            payment_id,
                        });
                    }
                }
            }
            write_payment(tx, &row, 1)?;
            if let Some((key, fingerprint, now, _)) = &key {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO idempotency_keys (key, fingerprint, payment_id, created_at)
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut s| s.execute(params![key, fingerprint, row.id, now]))
                .map_err(sql_error("writing an idempotency key"))?;
            }
            write_attempts(tx, &row)?;
            write_events(tx, &events)?;
            Ok(IdempotencyClaim::Inserted)
        })
        .await
    }

    async fn get(&self, id: &str) -> Result<Option<PaymentRecord>, StoreError> {
        let id = id.to_owned();
        let rows = self
            .call(move |tx| {
                read_records(
                    tx,
                    "SELECT body, version, lease_owner, lease_until FROM payments WHERE id = ?1",
                    [id],
                )
            })
            .await?;
        Ok(row::records_from(rows)?.pop())
    }

    async fn commit(
        &self,
        record: &PaymentRecord,
        expected: Expected,
        events: &[Event],
    ) -> Result<u64, StoreError> {
        let row = RecordRow::of(record)?;
        let events = row::event_rows(events)?;
        self.call(move |tx| {
            let changed = tx
                .prepare_cached(
                    "UPDATE payments SET version = version + 1, status = ?1, scope = ?2,
                         claimable_at = ?3, lease_owner = ?4, lease_until = ?5, processor = ?6,
                         payment_method = ?7, customer = ?8, body = ?9, due_at = ?13
                     WHERE id = ?10 AND version = ?11 AND status = ?12",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        row.status,
                        row.scope,
                        row.claimable_at,
                        row.lease_owner,
                        row.lease_until,
                        row.processor,
                        row.payment_method,
                        row.customer,
                        row.body,
                        row.id,
                        expected.version as i64,
                        expected.status.as_str(),
                        row.due_at
                    ])
                })
                .map_err(sql_error("updating a payment"))?;
            if changed == 0 {
                let current = tx
                    .prepare_cached("SELECT version, status FROM payments WHERE id = ?1")
                    .and_then(|mut s| {
                        s.query_row([&row.id], |r| {
                            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                        })
                        .optional()
                    })
                    .map_err(sql_error("reading a payment's version"))?;
                return Err(match current {
                    None => StoreError::NotFound(row.id.clone()),
                    Some((version, status)) => StoreError::Conflict {
                        id: row.id.clone(),
                        current_version: version as u64,
                        current_status: row::status_from(&status)?,
                    },
                });
            }
            write_attempts(tx, &row)?;
            write_events(tx, &events)?;
            Ok(expected.version + 1)
        })
        .await
    }

    async fn claim_due(
        &self,
        scope: &ClockScope,
        now: Timestamp,
        limit: usize,
        lease: &Lease,
    ) -> Result<Vec<PaymentRecord>, StoreError> {
        let scope = row::scope_column(scope).to_owned();
        let lease = lease.clone();
        let rows = self
            .call(move |tx| {
                read_records(
                    tx,
                    "UPDATE payments SET version = version + 1, lease_owner = ?4,
                         lease_until = ?5, claimable_at = MAX(due_at, ?5)
                     WHERE id IN (
                         SELECT id FROM payments WHERE scope = ?1 AND claimable_at <= ?2
                         ORDER BY claimable_at, id LIMIT ?3
                     )
                     RETURNING body, version, lease_owner, lease_until",
                    params![
                        scope,
                        now.as_millis(),
                        limit as i64,
                        lease.owner,
                        lease.until.as_millis()
                    ],
                )
            })
            .await?;
        let mut claimed = row::records_from(rows)?;
        claimed.sort_by(|a, b| (a.due_at, a.id()).cmp(&(b.due_at, b.id())));
        Ok(claimed)
    }

    async fn next_due(&self, scope: &ClockScope) -> Result<Option<Timestamp>, StoreError> {
        let scope = row::scope_column(scope).to_owned();
        self.call(move |tx| {
            tx.prepare_cached("SELECT MIN(claimable_at) FROM payments WHERE scope = ?1")
                .and_then(|mut s| s.query_row([scope], |r| r.get::<_, Option<i64>>(0)))
                .map(|at| at.map(Timestamp::from_millis))
                .map_err(sql_error("reading the next due time"))
        })
        .await
    }

    async fn list(
        &self,
        limit: usize,
        starting_after: Option<&str>,
    ) -> Result<Vec<PaymentRecord>, StoreError> {
        let after = starting_after.map(str::to_owned);
        let rows = self
            .call(move |tx| match after {
                None => read_records(
                    tx,
                    "SELECT body, version, lease_owner, lease_until FROM payments
                     ORDER BY seq DESC LIMIT ?1",
                    params![limit as i64],
                ),
                Some(after) => read_records(
                    tx,
                    "SELECT body, version, lease_owner, lease_until FROM payments
                     WHERE seq < (SELECT seq FROM payments WHERE id = ?1)
                     ORDER BY seq DESC LIMIT ?2",
                    params![after, limit as i64],
                ),
            })
            .await?;
        row::records_from(rows)
    }

    async fn card_history(
        &self,
        payment_method: &str,
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<CardAttempt>, StoreError> {
        let method = payment_method.to_owned();
        self.call(move |tx| {
            let mut select = tx
                .prepare_cached(
                    "SELECT payment_id, number, started_at, declined, amount FROM attempts
                     WHERE payment_method = ?1 AND started_at >= ?2
                     ORDER BY started_at DESC, payment_id DESC, number DESC LIMIT ?3",
                )
                .map_err(sql_error("preparing the card history query"))?;
            let rows = select
                .query_map(params![method, since.as_millis(), limit as i64], |r| {
                    Ok(CardAttempt {
                        payment_id: r.get(0)?,
                        attempt_number: r.get(1)?,
                        at: Timestamp::from_millis(r.get(2)?),
                        declined: r.get(3)?,
                        amount: r.get(4)?,
                    })
                })
                .map_err(sql_error("reading the card history"))?;
            let mut history = rows
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql_error("reading the card history"))?;
            history.reverse();
            Ok(history)
        })
        .await
    }

    async fn claim_idempotency_key(
        &self,
        key: &str,
        fingerprint: &str,
        payment_id: &str,
    ) -> Result<IdempotencyClaim, StoreError> {
        let (key, fingerprint, payment_id) = (
            key.to_owned(),
            fingerprint.to_owned(),
            payment_id.to_owned(),
        );
        self.call(move |tx| {
            let inserted = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO idempotency_keys (key, fingerprint, payment_id, created_at)
                     VALUES (?1, ?2, ?3, NULL)",
                )
                .and_then(|mut s| s.execute(params![key, fingerprint, payment_id]))
                .map_err(sql_error("writing an idempotency key"))?;
            if inserted == 1 {
                return Ok(IdempotencyClaim::Inserted);
            }
            tx.prepare_cached("SELECT fingerprint, payment_id FROM idempotency_keys WHERE key = ?1")
                .and_then(|mut s| {
                    s.query_row([key], |r| {
                        Ok(IdempotencyClaim::Existing {
                            fingerprint: r.get(0)?,
                            payment_id: r.get(1)?,
                        })
                    })
                })
                .map_err(sql_error("reading an idempotency key"))
        })
        .await
    }

    async fn count_by_status(&self) -> Result<Vec<(PaymentStatus, u64)>, StoreError> {
        self.call(|tx| {
            let mut select = tx
                .prepare_cached("SELECT status, COUNT(*) FROM payments GROUP BY status")
                .map_err(sql_error("counting payments"))?;
            let rows = select
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(sql_error("counting payments"))?;
            let mut counts = std::collections::HashMap::new();
            for row in rows {
                let (status, count) = row.map_err(sql_error("counting payments"))?;
                counts.insert(row::status_from(&status)?, count as u64);
            }
            Ok(PaymentStatus::ALL
                .iter()
                .map(|s| (*s, counts.get(s).copied().unwrap_or(0)))
                .collect())
        })
        .await
    }

    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<OutboxEvent>, StoreError> {
        self.call(move |tx| {
            let mut select = tx
                .prepare_cached(
                    "SELECT sequence, body FROM events WHERE sequence > ?1 ORDER BY sequence LIMIT ?2",
                )
                .map_err(sql_error("reading events"))?;
            let rows = select
                .query_map(params![after as i64, limit as i64], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                })
                .map_err(sql_error("reading events"))?;
            let mut out = Vec::new();
            for row in rows {
                let (sequence, body) = row.map_err(sql_error("reading events"))?;
                out.push(OutboxEvent {
                    sequence: sequence as u64,
                    event: row::event_from(&body)?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn load_state(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key = key.to_owned();
        self.call(move |tx| {
            tx.prepare_cached("SELECT value FROM engine_state WHERE key = ?1")
                .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
                .map_err(sql_error("reading engine state"))
        })
        .await
    }

    async fn save_state(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.call(move |tx| {
            tx.prepare_cached(
                "INSERT INTO engine_state (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .and_then(|mut s| s.execute(params![key, value]))
            .map(|_| ())
            .map_err(sql_error("writing engine state"))
        })
        .await
    }
}
