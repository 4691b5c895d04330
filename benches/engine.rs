//! Criterion benches: request validation, decline classification, and end-to-end
//! engine throughput (memory store, zero-latency mock). Run with `cargo bench`.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use offsession::core::request::{parse_create, validate_create, CreateRules};
use offsession::core::{DeclineCodes, ManualClock, Timestamp};
use offsession::mock::{MockConfig, MockProcessor};
use offsession::retry::DeclineTable;
use offsession::store::MemoryStore;
use offsession::Engine;

const BODY: &str = r#"{"amount":{"value":2000,"currency":"usd"},"cadence":"recurring","customer":"cus_1","payment_method":"pm_card_visa","metadata":{"invoice":"in_1"}}"#;

fn validation(c: &mut Criterion) {
    let mut group = c.benchmark_group("validation");
    group.throughput(Throughput::Elements(1));
    let policies = vec!["stripe_recommended".to_owned()];
    let rules = CreateRules {
        livemode: false,
        now: Timestamp::from_millis(1_767_225_600_000),
        retry_policies: &policies,
    };
    group.bench_function("parse_and_validate_create", |b| {
        b.iter(|| {
            let request = parse_create(BODY.as_bytes()).unwrap();
            validate_create(&request, &rules).unwrap()
        })
    });
    group.finish();
}

fn classification(c: &mut Criterion) {
    let mut group = c.benchmark_group("classification");
    group.throughput(Throughput::Elements(1));
    let table = DeclineTable::standard();
    let mut codes = DeclineCodes::new("card_declined", Some("insufficient_funds"));
    codes.network_decline_code = Some("51".into());
    group.bench_function("classify_insufficient_funds", |b| {
        b.iter(|| table.classify(&codes, Some(&offsession_core::CardBrand::Visa)))
    });
    group.finish();
}

fn engine_throughput(c: &mut Criterion) {
    const BATCH: u64 = 1_000;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(BATCH));
    group.sample_size(20);
    group.bench_function("create_and_settle_1000_payments", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let engine = Engine::builder()
                    .processor(Arc::new(MockProcessor::new("mock", MockConfig::default())))
                    .store(Arc::new(MemoryStore::new()))
                    .clock(Arc::new(ManualClock::new(Timestamp::from_millis(
                        1_767_225_600_000,
                    ))))
                    .build()
                    .unwrap();
                for _ in 0..BATCH {
                    engine.create_json(BODY.as_bytes(), None).await.unwrap();
                }
                let report = engine.run_due().await.unwrap();
                assert_eq!(report.handled, BATCH);
            })
        })
    });
    group.finish();
}

fn retry_decisions(c: &mut Criterion) {
    use offsession::core::{
        CardAttempt, CardDetails, DeclineCategory, PaymentMethodDetails, RetryContext, RetryPolicy,
    };
    use offsession::retry::{NetworkGuard, SmartConfig, SmartPolicy};
    use offsession::store::conformance::sample_record;

    let now = Timestamp::from_millis(1_767_693_600_000);
    let record = sample_record("osp_bench", now.as_millis(), None);
    let method = PaymentMethodDetails {
        payment_method_type: "card".into(),
        card: Some(CardDetails {
            brand: "visa".into(),
            funding: "debit".into(),
            country: Some("US".into()),
            wallet: None,
            fingerprint: None,
            fingerprint_by: None,
        }),
        bank_country: None,
    };
    let mut codes = DeclineCodes::new("card_declined", Some("insufficient_funds"));
    codes.network_decline_code = Some("51".into());
    let history: Vec<CardAttempt> = (0..10)
        .map(|i| CardAttempt {
            payment_id: format!("osp_{i}"),
            attempt_number: 1 + i % 3,
            at: Timestamp::from_millis(now.as_millis() - i as i64 * 86_400_000),
            declined: true,
            answered: true,
            amount: 2000,
            advice_code: None,
        })
        .collect();
    let context = RetryContext {
        payment: &record.payment,
        method: Some(&method),
        attempts: &[],
        card_history: &history,
        decline: &codes,
        category: DeclineCategory::SoftFunds,
        first_attempt_at: now,
        now,
    };
    // The learned model's decision (168 candidate times, a plan of the attempts
    // left); with `select_by_evidence` a payment may follow the rules instead.
    let smart = Arc::new(
        SmartPolicy::new(&SmartConfig {
            select_by_evidence: false,
            ..SmartConfig::default()
        })
        .unwrap(),
    );
    let guarded = NetworkGuard::new(
        smart.clone(),
        DeclineTable::standard().network_rules().clone(),
    );
    let mut group = c.benchmark_group("retry");
    group.throughput(Throughput::Elements(1));
    group.bench_function("smart_decision", |b| b.iter(|| smart.decide(&context)));
    group.bench_function("smart_decision_with_network_guard", |b| {
        b.iter(|| guarded.decide(&context))
    });
    group.finish();
}

fn routing(c: &mut Criterion) {
    use offsession::core::{CardDetails, PaymentMethodDetails, Processor};
    use offsession::orchestrator::routing::{Route, RouteMatch, RouteRule, Router, RoutingConfig};
    use offsession::store::conformance::sample_record;

    let processors: Vec<Arc<dyn Processor>> = ["a", "b", "c"]
        .iter()
        .map(|id| Arc::new(MockProcessor::new(id, MockConfig::default())) as Arc<dyn Processor>)
        .collect();
    let rule = |name: &str, when: RouteMatch, to: &str| RouteRule {
        name: name.into(),
        when,
        route: Route {
            processors: vec![to.into()],
            split: Default::default(),
        },
    };
    let config = RoutingConfig {
        rules: vec![
            rule(
                "eur",
                RouteMatch {
                    currencies: Some(vec!["eur".into()]),
                    ..RouteMatch::default()
                },
                "b",
            ),
            rule(
                "large-amex",
                RouteMatch {
                    amount_min: Some(100_000),
                    card_brands: Some(vec!["amex".into()]),
                    ..RouteMatch::default()
                },
                "c",
            ),
        ],
        default: Some(Route {
            processors: vec![],
            split: [
                ("a".to_owned(), 70),
                ("b".to_owned(), 20),
                ("c".to_owned(), 10),
            ]
            .into(),
        }),
    };
    let router = Router::new(config, &processors).unwrap();
    let payment = sample_record("osp_route", 0, None).payment;
    let method = PaymentMethodDetails {
        payment_method_type: "card".into(),
        card: Some(CardDetails {
            brand: "visa".into(),
            funding: "credit".into(),
            country: Some("US".into()),
            wallet: None,
            fingerprint: None,
            fingerprint_by: None,
        }),
        bank_country: None,
    };
    let mut group = c.benchmark_group("routing");
    group.throughput(Throughput::Elements(1));
    group.bench_function("two_rules_then_weighted_split", |b| {
        b.iter(|| router.route(&payment, &method, &processors).unwrap())
    });
    group.finish();
}

criterion_group!(
    benches,
    validation,
    classification,
    retry_decisions,
    routing,
    engine_throughput
);
criterion_main!(benches);
