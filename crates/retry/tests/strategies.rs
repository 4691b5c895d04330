//! The heuristic and smart strategies, by their rules.

use offsession_core::{
    AttemptObservation, CardDetails, DeclineCategory, DeclineCodes, FailureReason,
    PaymentMethodDetails, RetryContext, RetryDecision, RetryPolicy, Timestamp,
};
use offsession_retry::calendar::local;
use offsession_retry::{HeuristicConfig, HeuristicPolicy, SmartConfig, SmartPolicy};
use offsession_store::conformance::sample_record;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
/// Tuesday 2026-01-06 10:00 UTC.
const NOW: i64 = 1_767_693_600_000;

fn card(country: &str) -> PaymentMethodDetails {
    PaymentMethodDetails {
        payment_method_type: "card".into(),
        card: Some(CardDetails {
            brand: "visa".into(),
            funding: "debit".into(),
            country: Some(country.into()),
            wallet: None,
            fingerprint: None,
            fingerprint_by: None,
        }),
        bank_country: None,
    }
}

fn decide(
    policy: &dyn RetryPolicy,
    method: &PaymentMethodDetails,
    category: DeclineCategory,
    attempts: u32,
    id: &str,
) -> RetryDecision {
    let mut record = sample_record(id, NOW, None);
    record.payment.retry_details.attempts = attempts;
    let codes = match category {
        DeclineCategory::SoftFunds => {
            DeclineCodes::new("card_declined", Some("insufficient_funds"))
        }
        DeclineCategory::SoftTransient => DeclineCodes::new("processing_error", None),
        _ => DeclineCodes::new("card_declined", Some("generic_decline")),
    };
    policy.decide(&RetryContext {
        payment: &record.payment,
        method: Some(method),
        attempts: &[],
        card_history: &[],
        decline: &codes,
        category,
        first_attempt_at: Timestamp::from_millis(NOW),
        now: Timestamp::from_millis(NOW),
    })
}

fn at(decision: RetryDecision) -> Timestamp {
    match decision {
        RetryDecision::RetryAt { not_before, .. } => not_before,
        other => panic!("expected a retry, got {other:?}"),
    }
}

#[test]
fn heuristic_retries_transient_declines_within_hours() {
    let policy = HeuristicPolicy::new(&HeuristicConfig::default()).unwrap();
    let t = at(decide(
        &policy,
        &card("US"),
        DeclineCategory::SoftTransient,
        1,
        "osp_1",
    ));
    assert_eq!(t.as_millis() - NOW, HOUR);
}

#[test]
fn heuristic_backs_off_issuer_declines() {
    let policy = HeuristicPolicy::new(&HeuristicConfig::default()).unwrap();
    let first = at(decide(
        &policy,
        &card("US"),
        DeclineCategory::SoftIssuer,
        1,
        "osp_1",
    ));
    let third = at(decide(
        &policy,
        &card("US"),
        DeclineCategory::SoftIssuer,
        3,
        "osp_1",
    ));
    assert_eq!(first.as_millis() - NOW, DAY);
    assert_eq!(third.as_millis() - NOW, 5 * DAY);
}

#[test]
fn heuristic_aims_funds_retries_at_local_paydays() {
    let policy = HeuristicPolicy::new(&HeuristicConfig::default()).unwrap();
    let us = at(decide(
        &policy,
        &card("US"),
        DeclineCategory::SoftFunds,
        1,
        "osp_1",
    ));
    let cal = local(us, -5);
    assert_eq!(
        (cal.weekday, cal.hour),
        (5, 9),
        "Friday 09:00 in New York: {us}"
    );
    let jp = at(decide(
        &policy,
        &card("JP"),
        DeclineCategory::SoftFunds,
        1,
        "osp_1",
    ));
    assert_eq!(local(jp, 9).hour, 9, "09:00 in Tokyo: {jp}");
    // A bank debit's funding day is in its account's country too: an ACH debit at
    // 09:00 New York time, a SEPA debit held in Germany at 09:00 Berlin time (not
    // 09:00 UTC, when neither has a card country).
    let debit = |kind: &str, country: &str| PaymentMethodDetails {
        payment_method_type: kind.into(),
        card: None,
        bank_country: Some(country.into()),
    };
    let ach = at(decide(
        &policy,
        &debit("us_bank_account", "US"),
        DeclineCategory::SoftFunds,
        1,
        "osp_1",
    ));
    assert_eq!((local(ach, -5).hour, ach), (9, us), "{ach}");
    // An ACH payment stored before `bank_country` existed is still in the US.
    let stored_before = PaymentMethodDetails {
        payment_method_type: "us_bank_account".into(),
        card: None,
        bank_country: None,
    };
    assert_eq!(
        at(decide(
            &policy,
            &stored_before,
            DeclineCategory::SoftFunds,
            1,
            "osp_1"
        )),
        us
    );
    let sepa = at(decide(
        &policy,
        &debit("sepa_debit", "DE"),
        DeclineCategory::SoftFunds,
        1,
        "osp_1",
    ));
    assert_eq!(local(sepa, 1).hour, 9, "09:00 in Berlin: {sepa}");
}

#[test]
fn heuristic_gives_bank_debits_three_presentments() {
    let policy = HeuristicPolicy::new(&HeuristicConfig::default()).unwrap();
    let ach = PaymentMethodDetails {
        payment_method_type: "us_bank_account".into(),
        card: None,
        bank_country: None,
    };
    assert!(matches!(
        decide(&policy, &ach, DeclineCategory::SoftFunds, 2, "osp_1"),
        RetryDecision::RetryAt { .. }
    ));
    assert_eq!(
        decide(&policy, &ach, DeclineCategory::SoftFunds, 3, "osp_1"),
        RetryDecision::Stop(FailureReason::RetriesExhausted)
    );
}

#[test]
fn strategies_stop_on_hard_declines() {
    let heuristic = HeuristicPolicy::new(&HeuristicConfig::default()).unwrap();
    let smart = SmartPolicy::new(&SmartConfig::default()).unwrap();
    for policy in [&heuristic as &dyn RetryPolicy, &smart] {
        assert_eq!(
            decide(policy, &card("US"), DeclineCategory::Hard, 1, "osp_1"),
            RetryDecision::Stop(FailureReason::RejectedByPartner)
        );
    }
}

/// The learned model alone, without exploration.
fn no_exploration() -> SmartConfig {
    SmartConfig {
        exploration: 0.0,
        select_by_evidence: false,
        ..SmartConfig::default()
    }
}

#[test]
fn smart_prior_retries_transient_faults_soon_and_funds_near_paydays() {
    let smart = SmartPolicy::new(&no_exploration()).unwrap();
    let transient = at(decide(
        &smart,
        &card("US"),
        DeclineCategory::SoftTransient,
        1,
        "osp_1",
    ));
    assert!(transient.as_millis() - NOW <= 12 * HOUR, "{transient}");
    // With one attempt left, the model waits for its single best time: a payday of
    // its prior.
    let funds = at(decide(
        &smart,
        &card("US"),
        DeclineCategory::SoftFunds,
        7,
        "osp_1",
    ));
    let cal = local(funds, -5);
    assert!(
        matches!(cal.day, 1 | 2 | 15 | 16) || cal.weekday == 5,
        "funds retry on a payday: {funds}"
    );
    // With seven left, the plan spreads them and starts no later.
    let early = at(decide(
        &smart,
        &card("US"),
        DeclineCategory::SoftFunds,
        1,
        "osp_1",
    ));
    assert!(early <= funds, "{early} vs {funds}");
}

#[test]
fn smart_learns_when_retries_succeed() {
    let smart = SmartPolicy::new(&no_exploration()).unwrap();
    let method = card("US");
    let record = sample_record("osp_learn", NOW, None);
    let codes = DeclineCodes::new("card_declined", Some("generic_decline"));
    // In this world issuer declines clear on Sundays and never otherwise.
    for week in 0..40 {
        for day in 0..7 {
            let retry_at = Timestamp::from_millis(NOW + (week * 7 + day) * DAY);
            let approved = local(retry_at, -5).weekday == 0;
            let mut payment = record.payment.clone();
            payment.retry_details.attempts = 2;
            smart.observe(&AttemptObservation {
                payment: &payment,
                method: Some(&method),
                attempt_number: 2,
                at: retry_at,
                first_failure_at: Some(Timestamp::from_millis(retry_at.as_millis() - 2 * DAY)),
                previous_attempt_at: Some(Timestamp::from_millis(retry_at.as_millis() - 2 * DAY)),
                previous_decline: Some((&codes, DeclineCategory::SoftIssuer)),
                approved,
            });
        }
    }
    assert_eq!(smart.observations(), 280);
    let t = at(decide(
        &smart,
        &method,
        DeclineCategory::SoftIssuer,
        1,
        "osp_1",
    ));
    assert_eq!(local(t, -5).weekday, 0, "learned to retry on Sundays: {t}");
}

#[test]
fn smart_stops_when_no_time_is_likely_to_work() {
    let smart = SmartPolicy::new(&SmartConfig {
        min_probability: 0.95,
        ..no_exploration()
    })
    .unwrap();
    assert_eq!(
        decide(&smart, &card("US"), DeclineCategory::SoftIssuer, 1, "osp_1"),
        RetryDecision::Stop(FailureReason::RetriesExhausted)
    );
}

#[test]
fn smart_decisions_are_deterministic_including_exploration() {
    let a = SmartPolicy::new(&SmartConfig {
        exploration: 0.5,
        ..SmartConfig::default()
    })
    .unwrap();
    let b = SmartPolicy::new(&SmartConfig {
        exploration: 0.5,
        ..SmartConfig::default()
    })
    .unwrap();
    for i in 0..50 {
        let id = format!("osp_{i}");
        assert_eq!(
            decide(&a, &card("US"), DeclineCategory::SoftFunds, 1, &id),
            decide(&b, &card("US"), DeclineCategory::SoftFunds, 1, &id)
        );
    }
}

#[test]
fn smart_state_survives_a_save_and_load() {
    let trained = SmartPolicy::new(&no_exploration()).unwrap();
    let method = card("US");
    let record = sample_record("osp_s", NOW, None);
    let codes = DeclineCodes::new("card_declined", Some("generic_decline"));
    for i in 0..100 {
        trained.observe(&AttemptObservation {
            payment: &record.payment,
            method: Some(&method),
            attempt_number: 2,
            at: Timestamp::from_millis(NOW + i * HOUR),
            first_failure_at: Some(Timestamp::from_millis(NOW)),
            previous_attempt_at: Some(Timestamp::from_millis(NOW)),
            previous_decline: Some((&codes, DeclineCategory::SoftIssuer)),
            approved: i % 3 == 0,
        });
    }
    // The state survives a round trip through its serialized form (the runner
    // writes it to `smart.state_path`), and a state of the wrong shape is refused.
    let saved = serde_json::to_string(&trained.state()).unwrap();
    let restored = SmartPolicy::new(&no_exploration()).unwrap();
    restored
        .restore(serde_json::from_str(&saved).unwrap())
        .unwrap();
    assert_eq!(restored.state(), trained.state());
    assert_eq!(restored.observations(), 100);
    let mut truncated = trained.state();
    truncated.weights.truncate(10);
    assert!(restored.restore(truncated).is_err());
}

#[test]
fn two_instances_reconciling_through_the_store_learn_from_both() {
    let method = card("US");
    let record = sample_record("osp_r", NOW, None);
    let codes = DeclineCodes::new("card_declined", Some("generic_decline"));
    let learn = |policy: &SmartPolicy, from: i64, n: i64| {
        for i in from..from + n {
            policy.observe(&AttemptObservation {
                payment: &record.payment,
                method: Some(&method),
                attempt_number: 2,
                at: Timestamp::from_millis(NOW + i * HOUR),
                first_failure_at: Some(Timestamp::from_millis(NOW)),
                previous_attempt_at: Some(Timestamp::from_millis(NOW)),
                previous_decline: Some((&codes, DeclineCategory::SoftIssuer)),
                approved: i % 3 == 0,
            });
        }
    };
    let a = SmartPolicy::new(&no_exploration()).unwrap();
    let b = SmartPolicy::new(&no_exploration()).unwrap();
    let prior = a.state();
    learn(&a, 0, 60);
    learn(&b, 60, 40);
    // A folds its learning into the empty store, then B into what A saved.
    let stored = a.reconcile(&prior, prior.clone()).unwrap();
    assert_eq!(stored.observations, 60);
    let stored = b.reconcile(&prior, stored).unwrap();
    assert_eq!(stored.observations, 100, "both instances' retries count");
    assert_eq!(b.observations(), 100);
    // B's model moved by A's learning too: it is not what B learned alone.
    let alone = SmartPolicy::new(&no_exploration()).unwrap();
    learn(&alone, 60, 40);
    assert_ne!(b.state().weights, alone.state().weights);
    // A reconciling again with nothing new adopts the store's state exactly.
    let base = a.state();
    let again = a.reconcile(&base, stored.clone()).unwrap();
    assert_eq!(again, stored);
    // A state of the wrong shape is refused.
    let mut truncated = stored;
    truncated.weights.truncate(3);
    assert!(a.reconcile(&base, truncated).is_err());
}

#[test]
fn smart_learns_time_of_week_from_first_attempts_when_asked() {
    let config = SmartConfig {
        learn_from_first_attempts: true,
        ..no_exploration()
    };
    let fresh = SmartPolicy::new(&config).unwrap();
    let learner = SmartPolicy::new(&config).unwrap();
    let method = card("US");
    let record = sample_record("osp_first", NOW, None);
    // First attempts succeed only on Mondays.
    for day in 0..280 {
        let at = Timestamp::from_millis(NOW + day * DAY);
        let mut payment = record.payment.clone();
        payment.retry_details.attempts = 1;
        learner.observe(&AttemptObservation {
            payment: &payment,
            method: Some(&method),
            attempt_number: 1,
            at,
            first_failure_at: None,
            previous_attempt_at: None,
            previous_decline: None,
            approved: local(at, -5).weekday == 1,
        });
    }
    assert_eq!(learner.observations(), 280);
    let monday = Timestamp::from_millis(NOW + 6 * DAY); // Monday 2026-01-12
    let sunday = Timestamp::from_millis(NOW + 5 * DAY);
    assert_eq!(local(monday, -5).weekday, 1);
    let record = sample_record("osp_retry", NOW, None);
    let codes = DeclineCodes::new("card_declined", Some("insufficient_funds"));
    let context = RetryContext {
        payment: &record.payment,
        method: Some(&method),
        attempts: &[],
        card_history: &[],
        decline: &codes,
        category: DeclineCategory::SoftFunds,
        first_attempt_at: Timestamp::from_millis(NOW),
        now: Timestamp::from_millis(NOW),
    };
    let gain = |p: &SmartPolicy| p.predict(&context, monday) - p.predict(&context, sunday);
    assert!(
        gain(&learner) > gain(&fresh) + 0.01,
        "Mondays look better to a retry after learning"
    );
}

#[test]
fn smart_follows_the_plan_with_more_evidence() {
    let config = SmartConfig {
        exploration: 0.0,
        ..SmartConfig::default()
    };
    let rules = HeuristicPolicy::new(&HeuristicConfig {
        max_attempts: config.max_attempts,
        window: config.window,
        ..HeuristicConfig::default()
    })
    .unwrap();
    let follows_rules = |evidence: [u64; 4]| {
        let smart = SmartPolicy::new(&config).unwrap();
        let mut state = smart.state();
        state.evidence = evidence;
        smart.restore(state).unwrap();
        (0..200)
            .filter(|i| {
                let id = format!("osp_{i}");
                decide(&smart, &card("US"), DeclineCategory::SoftFunds, 1, &id)
                    == decide(&rules, &card("US"), DeclineCategory::SoftFunds, 1, &id)
            })
            .count()
    };
    // The rules' share recovered 60 % of its failed payments, the model's 10 %:
    // everyone outside the model's share follows the rules.
    let rules_lead = follows_rules([1_000, 100, 1_000, 600]);
    let model_leads = follows_rules([1_000, 600, 1_000, 100]);
    assert!(rules_lead >= 170, "{rules_lead} of 200");
    assert!(model_leads < 60, "{model_leads} of 200");
}

/// A bank debit's next presentment after a funds return waits `debit_funds_waits`
/// (by retry number, the last repeating), then the next funding time; a card's
/// funds retry keeps `funds_min_wait`.
#[test]
fn heuristic_spaces_a_debits_presentments_by_its_own_waits() {
    let policy = HeuristicPolicy::new(&HeuristicConfig {
        debit_funds_waits: vec![
            std::time::Duration::from_secs(4 * 86_400),
            std::time::Duration::from_secs(10 * 86_400),
        ],
        ..HeuristicConfig::default()
    })
    .unwrap();
    let ach = PaymentMethodDetails {
        payment_method_type: "us_bank_account".into(),
        card: None,
        bank_country: Some("US".into()),
    };
    let first = at(decide(
        &policy,
        &ach,
        DeclineCategory::SoftFunds,
        1,
        "osp_1",
    ));
    let second = at(decide(
        &policy,
        &ach,
        DeclineCategory::SoftFunds,
        2,
        "osp_1",
    ));
    let card = at(decide(
        &policy,
        &card("US"),
        DeclineCategory::SoftFunds,
        1,
        "osp_1",
    ));
    assert!(first.as_millis() - NOW >= 4 * DAY, "{first}");
    assert!(first.as_millis() - NOW < 10 * DAY, "{first}");
    assert!(second.as_millis() - NOW >= 10 * DAY, "{second}");
    assert!(card.as_millis() - NOW < 4 * DAY, "{card}");
    assert!(first > card, "{first} after {card}");
    // Unset (the default), a debit waits `funds_min_wait`, as a card does, whatever
    // it is set to.
    let default = HeuristicPolicy::new(&HeuristicConfig {
        funds_min_wait: std::time::Duration::from_secs(4 * 86_400),
        ..HeuristicConfig::default()
    })
    .unwrap();
    let debit = at(decide(
        &default,
        &ach,
        DeclineCategory::SoftFunds,
        1,
        "osp_1",
    ));
    let card = at(decide(
        &default,
        &card_of("US"),
        DeclineCategory::SoftFunds,
        1,
        "osp_1",
    ));
    assert_eq!(debit, card);
    assert!(debit.as_millis() - NOW >= 4 * DAY, "{debit}");
}

fn card_of(country: &str) -> PaymentMethodDetails {
    card(country)
}
