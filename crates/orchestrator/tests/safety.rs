//! The engine never charges a payment twice: one idempotency key per attempt, the
//! attempt written before the processor is called, unknown outcomes replayed with
//! the same key before anything else.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use offsession_core::{
    ApiError, AttemptOutcome, AuthorizeRequest, CancelRequest, Capabilities, CaptureRequest,
    OffSessionPayment, PaymentMethodDetails, PaymentStatus, Processor, ProcessorError, Store,
};
use offsession_mock::{MockConfig, MockProcessor};
use offsession_orchestrator::EngineConfig;
use offsession_retry::{ScheduledPolicy, ScheduledPolicyConfig};
use offsession_store::MemoryStore;
use serde_json::json;

/// Sends every request on to the mock, then drops the answer of the first `lose` sends:
/// the charge happened, the engine did not hear of it.
#[derive(Debug)]
struct LosesAnswers {
    mock: Arc<MockProcessor>,
    lose: AtomicU32,
}

#[async_trait]
impl Processor for LosesAnswers {
    fn id(&self) -> &str {
        self.mock.id()
    }
    fn capabilities(&self) -> &Capabilities {
        self.mock.capabilities()
    }
    async fn preflight(
        &self,
        payment: &OffSessionPayment,
    ) -> Result<PaymentMethodDetails, ApiError> {
        self.mock.preflight(payment).await
    }
    async fn authorize(&self, request: AuthorizeRequest<'_>) -> AttemptOutcome {
        let outcome = self.mock.authorize(request).await;
        if self
            .lose
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return AttemptOutcome::Unknown {
                message: "connection reset".into(),
            };
        }
        outcome
    }
    async fn capture(&self, request: CaptureRequest<'_>) -> Result<(), ProcessorError> {
        self.mock.capture(request).await
    }
    async fn cancel(&self, request: CancelRequest<'_>) -> Result<(), ProcessorError> {
        self.mock.cancel(request).await
    }
}

#[tokio::test]
async fn a_lost_answer_is_reconciled_with_the_same_key_and_charges_once() {
    let mock = Arc::new(MockProcessor::new("mock", MockConfig::default()));
    let lossy = Arc::new(LosesAnswers {
        mock: mock.clone(),
        lose: AtomicU32::new(2),
    });
    let h = harness_with_processor(mock.clone(), lossy, EngineConfig::default()).await;
    let p = h.create(h.body("pm_card_visa")).await;
    h.advance(Duration::ZERO).await;
    let waiting = h.engine.record(&p.id).await.unwrap();
    // While the outcome is unknown the payment stays `processing` (money may have
    // moved), and manual operations are refused.
    assert_eq!(waiting.payment.status, PaymentStatus::Processing);
    assert!(waiting.replay_pending);
    assert!(waiting.attempts[0].outcome_unknown);
    let refused = h.engine.cancel(&p.id).await.unwrap_err();
    assert_eq!(refused.code.as_str(), "off_session_payment_invalid_status");
    assert!(
        refused.message.contains("processing"),
        "{}",
        refused.message
    );
    assert!(h.engine.pause(&p.id).await.is_err());
    assert_eq!(
        waiting.payment.retry_details.attempts, 1,
        "a replay is not a new attempt"
    );
    h.advance(DAY).await;
    let done = h.engine.record(&p.id).await.unwrap();
    assert_eq!(done.payment.status, PaymentStatus::Succeeded);
    assert_eq!(done.payment.retry_details.attempts, 1);
    assert_eq!(done.attempts.len(), 1);
    assert_eq!(done.attempts[0].replays, 2);
    // The answer settled the lost one: the card's history sees an approval (not an
    // unanswered attempt the decline caps would count).
    assert!(!done.attempts[0].outcome_unknown);
    assert!(done.attempts[0].answered());
    let ledger = mock.ledger();
    assert_eq!(ledger.len(), 1, "one key");
    assert_eq!(ledger[0].sends, 3, "sent three times with the same key");
    assert_eq!(mock.approved_charges_by_payment()[&p.id], 1, "charged once");
}

/// Checks, at the moment the processor is called, that the attempt is already stored.
#[derive(Debug)]
struct ChecksWriteAhead {
    mock: Arc<MockProcessor>,
    store: Arc<MemoryStore>,
    checked: AtomicU32,
}

#[async_trait]
impl Processor for ChecksWriteAhead {
    fn id(&self) -> &str {
        self.mock.id()
    }
    fn capabilities(&self) -> &Capabilities {
        self.mock.capabilities()
    }
    async fn preflight(
        &self,
        payment: &OffSessionPayment,
    ) -> Result<PaymentMethodDetails, ApiError> {
        self.mock.preflight(payment).await
    }
    async fn authorize(&self, request: AuthorizeRequest<'_>) -> AttemptOutcome {
        let stored = self.store.get(&request.payment.id).await.unwrap().unwrap();
        assert_eq!(stored.payment.status, PaymentStatus::Processing);
        let last = stored
            .attempts
            .last()
            .expect("attempt stored before the call");
        assert_eq!(last.idempotency_key, request.idempotency_key);
        assert_eq!(last.number, request.attempt_number);
        assert_eq!(
            stored.payment.retry_details.attempts,
            request.attempt_number
        );
        self.checked.fetch_add(1, Ordering::SeqCst);
        self.mock.authorize(request).await
    }
    async fn capture(&self, request: CaptureRequest<'_>) -> Result<(), ProcessorError> {
        self.mock.capture(request).await
    }
    async fn cancel(&self, request: CancelRequest<'_>) -> Result<(), ProcessorError> {
        self.mock.cancel(request).await
    }
}

#[tokio::test]
async fn the_attempt_is_stored_before_the_processor_is_called() {
    let mock = Arc::new(MockProcessor::new("mock", MockConfig::default()));
    let store = Arc::new(MemoryStore::new());
    let checker = Arc::new(ChecksWriteAhead {
        mock,
        store: store.clone(),
        checked: AtomicU32::new(0),
    });
    let engine = offsession_orchestrator::Engine::builder()
        .processor(checker.clone())
        .store(store)
        .build()
        .unwrap();
    let clock = engine.create_test_clock(start()).await.unwrap().id;
    let body = json!({
        "amount": {"value": 2000, "currency": "usd"}, "cadence": "recurring",
        "customer": "cus_1", "payment_method": "pm_card_visa_chargeDeclined_recoversAfter2",
        "test_clock": clock,
    });
    let p = engine
        .create_json(body.to_string().as_bytes(), None)
        .await
        .unwrap();
    engine
        .advance_test_clock(&clock, start().plus(10 * DAY))
        .await
        .unwrap();
    assert_eq!(
        engine.retrieve(&p.id).await.unwrap().status,
        PaymentStatus::Succeeded
    );
    assert_eq!(checker.checked.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_crash_mid_attempt_is_replayed_with_the_same_key_after_the_lease() {
    let h = harness().await;
    let p = h.create(h.body("pm_card_visa")).await;
    // Simulate an instance that wrote the attempt and died before the answer: the
    // record is `processing` with a lease that lapses in 5 minutes.
    let store = h.store.clone();
    let claimed = store
        .claim_due(
            &offsession_core::ClockScope::TestClock(h.clock.clone()),
            start(),
            1,
            &offsession_core::Lease {
                owner: "dead-instance".into(),
                until: start().plus(Duration::from_secs(300)),
            },
        )
        .await
        .unwrap()
        .remove(0);
    let mut written = claimed.clone();
    written.payment.status = PaymentStatus::Processing;
    written.payment.retry_details.attempts = 1;
    written.first_attempt_at = Some(start());
    written
        .attempts
        .push(offsession_core::AttemptRecord::started(
            "ospattempt_dead".into(),
            &p.id,
            1,
            "mock",
            start(),
        ));
    store
        .update(&written, offsession_core::Expected::of(&claimed))
        .await
        .unwrap();
    // The dead instance's charge reached the processor.
    let sent = AuthorizeRequest {
        payment: &written.payment,
        attempt_number: 1,
        idempotency_key: &written.attempts[0].idempotency_key,
    };
    h.mock.authorize(sent).await;

    h.advance(Duration::from_secs(299)).await;
    assert_eq!(
        h.get(&p.id).await.status,
        PaymentStatus::Processing,
        "lease still held"
    );
    h.advance(Duration::from_secs(1)).await;
    let done = h.engine.record(&p.id).await.unwrap();
    assert_eq!(done.payment.status, PaymentStatus::Succeeded);
    assert_eq!(done.payment.retry_details.attempts, 1);
    assert_eq!(h.mock.ledger()[0].sends, 2);
    assert_eq!(h.mock.approved_charges_by_payment()[&p.id], 1);
}

#[tokio::test]
async fn processor_faults_replay_without_spending_retry_budget() {
    let config = MockConfig {
        fault_rate: 1.0,
        ..MockConfig::default()
    };
    let h = harness_with(config, EngineConfig::default()).await;
    let p = h.create(h.body("pm_card_visa")).await;
    h.advance(Duration::ZERO).await;
    let r = h.engine.record(&p.id).await.unwrap();
    assert_eq!(r.payment.retry_details.attempts, 1);
    assert!(r.replay_pending);
    // Replays at +1 min, +5 min, +30 min, +2 h; then the fault counts as a transient
    // decline and the policy schedules attempt 2 (day 1).
    h.advance(Duration::from_secs(3 * 3_600)).await;
    let r = h.engine.record(&p.id).await.unwrap();
    assert_eq!(r.attempts[0].replays, 4);
    assert_eq!(r.payment.status, PaymentStatus::PendingRetry);
    assert!(!r.replay_pending);
    assert_eq!(r.due_at, Some(start().plus(DAY)));
    assert_eq!(
        r.payment.last_authorization_attempt_error.as_deref(),
        Some("processor_unavailable (processing_error)")
    );
    assert!(h.mock.approved_charges_by_payment().is_empty());
}

/// An aggressive schedule (a retry every few minutes, 12 tries), a processor that
/// fails a third of sends and loses the answer of a third of the charges it makes,
/// and a population of recovering and failing cards. Every payment is charged at
/// most once, succeeded ones exactly once, and failed ones never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggressive_retries_over_a_flaky_processor_never_charge_twice() {
    let aggressive = ScheduledPolicy::new(
        "aggressive",
        &ScheduledPolicyConfig {
            offsets: (1..=11).map(|m| Duration::from_secs(m * 300)).collect(),
            max_attempts: None,
            window: Duration::from_secs(86_400),
        },
    )
    .unwrap();
    let mock = Arc::new(MockProcessor::new(
        "mock",
        MockConfig {
            seed: 7,
            fault_rate: 0.33,
            unknown_rate: 0.33,
            ..MockConfig::default()
        },
    ));
    let events = Arc::new(offsession_core::CollectEvents::new());
    let engine = offsession_orchestrator::Engine::builder()
        .config(EngineConfig {
            default_retry_policy: "aggressive".into(),
            replay_backoff: vec![Duration::from_secs(30), Duration::from_secs(60)],
            concurrency: 32,
            claim_batch: 64,
            ..EngineConfig::default()
        })
        .processor(mock.clone())
        .retry_policy("aggressive", Arc::new(aggressive))
        .store(Arc::new(MemoryStore::new()))
        .events(events)
        .build()
        .unwrap();
    let clock = engine.create_test_clock(start()).await.unwrap().id;
    let methods = [
        "pm_card_visa",
        "pm_card_visa_chargeDeclinedInsufficientFunds_recoversAfter3",
        "pm_card_visa_chargeDeclined_recoversAfter7",
        "pm_card_mastercard_chargeDeclinedInsufficientFunds_recoversAfter1",
        "pm_card_chargeDeclinedProcessingError_recoversAfter2",
        "pm_card_visa_chargeDeclinedInsufficientFunds",
        "pm_card_visa_chargeDeclinedLostCard",
    ];
    let mut ids = Vec::new();
    for i in 0..700 {
        let body = json!({
            "amount": {"value": 1000 + i, "currency": "usd"}, "cadence": "recurring",
            "customer": format!("cus_{i}"), "payment_method": format!("{}__{i}", methods[i % methods.len()]),
            "test_clock": clock,
        });
        ids.push(
            engine
                .create_json(body.to_string().as_bytes(), None)
                .await
                .unwrap()
                .id,
        );
    }
    engine
        .advance_test_clock(&clock, start().plus(2 * DAY))
        .await
        .unwrap();

    let charges = mock.approved_charges_by_payment();
    let mut succeeded = 0;
    for id in &ids {
        let record = engine.record(id).await.unwrap();
        let charged = charges.get(id).copied().unwrap_or(0);
        match record.payment.status {
            PaymentStatus::Succeeded => {
                succeeded += 1;
                assert_eq!(
                    charged, 1,
                    "{id} succeeded and must be charged exactly once"
                );
            }
            PaymentStatus::Failed => assert_eq!(charged, 0, "{id} failed and must not be charged"),
            other => panic!("{id} did not finish: {other}"),
        }
        assert!(charged <= 1, "{id} charged {charged} times");
    }
    assert!(
        mock.ledger().iter().any(|e| e.sends > 1),
        "the run must replay keys"
    );
    assert!(
        succeeded >= 400,
        "recovering cards must succeed: {succeeded}"
    );
}
