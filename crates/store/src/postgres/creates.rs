//! A group's creates: the idempotency keys in one statement, then the payments in one,
//! so N creates cost two statements instead of 2N. A create whose key is already held
//! (a retry, an expired key, a concurrent holder) or that repeats a key or an id of an
//! earlier create in the same group is written alone afterwards, as before
//! ([`apply_create`]), and answers as it would have.

use std::collections::HashSet;
use std::sync::atomic::AtomicI64;

use offsession_core::{IdempotencyClaim, StoreError};

use super::group::Key;
use super::{pg_error, step, Param};
use crate::row::RecordRow;

/// The group's creates, answered in their order. `Err` aborts the group.
pub(super) async fn apply_creates(
    tx: &deadpool_postgres::Transaction<'_>,
    crash: &AtomicI64,
    creates: &[(&RecordRow, Option<&Key>)],
) -> Result<Vec<Result<IdempotencyClaim, StoreError>>, StoreError> {
    if creates.is_empty() {
        return Ok(Vec::new());
    }
    // The first create of each id and key goes in the batch; a repeat waits for the
    // batch and then finds the id or key taken, as it would one statement later.
    let mut ids = HashSet::with_capacity(creates.len());
    let mut keys = HashSet::with_capacity(creates.len());
    let mut batched: Vec<bool> = creates
        .iter()
        .map(|(row, key)| {
            let new_id = ids.insert(row.id.as_str());
            let new_key = key.is_none_or(|key| keys.insert(key.key.as_str()));
            new_id && new_key
        })
        .collect();

    // Keys, in key order so that two groups taking the same keys wait for each other
    // instead of deadlocking. One already held (committed, or in a transaction this
    // one then waits for) is not inserted: that create is written alone below.
    let mut keyed: Vec<(&str, &str, &str, i64)> = creates
        .iter()
        .zip(&batched)
        .filter(|(_, batched)| **batched)
        .filter_map(|((row, key), _)| {
            key.map(|k| {
                (
                    k.key.as_str(),
                    k.fingerprint.as_str(),
                    row.id.as_str(),
                    k.now,
                )
            })
        })
        .collect();
    if !keyed.is_empty() {
        keyed.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let insert = tx
            .prepare_cached(
                "INSERT INTO idempotency_keys (key, fingerprint, payment_id, created_at)
                 SELECT key, fingerprint, payment_id, created_at
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[])
                      WITH ORDINALITY AS k(key, fingerprint, payment_id, created_at, n)
                 ORDER BY n
                 ON CONFLICT (key) DO NOTHING
                 RETURNING payment_id",
            )
            .await
            .map_err(pg_error("preparing the idempotency key insert"))?;
        let names: Vec<&str> = keyed.iter().map(|k| k.0).collect();
        let fingerprints: Vec<&str> = keyed.iter().map(|k| k.1).collect();
        let payments: Vec<&str> = keyed.iter().map(|k| k.2).collect();
        let at: Vec<i64> = keyed.iter().map(|k| k.3).collect();
        let taken: HashSet<String> = tx
            .query(&insert, &[&names, &fingerprints, &payments, &at])
            .await
            .map_err(pg_error("writing idempotency keys"))?
            .into_iter()
            .map(|row| row.get(0))
            .collect();
        for ((row, key), batched) in creates.iter().zip(batched.iter_mut()) {
            if key.is_some() && *batched {
                *batched = taken.contains(&row.id);
            }
        }
    }
    step(crash, tx).await?;

    // The payments whose key was taken (or that carry none), in one statement.
    let rows: Vec<&RecordRow> = creates
        .iter()
        .zip(&batched)
        .filter(|(_, batched)| **batched)
        .map(|((row, _), _)| *row)
        .collect();
    let mut inserted: HashSet<String> = HashSet::new();
    if !rows.is_empty() {
        inserted = insert_payments(tx, &rows).await?;
    }
    step(crash, tx).await?;

    let mut answers = Vec::with_capacity(creates.len());
    for ((row, key), batched) in creates.iter().zip(&batched) {
        answers.push(if !*batched {
            apply_create(tx, crash, row, *key).await?
        } else if inserted.contains(&row.id) {
            Ok(IdempotencyClaim::Inserted)
        } else {
            // The id exists: the key this create took is given back.
            if let Some(key) = key {
                release_key(tx, key, &row.id).await?;
            }
            Err(StoreError::Duplicate(row.id.clone()))
        });
    }
    Ok(answers)
}

/// Removes the key a refused create registered (for payment `payment_id`), so the
/// client's retry is free to make its payment.
async fn release_key(
    tx: &deadpool_postgres::Transaction<'_>,
    key: &Key,
    payment_id: &str,
) -> Result<u64, StoreError> {
    tx.execute(
        &tx.prepare_cached("DELETE FROM idempotency_keys WHERE key = $1 AND payment_id = $2")
            .await
            .map_err(pg_error("preparing a statement"))?,
        &[&key.key, &payment_id],
    )
    .await
    .map_err(pg_error("releasing an idempotency key"))
}

/// Inserts new payments (version 1) in one statement; returns the ids written (an id
/// already stored is left as it is).
async fn insert_payments(
    tx: &deadpool_postgres::Transaction<'_>,
    rows: &[&RecordRow],
) -> Result<HashSet<String>, StoreError> {
    let insert = tx
        .prepare_cached(
            "INSERT INTO payments (id, version, status, scope, due_at, claimable_at, lease_owner,
                 lease_until, processor, payment_method, customer, created, body)
             SELECT id, 1, status, scope, due_at, claimable_at, lease_owner, lease_until,
                    processor, payment_method, customer, created, body::json
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[],
                         $6::text[], $7::int8[], $8::text[], $9::text[], $10::text[],
                         $11::int8[], $12::text[])
                  WITH ORDINALITY AS r(id, status, scope, due_at, claimable_at, lease_owner,
                                       lease_until, processor, payment_method, customer,
                                       created, body, n)
             ORDER BY n
             ON CONFLICT (id) DO NOTHING
             RETURNING id",
        )
        .await
        .map_err(pg_error("preparing the payment insert"))?;
    let text = |f: fn(&RecordRow) -> &str| -> Vec<&str> { rows.iter().map(|r| f(r)).collect() };
    let ids = text(|r| r.id.as_str());
    let statuses = text(|r| r.status);
    let scopes = text(|r| r.scope.as_str());
    let due: Vec<Option<i64>> = rows.iter().map(|r| r.due_at).collect();
    let claimable: Vec<Option<i64>> = rows.iter().map(|r| r.claimable_at).collect();
    let owners: Vec<Option<&str>> = rows.iter().map(|r| r.lease_owner.as_deref()).collect();
    let until: Vec<Option<i64>> = rows.iter().map(|r| r.lease_until).collect();
    let processors = text(|r| r.processor.as_str());
    let methods = text(|r| r.payment_method.as_str());
    let customers = text(|r| r.customer.as_str());
    let created: Vec<i64> = rows.iter().map(|r| r.created).collect();
    let bodies = text(|r| r.body.as_str());
    let params: [Param<'_>; 12] = [
        &ids,
        &statuses,
        &scopes,
        &due,
        &claimable,
        &owners,
        &until,
        &processors,
        &methods,
        &customers,
        &created,
        &bodies,
    ];
    Ok(tx
        .query(&insert, &params)
        .await
        .map_err(pg_error("inserting payments"))?
        .into_iter()
        .map(|row| row.get(0))
        .collect())
}

/// A row's written columns as statement parameters, `$1`…`$12` in every statement
/// that writes one: id, status, scope, due_at, claimable_at, lease_owner,
/// lease_until, processor, payment_method, customer, created, body.
fn row_values(row: &RecordRow) -> [Param<'_>; 12] {
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

/// A create: the key (waiting for a concurrent holder of it), the payment, its
/// attempts and events. A refusal undoes what it wrote before it was found.
async fn apply_create(
    tx: &deadpool_postgres::Transaction<'_>,
    crash: &AtomicI64,
    row: &RecordRow,
    key: Option<&Key>,
) -> Result<Result<IdempotencyClaim, StoreError>, StoreError> {
    // What the key held before this create took it: None when it was new.
    let mut previous: Option<(String, String, Option<i64>)> = None;
    if let Some(key) = key {
        let inserted = tx
            .execute(
                &tx.prepare_cached(
                    "INSERT INTO idempotency_keys (key, fingerprint, payment_id, created_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (key) DO NOTHING",
                )
                .await
                .map_err(pg_error("preparing a statement"))?,
                &[&key.key, &key.fingerprint, &row.id, &key.now],
            )
            .await
            .map_err(pg_error("writing an idempotency key"))?;
        step(crash, tx).await?;
        if inserted == 0 {
            let existing = tx
                .query_one(
                    "SELECT fingerprint, payment_id, created_at FROM idempotency_keys
                     WHERE key = $1 FOR UPDATE",
                    &[&key.key],
                )
                .await
                .map_err(pg_error("reading an idempotency key"))?;
            let at: Option<i64> = existing.get(2);
            if at.is_none_or(|at| at + key.ttl > key.now) {
                return Ok(Ok(IdempotencyClaim::Existing {
                    fingerprint: existing.get(0),
                    payment_id: existing.get(1),
                }));
            }
            previous = Some((existing.get(0), existing.get(1), at));
            tx.execute(
                "UPDATE idempotency_keys SET fingerprint = $2, payment_id = $3, created_at = $4
                 WHERE key = $1",
                &[&key.key, &key.fingerprint, &row.id, &key.now],
            )
            .await
            .map_err(pg_error("renewing an expired idempotency key"))?;
        }
    }
    let inserted = tx
        .execute(
            &tx.prepare_cached("INSERT INTO payments (id, version, status, scope, due_at, claimable_at, lease_owner,
                 lease_until, processor, payment_method, customer, created, body)
             VALUES ($1, 1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::text::json)
             ON CONFLICT (id) DO NOTHING")
                .await
                .map_err(pg_error("preparing a statement"))?,
            &row_values(row),
        )
        .await
        .map_err(pg_error("inserting a payment"))?;
    if inserted == 0 {
        // The id exists: give the key back as it was.
        if let Some(key) = key {
            match previous {
                None => release_key(tx, key, &row.id).await?,
                Some((fingerprint, payment_id, at)) => tx
                    .execute(
                        &tx.prepare_cached(
                            "UPDATE idempotency_keys SET fingerprint = $2, payment_id = $3,
                             created_at = $4 WHERE key = $1",
                        )
                        .await
                        .map_err(pg_error("preparing a statement"))?,
                        &[&key.key, &fingerprint, &payment_id, &at],
                    )
                    .await
                    .map_err(pg_error("restoring an idempotency key"))?,
            };
        }
        return Ok(Err(StoreError::Duplicate(row.id.clone())));
    }
    step(crash, tx).await?;
    Ok(Ok(IdempotencyClaim::Inserted))
}
