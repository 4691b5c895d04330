//! The `Store` trait: durable payment state, as the engine needs it to never lose a
//! payment and never charge one twice.
//!
//! The contract every implementation (in-memory, SQLite, Postgres) keeps:
//! - `update` is a compare-and-set on the record's `version` and `status`: a change
//!   computed from a stale read is refused, never applied.
//! - the engine writes an attempt (with its idempotency key) with `commit` *before*
//!   it calls the processor (write-ahead), so a crash leaves a `processing` record
//!   whose lease lapses and whose attempt is replayed with the same key;
//! - `claim_due` hands each due record to one claimant at a time, under a lease.
//! - `create` and `commit` write the change and its events (the outbox) together:
//!   an event exists exactly when its change committed.
//! - a create's idempotency key is written with the payment, so no key ever maps to a
//!   payment that does not exist.

use std::fmt::Debug;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::attempt::{AttemptRecord, ProcessorReference};
use crate::events::EventNotification;
use crate::payment::{OffSessionPayment, PaymentStatus};
use crate::policy::CardAttempt;
use crate::processor::PaymentMethodDetails;
use crate::time::Timestamp;

/// Which clock a record's due times are measured on: the engine's, or a test clock's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ClockScope {
    /// The engine's clock.
    Engine,
    /// A test clock, by id.
    TestClock(String),
}

impl ClockScope {
    /// The scope of a payment.
    pub fn of(payment: &OffSessionPayment) -> ClockScope {
        match &payment.test_clock {
            Some(id) => ClockScope::TestClock(id.clone()),
            None => ClockScope::Engine,
        }
    }
}

/// Exclusive claim of a record by one scheduler until `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Engine instance that holds it.
    pub owner: String,
    /// When it lapses (on the record's clock).
    pub until: Timestamp,
}

mod record;

pub use record::{PaymentRecord, KEYED_OPERATIONS_KEPT};

/// What `update` checks before writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// The version the change was computed from.
    pub version: u64,
    /// The status the change was computed from.
    pub status: PaymentStatus,
}

impl Expected {
    /// The expectation matching `record` as read.
    pub fn of(record: &PaymentRecord) -> Expected {
        Expected {
            version: record.version,
            status: record.payment.status,
        }
    }
}

/// Result of registering an idempotency key for a create request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// The key is new and now maps to the payment.
    Inserted,
    /// The key was seen before.
    Existing {
        /// Fingerprint of the original request.
        fingerprint: String,
        /// The payment it created.
        payment_id: String,
    },
}

/// An idempotency key to register with a new payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewIdempotencyKey<'a> {
    /// The key as the client sent it.
    pub key: &'a str,
    /// Fingerprint of the request body: a repeat with another body is refused.
    pub fingerprint: &'a str,
    /// Now, by the engine's clock: a key registered before `now - ttl` is expired and
    /// counts as new.
    pub now: Timestamp,
    /// How long a key is kept.
    pub ttl: std::time::Duration,
}

/// An event as the outbox keeps it: its position in the stream, and the thin event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// Position in the store's event stream; increases with every committed event.
    pub sequence: u64,
    /// The event.
    pub event: EventNotification,
}

/// A card's lock: held while one engine re-checks a card's network caps and writes
/// the attempt it decided ([`Store::commit_under_lock`]), so that two decisions for
/// one card (two instances, or two payments of the card in one instance) do not both
/// spend the last slot. Released when dropped.
pub struct CardLock {
    held: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl CardLock {
    /// A lock that holds nothing beyond the engine's own (stores used by one process).
    pub fn in_process() -> CardLock {
        CardLock { held: None }
    }

    /// A lock released when `held` is dropped.
    pub fn holding(held: Box<dyn std::any::Any + Send + Sync>) -> CardLock {
        CardLock { held: Some(held) }
    }

    /// What the store that made the lock holds, for its `commit_under_lock`.
    pub fn into_held(mut self) -> Option<Box<dyn std::any::Any + Send + Sync>> {
        self.held.take()
    }
}

impl Debug for CardLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CardLock")
    }
}

/// Store failures.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A payment with that id exists already.
    #[error("payment `{0}` already exists")]
    Duplicate(String),
    /// No payment with that id.
    #[error("no payment `{0}`")]
    NotFound(String),
    /// The record changed since it was read: the update was not applied.
    #[error("payment `{id}` changed since it was read (now version {current_version}, status `{current_status}`)")]
    Conflict {
        /// The payment id.
        id: String,
        /// Version now stored.
        current_version: u64,
        /// Status now stored.
        current_status: PaymentStatus,
    },
    /// The backing database failed. Nothing was written.
    #[error("store backend failed: {message}")]
    Backend {
        /// What the store was doing and what the database said.
        message: String,
        /// The same call may succeed if made again (serialization failure, deadlock,
        /// lost connection); false for errors a retry repeats (constraint, schema).
        retryable: bool,
        /// The database driver's error.
        #[source]
        source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
    },
}

impl StoreError {
    /// A backend failure with the driver's error kept as its source.
    pub fn backend(
        message: impl Into<String>,
        retryable: bool,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> StoreError {
        StoreError::Backend {
            message: message.into(),
            retryable,
            source: Some(std::sync::Arc::new(source)),
        }
    }

    /// Whether the same call may succeed if made again. A `Conflict` is not: the
    /// change must be computed again from a fresh read.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Backend {
                retryable: true,
                ..
            }
        )
    }
}

/// Durable payment state.
#[async_trait]
pub trait Store: Send + Sync + Debug {
    /// Stores a new payment, its idempotency key (if any) and its events in one
    /// transaction. When the key is already registered (and not expired) nothing is
    /// written and the original mapping is returned. Fails with `Duplicate` if the id
    /// exists.
    async fn create(
        &self,
        record: &PaymentRecord,
        key: Option<NewIdempotencyKey<'_>>,
        events: &[EventNotification],
    ) -> Result<IdempotencyClaim, StoreError>;

    /// `create`, handing the record over: a store that keeps records in memory keeps
    /// this one instead of a copy. The default creates from a reference.
    async fn create_owned(
        &self,
        record: PaymentRecord,
        key: Option<NewIdempotencyKey<'_>>,
        events: &[EventNotification],
    ) -> Result<IdempotencyClaim, StoreError> {
        self.create(&record, key, events).await
    }

    /// Stores a new payment. Fails with `Duplicate` if the id exists.
    async fn insert(&self, record: &PaymentRecord) -> Result<(), StoreError> {
        self.create(record, None, &[]).await.map(|_| ())
    }

    /// Reads a payment.
    async fn get(&self, id: &str) -> Result<Option<PaymentRecord>, StoreError>;

    /// Replaces a payment if its stored version and status still match `expected`;
    /// returns the new version. `record.version` is ignored and set by the store.
    async fn update(&self, record: &PaymentRecord, expected: Expected) -> Result<u64, StoreError> {
        self.commit(record, expected, &[]).await
    }

    /// `update`, with `events` appended to the outbox in the same transaction: both
    /// or neither are written. What a create fixed stays fixed: the SQL stores do not
    /// rewrite the columns of the processor, payment method, customer, creation time
    /// and test clock (the engine never changes them).
    async fn commit(
        &self,
        record: &PaymentRecord,
        expected: Expected,
        events: &[EventNotification],
    ) -> Result<u64, StoreError>;

    /// `commit`, handing the record over (see [`Store::create_owned`]). The default
    /// commits from a reference.
    async fn commit_owned(
        &self,
        record: PaymentRecord,
        expected: Expected,
        events: &[EventNotification],
    ) -> Result<u64, StoreError> {
        self.commit(&record, expected, events).await
    }

    /// Whether `commit` and `create` keep their events (an outbox another component
    /// reads); when false the engine builds events only if its sink wants them.
    fn keeps_events(&self) -> bool {
        true
    }

    /// Committed events after position `after`, oldest first, at most `limit`.
    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<OutboxEvent>, StoreError>;

    /// The position of the newest event kept (0 when none is).
    async fn newest_event_sequence(&self) -> Result<u64, StoreError>;

    /// Removes the committed events at or before position `sequence` (the retention
    /// sweep); how many. Later events keep their positions, and positions are never
    /// given again.
    async fn remove_events_through(&self, sequence: u64) -> Result<u64, StoreError>;

    /// The committed event with this id (`evt_…`). The default pages through
    /// [`Store::events_after`]; stores with an index on event ids answer directly.
    async fn event(&self, id: &str) -> Result<Option<OutboxEvent>, StoreError> {
        let mut after = 0;
        loop {
            let page = self.events_after(after, 1_000).await?;
            let Some(last) = page.last() else {
                return Ok(None);
            };
            after = last.sequence;
            if let Some(found) = page.into_iter().find(|e| e.event.id == id) {
                return Ok(Some(found));
            }
        }
    }

    /// The committed events of one payment, oldest first, at most `limit`. The
    /// default pages through [`Store::events_after`].
    async fn events_for(
        &self,
        payment_id: &str,
        limit: usize,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let mut after = 0;
        let mut found = Vec::new();
        loop {
            let page = self.events_after(after, 1_000).await?;
            let Some(last) = page.last() else {
                return Ok(found);
            };
            after = last.sequence;
            found.extend(
                page.into_iter()
                    .filter(|e| e.event.related_object.id == payment_id),
            );
            if found.len() >= limit {
                found.truncate(limit);
                return Ok(found);
            }
        }
    }

    /// A named piece of engine state (test clocks, the smart model, breakers) as the
    /// engine saved it.
    async fn load_state(&self, key: &str) -> Result<Option<String>, StoreError>;

    /// Saves a named piece of engine state, replacing what was there.
    async fn save_state(&self, key: &str, value: &str) -> Result<(), StoreError>;

    /// Writes a named piece of engine state only if it still holds `expected` (`None`:
    /// only if it is absent); whether it wrote. Two callers swapping from the same
    /// value: one wins. The HTTP API claims an `Idempotency-Key` with it.
    async fn swap_state(
        &self,
        key: &str,
        expected: Option<&str>,
        value: &str,
    ) -> Result<bool, StoreError>;

    /// Removes a named piece of engine state (removing one that is absent is not an
    /// error).
    async fn delete_state(&self, key: &str) -> Result<(), StoreError>;

    /// Removes a named piece of engine state only if it still holds `expected`;
    /// whether it removed it. A sweep removes what it found expired without removing
    /// what another caller wrote over it meanwhile.
    async fn remove_state_if(&self, key: &str, expected: &str) -> Result<bool, StoreError>;

    /// Every piece of engine state whose key starts with `prefix`, sorted by key
    /// (instances' heartbeats, `instance/…`).
    async fn list_state(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError>;

    /// At most `limit` pieces of engine state whose key starts with `prefix` and
    /// comes after `after` (from the first when `None`), sorted by key: a sweep over a
    /// prefix that may hold many (saved idempotency answers) reads it a page at a
    /// time. The default reads the whole prefix and cuts it; the stores read the page.
    async fn list_state_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut all = self.list_state(prefix).await?;
        if let Some(after) = after {
            all.retain(|(key, _)| key.as_str() > after);
        }
        all.truncate(limit);
        Ok(all)
    }

    /// Claims up to `limit` records of `scope` whose `claimable_at` is at or before
    /// `now`, oldest due first (records due at the same time in an order of the
    /// store's choosing), by setting `lease` on them. Each record goes to one
    /// claimant until the lease lapses or the claimant updates it. A record's scope
    /// is the one it was created in.
    async fn claim_due(
        &self,
        scope: &ClockScope,
        now: Timestamp,
        limit: usize,
        lease: &Lease,
    ) -> Result<Vec<PaymentRecord>, StoreError>;

    /// The earliest `claimable_at` in `scope`, if anything is scheduled.
    async fn next_due(&self, scope: &ClockScope) -> Result<Option<Timestamp>, StoreError>;

    /// Payment records, newest first; after the payment `starting_after` when given.
    async fn list(
        &self,
        limit: usize,
        starting_after: Option<&str>,
    ) -> Result<Vec<PaymentRecord>, StoreError>;

    /// The newest `limit` attempts sent to the card `card` (a
    /// [`PaymentRecord::card_key`]), across all payments, at or after `since`, oldest
    /// first (attempts sent in the same millisecond in an order of the store's
    /// choosing), leaving out first attempts answered without a decline: those count
    /// towards no network cap and bar nothing, and on a busy card (usage billing) they
    /// would crowd the reattempts and declines the caps count out of the `limit`. The
    /// network rules need only the newest few attempts per cap, so the answer is
    /// bounded however busy the card is.
    async fn card_history(
        &self,
        card: &str,
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<CardAttempt>, StoreError>;

    /// Takes the lock of the card `card` (a [`PaymentRecord::card_key`]) across every
    /// engine instance sharing the store, waiting while another holds it. Stores that
    /// serve one process return [`CardLock::in_process`]: the engine's own lock then
    /// suffices.
    async fn lock_card(&self, card: &str) -> Result<CardLock, StoreError> {
        let _ = card;
        Ok(CardLock::in_process())
    }

    /// [`Store::lock_card`] for several keys of one card at once (its card key and,
    /// across an upgrade, its payment method's id), taken in the order given, which
    /// every caller keeps sorted, and held as one lock.
    async fn lock_cards(&self, cards: &[&str]) -> Result<CardLock, StoreError> {
        match cards {
            [one] => self.lock_card(one).await,
            _ => Ok(CardLock::in_process()),
        }
    }

    /// [`Store::commit`] while `lock` (this store's [`Store::lock_card`]) is held,
    /// then releases it. A store whose lock can be lost before the write (a database
    /// session that ends, letting another instance take the card) writes the change
    /// only if its lock held to the commit, and fails it otherwise, so an attempt
    /// checked under a lost lock is never written and never sent.
    async fn commit_under_lock(
        &self,
        lock: CardLock,
        record: &PaymentRecord,
        expected: Expected,
        events: &[EventNotification],
    ) -> Result<u64, StoreError> {
        let written = self.commit(record, expected, events).await;
        drop(lock);
        written
    }

    /// What a create-request idempotency key maps to, `(fingerprint, payment id)`,
    /// when it is registered and not expired at `now` (registered less than `ttl`
    /// before it, as `create` counts). A create looks its key up before it
    /// validates, so a retry gets the original payment even when the request would no
    /// longer pass validation or preflight (a date since passed, a detached card).
    async fn idempotency_key(
        &self,
        key: &str,
        now: Timestamp,
        ttl: std::time::Duration,
    ) -> Result<Option<(String, String)>, StoreError>;

    /// Registers a create-request idempotency key, or returns what it mapped to.
    async fn claim_idempotency_key(
        &self,
        key: &str,
        fingerprint: &str,
        payment_id: &str,
    ) -> Result<IdempotencyClaim, StoreError>;

    /// Number of payments per status.
    async fn count_by_status(&self) -> Result<Vec<(PaymentStatus, u64)>, StoreError>;
}

/// Stores live behind `Arc<dyn Store>`: keep the trait object-safe.
fn _object_safe(_: &dyn Store) {}
