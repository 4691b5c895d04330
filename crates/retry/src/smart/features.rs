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

/// The day of the month, 0-based: 31 buckets, so that any payday can be learned.
pub(super) fn monthday_bucket(day: u32) -> u64 {
    u64::from(day.clamp(1, 31) - 1)
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

/// Bucket counts of the time families, in [`time_slots`] order.
const FAMILY_SIZES: [usize; 6] = [6, 6, 6, 7, 31, 42];
const FAMILIES: [u64; 6] = [SINCE, WAIT, HOUR, WEEKDAY, MONTHDAY, WEEKDAY_HOUR];

/// One decision's time weights, looked up once per bucket value rather than hashed
/// per candidate: for each time family and value, the plain weight plus the
/// category cross, and the cross's novelty term.
pub(super) struct TimeTables {
    /// Per family and value, flat: (score, novelty term).
    entries: [(f32, f32); TABLE_LEN],
}

/// Where each family's values start in the flat table.
const FAMILY_START: [usize; 6] = [0, 6, 12, 18, 25, 56];
const TABLE_LEN: usize = 98;

impl TimeTables {
    pub(super) fn new(weights: &[f32], squared_gradients: &[f32], category: u64) -> TimeTables {
        let mut entries = [(0.0, 0.0); TABLE_LEN];
        for f in 0..6 {
            for v in 0..FAMILY_SIZES[f] {
                let cross = slot(CROSS + FAMILIES[f], (category << 8) | v as u64);
                entries[FAMILY_START[f] + v] = (
                    weights[slot(FAMILIES[f], v as u64)] + weights[cross],
                    1.0 / (1.0 + 10.0 * squared_gradients[cross]).sqrt(),
                );
            }
        }
        TimeTables { entries }
    }

    /// The time score and novelty of a candidate with these bucket values.
    #[inline]
    pub(super) fn lookup(&self, values: [usize; 6]) -> (f32, f32) {
        let mut score = 0.0;
        let mut novelty = 0.0;
        for (f, v) in values.into_iter().enumerate() {
            let (s, n) = self.entries[FAMILY_START[f] + v.min(FAMILY_SIZES[f] - 1)];
            score += s;
            novelty += n;
        }
        (score, novelty / 6.0)
    }
}

/// Walks candidate times `step_ms` apart from `first`, giving each one's bucket
/// values without a calendar conversion per candidate: the local day's day of
/// month comes from a per-day cache.
pub(super) struct CandidateWalk {
    offset_ms: i64,
    first_day: i64,
    day_of_month: Vec<u8>,
}

impl CandidateWalk {
    pub(super) fn new(s: &Situation, first: Timestamp, last: Timestamp) -> CandidateWalk {
        let offset_ms = i64::from(s.offset_hours) * HOUR_MS;
        let first_day = (first.as_millis() + offset_ms).div_euclid(DAY_MS);
        let last_day = (last.as_millis() + offset_ms).div_euclid(DAY_MS);
        let day_of_month = (first_day..=last_day.max(first_day))
            .map(|day| local(Timestamp::from_millis(day * DAY_MS + HOUR_MS), 0).day as u8)
            .collect();
        CandidateWalk {
            offset_ms,
            first_day,
            day_of_month,
        }
    }

    /// Bucket values of a candidate at `at`, in [`time_slots`] order.
    #[inline]
    pub(super) fn values(&self, s: &Situation, at: Timestamp) -> [usize; 6] {
        let ms = at.as_millis() + self.offset_ms;
        let day = ms.div_euclid(DAY_MS);
        let hour = (ms.rem_euclid(DAY_MS) / HOUR_MS) as usize;
        let weekday = (day + 4).rem_euclid(7) as usize;
        let dom = self
            .day_of_month
            .get((day - self.first_day) as usize)
            .copied()
            .unwrap_or(1);
        [
            since_bucket(at.as_millis() - s.first_failure_at.as_millis()) as usize,
            wait_bucket(at.as_millis() - s.decided_at.as_millis()) as usize,
            hour / 4,
            weekday,
            monthday_bucket(u32::from(dom)) as usize,
            weekday * 6 + hour / 4,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use offsession_core::hash::unit_interval;

    #[test]
    fn the_tables_score_as_the_hashed_slots_do() {
        let weights: Vec<f32> = (0..DIMENSIONS as u64)
            .map(|i| unit_interval(mix(i)) as f32 - 0.5)
            .collect();
        let squared: Vec<f32> = (0..DIMENSIONS as u64)
            .map(|i| unit_interval(mix(i ^ 77)) as f32)
            .collect();
        let now = Timestamp::parse_rfc3339("2026-01-27T13:20:00Z").unwrap();
        let card = offsession_core::CardDetails {
            brand: "visa".into(),
            funding: "debit".into(),
            country: Some("JP".into()),
            wallet: None,
            fingerprint: None,
            fingerprint_by: None,
        };
        let s = situation(
            Some(DeclineCategory::SoftFunds),
            "insufficient_funds",
            None,
            Some(&card),
            2_000,
            Cadence::Recurring,
            2,
            now,
            Timestamp::from_millis(now.as_millis() - 3 * DAY_MS),
        );
        let last = Timestamp::from_millis(now.as_millis() + 28 * DAY_MS);
        let tables = TimeTables::new(&weights, &squared, s.category);
        let walk = CandidateWalk::new(&s, now, last);
        let mut t = now;
        while t <= last {
            let slots = time_slots(&s, t);
            let score: f32 = slots.iter().map(|&i| weights[i]).sum();
            let novelty = slots[6..]
                .iter()
                .map(|&i| 1.0 / (1.0 + 10.0 * squared[i]).sqrt())
                .sum::<f32>()
                / 6.0;
            let (table_score, table_novelty) = tables.lookup(walk.values(&s, t));
            assert!((score - table_score).abs() < 1e-4, "{t}");
            assert!((novelty - table_novelty).abs() < 1e-5, "{t}");
            t = Timestamp::from_millis(t.as_millis() + 3 * HOUR_MS + 7 * 60_000);
        }
    }
}
