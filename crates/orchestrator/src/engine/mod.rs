//! The engine: its state and the hand-off from the builder here; each concern in
//! its own module.

mod attempt;
mod intake;
mod manual;
mod outcome;
mod scheduler;
mod test_clocks;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::stream::StreamExt;
use offsession_core::payment::{ObjectTag, RetryDetails};
use offsession_core::request::{
    parse_create, resolve_for_method, validate_create, CreateRules, MethodRules, ValidCreate,
};
use offsession_core::store::Expected;
use offsession_core::text::quote;
use offsession_core::{
    attempt_idempotency_key, transition, ApiError, AttemptObservation, AttemptOutcome,
    AttemptRecord, AuthorizeRequest, CancelRequest, CaptureRequest, CardAttempt, Clock, ClockScope,
    CreateOffSessionPayment, DeclineCategory, DeclineCodes, ErrorCode, Event, EventSink, EventType,
    FailureReason, IdempotencyClaim, Lease, ManualClock, OffSessionPayment, PaymentRecord,
    PaymentStatus, Processor, RetryContext, RetryDecision, RetryPolicy, RetryStrategy, Store,
    StoreError, Timestamp, Transition,
};
use offsession_retry::DeclineTable;

use crate::breaker::{Breaker, BreakerConfig, BreakerState};
use crate::builder::{EngineBuilder, EngineConfig};
use crate::ids::IdGenerator;
use crate::pacing::Pacer;
use crate::routing::Router;
use crate::EngineError;

/// What one scheduler pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Payments handled (attempts, replays, expiries).
    pub handled: u64,
    /// Handlings that lost a race to another change and were skipped.
    pub conflicts: u64,
}

impl RunReport {
    fn add(&mut self, other: RunReport) {
        self.handled += other.handled;
        self.conflicts += other.conflicts;
    }
}

/// How long one scheduled handling of a payment took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptTiming {
    /// From claim to stored outcome.
    pub total: Duration,
    /// Of which waiting for a rate-limit permit and for the processor.
    pub processor: Duration,
}

impl AttemptTiming {
    /// The engine's own time: `total - processor`.
    pub fn overhead(&self) -> Duration {
        self.total.saturating_sub(self.processor)
    }
}

/// Receives every [`AttemptTiming`] (benchmarks, profiling).
#[derive(Clone)]
pub struct TimingObserver(pub Arc<dyn Fn(AttemptTiming) + Send + Sync>);

impl std::fmt::Debug for TimingObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TimingObserver")
    }
}

/// A test clock as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestClock {
    /// `clock_…`.
    pub id: String,
    /// Its current time.
    pub frozen_time: Timestamp,
}

struct Inner {
    config: EngineConfig,
    processors: Vec<Arc<dyn Processor>>,
    policies: HashMap<String, Arc<dyn RetryPolicy>>,
    policy_names: Vec<String>,
    strategies: HashMap<RetryStrategy, Arc<dyn RetryPolicy>>,
    available_strategies: Vec<RetryStrategy>,
    declines: DeclineTable,
    guards: Vec<Arc<offsession_retry::NetworkGuard>>,
    router: Router,
    supported_types: Vec<String>,
    breakers: HashMap<String, Breaker>,
    breaker_config: BreakerConfig,
    pacers: HashMap<String, Pacer>,
    timing: Option<TimingObserver>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    events: Arc<dyn EventSink>,
    test_clocks: RwLock<HashMap<String, Arc<ManualClock>>>,
    ids: IdGenerator,
}

/// The off-session payments engine. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("instance_id", &self.inner.config.instance_id)
            .field(
                "processors",
                &self
                    .inner
                    .processors
                    .iter()
                    .map(|p| p.id())
                    .collect::<Vec<_>>(),
            )
            .field("policies", &self.inner.policy_names)
            .finish_non_exhaustive()
    }
}

fn store_error(err: StoreError) -> ApiError {
    match err {
        StoreError::NotFound(id) => ApiError::new(
            ErrorCode::ResourceMissing,
            format!("no off-session payment `{id}`"),
        ),
        StoreError::Conflict { id, .. } => ApiError::new(
            ErrorCode::OffSessionPaymentConcurrentUpdate,
            format!("payment `{id}` was changed by another request at the same time; retry"),
        ),
        other => ApiError::new(ErrorCode::ApiError, other.to_string()),
    }
}

impl Engine {
    /// A builder.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    pub(crate) fn from_builder(builder: EngineBuilder) -> Engine {
        let mut policy_names: Vec<String> = builder.policies.keys().cloned().collect();
        policy_names.sort();
        let mut available_strategies: Vec<RetryStrategy> =
            builder.strategies.keys().copied().collect();
        available_strategies.push(RetryStrategy::Scheduled);
        available_strategies.sort();
        let config = builder.config;
        let ids = IdGenerator::new(config.id_seed, config.livemode);
        let mut supported_types: Vec<String> = builder
            .processors
            .iter()
            .flat_map(|p| p.capabilities().payment_method_types.clone())
            .collect();
        supported_types.sort();
        supported_types.dedup();
        let breakers = builder
            .processors
            .iter()
            .map(|p| (p.id().to_owned(), Breaker::new(builder.breaker)))
            .collect();
        let pacers = builder
            .rate_limits
            .iter()
            .filter_map(|(id, limit)| Pacer::new(*limit).map(|p| (id.clone(), p)))
            .collect();
        Engine {
            inner: Arc::new(Inner {
                processors: builder.processors,
                policies: builder.policies,
                policy_names,
                strategies: builder.strategies,
                available_strategies,
                declines: builder.declines.unwrap_or_else(DeclineTable::standard),
                guards: builder.guards,
                router: builder.router.expect("router built by build"),
                supported_types,
                breakers,
                breaker_config: builder.breaker,
                pacers,
                timing: builder.timing,
                // `build` checked these are set.
                store: builder.store.expect("store checked by build"),
                clock: builder.clock.expect("clock set by build"),
                events: builder.events.expect("events set by build"),
                test_clocks: RwLock::new(HashMap::new()),
                ids,
                config,
            }),
        }
    }

    /// Settings.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// How often the network-rules guard intervened: (retries blocked, retries
    /// deferred), over every policy.
    pub fn guard_interventions(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        self.inner.guards.iter().fold((0, 0), |(b, d), g| {
            (
                b + g.counters().blocked.load(Ordering::Relaxed),
                d + g.counters().deferred.load(Ordering::Relaxed),
            )
        })
    }

    /// Now, by the engine clock.
    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    fn test_clock(&self, id: &str) -> Option<Arc<ManualClock>> {
        self.inner
            .test_clocks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    fn now_for(&self, payment: &OffSessionPayment) -> Timestamp {
        match payment
            .test_clock
            .as_deref()
            .and_then(|id| self.test_clock(id))
        {
            Some(clock) => clock.now(),
            None => self.inner.clock.now(),
        }
    }

    fn processor(&self, id: &str) -> Option<&Arc<dyn Processor>> {
        self.inner.processors.iter().find(|p| p.id() == id)
    }

    /// Emits the events of a status change (see [`EventType::for_change`]).
    fn emit_change(&self, from: PaymentStatus, payment: &OffSessionPayment, at: Timestamp) {
        for event in EventType::for_change(from, payment.status) {
            self.emit(*event, payment, at);
        }
    }

    fn emit(&self, event_type: EventType, payment: &OffSessionPayment, at: Timestamp) {
        if !self.inner.events.wants_events() {
            return;
        }
        self.inner.events.emit(Event {
            id: self.inner.ids.next("evt"),
            object: "v2.core.event".into(),
            event_type,
            created: at,
            livemode: payment.livemode,
            related_object: offsession_core::events::RelatedObject {
                id: payment.id.clone(),
                object_type: offsession_core::payment::OBJECT_NAME.into(),
                url: format!("/v2/payments/off_session_payments/{}", payment.id),
            },
            data: payment.clone(),
        });
    }

    /// A payment by id.
    pub async fn retrieve(&self, id: &str) -> Result<OffSessionPayment, ApiError> {
        Ok(self.record(id).await?.payment)
    }

    /// A payment with the engine's bookkeeping (attempt history).
    pub async fn record(&self, id: &str) -> Result<PaymentRecord, ApiError> {
        self.inner
            .store
            .get(id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| store_error(StoreError::NotFound(id.to_owned())))
    }

    /// Payments, newest first.
    pub async fn list(
        &self,
        limit: usize,
        starting_after: Option<&str>,
    ) -> Result<Vec<OffSessionPayment>, ApiError> {
        Ok(self
            .list_records(limit, starting_after)
            .await?
            .into_iter()
            .map(|record| record.payment)
            .collect())
    }

    /// Payments with the engine's bookkeeping, newest first.
    pub async fn list_records(
        &self,
        limit: usize,
        starting_after: Option<&str>,
    ) -> Result<Vec<PaymentRecord>, ApiError> {
        self.inner
            .store
            .list(limit, starting_after)
            .await
            .map_err(store_error)
    }
}
