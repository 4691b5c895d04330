//! Time: millisecond timestamps and the `Clock` every component reads time from.
//!
//! Nothing in the engine calls the system clock directly; a `ManualClock` (a test
//! clock) lets tests and simulations run weeks of retries in milliseconds.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A UTC instant with millisecond precision (milliseconds since the Unix epoch).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(i64);

const MS_PER_DAY: i64 = 86_400_000;

impl Timestamp {
    /// The latest instant the API's RFC 3339 form can show,
    /// `9999-12-31T23:59:59.999Z`: later arithmetic stops here.
    pub const MAX: Timestamp = Timestamp(253_402_300_799_999);
    /// The earliest, `0000-01-01T00:00:00.000Z`.
    pub const MIN: Timestamp = Timestamp(-62_167_219_200_000);

    /// The instant `millis` milliseconds after the Unix epoch.
    pub const fn from_millis(millis: i64) -> Timestamp {
        Timestamp(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// Parses an RFC 3339 date-time (`2025-01-01T00:00:00.000Z`, offsets allowed).
    pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
        let dt = OffsetDateTime::parse(text, &Rfc3339).ok()?;
        Some(Timestamp((dt.unix_timestamp_nanos() / 1_000_000) as i64))
    }

    /// Parses a `YYYY-MM-DD` date as midnight UTC.
    pub fn parse_date(text: &str) -> Option<Timestamp> {
        let format = time::macros::format_description!("[year]-[month]-[day]");
        let date = time::Date::parse(text, &format).ok()?;
        let dt = date.midnight().assume_utc();
        Some(Timestamp(dt.unix_timestamp() * 1000))
    }

    /// The instant `duration` later, at most [`Timestamp::MAX`] (a retry planned
    /// past year 9999 is planned at its end, not wrapped or shown as 1970).
    pub fn plus(self, duration: Duration) -> Timestamp {
        let ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(ms).min(Timestamp::MAX.0.max(self.0)))
    }

    /// Time elapsed from `earlier` to `self` (zero if `earlier` is later).
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0).max(0) as u64)
    }

    /// Calendar view in UTC; an instant outside years 0000–9999 is shown as the
    /// nearest end of them (never as another date).
    pub fn to_datetime(self) -> OffsetDateTime {
        let ms = self.0.clamp(Timestamp::MIN.0, Timestamp::MAX.0);
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// Milliseconds since midnight UTC of the same day.
    pub fn millis_of_day(self) -> i64 {
        self.0.rem_euclid(MS_PER_DAY)
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC with milliseconds, as the API shows time: `2025-01-01T00:00:00.000Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dt = self.to_datetime();
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            dt.year(),
            u8::from(dt.month()),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second(),
            dt.millisecond()
        )
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Timestamp::parse_rfc3339(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("`{text}` is not an RFC 3339 date-time"))
        })
    }
}

/// The source of "now" for the engine, its policies and its processors.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current instant.
    fn now(&self) -> Timestamp;
}

/// Reads the operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        // Milliseconds straight from the system time: no calendar date is needed.
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or_else(
                |before| -(before.duration().as_millis() as i64),
                |after| after.as_millis() as i64,
            );
        Timestamp(since_epoch)
    }
}

/// A clock that moves only when told to: Stripe's "test clock".
///
/// It never moves backwards; `set` to an earlier time is refused.
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicI64,
}

impl ManualClock {
    /// A clock frozen at `start`.
    pub fn new(start: Timestamp) -> ManualClock {
        ManualClock {
            now: AtomicI64::new(start.0),
        }
    }

    /// Moves the clock to `to`. Returns `false` (and leaves the clock alone) when
    /// `to` is before the current time.
    pub fn set(&self, to: Timestamp) -> bool {
        let mut current = self.now.load(Ordering::Acquire);
        loop {
            if to.0 < current {
                return false;
            }
            match self
                .now
                .compare_exchange(current, to.0, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.now.fetch_add(ms, Ordering::AcqRel);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.now.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_past_year_9999_stops_there_and_reads_back() {
        assert_eq!(Timestamp::MAX.to_string(), "9999-12-31T23:59:59.999Z");
        assert_eq!(Timestamp::MIN.to_string(), "0000-01-01T00:00:00.000Z");
        let late = Timestamp::parse_rfc3339("9999-12-31T00:00:00Z").unwrap();
        let retry = late.plus(Duration::from_secs(30 * 86_400));
        assert_eq!(retry, Timestamp::MAX);
        let text = serde_json::to_string(&retry).unwrap();
        assert_eq!(serde_json::from_str::<Timestamp>(&text).unwrap(), retry);
        // Beyond the range (only `from_millis` makes one): shown as its end, not 1970.
        assert_eq!(
            Timestamp::from_millis(i64::MAX).to_string(),
            "9999-12-31T23:59:59.999Z"
        );
        assert!(Timestamp::from_millis(i64::MAX).plus(Duration::from_secs(1)) > Timestamp::MAX);
    }

    #[test]
    fn timestamps_print_as_rfc3339_with_milliseconds() {
        let t = Timestamp::parse_rfc3339("2025-01-01T00:00:00Z").unwrap();
        assert_eq!(t.to_string(), "2025-01-01T00:00:00.000Z");
        let t = Timestamp::parse_rfc3339("2022-09-18T13:22:18.123Z").unwrap();
        assert_eq!(t.to_string(), "2022-09-18T13:22:18.123Z");
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            "\"2022-09-18T13:22:18.123Z\""
        );
        let offset = Timestamp::parse_rfc3339("2022-09-18T15:22:18.123+02:00").unwrap();
        assert_eq!(offset, t);
    }

    #[test]
    fn dates_parse_as_midnight_utc() {
        let t = Timestamp::parse_date("2025-03-01").unwrap();
        assert_eq!(t.to_string(), "2025-03-01T00:00:00.000Z");
        assert!(Timestamp::parse_date("2025-02-30").is_none());
        assert!(Timestamp::parse_date("01/03/2025").is_none());
    }

    #[test]
    fn a_manual_clock_never_moves_backwards() {
        let clock = ManualClock::new(Timestamp::from_millis(1_000));
        assert!(clock.set(Timestamp::from_millis(5_000)));
        assert!(!clock.set(Timestamp::from_millis(4_000)));
        assert_eq!(clock.now(), Timestamp::from_millis(5_000));
        clock.advance(Duration::from_secs(1));
        assert_eq!(clock.now(), Timestamp::from_millis(6_000));
    }
}
