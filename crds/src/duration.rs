//! Human durations ("500ms", "30s", "5m", "1h30m") as they appear in a StreamJob.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What the API server accepts: one or more `<integer><unit>` parts, units `ms`, `s`, `m`, `h`.
/// It is the subset of Go's `time.ParseDuration` that CEL's `duration()` understands too.
pub const DURATION_PATTERN: &str = "^([0-9]+(ms|s|m|h))+$";

/// The message for a duration that is zero or malformed, in the CRD and in [`crate::validate()`].
pub const DURATION_MESSAGE: &str = "must be a positive duration of at most 2562047h47m16s854ms, such as 500ms, 30s, 5m or 1h30m (units: ms, s, m, h)";

/// The longest duration accepted, 2562047h47m16s854ms (about 292 years): the whole
/// milliseconds Go's `time.Duration` holds. The API server's CEL `duration()` refuses
/// anything longer, so both accept the same durations; and window arithmetic on event
/// times (years 0 to 9999) in milliseconds cannot overflow.
pub const MAX_DURATION_MILLIS: u64 = i64::MAX as u64 / 1_000_000;

/// The message for a duration longer than [`MAX_DURATION_MILLIS`].
pub const DURATION_TOO_LONG_MESSAGE: &str =
    "is too long: a duration is at most 2562047h47m16s854ms (about 292 years)";

/// A positive duration written as a human string; serialized in its canonical form
/// (`90s` reads back as `1m30s`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Duration(std::time::Duration);

impl Duration {
    /// A duration of whole milliseconds.
    pub const fn from_millis(millis: u64) -> Self {
        Self(std::time::Duration::from_millis(millis))
    }

    /// A duration of whole seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    /// The parsed value.
    pub const fn get(self) -> std::time::Duration {
        self.0
    }

    /// The value in milliseconds, saturating at `i64::MAX`.
    pub fn as_millis_i64(self) -> i64 {
        i64::try_from(self.0.as_millis()).unwrap_or(i64::MAX)
    }
}

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} {}", if *.too_long { DURATION_TOO_LONG_MESSAGE } else { DURATION_MESSAGE })]
pub struct ParseDurationError {
    text: String,
    too_long: bool,
}

impl FromStr for Duration {
    type Err = ParseDurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || ParseDurationError {
            text: text.to_string(),
            too_long: false,
        };
        let too_long = || ParseDurationError {
            text: text.to_string(),
            too_long: true,
        };
        let mut total = std::time::Duration::ZERO;
        let mut rest = text;
        if rest.is_empty() {
            return Err(error());
        }
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(error());
            }
            let amount: u64 = rest[..digits].parse().map_err(|_| too_long())?;
            rest = &rest[digits..];
            let (unit_millis, unit_len) = if rest.starts_with("ms") {
                (1, 2)
            } else if rest.starts_with('s') {
                (1_000, 1)
            } else if rest.starts_with('m') {
                (60_000, 1)
            } else if rest.starts_with('h') {
                (3_600_000, 1)
            } else {
                return Err(error());
            };
            rest = &rest[unit_len..];
            let millis = amount.checked_mul(unit_millis).ok_or_else(too_long)?;
            total = total
                .checked_add(std::time::Duration::from_millis(millis))
                .ok_or_else(too_long)?;
        }
        if total.is_zero() {
            return Err(error());
        }
        if total > std::time::Duration::from_millis(MAX_DURATION_MILLIS) {
            return Err(too_long());
        }
        Ok(Self(total))
    }
}

impl fmt::Display for Duration {
    /// Prints the shortest canonical form: `90s` as `1m30s`, `1500ms` as `1s500ms`.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut millis = self.0.as_millis();
        if millis == 0 {
            return write!(formatter, "0s");
        }
        for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
            if millis >= size {
                write!(formatter, "{}{unit}", millis / size)?;
                millis %= size;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, formatter)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<'de, str>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": 32,
            "pattern": DURATION_PATTERN,
            "x-kubernetes-validations": [
                { "rule": "duration(self) > duration('0s')", "message": DURATION_MESSAGE }
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_durations() {
        let cases = [
            ("500ms", 500, "500ms"),
            ("30s", 30_000, "30s"),
            ("5m", 300_000, "5m"),
            ("1h30m", 5_400_000, "1h30m"),
            ("90s", 90_000, "1m30s"),
            ("1s500ms", 1_500, "1s500ms"),
        ];
        for (text, millis, canonical) in cases {
            let duration: Duration = text.parse().unwrap();
            assert_eq!(duration.get().as_millis(), millis, "{text}");
            assert_eq!(duration.to_string(), canonical, "{text}");
        }
    }

    #[test]
    fn refuses_zero_and_malformed_durations() {
        for text in [
            "", "0s", "0ms0s", "5", "s", "-5s", "1.5s", "5 m", "5d", "1h-3m", "ms",
        ] {
            let error = text.parse::<Duration>().unwrap_err();
            assert!(
                error.to_string().contains("positive duration"),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn refuses_durations_beyond_what_kubernetes_parses() {
        let longest: Duration = "2562047h47m16s854ms".parse().unwrap();
        assert_eq!(longest.get().as_millis(), u128::from(MAX_DURATION_MILLIS));
        assert_eq!(longest.to_string(), "2562047h47m16s854ms");
        for text in [
            "2562047h47m16s855ms",
            "2562047h47m17s",
            "2562048h",
            "9223372036854775807ms",
            "99999999999999999999999s",
            "18446744073709551615h",
        ] {
            let error = text.parse::<Duration>().unwrap_err();
            assert_eq!(
                error.to_string(),
                format!("{text:?} {DURATION_TOO_LONG_MESSAGE}"),
            );
        }
    }
}
