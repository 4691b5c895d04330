//! The Postgres store keeps the store contract, and two stores on one database never
//! claim the same payment. Needs `OFFSESSION_TEST_POSTGRES_URL`; each test works in a
//! schema of its own and drops it.
#![cfg(feature = "postgres")]

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};

use offsession_core::{ClockScope, Lease, Store, StoreError, Timestamp};
use offsession_store::conformance::{run_all, sample_record};
use offsession_store::PostgresStore;

fn url() -> Option<String> {
    offsession_store::conformance::test_postgres_url("Postgres store")
}

/// A plain connection to the test database, beside the stores (to change or inspect
/// their tables behind their backs).
async fn raw_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// The plan of `statement` (its parameters spliced in) in `schema`, with sequential
/// scans priced out.
async fn plan_of(client: &tokio_postgres::Client, schema: &str, statement: &str) -> Vec<String> {
    client
        .simple_query(&format!(
            "SET search_path = {schema}; SET enable_seqscan = off; EXPLAIN {statement}"
        ))
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .collect()
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn schema(name: &str) -> String {
    format!(
        "offsession_test_{}_{}_{}",
        std::process::id(),
        name,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_store_keeps_the_store_contract() {
    let Some(url) = url() else { return };
    // run_all makes a fresh store per check: a fresh schema each, dropped after.
    let stores = std::sync::Mutex::new(Vec::new());
    let runtime = tokio::runtime::Handle::current();
    run_all(|| {
        let store = tokio::task::block_in_place(|| {
            runtime.block_on(PostgresStore::connect(&url, &schema("contract"), 4))
        })
        .unwrap();
        stores.lock().unwrap().push(store.clone());
        store
    })
    .await;
    for store in stores.into_inner().unwrap() {
        store.drop_schema().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_never_claim_the_same_payment() {
    let Some(url) = url() else { return };
    let schema = schema("claims");
    let a = PostgresStore::connect(&url, &schema, 4).await.unwrap();
    let b = PostgresStore::connect(&url, &schema, 4).await.unwrap();
    for i in 0..400 {
        a.insert(&sample_record(&format!("osp_{i:04}"), 1_000 + i, None))
            .await
            .unwrap();
    }
    let now = Timestamp::from_millis(10_000);
    let claim = |store: PostgresStore, owner: &'static str| async move {
        let lease = Lease {
            owner: owner.into(),
            until: Timestamp::from_millis(60_000),
        };
        let mut ids = Vec::new();
        loop {
            let batch = store
                .claim_due(&ClockScope::Engine, now, 25, &lease)
                .await
                .unwrap();
            if batch.is_empty() {
                return ids;
            }
            for record in batch {
                assert_eq!(record.lease.as_ref(), Some(&lease));
                ids.push(record.payment.id);
            }
        }
    };
    let (from_a, from_b) = tokio::join!(
        tokio::spawn(claim(a.clone(), "a")),
        tokio::spawn(claim(b.clone(), "b"))
    );
    let (from_a, from_b) = (from_a.unwrap(), from_b.unwrap());
    let a_ids: HashSet<_> = from_a.iter().collect();
    let b_ids: HashSet<_> = from_b.iter().collect();
    assert_eq!(a_ids.len(), from_a.len());
    assert_eq!(b_ids.len(), from_b.len());
    assert!(a_ids.is_disjoint(&b_ids), "a payment was claimed twice");
    assert_eq!(a_ids.len() + b_ids.len(), 400, "every payment claimed once");
    a.drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused() {
    let Some(url) = url() else { return };
    let schema = schema("newer");
    let store = PostgresStore::connect(&url, &schema, 1).await.unwrap();
    let client = raw_client(&url).await;
    client
        .batch_execute(&format!("UPDATE {schema}.schema_version SET version = 99"))
        .await
        .unwrap();
    let err = PostgresStore::connect(&url, &schema, 1).await.unwrap_err();
    assert!(matches!(err, StoreError::Backend { .. }));
    assert!(err.to_string().contains("version 99"), "{err}");
    store.drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_schema_is_upgraded_with_its_payments_and_events() {
    use offsession_core::EventType;
    use offsession_store::conformance::sample_event;

    let Some(url) = url() else { return };
    let schema = schema("upgrade");
    let store = PostgresStore::connect(&url, &schema, 1).await.unwrap();
    let record = sample_record("osp_upgrade", 1_000, None);
    let event = sample_event(&record, "evt_upgrade", EventType::Created);
    store
        .create(
            &record,
            Some(created_key("key_upgrade")),
            std::slice::from_ref(&event),
        )
        .await
        .unwrap();
    let stored = store.get("osp_upgrade").await.unwrap();
    assert!(stored.is_some());
    // Back to version 2 as it was: bodies in `jsonb`, the table's default toast target.
    let client = raw_client(&url).await;
    client
        .batch_execute(&format!(
            "ALTER TABLE {schema}.payments ALTER COLUMN body TYPE jsonb USING body::jsonb;
             ALTER TABLE {schema}.payments RESET (toast_tuple_target);
             ALTER TABLE {schema}.events ALTER COLUMN body TYPE jsonb USING body::jsonb;
             DROP INDEX {schema}.engine_state_key_c;
             DROP INDEX {schema}.attempts_counted;
             UPDATE {schema}.schema_version SET version = 2;"
        ))
        .await
        .unwrap();
    let upgraded = PostgresStore::connect(&url, &schema, 1).await.unwrap();
    assert_eq!(upgraded.get("osp_upgrade").await.unwrap(), stored);
    assert_eq!(event_ids(&upgraded).await, vec!["evt_upgrade".to_owned()]);
    let types: Vec<String> = client
        .query(
            "SELECT data_type FROM information_schema.columns
             WHERE table_schema = $1 AND column_name = 'body' ORDER BY table_name",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(types, ["json", "json"]);
    let version: i64 = client
        .query_one(&format!("SELECT version FROM {schema}.schema_version"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, offsession_store::SCHEMA_VERSION);
    // Migration 4's index reads engine state by prefix: with sequential scans priced
    // out, the plan of the store's prefix read uses it.
    upgraded.save_state("destination/we_1", "{}").await.unwrap();
    upgraded
        .save_state("webhook/we_1/cursor", "1")
        .await
        .unwrap();
    assert_eq!(upgraded.list_state("destination/").await.unwrap().len(), 1);
    // The store's own statement, its parameters spliced in (EXPLAIN of a simple query).
    let statement = offsession_store::postgres::LIST_STATE_RANGE
        .replace("$1", "'destination/'")
        .replace("$2", "'destination0'");
    let plan = plan_of(&client, &schema, &statement).await;
    assert!(
        plan.iter().any(|step| step.contains("engine_state_key_c")),
        "{plan:?}"
    );
    // Migration 5's index holds the attempts the card history reads.
    let statement = offsession_store::postgres::CARD_HISTORY
        .replace("$1", "'pm_x'")
        .replace("$2", "0")
        .replace("$3", "256");
    let plan = plan_of(&client, &schema, &statement).await;
    assert!(
        plan.iter().any(|step| step.contains("attempts_counted")),
        "{plan:?}"
    );
    upgraded.drop_schema().await.unwrap();
}

fn created_key(key: &str) -> offsession_core::NewIdempotencyKey<'_> {
    offsession_core::NewIdempotencyKey {
        key,
        fingerprint: "fp",
        now: Timestamp::from_millis(1_000),
        ttl: std::time::Duration::from_secs(86_400),
    }
}

async fn event_ids(store: &PostgresStore) -> Vec<String> {
    store
        .events_after(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_killed_at_any_step_leaves_nothing_half_made() {
    use offsession_core::{AttemptRecord, EventType, Expected, IdempotencyClaim, PaymentStatus};
    use offsession_store::conformance::sample_event;

    let Some(url) = url() else { return };
    let store = PostgresStore::connect(&url, &schema("crash"), 2)
        .await
        .unwrap();

    // Create: key, payment, then attempts and events together; killed after each step
    // in turn.
    for step in 1..=4 {
        let id = format!("osp_create_{step}");
        let key = format!("key_{step}");
        let record = sample_record(&id, 1_000, None);
        let event = sample_event(&record, &format!("evt_create_{step}"), EventType::Created);
        store.crash_at_step(step);
        let err = store
            .create(
                &record,
                Some(created_key(&key)),
                std::slice::from_ref(&event),
            )
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("crash_at_step"),
            "step {step}: {err}"
        );
        assert!(
            store.get(&id).await.unwrap().is_none(),
            "step {step}: payment"
        );
        assert!(
            !event_ids(&store).await.contains(&event.id),
            "step {step}: an event without its payment"
        );
        // The key was not kept: the client's retry creates the payment, once.
        let claim = store
            .create(
                &record,
                Some(created_key(&key)),
                std::slice::from_ref(&event),
            )
            .await
            .unwrap();
        assert_eq!(claim, IdempotencyClaim::Inserted, "step {step}");
        let ids = event_ids(&store).await;
        assert_eq!(ids.iter().filter(|e| **e == event.id).count(), 1);
    }

    // An attempt's write-ahead: status, then attempt row and event together; killed
    // after each step.
    let method = sample_record("osp_create_1", 1_000, None)
        .payment
        .payment_method;
    for step in 1..=3 {
        let stored = store.get("osp_create_1").await.unwrap().unwrap();
        let history = store
            .card_history(&method, Timestamp::from_millis(0), 100)
            .await
            .unwrap();
        let mut next = stored.clone();
        let number = next.attempts.len() as u32 + 1;
        next.payment.status = PaymentStatus::Processing;
        next.attempts.push(AttemptRecord::started(
            format!("att_{step}"),
            "osp_create_1",
            number,
            "mock",
            Timestamp::from_millis(2_000 + i64::from(step)),
        ));
        let event = sample_event(
            &next,
            &format!("evt_attempt_{step}"),
            EventType::AttemptStarted,
        );
        store.crash_at_step(step);
        let err = store
            .commit(&next, Expected::of(&stored), std::slice::from_ref(&event))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("crash_at_step"),
            "step {step}: {err}"
        );
        assert_eq!(
            store.get("osp_create_1").await.unwrap().unwrap(),
            stored,
            "step {step}: the record changed"
        );
        assert_eq!(
            store
                .card_history(&method, Timestamp::from_millis(0), 100)
                .await
                .unwrap(),
            history,
            "step {step}: an attempt row without its record"
        );
        assert!(!event_ids(&store).await.contains(&event.id), "step {step}");
        // Back to pending for the next round, committed whole.
        let mut reset = next.clone();
        reset.payment.status = PaymentStatus::Pending;
        store
            .commit(&next, Expected::of(&stored), std::slice::from_ref(&event))
            .await
            .unwrap();
        let written = store.get("osp_create_1").await.unwrap().unwrap();
        store
            .commit(&reset, Expected::of(&written), &[])
            .await
            .unwrap();
    }
    store.drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_lock_excludes_other_instances_until_released() {
    use std::time::Duration;
    let Some(url) = url() else { return };
    let schema = schema("cardlock");
    let a = PostgresStore::connect(&url, &schema, 4).await.unwrap();
    let b = PostgresStore::connect(&url, &schema, 4).await.unwrap();
    let held = a.lock_card("pm_1").await.unwrap();
    // Another instance waits for the same card; the wait given up here ends cleanly.
    let waited = tokio::time::timeout(Duration::from_millis(300), b.lock_card("pm_1")).await;
    assert!(waited.is_err(), "two instances held one card's lock");
    // Another card is free.
    let other = tokio::time::timeout(Duration::from_secs(10), b.lock_card("pm_2"))
        .await
        .expect("another card's lock is free")
        .unwrap();
    drop(other);
    drop(held);
    // Released: the other instance gets it, again and again (no lock is left behind
    // on a pooled connection by the abandoned wait or by the releases).
    for _ in 0..5 {
        let again = tokio::time::timeout(Duration::from_secs(10), b.lock_card("pm_1"))
            .await
            .expect("the lock is released on drop")
            .unwrap();
        drop(again);
        let back = tokio::time::timeout(Duration::from_secs(10), a.lock_card("pm_1"))
            .await
            .expect("and taken back")
            .unwrap();
        drop(back);
    }
    a.drop_schema().await.unwrap();
}

/// A write under a card lock whose session ended (killed here; a timeout or a
/// failover alike) is refused: another instance may have taken the card and spent
/// its last slot meanwhile. A write under a lock still held lands, with its attempt
/// in the card's history and its event in the outbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_under_a_lost_card_lock_is_refused() {
    use offsession_core::{AttemptRecord, EventType, Expected};
    use offsession_store::conformance::{sample_event, sample_record};
    use std::time::Duration;
    let Some(url) = url() else { return };
    let schema = schema("lostlock");
    let a = PostgresStore::connect(&url, &schema, 4).await.unwrap();
    let b = PostgresStore::connect(&url, &schema, 4).await.unwrap();
    let card = format!("card:fp_lost_{}", std::process::id());
    for id in ["osp_la", "osp_lb"] {
        a.insert(&sample_record(id, 1_000, None)).await.unwrap();
    }
    let attempted = |id: &str, stored: &offsession_core::PaymentRecord| {
        let mut next = stored.clone();
        next.attempts.push(AttemptRecord::started(
            format!("{id}_att1"),
            id,
            1,
            "mock",
            Timestamp::from_millis(2_000),
        ));
        next
    };
    let held_a = a.lock_card(&card).await.unwrap();
    // A's lock session ends.
    let client = raw_client(&url).await;
    let killed = client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_locks
             WHERE locktype = 'advisory' AND objsubid = 1 AND granted
               AND objid = (hashtextextended($1, 0) & 4294967295)::oid",
            &[&card],
        )
        .await
        .unwrap();
    assert_eq!(killed.len(), 1, "one session held the card");
    // B takes the card and writes its attempt.
    let held_b = tokio::time::timeout(Duration::from_secs(10), b.lock_card(&card))
        .await
        .expect("the lost lock is free")
        .unwrap();
    let stored_b = b.get("osp_lb").await.unwrap().unwrap();
    let next_b = attempted("osp_lb", &stored_b);
    let event_b = sample_event(&next_b, "evt_lb", EventType::AttemptStarted);
    b.commit_under_lock(held_b, &next_b, Expected::of(&stored_b), &[event_b])
        .await
        .expect("written under a lock still held");
    // A's write under its lost lock is refused, and writes nothing.
    let stored_a = a.get("osp_la").await.unwrap().unwrap();
    let next_a = attempted("osp_la", &stored_a);
    let event_a = sample_event(&next_a, "evt_la", EventType::AttemptStarted);
    let refused = a
        .commit_under_lock(held_a, &next_a, Expected::of(&stored_a), &[event_a])
        .await;
    assert!(refused.is_err(), "written under a lost lock: {refused:?}");
    assert_eq!(a.get("osp_la").await.unwrap().unwrap(), stored_a);
    let history = a
        .card_history(&next_a.card_key(), Timestamp::from_millis(0), 10)
        .await
        .unwrap();
    let payments: Vec<_> = history.iter().map(|h| h.payment_id.as_str()).collect();
    assert_eq!(payments, ["osp_lb"], "only B's attempt is filed");
    assert_eq!(event_ids(&a).await, vec!["evt_lb".to_owned()]);
    // The card is free again after B's commit, and A's pool still serves.
    let again = tokio::time::timeout(Duration::from_secs(10), a.lock_card(&card))
        .await
        .expect("released by the commit")
        .unwrap();
    drop(again);
    a.drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_with_one_key_make_one_payment() {
    use offsession_core::IdempotencyClaim;
    let Some(url) = url() else { return };
    let schema = schema("samekey");
    let a = PostgresStore::connect(&url, &schema, 8).await.unwrap();
    let b = PostgresStore::connect(&url, &schema, 8).await.unwrap();
    for round in 0..20 {
        let key = format!("key_{round}");
        let first = sample_record(&format!("osp_a_{round}"), 1_000, None);
        let second = sample_record(&format!("osp_b_{round}"), 1_000, None);
        let (x, y) = tokio::join!(
            a.create(&first, Some(created_key(&key)), &[]),
            b.create(&second, Some(created_key(&key)), &[])
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        // One of the two made the payment; the other got it back, never an error.
        let (winner, existing) = match (&x, &y) {
            (IdempotencyClaim::Inserted, IdempotencyClaim::Existing { payment_id, .. }) => {
                (first.payment.id.clone(), payment_id.clone())
            }
            (IdempotencyClaim::Existing { payment_id, .. }, IdempotencyClaim::Inserted) => {
                (second.payment.id.clone(), payment_id.clone())
            }
            other => panic!("round {round}: {other:?}"),
        };
        assert_eq!(winner, existing, "round {round}");
        assert!(a.get(&existing).await.unwrap().is_some(), "never a 404");
        let loser = if winner == first.payment.id {
            &second
        } else {
            &first
        };
        assert!(a.get(&loser.payment.id).await.unwrap().is_none());
    }
    a.drop_schema().await.unwrap();
}

/// Creates queued together are written as one batch; a key or an id repeated within
/// the batch answers as it would one create later: the key's first payment comes
/// back, a repeated id is a duplicate and its key is not kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_batched_together_answer_as_one_by_one() {
    use offsession_core::IdempotencyClaim;
    let Some(url) = url() else { return };
    let store = PostgresStore::connect(&url, &schema("batch"), 4)
        .await
        .unwrap();
    // An id stored before the batch, under a key of its own.
    let stored = sample_record("osp_stored", 1_000, None);
    store
        .create(&stored, Some(created_key("key_stored")), &[])
        .await
        .unwrap();
    let keys: Vec<String> = (0..40).map(|i| format!("key_{}", i / 2)).collect();
    let records: Vec<_> = (0..40)
        .map(|i| match i {
            // Repeats an id of the batch (the first create of `osp_4`) under a new key.
            39 => sample_record("osp_4", 1_000, None),
            // Repeats the id stored before, under a new key.
            37 => sample_record("osp_stored", 1_000, None),
            _ => sample_record(&format!("osp_{i}"), 1_000, None),
        })
        .collect();
    let fresh_keys = ["key_fresh_39".to_string(), "key_fresh_37".to_string()];
    let claims = futures::future::join_all(records.iter().enumerate().map(|(i, record)| {
        let key = match i {
            39 => fresh_keys[0].as_str(),
            37 => fresh_keys[1].as_str(),
            _ => keys[i].as_str(),
        };
        store.create(record, Some(created_key(key)), &[])
    }))
    .await;
    let made =
        |c: &Result<IdempotencyClaim, StoreError>| matches!(c, Ok(IdempotencyClaim::Inserted));
    assert!(
        matches!(&claims[37], Err(StoreError::Duplicate(id)) if id == "osp_stored"),
        "37: {:?}",
        claims[37]
    );
    assert!(made(&claims[36]) && made(&claims[38]), "keys used once");
    // Pairs share a key: one makes its payment, the other gets that payment back, and
    // it can be read. (Pair 4/5 is checked below: create 4 may also lose its id.)
    for i in (0..36).step_by(2).filter(|i| *i != 4) {
        let (winner, loser) = match (made(&claims[i]), made(&claims[i + 1])) {
            (true, false) => (i, &claims[i + 1]),
            (false, true) => (i + 1, &claims[i]),
            other => panic!("{i}: {other:?}: {:?} {:?}", claims[i], claims[i + 1]),
        };
        match loser {
            Ok(IdempotencyClaim::Existing { payment_id, .. }) => {
                assert_eq!(*payment_id, records[winner].payment.id, "{i}");
                assert!(store.get(payment_id).await.unwrap().is_some(), "{i}: 404");
            }
            other => panic!("{i}: {other:?}"),
        }
    }
    // `osp_4` is made once, by create 4 or create 39. Create 4 may instead have lost
    // `key_2` to create 5 (then it gets `osp_5` back), or been refused as a duplicate
    // of create 39's `osp_4` (then its key went back, and create 5 took it).
    let fours = [&claims[4], &claims[39]];
    assert_eq!(fours.iter().filter(|c| made(c)).count(), 1, "{fours:?}");
    match &claims[4] {
        Ok(IdempotencyClaim::Inserted) => {
            assert!(
                matches!(&claims[39], Err(StoreError::Duplicate(id)) if id == "osp_4"),
                "39: {:?}",
                claims[39]
            );
            assert!(
                matches!(&claims[5], Ok(IdempotencyClaim::Existing { payment_id, .. }) if payment_id == "osp_4"),
                "5: {:?}",
                claims[5]
            );
        }
        Ok(IdempotencyClaim::Existing { payment_id, .. }) => {
            assert_eq!(payment_id, "osp_5");
            assert!(made(&claims[5]), "5: {:?}", claims[5]);
        }
        Err(StoreError::Duplicate(id)) => {
            assert_eq!(id, "osp_4");
            assert!(made(&claims[5]), "5: {:?}", claims[5]);
        }
        other => panic!("4: {other:?}"),
    }
    // A refused create keeps no key: a later create with it makes its payment. (Create
    // 39 makes `osp_4` when it is written before create 4, and then keeps its key.)
    for (key, create) in fresh_keys.iter().zip([39, 37]) {
        let claim = store
            .create(
                &sample_record(&format!("osp_later_{key}"), 1_000, None),
                Some(created_key(key)),
                &[],
            )
            .await
            .unwrap();
        match &claims[create] {
            Ok(IdempotencyClaim::Inserted) => assert!(
                matches!(&claim, IdempotencyClaim::Existing { payment_id, .. } if payment_id == "osp_4"),
                "{key}: {claim:?}"
            ),
            _ => assert_eq!(claim, IdempotencyClaim::Inserted, "{key}"),
        }
    }
    // The payment stored before is as it was.
    assert_eq!(store.get("osp_stored").await.unwrap().unwrap().version, 1);
    store.drop_schema().await.unwrap();
}

/// Two creates with one expired key, queued together: the first renews the key and
/// makes its payment, the second gets that payment back. (Sent at once, both used to
/// read the expired key, renew it and make a payment each.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_with_one_expired_key_make_one_payment() {
    use offsession_core::{IdempotencyClaim, NewIdempotencyKey};
    let Some(url) = url() else { return };
    let store = PostgresStore::connect(&url, &schema("expired"), 4)
        .await
        .unwrap();
    let day = std::time::Duration::from_secs(86_400);
    let key_at = |now: i64| NewIdempotencyKey {
        key: "key_expired",
        fingerprint: "fp",
        now: Timestamp::from_millis(now),
        ttl: day,
    };
    store
        .create(
            &sample_record("osp_old", 1_000, None),
            Some(key_at(1_000)),
            &[],
        )
        .await
        .unwrap();
    let later = 1_000 + 3 * 86_400_000;
    for round in 0..10 {
        let records: Vec<_> = (0..4)
            .map(|i| sample_record(&format!("osp_{round}_{i}"), later, None))
            .collect();
        let now = later + round * 2 * 86_400_000;
        let claims = futures::future::join_all(
            records
                .iter()
                .map(|record| store.create(record, Some(key_at(now)), &[])),
        )
        .await;
        let made: Vec<usize> = claims
            .iter()
            .enumerate()
            .filter(|(_, c)| matches!(c, Ok(IdempotencyClaim::Inserted)))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(made.len(), 1, "round {round}: {claims:?}");
        let winner = &records[made[0]].payment.id;
        for claim in &claims {
            match claim {
                Ok(IdempotencyClaim::Inserted) => {}
                Ok(IdempotencyClaim::Existing { payment_id, .. }) => {
                    assert_eq!(payment_id, winner, "round {round}")
                }
                other => panic!("round {round}: {other:?}"),
            }
        }
    }
    store.drop_schema().await.unwrap();
}

/// A row whose body cannot be read is left out of a claim instead of failing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_row_does_not_fail_the_claim_of_the_others() {
    use offsession_store::conformance::sample_record;
    let Some(url) = url() else { return };
    let schema = schema("unreadable");
    let store = PostgresStore::connect(&url, &schema, 1).await.unwrap();
    for (id, at) in [("osp_bad", 1_000), ("osp_good", 2_000)] {
        store.insert(&sample_record(id, at, None)).await.unwrap();
    }
    let client = raw_client(&url).await;
    client
        .batch_execute(&format!(
            "UPDATE {schema}.payments SET body = '{{\"from_a_newer_binary\": true}}'
             WHERE id = 'osp_bad'"
        ))
        .await
        .unwrap();
    let lease = offsession_core::Lease {
        owner: "me".into(),
        until: Timestamp::from_millis(100_000),
    };
    let claimed = store
        .claim_due(
            &offsession_core::ClockScope::Engine,
            Timestamp::from_millis(50_000),
            10,
            &lease,
        )
        .await
        .unwrap();
    let ids: Vec<_> = claimed.iter().map(|r| r.payment.id.as_str()).collect();
    assert_eq!(ids, ["osp_good"]);
    store.drop_schema().await.unwrap();
}

/// A lock of several keys (a fingerprinted card's key and its payment method's) holds
/// one connection however many keys: two such holders fit a card pool of two, and
/// every key of each is held against other instances until it is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_of_several_keys_holds_each_on_one_connection() {
    use std::time::Duration;
    let Some(url) = url() else { return };
    let schema = schema("cardkeys");
    // Eight connections: a card pool of two.
    let a = PostgresStore::connect(&url, &schema, 8).await.unwrap();
    let b = PostgresStore::connect(&url, &schema, 8).await.unwrap();
    // Advisory locks are the database's, not the schema's: keys of this test only.
    let [card_1, pm_1, card_2, pm_2] =
        ["card:mock:fp_1", "pm_1", "card:mock:fp_2", "pm_2"].map(|key| format!("{schema}/{key}"));
    let first = a.lock_cards(&[&card_1, &pm_1]).await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), a.lock_cards(&[&card_2, &pm_2]))
        .await
        .expect("a second holder gets the pool's second connection")
        .unwrap();
    for key in [&card_1, &pm_1, &card_2, &pm_2] {
        let waited = tokio::time::timeout(Duration::from_millis(300), b.lock_card(key)).await;
        assert!(waited.is_err(), "{key} was not held");
    }
    drop(first);
    let again = tokio::time::timeout(Duration::from_secs(10), b.lock_card(&pm_1))
        .await
        .expect("released on drop")
        .unwrap();
    drop(again);
    drop(second);
    a.drop_schema().await.unwrap();
}

/// An instance frozen while it holds a card's lock (its host paused, its network cut:
/// the session stays open, idle in its transaction) holds it only until the server
/// ends the idle session; then another instance takes the card.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_holder_loses_its_card_lock_to_the_idle_timeout() {
    let Some(url) = url() else { return };
    let schema = schema("frozen");
    let idle = std::time::Duration::from_secs(1);
    let a = PostgresStore::connect_with(&url, &schema, 4, idle)
        .await
        .unwrap();
    let b = PostgresStore::connect_with(&url, &schema, 4, idle)
        .await
        .unwrap();
    let held = a.lock_card("pm_frozen").await.unwrap();
    // Never released nor dropped: its connection stays open in its transaction.
    std::mem::forget(held);
    let taken = tokio::time::timeout(std::time::Duration::from_secs(30), b.lock_card("pm_frozen"))
        .await
        .expect("the frozen holder's lock outlived the idle timeout");
    drop(taken.unwrap());
    b.drop_schema().await.unwrap();
}

/// A change that fails in the database (here: a refusal whose row holds a status this
/// binary does not know, as after a newer binary wrote it) fails alone: the changes
/// grouped with it are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_change_fails_alone_in_its_group() {
    let Some(url) = url() else { return };
    let schema = schema("isolate");
    let store = PostgresStore::connect(&url, &schema, 4).await.unwrap();
    let ids: Vec<String> = (0..100).map(|i| format!("osp_g_{i:03}")).collect();
    for (i, id) in ids.iter().enumerate() {
        store
            .insert(&sample_record(id, 1_000 + i as i64, None))
            .await
            .unwrap();
    }
    store
        .insert(&sample_record("osp_g_bad", 500, None))
        .await
        .unwrap();
    let bad = store.get("osp_g_bad").await.unwrap().unwrap();
    raw_client(&url)
        .await
        .execute(
            &format!("UPDATE {schema}.payments SET status = 'zzz' WHERE id = 'osp_g_bad'"),
            &[],
        )
        .await
        .unwrap();
    let mut current = Vec::new();
    for id in &ids {
        current.push(store.get(id).await.unwrap().unwrap());
    }
    // The refusal of a stale write reads the row's status back, and cannot decode it.
    let stale = offsession_core::Expected {
        version: bad.version + 5,
        status: bad.payment.status,
    };
    let nexts: Vec<_> = current
        .iter()
        .map(|record| {
            let mut next = record.clone();
            next.due_at = Some(Timestamp::from_millis(9_000));
            next
        })
        .collect();
    // Queued together (in the middle, not first: a writer idle when the first change
    // arrives takes it alone), so that it shares a group with others.
    let mut writes: Vec<_> = current
        .iter()
        .zip(&nexts)
        .map(|(record, next)| store.update(next, offsession_core::Expected::of(record)))
        .collect();
    writes.insert(50, store.update(&bad, stale));
    let mut answers = futures::future::join_all(writes).await;
    assert!(answers.remove(50).is_err(), "the undecodable refusal fails");
    for (id, answer) in ids.iter().zip(&answers) {
        assert!(answer.is_ok(), "{id}: {answer:?}");
    }
    for id in &ids {
        let written = store.get(id).await.unwrap().unwrap();
        assert_eq!(written.due_at, Some(Timestamp::from_millis(9_000)), "{id}");
    }
    store.drop_schema().await.unwrap();
}
