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
        b.iter(|| table.classify(&codes, Some("visa")))
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

criterion_group!(benches, validation, classification, engine_throughput);
criterion_main!(benches);
