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
    /// Name of this engine instance, written on leases.
    pub instance_id: String,
    /// Seed of the id prefix; instances sharing a store need different seeds.
    pub id_seed: u64,
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
            instance_id: "offsession-1".into(),
            id_seed: 1,
            ach_retries_enabled: false,
            sepa_debit_retries_enabled: false,
            default_retry_policy: "stripe_recommended".into(),
            lease: Duration::from_secs(300),
            authorization_validity: Duration::from_secs(7 * 86_400),
            replay_backoff: [60, 300, 1_800, 7_200]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            concurrency: 64,
            claim_batch: 1_024,
            cascade_categories: vec![
                offsession_core::DeclineCategory::SoftTransient,
                offsession_core::DeclineCategory::SoftIssuer,
            ],
        }
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
        if self.config.concurrency == 0 || self.config.claim_batch == 0 {
            return Err(EngineError::Config(
                "concurrency and claim_batch must be at least 1".into(),
            ));
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
