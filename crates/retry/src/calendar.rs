//! Calendar arithmetic on millisecond timestamps, without allocation: local date,
//! weekday and hour for a UTC offset. Retry strategies evaluate hundreds of candidate
//! times per decision, so this stays integer math (Howard Hinnant's civil-from-days).

use offsession_core::Timestamp;

const MS_PER_HOUR: i64 = 3_600_000;
const MS_PER_DAY: i64 = 24 * MS_PER_HOUR;

/// A local calendar view of an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTime {
    /// Calendar year in the local zone.
    pub year: i64,
    /// Month 1–12.
    pub month: u32,
    /// Day of month 1–31.
    pub day: u32,
    /// Day of week, 0 = Sunday … 6 = Saturday.
    pub weekday: u32,
    /// Hour 0–23.
    pub hour: u32,
}

/// `at` seen from a place `offset_hours` east of UTC.
pub fn local(at: Timestamp, offset_hours: i32) -> LocalTime {
    let ms = at.as_millis() + i64::from(offset_hours) * MS_PER_HOUR;
    let days = ms.div_euclid(MS_PER_DAY);
    let hour = (ms.rem_euclid(MS_PER_DAY) / MS_PER_HOUR) as u32;
    let weekday = (days + 4).rem_euclid(7) as u32; // 1970-01-01 was a Thursday
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    LocalTime {
        year,
        month,
        day,
        weekday,
        hour,
    }
}

/// The instant of local midnight of the day containing `at`.
pub fn local_midnight(at: Timestamp, offset_hours: i32) -> Timestamp {
    let offset = i64::from(offset_hours) * MS_PER_HOUR;
    let local_ms = at.as_millis() + offset;
    Timestamp::from_millis(local_ms - local_ms.rem_euclid(MS_PER_DAY) - offset)
}

/// Hours east of UTC for an ISO 3166 country (standard time; the main business
/// time zone). Unknown countries read as UTC.
pub fn utc_offset_hours(country: Option<&str>) -> i32 {
    match country.unwrap_or("") {
        "US" | "CA" => -5,
        "MX" => -6,
        "BR" | "AR" => -3,
        "GB" | "IE" | "PT" => 0,
        "DE" | "FR" | "ES" | "IT" | "NL" | "BE" | "AT" | "CH" | "SE" | "NO" | "DK" | "PL" => 1,
        "FI" | "GR" | "RO" | "BG" => 2,
        "AE" => 4,
        "IN" => 5,
        "SG" | "HK" | "CN" | "MY" => 8,
        "JP" | "KR" => 9,
        "AU" => 10,
        "NZ" => 12,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_time_crate_across_years() {
        let mut ms = Timestamp::parse_rfc3339("1999-12-30T13:00:00Z")
            .unwrap()
            .as_millis();
        for _ in 0..20_000 {
            let at = Timestamp::from_millis(ms);
            for offset in [-5, 0, 9] {
                let ours = local(at, offset);
                let dt = at
                    .to_datetime()
                    .to_offset(time::UtcOffset::from_hms(offset as i8, 0, 0).unwrap());
                assert_eq!(
                    (ours.year, ours.month, ours.day, ours.hour, ours.weekday),
                    (
                        i64::from(dt.year()),
                        u32::from(u8::from(dt.month())),
                        u32::from(dt.day()),
                        u32::from(dt.hour()),
                        u32::from(dt.weekday().number_days_from_sunday())
                    ),
                    "{at} at {offset:+}"
                );
            }
            ms += 7 * MS_PER_HOUR + 13 * 60_000;
        }
    }

    #[test]
    fn local_midnight_is_midnight_locally() {
        let at = Timestamp::parse_rfc3339("2026-01-15T03:30:00Z").unwrap();
        assert_eq!(
            local_midnight(at, 0).to_string(),
            "2026-01-15T00:00:00.000Z"
        );
        // 03:30Z is 22:30 the previous day in New York.
        assert_eq!(
            local_midnight(at, -5).to_string(),
            "2026-01-14T05:00:00.000Z"
        );
    }
}
