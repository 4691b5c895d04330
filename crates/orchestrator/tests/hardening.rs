//! Defects an independent review found in the engine, each pinned by a test that
//! failed on the code it was found in: unique ids, expired captures, bounded
//! replays, one event group per status change, leases kept while an attempt is in
//! flight, the API object's fields, a bounded card history.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use offsession_core::{
    ApiError, AttemptOutcome, AuthorizeRequest, CancelRequest, Capabilities, CaptureRequest,
    CollectEvents, EventType, FailureReason, OffSessionPayment, PaymentMethodDetails,
    PaymentStatus, Processor, ProcessorError, SystemClock,
};
use offsession_core::{ClockScope, Expected, Lease, PaymentRecord, Store, StoreError, Timestamp};
use offsession_mock::{LatencyModel, MockConfig, MockProcessor};
use offsession_orchestrator::{Engine, EngineConfig};
use offsession_store::MemoryStore;
use serde_json::json;

/// The mock with some of its answers replaced, counting the authorizations sent.
#[derive(Debug)]
struct Altered {
    mock: Arc<MockProcessor>,
    /// Every authorization's answer (`None`: the mock's).
    answer: Option<AttemptOutcome>,
    /// Captures fail, as in an outage.
    capture_fails: bool,
    /// Captures are made, then answer an error (an answer lost, or stored under the
    /// key after execution started).
    capture_then_fails: bool,
    /// Keys that answer an error without capturing, every time (as Stripe answers a
    /// key's stored error to every retry of it).
    refused_capture_keys: std::sync::Mutex<Vec<String>>,
    /// The keys captures were sent under.
    capture_keys: std::sync::Mutex<Vec<String>>,
    /// Releases and state reads fail, as in an outage.
    unreachable: bool,
    /// `Processor::idempotency_window`.
    window: Option<Duration>,
    /// A capture waits for this before it is made.
    capture_gate: Option<Arc<tokio::sync::Notify>>,
    /// A release (cancel) waits for this before it is made.
    cancel_gate: Option<Arc<tokio::sync::Notify>>,
    /// `Processor::find_authorization`'s answer.
    found: Option<AttemptOutcome>,
    /// The first this many authorizations answer a processor fault (nothing sent on).
    faults_first: AtomicU32,
    /// Authorizations read as released at the processor (expired there), whose
    /// cancel is refused, as Stripe refuses to cancel a canceled PaymentIntent.
    released_already: bool,
    sends: AtomicU32,
}

impl Altered {
    fn new(mock: Arc<MockProcessor>) -> Altered {
        Altered {
            mock,
            answer: None,
            capture_fails: false,
            capture_then_fails: false,
            refused_capture_keys: std::sync::Mutex::new(Vec::new()),
            capture_keys: std::sync::Mutex::new(Vec::new()),
            unreachable: false,
            window: None,
            capture_gate: None,
            cancel_gate: None,
            found: None,
            faults_first: AtomicU32::new(0),
            released_already: false,
            sends: AtomicU32::new(0),
        }
    }

    fn outage(&self, operation: &'static str) -> ProcessorError {
        ProcessorError {
            processor: "mock".into(),
            operation,
            message: "no answer".into(),
        }
    }
}

#[async_trait]
impl Processor for Altered {
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
        self.sends.fetch_add(1, Ordering::SeqCst);
        if self
            .faults_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return AttemptOutcome::fault(offsession_core::FaultKind::Unavailable, "503");
        }
        match &self.answer {
            Some(answer) => answer.clone(),
            None => self.mock.authorize(request).await,
        }
    }
    async fn capture(&self, request: CaptureRequest<'_>) -> Result<(), ProcessorError> {
        if self.capture_fails {
            return Err(self.outage("capture"));
        }
        if let Some(gate) = &self.capture_gate {
            gate.notified().await;
        }
        self.capture_keys
            .lock()
            .unwrap()
            .push(request.idempotency_key.to_owned());
        if self
            .refused_capture_keys
            .lock()
            .unwrap()
            .iter()
            .any(|k| k == request.idempotency_key)
        {
            return Err(self.outage("capture"));
        }
        let captured = self.mock.capture(request).await;
        if self.capture_then_fails && captured.is_ok() {
            return Err(self.outage("capture"));
        }
        captured
    }
    async fn cancel(&self, request: CancelRequest<'_>) -> Result<(), ProcessorError> {
        if let Some(gate) = &self.cancel_gate {
            gate.notified().await;
        }
        if self.unreachable || self.released_already {
            return Err(self.outage("cancel"));
        }
        self.mock.cancel(request).await
    }
    fn idempotency_window(&self) -> Option<Duration> {
        self.window
    }
    async fn authorization_state(
        &self,
        reference: &offsession_core::ProcessorReference,
    ) -> Result<Option<offsession_core::AuthorizationState>, ProcessorError> {
        if self.unreachable {
            return Err(self.outage("retrieve"));
        }
        if self.released_already {
            return Ok(Some(offsession_core::AuthorizationState::Released));
        }
        self.mock.authorization_state(reference).await
    }
    async fn find_authorization(
        &self,
        _request: AuthorizeRequest<'_>,
        _since: Timestamp,
    ) -> Result<Option<AttemptOutcome>, ProcessorError> {
        Ok(self.found.clone())
    }
}

/// An engine on a processor altered by `alter` from the plain mock.
async fn altered(alter: Altered, config: EngineConfig) -> (Harness, Arc<Altered>) {
    let mock = alter.mock.clone();
    let processor = Arc::new(alter);
    (
        harness_with_processor(mock, processor.clone(), config).await,
        processor,
    )
}

fn mock() -> Arc<MockProcessor> {
    Arc::new(MockProcessor::new("mock", MockConfig::default()))
}

async fn faulting(answer: AttemptOutcome, config: EngineConfig) -> (Harness, Arc<Altered>) {
    let alter = Altered {
        answer: Some(answer),
        ..Altered::new(mock())
    };
    altered(alter, config).await
}

/// The payment failed `retries_exhausted` with its one attempt's outcome unknown:
/// no second attempt under a new key.
fn assert_ended_unknown(done: &offsession_orchestrator::PaymentView) {
    assert_eq!(done.payment.status, PaymentStatus::Failed);
    assert_eq!(
        done.payment.failure_reason,
        Some(FailureReason::RetriesExhausted)
    );
    assert_eq!(
        done.attempts.len(),
        1,
        "no new key after an unknown outcome"
    );
}

/// Engine settings with a small replay bound.
fn five_replays() -> EngineConfig {
    EngineConfig {
        max_replays: 5,
        ..EngineConfig::default()
    }
}

/// Creates one card payment and lets `days` pass.
async fn one_payment_after(h: &Harness, days: u32) -> offsession_orchestrator::PaymentView {
    let p = h.create(h.body("pm_card_visa")).await;
    for _ in 0..days {
        h.advance(DAY).await;
    }
    h.engine.record(&p.id).await.unwrap()
}

// Item 1: ids (and so attempt idempotency keys) never repeat across engines that
// were started with the same configuration.
#[tokio::test]
async fn two_engines_with_the_default_configuration_never_share_an_id() {
    let a = harness().await;
    let b = harness().await;
    let pa = a.create(a.body("pm_card_visa")).await;
    let pb = b.create(b.body("pm_card_visa")).await;
    assert_ne!(pa.id, pb.id);
    assert!(pa.id.starts_with("osp_test_"), "{}", pa.id);
    a.advance(Duration::ZERO).await;
    b.advance(Duration::ZERO).await;
    let ka = a.engine.record(&pa.id).await.unwrap().attempts[0]
        .idempotency_key
        .clone();
    let kb = b.engine.record(&pb.id).await.unwrap().attempts[0]
        .idempotency_key
        .clone();
    assert_ne!(ka, kb);
}

/// A manual-capture payment authorized at the start, to be captured within an hour.
async fn held_for_an_hour(h: &Harness) -> OffSessionPayment {
    let mut body = h.body("pm_card_visa");
    let before = start().plus(Duration::from_secs(3_600));
    body["capture"] = json!({"capture_method": "manual", "capture_before": before.to_string()});
    let p = h.create(body).await;
    h.advance(Duration::ZERO).await;
    p
}

/// The payment failed with `authorization_expired`.
async fn assert_expired(h: &Harness, id: &str) {
    let done = h.get(id).await;
    assert_eq!(done.status, PaymentStatus::Failed);
    assert_eq!(
        done.failure_reason,
        Some(FailureReason::AuthorizationExpired)
    );
}

/// A capture or a cancel that finds the authorization held (a capture under way on
/// another instance, or the expiry) waits for it: 409, retry. Taking the hold over
/// would send a second capture, or release the authorization under a capture.
#[tokio::test]
async fn capture_and_cancel_wait_for_a_capture_under_way() {
    let h = harness().await;
    let p = held_for_an_hour(&h).await;
    use offsession_core::Store;
    let mut record = h.store.get(&p.id).await.unwrap().unwrap();
    assert_eq!(record.payment.status, PaymentStatus::RequiresCapture);
    let expected = offsession_core::Expected::of(&record);
    record.lease = Some(offsession_core::Lease {
        owner: "another-instance".into(),
        until: h.now().await.plus(Duration::from_secs(60)),
    });
    h.store.update(&record, expected).await.unwrap();
    let err = h.engine.capture(&p.id, None).await.unwrap_err();
    let busy = offsession_core::ErrorCode::OffSessionPaymentConcurrentUpdate;
    assert_eq!(err.code, busy, "{err:?}");
    let err = h.engine.cancel(&p.id).await.unwrap_err();
    assert_eq!(err.code, busy, "{err:?}");
    assert_eq!(h.get(&p.id).await.status, PaymentStatus::RequiresCapture);
    // Past the authorization's deadline too, a capture that finds it held waits
    // rather than release it under the other capture.
    let mut late = h.store.get(&p.id).await.unwrap().unwrap();
    let expected = offsession_core::Expected::of(&late);
    let due = late.due_at;
    late.due_at = Some(start());
    h.store.update(&late, expected).await.unwrap();
    let err = h.engine.capture(&p.id, None).await.unwrap_err();
    assert_eq!(err.code, busy, "{err:?}");
    assert_eq!(h.get(&p.id).await.status, PaymentStatus::RequiresCapture);
    let mut back = h.store.get(&p.id).await.unwrap().unwrap();
    let expected = offsession_core::Expected::of(&back);
    back.due_at = due;
    h.store.update(&back, expected).await.unwrap();
    // Once the hold lapses (its holder gone), the capture goes through.
    h.advance(Duration::from_secs(61)).await;
    let captured = h.engine.capture(&p.id, None).await.unwrap();
    assert_eq!(captured.status, PaymentStatus::Succeeded);
}

/// A capture the processor refuses gives its hold back: the merchant's retry or
/// cancel runs at once instead of waiting for the lease to lapse (409 until then).
#[tokio::test]
async fn a_failed_capture_gives_its_hold_back() {
    let alter = Altered {
        capture_fails: true,
        ..Altered::new(mock())
    };
    let (h, _) = altered(alter, EngineConfig::default()).await;
    let p = held_for_an_hour(&h).await;
    let err = h.engine.capture(&p.id, None).await.unwrap_err();
    assert_eq!(err.code, offsession_core::ErrorCode::ApiError, "{err:?}");
    let record = h.store.get(&p.id).await.unwrap().unwrap();
    assert_eq!(record.payment.status, PaymentStatus::RequiresCapture);
    assert_eq!(record.lease, None);
    let canceled = h.engine.cancel(&p.id).await.unwrap();
    assert_eq!(canceled.status, PaymentStatus::Canceled);
}

/// A cancel of a held authorization holds the payment while the processor releases
/// it: a capture made meanwhile answers 409 instead of capturing an authorization
/// being voided; a release that fails gives the hold back.
#[tokio::test]
async fn a_cancel_holds_the_payment_while_it_releases_the_authorization() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let alter = Altered {
        cancel_gate: Some(gate.clone()),
        ..Altered::new(mock())
    };
    let (h, _) = altered(alter, EngineConfig::default()).await;
    let p = held_for_an_hour(&h).await;
    let engine = h.engine.clone();
    let id = p.id.clone();
    let cancel = tokio::spawn(async move { engine.cancel(&id).await });
    // The cancel has taken its hold and waits at the processor.
    use offsession_core::Store;
    for _ in 0..100 {
        if h.store.get(&p.id).await.unwrap().unwrap().lease.is_some() {
            break;
        }
        tokio::task::yield_now().await;
    }
    let err = h.engine.capture(&p.id, None).await.unwrap_err();
    assert_eq!(
        err.code,
        offsession_core::ErrorCode::OffSessionPaymentConcurrentUpdate,
        "{err:?}"
    );
    gate.notify_one();
    let canceled = cancel.await.unwrap().unwrap();
    assert_eq!(canceled.status, PaymentStatus::Canceled);
    assert_eq!(h.get(&p.id).await.status, PaymentStatus::Canceled);

    // A release the processor refuses: the hold goes back, and a capture runs at once.
    let alter = Altered {
        unreachable: true,
        ..Altered::new(mock())
    };
    let (h, _) = altered(alter, EngineConfig::default()).await;
    let p = held_for_an_hour(&h).await;
    let err = h.engine.cancel(&p.id).await.unwrap_err();
    assert_eq!(err.code, offsession_core::ErrorCode::ApiError, "{err:?}");
    let record = h.store.get(&p.id).await.unwrap().unwrap();
    assert_eq!(record.payment.status, PaymentStatus::RequiresCapture);
    assert_eq!(record.lease, None);
}

// Item 5, directly: capture() itself checks the deadline (the scheduler has not
// run yet when the merchant calls).
#[tokio::test]
async fn capture_checks_the_deadline_itself() {
    let h = harness().await;
    let p = held_for_an_hour(&h).await;
    // A record whose deadline has passed, as the scheduler would find it late.
    use offsession_core::Store;
    let mut record = h.store.get(&p.id).await.unwrap().unwrap();
    let expected = offsession_core::Expected::of(&record);
    record.due_at = Some(start());
    h.store.update(&record, expected).await.unwrap();
    let err = h.engine.capture(&p.id, None).await.unwrap_err();
    assert_eq!(err.code.as_str(), "off_session_payment_invalid_status");
    let done = h.get(&p.id).await;
    assert_eq!(done.status, PaymentStatus::Failed);
    assert_eq!(
        done.failure_reason,
        Some(FailureReason::AuthorizationExpired)
    );
    let reference = record.authorization.clone().unwrap_or_default();
    let pi = reference.payment.unwrap_or_default();
    assert_eq!(h.mock.captured(&pi), None, "nothing was captured");
}

// A capture holds the payment while the processor works: the scheduler, reaching the
// authorization's expiry meanwhile, must not release it and fail it under the capture.
#[tokio::test]
async fn the_scheduler_leaves_a_payment_alone_while_it_is_being_captured() {
    let alter = Altered {
        capture_fails: true,
        ..Altered::new(mock())
    };
    let (h, _) = altered(alter, EngineConfig::default()).await;
    let p = held_for_an_hour(&h).await;
    assert_eq!(h.get(&p.id).await.status, PaymentStatus::RequiresCapture);
    // A minute before the expiry the merchant captures; the processor does not answer
    // in time (here: fails). The capture may still be under way at the processor, so
    // the expiry waits as long as the capture's hold would have (the hold itself is
    // given back: see `a_failed_capture_gives_its_hold_back`).
    h.advance(Duration::from_secs(59 * 60)).await;
    assert!(h.engine.capture(&p.id, None).await.is_err());
    // Two minutes later the authorization's expiry has passed, inside the hold.
    h.advance(Duration::from_secs(120)).await;
    assert_eq!(
        h.get(&p.id).await.status,
        PaymentStatus::RequiresCapture,
        "released and failed while a capture may be under way"
    );
    // Once that wait is over, the expiry is handled as before.
    h.advance(Duration::from_secs(300)).await;
    assert_expired(&h, &p.id).await;
}

// The capture's hold is renewed for as long as the processor takes: a capture still
// in flight when the authorization's expiry and the first hold have both passed is
// not released under it.
#[tokio::test]
async fn a_slow_capture_keeps_its_hold_past_the_expiry() {
    let clock = Arc::new(offsession_core::ManualClock::new(start()));
    let gate = Arc::new(tokio::sync::Notify::new());
    let alter = Altered {
        capture_gate: Some(gate.clone()),
        ..Altered::new(mock())
    };
    let mock = alter.mock.clone();
    let store = Arc::new(MemoryStore::new());
    let engine = Engine::builder()
        .processor(Arc::new(alter))
        .store(store.clone())
        .clock(clock.clone())
        .config(EngineConfig {
            lease: Duration::from_secs(1),
            ..EngineConfig::default()
        })
        .build()
        .unwrap();
    let before = start().plus(Duration::from_secs(3_600));
    let body = json!({
        "amount": {"value": 2000, "currency": "usd"},
        "cadence": "recurring",
        "customer": "cus_123",
        "payment_method": "pm_card_visa",
        "capture": {"capture_method": "manual", "capture_before": before.to_string()},
    });
    let p = engine
        .create_json(body.to_string().as_bytes(), None)
        .await
        .unwrap();
    engine.run_due().await.unwrap();
    assert_eq!(
        engine.retrieve(&p.id).await.unwrap().status,
        PaymentStatus::RequiresCapture
    );
    let capturing = tokio::spawn({
        let (engine, id) = (engine.clone(), p.id.clone());
        async move { engine.capture(&id, None).await }
    });
    // The capture holds the payment, then waits for the processor.
    let mut held = false;
    for _ in 0..200 {
        let record = store.get(&p.id).await.unwrap().unwrap();
        if record.lease.is_some() {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(held, "the capture did not hold the payment");
    // The processor is still capturing two hours later, past the expiry and the
    // one-second hold it started with; the hold is renewed meanwhile.
    let later = start().plus(Duration::from_secs(2 * 3_600));
    clock.set(later);
    let mut renewed = false;
    for _ in 0..200 {
        let record = store.get(&p.id).await.unwrap().unwrap();
        if record.lease.as_ref().is_some_and(|l| l.until > later) {
            renewed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(renewed, "the capture's hold was not renewed");
    engine.run_due().await.unwrap();
    assert_eq!(
        engine.retrieve(&p.id).await.unwrap().status,
        PaymentStatus::RequiresCapture,
        "released under a capture in flight"
    );
    gate.notify_one();
    let captured = capturing.await.unwrap().unwrap();
    assert_eq!(captured.status, PaymentStatus::Succeeded);
    let reference = store.get(&p.id).await.unwrap().unwrap().authorization;
    let pi = reference.and_then(|r| r.payment).unwrap_or_default();
    assert_eq!(mock.captured(&pi), Some(2000));
}

// A capture the processor made but the engine never recorded (a crash between the
// two) is found at the authorization's expiry and recorded, not released and failed.
#[tokio::test]
async fn a_capture_whose_write_was_lost_is_recorded_at_expiry() {
    let h = harness().await;
    let p = held_for_an_hour(&h).await;
    let record = h.store.get(&p.id).await.unwrap().unwrap();
    let reference = record.authorization.clone().unwrap();
    h.mock
        .capture(CaptureRequest {
            payment: &record.payment,
            reference: &reference,
            amount: record.payment.amount_requested,
            idempotency_key: &format!("{}:capture", p.id),
        })
        .await
        .unwrap();
    h.advance(Duration::from_secs(2 * 3_600)).await;
    let done = h.get(&p.id).await;
    assert_eq!(
        done.status,
        PaymentStatus::Succeeded,
        "{:?}",
        done.failure_reason
    );
    assert!(done.payment_record.is_some());
}

// An expired authorization whose state cannot be read and whose release fails is not
// failed while the processor could still report a capture: the expiry is tried
// hourly until `replay_deadline` (3 days) after the deadline, and a capture after the
// deadline is refused meanwhile.
#[tokio::test]
async fn an_expiry_the_processor_cannot_confirm_is_tried_again_before_failing() {
    let alter = Altered {
        unreachable: true,
        ..Altered::new(mock())
    };
    let (h, _) = altered(alter, EngineConfig::default()).await;
    let p = held_for_an_hour(&h).await;
    h.advance(Duration::from_secs(5 * 3_600)).await;
    assert_eq!(h.get(&p.id).await.status, PaymentStatus::RequiresCapture);
    let refused = h.engine.capture(&p.id, None).await.unwrap_err();
    assert!(
        refused.message.contains("tried again"),
        "{}",
        refused.message
    );
    let record = h.store.get(&p.id).await.unwrap().unwrap();
    let pi = record.authorization.clone().unwrap().payment.unwrap();
    assert_eq!(h.mock.captured(&pi), None, "no capture after the deadline");
    h.advance(DAY * 3).await;
    assert_expired(&h, &p.id).await;
}

// Item 7: a refused request is replayed a bounded number of times, then the
// payment fails (rejected_by_partner) instead of looping forever.
#[tokio::test]
async fn refused_requests_end_after_bounded_replays() {
    let (h, processor) = faulting(
        AttemptOutcome::fault(
            offsession_core::FaultKind::Refused,
            "stripe 400 invalid_request_error",
        ),
        five_replays(),
    )
    .await;
    let done = one_payment_after(&h, 60).await;
    assert_eq!(done.payment.status, PaymentStatus::Failed);
    assert_eq!(
        done.payment.failure_reason,
        Some(FailureReason::RejectedByPartner)
    );
    assert_eq!(done.payment.retry_details.attempts, 1);
    let sends = processor.sends.load(Ordering::SeqCst);
    assert!(sends <= 6, "at most 1 + max_replays sends, got {sends}");
    assert!(!done.attempts[0].outcome_unknown);
}

// Item 7: an outcome that stays unknown ends too — flagged for reconciliation, and
// never with a second attempt under a new key.
#[tokio::test]
async fn unknown_outcomes_end_flagged_after_bounded_replays() {
    let (h, processor) = faulting(
        AttemptOutcome::Unknown {
            message: "garbage answer".into(),
        },
        five_replays(),
    )
    .await;
    let done = one_payment_after(&h, 60).await;
    assert_ended_unknown(&done);
    assert!(done.attempts[0].outcome_unknown);
    assert!(done
        .payment
        .last_authorization_attempt_error
        .as_deref()
        .is_some_and(|e| e.contains("reconcile")));
    assert!(processor.sends.load(Ordering::SeqCst) <= 6);
}

// Item 7: the time bound holds even while the count bound is not reached.
#[tokio::test]
async fn replays_end_at_the_deadline() {
    let config = EngineConfig {
        max_replays: 1_000,
        replay_deadline: Duration::from_secs(6 * 3_600),
        replay_backoff: vec![Duration::from_secs(3_600)],
        ..EngineConfig::default()
    };
    let (h, processor) = faulting(
        AttemptOutcome::Unknown {
            message: "no answer".into(),
        },
        config,
    )
    .await;
    let done = one_payment_after(&h, 1).await;
    assert_eq!(done.payment.status, PaymentStatus::Failed);
    let sends = processor.sends.load(Ordering::SeqCst);
    assert!((6..=8).contains(&sends), "hourly for 6 hours, got {sends}");
}

/// Every answer unknown, at a processor that keeps idempotency keys for 5 hours.
fn forgets_keys() -> Altered {
    Altered {
        answer: Some(AttemptOutcome::Unknown {
            message: "no answer".into(),
        }),
        window: Some(Duration::from_secs(5 * 3_600)),
        ..Altered::new(mock())
    }
}

// An unknown outcome is replayed only while the processor keeps the key: hourly at
// 1–4 h, a last replay a minute before the 5 h window closes, then the payment ends
// (the 3-day replay deadline alone would allow about 72 sends).
#[tokio::test]
async fn replays_stop_before_the_processor_forgets_the_key() {
    let config = EngineConfig {
        max_replays: 1_000,
        replay_backoff: vec![Duration::from_secs(3_600)],
        ..EngineConfig::default()
    };
    let (h, faults) = altered(forgets_keys(), config).await;
    let done = one_payment_after(&h, 1).await;
    assert_ended_unknown(&done);
    assert_eq!(faults.sends.load(Ordering::SeqCst), 6);
}

// A payment left `processing` by a crashed scheduler and found only after the key's
// window (an outage, a restore) is not replayed with a key the processor forgot.
#[tokio::test]
async fn a_crashed_attempt_found_after_the_key_window_ends_without_a_replay() {
    let (h, faults) = altered(forgets_keys(), EngineConfig::default()).await;
    let p = h.create(h.body("pm_card_visa")).await;
    h.advance(Duration::ZERO).await;
    assert_eq!(faults.sends.load(Ordering::SeqCst), 1);
    // As a scheduler that died mid-attempt leaves it, with its lease lapsing 6 h
    // after the attempt was sent.
    let mut record = h.store.get(&p.id).await.unwrap().unwrap();
    let expected = Expected::of(&record);
    let six_hours = start().plus(Duration::from_secs(6 * 3_600));
    record.replay_pending = false;
    record.due_at = Some(six_hours);
    record.lease = Some(Lease {
        owner: "crashed".into(),
        until: six_hours,
    });
    h.store.update(&record, expected).await.unwrap();
    h.advance(Duration::from_secs(7 * 3_600)).await;
    let done = h.get(&p.id).await;
    assert_eq!(done.status, PaymentStatus::Failed);
    assert_eq!(done.failure_reason, Some(FailureReason::RetriesExhausted));
    assert!(
        done.last_authorization_attempt_error
            .as_deref()
            .is_some_and(|e| e.contains("reconcile idempotency key")),
        "{:?}",
        done.last_authorization_attempt_error
    );
    assert_eq!(faults.sends.load(Ordering::SeqCst), 1, "no replay");
}

// Item 14: the final decline emits `failed` alone; a decline that will be retried
// emits attempt_failed and authorization_attempt_failed.
#[tokio::test]
async fn attempt_failed_only_while_retries_remain() {
    let h = harness().await;
    let mut body = h.body("pm_card_visa_chargeDeclinedInsufficientFunds");
    body["retry_details"] = json!({"retry_policy": "stripe_recommended"});
    let p = h.create(body).await;
    for _ in 0..20 {
        h.advance(DAY).await;
    }
    let done = h.get(&p.id).await;
    assert_eq!(done.status, PaymentStatus::Failed);
    let events: Vec<EventType> = h
        .events
        .events()
        .into_iter()
        .filter(|e| e.related_object.id == p.id)
        .map(|e| e.event_type)
        .collect();
    let failed_attempts = events
        .iter()
        .filter(|e| **e == EventType::AttemptFailed)
        .count();
    assert_eq!(
        failed_attempts as u32,
        done.retry_details.attempts - 1,
        "{events:?}"
    );
    assert_eq!(events.last(), Some(&EventType::Failed));
    assert_ne!(
        events[events.len() - 2],
        EventType::AuthorizationAttemptFailed
    );
}

/// Replays a payment's event types into the statuses they announce.
fn replay_events(types: &[EventType]) -> Vec<PaymentStatus> {
    let mut attempted = false;
    let mut statuses = Vec::new();
    for t in types {
        if *t == EventType::AttemptStarted {
            attempted = true;
        }
        if let Some(status) = t.status_after(attempted) {
            statuses.push(status);
        }
    }
    statuses
}

// Item 14: for random payments (declines, recoveries, faults, lost answers,
// cascades' absence, cancels, pauses, resumes), replaying each payment's events
// arrives at its stored status; every event's snapshot carries the status its
// type announces; every announced change is a legal transition.
proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, ..Default::default() })]
    #[test]
    fn events_replay_to_the_stored_status(
        seed in 0u64..1_000_000,
        methods in proptest::collection::vec(0usize..7, 4..16),
        operations in proptest::collection::vec((0usize..16, 0usize..4, 0u64..4), 0..12),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let names = [
                "pm_card_visa",
                "pm_card_visa_chargeDeclinedInsufficientFunds",
                "pm_card_visa_chargeDeclinedInsufficientFunds_recoversAfter2",
                "pm_card_chargeDeclinedExpiredCard",
                "pm_card_visa_chargeDeclinedLostCard",
                "pm_card_chargeDeclinedProcessingError",
                "pm_card_mastercard_chargeDeclined_recoversAfter1",
            ];
            let h = harness_with(
                MockConfig { seed, fault_rate: 0.2, unknown_rate: 0.2, ..MockConfig::default() },
                EngineConfig { max_replays: 3, ..EngineConfig::default() },
            ).await;
            let mut ids = Vec::new();
            for (i, m) in methods.iter().enumerate() {
                let mut body = h.body(&format!("{}__{i}", names[*m]));
                body["retry_details"] = json!({"retry_policy": "stripe_recommended"});
                if i % 3 == 0 {
                    body["capture"] = json!({"capture_method": "manual"});
                }
                ids.push(h.create(body).await.id);
            }
            for (target, op, days) in operations {
                h.advance(Duration::from_secs(days * 86_400 + 3_600)).await;
                let id = &ids[target % ids.len()];
                let _ = match op {
                    0 => h.engine.cancel(id).await,
                    1 => h.engine.pause(id).await,
                    2 => h.engine.resume(id).await,
                    _ => h.engine.capture(id, None).await,
                };
            }
            for _ in 0..40 {
                h.advance(DAY).await;
            }
            let mut by_payment: HashMap<String, Vec<offsession_core::Event>> = HashMap::new();
            for event in h.events.events() {
                by_payment.entry(event.related_object.id.clone()).or_default().push(event);
            }
            for id in &ids {
                let stored = h.get(id).await.status;
                let events = &by_payment[id];
                let types: Vec<EventType> = events.iter().map(|e| e.event_type).collect();
                let statuses = replay_events(&types);
                assert_eq!(statuses.last(), Some(&stored), "{id}: {types:?}");
                let mut attempted = false;
                for event in events {
                    if event.event_type == EventType::AttemptStarted {
                        attempted = true;
                    }
                    if let Some(announced) = event.event_type.status_after(attempted) {
                        assert_eq!(event.data.status, announced, "{id}: {types:?}");
                    }
                }
                for pair in statuses.windows(2) {
                    let legal = offsession_core::Transition::ALL.iter().any(|t| {
                        offsession_core::transition(pair[0], *t) == Ok(pair[1])
                    });
                    assert!(legal, "{id}: {:?} -> {:?} in {types:?}", pair[0], pair[1]);
                    assert_ne!(pair[0], pair[1], "{id}: a repeated status in {types:?}");
                }
            }
        });
    }
}

// Item 10: with a lease shorter than the processor's latency, an attempt in flight
// keeps its lease, so other schedulers never take it: one send per payment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_attempt_in_flight_keeps_its_lease() {
    let store = Arc::new(MemoryStore::new());
    let mock = Arc::new(MockProcessor::new(
        "mock",
        MockConfig {
            latency: LatencyModel::Fixed { millis: 2_500 },
            ..MockConfig::default()
        },
    ));
    let engines: Vec<Engine> = (0..4)
        .map(|i| {
            Engine::builder()
                .config(EngineConfig {
                    instance_id: format!("scheduler-{i}"),
                    lease: Duration::from_secs(1),
                    ..EngineConfig::default()
                })
                .processor(mock.clone())
                .store(store.clone())
                .clock(Arc::new(SystemClock))
                .events(Arc::new(CollectEvents::new()))
                .build()
                .unwrap()
        })
        .collect();
    let mut ids = Vec::new();
    for i in 0..20 {
        let body = json!({
            "amount": {"value": 2000, "currency": "usd"},
            "cadence": "recurring",
            "customer": "cus_123",
            "payment_method": format!("pm_card_visa__{i}"),
        });
        ids.push(
            engines[0]
                .create_json(body.to_string().as_bytes(), None)
                .await
                .unwrap()
                .id,
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    let tasks: Vec<_> = engines
        .iter()
        .cloned()
        .map(|engine| {
            tokio::spawn(async move {
                while std::time::Instant::now() < deadline {
                    engine.run_due().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    for id in &ids {
        let record = engines[0].record(id).await.unwrap();
        assert_eq!(record.payment.status, PaymentStatus::Succeeded, "{id}");
        assert_eq!(
            record.attempts[0].replays, 0,
            "{id} was taken over in flight"
        );
    }
    let ledger = mock.ledger();
    assert_eq!(ledger.len(), 20);
    assert!(
        ledger.iter().all(|e| e.sends == 1),
        "sends per key: {:?}",
        ledger.iter().map(|e| e.sends).collect::<Vec<_>>()
    );
}

// Item 15: compartment_id is on the object; payments_orchestration is null unless
// requested; payment_method_options.card is stored and returned.
#[tokio::test]
async fn the_object_carries_compartment_orchestration_and_card_options() {
    let h = harness().await;
    let p = h.create(h.body("pm_card_visa")).await;
    let value = serde_json::to_value(&p).unwrap();
    assert_eq!(value["compartment_id"], "wksp_test_offsession");
    assert!(value["payments_orchestration"].is_null(), "{value}");
    assert!(value["payment_method_options"].is_null());

    let mut body = h.body("pm_card_visa__2");
    body["payments_orchestration"] = json!({"enabled": false});
    body["payment_method_options"] =
        json!({"card": {"mcc": "5734", "network_transaction_id": "MCC123ABC0101"}});
    let p = h.create(body).await;
    let value = serde_json::to_value(h.get(&p.id).await).unwrap();
    assert_eq!(value["payments_orchestration"], json!({"enabled": false}));
    assert_eq!(
        value["payment_method_options"],
        json!({"card": {"mcc": "5734", "network_transaction_id": "MCC123ABC0101"}})
    );
}

/// A policy that retries in a day and remembers the longest card history it saw.
#[derive(Debug, Default)]
struct MeasuresHistory {
    longest: std::sync::atomic::AtomicUsize,
}

impl offsession_core::RetryPolicy for MeasuresHistory {
    fn name(&self) -> &str {
        "measures"
    }
    fn decide(
        &self,
        context: &offsession_core::RetryContext<'_>,
    ) -> offsession_core::RetryDecision {
        self.longest
            .fetch_max(context.card_history.len(), Ordering::Relaxed);
        offsession_core::RetryDecision::RetryAt {
            not_before: context.now.plus(DAY),
            latest: None,
        }
    }
}

// Item 9: the card history a decision reads is bounded, however many payments share
// the card (it was every attempt on the card, rescanned per decline).
#[tokio::test]
async fn a_decision_reads_a_bounded_card_history() {
    let policy = Arc::new(MeasuresHistory::default());
    let mock = Arc::new(MockProcessor::new("mock", MockConfig::default()));
    let events = Arc::new(CollectEvents::new());
    let engine = Engine::builder()
        .config(EngineConfig {
            default_retry_policy: "measures".into(),
            ..EngineConfig::default()
        })
        .processor(mock)
        .retry_policy("measures", policy.clone())
        .store(Arc::new(MemoryStore::new()))
        .events(events)
        .build()
        .unwrap();
    let clock = engine.create_test_clock(start()).await.unwrap().id;
    for i in 0..600 {
        let body = json!({
            "amount": {"value": 2000 + i, "currency": "usd"},
            "cadence": "recurring",
            "customer": "cus_123",
            "payment_method": "pm_card_chargeDeclinedProcessingError__shared",
            "retry_details": {"retry_policy": "measures"},
            "test_clock": clock,
        });
        engine
            .create_json(body.to_string().as_bytes(), None)
            .await
            .unwrap();
    }
    engine.advance_test_clock(&clock, start()).await.unwrap();
    let longest = policy.longest.load(Ordering::Relaxed);
    assert!(longest > 200, "the history is read ({longest})");
    assert!(
        longest <= 257,
        "bounded: {longest} attempts read for one decision"
    );
}

/// A memory store with one writer, as the SQL stores have: writes land in the order
/// they were sent, and an `update` (the lease renewal's write) takes a second and
/// lands even when its caller stops waiting for it.
#[derive(Debug)]
struct SlowRenewals {
    inner: Arc<MemoryStore>,
    writer: Arc<tokio::sync::Mutex<()>>,
    /// The next `update` fails with a retryable database error: after writing
    /// (`Some(true)`: its answer is lost) or without (`Some(false)`: an outage).
    fail_next_update: std::sync::Mutex<Option<bool>>,
    /// The next this many claims take nothing, as Postgres' `SKIP LOCKED` skips rows
    /// another transaction has locked for a moment.
    empty_claims: AtomicU32,
}

#[async_trait]
impl Store for SlowRenewals {
    async fn create(
        &self,
        record: &PaymentRecord,
        key: Option<offsession_core::store::NewIdempotencyKey<'_>>,
        events: &[offsession_core::EventNotification],
    ) -> Result<offsession_core::IdempotencyClaim, StoreError> {
        let _writer = self.writer.lock().await;
        self.inner.create(record, key, events).await
    }
    async fn get(&self, id: &str) -> Result<Option<PaymentRecord>, StoreError> {
        self.inner.get(id).await
    }
    async fn idempotency_key(
        &self,
        key: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Option<(String, String)>, StoreError> {
        self.inner.idempotency_key(key, now, ttl).await
    }
    async fn update(&self, record: &PaymentRecord, expected: Expected) -> Result<u64, StoreError> {
        let (inner, record) = (self.inner.clone(), record.clone());
        let writer = self.writer.clone().lock_owned().await;
        let fail = self.fail_next_update.lock().unwrap().take();
        tokio::spawn(async move {
            let _writer = writer;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let lost = StoreError::Backend {
                message: "connection reset".into(),
                retryable: true,
                source: None,
            };
            match fail {
                Some(false) => Err(lost),
                Some(true) => inner.update(&record, expected).await.and(Err(lost)),
                None => inner.update(&record, expected).await,
            }
        })
        .await
        .unwrap()
    }
    async fn commit(
        &self,
        record: &PaymentRecord,
        expected: Expected,
        events: &[offsession_core::EventNotification],
    ) -> Result<u64, StoreError> {
        let _writer = self.writer.lock().await;
        self.inner.commit(record, expected, events).await
    }
    async fn events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<offsession_core::OutboxEvent>, StoreError> {
        self.inner.events_after(after, limit).await
    }
    async fn load_state(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.load_state(key).await
    }
    async fn save_state(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.inner.save_state(key, value).await
    }
    async fn swap_state(
        &self,
        key: &str,
        expected: Option<&str>,
        value: &str,
    ) -> Result<bool, StoreError> {
        self.inner.swap_state(key, expected, value).await
    }
    async fn delete_state(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete_state(key).await
    }
    async fn remove_state_if(&self, key: &str, expected: &str) -> Result<bool, StoreError> {
        self.inner.remove_state_if(key, expected).await
    }
    async fn newest_event_sequence(&self) -> Result<u64, StoreError> {
        self.inner.newest_event_sequence().await
    }
    async fn remove_events_through(&self, sequence: u64) -> Result<u64, StoreError> {
        self.inner.remove_events_through(sequence).await
    }
    async fn list_state(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.inner.list_state(prefix).await
    }
    async fn claim_due(
        &self,
        scope: &ClockScope,
        now: Timestamp,
        limit: usize,
        lease: &Lease,
    ) -> Result<Vec<PaymentRecord>, StoreError> {
        if self
            .empty_claims
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Ok(Vec::new());
        }
        self.inner.claim_due(scope, now, limit, lease).await
    }
    async fn next_due(&self, scope: &ClockScope) -> Result<Option<Timestamp>, StoreError> {
        self.inner.next_due(scope).await
    }
    async fn list(
        &self,
        limit: usize,
        starting_after: Option<&str>,
    ) -> Result<Vec<PaymentRecord>, StoreError> {
        self.inner.list(limit, starting_after).await
    }
    async fn card_history(
        &self,
        payment_method: &str,
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<offsession_core::CardAttempt>, StoreError> {
        self.inner.card_history(payment_method, since, limit).await
    }
    async fn claim_idempotency_key(
        &self,
        key: &str,
        fingerprint: &str,
        payment_id: &str,
    ) -> Result<offsession_core::IdempotencyClaim, StoreError> {
        self.inner
            .claim_idempotency_key(key, fingerprint, payment_id)
            .await
    }
    async fn count_by_status(&self) -> Result<Vec<(PaymentStatus, u64)>, StoreError> {
        self.inner.count_by_status().await
    }
}

/// An engine with a 3 s lease on a `SlowRenewals` store (whose next update fails as
/// `fail_next_update` says), against a mock answering after `latency_ms`, and one card
/// payment created on it.
async fn slow_renewal_engine(
    fail_next_update: Option<bool>,
    latency_ms: u64,
) -> (Engine, Arc<SlowRenewals>, Arc<MockProcessor>, String) {
    let store = Arc::new(SlowRenewals {
        inner: Arc::new(MemoryStore::new()),
        writer: Arc::new(tokio::sync::Mutex::new(())),
        fail_next_update: std::sync::Mutex::new(fail_next_update),
        empty_claims: AtomicU32::new(0),
    });
    let mock = Arc::new(MockProcessor::new(
        "mock",
        MockConfig {
            latency: LatencyModel::Fixed { millis: latency_ms },
            ..MockConfig::default()
        },
    ));
    let engine = Engine::builder()
        .config(EngineConfig {
            lease: Duration::from_secs(3),
            ..EngineConfig::default()
        })
        .processor(mock.clone())
        .store(store.clone())
        .clock(Arc::new(SystemClock))
        .events(Arc::new(CollectEvents::new()))
        .build()
        .unwrap();
    let body = json!({
        "amount": {"value": 2000, "currency": "usd"},
        "cadence": "recurring",
        "customer": "cus_123",
        "payment_method": "pm_card_visa__renewal",
    });
    let id = engine
        .create_json(body.to_string().as_bytes(), None)
        .await
        .unwrap()
        .id;
    (engine, store, mock, id)
}

// An answer that arrives while the lease's renewal is being written: the renewal
// lands (its version included) before the outcome is written, so the outcome is not
// refused as stale and the payment is not left `processing` for a needless replay.
// The renewal starts a third of a lease (1 s) into the send and takes 1 s; the
// answer comes at 1.5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_during_a_lease_renewal_is_written() {
    let (engine, _store, mock, id) = slow_renewal_engine(None, 1_500).await;
    let report = engine.run_due().await.unwrap();
    assert_eq!(
        report.conflicts, 0,
        "the outcome's write was refused as stale"
    );
    let record = engine.record(&id).await.unwrap();
    assert_eq!(record.payment.status, PaymentStatus::Succeeded);
    assert!(record.attempts[0].answered());
    assert_eq!(mock.ledger().len(), 1);
}

// A lease renewal whose write fails (not written, or written with its answer lost)
// is tried again, so the lease does not lapse under an attempt still in flight and
// no other scheduler claims the payment meanwhile. Lease 3 s, renewals every 1 s
// taking 1 s each, the first failing at 2 s, the processor answering at 6 s; the
// lease as it stood would have lapsed at 3 s (not written) or 4 s (written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_lease_renewal_is_tried_again() {
    for landed in [false, true] {
        let (engine, store, mock, id) = slow_renewal_engine(Some(landed), 6_000).await;
        let running = tokio::spawn({
            let engine = engine.clone();
            async move { engine.run_due().await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(4_600)).await;
        let other = Lease {
            owner: "another-instance".into(),
            until: offsession_core::Clock::now(&SystemClock).plus(Duration::from_secs(60)),
        };
        let stolen = store
            .claim_due(
                &ClockScope::Engine,
                offsession_core::Clock::now(&SystemClock),
                10,
                &other,
            )
            .await
            .unwrap();
        assert!(
            stolen.is_empty(),
            "claimed by another instance while the attempt was in flight (landed: {landed})"
        );
        let report = running.await.unwrap();
        assert_eq!(report.conflicts, 0, "landed: {landed}");
        let record = engine.record(&id).await.unwrap();
        assert_eq!(record.payment.status, PaymentStatus::Succeeded);
        assert_eq!(mock.ledger().len(), 1);
    }
}

/// Mastercard advice code 21 bars the card: another payment of the same card, first
/// attempt included, takes no attempt for 30 days; after them it is attempted again.
#[tokio::test]
async fn mastercard_advice_21_bars_every_payment_of_the_card_for_thirty_days() {
    let mut codes = offsession_core::DeclineCodes::new("card_declined", Some("do_not_honor"));
    codes.network_advice_code = Some("21".into());
    let (h, processor) = faulting(
        AttemptOutcome::Declined {
            codes,
            reference: Default::default(),
        },
        EngineConfig::default(),
    )
    .await;
    let card = "pm_card_mastercard";
    let first = h.create(h.body(card)).await;
    h.advance(DAY).await;
    let first = h.get(&first.id).await;
    assert_eq!(first.status, PaymentStatus::Failed);
    assert_eq!(first.failure_reason, Some(FailureReason::RejectedByPartner));
    assert_eq!(processor.sends.load(Ordering::SeqCst), 1);

    // Ten days later a new renewal on the same card fails without an attempt.
    for _ in 0..10 {
        h.advance(DAY).await;
    }
    let second = h.create(h.body(card)).await;
    h.advance(DAY).await;
    let second = h.get(&second.id).await;
    assert_eq!(second.status, PaymentStatus::Failed);
    assert_eq!(
        second.failure_reason,
        Some(FailureReason::RejectedByPartner)
    );
    assert_eq!(second.retry_details.attempts, 0);
    assert_eq!(
        processor.sends.load(Ordering::SeqCst),
        1,
        "nothing was sent to the barred card"
    );

    // A Visa card of the same customer is not barred.
    let visa = h.create(h.body("pm_card_visa")).await;
    h.advance(DAY).await;
    assert!(h.get(&visa.id).await.retry_details.attempts >= 1);

    // Thirty days after the decline the card is attempted again.
    for _ in 0..20 {
        h.advance(DAY).await;
    }
    let before = processor.sends.load(Ordering::SeqCst);
    let third = h.create(h.body(card)).await;
    h.advance(DAY).await;
    assert_eq!(h.get(&third.id).await.retry_details.attempts, 1);
    assert_eq!(processor.sends.load(Ordering::SeqCst), before + 1);
}

/// A `never_retry_days` longer than 30 bars the card that long: the card history the
/// rules read reaches back as far as the bar (it stopped at 30 days).
#[tokio::test]
async fn a_bar_set_longer_than_thirty_days_lasts_as_set() {
    let mut codes = offsession_core::DeclineCodes::new("card_declined", Some("do_not_honor"));
    codes.network_advice_code = Some("21".into());
    let table = include_str!("../../../config/declines.toml")
        .replace("never_retry_days = 30", "never_retry_days = 45");
    assert!(table.contains("never_retry_days = 45"));
    let processor = Arc::new(Altered {
        answer: Some(AttemptOutcome::Declined {
            codes,
            reference: Default::default(),
        }),
        ..Altered::new(mock())
    });
    let h = harness_with_declines(
        processor.mock.clone(),
        processor.clone(),
        EngineConfig::default(),
        Some(offsession_retry::DeclineTable::from_toml(&table).unwrap()),
    )
    .await;
    let card = "pm_card_mastercard";
    let first = h.create(h.body(card)).await;
    h.advance(DAY).await;
    assert_eq!(h.get(&first.id).await.status, PaymentStatus::Failed);
    assert_eq!(processor.sends.load(Ordering::SeqCst), 1);
    // 40 days after the decline the card is still barred.
    for _ in 0..39 {
        h.advance(DAY).await;
    }
    let second = h.create(h.body(card)).await;
    h.advance(DAY).await;
    let second = h.get(&second.id).await;
    assert_eq!(second.status, PaymentStatus::Failed);
    assert_eq!(second.retry_details.attempts, 0);
    assert_eq!(processor.sends.load(Ordering::SeqCst), 1, "nothing sent");
    // After 45 days it is attempted again.
    for _ in 0..5 {
        h.advance(DAY).await;
    }
    let third = h.create(h.body(card)).await;
    h.advance(DAY).await;
    assert_eq!(h.get(&third.id).await.retry_details.attempts, 1);
    assert_eq!(processor.sends.load(Ordering::SeqCst), 2);
}

/// The network rules count per card, not per payment method: a card saved twice (two
/// payment methods, one fingerprint) is barred on both by advice code 21 on one, and
/// a card with another fingerprint is not.
#[tokio::test]
async fn a_card_saved_twice_is_one_card_to_the_network_rules() {
    let mut codes = offsession_core::DeclineCodes::new("card_declined", Some("do_not_honor"));
    codes.network_advice_code = Some("21".into());
    let alter = Altered {
        answer: Some(AttemptOutcome::Declined {
            codes,
            reference: Default::default(),
        }),
        ..Altered::new(Arc::new(MockProcessor::new(
            "mock",
            vault(
                r#"
        [[payment_methods]]
        id = "pm_saved_at_signup"
        customer = "cus_123"
        brand = "mastercard"
        fingerprint = "fp_same_card"

        [[payment_methods]]
        id = "pm_saved_again"
        customer = "cus_123"
        brand = "mastercard"
        fingerprint = "fp_same_card"

        [[payment_methods]]
        id = "pm_other_card"
        customer = "cus_123"
        brand = "mastercard"
        fingerprint = "fp_other_card"
        "#,
            ),
        )))
    };
    let (h, processor) = altered(alter, EngineConfig::default()).await;
    let first = h.create(h.body("pm_saved_at_signup")).await;
    h.advance(DAY).await;
    let first = h.get(&first.id).await;
    assert_eq!(first.failure_reason, Some(FailureReason::RejectedByPartner));
    assert_eq!(processor.sends.load(Ordering::SeqCst), 1);

    let again = h.create(h.body("pm_saved_again")).await;
    h.advance(DAY).await;
    let again = h.get(&again.id).await;
    assert_eq!(again.failure_reason, Some(FailureReason::RejectedByPartner));
    assert_eq!(again.retry_details.attempts, 0, "the same card is barred");
    assert_eq!(processor.sends.load(Ordering::SeqCst), 1);

    let other = h.create(h.body("pm_other_card")).await;
    h.advance(DAY).await;
    assert_eq!(h.get(&other.id).await.retry_details.attempts, 1);
    assert_eq!(processor.sends.load(Ordering::SeqCst), 2);
}

/// Attempts filed before fingerprints were read (under the payment method's id) still
/// count for the card: a payment made after the upgrade, whose preflight reports a
/// fingerprint, finds the Mastercard advice 21 of a payment made before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_filed_before_fingerprints_still_bar_the_card() {
    let store = Arc::new(MemoryStore::new());
    let engine_with = |fingerprint: &str| {
        let mut codes = offsession_core::DeclineCodes::new("card_declined", Some("do_not_honor"));
        codes.network_advice_code = Some("21".into());
        let processor = Arc::new(Altered {
            answer: Some(AttemptOutcome::Declined {
                codes,
                reference: Default::default(),
            }),
            ..Altered::new(Arc::new(MockProcessor::new(
                "mock",
                vault(&format!(
                    "[[payment_methods]]\nid = \"pm_upgraded\"\ncustomer = \"cus_123\"\nbrand = \"mastercard\"\n{fingerprint}"
                )),
            )))
        });
        let engine = Engine::builder()
            .processor(processor.clone())
            .store(store.clone())
            .clock(Arc::new(SystemClock))
            .events(Arc::new(CollectEvents::new()))
            .build()
            .unwrap();
        (engine, processor)
    };
    let body = json!({
        "amount": {"value": 2000, "currency": "usd"},
        "cadence": "recurring",
        "customer": "cus_123",
        "payment_method": "pm_upgraded",
    })
    .to_string();
    // Before: no fingerprint, the decline is filed under `pm_upgraded`.
    let (before, sent_before) = engine_with("");
    let first = before.create_json(body.as_bytes(), None).await.unwrap().id;
    before.run_due().await.unwrap();
    let first = before.record(&first).await.unwrap();
    assert_eq!(
        first.payment.failure_reason,
        Some(FailureReason::RejectedByPartner)
    );
    assert_eq!(sent_before.sends.load(Ordering::SeqCst), 1);
    // After: preflight reports a fingerprint; the card is still barred.
    let (after, sent_after) = engine_with("fingerprint = \"fp_upgraded\"");
    let second = after.create_json(body.as_bytes(), None).await.unwrap().id;
    after.run_due().await.unwrap();
    let second = after.record(&second).await.unwrap();
    let stored = store.get(&second.payment.id).await.unwrap().unwrap();
    assert_eq!(stored.card_key(), "card:mock:fp_upgraded");
    assert_eq!(
        second.payment.failure_reason,
        Some(FailureReason::RejectedByPartner)
    );
    assert_eq!(second.payment.retry_details.attempts, 0);
    assert_eq!(
        sent_after.sends.load(Ordering::SeqCst),
        0,
        "sent to a barred card"
    );
}

/// A card's history is one whichever processor a payment is routed to: the key names
/// the processor whose fingerprint it is (preflight's), not the payment's route. Keyed
/// by the route, a Mastercard advice 21 received through `a` did not bar a payment on
/// the same card routed to `b`, and the caps were counted per processor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_is_one_card_across_the_processors_it_is_routed_to() {
    let store = Arc::new(MemoryStore::new());
    let processor = |id: &str| {
        let mut codes = offsession_core::DeclineCodes::new("card_declined", Some("do_not_honor"));
        codes.network_advice_code = Some("21".into());
        Arc::new(Altered {
            answer: Some(AttemptOutcome::Declined {
                codes,
                reference: Default::default(),
            }),
            ..Altered::new(Arc::new(MockProcessor::new(
                id,
                vault(
                    "[[payment_methods]]\nid = \"pm_routed\"\ncustomer = \"cus_123\"\nbrand = \"mastercard\"\nfingerprint = \"fp_routed\"",
                ),
            )))
        })
    };
    let (a, b) = (processor("a"), processor("b"));
    let routing: offsession_orchestrator::RoutingConfig = serde_json::from_value(json!({
        "rules": [{"name": "small", "when": {"amount_max": 1000}, "processors": ["a"]}],
        "default": {"processors": ["b"]},
    }))
    .unwrap();
    let engine = Engine::builder()
        .processor(a.clone())
        .processor(b.clone())
        .routing(routing)
        .store(store.clone())
        .clock(Arc::new(SystemClock))
        .events(Arc::new(CollectEvents::new()))
        .build()
        .unwrap();
    let body = |amount: i64| {
        json!({
            "amount": {"value": amount, "currency": "usd"},
            "cadence": "recurring",
            "customer": "cus_123",
            "payment_method": "pm_routed",
        })
        .to_string()
    };
    let small = engine
        .create_json(body(500).as_bytes(), None)
        .await
        .unwrap()
        .id;
    engine.run_due().await.unwrap();
    let small = engine.record(&small).await.unwrap();
    assert_eq!(small.processor, "a");
    assert_eq!(
        small.payment.failure_reason,
        Some(FailureReason::RejectedByPartner)
    );
    assert_eq!(a.sends.load(Ordering::SeqCst), 1);

    let large = engine
        .create_json(body(2000).as_bytes(), None)
        .await
        .unwrap()
        .id;
    engine.run_due().await.unwrap();
    let large = engine.record(&large).await.unwrap();
    assert_eq!(large.processor, "b");
    assert_eq!(b.sends.load(Ordering::SeqCst), 0, "sent to a barred card");
    assert_eq!(
        large.payment.failure_reason,
        Some(FailureReason::RejectedByPartner)
    );
    assert_eq!(large.payment.retry_details.attempts, 0);
    let stored = store.get(&large.payment.id).await.unwrap().unwrap();
    assert_eq!(stored.card_key(), "card:a:fp_routed");
}

/// Nothing is sent after the payment's deadlines, however late it is claimed (a
/// worker that was down): a first attempt after `capture.capture_before` (an
/// authorization that could not be captured), a retry after `retry_until`.
#[tokio::test]
async fn nothing_is_sent_after_the_deadlines_when_claimed_late() {
    let clock = Arc::new(offsession_core::ManualClock::new(start()));
    let processor = Arc::new(Altered::new(mock()));
    let engine = Engine::builder()
        .processor(processor.clone())
        .store(Arc::new(MemoryStore::new()))
        .clock(clock.clone())
        .build()
        .unwrap();
    let hour = Duration::from_secs(3_600);
    let create = |body: serde_json::Value| {
        let engine = engine.clone();
        async move {
            engine
                .create_json(body.to_string().as_bytes(), None)
                .await
                .unwrap()
                .id
        }
    };
    let manual = create(json!({
        "amount": {"value": 2000, "currency": "usd"},
        "cadence": "recurring",
        "customer": "cus_123",
        "payment_method": "pm_card_visa",
        "capture": {"capture_method": "manual", "capture_before": start().plus(hour).to_string()},
    }))
    .await;
    let retried = create(json!({
        "amount": {"value": 2000, "currency": "usd"},
        "cadence": "recurring",
        "customer": "cus_123",
        "payment_method": "pm_card_visa_chargeDeclinedInsufficientFunds_recoversAfter1",
        "retry_details": {"retry_until": start().plus(2 * DAY).to_string()},
    }))
    .await;
    // The worker is down past `capture_before`; only the card without one is tried.
    clock.set(start().plus(2 * hour));
    engine.run_due().await.unwrap();
    let p = engine.retrieve(&manual).await.unwrap();
    assert_eq!(p.status, PaymentStatus::Failed);
    assert_eq!(p.failure_reason, Some(FailureReason::ExceededRetryWindow));
    assert_eq!(p.retry_details.attempts, 0);
    assert_eq!(
        processor.sends.load(Ordering::SeqCst),
        1,
        "only the retried card"
    );
    let p = engine.retrieve(&retried).await.unwrap();
    assert_eq!(p.status, PaymentStatus::PendingRetry);
    // Its retry falls before `retry_until`, but the worker is down until after it.
    clock.set(start().plus(5 * DAY));
    engine.run_due().await.unwrap();
    let p = engine.retrieve(&retried).await.unwrap();
    assert_eq!(p.status, PaymentStatus::Failed);
    assert_eq!(p.failure_reason, Some(FailureReason::ExceededRetryWindow));
    assert_eq!(p.retry_details.attempts, 1);
    assert_eq!(processor.sends.load(Ordering::SeqCst), 1, "no retry sent");
}

/// An attempt whose replays keep answering "unknown" (a processor replaying a stored
/// error under the key) is settled by what the processor's records say: here the
/// charge was made, and the payment succeeds instead of failing after the key's window
/// while the customer was charged.
#[tokio::test]
async fn an_attempt_replayed_unknown_is_settled_by_the_processors_records() {
    let reference = offsession_core::ProcessorReference {
        payment: Some("pi_found".into()),
        charge: Some("ch_found".into()),
    };
    let alter = Altered {
        answer: Some(AttemptOutcome::Unknown {
            message: "stripe 500 api_error (replayed)".into(),
        }),
        found: Some(AttemptOutcome::Approved {
            reference: reference.clone(),
        }),
        ..Altered::new(mock())
    };
    let (h, processor) = altered(alter, EngineConfig::default()).await;
    let p = h.create(h.body("pm_card_visa")).await;
    h.advance(Duration::ZERO).await;
    assert_eq!(h.get(&p.id).await.status, PaymentStatus::Processing);
    h.advance(DAY).await;
    let done = h.get(&p.id).await;
    assert_eq!(done.status, PaymentStatus::Succeeded);
    assert_eq!(done.retry_details.attempts, 1);
    assert_eq!(
        processor.sends.load(Ordering::SeqCst),
        2,
        "one send, one replay"
    );
}

/// A capture that answers an error after the processor captured (a lost answer, or
/// an error Stripe stored under the key and repeats to every retry) is recorded as
/// the capture it was, not refused while the customer's money was taken.
#[tokio::test]
async fn a_capture_that_errs_after_capturing_is_recorded() {
    let alter = Altered {
        capture_then_fails: true,
        ..Altered::new(mock())
    };
    let (h, _) = altered(alter, EngineConfig::default()).await;
    let mut body = h.body("pm_card_visa");
    body["capture"] = json!({"capture_method": "manual"});
    let p = h.create(body).await;
    h.advance(Duration::ZERO).await;
    assert_eq!(h.get(&p.id).await.status, PaymentStatus::RequiresCapture);
    let captured = h.engine.capture(&p.id, None).await.unwrap();
    assert_eq!(captured.status, PaymentStatus::Succeeded);
    assert_eq!(h.get(&p.id).await.status, PaymentStatus::Succeeded);
}

/// An authorization the processor reports released already (expired there) fails the
/// payment at its expiry without a cancel, which the processor would refuse: it is not
/// kept `requires_capture` and tried hourly for the replay deadline.
#[tokio::test]
async fn an_authorization_released_at_the_processor_expires_at_once() {
    let alter = Altered {
        released_already: true,
        ..Altered::new(mock())
    };
    let (h, _) = altered(alter, EngineConfig::default()).await;
    let mut body = h.body("pm_card_visa");
    let before = start().plus(Duration::from_secs(3_600));
    body["capture"] = json!({"capture_method": "manual", "capture_before": before.to_string()});
    let p = h.create(body).await;
    h.advance(Duration::ZERO).await;
    assert_eq!(h.get(&p.id).await.status, PaymentStatus::RequiresCapture);
    h.advance(Duration::from_secs(2 * 3_600)).await;
    let p = h.get(&p.id).await;
    assert_eq!(p.status, PaymentStatus::Failed);
    assert_eq!(p.failure_reason, Some(FailureReason::AuthorizationExpired));
}

/// A test clock's advance that finds a due payment its claim skips for a moment (a
/// row another transaction has locked, which Postgres' `SKIP LOCKED` passes over)
/// looks again instead of jumping to the target time: the payment is attempted at its
/// time, in this advance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advance_waits_for_a_due_payment_its_claim_skipped() {
    let (engine, store, _mock, _) = slow_renewal_engine(None, 0).await;
    let clock = engine.create_test_clock(start()).await.unwrap().id;
    let body = json!({
        "amount": {"value": 2000, "currency": "usd"},
        "cadence": "recurring",
        "customer": "cus_123",
        "payment_method": "pm_card_visa",
        "test_clock": clock,
    });
    let p = engine
        .create_json(body.to_string().as_bytes(), None)
        .await
        .unwrap();
    store.empty_claims.store(3, Ordering::SeqCst);
    engine
        .advance_test_clock(&clock, start().plus(DAY))
        .await
        .unwrap();
    let record = store.get(&p.id).await.unwrap().unwrap();
    assert_eq!(record.payment.status, PaymentStatus::Succeeded);
    assert_eq!(
        record.attempts[0].started_at,
        start(),
        "attempted at its time"
    );
}

/// A fault's replay that the deadline stops is filed as the fault it was: the attempt
/// is answered (nothing charged), so the network caps do not count it as a decline
/// awaiting its answer for thirty days.
#[tokio::test]
async fn a_fault_replay_stopped_by_the_deadline_ends_answered() {
    let clock = Arc::new(offsession_core::ManualClock::new(start()));
    let processor = Arc::new(Altered {
        answer: Some(AttemptOutcome::fault(
            offsession_core::FaultKind::Unavailable,
            "503",
        )),
        ..Altered::new(mock())
    });
    let store = Arc::new(MemoryStore::new());
    let engine = Engine::builder()
        .processor(processor.clone())
        .store(store.clone())
        .clock(clock.clone())
        .build()
        .unwrap();
    let body = json!({
        "amount": {"value": 2000, "currency": "usd"},
        "cadence": "recurring",
        "customer": "cus_123",
        "payment_method": "pm_card_mastercard",
        "retry_details": {"retry_until": start().plus(Duration::from_secs(600)).to_string()},
    });
    let p = engine
        .create_json(body.to_string().as_bytes(), None)
        .await
        .unwrap();
    engine.run_due().await.unwrap();
    let record = store.get(&p.id).await.unwrap().unwrap();
    assert!(record.replay_pending, "the fault is to be replayed");
    clock.set(start().plus(DAY));
    engine.run_due().await.unwrap();
    let record = store.get(&p.id).await.unwrap().unwrap();
    assert_eq!(record.payment.status, PaymentStatus::Failed);
    assert_eq!(
        record.payment.failure_reason,
        Some(FailureReason::ExceededRetryWindow)
    );
    assert_eq!(processor.sends.load(Ordering::SeqCst), 1);
    assert!(record.attempts[0].answered(), "{:?}", record.attempts[0]);
}

/// The card's history follows it across a change of the fingerprint's processor (a
/// reordered configuration, or records from before the key named that processor):
/// a payment keyed `card:a:…` still finds the advice 21 filed under `card:b:…` by a
/// payment on its own processor `b`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cards_history_survives_a_change_of_the_fingerprints_processor() {
    let store = Arc::new(MemoryStore::new());
    let processor = |id: &str| {
        let mut codes = offsession_core::DeclineCodes::new("card_declined", Some("do_not_honor"));
        codes.network_advice_code = Some("21".into());
        Arc::new(Altered {
            answer: Some(AttemptOutcome::Declined {
                codes,
                reference: Default::default(),
            }),
            ..Altered::new(Arc::new(MockProcessor::new(
                id,
                vault(
                    "[[payment_methods]]\nid = \"pm_moved\"\ncustomer = \"cus_123\"\nbrand = \"mastercard\"\nfingerprint = \"fp_moved\"",
                ),
            )))
        })
    };
    let engine_with = |order: [&Arc<Altered>; 2]| {
        let routing: offsession_orchestrator::RoutingConfig =
            serde_json::from_value(json!({"default": {"processors": ["b"]}})).unwrap();
        Engine::builder()
            .processor(order[0].clone())
            .processor(order[1].clone())
            .routing(routing)
            .store(store.clone())
            .clock(Arc::new(SystemClock))
            .events(Arc::new(CollectEvents::new()))
            .build()
            .unwrap()
    };
    let body = json!({
        "amount": {"value": 2000, "currency": "usd"},
        "cadence": "recurring",
        "customer": "cus_123",
        "payment_method": "pm_moved",
    })
    .to_string();
    let (a, b) = (processor("a"), processor("b"));
    // `b` listed first: its fingerprint, key `card:b:fp_moved`.
    let before = engine_with([&b, &a]);
    let first = before.create_json(body.as_bytes(), None).await.unwrap().id;
    before.run_due().await.unwrap();
    let first = store.get(&first).await.unwrap().unwrap();
    assert_eq!(first.card_key(), "card:b:fp_moved");
    assert_eq!(
        first.payment.failure_reason,
        Some(FailureReason::RejectedByPartner)
    );
    assert_eq!(b.sends.load(Ordering::SeqCst), 1);
    // Reordered: `a` reads the fingerprint; the payment still goes to `b`.
    let after = engine_with([&a, &b]);
    let second = after.create_json(body.as_bytes(), None).await.unwrap().id;
    after.run_due().await.unwrap();
    let second = store.get(&second).await.unwrap().unwrap();
    assert_eq!(second.card_key(), "card:a:fp_moved");
    assert_eq!(b.sends.load(Ordering::SeqCst), 1, "sent to a barred card");
    assert_eq!(
        second.payment.failure_reason,
        Some(FailureReason::RejectedByPartner)
    );
    assert_eq!(second.payment.retry_details.attempts, 0);
}

/// A capture the processor refused with an error stored under its key (the
/// authorization still held) is tried again under a new key: the same key would be
/// answered the same error until the key expires, and the authorization with it.
#[tokio::test]
async fn a_capture_refused_under_its_key_is_retried_under_a_new_one() {
    let (h, processor) = altered(Altered::new(mock()), EngineConfig::default()).await;
    let mut body = h.body("pm_card_visa");
    body["capture"] = json!({"capture_method": "manual"});
    let p = h.create(body).await;
    h.advance(Duration::ZERO).await;
    let first_key = format!("{}:capture", p.id);
    processor
        .refused_capture_keys
        .lock()
        .unwrap()
        .push(first_key.clone());
    assert!(h.engine.capture(&p.id, None).await.is_err());
    let captured = h.engine.capture(&p.id, None).await.unwrap();
    assert_eq!(captured.status, PaymentStatus::Succeeded);
    assert_eq!(
        *processor.capture_keys.lock().unwrap(),
        [first_key, format!("{}:capture:1", p.id)]
    );
}

/// A fault's replay is counted by the network rules from when it is sent, as the
/// issuer sees it: the attempt's time moves to the replay's, so a decline answered to
/// a replay hours later stays in Mastercard's 24-hour window for 24 hours from then.
#[tokio::test]
async fn a_fault_replay_counts_from_its_send() {
    let alter = Altered {
        faults_first: AtomicU32::new(1),
        ..Altered::new(mock())
    };
    let (h, processor) = altered(alter, EngineConfig::default()).await;
    let p = h.create(h.body("pm_card_mastercard")).await;
    h.advance(Duration::ZERO).await;
    let first = h.store.get(&p.id).await.unwrap().unwrap();
    assert!(first.replay_pending, "the fault is to be replayed");
    h.advance(Duration::from_secs(3_600)).await;
    let done = h.store.get(&p.id).await.unwrap().unwrap();
    assert_eq!(done.payment.status, PaymentStatus::Succeeded);
    assert_eq!(processor.sends.load(Ordering::SeqCst), 2);
    assert!(
        done.attempts[0].started_at > start(),
        "counted from the replay's send: {:?}",
        done.attempts[0]
    );
}

/// A test clock advanced while a capture is under way on one of its payments waits for
/// the capture: its hold is on the clock's time, and passing it would expire the
/// authorization being captured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advance_waits_for_a_capture_under_way_on_its_clock() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let alter = Altered {
        capture_gate: Some(gate.clone()),
        ..Altered::new(mock())
    };
    let (h, _) = altered(alter, EngineConfig::default()).await;
    let p = held_for_an_hour(&h).await;
    h.advance(Duration::from_secs(1_800)).await;
    let capturing = tokio::spawn({
        let (engine, id) = (h.engine.clone(), p.id.clone());
        async move { engine.capture(&id, None).await }
    });
    let mut held = false;
    for _ in 0..200 {
        if h.store.get(&p.id).await.unwrap().unwrap().lease.is_some() {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(held, "the capture did not hold the payment");
    let advancing = tokio::spawn({
        let (engine, clock) = (h.engine.clone(), h.clock.clone());
        let to = start().plus(Duration::from_secs(3 * 3_600));
        async move { engine.advance_test_clock(&clock, to).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.store.get(&p.id).await.unwrap().unwrap().payment.status,
        PaymentStatus::RequiresCapture,
        "not expired under the capture"
    );
    gate.notify_one();
    let captured = capturing.await.unwrap().unwrap();
    assert_eq!(captured.status, PaymentStatus::Succeeded);
    advancing.await.unwrap().unwrap();
    assert_eq!(h.get(&p.id).await.status, PaymentStatus::Succeeded);
}

/// A fault's replay is checked against the card's caps like any send the issuer
/// sees: a Mastercard card that took ten declines since (the first send's slot having
/// aged out of the 24 hours) does not get the replay as an eleventh.
#[tokio::test]
async fn a_fault_replay_is_checked_against_the_cards_caps() {
    let alter = Altered {
        faults_first: AtomicU32::new(1),
        answer: Some(AttemptOutcome::Declined {
            codes: offsession_core::DeclineCodes::new("card_declined", Some("do_not_honor")),
            reference: Default::default(),
        }),
        ..Altered::new(mock())
    };
    let config = EngineConfig {
        replay_backoff: vec![Duration::from_secs(25 * 3_600)],
        ..EngineConfig::default()
    };
    let (h, processor) = altered(alter, config).await;
    let faulted = h.create(h.body("pm_card_mastercard")).await;
    h.advance(Duration::ZERO).await;
    assert!(
        h.store
            .get(&faulted.id)
            .await
            .unwrap()
            .unwrap()
            .replay_pending
    );
    h.advance(Duration::from_secs(24 * 3_600 + 60)).await;
    for _ in 0..10 {
        h.create(h.body("pm_card_mastercard")).await;
    }
    h.advance(Duration::ZERO).await;
    let before = processor.sends.load(Ordering::SeqCst);
    assert_eq!(before, 11, "the fault, then ten declines");
    h.advance(Duration::from_secs(3_600)).await;
    assert_eq!(
        processor.sends.load(Ordering::SeqCst),
        before,
        "the replay would be the card's eleventh decline in 24 hours"
    );
    let record = h.store.get(&faulted.id).await.unwrap().unwrap();
    assert!(record.replay_pending, "deferred, still to be replayed");
}
