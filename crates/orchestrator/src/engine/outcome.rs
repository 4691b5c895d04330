//! Filing an answer: the engine's side of the pure outcome step (`step.rs`) — the
//! card history and breaker state it needs, the retry policy it consults, and the
//! compare-and-set write, metrics and events after it.

use super::step::{needs_decision, step, Facts, StepPolicy};
use super::*;

/// How far back the card history given to policies reaches at least (network caps
/// use 30 days); further when a Mastercard `never_retry` code bars a card for longer
/// (`never_retry_days`).
const CARD_HISTORY_WINDOW: Duration = Duration::from_secs(30 * 86_400);

/// How many of a card's newest attempts the network rules see. The caps count at most
/// a few dozen attempts (Visa 15 reattempts, Mastercard 10 declines a day, 35 per
/// amount a month), and the stores leave out the attempts no cap counts (first
/// attempts approved, the bulk of a busy card's), so the newest 256 decide them; the
/// SQL stores read them through an index of the counted attempts (schema version 5),
/// and the bound keeps a decision's cost flat however many payments share one card.
const CARD_HISTORY_LIMIT: usize = 256;

/// The payment's retry policy, with the card's stored history read before the step.
struct EnginePolicy<'a> {
    engine: &'a Engine,
    /// Attempts on the card by other payments, from the store.
    stored_history: Vec<CardAttempt>,
    now: Timestamp,
}

impl StepPolicy for EnginePolicy<'_> {
    fn observe(&mut self, record: &PaymentRecord, approved: bool) {
        self.engine.observe(record, approved);
    }

    fn decide(
        &mut self,
        record: &PaymentRecord,
        codes: &DeclineCodes,
        category: DeclineCategory,
    ) -> RetryDecision {
        // The step asks at most once per outcome.
        let stored = std::mem::take(&mut self.stored_history);
        let history = with_own_attempts(stored, record, self.engine.history_since(self.now));
        self.engine
            .decide(record, &history, codes, category, self.now)
    }
}

impl Engine {
    pub(super) async fn apply_outcome(
        &self,
        written: Box<PaymentRecord>,
        outcome: AttemptOutcome,
    ) -> Result<(), StoreError> {
        let now = self.now_for(&written.payment);
        let facts = Facts {
            now,
            next_hop: self.next_hop(&written, now),
            config: &self.inner.config,
            key_window: self
                .processor(written.latest_processor())
                .and_then(|p| p.idempotency_window()),
            declines: &self.inner.declines,
            ids: self.inner.ids.as_ref(),
        };
        // The policy decides with the card's history: read it, before the step (which
        // does no I/O), only when the step will ask the policy.
        let stored_history = if needs_decision(&written, &outcome, &facts) {
            self.stored_card_history(&written, now).await?
        } else {
            Vec::new()
        };
        let mut policy = EnginePolicy {
            engine: self,
            stored_history,
            now,
        };
        let expected = Expected::of(&written);
        let filed = step(written, outcome, &mut policy, &facts);
        let (status, failure_reason) = (
            filed.record.payment.status,
            filed.record.payment.failure_reason,
        );
        self.commit_events_owned(filed.record, expected, filed.events, now)
            .await?;
        self.count(&filed.effects);
        self.count_terminal(status, failure_reason);
        Ok(())
    }

    /// The processor after the current attempt's one in the payment's route whose
    /// breaker lets calls through (orchestrated payments only).
    pub(super) fn next_hop(&self, record: &PaymentRecord, now: Timestamp) -> Option<String> {
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
                    .processors
                    .breakers
                    .get(id.as_str())
                    .is_none_or(|b| b.state(now) != BreakerState::Open)
            })
            .map(|id| (*id).clone())
    }

    /// The payment's policy decides after a decline (the step applies `retry_until`).
    pub(super) fn decide(
        &self,
        record: &PaymentRecord,
        card_history: &[CardAttempt],
        codes: &DeclineCodes,
        category: DeclineCategory,
        now: Timestamp,
    ) -> RetryDecision {
        let details = &record.payment.retry_details;
        let policy = match details.retry_strategy {
            RetryStrategy::Scheduled => details
                .retry_policy
                .as_deref()
                .and_then(|name| self.inner.policies.named.get(name)),
            strategy => self.inner.policies.strategies.get(&strategy),
        };
        let Some(policy) = policy else {
            tracing::error!(payment = %record.payment.id, strategy = %details.retry_strategy, "no policy installed for the payment's strategy; stopping");
            return RetryDecision::Stop(FailureReason::RetriesExhausted);
        };
        policy.decide(&RetryContext {
            payment: &record.payment,
            method: record.method.as_ref(),
            attempts: &record.attempts,
            card_history,
            decline: codes,
            category,
            first_attempt_at: record.first_attempt_at.unwrap_or(now),
            now,
        })
    }

    /// The newest attempts on the payment's card by other payments in the last 30
    /// days, as the store answers them (bounded by `CARD_HISTORY_LIMIT`).
    async fn stored_card_history(
        &self,
        record: &PaymentRecord,
        now: Timestamp,
    ) -> Result<Vec<CardAttempt>, StoreError> {
        let since = self.history_since(now);
        let store = &self.inner.store;
        let mut history = store
            .card_history(&record.card_key(), since, CARD_HISTORY_LIMIT)
            .await?;
        // Attempts filed under the keys of earlier releases (the payment method's id,
        // the payment's own processor) by payments made before an upgrade are the same
        // card's.
        let earlier = record.earlier_card_keys();
        for key in &earlier {
            history.extend(store.card_history(key, since, CARD_HISTORY_LIMIT).await?);
        }
        if !earlier.is_empty() {
            history.sort_by(|a, b| {
                (a.at, &a.payment_id, a.attempt_number).cmp(&(
                    b.at,
                    &b.payment_id,
                    b.attempt_number,
                ))
            });
            history.dedup_by(|a, b| {
                a.payment_id == b.payment_id && a.attempt_number == b.attempt_number
            });
            let excess = history.len().saturating_sub(CARD_HISTORY_LIMIT);
            history.drain(..excess);
        }
        Ok(history
            .into_iter()
            .filter(|a| a.payment_id != record.payment.id)
            .collect())
    }

    /// Every attempt on the payment's card in the last 30 days, across payments,
    /// with this payment's attempts as held in memory (the store may not have the
    /// outcome of the latest one yet).
    pub(super) async fn card_history(
        &self,
        record: &PaymentRecord,
        now: Timestamp,
    ) -> Result<Vec<CardAttempt>, StoreError> {
        let stored = self.stored_card_history(record, now).await?;
        Ok(with_own_attempts(stored, record, self.history_since(now)))
    }

    /// Tells every strategy the outcome of the attempt just finished.
    pub(super) fn observe(&self, record: &PaymentRecord, approved: bool) {
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
        for policy in self.inner.policies.strategies.values() {
            policy.observe(&observation);
        }
    }
}

impl Engine {
    /// The start of the card history the network rules read at `now`: 30 days back,
    /// or `never_retry_days` when the declines file sets more.
    fn history_since(&self, now: Timestamp) -> Timestamp {
        let barred_for = Duration::from_secs(
            u64::from(
                self.inner
                    .declines
                    .network_rules()
                    .mastercard_never_retry_days,
            ) * 86_400,
        );
        let window = CARD_HISTORY_WINDOW.max(barred_for);
        Timestamp::from_millis(now.as_millis() - window.as_millis() as i64)
    }
}

/// `stored` (other payments' attempts) with `record`'s own attempts since `since`,
/// oldest first.
fn with_own_attempts(
    mut history: Vec<CardAttempt>,
    record: &PaymentRecord,
    since: Timestamp,
) -> Vec<CardAttempt> {
    history.extend(
        record
            .attempts
            .iter()
            .filter(|a| a.started_at >= since)
            .map(|a| CardAttempt::of(&record.payment, a)),
    );
    history.sort_by_key(|a| a.at);
    history
}
