//! Property tests of the engine against a naive batch computation.
//!
//! Streams are generated in event time, then each event is delayed by a random amount;
//! arrival order is the order of event time plus delay. With delays within the maximum
//! out-of-orderness nothing is late and every window's final result equals the batch
//! result over all events; with longer delays, exactly the events the watermark rule
//! calls late go to the late output, and the rest are counted once.

use crate::common;

use common::job::JobBuilder;

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{Value, json};
use sluice_worker::io::memory::MemorySink;

const OUT_OF_ORDERNESS: i64 = 3_000;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Tumbling,
    Sliding,
    Session,
}

/// Per user, windows of `kind` with `n`, `total`, `low` and `high` of `event.value`, 3s
/// out of order, `allowed_lateness_seconds` of lateness.
fn job(kind: Kind, allowed_lateness_seconds: u64) -> JobBuilder {
    let job = match kind {
        Kind::Tumbling => JobBuilder::tumbling(),
        Kind::Sliding => JobBuilder::sliding(),
        Kind::Session => JobBuilder::session(),
    };
    let lateness = format!("{allowed_lateness_seconds}s");
    job.out_of_orderness("3s")
        .lateness((allowed_lateness_seconds > 0).then_some(lateness.as_str()))
        .aggregates(&[
            ("n", "Count", None),
            ("total", "Sum", Some("event.value")),
            ("low", "Min", Some("event.value")),
            ("high", "Max", Some("event.value")),
        ])
}

fn manifest(kind: Kind, allowed_lateness_seconds: u64) -> String {
    job(kind, allowed_lateness_seconds).build()
}

#[derive(Clone, Debug)]
struct Generated {
    user: u8,
    time: i64,
    value: i64,
    delay: i64,
}

fn events(max_delay: i64) -> impl Strategy<Value = Vec<Generated>> {
    prop::collection::vec((0u8..24, 0i64..60_000, -50i64..50, 0..=max_delay), 1..160).prop_map(
        |raw| {
            raw.into_iter()
                .map(|(user, time, value, delay)| Generated {
                    user,
                    time,
                    value,
                    delay,
                })
                .collect()
        },
    )
}

/// Arrival order: by event time plus delay (stable on ties).
fn arrival(events: &[Generated]) -> Vec<Generated> {
    let mut ordered = events.to_vec();
    ordered.sort_by_key(|event| event.time + event.delay);
    ordered
}

fn input(events: &[Generated]) -> String {
    events
        .iter()
        .map(|event| {
            format!(
                "{{\"user\":\"u{}\",\"ts\":{},\"value\":{}}}\n",
                event.user, event.time, event.value
            )
        })
        .collect()
}

type WindowKey = (String, i64, i64);

/// The batch result of each (key, window) over `events`.
fn batch(kind: Kind, events: &[&Generated]) -> BTreeMap<WindowKey, Value> {
    let mut groups: BTreeMap<WindowKey, Vec<i64>> = BTreeMap::new();
    match kind {
        Kind::Tumbling | Kind::Sliding => {
            let (size, slide) = if matches!(kind, Kind::Tumbling) {
                (10_000, 10_000)
            } else {
                (10_000, 5_000)
            };
            for event in events {
                let mut start = event.time.div_euclid(slide) * slide;
                while start + size > event.time {
                    groups
                        .entry((format!("u{}", event.user), start, start + size))
                        .or_default()
                        .push(event.value);
                    start -= slide;
                }
            }
        }
        Kind::Session => {
            let mut by_user: BTreeMap<u8, Vec<&Generated>> = BTreeMap::new();
            for event in events {
                by_user.entry(event.user).or_default().push(event);
            }
            for (user, mut list) in by_user {
                list.sort_by_key(|event| event.time);
                let mut current: Option<(i64, i64, Vec<i64>)> = None;
                for event in list {
                    match &mut current {
                        Some((_, end, values)) if event.time < *end => {
                            *end = (*end).max(event.time + 4_000);
                            values.push(event.value);
                        }
                        _ => {
                            if let Some((start, end, values)) = current.take() {
                                groups.insert((format!("u{user}"), start, end), values);
                            }
                            current = Some((event.time, event.time + 4_000, vec![event.value]));
                        }
                    }
                }
                if let Some((start, end, values)) = current {
                    groups.insert((format!("u{user}"), start, end), values);
                }
            }
        }
    }
    groups
        .into_iter()
        .map(|(key, values)| {
            let result = json!({
                "n": values.len(),
                "total": values.iter().sum::<i64>(),
                "low": values.iter().min(),
                "high": values.iter().max(),
            });
            (key, result)
        })
        .collect()
}

fn millis(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap()
        .timestamp_millis()
}

/// The last result of each (key, window), checking that the first emission of a window
/// is not an update, every later one is, and none repeats the one before it.
fn final_results(results: &[Value]) -> BTreeMap<WindowKey, Value> {
    let mut finals = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for result in results {
        let key = (
            result["key"].as_str().unwrap().to_string(),
            millis(result["windowStart"].as_str().unwrap()),
            millis(result["windowEnd"].as_str().unwrap()),
        );
        let first = seen.insert(key.clone());
        assert_eq!(result["isUpdate"], json!(!first), "isUpdate of {result}");
        let values = json!({"n": result["n"], "total": result["total"], "low": result["low"], "high": result["high"]});
        // An update carries at least one more event: the same values twice is a window
        // fired twice.
        let previous = finals.insert(key, values.clone());
        assert_ne!(previous, Some(values), "emitted twice unchanged: {result}");
    }
    finals
}

/// The last result of each session that no later result of its key absorbed: a session
/// merged into a larger one (by an event bridging or extending it) is superseded by it.
fn last_sessions(results: &[Value]) -> BTreeMap<WindowKey, Value> {
    let mut last: BTreeMap<WindowKey, Value> = BTreeMap::new();
    for result in results {
        let key = (
            result["key"].as_str().unwrap().to_string(),
            millis(result["windowStart"].as_str().unwrap()),
            millis(result["windowEnd"].as_str().unwrap()),
        );
        last.insert(
            key,
            json!({"n": result["n"], "total": result["total"], "low": result["low"], "high": result["high"]}),
        );
    }
    let ranges: Vec<WindowKey> = last.keys().cloned().collect();
    last.retain(|(user, start, end), _| {
        !ranges.iter().any(|(other_user, other_start, other_end)| {
            other_user == user
                && other_start <= start
                && end <= other_end
                && (other_start, other_end) != (start, end)
        })
    });
    last
}

/// Which arriving events are late by the watermark rule (tumbling and sliding windows).
fn late_by_rule(kind: Kind, arrivals: &[Generated], allowed_lateness: i64) -> Vec<bool> {
    let (size, slide) = if matches!(kind, Kind::Tumbling) {
        (10_000, 10_000)
    } else {
        (10_000, 5_000)
    };
    let mut max_seen: Option<i64> = None;
    arrivals
        .iter()
        .map(|event| {
            let watermark = max_seen.map_or(i64::MIN, |max| max - OUT_OF_ORDERNESS);
            // The last window containing the event ends last: the event is late when even
            // that one expired.
            let last_end = event.time.div_euclid(slide) * slide + size;
            let late = last_end + allowed_lateness <= watermark;
            max_seen = Some(max_seen.map_or(event.time, |max| max.max(event.time)));
            late
        })
        .collect()
}

fn kinds() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Tumbling),
        Just(Kind::Sliding),
        Just(Kind::Session)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn within_the_bound_final_results_equal_the_batch(
        kind in kinds(),
        generated in events(OUT_OF_ORDERNESS),
        cache in prop_oneof![Just(2usize), Just(1000usize)],
    ) {
        let arrivals = arrival(&generated);
        let (sink, summary) = common::run_text(&manifest(kind, 0), &input(&arrivals), cache);
        prop_assert!(sink.late.is_empty());
        prop_assert!(sink.dead_letters.is_empty());
        let everything: Vec<&Generated> = generated.iter().collect();
        let results = sink.result_values();
        prop_assert_eq!(final_results(&results), batch(kind, &everything));
        // With no updates, every result comes from a watermark advance, so the whole
        // output is in emission order: window end, window start, key (its JSON text).
        let order: Vec<(i64, i64, String)> = results
            .iter()
            .map(|result| (
                millis(result["windowEnd"].as_str().unwrap()),
                millis(result["windowStart"].as_str().unwrap()),
                result["key"].to_string(),
            ))
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        prop_assert_eq!(order, sorted);
        prop_assert_eq!(summary.open_windows, 0);
    }

    #[test]
    fn arrival_order_within_the_bound_does_not_change_results(
        kind in kinds(),
        generated in events(OUT_OF_ORDERNESS),
        other_delays in prop::collection::vec(0..=OUT_OF_ORDERNESS, 160),
    ) {
        let first = arrival(&generated);
        let mut reordered = generated.clone();
        for (event, delay) in reordered.iter_mut().zip(other_delays) {
            event.delay = delay;
        }
        let second = arrival(&reordered);
        let (first_sink, _) = common::run_text(&manifest(kind, 0), &input(&first), 1000);
        let (second_sink, _) = common::run_text(&manifest(kind, 0), &input(&second), 3);
        prop_assert_eq!(final_results(&first_sink.result_values()), final_results(&second_sink.result_values()));
    }

    #[test]
    fn events_beyond_the_lateness_are_late_and_nowhere_else(
        kind in prop_oneof![Just(Kind::Tumbling), Just(Kind::Sliding)],
        allowed_lateness_seconds in 0u64..6,
        generated in events(20_000),
        cache in prop_oneof![Just(2usize), Just(1000usize)],
    ) {
        let allowed_lateness = i64::try_from(allowed_lateness_seconds).unwrap() * 1000;
        let arrivals = arrival(&generated);
        let late = late_by_rule(kind, &arrivals, allowed_lateness);
        let (sink, summary) = common::run_text(&manifest(kind, allowed_lateness_seconds), &input(&arrivals), cache);
        let expected_late_lines: Vec<u64> = late.iter().enumerate().filter(|(_, late)| **late).map(|(index, _)| index as u64 + 1).collect();
        let late_lines: Vec<u64> = sink.late.iter().map(|rejected| match rejected.position {
            Some(sluice_worker::io::Position::Line(line)) => line,
            _ => 0,
        }).collect();
        prop_assert_eq!(late_lines, expected_late_lines);
        // The other events are counted exactly once, in windows that were still open:
        // the final result of each window is the batch over the on-time events.
        let on_time: Vec<&Generated> = arrivals.iter().zip(&late).filter(|(_, late)| !**late).map(|(event, _)| event).collect();
        let finals = final_results(&sink.result_values());
        let expected = batch(kind, &on_time);
        // A window only late events would have created never exists; every other
        // window's final result matches the batch over on-time events of windows not
        // expired when they arrived.
        for (window, result) in &finals {
            let contributing: Vec<&Generated> = contributing_events(kind, &arrivals, &late, window, allowed_lateness);
            let expected_window = batch(kind, &contributing).remove(window);
            prop_assert_eq!(Some(result.clone()), expected_window, "window {:?}", window);
        }
        for window in expected.keys() {
            let contributing = contributing_events(kind, &arrivals, &late, window, allowed_lateness);
            prop_assert_eq!(finals.contains_key(window), !contributing.is_empty(), "window {:?}", window);
        }
        prop_assert_eq!(summary.late, late.iter().filter(|late| **late).count() as u64);
        prop_assert_eq!(summary.open_windows, 0);
    }

    #[test]
    fn disorder_within_the_allowed_lateness_gives_the_batch_results(
        kind in kinds(),
        allowed_lateness_seconds in 1u64..6,
        seed_events in events(0),
        delays in prop::collection::vec(0i64..=1_000_000, 160),
        cache in prop_oneof![Just(2usize), Just(1000usize)],
    ) {
        // Delays up to the out-of-orderness plus the allowed lateness: some events arrive
        // after their windows fired, none after they expired. Nothing is late, and once
        // every update is in, each window's last result is the batch result over all
        // events (for sessions: over the sessions the merges end with).
        let allowed_lateness = i64::try_from(allowed_lateness_seconds).unwrap() * 1000;
        let bound = OUT_OF_ORDERNESS + allowed_lateness;
        let mut generated = seed_events;
        for (event, delay) in generated.iter_mut().zip(delays) {
            event.delay = delay % (bound + 1);
        }
        let arrivals = arrival(&generated);
        let (sink, summary) = common::run_text(&manifest(kind, allowed_lateness_seconds), &input(&arrivals), cache);
        prop_assert!(sink.late.is_empty(), "late: {:?}", sink.late);
        let everything: Vec<&Generated> = generated.iter().collect();
        let finals = match kind {
            Kind::Session => last_sessions(&sink.result_values()),
            _ => final_results(&sink.result_values()),
        };
        prop_assert_eq!(finals, batch(kind, &everything));
        prop_assert_eq!(summary.open_windows, 0);
    }

    #[test]
    fn sessions_with_lateness_give_the_same_output_whatever_the_cache(
        allowed_lateness_seconds in 1u64..12,
        generated in events(20_000),
    ) {
        // Late merges, updates and expiries of sessions, with every key in memory and
        // with keys spilling to RocksDB and coming back: the same output, line for line.
        let manifest = manifest(Kind::Session, allowed_lateness_seconds);
        let input = input(&arrival(&generated));
        let (large, large_summary) = common::run_text(&manifest, &input, 1000);
        let (small, small_summary) = common::run_text(&manifest, &input, 2);
        // (A merged session is a new range that may carry `isUpdate: true`, so the
        // per-range rules of `final_results` do not apply; a repeat still does.)
        let mut emitted = std::collections::BTreeSet::new();
        for result in large.result_values() {
            prop_assert!(emitted.insert(result.to_string()), "emitted twice: {}", result);
        }
        prop_assert_eq!(large.result_values(), small.result_values());
        prop_assert_eq!(&large.late, &small.late);
        prop_assert_eq!(small_summary.open_windows, 0);
        prop_assert_eq!(large_summary, small_summary);
    }
}

/// The on-time events that reach `window`: those in it that arrived while it had not
/// expired (an event can be on time for a later window and too late for an earlier one).
fn contributing_events<'a>(
    kind: Kind,
    arrivals: &'a [Generated],
    late: &[bool],
    window: &WindowKey,
    allowed_lateness: i64,
) -> Vec<&'a Generated> {
    let _ = kind;
    let mut max_seen: Option<i64> = None;
    let mut contributing = Vec::new();
    for (event, is_late) in arrivals.iter().zip(late) {
        let watermark = max_seen.map_or(i64::MIN, |max| max - OUT_OF_ORDERNESS);
        let user = format!("u{}", event.user);
        if !is_late
            && user == window.0
            && window.1 <= event.time
            && event.time < window.2
            && window.2 + allowed_lateness > watermark
        {
            contributing.push(event);
        }
        max_seen = Some(max_seen.map_or(event.time, |max| max.max(event.time)));
    }
    contributing
}

/// Each result as (key, isUpdate, window start, window end, total), for short tests.
fn key_update_window_total(sink: &MemorySink) -> Vec<(String, bool, i64, i64, Value)> {
    sink.result_values()
        .iter()
        .map(|result| {
            (
                result["key"].as_str().unwrap().to_string(),
                result["isUpdate"].as_bool().unwrap(),
                millis(result["windowStart"].as_str().unwrap()),
                millis(result["windowEnd"].as_str().unwrap()),
                result["total"].clone(),
            )
        })
        .collect()
}

/// JSON lines of `lines`.
fn lines_of(lines: &[&str]) -> String {
    lines.iter().map(|line| format!("{line}\n")).collect()
}

#[test]
fn a_late_event_bridging_two_fired_sessions_merges_them_into_an_update() {
    let manifest = job(Kind::Session, 30).out_of_orderness("1s").build();
    // Two sessions of u1: [0, 4s) and [6s, 10s). An event at 20s moves the watermark to
    // 19s: both fire. Then an event at 3s (session [3s, 7s)) arrives within the allowed
    // lateness and overlaps both: the merged session [0, 10s) is emitted as an update.
    let lines = [
        r#"{"user":"u1","ts":0,"value":1}"#,
        r#"{"user":"u1","ts":6000,"value":2}"#,
        r#"{"user":"u2","ts":20000,"value":100}"#,
        r#"{"user":"u1","ts":3000,"value":4}"#,
    ];
    let input = lines_of(&lines);
    let (sink, _) = common::run_text(&manifest, &input, 1000);
    let results = key_update_window_total(&sink);
    assert_eq!(
        results,
        vec![
            ("u1".to_string(), false, 0, 4_000, json!(1)),
            ("u1".to_string(), false, 6_000, 10_000, json!(2)),
            ("u1".to_string(), true, 0, 10_000, json!(7)),
            ("u2".to_string(), false, 20_000, 24_000, json!(100)),
        ]
    );
    assert!(sink.late.is_empty());
}

/// A key evicted from the cache keeps its window's timer in the store; when the key comes
/// back and an event extends the same session range, the new timer must not fire the
/// window a second time (a duplicate result with `isUpdate: true`).
#[test]
fn a_session_reloaded_from_the_store_fires_once() {
    let manifest = job(Kind::Session, 10).out_of_orderness("1s").build();
    let lines = [
        r#"{"user":"a","ts":0,"value":1}"#,
        r#"{"user":"b","ts":100,"value":2}"#,
        r#"{"user":"a","ts":0,"value":3}"#,
        r#"{"user":"a","ts":10000,"value":4}"#,
    ];
    let input = lines_of(&lines);
    for cache in [1, 1000] {
        let (sink, _) = common::run_text(&manifest, &input, cache);
        let results = key_update_window_total(&sink);
        assert_eq!(
            results,
            vec![
                ("a".to_string(), false, 0, 4_000, json!(4)),
                ("b".to_string(), false, 100, 4_100, json!(2)),
                ("a".to_string(), false, 10_000, 14_000, json!(4)),
            ],
            "cache of {cache} keys"
        );
    }
}

/// An expired session is forgotten: a later event inside its range that is on time for its
/// own session starts a new one, overlapping the first (docs/worker.md, "Sessions after
/// expiry").
#[test]
fn an_event_inside_an_expired_session_starts_a_new_one() {
    let manifest = job(Kind::Session, 10).out_of_orderness("1s").build();
    let lines = [
        r#"{"user":"a","ts":0,"value":1}"#,
        r#"{"user":"b","ts":16000,"value":2}"#,
        r#"{"user":"a","ts":3900,"value":3}"#,
    ];
    let input = lines_of(&lines);
    let (sink, _) = common::run_text(&manifest, &input, 1000);
    let results = key_update_window_total(&sink);
    assert_eq!(
        results,
        vec![
            ("a".to_string(), false, 0, 4_000, json!(1)),
            ("a".to_string(), false, 3_900, 7_900, json!(3)),
            ("b".to_string(), false, 16_000, 20_000, json!(2)),
        ]
    );
    assert!(sink.late.is_empty());
}
