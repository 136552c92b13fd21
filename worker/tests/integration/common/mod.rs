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

/// An event-time format, spelled in manifests only by [`TimeFormat::manifest_name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeFormat {
    Rfc3339,
    UnixMillis,
    UnixSeconds,
}

impl TimeFormat {
    /// The manifest's spelling (the one place to change when the CRD's enums change case).
    pub fn manifest_name(self) -> &'static str {
        match self {
            Self::Rfc3339 => "Rfc3339",
            Self::UnixMillis => "UnixMillis",
            Self::UnixSeconds => "UnixSeconds",
        }
    }
}

/// An aggregate function, spelled in manifests only by [`Function::manifest_name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Function {
    Count,
    Sum,
    Min,
    Max,
    Avg,
}

impl Function {
    /// The manifest's spelling (the one place to change when the CRD's enums change case).
    pub fn manifest_name(self) -> &'static str {
        match self {
            Self::Count => "Count",
            Self::Sum => "Sum",
            Self::Min => "Min",
            Self::Max => "Max",
            Self::Avg => "Avg",
        }
    }
}

/// A window, its durations in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    Tumbling { size: i64 },
    Sliding { size: i64, slide: i64 },
    Session { gap: i64 },
}

/// A StreamJob keyed by `event.key`, with its time in the field `ts`: the parts tests vary.
#[derive(Clone, Debug)]
pub struct Job {
    pub format: TimeFormat,
    pub max_out_of_orderness_millis: i64,
    pub window: Window,
    /// `(output name, function, of)`.
    pub aggregates: Vec<(String, Function, Option<String>)>,
    /// Steps after the aggregate, as YAML list items (`- filter: "..."`).
    pub after_window: Vec<String>,
}

impl Job {
    /// A job with no aggregate yet and nothing after the window.
    pub fn new(format: TimeFormat, window: Window) -> Self {
        Self {
            format,
            max_out_of_orderness_millis: 0,
            window,
            aggregates: Vec::new(),
            after_window: Vec::new(),
        }
    }

    /// Adds an aggregate output.
    pub fn aggregate(mut self, name: &str, function: Function, of: Option<&str>) -> Self {
        self.aggregates
            .push((name.to_string(), function, of.map(String::from)));
        self
    }

    /// The manifest.
    pub fn manifest(&self) -> String {
        let window = match self.window {
            Window::Tumbling { size } => format!("tumbling: {{size: {size}ms}}"),
            Window::Sliding { size, slide } => {
                format!("sliding: {{size: {size}ms, slide: {slide}ms}}")
            }
            Window::Session { gap } => format!("session: {{gap: {gap}ms}}"),
        };
        let aggregates: Vec<(&str, &str, Option<&str>)> = self
            .aggregates
            .iter()
            .map(|(name, function, of)| (name.as_str(), function.manifest_name(), of.as_deref()))
            .collect();
        // Zero out-of-orderness means the default's.
        let out_of_orderness = match self.max_out_of_orderness_millis {
            0 => "5s".to_string(),
            millis => format!("{millis}ms"),
        };
        let mut job = job::JobBuilder::new()
            .key_groups(128)
            .time_format(self.format.manifest_name())
            .out_of_orderness(&out_of_orderness)
            .key_by("event.key")
            .window(&window)
            .aggregates(&aggregates);
        for step in &self.after_window {
            job = job.after_window(step.trim_start_matches("- "));
        }
        job.build()
    }
}

/// The top-level fields of a flat JSON object line as their JSON text, in order (results
/// are flat: strings, numbers and bools), so a number is seen exactly as written, digits
/// beyond 64 bits included.
pub fn raw_fields(line: &str) -> Vec<(String, String)> {
    let bytes = line.as_bytes();
    assert_eq!(bytes.first(), Some(&b'{'), "an object: {line}");
    let mut fields = Vec::new();
    let mut position = 1;
    let string_end = |start: usize| {
        let mut index = start + 1;
        while bytes[index] != b'"' {
            index += if bytes[index] == b'\\' { 2 } else { 1 };
        }
        index + 1
    };
    while bytes[position] != b'}' {
        let name_end = string_end(position);
        let name: String = serde_json::from_str(&line[position..name_end]).unwrap();
        assert_eq!(bytes[name_end], b':', "{line}");
        let value_start = name_end + 1;
        let value_end = if bytes[value_start] == b'"' {
            string_end(value_start)
        } else {
            value_start + line[value_start..].find([',', '}']).expect("a value ends")
        };
        fields.push((name, line[value_start..value_end].to_string()));
        position = value_end;
        if bytes[position] == b',' {
            position += 1;
        }
    }
    fields
}
