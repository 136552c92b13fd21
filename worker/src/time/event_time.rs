//! Reading an event's time from its configured top-level field, and writing times as
//! RFC 3339.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use sluice_crds::streamjob::TimeFormat;

use super::Millis;

/// The earliest event time accepted: 0000-01-01T00:00:00Z, so every time can be written
/// as RFC 3339 with a four-digit year.
pub const MIN_EVENT_TIME: Millis = -62_167_219_200_000;
/// The latest event time accepted: 9999-12-31T23:59:59.999Z.
pub const MAX_EVENT_TIME: Millis = 253_402_300_799_999;

/// Why an event has no usable event time.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventTimeError {
    /// The field is absent.
    #[error("the event has no field {field:?} (spec.source.eventTime.field)")]
    Missing {
        /// The configured field.
        field: String,
    },
    /// The field has the wrong type or cannot be parsed in the configured format.
    #[error("the event-time field {field:?} is {found}, expected {expected}")]
    Invalid {
        /// The configured field.
        field: String,
        /// What was found.
        found: String,
        /// What the format expects.
        expected: &'static str,
    },
    /// A valid time outside years 0000 to 9999.
    #[error("the event-time field {field:?} is {found}, outside years 0000 to 9999")]
    OutOfRange {
        /// The configured field.
        field: String,
        /// What was found.
        found: String,
    },
    /// A time so close to the end of year 9999 that its window would end after it, and
    /// the window's end could not be written as RFC 3339.
    #[error(
        "the event-time field {field:?} is {found}, after {latest}: its window would end after year 9999"
    )]
    TooLateForWindow {
        /// The configured field.
        field: String,
        /// What was found.
        found: String,
        /// The latest event time whose windows end within year 9999, as RFC 3339.
        latest: String,
    },
}

/// Where and how events carry their time.
#[derive(Clone, Debug)]
pub struct EventTimeField {
    /// The top-level field.
    pub field: String,
    /// How it is written.
    pub format: TimeFormat,
    /// The latest event time accepted: [`MAX_EVENT_TIME`], less the longest a window may
    /// reach past its event (its size, or the session gap), so every window end can be
    /// written with a four-digit year.
    pub latest: Millis,
}

impl EventTimeField {
    /// The event time of `event`.
    pub fn extract(&self, event: &Map<String, Value>) -> Result<Millis, EventTimeError> {
        let value = event
            .get(&self.field)
            .ok_or_else(|| EventTimeError::Missing {
                field: self.field.clone(),
            })?;
        let time = parse_event_time(value, self.format).map_err(|problem| match problem {
            Problem::Invalid(expected) => EventTimeError::Invalid {
                field: self.field.clone(),
                found: describe(value),
                expected,
            },
            Problem::OutOfRange => EventTimeError::OutOfRange {
                field: self.field.clone(),
                found: describe(value),
            },
        })?;
        if time > self.latest {
            return Err(EventTimeError::TooLateForWindow {
                field: self.field.clone(),
                found: describe(value),
                latest: format_rfc3339(self.latest),
            });
        }
        Ok(time)
    }
}

/// Why a value is not a time (without the field name, for table tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Wrong type or syntax; the payload says what was expected.
    Invalid(&'static str),
    /// Valid, but outside years 0000 to 9999.
    OutOfRange,
}

const RFC3339_EXPECTED: &str = "an RFC 3339 string such as \"2026-11-26T10:15:00Z\"";
const MILLIS_EXPECTED: &str = "an integer number of milliseconds since the Unix epoch";
const SECONDS_EXPECTED: &str = "a number of seconds since the Unix epoch";

/// Parses one value in `format`.
pub fn parse_event_time(value: &Value, format: TimeFormat) -> Result<Millis, Problem> {
    let millis = match format {
        TimeFormat::Rfc3339 => {
            let text = value.as_str().ok_or(Problem::Invalid(RFC3339_EXPECTED))?;
            let parsed = DateTime::parse_from_rfc3339(text)
                .map_err(|_| Problem::Invalid(RFC3339_EXPECTED))?;
            parsed.timestamp_millis()
        }
        TimeFormat::UnixMillis => match value {
            Value::Number(number) => {
                if let Some(millis) = number.as_i64() {
                    millis
                } else if number.is_u64() {
                    return Err(Problem::OutOfRange);
                } else {
                    return Err(Problem::Invalid(MILLIS_EXPECTED));
                }
            }
            _ => return Err(Problem::Invalid(MILLIS_EXPECTED)),
        },
        TimeFormat::UnixSeconds => match value {
            Value::Number(number) => {
                if let Some(seconds) = number.as_i64() {
                    seconds.checked_mul(1000).ok_or(Problem::OutOfRange)?
                } else if number.is_u64() {
                    return Err(Problem::OutOfRange);
                } else {
                    let seconds = number.as_f64().ok_or(Problem::Invalid(SECONDS_EXPECTED))?;
                    let millis = (seconds * 1000.0).floor();
                    if !millis.is_finite() || millis.abs() > 1e17 {
                        return Err(Problem::OutOfRange);
                    }
                    #[allow(clippy::cast_possible_truncation)]
                    let millis = millis as i64;
                    millis
                }
            }
            _ => return Err(Problem::Invalid(SECONDS_EXPECTED)),
        },
    };
    if (MIN_EVENT_TIME..=MAX_EVENT_TIME).contains(&millis) {
        Ok(millis)
    } else {
        Err(Problem::OutOfRange)
    }
}

/// A short description of a value for messages: its JSON text, cut at 64 characters.
pub fn describe(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 64 {
        let cut: String = text.chars().take(61).collect();
        format!("{cut}...")
    } else {
        text
    }
}

/// `2026-11-26T10:00:00Z`, with fractional seconds only when they are not zero.
pub fn format_rfc3339(millis: Millis) -> String {
    DateTime::<Utc>::from_timestamp_millis(millis)
        .map(|time| time.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| millis.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_each_format() {
        let ten_o_clock = 1_795_687_200_000;
        let cases: Vec<(Value, TimeFormat, Result<Millis, Problem>)> = vec![
            (
                json!("2026-11-26T10:00:00Z"),
                TimeFormat::Rfc3339,
                Ok(ten_o_clock),
            ),
            (
                json!("2026-11-26T11:00:00.250+01:00"),
                TimeFormat::Rfc3339,
                Ok(ten_o_clock + 250),
            ),
            (
                json!("yesterday"),
                TimeFormat::Rfc3339,
                Err(Problem::Invalid(RFC3339_EXPECTED)),
            ),
            (
                json!(1),
                TimeFormat::Rfc3339,
                Err(Problem::Invalid(RFC3339_EXPECTED)),
            ),
            (json!(ten_o_clock), TimeFormat::UnixMillis, Ok(ten_o_clock)),
            (json!(-1), TimeFormat::UnixMillis, Ok(-1)),
            (
                json!(1.5),
                TimeFormat::UnixMillis,
                Err(Problem::Invalid(MILLIS_EXPECTED)),
            ),
            (
                json!("1"),
                TimeFormat::UnixMillis,
                Err(Problem::Invalid(MILLIS_EXPECTED)),
            ),
            (
                json!(i64::MAX),
                TimeFormat::UnixMillis,
                Err(Problem::OutOfRange),
            ),
            (
                json!(u64::MAX),
                TimeFormat::UnixMillis,
                Err(Problem::OutOfRange),
            ),
            (
                json!(1_795_687_200),
                TimeFormat::UnixSeconds,
                Ok(ten_o_clock),
            ),
            (
                json!(1_795_687_200.25),
                TimeFormat::UnixSeconds,
                Ok(ten_o_clock + 250),
            ),
            (
                json!(i64::MAX),
                TimeFormat::UnixSeconds,
                Err(Problem::OutOfRange),
            ),
            (
                json!(1e300),
                TimeFormat::UnixSeconds,
                Err(Problem::OutOfRange),
            ),
            (
                json!(null),
                TimeFormat::UnixSeconds,
                Err(Problem::Invalid(SECONDS_EXPECTED)),
            ),
        ];
        for (value, format, expected) in cases {
            assert_eq!(
                parse_event_time(&value, format),
                expected,
                "{value} as {format:?}"
            );
        }
    }

    #[test]
    fn formats_rfc3339_with_fraction_only_when_needed() {
        let cases = [
            (1_795_687_200_000, "2026-11-26T10:00:00Z"),
            (1_795_687_200_250, "2026-11-26T10:00:00.250Z"),
            (0, "1970-01-01T00:00:00Z"),
            (-1000, "1969-12-31T23:59:59Z"),
        ];
        for (millis, text) in cases {
            assert_eq!(format_rfc3339(millis), text);
        }
    }

    #[test]
    fn names_the_field_in_errors() {
        let field = EventTimeField {
            field: "ts".into(),
            format: TimeFormat::UnixMillis,
            latest: MAX_EVENT_TIME - 60_000,
        };
        let missing = field.extract(&Map::new()).unwrap_err();
        assert_eq!(missing, EventTimeError::Missing { field: "ts".into() });
        let mut event = Map::new();
        event.insert("ts".into(), json!("soon"));
        assert!(
            field
                .extract(&event)
                .unwrap_err()
                .to_string()
                .contains("\"ts\" is \"soon\"")
        );
        // The last minute of year 9999 would open a window ending in year 10000.
        event.insert("ts".into(), json!(MAX_EVENT_TIME - 60_000));
        assert_eq!(field.extract(&event), Ok(MAX_EVENT_TIME - 60_000));
        event.insert("ts".into(), json!(MAX_EVENT_TIME - 59_999));
        assert_eq!(
            field.extract(&event).unwrap_err().to_string(),
            "the event-time field \"ts\" is 253402300740000, after 9999-12-31T23:58:59.999Z: its window would end after year 9999"
        );
    }
}
