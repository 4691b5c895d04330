//! Domain model of offsession: off-session payments, money, statuses and the state
//! machine, request validation, and the traits the engine is built from
//! (`Processor`, `RetryPolicy`, `Store`, `Clock`, `IdSource`, `EventSink`).
//!
//! This crate does no I/O and knows no vendor.
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]

pub mod attempt;
pub mod duration;
pub mod error;
pub mod events;
pub mod hash;
pub mod ids;
pub mod method;
pub mod money;
pub mod payment;
pub mod policy;
pub mod processor;
pub mod request;
pub mod state;
pub mod store;
pub mod text;
pub mod time;

/// What the exported macros name; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use serde;
}

pub use attempt::{
    attempt_idempotency_key, AttemptOutcome, AttemptRecord, DeclineCategory, DeclineCodes,
    FaultKind, ProcessorReference,
};
pub use error::{ApiError, ErrorCode};
pub use events::{CollectEvents, DiscardEvents, Event, EventNotification, EventSink, EventType};
pub use ids::{IdSource, RandomIds, SeededIds};
pub use method::{CardBrand, PaymentMethodType};
pub use money::{Amount, Currency};
pub use payment::{
    Cadence, Capture, CaptureMethod, FailureReason, OffSessionPayment, PaymentStatus, RetryDetails,
    RetryStrategy,
};
pub use policy::{AttemptObservation, CardAttempt, RetryContext, RetryDecision, RetryPolicy};
pub use processor::{
    AuthorizationState, AuthorizeRequest, CancelRequest, Capabilities, CaptureRequest, CardDetails,
    PaymentMethodDetails, Processor, ProcessorError,
};
pub use request::CreateOffSessionPayment;
pub use state::{transition, Transition, TransitionRefused};
pub use store::{
    CardLock, ClockScope, Expected, IdempotencyClaim, Lease, NewIdempotencyKey, OutboxEvent,
    PaymentRecord, Store, StoreError,
};
pub use time::{Clock, ManualClock, SystemClock, Timestamp};
