//! The engine at its numeric edges, against simple models written here from
//! `docs/worker.md` (not from the engine's code):
//!
//! - every event-time format is read to the millisecond, exactly, with digits below a
//!   millisecond dropped toward the past: fractions, exponents, negative times, leap
//!   seconds and offsets, and the ends of years 0000 and 9999;
//! - every window of an accepted event starts and ends within years 0000 to 9999, and
//!   exactly the events that would have another window are refused;
//! - every aggregate over the largest and smallest integers, doubles, and both mixed, is
//!   exact: integers with all their digits, doubles rounded once from the exact value;
//! - a sum that would leave the doubles refuses the event (`aggregate-overflow`).
//!
//! Each event gets its own key where a test needs to see where one event went.

use crate::common;

use std::collections::BTreeMap;

use common::{Function, Job, TimeFormat, Window, raw_fields, run_text};
use proptest::prelude::*;
use sluice_worker::io::Position;
use sluice_worker::io::memory::MemorySink;

/// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z in Unix milliseconds.
const FIRST_MILLISECOND: i64 = -62_167_219_200_000;
const LAST_MILLISECOND: i64 = 253_402_300_799_999;

/// What became of one input line.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// Counted in windows `(start, end)` (milliseconds), in order.
    Windows(Vec<(i64, i64)>),
    /// A dead letter with this reason.
    DeadLetter(String),
}

/// Runs `job` on one event per `(key, ts text)` line, and tells, for each
/// line, what became of it: keys must be distinct, so a key's results are one event's.
fn outcomes(job: &Job, events: &[(String, String)]) -> Vec<Outcome> {
    let input: String = events
        .iter()
        .map(|(key, time)| format!("{{\"key\":\"{key}\",\"ts\":{time}}}\n"))
        .collect();
    let (sink, _) = run_text(&job.manifest(), &input, 1000);
    let mut windows: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for result in result_lines(&sink) {
        let fields: BTreeMap<String, String> = raw_fields(&result).into_iter().collect();
        let key: String = serde_json::from_str(&fields["key"]).unwrap();
        let bound = |name: &str| {
            let text: String = serde_json::from_str(&fields[name]).unwrap();
            assert!(
                text.len() >= 20 && text.as_bytes()[..4].iter().all(u8::is_ascii_digit),
                "RFC 3339 with a four-digit year: {text}"
            );
            millis_of_rfc3339(&text)
        };
        windows
            .entry(key)
            .or_default()
            .push((bound("windowStart"), bound("windowEnd")));
    }
    let mut reasons: BTreeMap<u64, String> = BTreeMap::new();
    for rejected in &sink.dead_letters {
        let Some(Position::Line(line)) = rejected.position else {
            panic!("a dead letter of an input line: {rejected:?}");
        };
        reasons.insert(line, rejected.reason.clone());
    }
    events
        .iter()
        .enumerate()
        .map(|(index, (key, _))| {
            let line = index as u64 + 1;
            match (reasons.remove(&line), windows.remove(key)) {
                (Some(reason), None) => Outcome::DeadLetter(reason),
                (None, Some(mut found)) => {
                    found.sort_unstable();
                    Outcome::Windows(found)
                }
                other => panic!("line {line} both counted and refused, or neither: {other:?}"),
            }
        })
        .collect()
}

fn result_lines(sink: &MemorySink) -> Vec<String> {
    sink.results
        .iter()
        .map(|record| String::from_utf8(record.value.clone()).unwrap())
        .collect()
}

fn millis_of_rfc3339(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|error| panic!("{text}: {error}"))
        .timestamp_millis()
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn days_in_month(year: i64, month: i64) -> i64 {
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// What a tumbling window of 1 ms makes of an event time: its own window, when that
/// window lies within years 0000 to 9999 (it ends at or before the last millisecond).
fn one_millisecond_window(time: Option<i128>) -> Outcome {
    match time {
        Some(time)
            if i128::from(FIRST_MILLISECOND) <= time && time < i128::from(LAST_MILLISECOND) =>
        {
            let time = i64::try_from(time).unwrap();
            Outcome::Windows(vec![(time, time + 1)])
        }
        _ => Outcome::DeadLetter("event-time-out-of-range".into()),
    }
}

/// A JSON number with the exact value `mantissa × 10^exponent`, in one of several
/// spellings.
fn spell(mantissa: i128, exponent: i32, style: u8, negative_zero: bool) -> String {
    let sign = if mantissa < 0 || (mantissa == 0 && negative_zero) {
        "-"
    } else {
        ""
    };
    let digits = mantissa.unsigned_abs().to_string();
    let plain = |trailing_zeros: bool| {
        if exponent >= 0 {
            let zeros = "0".repeat(exponent as usize);
            let fraction = if trailing_zeros { ".000" } else { "" };
            format!("{sign}{digits}{zeros}{fraction}")
        } else {
            let point = (-exponent) as usize;
            let padded = format!("{digits:0>width$}", width = point + 1);
            let (whole, fraction) = padded.split_at(padded.len() - point);
            let zeros = if trailing_zeros { "00" } else { "" };
            format!("{sign}{whole}.{fraction}{zeros}")
        }
    };
    match style % 4 {
        0 => plain(false),
        1 => plain(true),
        2 => format!("{sign}{digits}e{exponent}"),
        _ => {
            let (first, rest) = digits.split_at(1);
            let scientific = exponent + i32::try_from(rest.len()).unwrap();
            let fraction = if rest.is_empty() {
                String::new()
            } else {
                format!(".{rest}")
            };
            let exponent_sign = if scientific < 0 { "-" } else { "+" };
            format!(
                "{sign}{first}{fraction}E{exponent_sign}{}",
                scientific.abs()
            )
        }
    }
}

/// Seconds as `(mantissa, exponent)`: around the epoch, anywhere in the years, and at
/// both ends of years 0000 to 9999, with up to 9 digits below the millisecond.
fn seconds() -> impl Strategy<Value = (i128, i32)> {
    let millisecond = prop_oneof![
        -5_000i64..5_000,
        -10_000_000_000_000i64..10_000_000_000_000,
        FIRST_MILLISECOND - 3_000..FIRST_MILLISECOND + 3_000,
        LAST_MILLISECOND - 3_000..LAST_MILLISECOND + 3_000,
    ];
    (millisecond, 0u32..=9, any::<u64>(), -3i32..=3).prop_map(
        |(millisecond, extra_digits, extra, shift)| {
            let scale = 10i128.pow(extra_digits);
            let below = i128::from(extra) % scale;
            // The value in units of 10^-(3 + extra_digits) seconds, then written with
            // `shift` more or fewer zeros in the mantissa.
            let mantissa = i128::from(millisecond) * scale + below;
            let exponent = -3 - i32::try_from(extra_digits).unwrap();
            if shift >= 0 {
                (
                    mantissa * 10i128.pow(shift.unsigned_abs()),
                    exponent - shift,
                )
            } else if mantissa % 10i128.pow(shift.unsigned_abs()) == 0 {
                (
                    mantissa / 10i128.pow(shift.unsigned_abs()),
                    exponent - shift,
                )
            } else {
                (mantissa, exponent)
            }
        },
    )
}

/// The model of `unixSeconds`: floor(mantissa × 10^(exponent + 3)) milliseconds.
fn floor_millis(mantissa: i128, exponent: i32) -> i128 {
    let shift = exponent + 3;
    if shift >= 0 {
        mantissa * 10i128.pow(shift.unsigned_abs())
    } else {
        mantissa.div_euclid(10i128.pow(shift.unsigned_abs()))
    }
}

/// An RFC 3339 time as its parts, and the model of its milliseconds.
#[derive(Clone, Debug)]
struct Rfc3339Time {
    text: String,
    millis: i128,
}

fn rfc3339_times() -> impl Strategy<Value = Rfc3339Time> {
    let year = prop_oneof![Just(0i64), Just(9999), 0i64..=9999, 1969i64..=1970];
    let month = prop_oneof![Just(1i64), Just(12), 1i64..=12];
    (
        year,
        month,
        0i64..31,
        (0i64..24, 0i64..60, prop_oneof![0i64..61, Just(59), Just(60)]),
        "[0-9]{0,12}",
        prop_oneof![Just(None), (-1439i64..=1439).prop_map(Some)],
        (0u8..3, any::<bool>()),
    )
        .prop_map(
            |(year, month, day, (hour, minute, second), fraction, offset, (separator, lower))| {
                let day = day % days_in_month(year, month) + 1;
                let separator = ["T", "t", " "][usize::from(separator)];
                let offset_text = match offset {
                    None if lower => "z".to_string(),
                    None => "Z".to_string(),
                    Some(minutes) => {
                        let sign = if minutes < 0 { '-' } else { '+' };
                        format!("{sign}{:02}:{:02}", minutes.abs() / 60, minutes.abs() % 60)
                    }
                };
                let fraction_text = if fraction.is_empty() {
                    String::new()
                } else {
                    format!(".{fraction}")
                };
                let text = format!(
                    "{year:04}-{month:02}-{day:02}{separator}{hour:02}:{minute:02}:{second:02}{fraction_text}{offset_text}"
                );
                // Below a millisecond: dropped (the fraction is never negative).
                let fraction_millis: i64 = format!("{fraction:0<3}")[..3].parse().unwrap();
                let millis = days_from_civil(year, month, day) * 86_400_000
                    + ((hour * 60 + minute) * 60 + second) * 1000
                    + fraction_millis
                    - offset.unwrap_or(0) * 60_000;
                Rfc3339Time {
                    text,
                    millis: i128::from(millis),
                }
            },
        )
}

/// A `unixMillis` value: its text and what it must give.
fn unix_millis() -> impl Strategy<Value = (String, Option<i128>, bool)> {
    let value = prop_oneof![
        any::<i64>().prop_map(i128::from),
        (FIRST_MILLISECOND - 3..FIRST_MILLISECOND + 3).prop_map(i128::from),
        (LAST_MILLISECOND - 3..LAST_MILLISECOND + 3).prop_map(i128::from),
        -5i128..5,
        Just(i128::from(i64::MIN) - 1),
        Just(i128::from(u64::MAX) + 1),
    ];
    (value, 0u8..4).prop_map(|(value, style)| match style {
        // An integer: exact, whatever its size.
        0 | 1 => (value.to_string(), Some(value), true),
        // -0 is 0.
        2 if value == 0 => ("-0".to_string(), Some(0), true),
        // A fraction or an exponent is not an integer, even when the value is one.
        2 => (format!("{value}.0"), None, false),
        _ => (format!("{value}e0"), None, false),
    })
}

fn keyed(texts: Vec<String>) -> Vec<(String, String)> {
    texts
        .into_iter()
        .enumerate()
        .map(|(index, text)| (format!("e{index}"), text))
        .collect()
}

/// Events sorted by their model time (untimed ones first), so none is late.
fn by_time<T: Clone>(mut events: Vec<(Option<i128>, T)>) -> Vec<(Option<i128>, T)> {
    events.sort_by_key(|(time, _)| *time);
    events
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn unix_seconds_are_read_from_their_decimal_text(
        generated in prop::collection::vec((seconds(), any::<u8>(), any::<bool>()), 1..40),
    ) {
        let events = by_time(
            generated
                .into_iter()
                .map(|((mantissa, exponent), style, negative_zero)| {
                    let time = floor_millis(mantissa, exponent);
                    (Some(time), spell(mantissa, exponent, style, negative_zero))
                })
                .collect(),
        );
        let job = Job::new(TimeFormat::UnixSeconds, Window::Tumbling { size: 1 })
            .aggregate("n", Function::Count, None);
        let texts: Vec<String> = events.iter().map(|(_, text)| text.clone()).collect();
        let actual = outcomes(&job, &keyed(texts));
        for ((time, text), outcome) in events.iter().zip(actual) {
            prop_assert_eq!(outcome, one_millisecond_window(*time), "{} seconds", text);
        }
    }

    #[test]
    fn rfc3339_times_are_floored_to_the_millisecond(
        times in prop::collection::vec(rfc3339_times(), 1..40),
    ) {
        let events = by_time(
            times
                .into_iter()
                .map(|time| (Some(time.millis), format!("{:?}", time.text)))
                .collect(),
        );
        let job = Job::new(TimeFormat::Rfc3339, Window::Tumbling { size: 1 })
            .aggregate("n", Function::Count, None);
        let texts: Vec<String> = events.iter().map(|(_, text)| text.clone()).collect();
        let actual = outcomes(&job, &keyed(texts));
        for ((time, text), outcome) in events.iter().zip(actual) {
            prop_assert_eq!(outcome, one_millisecond_window(*time), "{}", text);
        }
    }

    #[test]
    fn unix_millis_are_integers_only(
        values in prop::collection::vec(unix_millis(), 1..40),
    ) {
        let events = by_time(
            values
                .into_iter()
                .map(|(text, time, integer)| (time, (text, integer)))
                .collect(),
        );
        let job = Job::new(TimeFormat::UnixMillis, Window::Tumbling { size: 1 })
            .aggregate("n", Function::Count, None);
        let texts: Vec<String> = events.iter().map(|(_, (text, _))| text.clone()).collect();
        let actual = outcomes(&job, &keyed(texts));
        for ((time, (text, integer)), outcome) in events.iter().zip(actual) {
            let expected = if *integer {
                one_millisecond_window(*time)
            } else {
                Outcome::DeadLetter("event-time-invalid".into())
            };
            prop_assert_eq!(outcome, expected, "{} milliseconds", text);
        }
    }
}

/// The windows of an event at `time` by the documented rule, or `None` when one of them
/// would start before year 0000 or end after year 9999.
fn model_windows(window: Window, time: i64) -> Option<Vec<(i64, i64)>> {
    let windows = match window {
        Window::Session { gap } => vec![(time, time + gap)],
        Window::Tumbling { size } => {
            let start = time.div_euclid(size) * size;
            vec![(start, start + size)]
        }
        Window::Sliding { size, slide } => {
            // Every multiple of `slide` in (time - size, time].
            let mut start = (time - size).div_euclid(slide) * slide + slide;
            let mut windows = Vec::new();
            while start <= time {
                windows.push((start, start + size));
                start += slide;
            }
            windows
        }
    };
    windows
        .iter()
        .all(|(start, end)| *start >= FIRST_MILLISECOND && *end <= LAST_MILLISECOND)
        .then_some(windows)
}

fn windows() -> impl Strategy<Value = Window> {
    let size = prop_oneof![
        Just(1i64),
        Just(7),
        Just(60_000),
        Just(3_600_007),
        Just(7 * 86_400_000),
        1i64..100_000,
    ];
    prop_oneof![
        size.clone().prop_map(|size| Window::Tumbling { size }),
        (size.clone(), 1i64..=10).prop_map(|(slide, times)| Window::Sliding {
            size: slide * times,
            slide,
        }),
        (size.clone(), 1i64..=10, 0i64..1000).prop_map(|(slide, times, extra)| {
            Window::Sliding {
                size: slide * times + extra % slide,
                slide,
            }
        }),
        size.prop_map(|gap| Window::Session { gap }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn windows_start_and_end_within_years_0000_to_9999(
        window in windows(),
        offsets in prop::collection::vec((any::<bool>(), 0.0f64..2.5), 1..30),
    ) {
        let reach = match window {
            Window::Tumbling { size } | Window::Sliding { size, .. } => size,
            Window::Session { gap } => gap,
        };
        #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
        let mut times: Vec<i64> = offsets
            .iter()
            .map(|(at_start, fraction)| {
                let offset = (fraction * reach as f64) as i64;
                if *at_start {
                    FIRST_MILLISECOND + offset
                } else {
                    LAST_MILLISECOND - offset
                }
            })
            .collect();
        times.sort_unstable();
        let job = Job::new(TimeFormat::UnixMillis, window).aggregate("n", Function::Count, None);
        let events = keyed(times.iter().map(i64::to_string).collect());
        let actual = outcomes(&job, &events);
        for (time, outcome) in times.iter().zip(actual) {
            let expected = match model_windows(window, *time) {
                Some(windows) => Outcome::Windows(windows),
                None => Outcome::DeadLetter("event-time-out-of-range".into()),
            };
            prop_assert_eq!(outcome, expected, "{:?} at {}", window, time);
        }
    }
}

/// The scale of the model's exact numbers: every double generated here is a multiple of
/// 2^-20, so `value × 2^20` is an exact integer.
const SCALE: i128 = 1 << 20;

/// An aggregate input: its JSON text, its exact value times [`SCALE`], and whether it is
/// an integer (by the documented rule: no fraction, no exponent, not `-0`).
#[derive(Clone, Debug)]
struct Input {
    text: String,
    scaled: i128,
    integer: bool,
}

fn inputs() -> impl Strategy<Value = Input> {
    let integer = prop_oneof![
        Just(i128::from(i64::MIN)),
        Just(i128::from(i64::MAX)),
        Just(i128::from(u64::MAX)),
        Just((1i128 << 53) + 1),
        -3i128..=3,
        any::<i64>().prop_map(i128::from),
        any::<u64>().prop_map(i128::from),
    ]
    .prop_map(|value| Input {
        text: value.to_string(),
        scaled: value * SCALE,
        integer: true,
    });
    // m × 2^e with |m| < 2^53 and e in -20..=10: a double, exactly.
    let double = (-(1i64 << 53) + 1..(1i64 << 53), -20i32..=10, any::<bool>()).prop_map(
        |(mantissa, exponent, exponent_form)| {
            #[allow(clippy::cast_precision_loss)]
            let value = mantissa as f64 * 2f64.powi(exponent);
            let plain = value.to_string();
            let text = if exponent_form || !plain.contains('.') {
                format!("{value:e}")
            } else {
                plain
            };
            Input {
                text,
                scaled: i128::from(mantissa) * (1i128 << (exponent + 20)),
                integer: false,
            }
        },
    );
    let zero_double =
        prop_oneof![Just("-0"), Just("-0.0"), Just("0.0"), Just("0e5")].prop_map(|text| Input {
            text: text.to_string(),
            scaled: 0,
            integer: false,
        });
    prop_oneof![4 => integer, 4 => double, 1 => zero_double]
}

/// The nearest double to `numerator / denominator` (ties to even), from its decimal
/// expansion: 200 digits after the point and a last `1` when more follow, which keeps it
/// on the same side of every halfway point between doubles of these magnitudes, and the
/// standard library's correctly rounded parser. Zero is `0.0`.
fn nearest_double(numerator: i128, denominator: i128) -> f64 {
    let magnitude = numerator.unsigned_abs();
    let denominator = denominator.unsigned_abs();
    let mut text = format!(
        "{}{}.",
        if numerator < 0 { "-" } else { "" },
        magnitude / denominator
    );
    let mut remainder = magnitude % denominator;
    for _ in 0..200 {
        remainder *= 10;
        text.push(char::from(
            b'0' + u8::try_from(remainder / denominator).unwrap(),
        ));
        remainder %= denominator;
    }
    if remainder != 0 {
        text.push('1');
    }
    text.parse::<f64>().unwrap() + 0.0
}

/// What a result field must be: an integer's exact digits, or a double.
#[derive(Clone, Debug, PartialEq)]
enum Expected {
    Integer(i128),
    Double(f64),
}

/// The model of the aggregates of one window, from docs/worker.md "Numbers in results".
fn model_aggregates(values: &[&Input]) -> BTreeMap<&'static str, Expected> {
    let all_integers = values.iter().all(|value| value.integer);
    let total: i128 = values.iter().map(|value| value.scaled).sum();
    let count = i128::try_from(values.len()).unwrap();
    let exact = |scaled: i128| {
        if all_integers {
            Expected::Integer(scaled / SCALE)
        } else {
            Expected::Double(nearest_double(scaled, SCALE))
        }
    };
    let low = values.iter().map(|value| value.scaled).min().unwrap();
    let high = values.iter().map(|value| value.scaled).max().unwrap();
    BTreeMap::from([
        ("n", Expected::Integer(count)),
        ("total", exact(total)),
        ("low", exact(low)),
        ("high", exact(high)),
        (
            "mean",
            Expected::Double(nearest_double(total, count * SCALE)),
        ),
    ])
}

/// A result field's JSON text checked against the model: the same digits for an integer;
/// for a double, a number that is not an integer literal (nor `-0.0`) and reads back as
/// the same double.
fn check_field(text: &str, expected: &Expected) -> Result<(), String> {
    let matches = match expected {
        Expected::Integer(integer) => text == integer.to_string(),
        Expected::Double(double) => {
            text.contains(['.', 'e', 'E'])
                && (!text.starts_with('-') || *double < 0.0)
                && text.parse::<f64>().map(f64::to_bits) == Ok(double.to_bits())
        }
    };
    if matches {
        Ok(())
    } else {
        Err(format!("{text} is not {expected:?}"))
    }
}

fn aggregate_job(window: Window) -> Job {
    let mut job = Job::new(TimeFormat::UnixMillis, window)
        .aggregate("n", Function::Count, None)
        .aggregate("total", Function::Sum, Some("event.value"))
        .aggregate("low", Function::Min, Some("event.value"))
        .aggregate("high", Function::Max, Some("event.value"))
        .aggregate("mean", Function::Avg, Some("event.value"));
    // Nothing is late: every window fires at the end of the input, once.
    job.max_out_of_orderness_millis = 3_600_000;
    job
}

type WindowKey = (String, i64, i64);

/// Windows of 10 s, or sessions with a gap of 4 s, per key, by a batch computation.
fn batch_windows(session: bool, events: &[(u8, i64, Input)]) -> BTreeMap<WindowKey, Vec<&Input>> {
    let mut groups: BTreeMap<WindowKey, Vec<&Input>> = BTreeMap::new();
    if !session {
        for (key, time, input) in events {
            let start = time.div_euclid(10_000) * 10_000;
            groups
                .entry((format!("k{key}"), start, start + 10_000))
                .or_default()
                .push(input);
        }
        return groups;
    }
    let mut by_key: BTreeMap<u8, Vec<(i64, &Input)>> = BTreeMap::new();
    for (key, time, input) in events {
        by_key.entry(*key).or_default().push((*time, input));
    }
    for (key, mut list) in by_key {
        list.sort_by_key(|(time, _)| *time);
        let mut current: Option<(i64, i64, Vec<&Input>)> = None;
        for (time, input) in list {
            match &mut current {
                Some((_, end, members)) if time < *end => {
                    *end = (*end).max(time + 4_000);
                    members.push(input);
                }
                _ => {
                    if let Some((start, end, members)) = current.take() {
                        groups.insert((format!("k{key}"), start, end), members);
                    }
                    current = Some((time, time + 4_000, vec![input]));
                }
            }
        }
        if let Some((start, end, members)) = current {
            groups.insert((format!("k{key}"), start, end), members);
        }
    }
    groups
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn aggregates_are_exact_at_the_edges_of_integers_and_doubles(
        session in any::<bool>(),
        events in prop::collection::vec((0u8..3, 0i64..30_000, inputs()), 1..40),
        cache in prop_oneof![Just(2usize), Just(1000usize)],
    ) {
        let job = aggregate_job(if session {
            Window::Session { gap: 4_000 }
        } else {
            Window::Tumbling { size: 10_000 }
        });
        // Arrival in generated order, not time order: sessions merge in any order.
        let input: String = events
            .iter()
            .map(|(key, time, value)| {
                format!("{{\"key\":\"k{key}\",\"ts\":{time},\"value\":{}}}\n", value.text)
            })
            .collect();
        let (sink, _) = run_text(&job.manifest(), &input, cache);
        prop_assert!(sink.dead_letters.is_empty(), "{:?}", sink.dead_letters);
        let mut expected = batch_windows(session, &events);
        for line in result_lines(&sink) {
            let fields: BTreeMap<String, String> = raw_fields(&line).into_iter().collect();
            let window = (
                serde_json::from_str::<String>(&fields["key"]).unwrap(),
                millis_of_rfc3339(&serde_json::from_str::<String>(&fields["windowStart"]).unwrap()),
                millis_of_rfc3339(&serde_json::from_str::<String>(&fields["windowEnd"]).unwrap()),
            );
            let members = expected.remove(&window);
            prop_assert!(members.is_some(), "an unexpected window: {}", line);
            let members = members.unwrap();
            let texts: Vec<&str> = members.iter().map(|input| input.text.as_str()).collect();
            for (name, model) in model_aggregates(&members) {
                if let Err(problem) = check_field(&fields[name], &model) {
                    prop_assert!(false, "{} of {:?}: {} in {}", name, texts, problem, line);
                }
            }
        }
        prop_assert!(expected.is_empty(), "windows with no result: {:?}", expected.keys());
    }
}

/// A double input `k × 2^1000` (exact), or a small integer.
#[derive(Clone, Debug)]
enum Huge {
    Double(i64),
    Integer(i64),
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn an_event_that_would_take_a_sum_beyond_the_doubles_is_refused(
        values in prop::collection::vec(
            prop_oneof![
                3 => (-(1i64 << 24)..(1i64 << 24)).prop_map(Huge::Double),
                1 => (-1000i64..1000).prop_map(Huge::Integer),
            ],
            1..30,
        ),
    ) {
        let mut job = Job::new(TimeFormat::UnixMillis, Window::Tumbling { size: 1_000 })
            .aggregate("n", Function::Count, None)
            .aggregate("total", Function::Sum, Some("event.value"));
        job.max_out_of_orderness_millis = 1_000;
        let power = 2f64.powi(1000);
        let input: String = values
            .iter()
            .map(|value| {
                #[allow(clippy::cast_precision_loss)]
                let text = match value {
                    Huge::Double(multiple) => format!("{:e}", *multiple as f64 * power),
                    Huge::Integer(integer) => integer.to_string(),
                };
                format!("{{\"key\":\"k\",\"ts\":1,\"value\":{text}}}\n")
            })
            .collect();
        let (sink, _) = run_text(&job.manifest(), &input, 1000);
        // The model: the exact sum is multiples × 2^1000 + integers; it stays a finite
        // double while |multiples| < 2^24 (then the integers are far below its precision).
        let (mut multiples, mut integers, mut count, mut any_double) = (0i64, 0i64, 0i64, false);
        let mut refused = Vec::new();
        for (index, value) in values.iter().enumerate() {
            match value {
                Huge::Double(multiple) => {
                    if (multiples + multiple).abs() >= 1 << 24 {
                        refused.push(index as u64 + 1);
                        continue;
                    }
                    multiples += multiple;
                    any_double = true;
                }
                Huge::Integer(integer) => integers += integer,
            }
            count += 1;
        }
        let refused_lines: Vec<u64> = sink
            .dead_letters
            .iter()
            .map(|rejected| {
                assert_eq!(rejected.reason, "aggregate-overflow");
                assert!(rejected.detail.contains("aggregate total"), "{}", rejected.detail);
                match rejected.position {
                    Some(Position::Line(line)) => line,
                    _ => 0,
                }
            })
            .collect();
        prop_assert_eq!(refused_lines, refused);
        let lines = result_lines(&sink);
        prop_assert_eq!(lines.len(), usize::from(count > 0));
        if let Some(line) = lines.first() {
            let fields: BTreeMap<String, String> = raw_fields(line).into_iter().collect();
            #[allow(clippy::cast_precision_loss)]
            let total = if !any_double {
                Expected::Integer(i128::from(integers))
            } else if multiples != 0 {
                Expected::Double(multiples as f64 * power)
            } else {
                Expected::Double(integers as f64 + 0.0)
            };
            prop_assert_eq!(check_field(&fields["total"], &total), Ok(()));
            prop_assert_eq!(&fields["n"], &count.to_string());
        }
    }
}

#[test]
fn a_sum_beyond_64_bits_has_all_its_digits_and_is_the_nearest_double_after_the_window() {
    // Beyond u64::MAX, the largest integer serde_json holds.
    let input = "{\"key\":\"k\",\"ts\":1,\"value\":18446744073709551615}\n".repeat(2);
    let job = Job::new(TimeFormat::UnixMillis, Window::Tumbling { size: 1_000 })
        .aggregate("total", Function::Sum, Some("event.value"))
        .aggregate("mean", Function::Avg, Some("event.value"));
    let (sink, _) = run_text(&job.manifest(), &input, 1000);
    let fields: BTreeMap<String, String> =
        raw_fields(&result_lines(&sink)[0]).into_iter().collect();
    assert_eq!(fields["total"], "36893488147419103230");
    assert_eq!(
        fields["mean"].parse::<f64>().unwrap(),
        18_446_744_073_709_551_615.0
    );
    // Stages after the window see JSON values, whose integers have 64 bits.
    let mut through_stages = job.clone();
    through_stages.after_window = vec![
        "- filter: \"event.total > 3.0e19\"".into(),
        "- map:\n        total: \"event.total\"".into(),
    ];
    let (sink, _) = run_text(&through_stages.manifest(), &input, 1000);
    let fields: BTreeMap<String, String> =
        raw_fields(&result_lines(&sink)[0]).into_iter().collect();
    assert_eq!(
        fields["total"].parse::<f64>().unwrap(),
        36_893_488_147_419_103_230.0
    );
    assert!(fields["total"].contains(['e', '.']), "{}", fields["total"]);
}

#[test]
fn an_event_whose_session_would_overflow_is_refused_and_the_sessions_stay_apart() {
    // Sessions [0, 4s) and [6s, 10s) each sum 1.5e308; an event at 3s would merge them
    // into one whose sum is beyond the doubles.
    let job =
        {
            let mut job = Job::new(TimeFormat::UnixMillis, Window::Session { gap: 4_000 })
                .aggregate("total", Function::Sum, Some("event.value"));
            job.max_out_of_orderness_millis = 60_000;
            job
        };
    let input = [(0, "1.5e308"), (6_000, "1.5e308"), (3_000, "1.0")]
        .iter()
        .map(|(time, value)| format!("{{\"key\":\"k\",\"ts\":{time},\"value\":{value}}}\n"))
        .collect::<String>();
    let (sink, _) = run_text(&job.manifest(), &input, 1000);
    let reasons: Vec<(&str, Option<Position>)> = sink
        .dead_letters
        .iter()
        .map(|rejected| (rejected.reason.as_str(), rejected.position.clone()))
        .collect();
    assert_eq!(
        reasons,
        vec![("aggregate-overflow", Some(Position::Line(3)))]
    );
    let totals: Vec<(String, f64)> = result_lines(&sink)
        .iter()
        .map(|line| {
            let fields: BTreeMap<String, String> = raw_fields(line).into_iter().collect();
            (
                fields["windowStart"].clone(),
                fields["total"].parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        totals,
        vec![
            ("\"1970-01-01T00:00:00Z\"".to_string(), 1.5e308),
            ("\"1970-01-01T00:00:06Z\"".to_string(), 1.5e308),
        ]
    );
}

#[test]
fn double_inputs_are_the_nearest_doubles_to_their_text() {
    // Texts whose nearest double takes more than one rounding to find (more than 19
    // digits, or a power of ten beyond 10^22).
    let texts = [
        "1.7976931348623157e308",
        "2.2250738585072014e-308",
        "0.1000000000000000055511151231257827021181583404541015625",
        "9007199254740993.000000000000000000001",
        "4.9406564584124654e-324",
        "1.2345678901234567e-300",
        "8.98846567431158e307",
    ];
    let job = Job::new(TimeFormat::UnixMillis, Window::Tumbling { size: 1_000 }).aggregate(
        "high",
        Function::Max,
        Some("event.value"),
    );
    let events: Vec<String> = texts
        .iter()
        .enumerate()
        .map(|(index, text)| format!("{{\"key\":\"e{index}\",\"ts\":1,\"value\":{text}}}\n"))
        .collect();
    let (sink, _) = run_text(&job.manifest(), &events.concat(), 1000);
    let mut highs: BTreeMap<String, String> = BTreeMap::new();
    for line in result_lines(&sink) {
        let fields: BTreeMap<String, String> = raw_fields(&line).into_iter().collect();
        highs.insert(fields["key"].clone(), fields["high"].clone());
    }
    for (index, text) in texts.iter().enumerate() {
        let high = &highs[&format!("\"e{index}\"")];
        assert_eq!(
            high.parse::<f64>().unwrap().to_bits(),
            text.parse::<f64>().unwrap().to_bits(),
            "{text} read as {high}"
        );
    }
}
