//! The SQLite store's reads and writes: the `Store` methods as SQL.

use super::*;

/// A row's written columns as statement parameters, `?1`…`?12` in every statement
/// that writes one: id, status, scope, due_at, claimable_at, lease_owner,
/// lease_until, processor, payment_method, customer, created, body.
fn row_values(row: &RecordRow) -> [&dyn rusqlite::ToSql; 12] {
    [
        &row.id,
        &row.status,
        &row.scope,
        &row.due_at,
        &row.claimable_at,
        &row.lease_owner,
        &row.lease_until,
        &row.processor,
        &row.payment_method,
        &row.customer,
        &row.created,
        &row.body,
    ]
}

/// A card's attempts that the network rules count, newest first: read through the
/// `attempts_counted` index (migration 5), whose condition this repeats word for word
/// (SQLite uses a partial index only for a query that names its condition).
pub(super) const CARD_HISTORY: &str =
    "SELECT payment_id, number, started_at, declined, amount, answered, advice_code FROM attempts
     WHERE payment_method = ?1 AND started_at >= ?2
       AND NOT (number = 1 AND answered AND NOT declined)
     ORDER BY started_at DESC, payment_id DESC, number DESC LIMIT ?3";

fn write_payment(tx: &Transaction<'_>, row: &RecordRow) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO payments (id, version, status, scope, due_at, claimable_at, lease_owner,
             lease_until, processor, payment_method, customer, created, body)
         VALUES (?1, 1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )
    .and_then(|mut insert| insert.execute(&row_values(row)[..]))
    .map_err(|e| {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) {
            StoreError::Duplicate(row.id.clone())
        } else {
            sql_error("inserting a payment")(e)
        }
    })?;
    Ok(())
}

fn write_attempts(
    tx: &Transaction<'_>,
    row: &RecordRow,
    attempts: &[CardAttempt],
) -> Result<(), StoreError> {
    if attempts.is_empty() {
        return Ok(());
    }
    // The answer of an attempt already written changes only its answer columns: not
    // naming `started_at` keeps SQLite from rewriting its `attempts_by_method` entry.
    // An attempt whose start time moved (a fault's replay, counted from its send)
    // takes the second statement.
    let mut upsert = tx
        .prepare_cached(
            "INSERT INTO attempts (payment_id, number, payment_method, started_at, declined, amount, answered, advice_code)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (payment_id, number) DO UPDATE
             SET declined = excluded.declined, answered = excluded.answered,
                 advice_code = excluded.advice_code
             WHERE started_at = excluded.started_at",
        )
        .map_err(sql_error("preparing the attempt upsert"))?;
    for attempt in attempts {
        let values = params![
            attempt.payment_id,
            attempt.attempt_number,
            row.card,
            attempt.at.as_millis(),
            attempt.declined,
            attempt.amount,
            attempt.answered,
            attempt.advice_code
        ];
        let written = upsert
            .execute(values)
            .map_err(sql_error("writing an attempt"))?;
        if written == 0 {
            tx.prepare_cached(
                "UPDATE attempts SET started_at = ?4, declined = ?5, answered = ?7, advice_code = ?8
                 WHERE payment_id = ?1 AND number = ?2",
            )
            .and_then(|mut update| update.execute(values))
            .map_err(sql_error("writing an attempt"))?;
        }
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

/// An outbox row as read: sequence, id, payment id, type, created, body.
type RawEvent = (i64, String, String, String, i64, String);

fn outbox_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawEvent> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn outbox_event(
    (sequence, id, payment_id, event_type, created, body): RawEvent,
) -> Result<OutboxEvent, StoreError> {
    Ok(OutboxEvent {
        sequence: sequence as u64,
        event: row::event_from(id, &payment_id, &event_type, created, &body)?,
    })
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
        events: &[EventNotification],
    ) -> Result<IdempotencyClaim, StoreError> {
        let (row, events) = RecordRow::with_events(record, events)?;
        let key = key.map(|k| {
            (
                k.key.to_owned(),
                k.fingerprint.to_owned(),
                k.now.as_millis(),
                k.ttl.as_millis() as i64,
            )
        });
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
            write_payment(tx, &row)?;
            if let Some((key, fingerprint, now, _)) = &key {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO idempotency_keys (key, fingerprint, payment_id, created_at)
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut s| s.execute(params![key, fingerprint, row.id, now]))
                .map_err(sql_error("writing an idempotency key"))?;
            }
            write_attempts(tx, &row, &row.attempts)?;
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
        events: &[EventNotification],
    ) -> Result<u64, StoreError> {
        let (row, events) = RecordRow::with_events(record, events)?;
        self.call(move |tx| {
            let changed = tx
                .prepare_cached(
                    // Only the columns a change can move: scope, processor, payment
                    // method, customer and created are fixed at create, and setting
                    // an indexed column rewrites its index entry even when the value
                    // is the same (?3 and ?8–?11 are bound and unused).
                    "UPDATE payments SET version = version + 1, status = ?2,
                         due_at = ?4, claimable_at = ?5, lease_owner = ?6, lease_until = ?7,
                         body = ?12
                     WHERE id = ?1 AND version = ?13 AND status = ?14",
                )
                .and_then(|mut s| {
                    let version = expected.version as i64;
                    let status = expected.status.as_str();
                    let mut params = row_values(&row).to_vec();
                    params.extend([&version as &dyn rusqlite::ToSql, &status]);
                    s.execute(&params[..])
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
            write_attempts(tx, &row, row.newest_attempt())?;
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
                    // By rowid: the claimable index holds each row's `seq`, so the
                    // update seeks the table directly instead of through the `id`
                    // index (a string key) for every row it claims.
                    "UPDATE payments SET version = version + 1, lease_owner = ?4,
                         lease_until = ?5, claimable_at = MAX(due_at, ?5)
                     WHERE seq IN (
                         SELECT seq FROM payments WHERE scope = ?1 AND claimable_at <= ?2
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
        let mut claimed =
            row::claimed_records(rows.into_iter().map(|(body, version, owner, until)| {
                row::record_from(&body, version, owner, until)
            }));
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
        card: &str,
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<CardAttempt>, StoreError> {
        let method = card.to_owned();
        self.call(move |tx| {
            let mut select = tx
                .prepare_cached(CARD_HISTORY)
                .map_err(sql_error("preparing the card history query"))?;
            let rows = select
                .query_map(params![method, since.as_millis(), limit as i64], |r| {
                    Ok(CardAttempt {
                        payment_id: r.get(0)?,
                        attempt_number: r.get(1)?,
                        at: Timestamp::from_millis(r.get(2)?),
                        declined: r.get(3)?,
                        answered: r.get(5)?,
                        amount: r.get(4)?,
                        advice_code: r.get(6)?,
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

    async fn idempotency_key(
        &self,
        key: &str,
        now: Timestamp,
        ttl: std::time::Duration,
    ) -> Result<Option<(String, String)>, StoreError> {
        let key = key.to_owned();
        let now = now.as_millis();
        let ttl = ttl.as_millis() as i64;
        self.call(move |tx| {
            tx.prepare_cached(
                "SELECT fingerprint, payment_id FROM idempotency_keys
                 WHERE key = ?1 AND (created_at IS NULL OR created_at + ?2 > ?3)",
            )
            .and_then(|mut s| {
                s.query_row(params![key, ttl, now], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
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
                    "SELECT sequence, id, payment_id, type, created, body FROM events
                     WHERE sequence > ?1 ORDER BY sequence LIMIT ?2",
                )
                .map_err(sql_error("reading events"))?;
            let rows = select
                .query_map(params![after as i64, limit as i64], outbox_row)
                .map_err(sql_error("reading events"))?;
            rows.map(|row| outbox_event(row.map_err(sql_error("reading events"))?))
                .collect()
        })
        .await
    }

    async fn newest_event_sequence(&self) -> Result<u64, StoreError> {
        self.call(|tx| {
            tx.prepare_cached("SELECT coalesce(max(sequence), 0) FROM events")
                .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
                .map(|n| n as u64)
                .map_err(sql_error("reading events"))
        })
        .await
    }

    async fn remove_events_through(&self, sequence: u64) -> Result<u64, StoreError> {
        // In chunks, each its own write, so that the writer is not held for long.
        let mut removed = 0;
        loop {
            let chunk = self
                .call(move |tx| {
                    tx.prepare_cached(
                        "DELETE FROM events WHERE sequence IN
                         (SELECT sequence FROM events WHERE sequence <= ?1
                          ORDER BY sequence LIMIT ?2)",
                    )
                    .and_then(|mut s| s.execute(params![sequence as i64, REMOVE_CHUNK]))
                    .map_err(sql_error("removing events"))
                })
                .await?;
            removed += chunk as u64;
            if chunk < REMOVE_CHUNK as usize {
                return Ok(removed);
            }
        }
    }

    async fn event(&self, id: &str) -> Result<Option<OutboxEvent>, StoreError> {
        let id = id.to_owned();
        self.call(move |tx| {
            let row = tx
                .prepare_cached("SELECT sequence, id, payment_id, type, created, body FROM events WHERE id = ?1")
                .and_then(|mut s| s.query_row([id], outbox_row).optional())
                .map_err(sql_error("reading an event"))?;
            row.map(outbox_event).transpose()
        })
        .await
    }

    async fn events_for(
        &self,
        payment_id: &str,
        limit: usize,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let payment_id = payment_id.to_owned();
        self.call(move |tx| {
            let mut select = tx
                .prepare_cached(
                    "SELECT sequence, id, payment_id, type, created, body FROM events
                     WHERE payment_id = ?1 ORDER BY sequence LIMIT ?2",
                )
                .map_err(sql_error("reading events"))?;
            let rows = select
                .query_map(params![payment_id, limit as i64], outbox_row)
                .map_err(sql_error("reading events"))?;
            rows.map(|row| outbox_event(row.map_err(sql_error("reading events"))?))
                .collect()
        })
        .await
    }

    async fn load_state(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.sql_load_state(key).await
    }

    async fn save_state(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.sql_save_state(key, value).await
    }

    async fn swap_state(
        &self,
        key: &str,
        expected: Option<&str>,
        value: &str,
    ) -> Result<bool, StoreError> {
        self.sql_swap_state(key, expected, value).await
    }

    async fn delete_state(&self, key: &str) -> Result<(), StoreError> {
        self.sql_delete_state(key).await
    }

    async fn remove_state_if(&self, key: &str, expected: &str) -> Result<bool, StoreError> {
        self.sql_remove_state_if(key, expected).await
    }

    async fn list_state(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.sql_list_state(prefix).await
    }

    async fn list_state_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.sql_list_state_page(prefix, after, limit).await
    }
}

/// Events one write of the retention sweep removes at most.
const REMOVE_CHUNK: i64 = 5_000;
