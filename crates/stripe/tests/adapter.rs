//! The Stripe adapter against a fake Stripe on loopback: one test per mapping.

mod common;

use std::time::Duration;

use common::*;
use offsession_core::{
    AttemptOutcome, AuthorizeRequest, CancelRequest, CaptureMethod, CaptureRequest, CardBrand,
    DeclineCategory, ErrorCode, OffSessionPayment, PaymentMethodType, Processor,
    ProcessorReference,
};
use offsession_retry::DeclineTable;
use offsession_store::conformance::sample_record;
use serde_json::json;

fn payment(pm: &str) -> OffSessionPayment {
    let mut payment = sample_record("osp_test_1", 1_767_225_600_000, None).payment;
    payment.payment_method = pm.into();
    payment.customer = "cus_1".into();
    payment.metadata.insert("invoice".into(), "in_1".into());
    payment
}

async fn authorize(fake: &Fake, payment: &OffSessionPayment, n: u32) -> AttemptOutcome {
    let key = format!("{}:attempt:{n}", payment.id);
    fake.processor()
        .authorize(AuthorizeRequest {
            payment,
            attempt_number: n,
            idempotency_key: &key,
        })
        .await
}

fn category(outcome: &AttemptOutcome, brand: &str) -> DeclineCategory {
    match outcome {
        AttemptOutcome::Declined { codes, .. } => {
            DeclineTable::standard().classify(codes, Some(&CardBrand::from_name(brand)))
        }
        other => panic!("expected a decline, got {other:?}"),
    }
}

#[tokio::test]
async fn an_approved_charge_carries_the_payment_intent_and_charge() {
    let fake = Fake::start().await;
    let p = payment("pm_ok");
    let outcome = authorize(&fake, &p, 1).await;
    assert_eq!(
        outcome,
        AttemptOutcome::Approved {
            reference: ProcessorReference {
                payment: Some("pi_fake_1".into()),
                charge: Some("ch_fake_1".into())
            }
        }
    );
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.idempotency_key.as_deref(), Some("osp_test_1:attempt:1"));
    assert_eq!(r.stripe_version.as_deref(), Some("2022-11-15"));
    assert_eq!(r.authorization.as_deref(), Some(&*format!("Bearer {KEY}")));
    let form: std::collections::HashMap<_, _> = r.form.iter().cloned().collect();
    assert_eq!(form["confirm"], "true");
    assert_eq!(form["off_session"], "recurring");
    assert_eq!(form["amount"], "2000");
    assert_eq!(form["currency"], "usd");
    assert_eq!(form["customer"], "cus_1");
    assert_eq!(form["metadata[invoice]"], "in_1");
    assert_eq!(form["metadata[offsession_payment_id]"], "osp_test_1");
    assert_eq!(form["metadata[offsession_attempt]"], "1");
    assert!(!form.contains_key("capture_method"));
}

#[tokio::test]
async fn connect_and_descriptor_fields_are_sent_when_given() {
    let fake = Fake::start().await;
    let mut p = payment("pm_ok");
    p.on_behalf_of = Some("acct_1".into());
    p.transfer_data = Some(offsession_core::payment::TransferData {
        destination: "acct_1".into(),
        amount: Some(1500),
    });
    p.application_fee_amount_requested = Some(offsession_core::Amount::new(
        100,
        p.amount_requested.currency,
    ));
    p.statement_descriptor_suffix = Some("PRO PLAN".into());
    p.description = Some("March renewal".into());
    p.cadence = offsession_core::Cadence::Unscheduled;
    authorize(&fake, &p, 1).await;
    let form: std::collections::HashMap<_, _> = fake.requests()[0].form.iter().cloned().collect();
    assert_eq!(form["on_behalf_of"], "acct_1");
    assert_eq!(form["transfer_data[destination]"], "acct_1");
    assert_eq!(form["transfer_data[amount]"], "1500");
    assert_eq!(form["application_fee_amount"], "100");
    assert_eq!(form["statement_descriptor_suffix"], "PRO PLAN");
    assert_eq!(form["description"], "March renewal");
    assert_eq!(form["off_session"], "one_off");
}

#[tokio::test]
async fn an_authorizations_state_is_read_from_its_payment_intent() {
    use offsession_core::AuthorizationState;
    let fake = Fake::start().await;
    fake.script(
        "pm_hold",
        vec![Script::RequiresCapture, Script::RequiresCapture],
    );
    let mut p = payment("pm_hold");
    p.capture.capture_method = CaptureMethod::Manual;
    let processor = fake.processor();
    let mut references = Vec::new();
    for n in 1..=2 {
        let AttemptOutcome::RequiresCapture { reference } = authorize(&fake, &p, n).await else {
            panic!("not held")
        };
        assert_eq!(
            processor.authorization_state(&reference).await.unwrap(),
            Some(AuthorizationState::Held)
        );
        references.push(reference);
    }
    processor
        .capture(CaptureRequest {
            payment: &p,
            reference: &references[0],
            amount: p.amount_requested,
            idempotency_key: "osp_test_1:capture",
        })
        .await
        .unwrap();
    processor
        .cancel(CancelRequest {
            payment: &p,
            reference: &references[1],
            idempotency_key: "osp_test_2:cancel",
        })
        .await
        .unwrap();
    assert_eq!(
        processor.authorization_state(&references[0]).await.unwrap(),
        Some(AuthorizationState::Captured)
    );
    assert_eq!(
        processor.authorization_state(&references[1]).await.unwrap(),
        Some(AuthorizationState::Released)
    );
    let missing = offsession_core::ProcessorReference {
        payment: Some("pi_unknown".into()),
        charge: None,
    };
    let err = processor.authorization_state(&missing).await.unwrap_err();
    assert!(err.message.contains("404"), "{err}");
}

#[tokio::test]
async fn manual_capture_holds_and_captures_a_partial_amount() {
    let fake = Fake::start().await;
    fake.script("pm_hold", vec![Script::RequiresCapture]);
    let mut p = payment("pm_hold");
    p.capture.capture_method = CaptureMethod::Manual;
    let outcome = authorize(&fake, &p, 1).await;
    let AttemptOutcome::RequiresCapture { reference } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(fake.requests()[0]
        .form
        .contains(&("capture_method".into(), "manual".into())));
    let processor = fake.processor();
    processor
        .capture(CaptureRequest {
            payment: &p,
            reference: &reference,
            amount: offsession_core::Amount::new(1500, p.amount_requested.currency),
            idempotency_key: "osp_test_1:capture",
        })
        .await
        .unwrap();
    let capture = fake.requests().pop().unwrap();
    assert_eq!(capture.path, "/v1/payment_intents/pi_fake_1/capture");
    assert_eq!(
        capture.form,
        vec![("amount_to_capture".into(), "1500".into())]
    );
    assert_eq!(
        capture.idempotency_key.as_deref(),
        Some("osp_test_1:capture")
    );
    processor
        .cancel(CancelRequest {
            payment: &p,
            reference: &reference,
            idempotency_key: "osp_test_1:cancel",
        })
        .await
        .unwrap();
    assert_eq!(
        fake.requests().pop().unwrap().path,
        "/v1/payment_intents/pi_fake_1/cancel"
    );
}

#[tokio::test]
async fn a_card_decline_keeps_every_code_and_is_classified_by_the_table() {
    let fake = Fake::start().await;
    let mut error = card_error("card_declined", Some("insufficient_funds"));
    error["advice_code"] = json!("try_again_later");
    error["network_decline_code"] = json!("51");
    error["network_advice_code"] = json!("02");
    fake.script("pm_funds", vec![Script::Error(402, error, None)]);
    let outcome = authorize(&fake, &payment("pm_funds"), 1).await;
    let AttemptOutcome::Declined { codes, reference } = &outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(codes.code, "card_declined");
    assert_eq!(codes.decline_code.as_deref(), Some("insufficient_funds"));
    assert_eq!(codes.advice_code.as_deref(), Some("try_again_later"));
    assert_eq!(codes.network_decline_code.as_deref(), Some("51"));
    assert_eq!(codes.network_advice_code.as_deref(), Some("02"));
    assert_eq!(reference.payment.as_deref(), Some("pi_fake_1"));
    assert_eq!(reference.charge.as_deref(), Some("ch_fake_declined_1"));
    assert_eq!(category(&outcome, "visa"), DeclineCategory::SoftFunds);
}

#[tokio::test]
async fn a_hard_decline_is_classified_hard() {
    let fake = Fake::start().await;
    let mut error = card_error("card_declined", Some("stolen_card"));
    error["network_decline_code"] = json!("43");
    fake.script("pm_stolen", vec![Script::Error(402, error, None)]);
    let outcome = authorize(&fake, &payment("pm_stolen"), 1).await;
    assert_eq!(category(&outcome, "visa"), DeclineCategory::Hard);
}

#[tokio::test]
async fn an_expired_card_without_decline_code_needs_new_card_data() {
    let fake = Fake::start().await;
    fake.script(
        "pm_expired",
        vec![Script::Error(402, card_error("expired_card", None), None)],
    );
    let outcome = authorize(&fake, &payment("pm_expired"), 1).await;
    assert_eq!(
        category(&outcome, "visa"),
        DeclineCategory::NeedsNewCardData
    );
}

#[tokio::test]
async fn authentication_required_needs_the_customer() {
    let fake = Fake::start().await;
    fake.script(
        "pm_3ds",
        vec![Script::Error(
            402,
            card_error("authentication_required", Some("authentication_required")),
            None,
        )],
    );
    let outcome = authorize(&fake, &payment("pm_3ds"), 1).await;
    assert_eq!(category(&outcome, "visa"), DeclineCategory::NeedsCustomer);
}

fn fault(outcome: &AttemptOutcome) -> bool {
    match outcome {
        AttemptOutcome::ProcessorFault { kind, .. } => *kind != offsession_core::FaultKind::Refused,
        other => panic!("expected a processor fault, got {other:?}"),
    }
}

#[tokio::test]
async fn a_rate_limit_is_a_retryable_fault_not_a_decline() {
    let fake = Fake::start().await;
    fake.script(
        "pm_busy",
        vec![Script::Error(
            429,
            json!({"type": "invalid_request_error", "code": "rate_limit"}),
            None,
        )],
    );
    let outcome = authorize(&fake, &payment("pm_busy"), 1).await;
    assert!(fault(&outcome));
    assert_eq!(fake.requests().len(), 1, "a rate limit is not hammered");
}

#[tokio::test]
async fn a_lock_timeout_is_retried_at_once_with_the_same_key() {
    let fake = Fake::start().await;
    let lock = Script::Error(
        429,
        json!({"type": "invalid_request_error", "code": "lock_timeout"}),
        None,
    );
    fake.script("pm_locked", vec![lock.clone(), lock, Script::Succeed]);
    let outcome = authorize(&fake, &payment("pm_locked"), 1).await;
    assert!(
        matches!(outcome, AttemptOutcome::Approved { .. }),
        "{outcome:?}"
    );
    let keys: Vec<_> = fake
        .requests()
        .into_iter()
        .map(|r| r.idempotency_key)
        .collect();
    assert_eq!(keys.len(), 3);
    assert!(keys
        .iter()
        .all(|k| k.as_deref() == Some("osp_test_1:attempt:1")));
}

#[tokio::test]
async fn idempotency_key_in_use_is_retried_then_reported_unknown() {
    let fake = Fake::start().await;
    let conflict = Script::Error(
        409,
        json!({"type": "idempotency_error", "code": "idempotency_key_in_use"}),
        None,
    );
    fake.script(
        "pm_race",
        vec![conflict.clone(), conflict.clone(), conflict],
    );
    // 409s are stored by the fake like any executed request; a fresh key per send
    // would hide that, so the fake answers the replays from its store.
    // Stripe is still running a request with this key, which may charge: the outcome
    // is unknown (replayed later with the same key), never "nothing was charged".
    let outcome = authorize(&fake, &payment("pm_race"), 1).await;
    assert!(
        matches!(outcome, AttemptOutcome::Unknown { .. }),
        "{outcome:?}"
    );
    assert_eq!(fake.requests().len(), 3, "1 send + 2 transport retries");
}

#[tokio::test]
async fn a_lost_try_then_a_rate_limited_retry_is_unknown_and_the_replay_returns_the_charge() {
    let fake = Fake::start().await;
    // The first try charges but its answer never arrives; the transport retry with the
    // same key is refused by the rate limiter, which says nothing of the first try.
    fake.script(
        "pm_lost",
        vec![Script::Hang(
            Duration::from_secs(2),
            Box::new(Script::Succeed),
        )],
    );
    fake.state.lock().unwrap().gate = std::collections::VecDeque::from([
        None,
        Some((
            429,
            json!({"type": "invalid_request_error", "code": "rate_limit"}),
        )),
    ]);
    unknown_then_the_replay_returns_the_charge(&fake, "pm_lost", 2, 2).await;
}

#[tokio::test]
async fn a_lost_try_then_a_proxys_4xx_is_unknown_and_the_replay_returns_the_charge() {
    // The transport retry meets a proxy (a 408 or 404 page, not Stripe's error body),
    // which says nothing of the first try: taken as Stripe's refusal it made the
    // attempt a fault, and the engine could send the payment to another processor
    // under a new key while the first had charged.
    for status in [408, 404, 400] {
        let fake = Fake::start().await;
        fake.script(
            "pm_lost",
            vec![Script::Hang(
                Duration::from_secs(2),
                Box::new(Script::Succeed),
            )],
        );
        fake.state.lock().unwrap().gate = std::collections::VecDeque::from([
            None,
            Some((status, json!("<html><body>Request Timeout</body></html>"))),
        ]);
        unknown_then_the_replay_returns_the_charge(&fake, "pm_lost", 1, 2).await;
    }
}

#[tokio::test]
async fn a_proxys_4xx_on_the_first_try_is_unknown_not_a_refusal() {
    // A proxy that forwarded the request and then answered 408 may have let Stripe
    // charge; only Stripe's own error body is a refusal.
    let fake = Fake::start().await;
    fake.state.lock().unwrap().gate = std::collections::VecDeque::from([Some((
        408,
        json!("<html><body>408 Request Timeout</body></html>"),
    ))]);
    let mut config = fake.config();
    config.max_network_retries = 0;
    let processor = offsession_stripe::StripeProcessor::new(config).unwrap();
    let p = payment("pm_proxy");
    let request = AuthorizeRequest {
        payment: &p,
        attempt_number: 1,
        idempotency_key: "osp_test_1:attempt:1",
    };
    let first = processor.authorize(request).await;
    assert!(matches!(first, AttemptOutcome::Unknown { .. }), "{first:?}");
    let replay = processor.authorize(request).await;
    assert!(
        matches!(replay, AttemptOutcome::Approved { .. }),
        "{replay:?}"
    );
    assert_eq!(fake.charges_created(), 1);
}

#[tokio::test]
async fn an_attempt_whose_key_replays_a_stored_500_is_found_by_its_metadata() {
    // Stripe charged, then failed and stored the 500 under the key: every replay
    // answers the same 500. The attempt is found among the customer's PaymentIntents
    // by the payment id and attempt number the adapter put in its metadata.
    let fake = Fake::start().await;
    fake.script("pm_stored", vec![Script::ChargeThenFail(500)]);
    let mut config = fake.config();
    config.max_network_retries = 0;
    let processor = offsession_stripe::StripeProcessor::new(config).unwrap();
    let p = payment("pm_stored");
    // A merchant's own PaymentIntent for the same customer is not the attempt.
    let mut other = payment("pm_card_visa");
    other.id = "osp_test_other".into();
    let request = AuthorizeRequest {
        payment: &p,
        attempt_number: 1,
        idempotency_key: "osp_test_1:attempt:1",
    };
    let since = offsession_core::Timestamp::from_millis(1_767_225_600_000);
    for _ in 0..2 {
        let outcome = processor.authorize(request).await;
        assert!(
            matches!(outcome, AttemptOutcome::Unknown { .. }),
            "{outcome:?}"
        );
    }
    let other_request = AuthorizeRequest {
        payment: &other,
        attempt_number: 1,
        idempotency_key: "osp_test_other:attempt:1",
    };
    assert!(matches!(
        processor.authorize(other_request).await,
        AttemptOutcome::Approved { .. }
    ));
    let found = processor.find_authorization(request, since).await.unwrap();
    assert_eq!(
        found,
        Some(AttemptOutcome::Approved {
            reference: ProcessorReference {
                payment: Some("pi_fake_1".into()),
                charge: Some("ch_fake_1".into()),
            }
        })
    );
    // Another attempt of the payment, or another customer's, is not found.
    let second = AuthorizeRequest {
        attempt_number: 2,
        ..request
    };
    assert_eq!(
        processor.find_authorization(second, since).await.unwrap(),
        None
    );
    let mut elsewhere = p.clone();
    elsewhere.customer = "cus_2".into();
    let request = AuthorizeRequest {
        payment: &elsewhere,
        ..request
    };
    assert_eq!(
        processor.find_authorization(request, since).await.unwrap(),
        None
    );
    assert_eq!(fake.charges_created(), 2);
}

#[tokio::test]
async fn the_lookup_reads_past_the_first_page_and_takes_only_settled_intents() {
    let fake = Fake::start().await;
    let intent = |id: &str, n: i64, payment_id: &str, attempt: &str, status: &str| {
        let mut pi = fixture("payment_intent");
        pi["id"] = json!(id);
        pi["customer"] = json!("cus_1");
        pi["created"] = json!(1_767_225_600 + n);
        pi["status"] = json!(status);
        pi["latest_charge"] = json!(format!("ch_{id}"));
        pi["last_payment_error"] = serde_json::Value::Null;
        pi["metadata"] =
            json!({"offsession_payment_id": payment_id, "offsession_attempt": attempt});
        pi
    };
    {
        let mut state = fake.state.lock().unwrap();
        // The attempt's intent is the oldest, behind 150 of other payments (newest
        // first, 100 a page); its second attempt's confirmation is still running.
        let intents = [
            intent("pi_target", 1, "osp_test_1", "1", "succeeded"),
            intent("pi_running", 2, "osp_test_1", "2", "requires_confirmation"),
            intent(
                "pi_failed_early",
                3,
                "osp_test_1",
                "3",
                "requires_payment_method",
            ),
        ];
        for pi in intents {
            state
                .intents
                .insert(pi["id"].as_str().unwrap().to_owned(), pi);
        }
        for i in 0..150 {
            let id = format!("pi_other_{i}");
            let pi = intent(&id, 10 + i, &format!("osp_other_{i}"), "1", "succeeded");
            state.intents.insert(id, pi);
        }
    }
    let processor = fake.processor();
    let p = payment("pm_x");
    let since = offsession_core::Timestamp::from_millis(1_767_225_600_000);
    let request = |attempt_number: u32| AuthorizeRequest {
        payment: &p,
        attempt_number,
        idempotency_key: "osp_test_1:attempt:x",
    };
    assert_eq!(
        processor
            .find_authorization(request(1), since)
            .await
            .unwrap(),
        Some(AttemptOutcome::Approved {
            reference: ProcessorReference {
                payment: Some("pi_target".into()),
                charge: Some("ch_pi_target".into()),
            }
        })
    );
    let lists = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path == "/v1/payment_intents")
        .count();
    assert_eq!(lists, 2, "the second page holds it");
    // Not settled: no answer, whatever the status would mean as a confirmation's.
    for attempt in [2, 3] {
        assert_eq!(
            processor
                .find_authorization(request(attempt), since)
                .await
                .unwrap(),
            None,
            "attempt {attempt}"
        );
    }
}

/// Authorizes `pm` (whose first try charges and is never answered) with
/// `max_network_retries`: the outcome is unknown after `sends` requests, and the
/// engine's replay with the same key returns the one charge.
async fn unknown_then_the_replay_returns_the_charge(
    fake: &Fake,
    pm: &str,
    max_network_retries: u32,
    sends: usize,
) {
    let mut config = fake.config();
    config.max_network_retries = max_network_retries;
    let processor = offsession_stripe::StripeProcessor::new(config).unwrap();
    let p = payment(pm);
    let request = AuthorizeRequest {
        payment: &p,
        attempt_number: 1,
        idempotency_key: "osp_test_1:attempt:1",
    };
    let first = processor.authorize(request).await;
    assert!(matches!(first, AttemptOutcome::Unknown { .. }), "{first:?}");
    assert_eq!(fake.requests().len(), sends);
    let replay = processor.authorize(request).await;
    assert!(
        matches!(replay, AttemptOutcome::Approved { .. }),
        "{replay:?}"
    );
    assert_eq!(fake.charges_created(), 1, "the replay did not charge again");
}

#[tokio::test]
async fn an_idempotency_error_is_a_bug_and_not_retryable() {
    let fake = Fake::start().await;
    fake.script(
        "pm_bug",
        vec![Script::Error(400, json!({"type": "idempotency_error", "message": "Keys for idempotent requests can only be used with the same parameters"}), None)],
    );
    let outcome = authorize(&fake, &payment("pm_bug"), 1).await;
    assert!(!fault(&outcome));
}

#[tokio::test]
async fn an_invalid_request_is_a_configuration_fault_not_a_decline() {
    let fake = Fake::start().await;
    fake.script(
        "pm_bad",
        vec![Script::Error(400, json!({"type": "invalid_request_error", "code": "parameter_invalid_integer", "param": "amount"}), None)],
    );
    let outcome = authorize(&fake, &payment("pm_bad"), 1).await;
    assert!(!fault(&outcome));
    let AttemptOutcome::ProcessorFault { message, .. } = outcome else {
        unreachable!()
    };
    assert!(message.contains("invalid_request_error"), "{message}");
}

#[tokio::test]
async fn a_refused_key_marks_the_processor_misconfigured_and_stops_calling_stripe() {
    let fake = Fake::start().await;
    let mut config = fake.config();
    config.secret_key = Some(offsession_stripe::SecretKey::new("sk_test_wrong"));
    let processor = offsession_stripe::StripeProcessor::new(config).unwrap();
    let p = payment("pm_ok");
    let request = AuthorizeRequest {
        payment: &p,
        attempt_number: 1,
        idempotency_key: "k1",
    };
    let first = processor.authorize(request).await;
    assert!(!fault(&first));
    let second = processor.authorize(request).await;
    assert!(!fault(&second));
    assert_eq!(fake.requests().len(), 1, "no call while misconfigured");
    let AttemptOutcome::ProcessorFault { message, .. } = first else {
        unreachable!()
    };
    assert!(
        !message.contains("sk_test_wrong"),
        "the key never appears in errors: {message}"
    );
}

#[tokio::test]
async fn server_errors_are_retried_with_the_same_key_then_unknown() {
    let fake = Fake::start().await;
    let boom = Script::Error(500, json!({"type": "api_error", "message": "boom"}), None);
    fake.script("pm_5xx", vec![boom.clone(), boom.clone(), boom]);
    // Stripe replays a stored 5xx for the same key; the fake stores it too, so the
    // retries get the same answer and the outcome stays unknown.
    let outcome = authorize(&fake, &payment("pm_5xx"), 1).await;
    assert!(
        matches!(outcome, AttemptOutcome::Unknown { .. }),
        "{outcome:?}"
    );
    let requests = fake.requests();
    assert_eq!(requests.len(), 3);
    assert!(requests
        .iter()
        .all(|r| r.idempotency_key.as_deref() == Some("osp_test_1:attempt:1")));
}

#[tokio::test]
async fn stripe_should_retry_false_is_obeyed() {
    let fake = Fake::start().await;
    fake.script(
        "pm_noretry",
        vec![Script::Error(
            503,
            json!({"type": "api_error"}),
            Some(false),
        )],
    );
    let outcome = authorize(&fake, &payment("pm_noretry"), 1).await;
    assert!(
        matches!(outcome, AttemptOutcome::Unknown { .. }),
        "{outcome:?}"
    );
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn a_connection_refused_is_a_retryable_fault_with_nothing_sent() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut config =
        offsession_stripe::StripeConfig::new("stripe", offsession_stripe::SecretKey::new(KEY));
    config.api_base = format!("http://{addr}");
    config.retry_base = Duration::from_millis(1);
    config.retry_cap = Duration::from_millis(2);
    let processor = offsession_stripe::StripeProcessor::new(config).unwrap();
    let p = payment("pm_ok");
    let outcome = processor
        .authorize(AuthorizeRequest {
            payment: &p,
            attempt_number: 1,
            idempotency_key: "k",
        })
        .await;
    assert!(fault(&outcome));
}

#[tokio::test]
async fn a_timeout_is_unknown_and_the_replay_returns_the_original_charge() {
    let fake = Fake::start().await;
    fake.script(
        "pm_slow",
        vec![Script::Hang(
            Duration::from_secs(2),
            Box::new(Script::Succeed),
        )],
    );
    unknown_then_the_replay_returns_the_charge(&fake, "pm_slow", 0, 1).await;
}

#[tokio::test]
async fn a_processing_payment_intent_is_looked_up_by_id() {
    let fake = Fake::start().await;
    fake.script("pm_debit", vec![Script::Processing]);
    let outcome = authorize(&fake, &payment("pm_debit"), 1).await;
    assert!(
        matches!(outcome, AttemptOutcome::Approved { .. }),
        "{outcome:?}"
    );
    assert_eq!(
        fake.requests().last().unwrap().path,
        "/v1/payment_intents/pi_fake_1"
    );
}

// ----- preflight ---------------------------------------------------------------------

#[tokio::test]
async fn preflight_reads_type_and_card_facts_and_caches_them() {
    let fake = Fake::start().await;
    fake.add_card("pm_good", "cus_1", "mastercard", &[None]);
    let processor = fake.processor();
    let details = processor.preflight(&payment("pm_good")).await.unwrap();
    assert_eq!(details.payment_method_type, PaymentMethodType::Card);
    assert_eq!(details.card.unwrap().brand, CardBrand::Mastercard);
    let calls = fake.requests().len();
    assert_eq!(calls, 2, "payment method + setup intents");
    processor.preflight(&payment("pm_good")).await.unwrap();
    assert_eq!(
        fake.requests().len(),
        calls,
        "second preflight served from the cache"
    );
}

#[tokio::test]
async fn preflight_refuses_a_method_of_another_customer() {
    let fake = Fake::start().await;
    fake.add_card("pm_other", "cus_2", "visa", &[None]);
    let err = fake
        .processor()
        .preflight(&payment("pm_other"))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::OspPaymentMethodNotAttached);
}

#[tokio::test]
async fn preflight_refuses_a_method_never_set_up_off_session() {
    let fake = Fake::start().await;
    fake.add_card("pm_new", "cus_1", "visa", &[]);
    let err = fake
        .processor()
        .preflight(&payment("pm_new"))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::OspPmNotSetupForOffSession);
}

#[tokio::test]
async fn preflight_matches_on_behalf_of_with_the_setup() {
    let fake = Fake::start().await;
    fake.add_card("pm_connected", "cus_1", "visa", &[Some("acct_a")]);
    fake.add_card("pm_platform", "cus_1", "visa", &[None]);
    let processor = fake.processor();
    let err = processor
        .preflight(&payment("pm_connected"))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::OspPmSetUpOnlyOnConnectedAccount);
    let mut other = payment("pm_connected");
    other.on_behalf_of = Some("acct_b".into());
    assert_eq!(
        processor.preflight(&other).await.unwrap_err().code,
        ErrorCode::OspPmSetUpOnlyOnConnectedAccount
    );
    let mut same = payment("pm_connected");
    same.on_behalf_of = Some("acct_a".into());
    processor.preflight(&same).await.unwrap();
    let mut platform = payment("pm_platform");
    platform.on_behalf_of = Some("acct_a".into());
    assert_eq!(
        processor.preflight(&platform).await.unwrap_err().code,
        ErrorCode::OspPmSetUpOnlyOnPlatform
    );
}

#[tokio::test]
async fn preflight_refuses_unsupported_method_types_and_unknown_methods() {
    let fake = Fake::start().await;
    fake.add_card("pm_klarna", "cus_1", "visa", &[None]);
    fake.state
        .lock()
        .unwrap()
        .payment_methods
        .get_mut("pm_klarna")
        .unwrap()["type"] = json!("klarna");
    let processor = fake.processor();
    assert_eq!(
        processor
            .preflight(&payment("pm_klarna"))
            .await
            .unwrap_err()
            .code,
        ErrorCode::OspInvalidPaymentMethodType
    );
    let err = processor
        .preflight(&payment("pm_missing"))
        .await
        .unwrap_err();
    assert_eq!(err.param.as_deref(), Some("payment_method"));
}

// ----- ids in paths and queries ------------------------------------------------------

/// Ids that would escape their path segment, or the query, if pasted into a URL.
fn hostile_ids() -> Vec<String> {
    vec![
        "pm_a/b".into(),
        "pm_../../v1/payment_intents".into(),
        "..pm".into(),
        "pm..".into(),
        "pm_?expand[]=customer".into(),
        "pm_#fragment".into(),
        "pm_%2F..%2Fx".into(),
        "pm_%".into(),
        "pm with spaces".into(),
        "pm_\n\r\t\u{0}\u{7f}\u{1b}[31m".into(),
        "pm_é€😀".into(),
        "pm_&customer=cus_2".into(),
        "pm_\\back".into(),
        format!("pm_{}", "x".repeat(300)),
    ]
}

#[tokio::test]
async fn preflight_sends_each_id_as_one_path_segment_and_the_filters_intact() {
    let customer = "cus_1&customer=cus_2 #?/..";
    for id in hostile_ids() {
        let fake = Fake::start().await;
        fake.add_card(&id, customer, "visa", &[None]);
        let mut p = payment(&id);
        p.customer = customer.into();
        let details = fake.processor().preflight(&p).await;
        assert!(details.is_ok(), "{id:?}: {details:?}");
        let requests = fake.requests();
        assert_eq!(requests.len(), 2, "{id:?}: {requests:?}");
        assert_eq!(requests[0].method, "GET");
        assert_eq!(requests[0].path, format!("/v1/payment_methods/{id}"));
        let raw_path = requests[0].raw_uri.split('?').next().unwrap();
        assert_eq!(
            raw_path.matches('/').count(),
            3,
            "{id:?}: one segment: {}",
            requests[0].raw_uri
        );
        assert!(
            !requests[0].raw_uri.contains('?'),
            "{}",
            requests[0].raw_uri
        );
        assert_eq!(requests[1].path, "/v1/setup_intents");
        assert_eq!(
            requests[1].form,
            vec![
                ("payment_method".to_owned(), id.clone()),
                ("customer".to_owned(), customer.to_owned()),
                ("limit".to_owned(), "100".to_owned()),
            ],
            "{id:?}: {}",
            requests[1].raw_uri
        );
    }
}

#[tokio::test]
async fn capture_and_cancel_send_the_payment_intent_id_as_one_segment() {
    for id in hostile_ids() {
        let id = id.replacen("pm_", "pi_", 1);
        let fake = Fake::start().await;
        fake.state.lock().unwrap().intents.insert(
            id.clone(),
            json!({"id": id, "object": "payment_intent", "status": "requires_capture"}),
        );
        let p = payment("pm_ok");
        let reference = ProcessorReference {
            payment: Some(id.clone()),
            charge: None,
        };
        let processor = fake.processor();
        processor
            .capture(CaptureRequest {
                payment: &p,
                reference: &reference,
                amount: p.amount_requested,
                idempotency_key: "osp_test_1:capture",
            })
            .await
            .unwrap_or_else(|e| panic!("{id:?}: {e:?}"));
        processor
            .cancel(CancelRequest {
                payment: &p,
                reference: &reference,
                idempotency_key: "osp_test_1:cancel",
            })
            .await
            .unwrap_or_else(|e| panic!("{id:?}: {e:?}"));
        let requests = fake.requests();
        assert_eq!(requests.len(), 2, "{id:?}: {requests:?}");
        assert_eq!(
            requests[0].path,
            format!("/v1/payment_intents/{id}/capture")
        );
        assert_eq!(requests[1].path, format!("/v1/payment_intents/{id}/cancel"));
        for r in &requests {
            assert_eq!(r.raw_uri.matches('/').count(), 4, "{id:?}: {}", r.raw_uri);
        }
    }
}

#[tokio::test]
async fn empty_and_dot_ids_are_refused_without_a_request() {
    let fake = Fake::start().await;
    let processor = fake.processor();
    for id in ["", ".", ".."] {
        let err = processor.preflight(&payment(id)).await.unwrap_err();
        assert_eq!(err.param.as_deref(), Some("payment_method"), "{id:?}");
        let p = payment("pm_ok");
        let reference = ProcessorReference {
            payment: Some(id.into()),
            charge: None,
        };
        let capture = processor
            .capture(CaptureRequest {
                payment: &p,
                reference: &reference,
                amount: p.amount_requested,
                idempotency_key: "k",
            })
            .await;
        assert!(capture.is_err(), "{id:?}");
        let cancel = processor
            .cancel(CancelRequest {
                payment: &p,
                reference: &reference,
                idempotency_key: "k",
            })
            .await;
        assert!(cancel.is_err(), "{id:?}");
    }
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
}

#[tokio::test]
async fn card_options_the_pinned_api_cannot_carry_are_refused_not_dropped() {
    let fake = Fake::start().await;
    fake.add_card("pm_opts", "cus_1", "visa", &[None]);
    let processor = fake.processor();
    let mut p = payment("pm_opts");
    p.payment_method_options = Some(offsession_core::payment::PaymentMethodOptions {
        card: Some(offsession_core::payment::CardOptions {
            mcc: Some("5734".into()),
            network_transaction_id: None,
        }),
    });
    let err = processor.preflight(&p).await.unwrap_err();
    assert_eq!(
        err.param.as_deref(),
        Some("payment_method_options.card.mcc")
    );
    assert!(fake.requests().is_empty(), "refused before any request");
    p.payment_method_options = None;
    assert!(processor.preflight(&p).await.is_ok());
}
