//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod job;

use std::io::Cursor;
use std::path::{Path, PathBuf};

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

/// Asserts that results are exactly the expected lines: the same text, so field order,
/// number formatting (`300.0` is not `300`) and spacing are checked too.
pub fn assert_results_equal(actual: &[String], expected: &[String], context: &str) {
    assert!(
        actual == expected,
        "{context}: results differ\n--- actual\n{}\n--- expected\n{}",
        actual.join("\n"),
        expected.join("\n")
    );
}

/// Lines of a file without blank lines and `#` comments; a missing file fails the test
/// (an expectation that is not there must not pass as "nothing expected").
pub fn meaningful_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("failed to read {}: {error}", path.display()))
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(String::from)
        .collect()
}

/// The expected results of an example: the exact lines `sluice-worker local` prints.
pub fn expected_results(directory: &Path) -> Vec<String> {
    meaningful_lines(&directory.join("expected-output.jsonl"))
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

/// Runs `sluice-worker local` with `arguments`, asserting it succeeded (`context` names
/// the run in the failure).
pub fn run_local_binary<I, S>(arguments: I, context: &str) -> std::process::Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-worker"))
        .arg("local")
        .args(arguments)
        .output()
        .expect("sluice-worker runs");
    assert!(
        output.status.success(),
        "{context}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
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
