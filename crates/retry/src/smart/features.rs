//! The smart strategy's features: what a decline and a candidate time are hashed
//! into, and the buckets that make them comparable.

use offsession_core::hash::{fnv1a as hash_str, mix64 as mix};
use offsession_core::{Cadence, DeclineCategory, Timestamp};

use super::{DAY_MS, DIMENSIONS, HOUR_MS};
use crate::calendar::{local, utc_offset_hours};

pub(super) fn slot(feature: u64, value: u64) -> usize {
    (mix((feature << 48) ^ value) as usize) & (DIMENSIONS - 1)
}

// Feature families.
pub(super) const BIAS: u64 = 1;
pub(super) const CATEGORY: u64 = 2;
pub(super) const CODE: u64 = 3;
pub(super) const ADVICE: u64 = 4;
pub(super) const BRAND: u64 = 5;
pub(super) const FUNDING: u64 = 6;
pub(super) const COUNTRY: u64 = 7;
pub(super) const AMOUNT: u64 = 8;
pub(super) const CADENCE: u64 = 9;
pub(super) const ATTEMPTS: u64 = 10;
pub(super) const SINCE: u64 = 11;
pub(super) const WAIT: u64 = 12;
pub(super) const HOUR: u64 = 13;
pub(super) const WEEKDAY: u64 = 14;
pub(super) const MONTHDAY: u64 = 15;
/// Weekday and 4-hour block together (paydays land at a time of a given day).
pub(super) const WEEKDAY_HOUR: u64 = 16;
/// Crosses of the category with a time family: `CROSS + family`.
pub(super) const CROSS: u64 = 100;

pub(super) fn category_id(category: DeclineCategory) -> u64 {
    category as u64 + 1
}

pub(super) fn since_bucket(ms: i64) -> u64 {
    match ms / DAY_MS {
        0 => 0,
        1 => 1,
        2..=3 => 2,
        4..=7 => 3,
        8..=14 => 4,
        _ => 5,
    }
}

pub(super) fn wait_bucket(ms: i64) -> u64 {
    match ms / HOUR_MS {
        0..=1 => 0,
        2..=11 => 1,
        12..=23 => 2,
        24..=71 => 3,
        72..=167 => 4,
        _ => 5,
    }
}

pub(super) fn monthday_bucket(day: u32) -> u64 {
    match day {
        1..=2 => 0,
        3..=5 => 1,
        6..=10 => 2,
        11..=14 => 3,
        15..=16 => 4,
        17..=20 => 5,
        21..=27 => 6,
        _ => 7,
    }
}

pub(super) fn amount_band(minor: i64) -> u64 {
    match minor {
        ..=999 => 0,
        1_000..=4_999 => 1,
        5_000..=19_999 => 2,
        20_000..=99_999 => 3,
        _ => 4,
    }
}

/// What is known about a retry when it is decided, except the candidate time.
#[derive(Debug, Clone, Copy)]
pub(super) struct Situation {
    pub(super) category: u64,
    pub(super) slots: [usize; 10],
    pub(super) decided_at: Timestamp,
    pub(super) first_failure_at: Timestamp,
    pub(super) offset_hours: i32,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn situation(
    category: Option<DeclineCategory>,
    code: &str,
    advice: Option<&str>,
    card: Option<&offsession_core::CardDetails>,
    amount: i64,
    cadence: Cadence,
    attempts: u32,
    decided_at: Timestamp,
    first_failure_at: Timestamp,
) -> Situation {
    // First attempts (no decline yet) get category 0: their own bias, and shared
    // plain time features.
    let cat = category.map_or(0, category_id);
    let country = card.and_then(|c| c.country.as_deref());
    Situation {
        category: cat,
        slots: [
            slot(BIAS, 0),
            slot(CATEGORY, cat),
            slot(CODE, hash_str(code)),
            slot(ADVICE, advice.map_or(0, hash_str)),
            slot(BRAND, card.map_or(0, |c| hash_str(c.brand.as_str()))),
            slot(FUNDING, card.map_or(0, |c| hash_str(&c.funding))),
            slot(COUNTRY, country.map_or(0, hash_str)),
            slot(AMOUNT, amount_band(amount)),
            slot(CADENCE, cadence as u64),
            slot(ATTEMPTS, u64::from(attempts.min(8))),
        ],
        decided_at,
        first_failure_at,
        offset_hours: utc_offset_hours(country),
    }
}

pub(super) fn time_slots(s: &Situation, at: Timestamp) -> [usize; 12] {
    let cal = local(at, s.offset_hours);
    let values = [
        (
            SINCE,
            since_bucket(at.as_millis() - s.first_failure_at.as_millis()),
        ),
        (WAIT, wait_bucket(at.as_millis() - s.decided_at.as_millis())),
        (HOUR, u64::from(cal.hour / 4)),
        (WEEKDAY, u64::from(cal.weekday)),
        (MONTHDAY, monthday_bucket(cal.day)),
        (WEEKDAY_HOUR, u64::from(cal.weekday * 6 + cal.hour / 4)),
    ];
    let mut out = [0; 12];
    for (i, (family, value)) in values.into_iter().enumerate() {
        out[i] = slot(family, value);
        out[6 + i] = slot(CROSS + family, (s.category << 8) | value);
    }
    out
}

pub(super) fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}
