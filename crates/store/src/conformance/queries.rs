//! The store's answers to the engine's questions: lists, idempotency keys, a card's
//! attempt history across payments, counts by status.

use super::*;

pub(super) async fn lists_are_newest_first_and_paginate(store: &dyn Store) {
    for (i, id) in ["osp_1", "osp_2", "osp_3", "osp_4"].iter().enumerate() {
        store
            .insert(&sample_record(id, i as i64 * 1_000, None))
            .await
            .unwrap();
    }
    let page: Vec<_> = store
        .list(2, None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.payment.id)
        .collect();
    assert_eq!(page, ["osp_4", "osp_3"]);
    let next: Vec<_> = store
        .list(2, Some("osp_3"))
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.payment.id)
        .collect();
    assert_eq!(next, ["osp_2", "osp_1"]);
}

pub(super) async fn idempotency_keys_map_to_the_first_payment(store: &dyn Store) {
    assert_eq!(
        store
            .claim_idempotency_key("key-1", "fp-a", "osp_a")
            .await
            .unwrap(),
        IdempotencyClaim::Inserted
    );
    assert_eq!(
        store
            .claim_idempotency_key("key-1", "fp-b", "osp_b")
            .await
            .unwrap(),
        IdempotencyClaim::Existing {
            fingerprint: "fp-a".into(),
            payment_id: "osp_a".into()
        }
    );
    // A key registered without a time never expires.
    assert_eq!(
        store
            .idempotency_key(
                "key-1",
                Timestamp::from_millis(i64::MAX / 4),
                std::time::Duration::from_secs(86_400)
            )
            .await
            .unwrap(),
        Some(("fp-a".to_string(), "osp_a".to_string()))
    );
}

pub(super) async fn card_history_spans_every_payment_of_the_method(store: &dyn Store) {
    for (id, at) in [("osp_a", 1_000), ("osp_b", 5_000)] {
        let mut record = sample_record(id, at, None);
        let mut attempt = AttemptRecord::started(
            format!("{id}_att1"),
            id,
            1,
            "mock",
            Timestamp::from_millis(at),
        );
        attempt.finished_at = Some(Timestamp::from_millis(at));
        attempt.decline_category = Some(DeclineCategory::SoftFunds);
        let mut codes = offsession_core::DeclineCodes::new("card_declined", Some("do_not_honor"));
        codes.network_advice_code = (id == "osp_a").then(|| "21".to_owned());
        attempt.outcome = Some(offsession_core::AttemptOutcome::Declined {
            codes,
            reference: Default::default(),
        });
        record.attempts.push(attempt);
        store.insert(&record).await.unwrap();
    }
    let mut other = sample_record("osp_other", 2_000, None);
    other.payment.payment_method = "pm_other".into();
    store.insert(&other).await.unwrap();
    let all = store
        .card_history("pm_card_visa", Timestamp::from_millis(0), 100)
        .await
        .unwrap();
    assert_eq!(all.len(), 2, "attempts of both payments on the same method");
    assert!(all[0].at < all[1].at && all.iter().all(|a| a.declined));
    assert_eq!(all[0].payment_id, "osp_a");
    assert_eq!(all[0].attempt_number, 1);
    assert_eq!(all[0].amount, 2000);
    assert_eq!(
        (all[0].advice_code.as_deref(), all[1].advice_code.as_deref()),
        (Some("21"), None),
        "the advice code of a decline is kept (it bars the card)"
    );
    let recent = store
        .card_history("pm_card_visa", Timestamp::from_millis(2_000), 100)
        .await
        .unwrap();
    assert_eq!(recent.len(), 1, "`since` bounds the history");
    let newest = store
        .card_history("pm_card_visa", Timestamp::from_millis(0), 1)
        .await
        .unwrap();
    assert_eq!(newest.len(), 1, "`limit` bounds the history");
    assert_eq!(
        newest[0].payment_id, "osp_b",
        "the newest attempts are kept"
    );

    // A new attempt written by `update` joins the history; its outcome is seen.
    let current = store.get("osp_other").await.unwrap().unwrap();
    let mut next = current.clone();
    next.attempts.push(AttemptRecord::started(
        "osp_other_att1".into(),
        "osp_other",
        1,
        "mock",
        Timestamp::from_millis(3_000),
    ));
    let version = store.update(&next, Expected::of(&current)).await.unwrap();
    let history = store
        .card_history("pm_other", Timestamp::from_millis(0), 100)
        .await
        .unwrap();
    assert_eq!(history.len(), 1);
    assert!(!history[0].declined);
    next.version = version;
    let mut declined = next.clone();
    declined.attempts[0].decline_category = Some(DeclineCategory::SoftFunds);
    store.update(&declined, Expected::of(&next)).await.unwrap();
    let history = store
        .card_history("pm_other", Timestamp::from_millis(0), 100)
        .await
        .unwrap();
    assert_eq!(history.len(), 1, "an attempt is listed once");
    assert!(history[0].declined, "the decline written later is seen");
    // A second attempt, then its answer: each update writes only the newest attempt,
    // and the first keeps what was written for it.
    let mut retry = declined.clone();
    retry.version = store
        .get("osp_other")
        .await
        .unwrap()
        .map(|r| r.version)
        .unwrap();
    let mut second = retry.clone();
    second.attempts.push(AttemptRecord::started(
        "osp_other_att2".into(),
        "osp_other",
        2,
        "mock",
        Timestamp::from_millis(4_000),
    ));
    second.version = store.update(&second, Expected::of(&retry)).await.unwrap();
    let mut answered = second.clone();
    answered.attempts[1].decline_category = Some(DeclineCategory::SoftFunds);
    store
        .update(&answered, Expected::of(&second))
        .await
        .unwrap();
    let history = store
        .card_history("pm_other", Timestamp::from_millis(0), 100)
        .await
        .unwrap();
    assert_eq!(history.len(), 2);
    assert!(history.iter().all(|a| a.declined), "{history:?}");
    assert_eq!(
        history.iter().map(|a| a.attempt_number).collect::<Vec<_>>(),
        vec![1, 2],
        "oldest first"
    );
    // An answer that also moves the attempt's start time moves it in the history
    // (the SQL stores write an answer without the start time when it is unchanged).
    let mut moved = answered.clone();
    moved.version = store
        .get("osp_other")
        .await
        .unwrap()
        .map(|r| r.version)
        .unwrap();
    let mut later = moved.clone();
    later.attempts[1].started_at = Timestamp::from_millis(4_500);
    later.attempts[1].decline_category = None;
    store.update(&later, Expected::of(&moved)).await.unwrap();
    let history = store
        .card_history("pm_other", Timestamp::from_millis(4_200), 100)
        .await
        .unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].at, Timestamp::from_millis(4_500));
    assert!(!history[0].declined, "the rewritten answer is kept");
}

/// A card's history leaves out first attempts approved: on a busy card they would
/// fill the `limit` and push out the older declines and reattempts the caps count.
/// Retries approved, first attempts declined and first attempts unanswered stay.
pub(super) async fn card_history_leaves_out_approved_first_attempts(store: &dyn Store) {
    let approved = || offsession_core::AttemptOutcome::Approved {
        reference: Default::default(),
    };
    // osp_r: declined at 1_000, retried and approved at 2_000.
    let mut retried = sample_record("osp_r", 1_000, None);
    for (number, at) in [(1, 1_000), (2, 2_000)] {
        let mut attempt = AttemptRecord::started(
            format!("osp_r_att{number}"),
            "osp_r",
            number,
            "mock",
            Timestamp::from_millis(at),
        );
        attempt.finished_at = Some(Timestamp::from_millis(at));
        if number == 1 {
            attempt.decline_category = Some(DeclineCategory::SoftFunds);
            attempt.outcome = Some(offsession_core::AttemptOutcome::Declined {
                codes: offsession_core::DeclineCodes::new(
                    "card_declined",
                    Some("insufficient_funds"),
                ),
                reference: Default::default(),
            });
        } else {
            attempt.outcome = Some(approved());
        }
        retried.attempts.push(attempt);
    }
    store.insert(&retried).await.unwrap();
    // Five payments approved at their first attempt after it, and one in flight.
    for i in 0..6 {
        let id = format!("osp_ok{i}");
        let at = 3_000 + i * 1_000;
        let mut record = sample_record(&id, at, None);
        let mut attempt = AttemptRecord::started(
            format!("{id}_att1"),
            &id,
            1,
            "mock",
            Timestamp::from_millis(at),
        );
        if i < 5 {
            attempt.finished_at = Some(Timestamp::from_millis(at));
            attempt.outcome = Some(approved());
        }
        record.attempts.push(attempt);
        store.insert(&record).await.unwrap();
    }
    let history = store
        .card_history("pm_card_visa", Timestamp::from_millis(0), 3)
        .await
        .unwrap();
    let listed: Vec<(&str, u32)> = history
        .iter()
        .map(|a| (a.payment_id.as_str(), a.attempt_number))
        .collect();
    assert_eq!(
        listed,
        [("osp_r", 1), ("osp_r", 2), ("osp_ok5", 1)],
        "the decline, the approved retry and the unanswered first attempt, oldest first"
    );
    assert!(history[0].declined && !history[1].declined && !history[2].answered);
}

pub(super) async fn status_counts_cover_every_status(store: &dyn Store) {
    store
        .insert(&sample_record("osp_a", 1_000, None))
        .await
        .unwrap();
    let counts = store.count_by_status().await.unwrap();
    assert_eq!(counts.len(), PaymentStatus::ALL.len());
    assert!(counts.contains(&(PaymentStatus::Pending, 1)));
}

/// Attempts are filed under the card (`PaymentRecord::card_key`): two payment methods
/// with one fingerprint share a history, which the payment method's id alone no
/// longer reaches.
pub(super) async fn card_history_is_per_card_fingerprint(store: &dyn Store) {
    for (id, method, at) in [
        ("osp_fa", "pm_saved_once", 1_000),
        ("osp_fb", "pm_saved_twice", 2_000),
    ] {
        let mut record = sample_record(id, at, None);
        record.payment.payment_method = method.into();
        record.method = Some(offsession_core::PaymentMethodDetails {
            payment_method_type: offsession_core::PaymentMethodType::Card,
            card: Some(offsession_core::CardDetails {
                fingerprint: Some("fp_shared".into()),
                ..Default::default()
            }),
            bank_country: None,
        });
        let attempt = AttemptRecord::started(
            format!("{id}_att1"),
            id,
            1,
            "mock",
            Timestamp::from_millis(at),
        );
        record.attempts.push(attempt);
        assert_eq!(record.card_key(), "card:mock:fp_shared");
        store.insert(&record).await.unwrap();
    }
    let shared = store
        .card_history("card:mock:fp_shared", Timestamp::from_millis(0), 100)
        .await
        .unwrap();
    let payments: Vec<_> = shared.iter().map(|a| a.payment_id.as_str()).collect();
    assert_eq!(payments, ["osp_fa", "osp_fb"]);
    let by_method = store
        .card_history("pm_saved_once", Timestamp::from_millis(0), 100)
        .await
        .unwrap();
    assert!(by_method.is_empty(), "{by_method:?}");
}
