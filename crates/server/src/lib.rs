//! The Off-Session Payments API over HTTP: the engine behind the paths, bodies and
//! errors of Stripe's v2 API, so that Stripe's SDKs drive it by changing their base
//! address, and signed webhook delivery of thin events from the store's outbox.
//!
//! - [`router`]: the axum routes (`/v2/payments/off_session_payments…`,
//!   `/v2/core/events…`, `/v1/test_helpers/test_clocks…`, `/healthz`, `/readyz`).
//! - [`webhooks`]: delivery of the outbox to configured endpoints.
#![warn(missing_docs, rust_2018_idioms, unreachable_pub)]
#![forbid(unsafe_code)]

mod api;
mod auth;
mod clocks;
mod deliveries;
pub mod destinations;
mod errors;
mod idempotency;
mod retention;
mod retries;
pub mod webhooks;

use std::sync::Arc;

use offsession_core::Store;
use offsession_orchestrator::Engine;

pub use api::router;
pub use auth::{hash_key, ApiKeys};
pub use retention::{sweep_forever, Retention};
pub use webhooks::{sign, WebhookEndpoint};

/// Settings of the HTTP API.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Accepted secret keys, by SHA-256.
    pub keys: ApiKeys,
    /// Largest request body, in bytes (413 above).
    pub max_body_bytes: usize,
    /// Requests per second per key (429 above).
    pub requests_per_second: u32,
    /// How long an `Idempotency-Key` of a POST other than a create is remembered.
    pub idempotency_ttl: std::time::Duration,
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub(crate) engine: Engine,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) settings: Arc<ServerSettings>,
    pub(crate) limiter: Arc<auth::KeyLimiter>,
    /// The webhook endpoints of the configuration (API destinations are in the store).
    pub(crate) endpoints: Arc<Vec<WebhookEndpoint>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// The state of a server on `engine` and its `store`.
    pub fn new(engine: Engine, store: Arc<dyn Store>, settings: ServerSettings) -> AppState {
        let limiter = Arc::new(auth::KeyLimiter::new(settings.requests_per_second));
        AppState {
            engine,
            store,
            settings: Arc::new(settings),
            limiter,
            endpoints: Arc::new(Vec::new()),
        }
    }

    /// The configuration's webhook endpoints, for the delivery log and resends.
    pub fn with_endpoints(mut self, endpoints: Vec<WebhookEndpoint>) -> AppState {
        self.endpoints = Arc::new(endpoints);
        self
    }
}
