//! Live smoke test against Stripe's test mode. Runs only when STRIPE_TEST_SECRET_KEY
//! is set (a `sk_test_…` key); otherwise it prints "skipped" and passes.

use offsession_core::{AttemptOutcome, AuthorizeRequest, CardBrand, DeclineCategory, Processor};
use offsession_retry::DeclineTable;
use offsession_store::conformance::sample_record;
use offsession_stripe::{SecretKey, StripeConfig, StripeProcessor};
use serde_json::Value;

async fn post(client: &reqwest::Client, key: &str, path: &str, form: &[(&str, &str)]) -> Value {
    client
        .post(format!("https://api.stripe.com{path}"))
        .bearer_auth(key)
        .form(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A customer with `test_method` set up for off-session use; returns (customer, pm).
async fn customer_with(client: &reqwest::Client, key: &str, test_method: &str) -> (String, String) {
    let customer = post(
        client,
        key,
        "/v1/customers",
        &[("description", "offsession live smoke test")],
    )
    .await;
    let customer = customer["id"].as_str().unwrap().to_owned();
    let setup = post(
        client,
        key,
        "/v1/setup_intents",
        &[
            ("customer", &customer),
            ("payment_method", test_method),
            ("payment_method_types[]", "card"),
            ("usage", "off_session"),
            ("confirm", "true"),
        ],
    )
    .await;
    assert_eq!(setup["status"], "succeeded", "{setup}");
    (
        customer,
        setup["payment_method"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn live_off_session_charges_in_stripe_test_mode() {
    let Ok(key) = std::env::var("STRIPE_TEST_SECRET_KEY") else {
        println!("skipped: STRIPE_TEST_SECRET_KEY is not set");
        return;
    };
    assert!(
        key.starts_with("sk_test_") || key.starts_with("rk_test_"),
        "use a test-mode key"
    );
    let client = reqwest::Client::new();
    let processor =
        StripeProcessor::new(StripeConfig::new("stripe", SecretKey::new(key.clone()))).unwrap();
    let run = std::process::id();

    let (customer, pm) = customer_with(&client, &key, "pm_card_visa").await;
    let mut payment = sample_record(&format!("osp_live_ok_{run}"), 0, None).payment;
    payment.customer = customer;
    payment.payment_method = pm;
    let details = processor.preflight(&payment).await.unwrap();
    assert_eq!(details.card.unwrap().brand, CardBrand::Visa);
    let key1 = format!("{}:attempt:1", payment.id);
    let outcome = processor
        .authorize(AuthorizeRequest {
            payment: &payment,
            attempt_number: 1,
            idempotency_key: &key1,
        })
        .await;
    assert!(
        matches!(outcome, AttemptOutcome::Approved { .. }),
        "{outcome:?}"
    );

    let (customer, pm) = customer_with(
        &client,
        &key,
        "pm_card_visa_chargeDeclinedInsufficientFunds",
    )
    .await;
    let mut declined = sample_record(&format!("osp_live_decline_{run}"), 0, None).payment;
    declined.customer = customer;
    declined.payment_method = pm;
    let key2 = format!("{}:attempt:1", declined.id);
    let outcome = processor
        .authorize(AuthorizeRequest {
            payment: &declined,
            attempt_number: 1,
            idempotency_key: &key2,
        })
        .await;
    match &outcome {
        AttemptOutcome::Declined { codes, .. } => {
            assert_eq!(
                DeclineTable::standard().classify(codes, Some(&CardBrand::Visa)),
                DeclineCategory::SoftFunds
            )
        }
        other => panic!("expected a decline, got {other:?}"),
    }
}
