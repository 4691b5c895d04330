//! When a pay rule pays: calendar arithmetic on day numbers, the simulator's own
//! (nothing here comes from the retry strategies).

use super::PayRule;

/// `(year, month, day)` of a day number since 1970-01-01.
pub(super) fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

fn weekday(days: i64) -> i64 {
    (days + 4).rem_euclid(7) // 0 = Sunday
}

/// Whether day `days` is a nominal day-of-month payday of `rule` (29–31 fall back to
/// a shorter month's last day).
fn nominal_month_payday(rule: &PayRule, days: i64) -> bool {
    let (_, month, day) = civil(days);
    let last = civil(days + 1).1 != month;
    rule.days_of_month
        .iter()
        .any(|&d| d == day || (last && d > day))
}

pub(super) fn is_payday(rule: &PayRule, phase: i64, days: i64) -> bool {
    let wd = weekday(days);
    let weekend = |d: i64| matches!(weekday(d), 0 | 6);
    if !rule.days_of_month.is_empty() {
        if nominal_month_payday(rule, days) && !(rule.weekend_before && weekend(days)) {
            return true;
        }
        if rule.weekend_before && wd == 5 && (1..=2).any(|k| nominal_month_payday(rule, days + k)) {
            return true;
        }
    }
    if let Some(w) = rule.weekday_number() {
        if wd == w && (rule.every_weeks == 1 || (days / 7).rem_euclid(2) == phase) {
            return true;
        }
    }
    if rule.last_business_day && (1..=5).contains(&wd) {
        let next_business = if wd == 5 { days + 3 } else { days + 1 };
        if civil(next_business).1 != civil(days).1 {
            return true;
        }
    }
    false
}
