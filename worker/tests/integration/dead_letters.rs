//! Every kind of bad event lands on the dead-letter output with its reason, its original
//! bytes and its line, is counted, and processing goes on.

use crate::common;

use common::job::JobBuilder;
use common::run_text;
use serde_json::json;
use sluice_worker::io::Position;

/// Filters, a key, a map after it, and aggregates over 10s windows; the sink key and the
/// dead-letter topic set.
fn manifest() -> String {
    JobBuilder::new()
        .out_of_orderness("1s")
        .step("filter: \"event.kind != 'skip'\"")
        .step("filter: event.flag")
        .key_by("event.page")
        .before_window("map: {size: event.size}")
        .window("tumbling: {size: 10s}")
        .aggregates(&[
            ("a_total", "Sum", Some("event.size")),
            ("b_scaled", "Max", Some("event.size * 2")),
            ("count", "Count", None),
        ])
        .sink_key("event.key + '-out'")
        .set("/sink/deadLetterTopic", serde_json::json!("dead"))
        .build()
}

/// (input line, the reason it must get; empty: no dead letter).
const EVENTS: [(&str, &str); 17] = [
    (
        r#"{"ts":1000,"kind":"a","flag":true,"page":"home","size":3}"#,
        "",
    ),
    (r#"{"ts":"#, "decode-invalid-json"),
    (r#"[1,2]"#, "decode-not-an-object"),
    (
        r#"{"kind":"a","flag":true,"page":"home","size":1}"#,
        "event-time-missing",
    ),
    (
        r#"{"ts":"soon","kind":"a","flag":true,"page":"home","size":1}"#,
        "event-time-invalid",
    ),
    (
        r#"{"ts":99999999999999999,"kind":"a","flag":true,"page":"home","size":1}"#,
        "event-time-out-of-range",
    ),
    (
        r#"{"ts":2000,"flag":true,"page":"home","size":1}"#,
        "filter-error",
    ),
    (
        r#"{"ts":2000,"kind":"a","flag":"yes","page":"home","size":1}"#,
        "filter-not-bool",
    ),
    (
        r#"{"ts":2000,"kind":"a","flag":true,"size":1}"#,
        "key-error",
    ),
    (
        r#"{"ts":2000,"kind":"a","flag":true,"page":[1],"size":1}"#,
        "key-unsupported-type",
    ),
    (
        r#"{"ts":2000,"kind":"a","flag":true,"page":"home"}"#,
        "map-error",
    ),
    (
        r#"{"ts":2000,"kind":"a","flag":true,"page":"home","size":"big"}"#,
        "aggregate-not-number",
    ),
    (
        r#"{"ts":2000,"kind":"a","flag":true,"page":"home","size":2.5}"#,
        "aggregate-error",
    ),
    (
        r#"{"ts":3000,"kind":"a","flag":true,"page":7,"size":1}"#,
        "",
    ),
    (
        r#"{"ts":3500,"kind":"skip","flag":true,"page":"home","size":100}"#,
        "",
    ),
    (
        r#"{"ts":4000,"kind":"a","flag":true,"page":"home","size":4}"#,
        "",
    ),
    (r#""just a string""#, "decode-not-an-object"),
];

#[test]
fn every_kind_of_bad_event_is_a_dead_letter_and_processing_continues() {
    let input: String = EVENTS.iter().map(|(line, _)| format!("{line}\n")).collect();
    let (sink, summary) = run_text(&manifest(), &input, 100);

    let from_input: Vec<(u64, String, Vec<u8>)> = sink
        .dead_letters
        .iter()
        .filter_map(|rejected| match &rejected.position {
            Some(Position::Line(line)) => {
                Some((*line, rejected.reason.clone(), rejected.original.clone()))
            }
            _ => None,
        })
        .collect();
    let expected: Vec<(u64, String, Vec<u8>)> = EVENTS
        .iter()
        .enumerate()
        .filter(|(_, (_, reason))| !reason.is_empty())
        .map(|(index, (line, reason))| {
            (
                index as u64 + 1,
                reason.to_string(),
                line.as_bytes().to_vec(),
            )
        })
        .collect();
    assert_eq!(from_input, expected);

    // The result of key 7 fails the sink key (int + string): a dead letter of the result.
    let sink_key_failures: Vec<_> = sink
        .dead_letters
        .iter()
        .filter(|rejected| rejected.position.is_none())
        .collect();
    assert_eq!(sink_key_failures.len(), 1);
    assert_eq!(sink_key_failures[0].reason, "sink-key-error");
    let original: serde_json::Value =
        serde_json::from_slice(&sink_key_failures[0].original).unwrap();
    assert_eq!(original["key"], json!(7));

    // Processing went on: the good events of "home" are counted, the bad ones not at all.
    let results = sink.result_values();
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0]["key"], json!("home"));
    assert_eq!(results[0]["a_total"], json!(7));
    assert_eq!(results[0]["b_scaled"], json!(8));
    assert_eq!(results[0]["count"], json!(2));
    assert_eq!(sink.results[0].key.as_deref(), Some(&b"home-out"[..]));

    let mut reasons: Vec<&str> = sink
        .dead_letters
        .iter()
        .map(|rejected| rejected.reason.as_str())
        .collect();
    reasons.sort_unstable();
    reasons.dedup();
    assert!(reasons.len() >= 10, "{reasons:?}");
    assert_eq!(summary.dead_letters_total(), sink.dead_letters.len() as u64);
    assert_eq!(summary.dead_letters.get("decode-not-an-object"), Some(&2));
    assert_eq!(summary.dead_letters.get("sink-key-error"), Some(&1));
    assert_eq!(summary.filtered, 1);
    assert_eq!(summary.events_in, EVENTS.len() as u64);
    for rejected in &sink.dead_letters {
        assert!(!rejected.detail.is_empty(), "{rejected:?}");
    }
}

/// Local mode's dead-letter file keeps every byte of a rejected line: a line ending
/// (`\n` or `\r\n`) is framing and dropped once, anything else stays, and a line that is not
/// UTF-8 comes back byte for byte as `originalBase64`.
#[test]
fn dead_letter_envelopes_keep_the_original_bytes() {
    use base64::prelude::{BASE64_STANDARD, Engine as _};
    let directory = tempfile::tempdir().unwrap();
    let job = directory.path().join("job.yaml");
    std::fs::write(&job, manifest()).unwrap();
    let input = directory.path().join("input.jsonl");
    let lines: [&[u8]; 4] = [
        b"{\"ts\":1000,\"kind\":\"a\",\"flag\":true,\"page\":\"home\",\"size\":3}\r\n",
        b"{\"ts\": broken\r\r\n",
        b"{\"ts\":1000,\"page\":\"caf\xe9\"}\n",
        b"  {\"ts\" \t",
    ];
    std::fs::write(&input, lines.concat()).unwrap();
    let dead_letters = directory.path().join("dead.jsonl");
    let out = directory.path().join("out.jsonl");
    common::run_local_binary(
        [
            "--quiet".as_ref(),
            "--job".as_ref(),
            job.as_os_str(),
            "--input".as_ref(),
            input.as_os_str(),
            "--output".as_ref(),
            out.as_os_str(),
            "--dead-letter".as_ref(),
            dead_letters.as_os_str(),
        ],
        "dead letters with their original bytes",
    );
    let envelopes: Vec<serde_json::Value> = std::fs::read_to_string(&dead_letters)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let originals: Vec<(u64, Vec<u8>)> = envelopes
        .iter()
        .filter(|envelope| envelope.get("line").is_some())
        .map(|envelope| {
            let bytes = match (envelope.get("original"), envelope.get("originalBase64")) {
                (Some(text), None) => text.as_str().unwrap().as_bytes().to_vec(),
                (None, Some(encoded)) => BASE64_STANDARD.decode(encoded.as_str().unwrap()).unwrap(),
                other => panic!("an envelope with one original: {other:?} in {envelope}"),
            };
            (envelope["line"].as_u64().unwrap(), bytes)
        })
        .collect();
    assert_eq!(
        originals,
        vec![
            (2, b"{\"ts\": broken\r".to_vec()),
            (3, b"{\"ts\":1000,\"page\":\"caf\xe9\"}".to_vec()),
            (4, b"  {\"ts\" \t".to_vec()),
        ]
    );
}

/// A UTF-8 byte-order mark at the start of the input is not part of the first event; one
/// anywhere else is part of its line.
#[test]
fn a_byte_order_mark_at_the_start_of_the_input_is_skipped() {
    let first = r#"{"ts":1000,"kind":"a","flag":true,"page":"home","size":3}"#;
    let later = r#"{"ts":2000,"kind":"a","flag":true,"page":"home","size":4}"#;
    let input = format!("\u{feff}{first}\n\u{feff}{later}\n");
    let (sink, summary) = run_text(&manifest(), &input, 100);
    let results = sink.result_values();
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0]["a_total"], json!(3));
    assert_eq!(summary.events_in, 2);
    assert_eq!(sink.dead_letters.len(), 1, "{:?}", sink.dead_letters);
    assert_eq!(sink.dead_letters[0].reason, "decode-invalid-json");
    assert_eq!(sink.dead_letters[0].position, Some(Position::Line(2)));
    assert_eq!(
        sink.dead_letters[0].original,
        format!("\u{feff}{later}").into_bytes()
    );

    // The mark of a line that is not an event is not kept in its original either.
    let (sink, _) = run_text(&manifest(), "\u{feff}{\"ts\":\n", 100);
    assert_eq!(sink.dead_letters[0].original, b"{\"ts\":".to_vec());
}
