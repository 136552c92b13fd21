//! Every example under `examples/` produces exactly its expected results, dead letters
//! and late events: through the library, and through the `sluice-worker local` binary.

use crate::common;

use std::process::Command;

use common::*;
use serde_json::Value;
use sluice_worker::io::Position;

#[test]
fn there_are_examples() {
    assert!(
        example_directories().len() >= 2,
        "{:?}",
        example_directories()
    );
}

#[test]
fn examples_through_the_library() {
    for directory in example_directories() {
        let name = directory.file_name().unwrap().to_string_lossy().to_string();
        let manifest = std::fs::read_to_string(directory.join("streamjob.yaml")).unwrap();
        let input = std::fs::read_to_string(directory.join("input.jsonl")).unwrap();
        let (sink, summary) = run_text(&manifest, &input, 1000);
        let results: Vec<String> = sink
            .results
            .iter()
            .map(|record| String::from_utf8(record.value.clone()).unwrap())
            .collect();
        assert_results_equal(&results, &expected_results(&directory), &name);
        let line = |position: &Option<Position>| match position {
            Some(Position::Line(line)) => *line,
            other => panic!("{name}: unexpected position {other:?}"),
        };
        let dead_letters: Vec<(u64, String)> = sink
            .dead_letters
            .iter()
            .map(|rejected| (line(&rejected.position), rejected.reason.clone()))
            .collect();
        assert_dead_letters_match(&dead_letters, &expected_dead_letters(&directory), &name);
        let late: Vec<u64> = sink
            .late
            .iter()
            .map(|rejected| line(&rejected.position))
            .collect();
        assert_eq!(late, expected_late(&directory), "{name}: late lines");
        // Rejected events keep their original bytes, untouched.
        let input_lines: Vec<&str> = input.lines().collect();
        for rejected in sink.dead_letters.iter().chain(&sink.late) {
            let number = usize::try_from(line(&rejected.position)).unwrap();
            assert_eq!(
                rejected.original,
                input_lines[number - 1].as_bytes(),
                "{name}: original of line {number}"
            );
        }
        assert_eq!(
            summary.open_windows, 0,
            "{name}: state left after the end of input"
        );
        assert_eq!(summary.results_out as usize, sink.results.len());
    }
}

#[test]
fn examples_through_the_binary() {
    for directory in example_directories() {
        let name = directory.file_name().unwrap().to_string_lossy().to_string();
        let output_directory = tempfile::tempdir().unwrap();
        let output = output_directory.path().join("results.jsonl");
        let dead_letters = output_directory.path().join("dead-letters.jsonl");
        let late = output_directory.path().join("late.jsonl");
        let job = directory.join("streamjob.yaml");
        let input = directory.join("input.jsonl");
        let status = run_local_binary(
            [
                "--job".as_ref(),
                job.as_os_str(),
                "--input".as_ref(),
                input.as_os_str(),
                "--output".as_ref(),
                output.as_os_str(),
                "--dead-letter".as_ref(),
                dead_letters.as_os_str(),
                "--late".as_ref(),
                late.as_os_str(),
            ],
            &name,
        );
        assert_results_equal(
            &meaningful_lines(&output),
            &expected_results(&directory),
            &name,
        );
        let envelopes = |path: &std::path::Path| -> Vec<Value> {
            meaningful_lines(path)
                .iter()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect()
        };
        let input: Vec<String> = std::fs::read_to_string(directory.join("input.jsonl"))
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        let dead: Vec<(u64, String)> = envelopes(&dead_letters)
            .iter()
            .map(|envelope| {
                let line = envelope["line"].as_u64().unwrap();
                assert_eq!(
                    envelope["original"].as_str().unwrap(),
                    input[usize::try_from(line).unwrap() - 1],
                    "{name}"
                );
                assert!(!envelope["detail"].as_str().unwrap().is_empty());
                (line, envelope["reason"].as_str().unwrap().to_string())
            })
            .collect();
        assert_dead_letters_match(&dead, &expected_dead_letters(&directory), &name);
        let late_lines: Vec<u64> = envelopes(&late)
            .iter()
            .map(|envelope| {
                assert_eq!(envelope["reason"], "late");
                envelope["line"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(late_lines, expected_late(&directory), "{name}: late lines");
        let summary = String::from_utf8_lossy(&status.stderr);
        assert!(
            summary.contains("events in:") && summary.contains("local run finished"),
            "{name}: no summary or log in {summary}"
        );
        // stderr is a pipe here, not a terminal: the log must be plain text.
        assert!(
            !summary.contains('\u{1b}'),
            "{name}: terminal colour codes in a redirected log: {summary:?}"
        );
    }
}

#[test]
fn the_binary_reads_stdin_and_writes_stdout() {
    let directory = examples_directory().join("page-views");
    let input = std::fs::read(directory.join("input.jsonl")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-worker"))
        .args(["local", "--quiet", "--job"])
        .arg(directory.join("streamjob.yaml"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let results: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_results_equal(
        &results,
        &expected_results(&directory),
        "page-views from stdin",
    );
}

#[test]
fn validate_accepts_the_examples_and_explains_errors() {
    for directory in example_directories() {
        let output = Command::new(env!("CARGO_BIN_EXE_sluice-worker"))
            .arg("validate")
            .arg("--job")
            .arg(directory.join("streamjob.yaml"))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let broken = std::fs::read_to_string(examples_directory().join("page-views/streamjob.yaml"))
        .unwrap()
        .replace("keyBy: \"event.page\"", "keyBy: \"event.missing\"");
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("broken.yaml");
    std::fs::write(&path, broken).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice-worker"))
        .arg("validate")
        .arg("--job")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("spec.pipeline[2].keyBy"), "{message}");
    assert!(message.contains("missing"), "{message}");
}

#[test]
fn every_command_has_help() {
    for command in [
        &["--help"][..],
        &["local", "--help"],
        &["validate", "--help"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_sluice-worker"))
            .args(command)
            .output()
            .unwrap();
        assert!(output.status.success(), "{command:?}");
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("Usage"),
            "{command:?}"
        );
    }
}

#[test]
fn a_state_directory_is_used_only_when_empty() {
    let directory = examples_directory().join("page-views");
    let state = tempfile::tempdir().unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_sluice-worker"))
            .args(["local", "--quiet", "--output", "-", "--job"])
            .arg(directory.join("streamjob.yaml"))
            .arg("--input")
            .arg(directory.join("input.jsonl"))
            .arg("--state-dir")
            .arg(state.path())
            .output()
            .unwrap()
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        std::fs::read_dir(state.path()).unwrap().next().is_some(),
        "RocksDB files are kept"
    );
    let second = run();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("is not empty"));
}
