//! Table tests of the outcome step: one row per (outcome, route, policy, replays so
//! far) with the status, schedule and bookkeeping the step must leave.

use std::collections::BTreeMap;
use std::time::Duration;

use offsession_core::payment::{Capture, ObjectTag, RetryDetails};
use offsession_core::{
    Amount, AttemptOutcome, AttemptRecord, Cadence, CaptureMethod, CardBrand, CardDetails,
    Currency, DeclineCategory, DeclineCodes, EventType, FailureReason, FaultKind,
    OffSessionPayment, PaymentMethodDetails, PaymentMethodType, PaymentRecord, PaymentStatus,
    RetryDecision, RetryStrategy, SeededIds, Timestamp,
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
    let payment = OffSessionPayment {
        id: "osp_test_1".into(),
        object: ObjectTag::OffSessionPayment,
        amount_requested: Amount::new(1_000, Currency::parse("usd").unwrap()),
        compartment_id: "wksp_test".into(),
        amount_capturable: None,
        cadence: Cadence::Recurring,
        capture: Capture {
            capture_method: capture,
            capture_before: None,
        },
        created: at(-1),
        customer: "cus_1".into(),
        payment_method: "pm_1".into(),
        metadata: BTreeMap::new(),
        on_behalf_of: None,
        transfer_data: None,
        application_fee_amount_requested: None,
        statement_descriptor: None,
        statement_descriptor_suffix: None,
        description: None,
        payment_details: None,
        payment_method_options: None,
        payments_orchestration: None,
        retry_details: RetryDetails {
            attempts: number,
            retry_strategy: RetryStrategy::Scheduled,
            retry_policy: Some("stripe_recommended".into()),
            retry_until: Some(at(24 * 10)),
        },
        status: PaymentStatus::Processing,
        failure_reason: None,
        last_authorization_attempt_error: None,
        latest_payment_attempt_record: None,
        payment_record: None,
        target_date: None,
        test_clock: None,
        livemode: false,
    };
    let method = PaymentMethodDetails {
        payment_method_type: PaymentMethodType::Card,
        card: Some(CardDetails {
            brand: CardBrand::Visa,
            funding: "credit".into(),
            country: Some("US".into()),
            wallet: None,
        }),
    };
    let mut record = PaymentRecord::new(payment, "mock".into(), Some(method), at(0));
    record.attempts = (1..=number)
        .map(|n| AttemptRecord {
            id: format!("ospattempt_{n}"),
            number: n,
            idempotency_key: format!("osp_test_1:attempt:{n}"),
            processor: "mock".into(),
            started_at: at(-(number as i64 - n as i64) * 24),
            finished_at: None,
            replays: if n == number { replays } else { 0 },
            first_fault_at: (replays > 0 && n == number).then(|| at(-1)),
            outcome_unknown: unknown && n == number,
            outcome: None,
            decline_category: None,
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
            due_in_hours: Some(0),
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
            due_in_hours: Some(0),
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
        // Replay waits are measured in hours above; the first wait is due "now + 1h",
        // which the rows write as 0 for "now" only where the step schedules at once.
        let facts = Facts {
            now: at(0),
            next_hop: row.next_hop.map(str::to_owned),
            config: &config,
            declines: &declines,
            ids: &ids,
        };
        let mut policy = Fixed {
            decision: row.decision.clone(),
            observed: Vec::new(),
            asked: 0,
        };
        let before = row.record.clone();
        let filed = step(&row.record, row.outcome.clone(), &mut policy, &facts);
        let record = &filed.record;
        let name = row.name;
        assert_eq!(row.record, before, "{name}: the input is not changed");
        assert_eq!(record.payment.status, row.status, "{name}: status");
        let expected_due = row.due_in_hours.map(|h| match (row.replay_pending, h) {
            // A replay's first wait is 1h (`replay_backoff[0]`).
            (true, 0) => at(1),
            _ => at(h),
        });
        assert_eq!(record.due_at, expected_due, "{name}: due_at");
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
