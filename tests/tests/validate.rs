//! `validate` answers as the API server does: every manifest under `tests/fixtures/` is
//! sent to `sluice-worker validate`, to `sluice-controller validate` and to the real API
//! server (`kubectl apply --dry-run=server`, kubectl's default strict field validation),
//! and all three must give the same verdict, except where validate is deliberately
//! stricter (`tests/fixtures/stricter/`, each with the reason the API server cannot see
//! the problem). Neither binary may be killed by a signal or panic, and each must stay
//! under [`MAX_PEAK_MEMORY_KIB`] on every fixture, including generated ones of a
//! megabyte (too large to commit).
//!
//! The folders:
//! - `valid/`: both accept; validate's report contains each `# expect-offline:` line.
//! - `invalid/`: both refuse; the API server's message contains `# expect:`, validate's
//!   contains `# expect-offline:` when it words it differently, else `# expect:`.
//! - `stricter/`: the API server accepts, validate refuses with `# expect-offline:`;
//!   `# stricter:` says why only validate can see it (the controller sets `Stalled`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail, ensure};
use sluice_e2e::{Environment, TestNamespace, install_crd, repo_files};

/// The most memory (peak resident set, KiB) `validate` may use on any manifest.
const MAX_PEAK_MEMORY_KIB: u64 = 100 * 1024;

/// What the fixture says both sides must answer.
#[derive(Debug)]
enum Expected {
    /// Both accept; validate's report contains each of these lines (`# expect-offline:`).
    Valid {
        offline: Vec<String>,
    },
    Invalid {
        server: String,
        offline: String,
    },
    Stricter {
        offline: String,
    },
    /// Generated: refused by both, with these words offline.
    Refused {
        offline: String,
    },
}

/// A fixture's header line `# <name>: <text>`.
fn header(text: &str, name: &str) -> Option<String> {
    text.lines()
        .take_while(|line| line.starts_with('#'))
        .find_map(|line| line.strip_prefix(&format!("# {name}: ")))
        .map(|value| value.trim().to_string())
        .filter(|value| !value.is_empty())
}

/// Every header line `# <name>: <text>`, in order.
fn headers(text: &str, name: &str) -> Vec<String> {
    text.lines()
        .take_while(|line| line.starts_with('#'))
        .filter_map(|line| line.strip_prefix(&format!("# {name}: ")))
        .map(|value| value.trim().to_string())
        .collect()
}

fn expected_of(folder: &str, path: &Path) -> Result<Expected> {
    // Bytes: some fixtures are UTF-16 or hold bytes that are not UTF-8, as kubectl reads
    // them (the headers are ASCII where the folder needs them).
    let bytes =
        std::fs::read(path).with_context(|| format!("failed to read {}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let required = |name: &str| {
        header(&text, name)
            .with_context(|| format!("{} has no `# {name}: ` header", path.display()))
    };
    Ok(match folder {
        "valid" => Expected::Valid {
            offline: headers(&text, "expect-offline"),
        },
        "invalid" => {
            let server = required("expect")?;
            let offline = header(&text, "expect-offline").unwrap_or_else(|| server.clone());
            Expected::Invalid { server, offline }
        }
        "stricter" => {
            required("stricter")?;
            Expected::Stricter {
                offline: required("expect-offline")?,
            }
        }
        _ => bail!("unknown fixture folder {folder}"),
    })
}

/// What one run of a `validate` command did.
struct Run {
    accepted: bool,
    output: String,
    peak_kib: u64,
}

/// Runs `program arguments… path` under GNU time, which reports the peak resident set
/// and whether a signal ended it.
fn run_measured(program: &Path, arguments: &[&str], path: &Path) -> Result<Run> {
    let report = std::env::temp_dir().join(format!("{}.time", sluice_e2e::unique_name("validate")));
    let output = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("peak=%M")
        .arg("-o")
        .arg(&report)
        .arg(program)
        .args(arguments)
        .arg(path)
        .output()
        .context("failed to run /usr/bin/time (`make deps` installs it)")?;
    let measured = std::fs::read_to_string(&report)
        .with_context(|| format!("failed to read {}", report.display()))?;
    let _ = std::fs::remove_file(&report);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let line = format!(
        "{} {} {}",
        program.display(),
        arguments.join(" "),
        path.display()
    );
    ensure!(
        !measured.contains("terminated by signal"),
        "{line} was killed by a signal: {measured}\n{text}"
    );
    ensure!(!text.contains("panicked"), "{line} panicked:\n{text}");
    let code = output.status.code();
    ensure!(
        matches!(code, Some(0 | 1)),
        "{line} exited with {:?}, expected 0 (valid) or 1 (invalid):\n{text}",
        output.status
    );
    let peak_kib = measured
        .lines()
        .find_map(|line| line.strip_prefix("peak="))
        .and_then(|value| value.trim().parse().ok())
        .with_context(|| format!("no peak memory in {measured:?}"))?;
    Ok(Run {
        accepted: code == Some(0),
        output: text,
        peak_kib,
    })
}

/// Manifests too large to commit, generated here: the megabyte expressions of issue 17
/// that used 500 MB and crashed validate, and annotations near kubectl apply's limit.
fn generated_manifests(directory: &Path) -> Result<Vec<(PathBuf, Expected)>> {
    const MEGABYTE: usize = 1 << 20;
    let manifest = |name: &str, filter: &str| {
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: StreamJob\nmetadata:\n  name: {name}\nspec:\n  kafka: {{bootstrapServers: kafka:9092}}\n  source: {{topics: [in], eventTime: {{field: ts}}}}\n  pipeline:\n  - filter: \"{filter}\"\n  sink: {{topic: out}}\n"
        )
    };
    let or_chain = vec!["event.a == 1"; MEGABYTE / 16].join(" || ");
    let sum_chain = format!("{} > 0", vec!["1"; MEGABYTE / 4].join(" + "));
    let parentheses = format!("{}true{}", "(".repeat(100_000), ")".repeat(100_000));
    let mut manifests = Vec::new();
    for (name, filter) in [
        ("megabyte-of-or", or_chain),
        ("megabyte-of-plus", sum_chain),
        ("nested-parentheses", parentheses),
    ] {
        let path = directory.join(format!("{name}.yaml"));
        std::fs::write(&path, manifest(name, &filter))
            .with_context(|| format!("failed to write {}", path.display()))?;
        manifests.push((
            path,
            Expected::Refused {
                offline: "must be at most 4096 characters long".to_string(),
            },
        ));
    }
    // `kubectl apply` copies the object into its last-applied-configuration annotation,
    // and all annotations may take 256 KiB: a large annotation of the job's own, or of
    // its pod template, is refused that way however small the job's annotations are.
    let annotated = |name: &str, metadata: usize, pod: usize| {
        manifest(name, "event.status == 200")
            .replace(
                &format!("  name: {name}\n"),
                &format!(
                    "  name: {name}\n  annotations: {{a: '{}'}}\n",
                    "x".repeat(metadata)
                ),
            )
            .replace(
                "  sink: {topic: out}\n",
                &format!(
                    "  sink: {{topic: out}}\n  podTemplate: {{annotations: {{a: '{}'}}}}\n",
                    "x".repeat(pod)
                ),
            )
    };
    let too_long = || Expected::Invalid {
        server: "metadata.annotations: Too long: may not be more than 262144 bytes".to_string(),
        offline: "too long for `kubectl apply`".to_string(),
    };
    for (name, metadata, pod, expected) in [
        ("annotation-140k", 140_000, 1, too_long()),
        ("pod-annotation-300k", 1, 300_000, too_long()),
        (
            "pod-annotation-120k",
            1,
            120_000,
            Expected::Valid {
                offline: Vec::new(),
            },
        ),
    ] {
        let path = directory.join(format!("{name}.yaml"));
        std::fs::write(&path, annotated(name, metadata, pod))
            .with_context(|| format!("failed to write {}", path.display()))?;
        manifests.push((path, expected));
    }
    Ok(manifests)
}

#[tokio::test]
async fn validate_gives_the_api_servers_verdict_on_every_fixture() -> Result<()> {
    let environment = Environment::load()?;
    let client = environment.client().await?;
    install_crd(&client).await?;
    let worker = sluice_e2e::built_binary("SLUICE_WORKER_BIN", "sluice-worker")?;
    let controller = sluice_e2e::built_binary("SLUICE_CONTROLLER_BIN", "sluice-controller")?;
    let namespace = TestNamespace::create(&client, "e2e-validate").await?;
    let generated = std::env::temp_dir().join(sluice_e2e::unique_name("validate-fixtures"));
    std::fs::create_dir_all(&generated)?;
    let result = async {
        let mut manifests = Vec::new();
        for folder in ["valid", "invalid", "stricter"] {
            let files = repo_files(&format!("tests/fixtures/{folder}"), ".yaml")?;
            ensure!(!files.is_empty(), "no fixtures in tests/fixtures/{folder}");
            for path in files {
                let expected = expected_of(folder, &path)?;
                manifests.push((path, expected));
            }
        }
        manifests.extend(generated_manifests(&generated)?);

        let mut failures = Vec::new();
        let mut peak = (0, PathBuf::new());
        for (path, expected) in &manifests {
            let name = path.display();
            let server = Command::new(&environment.kubectl)
                .args(["apply", "--dry-run=server", "-n", &namespace.name, "-f"])
                .arg(path)
                .env("KUBECONFIG", &environment.kubeconfig)
                .output()
                .context("failed to run kubectl")?;
            let server_accepted = server.status.success();
            let server_says = String::from_utf8_lossy(&server.stderr).into_owned();
            let mut offline = Vec::new();
            for (program, arguments) in [
                (&worker, ["validate", "--job"]),
                (&controller, ["validate", "--job"]),
            ] {
                match run_measured(program, &arguments, path) {
                    Ok(run) => {
                        if run.peak_kib > peak.0 {
                            peak = (run.peak_kib, path.clone());
                        }
                        if run.peak_kib > MAX_PEAK_MEMORY_KIB {
                            failures.push(format!(
                                "{name}: {} used {} KiB, more than {MAX_PEAK_MEMORY_KIB}",
                                program.display(),
                                run.peak_kib
                            ));
                        }
                        offline.push(run);
                    }
                    Err(error) => failures.push(format!("{name}: {error:#}")),
                }
            }
            let [worker_run, controller_run] = offline.as_slice() else {
                continue;
            };
            if worker_run.accepted != controller_run.accepted
                || worker_run.output != controller_run.output
            {
                failures.push(format!(
                    "{name}: sluice-worker validate and sluice-controller validate do not say the same:\n{}\n{}",
                    worker_run.output, controller_run.output
                ));
            }
            let verdict = |accepted: bool| if accepted { "accepted" } else { "refused" };
            let mismatch = |want_server: bool, want_offline: bool| {
                (server_accepted != want_server || worker_run.accepted != want_offline).then(|| {
                    format!(
                        "{name}: the API server {} it (expected {}), validate {} it (expected {}):\nkubectl: {server_says}\nvalidate: {}",
                        verdict(server_accepted),
                        verdict(want_server),
                        verdict(worker_run.accepted),
                        verdict(want_offline),
                        worker_run.output
                    )
                })
            };
            let (problem, server_words, offline_words) = match expected {
                Expected::Valid { offline } => {
                    for words in offline {
                        if !worker_run.output.contains(words.as_str()) {
                            failures.push(format!(
                                "{name}: validate's report does not contain {words:?}: {}",
                                worker_run.output
                            ));
                        }
                    }
                    (mismatch(true, true), None, None)
                }
                Expected::Invalid { server, offline } => {
                    (mismatch(false, false), Some(server), Some(offline))
                }
                Expected::Stricter { offline } => (mismatch(true, false), None, Some(offline)),
                Expected::Refused { offline } => (mismatch(false, false), None, Some(offline)),
            };
            failures.extend(problem);
            if let Some(words) = server_words
                && !server_accepted
                && !server_says.contains(words.as_str())
            {
                failures.push(format!(
                    "{name}: the API server's message does not contain {words:?}: {server_says}"
                ));
            }
            if let Some(words) = offline_words
                && !worker_run.accepted
                && !worker_run.output.contains(words.as_str())
            {
                failures.push(format!(
                    "{name}: validate's message does not contain {words:?}: {}",
                    worker_run.output
                ));
            }
        }
        println!(
            "{} manifests; validate's largest peak memory: {} KiB ({})",
            manifests.len(),
            peak.0,
            peak.1.display()
        );
        if !failures.is_empty() {
            bail!(
                "{} of {} checks failed:\n{}",
                failures.len(),
                manifests.len(),
                failures.join("\n\n")
            );
        }
        Ok(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&generated);
    namespace.delete().await?;
    result
}
