//! Events: every state change of a payment, as a v2 event, delivered to an `EventSink`.

use std::fmt;
use std::fmt::Debug;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::payment::{OffSessionPayment, PaymentStatus};
use crate::time::Timestamp;

/// v2 event types of off-session payments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    /// Payment accepted.
    #[serde(rename = "v2.payments.off_session_payment.created")]
    Created,
    /// An attempt started (authorization or replay).
    #[serde(rename = "v2.payments.off_session_payment.attempt_started")]
    AttemptStarted,
    /// An attempt was declined or faulted; a retry may follow.
    #[serde(rename = "v2.payments.off_session_payment.attempt_failed")]
    AttemptFailed,
    /// An authorization-only attempt (manual capture) was sent.
    #[serde(rename = "v2.payments.off_session_payment.authorization_attempt_started")]
    AuthorizationAttemptStarted,
    /// An authorization-only attempt was declined or faulted.
    #[serde(rename = "v2.payments.off_session_payment.authorization_attempt_failed")]
    AuthorizationAttemptFailed,
    /// Authorized; waiting for capture.
    #[serde(rename = "v2.payments.off_session_payment.requires_capture")]
    RequiresCapture,
    /// Money moved.
    #[serde(rename = "v2.payments.off_session_payment.succeeded")]
    Succeeded,
    /// Terminally failed.
    #[serde(rename = "v2.payments.off_session_payment.failed")]
    Failed,
    /// Stopped by the merchant; no further attempt.
    #[serde(rename = "v2.payments.off_session_payment.canceled")]
    Canceled,
    /// Retries held by the merchant until resumed.
    #[serde(rename = "v2.payments.off_session_payment.paused")]
    Paused,
    /// Retries allowed again after a pause.
    #[serde(rename = "v2.payments.off_session_payment.resumed")]
    Resumed,
}

impl EventType {
    /// Every event type.
    pub const ALL: [EventType; 11] = [
        EventType::Created,
        EventType::AttemptStarted,
        EventType::AttemptFailed,
        EventType::AuthorizationAttemptStarted,
        EventType::AuthorizationAttemptFailed,
        EventType::RequiresCapture,
        EventType::Succeeded,
        EventType::Failed,
        EventType::Canceled,
        EventType::Paused,
        EventType::Resumed,
    ];

    /// The type named by its v2 name (`as_str`), if any.
    pub fn parse(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The events a status change emits: one group per change, none when the status
    /// stays (a replay of an attempt whose outcome is unknown, a deferred retry).
    /// `attempt_failed` therefore only appears while another attempt will follow; a
    /// final decline is `failed` alone.
    pub fn for_change(from: PaymentStatus, to: PaymentStatus) -> &'static [EventType] {
        use PaymentStatus as S;
        match (from, to) {
            (a, b) if a == b => &[],
            (_, S::Processing) => &[
                EventType::AttemptStarted,
                EventType::AuthorizationAttemptStarted,
            ],
            (S::Processing, S::PendingRetry) => &[
                EventType::AttemptFailed,
                EventType::AuthorizationAttemptFailed,
            ],
            (_, S::Succeeded) => &[EventType::Succeeded],
            (_, S::RequiresCapture) => &[EventType::RequiresCapture],
            (_, S::Failed) => &[EventType::Failed],
            (_, S::Canceled) => &[EventType::Canceled],
            (_, S::Paused) => &[EventType::Paused],
            (S::Paused, _) => &[EventType::Resumed],
            _ => &[],
        }
    }

    /// The status a payment is in after this event, given whether it had been
    /// attempted before (`resumed` returns to `pending` or `pending_retry`). `None`
    /// for events that accompany another (`authorization_attempt_*`).
    pub fn status_after(self, attempted: bool) -> Option<PaymentStatus> {
        use PaymentStatus as S;
        Some(match self {
            EventType::Created => S::Pending,
            EventType::AttemptStarted => S::Processing,
            EventType::AttemptFailed => S::PendingRetry,
            EventType::AuthorizationAttemptStarted | EventType::AuthorizationAttemptFailed => {
                return None
            }
            EventType::RequiresCapture => S::RequiresCapture,
            EventType::Succeeded => S::Succeeded,
            EventType::Failed => S::Failed,
            EventType::Canceled => S::Canceled,
            EventType::Paused => S::Paused,
            EventType::Resumed if attempted => S::PendingRetry,
            EventType::Resumed => S::Pending,
        })
    }

    /// The v2 type name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Created => "v2.payments.off_session_payment.created",
            EventType::AttemptStarted => "v2.payments.off_session_payment.attempt_started",
            EventType::AttemptFailed => "v2.payments.off_session_payment.attempt_failed",
            EventType::AuthorizationAttemptStarted => {
                "v2.payments.off_session_payment.authorization_attempt_started"
            }
            EventType::AuthorizationAttemptFailed => {
                "v2.payments.off_session_payment.authorization_attempt_failed"
            }
            EventType::RequiresCapture => "v2.payments.off_session_payment.requires_capture",
            EventType::Succeeded => "v2.payments.off_session_payment.succeeded",
            EventType::Failed => "v2.payments.off_session_payment.failed",
            EventType::Canceled => "v2.payments.off_session_payment.canceled",
            EventType::Paused => "v2.payments.off_session_payment.paused",
            EventType::Resumed => "v2.payments.off_session_payment.resumed",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The object an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelatedObject {
    /// Payment id.
    pub id: String,
    /// Always `v2.payments.off_session_payment`.
    #[serde(rename = "type")]
    pub object_type: String,
    /// API path of the object.
    pub url: String,
}

/// A v2 "thin" event: what the outbox keeps, webhooks deliver and the events API
/// returns (Stripe's v2 events carry no copy of the object; a reader fetches it from
/// `related_object.url`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventNotification {
    /// `evt_…`.
    pub id: String,
    /// Always `v2.core.event`.
    pub object: String,
    /// What happened (`v2.payments.off_session_payment.*`).
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// When it happened, by the payment's clock.
    pub created: Timestamp,
    /// Live or test mode.
    pub livemode: bool,
    /// The payment.
    pub related_object: RelatedObject,
}

impl EventNotification {
    /// The event of `event_type` about payment `payment_id`, as the engine makes
    /// every event.
    pub fn about_payment(
        id: String,
        event_type: EventType,
        created: Timestamp,
        livemode: bool,
        payment_id: &str,
    ) -> EventNotification {
        EventNotification {
            id,
            object: "v2.core.event".into(),
            event_type,
            created,
            livemode,
            related_object: RelatedObject {
                id: payment_id.to_owned(),
                object_type: crate::payment::OBJECT_NAME.into(),
                url: format!("/v2/payments/off_session_payments/{payment_id}"),
            },
        }
    }

    /// The event as the in-process sink receives it, with the payment after the change.
    pub fn with_data(self, data: OffSessionPayment) -> Event {
        Event {
            id: self.id,
            object: self.object,
            event_type: self.event_type,
            created: self.created,
            livemode: self.livemode,
            related_object: self.related_object,
            data,
        }
    }
}

/// A v2 event as the in-process sink receives it: the thin notification plus the
/// payment as it was after the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// `evt_…`.
    pub id: String,
    /// Always `v2.core.event`.
    pub object: String,
    /// What happened (`v2.payments.off_session_payment.*`).
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// When it happened, by the payment's clock.
    pub created: Timestamp,
    /// Live or test mode.
    pub livemode: bool,
    /// The payment.
    pub related_object: RelatedObject,
    /// The payment after the change. In process only: the outbox keeps the
    /// notification without it.
    pub data: OffSessionPayment,
}

impl Event {
    /// The thin notification (without `data`), as the outbox keeps it.
    pub fn notification(&self) -> EventNotification {
        EventNotification {
            id: self.id.clone(),
            object: self.object.clone(),
            event_type: self.event_type,
            created: self.created,
            livemode: self.livemode,
            related_object: self.related_object.clone(),
        }
    }

    /// The thin notification as delivered to webhooks (without `data`).
    pub fn thin(&self) -> serde_json::Value {
        serde_json::to_value(self.notification()).unwrap_or(serde_json::Value::Null)
    }
}

/// Receives every event. Must not block: hand the event to a queue if delivery is slow.
pub trait EventSink: Send + Sync + Debug {
    /// Takes one event.
    fn emit(&self, event: Event);

    /// Whether the sink wants events at all; `false` lets the engine skip building
    /// them (a payment snapshot per event).
    fn wants_events(&self) -> bool {
        true
    }
}

/// Drops every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct DiscardEvents;

impl EventSink for DiscardEvents {
    fn emit(&self, _event: Event) {}

    fn wants_events(&self) -> bool {
        false
    }
}

/// Keeps every event in memory (tests, small embeddings).
#[derive(Debug, Default)]
pub struct CollectEvents {
    events: Mutex<Vec<Event>>,
}

impl CollectEvents {
    /// An empty collector.
    pub fn new() -> CollectEvents {
        CollectEvents::default()
    }

    /// Every event so far, oldest first.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The event types for one payment, oldest first.
    pub fn types_for(&self, payment_id: &str) -> Vec<EventType> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|e| e.related_object.id == payment_id)
            .map(|e| e.event_type)
            .collect()
    }
}

impl EventSink for CollectEvents {
    fn emit(&self, event: Event) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event);
    }
}

/// Forwards events to a tokio channel-like callback.
pub struct FnSink<F>(pub F);

impl<F> Debug for FnSink<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnSink")
    }
}

impl<F: Fn(Event) + Send + Sync> EventSink for FnSink<F> {
    fn emit(&self, event: Event) {
        (self.0)(event)
    }
}
