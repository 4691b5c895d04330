//! Building an `Engine` from its parts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use offsession_core::events::DiscardEvents;
use offsession_core::{
    Clock, EventSink, Processor, RetryPolicy, RetryStrategy, Store, SystemClock,
};
use offsession_retry::{DeclineTable, NetworkGuard, NoRetry, ScheduledPolicy};

use crate::breaker::BreakerConfig;
use crate::engine::Engine;
use crate::pacing::RateLimit;
use crate::routing::{Router, RoutingConfig};
use crate::EngineError;

/// Engine settings (the runner reads them from `[engine]`).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Live mode refuses test clocks; ids carry no `test_` marker.
    pub livemode: bool,
    /// Name of this engine instance, written on leases. The default is unique per
    /// engine (`offsession-` and random digits); a configured name must be unique
    /// among the instances sharing a store.
    pub instance_id: String,
    /// `None` (the default): ids are time-ordered random UUIDv7s, unique across
    /// processes and restarts. `Some(seed)`: reproducible ids for simulations against
    /// the mock; two runs with the same seed reuse ids and attempt idempotency keys,
    /// so a seeded engine must never face a real processor.
    pub id_seed: Option<u64>,
    /// ACH (us_bank_account) retries switched on.
    pub ach_retries_enabled: bool,
    /// SEPA Debit retries switched on.
    pub sepa_debit_retries_enabled: bool,
    /// Policy for `scheduled` without a name, and for `best_available` on cards when
    /// no smart policy is installed.
    pub default_retry_policy: String,
    /// How long a claim on a payment lasts before another scheduler may take it.
    pub lease: Duration,
    /// How long a manual-capture authorization is held before it expires.
    pub authorization_validity: Duration,
    /// Waits before replaying an attempt after a processor fault or unknown outcome,
    /// with the same idempotency key. After the last one a fault counts as a
    /// transient decline; an unknown outcome keeps being reconciled at the last wait.
    pub replay_backoff: Vec<Duration>,
    /// An attempt that settles nothing (fault, refusal, unknown outcome) is replayed
    /// with the same key at most this many times; then the payment ends `failed`
    /// (an unknown outcome flagged for reconciliation). A 429 answer never ends the
    /// replays by count, only by `replay_deadline`.
    pub max_replays: u32,
    /// Replays of one attempt end this long after its first unsettled answer,
    /// whatever the count.
    pub replay_deadline: Duration,
    /// `compartment_id` shown on every payment (the owning workspace).
    pub compartment_id: String,
    /// Attempts run at once.
    pub concurrency: usize,
    /// Payments claimed per store round trip.
    pub claim_batch: usize,
    /// Decline categories after which an orchestrated payment cascades to the next
    /// processor at once (never hard declines).
    pub cascade_categories: Vec<offsession_core::DeclineCategory>,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            livemode: false,
            instance_id: format!("offsession-{:016x}", uuid::Uuid::now_v7().as_u128() as u64),
            id_seed: None,
            ach_retries_enabled: false,
            sepa_debit_retries_enabled: false,
            default_retry_policy: "stripe_recommended".into(),
            lease: Duration::from_secs(300),
            authorization_validity: Duration::from_secs(7 * 86_400),
            replay_backoff: [60, 300, 1_800, 7_200]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            max_replays: 10,
            replay_deadline: Duration::from_secs(3 * 86_400),
            compartment_id: "wksp_test_offsession".into(),
            concurrency: 64,
            claim_batch: 1_024,
            cascade_categories: vec![
                offsession_core::DeclineCategory::SoftTransient,
                offsession_core::DeclineCategory::SoftIssuer,
            ],
        }
    }
}

impl EngineConfig {
    /// Refuses values that would make the engine spin, stall or never settle a
    /// payment; the message names the setting.
    pub fn check(&self) -> Result<(), ConfigRefused> {
        let refuse = |key: &'static str, message: String| Err(ConfigRefused { key, message });
        if self.concurrency == 0 {
            return refuse("concurrency", "must be at least 1".into());
        }
        if self.claim_batch == 0 {
            return refuse("claim_batch", "must be at least 1".into());
        }
        if self.lease < Duration::from_secs(1) {
            return refuse(
                "lease",
                format!(
                    "must be at least 1s (got {:?}): a shorter lease lapses before an attempt is written, and schedulers take the payment from each other",
                    self.lease
                ),
            );
        }
        if self.authorization_validity.is_zero() {
            return refuse("authorization_validity", "must be longer than 0s".into());
        }
        if self.replay_backoff.is_empty() {
            return refuse("replay_backoff", "needs at least one wait".into());
        }
        if let Some(short) = self
            .replay_backoff
            .iter()
            .find(|w| **w < Duration::from_secs(1))
        {
            return refuse(
                "replay_backoff",
                format!("every wait must be at least 1s (got {short:?})"),
            );
        }
        if self.max_replays == 0 {
            return refuse("max_replays", "must be at least 1".into());
        }
        if self.replay_deadline.is_zero() {
            return refuse("replay_deadline", "must be longer than 0s".into());
        }
        if self.instance_id.trim().is_empty() {
            return refuse("instance_id", "must not be empty".into());
        }
        Ok(())
    }
}

/// A setting [`EngineConfig::check`] refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigRefused {
    /// The setting's name (`lease`, `concurrency`, …).
    pub key: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl std::fmt::Display for ConfigRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`: {}", self.key, self.message)
    }
}

/// Assembles an [`Engine`]. Processors are tried in the order added; the first is the
/// primary.
#[derive(Debug, Default)]
pub struct EngineBuilder {
    pub(crate) config: EngineConfig,
    pub(crate) processors: Vec<Arc<dyn Processor>>,
    pub(crate) policies: HashMap<String, Arc<dyn RetryPolicy>>,
    pub(crate) strategies: HashMap<RetryStrategy, Arc<dyn RetryPolicy>>,
    pub(crate) declines: Option<DeclineTable>,
    pub(crate) store: Option<Arc<dyn Store>>,
    pub(crate) clock: Option<Arc<dyn Clock>>,
    pub(crate) events: Option<Arc<dyn EventSink>>,
    pub(crate) guards: Vec<Arc<NetworkGuard>>,
    pub(crate) routing: RoutingConfig,
    pub(crate) router: Option<Router>,
    pub(crate) breaker: BreakerConfig,
    pub(crate) rate_limits: HashMap<String, RateLimit>,
    pub(crate) timing: Option<crate::engine::TimingObserver>,
}

impl EngineBuilder {
    /// Settings.
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// Adds a processor.
    pub fn processor(mut self, processor: Arc<dyn Processor>) -> Self {
        self.processors.push(processor);
        self
    }

    /// Adds a named scheduled policy (`retry_details.retry_policy`). Every policy is
    /// wrapped by the card-network rules guard when the engine is built.
    pub fn retry_policy(mut self, name: &str, policy: Arc<dyn RetryPolicy>) -> Self {
        self.policies.insert(name.to_owned(), policy);
        self
    }

    /// Installs the policy behind a strategy (`smart`, `heuristic`).
    pub fn strategy(mut self, strategy: RetryStrategy, policy: Arc<dyn RetryPolicy>) -> Self {
        self.strategies.insert(strategy, policy);
        self
    }

    /// Routing rules (default: every processor, in the order added).
    pub fn routing(mut self, routing: RoutingConfig) -> Self {
        self.routing = routing;
        self
    }

    /// Circuit-breaker settings for every processor.
    pub fn circuit_breaker(mut self, breaker: BreakerConfig) -> Self {
        self.breaker = breaker;
        self
    }

    /// A rate limit for processor `id`.
    pub fn rate_limit(mut self, id: &str, limit: RateLimit) -> Self {
        self.rate_limits.insert(id.to_owned(), limit);
        self
    }

    /// Receives the timing of every handled attempt (engine overhead measurement).
    pub fn timing_observer(mut self, observer: crate::engine::TimingObserver) -> Self {
        self.timing = Some(observer);
        self
    }

    /// The decline classification table (default: the shipped one).
    pub fn decline_table(mut self, table: DeclineTable) -> Self {
        self.declines = Some(table);
        self
    }

    /// The store (required).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// The engine clock (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Where events go (default: discarded).
    pub fn events(mut self, events: Arc<dyn EventSink>) -> Self {
        self.events = Some(events);
        self
    }

    /// Checks the parts and builds the engine. Without any named policy, Stripe's
    /// recommended schedule is installed as `stripe_recommended`.
    pub fn build(mut self) -> Result<Engine, EngineError> {
        if self.processors.is_empty() {
            return Err(EngineError::Config(
                "at least one processor is required".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.processors {
            if !seen.insert(p.id().to_owned()) {
                return Err(EngineError::Config(format!(
                    "processor id `{}` is used twice",
                    p.id()
                )));
            }
        }
        self.router =
            Some(Router::new(self.routing.clone(), &self.processors).map_err(EngineError::Config)?);
        if let Some(unknown) = self
            .rate_limits
            .keys()
            .find(|id| !self.processors.iter().any(|p| p.id() == id.as_str()))
        {
            return Err(EngineError::Config(format!(
                "rate limit for processor `{unknown}`, which is not configured"
            )));
        }
        if self.store.is_none() {
            return Err(EngineError::Config("a store is required".into()));
        }
        if self.policies.is_empty() {
            let policy = ScheduledPolicy::stripe_recommended();
            self.policies
                .insert(policy.name().to_owned(), Arc::new(policy));
        }
        if !self
            .policies
            .contains_key(&self.config.default_retry_policy)
        {
            let mut names: Vec<_> = self.policies.keys().cloned().collect();
            names.sort();
            return Err(EngineError::Config(format!(
                "default retry policy `{}` is not configured (configured: {})",
                self.config.default_retry_policy,
                names.join(", ")
            )));
        }
        self.config
            .check()
            .map_err(|refused| EngineError::Config(refused.to_string()))?;
        self.breaker
            .check()
            .map_err(|message| EngineError::Config(format!("circuit breaker: {message}")))?;
        for (id, limit) in &self.rate_limits {
            limit.check().map_err(|message| {
                EngineError::Config(format!("rate limit of `{id}`: {message}"))
            })?;
        }
        self.strategies
            .entry(RetryStrategy::None)
            .or_insert_with(|| Arc::new(NoRetry));
        let rules = self
            .declines
            .get_or_insert_with(DeclineTable::standard)
            .network_rules()
            .clone();
        let mut guards = Vec::new();
        let mut guard = |policy: &mut Arc<dyn RetryPolicy>| {
            let guarded = Arc::new(NetworkGuard::new(policy.clone(), rules.clone()));
            guards.push(guarded.clone());
            *policy = guarded;
        };
        self.policies.values_mut().for_each(&mut guard);
        self.strategies.values_mut().for_each(&mut guard);
        self.guards = guards;
        if self.clock.is_none() {
            self.clock = Some(Arc::new(SystemClock));
        }
        if self.events.is_none() {
            self.events = Some(Arc::new(DiscardEvents));
        }
        Ok(Engine::from_builder(self))
    }
}
