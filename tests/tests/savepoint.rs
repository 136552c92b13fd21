//! Savepoints against the real broker, with real worker processes: a job rescaled
//! 2 → 3 → 1 through stop-with-savepoint and `--restore-from` commits exactly the results
//! of an uninterrupted run, checked independently as in the chaos test; the admin API
//! refuses savepoint requests without the token.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;
use sluice_e2e::exactly_once::{
    generate, manifest, produce, produce_flush, read_output, verify, work_directory,
};
use sluice_e2e::kafka::TestTopic;
use sluice_e2e::worker::{WorkerProcess, WorkerSpec, http_request, log_tail};
use sluice_e2e::{Environment, unique_name};

const TOKEN: &str = "e2e-admin-token";

struct Job {
    directory: PathBuf,
    manifest: PathBuf,
    savepoints: PathBuf,
}

impl Job {
    fn spec(&self, run: &str, ordinal: u32, parallelism: u32, extra: &[String]) -> WorkerSpec {
        let token = self.directory.join("token");
        let mut arguments = vec![
            "--savepoint-location".to_string(),
            format!("file://{}", self.savepoints.display()),
            "--admin-token-file".into(),
            token.display().to_string(),
        ];
        arguments.extend_from_slice(extra);
        WorkerSpec {
            job: self.manifest.clone(),
            namespace: "savepoints".into(),
            ordinal,
            parallelism,
            state_dir: self.directory.join(format!("{run}-state-{ordinal}")),
            log: self.directory.join(format!("{run}-worker-{ordinal}.log")),
            extra: arguments,
        }
    }

    fn start(
        &self,
        environment: &Environment,
        run: &str,
        parallelism: u32,
        extra: &[String],
    ) -> Result<Vec<WorkerProcess>> {
        let mut workers = Vec::new();
        for ordinal in 0..parallelism {
            let mut worker =
                WorkerProcess::start(environment, &self.spec(run, ordinal, parallelism, extra))?;
            worker.wait_ready(Duration::from_secs(90))?;
            workers.push(worker);
        }
        Ok(workers)
    }
}

fn request(worker: &WorkerProcess, method: &str, path: &str, body: &str) -> Result<(u16, Value)> {
    let (status, text) = http_request(worker.admin, method, path, Some(TOKEN), body)?;
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, value))
}

/// Asks every worker for stop-with-savepoint `id` and waits until all parts are written
/// and the manifest is there; returns the savepoint's location.
fn stop_with_savepoint(workers: &[WorkerProcess], id: &str) -> Result<String> {
    for worker in workers {
        let (status, body) = request(
            worker,
            "POST",
            "/v1/savepoints",
            &format!(r#"{{"id": "{id}", "stop": true}}"#),
        )?;
        ensure!(status == 202, "savepoint request accepted: {status} {body}");
        ensure!(body["id"] == id, "{body}");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut location = None;
    for worker in workers {
        loop {
            let (_, body) = request(worker, "GET", &format!("/v1/savepoints/{id}"), "")?;
            match body["state"].as_str() {
                Some("Completed") => {
                    location = body["location"].as_str().map(str::to_string);
                    break;
                }
                Some("Failed") => bail!(
                    "savepoint {id} failed on worker {}: {body}\n{}",
                    worker.spec.ordinal,
                    log_tail(&worker.spec.log)
                ),
                _ if Instant::now() > deadline => bail!("savepoint {id} not done: {body}"),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
    let location = location.context("a completed savepoint has a location")?;
    let manifest = Path::new(location.trim_start_matches("file://")).join("manifest.json");
    ensure!(
        manifest.exists(),
        "the manifest is written: {}",
        manifest.display()
    );
    Ok(location)
}

fn terminate(workers: Vec<WorkerProcess>) -> Result<()> {
    for mut worker in workers {
        let status = worker.terminate(Duration::from_secs(60))?;
        ensure!(
            status.success(),
            "SIGTERM stops a stopped worker cleanly: {status}\n{}",
            log_tail(&worker.spec.log)
        );
    }
    Ok(())
}

fn job(environment: &Environment, source: &str, sink: &str, partitioning: &str) -> Result<Job> {
    let directory = work_directory("savepoint")?;
    let manifest_path = directory.join("streamjob.yaml");
    let mut manifest = manifest(environment, source, sink);
    manifest["metadata"]["name"] = Value::String(unique_name("rescale"));
    manifest["spec"]["source"]["partitioning"] = Value::String(partitioning.into());
    std::fs::write(&manifest_path, serde_json::to_string_pretty(&manifest)?)?;
    std::fs::write(directory.join("token"), TOKEN)?;
    Ok(Job {
        savepoints: directory.join("savepoints"),
        manifest: manifest_path,
        directory,
    })
}

/// Parallelism 2, stop-with-savepoint after the first third of the input; 3 workers
/// restored from it, stop-with-savepoint after the second third; 1 worker restored from
/// that to the end. The committed output holds each window's result exactly once.
fn rescale_through_savepoints(partitioning: &str) -> Result<()> {
    // The generated keys are on every partition, so only `Any` partitioning (the
    // repartition topic) gives one result per key and window.
    let environment = Environment::load()?;
    let source = TestTopic::create(&environment, "savepoint-in", 4)?;
    let sink = TestTopic::create(&environment, "savepoint-out", 4)?;
    let (input, expected) = generate(60_000, 4, 300);
    let job = job(&environment, &source.name, &sink.name, partitioning)?;
    let thirds: Vec<Vec<Vec<String>>> = (0..3)
        .map(|third| {
            input
                .iter()
                .map(|records| {
                    let size = records.len().div_ceil(3);
                    records
                        .iter()
                        .skip(third * size)
                        .take(size)
                        .cloned()
                        .collect()
                })
                .collect()
        })
        .collect();

    produce(&environment, &source.name, &thirds[0])?;
    let two = job.start(&environment, "two", 2, &[])?;
    // The admin API refuses a savepoint request without the token, and changes nothing.
    let (status, _) = http_request(two[0].admin, "POST", "/v1/savepoints", None, "")?;
    ensure!(status == 401, "no token: {status}");
    let (status, _) = http_request(two[0].admin, "POST", "/v1/savepoints", Some("wrong"), "")?;
    ensure!(status == 401, "a wrong token: {status}");
    let (status, body) = request(&two[0], "GET", "/v1/savepoints", "")?;
    ensure!(status == 200 && body == Value::Array(Vec::new()), "{body}");
    std::thread::sleep(Duration::from_secs(3));
    let first = stop_with_savepoint(&two, "sp-two")?;
    produce(&environment, &source.name, &thirds[1])?;
    terminate(two)?;

    let restore = |location: &str| vec!["--restore-from".to_string(), location.to_string()];
    let three = job.start(&environment, "three", 3, &restore(&first))?;
    std::thread::sleep(Duration::from_secs(4));
    let second = stop_with_savepoint(&three, "sp-three")?;
    produce(&environment, &source.name, &thirds[2])?;
    terminate(three)?;

    let mut extra = restore(&second);
    extra.extend(["--previous-parallelism".to_string(), "3".to_string()]);
    let one = job.start(&environment, "one", 1, &extra)?;
    produce_flush(&environment, &source.name, input.len())?;
    let output = read_output(
        &environment,
        &sink.name,
        expected.len(),
        Instant::now() + Duration::from_secs(300),
    )?;
    let summary = verify(&expected, &output)?;
    eprintln!("savepoint ({partitioning}): rescaled 2 → 3 → 1: {summary}");
    terminate(one)?;
    Ok(())
}

#[test]
fn a_job_rescaled_through_savepoints_commits_each_result_exactly_once() -> Result<()> {
    rescale_through_savepoints("Any")
}
