//! The engine charging through the Stripe adapter, end to end against the fake.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use offsession_core::{AttemptOutcome, PaymentStatus, Timestamp};
use offsession_orchestrator::Engine;
use offsession_store::MemoryStore;
use serde_json::json;

const DAY: Duration = Duration::from_secs(86_400);

fn start() -> Timestamp {
    Timestamp::parse_rfc3339("2026-02-02T10:00:00Z").unwrap()
}

async fn engine(fake: &Fake, config: offsession_stripe::StripeConfig) -> (Engine, String) {
    let engine = Engine::builder()
        .processor(Arc::new(
            offsession_stripe::StripeProcessor::new(config).unwrap(),
        ))
        .store(Arc::new(MemoryStore::new()))
        .build()
        .unwrap();
    let clock = engine.create_test_clock(start()).await.unwrap().id;
    let _ = fake;
    (engine, clock)
}

fn body(clock: &str, pm: &str) -> String {
    json!({
        "amount": {"value": 4900, "currency": "usd"},
        "cadence": "recurring",
        "customer": "cus_1",
        "payment_method": pm,
        "metadata": {"subscription": "sub_1"},
        "test_clock": clock,
    })
    .to_string()
}

#[tokio::test]
async fn a_declined_renewal_recovers_on_the_scheduled_retry_through_stripe() {
    let fake = Fake::start().await;
    fake.add_card("pm_renew", "cus_1", "visa", &[None]);
    let mut decline = card_error("card_declined", Some("insufficient_funds"));
    decline["network_decline_code"] = json!("51");
    fake.script(
        "pm_renew",
        vec![Script::Error(402, decline, None), Script::Succeed],
    );
    let (engine, clock) = engine(&fake, fake.config()).await;

    let payment = engine
        .create_json(body(&clock, "pm_renew").as_bytes(), None)
        .await
        .unwrap();
    assert_eq!(
        payment.retry_details.retry_policy.as_deref(),
        Some("stripe_recommended")
    );
    engine.advance_test_clock(&clock, start()).await.unwrap();
    let after_decline = engine.retrieve(&payment.id).await.unwrap();
    assert_eq!(after_decline.status, PaymentStatus::PendingRetry);
    assert_eq!(
        after_decline.last_authorization_attempt_error.as_deref(),
        Some("card_declined (insufficient_funds)")
    );
    engine
        .advance_test_clock(&clock, start().plus(DAY))
        .await
        .unwrap();
    let record = engine.record(&payment.id).await.unwrap();
    assert_eq!(record.payment.status, PaymentStatus::Succeeded);
    assert_eq!(record.payment.retry_details.attempts, 2);
    // Each attempt keeps Stripe's ids.
    let ids: Vec<_> = record
        .attempts
        .iter()
        .map(|a| match a.outcome.as_ref().unwrap() {
            AttemptOutcome::Declined { reference, .. } | AttemptOutcome::Approved { reference } => {
                reference.payment.clone().unwrap()
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids, ["pi_fake_1", "pi_fake_2"]);
    let keys: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/payment_intents")
        .map(|r| r.idempotency_key.unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            format!("{}:attempt:1", payment.id),
            format!("{}:attempt:2", payment.id)
        ]
    );
}

#[tokio::test]
async fn a_crash_between_sending_and_receiving_never_creates_a_second_charge() {
    let fake = Fake::start().await;
    fake.add_card("pm_slow", "cus_1", "visa", &[None]);
    // Stripe executes the charge, but the answer arrives after the client gave up.
    fake.script(
        "pm_slow",
        vec![Script::Hang(
            Duration::from_secs(2),
            Box::new(Script::Succeed),
        )],
    );
    let mut config = fake.config();
    config.max_network_retries = 0;
    let (engine, clock) = engine(&fake, config).await;

    let payment = engine
        .create_json(body(&clock, "pm_slow").as_bytes(), None)
        .await
        .unwrap();
    engine.advance_test_clock(&clock, start()).await.unwrap();
    let waiting = engine.record(&payment.id).await.unwrap();
    assert_eq!(waiting.payment.status, PaymentStatus::Processing);
    assert!(
        engine.cancel(&payment.id).await.is_err(),
        "a payment whose charge may have gone through cannot be canceled"
    );
    assert!(
        waiting.replay_pending,
        "outcome unknown: the same attempt must be replayed"
    );
    engine
        .advance_test_clock(&clock, start().plus(Duration::from_secs(120)))
        .await
        .unwrap();
    let done = engine.record(&payment.id).await.unwrap();
    assert_eq!(done.payment.status, PaymentStatus::Succeeded);
    assert_eq!(done.payment.retry_details.attempts, 1);
    assert_eq!(fake.charges_created(), 1);
    let keys: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/payment_intents")
        .map(|r| r.idempotency_key.unwrap())
        .collect();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], keys[1], "the replay reused the key");
}
