//! The engine: its state and the hand-off from the builder here; each concern in
//! its own module.

mod attempt;
mod emit;
mod health;
pub(crate) mod instances;
mod intake;
mod manual;
mod outcome;
mod scheduler;
mod step;
pub(crate) mod test_clocks;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::stream::StreamExt;
use offsession_core::payment::{ObjectTag, RetryDetails};
use offsession_core::request::{
    parse_create, resolve_for_method, validate_create, CreateRules, MethodRules, ValidCreate,
};
use offsession_core::store::Expected;
use offsession_core::{
    transition, ApiError, AttemptObservation, AttemptOutcome, AttemptRecord, AuthorizeRequest,
    CancelRequest, CaptureRequest, CardAttempt, Clock, ClockScope, CreateOffSessionPayment,
    DeclineCategory, DeclineCodes, ErrorCode, EventNotification, EventSink, EventType,
    FailureReason, FaultKind, IdSource, IdempotencyClaim, Lease, ManualClock, OffSessionPayment,
    PaymentMethodType, PaymentRecord, PaymentStatus, Processor, RetryContext, RetryDecision,
    RetryPolicy, RetryStrategy, Store, StoreError, Timestamp, Transition,
};
use offsession_retry::DeclineTable;

use crate::breaker::{Breaker, BreakerConfig, BreakerState};
use crate::config::EngineConfig;
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

/// A payment with the engine's bookkeeping, read-only. The record's version and
/// lease stay between the engine and its store: a caller changes a payment only
/// through the engine's operations, each a compare-and-set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentView {
    /// The API object.
    pub payment: OffSessionPayment,
    /// The primary processor.
    pub processor: String,
    /// Processors the payment may cascade to, in order.
    pub fallbacks: Vec<String>,
    /// Type and card facts from preflight.
    pub method: Option<offsession_core::PaymentMethodDetails>,
    /// When the scheduler next acts on it.
    pub due_at: Option<Timestamp>,
    /// Authorization attempts, oldest first.
    pub attempts: Vec<AttemptRecord>,
    /// The next run replays the last attempt with the same key.
    pub replay_pending: bool,
    /// When the first attempt was sent.
    pub first_attempt_at: Option<Timestamp>,
    /// Processor ids of a held authorization.
    pub authorization: Option<offsession_core::ProcessorReference>,
    /// The latest time the pending retry may run.
    pub retry_latest: Option<Timestamp>,
}

impl From<PaymentRecord> for PaymentView {
    fn from(record: PaymentRecord) -> PaymentView {
        PaymentView {
            payment: record.payment,
            processor: record.processor,
            fallbacks: record.fallbacks,
            method: record.method,
            due_at: record.due_at,
            attempts: record.attempts,
            replay_pending: record.replay_pending,
            first_attempt_at: record.first_attempt_at,
            authorization: record.authorization,
            retry_latest: record.retry_latest,
        }
    }
}

/// A test clock as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestClock {
    /// `clock_…`.
    pub id: String,
    /// Its current time.
    pub frozen_time: Timestamp,
    /// When it was made (engine time; `None` for a clock stored before this was kept).
    pub created: Option<Timestamp>,
    /// The name it was given, if any.
    pub name: Option<String>,
}

/// The processors and everything kept per processor.
pub(crate) struct Processors {
    /// In configuration order; the first is the default primary.
    pub(crate) list: Vec<Arc<dyn Processor>>,
    /// Every type at least one processor charges, sorted.
    pub(crate) supported_types: Vec<PaymentMethodType>,
    pub(crate) router: Router,
    pub(crate) breakers: HashMap<String, Breaker>,
    pub(crate) breaker_config: BreakerConfig,
    pub(crate) pacers: HashMap<String, Pacer>,
}

impl Processors {
    fn get(&self, id: &str) -> Option<&Arc<dyn Processor>> {
        self.list.iter().find(|p| p.id() == id)
    }
}

/// The retry policies, each wrapped by the network-rules guard.
pub(crate) struct Policies {
    /// Named scheduled policies (`retry_details.retry_policy`).
    pub(crate) named: HashMap<String, Arc<dyn RetryPolicy>>,
    /// Their names, sorted (error messages).
    pub(crate) names: Vec<String>,
    /// The policy behind each strategy.
    pub(crate) strategies: HashMap<RetryStrategy, Arc<dyn RetryPolicy>>,
    /// The strategies a request may ask for, sorted.
    pub(crate) available: Vec<RetryStrategy>,
    pub(crate) guards: Vec<Arc<offsession_retry::NetworkGuard>>,
    /// Whether the network rules apply (always, outside simulations).
    pub(crate) guarded: bool,
}

/// Everything an engine is built from, complete: the builder fills every part.
pub(crate) struct Parts {
    pub(crate) config: EngineConfig,
    pub(crate) processors: Processors,
    pub(crate) policies: Policies,
    pub(crate) declines: DeclineTable,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) ids: Arc<dyn IdSource>,
    pub(crate) events: Arc<dyn EventSink>,
    /// Benchmarks only.
    pub(crate) timing: Option<TimingObserver>,
}

/// The parts, and the test clocks created since.
struct Inner {
    parts: Parts,
    test_clocks: RwLock<HashMap<String, Arc<ManualClock>>>,
    /// One lock per payment method with a cap decision under way in this process.
    card_locks: std::sync::Mutex<HashMap<String, Arc<futures::lock::Mutex<()>>>>,
    /// The instances alive at the last heartbeat (empty before the first).
    alive: std::sync::Mutex<Vec<String>>,
    /// Captures and cancels under way in this process, by test clock: the clock's
    /// advances wait for them (see `test_clocks::ClockHold`).
    clock_holds: std::sync::Mutex<HashMap<String, usize>>,
}

impl std::ops::Deref for Inner {
    type Target = Parts;

    fn deref(&self) -> &Parts {
        &self.parts
    }
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
                    .list
                    .iter()
                    .map(|p| p.id())
                    .collect::<Vec<_>>(),
            )
            .field("policies", &self.inner.policies.names)
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
    pub(crate) fn new(parts: Parts) -> Engine {
        Engine {
            inner: Arc::new(Inner {
                parts,
                test_clocks: RwLock::new(HashMap::new()),
                card_locks: std::sync::Mutex::new(HashMap::new()),
                alive: std::sync::Mutex::new(Vec::new()),
                clock_holds: std::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The settings the engine was built with.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// How often the network-rules guard intervened: (retries blocked, retries
    /// deferred), over every policy.
    pub fn guard_interventions(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        self.inner.policies.guards.iter().fold((0, 0), |(b, d), g| {
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
        self.inner.processors.get(id)
    }

    /// A payment by id.
    pub async fn retrieve(&self, id: &str) -> Result<OffSessionPayment, ApiError> {
        Ok(self.record(id).await?.payment)
    }

    /// A payment with the engine's bookkeeping (attempt history, schedule).
    pub async fn record(&self, id: &str) -> Result<PaymentView, ApiError> {
        self.stored(id).await.map(PaymentView::from)
    }

    async fn stored(&self, id: &str) -> Result<PaymentRecord, ApiError> {
        self.inner
            .store
            .get(id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| store_error(StoreError::NotFound(id.to_owned())))
    }

    /// How many payments are in each status.
    pub async fn count_by_status(&self) -> Result<Vec<(PaymentStatus, u64)>, ApiError> {
        self.inner
            .store
            .count_by_status()
            .await
            .map_err(store_error)
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
    ) -> Result<Vec<PaymentView>, ApiError> {
        Ok(self
            .inner
            .store
            .list(limit, starting_after)
            .await
            .map_err(store_error)?
            .into_iter()
            .map(PaymentView::from)
            .collect())
    }
}
