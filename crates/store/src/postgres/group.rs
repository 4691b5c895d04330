//! Group commit: the changes (`Store::commit`) that every task of an instance queues are
//! written in one transaction per group, on one connection, with the statements of
//! all of them pipelined — N attempt starts or N outcomes cost one transaction and a
//! few round trips instead of N transactions of seven. The group's attempts and its
//! events are then written as one multi-row statement each.
//!
//! Refusals (a stale version, an unknown payment) are found by the compare-and-set
//! update matching no row, which is not an error in Postgres: they leave the group's
//! transaction intact. A database error aborts the transaction; when the server
//! reported it before the commit (a constraint, a deadlock, a row this binary cannot
//! read), nothing of the group was written, and its changes are written again in two
//! halves, and so on, so that the change that caused it fails alone. A lost connection
//! or a failed commit fails every change of the group (a commit's may have been
//! written), which may be retried.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use deadpool_postgres::Pool;
use offsession_core::{CardAttempt, Expected, IdempotencyClaim, StoreError};
use tokio::sync::{mpsc, oneshot, Mutex};

use deadpool_postgres::GenericClient;

use super::{creates, pg_error, pool_error, step, OUTBOX_LOCK};
use crate::row::{self, EventRow, RecordRow};

/// Changes per transaction at most.
const GROUP_MAX: usize = 512;

/// One queued write.
pub(super) enum Change {
    /// `Store::commit`.
    Commit {
        row: RecordRow,
        expected: Expected,
        events: Vec<EventRow>,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    /// `Store::create`.
    Create {
        row: RecordRow,
        key: Option<Key>,
        events: Vec<EventRow>,
        reply: oneshot::Sender<Result<IdempotencyClaim, StoreError>>,
    },
}

/// An idempotency key to register: key, fingerprint, now and time to live (ms).
pub(super) struct Key {
    pub(super) key: String,
    pub(super) fingerprint: String,
    pub(super) now: i64,
    pub(super) ttl: i64,
}

/// A change's own result, sent once the group committed.
enum Answer {
    Commit(Result<u64, StoreError>),
    Create(Result<IdempotencyClaim, StoreError>),
}

impl Answer {
    /// Whether the change wrote its row (so its events are written too).
    fn written(&self) -> bool {
        matches!(
            self,
            Answer::Commit(Ok(_)) | Answer::Create(Ok(IdempotencyClaim::Inserted))
        )
    }
}

impl Change {
    fn events(&self) -> &[EventRow] {
        match self {
            Change::Commit { events, .. } | Change::Create { events, .. } => events,
        }
    }

    fn answer(self, answer: Result<Answer, StoreError>) {
        match (self, answer) {
            (Change::Commit { reply, .. }, Ok(Answer::Commit(result))) => {
                let _ = reply.send(result);
            }
            (Change::Create { reply, .. }, Ok(Answer::Create(result))) => {
                let _ = reply.send(result);
            }
            (Change::Commit { reply, .. }, Err(err)) => {
                let _ = reply.send(Err(err));
            }
            (Change::Create { reply, .. }, Err(err)) => {
                let _ = reply.send(Err(err));
            }
            // `apply` answers each change in kind.
            (Change::Commit { reply, .. }, Ok(Answer::Create(_))) => {
                let _ = reply.send(Err(mismatch()));
            }
            (Change::Create { reply, .. }, Ok(Answer::Commit(_))) => {
                let _ = reply.send(Err(mismatch()));
            }
        }
    }
}

fn mismatch() -> StoreError {
    StoreError::Backend {
        message: "postgres: a group answer did not match its change".into(),
        retryable: false,
        source: None,
    }
}

/// Starts `writers` writer tasks; they end when every sender is dropped.
pub(super) fn start(
    pool: Pool,
    crash: Arc<AtomicI64>,
    writers: usize,
) -> mpsc::UnboundedSender<Change> {
    let (sender, receiver) = mpsc::unbounded_channel();
    let receiver = Arc::new(Mutex::new(receiver));
    for _ in 0..writers.max(1) {
        tokio::spawn(writer(pool.clone(), crash.clone(), receiver.clone()));
    }
    sender
}

async fn writer(
    pool: Pool,
    crash: Arc<AtomicI64>,
    receiver: Arc<Mutex<mpsc::UnboundedReceiver<Change>>>,
) {
    loop {
        let group = {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else {
                return;
            };
            let mut group = vec![first];
            while group.len() < GROUP_MAX {
                match receiver.try_recv() {
                    Ok(change) => group.push(change),
                    Err(_) => break,
                }
            }
            group
        };
        run(&pool, &crash, group).await;
    }
}

/// Writes a group in one transaction and answers every change of it.
async fn run(pool: &Pool, crash: &AtomicI64, group: Vec<Change>) {
    let committing = AtomicBool::new(false);
    let written = async {
        let mut client = pool.get().await.map_err(pool_error)?;
        let tx = client
            .transaction()
            .await
            .map_err(pg_error("starting a group of changes"))?;
        step(crash, &tx).await?;
        // The group's commits as one statement, beside its creates (keys, then payments,
        // one statement each: `creates.rs`), pipelined on the one connection.
        let commits: Vec<(&RecordRow, Expected)> = group
            .iter()
            .filter_map(|change| match change {
                Change::Commit { row, expected, .. } => Some((row, *expected)),
                Change::Create { .. } => None,
            })
            .collect();
        let creates: Vec<(&RecordRow, Option<&Key>)> = group
            .iter()
            .filter_map(|change| match change {
                Change::Create { row, key, .. } => Some((row, key.as_ref())),
                Change::Commit { .. } => None,
            })
            .collect();
        let (committed, created) = futures::join!(
            apply_commits(&tx, crash, &commits),
            creates::apply_creates(&tx, crash, &creates)
        );
        let mut committed = committed?.into_iter();
        let mut created = created?.into_iter();
        let mut answers = Vec::with_capacity(group.len());
        for change in &group {
            answers.push(match change {
                Change::Commit { .. } => Answer::Commit(committed.next().ok_or_else(mismatch)?),
                Change::Create { .. } => Answer::Create(created.next().ok_or_else(mismatch)?),
            });
        }
        // The attempts of the changes that were written, in one statement: a
        // create's every attempt, an update's newest (see `RecordRow::newest_attempt`).
        let attempts: Vec<(&RecordRow, &CardAttempt)> = group
            .iter()
            .zip(&answers)
            .filter(|(_, answer)| answer.written())
            .flat_map(|(change, _)| {
                let (row, attempts) = match change {
                    Change::Commit { row, .. } => (row, row.newest_attempt()),
                    Change::Create { row, .. } => (row, &row.attempts[..]),
                };
                attempts.iter().map(move |a| (row, a))
            })
            .collect();
        // The events of the changes that were written, after every change's own
        // statements: the outbox lock is taken once per group, by the event insert
        // itself, and held to the commit, so event sequences commit in order across
        // instances (see the module docs of `postgres`).
        let events: Vec<&EventRow> = group
            .iter()
            .zip(&answers)
            .filter(|(_, answer)| answer.written())
            .flat_map(|(change, _)| change.events())
            .collect();
        // The two statements go out together (pipelined on the connection): one round
        // trip. Their order does not matter; the lock is inside the event insert.
        let (attempts_written, events_written) =
            futures::join!(write_attempts(&tx, &attempts), write_events(&tx, &events));
        attempts_written?;
        events_written?;
        step(crash, &tx).await?;
        committing.store(true, Ordering::Relaxed);
        tx.commit()
            .await
            .map_err(pg_error("committing a group of changes"))?;
        Ok::<_, StoreError>(answers)
    }
    .await;
    match written {
        Ok(answers) => {
            for (change, answer) in group.into_iter().zip(answers) {
                change.answer(Ok(answer));
            }
        }
        Err(err) if group.len() > 1 && !committing.load(Ordering::Relaxed) && one_changes(&err) => {
            tracing::debug!(error = %err, changes = group.len(), "a group of changes failed; writing it again in halves");
            let mut first = group;
            let second = first.split_off(first.len() / 2);
            Box::pin(run(pool, crash, first)).await;
            Box::pin(run(pool, crash, second)).await;
        }
        Err(err) => {
            for change in group {
                change.answer(Err(err.clone()));
            }
        }
    }
}

/// Whether a group's failure may be one change's: the server refused a statement for
/// its data (class 22), a constraint (23) or a deadlock or serialization failure (40),
/// or a row read back could not be decoded. Not a lost connection, an ended session,
/// an empty pool, a read-only or permission refusal or a missing table, which every
/// change of the group would meet again: written again in halves, a group of n would
/// cost 2n − 1 transactions to fail the same way.
fn one_changes(err: &StoreError) -> bool {
    let StoreError::Backend { source, .. } = err else {
        return false;
    };
    let Some(source) = source.as_deref() else {
        // Raised by this store's own checks of what it read back.
        return true;
    };
    match source.downcast_ref::<tokio_postgres::Error>() {
        Some(e) if e.is_closed() => false,
        Some(e) => e
            .code()
            .is_some_and(|code| matches!(&code.code()[..2], "22" | "23" | "40")),
        None => source.downcast_ref::<serde_json::Error>().is_some(),
    }
}

/// One change written on `client`, in the transaction it has open (a card lock's):
/// the compare-and-set update, its newest attempt and its events, as a group writes
/// them. The caller commits.
pub(super) async fn commit_one(
    client: &impl GenericClient,
    crash: &AtomicI64,
    row: &RecordRow,
    expected: Expected,
    events: &[EventRow],
) -> Result<u64, StoreError> {
    let version = apply_commits(client, crash, &[(row, expected)])
        .await?
        .pop()
        .ok_or_else(mismatch)??;
    let attempts: Vec<(&RecordRow, &CardAttempt)> =
        row.newest_attempt().iter().map(|a| (row, a)).collect();
    let events: Vec<&EventRow> = events.iter().collect();
    write_attempts(client, &attempts).await?;
    write_events(client, &events).await?;
    step(crash, client).await?;
    Ok(version)
}

/// The group's commits in one compare-and-set statement; answers in their order, each
/// the new version or its refusal. `Err` aborts the group.
///
/// Only the columns a change can move are set (scope, processor, payment method,
/// customer and created are fixed at create). A change that matched no row is a
/// refusal: its payment is read back to say which. Should two changes of one payment
/// share a group, the row is updated once and `RETURNING` names the change that was
/// applied; the other finds the new version and is refused as stale.
async fn apply_commits(
    tx: &impl GenericClient,
    crash: &AtomicI64,
    commits: &[(&RecordRow, Expected)],
) -> Result<Vec<Result<u64, StoreError>>, StoreError> {
    if commits.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = commits.iter().map(|(row, _)| row.id.as_str()).collect();
    let statuses: Vec<&str> = commits.iter().map(|(row, _)| row.status).collect();
    let due: Vec<Option<i64>> = commits.iter().map(|(row, _)| row.due_at).collect();
    let claimable: Vec<Option<i64>> = commits.iter().map(|(row, _)| row.claimable_at).collect();
    let owners: Vec<Option<&str>> = commits
        .iter()
        .map(|(row, _)| row.lease_owner.as_deref())
        .collect();
    let until: Vec<Option<i64>> = commits.iter().map(|(row, _)| row.lease_until).collect();
    let bodies: Vec<&str> = commits.iter().map(|(row, _)| row.body.as_str()).collect();
    let versions: Vec<i64> = commits.iter().map(|(_, e)| e.version as i64).collect();
    let expected: Vec<&str> = commits.iter().map(|(_, e)| e.status.as_str()).collect();
    let update = tx
        .prepare_cached(
            "UPDATE payments p SET version = p.version + 1, status = u.status, due_at = u.due_at,
                 claimable_at = u.claimable_at, lease_owner = u.lease_owner,
                 lease_until = u.lease_until, body = u.body::json
             FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[], $6::int8[],
                         $7::text[], $8::int8[], $9::text[])
                  WITH ORDINALITY AS u(id, status, due_at, claimable_at, lease_owner, lease_until,
                                       body, expected_version, expected_status, ord)
             WHERE p.id = u.id AND p.version = u.expected_version
               AND p.status = u.expected_status
             RETURNING u.ord",
        )
        .await
        .map_err(pg_error("preparing the payment updates"))?;
    let applied = tx
        .query(
            &update,
            &[
                &ids, &statuses, &due, &claimable, &owners, &until, &bodies, &versions, &expected,
            ],
        )
        .await
        .map_err(pg_error("updating payments"))?;
    let mut written = vec![false; commits.len()];
    for row in &applied {
        let ord: i64 = row.get(0);
        if let Some(slot) = written.get_mut(ord as usize - 1) {
            *slot = true;
        }
    }
    let refused: Vec<&str> = commits
        .iter()
        .zip(&written)
        .filter(|(_, written)| !**written)
        .map(|((row, _), _)| row.id.as_str())
        .collect();
    let mut current = std::collections::HashMap::new();
    if !refused.is_empty() {
        let rows = tx
            .query(
                "SELECT id, version, status FROM payments WHERE id = ANY($1)",
                &[&refused],
            )
            .await
            .map_err(pg_error("reading payments' versions"))?;
        for row in rows {
            let id: String = row.get(0);
            let status = row::status_from(row.get(2))?;
            current.insert(id, (row.get::<_, i64>(1) as u64, status));
        }
    }
    step(crash, tx).await?;
    Ok(commits
        .iter()
        .zip(written)
        .map(|((row, expected), written)| {
            if written {
                return Ok(expected.version + 1);
            }
            Err(match current.get(&row.id) {
                None => StoreError::NotFound(row.id.clone()),
                Some((version, status)) => StoreError::Conflict {
                    id: row.id.clone(),
                    current_version: *version,
                    current_status: *status,
                },
            })
        })
        .collect())
}

/// Upserts attempts in one statement. A group holds at most one change per payment
/// (a change waits for its answer before the next is made), so no attempt appears
/// twice; were one to, the last is kept, as the statement may touch a row only once.
async fn write_attempts(
    client: &impl GenericClient,
    attempts: &[(&RecordRow, &CardAttempt)],
) -> Result<(), StoreError> {
    if attempts.is_empty() {
        return Ok(());
    }
    let mut last = std::collections::HashMap::with_capacity(attempts.len());
    for (index, (_, a)) in attempts.iter().enumerate() {
        last.insert((a.payment_id.as_str(), a.attempt_number), index);
    }
    let kept: Vec<&(&RecordRow, &CardAttempt)> = attempts
        .iter()
        .enumerate()
        .filter(|(index, (_, a))| {
            last.get(&(a.payment_id.as_str(), a.attempt_number)) == Some(index)
        })
        .map(|(_, pair)| pair)
        .collect();
    let upsert = client
        .prepare_cached(
            "INSERT INTO attempts (payment_id, number, payment_method, started_at, declined, amount, answered, advice_code)
             SELECT * FROM UNNEST($1::text[], $2::int4[], $3::text[], $4::int8[], $5::bool[],
                                  $6::int8[], $7::bool[], $8::text[])
             ON CONFLICT (payment_id, number) DO UPDATE
             SET started_at = excluded.started_at, declined = excluded.declined,
                 answered = excluded.answered, advice_code = excluded.advice_code",
        )
        .await
        .map_err(pg_error("preparing the attempt upsert"))?;
    let payments: Vec<&str> = kept.iter().map(|(_, a)| a.payment_id.as_str()).collect();
    let numbers: Vec<i32> = kept.iter().map(|(_, a)| a.attempt_number as i32).collect();
    let methods: Vec<&str> = kept.iter().map(|(row, _)| row.card.as_str()).collect();
    let started: Vec<i64> = kept.iter().map(|(_, a)| a.at.as_millis()).collect();
    let declined: Vec<bool> = kept.iter().map(|(_, a)| a.declined).collect();
    let amounts: Vec<i64> = kept.iter().map(|(_, a)| a.amount).collect();
    let answered: Vec<bool> = kept.iter().map(|(_, a)| a.answered).collect();
    let advice: Vec<Option<&str>> = kept.iter().map(|(_, a)| a.advice_code.as_deref()).collect();
    client
        .execute(
            &upsert,
            &[
                &payments, &numbers, &methods, &started, &declined, &amounts, &answered, &advice,
            ],
        )
        .await
        .map_err(pg_error("writing attempts"))?;
    Ok(())
}

/// Inserts the group's events in one statement, in the group's order (so sequences
/// follow it), after taking the outbox lock in the same statement: every row joins
/// the lock's one-row subquery (a volatile function, so Postgres evaluates it on its
/// own, before any row is made), so no sequence is drawn before the lock is held.
async fn write_events(client: &impl GenericClient, events: &[&EventRow]) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let insert = client
        .prepare_cached(
            "INSERT INTO events (id, payment_id, type, created, body)
             SELECT e.id, e.payment_id, e.type, e.created, e.body::json
             FROM (SELECT pg_advisory_xact_lock($6)) AS outbox,
                  UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[])
                  WITH ORDINALITY AS e(id, payment_id, type, created, body, n)
             ORDER BY e.n",
        )
        .await
        .map_err(pg_error("preparing the event insert"))?;
    let ids: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    let payments: Vec<&str> = events.iter().map(|e| e.1.as_str()).collect();
    let types: Vec<&str> = events.iter().map(|e| e.2).collect();
    let created: Vec<i64> = events.iter().map(|e| e.3).collect();
    let bodies: Vec<&str> = events.iter().map(|e| e.4.as_str()).collect();
    client
        .execute(
            &insert,
            &[&ids, &payments, &types, &created, &bodies, &OUTBOX_LOCK],
        )
        .await
        .map_err(pg_error("writing events"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A group is written again in halves only after a failure that may be one
    /// change's: not after the crash tests' killed session (which must stay a failure
    /// of the whole group), nor after an empty pool or a lost connection.
    #[test]
    fn only_a_changes_own_failure_splits_its_group() {
        assert!(!one_changes(&super::super::crash_error("killed")));
        assert!(!one_changes(&StoreError::backend(
            "postgres: taking a connection from the pool",
            true,
            std::io::Error::from(std::io::ErrorKind::TimedOut),
        )));
        assert!(one_changes(&row::status_from("zzz").unwrap_err()));
        let undecodable = serde_json::from_str::<u8>("{").unwrap_err();
        assert!(one_changes(&StoreError::backend(
            "decoding",
            false,
            undecodable
        )));
        assert!(!one_changes(&StoreError::NotFound("osp_1".into())));
    }
}
