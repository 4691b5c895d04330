//! The `Store` contract as executable checks. Every implementation runs
//! [`run_all`] in its tests; a check panics with the rule it found broken.

mod atomic;
mod queries;

use std::collections::BTreeMap;

use offsession_core::payment::ObjectTag;
use offsession_core::{
    Amount, AttemptRecord, Cadence, Capture, ClockScope, Currency, DeclineCategory, Expected,
    IdempotencyClaim, Lease, OffSessionPayment, PaymentRecord, PaymentStatus, RetryDetails,
    RetryStrategy, Store, StoreError, Timestamp,
};

/// A pending payment `id` created at `created` (ms), due then.
pub fn sample_record(id: &str, created: i64, test_clock: Option<&str>) -> PaymentRecord {
    let usd = Currency::parse("usd").expect("usd is in the currency table");
    let payment = OffSessionPayment {
        id: id.to_owned(),
        object: ObjectTag::OffSessionPayment,
        amount_requested: Amount::new(2000, usd),
        amount_capturable: None,
        compartment_id: "wksp_test_offsession".into(),
        cadence: Cadence::Recurring,
        capture: Capture::default(),
        created: Timestamp::from_millis(created),
        customer: "cus_test".into(),
        payment_method: "pm_card_visa".into(),
        metadata: BTreeMap::new(),
        on_behalf_of: None,
        transfer_data: None,
        application_fee_amount_requested: None,
        statement_descriptor: None,
        statement_descriptor_suffix: None,
        description: None,
        payment_details: None,
        payment_method_options: None,
        payments_orchestration: None,
        retry_details: RetryDetails {
            attempts: 0,
            retry_strategy: RetryStrategy::None,
            retry_policy: None,
            retry_until: None,
        },
        status: PaymentStatus::Pending,
        failure_reason: None,
        last_authorization_attempt_error: None,
        latest_payment_attempt_record: None,
        payment_record: None,
        target_date: None,
        test_clock: test_clock.map(str::to_owned),
        livemode: false,
    };
    PaymentRecord::new(
        payment,
        "mock".into(),
        None,
        Timestamp::from_millis(created),
    )
}

/// Inserts `sample_record(id, 1_000, None)` and reads it back as stored.
async fn insert_read(store: &dyn Store, id: &str) -> PaymentRecord {
    store.insert(&sample_record(id, 1_000, None)).await.unwrap();
    store.get(id).await.unwrap().unwrap()
}

fn lease(owner: &str, until: i64) -> Lease {
    Lease {
        owner: owner.into(),
        until: Timestamp::from_millis(until),
    }
}

/// Runs every check, each against a fresh store from `make`.
pub async fn run_all<S: Store, F: Fn() -> S>(make: F) {
    insert_then_get_round_trips(&make()).await;
    a_duplicate_id_is_refused(&make()).await;
    a_stale_update_is_refused_and_changes_nothing(&make()).await;
    handed_over_records_keep_the_same_rules(&make()).await;
    an_update_from_another_status_is_refused(&make()).await;
    of_two_concurrent_changes_from_one_version_one_wins(&make()).await;
    updating_a_missing_payment_is_not_found(&make()).await;
    claims_come_oldest_due_first_up_to_the_limit(&make()).await;
    a_claimed_record_waits_for_its_lease_to_lapse(&make()).await;
    an_update_after_a_claim_needs_the_claimed_version(&make()).await;
    clock_scopes_are_kept_apart(&make()).await;
    a_payments_clock_scope_is_fixed_at_create(&make()).await;
    records_without_due_time_are_never_claimed(&make()).await;
    queries::lists_are_newest_first_and_paginate(&make()).await;
    queries::idempotency_keys_map_to_the_first_payment(&make()).await;
    queries::card_history_spans_every_payment_of_the_method(&make()).await;
    queries::card_history_is_per_card_fingerprint(&make()).await;
    queries::card_history_leaves_out_approved_first_attempts(&make()).await;
    queries::status_counts_cover_every_status(&make()).await;
    atomic::a_create_writes_key_payment_and_event_together(&make()).await;
    atomic::a_refused_create_registers_no_key_and_no_event(&make()).await;
    atomic::an_expired_key_counts_as_new(&make()).await;
    atomic::a_change_and_its_events_commit_together(&make()).await;
    atomic::events_come_in_commit_order_and_page(&make()).await;
    atomic::removed_events_keep_later_positions(&make()).await;
    atomic::engine_state_round_trips(&make()).await;
    atomic::engine_state_lists_by_prefix(&make()).await;
    atomic::events_are_found_by_id_and_by_payment(&make()).await;
}

pub use atomic::sample_event;

/// The Postgres server tests run against: `OFFSESSION_TEST_POSTGRES_URL` (`.ci/run`
/// sets it when the server answers). Without it, prints `skipped: …` naming `what`
/// and returns `None`, so a test never passes silently without its database.
pub fn test_postgres_url(what: &str) -> Option<String> {
    match std::env::var("OFFSESSION_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            println!("skipped: OFFSESSION_TEST_POSTGRES_URL is not set ({what})");
            None
        }
    }
}

async fn insert_then_get_round_trips(store: &dyn Store) {
    let record = sample_record("osp_a", 1_000, None);
    store.insert(&record).await.unwrap();
    let got = store
        .get("osp_a")
        .await
        .unwrap()
        .expect("inserted record is found");
    assert_eq!(
        got.payment, record.payment,
        "insert/get must round-trip the payment"
    );
    assert_eq!(got.due_at, record.due_at);
    assert!(store.get("osp_missing").await.unwrap().is_none());
}

async fn a_duplicate_id_is_refused(store: &dyn Store) {
    let record = sample_record("osp_a", 1_000, None);
    store.insert(&record).await.unwrap();
    let mut other = sample_record("osp_a", 2_000, None);
    other.payment.customer = "cus_other".into();
    assert!(matches!(
        store.insert(&other).await,
        Err(StoreError::Duplicate(id)) if id == "osp_a"
    ));
    let got = store.get("osp_a").await.unwrap().unwrap();
    assert_eq!(
        got.payment.customer, "cus_test",
        "a refused insert must not overwrite"
    );
}

async fn a_stale_update_is_refused_and_changes_nothing(store: &dyn Store) {
    let read = insert_read(store, "osp_a").await;
    let mut first = read.clone();
    first.payment.status = PaymentStatus::Canceled;
    first.due_at = None;
    store.update(&first, Expected::of(&read)).await.unwrap();

    let mut second = read.clone();
    second.payment.status = PaymentStatus::Processing;
    let err = store
        .update(&second, Expected::of(&read))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                current_status: PaymentStatus::Canceled,
                ..
            }
        ),
        "stale update must conflict, got {err:?}"
    );
    let now = store.get("osp_a").await.unwrap().unwrap();
    assert_eq!(now.payment.status, PaymentStatus::Canceled);
}

/// `create_owned` and `commit_owned` (a record handed over) follow the rules of
/// `create` and `commit`: a duplicate and a stale change are refused and change
/// nothing; an accepted change is what a read returns.
async fn handed_over_records_keep_the_same_rules(store: &dyn Store) {
    let record = sample_record("osp_a", 1_000, None);
    assert!(matches!(
        store.create_owned(record.clone(), None, &[]).await,
        Ok(IdempotencyClaim::Inserted)
    ));
    let mut other = sample_record("osp_a", 2_000, None);
    other.payment.customer = "cus_other".into();
    assert!(matches!(
        store.create_owned(other, None, &[]).await,
        Err(StoreError::Duplicate(id)) if id == "osp_a"
    ));
    let read = store.get("osp_a").await.unwrap().unwrap();
    assert_eq!(
        read.payment, record.payment,
        "a refused create must not overwrite"
    );
    let mut first = read.clone();
    first.payment.status = PaymentStatus::Canceled;
    first.due_at = None;
    let version = store
        .commit_owned(first, Expected::of(&read), &[])
        .await
        .unwrap();
    assert_eq!(version, read.version + 1);
    let mut stale = read.clone();
    stale.payment.status = PaymentStatus::Processing;
    assert!(matches!(
        store.commit_owned(stale, Expected::of(&read), &[]).await,
        Err(StoreError::Conflict {
            current_status: PaymentStatus::Canceled,
            ..
        })
    ));
    let now = store.get("osp_a").await.unwrap().unwrap();
    assert_eq!(now.payment.status, PaymentStatus::Canceled);
    assert_eq!(now.version, version);
    assert_eq!(now.due_at, None);
    assert!(matches!(
        store
            .commit_owned(sample_record("osp_missing", 1_000, None), Expected::of(&read), &[])
            .await,
        Err(StoreError::NotFound(id)) if id == "osp_missing"
    ));
}

async fn of_two_concurrent_changes_from_one_version_one_wins(store: &dyn Store) {
    // Sent together, both may reach a store in one group commit.
    for round in 0..20 {
        let id = format!("osp_race_{round}");
        store
            .insert(&sample_record(&id, 1_000, None))
            .await
            .unwrap();
        let read = store.get(&id).await.unwrap().unwrap();
        let mut cancel = read.clone();
        cancel.payment.status = PaymentStatus::Canceled;
        cancel.due_at = None;
        let mut start = read.clone();
        start.payment.status = PaymentStatus::Processing;
        let (a, b) = futures::join!(
            store.update(&cancel, Expected::of(&read)),
            store.update(&start, Expected::of(&read)),
        );
        let now = store.get(&id).await.unwrap().unwrap();
        assert_eq!(
            now.version,
            read.version + 1,
            "round {round}: one change applied"
        );
        let (won, lost) = match (a, b) {
            (Ok(_), Err(lost)) => (PaymentStatus::Canceled, lost),
            (Err(lost), Ok(_)) => (PaymentStatus::Processing, lost),
            other => panic!("round {round}: exactly one must win, got {other:?}"),
        };
        assert_eq!(now.payment.status, won, "round {round}");
        assert!(
            matches!(
                lost,
                StoreError::Conflict { current_version, current_status, .. }
                    if current_version == read.version + 1 && current_status == won
            ),
            "round {round}: {lost:?}"
        );
    }
}

async fn an_update_from_another_status_is_refused(store: &dyn Store) {
    let read = insert_read(store, "osp_a").await;
    let mut next = read.clone();
    next.payment.status = PaymentStatus::Processing;
    let wrong = Expected {
        version: read.version,
        status: PaymentStatus::PendingRetry,
    };
    assert!(matches!(
        store.update(&next, wrong).await,
        Err(StoreError::Conflict { .. })
    ));
}

async fn updating_a_missing_payment_is_not_found(store: &dyn Store) {
    let record = sample_record("osp_missing", 1_000, None);
    assert!(matches!(
        store.update(&record, Expected::of(&record)).await,
        Err(StoreError::NotFound(id)) if id == "osp_missing"
    ));
}

async fn claims_come_oldest_due_first_up_to_the_limit(store: &dyn Store) {
    for (id, at) in [
        ("osp_c", 3_000),
        ("osp_a", 1_000),
        ("osp_b", 2_000),
        ("osp_d", 9_000),
    ] {
        store.insert(&sample_record(id, at, None)).await.unwrap();
    }
    let claimed = store
        .claim_due(
            &ClockScope::Engine,
            Timestamp::from_millis(5_000),
            2,
            &lease("i1", 60_000),
        )
        .await
        .unwrap();
    let ids: Vec<_> = claimed.iter().map(|r| r.payment.id.as_str()).collect();
    assert_eq!(ids, ["osp_a", "osp_b"], "oldest due first, at most `limit`");
    assert!(claimed
        .iter()
        .all(|r| r.lease.as_ref().is_some_and(|l| l.owner == "i1")));
    let rest = store
        .claim_due(
            &ClockScope::Engine,
            Timestamp::from_millis(5_000),
            10,
            &lease("i2", 60_000),
        )
        .await
        .unwrap();
    let ids: Vec<_> = rest.iter().map(|r| r.payment.id.as_str()).collect();
    assert_eq!(
        ids,
        ["osp_c"],
        "claimed records and not-yet-due records are skipped"
    );
}

async fn a_claimed_record_waits_for_its_lease_to_lapse(store: &dyn Store) {
    store
        .insert(&sample_record("osp_a", 1_000, None))
        .await
        .unwrap();
    let first = store
        .claim_due(
            &ClockScope::Engine,
            Timestamp::from_millis(1_000),
            10,
            &lease("i1", 5_000),
        )
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    let during = store
        .claim_due(
            &ClockScope::Engine,
            Timestamp::from_millis(4_999),
            10,
            &lease("i2", 9_000),
        )
        .await
        .unwrap();
    assert!(
        during.is_empty(),
        "a leased record must not be claimed twice"
    );
    assert_eq!(
        store.next_due(&ClockScope::Engine).await.unwrap(),
        Some(Timestamp::from_millis(5_000)),
        "a leased record is next due when its lease lapses"
    );
    let after = store
        .claim_due(
            &ClockScope::Engine,
            Timestamp::from_millis(5_000),
            10,
            &lease("i2", 9_000),
        )
        .await
        .unwrap();
    assert_eq!(
        after.len(),
        1,
        "a lapsed lease makes the record claimable again"
    );
    assert_eq!(after[0].lease.as_ref().unwrap().owner, "i2");
}

async fn an_update_after_a_claim_needs_the_claimed_version(store: &dyn Store) {
    let before = insert_read(store, "osp_a").await;
    let claimed = store
        .claim_due(
            &ClockScope::Engine,
            Timestamp::from_millis(1_000),
            1,
            &lease("i1", 5_000),
        )
        .await
        .unwrap()
        .remove(0);
    assert!(
        claimed.version > before.version,
        "a claim bumps the version"
    );
    let mut stale = before.clone();
    stale.payment.status = PaymentStatus::Canceled;
    assert!(
        store.update(&stale, Expected::of(&before)).await.is_err(),
        "a change computed before the claim must not apply"
    );
    let mut next = claimed.clone();
    next.payment.status = PaymentStatus::Processing;
    next.lease = None;
    next.due_at = Some(Timestamp::from_millis(2_000));
    store.update(&next, Expected::of(&claimed)).await.unwrap();
    assert_eq!(
        store.next_due(&ClockScope::Engine).await.unwrap(),
        Some(Timestamp::from_millis(2_000)),
        "the due index follows updates"
    );
}

async fn clock_scopes_are_kept_apart(store: &dyn Store) {
    store
        .insert(&sample_record("osp_engine", 1_000, None))
        .await
        .unwrap();
    store
        .insert(&sample_record("osp_clock", 500, Some("clock_1")))
        .await
        .unwrap();
    let scope = ClockScope::TestClock("clock_1".into());
    assert_eq!(
        store.next_due(&scope).await.unwrap(),
        Some(Timestamp::from_millis(500))
    );
    assert_eq!(
        store
            .next_due(&ClockScope::TestClock("clock_2".into()))
            .await
            .unwrap(),
        None
    );
    let engine = store
        .claim_due(
            &ClockScope::Engine,
            Timestamp::from_millis(10_000),
            10,
            &lease("i", 20_000),
        )
        .await
        .unwrap();
    let ids: Vec<_> = engine.iter().map(|r| r.payment.id.as_str()).collect();
    assert_eq!(
        ids,
        ["osp_engine"],
        "the engine scope must not claim test-clock payments"
    );
}

/// A change that names another test clock does not move the payment between clock
/// scopes (the engine never makes one; a store must not then hand the payment to two
/// claimants, one per scope).
async fn a_payments_clock_scope_is_fixed_at_create(store: &dyn Store) {
    let read = insert_read(store, "osp_a").await;
    let mut moved = read.clone();
    moved.payment.test_clock = Some("clock_1".into());
    moved.due_at = Some(Timestamp::from_millis(2_000));
    store.update(&moved, Expected::of(&read)).await.unwrap();
    let clock = ClockScope::TestClock("clock_1".into());
    let now = Timestamp::from_millis(5_000);
    let on_clock = store
        .claim_due(&clock, now, 10, &lease("x", 100_000))
        .await
        .unwrap();
    let on_engine = store
        .claim_due(&ClockScope::Engine, now, 10, &lease("y", 100_000))
        .await
        .unwrap();
    assert_eq!(
        on_clock.len() + on_engine.len(),
        1,
        "claimed once in all: {on_clock:?} {on_engine:?}"
    );
    assert_eq!(
        on_engine.len(),
        1,
        "the payment stays in the scope it was created in"
    );
    assert_eq!(store.next_due(&clock).await.unwrap(), None);
}

async fn records_without_due_time_are_never_claimed(store: &dyn Store) {
    let mut record = sample_record("osp_a", 1_000, None);
    record.due_at = None;
    store.insert(&record).await.unwrap();
    assert!(store
        .claim_due(
            &ClockScope::Engine,
            Timestamp::from_millis(i64::MAX),
            10,
            &lease("i", 0)
        )
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.next_due(&ClockScope::Engine).await.unwrap(), None);
}

#[cfg(test)]
mod tests {
    use crate::MemoryStore;

    #[tokio::test]
    async fn the_memory_store_keeps_the_store_contract() {
        super::run_all(MemoryStore::new).await;
    }

    #[tokio::test]
    async fn the_memory_store_with_an_outbox_keeps_the_store_contract() {
        super::run_all(MemoryStore::with_outbox).await;
    }
}
