//! What the engine reports: events to the event sink, and the metrics of filed
//! outcomes (the step returns them as effects).

use super::step::Effect;
use super::*;

impl Engine {
    /// Emits the events of a status change (see [`EventType::for_change`]).
    pub(super) fn emit_change(
        &self,
        from: PaymentStatus,
        payment: &OffSessionPayment,
        at: Timestamp,
    ) {
        for event in EventType::for_change(from, payment.status) {
            self.emit(*event, payment, at);
        }
    }

    pub(super) fn emit(&self, event_type: EventType, payment: &OffSessionPayment, at: Timestamp) {
        if !self.inner.events.wants_events() {
            return;
        }
        self.inner.events.emit(Event {
            id: self.inner.ids.next_id("evt"),
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

    /// Counts the step's effects.
    pub(super) fn count(&self, effects: &[Effect]) {
        for effect in effects {
            match effect {
                Effect::Answered {
                    processor,
                    outcome,
                    category,
                } => metrics::counter!(
                    "offsession_attempts_total",
                    "processor" => processor.clone(),
                    "outcome" => *outcome,
                    "category" => category.map_or("none", DeclineCategory::as_str)
                )
                .increment(1),
                Effect::Unsettled { processor, kind } => metrics::counter!(
                    "offsession_attempt_faults_total",
                    "processor" => processor.clone(),
                    "kind" => *kind
                )
                .increment(1),
                Effect::EndedUnsettled { processor, kind } => metrics::counter!(
                    "offsession_payments_unsettled_total",
                    "processor" => processor.clone(),
                    "kind" => *kind
                )
                .increment(1),
                Effect::Cascaded { from, to } => metrics::counter!(
                    "offsession_cascade_failovers_total",
                    "from" => from.clone(),
                    "to" => to.clone()
                )
                .increment(1),
                Effect::RetryScheduled { strategy } => metrics::counter!(
                    "offsession_retries_scheduled_total",
                    "strategy" => strategy.as_str()
                )
                .increment(1),
            }
        }
    }

    /// Counts a payment that reached a terminal status.
    pub(super) fn count_terminal(&self, payment: &OffSessionPayment) {
        if payment.status.is_terminal() {
            metrics::counter!(
                "offsession_payments_terminal_total",
                "status" => payment.status.as_str(),
                "failure_reason" => payment.failure_reason.map_or("none", |r| r.as_str())
            )
            .increment(1);
        }
    }
}
