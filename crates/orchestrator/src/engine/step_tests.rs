//! Table tests of the outcome step: one row per (outcome, route, policy, replays so
//! far) with the status, schedule and bookkeeping the step must leave.

use std::time::Duration;

use offsession_core::payment::RetryDetails;
use offsession_core::{
    AttemptOutcome, AttemptRecord, CaptureMethod, CardBrand, CardDetails, DeclineCategory,
    DeclineCodes, EventType, FailureReason, FaultKind, PaymentMethodDetails, PaymentMethodType,
    PaymentRecord, PaymentStatus, RetryDecision, RetryStrategy, SeededIds, Timestamp,
};
use offsession_retry::DeclineTable;

use super::{step, Effect, Facts, StepPolicy};
use crate::config::EngineConfig;

const NOW: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const HOUR: i64 = 3_600_000;

fn at(hours: i64) -> Timestamp {
    Timestamp::from_millis(NOW + hours * HOUR)
}

/// A card payment in `processing` with its attempt `number` in flight.
fn in_flight(number: u32, replays: u32, unknown: bool, capture: CaptureMethod) -> PaymentRecord {
    let mut record = offsession_store::conformance::sample_record("osp_test_1", NOW - HOUR, None);
    let payment = &mut record.payment;
    payment.capture.capture_method = capture;
    payment.retry_details = RetryDetails {
        attempts: number,
        retry_strategy: RetryStrategy::Scheduled,
        retry_policy: Some("stripe_recommended".into()),
        retry_until: Some(at(24 * 10)),
    };
    payment.status = PaymentStatus::Processing;
    let method = PaymentMethodDetails {
        payment_method_type: PaymentMethodType::Card,
        card: Some(CardDetails {
            brand: CardBrand::Visa,
            funding: "credit".into(),
            country: Some("US".into()),
            wallet: None,
            fingerprint: None,
            fingerprint_by: None,
        }),
        bank_country: None,
    };
    record.method = Some(method);
    record.attempts = (1..=number)
        .map(|n| {
            let started = at(-(number as i64 - n as i64) * 24);
            let mut attempt =
                AttemptRecord::started(format!("ospattempt_{n}"), "osp_test_1", n, "mock", started);
            if n == number {
                attempt.replays = replays;
                attempt.first_fault_at = (replays > 0).then(|| at(-1));
                attempt.outcome_unknown = unknown;
            }
            attempt
        })
        .collect();
    record.first_attempt_at = Some(at(-(number as i64 - 1) * 24));
    record
}

/// A policy that answers a fixed decision and records what it was told.
struct Fixed {
    decision: RetryDecision,
    observed: Vec<bool>,
    asked: u32,
}

impl StepPolicy for Fixed {
    fn observe(&mut self, _: &PaymentRecord, approved: bool) {
        self.observed.push(approved);
    }
    fn decide(&mut self, _: &PaymentRecord, _: &DeclineCodes, _: DeclineCategory) -> RetryDecision {
        self.asked += 1;
        self.decision.clone()
    }
}

fn declined(code: &str, decline_code: Option<&str>) -> AttemptOutcome {
    AttemptOutcome::Declined {
        codes: DeclineCodes::new(code, decline_code),
        reference: Default::default(),
    }
}

struct Row {
    name: &'static str,
    record: PaymentRecord,
    outcome: AttemptOutcome,
    next_hop: Option<&'static str>,
    decision: RetryDecision,
    // Expected:
    status: PaymentStatus,
    due_in_hours: Option<i64>,
    failure: Option<FailureReason>,
    replay_pending: bool,
    cascade_to: Option<&'static str>,
    events: &'static [EventType],
    observed: &'static [bool],
    asked: u32,
}

fn retry_in(hours: i64) -> RetryDecision {
    RetryDecision::RetryAt {
        not_before: at(hours),
        latest: None,
    }
}

#[test]
fn the_outcome_step_files_every_answer_as_the_table_says() {
    use PaymentStatus as S;
    let auto = CaptureMethod::Automatic;
    let rows = vec![
        Row {
            name: "approval succeeds and tells the policy",
            record: in_flight(1, 0, false, auto),
            outcome: AttemptOutcome::Approved {
                reference: Default::default(),
            },
            next_hop: None,
            decision: retry_in(1),
            status: S::Succeeded,
            due_in_hours: None,
            failure: None,
            replay_pending: false,
            cascade_to: None,
            events: &[EventType::Succeeded],
            observed: &[true],
            asked: 0,
        },
        Row {
            name: "a held authorization waits for capture until it expires",
            record: in_flight(1, 0, false, CaptureMethod::Manual),
            outcome: AttemptOutcome::RequiresCapture {
                reference: Default::default(),
            },
            next_hop: None,
            decision: retry_in(1),
            status: S::RequiresCapture,
            due_in_hours: Some(7 * 24),
            failure: None,
            replay_pending: false,
            cascade_to: None,
            events: &[EventType::RequiresCapture],
            observed: &[true],
            asked: 0,
        },
        Row {
            name: "a soft decline is scheduled where the policy says",
            record: in_flight(1, 0, false, auto),
            outcome: declined("card_declined", Some("insufficient_funds")),
            next_hop: None,
            decision: retry_in(24),
            status: S::PendingRetry,
            due_in_hours: Some(24),
            failure: None,
            replay_pending: false,
            cascade_to: None,
            events: &[
                EventType::AttemptFailed,
                EventType::AuthorizationAttemptFailed,
            ],
            observed: &[false],
            asked: 1,
        },
        Row {
            name: "a retry past retry_until stops the payment whatever the policy",
            record: in_flight(1, 0, false, auto),
            outcome: declined("card_declined", Some("insufficient_funds")),
            next_hop: None,
            decision: retry_in(24 * 11),
            status: S::Failed,
            due_in_hours: None,
            failure: Some(FailureReason::ExceededRetryWindow),
            replay_pending: false,
            cascade_to: None,
            events: &[EventType::Failed],
            observed: &[false],
            asked: 1,
        },
        Row {
            name: "the policy stopping fails the payment with its reason",
            record: in_flight(3, 0, false, auto),
            outcome: declined("card_declined", Some("stolen_card")),
            next_hop: None,
            decision: RetryDecision::Stop(FailureReason::RetriesExhausted),
            status: S::Failed,
            due_in_hours: None,
            failure: Some(FailureReason::RetriesExhausted),
            replay_pending: false,
            cascade_to: None,
            events: &[EventType::Failed],
            observed: &[false],
            asked: 1,
        },
        Row {
            name: "an issuer decline cascades at once when another processor is open",
            record: in_flight(1, 0, false, auto),
            outcome: declined("card_declined", Some("generic_decline")),
            next_hop: Some("backup"),
            decision: retry_in(24),
            status: S::PendingRetry,
            due_in_hours: Some(0),
            failure: None,
            replay_pending: false,
            cascade_to: Some("backup"),
            events: &[
                EventType::AttemptFailed,
                EventType::AuthorizationAttemptFailed,
            ],
            observed: &[false],
            asked: 0,
        },
        Row {
            name: "a hard decline never cascades; the policy decides",
            record: in_flight(1, 0, false, auto),
            outcome: declined("card_declined", Some("stolen_card")),
            next_hop: Some("backup"),
            decision: RetryDecision::Stop(FailureReason::NoValidPaymentMethod),
            status: S::Failed,
            due_in_hours: None,
            failure: Some(FailureReason::NoValidPaymentMethod),
            replay_pending: false,
            cascade_to: None,
            events: &[EventType::Failed],
            observed: &[false],
            asked: 1,
        },
        Row {
            name: "a passing fault replays the same attempt after the first wait",
            record: in_flight(1, 0, false, auto),
            outcome: AttemptOutcome::fault(FaultKind::Unavailable, "503"),
            next_hop: None,
            decision: retry_in(1),
            status: S::PendingRetry,
            due_in_hours: Some(1),
            failure: None,
            replay_pending: true,
            cascade_to: None,
            events: &[
                EventType::AttemptFailed,
                EventType::AuthorizationAttemptFailed,
            ],
            observed: &[],
            asked: 0,
        },
        Row {
            name: "a fault cascades when another processor is open",
            record: in_flight(1, 0, false, auto),
            outcome: AttemptOutcome::fault(FaultKind::Unavailable, "503"),
            next_hop: Some("backup"),
            decision: retry_in(1),
            status: S::PendingRetry,
            due_in_hours: Some(0),
            failure: None,
            replay_pending: false,
            cascade_to: Some("backup"),
            events: &[
                EventType::AttemptFailed,
                EventType::AuthorizationAttemptFailed,
            ],
            observed: &[],
            asked: 0,
        },
        Row {
            name: "a fault that outlasted its waits is a transient decline for the policy",
            record: in_flight(1, 4, false, auto),
            outcome: AttemptOutcome::fault(FaultKind::Unavailable, "503"),
            next_hop: None,
            decision: retry_in(6),
            status: S::PendingRetry,
            due_in_hours: Some(6),
            failure: None,
            replay_pending: false,
            cascade_to: None,
            events: &[
                EventType::AttemptFailed,
                EventType::AuthorizationAttemptFailed,
            ],
            observed: &[false],
            asked: 1,
        },
        Row {
            name: "an unknown outcome stays processing and is reconciled with the same key",
            record: in_flight(1, 0, false, auto),
            outcome: AttemptOutcome::Unknown {
                message: "timeout".into(),
            },
            next_hop: Some("backup"),
            decision: retry_in(1),
            status: S::Processing,
            due_in_hours: Some(1),
            failure: None,
            replay_pending: true,
            cascade_to: None,
            events: &[],
            observed: &[],
            asked: 0,
        },
        Row {
            name: "a fault after an unknown outcome never cascades nor becomes a decline",
            record: in_flight(1, 5, true, auto),
            outcome: AttemptOutcome::fault(FaultKind::Unavailable, "503"),
            next_hop: Some("backup"),
            decision: retry_in(1),
            status: S::Processing,
            due_in_hours: Some(2),
            failure: None,
            replay_pending: true,
            cascade_to: None,
            events: &[],
            observed: &[],
            asked: 0,
        },
        Row {
            name: "an unknown outcome out of replays fails for reconciliation",
            record: in_flight(1, 10, true, auto),
            outcome: AttemptOutcome::Unknown {
                message: "timeout".into(),
            },
            next_hop: None,
            decision: retry_in(1),
            status: S::Failed,
            due_in_hours: None,
            failure: Some(FailureReason::RetriesExhausted),
            replay_pending: false,
            cascade_to: None,
            events: &[EventType::Failed],
            observed: &[],
            asked: 0,
        },
        Row {
            name: "a refusal out of replays is rejected by the partner",
            record: in_flight(1, 10, false, auto),
            outcome: AttemptOutcome::fault(FaultKind::Refused, "401"),
            next_hop: None,
            decision: retry_in(1),
            status: S::Failed,
            due_in_hours: None,
            failure: Some(FailureReason::RejectedByPartner),
            replay_pending: false,
            cascade_to: None,
            events: &[EventType::Failed],
            observed: &[],
            asked: 0,
        },
        Row {
            name: "a 429 is never out of replays by count",
            record: in_flight(1, 10, false, auto),
            outcome: AttemptOutcome::fault(FaultKind::RateLimited, "429"),
            next_hop: None,
            decision: retry_in(1),
            status: S::PendingRetry,
            due_in_hours: Some(2),
            failure: None,
            replay_pending: true,
            cascade_to: None,
            events: &[
                EventType::AttemptFailed,
                EventType::AuthorizationAttemptFailed,
            ],
            observed: &[],
            asked: 0,
        },
    ];
    let config = EngineConfig {
        replay_backoff: [1, 1, 1, 2]
            .map(|h| Duration::from_secs(h * 3_600))
            .to_vec(),
        ..EngineConfig::default()
    };
    let declines = DeclineTable::standard();
    let ids = SeededIds::new(1, false);
    for row in rows {
        let facts = Facts {
            now: at(0),
            next_hop: row.next_hop.map(str::to_owned),
            config: &config,
            key_window: None,
            declines: &declines,
            ids: &ids,
        };
        let mut policy = Fixed {
            decision: row.decision.clone(),
            observed: Vec::new(),
            asked: 0,
        };
        let needs = super::needs_decision(&row.record, &row.outcome, &facts);
        let filed = step(Box::new(row.record), row.outcome, &mut policy, &facts);
        let record = &filed.record;
        let name = row.name;
        assert_eq!(
            needs,
            row.asked == 1,
            "{name}: history read only for a decision"
        );
        assert_eq!(record.payment.status, row.status, "{name}: status");
        assert_eq!(record.due_at, row.due_in_hours.map(at), "{name}: due_at");
        assert_eq!(
            record.payment.failure_reason, row.failure,
            "{name}: failure"
        );
        assert_eq!(record.replay_pending, row.replay_pending, "{name}: replay");
        assert_eq!(
            record.cascade_to.as_deref(),
            row.cascade_to,
            "{name}: cascade"
        );
        assert_eq!(filed.events, row.events, "{name}: events");
        assert_eq!(policy.observed, row.observed, "{name}: observed");
        assert_eq!(policy.asked, row.asked, "{name}: policy asked");
        assert!(record.lease.is_none(), "{name}: lease released");
        let last = record.attempts.last().unwrap();
        let settled = !row.replay_pending;
        assert_eq!(last.outcome.is_some(), settled, "{name}: attempt settled");
        assert!(
            filed
                .effects
                .iter()
                .any(|e| matches!(e, Effect::Answered { .. })),
            "{name}: the answer is counted"
        );
        if row.status == S::Succeeded {
            assert!(record.payment.payment_record.is_some(), "{name}: record id");
        }
    }
}

#[test]
fn an_unknown_outcome_is_replayed_only_while_the_processor_keeps_the_key() {
    let config = EngineConfig {
        replay_backoff: vec![Duration::from_secs(2 * 3_600)],
        ..EngineConfig::default()
    };
    let declines = DeclineTable::standard();
    let ids = SeededIds::new(1, false);
    let file = |now: Timestamp| {
        let facts = Facts {
            now,
            next_hop: None,
            config: &config,
            key_window: Some(Duration::from_secs(23 * 3_600)),
            declines: &declines,
            ids: &ids,
        };
        let mut policy = Fixed {
            decision: RetryDecision::Stop(FailureReason::RetriesExhausted),
            observed: Vec::new(),
            asked: 0,
        };
        // Attempt 1 was first sent at hour 0, and has had no answer since.
        let record = in_flight(1, 1, true, CaptureMethod::Automatic);
        let unknown = AttemptOutcome::Unknown {
            message: "no answer".into(),
        };
        step(Box::new(record), unknown, &mut policy, &facts).record
    };
    // Well inside the key's 23 hours: the usual wait.
    let early = file(at(10));
    assert_eq!(early.payment.status, PaymentStatus::Processing);
    assert!(early.replay_pending);
    assert_eq!(early.due_at, Some(at(12)));
    // Less than a wait left: the last replay goes a minute before the key lapses.
    let late = file(at(22));
    assert!(late.replay_pending);
    assert_eq!(
        late.due_at,
        Some(Timestamp::from_millis(at(23).as_millis() - 60_000))
    );
    // The key has lapsed: no replay with it again; the payment ends.
    let lapsed = file(Timestamp::from_millis(at(23).as_millis() - 30_000));
    assert_eq!(lapsed.payment.status, PaymentStatus::Failed);
    assert_eq!(
        lapsed.payment.failure_reason,
        Some(FailureReason::RetriesExhausted)
    );
    assert!(!lapsed.replay_pending);
}
