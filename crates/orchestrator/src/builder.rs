//! Building an `Engine` from its parts. The builder checks the parts and hands the
//! engine a complete [`Parts`]: nothing is optional after `build`.

use std::collections::HashMap;
use std::sync::Arc;

use offsession_core::events::DiscardEvents;
use offsession_core::{
    Clock, EventSink, Processor, RetryPolicy, RetryStrategy, Store, SystemClock,
};
use offsession_retry::{DeclineTable, NetworkGuard, NoRetry, ScheduledPolicy};

use offsession_core::{IdSource, PaymentMethodType, RandomIds, SeededIds};

use crate::breaker::{Breaker, BreakerConfig};
use crate::config::EngineConfig;
use crate::engine::{Engine, Parts, Policies, Processors, TimingObserver};
use crate::pacing::{Pacer, RateLimit};
use crate::routing::{Router, RoutingConfig};
use crate::EngineError;

/// Assembles an [`Engine`]. Processors are tried in the order added; the first is the
/// primary.
#[derive(Debug, Default)]
pub struct EngineBuilder {
    config: EngineConfig,
    processors: Vec<Arc<dyn Processor>>,
    policies: HashMap<String, Arc<dyn RetryPolicy>>,
    strategies: HashMap<RetryStrategy, Arc<dyn RetryPolicy>>,
    declines: Option<DeclineTable>,
    store: Option<Arc<dyn Store>>,
    clock: Option<Arc<dyn Clock>>,
    ids: Option<Arc<dyn IdSource>>,
    events: Option<Arc<dyn EventSink>>,
    routing: RoutingConfig,
    breaker: BreakerConfig,
    rate_limits: HashMap<String, RateLimit>,
    timing: Option<TimingObserver>,
    unguarded: bool,
}

impl Engine {
    /// A builder.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }
}

impl EngineBuilder {
    /// Builds the engine without the card-network rules guard: policies decide alone
    /// and nothing re-checks the caps before an attempt. Only for simulations that
    /// show what the guard prevents; no configuration key reaches it.
    pub fn without_network_guard(mut self) -> Self {
        self.unguarded = true;
        self
    }

    /// The engine's settings (default: [`EngineConfig::default`]).
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// Adds a processor; the first added is the primary unless routing says otherwise.
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

    /// The pace the engine keeps with processor `id` (default: unpaced).
    pub fn rate_limit(mut self, id: &str, limit: RateLimit) -> Self {
        self.rate_limits.insert(id.to_owned(), limit);
        self
    }

    /// Receives the timing of every handled attempt (engine overhead measurement).
    pub fn timing_observer(mut self, observer: TimingObserver) -> Self {
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

    /// Where object ids come from (default: [`RandomIds`], or [`SeededIds`] when
    /// `EngineConfig::id_seed` is set).
    pub fn ids(mut self, ids: Arc<dyn IdSource>) -> Self {
        self.ids = Some(ids);
        self
    }

    /// Where events go (default: discarded).
    pub fn events(mut self, events: Arc<dyn EventSink>) -> Self {
        self.events = Some(events);
        self
    }

    /// Checks the parts and builds the engine. Without any named policy, Stripe's
    /// recommended schedule is installed as `stripe_recommended`.
    pub fn build(self) -> Result<Engine, EngineError> {
        let EngineBuilder {
            config,
            processors,
            mut policies,
            mut strategies,
            declines,
            store,
            clock,
            ids,
            events,
            routing,
            breaker,
            rate_limits,
            timing,
            unguarded,
        } = self;
        if processors.is_empty() {
            return Err(EngineError::Config(
                "at least one processor is required".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for p in &processors {
            if !seen.insert(p.id().to_owned()) {
                return Err(EngineError::Config(format!(
                    "processor id `{}` is used twice",
                    p.id()
                )));
            }
        }
        let router = Router::new(routing, &processors).map_err(EngineError::Config)?;
        if let Some(unknown) = rate_limits
            .keys()
            .find(|id| !processors.iter().any(|p| p.id() == id.as_str()))
        {
            return Err(EngineError::Config(format!(
                "rate limit for processor `{unknown}`, which is not configured"
            )));
        }
        let store = store.ok_or_else(|| EngineError::Config("a store is required".into()))?;
        if policies.is_empty() {
            let policy = ScheduledPolicy::stripe_recommended();
            policies.insert(policy.name().to_owned(), Arc::new(policy));
        }
        config
            .check_default_policy(policies.keys().map(String::as_str))
            .map_err(|refused| EngineError::Config(refused.to_string()))?;
        config
            .check()
            .map_err(|refused| EngineError::Config(refused.to_string()))?;
        breaker
            .check()
            .map_err(|message| EngineError::Config(format!("circuit breaker: {message}")))?;
        for (id, limit) in &rate_limits {
            limit.check().map_err(|message| {
                EngineError::Config(format!("rate limit of `{id}`: {message}"))
            })?;
        }
        strategies
            .entry(RetryStrategy::None)
            .or_insert_with(|| Arc::new(NoRetry));
        let declines = declines.unwrap_or_else(DeclineTable::standard);
        let rules = declines.network_rules().clone();
        let mut guards = Vec::new();
        let guarded = !unguarded;
        let mut guard = |policy: &mut Arc<dyn RetryPolicy>| {
            if !guarded {
                return;
            }
            let guarded = Arc::new(NetworkGuard::new(policy.clone(), rules.clone()));
            guards.push(guarded.clone());
            *policy = guarded;
        };
        policies.values_mut().for_each(&mut guard);
        strategies.values_mut().for_each(&mut guard);

        let mut names: Vec<String> = policies.keys().cloned().collect();
        names.sort();
        let mut available: Vec<RetryStrategy> = strategies.keys().copied().collect();
        available.push(RetryStrategy::Scheduled);
        available.sort();
        let mut supported_types: Vec<PaymentMethodType> = processors
            .iter()
            .flat_map(|p| p.capabilities().payment_method_types.clone())
            .collect();
        supported_types.sort();
        supported_types.dedup();
        let breakers = processors
            .iter()
            .map(|p| (p.id().to_owned(), Breaker::new(breaker)))
            .collect();
        let pacers = rate_limits
            .iter()
            .filter_map(|(id, limit)| Pacer::new(*limit).map(|p| (id.clone(), p)))
            .collect();
        let ids = ids.unwrap_or_else(|| match config.id_seed {
            Some(seed) => Arc::new(SeededIds::new(seed, config.livemode)),
            None => Arc::new(RandomIds::new(config.livemode)),
        });
        Ok(Engine::new(Parts {
            processors: Processors {
                list: processors,
                supported_types,
                router,
                breakers,
                breaker_config: breaker,
                pacers,
            },
            policies: Policies {
                named: policies,
                names,
                strategies,
                available,
                guards,
                guarded,
            },
            declines,
            store,
            clock: clock.unwrap_or_else(|| Arc::new(SystemClock)),
            ids,
            events: events.unwrap_or_else(|| Arc::new(DiscardEvents)),
            timing,
            config,
        }))
    }
}
