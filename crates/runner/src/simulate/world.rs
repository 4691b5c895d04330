//! The simulated world without the engine: the oracle (an omniscient single retry)
//! and a fast evaluation of fixed schedules, to pick the best one as the baseline.
//!
//! Both replay every charge of the population in time order against the same
//! issuers the engine runs meet (`Population::answer`), with the money each approved
//! charge takes out of the account, so charges on one payment method interact as
//! they do in the engine runs.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use offsession_core::{DeclineCategory, PaymentMethodType, Timestamp};
use offsession_mock::issuer::Population;
use offsession_retry::DeclineTable;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// How retries are chosen in a world run.
#[derive(Debug, Clone)]
pub(super) enum Plan {
    /// One retry at the first whole hour after the decline (at least `min_wait`
    /// later) at which the issuer approves, within the window; none when no such
    /// hour exists.
    Oracle,
    /// Retries at these offsets from the first attempt, within the window and the
    /// attempt budget.
    Schedule(Vec<i64>),
}

/// What a world run recovered.
#[derive(Debug, Clone, Default)]
pub(super) struct WorldResult {
    pub(super) payments: u64,
    pub(super) first_attempt_failures: u64,
    pub(super) recovered: u64,
    pub(super) attempts: u64,
    pub(super) hours_to_recovery: Vec<f64>,
}

/// One charge, flattened.
struct Charge {
    customer: usize,
    amount: i64,
    bill_at: i64,
}

/// Runs `plan` over the population. `window` and `max_attempts` bound every charge
/// (attempts include the first); `min_wait` is the least time from a decline to
/// its retry.
pub(super) fn run(
    population: &Population,
    table: &DeclineTable,
    plan: &Plan,
    window_ms: i64,
    max_attempts: u32,
    debit_max_presentments: u32,
    min_wait_ms: i64,
) -> WorldResult {
    let customers = population.customers();
    let mut charges = Vec::new();
    for (i, c) in customers.iter().enumerate() {
        for charge in &c.charges {
            charges.push(Charge {
                customer: i,
                amount: charge.amount,
                bill_at: charge.bill_at.as_millis(),
            });
        }
    }
    let end =
        population.scenario().start().as_millis() + i64::from(population.scenario().days) * DAY_MS;
    let mut charged = vec![0.0f64; customers.len()];
    // (time, charge, attempt number, first attempt time)
    let mut queue: BinaryHeap<Reverse<(i64, usize, u32, i64)>> = charges
        .iter()
        .enumerate()
        .map(|(i, c)| Reverse((c.bill_at, i, 1, c.bill_at)))
        .collect();
    let mut result = WorldResult {
        payments: charges.len() as u64,
        ..WorldResult::default()
    };
    let mut first_failure = vec![0i64; charges.len()];
    while let Some(Reverse((at, index, number, first_at))) = queue.pop() {
        if at > end {
            continue;
        }
        let charge = &charges[index];
        let customer = &customers[charge.customer];
        let answer = population.answer(
            customer,
            charge.amount,
            Timestamp::from_millis(at),
            charged[charge.customer],
        );
        let debit = customer.method_type != PaymentMethodType::Card;
        result.attempts += 1;
        let Some(codes) = answer else {
            charged[charge.customer] += charge.amount as f64;
            if number > 1 {
                result.recovered += 1;
                result
                    .hours_to_recovery
                    .push((at - first_failure[index]) as f64 / HOUR_MS as f64);
            }
            continue;
        };
        if number == 1 {
            result.first_attempt_failures += 1;
            first_failure[index] = at;
        } else if matches!(plan, Plan::Oracle) {
            // The oracle's retry is one attempt: a failed probe (another charge took
            // the money first) is not counted.
            result.attempts -= 1;
        }
        let brand = (!debit).then_some(&customer.card.brand);
        let category = table.classify(&codes, brand);
        if !matches!(
            category,
            DeclineCategory::SoftFunds
                | DeclineCategory::SoftIssuer
                | DeclineCategory::SoftTransient
        ) {
            continue;
        }
        let limit = if debit {
            max_attempts.min(debit_max_presentments)
        } else {
            max_attempts
        };
        if number >= limit {
            continue;
        }
        let rules = table.network_rules();
        let advice = rules
            .advice_wait(brand, &codes)
            .map_or(0, |w| w.as_millis() as i64);
        let earliest = at + min_wait_ms.max(advice);
        let window_end = first_at + window_ms;
        let next = match plan {
            Plan::Schedule(offsets) => {
                let Some(offset) = offsets.get(number as usize - 1) else {
                    continue;
                };
                (first_at + offset).max(earliest)
            }
            Plan::Oracle => {
                // The first whole hour from `earliest` on at which the issuer approves,
                // given what the account holds now.
                let mut t = earliest;
                let mut found = None;
                while t <= window_end.min(end) {
                    if population
                        .answer(
                            customer,
                            charge.amount,
                            Timestamp::from_millis(t),
                            charged[charge.customer],
                        )
                        .is_none()
                    {
                        found = Some(t);
                        break;
                    }
                    t += HOUR_MS;
                }
                let Some(t) = found else {
                    continue;
                };
                t
            }
        };
        if next > window_end {
            continue;
        }
        let number = match plan {
            Plan::Oracle => 2,
            Plan::Schedule(_) => number + 1,
        };
        queue.push(Reverse((next, index, number, first_at)));
    }
    result
}

/// The fixed schedules the baseline is chosen from: every one uses at most
/// `max_attempts` attempts within `window_ms`.
pub(super) fn schedule_candidates(window_ms: i64, max_attempts: u32) -> Vec<(String, Vec<i64>)> {
    let retries = max_attempts.saturating_sub(1) as i64;
    let fit = |offsets: Vec<i64>| -> Vec<i64> {
        offsets
            .into_iter()
            .filter(|o| *o > 0 && *o <= window_ms)
            .take(retries as usize)
            .collect()
    };
    let mut out = Vec::new();
    for days in [1, 2, 3, 4, 5, 7] {
        out.push((
            format!("every_{days}d"),
            fit((1..=retries).map(|i| i * days * DAY_MS).collect()),
        ));
    }
    out.push((
        "odd_days".into(),
        fit((1..=retries).map(|i| (2 * i - 1) * DAY_MS).collect()),
    ));
    out.push((
        "doubling".into(),
        fit((0..retries).map(|i| (1 << i) * DAY_MS).collect()),
    ));
    if retries > 0 {
        out.push((
            "spread".into(),
            fit((1..=retries)
                .map(|i| window_ms * i / retries / HOUR_MS * HOUR_MS)
                .collect()),
        ));
    }
    out.push((
        "every_12h".into(),
        fit((1..=retries).map(|i| i * 12 * HOUR_MS).collect()),
    ));
    out.retain(|(_, offsets)| !offsets.is_empty());
    out
}
