//! The engine proper.

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

/// How far back the card history given to policies reaches (network caps use 30 days).
const CARD_HISTORY_WINDOW: Duration = Duration::from_secs(30 * 86_400);
/// How many of a card's newest attempts the network rules see. The caps count at most
/// a few dozen attempts (Visa 15 reattempts, Mastercard 10 declines a day, 35 per
/// amount a month), so the newest 256 decide them for any card whose 30 days hold
/// fewer than ~220 attempts that a cap does not count; the bound keeps a decision's
/// cost flat however many payments share one card.
const CARD_HISTORY_LIMIT: usize = 256;
/// Longest processor text quoted on a payment (`last_authorization_attempt_error`).
const QUOTED_CHARS: usize = 500;
/// Retries of a manual operation that lost a race with the scheduler.
const MANUAL_OPERATION_TRIES: usize = 3;

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

fn cadence_label(cadence: offsession_core::Cadence) -> &'static str {
    match cadence {
        offsession_core::Cadence::Recurring => "recurring",
        offsession_core::Cadence::Unscheduled => "unscheduled",
    }
}

/// A manual operation the payment's status does not allow.
fn refusal(refused: offsession_core::TransitionRefused) -> ApiError {
    let message = if refused.from == PaymentStatus::Processing {
        format!("{refused}: an authorization attempt is in flight or its outcome is being reconciled with the processor; retry once the payment leaves `processing`")
    } else {
        refused.to_string()
    };
    ApiError::new(ErrorCode::OffSessionPaymentInvalidStatus, message)
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

/// What kind of answer settled nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FaultKind {
    /// No answer, or none the adapter could read: money may have moved.
    Unknown,
    /// The processor refused the request (400/401/403/3xx): nothing was charged.
    Refused,
    /// HTTP 429: nothing was charged; slow down.
    RateLimited,
    /// A passing fault (5xx, not sent): nothing was charged.
    Unavailable,
}

impl FaultKind {
    /// The metric label.
    fn as_str(self) -> &'static str {
        match self {
            FaultKind::Unknown => "unknown",
            FaultKind::Refused => "refused",
            FaultKind::RateLimited => "rate_limited",
            FaultKind::Unavailable => "unavailable",
        }
    }
}

/// A create request's fingerprint, for idempotency keys.
fn fingerprint(text: &str) -> String {
    format!("{:016x}", offsession_core::hash::fnv1a(text))
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

    // ----- test clocks -------------------------------------------------------------

    /// Creates a test clock frozen at `frozen_time`. Refused in live mode.
    pub fn create_test_clock(&self, frozen_time: Timestamp) -> Result<TestClock, ApiError> {
        if self.inner.config.livemode {
            return Err(ApiError::new(
                ErrorCode::OffSessionPaymentTestClockInLivemode,
                "test clocks are not available in live mode",
            ));
        }
        let id = self.inner.ids.next("clock");
        self.inner
            .test_clocks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), Arc::new(ManualClock::new(frozen_time)));
        Ok(TestClock { id, frozen_time })
    }

    /// A test clock and its current time.
    pub fn retrieve_test_clock(&self, id: &str) -> Result<TestClock, ApiError> {
        let clock = self.test_clock(id).ok_or_else(|| {
            ApiError::new(ErrorCode::ResourceMissing, format!("no test clock `{id}`"))
        })?;
        Ok(TestClock {
            id: id.to_owned(),
            frozen_time: clock.now(),
        })
    }

    /// Moves a test clock to `to`, running, in order, exactly the attempts (and
    /// authorization expiries) of its payments that fall due on the way.
    pub async fn advance_test_clock(&self, id: &str, to: Timestamp) -> Result<TestClock, ApiError> {
        let clock = self.test_clock(id).ok_or_else(|| {
            ApiError::new(ErrorCode::ResourceMissing, format!("no test clock `{id}`"))
        })?;
        if to < clock.now() {
            return Err(ApiError::invalid(
                "frozen_time",
                format!(
                    "must not be before the clock's current time {}",
                    clock.now()
                ),
            ));
        }
        let scope = ClockScope::TestClock(id.to_owned());
        loop {
            let next = self
                .inner
                .store
                .next_due(&scope)
                .await
                .map_err(store_error)?;
            match next {
                Some(due) if due <= to => {
                    clock.set(due);
                    let report = self
                        .run_scope(&scope, clock.now())
                        .await
                        .map_err(|e| ApiError::new(ErrorCode::ApiError, e.to_string()))?;
                    if report.handled == 0 {
                        // Due records held by another instance's lease: nothing this
                        // instance may do until the lease lapses.
                        break;
                    }
                }
                _ => break,
            }
        }
        clock.set(to);
        Ok(TestClock {
            id: id.to_owned(),
            frozen_time: clock.now(),
        })
    }

    // ----- intake ------------------------------------------------------------------

    /// Creates a payment from a JSON body.
    pub async fn create_json(
        &self,
        body: &[u8],
        idempotency_key: Option<&str>,
    ) -> Result<OffSessionPayment, ApiError> {
        let request = parse_create(body)?;
        self.create(&request, idempotency_key).await
    }

    /// Validates, preflights and stores a payment (`pending`). With an idempotency
    /// key, a repeat of the same request returns the original payment and a different
    /// request with the same key is an `idempotency_error`.
    pub async fn create(
        &self,
        request: &CreateOffSessionPayment,
        idempotency_key: Option<&str>,
    ) -> Result<OffSessionPayment, ApiError> {
        let clock_now = match &request.test_clock {
            Some(id) if !self.inner.config.livemode => match self.test_clock(id) {
                Some(clock) => clock.now(),
                None => {
                    return Err(ApiError::invalid(
                        "test_clock",
                        format!("no test clock `{id}`"),
                    ))
                }
            },
            _ => self.inner.clock.now(),
        };
        let valid = validate_create(
            request,
            &CreateRules {
                livemode: self.inner.config.livemode,
                now: clock_now,
                retry_policies: &self.inner.policy_names,
            },
        )?;
        // Preflight asks the first configured processor; routing then uses the facts.
        let processor = self.inner.processors[0].clone();
        let mut payment = self.new_payment(&valid, clock_now);
        let method = processor.preflight(&payment).await?;
        let resolved = resolve_for_method(
            &valid,
            &method,
            &MethodRules {
                supported_types: &self.inner.supported_types,
                ach_retries_enabled: self.inner.config.ach_retries_enabled,
                sepa_debit_retries_enabled: self.inner.config.sepa_debit_retries_enabled,
                available: &self.inner.available_strategies,
                default_policy: &self.inner.config.default_retry_policy,
            },
        )?;
        payment.retry_details.retry_strategy = resolved.strategy;
        payment.retry_details.retry_policy = resolved.policy;
        let mut route = self
            .inner
            .router
            .route(&payment, &method, &self.inner.processors)?;
        if !payment.orchestrated() {
            // Without orchestration a payment stays on its primary processor.
            route.truncate(1);
        }

        if let Some(key) = idempotency_key {
            let request_fingerprint =
                fingerprint(&serde_json::to_string(request).unwrap_or_default());
            match self
                .inner
                .store
                .claim_idempotency_key(key, &request_fingerprint, &payment.id)
                .await
                .map_err(store_error)?
            {
                IdempotencyClaim::Inserted => {}
                IdempotencyClaim::Existing {
                    fingerprint: original,
                    payment_id,
                } => {
                    if original != request_fingerprint {
                        return Err(ApiError::new(
                            ErrorCode::IdempotencyError,
                            format!("idempotency key `{key}` was used with a different request"),
                        ));
                    }
                    return self.retrieve(&payment_id).await;
                }
            }
        }

        let due = valid
            .target_date
            .as_ref()
            .map(|(_, at)| (*at).max(clock_now))
            .unwrap_or(clock_now);
        let mut record = PaymentRecord::new(payment.clone(), route.remove(0), Some(method), due);
        record.fallbacks = route;
        self.inner
            .store
            .insert(&record)
            .await
            .map_err(store_error)?;
        self.emit(EventType::Created, &payment, clock_now);
        metrics::counter!(
            "offsession_payments_created_total",
            "cadence" => cadence_label(payment.cadence),
            "strategy" => payment.retry_details.retry_strategy.as_str()
        )
        .increment(1);
        Ok(payment)
    }

    fn new_payment(&self, valid: &ValidCreate, now: Timestamp) -> OffSessionPayment {
        OffSessionPayment {
            id: self.inner.ids.next("osp"),
            object: ObjectTag::OffSessionPayment,
            amount_requested: valid.amount,
            amount_capturable: None,
            compartment_id: self.inner.config.compartment_id.clone(),
            cadence: valid.cadence,
            capture: valid.capture,
            created: now,
            customer: valid.customer.clone(),
            payment_method: valid.payment_method.clone(),
            metadata: valid.metadata.clone(),
            on_behalf_of: valid.on_behalf_of.clone(),
            transfer_data: valid.transfer_data.clone(),
            application_fee_amount_requested: valid.application_fee_amount,
            statement_descriptor: valid.statement_descriptor.clone(),
            statement_descriptor_suffix: valid.statement_descriptor_suffix.clone(),
            description: valid.description.clone(),
            payment_details: valid.payment_details.clone(),
            payment_method_options: valid.payment_method_options.clone(),
            payments_orchestration: valid.payments_orchestration,
            retry_details: RetryDetails {
                attempts: 0,
                retry_strategy: RetryStrategy::None,
                retry_policy: None,
                retry_until: valid.retry_until,
            },
            status: PaymentStatus::Pending,
            failure_reason: None,
            last_authorization_attempt_error: None,
            latest_payment_attempt_record: None,
            payment_record: None,
            target_date: valid.target_date.as_ref().map(|(text, _)| text.clone()),
            test_clock: valid.test_clock.clone(),
            livemode: self.inner.config.livemode,
        }
    }

    // ----- reads -------------------------------------------------------------------

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

    // ----- manual operations -------------------------------------------------------

    async fn manual<F>(&self, id: &str, transition_for: F) -> Result<OffSessionPayment, ApiError>
    where
        F: Fn(&PaymentRecord) -> Transition,
    {
        let mut last_err = None;
        for _ in 0..MANUAL_OPERATION_TRIES {
            let record = self.record(id).await?;
            let now = self.now_for(&record.payment);
            let t = transition_for(&record);
            let to = transition(record.payment.status, t).map_err(refusal)?;
            let mut next = record.clone();
            next.payment.status = to;
            next.lease = None;
            match t {
                Transition::Cancel => {
                    if record.payment.status == PaymentStatus::RequiresCapture {
                        self.release_authorization(&record).await?;
                    }
                    next.due_at = None;
                    next.payment.amount_capturable = None;
                    next.authorization = None;
                }
                Transition::Pause => {
                    next.paused_due_at = record.due_at;
                    next.due_at = None;
                }
                Transition::Resume { .. } => {
                    next.due_at = Some(record.paused_due_at.unwrap_or(now).max(now));
                    next.paused_due_at = None;
                }
                _ => unreachable!("manual operations are cancel, pause and resume"),
            };
            match self.inner.store.update(&next, Expected::of(&record)).await {
                Ok(_) => {
                    self.emit_change(record.payment.status, &next.payment, now);
                    return Ok(next.payment);
                }
                Err(err @ StoreError::Conflict { .. }) => last_err = Some(err),
                Err(err) => return Err(store_error(err)),
            }
        }
        Err(store_error(
            last_err.unwrap_or_else(|| StoreError::NotFound(id.to_owned())),
        ))
    }

    /// Cancels a payment that is not processing and not terminal; a held
    /// authorization is released at the processor.
    pub async fn cancel(&self, id: &str) -> Result<OffSessionPayment, ApiError> {
        self.manual(id, |_| Transition::Cancel).await
    }

    /// Suspends retries until [`Engine::resume`].
    pub async fn pause(&self, id: &str) -> Result<OffSessionPayment, ApiError> {
        self.manual(id, |_| Transition::Pause).await
    }

    /// Resumes a paused payment; a retry that fell due meanwhile runs at once.
    pub async fn resume(&self, id: &str) -> Result<OffSessionPayment, ApiError> {
        self.manual(id, |record| Transition::Resume {
            attempted: record.payment.retry_details.attempts > 0 || record.replay_pending,
        })
        .await
    }

    async fn release_authorization(&self, record: &PaymentRecord) -> Result<(), ApiError> {
        let (Some(processor), Some(reference)) = (
            self.processor(&record.processor),
            record.authorization.as_ref(),
        ) else {
            return Ok(());
        };
        let key = format!("{}:cancel", record.payment.id);
        processor
            .cancel(CancelRequest {
                payment: &record.payment,
                reference,
                idempotency_key: &key,
            })
            .await
            .map_err(|e| ApiError::new(ErrorCode::ApiError, e.to_string()))
    }

    /// Captures a `requires_capture` payment, the whole authorization or
    /// `amount_to_capture` of it. At or after `capture.capture_before` (or the end of
    /// the authorization's validity) the capture is refused: the authorization is
    /// released and the payment ends `failed` / `authorization_expired`.
    pub async fn capture(
        &self,
        id: &str,
        amount_to_capture: Option<i64>,
    ) -> Result<OffSessionPayment, ApiError> {
        let record = self.record(id).await?;
        let now = self.now_for(&record.payment);
        let to = transition(record.payment.status, Transition::Capture).map_err(refusal)?;
        if let Some(expires) = record.due_at.filter(|expires| now >= *expires) {
            self.expire_authorization(record)
                .await
                .map_err(store_error)?;
            return Err(ApiError::new(
                ErrorCode::OffSessionPaymentInvalidStatus,
                format!("the authorization expired at {expires}; it was released and the payment failed with `authorization_expired`"),
            ));
        }
        let capturable = record
            .payment
            .amount_capturable
            .unwrap_or(record.payment.amount_requested);
        let value = amount_to_capture.unwrap_or(capturable.value);
        if value <= 0 || value > capturable.value {
            return Err(ApiError::invalid(
                "amount_to_capture",
                format!(
                    "must be between 1 and the capturable amount ({})",
                    capturable.value
                ),
            ));
        }
        let amount = offsession_core::Amount::new(value, capturable.currency);
        let processor = self.processor(&record.processor).ok_or_else(|| {
            ApiError::new(
                ErrorCode::ApiError,
                format!("processor `{}` is not configured", record.processor),
            )
        })?;
        let reference = record.authorization.clone().unwrap_or_default();
        let key = format!("{}:capture", record.payment.id);
        processor
            .capture(CaptureRequest {
                payment: &record.payment,
                reference: &reference,
                amount,
                idempotency_key: &key,
            })
            .await
            .map_err(|e| ApiError::new(ErrorCode::ApiError, e.to_string()))?;
        let mut next = record.clone();
        next.payment.status = to;
        next.payment.amount_capturable = None;
        next.payment.payment_record = Some(self.inner.ids.next("pr"));
        next.due_at = None;
        next.lease = None;
        self.inner
            .store
            .update(&next, Expected::of(&record))
            .await
            .map_err(store_error)?;
        self.emit_change(record.payment.status, &next.payment, now);
        Ok(next.payment)
    }

    // ----- scheduler ---------------------------------------------------------------

    /// Runs everything due on the engine clock now.
    pub async fn run_due(&self) -> Result<RunReport, EngineError> {
        self.run_scope(&ClockScope::Engine, self.inner.clock.now())
            .await
    }

    /// When the next engine-clock payment falls due.
    pub async fn next_due(&self) -> Result<Option<Timestamp>, EngineError> {
        Ok(self.inner.store.next_due(&ClockScope::Engine).await?)
    }

    async fn run_scope(
        &self,
        scope: &ClockScope,
        now: Timestamp,
    ) -> Result<RunReport, EngineError> {
        use futures::stream::FuturesUnordered;
        let config = &self.inner.config;
        let mut report = RunReport::default();
        let mut queue: std::collections::VecDeque<PaymentRecord> =
            std::collections::VecDeque::new();
        let mut in_flight = FuturesUnordered::new();
        // Claims are made whenever the queue runs dry and a slot is free, so that
        // `concurrency` attempts stay in flight instead of draining batch by batch.
        // After an empty claim the scheduler waits for the work in flight to finish
        // before it looks again (cascades and zero-wait retries fall due now).
        let mut exhausted = false;
        loop {
            while in_flight.len() < config.concurrency {
                if queue.is_empty() && !exhausted {
                    let batch = self.claim(scope, now).await?;
                    exhausted = batch.is_empty();
                    queue.extend(batch);
                }
                match queue.pop_front() {
                    Some(record) => in_flight.push(self.handle(record)),
                    None => break,
                }
            }
            match in_flight.next().await {
                Some(result) => report.add(result?),
                None if exhausted => {
                    // One more look now that nothing is in flight.
                    let batch = self.claim(scope, now).await?;
                    if batch.is_empty() {
                        return Ok(report);
                    }
                    exhausted = false;
                    queue.extend(batch);
                }
                None => {}
            }
        }
    }

    /// Claims up to `claim_batch` due payments of `scope` under this instance's lease.
    async fn claim(
        &self,
        scope: &ClockScope,
        now: Timestamp,
    ) -> Result<Vec<PaymentRecord>, StoreError> {
        let config = &self.inner.config;
        let lease = Lease {
            owner: config.instance_id.clone(),
            until: now.plus(config.lease),
        };
        self.inner
            .store
            .claim_due(scope, now, config.claim_batch, &lease)
            .await
    }

    async fn handle(&self, record: PaymentRecord) -> Result<RunReport, EngineError> {
        let started = std::time::Instant::now();
        let mut outside = Duration::ZERO;
        let outcome = match record.payment.status {
            PaymentStatus::RequiresCapture => self.expire_authorization(record).await,
            PaymentStatus::Pending | PaymentStatus::PendingRetry | PaymentStatus::Processing => {
                self.attempt(record).await.map(|waited| outside = waited)
            }
            _ => {
                // Nothing to do for this status: drop the stale due time.
                let mut next = record.clone();
                next.due_at = None;
                next.lease = None;
                self.inner
                    .store
                    .update(&next, Expected::of(&record))
                    .await
                    .map(|_| ())
            }
        };
        let total = started.elapsed();
        let overhead = total.saturating_sub(outside);
        metrics::histogram!("offsession_engine_overhead_seconds").record(overhead.as_secs_f64());
        if let Some(observer) = &self.inner.timing {
            (observer.0)(AttemptTiming {
                total,
                processor: outside,
            });
        }
        match outcome {
            Ok(()) => Ok(RunReport {
                handled: 1,
                conflicts: 0,
            }),
            Err(StoreError::Conflict { id, .. }) => {
                tracing::debug!(payment = %id, "lost a race to another change; skipped");
                Ok(RunReport {
                    handled: 1,
                    conflicts: 1,
                })
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn expire_authorization(&self, record: PaymentRecord) -> Result<(), StoreError> {
        let now = self.now_for(&record.payment);
        let Ok(to) = transition(record.payment.status, Transition::ExpireAuthorization) else {
            return Ok(());
        };
        if let Err(err) = self.release_authorization(&record).await {
            tracing::warn!(payment = %record.payment.id, error = %err, "releasing an expired authorization failed");
        }
        let mut next = record.clone();
        next.payment.status = to;
        next.payment.failure_reason = Some(FailureReason::AuthorizationExpired);
        next.payment.amount_capturable = None;
        next.authorization = None;
        next.due_at = None;
        next.lease = None;
        self.inner
            .store
            .update(&next, Expected::of(&record))
            .await?;
        self.emit_change(record.payment.status, &next.payment, now);
        Ok(())
    }

    /// Runs one attempt (or replays the unresolved one) of a claimed payment.
    /// Returns the time spent outside the engine (rate-limit wait and processor).
    async fn attempt(&self, claimed: PaymentRecord) -> Result<Duration, StoreError> {
        let now = self.now_for(&claimed.payment);
        let from = claimed.payment.status;
        let Ok(status) = transition(from, Transition::StartAttempt) else {
            return Ok(Duration::ZERO);
        };
        let expected = Expected::of(&claimed);
        let mut record = claimed;
        // A `processing` record whose lease lapsed crashed mid-attempt: its outcome is
        // unknown, so the same attempt is replayed with the same key.
        let replay = (record.replay_pending || from == PaymentStatus::Processing)
            && !record.attempts.is_empty();
        if from == PaymentStatus::Processing && !record.replay_pending {
            if let Some(last) = record.attempts.last_mut() {
                last.outcome_unknown = true;
                last.first_fault_at.get_or_insert(now);
                tracing::warn!(payment = %record.payment.id, key = %last.idempotency_key, "attempt was in flight when its lease lapsed; replaying with the same key");
            }
        }
        if !replay && !record.attempts.is_empty() {
            // Other payments of the same card may have been attempted since this retry
            // was scheduled: check the network caps again before sending.
            let brand = record
                .method
                .as_ref()
                .and_then(|m| m.card.as_ref())
                .map(|c| c.brand.clone());
            let history = self.card_history(&record, now).await?;
            let allowed = self.inner.declines.network_rules().earliest_allowed(
                brand.as_deref(),
                &history,
                record.payment.amount_requested.value,
                now,
            );
            if allowed > now {
                let mut next = record;
                next.lease = None;
                if next.retry_latest.is_some_and(|latest| allowed > latest) {
                    next.payment.status = transition(next.payment.status, Transition::Fail)
                        .unwrap_or(PaymentStatus::Failed);
                    next.payment.failure_reason = Some(FailureReason::ExceededRetryWindow);
                    next.due_at = None;
                } else {
                    next.due_at = Some(allowed);
                }
                self.inner.store.update(&next, expected).await?;
                self.emit_change(from, &next.payment, now);
                return Ok(Duration::ZERO);
            }
        }
        // Which processor: a replay goes back to where the attempt was sent; a new
        // attempt goes to the cascade target, or to the first processor of the route
        // whose circuit breaker lets calls through.
        let processor_id = if replay {
            record
                .attempts
                .last()
                .map(|a| a.processor.clone())
                .unwrap_or_default()
        } else if let Some(target) = record.cascade_to.take() {
            target
        } else {
            let allowed = std::iter::once(&record.processor)
                .chain(record.fallbacks.iter())
                .find(|id| {
                    self.inner
                        .breakers
                        .get(id.as_str())
                        .is_none_or(|b| b.allow(now))
                })
                .cloned();
            match allowed {
                Some(id) => id,
                None => {
                    // Every processor of the route is out of routing: try again when
                    // the primary's breaker lets a probe through.
                    let mut next = record;
                    next.lease = None;
                    next.due_at = Some(now.plus(self.inner.breaker_config.open_for));
                    self.inner.store.update(&next, expected).await?;
                    return Ok(Duration::ZERO);
                }
            }
        };
        let Some(processor) = self.processor(&processor_id).cloned() else {
            tracing::error!(payment = %record.payment.id, processor = %processor_id, "processor is not configured; payment left for another instance");
            return Ok(Duration::ZERO);
        };
        if replay {
            if let Some(last) = record.attempts.last_mut() {
                last.replays += 1;
            }
        } else {
            let number = record.payment.retry_details.attempts + 1;
            let attempt = AttemptRecord {
                id: self.inner.ids.next("ospattempt"),
                number,
                idempotency_key: attempt_idempotency_key(&record.payment.id, number),
                processor: processor_id.clone(),
                started_at: now,
                finished_at: None,
                replays: 0,
                first_fault_at: None,
                outcome_unknown: false,
                outcome: None,
                decline_category: None,
            };
            record.payment.retry_details.attempts = number;
            record.payment.latest_payment_attempt_record = Some(attempt.id.clone());
            record.first_attempt_at.get_or_insert(now);
            record.attempts.push(attempt);
        }
        record.replay_pending = false;
        record.payment.status = status;
        record.due_at = Some(now);
        // Write-ahead: the attempt and its key are durable before the processor is
        // called. The claim's lease stays, so a crash makes the record claimable
        // again (for a replay) when the lease lapses.
        record.version = self.inner.store.update(&record, expected).await?;
        self.emit_change(from, &record.payment, now);

        let Some(attempt) = record.attempts.last().cloned() else {
            return Ok(Duration::ZERO);
        };
        let outside = std::time::Instant::now();
        let send = async {
            if let Some(pacer) = self.inner.pacers.get(processor.id()) {
                let waited = pacer.acquire().await;
                metrics::histogram!("offsession_rate_limit_wait_seconds", "processor" => processor.id().to_owned())
                    .record(waited.as_secs_f64());
            }
            let sent = std::time::Instant::now();
            let outcome = processor
                .authorize(AuthorizeRequest {
                    payment: &record.payment,
                    attempt_number: attempt.number,
                    idempotency_key: &attempt.idempotency_key,
                })
                .await;
            metrics::histogram!("offsession_attempt_duration_seconds", "processor" => processor.id().to_owned())
                .record(sent.elapsed().as_secs_f64());
            outcome
        };
        // While the answer is awaited the lease is renewed, so that no other
        // scheduler takes the payment for a replay while this attempt is in flight.
        let renewed = std::sync::Mutex::new(None::<(u64, Option<Lease>)>);
        let outcome = {
            let send = std::pin::pin!(send);
            let keep = std::pin::pin!(self.keep_lease(&record, &renewed));
            match futures::future::select(send, keep).await {
                futures::future::Either::Left((outcome, _)) => outcome,
                futures::future::Either::Right(((), send)) => send.await,
            }
        };
        if let Some((version, lease)) = renewed.lock().unwrap_or_else(|p| p.into_inner()).take() {
            record.version = version;
            record.lease = lease;
        }
        let outside = outside.elapsed();
        self.observe_health(processor.id(), &outcome, self.now_for(&record.payment));
        self.apply_outcome(record, outcome).await.map(|()| outside)
    }

    /// Renews the lease of an attempt in flight every third of the lease, until it
    /// is dropped (the answer came) or another change wins (then it stops: the
    /// outcome write will be refused and the winner replays with the same key).
    async fn keep_lease(
        &self,
        in_flight: &PaymentRecord,
        renewed: &std::sync::Mutex<Option<(u64, Option<Lease>)>>,
    ) {
        let period = (self.inner.config.lease / 3).max(Duration::from_millis(10));
        let mut version = in_flight.version;
        loop {
            futures_timer::Delay::new(period).await;
            let mut next = in_flight.clone();
            next.lease = Some(Lease {
                owner: self.inner.config.instance_id.clone(),
                until: self
                    .now_for(&in_flight.payment)
                    .plus(self.inner.config.lease),
            });
            let expected = Expected {
                version,
                status: in_flight.payment.status,
            };
            match self.inner.store.update(&next, expected).await {
                Ok(v) => {
                    version = v;
                    *renewed.lock().unwrap_or_else(|p| p.into_inner()) = Some((v, next.lease));
                }
                Err(err) => {
                    tracing::warn!(payment = %in_flight.payment.id, error = %err, "could not renew the lease of an attempt in flight");
                    return std::future::pending().await;
                }
            }
        }
    }

    async fn apply_outcome(
        &self,
        written: PaymentRecord,
        outcome: AttemptOutcome,
    ) -> Result<(), StoreError> {
        let now = self.now_for(&written.payment);
        let config = &self.inner.config;
        let expected = Expected::of(&written);
        let from = written.payment.status;
        let mut record = written;
        record.lease = None;
        let processor = record
            .attempts
            .last()
            .map(|a| a.processor.clone())
            .unwrap_or_default();
        // The card brand and the issuer decline's category, worked out once: the
        // metric, the cascade rules and the retry policy all use them.
        let brand = record
            .method
            .as_ref()
            .and_then(|m| m.card.as_ref())
            .map(|c| c.brand.clone());
        let issuer_category = match &outcome {
            AttemptOutcome::Declined { codes, .. } => {
                Some(self.inner.declines.classify(codes, brand.as_deref()))
            }
            _ => None,
        };
        metrics::counter!(
            "offsession_attempts_total",
            "processor" => processor.clone(),
            "outcome" => outcome.kind(),
            "category" => issuer_category.map_or("none", DeclineCategory::as_str)
        )
        .increment(1);

        let decline = match outcome {
            AttemptOutcome::Approved { reference } => {
                self.finish_attempt(
                    &mut record,
                    now,
                    AttemptOutcome::Approved { reference },
                    None,
                );
                record.payment.status = self.step(from, Transition::Approve);
                record.payment.payment_record = Some(self.inner.ids.next("pr"));
                record.due_at = None;
                self.observe(&record, true);
                None
            }
            AttemptOutcome::RequiresCapture { reference } => {
                self.finish_attempt(
                    &mut record,
                    now,
                    AttemptOutcome::RequiresCapture {
                        reference: reference.clone(),
                    },
                    None,
                );
                record.payment.status = self.step(from, Transition::Authorize);
                record.payment.amount_capturable = Some(record.payment.amount_requested);
                record.authorization = Some(reference);
                let expires = now.plus(config.authorization_validity);
                record.due_at = Some(
                    record
                        .payment
                        .capture
                        .capture_before
                        .map_or(expires, |before| before.min(expires)),
                );
                self.observe(&record, true);
                None
            }
            AttemptOutcome::Declined { codes, reference } => Some((codes, reference)),
            AttemptOutcome::ProcessorFault { .. } | AttemptOutcome::Unknown { .. } => {
                self.apply_fault(&mut record, outcome, &processor, now)
            }
        };

        if let Some((codes, reference)) = decline {
            let category = issuer_category
                .unwrap_or_else(|| self.inner.declines.classify(&codes, brand.as_deref()));
            self.apply_decline(
                &mut record,
                codes,
                reference,
                category,
                brand.as_deref(),
                now,
            )
            .await?;
        }

        self.inner.store.update(&record, expected).await?;
        if record.payment.status.is_terminal() {
            metrics::counter!(
                "offsession_payments_terminal_total",
                "status" => record.payment.status.as_str(),
                "failure_reason" => record.payment.failure_reason.map_or("none", |r| r.as_str())
            )
            .increment(1);
        }
        self.emit_change(from, &record.payment, now);
        Ok(())
    }

    /// The status after `t` from `from`; the transitions used here are allowed from
    /// `processing`, where every outcome arrives.
    fn step(&self, from: PaymentStatus, t: Transition) -> PaymentStatus {
        transition(from, t).unwrap_or_else(|refused| {
            tracing::error!(%refused, "outcome applied from an unexpected status");
            from
        })
    }

    /// A processor answer that is not the issuer's: a fault (nothing charged), a
    /// refusal (400/401/403/3xx: nothing charged, the merchant's configuration is
    /// wrong) or an unknown outcome (money may have moved). The same attempt is
    /// replayed with the same key, within `max_replays` and `replay_deadline`; an
    /// unknown outcome keeps the payment `processing` until an answer settles it, so
    /// it can be neither canceled nor cascaded to another processor meanwhile.
    ///
    /// Returns synthetic decline codes when a passing fault outlasted its replays:
    /// nothing was charged, and the attempt is filed as a transient decline.
    fn apply_fault(
        &self,
        record: &mut PaymentRecord,
        outcome: AttemptOutcome,
        processor: &str,
        now: Timestamp,
    ) -> Option<(DeclineCodes, offsession_core::ProcessorReference)> {
        let config = &self.inner.config;
        let (kind, message) = match &outcome {
            AttemptOutcome::Unknown { message } => (FaultKind::Unknown, message.as_str()),
            AttemptOutcome::ProcessorFault {
                retryable,
                rate_limited,
                message,
            } => (
                match (*rate_limited, *retryable) {
                    (true, _) => FaultKind::RateLimited,
                    (false, true) => FaultKind::Unavailable,
                    (false, false) => FaultKind::Refused,
                },
                message.as_str(),
            ),
            _ => return None,
        };
        metrics::counter!("offsession_attempt_faults_total", "processor" => processor.to_owned(), "kind" => kind.as_str()).increment(1);
        let last = record.attempts.last_mut()?;
        let first_fault_at = *last.first_fault_at.get_or_insert(now);
        last.outcome_unknown |= kind == FaultKind::Unknown;
        let unresolved = last.outcome_unknown;
        let replays = last.replays;
        let key = last.idempotency_key.clone();
        let refused = kind == FaultKind::Refused;
        let rate_limited = kind == FaultKind::RateLimited;
        let out_of_time = now >= first_fault_at.plus(config.replay_deadline);
        let out_of_replays = replays >= config.max_replays && !rate_limited;
        tracing::info!(payment = %record.payment.id, %processor, %key, kind = kind.as_str(), replays, message, "attempt did not settle");

        // Nothing was charged and another processor may take it: cascade now, as a
        // new attempt with its own key. Never after an unknown outcome: the first
        // processor may have charged.
        if !unresolved {
            if let Some(hop) = self.next_hop(record, now) {
                self.finish_attempt(record, now, outcome, None);
                self.cascade(record, Some(hop), now);
                return None;
            }
        }
        let replayable = unresolved
            || refused
            || rate_limited
            || (replays as usize) < config.replay_backoff.len();
        if replayable && !out_of_time && !out_of_replays {
            let step = if refused {
                usize::MAX
            } else {
                replays as usize
            };
            let wait = config
                .replay_backoff
                .get(step.min(config.replay_backoff.len().saturating_sub(1)))
                .copied()
                .unwrap_or(Duration::from_secs(60));
            if refused {
                tracing::error!(payment = %record.payment.id, %processor, message, "processor refused the request; fix the configuration");
            }
            record.replay_pending = true;
            record.payment.status = if unresolved {
                PaymentStatus::Processing
            } else {
                self.step(PaymentStatus::Processing, Transition::ScheduleRetry)
            };
            record.due_at = Some(now.plus(wait));
            return None;
        }
        if unresolved || refused || rate_limited {
            // Replays are spent and nothing settled the attempt: the payment ends.
            // An unknown outcome is flagged on the attempt for reconciliation with
            // the processor (same key) before the customer is charged again.
            let reason = if unresolved {
                FailureReason::RetriesExhausted
            } else {
                FailureReason::RejectedByPartner
            };
            let what = if unresolved {
                format!("outcome unknown after {replays} replays; reconcile idempotency key `{key}` with processor `{processor}` before charging again")
            } else {
                format!("processor `{processor}` did not accept the request after {replays} replays: {message}")
            };
            tracing::error!(payment = %record.payment.id, %processor, %key, reason = reason.as_str(), "{what}");
            self.finish_attempt(record, now, outcome, None);
            record.replay_pending = false;
            record.payment.status = self.step(PaymentStatus::Processing, Transition::Fail);
            record.payment.failure_reason = Some(reason);
            record.payment.last_authorization_attempt_error = Some(quote(&what, QUOTED_CHARS));
            record.due_at = None;
            metrics::counter!("offsession_payments_unsettled_total", "processor" => processor.to_owned(), "kind" => kind.as_str()).increment(1);
            return None;
        }
        // A passing fault that outlasted its replays: nothing was charged, and the
        // attempt counts as a transient decline, filed by the policy like any other.
        Some((
            DeclineCodes {
                code: "processor_unavailable".into(),
                decline_code: Some("processing_error".into()),
                message: Some(quote(message, QUOTED_CHARS)),
                ..DeclineCodes::default()
            },
            Default::default(),
        ))
    }

    async fn apply_decline(
        &self,
        record: &mut PaymentRecord,
        codes: DeclineCodes,
        reference: offsession_core::ProcessorReference,
        category: DeclineCategory,
        brand: Option<&str>,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.finish_attempt(
            record,
            now,
            AttemptOutcome::Declined {
                codes: codes.clone(),
                reference,
            },
            Some(category),
        );
        record.replay_pending = false;
        record.payment.last_authorization_attempt_error = Some(codes.to_string());
        self.observe(record, false);
        let rules = self.inner.declines.network_rules();
        let next_hop = self.next_hop(record, now);
        let cascades = next_hop.is_some()
            && self.inner.config.cascade_categories.contains(&category)
            && !rules.forbids_retry(brand, &codes)
            && rules.advice_wait(brand, &codes).is_none();
        if cascades {
            // Another processor may approve what this one declined: try it now.
            self.cascade(record, next_hop, now);
            return Ok(());
        }
        match self.decide(record, &codes, category, now).await? {
            RetryDecision::RetryAt { not_before, latest } => {
                metrics::counter!(
                    "offsession_retries_scheduled_total",
                    "strategy" => record.payment.retry_details.retry_strategy.as_str()
                )
                .increment(1);
                record.payment.status =
                    self.step(PaymentStatus::Processing, Transition::ScheduleRetry);
                record.due_at = Some(not_before.max(now));
                record.retry_latest = latest;
            }
            RetryDecision::Stop(reason) => {
                record.payment.status = self.step(PaymentStatus::Processing, Transition::Fail);
                record.payment.failure_reason = Some(reason);
                record.due_at = None;
            }
        }
        Ok(())
    }

    /// The processor after the current attempt's one in the payment's route whose
    /// breaker lets calls through (orchestrated payments only).
    fn next_hop(&self, record: &PaymentRecord, now: Timestamp) -> Option<String> {
        if !record.payment.orchestrated() || record.fallbacks.is_empty() {
            return None;
        }
        let current = record.attempts.last().map(|a| a.processor.as_str())?;
        let chain: Vec<&String> = std::iter::once(&record.processor)
            .chain(record.fallbacks.iter())
            .collect();
        let position = chain.iter().position(|p| p.as_str() == current)?;
        chain[position + 1..]
            .iter()
            .find(|id| {
                self.inner
                    .breakers
                    .get(id.as_str())
                    .is_none_or(|b| b.state(now) != BreakerState::Open)
            })
            .map(|id| (*id).clone())
    }

    fn cascade(&self, record: &mut PaymentRecord, to: Option<String>, now: Timestamp) {
        let from = record
            .attempts
            .last()
            .map(|a| a.processor.clone())
            .unwrap_or_default();
        if let Some(to) = &to {
            metrics::counter!("offsession_cascade_failovers_total", "from" => from, "to" => to.clone()).increment(1);
        }
        record.cascade_to = to;
        record.replay_pending = false;
        record.payment.status = PaymentStatus::PendingRetry;
        record.due_at = Some(now);
    }

    /// Feeds the processor's circuit breaker and pacer with an answer.
    fn observe_health(&self, processor: &str, outcome: &AttemptOutcome, now: Timestamp) {
        let good = matches!(
            outcome,
            AttemptOutcome::Approved { .. }
                | AttemptOutcome::RequiresCapture { .. }
                | AttemptOutcome::Declined { .. }
        );
        if let Some(breaker) = self.inner.breakers.get(processor) {
            let state = breaker.record(now, good);
            metrics::gauge!("offsession_circuit_state", "processor" => processor.to_owned())
                .set(state as u8 as f64);
        }
        if let Some(pacer) = self.inner.pacers.get(processor) {
            pacer.observe(matches!(
                outcome,
                AttemptOutcome::ProcessorFault {
                    rate_limited: true,
                    ..
                }
            ));
        }
    }

    /// Sets the gauges that need a count over the store (pending retries).
    pub async fn update_gauges(&self) -> Result<(), EngineError> {
        for (status, count) in self.inner.store.count_by_status().await? {
            if status == PaymentStatus::PendingRetry {
                metrics::gauge!("offsession_pending_retries").set(count as f64);
            }
        }
        Ok(())
    }

    /// Pacing of a processor: (current pace as a fraction of its quota, 429s seen).
    pub fn pacing(&self, processor: &str) -> Option<(f64, u64)> {
        self.inner
            .pacers
            .get(processor)
            .map(|p| (p.pace(), p.rate_limited()))
    }

    fn finish_attempt(
        &self,
        record: &mut PaymentRecord,
        now: Timestamp,
        outcome: AttemptOutcome,
        category: Option<DeclineCategory>,
    ) {
        if let Some(last) = record.attempts.last_mut() {
            last.finished_at = Some(now);
            last.outcome = Some(outcome);
            last.decline_category = category;
        }
    }

    async fn decide(
        &self,
        record: &PaymentRecord,
        codes: &DeclineCodes,
        category: DeclineCategory,
        now: Timestamp,
    ) -> Result<RetryDecision, StoreError> {
        let details = &record.payment.retry_details;
        let policy = match details.retry_strategy {
            RetryStrategy::Scheduled => details
                .retry_policy
                .as_deref()
                .and_then(|name| self.inner.policies.get(name)),
            strategy => self.inner.strategies.get(&strategy),
        };
        let Some(policy) = policy else {
            tracing::error!(payment = %record.payment.id, strategy = %details.retry_strategy, "no policy installed for the payment's strategy; stopping");
            return Ok(RetryDecision::Stop(FailureReason::RetriesExhausted));
        };
        let card_history = self.card_history(record, now).await?;
        let context = RetryContext {
            payment: &record.payment,
            method: record.method.as_ref(),
            attempts: &record.attempts,
            card_history: &card_history,
            decline: codes,
            category,
            first_attempt_at: record.first_attempt_at.unwrap_or(now),
            now,
        };
        let decision = policy.decide(&context);
        // Whatever the policy, nothing is attempted after `retry_until`.
        Ok(match (decision, details.retry_until) {
            (RetryDecision::RetryAt { not_before, .. }, Some(until)) if not_before > until => {
                RetryDecision::Stop(FailureReason::ExceededRetryWindow)
            }
            (RetryDecision::RetryAt { not_before, latest }, until) => RetryDecision::RetryAt {
                not_before,
                latest: match (latest, until) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                },
            },
            (decision, _) => decision,
        })
    }

    /// Every attempt on the payment's method in the last 30 days, across payments,
    /// with this payment's attempts as held in memory (the store may not have the
    /// outcome of the latest one yet).
    async fn card_history(
        &self,
        record: &PaymentRecord,
        now: Timestamp,
    ) -> Result<Vec<CardAttempt>, StoreError> {
        let since =
            Timestamp::from_millis(now.as_millis() - CARD_HISTORY_WINDOW.as_millis() as i64);
        let mut history: Vec<CardAttempt> = self
            .inner
            .store
            .card_history(&record.payment.payment_method, since, CARD_HISTORY_LIMIT)
            .await?
            .into_iter()
            .filter(|a| a.payment_id != record.payment.id)
            .collect();
        history.extend(
            record
                .attempts
                .iter()
                .filter(|a| a.started_at >= since)
                .map(|a| CardAttempt {
                    payment_id: record.payment.id.clone(),
                    attempt_number: a.number,
                    at: a.started_at,
                    declined: a.decline_category.is_some(),
                    amount: record.payment.amount_requested.value,
                }),
        );
        history.sort_by_key(|a| a.at);
        Ok(history)
    }

    /// Tells every strategy the outcome of the attempt just finished.
    fn observe(&self, record: &PaymentRecord, approved: bool) {
        let Some(last) = record.attempts.last() else {
            return;
        };
        let previous = record
            .attempts
            .len()
            .checked_sub(2)
            .map(|i| &record.attempts[i]);
        let previous_decline = previous.and_then(|a| match (&a.outcome, a.decline_category) {
            (Some(AttemptOutcome::Declined { codes, .. }), Some(category)) => {
                Some((codes, category))
            }
            _ => None,
        });
        let first_failure_at = record
            .attempts
            .first()
            .filter(|a| a.decline_category.is_some() && a.number != last.number)
            .and_then(|a| a.finished_at);
        let observation = AttemptObservation {
            payment: &record.payment,
            method: record.method.as_ref(),
            attempt_number: last.number,
            at: last.started_at,
            first_failure_at,
            previous_attempt_at: previous.map(|a| a.started_at),
            previous_decline,
            approved,
        };
        for policy in self.inner.strategies.values() {
            policy.observe(&observation);
        }
    }
}
