//! Savepoints against the real broker, with real worker processes: a job rescaled
//! 2 → 3 → 1 through stop-with-savepoint and `--restore-from` commits exactly the results
//! of an uninterrupted run, checked independently as in the chaos test, with its
//! savepoints on a volume (`file://`) and on the cluster's S3 server (`s3://`, SeaweedFS);
//! `sluice-worker savepoint list | check | delete` against S3; a worker killed while its
//! part is being uploaded leaves no restorable savepoint, reports it failed, and goes on
//! exactly once; the admin API refuses savepoint requests without the token.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;
use sluice_e2e::exactly_once::{
    generate, manifest, produce, produce_flush, read_output, verify, work_directory,
};
use sluice_e2e::kafka::TestTopic;
use sluice_e2e::s3_gate::S3Gate;
use sluice_e2e::worker::{WorkerProcess, WorkerSpec, http_request, log_tail, worker_binary};
use sluice_e2e::{Environment, S3Settings, unique_name};

const TOKEN: &str = "e2e-admin-token";

/// Where a test's savepoints go.
enum Store {
    /// A directory of the test's.
    File,
    /// A prefix of its own in the cluster's S3 bucket, through `endpoint` (the server's,
    /// or a gate's in front of it).
    S3 {
        settings: S3Settings,
        endpoint: String,
    },
}

struct Job {
    directory: PathBuf,
    manifest: PathBuf,
    /// `spec.savepoints.location` (the worker's `--savepoint-location`).
    location: String,
    /// The `AWS_*` variables of an `s3://` location, for workers and the command line.
    env: Vec<(String, String)>,
    namespace: String,
    name: String,
}

impl Job {
    fn spec(&self, run: &str, ordinal: u32, parallelism: u32, extra: &[String]) -> WorkerSpec {
        let token = self.directory.join("token");
        let mut arguments = vec![
            "--savepoint-location".to_string(),
            self.location.clone(),
            "--admin-token-file".into(),
            token.display().to_string(),
        ];
        arguments.extend_from_slice(extra);
        WorkerSpec {
            job: self.manifest.clone(),
            namespace: self.namespace.clone(),
            ordinal,
            parallelism,
            state_dir: self.directory.join(format!("{run}-state-{ordinal}")),
            log: self.directory.join(format!("{run}-worker-{ordinal}.log")),
            extra: arguments,
            env: self.env.clone(),
        }
    }

    /// The job's savepoints: `<location>/<namespace>/<name>`.
    fn savepoints(&self) -> String {
        format!("{}/{}/{}", self.location, self.namespace, self.name)
    }

    /// `sluice-worker savepoint ARGS`: its exit code and output.
    fn savepoint_command(&self, arguments: &[&str]) -> Result<(i32, String)> {
        let output = Command::new(worker_binary()?)
            .arg("savepoint")
            .args(arguments)
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .output()
            .context("failed to run sluice-worker savepoint")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok((output.status.code().unwrap_or(-1), text))
    }

    /// `savepoint list` of the job: each savepoint's id and state (complete, incomplete).
    fn list(&self) -> Result<Vec<(String, String)>> {
        let (code, text) = self.savepoint_command(&["list", &self.savepoints()])?;
        ensure!(
            code == 0,
            "savepoint list {} failed: {text}",
            self.savepoints()
        );
        Ok(text
            .lines()
            .skip(1)
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                Some((words.next()?.to_string(), words.next()?.to_string()))
            })
            .collect())
    }

    /// `savepoint check --job MANIFEST --savepoint LOCATION`.
    fn check(&self, manifest: &Path, savepoint: &str) -> Result<(i32, String)> {
        self.savepoint_command(&[
            "check",
            "--job",
            &manifest.display().to_string(),
            "--savepoint",
            savepoint,
        ])
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
    let mut manifest = false;
    for worker in workers {
        let (_, body) = request(worker, "GET", &format!("/v1/savepoints/{id}"), "")?;
        manifest |= body["manifest"] == true;
    }
    ensure!(
        manifest,
        "no worker reports the manifest of {location} written"
    );
    Ok(location)
}

/// The input (records per partition) in three consecutive parts, each with a third of
/// every partition's records.
fn thirds(input: &[Vec<String>]) -> Vec<Vec<Vec<String>>> {
    parts(input, 3)
}

/// The input (records per partition) in `count` consecutive parts, each with that share
/// of every partition's records.
fn parts(input: &[Vec<String>], count: usize) -> Vec<Vec<Vec<String>>> {
    (0..count)
        .map(|part| {
            input
                .iter()
                .map(|records| {
                    let size = records.len().div_ceil(count);
                    records
                        .iter()
                        .skip(part * size)
                        .take(size)
                        .cloned()
                        .collect()
                })
                .collect()
        })
        .collect()
}

/// How many records a part of the input holds.
fn count_of(part: &[Vec<String>]) -> usize {
    part.iter().map(Vec::len).sum()
}

/// Waits until the workers together have read `events` source events since they started,
/// so that the next savepoint holds state, not only offsets.
fn wait_for_events(workers: &[WorkerProcess], events: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let read: f64 = workers
            .iter()
            .map(|worker| {
                worker
                    .metric("sluice_worker_events_in_total")
                    .unwrap_or(0.0)
            })
            .sum();
        if read >= events as f64 {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the workers read {read} of {events} events in 120 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
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

fn job(
    environment: &Environment,
    source: &str,
    sink: &str,
    partitioning: &str,
    store: &Store,
) -> Result<Job> {
    let directory = work_directory("savepoint")?;
    let manifest_path = directory.join("streamjob.yaml");
    let name = unique_name("rescale");
    let namespace = "savepoints".to_string();
    let mut manifest = manifest(environment, source, sink);
    manifest["metadata"]["name"] = Value::String(name.clone());
    // As the controller would run it: `savepoint check` takes the job's identity from here.
    manifest["metadata"]["namespace"] = Value::String(namespace.clone());
    manifest["spec"]["source"]["partitioning"] = Value::String(partitioning.into());
    std::fs::write(&manifest_path, serde_json::to_string_pretty(&manifest)?)?;
    std::fs::write(directory.join("token"), TOKEN)?;
    let (location, env) = match store {
        Store::File => (
            format!("file://{}", directory.join("savepoints").display()),
            Vec::new(),
        ),
        Store::S3 { settings, endpoint } => (
            format!("s3://{}/e2e/{}", settings.bucket, unique_name("savepoints")),
            settings.worker_env(endpoint),
        ),
    };
    Ok(Job {
        manifest: manifest_path,
        directory,
        location,
        env,
        namespace,
        name,
    })
}

/// The job's manifest with a tumbling window of 2 s instead of 1 s, which cannot restore
/// its savepoints.
fn incompatible_manifest(job: &Job) -> Result<PathBuf> {
    let mut manifest: Value = serde_json::from_str(&std::fs::read_to_string(&job.manifest)?)?;
    manifest["spec"]["pipeline"][1] = serde_json::json!({"window": {"tumbling": {"size": "2s"}}});
    let path = job.directory.join("streamjob-window-2s.yaml");
    std::fs::write(&path, serde_json::to_string_pretty(&manifest)?)?;
    Ok(path)
}

/// Parallelism 2, stop-with-savepoint after the first quarter of the input; 3 workers
/// restored from it, stop-with-savepoint after the second quarter; 1 worker restored from
/// that, stop-with-savepoint after the third; 2 workers restored from that to the end.
/// The committed output holds each window's result exactly once. Returns the job and its
/// three savepoints' locations.
fn rescale_through_savepoints(
    partitioning: &str,
    store: &Store,
) -> Result<(Job, String, String, String)> {
    // The generated keys are on every partition, so only `Any` partitioning (the
    // repartition topic) gives one result per key and window.
    let environment = Environment::load()?;
    let source = TestTopic::create(&environment, "savepoint-in", 4)?;
    let sink = TestTopic::create(&environment, "savepoint-out", 4)?;
    let (input, expected) = generate(60_000, 4, 300);
    let job = job(&environment, &source.name, &sink.name, partitioning, store)?;
    let parts = parts(&input, 4);

    produce(&environment, &source.name, &parts[0])?;
    let two = job.start(&environment, "two", 2, &[])?;
    // The admin API refuses a savepoint request without the token, and changes nothing.
    let (status, _) = http_request(two[0].admin, "POST", "/v1/savepoints", None, "")?;
    ensure!(status == 401, "no token: {status}");
    let (status, _) = http_request(two[0].admin, "POST", "/v1/savepoints", Some("wrong"), "")?;
    ensure!(status == 401, "a wrong token: {status}");
    let (status, body) = request(&two[0], "GET", "/v1/savepoints", "")?;
    ensure!(status == 200 && body == Value::Array(Vec::new()), "{body}");
    wait_for_events(&two, count_of(&parts[0]) / 2)?;
    let first = stop_with_savepoint(&two, "sp-two")?;
    produce(&environment, &source.name, &parts[1])?;
    terminate(two)?;

    let restore = |location: &str| vec!["--restore-from".to_string(), location.to_string()];
    let three = job.start(&environment, "three", 3, &restore(&first))?;
    wait_for_events(&three, count_of(&parts[1]) / 2)?;
    let second = stop_with_savepoint(&three, "sp-three")?;
    produce(&environment, &source.name, &parts[2])?;
    terminate(three)?;

    let mut extra = restore(&second);
    extra.extend(["--previous-parallelism".to_string(), "3".to_string()]);
    let one = job.start(&environment, "one", 1, &extra)?;
    wait_for_events(&one, count_of(&parts[2]) / 2)?;
    if partitioning == "Any" {
        // The one worker owns every key group. The three stopped right after committing
        // the watermark records of their last checkpoint, which no keyed side read: it
        // reads them (and whatever else they left) before it keeps its keyed events in
        // process.
        let log = std::fs::read_to_string(&one[0].spec.log)?;
        let drained = log
            .lines()
            .find(|line| line.contains("read what earlier runs left in the repartition topic"));
        ensure!(
            drained.is_some_and(|line| line.contains("\"in_process\":true")),
            "the one worker read what the three left in the repartition topic, then kept \
             its keyed events in process; log: {}",
            log_tail(&one[0].spec.log)
        );
        eprintln!(
            "savepoint ({partitioning}): {}",
            drained.unwrap_or_default()
        );
    }
    let third = stop_with_savepoint(&one, "sp-one")?;
    produce(&environment, &source.name, &parts[3])?;
    terminate(one)?;

    // Two workers again, from a savepoint of the one in process: the repartition topic
    // is read from the offsets and clocks its checkpoints kept.
    let two_again = job.start(&environment, "two-again", 2, &restore(&third))?;
    produce_flush(&environment, &source.name, input.len())?;
    let output = read_output(
        &environment,
        &sink.name,
        expected.len(),
        Instant::now() + Duration::from_secs(300),
    )?;
    let summary = verify(&expected, &output)?;
    eprintln!(
        "savepoint ({partitioning}, {}): rescaled 2 → 3 → 1 → 2: {summary}",
        job.location
    );
    terminate(two_again)?;
    Ok((job, first, second, third))
}

#[test]
fn a_job_rescaled_through_savepoints_commits_each_result_exactly_once() -> Result<()> {
    rescale_through_savepoints("Any", &Store::File).map(|_| ())
}

/// The same through S3, then the command line against S3: the three savepoints listed
/// complete, the job's manifest can restore them and a 2 s window cannot, and deleting the
/// first keeps the later ones (which share its table files) whole and restorable.
#[test]
fn a_job_rescaled_through_s3_savepoints_commits_each_result_exactly_once() -> Result<()> {
    let settings = S3Settings::load()?;
    let endpoint = settings.endpoint.clone();
    let (job, first, second, third) =
        rescale_through_savepoints("Any", &Store::S3 { settings, endpoint })?;
    ensure!(
        first.starts_with(&format!("{}/", job.savepoints())),
        "the savepoint {first} is in the job's directory {}",
        job.savepoints()
    );

    let listed = job.list()?;
    let expected = vec![
        ("sp-one".to_string(), "complete".to_string()),
        ("sp-three".to_string(), "complete".to_string()),
        ("sp-two".to_string(), "complete".to_string()),
    ];
    ensure!(listed == expected, "savepoint list: {listed:?}");

    let (code, text) = job.check(&job.manifest, &first)?;
    ensure!(
        code == 0 && text.contains("can restore"),
        "check {first}: {code} {text}"
    );
    let (code, text) = job.check(&incompatible_manifest(&job)?, &second)?;
    ensure!(
        code == 1 && text.contains("window"),
        "check of a 2 s window against {second}: {code} {text}"
    );

    let (code, text) = job.savepoint_command(&["delete", &first])?;
    ensure!(
        code == 0 && text.contains("deleted savepoint sp-two"),
        "delete {first}: {code} {text}"
    );
    eprintln!("savepoint delete {first}: {}", text.trim());
    let listed = job.list()?;
    ensure!(
        listed == expected[..2],
        "savepoint list after deleting sp-two: {listed:?}"
    );
    // Each later savepoint is still whole once its ancestors went (check fetches every
    // file and its checksum; the last was taken in process), then goes too.
    for (location, gone) in [(&second, "its parent"), (&third, "its ancestors")] {
        let (code, text) = job.check(&job.manifest, location)?;
        ensure!(
            code == 0 && text.contains("can restore"),
            "check {location} after deleting {gone}: {code} {text}"
        );
        let (code, text) = job.savepoint_command(&["delete", location])?;
        ensure!(code == 0, "delete {location}: {code} {text}");
    }
    ensure!(
        job.list()?.is_empty(),
        "savepoints left in {}",
        job.savepoints()
    );
    Ok(())
}

/// Waits until savepoint `id` of `worker` is `Completed` with its manifest written.
fn wait_completed(worker: &WorkerProcess, id: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, body) = request(worker, "GET", &format!("/v1/savepoints/{id}"), "")?;
        match body["state"].as_str() {
            Some("Completed") if body["manifest"] == true => {
                return body["location"]
                    .as_str()
                    .map(str::to_string)
                    .context("a completed savepoint has a location");
            }
            Some("Failed") => bail!("savepoint {id} failed: {body}"),
            _ if Instant::now() > deadline => bail!("savepoint {id} not done: {body}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Asks `worker` for savepoint `id`, waits until the gate holds the request `hold` picks
/// (the upload is stuck there), and kills the worker (SIGKILL). Then: the savepoint has no
/// manifest, `savepoint check` refuses it and says why, and the restarted worker reports
/// it failed.
fn kill_during_upload(
    environment: &Environment,
    job: &Job,
    gate: &S3Gate,
    mut worker: WorkerProcess,
    id: &str,
    hold: impl Fn(&sluice_e2e::s3_gate::Request, usize) -> bool + Send + 'static,
) -> Result<WorkerProcess> {
    gate.hold_when(hold);
    let (status, body) = request(
        &worker,
        "POST",
        "/v1/savepoints",
        &format!(r#"{{"id": "{id}", "stop": true}}"#),
    )?;
    ensure!(status == 202, "savepoint {id} accepted: {status} {body}");
    let held = gate
        .wait_held(Duration::from_secs(60))
        .with_context(|| log_tail(&worker.spec.log))?;
    let (_, body) = request(&worker, "GET", &format!("/v1/savepoints/{id}"), "")?;
    ensure!(
        body["state"] == "InProgress",
        "savepoint {id} is being uploaded while {} {} is held: {body}",
        held.method,
        held.target
    );
    worker.kill()?;
    gate.open();
    eprintln!(
        "savepoint {id}: worker killed while {} {} was held",
        held.method, held.target
    );

    let broken = format!("{}/{id}", job.savepoints());
    let listed = job.list()?;
    ensure!(
        !listed.contains(&(id.to_string(), "complete".to_string())),
        "the interrupted savepoint {id} is listed complete: {listed:?}"
    );
    let (code, text) = job.check(&job.manifest, &broken)?;
    ensure!(
        code == 1 && text.contains("no manifest.json"),
        "check of the interrupted savepoint {broken}: exit {code}, {text}"
    );
    eprintln!("savepoint check {broken}: exit {code}: {}", text.trim());

    let restarted = job.start(environment, "crash", 1, &[])?;
    let worker = restarted.into_iter().next().context("one worker")?;
    let (_, body) = request(&worker, "GET", &format!("/v1/savepoints/{id}"), "")?;
    ensure!(
        body["state"] == "Failed"
            && body["reason"]
                .as_str()
                .is_some_and(|reason| reason.contains("restarted")),
        "the restarted worker reports savepoint {id} failed: {body}"
    );
    Ok(worker)
}

/// A worker killed while its part is uploaded to S3: once mid-upload (its second file
/// held by a gate in front of the server), once with its files and part written but not
/// the manifest. Neither savepoint is ever complete: `list` never shows it complete,
/// `check` and `--restore-from` refuse it with the reason, the restarted worker reports it
/// failed; a savepoint after them succeeds, and the committed output holds each result
/// exactly once.
#[test]
fn a_worker_killed_during_an_s3_savepoint_upload_leaves_no_restorable_savepoint() -> Result<()> {
    let environment = Environment::load()?;
    let settings = S3Settings::load()?;
    let gate = S3Gate::start(&settings.endpoint)?;
    let source = TestTopic::create(&environment, "savepoint-crash-in", 4)?;
    let sink = TestTopic::create(&environment, "savepoint-crash-out", 4)?;
    let (input, expected) = generate(60_000, 4, 300);
    let store = Store::S3 {
        settings,
        endpoint: gate.endpoint(),
    };
    // Keys are on every partition: `Any` (the repartition topic), whose savepoints stop the
    // worker at its cut; it is resumed after the one that succeeds.
    let job = job(&environment, &source.name, &sink.name, "Any", &store)?;
    let thirds = thirds(&input);

    produce(&environment, &source.name, &thirds[0])?;
    let worker = job
        .start(&environment, "crash", 1, &[])?
        .into_iter()
        .next()
        .context("one worker")?;
    wait_for_events(std::slice::from_ref(&worker), count_of(&thirds[0]) / 2)?;
    // Mid-upload: the first PUT goes through, the second is held.
    let worker = kill_during_upload(
        &environment,
        &job,
        &gate,
        worker,
        "sp-mid-upload",
        |request, puts| request.method == "PUT" && puts >= 1,
    )?;
    produce(&environment, &source.name, &thirds[1])?;
    wait_for_events(std::slice::from_ref(&worker), count_of(&thirds[1]) / 2)?;
    // Every file and the part written; the manifest held.
    let worker = kill_during_upload(
        &environment,
        &job,
        &gate,
        worker,
        "sp-before-manifest",
        |request, _| request.method == "PUT" && request.target.ends_with("/manifest.json"),
    )?;
    let listed = job.list()?;
    ensure!(
        listed.contains(&("sp-before-manifest".to_string(), "incomplete".to_string())),
        "a savepoint with its part but no manifest is listed incomplete: {listed:?}"
    );

    // A savepoint after the crashes succeeds, and is restorable.
    let (status, body) = request(
        &worker,
        "POST",
        "/v1/savepoints",
        r#"{"id": "sp-after-crashes", "stop": true}"#,
    )?;
    ensure!(status == 202, "{status} {body}");
    let after = wait_completed(&worker, "sp-after-crashes")?;
    let (status, body) = request(&worker, "POST", "/v1/resume", "")?;
    ensure!(status == 200 || status == 202, "resume: {status} {body}");
    let (code, text) = job.check(&job.manifest, &after)?;
    ensure!(
        code == 0 && text.contains("can restore"),
        "check {after}: {code} {text}"
    );

    produce(&environment, &source.name, &thirds[2])?;
    produce_flush(&environment, &source.name, input.len())?;
    let output = read_output(
        &environment,
        &sink.name,
        expected.len(),
        Instant::now() + Duration::from_secs(300),
    )?;
    let summary = verify(&expected, &output)?;
    eprintln!("savepoint: killed twice during an S3 upload: {summary}");
    terminate(vec![worker])?;

    // A worker told to restore the interrupted savepoint refuses to start.
    let broken = format!("{}/sp-before-manifest", job.savepoints());
    let restore = ["--restore-from".to_string(), broken.clone()];
    let mut refused = WorkerProcess::start(&environment, &job.spec("refused", 0, 1, &restore))?;
    let status = refused.wait(Duration::from_secs(60))?;
    let log = std::fs::read_to_string(&refused.spec.log).unwrap_or_default();
    ensure!(
        !status.success() && log.contains("no manifest.json"),
        "a worker restoring {broken} exits with the reason: {status}\n{}",
        log_tail(&refused.spec.log)
    );

    for (id, _) in job.list()? {
        let location = format!("{}/{id}", job.savepoints());
        let (code, text) = job.savepoint_command(&["delete", &location])?;
        ensure!(code == 0, "delete {location}: {code} {text}");
    }
    Ok(())
}

/// A worker killed after its stop-with-savepoint, before the controller replaces it,
/// must not consume past the savepoint's cut when it comes back: the workers restored
/// from the savepoint would produce those results again. It stays stopped until told to
/// resume (a change aborted), and a worker restoring that savepoint consumes from its cut.
/// The output is checked exactly once at the end.
#[test]
fn a_worker_killed_after_a_stop_with_savepoint_stays_stopped_until_resumed_or_restored()
-> Result<()> {
    let environment = Environment::load()?;
    let source = TestTopic::create(&environment, "savepoint-stopped-in", 4)?;
    let sink = TestTopic::create(&environment, "savepoint-stopped-out", 4)?;
    let (input, expected) = generate(30_000, 4, 300);
    let job = job(&environment, &source.name, &sink.name, "Any", &Store::File)?;
    let thirds = thirds(&input);
    let start = |extra: &[String]| -> Result<WorkerProcess> {
        job.start(&environment, "stopped", 1, extra)?
            .into_iter()
            .next()
            .context("one worker")
    };
    let events_read = |worker: &WorkerProcess| {
        worker
            .metric("sluice_worker_events_in_total")
            .unwrap_or(0.0)
    };
    // Stays stopped, though events wait, for this long after it is ready.
    let stays_stopped = |worker: &WorkerProcess, why: &str| -> Result<()> {
        std::thread::sleep(Duration::from_secs(5));
        let read = events_read(worker);
        ensure!(
            read == 0.0,
            "{why}: the restarted worker read {read} events past the savepoint's cut\n{}",
            log_tail(&worker.spec.log)
        );
        Ok(())
    };

    produce(&environment, &source.name, &thirds[0])?;
    let mut worker = start(&[])?;
    wait_for_events(std::slice::from_ref(&worker), count_of(&thirds[0]) / 2)?;
    stop_with_savepoint(std::slice::from_ref(&worker), "sp-first")?;
    produce(&environment, &source.name, &thirds[1])?;
    worker.kill()?;

    // Back with the same spec and volume: stopped, until resumed.
    let mut worker = start(&[])?;
    stays_stopped(&worker, "restarted after sp-first")?;
    let log = std::fs::read_to_string(&worker.spec.log).unwrap_or_default();
    ensure!(
        log.contains("stays stopped"),
        "the restarted worker does not say why it waits:\n{}",
        log_tail(&worker.spec.log)
    );
    let (status, body) = request(&worker, "POST", "/v1/resume", "")?;
    ensure!(
        status == 200 && body["resumed"] == true,
        "resume: {status} {body}"
    );
    wait_for_events(std::slice::from_ref(&worker), count_of(&thirds[1]) / 2)?;

    // Once resumed, a restart consumes (the record is gone).
    worker.kill()?;
    let mut worker = start(&[])?;
    produce(&environment, &source.name, &thirds[2])?;
    wait_for_events(std::slice::from_ref(&worker), count_of(&thirds[2]) / 2)?;

    // Stopped again and killed: stopped again after the restart.
    let second = stop_with_savepoint(std::slice::from_ref(&worker), "sp-second")?;
    worker.kill()?;
    let mut worker = start(&[])?;
    stays_stopped(&worker, "restarted after sp-second")?;
    worker.kill()?;

    // Restoring the savepoint it stopped after: it consumes from the cut.
    let restore = ["--restore-from".to_string(), second];
    let worker = start(&restore)?;
    produce_flush(&environment, &source.name, input.len())?;
    let output = read_output(
        &environment,
        &sink.name,
        expected.len(),
        Instant::now() + Duration::from_secs(300),
    )?;
    let summary = verify(&expected, &output)?;
    eprintln!("savepoint: a stopped worker killed twice, resumed, then restored: {summary}");
    terminate(vec![worker])?;
    Ok(())
}
