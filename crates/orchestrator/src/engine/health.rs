//! A processor's health as the engine keeps it: its circuit breaker and pacer fed
//! with each answer, and the breaker's state saved in the store and restored.

use super::*;

impl Engine {
    /// Feeds the processor's circuit breaker and pacer with an answer.
    /// Returns the breaker's new `open_until` when the answer opened or closed it.
    pub(super) fn observe_health(
        &self,
        processor: &str,
        outcome: &AttemptOutcome,
        now: Timestamp,
    ) -> Option<Option<Timestamp>> {
        let good = matches!(
            outcome,
            AttemptOutcome::Approved { .. }
                | AttemptOutcome::RequiresCapture { .. }
                | AttemptOutcome::Declined { .. }
        );
        let mut changed = None;
        if let Some(breaker) = self.inner.processors.breakers.get(processor) {
            let before = breaker.open_until();
            let state = breaker.record(now, good);
            metrics::gauge!("offsession_circuit_state", "processor" => processor.to_owned())
                .set(state as u8 as f64);
            // Opened, closed, or reopened until later by a failed probe: saved, so
            // that instances reloading it do not take a stale time for a new one.
            let after = breaker.open_until();
            if before != after {
                changed = Some(after);
            }
        }
        if let Some(pacer) = self.inner.processors.pacers.get(processor) {
            pacer.observe(matches!(
                outcome,
                AttemptOutcome::ProcessorFault {
                    kind: FaultKind::RateLimited,
                    ..
                }
            ));
        }
        changed
    }

    /// Saves a breaker's state in the store, so a restarted engine (or another
    /// instance) does not send to a processor known to be failing. A failed save is
    /// logged: the breaker itself works from memory.
    pub(super) async fn save_breaker(&self, processor: &str, open_until: Option<Timestamp>) {
        let value = match open_until {
            Some(until) => until.as_millis().to_string(),
            None => "closed".to_owned(),
        };
        if let Err(err) = self
            .inner
            .store
            .save_state(&breaker_key(processor), &value)
            .await
        {
            tracing::warn!(processor, error = %err, "could not save the circuit breaker's state");
        }
    }

    /// Loads every breaker's saved state (call once after building the engine).
    pub async fn restore_breakers(&self) -> Result<(), StoreError> {
        for (processor, breaker) in &self.inner.processors.breakers {
            if let Some(value) = self.inner.store.load_state(&breaker_key(processor)).await? {
                breaker.restore(value.parse::<i64>().ok().map(Timestamp::from_millis));
            }
        }
        Ok(())
    }

    /// A processor's circuit breaker state at `now` (`None`: no such processor).
    pub fn circuit_state(
        &self,
        processor: &str,
        now: Timestamp,
    ) -> Option<crate::breaker::BreakerState> {
        self.inner
            .processors
            .breakers
            .get(processor)
            .map(|b| b.state(now))
    }
}

/// Where a processor's breaker state is saved.
fn breaker_key(processor: &str) -> String {
    format!("breaker/{processor}")
}
