//! What the engine reports: events to the event sink, and the metrics of filed
//! outcomes (the step returns them as effects).

use super::step::Effect;
use super::*;

impl Engine {
    /// Emits the events of a status change (see [`EventType::for_change`]).
    /// Writes `next` (computed from a read matching `expected`) and the events of its
    /// status change from `from` in one store transaction, then hands the events to
    /// the sink: an event is seen only for a change that committed.
    pub(super) async fn commit_change(
        &self,
        next: &PaymentRecord,
        expected: Expected,
        from: PaymentStatus,
        at: Timestamp,
    ) -> Result<u64, StoreError> {
        let types = EventType::for_change(from, next.payment.status);
        self.commit_events(next, expected, types, at).await
    }

    /// `commit_change` while `lock` (a card's, from the store) is held, in the
    /// store's `commit_under_lock`: the write fails if the lock did not hold to it.
    pub(super) async fn commit_change_under(
        &self,
        lock: offsession_core::CardLock,
        next: &PaymentRecord,
        expected: Expected,
        from: PaymentStatus,
        at: Timestamp,
    ) -> Result<u64, StoreError> {
        let types = EventType::for_change(from, next.payment.status);
        self.commit_events_under(Some(lock), next, expected, types, at)
            .await
    }

    /// Writes `next` with events of `types` in one store transaction, then hands the
    /// events to the sink.
    pub(super) async fn commit_events(
        &self,
        next: &PaymentRecord,
        expected: Expected,
        types: &[EventType],
        at: Timestamp,
    ) -> Result<u64, StoreError> {
        self.commit_events_under(None, next, expected, types, at)
            .await
    }

    /// `commit_events`, under `lock` when given (the store's `commit_under_lock`).
    async fn commit_events_under(
        &self,
        lock: Option<offsession_core::CardLock>,
        next: &PaymentRecord,
        expected: Expected,
        types: &[EventType],
        at: Timestamp,
    ) -> Result<u64, StoreError> {
        let events = self.build_events(types, &next.payment, at);
        let store = &self.inner.store;
        let version = match lock {
            Some(lock) => {
                store
                    .commit_under_lock(lock, next, expected, &events)
                    .await?
            }
            None => store.commit(next, expected, &events).await?,
        };
        self.publish(events, &next.payment);
        Ok(version)
    }

    /// `commit_events` for a record the caller is done with: handed to the store
    /// (no copy into a memory store) unless the sink needs the payment afterwards.
    pub(super) async fn commit_events_owned(
        &self,
        next: Box<PaymentRecord>,
        expected: Expected,
        types: &[EventType],
        at: Timestamp,
    ) -> Result<u64, StoreError> {
        if self.inner.events.wants_events() {
            return self.commit_events(&next, expected, types, at).await;
        }
        let events = self.build_events(types, &next.payment, at);
        self.inner
            .store
            .commit_owned(*next, expected, &events)
            .await
    }

    /// The (thin) events of `types` for `payment`; none when neither the store keeps
    /// them nor the sink wants them.
    pub(super) fn build_events(
        &self,
        types: &[EventType],
        payment: &OffSessionPayment,
        at: Timestamp,
    ) -> Vec<EventNotification> {
        if types.is_empty()
            || !(self.inner.store.keeps_events() || self.inner.events.wants_events())
        {
            return Vec::new();
        }
        types
            .iter()
            .map(|event_type| {
                EventNotification::about_payment(
                    self.inner.ids.next_id("evt"),
                    *event_type,
                    at,
                    payment.livemode,
                    &payment.id,
                )
            })
            .collect()
    }

    /// Hands committed events to the in-process sink, each with `payment` as it was
    /// after the change.
    pub(super) fn publish(&self, events: Vec<EventNotification>, payment: &OffSessionPayment) {
        if self.inner.events.wants_events() {
            for event in events {
                self.inner.events.emit(event.with_data(payment.clone()));
            }
        }
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
    pub(super) fn count_terminal(
        &self,
        status: PaymentStatus,
        failure_reason: Option<FailureReason>,
    ) {
        if status.is_terminal() {
            metrics::counter!(
                "offsession_payments_terminal_total",
                "status" => status.as_str(),
                "failure_reason" => failure_reason.map_or("none", |r| r.as_str())
            )
            .increment(1);
        }
    }
}
