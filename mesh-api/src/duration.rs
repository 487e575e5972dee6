//! Durations as people write them on command lines and in specs: a number and a unit, `500ms`,
//! `10s`, `1.5m`, `2h`. One parser and one printer for every binary and spec of the project, so
//! a duration is a [`Duration`] from the moment it is read and is printed back to the same
//! value (`format` then `parse` is exact to the millisecond).

use std::time::Duration;

/// Why a text is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a duration: {reason} (e.g. 500ms, 10s, 2m, 1.5h)")]
pub struct DurationError {
    /// The text given.
    pub text: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Parses `<number><unit>`, the unit one of `ms`, `s`, `m`, `h`; the number may have a
/// fraction. No unit, a negative number or one that overflows is an error.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let error = |reason| DurationError {
        text: text.to_owned(),
        reason,
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| error("no unit"))?;
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(error("no number"));
    }
    let n: f64 = number.parse().map_err(|_| error("not a number"))?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(error("unknown unit")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| error("out of range"))
}

/// The shortest exact form of `d` to the millisecond: `500ms`, `10s`, `2m`, `1h`, `1500ms`.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 || !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// `#[serde(with = "mesh_api::duration::text")]`: a [`Duration`] field written as text.
pub mod text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    /// Writes [`super::format`].
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*d))
    }

    /// Reads [`super::parse`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse(&text).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_fractions() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("0.25s"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        for (text, reason) in [
            ("30", "no unit"),
            ("", "no unit"),
            ("s", "no number"),
            ("3x", "unknown unit"),
            ("1..2s", "not a number"),
            ("-1s", "no number"),
            ("1e400h", "unknown unit"),
            ("99999999999999999999999h", "out of range"),
        ] {
            assert_eq!(parse(text).map_err(|e| e.reason), Err(reason), "{text:?}");
        }
        assert_eq!(
            parse("3x").unwrap_err().to_string(),
            "\"3x\" is not a duration: unknown unit (e.g. 500ms, 10s, 2m, 1.5h)"
        );
    }

    #[test]
    fn formats_back_to_the_same_value() {
        for (d, text) in [
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(10), "10s"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_secs(7200), "2h"),
            (Duration::ZERO, "0ms"),
        ] {
            assert_eq!(format(d), text);
            assert_eq!(parse(text), Ok(d));
        }
    }
}
