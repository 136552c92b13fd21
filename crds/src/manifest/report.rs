//! The `validate` command: `sluice-worker validate` and `sluice-controller validate` give
//! the same report and exit code, word for word, from here.

use std::path::Path;
use std::process::ExitCode;

use super::ManifestError;

/// Checks the manifest file at `path` and prints the report: on stdout when every
/// StreamJob is valid (exit 0), on stderr when one is not (exit 1, for a pre-commit hook),
/// or why the file cannot be read (exit 2).
pub fn validate_file(path: &Path) -> ExitCode {
    // Bytes, not text: kubectl reads UTF-16 with a byte-order mark and invalid UTF-8 too.
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) => {
            eprintln!(
                "error: failed to read the StreamJob {}: {error}",
                path.display()
            );
            return ExitCode::from(2);
        }
    };
    let (report, valid) = validation_report(&path.display().to_string(), &bytes);
    if valid {
        print!("{report}");
        ExitCode::SUCCESS
    } else {
        eprint!("{report}");
        ExitCode::FAILURE
    }
}

/// What `validate` says about a manifest file: each StreamJob by name, valid or with every
/// problem, and the documents of other kinds it skipped. The flag is whether every
/// StreamJob is valid (and there is at least one).
pub fn validation_report(file: &str, bytes: &[u8]) -> (String, bool) {
    use std::fmt::Write as _;
    let manifest = match super::load_manifests_bytes(bytes) {
        Ok(manifest) => manifest,
        Err(error) => return (format!("{file}: {error}\n"), false),
    };
    let mut report = String::new();
    let several = manifest.jobs.len() + manifest.skipped.len() > 1;
    for skipped in &manifest.skipped {
        let _ = writeln!(
            report,
            "{file}: document {}{} is {} {} {}, not a StreamJob: skipped (validate checks only StreamJobs)",
            skipped.document,
            skipped
                .item
                .map(|item| format!(" item {item}"))
                .unwrap_or_default(),
            skipped.api_version,
            skipped.kind,
            skipped.name.as_deref().unwrap_or("(unnamed)")
        );
    }
    if manifest.jobs.is_empty() {
        let _ = writeln!(report, "{file}: {}", ManifestError::NoStreamJob);
        return (report, false);
    }
    let mut valid = true;
    for job in &manifest.jobs {
        let name = job.name.as_deref().unwrap_or("(unnamed)");
        let label = if let Some(item) = job.item {
            format!(
                "{file}: document {} (line {}) item {item}: StreamJob {name}",
                job.document, job.line
            )
        } else if several {
            format!(
                "{file}: document {} (line {}): StreamJob {name}",
                job.document, job.line
            )
        } else {
            format!("{file}: StreamJob {name}")
        };
        match &job.result {
            Ok((_, checked)) => {
                let _ = writeln!(
                    report,
                    "{label} is valid ({} pipeline steps)",
                    checked.pipeline.step_count()
                );
            }
            Err(ManifestError::Invalid(errors)) => {
                valid = false;
                let _ = writeln!(
                    report,
                    "{label} is invalid, {} problem(s):",
                    errors.errors.len()
                );
                for error in &errors.errors {
                    let _ = writeln!(report, "  {}: {}", error.field, error.message);
                }
            }
            Err(error) => {
                valid = false;
                let _ = writeln!(report, "{label} is invalid: {error}");
            }
        }
    }
    (report, valid)
}
