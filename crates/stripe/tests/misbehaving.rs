//! The adapter against a misbehaving Stripe (or whatever sits in front of it): garbage
//! and half-read answers, unknown statuses, objects of the wrong kind, redirects, huge
//! bodies, refusals. The rules checked:
//!
//! - nothing is a decline unless Stripe answered a decline (402, or a PaymentIntent in
//!   `requires_payment_method`);
//! - an answer that cannot be read is `Unknown` (money may have moved);
//! - a refusal is a non-retryable fault;
//! - the money property: replaying `authorize` with the same idempotency key after an
//!   `Unknown` never creates a second charge.

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use common::*;
use offsession_core::{
    AttemptOutcome, AuthorizeRequest, CancelRequest, CaptureRequest, ErrorCode, OffSessionPayment,
    Processor, ProcessorReference,
};
use offsession_store::conformance::sample_record;
use offsession_stripe::{StripeProcessor, MAX_QUOTED_CHARS};
use serde_json::json;

/// The longest message the adapter may produce from an answer (quoted text is capped at
/// `MAX_QUOTED_CHARS`; a little framing around it).
const MAX_MESSAGE_CHARS: usize = MAX_QUOTED_CHARS + 100;

/// Ten megabytes.
const HUGE: usize = 10 * 1024 * 1024;

fn payment(pm: &str) -> OffSessionPayment {
    let mut payment = sample_record("osp_bad_1", 1_767_225_600_000, None).payment;
    payment.payment_method = pm.into();
    payment.customer = "cus_1".into();
    payment
}

const KEY_1: &str = "osp_bad_1:attempt:1";

async fn authorize_with(processor: &StripeProcessor, pm: &str) -> AttemptOutcome {
    let p = payment(pm);
    let request = AuthorizeRequest {
        payment: &p,
        attempt_number: 1,
        idempotency_key: KEY_1,
    };
    tokio::time::timeout(Duration::from_secs(20), processor.authorize(request))
        .await
        .expect("authorize returns")
}

/// A processor with no transport retries and a timeout long enough that the
/// misbehaviour, not the clock, decides the outcome (even on a busy machine).
fn patient(fake: &Fake) -> StripeProcessor {
    StripeProcessor::new(patient_config(fake.addr)).unwrap()
}

fn patient_config(addr: SocketAddr) -> offsession_stripe::StripeConfig {
    let mut config = Fake::config_for(addr);
    config.max_network_retries = 0;
    config.request_timeout = Duration::from_secs(10);
    config
}

fn is_unknown(outcome: &AttemptOutcome) -> bool {
    matches!(outcome, AttemptOutcome::Unknown { .. })
}

fn is_refusal(outcome: &AttemptOutcome) -> bool {
    matches!(
        outcome,
        AttemptOutcome::ProcessorFault {
            kind: offsession_core::FaultKind::Refused,
            ..
        }
    )
}

fn message(outcome: &AttemptOutcome) -> &str {
    match outcome {
        AttemptOutcome::Unknown { message } | AttemptOutcome::ProcessorFault { message, .. } => {
            message
        }
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Runs one misbehaviour on a first attempt, then replays it with the same key, as the
/// engine does after `Unknown`; returns both outcomes and the fake.
async fn misbehave_then_replay(script: Script) -> (AttemptOutcome, AttemptOutcome, Fake) {
    let fake = Fake::start().await;
    fake.script("pm_x", vec![script]);
    let processor = patient(&fake);
    let first = authorize_with(&processor, "pm_x").await;
    let replay = authorize_with(&processor, "pm_x").await;
    (first, replay, fake)
}

/// The checks every misbehaviour after which Stripe did charge must pass.
async fn assert_unknown_then_one_charge(script: Script) {
    let label = format!("{script:?}");
    let label = &label[..label.len().min(120)];
    let (first, replay, fake) = misbehave_then_replay(script).await;
    assert!(is_unknown(&first), "{label}: {first:?}");
    assert!(
        message(&first).chars().count() <= MAX_MESSAGE_CHARS,
        "{label}: message of {} chars",
        message(&first).chars().count()
    );
    assert_eq!(
        replay,
        AttemptOutcome::Approved {
            reference: ProcessorReference {
                payment: Some("pi_fake_1".into()),
                charge: Some("ch_fake_1".into()),
            }
        },
        "{label}: the replay reads the real charge"
    );
    assert_eq!(fake.charges_created(), 1, "{label}: charged once");
    let keys: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/payment_intents")
        .map(|r| r.idempotency_key)
        .collect();
    assert!(
        keys.iter().all(|k| k.as_deref() == Some(KEY_1)),
        "{label}: {keys:?}"
    );
}

// ----- unreadable 200s are Unknown, never declines; the replay charges once --------------

#[tokio::test]
async fn a_garbage_200_is_unknown_and_the_replay_charges_once() {
    for body in garbage_bodies() {
        assert_unknown_then_one_charge(Script::Garbage(body)).await;
    }
}

#[tokio::test]
async fn a_200_without_status_is_unknown_and_the_replay_charges_once() {
    assert_unknown_then_one_charge(Script::MissingStatus).await;
}

#[tokio::test]
async fn a_200_with_an_unknown_status_is_unknown_not_a_decline() {
    for status in ["requires_review", "partially_funded", "", "SUCCEEDED"] {
        assert_unknown_then_one_charge(Script::UnknownStatus(status.into())).await;
    }
}

#[tokio::test]
async fn a_200_with_the_wrong_object_or_no_id_is_unknown() {
    for object in [Some("charge"), Some("list"), Some("setup_intent"), None] {
        assert_unknown_then_one_charge(Script::WrongObject(object.map(str::to_owned))).await;
    }
    assert_unknown_then_one_charge(Script::MissingId).await;
}

#[tokio::test]
async fn a_huge_200_is_unknown_capped_and_does_not_hang() {
    let started = std::time::Instant::now();
    assert_unknown_then_one_charge(Script::Huge(200, HUGE)).await;
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test]
async fn a_hang_after_charging_is_unknown_and_the_replay_charges_once() {
    let fake = Fake::start().await;
    fake.script(
        "pm_x",
        vec![Script::Hang(
            Duration::from_secs(2),
            Box::new(Script::Succeed),
        )],
    );
    let mut config = fake.config();
    config.max_network_retries = 0;
    let processor = StripeProcessor::new(config).unwrap();
    let first = authorize_with(&processor, "pm_x").await;
    assert!(is_unknown(&first), "{first:?}");
    let replay = authorize_with(&processor, "pm_x").await;
    assert!(
        matches!(replay, AttemptOutcome::Approved { .. }),
        "{replay:?}"
    );
    assert_eq!(fake.charges_created(), 1);
}

// ----- error statuses: refusals, server errors, real declines ----------------------------

#[tokio::test]
async fn refusals_are_non_retryable_faults_and_charge_nothing() {
    for status in [400, 401, 403, 404] {
        let fake = Fake::start().await;
        fake.script(
            "pm_x",
            vec![Script::Error(
                status,
                json!({"type": "invalid_request_error", "message": "refused"}),
                None,
            )],
        );
        let outcome = authorize_with(&fake.processor(), "pm_x").await;
        assert!(is_refusal(&outcome), "{status}: {outcome:?}");
        assert_eq!(fake.charges_created(), 0);
        assert_eq!(fake.requests().len(), 1, "{status}: not retried");
    }
}

#[tokio::test]
async fn a_server_error_is_unknown_not_a_decline() {
    let (first, _, fake) = misbehave_then_replay(Script::Error(
        500,
        json!({"type": "api_error", "message": "boom"}),
        None,
    ))
    .await;
    assert!(is_unknown(&first), "{first:?}");
    assert_eq!(fake.charges_created(), 0);
}

#[tokio::test]
async fn only_a_402_is_a_decline() {
    let (first, replay, fake) = misbehave_then_replay(Script::Error(
        402,
        card_error("card_declined", Some("insufficient_funds")),
        None,
    ))
    .await;
    assert!(
        matches!(first, AttemptOutcome::Declined { .. }),
        "{first:?}"
    );
    assert_eq!(first, replay);
    assert_eq!(fake.charges_created(), 0);
}

#[tokio::test]
async fn huge_error_bodies_keep_their_status_class_with_a_capped_message() {
    for (status, unknown) in [(400, false), (500, true)] {
        let fake = Fake::start().await;
        fake.script("pm_x", vec![Script::Huge(status, HUGE)]);
        let started = std::time::Instant::now();
        let outcome = authorize_with(&patient(&fake), "pm_x").await;
        assert!(started.elapsed() < Duration::from_secs(15));
        if unknown {
            assert!(is_unknown(&outcome), "{status}: {outcome:?}");
        } else {
            assert!(is_refusal(&outcome), "{status}: {outcome:?}");
        }
        let message = message(&outcome);
        assert!(
            message.chars().count() <= MAX_MESSAGE_CHARS,
            "{status}: message of {} chars",
            message.chars().count()
        );
        assert!(message.contains(&status.to_string()), "{message}");
        assert!(message.contains("truncated"), "{message}");
        assert_eq!(fake.charges_created(), 0);
    }
}

// ----- redirects are never followed --------------------------------------------------------

#[tokio::test]
async fn a_redirect_is_never_followed_and_is_a_non_retryable_fault() {
    let elsewhere = Fake::start().await;
    for status in [301, 302, 303, 307, 308] {
        for location in [
            "/elsewhere/v1/payment_intents".to_owned(),
            format!("http://{}/elsewhere/v1/payment_intents", elsewhere.addr),
        ] {
            let fake = Fake::start().await;
            fake.script("pm_x", vec![Script::Redirect(status, location.clone())]);
            let outcome = authorize_with(&fake.processor(), "pm_x").await;
            assert!(is_refusal(&outcome), "{status} {location}: {outcome:?}");
            let message = message(&outcome);
            assert!(message.contains(&status.to_string()), "{message}");
            assert!(message.contains(&location), "{message}");
            assert_eq!(fake.requests().len(), 1, "{status}: sent once, not retried");
            assert_eq!(fake.redirect_hits(), 0, "{status}: not followed");
            assert_eq!(fake.charges_created(), 0);
        }
    }
    assert!(
        elsewhere.requests().is_empty(),
        "nothing reached the other host"
    );
    assert_eq!(elsewhere.charges_created(), 0);
}

// ----- a Stripe that answers every request the same way ----------------------------------

/// Answers every request with one canned reply; counts what arrives, and what arrives
/// at `/elsewhere/…` (where its redirects point).
#[derive(Clone)]
struct Canned {
    state: Arc<Mutex<CannedState>>,
    addr: SocketAddr,
}

/// Status, headers, body.
type Reply = (u16, Vec<(String, String)>, String);

struct CannedState {
    replies: VecDeque<Reply>,
    fallback: Reply,
    seen: Vec<String>,
    elsewhere: u32,
}

async fn canned_reply(State(canned): State<Canned>, uri: Uri, _headers: HeaderMap) -> Response {
    let mut state = canned.state.lock().unwrap();
    state.seen.push(uri.to_string());
    if uri.path().starts_with("/elsewhere") {
        state.elsewhere += 1;
        return (StatusCode::OK, "{}").into_response();
    }
    let (status, headers, body) = state
        .replies
        .pop_front()
        .unwrap_or_else(|| state.fallback.clone());
    let mut response = (StatusCode::from_u16(status).unwrap(), body).into_response();
    for (name, value) in headers {
        response.headers_mut().insert(
            HeaderName::try_from(name).unwrap(),
            HeaderValue::try_from(value).unwrap(),
        );
    }
    response
}

impl Canned {
    async fn start(status: u16, headers: &[(&str, &str)], body: String) -> Canned {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let headers = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let canned = Canned {
            state: Arc::new(Mutex::new(CannedState {
                replies: VecDeque::new(),
                fallback: (status, headers, body),
                seen: Vec::new(),
                elsewhere: 0,
            })),
            addr: listener.local_addr().unwrap(),
        };
        let app = Router::new()
            .fallback(canned_reply)
            .with_state(canned.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        canned
    }

    fn processor(&self) -> StripeProcessor {
        StripeProcessor::new(patient_config(self.addr)).unwrap()
    }

    fn seen(&self) -> Vec<String> {
        self.state.lock().unwrap().seen.clone()
    }

    fn elsewhere(&self) -> u32 {
        self.state.lock().unwrap().elsewhere
    }
}

fn reference() -> ProcessorReference {
    ProcessorReference {
        payment: Some("pi_1".into()),
        charge: None,
    }
}

async fn capture_and_cancel(processor: &StripeProcessor) -> (String, String) {
    let p = payment("pm_x");
    let reference = reference();
    let capture = processor
        .capture(CaptureRequest {
            payment: &p,
            reference: &reference,
            amount: p.amount_requested,
            idempotency_key: "osp_bad_1:capture",
        })
        .await
        .expect_err("capture fails");
    let cancel = processor
        .cancel(CancelRequest {
            payment: &p,
            reference: &reference,
            idempotency_key: "osp_bad_1:cancel",
        })
        .await
        .expect_err("cancel fails");
    (capture.message, cancel.message)
}

#[tokio::test]
async fn preflight_capture_and_cancel_never_follow_a_redirect() {
    for status in [301, 302, 307, 308] {
        let stripe = Canned::start(
            status,
            &[("location", "/elsewhere/v1/anything")],
            String::new(),
        )
        .await;
        let processor = stripe.processor();
        let err = processor.preflight(&payment("pm_x")).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::ApiError, "{status}: {err:?}");
        assert!(err.message.contains(&status.to_string()), "{}", err.message);
        assert!(
            err.message.contains("/elsewhere/v1/anything"),
            "{}",
            err.message
        );
        let (capture, cancel) = capture_and_cancel(&processor).await;
        for message in [capture, cancel] {
            assert!(message.contains(&status.to_string()), "{message}");
            assert!(message.contains("/elsewhere/v1/anything"), "{message}");
        }
        assert_eq!(stripe.elsewhere(), 0, "{status}: a redirect was followed");
        assert_eq!(stripe.seen().len(), 3, "{:?}", stripe.seen());
    }
}

#[tokio::test]
async fn preflight_capture_and_cancel_cap_huge_error_bodies() {
    for status in [400, 500] {
        let stripe = Canned::start(status, &[], "y".repeat(HUGE)).await;
        let processor = stripe.processor();
        let started = std::time::Instant::now();
        let err = processor.preflight(&payment("pm_x")).await.unwrap_err();
        assert!(
            err.message.chars().count() <= MAX_MESSAGE_CHARS,
            "{} chars",
            err.message.chars().count()
        );
        let (capture, cancel) = capture_and_cancel(&processor).await;
        for message in [capture, cancel] {
            assert!(
                message.chars().count() <= MAX_MESSAGE_CHARS,
                "{} chars",
                message.chars().count()
            );
            assert!(message.contains(&status.to_string()), "{message}");
        }
        assert!(started.elapsed() < Duration::from_secs(15));
    }
}

#[tokio::test]
async fn a_huge_payment_method_is_not_read() {
    let stripe = Canned::start(
        200,
        &[("content-type", "application/json")],
        format!(
            "{{\"id\": \"pm_x\", \"object\": \"payment_method\", \"type\": \"card\", \"pad\": \"{}\"}}",
            "z".repeat(HUGE)
        ),
    )
    .await;
    let err = stripe
        .processor()
        .preflight(&payment("pm_x"))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::ApiError);
    assert!(err.message.chars().count() <= MAX_MESSAGE_CHARS);
}

// ----- a processing PaymentIntent whose lookup misbehaves ---------------------------------

#[tokio::test]
async fn a_processing_intent_whose_lookup_is_unreadable_stays_unknown() {
    let processing = json!({
        "id": "pi_1", "object": "payment_intent", "status": "processing",
    })
    .to_string();
    let lookups = [
        (200, "<html>oops</html>".to_owned()),
        (
            200,
            json!({"id": "pi_1", "object": "payment_intent", "status": "requires_review"})
                .to_string(),
        ),
        (
            200,
            json!({"id": "pi_1", "object": "payment_intent"}).to_string(),
        ),
        (
            200,
            json!({"id": "ch_1", "object": "charge", "status": "failed"}).to_string(),
        ),
        (
            200,
            json!({"id": "pi_2", "object": "payment_intent", "status": "canceled"}).to_string(),
        ),
        (302, String::new()),
        (500, "{}".to_owned()),
    ];
    for (status, body) in lookups {
        let stripe = Canned::start(status, &[("location", "/elsewhere/x")], body.clone()).await;
        stripe
            .state
            .lock()
            .unwrap()
            .replies
            .push_back((200, Vec::new(), processing.clone()));
        let outcome = authorize_with(&stripe.processor(), "pm_x").await;
        assert!(is_unknown(&outcome), "{status} {body}: {outcome:?}");
        assert_eq!(stripe.elsewhere(), 0);
    }
}

#[tokio::test]
async fn a_processing_intent_that_fails_on_lookup_is_a_decline() {
    let stripe = Canned::start(
        200,
        &[],
        json!({"id": "pi_1", "object": "payment_intent", "status": "requires_payment_method",
               "last_payment_error": {"type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds"}})
        .to_string(),
    )
    .await;
    stripe.state.lock().unwrap().replies.push_back((
        200,
        Vec::new(),
        json!({"id": "pi_1", "object": "payment_intent", "status": "processing"}).to_string(),
    ));
    let outcome = authorize_with(&stripe.processor(), "pm_x").await;
    let AttemptOutcome::Declined { codes, .. } = &outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(codes.decline_code.as_deref(), Some("insufficient_funds"));
    assert_eq!(
        stripe.seen(),
        vec![
            "/v1/payment_intents".to_owned(),
            "/v1/payment_intents/pi_1".to_owned()
        ]
    );
}

#[tokio::test]
async fn a_processing_intent_is_looked_up_by_its_id_as_one_segment() {
    // The id comes from Stripe's answer; it is encoded like any other.
    let id = "pi_1/../../v1/payment_intents?x=1#y %";
    let stripe = Canned::start(
        200,
        &[],
        json!({"id": id, "object": "payment_intent", "status": "succeeded"}).to_string(),
    )
    .await;
    stripe.state.lock().unwrap().replies.push_back((
        200,
        Vec::new(),
        json!({"id": id, "object": "payment_intent", "status": "processing"}).to_string(),
    ));
    let outcome = authorize_with(&stripe.processor(), "pm_x").await;
    assert!(
        matches!(outcome, AttemptOutcome::Approved { .. }),
        "{outcome:?}"
    );
    assert_eq!(
        stripe.seen(),
        vec![
            "/v1/payment_intents".to_owned(),
            "/v1/payment_intents/pi_1%2F..%2F..%2Fv1%2Fpayment_intents%3Fx%3D1%23y%20%25"
                .to_owned()
        ]
    );
}
