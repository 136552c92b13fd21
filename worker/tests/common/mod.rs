//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::Cursor;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sluice_worker::engine::EngineOptions;
use sluice_worker::io::file::LineSource;
use sluice_worker::io::memory::MemorySink;
use sluice_worker::local::{LocalOptions, Summary};

/// The repository's `examples/` directory.
pub fn examples_directory() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Every example directory, sorted.
pub fn example_directories() -> Vec<PathBuf> {
    let mut directories: Vec<PathBuf> = std::fs::read_dir(examples_directory())
        .expect("examples/ exists")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.join("streamjob.yaml").is_file())
        .collect();
    directories.sort();
    directories
}

/// JSON equality where numbers compare by value (21 equals 21.0).
pub fn json_equal(left: &Value, right: &Value) -> bool {
    match (left, right) {
        (Value::Number(a), Value::Number(b)) => match (a.as_i64(), b.as_i64()) {
            (Some(a), Some(b)) => a == b,
            _ => {
                let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
                a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
            }
        },
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(key, value)| b.get(key).is_some_and(|other| json_equal(value, other)))
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| json_equal(x, y))
        }
        _ => left == right,
    }
}

/// Asserts two lists of JSON values are equal, in order, numbers by value.
pub fn assert_results_equal(actual: &[Value], expected: &[Value], context: &str) {
    let render = |values: &[Value]| {
        values
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        actual.len() == expected.len()
            && actual.iter().zip(expected).all(|(a, b)| json_equal(a, b)),
        "{context}: results differ\n--- actual\n{}\n--- expected\n{}",
        render(actual),
        render(expected)
    );
}

/// Lines of a file without blank lines and `#` comments.
pub fn meaningful_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(String::from)
        .collect()
}

/// The expected results of an example.
pub fn expected_results(directory: &Path) -> Vec<Value> {
    meaningful_lines(&directory.join("expected-output.jsonl"))
        .iter()
        .map(|line| serde_json::from_str(line).expect("expected output is JSON"))
        .collect()
}

/// `(line, reason prefix)` of the expected dead letters.
pub fn expected_dead_letters(directory: &Path) -> Vec<(u64, String)> {
    meaningful_lines(&directory.join("expected-dead-letters.txt"))
        .iter()
        .map(|line| {
            let (number, prefix) = line.split_once(' ').expect("`<line> <reason prefix>`");
            (
                number.parse().expect("a line number"),
                prefix.trim().to_string(),
            )
        })
        .collect()
}

/// Lines of the expected late events.
pub fn expected_late(directory: &Path) -> Vec<u64> {
    meaningful_lines(&directory.join("expected-late.txt"))
        .iter()
        .map(|line| line.parse().expect("a line number"))
        .collect()
}

/// Asserts that actual `(line, reason)` dead letters match the expected prefixes.
pub fn assert_dead_letters_match(
    actual: &[(u64, String)],
    expected: &[(u64, String)],
    context: &str,
) {
    assert_eq!(
        actual.iter().map(|(line, _)| *line).collect::<Vec<_>>(),
        expected.iter().map(|(line, _)| *line).collect::<Vec<_>>(),
        "{context}: dead-letter lines (actual {actual:?})"
    );
    for ((line, reason), (_, prefix)) in actual.iter().zip(expected) {
        assert!(
            reason.starts_with(prefix.as_str()),
            "{context}: line {line} has reason {reason}, expected {prefix}..."
        );
    }
}

/// Runs a manifest over input text through the library, in memory, with RocksDB state in
/// a temporary directory.
pub fn run_text(manifest: &str, input: &str, cache_entries: usize) -> (MemorySink, Summary) {
    let (_, checked) =
        sluice_crds::load_manifest(manifest).unwrap_or_else(|error| panic!("{error}"));
    let mut source = LineSource::new(Box::new(Cursor::new(input.as_bytes().to_vec())));
    let mut sink = MemorySink::default();
    let directory = tempfile::tempdir().unwrap();
    let options = LocalOptions {
        engine: EngineOptions {
            state_cache_entries: cache_entries,
        },
        progress_interval: None,
    };
    let summary =
        sluice_worker::local::run(&checked, &mut source, &mut sink, directory.path(), &options)
            .unwrap();
    (sink, summary)
}
