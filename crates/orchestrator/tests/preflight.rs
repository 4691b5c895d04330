//! Create-time errors that need the processor's view of the payment method, through
//! the engine and the mock's vault.

mod common;

use common::*;
use offsession_core::{ErrorCode, RetryStrategy};
use offsession_mock::MockConfig;
use offsession_orchestrator::EngineConfig;
use serde_json::json;

const VAULT: &str = r#"
customers = ["cus_123", "cus_other"]

[[payment_methods]]
id = "pm_attached"
customer = "cus_123"

[[payment_methods]]
id = "pm_never_set_up"
customer = "cus_123"
off_session = false

[[payment_methods]]
id = "pm_connected"
customer = "cus_123"
on_behalf_of = "acct_connected"

[[payment_methods]]
id = "pm_ach"
customer = "cus_123"
type = "us_bank_account"

[[payment_methods]]
id = "pm_sepa"
customer = "cus_123"
type = "sepa_debit"
"#;

async fn h() -> Harness {
    harness_with(vault(VAULT), EngineConfig::default()).await
}

#[tokio::test]
async fn a_method_attached_to_another_customer_is_not_attached() {
    let h = h().await;
    let mut body = h.body("pm_attached");
    body["customer"] = json!("cus_other");
    assert_eq!(
        h.create_err(body).await.code,
        ErrorCode::OspPaymentMethodNotAttached
    );
}

#[tokio::test]
async fn an_unknown_customer_or_method_is_named() {
    let h = h().await;
    let mut body = h.body("pm_attached");
    body["customer"] = json!("cus_ghost");
    assert_eq!(h.create_err(body).await.param.as_deref(), Some("customer"));
    let err = h.create_err(h.body("pm_nope")).await;
    assert_eq!(err.code, ErrorCode::OspGenericInvalidRequest);
    assert_eq!(err.param.as_deref(), Some("payment_method"));
}

#[tokio::test]
async fn a_method_never_set_up_for_off_session_is_refused() {
    let h = h().await;
    assert_eq!(
        h.create_err(h.body("pm_never_set_up")).await.code,
        ErrorCode::OspPmNotSetupForOffSession
    );
}

#[tokio::test]
async fn a_method_set_up_on_a_connected_account_needs_that_on_behalf_of() {
    let h = h().await;
    assert_eq!(
        h.create_err(h.body("pm_connected")).await.code,
        ErrorCode::OspPmSetUpOnlyOnConnectedAccount
    );
    let mut other = h.body("pm_connected");
    other["on_behalf_of"] = json!("acct_else");
    assert_eq!(
        h.create_err(other).await.code,
        ErrorCode::OspPmSetUpOnlyOnConnectedAccount
    );
    let mut same = h.body("pm_connected");
    same["on_behalf_of"] = json!("acct_connected");
    h.create(same).await;
}

#[tokio::test]
async fn a_method_set_up_on_the_platform_refuses_on_behalf_of() {
    let h = h().await;
    let mut body = h.body("pm_attached");
    body["on_behalf_of"] = json!("acct_connected");
    assert_eq!(
        h.create_err(body).await.code,
        ErrorCode::OspPmSetUpOnlyOnPlatform
    );
}

#[tokio::test]
async fn a_method_type_the_processor_does_not_take_is_invalid() {
    let config = MockConfig {
        payment_method_types: vec!["card".into()],
        ..vault(VAULT)
    };
    let h = harness_with(config, EngineConfig::default()).await;
    let mut body = h.body("pm_sepa");
    body["retry_details"] = json!({"retry_strategy": "none"});
    assert_eq!(
        h.create_err(body).await.code,
        ErrorCode::OspInvalidPaymentMethodType
    );
}

#[tokio::test]
async fn debit_retries_follow_the_retry_matrix() {
    let h = h().await;
    let with_retry = |pm: &str, retry: serde_json::Value| {
        let mut body = h.body(pm);
        body["retry_details"] = retry;
        body
    };
    assert_eq!(
        h.create_err(with_retry("pm_ach", json!({"retry_strategy": "smart"})))
            .await
            .code,
        ErrorCode::OffSessionPaymentSmartRetriesNotSupportedForDebitPaymentMethods
    );
    assert_eq!(
        h.create_err(with_retry(
            "pm_ach",
            json!({"retry_policy": "stripe_recommended"})
        ))
        .await
        .code,
        ErrorCode::OffSessionPaymentRetryPolicyNotSupportedForDebitPaymentMethods
    );
    assert_eq!(
        h.create_err(with_retry(
            "pm_ach",
            json!({"retry_strategy": "best_available"})
        ))
        .await
        .code,
        ErrorCode::OspAchRetriesNotEnabled
    );
    assert_eq!(
        h.create_err(with_retry(
            "pm_sepa",
            json!({"retry_strategy": "best_available"})
        ))
        .await
        .code,
        ErrorCode::OspSepaDebitRetriesNotEnabled
    );
    let none = h
        .create(with_retry("pm_sepa", json!({"retry_strategy": "none"})))
        .await;
    assert_eq!(none.retry_details.retry_strategy, RetryStrategy::None);
}

#[tokio::test]
async fn heuristic_retries_are_refused_for_cards() {
    let h = h().await;
    let mut body = h.body("pm_attached");
    body["retry_details"] = json!({"retry_strategy": "heuristic"});
    assert_eq!(
        h.create_err(body).await.code,
        ErrorCode::OffSessionPaymentHeuristicRetriesNotSupportedForCards
    );
}

#[tokio::test]
async fn orchestration_is_refused_for_debits() {
    let h = h().await;
    let mut body = h.body("pm_ach");
    body["payments_orchestration"] = json!({"enabled": true});
    body["retry_details"] = json!({"retry_strategy": "none"});
    assert_eq!(
        h.create_err(body).await.code,
        ErrorCode::OspPaymentsOrchestrationOnlySupportedForCards
    );
}

#[tokio::test]
async fn options_for_another_method_type_are_refused() {
    let h = h().await;
    let mut body = h.body("pm_attached");
    body["payment_method_options"] = json!({"us_bank_account": {}});
    assert_eq!(
        h.create_err(body).await.code,
        ErrorCode::OffSessionPaymentIncorrectPaymentMethodTypeForOptions
    );
}

#[tokio::test]
async fn a_refused_create_stores_nothing() {
    let h = h().await;
    h.create_err(h.body("pm_never_set_up")).await;
    assert!(h.engine.list(10, None).await.unwrap().is_empty());
}
