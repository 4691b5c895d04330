//! Shared set-up for engine tests: an engine on a memory store and a mock processor,
//! and a test clock to drive payments.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use offsession_core::{CollectEvents, OffSessionPayment, Processor, Timestamp};
use offsession_mock::{MockConfig, MockProcessor, Vault};
use offsession_orchestrator::{Engine, EngineConfig};
use offsession_store::MemoryStore;
use serde_json::{json, Value};

pub const START: &str = "2026-01-05T09:00:00.000Z";
pub const DAY: Duration = Duration::from_secs(86_400);

pub struct Harness {
    pub engine: Engine,
    pub mock: Arc<MockProcessor>,
    pub events: Arc<CollectEvents>,
    /// The engine's store, for tests that play a crashed or racing instance.
    pub store: Arc<MemoryStore>,
    pub clock: String,
}

pub fn start() -> Timestamp {
    Timestamp::parse_rfc3339(START).unwrap()
}

pub async fn harness_with(mock_config: MockConfig, config: EngineConfig) -> Harness {
    let mock = Arc::new(MockProcessor::new("mock", mock_config));
    harness_with_processor(mock.clone(), mock, config).await
}

pub async fn harness_with_processor(
    mock: Arc<MockProcessor>,
    processor: Arc<dyn Processor>,
    config: EngineConfig,
) -> Harness {
    harness_with_declines(mock, processor, config, None).await
}

/// [`harness_with_processor`] with a decline table other than the shipped one.
pub async fn harness_with_declines(
    mock: Arc<MockProcessor>,
    processor: Arc<dyn Processor>,
    config: EngineConfig,
    declines: Option<offsession_retry::DeclineTable>,
) -> Harness {
    let events = Arc::new(CollectEvents::new());
    let store = Arc::new(MemoryStore::new());
    let mut builder = Engine::builder()
        .config(config)
        .processor(processor)
        .store(store.clone())
        .events(events.clone());
    if let Some(table) = declines {
        builder = builder.decline_table(table);
    }
    let engine = builder.build().unwrap();
    let clock = engine.create_test_clock(start()).await.unwrap().id;
    Harness {
        engine,
        store,
        mock,
        events,
        clock,
    }
}

pub async fn harness() -> Harness {
    harness_with(MockConfig::default(), EngineConfig::default()).await
}

pub fn vault(text: &str) -> MockConfig {
    MockConfig {
        vault: Vault::from_toml(text).unwrap(),
        ..MockConfig::default()
    }
}

impl Harness {
    pub fn body(&self, payment_method: &str) -> Value {
        json!({
            "amount": {"value": 2000, "currency": "usd"},
            "cadence": "recurring",
            "customer": "cus_123",
            "payment_method": payment_method,
            "metadata": {"invoice": "in_1"},
            "test_clock": self.clock,
        })
    }

    pub async fn create(&self, body: Value) -> OffSessionPayment {
        self.engine
            .create_json(body.to_string().as_bytes(), None)
            .await
            .unwrap()
    }

    pub async fn create_err(&self, body: Value) -> offsession_core::ApiError {
        self.engine
            .create_json(body.to_string().as_bytes(), None)
            .await
            .unwrap_err()
    }

    /// Advances the test clock by `by` from its current time.
    pub async fn advance(&self, by: Duration) {
        let now = self.now().await;
        self.engine
            .advance_test_clock(&self.clock, now.plus(by))
            .await
            .unwrap();
    }

    pub async fn now(&self) -> Timestamp {
        self.engine
            .retrieve_test_clock(&self.clock)
            .await
            .unwrap()
            .frozen_time
    }

    pub async fn get(&self, id: &str) -> OffSessionPayment {
        self.engine.retrieve(id).await.unwrap()
    }
}
