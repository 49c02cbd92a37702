//! Durations as users write them in a DBQR (`30s`, `5m`, `1h30m`, `250ms`).
//!
//! The CRD schema carries the same pattern as [`Duration::PATTERN`], so the API
//! server rejects malformed strings; bounds are checked by the spec validation
//! because they differ per field.

use std::{fmt, str::FromStr, time::Duration as StdDuration};

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration parsed from the `<number><unit>…` notation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(StdDuration);

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error(
        "invalid duration {0:?}: expected a number followed by ms, s, m or h, e.g. 30s, 5m, 1h30m"
    )]
    Syntax(String),
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

impl Duration {
    /// Pattern used in the CRD schema; kept equal to what [`FromStr`] accepts.
    pub const PATTERN: &'static str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

    pub const fn from_secs(secs: u64) -> Self {
        Self(StdDuration::from_secs(secs))
    }

    pub const fn from_millis(millis: u64) -> Self {
        Self(StdDuration::from_millis(millis))
    }

    pub const fn get(self) -> StdDuration {
        self.0
    }
}

impl From<Duration> for StdDuration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(DurationError::Empty);
        }
        let syntax = || DurationError::Syntax(s.to_owned());
        let overflow = || DurationError::Overflow(s.to_owned());
        let mut rest = s;
        let mut total_nanos: u128 = 0;
        while !rest.is_empty() {
            let number_len =
                rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(syntax)?;
            let (number, tail) = rest.split_at(number_len);
            let unit_len = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
            let (unit, tail) = tail.split_at(unit_len);
            let nanos_per_unit: u128 = match unit {
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60 * 1_000_000_000,
                "h" => 3_600 * 1_000_000_000,
                _ => return Err(syntax()),
            };
            let (whole, fraction) = match number.split_once('.') {
                Some((w, f)) if !w.is_empty() && !f.is_empty() => (w, f),
                Some(_) => return Err(syntax()),
                None => (number, ""),
            };
            if whole.is_empty() || fraction.contains('.') {
                return Err(syntax());
            }
            let whole: u128 = whole.parse().map_err(|_| overflow())?;
            let mut part = whole.checked_mul(nanos_per_unit).ok_or_else(overflow)?;
            // Fractions beyond nanosecond precision are dropped, as Go does.
            let mut scale = nanos_per_unit;
            for digit in fraction.bytes().take(18) {
                scale /= 10;
                part += u128::from(digit - b'0') * scale;
            }
            total_nanos = total_nanos.checked_add(part).ok_or_else(overflow)?;
            rest = tail;
        }
        let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| overflow())?;
        let nanos = (total_nanos % 1_000_000_000) as u32;
        Ok(Self(StdDuration::new(secs, nanos)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total_ms = self.0.as_millis();
        if total_ms == 0 {
            return f.write_str("0s");
        }
        let (h, rem) = (total_ms / 3_600_000, total_ms % 3_600_000);
        let (m, rem) = (rem / 60_000, rem % 60_000);
        let (s, ms) = (rem / 1000, rem % 1000);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 {
            write!(f, "{s}s")?;
        }
        if ms > 0 {
            write!(f, "{ms}ms")?;
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": Self::PATTERN,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_users_write() {
        let cases = [
            ("30s", StdDuration::from_secs(30)),
            ("5m", StdDuration::from_secs(300)),
            ("1h", StdDuration::from_secs(3600)),
            ("1h30m", StdDuration::from_secs(5400)),
            ("250ms", StdDuration::from_millis(250)),
            ("1.5s", StdDuration::from_millis(1500)),
            ("0s", StdDuration::ZERO),
        ];
        for (text, expected) in cases {
            assert_eq!(text.parse::<Duration>().unwrap().get(), expected, "{text}");
        }
    }

    #[test]
    fn refuses_malformed_and_overflowing_values() {
        for bad in ["", "30", "s", "5 m", "1d", "-5s", "1..5s", ".5s", "5.s", "1h-2m", "ms"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad:?} should be refused");
        }
        assert!(matches!(
            "9999999999999999999999h".parse::<Duration>(),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn display_round_trips() {
        for text in ["30s", "5m", "1h30m", "250ms", "1h0m1s"] {
            let d: Duration = text.parse().unwrap();
            let again: Duration = d.to_string().parse().unwrap();
            assert_eq!(d, again);
        }
    }
}
