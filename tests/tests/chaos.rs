//! Exactly-once under failure, against the real broker: a million events while workers
//! are killed (SIGKILL, and crashes at chosen points of the commit protocol) and
//! restarted; the broker killed and restarted mid-run. The committed output is checked
//! against results computed here from the generated input, not by running the engine.
//!
//! These tests kill processes and the broker: `make e2e-test` runs them one at a time,
//! after the other end-to-end tests.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use sluice_e2e::exactly_once::{
    Expected, generate, manifest, produce, produce_flush, read_output, verify, work_directory,
};
use sluice_e2e::kafka::TestTopic;
use sluice_e2e::worker::{WorkerProcess, WorkerSpec};
use sluice_e2e::{Environment, repo_root};

fn worker_spec(
    directory: &Path,
    job: &Path,
    ordinal: u32,
    parallelism: u32,
    crash: Option<String>,
) -> WorkerSpec {
    WorkerSpec {
        job: job.to_path_buf(),
        namespace: "chaos".into(),
        ordinal,
        parallelism,
        state_dir: directory.join(format!("state-{ordinal}")),
        log: directory.join(format!("worker-{ordinal}.log")),
        extra: crash
            .map(|point| vec!["--crash-point".into(), point])
            .unwrap_or_default(),
        env: Vec::new(),
    }
}

/// A running chaos scenario: `events` generated events already in the source topic, and
/// `parallelism` workers started on them (two each read half the source partitions and
/// send keyed events through the repartition topic; one keeps them in process).
struct Scenario {
    environment: Environment,
    sink: TestTopic,
    // Kept so the topic is deleted when the scenario ends.
    _source: TestTopic,
    expected: Expected,
    directory: std::path::PathBuf,
    job: std::path::PathBuf,
    parallelism: u32,
    workers: Vec<WorkerProcess>,
}

impl Scenario {
    fn start(name: &str, events: usize, keys: u64, parallelism: u32) -> Result<Self> {
        let environment = Environment::load()?;
        let source = TestTopic::create(&environment, "chaos-in", 4)?;
        let sink = TestTopic::create(&environment, "chaos-out", 4)?;
        let (input, expected) = generate(events, 4, keys);
        let started = Instant::now();
        produce(&environment, &source.name, &input)?;
        produce_flush(&environment, &source.name, input.len())?;
        eprintln!(
            "{name}: produced {events} events in {:?}",
            started.elapsed()
        );
        let directory = work_directory(name)?;
        let job = directory.join("streamjob.yaml");
        std::fs::write(
            &job,
            serde_json::to_string_pretty(&manifest(&environment, &source.name, &sink.name))?,
        )?;
        let mut workers = Vec::new();
        for ordinal in 0..parallelism {
            let spec = worker_spec(&directory, &job, ordinal, parallelism, None);
            let mut worker = WorkerProcess::start(&environment, &spec)?;
            worker.wait_ready(Duration::from_secs(60))?;
            workers.push(worker);
        }
        Ok(Self {
            environment,
            sink,
            _source: source,
            expected,
            directory,
            job,
            parallelism,
            workers,
        })
    }

    /// Reads the committed output until every expected result is there, and checks it.
    fn verify_output(&self) -> Result<String> {
        let output = read_output(
            &self.environment,
            &self.sink.name,
            self.expected.len(),
            Instant::now() + Duration::from_secs(600),
        )?;
        verify(&self.expected, &output)
    }
}

/// A million events, two workers killed at random moments at least ten times (SIGKILL)
/// plus crashes right before and right after a transaction commits, each restarted on its
/// state directory: every window's result is committed exactly once, and right.
#[test]
fn a_million_events_through_kills_and_crashes_give_each_result_exactly_once() -> Result<()> {
    through_kills_and_crashes("chaos", 2)
}

/// As [`a_million_events_through_kills_and_crashes_give_each_result_exactly_once`] with
/// one worker, which keeps its keyed events in process (asserted from its log).
#[test]
fn a_million_events_in_process_through_kills_and_crashes_give_each_result_exactly_once()
-> Result<()> {
    through_kills_and_crashes("chaos-in-process", 1)
}

fn through_kills_and_crashes(name: &str, parallelism: u32) -> Result<()> {
    let events = std::env::var("SLUICE_CHAOS_EVENTS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(1_000_000);
    let started = Instant::now();
    let mut scenario = Scenario::start(name, events, 2_000, parallelism)?;
    let mut state: u64 = 7;
    let mut random = move |bound: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % bound
    };
    // Ten SIGKILLs at random moments, then two crashes at each commit point.
    let mut plan: Vec<Option<String>> = vec![None; 10];
    plan.extend(
        [
            "before-commit:2",
            "after-commit:2",
            "before-commit:3",
            "after-commit:1",
        ]
        .map(|point| Some(point.to_string())),
    );
    let mut resume_times = Vec::new();
    for step in plan {
        std::thread::sleep(Duration::from_millis(300 + random(2_200)));
        let ordinal = usize::try_from(random(u64::from(scenario.parallelism)))?;
        let crash = step.clone();
        match &step {
            None => scenario.workers[ordinal].kill()?,
            Some(_) => {
                // Restarted with a crash point: it crashes by itself at that commit.
                scenario.workers[ordinal].kill()?;
                let mut crashing = WorkerProcess::start(
                    &scenario.environment,
                    &worker_spec(
                        &scenario.directory,
                        &scenario.job,
                        u32::try_from(ordinal)?,
                        scenario.parallelism,
                        crash,
                    ),
                )?;
                let status = crashing.wait(Duration::from_secs(120))?;
                ensure!(
                    !status.success(),
                    "the worker crashed at {step:?} as asked: {status}"
                );
            }
        }
        let mut restarted = WorkerProcess::start(
            &scenario.environment,
            &worker_spec(
                &scenario.directory,
                &scenario.job,
                u32::try_from(ordinal)?,
                scenario.parallelism,
                None,
            ),
        )?;
        let resumed = restarted.wait_ready(Duration::from_secs(60))?;
        resume_times.push(resumed);
        eprintln!(
            "{name}: worker {ordinal} {} then restarted; ready again in {resumed:?}",
            step.as_deref().unwrap_or("killed (SIGKILL)")
        );
        scenario.workers[ordinal] = restarted;
    }
    let summary = scenario.verify_output()?;
    let slowest = resume_times.iter().max().copied().unwrap_or_default();
    eprintln!(
        "{name}: {events} events, {} kills and crashes, slowest resume {slowest:?}, total {:?}: {summary}",
        resume_times.len(),
        started.elapsed()
    );
    // The path each start took: one worker in process every time, two through the topic.
    let in_process = parallelism == 1;
    for ordinal in 0..parallelism {
        let log =
            std::fs::read_to_string(scenario.directory.join(format!("worker-{ordinal}.log")))?;
        let starts: Vec<&str> = log
            .lines()
            .filter(|line| line.contains("\"worker ready\""))
            .collect();
        let wanted = format!("\"in_process\":{in_process}");
        ensure!(
            !starts.is_empty() && starts.iter().all(|line| line.contains(&wanted)),
            "every start of worker {ordinal} says {wanted}: {starts:#?}"
        );
    }
    for worker in &mut scenario.workers {
        let status = worker.terminate(Duration::from_secs(60))?;
        ensure!(status.success(), "SIGTERM stops a worker cleanly: {status}");
    }
    Ok(())
}

/// The broker killed with SIGKILL mid-run and started again: the workers reconnect and
/// the output is still exactly once.
#[test]
fn exactly_once_holds_across_a_broker_restart() -> Result<()> {
    let mut scenario = Scenario::start("broker-restart", 200_000, 500, 2)?;
    // Killed once both workers have committed work.
    let deadline = Instant::now() + Duration::from_secs(60);
    while scenario.workers.iter().any(|worker| {
        worker
            .metric("sluice_worker_checkpoints_total")
            .unwrap_or(0.0)
            < 1.0
    }) {
        ensure!(Instant::now() < deadline, "no checkpoint in 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    kill_broker()?;
    // Down for a while, as a real outage: the workers' requests fail and retry.
    std::thread::sleep(Duration::from_secs(3));
    let status = std::process::Command::new("bash")
        .arg(repo_root().join("tests/cluster/cluster.sh"))
        .arg("up")
        .status()
        .context("failed to run cluster.sh up")?;
    ensure!(status.success(), "cluster.sh up brought the broker back");
    let summary = scenario.verify_output()?;
    eprintln!("broker restart: {summary}");
    for worker in &mut scenario.workers {
        ensure!(worker.running(), "a worker survived the broker's restart");
        let status = worker.terminate(Duration::from_secs(60))?;
        ensure!(status.success(), "{status}");
    }
    // The topics are deleted by their drop, on the restarted broker.
    Ok(())
}

fn kill_broker() -> Result<()> {
    let state = sluice_e2e::state_dir();
    let pidfile = state.join("run").join("kafka.pid");
    let pid = std::fs::read_to_string(&pidfile).with_context(|| {
        format!(
            "failed to read {} (is the local cluster up?)",
            pidfile.display()
        )
    })?;
    let status = std::process::Command::new("kill")
        .arg("-KILL")
        .arg(pid.trim())
        .status()?;
    if !status.success() {
        bail!("kill -9 {} failed", pid.trim());
    }
    Ok(())
}
