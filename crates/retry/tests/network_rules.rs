//! The network-rules guard, pinned by property tests: whatever policy it wraps —
//! scheduled, heuristic, smart, or one that asks to retry at any time at all — and
//! whatever the decline and the card's history, no decision breaks a rule.

use std::sync::Arc;
use std::time::Duration;

use offsession_core::{
    CardAttempt, CardDetails, DeclineCategory, DeclineCodes, PaymentMethodDetails, RetryContext,
    RetryDecision, RetryPolicy, Timestamp,
};
use offsession_retry::{
    DeclineTable, HeuristicConfig, HeuristicPolicy, NetworkGuard, NetworkRules, ScheduledPolicy,
    ScheduledPolicyConfig, SmartConfig, SmartPolicy,
};
use offsession_store::conformance::sample_record;
use proptest::prelude::*;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
const NOW: i64 = 1_767_225_600_000 + 17 * DAY;

/// Asks to retry at a fixed delay, whatever happened: the worst policy imaginable.
#[derive(Debug)]
struct Reckless {
    delay_ms: i64,
    latest: Option<i64>,
}

impl RetryPolicy for Reckless {
    fn name(&self) -> &str {
        "reckless"
    }
    fn decide(&self, context: &RetryContext<'_>) -> RetryDecision {
        RetryDecision::RetryAt {
            not_before: Timestamp::from_millis(context.now.as_millis() + self.delay_ms),
            latest: self.latest.map(Timestamp::from_millis),
        }
    }
}

fn rules() -> NetworkRules {
    DeclineTable::standard().network_rules().clone()
}

fn policy(kind: u8, delay_ms: i64, latest: Option<i64>) -> Arc<dyn RetryPolicy> {
    match kind {
        0 => Arc::new(ScheduledPolicy::stripe_recommended()),
        1 => Arc::new(
            ScheduledPolicy::new(
                "tight",
                &ScheduledPolicyConfig {
                    offsets: (1..=20)
                        .map(|m| std::time::Duration::from_secs(m * 600))
                        .collect(),
                    max_attempts: None,
                    window: std::time::Duration::from_secs(86_400),
                },
            )
            .unwrap(),
        ),
        2 => Arc::new(HeuristicPolicy::new(&HeuristicConfig::default()).unwrap()),
        3 => Arc::new(SmartPolicy::new(&SmartConfig::default()).unwrap()),
        _ => Arc::new(Reckless { delay_ms, latest }),
    }
}

fn count_in(
    history: &[CardAttempt],
    t: i64,
    window: i64,
    keep: impl Fn(&CardAttempt) -> bool,
) -> usize {
    history
        .iter()
        .filter(|a| keep(a) && a.at.as_millis() > t - window && a.at.as_millis() <= t)
        .count()
}

prop_compose! {
    fn history_entry()(age in 0..40 * DAY, number in 1u32..6, declined in any::<bool>(), amount_pick in 0..2usize)
        -> CardAttempt {
        CardAttempt {
            payment_id: format!("osp_{age}"),
            attempt_number: number,
            at: Timestamp::from_millis(NOW - age),
            declined,
            answered: true,
            amount: [1000, 2000][amount_pick],
            advice_code: None,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn no_policy_ever_schedules_an_attempt_that_breaks_a_network_rule(
        kind in 0u8..5,
        delay_ms in 0..3 * DAY,
        latest_after in proptest::option::of(0..40 * DAY),
        brand_pick in 0..3usize,
        category_pick in 0..DeclineCategory::ALL.len(),
        code_pick in 0..8usize,
        mac_pick in 0..12usize,
        amount_pick in 0..2usize,
        attempts in 1u32..10,
        first_attempt_age in 0..20 * DAY,
        history in proptest::collection::vec(history_entry(), 0..80),
    ) {
        let brand = ["visa", "mastercard", "amex"][brand_pick];
        let category = DeclineCategory::ALL[category_pick];
        let network_code = [Some("51"), Some("05"), Some("04"), Some("41"), Some("43"), Some("R1"), Some("96"), None][code_pick];
        let mac = [Some("01"), Some("02"), Some("03"), Some("21"), Some("24"), Some("25"), Some("26"),
                   Some("27"), Some("28"), Some("29"), Some("30"), None][mac_pick];
        let amount = [1000, 2000][amount_pick];
        let mut codes = DeclineCodes::new("card_declined", Some("insufficient_funds"));
        codes.network_decline_code = network_code.map(str::to_owned);
        codes.network_advice_code = mac.map(str::to_owned);

        let mut record = sample_record("osp_subject", NOW - first_attempt_age, None);
        record.payment.amount_requested.value = amount;
        record.payment.retry_details.attempts = attempts;
        let method = PaymentMethodDetails {
            payment_method_type: "card".into(),
            card: Some(CardDetails { brand: brand.into(), funding: "credit".into(), country: Some("US".into()), wallet: None, fingerprint: None, fingerprint_by: None }),
            bank_country: None,
        };
        let now = Timestamp::from_millis(NOW);
        let context = RetryContext {
            payment: &record.payment,
            method: Some(&method),
            attempts: &[],
            card_history: &history,
            decline: &codes,
            category,
            first_attempt_at: Timestamp::from_millis(NOW - first_attempt_age),
            now,
        };
        let latest = latest_after.map(|after| NOW + after);
        let guard = NetworkGuard::new(policy(kind, delay_ms, latest), rules());
        let decision = guard.decide(&context);

        if let RetryDecision::RetryAt { not_before, latest: window } = decision {
            let t = not_before.as_millis();
            let rules = rules();
            prop_assert!(category.is_soft(), "retry after a {category} decline");
            prop_assert!(t >= NOW, "retry in the past");
            if let Some(window) = window {
                prop_assert!(not_before <= window, "retry after the window");
            }
            if brand == "visa" {
                prop_assert!(!network_code.is_some_and(|c| rules.visa_never_retry.contains(c)),
                    "retry after Visa category 1 code {network_code:?}");
                let reattempts = count_in(&history, t, 30 * DAY, |a| a.attempt_number >= 2);
                prop_assert!(reattempts < rules.visa_max_reattempts_30d as usize,
                    "{reattempts} Visa reattempts already in the 30 days before the retry");
            }
            if brand == "mastercard" {
                prop_assert!(!mac.is_some_and(|m| rules.mastercard_never_retry.contains(m)),
                    "retry after Mastercard advice code {mac:?}");
                if let Some(wait) = mac.and_then(|m| rules.mastercard_retry_after.get(m)) {
                    prop_assert!(t >= NOW + wait.as_millis() as i64, "retry before MAC {mac:?} allows");
                }
                let day = count_in(&history, t, DAY, |a| a.declined);
                prop_assert!(day < rules.mastercard_max_declines_24h as usize, "{day} declines in 24 h");
                let month = count_in(&history, t, 30 * DAY, |a| a.declined && a.amount == amount);
                prop_assert!(month < rules.mastercard_max_declines_30d_same_amount as usize,
                    "{month} declines of this amount in 30 days");
            }
        }
    }
}

fn context_for<'a>(
    record: &'a offsession_core::PaymentRecord,
    method: &'a PaymentMethodDetails,
    codes: &'a DeclineCodes,
    history: &'a [CardAttempt],
) -> RetryContext<'a> {
    RetryContext {
        payment: &record.payment,
        method: Some(method),
        attempts: &[],
        card_history: history,
        decline: codes,
        category: DeclineCategory::SoftFunds,
        first_attempt_at: Timestamp::from_millis(NOW),
        now: Timestamp::from_millis(NOW),
    }
}

fn card(brand: &str) -> PaymentMethodDetails {
    PaymentMethodDetails {
        payment_method_type: "card".into(),
        card: Some(CardDetails {
            brand: brand.into(),
            funding: "credit".into(),
            country: Some("US".into()),
            wallet: None,
            fingerprint: None,
            fingerprint_by: None,
        }),
        bank_country: None,
    }
}

#[test]
fn mastercard_advice_code_25_waits_a_day() {
    let record = sample_record("osp_1", NOW, None);
    let mut codes = DeclineCodes::new("card_declined", Some("insufficient_funds"));
    codes.network_advice_code = Some("25".into());
    let method = card("mastercard");
    let guard = NetworkGuard::new(
        Arc::new(Reckless {
            delay_ms: HOUR,
            latest: None,
        }),
        rules(),
    );
    let decision = guard.decide(&context_for(&record, &method, &codes, &[]));
    assert_eq!(
        decision,
        RetryDecision::RetryAt {
            not_before: Timestamp::from_millis(NOW + DAY),
            latest: None
        }
    );
    assert_eq!(
        guard
            .counters()
            .deferred
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn visa_reattempts_past_the_cap_wait_for_the_oldest_to_age_out() {
    let record = sample_record("osp_1", NOW, None);
    let codes = DeclineCodes::new("card_declined", Some("insufficient_funds"));
    let method = card("visa");
    // 15 reattempts on this card in the last 30 days, the oldest 29 days ago.
    let history: Vec<_> = (0..15)
        .map(|i| CardAttempt {
            payment_id: format!("osp_{i}"),
            attempt_number: 2,
            at: Timestamp::from_millis(NOW - 29 * DAY + i * HOUR),
            declined: true,
            answered: true,
            amount: 2000,
            advice_code: None,
        })
        .collect();
    let guard = NetworkGuard::new(
        Arc::new(Reckless {
            delay_ms: HOUR,
            latest: None,
        }),
        rules(),
    );
    let decision = guard.decide(&context_for(&record, &method, &codes, &history));
    assert_eq!(
        decision,
        RetryDecision::RetryAt {
            not_before: Timestamp::from_millis(NOW + DAY),
            latest: None
        }
    );
    // With a window that closes sooner, the payment fails instead.
    let guard = NetworkGuard::new(
        Arc::new(Reckless {
            delay_ms: HOUR,
            latest: Some(NOW + 2 * HOUR),
        }),
        rules(),
    );
    assert_eq!(
        guard.decide(&context_for(&record, &method, &codes, &history)),
        RetryDecision::Stop(offsession_core::FailureReason::ExceededRetryWindow)
    );
}

#[test]
fn never_retry_codes_stop_even_a_reckless_policy() {
    let record = sample_record("osp_1", NOW, None);
    let reckless = || {
        Arc::new(Reckless {
            delay_ms: HOUR,
            latest: None,
        })
    };
    let mut visa_cat1 = DeclineCodes::new("card_declined", Some("do_not_honor"));
    visa_cat1.network_decline_code = Some("R1".into());
    let guard = NetworkGuard::new(reckless(), rules());
    assert_eq!(
        guard.decide(&context_for(&record, &card("visa"), &visa_cat1, &[])),
        RetryDecision::Stop(offsession_core::FailureReason::RejectedByPartner)
    );
    let mut mac21 = DeclineCodes::new("card_declined", Some("do_not_honor"));
    mac21.network_advice_code = Some("21".into());
    assert_eq!(
        guard.decide(&context_for(&record, &card("mastercard"), &mac21, &[])),
        RetryDecision::Stop(offsession_core::FailureReason::RejectedByPartner)
    );
    assert_eq!(
        guard
            .counters()
            .blocked
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[test]
fn the_caps_are_configurable() {
    let text = offsession_retry::declines::DEFAULT_DECLINE_TABLE
        .replace("max_reattempts_30d = 15", "max_reattempts_30d = 20");
    let table = DeclineTable::from_toml(&text).unwrap();
    assert_eq!(table.network_rules().visa_max_reattempts_30d, 20);
    let _ = Duration::ZERO;
}

#[test]
fn attempts_in_flight_count_against_mastercard_decline_caps() {
    // Nine declines and one attempt whose answer is not known yet, in the last hours:
    // the tenth slot is taken by the attempt in flight, so another must wait until the
    // oldest ages out of the 24-hour window.
    let brand = offsession_core::CardBrand::Mastercard;
    let mut history: Vec<_> = (0..10)
        .map(|i| CardAttempt {
            payment_id: format!("osp_{i}"),
            attempt_number: 2,
            at: Timestamp::from_millis(NOW - 10 * HOUR + i * HOUR),
            declined: i < 9,
            answered: i < 9,
            amount: 2000,
            advice_code: None,
        })
        .collect();
    let rules = rules();
    let now = Timestamp::from_millis(NOW);
    assert_eq!(
        rules.earliest_allowed(Some(&brand), &history, 2000, now),
        Timestamp::from_millis(NOW - 10 * HOUR + DAY),
        "the attempt in flight fills the cap"
    );
    // Once it is answered and approved, the slot is free again.
    history[9].answered = true;
    assert_eq!(
        rules.earliest_allowed(Some(&brand), &history, 2000, now),
        now
    );
}

#[test]
fn attempts_stamped_ahead_by_a_fast_clock_still_count() {
    // Another instance whose clock runs a few minutes ahead stamped ten declines on
    // this card "in the future": they are real, and fill Mastercard's 24-hour cap.
    let brand = offsession_core::CardBrand::Mastercard;
    let history: Vec<_> = (0..10)
        .map(|i| CardAttempt {
            payment_id: format!("osp_{i}"),
            attempt_number: 2,
            at: Timestamp::from_millis(NOW + 60_000 + i * 1_000),
            declined: true,
            answered: true,
            amount: 2000,
            advice_code: None,
        })
        .collect();
    let now = Timestamp::from_millis(NOW);
    assert_eq!(
        rules().earliest_allowed(Some(&brand), &history, 2000, now),
        Timestamp::from_millis(NOW + 60_000 + DAY),
    );
    // Attempts a year ahead (a test clock's) say nothing of the card today.
    let ahead: Vec<_> = history
        .into_iter()
        .map(|mut a| {
            a.at = Timestamp::from_millis(a.at.as_millis() + 365 * DAY);
            a
        })
        .collect();
    assert_eq!(
        rules().earliest_allowed(Some(&brand), &ahead, 2000, now),
        now
    );
}

#[test]
fn mastercard_advice_21_bars_the_card_for_thirty_days_across_payments() {
    let brand = offsession_core::CardBrand::Mastercard;
    let rules = rules();
    let barred = CardAttempt {
        payment_id: "osp_other".into(),
        attempt_number: 1,
        at: Timestamp::from_millis(NOW - 5 * DAY),
        declined: true,
        answered: true,
        amount: 1000,
        advice_code: Some("21".into()),
    };
    let now = Timestamp::from_millis(NOW);
    let until = Timestamp::from_millis(NOW + 25 * DAY);
    assert_eq!(
        rules.barred_until(Some(&brand), std::slice::from_ref(&barred)),
        Some(until)
    );
    assert_eq!(
        rules.earliest_allowed(Some(&brand), std::slice::from_ref(&barred), 2000, now),
        until,
        "another payment's retry waits for the bar to end"
    );
    // A retry of another payment of the card inside a 14-day window stops.
    let record = sample_record("osp_1", NOW, None);
    let codes = DeclineCodes::new("card_declined", Some("insufficient_funds"));
    let guard = NetworkGuard::new(
        Arc::new(Reckless {
            delay_ms: HOUR,
            latest: Some(NOW + 14 * DAY),
        }),
        rules.clone(),
    );
    let history = [barred.clone()];
    assert_eq!(
        guard.decide(&context_for(&record, &card("mastercard"), &codes, &history)),
        RetryDecision::Stop(offsession_core::FailureReason::ExceededRetryWindow)
    );
    // Other advice codes and other brands do not bar.
    let plain = CardAttempt {
        advice_code: Some("02".into()),
        ..barred.clone()
    };
    assert_eq!(rules.barred_until(Some(&brand), &[plain]), None);
    assert_eq!(
        rules.barred_until(Some(&offsession_core::CardBrand::Visa), &[barred]),
        None
    );
}

#[test]
fn bank_debits_stop_at_the_presentment_limit() {
    let mut record = sample_record("osp_1", NOW, None);
    let debit = PaymentMethodDetails {
        payment_method_type: "us_bank_account".into(),
        card: None,
        bank_country: None,
    };
    let mut codes = DeclineCodes::new("insufficient_funds", Some("insufficient_funds"));
    codes.network_decline_code = Some("R01".into());
    let guard = NetworkGuard::new(
        Arc::new(Reckless {
            delay_ms: DAY,
            latest: None,
        }),
        rules(),
    );
    record.payment.retry_details.attempts = 2;
    assert!(matches!(
        guard.decide(&context_for(&record, &debit, &codes, &[])),
        RetryDecision::RetryAt { .. }
    ));
    record.payment.retry_details.attempts = 3;
    assert_eq!(
        guard.decide(&context_for(&record, &debit, &codes, &[])),
        RetryDecision::Stop(offsession_core::FailureReason::RetriesExhausted),
        "NACHA: a returned debit is presented at most twice more"
    );
}
