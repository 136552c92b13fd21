//! Reading an event's time from its configured top-level field, and writing times as
//! RFC 3339.
//!
//! Every format is read to the millisecond, exactly, and digits below a millisecond are
//! dropped toward the past (floor): `2.0109` seconds is 2010 ms, `-0.0001` seconds is -1 ms,
//! and `1969-12-31T23:59:59.9995Z` is -1 ms, so a time never moves into a later window than
//! the one its exact value is in. A JSON number that serde_json reads as a double
//! (`2.01`, `1.5e3`, `-0`) is read from its decimal text in the record, not from the
//! double, which cannot hold most decimal fractions (2.01 is 2.00999999999999978... as a
//! double).

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use sluice_crds::streamjob::TimeFormat;

use super::Millis;
use super::window::WindowAssigner;

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
    /// A time so close to the start of year 0000 that one of its windows would start
    /// before it, and the window's start could not be written as RFC 3339.
    #[error(
        "the event-time field {field:?} is {found}, before {earliest}: one of its windows would start before year 0000"
    )]
    TooEarlyForWindow {
        /// The configured field.
        field: String,
        /// What was found.
        found: String,
        /// The earliest event time whose windows start within year 0000, as RFC 3339.
        earliest: String,
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
    /// The earliest event time accepted: [`MIN_EVENT_TIME`], or later when a window of an
    /// earlier time would start before year 0000 (see [`WindowAssigner::event_time_bounds`]).
    pub earliest: Millis,
    /// The latest event time accepted: [`MAX_EVENT_TIME`], or earlier when a window of a
    /// later time would end after year 9999, so every window bound can be written as
    /// RFC 3339 with a four-digit year.
    pub latest: Millis,
}

impl EventTimeField {
    /// The event-time field of a pipeline whose window is `window` (`None`: no window).
    pub fn new(field: String, format: TimeFormat, window: Option<&WindowAssigner>) -> Self {
        let (earliest, latest) = window.map_or((MIN_EVENT_TIME, MAX_EVENT_TIME), |window| {
            window.event_time_bounds()
        });
        Self {
            field,
            format,
            earliest,
            latest,
        }
    }

    /// The event time of `event`, decoded from `payload` (whose text gives the exact
    /// decimal value of a number serde_json read as a double).
    pub fn extract(
        &self,
        event: &Map<String, Value>,
        payload: &[u8],
    ) -> Result<Millis, EventTimeError> {
        let value = event
            .get(&self.field)
            .ok_or_else(|| EventTimeError::Missing {
                field: self.field.clone(),
            })?;
        // Only a number read as a double needs its text: integers are exact.
        let text = match value {
            Value::Number(number) if number.is_f64() && self.format != TimeFormat::Rfc3339 => {
                top_level_field_text(payload, &self.field)
            }
            _ => None,
        };
        let time = parse_event_time(value, text, self.format).map_err(|problem| match problem {
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
        if time < self.earliest {
            return Err(EventTimeError::TooEarlyForWindow {
                field: self.field.clone(),
                found: describe(value),
                earliest: format_rfc3339(self.earliest),
            });
        }
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
const MILLIS_EXPECTED: &str =
    "an integer number of milliseconds since the Unix epoch, with no fraction or exponent";
const SECONDS_EXPECTED: &str = "a number of seconds since the Unix epoch";

/// Parses one value in `format`. `text` is the value's JSON text in the record when it is
/// a number serde_json read as a double (without it, the double's shortest round-trip text
/// stands in, which is the same for numbers of up to 15 significant digits).
pub fn parse_event_time(
    value: &Value,
    text: Option<&[u8]>,
    format: TimeFormat,
) -> Result<Millis, Problem> {
    let millis = match format {
        TimeFormat::Rfc3339 => {
            let text = value.as_str().ok_or(Problem::Invalid(RFC3339_EXPECTED))?;
            // A leap second (`:60`) is read as the first second of the next minute.
            let parsed = DateTime::parse_from_rfc3339(text)
                .map_err(|_| Problem::Invalid(RFC3339_EXPECTED))?;
            parsed.timestamp_millis()
        }
        TimeFormat::UnixMillis | TimeFormat::UnixSeconds => {
            let expected = if format == TimeFormat::UnixMillis {
                MILLIS_EXPECTED
            } else {
                SECONDS_EXPECTED
            };
            let Value::Number(number) = value else {
                return Err(Problem::Invalid(expected));
            };
            if let Some(integer) = number.as_i64() {
                if format == TimeFormat::UnixMillis {
                    integer
                } else {
                    integer.checked_mul(1000).ok_or(Problem::OutOfRange)?
                }
            } else if number.is_u64() {
                return Err(Problem::OutOfRange);
            } else {
                let shortest;
                let text = match text {
                    Some(text) => text,
                    None => {
                        shortest = number.to_string();
                        shortest.as_bytes()
                    }
                };
                let decimal = Decimal::parse(text).ok_or(Problem::Invalid(expected))?;
                if format == TimeFormat::UnixMillis {
                    // An integer as JSON writes it: `-0` is 0, and an integer beyond 64
                    // bits is out of range, but `1.0` and `1e3` are not integers.
                    if !decimal.is_integer_literal {
                        return Err(Problem::Invalid(MILLIS_EXPECTED));
                    }
                    decimal.floor_scaled(0)?
                } else {
                    decimal.floor_scaled(3)?
                }
            }
        }
    };
    if (MIN_EVENT_TIME..=MAX_EVENT_TIME).contains(&millis) {
        Ok(millis)
    } else {
        Err(Problem::OutOfRange)
    }
}

/// A JSON number as its decimal digits: `(-1)^negative × digits × 10^exponent`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    /// The significant digits (ASCII), without leading zeros; empty for zero.
    digits: Vec<u8>,
    /// The power of ten of the last digit.
    exponent: i64,
    /// Written with neither a fraction nor an exponent.
    is_integer_literal: bool,
}

/// Larger exponents only ever mean "out of range" or "zero": clamping them keeps the
/// arithmetic in `i64` without changing any result (no record has 10^15 digits).
const EXPONENT_CLAMP: i64 = 1_000_000_000_000_000;

impl Decimal {
    /// Parses JSON number text: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn parse(text: &[u8]) -> Option<Self> {
        let (negative, rest) = match text.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, text),
        };
        let mantissa_end = rest
            .iter()
            .position(|byte| matches!(byte, b'e' | b'E'))
            .unwrap_or(rest.len());
        let (mantissa, exponent_text) = rest.split_at(mantissa_end);
        let (integer_part, fraction) = match mantissa.iter().position(|byte| *byte == b'.') {
            Some(point) => (&mantissa[..point], Some(&mantissa[point + 1..])),
            None => (mantissa, None),
        };
        let all_digits = |part: &[u8]| !part.is_empty() && part.iter().all(u8::is_ascii_digit);
        if !all_digits(integer_part) || fraction.is_some_and(|fraction| !all_digits(fraction)) {
            return None;
        }
        let mut exponent: i64 = 0;
        if let Some((_, exponent_text)) = exponent_text.split_first() {
            let (exponent_negative, exponent_digits) = match exponent_text.split_first() {
                Some((b'-', rest)) => (true, rest),
                Some((b'+', rest)) => (false, rest),
                _ => (false, exponent_text),
            };
            if !all_digits(exponent_digits) {
                return None;
            }
            for digit in exponent_digits {
                exponent = (exponent * 10 + i64::from(digit - b'0')).min(EXPONENT_CLAMP);
            }
            if exponent_negative {
                exponent = -exponent;
            }
        }
        let fraction = fraction.unwrap_or_default();
        let fraction_length = i64::try_from(fraction.len()).ok()?;
        let mut digits: Vec<u8> = Vec::with_capacity(integer_part.len() + fraction.len());
        digits.extend(
            integer_part
                .iter()
                .chain(fraction)
                .skip_while(|digit| **digit == b'0'),
        );
        Some(Self {
            negative,
            digits,
            exponent: exponent - fraction_length,
            is_integer_literal: mantissa_end == rest.len() && fraction.is_empty(),
        })
    }

    /// `floor(value × 10^scale)`, or out of range when its magnitude is 10^18 or more.
    fn floor_scaled(&self, scale: i64) -> Result<Millis, Problem> {
        if self.digits.is_empty() {
            return Ok(0);
        }
        let exponent = self.exponent + scale;
        let length = i64::try_from(self.digits.len()).map_err(|_| Problem::OutOfRange)?;
        // Digits before the decimal point of the scaled value.
        let whole_length = length + exponent;
        if whole_length > 18 {
            return Err(Problem::OutOfRange);
        }
        let whole_digits = usize::try_from(whole_length.clamp(0, length)).unwrap_or(0);
        let mut whole: i64 = 0;
        for digit in &self.digits[..whole_digits] {
            whole = whole * 10 + i64::from(digit - b'0');
        }
        // Trailing zeros the exponent adds (whole_length ≤ 18 keeps this in range).
        for _ in 0..exponent.max(0) {
            whole *= 10;
        }
        let below = self.digits[whole_digits..]
            .iter()
            .any(|digit| *digit != b'0');
        Ok(if self.negative {
            -whole - i64::from(below)
        } else {
            whole
        })
    }
}

/// The JSON text of the value of `field` in the JSON object `payload` (the last one when
/// the field repeats, as in the decoded map), or `None` if it is not there. `payload` has
/// already been decoded as an object, so it is valid JSON.
fn top_level_field_text<'a>(payload: &'a [u8], field: &str) -> Option<&'a [u8]> {
    let mut scanner = Scanner {
        bytes: payload,
        position: 0,
    };
    scanner.skip_whitespace();
    if scanner.next_byte()? != b'{' {
        return None;
    }
    let mut found = None;
    loop {
        scanner.skip_whitespace();
        match scanner.peek()? {
            b'}' => return found,
            b',' => {
                scanner.position += 1;
                continue;
            }
            _ => {}
        }
        let key = scanner.string()?;
        scanner.skip_whitespace();
        if scanner.next_byte()? != b':' {
            return None;
        }
        scanner.skip_whitespace();
        let value = scanner.value()?;
        let matches = if key.contains(&b'\\') {
            serde_json::from_slice::<String>(key).is_ok_and(|key| key == field)
        } else {
            &key[1..key.len() - 1] == field.as_bytes()
        };
        if matches {
            found = Some(value);
        }
    }
}

/// Skips through valid JSON, returning the text of whole values.
struct Scanner<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.position).copied()
    }

    fn next_byte(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.position += 1;
        Some(byte)
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.position += 1;
        }
    }

    /// A string with its quotes.
    fn string(&mut self) -> Option<&'a [u8]> {
        let start = self.position;
        if self.next_byte()? != b'"' {
            return None;
        }
        loop {
            match self.next_byte()? {
                b'"' => return Some(&self.bytes[start..self.position]),
                b'\\' => {
                    self.next_byte()?;
                }
                _ => {}
            }
        }
    }

    /// Any value: a string, an object or array (to its matching bracket), or a literal.
    fn value(&mut self) -> Option<&'a [u8]> {
        let start = self.position;
        match self.peek()? {
            b'"' => {
                self.string()?;
            }
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.position += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    self.position += 1;
                }
            }
            _ => {
                while !matches!(
                    self.peek(),
                    None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                ) {
                    self.position += 1;
                }
            }
        }
        Some(&self.bytes[start..self.position])
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

    /// Parses `text` as a record's field `ts`, as the engine does.
    fn parse_text(text: &str, format: TimeFormat) -> Result<Millis, Problem> {
        let payload = format!("{{\"ts\":{text}}}");
        let decoded: Map<String, Value> = serde_json::from_str(&payload).unwrap();
        let value = &decoded["ts"];
        let raw = top_level_field_text(payload.as_bytes(), "ts");
        parse_event_time(value, raw, format)
    }

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
                parse_event_time(&value, None, format),
                expected,
                "{value} as {format:?}"
            );
        }
    }

    #[test]
    fn reads_the_decimal_text_of_seconds_and_floors_below_a_millisecond() {
        let cases: Vec<(&str, Result<Millis, Problem>)> = vec![
            // As doubles these are 2.00999..., 1.02099..., 1.00099...
            ("2.01", Ok(2010)),
            ("1.021", Ok(1021)),
            ("1.001", Ok(1001)),
            ("1795687200.123", Ok(1_795_687_200_123)),
            // Below a millisecond: toward the past.
            ("2.0109", Ok(2010)),
            ("2.0100000000000000001", Ok(2010)),
            ("2.0099999999999999999", Ok(2009)),
            ("-2.01", Ok(-2010)),
            ("-2.0101", Ok(-2011)),
            ("-0.0001", Ok(-1)),
            ("-0.0", Ok(0)),
            ("-0", Ok(0)),
            ("0.0009", Ok(0)),
            ("-1e-400", Ok(-1)),
            ("1e-400", Ok(0)),
            // Exponents.
            ("1.5e3", Ok(1_500_000)),
            ("15E-1", Ok(1500)),
            ("0.0015e3", Ok(1500)),
            ("1795687200123e-3", Ok(1_795_687_200_123)),
            ("-1.5e+3", Ok(-1_500_000)),
            ("2.5e-3", Ok(2)),
            ("-2.5e-3", Ok(-3)),
            // Years 0000 and 9999 exactly.
            ("-62167219200.0", Ok(MIN_EVENT_TIME)),
            ("-62167219200.0001", Err(Problem::OutOfRange)),
            ("253402300799.999", Ok(MAX_EVENT_TIME)),
            ("253402300799.9999999", Ok(MAX_EVENT_TIME)),
            ("253402300800.0", Err(Problem::OutOfRange)),
            ("1e17", Err(Problem::OutOfRange)),
            (
                "-123456789012345678901234567890.5",
                Err(Problem::OutOfRange),
            ),
            ("18446744073709551616", Err(Problem::OutOfRange)),
        ];
        for (text, expected) in cases {
            assert_eq!(
                parse_text(text, TimeFormat::UnixSeconds),
                expected,
                "{text} seconds"
            );
        }
    }

    #[test]
    fn reads_milliseconds_as_integers_only() {
        let cases: Vec<(&str, Result<Millis, Problem>)> = vec![
            ("-0", Ok(0)),
            ("-62167219200000", Ok(MIN_EVENT_TIME)),
            ("-62167219200001", Err(Problem::OutOfRange)),
            ("-9223372036854775809", Err(Problem::OutOfRange)),
            ("99999999999999999999", Err(Problem::OutOfRange)),
            ("1.0", Err(Problem::Invalid(MILLIS_EXPECTED))),
            ("1e3", Err(Problem::Invalid(MILLIS_EXPECTED))),
            ("-0.0", Err(Problem::Invalid(MILLIS_EXPECTED))),
        ];
        for (text, expected) in cases {
            assert_eq!(
                parse_text(text, TimeFormat::UnixMillis),
                expected,
                "{text} milliseconds"
            );
        }
    }

    #[test]
    fn floors_rfc3339_below_a_millisecond_and_reads_leap_seconds_as_the_next_minute() {
        let cases: Vec<(&str, Result<Millis, Problem>)> = vec![
            ("1970-01-01T00:00:00.0019Z", Ok(1)),
            ("1969-12-31T23:59:59.9995Z", Ok(-1)),
            ("1969-12-31T23:59:59.999999999999Z", Ok(-1)),
            ("1970-01-01T00:00:60.5Z", Ok(60_500)),
            ("0000-01-01T00:00:00Z", Ok(MIN_EVENT_TIME)),
            ("0000-01-01T00:59:59.999+01:00", Err(Problem::OutOfRange)),
            ("9999-12-31T23:59:59.9999Z", Ok(MAX_EVENT_TIME)),
            ("9999-12-31T23:59:60Z", Err(Problem::OutOfRange)),
        ];
        for (text, expected) in cases {
            assert_eq!(
                parse_event_time(&json!(text), None, TimeFormat::Rfc3339),
                expected,
                "{text}"
            );
        }
    }

    #[test]
    fn finds_the_text_of_a_top_level_field() {
        let cases: Vec<(&str, Option<&str>)> = vec![
            (r#"{"ts":2.01}"#, Some("2.01")),
            (
                r#" { "a" : [1, {"ts": 5}], "ts" : -1.5e3 , "b": "}" }"#,
                Some("-1.5e3"),
            ),
            (
                r#"{"nested":{"ts":1.5},"s":"\"ts\":7","ts":0.25}"#,
                Some("0.25"),
            ),
            (r#"{"ts":1.5,"ts":2.5}"#, Some("2.5")),
            (r#"{"t\u0073":3.5}"#, Some("3.5")),
            (r#"{"tss":1.5}"#, None),
            (r#"{}"#, None),
        ];
        for (payload, expected) in cases {
            assert_eq!(
                top_level_field_text(payload.as_bytes(), "ts"),
                expected.map(str::as_bytes),
                "{payload}"
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
            (MIN_EVENT_TIME, "0000-01-01T00:00:00Z"),
            (MAX_EVENT_TIME, "9999-12-31T23:59:59.999Z"),
        ];
        for (millis, text) in cases {
            assert_eq!(format_rfc3339(millis), text);
        }
    }

    #[test]
    fn names_the_field_in_errors() {
        let field = EventTimeField::new(
            "ts".into(),
            TimeFormat::UnixMillis,
            Some(&WindowAssigner::Tumbling { size: 60_000 }),
        );
        let missing = field.extract(&Map::new(), b"{}").unwrap_err();
        assert_eq!(missing, EventTimeError::Missing { field: "ts".into() });
        let extract = |text: String| {
            let payload = format!("{{\"ts\":{text}}}");
            let event: Map<String, Value> = serde_json::from_str(&payload).unwrap();
            field.extract(&event, payload.as_bytes())
        };
        assert!(
            extract("\"soon\"".into())
                .unwrap_err()
                .to_string()
                .contains("\"ts\" is \"soon\"")
        );
        // The last minute of year 9999 would open a window ending in year 10000.
        assert_eq!(
            extract((MAX_EVENT_TIME - 60_000).to_string()),
            Ok(MAX_EVENT_TIME - 60_000)
        );
        assert_eq!(
            extract((MAX_EVENT_TIME - 59_999).to_string())
                .unwrap_err()
                .to_string(),
            "the event-time field \"ts\" is 253402300740000, after 9999-12-31T23:58:59.999Z: its window would end after year 9999"
        );
    }

    #[test]
    fn refuses_times_whose_sliding_windows_would_start_before_year_0000() {
        // Windows of 10 minutes every 5: an event in the first 5 minutes of year 0000
        // is also in a window that starts 5 minutes before it.
        let field = EventTimeField::new(
            "ts".into(),
            TimeFormat::UnixMillis,
            Some(&WindowAssigner::Sliding {
                size: 600_000,
                slide: 300_000,
            }),
        );
        let extract = |time: Millis| {
            let payload = format!("{{\"ts\":{time}}}");
            let event: Map<String, Value> = serde_json::from_str(&payload).unwrap();
            field.extract(&event, payload.as_bytes())
        };
        assert_eq!(
            extract(MIN_EVENT_TIME + 299_999).unwrap_err().to_string(),
            "the event-time field \"ts\" is -62167218900001, before 0000-01-01T00:05:00Z: one of its windows would start before year 0000"
        );
        assert_eq!(
            extract(MIN_EVENT_TIME + 300_000),
            Ok(MIN_EVENT_TIME + 300_000)
        );
    }
}
