//! The Postgres store's reads and writes: the `Store` methods as SQL.

use super::*;

const RECORD_COLUMNS: &str = "body::text, version, lease_owner, lease_until";

fn records_from(rows: &[tokio_postgres::Row]) -> Result<Vec<PaymentRecord>, StoreError> {
    rows.iter()
        .map(|r| row::record_from(r.get::<_, &str>(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// Engine state under a prefix: the range `[$1, $2)` in code-point order, read
/// through `engine_state_key_c` (migration 4). Public for the test of its plan.
#[doc(hidden)]
pub const LIST_STATE_RANGE: &str = "SELECT key, value FROM engine_state
     WHERE key COLLATE \"C\" >= $1 AND key COLLATE \"C\" < $2
     ORDER BY key COLLATE \"C\"";

/// A card's attempts that the network rules count, newest first, through the
/// `attempts_counted` index (migration 5), whose condition this repeats.
#[doc(hidden)]
pub const CARD_HISTORY: &str =
    "SELECT payment_id, number, started_at, declined, amount, answered, advice_code FROM attempts
     WHERE payment_method = $1 AND started_at >= $2
       AND NOT (number = 1 AND answered AND NOT declined)
     ORDER BY started_at DESC, payment_id DESC, number DESC LIMIT $3";

#[async_trait]
impl Store for PostgresStore {
    async fn create(
        &self,
        record: &PaymentRecord,
        key: Option<NewIdempotencyKey<'_>>,
        events: &[EventNotification],
    ) -> Result<IdempotencyClaim, StoreError> {
        let (row, events) = RecordRow::with_events(record, events)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.changes
            .send(group::Change::Create {
                row,
                key: key.map(|k| group::Key {
                    key: k.key.to_owned(),
                    fingerprint: k.fingerprint.to_owned(),
                    now: k.now.as_millis(),
                    ttl: k.ttl.as_millis() as i64,
                }),
                events,
                reply,
            })
            .map_err(|_| writers_stopped())?;
        answer.await.map_err(|_| writers_stopped())?
    }

    async fn get(&self, id: &str) -> Result<Option<PaymentRecord>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let rows = client
            .query(
                &format!("SELECT {RECORD_COLUMNS} FROM payments WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(pg_error("reading a payment"))?;
        Ok(records_from(&rows)?.pop())
    }

    async fn commit(
        &self,
        record: &PaymentRecord,
        expected: Expected,
        events: &[EventNotification],
    ) -> Result<u64, StoreError> {
        let (row, events) = RecordRow::with_events(record, events)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.changes
            .send(group::Change::Commit {
                row,
                expected,
                events,
                reply,
            })
            .map_err(|_| writers_stopped())?;
        answer.await.map_err(|_| writers_stopped())?
    }

    async fn claim_due(
        &self,
        scope: &ClockScope,
        now: Timestamp,
        limit: usize,
        lease: &Lease,
    ) -> Result<Vec<PaymentRecord>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let scope = row::scope_column(scope);
        let now = now.as_millis();
        let limit = limit as i64;
        let until = lease.until.as_millis();
        // One statement: rows another claimant has locked are skipped, not waited for.
        let rows = client
            .query(
                &format!(
                    "WITH due AS (
                         SELECT id FROM payments
                         WHERE scope = $1 AND claimable_at <= $2
                         ORDER BY claimable_at, id LIMIT $3
                         FOR UPDATE SKIP LOCKED
                     )
                     UPDATE payments p SET version = p.version + 1, lease_owner = $4,
                         lease_until = $5, claimable_at = GREATEST(p.due_at, $5)
                     FROM due WHERE p.id = due.id
                     RETURNING {}",
                    "p.body::text, p.version, p.lease_owner, p.lease_until"
                ),
                &[&scope, &now, &limit, &lease.owner, &until],
            )
            .await
            .map_err(pg_error("claiming due payments"))?;
        let mut claimed = row::claimed_records(
            rows.iter()
                .map(|r| row::record_from(r.get::<_, &str>(0), r.get(1), r.get(2), r.get(3))),
        );
        claimed.sort_by(|a, b| (a.due_at, a.id()).cmp(&(b.due_at, b.id())));
        Ok(claimed)
    }

    async fn next_due(&self, scope: &ClockScope) -> Result<Option<Timestamp>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let row = client
            .query_one(
                "SELECT MIN(claimable_at) FROM payments WHERE scope = $1",
                &[&row::scope_column(scope)],
            )
            .await
            .map_err(pg_error("reading the next due time"))?;
        Ok(row.get::<_, Option<i64>>(0).map(Timestamp::from_millis))
    }

    async fn list(
        &self,
        limit: usize,
        starting_after: Option<&str>,
    ) -> Result<Vec<PaymentRecord>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let limit = limit as i64;
        let rows = match starting_after {
            None => {
                client
                    .query(
                        &format!(
                            "SELECT {RECORD_COLUMNS} FROM payments ORDER BY seq DESC LIMIT $1"
                        ),
                        &[&limit],
                    )
                    .await
            }
            Some(after) => {
                client
                    .query(
                        &format!(
                            "SELECT {RECORD_COLUMNS} FROM payments
                         WHERE seq < (SELECT seq FROM payments WHERE id = $1)
                         ORDER BY seq DESC LIMIT $2"
                        ),
                        &[&after, &limit],
                    )
                    .await
            }
        }
        .map_err(pg_error("listing payments"))?;
        records_from(&rows)
    }

    async fn card_history(
        &self,
        card: &str,
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<CardAttempt>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let since = since.as_millis();
        let limit = limit as i64;
        let rows = client
            .query(CARD_HISTORY, &[&card, &since, &limit])
            .await
            .map_err(pg_error("reading the card history"))?;
        let mut history: Vec<CardAttempt> = rows
            .iter()
            .map(|r| CardAttempt {
                payment_id: r.get(0),
                attempt_number: r.get::<_, i32>(1) as u32,
                at: Timestamp::from_millis(r.get(2)),
                declined: r.get(3),
                answered: r.get(5),
                amount: r.get(4),
                advice_code: r.get(6),
            })
            .collect();
        history.reverse();
        Ok(history)
    }

    async fn lock_card(&self, card: &str) -> Result<CardLock, StoreError> {
        self.lock_cards(&[card]).await
    }

    async fn lock_cards(&self, cards: &[&str]) -> Result<CardLock, StoreError> {
        // Transaction-level advisory locks on one connection of its own (one per
        // holder, however many keys: a holder waiting for a second connection while
        // keeping its first could exhaust the pool), held until the guard is
        // dropped or the write under it commits: the transaction then ends, which
        // releases them, and the connection goes back to the pool.
        let mut held = HeldCard {
            client: Some(self.card_pool.get().await.map_err(pool_error)?),
            locked: false,
            committed: false,
        };
        if let Some(client) = &held.client {
            client
                .batch_execute("BEGIN")
                .await
                .map_err(pg_error("starting a card lock"))?;
            for card in cards {
                client
                    .execute(
                        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                        &[card],
                    )
                    .await
                    .map_err(pg_error("locking a card"))?;
            }
        }
        held.locked = true;
        Ok(CardLock::holding(Box::new(held)))
    }

    async fn commit_under_lock(
        &self,
        lock: CardLock,
        record: &PaymentRecord,
        expected: Expected,
        events: &[EventNotification],
    ) -> Result<u64, StoreError> {
        let mut held = match lock.into_held().map(|held| held.downcast::<HeldCard>()) {
            Some(Ok(held)) => held,
            // Not this store's lock: nothing to write under.
            _ => return self.commit(record, expected, events).await,
        };
        let (row, events) = RecordRow::with_events(record, events)?;
        let Some(client) = held.client.as_ref() else {
            return Err(StoreError::backend(
                "postgres: a card lock without its connection",
                true,
                std::io::Error::other("card lock lost"),
            ));
        };
        // In the lock's own transaction: if its session ended (killed, timed out, a
        // failover), the lock ended with it and another instance may hold the card
        // now; then these statements fail and nothing is written. Dropping `held`
        // rolls back whatever did not commit.
        let version = group::commit_one(client, &self.crash, &row, expected, &events).await?;
        client
            .batch_execute("COMMIT")
            .await
            .map_err(pg_error("committing under a card lock"))?;
        held.committed = true;
        Ok(version)
    }

    async fn idempotency_key(
        &self,
        key: &str,
        now: Timestamp,
        ttl: std::time::Duration,
    ) -> Result<Option<(String, String)>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let row = client
            .query_opt(
                "SELECT fingerprint, payment_id FROM idempotency_keys
                 WHERE key = $1 AND (created_at IS NULL OR created_at + $2 > $3)",
                &[&key, &(ttl.as_millis() as i64), &now.as_millis()],
            )
            .await
            .map_err(pg_error("reading an idempotency key"))?;
        Ok(row.map(|row| (row.get(0), row.get(1))))
    }

    async fn claim_idempotency_key(
        &self,
        key: &str,
        fingerprint: &str,
        payment_id: &str,
    ) -> Result<IdempotencyClaim, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let inserted = client
            .execute(
                "INSERT INTO idempotency_keys (key, fingerprint, payment_id, created_at)
                 VALUES ($1, $2, $3, NULL) ON CONFLICT (key) DO NOTHING",
                &[&key, &fingerprint, &payment_id],
            )
            .await
            .map_err(pg_error("writing an idempotency key"))?;
        if inserted == 1 {
            return Ok(IdempotencyClaim::Inserted);
        }
        let row = client
            .query_one(
                "SELECT fingerprint, payment_id FROM idempotency_keys WHERE key = $1",
                &[&key],
            )
            .await
            .map_err(pg_error("reading an idempotency key"))?;
        Ok(IdempotencyClaim::Existing {
            fingerprint: row.get(0),
            payment_id: row.get(1),
        })
    }

    async fn count_by_status(&self) -> Result<Vec<(PaymentStatus, u64)>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let rows = client
            .query("SELECT status, COUNT(*) FROM payments GROUP BY status", &[])
            .await
            .map_err(pg_error("counting payments"))?;
        let mut counts = std::collections::HashMap::new();
        for r in &rows {
            counts.insert(row::status_from(r.get(0))?, r.get::<_, i64>(1) as u64);
        }
        Ok(PaymentStatus::ALL
            .iter()
            .map(|s| (*s, counts.get(s).copied().unwrap_or(0)))
            .collect())
    }

    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<OutboxEvent>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let after = after as i64;
        let limit = limit as i64;
        let rows = client
            .query(
                "SELECT sequence, id, payment_id, type, created, body::text FROM events
                 WHERE sequence > $1
                 ORDER BY sequence LIMIT $2",
                &[&after, &limit],
            )
            .await
            .map_err(pg_error("reading events"))?;
        rows.iter()
            .map(|r| {
                Ok(OutboxEvent {
                    sequence: r.get::<_, i64>(0) as u64,
                    event: row::event_from(r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))?,
                })
            })
            .collect()
    }

    async fn newest_event_sequence(&self) -> Result<u64, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let row = client
            .query_one("SELECT coalesce(max(sequence), 0) FROM events", &[])
            .await
            .map_err(pg_error("reading events"))?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn remove_events_through(&self, sequence: u64) -> Result<u64, StoreError> {
        // In chunks, each its own transaction, so that no statement holds many locks.
        let client = self.pool.get().await.map_err(pool_error)?;
        let (sequence, chunk) = (sequence as i64, REMOVE_CHUNK);
        let mut removed = 0;
        loop {
            let n = client
                .execute(
                    "DELETE FROM events WHERE sequence IN
                     (SELECT sequence FROM events WHERE sequence <= $1
                      ORDER BY sequence LIMIT $2)",
                    &[&sequence, &chunk],
                )
                .await
                .map_err(pg_error("removing events"))?;
            removed += n;
            if n < chunk as u64 {
                return Ok(removed);
            }
        }
    }

    async fn event(&self, id: &str) -> Result<Option<OutboxEvent>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let row = client
            .query_opt(
                "SELECT sequence, id, payment_id, type, created, body::text FROM events WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(pg_error("reading an event"))?;
        row.map(|r| {
            Ok(OutboxEvent {
                sequence: r.get::<_, i64>(0) as u64,
                event: row::event_from(r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))?,
            })
        })
        .transpose()
    }

    async fn events_for(
        &self,
        payment_id: &str,
        limit: usize,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let limit = limit as i64;
        let rows = client
            .query(
                "SELECT sequence, id, payment_id, type, created, body::text FROM events
                 WHERE payment_id = $1
                 ORDER BY sequence LIMIT $2",
                &[&payment_id, &limit],
            )
            .await
            .map_err(pg_error("reading events"))?;
        rows.iter()
            .map(|r| {
                Ok(OutboxEvent {
                    sequence: r.get::<_, i64>(0) as u64,
                    event: row::event_from(r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))?,
                })
            })
            .collect()
    }

    async fn load_state(&self, key: &str) -> Result<Option<String>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let row = client
            .query_opt("SELECT value FROM engine_state WHERE key = $1", &[&key])
            .await
            .map_err(pg_error("reading engine state"))?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn save_state(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        client
            .execute(
                "INSERT INTO engine_state (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&key, &value],
            )
            .await
            .map_err(pg_error("writing engine state"))?;
        Ok(())
    }

    async fn swap_state(
        &self,
        key: &str,
        expected: Option<&str>,
        value: &str,
    ) -> Result<bool, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let written = match expected {
            None => {
                client
                    .execute(
                        "INSERT INTO engine_state (key, value) VALUES ($1, $2)
                         ON CONFLICT (key) DO NOTHING",
                        &[&key, &value],
                    )
                    .await
            }
            Some(expected) => {
                client
                    .execute(
                        "UPDATE engine_state SET value = $3 WHERE key = $1 AND value = $2",
                        &[&key, &expected, &value],
                    )
                    .await
            }
        }
        .map_err(pg_error("swapping engine state"))?;
        Ok(written == 1)
    }

    async fn delete_state(&self, key: &str) -> Result<(), StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        client
            .execute("DELETE FROM engine_state WHERE key = $1", &[&key])
            .await
            .map_err(pg_error("deleting engine state"))?;
        Ok(())
    }

    async fn remove_state_if(&self, key: &str, expected: &str) -> Result<bool, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let removed = client
            .execute(
                "DELETE FROM engine_state WHERE key = $1 AND value = $2",
                &[&key, &expected],
            )
            .await
            .map_err(pg_error("deleting engine state"))?;
        Ok(removed == 1)
    }

    async fn list_state(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        // A range in code-point order, read through `engine_state_key_c`.
        let rows = match crate::row::prefix_end(prefix) {
            Some(end) => client.query(LIST_STATE_RANGE, &[&prefix, &end]).await,
            None => {
                client
                    .query(
                        "SELECT key, value FROM engine_state
                         WHERE key COLLATE \"C\" >= $1 ORDER BY key COLLATE \"C\"",
                        &[&prefix],
                    )
                    .await
            }
        }
        .map_err(pg_error("listing engine state"))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn list_state_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        // Past `after`: every key under a non-empty prefix sorts after "".
        let after = after.unwrap_or("");
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = match crate::row::prefix_end(prefix) {
            Some(end) => {
                client
                    .query(
                        "SELECT key, value FROM engine_state
                         WHERE key COLLATE \"C\" >= $1 AND key COLLATE \"C\" < $2
                           AND key COLLATE \"C\" > $3
                         ORDER BY key COLLATE \"C\" LIMIT $4",
                        &[&prefix, &end, &after, &limit],
                    )
                    .await
            }
            None => {
                client
                    .query(
                        "SELECT key, value FROM engine_state
                         WHERE key COLLATE \"C\" >= $1 AND key COLLATE \"C\" > $2
                         ORDER BY key COLLATE \"C\" LIMIT $3",
                        &[&prefix, &after, &limit],
                    )
                    .await
            }
        }
        .map_err(pg_error("listing engine state"))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

fn writers_stopped() -> StoreError {
    StoreError::Backend {
        message: "postgres: the group-commit writers stopped".into(),
        retryable: false,
        source: None,
    }
}

/// Events one statement of the retention sweep removes at most.
const REMOVE_CHUNK: i64 = 5_000;
