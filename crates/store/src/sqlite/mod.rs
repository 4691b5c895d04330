//! The SQLite store: one file, the embedded default of every long-running mode.
//!
//! # Durability
//! The database runs in WAL mode with `synchronous = NORMAL`. A commit is in the
//! write-ahead log, in the operating system's cache, when `commit` returns: a crash
//! of the process loses nothing. A power loss or kernel crash may lose every
//! transaction since the last checkpoint's fsync, including changes the API already
//! answered (a create, a cancel, a destination). For attempts that loss cannot charge
//! twice: a lost write-ahead or outcome makes the engine re-send the attempt with the
//! same idempotency key (keys depend only on the payment and the attempt number), so
//! the processor answers with the charge it already made. A lost cancel can be: the
//! payment comes back as it was and may be charged. `[store] synchronous = "full"`
//! trades write speed for losing nothing on a power loss too.
//!
//! # Concurrency
//! One thread owns the connection. Calls queue to it; the thread takes every call
//! waiting, runs them in one transaction and commits once — a group commit, so that
//! many small changes cost one write to the log. A call that is refused (duplicate id,
//! stale version, unknown payment) decides so before it writes anything, so it needs
//! no savepoint; a database failure inside a call rolls the whole group back and every
//! call of the group fails with it (savepoints per call cost a statement journal
//! write per page and halved the writer's throughput).
//!
//! A second thread, on a connection of its own, copies the WAL into the database file
//! (passive checkpoints 2 ms apart while the writer commits, backing off to 100 ms while
//! it does not), so the writer does not stop for it; the writer
//! checkpoints by itself only when the WAL passes 16,384 pages (64 MiB), which bounds
//! the WAL under a load that never pauses.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use async_trait::async_trait;
use offsession_core::{
    CardAttempt, ClockScope, EventNotification, Expected, IdempotencyClaim, Lease,
    NewIdempotencyKey, OutboxEvent, PaymentRecord, PaymentStatus, Store, StoreError, Timestamp,
};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::row::{self, RawRecord, RecordRow, SCHEMA_VERSION};

mod state;
mod store;
mod worker_lock;

pub use worker_lock::WorkerLock;

/// How many queued calls one transaction takes at most.
const GROUP_MAX: usize = 512;

const MIGRATIONS: [&str; 5] = [
    r#"
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
    answered       INTEGER NOT NULL,
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
"#,
    // 2: the network advice code of each attempt's decline, for the rule that bars a
    // card for 30 days after Mastercard advice code 03 or 21.
    "ALTER TABLE attempts ADD COLUMN advice_code TEXT;",
    // 3: Postgres keeps bodies as `json` from this version; SQLite's were text
    // already. The stores share one version number.
    "-- nothing to change",
    // 4: Postgres indexes engine state in code-point order; SQLite's primary key is in
    // that order already.
    "-- nothing to change",
    // 5: the attempts the network rules count (every attempt but a first attempt
    // answered without a decline), by card and time: the card history reads only
    // these, and a busy card's approvals no longer lie in the way of its declines.
    "CREATE INDEX IF NOT EXISTS attempts_counted ON attempts (payment_method, started_at)
         WHERE NOT (number = 1 AND answered AND NOT declined);",
];

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
        let changes = tx.total_changes();
        let result = work(tx);
        // Refusals (duplicate, conflict, not found) are decided before a call writes
        // anything; only a database failure can leave a call half-written, and only
        // when it changed a row before failing or SQLite rolled the whole transaction
        // back (as it does on some errors). A failure before any change (a row it could
        // not decode, a read that failed) is the call's alone: the other calls of the
        // group are written.
        let broke = match &result {
            Err(err @ StoreError::Backend { .. })
                if tx.is_autocommit() || tx.total_changes() != changes =>
            {
                Some(err.clone())
            }
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
    /// `None` only while dropping.
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// Files only; stopped first on drop.
    checkpoints: Option<Checkpointer>,
}

impl Drop for SqliteStore {
    /// Stops the checkpointer, closes the queue and waits for the writer to finish its
    /// last group and close the database (the last connection to close checkpoints the
    /// WAL and removes its files).
    fn drop(&mut self) {
        drop(self.checkpoints.take());
        drop(self.jobs.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// How soon the checkpointer looks again after the writer committed. Small
/// checkpoints keep little written data pending in the kernel: at 9,500 creates/s over
/// HTTP the p99 was 24.9–30.6 ms with a checkpoint every 50 ms, 12.8–14.2 ms every
/// 10 ms, 9.0–10.7 ms every 2 ms (BENCHMARKS.md).
const CHECKPOINT_BUSY: Duration = Duration::from_millis(2);
/// The longest wait between checkpoints: the wait doubles from `CHECKPOINT_BUSY` up
/// to this while nothing is committed, so an idle store costs 10 wakeups a second.
const CHECKPOINT_IDLE: Duration = Duration::from_millis(100);
/// WAL pages at which the writer checkpoints itself: only when the checkpointer falls
/// behind, and so that the WAL is restarted from its beginning (which needs a
/// checkpoint that finishes while nothing is appended) and stays bounded under a
/// load that never pauses.
const WRITER_CHECKPOINT_PAGES: i64 = 16_384;

/// A thread that runs passive checkpoints on a connection of its own, so that copying
/// the WAL into the database file (and its fsync) runs beside the writer instead of
/// inside the commit that crossed SQLite's threshold (12 % of the writer's time).
/// Dropping it stops the thread and closes its connection.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing the database at `path`, and sets the writer's own
    /// threshold (`WRITER_CHECKPOINT_PAGES`) on `writer`, its connection.
    pub(crate) fn start(
        path: &Path,
        synchronous: Synchronous,
        writer: &Connection,
    ) -> Result<Checkpointer, StoreError> {
        writer
            .pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)
            .map_err(sql_error("setting wal_autocheckpoint"))?;
        let conn =
            Connection::open(path).map_err(sql_error("opening the checkpoint connection"))?;
        configure(&conn, synchronous)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("offsession-sqlite-checkpoint".into())
            .spawn(move || {
                let mut wait = CHECKPOINT_IDLE;
                let mut seen = None;
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(wait) {
                    // `data_version` changes when another connection (the writer) has
                    // committed since this one last asked.
                    let version = conn
                        .query_row("PRAGMA data_version", [], |row| row.get::<_, i64>(0))
                        .ok();
                    // A failed or partial checkpoint is retried on the next tick; the
                    // writer's own threshold bounds the WAL meanwhile.
                    let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                    wait = next_checkpoint_wait(wait, version.is_some() && version != seen);
                    seen = version;
                }
            })
            .map_err(|e| StoreError::backend("sqlite: starting the checkpointer", false, e))?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// The checkpointer's next wait: `CHECKPOINT_BUSY` after the writer committed, else
/// twice the last wait, up to `CHECKPOINT_IDLE`.
fn next_checkpoint_wait(last: Duration, written: bool) -> Duration {
    if written {
        CHECKPOINT_BUSY
    } else {
        (last * 2).min(CHECKPOINT_IDLE)
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
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
        let checkpoints = Checkpointer::start(path, synchronous, &conn)?;
        let mut store = Self::start(conn, synchronous)?;
        store.checkpoints = Some(checkpoints);
        Ok(store)
    }

    /// A private database in memory, with the same schema (for tests).
    pub fn open_in_memory() -> Result<SqliteStore, StoreError> {
        let conn = Connection::open_in_memory().map_err(sql_error("opening the database"))?;
        Self::start(conn, Synchronous::Normal)
    }

    fn start(mut conn: Connection, synchronous: Synchronous) -> Result<SqliteStore, StoreError> {
        configure(&conn, synchronous)?;
        migrate(&mut conn)?;
        let (jobs, queue) = mpsc::channel::<Job>();
        let writer = std::thread::Builder::new()
            .name("offsession-sqlite".into())
            .spawn(move || writer(conn, queue))
            .map_err(|e| StoreError::backend("sqlite: starting the writer thread", false, e))?;
        Ok(SqliteStore {
            jobs: Some(jobs),
            writer: Some(writer),
            checkpoints: None,
        })
    }

    /// Runs `work` on the writer thread inside a group transaction; its result is
    /// returned once that transaction committed.
    async fn call<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(Typed { work, reply });
        self.jobs
            .as_ref()
            .ok_or_else(stopped)?
            .send(job)
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// The connection settings of the store (and of the bench's plain-SQL baseline, so
/// both run on the same database settings).
pub(crate) fn configure(conn: &Connection, synchronous: Synchronous) -> Result<(), StoreError> {
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
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The card history is read through the index of counted attempts, so a card's
    /// approved first attempts are not passed over one by one.
    #[tokio::test]
    async fn the_card_history_reads_the_counted_attempts_index() {
        let store = SqliteStore::open_in_memory().unwrap();
        let plan = store
            .call(|tx| {
                let mut explain = tx
                    .prepare(&format!("EXPLAIN QUERY PLAN {}", store::CARD_HISTORY))
                    .map_err(sql_error("test"))?;
                let rows = explain
                    .query_map(params!["pm_x", 0, 256], |r| r.get::<_, String>(3))
                    .map_err(sql_error("test"))?;
                rows.collect::<Result<Vec<_>, _>>()
                    .map_err(sql_error("test"))
            })
            .await
            .unwrap();
        assert!(
            plan.iter().any(|step| step.contains("attempts_counted")),
            "{plan:?}"
        );
    }

    /// Polls `call` once, which queues its job to the writer, and hands it back.
    async fn queued<F: std::future::Future + Unpin>(mut call: F) -> F {
        tokio::select! {
            biased;
            _ = &mut call => panic!("answered while the writer was held"),
            () = std::future::ready(()) => call,
        }
    }

    /// Holds the writer thread in a call of its own until the returned sender sends.
    async fn hold_writer(
        store: &std::sync::Arc<SqliteStore>,
    ) -> (
        std::sync::mpsc::Sender<()>,
        tokio::task::JoinHandle<Result<(), StoreError>>,
    ) {
        let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let store = store.clone();
        let hold = tokio::spawn(async move {
            store
                .call(move |_| {
                    held_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                    Ok(())
                })
                .await
        });
        tokio::task::spawn_blocking(move || held_rx.recv().unwrap())
            .await
            .unwrap();
        (release_tx, hold)
    }

    /// A call that fails reading a row it cannot decode, grouped with a create: the
    /// create is written, and only the reading call fails. A call that fails after
    /// writing a row still fails its whole group.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_that_fails_before_writing_fails_alone_in_its_group() {
        use offsession_core::Store;
        let dir = std::env::temp_dir().join(format!("offsession-group-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("group.db");
        let _ = std::fs::remove_file(&path);
        let store = std::sync::Arc::new(SqliteStore::open(&path, Synchronous::Normal).unwrap());
        // An event row no binary can read (a newer binary's, or damaged).
        store
            .call(|tx| {
                tx.execute(
                    "INSERT INTO events (id, payment_id, type, created, body)
                     VALUES ('evt_bad', 'osp_x', 'v2.unknown', 0, '{')",
                    [],
                )
                .map_err(sql_error("test"))?;
                Ok(())
            })
            .await
            .unwrap();
        let first = crate::conformance::sample_record("osp_group_1", 1_000, None);
        let second = crate::conformance::sample_record("osp_group_2", 2_000, None);

        // The writer held, both calls queue behind it and run as one group.
        let (release, hold) = hold_writer(&store).await;
        let read = queued(store.events_after(0, 10)).await;
        let create = queued(store.create(&first, None, &[])).await;
        release.send(()).unwrap();
        hold.await.unwrap().unwrap();
        assert!(read.await.is_err(), "the unreadable event is an error");
        create
            .await
            .expect("the create grouped with the failed read is written");
        assert!(store.get("osp_group_1").await.unwrap().is_some());

        // A call that wrote a row and then failed takes its group down with it.
        let (release, hold) = hold_writer(&store).await;
        let half = queued(Box::pin(store.call(|tx| {
            tx.execute("DELETE FROM events WHERE id = 'evt_bad'", [])
                .map_err(sql_error("test"))?;
            Err::<(), _>(StoreError::Backend {
                message: "failed after a write".into(),
                retryable: true,
                source: None,
            })
        })))
        .await;
        let create = queued(store.create(&second, None, &[])).await;
        release.send(()).unwrap();
        hold.await.unwrap().unwrap();
        assert!(half.await.is_err());
        assert!(create.await.is_err(), "the group was rolled back");
        assert!(store.get("osp_group_2").await.unwrap().is_none());
        assert!(
            store.events_after(0, 10).await.is_err(),
            "the half-written delete was rolled back"
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_checkpointer_comes_back_soon_after_a_commit_and_backs_off_while_idle() {
        let mut wait = CHECKPOINT_IDLE;
        wait = next_checkpoint_wait(wait, true);
        assert_eq!(wait, Duration::from_millis(2));
        let mut idle = Vec::new();
        for _ in 0..8 {
            wait = next_checkpoint_wait(wait, false);
            idle.push(wait.as_millis());
        }
        assert_eq!(idle, [4, 8, 16, 32, 64, 100, 100, 100]);
        assert_eq!(next_checkpoint_wait(wait, true), CHECKPOINT_BUSY);
    }
}
