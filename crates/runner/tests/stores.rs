//! The runner on each store `[store] url` names: the same batch settles the same way
//! on memory, SQLite and (with `OFFSESSION_TEST_POSTGRES_URL`) Postgres, and what a
//! durable store keeps survives the process.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::write;
use offsession_core::{EventType, ManualClock, Store, Timestamp};
use offsession_orchestrator::Engine;
use offsession_runner::{batch, config, wiring};
use offsession_store::{PostgresStore, SqliteStore, Synchronous};

const BATCH: &[&str] = &[
    "pm_card_visa",
    "pm_card_visa",
    "pm_card_visa_chargeDeclinedInsufficientFunds_recoversAfter2",
    "pm_card_visa_chargeDeclinedInsufficientFunds",
    "pm_card_visa_chargeDeclinedLostCard",
    "pm_card_chargeDeclinedExpiredCard",
];

fn config_text(url: &str, schema: &str) -> String {
    format!(
        r#"
[engine]
id_seed = 7

[processor]
type = "mock"

[store]
url = "{url}"
schema = "{schema}"

[run]
input = "batch.jsonl"
"#
    )
}

fn batch_lines() -> String {
    BATCH
        .iter()
        .map(|pm| {
            format!(
                r#"{{"amount":{{"value":1000,"currency":"usd"}},"cadence":"recurring","customer":"cus_1","payment_method":"{pm}","retry_details":{{"retry_policy":"stripe_recommended"}}}}"#
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

type Outcome = (BTreeMap<String, u64>, BTreeMap<String, u64>, u64, u64);

async fn run_on(url: &str, schema: &str) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "c.toml", &config_text(url, schema));
    write(&dir, "batch.jsonl", &batch_lines());
    let config = config::load(&path).unwrap();
    let summary = batch::run(&path, &config, None, false).await.unwrap();
    assert_eq!(summary.unsettled(), 0, "{}", summary.render());
    (
        summary.statuses,
        summary.failure_reasons,
        summary.attempts,
        summary.recovered_by_retry,
    )
}

fn postgres_url() -> Option<String> {
    offsession_store::conformance::test_postgres_url("Postgres part")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_batch_settles_the_same_way_on_every_store() {
    let memory = run_on("memory:", "unused").await;
    assert_eq!(memory.0["succeeded"], 3);
    assert_eq!(memory.0["failed"], 3);
    assert_eq!(memory.2, 15, "attempts");
    let sqlite = run_on("sqlite://offsession.db", "unused").await;
    assert_eq!(sqlite, memory, "SQLite");
    if let Some(url) = postgres_url() {
        let schema = format!("offsession_test_runner_{}", std::process::id());
        let postgres = run_on(&url, &schema).await;
        PostgresStore::connect(&url, &schema, 1)
            .await
            .unwrap()
            .drop_schema()
            .await
            .unwrap();
        assert_eq!(postgres, memory, "Postgres");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_run_leaves_payments_events_and_state_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "c.toml", &config_text("sqlite://state.db", "unused"));
    write(&dir, "batch.jsonl", &batch_lines());
    let config = config::load(&path).unwrap();
    let summary = batch::run(&path, &config, None, false).await.unwrap();
    assert_eq!(summary.accepted, 6);

    // A second run on the same file is refused, naming the key; nothing is changed.
    let err = batch::run(&path, &config, None, false).await.unwrap_err();
    let message = err.to_string();
    assert!(message.starts_with("`store.url`"), "{message}");
    assert!(message.contains("6 payments"), "{message}");

    let store = SqliteStore::open(&dir.path().join("state.db"), Synchronous::Normal).unwrap();
    let counts: u64 = store
        .count_by_status()
        .await
        .unwrap()
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(counts, 6);
    let events = store.events_after(0, 1_000).await.unwrap();
    let created = events
        .iter()
        .filter(|e| e.event.event_type == EventType::Created)
        .count();
    let terminal = events
        .iter()
        .filter(|e| matches!(e.event.event_type, EventType::Succeeded | EventType::Failed))
        .count();
    assert_eq!(
        (created, terminal),
        (6, 6),
        "one created and one end per payment"
    );
    assert!(events.windows(2).all(|w| w[0].sequence < w[1].sequence));
    assert!(
        store
            .load_state(wiring::SMART_STATE_KEY)
            .await
            .unwrap()
            .is_some(),
        "the smart model's state is kept in the store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_clock_outlives_the_engine_that_made_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clocks.db");
    let engine = |store: Arc<dyn Store>| {
        Engine::builder()
            .processor(Arc::new(offsession_mock::MockProcessor::new(
                "mock",
                offsession_mock::MockConfig::default(),
            )))
            .store(store)
            .clock(Arc::new(ManualClock::new(Timestamp::from_millis(0))))
            .build()
            .unwrap()
    };
    let start = Timestamp::parse_rfc3339("2026-03-01T00:00:00Z").unwrap();
    let later = Timestamp::parse_rfc3339("2026-03-04T00:00:00Z").unwrap();
    let id = {
        let first = engine(Arc::new(
            SqliteStore::open(&file, Synchronous::Normal).unwrap(),
        ));
        let clock = first.create_test_clock(start).await.unwrap();
        first.advance_test_clock(&clock.id, later).await.unwrap();
        clock.id
    };
    let second = engine(Arc::new(
        SqliteStore::open(&file, Synchronous::Normal).unwrap(),
    ));
    let clock = second.retrieve_test_clock(&id).await.unwrap();
    assert_eq!(clock.frozen_time, later);
}

#[tokio::test]
async fn a_bad_store_url_is_refused_by_key() {
    let dir = tempfile::tempdir().unwrap();
    for (url, needle) in [
        ("mysql://localhost/x", "is not `memory:`"),
        ("sqlite://", "needs a file path"),
        ("postgres://u:hunter2@127.0.0.1:1/x", "store.url"),
    ] {
        let path = write(&dir, "c.toml", &config_text(url, "offsession"));
        let err = match config::load(&path) {
            Err(err) => err.to_string(),
            Ok(config) => wiring::open_store(&path, &config)
                .await
                .unwrap_err()
                .to_string(),
        };
        assert!(err.contains("store.url"), "{url}: {err}");
        assert!(err.contains(needle), "{url}: {err}");
        assert!(!err.contains("hunter2"), "the password leaked: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_circuit_breaker_outlives_the_engine_that_opened_it() {
    use offsession_orchestrator::BreakerState;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("breakers.db");
    let now = Timestamp::parse_rfc3339("2026-03-01T00:00:00Z").unwrap();
    let engine = |store: Arc<dyn Store>, fault_rate: f64| {
        Engine::builder()
            .processor(Arc::new(offsession_mock::MockProcessor::new(
                "mock",
                offsession_mock::MockConfig {
                    fault_rate,
                    ..offsession_mock::MockConfig::default()
                },
            )))
            .store(store)
            .clock(Arc::new(ManualClock::new(now)))
            .build()
            .unwrap()
    };
    {
        // Every send faults: after 20 the breaker opens, and its state is saved.
        let first = engine(
            Arc::new(SqliteStore::open(&file, Synchronous::Normal).unwrap()),
            1.0,
        );
        for i in 0..30 {
            let body = format!(
                r#"{{"amount":{{"value":1000,"currency":"usd"}},"cadence":"recurring","customer":"cus_{i}","payment_method":"pm_card_visa__{i}"}}"#
            );
            first.create_json(body.as_bytes(), None).await.unwrap();
        }
        first.run_due().await.unwrap();
        assert_eq!(first.circuit_state("mock", now), Some(BreakerState::Open));
    }
    let second = engine(
        Arc::new(SqliteStore::open(&file, Synchronous::Normal).unwrap()),
        0.0,
    );
    assert_eq!(
        second.circuit_state("mock", now),
        Some(BreakerState::Closed)
    );
    second.restore_breakers().await.unwrap();
    assert_eq!(
        second.circuit_state("mock", now),
        Some(BreakerState::Open),
        "restored from the store"
    );
}

/// A store holds one mode's payments: the first live command records it, and a
/// command of the other mode is refused by key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_holds_one_modes_payments() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("mode.db"), Synchronous::Normal).unwrap();
    // Checking (check-config) records nothing: an empty store takes any mode.
    wiring::check_store_mode(&store, true, false).await.unwrap();
    wiring::check_store_mode(&store, false, true).await.unwrap();
    wiring::check_store_mode(&store, false, true).await.unwrap();
    let err = wiring::check_store_mode(&store, true, true)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("engine.livemode") && err.contains("test-mode payments"),
        "{err}"
    );
    // A store from before the record, holding live payments, is live whoever comes
    // first, and a check of it says so without writing.
    let live = SqliteStore::open(&dir.path().join("live.db"), Synchronous::Normal).unwrap();
    let mut payment = offsession_store::conformance::sample_record("osp_live", 1_000, None);
    payment.payment.livemode = true;
    live.insert(&payment).await.unwrap();
    assert!(wiring::check_store_mode(&live, false, false).await.is_err());
    assert_eq!(live.load_state("store/mode").await.unwrap(), None);
    assert!(wiring::check_store_mode(&live, false, true).await.is_err());
    wiring::check_store_mode(&live, true, true).await.unwrap();
    assert_eq!(
        live.load_state("store/mode").await.unwrap().as_deref(),
        Some("live")
    );
}
