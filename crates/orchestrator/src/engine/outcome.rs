//! Filing an answer: approval, decline (retry policy and cascade), or a fault
//! (replays with the same key, within bounds).

use super::*;

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

impl Engine {
    pub(super) async fn apply_outcome(
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
    pub(super) fn step(&self, from: PaymentStatus, t: Transition) -> PaymentStatus {
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
    pub(super) fn apply_fault(
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
            // While the outcome is unknown the payment stays `processing`.
            if !unresolved {
                record.payment.status = self.step(record.payment.status, Transition::ScheduleRetry);
            }
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
            record.payment.status = self.step(record.payment.status, Transition::Fail);
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

    pub(super) async fn apply_decline(
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
                record.payment.status = self.step(record.payment.status, Transition::ScheduleRetry);
                record.due_at = Some(not_before.max(now));
                record.retry_latest = latest;
            }
            RetryDecision::Stop(reason) => {
                record.payment.status = self.step(record.payment.status, Transition::Fail);
                record.payment.failure_reason = Some(reason);
                record.due_at = None;
            }
        }
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
                    .breakers
                    .get(id.as_str())
                    .is_none_or(|b| b.state(now) != BreakerState::Open)
            })
            .map(|id| (*id).clone())
    }

    pub(super) fn cascade(&self, record: &mut PaymentRecord, to: Option<String>, now: Timestamp) {
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
        record.payment.status = self.step(record.payment.status, Transition::ScheduleRetry);
        record.due_at = Some(now);
    }

    pub(super) fn finish_attempt(
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

    pub(super) async fn decide(
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
    pub(super) async fn card_history(
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
        for policy in self.inner.strategies.values() {
            policy.observe(&observation);
        }
    }
}
