//! The Postgres store: several engine instances share one database.
//!
//! - Due work is claimed with `FOR UPDATE SKIP LOCKED` in batches: two instances
//!   claiming at once take disjoint payments, and neither waits for the other.
//! - Every change is a compare-and-set on `version` and `status` in one transaction
//!   with its attempts and its events (the outbox).
//! - Changes are written in groups (`group.rs`). A group that carries events takes a
//!   transaction-level advisory lock once, after its changes' own statements and
//!   before their events, and holds it to the commit, so events commit in sequence order and a reader paging by sequence never
//!   skips one that commits late.
//! - A create's idempotency key is inserted in the payment's transaction; a
//!   concurrent create with the same key waits for that transaction and then reads
//!   the original payment.

use std::str::FromStr;
use std::sync::atomic::AtomicI64;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use offsession_core::{
    CardAttempt, CardLock, ClockScope, EventNotification, Expected, IdempotencyClaim, Lease,
    NewIdempotencyKey, OutboxEvent, PaymentRecord, PaymentStatus, Store, StoreError, Timestamp,
};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::NoTls;

use crate::row::{self, RecordRow, SCHEMA_VERSION};

mod creates;
mod group;
mod store;
#[doc(hidden)]
pub use store::{CARD_HISTORY, LIST_STATE_RANGE};

/// Advisory lock keys (arbitrary, fixed): migrations, and the outbox's order.
const MIGRATION_LOCK: i64 = 0x0ff5_e551_0000_0001;
const OUTBOX_LOCK: i64 = 0x0ff5_e551_0000_0002;

const MIGRATIONS: [&str; 5] = [
    r#"
CREATE TABLE payments (
    seq            BIGSERIAL UNIQUE,
    id             TEXT PRIMARY KEY,
    version        BIGINT NOT NULL,
    status         TEXT NOT NULL,
    scope          TEXT NOT NULL,
    due_at         BIGINT,
    claimable_at   BIGINT,
    lease_owner    TEXT,
    lease_until    BIGINT,
    processor      TEXT NOT NULL,
    payment_method TEXT NOT NULL,
    customer       TEXT NOT NULL,
    created        BIGINT NOT NULL,
    body           JSONB NOT NULL
);
CREATE INDEX payments_claimable ON payments (scope, claimable_at, id)
    WHERE claimable_at IS NOT NULL;
CREATE INDEX payments_status ON payments (status);
CREATE INDEX payments_customer ON payments (customer);
CREATE TABLE attempts (
    payment_id     TEXT NOT NULL,
    number         INTEGER NOT NULL,
    payment_method TEXT NOT NULL,
    started_at     BIGINT NOT NULL,
    declined       BOOLEAN NOT NULL,
    answered       BOOLEAN NOT NULL,
    amount         BIGINT NOT NULL,
    PRIMARY KEY (payment_id, number)
);
CREATE INDEX attempts_by_method ON attempts (payment_method, started_at);
CREATE TABLE idempotency_keys (
    key         TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    payment_id  TEXT NOT NULL,
    created_at  BIGINT
);
CREATE TABLE events (
    sequence   BIGSERIAL PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    payment_id TEXT NOT NULL,
    type       TEXT NOT NULL,
    created    BIGINT NOT NULL,
    body       JSONB NOT NULL
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
    // 3: bodies as `json` (the text as written: nothing queries inside them, and
    // `jsonb` parsed, key-sorted and re-printed every body on each write and read),
    // and a payment row kept whole up to 8 KB: above 2 KB (a settled payment's body is
    // about 1.7 KB of text) Postgres compressed the body on every update.
    "ALTER TABLE payments ALTER COLUMN body TYPE json USING body::text::json;
     ALTER TABLE payments SET (toast_tuple_target = 8160);
     ALTER TABLE events ALTER COLUMN body TYPE json USING body::text::json;",
    // 4: engine state read by key prefix through an index in code-point order (the
    // primary key's order follows the database's collation, in which a prefix is not
    // a range), so listing the webhook destinations reads those rows, not the table.
    "CREATE INDEX engine_state_key_c ON engine_state (key COLLATE \"C\");",
    // 5: the attempts the network rules count (every attempt but a first attempt
    // answered without a decline), by card and time: the card history reads only
    // these, and a busy card's approvals no longer lie in the way of its declines.
    "CREATE INDEX IF NOT EXISTS attempts_counted ON attempts (payment_method, started_at)
         WHERE NOT (number = 1 AND answered AND NOT declined);",
];

/// A card lock's connection, in a transaction holding (once `locked`) the advisory
/// lock. A change written under the lock is written in this transaction
/// (`Store::commit_under_lock`), whose commit releases the lock (`committed`).
struct HeldCard {
    client: Option<deadpool_postgres::Object>,
    locked: bool,
    committed: bool,
}

impl Drop for HeldCard {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        if self.committed {
            // The transaction ended with its commit: the connection goes back as is.
            return drop(client);
        }
        let runtime = tokio::runtime::Handle::try_current();
        match runtime {
            // Roll back (releasing the lock), then return the connection to the pool.
            Ok(runtime) if self.locked => {
                runtime.spawn(async move {
                    if client.batch_execute("ROLLBACK").await.is_err() {
                        // Never hand out a connection that may still hold the lock.
                        drop(deadpool_postgres::Object::take(client));
                    }
                });
            }
            // Dropped while waiting for the lock (or with no runtime to roll back on):
            // close the connection, which ends the wait and the transaction.
            _ => drop(deadpool_postgres::Object::take(client)),
        }
    }
}

/// A Postgres database (one schema of it) shared by every engine instance.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: Pool,
    /// Connections that hold card locks: a pool of their own, so a holder that needs
    /// a connection for its writes never waits on one another holder keeps.
    card_pool: Pool,
    schema: String,
    crash: std::sync::Arc<AtomicI64>,
    /// Changes queued for the group-commit writers.
    changes: tokio::sync::mpsc::UnboundedSender<group::Change>,
}

fn pg_error(action: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |e| {
        let retryable = e.is_closed()
            || matches!(
                e.code(),
                Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE
                    || *c == SqlState::T_R_DEADLOCK_DETECTED
                    || *c == SqlState::ADMIN_SHUTDOWN
                    || *c == SqlState::CANNOT_CONNECT_NOW
            )
            || e.code().is_none();
        StoreError::backend(format!("postgres: {action}"), retryable, e)
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::backend("postgres: taking a connection from the pool", true, e)
}

/// Whether `schema` is a plain identifier (it is spliced into `SET search_path`).
fn check_schema(schema: &str) -> Result<(), StoreError> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !schema.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(StoreError::Backend {
            message: format!(
                "postgres: schema `{schema}` must be 1–63 lowercase letters, digits or `_`, not starting with a digit"
            ),
            retryable: false,
            source: None,
        })
    }
}

type Param<'a> = &'a (dyn ToSql + Sync);

/// The server ends a session of this store that sits in an open transaction this long
/// without a statement (`idle_in_transaction_session_timeout`), releasing its locks. An
/// instance whose host froze or lost the network while its transaction held the
/// outbox lock or a card's lock would otherwise stall every other instance's writes
/// until the server's TCP keepalive gave up on it (about two hours by default). A group
/// transaction is idle only between its pipelined round trips; a card lock's stays
/// open while the engine reads the card's history and decides (a pool connection
/// awaited, a query), and when that outlasts this timeout the lock's session is ended:
/// the write under the lock then fails, nothing is sent, and the payment is claimed
/// again when its lease lapses.
pub const IDLE_IN_TRANSACTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host:port/db`), creates `schema` if needed,
    /// applies the migrations this binary knows (one instance at a time) and refuses
    /// a schema newer than this binary's. Every connection works in `schema`.
    pub async fn connect(
        url: &str,
        schema: &str,
        max_connections: usize,
    ) -> Result<PostgresStore, StoreError> {
        Self::connect_with(url, schema, max_connections, IDLE_IN_TRANSACTION_TIMEOUT).await
    }

    /// [`PostgresStore::connect`] with another [`IDLE_IN_TRANSACTION_TIMEOUT`] (tests).
    #[doc(hidden)]
    pub async fn connect_with(
        url: &str,
        schema: &str,
        max_connections: usize,
        idle_in_transaction: std::time::Duration,
    ) -> Result<PostgresStore, StoreError> {
        check_schema(schema)?;
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| StoreError::backend("postgres: reading the store URL", false, e))?;
        config.options(format!(
            "-c search_path={schema} -c idle_in_transaction_session_timeout={}",
            idle_in_transaction.as_millis().max(1)
        ));
        // `offsession/<schema>`: operators (and the fault tests) find an instance's
        // sessions in `pg_stat_activity` by it.
        config.application_name(format!("offsession/{schema}"));
        let pool = |size: usize| {
            let manager = Manager::from_config(
                config.clone(),
                NoTls,
                ManagerConfig {
                    // A connection is checked with an empty query before reuse: a
                    // session the server ended (restart, failover, killed) is
                    // replaced, not handed out.
                    recycling_method: RecyclingMethod::Verified,
                },
            );
            Pool::builder(manager)
                .max_size(size)
                .build()
                .map_err(|e| StoreError::backend("postgres: building the pool", false, e))
        };
        let card_pool = pool((max_connections / 4).max(2))?;
        let pool = pool(max_connections.max(1))?;
        let crash = std::sync::Arc::new(AtomicI64::new(0));
        let changes = group::start(pool.clone(), crash.clone(), 2);
        let store = PostgresStore {
            pool,
            card_pool,
            schema: schema.to_owned(),
            crash,
            changes,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Fault injection for crash tests: the `step`th step (1-based) of the next
    /// writing transaction kills its own server session (`pg_terminate_backend`), as
    /// a crash of the engine or a lost connection would, and the call fails.
    #[doc(hidden)]
    pub fn crash_at_step(&self, step: u32) {
        self.crash
            .store(i64::from(step), std::sync::atomic::Ordering::SeqCst);
    }

    /// The schema this store works in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Drops the store's schema and everything in it (tests use their own schema).
    pub async fn drop_schema(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
            .await
            .map_err(pg_error("dropping the schema"))
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client
            .transaction()
            .await
            .map_err(pg_error("starting the migration"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg_error("locking the migration"))?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.schema_version (version BIGINT NOT NULL);",
            schema = self.schema
        ))
        .await
        .map_err(pg_error("creating the schema"))?;
        let current: i64 = tx
            .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
            .await
            .map_err(pg_error("reading the schema version"))?
            .get(0);
        if current > SCHEMA_VERSION {
            return Err(row::newer_schema(current));
        }
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            let version = index as i64 + 1;
            if version > current {
                tx.batch_execute(migration)
                    .await
                    .map_err(pg_error("applying a migration"))?;
                tx.execute("DELETE FROM schema_version", &[])
                    .await
                    .map_err(pg_error("recording the schema version"))?;
                tx.execute("INSERT INTO schema_version VALUES ($1)", &[&version])
                    .await
                    .map_err(pg_error("recording the schema version"))?;
            }
        }
        tx.commit()
            .await
            .map_err(pg_error("committing the migration"))
    }
}

/// Counts a step of a writing transaction; kills the session at the armed one.
pub(super) async fn step(crash: &AtomicI64, client: &impl GenericClient) -> Result<(), StoreError> {
    use std::sync::atomic::Ordering;
    if crash.load(Ordering::Relaxed) == 0 {
        return Ok(());
    }
    if crash.fetch_sub(1, Ordering::SeqCst) != 1 {
        return Ok(());
    }
    let killed = client
        .execute("SELECT pg_terminate_backend(pg_backend_pid())", &[])
        .await;
    Err(crash_error(&format!("{killed:?}")))
}

/// The error of a step [`PostgresStore::crash_at_step`] killed: as a lost connection
/// reads, so that a group is not written again after it.
pub(super) fn crash_error(killed: &str) -> StoreError {
    StoreError::backend(
        format!("postgres: session killed by crash_at_step ({killed})"),
        true,
        std::io::Error::from(std::io::ErrorKind::ConnectionAborted),
    )
}
