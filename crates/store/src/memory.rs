//! An in-memory `Store`: the whole contract, no durability. For tests, simulations,
//! benchmarks and embeddings that keep state elsewhere.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use offsession_core::{
    CardAttempt, ClockScope, EventNotification, Expected, IdempotencyClaim, Lease,
    NewIdempotencyKey, OutboxEvent, PaymentRecord, PaymentStatus, Store, StoreError, Timestamp,
};

/// The store's hash maps: foldhash, seeded per map (SipHash, the standard default,
/// took about 3,700 instructions per payment in the bench's callgrind profile).
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

mod index;
use index::{due_key, reindex_card, reindex_due, CardKey, DueKey};

/// A payment and its creation sequence, which keys it in the ordered indexes (integer
/// keys compare in a few instructions; ids are 30-byte strings).
#[derive(Debug)]
struct Stored {
    sequence: u64,
    /// The clock scope its due entry is filed under: fixed at create, as the SQL
    /// stores' `scope` column is (the engine never moves a payment between clocks).
    scope: ClockScope,
    record: PaymentRecord,
}

#[derive(Debug, Default)]
struct Inner {
    records: Map<String, Stored>,
    /// Per clock scope, the claimable payments by time (their ids as values).
    due: Map<ClockScope, BTreeMap<DueKey, String>>,
    /// Payments by creation sequence (for newest-first lists).
    creation_order: BTreeMap<u64, String>,
    next_sequence: u64,
    /// Settled payments, oldest settlement first (pruned beyond the retention).
    settled: std::collections::VecDeque<String>,
    /// Every attempt per card (`PaymentRecord::card_key`) that a network rule can
    /// count (`CardAttempt::counted`: not a first attempt approved), sorted by time: the network
    /// guard's question is a range read here, not a scan of the card's payments. A
    /// sorted `Vec` per card, not a `BTreeMap`: most cards hold one or two attempts, and a map
    /// allocates a node for eleven (1 KiB per card in the bench).
    by_card: Map<String, Vec<(CardKey, CardAttempt)>>,
    /// Key → (fingerprint, payment id, registered at; `None`: never expires).
    idempotency: Map<String, (String, String, Option<Timestamp>)>,
    outbox: Vec<EventNotification>,
    /// Events removed from the front of `outbox` by the retention sweep: the first
    /// kept event's position is `outbox_removed + 1`.
    outbox_removed: u64,
    state: Map<String, String>,
}

/// Whether nothing more will happen to a payment.
fn settled(record: &PaymentRecord) -> bool {
    record.due_at.is_none()
        && matches!(
            record.payment.status,
            PaymentStatus::Succeeded | PaymentStatus::Failed | PaymentStatus::Canceled
        )
}

impl Inner {
    /// Drops a settled payment (not its card history or idempotency key).
    fn forget(&mut self, id: &str) {
        if let Some(stored) = self.records.remove(id) {
            let key = due_key(&stored.record, stored.sequence);
            reindex_due(&mut self.due, &stored.scope, id, key, None);
            self.creation_order.remove(&stored.sequence);
        }
    }
}

/// Payments in a hash map, due times in an ordered index.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    keep_events: bool,
    keep_settled: Option<usize>,
}

impl MemoryStore {
    /// An empty store that keeps no events: nothing reads an outbox in memory, and
    /// keeping every event would grow without bound.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// An empty store that keeps every committed event, as the durable stores do.
    pub fn with_outbox() -> MemoryStore {
        MemoryStore {
            keep_events: true,
            ..MemoryStore::default()
        }
    }

    /// An empty store that keeps only the `keep` most recently settled payments
    /// (succeeded, failed or canceled, with nothing due) and forgets older ones, so a
    /// long-running process does not grow without bound. A forgotten payment is no
    /// longer listed or found; its idempotency key still maps to its id, so a repeated
    /// create is refused rather than charged again, and its attempts stay in the
    /// card's history for the network rules.
    pub fn with_retention(keep: usize) -> MemoryStore {
        MemoryStore {
            keep_settled: Some(keep),
            ..MemoryStore::default()
        }
    }

    /// This store, keeping every committed event from now on (as `with_outbox`).
    pub fn keeping_events(mut self) -> MemoryStore {
        self.keep_events = true;
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied change: every
        // mutation below is computed first and applied with infallible operations.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl MemoryStore {
    /// `create` and `create_owned`: a borrowed record is copied, an owned one kept.
    fn create_with(
        &self,
        record: Cow<'_, PaymentRecord>,
        key: Option<NewIdempotencyKey<'_>>,
        events: &[EventNotification],
    ) -> Result<IdempotencyClaim, StoreError> {
        let mut inner = self.lock();
        let id = record.payment.id.clone();
        if let Some(key) = &key {
            if let Some((fingerprint, payment_id, at)) = inner.idempotency.get(key.key) {
                let expired = at.is_some_and(|at| at.plus(key.ttl) <= key.now);
                if !expired {
                    return Ok(IdempotencyClaim::Existing {
                        fingerprint: fingerprint.clone(),
                        payment_id: payment_id.clone(),
                    });
                }
            }
        }
        if inner.records.contains_key(&id) {
            return Err(StoreError::Duplicate(id));
        }
        if let Some(key) = key {
            inner.idempotency.insert(
                key.key.to_owned(),
                (key.fingerprint.to_owned(), id.clone(), Some(key.now)),
            );
        }
        let mut stored = record.into_owned();
        // Kept as handed over: no room beyond its attempts (a caller's doubled `Vec`
        // would hold four 336-byte slots per payment for as long as it is kept).
        stored.attempts.shrink_to_fit();
        stored.version = 1;
        let sequence = inner.next_sequence;
        inner.next_sequence += 1;
        let scope = ClockScope::of(&stored.payment);
        reindex_due(
            &mut inner.due,
            &scope,
            &id,
            None,
            due_key(&stored, sequence),
        );
        reindex_card(&mut inner.by_card, sequence, None, &stored);
        inner.creation_order.insert(sequence, id.clone());
        inner.records.insert(
            id,
            Stored {
                sequence,
                scope,
                record: stored,
            },
        );
        if self.keep_events {
            inner.outbox.extend_from_slice(events);
        }
        Ok(IdempotencyClaim::Inserted)
    }

    /// `commit` and `commit_owned`: a borrowed record is copied, an owned one kept.
    fn commit_with(
        &self,
        record: Cow<'_, PaymentRecord>,
        expected: Expected,
        events: &[EventNotification],
    ) -> Result<u64, StoreError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let Some(slot) = inner.records.get_mut(record.payment.id.as_str()) else {
            return Err(StoreError::NotFound(record.payment.id.clone()));
        };
        let current = &slot.record;
        if current.version != expected.version || current.payment.status != expected.status {
            return Err(StoreError::Conflict {
                id: record.payment.id.clone(),
                current_version: current.version,
                current_status: current.payment.status,
            });
        }
        let mut stored = record.into_owned();
        // Kept as handed over: no room beyond its attempts (a caller's doubled `Vec`
        // would hold four 336-byte slots per payment for as long as it is kept).
        stored.attempts.shrink_to_fit();
        stored.version = expected.version + 1;
        let version = stored.version;
        let sequence = slot.sequence;
        let settles = !settled(current) && settled(&stored);
        reindex_card(&mut inner.by_card, sequence, Some(current), &stored);
        // The due index keys on (claimable time, sequence) within the payment's scope;
        // the scope and sequence never change, so the entry moves only when the
        // claimable time does.
        let (old_key, new_key) = (due_key(current, sequence), due_key(&stored, sequence));
        reindex_due(
            &mut inner.due,
            &slot.scope,
            &stored.payment.id,
            old_key,
            new_key,
        );
        slot.record = stored;
        if self.keep_events {
            inner.outbox.extend_from_slice(events);
        }
        if let (true, Some(keep)) = (settles, self.keep_settled) {
            inner.settled.push_back(slot.record.payment.id.clone());
            while inner.settled.len() > keep {
                if let Some(old) = inner.settled.pop_front() {
                    inner.forget(&old);
                }
            }
        }
        Ok(version)
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn create(
        &self,
        record: &PaymentRecord,
        key: Option<NewIdempotencyKey<'_>>,
        events: &[EventNotification],
    ) -> Result<IdempotencyClaim, StoreError> {
        self.create_with(Cow::Borrowed(record), key, events)
    }

    async fn create_owned(
        &self,
        record: PaymentRecord,
        key: Option<NewIdempotencyKey<'_>>,
        events: &[EventNotification],
    ) -> Result<IdempotencyClaim, StoreError> {
        self.create_with(Cow::Owned(record), key, events)
    }

    async fn get(&self, id: &str) -> Result<Option<PaymentRecord>, StoreError> {
        Ok(self.lock().records.get(id).map(|s| s.record.clone()))
    }

    async fn commit(
        &self,
        record: &PaymentRecord,
        expected: Expected,
        events: &[EventNotification],
    ) -> Result<u64, StoreError> {
        self.commit_with(Cow::Borrowed(record), expected, events)
    }

    async fn commit_owned(
        &self,
        record: PaymentRecord,
        expected: Expected,
        events: &[EventNotification],
    ) -> Result<u64, StoreError> {
        self.commit_with(Cow::Owned(record), expected, events)
    }

    fn keeps_events(&self) -> bool {
        self.keep_events
    }

    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<OutboxEvent>, StoreError> {
        let inner = self.lock();
        let removed = inner.outbox_removed;
        Ok(inner
            .outbox
            .iter()
            .enumerate()
            .skip(after.saturating_sub(removed) as usize)
            .take(limit)
            .map(|(index, event)| OutboxEvent {
                sequence: removed + index as u64 + 1,
                event: event.clone(),
            })
            .collect())
    }

    async fn newest_event_sequence(&self) -> Result<u64, StoreError> {
        let inner = self.lock();
        Ok(if inner.outbox.is_empty() {
            0
        } else {
            inner.outbox_removed + inner.outbox.len() as u64
        })
    }

    async fn remove_events_through(&self, sequence: u64) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        let n = sequence
            .saturating_sub(inner.outbox_removed)
            .min(inner.outbox.len() as u64);
        inner.outbox.drain(..n as usize);
        inner.outbox_removed += n;
        Ok(n)
    }

    async fn load_state(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.lock().state.get(key).cloned())
    }

    async fn save_state(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.lock().state.insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    async fn swap_state(
        &self,
        key: &str,
        expected: Option<&str>,
        value: &str,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        if inner.state.get(key).map(String::as_str) != expected {
            return Ok(false);
        }
        inner.state.insert(key.to_owned(), value.to_owned());
        Ok(true)
    }

    async fn delete_state(&self, key: &str) -> Result<(), StoreError> {
        self.lock().state.remove(key);
        Ok(())
    }

    async fn remove_state_if(&self, key: &str, expected: &str) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        if inner.state.get(key).map(String::as_str) != Some(expected) {
            return Ok(false);
        }
        inner.state.remove(key);
        Ok(true)
    }

    async fn list_state(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        let mut found: Vec<(String, String)> = self
            .lock()
            .state
            .iter()
            .filter(|(key, _)| key.starts_with(prefix))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        found.sort();
        Ok(found)
    }

    async fn list_state_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        // The keys are hashed: the page is the `limit` least keys past `after`, found
        // in one pass, and only those copied.
        let guard = self.lock();
        let mut keys: Vec<&String> = guard
            .state
            .keys()
            .filter(|key| key.starts_with(prefix) && after.is_none_or(|a| key.as_str() > a))
            .collect();
        keys.sort_unstable();
        keys.truncate(limit);
        Ok(keys
            .into_iter()
            .map(|key| (key.clone(), guard.state[key].clone()))
            .collect())
    }

    async fn claim_due(
        &self,
        scope: &ClockScope,
        now: Timestamp,
        limit: usize,
        lease: &Lease,
    ) -> Result<Vec<PaymentRecord>, StoreError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let Some(index) = inner.due.get_mut(scope) else {
            return Ok(Vec::new());
        };
        let due: Vec<DueKey> = index
            .range(..=(now, u64::MAX))
            .take(limit)
            .map(|(key, _)| *key)
            .collect();
        let mut claimed = Vec::with_capacity(due.len());
        for key in due {
            let Some(id) = index.remove(&key) else {
                continue;
            };
            let Some(stored) = inner.records.get_mut(&id) else {
                continue;
            };
            let record = &mut stored.record;
            record.lease = Some(lease.clone());
            record.version += 1;
            if let Some(new_key) = due_key(record, stored.sequence) {
                index.insert(new_key, id);
            }
            claimed.push(record.clone());
        }
        Ok(claimed)
    }

    async fn next_due(&self, scope: &ClockScope) -> Result<Option<Timestamp>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .due
            .get(scope)
            .and_then(|index| index.keys().next())
            .map(|(at, _)| *at))
    }

    async fn list(
        &self,
        limit: usize,
        starting_after: Option<&str>,
    ) -> Result<Vec<PaymentRecord>, StoreError> {
        let inner = self.lock();
        let before = match starting_after {
            None => u64::MAX,
            Some(id) => match inner.records.get(id) {
                Some(stored) => stored.sequence,
                None => return Ok(Vec::new()),
            },
        };
        Ok(inner
            .creation_order
            .range(..before)
            .rev()
            .filter_map(|(_, id)| inner.records.get(id).map(|s| s.record.clone()))
            .take(limit)
            .collect())
    }

    async fn card_history(
        &self,
        card: &str,
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<CardAttempt>, StoreError> {
        let inner = self.lock();
        let Some(index) = inner.by_card.get(card) else {
            return Ok(Vec::new());
        };
        // The index holds only counted attempts (`CardAttempt::counted`).
        let since = &index[index.partition_point(|(key, _)| *key < (since, 0, 0))..];
        Ok(since[since.len().saturating_sub(limit)..]
            .iter()
            .map(|(_, attempt)| attempt.clone())
            .collect())
    }

    async fn claim_idempotency_key(
        &self,
        key: &str,
        fingerprint: &str,
        payment_id: &str,
    ) -> Result<IdempotencyClaim, StoreError> {
        let mut inner = self.lock();
        if let Some((fingerprint, payment_id, _)) = inner.idempotency.get(key) {
            return Ok(IdempotencyClaim::Existing {
                fingerprint: fingerprint.clone(),
                payment_id: payment_id.clone(),
            });
        }
        inner.idempotency.insert(
            key.to_owned(),
            (fingerprint.to_owned(), payment_id.to_owned(), None),
        );
        Ok(IdempotencyClaim::Inserted)
    }

    async fn idempotency_key(
        &self,
        key: &str,
        now: Timestamp,
        ttl: std::time::Duration,
    ) -> Result<Option<(String, String)>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .idempotency
            .get(key)
            .filter(|(_, _, at)| at.is_none_or(|at| at.plus(ttl) > now))
            .map(|(fingerprint, payment_id, _)| (fingerprint.clone(), payment_id.clone())))
    }

    async fn count_by_status(&self) -> Result<Vec<(PaymentStatus, u64)>, StoreError> {
        let inner = self.lock();
        let mut counts: HashMap<PaymentStatus, u64> = HashMap::new();
        for Stored { record, .. } in inner.records.values() {
            *counts.entry(record.payment.status).or_default() += 1;
        }
        Ok(PaymentStatus::ALL
            .iter()
            .map(|s| (*s, counts.get(s).copied().unwrap_or(0)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{run_all, sample_record};

    #[tokio::test]
    async fn a_store_with_retention_keeps_the_store_contract() {
        run_all(|| MemoryStore::with_retention(1_000)).await;
    }

    #[tokio::test]
    async fn only_the_most_recently_settled_payments_are_kept() {
        let store = MemoryStore::with_retention(2);
        for i in 0..5 {
            store
                .insert(&sample_record(&format!("osp_{i}"), 1_000 + i, None))
                .await
                .unwrap();
        }
        // Settle 0, 1, 2 and 3 in that order; 4 stays pending.
        for i in 0..4 {
            let id = format!("osp_{i}");
            let current = store.get(&id).await.unwrap().unwrap();
            let mut next = current.clone();
            next.payment.status = PaymentStatus::Succeeded;
            next.due_at = None;
            store.update(&next, Expected::of(&current)).await.unwrap();
        }
        let listed: Vec<_> = store
            .list(10, None)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.payment.id)
            .collect();
        assert_eq!(
            listed,
            ["osp_4", "osp_3", "osp_2"],
            "0 and 1 were forgotten"
        );
        assert!(store.get("osp_0").await.unwrap().is_none());
        assert!(
            store.get("osp_4").await.unwrap().is_some(),
            "pending is never pruned"
        );
        let counts = store.count_by_status().await.unwrap();
        assert!(counts.contains(&(PaymentStatus::Succeeded, 2)));
        assert!(counts.contains(&(PaymentStatus::Pending, 1)));
        // Paging still works across the gap.
        let page: Vec<_> = store
            .list(10, Some("osp_3"))
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.payment.id)
            .collect();
        assert_eq!(page, ["osp_2"]);
    }
}
