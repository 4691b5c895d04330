//! The offsession `Engine`: takes create requests, validates and stores them, runs
//! authorization attempts when they are due, files each outcome through the decline
//! table and the payment's retry policy, and reports every state change as an event.
//!
//! Data flow of one payment: intake → validate (core) → preflight (processor) →
//! store (`pending`) → scheduler claims it when due (lease) → attempt written to the
//! store with its idempotency key (write-ahead) → `Processor::authorize` → classify →
//! policy → store (next due time or terminal status) → events.
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]

pub mod breaker;
mod builder;
mod config;
mod engine;
pub mod pacing;
pub mod routing;

pub use breaker::{BreakerConfig, BreakerState};
pub use builder::EngineBuilder;
pub use config::{ConfigRefused, EngineConfig};
pub use engine::instances::{BEAT_RETENTION, INSTANCE_PREFIX};
pub use engine::test_clocks::ADVANCE_LEASE;
pub use engine::{AttemptTiming, Engine, PaymentView, RunReport, TestClock, TimingObserver};
pub use pacing::RateLimit;
pub use routing::{Route, RouteMatch, RouteRule, RoutingConfig};

/// Errors building or running the engine (as opposed to API errors on requests).
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The builder is missing a part or holds inconsistent parts.
    #[error("engine configuration: {0}")]
    Config(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] offsession_core::StoreError),
}
