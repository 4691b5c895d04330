//! A payment's life in the engine, one rule per test, driven by test clocks.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use offsession_core::store::Expected;
use offsession_core::{
    AttemptOutcome, ErrorCode, EventType, FailureReason, PaymentStatus, RetryStrategy, Store,
};
use offsession_mock::MockConfig;
use offsession_orchestrator::EngineConfig;
use offsession_retry::{ScheduledPolicy, ScheduledPolicyConfig};
use offsession_store::MemoryStore;
use serde_json::json;

#[tokio::test]
async fn a_new_payment_is_pending_with_the_resolved_strategy() {
    let h = harness().await;
    let p = h.create(h.body("pm_card_visa")).await;
    assert_eq!(p.status, PaymentStatus::Pending);
    assert_eq!(p.retry_details.attempts, 0);
    assert_eq!(p.retry_details.retry_strategy, RetryStrategy::Scheduled);
    assert_eq!(
        p.retry_details.retry_policy.as_deref(),
        Some("stripe_recommended")
    );
    assert!(p.id.starts_with("osp_test_"));
    assert_eq!(p.created, start());
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["object"], "v2.payments.off_session_payment");
    assert_eq!(json["created"], START);
    assert_eq!(json["failure_reason"], serde_json::Value::Null);
    assert_eq!(
        json["amount_requested"],
        json!({"value": 2000, "currency": "usd"})
    );
    assert_eq!(h.events.types_for(&p.id), [EventType::Created]);
}

#[tokio::test]
async fn an_approved_first_attempt_succeeds() {
    let h = harness().await;
    let p = h.create(h.body("pm_card_visa")).await;
    h.advance(Duration::ZERO).await;
    let p = h.get(&p.id).await;
    assert_eq!(p.status, PaymentStatus::Succeeded);
    assert_eq!(p.retry_details.attempts, 1);
    assert!(p.payment_record.is_some());
    assert!(p.latest_payment_attempt_record.is_some());
    assert_eq!(
        h.events.types_for(&p.id),
        [
            EventType::Created,
            EventType::AttemptStarted,
            EventType::AuthorizationAttemptStarted,
            EventType::Succeeded
        ]
    );
}

#[tokio::test]
async fn insufficient_funds_recovers_on_the_scheduled_retry() {
    let h = harness().await;
    let p = h
        .create(h.body("pm_card_visa_chargeDeclinedInsufficientFunds_recoversAfter2"))
        .await;
    h.advance(Duration::ZERO).await;
    let after_first = h.get(&p.id).await;
    assert_eq!(after_first.status, PaymentStatus::PendingRetry);
    assert_eq!(
        after_first.last_authorization_attempt_error.as_deref(),
        Some("card_declined (insufficient_funds)")
    );
    // Stripe's recommended schedule retries 1 and 3 days after the first attempt.
    h.advance(DAY).await;
    assert_eq!(h.get(&p.id).await.retry_details.attempts, 2);
    h.advance(DAY).await;
    assert_eq!(
        h.get(&p.id).await.status,
        PaymentStatus::PendingRetry,
        "no attempt on day 2"
    );
    h.advance(DAY).await;
    let done = h.get(&p.id).await;
    assert_eq!(done.status, PaymentStatus::Succeeded);
    assert_eq!(done.retry_details.attempts, 3);
    let record = h.engine.record(&p.id).await.unwrap();
    let times: Vec<_> = record.attempts.iter().map(|a| a.started_at).collect();
    assert_eq!(times, [start(), start().plus(DAY), start().plus(3 * DAY)]);
    let keys: Vec<_> = record
        .attempts
        .iter()
        .map(|a| a.idempotency_key.clone())
        .collect();
    assert_eq!(keys, [1, 2, 3].map(|n| format!("{}:attempt:{n}", p.id)));
}

#[tokio::test]
async fn advancing_a_test_clock_runs_exactly_the_attempts_due_in_between() {
    let h = harness().await;
    let p = h
        .create(h.body("pm_card_visa_chargeDeclinedInsufficientFunds"))
        .await;
    h.advance(DAY.mul_f64(4.5)).await; // day 0, 1, 3 are due; day 5 is not
    let record = h.engine.record(&p.id).await.unwrap();
    assert_eq!(record.payment.retry_details.attempts, 3);
    assert_eq!(record.due_at, Some(start().plus(5 * DAY)));
    // Events come in time order.
    let created: Vec<_> = h.events.events().iter().map(|e| e.created).collect();
    assert!(created.windows(2).all(|w| w[0] <= w[1]));
}

#[tokio::test]
async fn soft_declines_stop_with_retries_exhausted_after_the_last_try() {
    let h = harness().await;
    let p = h
        .create(h.body("pm_card_visa_chargeDeclinedInsufficientFunds"))
        .await;
    h.advance(30 * DAY).await;
    let p = h.get(&p.id).await;
    assert_eq!(p.status, PaymentStatus::Failed);
    assert_eq!(p.failure_reason, Some(FailureReason::RetriesExhausted));
    assert_eq!(p.retry_details.attempts, 8, "8 tries in 2 weeks");
    assert_eq!(h.mock.approved_charges_by_payment().get(&p.id), None);
}

#[tokio::test]
async fn hard_declines_fail_at_once_as_rejected_by_partner() {
    let h = harness().await;
    for pm in [
        "pm_card_visa_chargeDeclinedLostCard",
        "pm_card_visa_chargeDeclinedStolenCard",
        "pm_card_mastercard_chargeDeclinedFraudulent",
    ] {
        let p = h.create(h.body(pm)).await;
        h.advance(Duration::ZERO).await;
        let p = h.get(&p.id).await;
        assert_eq!(p.status, PaymentStatus::Failed, "{pm}");
        assert_eq!(
            p.failure_reason,
            Some(FailureReason::RejectedByPartner),
            "{pm}"
        );
        assert_eq!(p.retry_details.attempts, 1, "{pm}");
    }
}

#[tokio::test]
async fn expired_cards_and_authentication_required_fail_as_no_valid_payment_method() {
    let h = harness().await;
    for pm in [
        "pm_card_chargeDeclinedExpiredCard",
        "pm_card_authenticationRequired",
    ] {
        let p = h.create(h.body(pm)).await;
        h.advance(Duration::ZERO).await;
        let p = h.get(&p.id).await;
        assert_eq!(p.status, PaymentStatus::Failed, "{pm}");
        assert_eq!(
            p.failure_reason,
            Some(FailureReason::NoValidPaymentMethod),
            "{pm}"
        );
        assert_eq!(p.retry_details.attempts, 1);
    }
}

#[tokio::test]
async fn retry_strategy_none_fails_after_one_attempt() {
    let h = harness().await;
    let mut body = h.body("pm_card_visa_chargeDeclinedInsufficientFunds_recoversAfter1");
    body["retry_details"] = json!({"retry_strategy": "none"});
    let p = h.create(body).await;
    assert_eq!(p.retry_details.retry_strategy, RetryStrategy::None);
    h.advance(30 * DAY).await;
    let p = h.get(&p.id).await;
    assert_eq!(p.status, PaymentStatus::Failed);
    assert_eq!(p.failure_reason, Some(FailureReason::RetriesExhausted));
    assert_eq!(p.retry_details.attempts, 1);
}

#[tokio::test]
async fn a_retry_past_retry_until_fails_with_exceeded_retry_window() {
    let h = harness().await;
    let mut body = h.body("pm_card_visa_chargeDeclinedInsufficientFunds");
    body["retry_details"] = json!({"retry_until": start().plus(2 * DAY).to_string()});
    let p = h.create(body).await;
    h.advance(10 * DAY).await;
    let p = h.get(&p.id).await;
    assert_eq!(p.status, PaymentStatus::Failed);
    assert_eq!(p.failure_reason, Some(FailureReason::ExceededRetryWindow));
    assert_eq!(
        p.retry_details.attempts, 2,
        "day 0 and day 1; day 3 is past the window"
    );
}

#[tokio::test]
async fn a_named_retry_policy_sets_the_schedule() {
    let weekly = ScheduledPolicy::new(
        "weekly",
        &ScheduledPolicyConfig {
            offsets: vec![
                Duration::from_secs(7 * 86_400),
                Duration::from_secs(14 * 86_400),
            ],
            max_attempts: None,
            window: Duration::from_secs(15 * 86_400),
        },
    )
    .unwrap();
    let events = Arc::new(offsession_core::CollectEvents::new());
    let engine = offsession_orchestrator::Engine::builder()
        .config(EngineConfig {
            default_retry_policy: "weekly".into(),
            ..EngineConfig::default()
        })
        .processor(Arc::new(offsession_mock::MockProcessor::new(
            "mock",
            MockConfig::default(),
        )))
        .retry_policy("weekly", Arc::new(weekly))
        .store(Arc::new(MemoryStore::new()))
        .events(events)
        .build()
        .unwrap();
    let clock = engine.create_test_clock(start()).await.unwrap().id;
    let body = json!({
        "amount": {"value": 2000, "currency": "usd"}, "cadence": "recurring",
        "customer": "cus_1", "payment_method": "pm_card_visa_chargeDeclined",
        "retry_details": {"retry_policy": "weekly"}, "test_clock": clock,
    });
    let p = engine
        .create_json(body.to_string().as_bytes(), None)
        .await
        .unwrap();
    engine
        .advance_test_clock(&clock, start().plus(20 * DAY))
        .await
        .unwrap();
    let record = engine.record(&p.id).await.unwrap();
    let times: Vec<_> = record.attempts.iter().map(|a| a.started_at).collect();
    assert_eq!(
        times,
        [start(), start().plus(7 * DAY), start().plus(14 * DAY)]
    );
    assert_eq!(
        record.payment.failure_reason,
        Some(FailureReason::RetriesExhausted)
    );
}

#[tokio::test]
async fn manual_capture_holds_funds_until_captured() {
    let h = harness().await;
    let mut body = h.body("pm_card_visa");
    body["capture"] = json!({"capture_method": "manual"});
    let p = h.create(body).await;
    h.advance(Duration::ZERO).await;
    let held = h.get(&p.id).await;
    assert_eq!(held.status, PaymentStatus::RequiresCapture);
    assert_eq!(held.amount_capturable.map(|a| a.value), Some(2000));
    let err = h.engine.capture(&p.id, Some(2001)).await.unwrap_err();
    assert_eq!(err.param.as_deref(), Some("amount_to_capture"));
    let captured = h.engine.capture(&p.id, Some(1500)).await.unwrap();
    assert_eq!(captured.status, PaymentStatus::Succeeded);
    assert_eq!(captured.amount_capturable, None);
    let record = h.engine.record(&p.id).await.unwrap();
    let pi = record.authorization.unwrap().payment.unwrap();
    assert_eq!(h.mock.captured(&pi), Some(1500));
    assert_eq!(
        h.events.types_for(&p.id).last(),
        Some(&EventType::Succeeded)
    );
    assert!(h
        .events
        .types_for(&p.id)
        .contains(&EventType::RequiresCapture));
}

#[tokio::test]
async fn an_uncaptured_authorization_expires_as_authorization_expired() {
    let h = harness().await;
    let mut body = h.body("pm_card_visa");
    body["capture"] = json!({"capture_method": "manual"});
    let p = h.create(body).await;
    h.advance(6 * DAY).await;
    assert_eq!(h.get(&p.id).await.status, PaymentStatus::RequiresCapture);
    h.advance(DAY).await;
    let p = h.get(&p.id).await;
    assert_eq!(p.status, PaymentStatus::Failed);
    assert_eq!(p.failure_reason, Some(FailureReason::AuthorizationExpired));
    let err = h.engine.capture(&p.id, None).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::OffSessionPaymentInvalidStatus);
}

#[tokio::test]
async fn capture_before_shortens_the_authorization() {
    let h = harness().await;
    let mut body = h.body("pm_card_visa");
    body["capture"] =
        json!({"capture_method": "manual", "capture_before": start().plus(DAY).to_string()});
    let p = h.create(body).await;
    h.advance(DAY).await;
    assert_eq!(
        h.get(&p.id).await.failure_reason,
        Some(FailureReason::AuthorizationExpired)
    );
}

#[tokio::test]
async fn a_pending_payment_can_be_canceled_and_is_never_attempted() {
    let h = harness().await;
    let p = h.create(h.body("pm_card_visa")).await;
    let canceled = h.engine.cancel(&p.id).await.unwrap();
    assert_eq!(canceled.status, PaymentStatus::Canceled);
    h.advance(DAY).await;
    let p = h.get(&p.id).await;
    assert_eq!(p.status, PaymentStatus::Canceled);
    assert_eq!(p.retry_details.attempts, 0);
    assert!(h.mock.ledger().is_empty());
    assert_eq!(
        h.events.types_for(&p.id),
        [EventType::Created, EventType::Canceled]
    );
}

#[tokio::test]
async fn a_held_authorization_can_be_canceled() {
    let h = harness().await;
    let mut body = h.body("pm_card_visa");
    body["capture"] = json!({"capture_method": "manual"});
    let p = h.create(body).await;
    h.advance(Duration::ZERO).await;
    let p = h.engine.cancel(&p.id).await.unwrap();
    assert_eq!(p.status, PaymentStatus::Canceled);
    assert_eq!(p.amount_capturable, None);
}

#[tokio::test]
async fn terminal_payments_refuse_cancel_pause_resume_and_capture() {
    let h = harness().await;
    let p = h.create(h.body("pm_card_visa")).await;
    h.advance(Duration::ZERO).await;
    for result in [
        h.engine.cancel(&p.id).await,
        h.engine.pause(&p.id).await,
        h.engine.resume(&p.id).await,
        h.engine.capture(&p.id, None).await,
    ] {
        let err = result.unwrap_err();
        assert_eq!(err.code, ErrorCode::OffSessionPaymentInvalidStatus);
        assert!(err.message.contains("succeeded"), "{err}");
    }
    assert_eq!(h.get(&p.id).await.status, PaymentStatus::Succeeded);
}

#[tokio::test]
async fn processing_payments_refuse_manual_operations() {
    let h = harness().await;
    let p = h.create(h.body("pm_card_visa")).await;
    let record = h.store.get(&p.id).await.unwrap().unwrap();
    let mut processing = record.clone();
    processing.payment.status = PaymentStatus::Processing;
    h.store
        .update(&processing, Expected::of(&record))
        .await
        .unwrap();
    for result in [
        h.engine.cancel(&p.id).await,
        h.engine.pause(&p.id).await,
        h.engine.capture(&p.id, None).await,
    ] {
        let err = result.unwrap_err();
        assert_eq!(err.code, ErrorCode::OffSessionPaymentInvalidStatus);
        assert!(err.message.contains("processing"), "{err}");
    }
}

#[tokio::test]
async fn paused_payments_are_not_retried_until_resumed() {
    let h = harness().await;
    let p = h
        .create(h.body("pm_card_visa_chargeDeclinedInsufficientFunds_recoversAfter1"))
        .await;
    h.advance(Duration::ZERO).await;
    let paused = h.engine.pause(&p.id).await.unwrap();
    assert_eq!(paused.status, PaymentStatus::Paused);
    h.advance(5 * DAY).await;
    assert_eq!(
        h.get(&p.id).await.retry_details.attempts,
        1,
        "no attempt while paused"
    );
    let resumed = h.engine.resume(&p.id).await.unwrap();
    assert_eq!(resumed.status, PaymentStatus::PendingRetry);
    h.advance(Duration::ZERO).await;
    let p = h.get(&p.id).await;
    assert_eq!(
        p.status,
        PaymentStatus::Succeeded,
        "the overdue retry runs on resume"
    );
    assert_eq!(p.retry_details.attempts, 2);
    let types = h.events.types_for(&p.id);
    assert!(types.contains(&EventType::Paused) && types.contains(&EventType::Resumed));
}

#[tokio::test]
async fn a_payment_resumed_after_its_retry_until_is_not_retried() {
    let h = harness().await;
    let mut body = h.body("pm_card_visa_chargeDeclinedInsufficientFunds_recoversAfter1");
    body["retry_details"] = json!({"retry_until": start().plus(2 * DAY).to_string()});
    let p = h.create(body).await;
    h.advance(Duration::ZERO).await;
    h.engine.pause(&p.id).await.unwrap();
    h.advance(5 * DAY).await;
    h.engine.resume(&p.id).await.unwrap();
    h.advance(Duration::ZERO).await;
    let p = h.get(&p.id).await;
    assert_eq!(p.status, PaymentStatus::Failed);
    assert_eq!(p.failure_reason, Some(FailureReason::ExceededRetryWindow));
    assert_eq!(p.retry_details.attempts, 1, "no attempt after retry_until");
}

#[tokio::test]
async fn a_target_date_after_a_deadline_is_refused() {
    let h = harness().await;
    for (field, deadline) in [
        (
            "retry_details",
            json!({"retry_until": start().plus(DAY).to_string()}),
        ),
        (
            "capture",
            json!({"capture_method": "manual", "capture_before": start().plus(DAY).to_string()}),
        ),
    ] {
        let mut body = h.body("pm_card_visa");
        body[field] = deadline;
        body["target_date"] = json!("2026-01-08");
        let err = h.create_err(body).await;
        assert_eq!(
            err.param.as_deref(),
            Some("target_date"),
            "{field}: {err:?}"
        );
        assert!(err.message.contains(field), "{}", err.message);
    }
}

#[tokio::test]
async fn a_payment_paused_before_its_first_attempt_resumes_as_pending() {
    let h = harness().await;
    let p = h.create(h.body("pm_card_visa")).await;
    h.engine.pause(&p.id).await.unwrap();
    assert_eq!(
        h.engine.resume(&p.id).await.unwrap().status,
        PaymentStatus::Pending
    );
}

#[tokio::test]
async fn target_date_defers_the_first_attempt() {
    let h = harness().await;
    let mut body = h.body("pm_card_visa");
    body["target_date"] = json!("2026-01-08");
    let p = h.create(body).await;
    h.advance(2 * DAY).await;
    assert_eq!(h.get(&p.id).await.status, PaymentStatus::Pending);
    h.advance(DAY).await;
    assert_eq!(h.get(&p.id).await.status, PaymentStatus::Succeeded);
}

#[tokio::test]
async fn test_clock_payments_do_not_move_on_the_engine_clock() {
    let h = harness().await;
    let p = h.create(h.body("pm_card_visa")).await;
    h.engine.run_due().await.unwrap();
    assert_eq!(h.get(&p.id).await.status, PaymentStatus::Pending);
    assert!(h.engine.next_due().await.unwrap().is_none());
}

#[tokio::test]
async fn a_test_clock_cannot_go_backwards() {
    let h = harness().await;
    h.advance(DAY).await;
    let err = h
        .engine
        .advance_test_clock(&h.clock, start())
        .await
        .unwrap_err();
    assert_eq!(err.param.as_deref(), Some("frozen_time"));
}

#[tokio::test]
async fn an_unknown_test_clock_is_refused() {
    let h = harness().await;
    let mut body = h.body("pm_card_visa");
    body["test_clock"] = json!("clock_nope");
    let err = h.create_err(body).await;
    assert_eq!(err.param.as_deref(), Some("test_clock"));
}

#[tokio::test]
async fn list_returns_newest_first() {
    let h = harness().await;
    let a = h.create(h.body("pm_card_visa")).await;
    let b = h.create(h.body("pm_card_visa")).await;
    let listed: Vec<_> = h
        .engine
        .list(10, None)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(listed, [b.id, a.id]);
    let err = h.engine.retrieve("osp_missing").await.unwrap_err();
    assert_eq!(err.code, ErrorCode::ResourceMissing);
}

#[tokio::test]
async fn the_same_idempotency_key_and_body_return_the_original_payment() {
    let h = harness().await;
    let body = h.body("pm_card_visa").to_string();
    let first = h
        .engine
        .create_json(body.as_bytes(), Some("key-1"))
        .await
        .unwrap();
    let again = h
        .engine
        .create_json(body.as_bytes(), Some("key-1"))
        .await
        .unwrap();
    assert_eq!(first.id, again.id);
    assert_eq!(h.engine.list(10, None).await.unwrap().len(), 1);
    let mut other = h.body("pm_card_visa");
    other["amount"]["value"] = json!(3000);
    let err = h
        .engine
        .create_json(other.to_string().as_bytes(), Some("key-1"))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::IdempotencyError);
}

/// A retry with a registered key gets its payment even when the request would no
/// longer pass validation (here `retry_until` has since passed): a 400 would tell the
/// client nothing was made, and it would create again under a new key.
#[tokio::test]
async fn a_registered_key_answers_before_validation() {
    let h = harness().await;
    let mut body = h.body("pm_card_visa_chargeDeclined");
    body["retry_details"] = json!({"retry_until": start().plus(2 * DAY).to_string()});
    let text = body.to_string();
    let first = h
        .engine
        .create_json(text.as_bytes(), Some("key-late"))
        .await
        .unwrap();
    h.advance(3 * DAY).await;
    // Without the key the same request is refused now.
    let err = h
        .engine
        .create_json(text.as_bytes(), None)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::OspGenericInvalidRequest, "{err:?}");
    let again = h
        .engine
        .create_json(text.as_bytes(), Some("key-late"))
        .await
        .unwrap();
    assert_eq!(again.id, first.id);
    // Another request under the key is an idempotency error, not a validation error.
    let mut other = body.clone();
    other["amount"]["value"] = json!(3000);
    let err = h
        .engine
        .create_json(other.to_string().as_bytes(), Some("key-late"))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::IdempotencyError);
    assert_eq!(h.engine.list(10, None).await.unwrap().len(), 1);
}

/// Two instances on one store see one test clock: an advance made on one is what the
/// other reads next, and the other's next advance starts from there.
#[tokio::test]
async fn a_test_clock_advanced_on_one_instance_is_seen_by_another() {
    let h = harness().await;
    let other = offsession_orchestrator::Engine::builder()
        .config(EngineConfig {
            instance_id: "other".into(),
            ..EngineConfig::default()
        })
        .processor(h.mock.clone())
        .store(h.store.clone())
        .events(Arc::new(offsession_core::CollectEvents::new()))
        .build()
        .unwrap();
    // The other instance has read the clock once (and kept it).
    let seen = other.retrieve_test_clock(&h.clock).await.unwrap();
    assert_eq!(seen.frozen_time, start());
    h.advance(DAY).await;
    let seen = other.retrieve_test_clock(&h.clock).await.unwrap();
    assert_eq!(seen.frozen_time, start().plus(DAY));
    // An advance made on the other instance goes on from there, and the first sees it.
    let moved = other
        .advance_test_clock(&h.clock, start().plus(2 * DAY))
        .await
        .unwrap();
    assert_eq!(moved.frozen_time, start().plus(2 * DAY));
    assert_eq!(h.now().await, start().plus(2 * DAY));
    // An instance that never read the clock (just started) cancels a payment on it at
    // the clock's time, not its own.
    let p = h.create(h.body("pm_card_visa")).await;
    let events = Arc::new(offsession_core::CollectEvents::new());
    let fresh = offsession_orchestrator::Engine::builder()
        .config(EngineConfig {
            instance_id: "fresh".into(),
            ..EngineConfig::default()
        })
        .processor(h.mock.clone())
        .store(h.store.clone())
        .events(events.clone())
        .build()
        .unwrap();
    fresh.cancel(&p.id).await.unwrap();
    let canceled = events
        .events()
        .into_iter()
        .find(|e| e.event_type == offsession_core::EventType::Canceled)
        .unwrap();
    assert_eq!(canceled.created, start().plus(2 * DAY));
}

/// Another engine on the harness's store and processor, its own clock `wall`.
fn on_wall_clock(
    h: &Harness,
    wall: &Arc<offsession_core::ManualClock>,
    config: EngineConfig,
) -> offsession_orchestrator::Engine {
    offsession_orchestrator::Engine::builder()
        .config(config)
        .processor(h.mock.clone())
        .store(h.store.clone())
        .clock(wall.clone())
        .events(Arc::new(offsession_core::CollectEvents::new()))
        .build()
        .unwrap()
}

/// One advance of a test clock at a time across instances sharing a store: a second
/// instance is refused while the first holds the claim, sees the clock `advancing`,
/// may claim it once released, and takes over a claim its holder stopped renewing.
#[tokio::test]
async fn one_instance_at_a_time_advances_a_test_clock() {
    let h = harness().await;
    let wall = Arc::new(offsession_core::ManualClock::new(start()));
    let instance = |name: &str| {
        on_wall_clock(
            &h,
            &wall,
            EngineConfig {
                instance_id: name.into(),
                ..EngineConfig::default()
            },
        )
    };
    let (a, b) = (instance("a"), instance("b"));
    assert!(!b.test_clock_advancing(&h.clock).await.unwrap());
    let held = a.claim_test_clock_advance(&h.clock).await.unwrap().unwrap();
    // Held by `a`: `b` may not advance it, nor may `a` start a second advance.
    assert!(b.test_clock_advancing(&h.clock).await.unwrap());
    assert!(b
        .claim_test_clock_advance(&h.clock)
        .await
        .unwrap()
        .is_none());
    assert!(a
        .claim_test_clock_advance(&h.clock)
        .await
        .unwrap()
        .is_none());
    // Only the holder can renew or end the claim: not `b`, not another advance on `a`.
    for (engine, holder) in [(&b, "b/x"), (&a, "a/another_advance")] {
        engine
            .release_test_clock_advance(&h.clock, holder)
            .await
            .unwrap();
        assert!(!engine
            .renew_test_clock_advance(&h.clock, holder)
            .await
            .unwrap());
    }
    assert!(b
        .claim_test_clock_advance(&h.clock)
        .await
        .unwrap()
        .is_none());
    assert!(a.renew_test_clock_advance(&h.clock, &held).await.unwrap());
    a.advance_test_clock(&h.clock, start().plus(DAY))
        .await
        .unwrap();
    a.release_test_clock_advance(&h.clock, &held).await.unwrap();
    assert!(!b.test_clock_advancing(&h.clock).await.unwrap());
    assert!(!a.renew_test_clock_advance(&h.clock, &held).await.unwrap());
    let b_held = b.claim_test_clock_advance(&h.clock).await.unwrap().unwrap();
    // `b` stops without releasing: its claim lapses a minute later and `a` takes over.
    wall.advance(std::time::Duration::from_secs(59));
    assert!(a
        .claim_test_clock_advance(&h.clock)
        .await
        .unwrap()
        .is_none());
    wall.advance(std::time::Duration::from_secs(2));
    assert!(!a.test_clock_advancing(&h.clock).await.unwrap());
    assert!(a
        .claim_test_clock_advance(&h.clock)
        .await
        .unwrap()
        .is_some());
    assert!(b.test_clock_advancing(&h.clock).await.unwrap());
    // `b`, back, finds its claim gone and must stop.
    assert!(!b.renew_test_clock_advance(&h.clock, &b_held).await.unwrap());
    // A clock is never saved back in time, whichever instance saves last.
    b.advance_test_clock(&h.clock, start().plus(3 * DAY))
        .await
        .unwrap();
    let late = a
        .advance_test_clock(&h.clock, start().plus(2 * DAY))
        .await
        .unwrap_err();
    assert!(late.message.contains("must not be before"), "{late:?}");
    assert_eq!(
        a.retrieve_test_clock(&h.clock).await.unwrap().frozen_time,
        start().plus(3 * DAY)
    );
}

/// A manual operation under an idempotency key is applied once: run again under the
/// key (its answer was lost), it answers the payment as it is now, even after another
/// operation moved it on; another key, or the same key past the keys' lifetime, runs.
#[tokio::test]
async fn a_keyed_operation_is_applied_once() {
    let wall = Arc::new(offsession_core::ManualClock::new(start()));
    let h = harness().await;
    let engine = on_wall_clock(
        &h,
        &wall,
        EngineConfig {
            idempotency_ttl: Duration::from_secs(86_400),
            ..EngineConfig::default()
        },
    );
    let p = h.create(h.body("pm_card_visa")).await;
    let paused = engine.pause_keyed(&p.id, Some("k-pause")).await.unwrap();
    assert_eq!(paused.status, PaymentStatus::Paused);
    let resumed = engine.resume(&p.id).await.unwrap();
    assert_eq!(resumed.status, PaymentStatus::Pending);
    // The pause run again: not paused a second time.
    let again = engine.pause_keyed(&p.id, Some("k-pause")).await.unwrap();
    assert_eq!(again.status, PaymentStatus::Pending);
    assert_eq!(h.get(&p.id).await.status, PaymentStatus::Pending);
    // Another key pauses; a cancel under a key answers the canceled payment again.
    let other = engine.pause_keyed(&p.id, Some("k-other")).await.unwrap();
    assert_eq!(other.status, PaymentStatus::Paused);
    engine.cancel_keyed(&p.id, Some("k-cancel")).await.unwrap();
    let again = engine.cancel_keyed(&p.id, Some("k-cancel")).await.unwrap();
    assert_eq!(again.status, PaymentStatus::Canceled);
    let refused = engine.cancel_keyed(&p.id, Some("k-new")).await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::OffSessionPaymentInvalidStatus);
    // Past the keys' lifetime the record's entry no longer counts.
    let q = h.create(h.body("pm_card_visa")).await;
    engine.pause_keyed(&q.id, Some("k-old")).await.unwrap();
    engine.resume(&q.id).await.unwrap();
    wall.advance(Duration::from_secs(86_400 + 1));
    let late = engine.pause_keyed(&q.id, Some("k-old")).await.unwrap();
    assert_eq!(late.status, PaymentStatus::Paused);
}

#[tokio::test]
async fn attempts_only_grow_and_each_has_its_own_key() {
    let h = harness().await;
    let p = h.create(h.body("pm_card_visa_chargeDeclined")).await;
    let mut last = 0;
    for _ in 0..20 {
        h.advance(DAY).await;
        let now = h.get(&p.id).await.retry_details.attempts;
        assert!(now >= last);
        last = now;
    }
    let record = h.engine.record(&p.id).await.unwrap();
    let mut keys: Vec<_> = record.attempts.iter().map(|a| &a.idempotency_key).collect();
    keys.dedup();
    assert_eq!(keys.len(), record.attempts.len());
    assert!(record
        .attempts
        .iter()
        .all(|a| matches!(a.outcome, Some(AttemptOutcome::Declined { .. }))));
}

#[tokio::test]
async fn the_memory_store_is_shared_by_clones_of_the_engine() {
    let h = harness().await;
    let clone = h.engine.clone();
    let p = h.create(h.body("pm_card_visa")).await;
    assert_eq!(clone.retrieve(&p.id).await.unwrap().id, p.id);
    assert!(h.store.get(&p.id).await.unwrap().is_some());
    assert_eq!(clone.record(&p.id).await.unwrap().payment.id, p.id);
}

/// Beats of instances long stopped, or long silent, are removed by a live instance's
/// heartbeat (ids are new at every start, so each restart left one for good); recent
/// ones, alive or stopped, stay for `offsession worker status`.
#[tokio::test]
async fn a_heartbeat_removes_beats_older_than_the_retention() {
    use offsession_orchestrator::{BEAT_RETENTION, INSTANCE_PREFIX};
    let h = harness().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let old = now - BEAT_RETENTION.as_millis() as i64 - 60_000;
    let recent = now - 3_600_000;
    let beats = [
        ("silent-long-ago", old.to_string()),
        ("stopped-long-ago", format!("stopped:{old}")),
        ("stopped-by-an-earlier-release", "stopped".to_owned()),
        ("silent-an-hour-ago", recent.to_string()),
        ("stopped-an-hour-ago", format!("stopped:{recent}")),
        ("alive", now.to_string()),
    ];
    for (id, value) in &beats {
        h.store
            .save_state(&format!("{INSTANCE_PREFIX}{id}"), value)
            .await
            .unwrap();
    }
    let alive = h.engine.heartbeat(Duration::from_secs(60)).await.unwrap();
    assert_eq!(alive, 2, "this instance and `alive`");
    let mut kept: Vec<String> = h
        .store
        .list_state(INSTANCE_PREFIX)
        .await
        .unwrap()
        .into_iter()
        .map(|(key, _)| key[INSTANCE_PREFIX.len()..].to_owned())
        .collect();
    kept.sort();
    let mut expected = vec![
        "alive".to_owned(),
        "silent-an-hour-ago".to_owned(),
        "stopped-an-hour-ago".to_owned(),
        h.engine
            .instances_alive()
            .into_iter()
            .find(|id| id != "alive")
            .unwrap(),
    ];
    expected.sort();
    assert_eq!(kept, expected);
    // A stopping instance leaves its time, so that its beat ages out too.
    h.engine.leave().await.unwrap();
    let me = h
        .engine
        .instances_alive()
        .into_iter()
        .find(|id| id != "alive")
        .unwrap();
    let value = h
        .store
        .load_state(&format!("{INSTANCE_PREFIX}{me}"))
        .await
        .unwrap()
        .unwrap();
    assert!(value.starts_with("stopped:"), "{value}");
}
