//! The outcome step, pure: `(record, outcome, policy, facts) → (record, events,
//! effects)`. It files a processor's answer on the payment — approval, held
//! authorization, decline (cascade or the retry policy's decision), or an answer that
//! settled nothing (replay with the same key, within bounds) — and changes the status
//! only through [`transition`]. It reads no clock, store or breaker: the engine
//! passes what it needs in [`Facts`] and turns the returned [`Effect`]s into metrics.

use std::time::Duration;

use offsession_core::text::quote;
use offsession_core::{
    transition, AttemptOutcome, AttemptRecord, CardBrand, DeclineCategory, DeclineCodes, EventType,
    FailureReason, FaultKind, IdSource, PaymentRecord, ProcessorReference, RetryDecision,
    RetryStrategy, Timestamp, Transition,
};
use offsession_retry::DeclineTable;

use crate::config::EngineConfig;

/// Longest processor text quoted on a payment (`last_authorization_attempt_error`).
const QUOTED_CHARS: usize = 500;

/// The retry policy as the step sees it: it learns from each settled attempt and
/// decides after a decline the cascade does not take.
pub(crate) trait StepPolicy {
    /// The attempt just finished (the record's last) was approved or declined.
    fn observe(&mut self, record: &PaymentRecord, approved: bool);
    /// When, if ever, to try again after `codes` filed as `category`.
    fn decide(
        &mut self,
        record: &PaymentRecord,
        codes: &DeclineCodes,
        category: DeclineCategory,
    ) -> RetryDecision;
}

/// What the step needs from outside the record.
#[derive(Debug, Clone)]
pub(crate) struct Facts<'a> {
    /// Now, on the payment's clock.
    pub(crate) now: Timestamp,
    /// The processor after the attempt's one in the payment's route whose breaker
    /// lets calls through (orchestrated payments only).
    pub(crate) next_hop: Option<String>,
    pub(crate) config: &'a EngineConfig,
    /// The idempotency window of the processor the latest attempt went to
    /// (`Processor::idempotency_window`): no replay is sent after it.
    pub(crate) key_window: Option<Duration>,
    pub(crate) declines: &'a DeclineTable,
    /// Gives an approved payment its payment record id.
    pub(crate) ids: &'a dyn IdSource,
}

/// What happened, for the metrics (the engine counts them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    /// An answer arrived (every outcome; `category` for issuer declines).
    Answered {
        processor: String,
        outcome: &'static str,
        category: Option<DeclineCategory>,
    },
    /// The answer settled nothing; the attempt is replayed or cascaded.
    Unsettled {
        processor: String,
        kind: &'static str,
    },
    /// Replays ran out with nothing settled: the payment ended.
    EndedUnsettled {
        processor: String,
        kind: &'static str,
    },
    /// The next attempt goes to another processor at once.
    Cascaded { from: String, to: String },
    /// A retry was scheduled by the payment's strategy.
    RetryScheduled { strategy: RetryStrategy },
}

/// The step's result.
#[derive(Debug, Clone)]
pub(crate) struct Filed {
    /// The record to store (compare-and-set against the record as read).
    pub(crate) record: Box<PaymentRecord>,
    /// The events of the status change, in order.
    pub(crate) events: &'static [EventType],
    pub(crate) effects: Vec<Effect>,
}

/// What kind of answer settled nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unsettled {
    /// No answer, or none the adapter could read: money may have moved.
    Unknown,
    /// A processor fault: nothing was charged.
    Fault(FaultKind),
}

impl Unsettled {
    fn as_str(self) -> &'static str {
        match self {
            Unsettled::Unknown => "unknown",
            Unsettled::Fault(kind) => kind.as_str(),
        }
    }
}

/// Files `outcome` of the record's last attempt. See the module doc.
pub(crate) fn step(
    mut record: Box<PaymentRecord>,
    outcome: AttemptOutcome,
    policy: &mut dyn StepPolicy,
    facts: &Facts<'_>,
) -> Filed {
    let now = facts.now;
    let from = record.payment.status;
    record.lease = None;
    let mut effects = Vec::new();
    let processor = record
        .attempts
        .last()
        .map(|a| a.processor.clone())
        .unwrap_or_default();
    // The card brand and the issuer decline's category, worked out once: the
    // metric, the cascade rules and the retry policy all use them.
    let brand = card_brand(&record).cloned();
    let issuer_category = match &outcome {
        AttemptOutcome::Declined { codes, .. } => {
            Some(facts.declines.classify(codes, brand.as_ref()))
        }
        _ => None,
    };
    effects.push(Effect::Answered {
        processor: processor.clone(),
        outcome: outcome.kind(),
        category: issuer_category,
    });

    let decline = match outcome {
        AttemptOutcome::Approved { reference } => {
            finish_attempt(
                &mut record,
                now,
                AttemptOutcome::Approved { reference },
                None,
            );
            apply(&mut record, Transition::Approve);
            record.payment.payment_record = Some(facts.ids.next_id("pr"));
            record.due_at = None;
            policy.observe(&record, true);
            None
        }
        AttemptOutcome::RequiresCapture { reference } => {
            let held = AttemptOutcome::RequiresCapture {
                reference: reference.clone(),
            };
            finish_attempt(&mut record, now, held, None);
            apply(&mut record, Transition::Authorize);
            record.payment.amount_capturable = Some(record.payment.amount_requested);
            record.authorization = Some(reference);
            record.due_at = Some(capture_deadline(
                &record.payment,
                now,
                facts.config.authorization_validity,
            ));
            policy.observe(&record, true);
            None
        }
        AttemptOutcome::Declined { codes, reference } => Some((codes, reference, issuer_category)),
        AttemptOutcome::ProcessorFault { .. } | AttemptOutcome::Unknown { .. } => {
            file_unsettled(&mut record, outcome, &processor, facts, &mut effects)
                .map(|(codes, reference)| (codes, reference, None))
        }
    };
    if let Some((codes, reference, category)) = decline {
        let category = category.unwrap_or_else(|| facts.declines.classify(&codes, brand.as_ref()));
        file_decline(
            &mut record,
            codes,
            reference,
            category,
            brand.as_ref(),
            policy,
            facts,
            &mut effects,
        );
    }
    Filed {
        events: EventType::for_change(from, record.payment.status),
        record,
        effects,
    }
}

/// The card brand of the payment's method, when it is a card.
pub(crate) fn card_brand(record: &PaymentRecord) -> Option<&CardBrand> {
    record
        .method
        .as_ref()
        .and_then(|m| m.card.as_ref())
        .map(|c| &c.brand)
}

/// Changes the status through the state machine. Every transition used here is
/// allowed from `processing`, where every outcome arrives; a refused one is a bug,
/// logged, and leaves the status as it was.
fn apply(record: &mut PaymentRecord, t: Transition) {
    match transition(record.payment.status, t) {
        Ok(to) => record.payment.status = to,
        Err(refused) => {
            tracing::error!(payment = %record.payment.id, %refused, "outcome applied from an unexpected status")
        }
    }
}

/// Ends a payment whose attempt's outcome is still unknown when its processor no
/// longer keeps the attempt's key (a crashed attempt found after the window): no
/// replay is sent, and the attempt is flagged for reconciliation as `Plan::End`
/// flags it. Returns the effect to count.
pub(super) fn end_after_key_lapsed(
    record: &mut PaymentRecord,
    now: Timestamp,
    processor: &str,
) -> Option<Effect> {
    let last = record.attempts.last()?;
    let what = format!(
        "outcome unknown after {} replays and past processor `{processor}`'s idempotency window; reconcile idempotency key `{}` with it before charging again",
        last.replays, last.idempotency_key
    );
    let outcome = AttemptOutcome::Unknown {
        message: what.clone(),
    };
    Some(end_unsettled(
        record,
        now,
        outcome,
        FailureReason::RetriesExhausted,
        &what,
        processor,
        Unsettled::Unknown.as_str(),
    ))
}

/// Ends `record` failed with `reason` after an attempt that never settled: its last
/// answer `outcome` filed, `what` kept for the merchant. Returns the effect to count.
fn end_unsettled(
    record: &mut PaymentRecord,
    now: Timestamp,
    outcome: AttemptOutcome,
    reason: FailureReason,
    what: &str,
    processor: &str,
    kind: &'static str,
) -> Effect {
    finish_attempt(record, now, outcome, None);
    record.replay_pending = false;
    apply(record, Transition::Fail);
    record.payment.failure_reason = Some(reason);
    record.payment.last_authorization_attempt_error = Some(quote(what, QUOTED_CHARS));
    record.due_at = None;
    Effect::EndedUnsettled {
        processor: processor.to_owned(),
        kind,
    }
}

/// When an authorization approved at `approved` stops being capturable: the
/// payment's `capture.capture_before`, or the end of its `validity`, whichever is
/// first.
pub(super) fn capture_deadline(
    payment: &offsession_core::OffSessionPayment,
    approved: Timestamp,
    validity: Duration,
) -> Timestamp {
    let expires = approved.plus(validity);
    payment
        .capture
        .capture_before
        .map_or(expires, |before| before.min(expires))
}

/// Fails `record` without sending its attempt (a deadline passed, the card's network
/// rules stop it): lease and due time cleared. `replay`: the reason a fault's replay
/// was not sent; its attempt then ends as the fault it was (nothing charged), not as
/// one still awaiting its answer, which the network caps would count as a decline.
pub(super) fn fail_unsent(
    record: &mut PaymentRecord,
    now: Timestamp,
    reason: FailureReason,
    replay: Option<&str>,
) {
    if let Some(why) = replay {
        finish_attempt(
            record,
            now,
            AttemptOutcome::fault(FaultKind::Unavailable, why),
            None,
        );
        record.replay_pending = false;
    }
    record.lease = None;
    apply(record, Transition::Fail);
    record.payment.failure_reason = Some(reason);
    record.due_at = None;
}

fn finish_attempt(
    record: &mut PaymentRecord,
    now: Timestamp,
    outcome: AttemptOutcome,
    category: Option<DeclineCategory>,
) {
    if let Some(last) = record.attempts.last_mut() {
        // The processor's answer for the attempt's key settles a lost one: the
        // network rules count it as what it was (an approval is not a decline), and
        // it is no longer reported as unknown. An attempt ended while its answer is
        // still unknown stays flagged for reconciliation.
        if matches!(
            outcome,
            AttemptOutcome::Approved { .. }
                | AttemptOutcome::Declined { .. }
                | AttemptOutcome::RequiresCapture { .. }
        ) {
            last.outcome_unknown = false;
        }
        last.finished_at = Some(now);
        last.outcome = Some(outcome);
        last.decline_category = category;
    }
}

fn cascade(record: &mut PaymentRecord, to: String, now: Timestamp, effects: &mut Vec<Effect>) {
    let from = record
        .attempts
        .last()
        .map(|a| a.processor.clone())
        .unwrap_or_default();
    effects.push(Effect::Cascaded {
        from,
        to: to.clone(),
    });
    record.cascade_to = Some(to);
    record.replay_pending = false;
    apply(record, Transition::ScheduleRetry);
    record.due_at = Some(now);
}

/// What becomes of an attempt whose answer settled nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Nothing was charged and another processor is open: a new attempt there, now.
    Cascade,
    /// Send the same attempt again, with the same key, after this wait.
    Replay(Duration),
    /// Replays are spent and nothing settled the attempt: the payment ends.
    End(FailureReason),
    /// A passing fault outlasted its waits: a transient decline for the policy.
    Decline,
}

impl Unsettled {
    fn of(outcome: &AttemptOutcome) -> Option<(Unsettled, &str)> {
        match outcome {
            AttemptOutcome::Unknown { message } => Some((Unsettled::Unknown, message)),
            AttemptOutcome::ProcessorFault { kind, message } => {
                Some((Unsettled::Fault(*kind), message))
            }
            _ => None,
        }
    }
}

/// The plan for `last`, the attempt that got a `kind` answer, as it was before the
/// answer is filed. The one place the replay bounds are read.
fn plan(last: &AttemptRecord, kind: Unsettled, facts: &Facts<'_>) -> Plan {
    let config = facts.config;
    let unresolved = last.outcome_unknown || kind == Unsettled::Unknown;
    let refused = kind == Unsettled::Fault(FaultKind::Refused);
    let rate_limited = kind == Unsettled::Fault(FaultKind::RateLimited);
    let replays = last.replays;
    let first_fault_at = last.first_fault_at.unwrap_or(facts.now);
    // Never cascade after an unknown outcome: the first processor may have charged.
    if !unresolved && facts.next_hop.is_some() {
        return Plan::Cascade;
    }
    let out_of_time = facts.now >= first_fault_at.plus(config.replay_deadline);
    let out_of_replays = replays >= config.max_replays && !rate_limited;
    let replayable =
        unresolved || refused || rate_limited || (replays as usize) < config.replay_backoff.len();
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
        // The replay must reach the processor while it still knows the key: after
        // that, the same key may charge again.
        // The last one goes a minute before the key lapses; then the payment ends.
        let Some(window) = facts.key_window.filter(|_| unresolved) else {
            return Plan::Replay(wait);
        };
        let left = last.started_at.plus(window).as_millis() - facts.now.as_millis();
        if left > wait.as_millis() as i64 {
            return Plan::Replay(wait);
        }
        if left > 60_000 {
            return Plan::Replay(Duration::from_millis(left as u64 - 60_000));
        }
    }
    if unresolved {
        Plan::End(FailureReason::RetriesExhausted)
    } else if refused || rate_limited {
        Plan::End(FailureReason::RejectedByPartner)
    } else {
        Plan::Decline
    }
}

/// Whether filing `outcome` on `record` asks the retry policy, so that the engine
/// reads the card's history only then: an issuer decline, or a passing fault that
/// has outlasted its replays.
pub(crate) fn needs_decision(
    record: &PaymentRecord,
    outcome: &AttemptOutcome,
    facts: &Facts<'_>,
) -> bool {
    match (outcome, Unsettled::of(outcome), record.attempts.last()) {
        (AttemptOutcome::Declined { codes, .. }, _, _) => {
            let brand = card_brand(record);
            let category = facts.declines.classify(codes, brand);
            facts.next_hop.is_none() || !cascades(codes, category, brand, facts)
        }
        (_, Some((kind, _)), Some(last)) => plan(last, kind, facts) == Plan::Decline,
        _ => false,
    }
}

/// A processor answer that is not the issuer's: a fault (nothing charged), a refusal
/// (400/401/403/3xx: nothing charged, the merchant's configuration is wrong) or an
/// unknown outcome (money may have moved). The same attempt is replayed with the
/// same key, within `max_replays` and `replay_deadline`; an unknown outcome keeps the
/// payment `processing` until an answer settles it, so it can be neither canceled
/// nor cascaded to another processor meanwhile.
///
/// Returns synthetic decline codes when a passing fault outlasted its replays:
/// nothing was charged, and the attempt is filed as a transient decline.
fn file_unsettled(
    record: &mut PaymentRecord,
    outcome: AttemptOutcome,
    processor: &str,
    facts: &Facts<'_>,
    effects: &mut Vec<Effect>,
) -> Option<(DeclineCodes, ProcessorReference)> {
    let now = facts.now;
    let (kind, message) = Unsettled::of(&outcome).map(|(k, m)| (k, m.to_owned()))?;
    effects.push(Effect::Unsettled {
        processor: processor.to_owned(),
        kind: kind.as_str(),
    });
    let last = record.attempts.last_mut()?;
    let plan = plan(last, kind, facts);
    last.first_fault_at.get_or_insert(now);
    last.outcome_unknown |= kind == Unsettled::Unknown;
    let unresolved = last.outcome_unknown;
    let replays = last.replays;
    let key = last.idempotency_key.clone();
    tracing::info!(payment = %record.payment.id, %processor, %key, kind = kind.as_str(), replays, message, "attempt did not settle");

    match plan {
        Plan::Cascade => {
            let hop = facts.next_hop.clone().unwrap_or_default();
            finish_attempt(record, now, outcome, None);
            cascade(record, hop, now, effects);
            None
        }
        Plan::Replay(wait) => {
            if kind == Unsettled::Fault(FaultKind::Refused) {
                tracing::error!(payment = %record.payment.id, %processor, message, "processor refused the request; fix the configuration");
            }
            record.replay_pending = true;
            // While the outcome is unknown the payment stays `processing`.
            if !unresolved {
                apply(record, Transition::ScheduleRetry);
            }
            record.due_at = Some(now.plus(wait));
            None
        }
        Plan::End(reason) => {
            // An unknown outcome is flagged on the attempt for reconciliation with
            // the processor (same key) before the customer is charged again.
            let what = if unresolved {
                format!("outcome unknown after {replays} replays; reconcile idempotency key `{key}` with processor `{processor}` before charging again")
            } else {
                format!("processor `{processor}` did not accept the request after {replays} replays: {message}")
            };
            tracing::error!(payment = %record.payment.id, %processor, %key, reason = reason.as_str(), "{what}");
            effects.push(end_unsettled(
                record,
                now,
                outcome,
                reason,
                &what,
                processor,
                kind.as_str(),
            ));
            None
        }
        // Nothing was charged, and the attempt counts as a transient decline, filed
        // by the policy like any other.
        Plan::Decline => Some((
            DeclineCodes {
                code: "processor_unavailable".into(),
                decline_code: Some("processing_error".into()),
                message: Some(quote(&message, QUOTED_CHARS)),
                ..DeclineCodes::default()
            },
            ProcessorReference::default(),
        )),
    }
}

/// Whether a decline filed as `category` goes to another processor at once (when
/// one is open): only for the configured categories, and never when the network's
/// codes forbid or defer a retry.
fn cascades(
    codes: &DeclineCodes,
    category: DeclineCategory,
    brand: Option<&CardBrand>,
    facts: &Facts<'_>,
) -> bool {
    let rules = facts.declines.network_rules();
    facts.config.cascade_categories.contains(&category)
        && !rules.forbids_retry(brand, codes)
        && rules.advice_wait(brand, codes).is_none()
}

#[allow(clippy::too_many_arguments)]
fn file_decline(
    record: &mut PaymentRecord,
    codes: DeclineCodes,
    reference: ProcessorReference,
    category: DeclineCategory,
    brand: Option<&CardBrand>,
    policy: &mut dyn StepPolicy,
    facts: &Facts<'_>,
    effects: &mut Vec<Effect>,
) {
    let now = facts.now;
    finish_attempt(
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
    policy.observe(record, false);
    if let Some(hop) = facts.next_hop.clone() {
        if cascades(&codes, category, brand, facts) {
            // Another processor may approve what this one declined: try it now.
            cascade(record, hop, now, effects);
            return;
        }
    }
    // Whatever the policy, nothing is attempted after the payment's `retry_until`
    // (or a manual capture's `capture_before`).
    let decision = policy
        .decide(record, &codes, category)
        .within(record.payment.attempts_end());
    match decision {
        RetryDecision::RetryAt { not_before, latest } => {
            effects.push(Effect::RetryScheduled {
                strategy: record.payment.retry_details.retry_strategy,
            });
            apply(record, Transition::ScheduleRetry);
            record.due_at = Some(not_before.max(now));
            record.retry_latest = latest;
        }
        RetryDecision::Stop(reason) => {
            apply(record, Transition::Fail);
            record.payment.failure_reason = Some(reason);
            record.due_at = None;
        }
    }
}

#[cfg(test)]
#[path = "step_tests.rs"]
mod tests;
