//! Durations as configuration writes them: `90s`, `30m`, `12h`, `3d`, `2w`.
//!
//! Every configuration type in the workspace keeps `std::time::Duration` fields and
//! reads and writes them through [`text`] (one value) or [`text_list`] (a list), so
//! a duration is spelled the same way in every section and every error names the
//! rule.

use std::time::Duration;

/// A duration that is not `<integer><unit>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a duration: write a whole number and a unit (ms, s, m, h, d or w), e.g. `250ms`, `90s` or `3d`")]
pub struct DurationError(pub String);

/// Parses `<integer><unit>` with unit `ms`, `s`, `m`, `h`, `d` or `w`.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let trimmed = text.trim();
    let err = || DurationError(trimmed.to_owned());
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(err)?;
    let (number, unit) = trimmed.split_at(split);
    let n: u64 = number.parse().map_err(|_| err())?;
    if unit == "ms" {
        return Ok(Duration::from_millis(n));
    }
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(err()),
    };
    Ok(Duration::from_secs(n.checked_mul(seconds).ok_or_else(err)?))
}

/// The largest whole unit: `90s`, `5m`, `1w`; `250ms` when not whole seconds
/// (sub-millisecond parts are dropped).
pub fn format(duration: Duration) -> String {
    if duration.subsec_millis() != 0 {
        return format!("{}ms", duration.as_millis());
    }
    let secs = duration.as_secs();
    for (unit, size) in [("w", 604_800), ("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs >= size && secs % size == 0 {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

/// `#[serde(with = "offsession_core::duration::text")]` on a `Duration` field.
pub mod text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the duration as text.
    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format(*value))
    }

    /// Reads `<integer><unit>`.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// `#[serde(with = "offsession_core::duration::text_list")]` on a `Vec<Duration>`.
pub mod text_list {
    use std::time::Duration;

    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes each duration as text.
    pub fn serialize<S: Serializer>(values: &[Duration], serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(values.len()))?;
        for value in values {
            seq.serialize_element(&super::format(*value))?;
        }
        seq.end()
    }

    /// Reads a list of `<integer><unit>`.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Duration>, D::Error> {
        Vec::<String>::deserialize(deserializer)?
            .iter()
            .map(|text| super::parse(text).map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_nothing_else() {
        assert_eq!(parse("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("3d").unwrap(), Duration::from_secs(3 * 86_400));
        assert_eq!(parse(" 2w ").unwrap(), Duration::from_secs(14 * 86_400));
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        for bad in [
            "3",
            "d",
            "3 days",
            "-1d",
            "1.5h",
            "99999999999999999999w",
            "5us",
            "ms",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.to_string().contains("(ms, s, m, h, d or w)"), "{err}");
        }
    }

    #[test]
    fn formatting_uses_the_largest_whole_unit_and_parses_back() {
        assert_eq!(format(Duration::from_secs(90)), "90s");
        assert_eq!(format(Duration::from_secs(300)), "5m");
        assert_eq!(format(Duration::from_secs(7 * 86_400)), "1w");
        assert_eq!(format(Duration::from_millis(1_250)), "1250ms");
        assert_eq!(parse("1250ms").unwrap(), Duration::from_millis(1_250));
        for secs in [
            0, 1, 59, 60, 3_599, 3_600, 86_400, 90_000, 604_800, 1_209_600,
        ] {
            let d = Duration::from_secs(secs);
            assert_eq!(parse(&format(d)).unwrap(), d);
        }
    }
}
