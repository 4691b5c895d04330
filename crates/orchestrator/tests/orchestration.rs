//! Orchestration across processors: routing rules, cascade, circuit breakers, pacing.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use offsession_core::{AttemptOutcome, CollectEvents, ErrorCode, PaymentStatus, Processor};
use offsession_mock::{MockConfig, MockProcessor, Vault};
use offsession_orchestrator::{
    BreakerConfig, Engine, EngineConfig, RateLimit, Route, RouteMatch, RouteRule, RoutingConfig,
};
use offsession_store::MemoryStore;
use serde_json::json;

const VAULT_DECLINES: &str = r#"
[[payment_methods]]
id = "pm_x"
customer = "cus_123"
behaves_like = "pm_card_visa_chargeDeclined"

[[payment_methods]]
id = "pm_lost"
customer = "cus_123"
behaves_like = "pm_card_visa_chargeDeclinedLostCard"
"#;

const VAULT_APPROVES: &str = r#"
[[payment_methods]]
id = "pm_x"
customer = "cus_123"

[[payment_methods]]
id = "pm_lost"
customer = "cus_123"
"#;

struct Setup {
    engine: Engine,
    clock: String,
    a: Arc<MockProcessor>,
    b: Arc<MockProcessor>,
}

fn mock(id: &str, vault: &str, fault_rate: f64, types: &[&str]) -> Arc<MockProcessor> {
    Arc::new(MockProcessor::new(
        id,
        MockConfig {
            fault_rate,
            vault: Vault::from_toml(vault).unwrap(),
            payment_method_types: types
                .iter()
                .map(|t| offsession_core::PaymentMethodType::from_name(t))
                .collect(),
            ..MockConfig::default()
        },
    ))
}

async fn setup(
    a: Arc<MockProcessor>,
    b: Arc<MockProcessor>,
    routing: RoutingConfig,
    breaker: BreakerConfig,
) -> Setup {
    let engine = Engine::builder()
        .processor(a.clone())
        .processor(b.clone())
        .routing(routing)
        .circuit_breaker(breaker)
        .store(Arc::new(MemoryStore::new()))
        .events(Arc::new(CollectEvents::new()))
        .build()
        .unwrap();
    let clock = engine.create_test_clock(start()).await.unwrap().id;
    Setup {
        engine,
        clock,
        a,
        b,
    }
}

async fn both(a_vault: &str, a_faults: f64) -> Setup {
    setup(
        mock("a", a_vault, a_faults, &["card"]),
        mock("b", VAULT_APPROVES, 0.0, &["card", "sepa_debit"]),
        RoutingConfig::default(),
        BreakerConfig::default(),
    )
    .await
}

impl Setup {
    fn body(&self, pm: &str, orchestrated: bool) -> serde_json::Value {
        json!({
            "amount": {"value": 2000, "currency": "usd"},
            "cadence": "recurring",
            "customer": "cus_123",
            "payment_method": pm,
            "payments_orchestration": {"enabled": orchestrated},
            "test_clock": self.clock,
        })
    }

    async fn create(&self, body: serde_json::Value) -> Result<String, offsession_core::ApiError> {
        self.engine
            .create_json(body.to_string().as_bytes(), None)
            .await
            .map(|p| p.id)
    }

    async fn advance(&self, by: Duration) {
        let now = self
            .engine
            .retrieve_test_clock(&self.clock)
            .await
            .unwrap()
            .frozen_time;
        self.engine
            .advance_test_clock(&self.clock, now.plus(by))
            .await
            .unwrap();
    }

    async fn processors_tried(&self, id: &str) -> Vec<String> {
        self.engine
            .record(id)
            .await
            .unwrap()
            .attempts
            .iter()
            .map(|a| a.processor.clone())
            .collect()
    }
}

#[tokio::test]
async fn rules_route_by_payment_facts_and_the_default_takes_the_rest() {
    let routing = RoutingConfig {
        rules: vec![RouteRule {
            name: "eur-to-b".into(),
            when: RouteMatch {
                currencies: Some(vec!["eur".into()]),
                ..RouteMatch::default()
            },
            route: Route {
                processors: vec!["b".into()],
                split: BTreeMap::new(),
            },
        }],
        default: Some(Route {
            processors: vec!["a".into()],
            split: BTreeMap::new(),
        }),
    };
    let s = setup(
        mock("a", VAULT_APPROVES, 0.0, &["card"]),
        mock("b", VAULT_APPROVES, 0.0, &["card"]),
        routing,
        BreakerConfig::default(),
    )
    .await;
    let mut eur = s.body("pm_card_visa", false);
    eur["amount"] = json!({"value": 2000, "currency": "eur"});
    let eur = s.create(eur).await.unwrap();
    let usd = s.create(s.body("pm_card_visa", false)).await.unwrap();
    s.advance(Duration::ZERO).await;
    assert_eq!(s.processors_tried(&eur).await, ["b"]);
    assert_eq!(s.processors_tried(&usd).await, ["a"]);
}

#[tokio::test]
async fn a_weighted_split_keeps_every_attempt_of_a_payment_on_one_processor() {
    let routing = RoutingConfig {
        rules: vec![],
        default: Some(Route {
            processors: vec![],
            split: [("a".to_owned(), 50), ("b".to_owned(), 50)].into(),
        }),
    };
    let s = setup(
        mock("a", VAULT_APPROVES, 0.0, &["card"]),
        mock("b", VAULT_APPROVES, 0.0, &["card"]),
        routing,
        BreakerConfig::default(),
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(
            s.create(s.body(
                &format!("pm_card_visa_chargeDeclined_recoversAfter2__{i}"),
                false,
            ))
            .await
            .unwrap(),
        );
    }
    s.advance(5 * DAY).await;
    let mut on_a = 0;
    for id in &ids {
        let tried = s.processors_tried(id).await;
        assert_eq!(tried.len(), 3);
        assert!(tried.iter().all(|p| *p == tried[0]), "{tried:?}");
        on_a += usize::from(tried[0] == "a");
    }
    assert!((8..=32).contains(&on_a), "{on_a} of 40 on `a`");
}

#[tokio::test]
async fn without_orchestration_a_fault_is_replayed_on_the_primary() {
    let s = both(VAULT_APPROVES, 1.0).await;
    let id = s.create(s.body("pm_x", false)).await.unwrap();
    s.advance(Duration::ZERO).await;
    assert_eq!(s.processors_tried(&id).await, ["a"]);
    assert!(s.b.ledger().is_empty(), "never sent to b");
}

#[tokio::test]
async fn with_orchestration_a_processor_fault_cascades_at_once() {
    let s = both(VAULT_APPROVES, 1.0).await;
    let id = s.create(s.body("pm_x", true)).await.unwrap();
    s.advance(Duration::ZERO).await;
    let record = s.engine.record(&id).await.unwrap();
    assert_eq!(record.payment.status, PaymentStatus::Succeeded);
    assert_eq!(s.processors_tried(&id).await, ["a", "b"]);
    assert_eq!(
        record.payment.retry_details.attempts, 2,
        "each hop is an attempt"
    );
    assert_ne!(
        record.attempts[0].idempotency_key,
        record.attempts[1].idempotency_key
    );
    assert!(matches!(
        record.attempts[0].outcome,
        Some(AttemptOutcome::ProcessorFault { .. })
    ));
    assert_eq!(
        record.attempts[0].started_at, record.attempts[1].started_at,
        "same moment"
    );
}

#[tokio::test]
async fn a_capture_goes_to_the_processor_that_authorized_after_a_cascade() {
    let s = both(VAULT_APPROVES, 1.0).await;
    let mut body = s.body("pm_x", true);
    body["capture"] = json!({"capture_method": "manual"});
    let id = s.create(body).await.unwrap();
    s.advance(Duration::ZERO).await;
    assert_eq!(s.processors_tried(&id).await, ["a", "b"]);
    let record = s.engine.record(&id).await.unwrap();
    assert_eq!(record.payment.status, PaymentStatus::RequiresCapture);
    let pi = record.authorization.clone().unwrap().payment.unwrap();
    let captured = s.engine.capture(&id, None).await.unwrap();
    assert_eq!(captured.status, PaymentStatus::Succeeded);
    assert_eq!(s.b.captured(&pi), Some(2000), "b holds the authorization");
    assert_eq!(s.a.captured(&pi), None, "a never authorized it");
}

#[tokio::test]
async fn a_soft_decline_cascades_and_a_hard_decline_does_not() {
    let s = both(VAULT_DECLINES, 0.0).await;
    let soft = s.create(s.body("pm_x", true)).await.unwrap();
    let hard = s.create(s.body("pm_lost", true)).await.unwrap();
    s.advance(Duration::ZERO).await;
    assert_eq!(s.processors_tried(&soft).await, ["a", "b"]);
    assert_eq!(
        s.engine.retrieve(&soft).await.unwrap().status,
        PaymentStatus::Succeeded
    );
    assert_eq!(s.processors_tried(&hard).await, ["a"]);
    let hard = s.engine.retrieve(&hard).await.unwrap();
    assert_eq!(hard.status, PaymentStatus::Failed);
    assert!(s.b.ledger().iter().all(|e| e.payment_id != hard.id));
}

#[tokio::test]
async fn the_restrictions_of_orchestration_are_enforced() {
    let s = both(VAULT_APPROVES, 0.0).await;
    let mut connect = s.body("pm_card_visa", true);
    connect["on_behalf_of"] = json!("acct_1");
    assert_eq!(
        s.create(connect).await.unwrap_err().code,
        ErrorCode::OspPaymentsOrchestrationNotSupportedWithConnect
    );
    let mut smart = s.body("pm_card_visa", true);
    smart["retry_details"] = json!({"retry_strategy": "smart"});
    assert_eq!(
        s.create(smart).await.unwrap_err().code,
        ErrorCode::OspPaymentsOrchestrationNotSupportedWithSmartRetries
    );
    let vault = r#"
[[payment_methods]]
id = "pm_sepa"
customer = "cus_123"
type = "sepa_debit"
"#;
    let s = setup(
        mock("a", vault, 0.0, &["card", "sepa_debit"]),
        mock("b", vault, 0.0, &["card", "sepa_debit"]),
        RoutingConfig::default(),
        BreakerConfig::default(),
    )
    .await;
    let mut sepa = s.body("pm_sepa", true);
    sepa["retry_details"] = json!({"retry_strategy": "none"});
    assert_eq!(
        s.create(sepa).await.unwrap_err().code,
        ErrorCode::OspPaymentsOrchestrationOnlySupportedForCards
    );
}

#[tokio::test]
async fn an_unroutable_payment_is_refused_with_the_reason() {
    let vault = r#"
[[payment_methods]]
id = "pm_sepa"
customer = "cus_123"
type = "sepa_debit"
"#;
    let routing = RoutingConfig {
        rules: vec![],
        default: Some(Route {
            processors: vec!["a".into()],
            split: BTreeMap::new(),
        }),
    };
    let s = setup(
        mock("a", vault, 0.0, &["card"]),
        mock("b", vault, 0.0, &["card", "sepa_debit"]),
        routing,
        BreakerConfig::default(),
    )
    .await;
    let mut sepa = s.body("pm_sepa", false);
    sepa["retry_details"] = json!({"retry_strategy": "none"});
    let err = s.create(sepa).await.unwrap_err();
    assert!(
        err.message.contains("`a` does not take sepa_debit"),
        "{err}"
    );
}

#[tokio::test]
async fn routes_naming_unknown_processors_are_refused_at_build() {
    let routing = RoutingConfig {
        rules: vec![],
        default: Some(Route {
            processors: vec!["nope".into()],
            split: BTreeMap::new(),
        }),
    };
    let err = Engine::builder()
        .processor(mock("a", VAULT_APPROVES, 0.0, &["card"]))
        .routing(routing)
        .store(Arc::new(MemoryStore::new()))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

#[tokio::test]
async fn only_soft_declines_may_cascade() {
    for category in [
        offsession_core::DeclineCategory::Hard,
        offsession_core::DeclineCategory::NeedsNewCardData,
        offsession_core::DeclineCategory::NeedsCustomer,
    ] {
        let config = EngineConfig {
            cascade_categories: vec![offsession_core::DeclineCategory::SoftIssuer, category],
            ..EngineConfig::default()
        };
        let err = Engine::builder()
            .config(config)
            .processor(mock("a", VAULT_APPROVES, 0.0, &["card"]))
            .store(Arc::new(MemoryStore::new()))
            .build()
            .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("cascade_categories") && message.contains(category.as_str()),
            "{message}"
        );
    }
}

#[tokio::test]
async fn a_failing_processor_leaves_routing_and_comes_back_after_a_probe() {
    let breaker = BreakerConfig {
        window: Duration::from_secs(600),
        min_calls: 5,
        failure_rate: 0.5,
        open_for: Duration::from_secs(60),
    };
    let s = setup(
        mock("a", VAULT_APPROVES, 1.0, &["card"]),
        mock("b", VAULT_APPROVES, 0.0, &["card"]),
        RoutingConfig::default(),
        breaker,
    )
    .await;
    for i in 0..5 {
        s.create(s.body(&format!("pm_card_visa__{i}"), true))
            .await
            .unwrap();
    }
    s.advance(Duration::ZERO).await;
    let sent_to_a = s.a.total_sends();
    assert_eq!(sent_to_a, 5, "five faults open the breaker");
    // While open, orchestrated payments go straight to `b`.
    let later = s.create(s.body("pm_card_visa__later", true)).await.unwrap();
    s.advance(Duration::from_secs(1)).await;
    assert_eq!(s.processors_tried(&later).await, ["b"]);
    assert_eq!(s.a.total_sends(), sent_to_a);
    // After the cool-down one probe goes to `a` again.
    s.advance(Duration::from_secs(60)).await;
    let probe = s.create(s.body("pm_card_visa__probe", true)).await.unwrap();
    s.advance(Duration::from_secs(1)).await;
    assert_eq!(s.processors_tried(&probe).await, ["a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_slows_the_engine_down() {
    let limited: Arc<dyn Processor> = Arc::new(MockProcessor::new(
        "limited",
        MockConfig {
            enforce_rate_limit: Some(20),
            ..MockConfig::default()
        },
    ));
    let engine = Engine::builder()
        .config(EngineConfig {
            concurrency: 16,
            ..EngineConfig::default()
        })
        .processor(limited)
        .rate_limit(
            "limited",
            RateLimit {
                per_second: 1_000,
                burst: 50,
            },
        )
        .store(Arc::new(MemoryStore::new()))
        .build()
        .unwrap();
    let clock = engine.create_test_clock(start()).await.unwrap().id;
    for i in 0..40 {
        let body = json!({
            "amount": {"value": 2000, "currency": "usd"}, "cadence": "recurring",
            "customer": "cus_1", "payment_method": format!("pm_card_visa__{i}"), "test_clock": clock,
        });
        engine
            .create_json(body.to_string().as_bytes(), None)
            .await
            .unwrap();
    }
    engine.advance_test_clock(&clock, start()).await.unwrap();
    let (pace, rate_limited) = engine.pacing("limited").unwrap();
    assert!(rate_limited > 0, "the burst met the processor's limit");
    assert!(pace < 1.0, "the pace dropped: {pace}");
    // Rate-limited attempts are replayed with their key: they never fail a payment
    // nor spend one of its attempts.
    engine
        .advance_test_clock(&clock, start().plus(DAY))
        .await
        .unwrap();
    let payments = engine.list(100, None).await.unwrap();
    assert!(payments
        .iter()
        .any(|p| p.status == PaymentStatus::Succeeded));
    for p in payments {
        assert_ne!(p.status, PaymentStatus::Failed, "{}", p.id);
        assert_eq!(
            p.retry_details.attempts, 1,
            "a 429 does not spend an attempt"
        );
    }
}
