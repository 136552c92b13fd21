//! The size of the hot-state cache changes where state lives, never the output: the same
//! input gives the same results, late events and dead letters with a cache that holds every
//! open window and with one that keeps spilling to RocksDB.

use crate::common;

fn input() -> String {
    // 60,000 page views over 3,000 pages, 10 minutes of event time, up to 4s out of order,
    // some stragglers past the allowed lateness and some broken lines.
    let mut state: u64 = 7;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        state >> 33
    };
    let mut lines = String::new();
    for index in 0..60_000u64 {
        let roll = next() % 1000;
        if roll == 0 {
            lines.push_str("{\"timestamp\":\n");
            continue;
        }
        let mut millis = i64::try_from(index * 10).unwrap() - i64::try_from(next() % 4000).unwrap();
        if roll < 3 {
            millis -= 100_000;
        }
        let time = chrono::DateTime::from_timestamp_millis(1_795_687_200_000 + millis)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let page = next() % 3000;
        let status = if next() % 10 == 0 { 500 } else { 200 };
        let latency = next() % 1000;
        lines.push_str(&format!(
            "{{\"timestamp\":\"{time}\",\"url\":\"/p/{page}\",\"status\":{status},\"latencyMs\":{latency}}}\n"
        ));
    }
    lines
}

#[test]
fn a_small_cache_gives_the_same_output_as_a_large_one() {
    let manifest =
        std::fs::read_to_string(common::examples_directory().join("page-views/streamjob.yaml"))
            .unwrap();
    let input = input();
    let (large, large_summary) = common::run_text(&manifest, &input, 1_000_000);
    let (small, small_summary) = common::run_text(&manifest, &input, 50);
    assert!(
        large.results.len() > 10_000,
        "{} results",
        large.results.len()
    );
    assert!(!large.late.is_empty() && !large.dead_letters.is_empty());
    assert!(large.results == small.results, "results differ");
    assert_eq!(large.late, small.late);
    assert_eq!(large.dead_letters, small.dead_letters);
    assert_eq!(large_summary, small_summary);
}
