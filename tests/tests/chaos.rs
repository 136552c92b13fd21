//! Exactly-once under failure, against the real broker: a million events while workers
//! are killed (SIGKILL, and crashes at chosen points of the commit protocol) and
//! restarted; the broker killed and restarted mid-run. The committed output is checked
//! against results computed here from the generated input, not by running the engine.
//!
//! These tests kill processes and the broker: `make e2e-test` runs them one at a time,
//! after the other end-to-end tests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};
use sluice_e2e::kafka::{TIMEOUT, TestTopic, config, producer};
use sluice_e2e::worker::{WorkerProcess, WorkerSpec};
use sluice_e2e::{Environment, repo_root, unique_name};

const WINDOW_MILLIS: i64 = 1_000;
const FAR_FUTURE: i64 = 4_102_358_400_000;

/// Counts and sums per key and window start: what the job must output, once each.
type Expected = HashMap<(String, i64), (u64, i64)>;

/// `events` records over `partitions` partitions for `keys` keys. On each partition
/// event time grows by 4 ms a record, with up to 300 ms of disorder: less than the job's
/// 1 s out-of-orderness, so no record is ever late and every window has exactly one
/// result, whatever the workers' interleaving and restarts.
fn generate(events: usize, partitions: i32, keys: u64) -> (Vec<Vec<String>>, Expected) {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let base = 1_795_687_200_000_i64;
    let mut per_partition = vec![Vec::new(); usize::try_from(partitions).unwrap()];
    let mut expected = Expected::new();
    for index in 0..events {
        let partition = index % per_partition.len();
        let step = i64::try_from(per_partition[partition].len()).unwrap();
        let jitter = i64::try_from(next() % 300).unwrap();
        let time = base + step * 4 - jitter;
        let key = format!("k{}", next() % keys);
        let value = i64::try_from(next() % 1_000).unwrap() - 200;
        per_partition[partition].push(format!(r#"{{"key":"{key}","ts":{time},"value":{value}}}"#));
        let entry = expected
            .entry((key, time - time.rem_euclid(WINDOW_MILLIS)))
            .or_default();
        entry.0 += 1;
        entry.1 += value;
    }
    (per_partition, expected)
}

fn manifest(environment: &Environment, source: &str, sink: &str) -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "StreamJob",
        "metadata": {"name": unique_name("chaos")},
        "spec": {
            "parallelism": 2,
            "maxParallelism": 16,
            "kafka": {"bootstrapServers": environment.kafka_bootstrap},
            "source": {
                "topics": [source],
                "eventTime": {"field": "ts", "format": "UnixMillis"},
                "watermark": {"maxOutOfOrderness": "1s"},
            },
            "pipeline": [
                {"keyBy": "event.key"},
                {"window": {"tumbling": {"size": "1s"}}},
                {"aggregate": {
                    "n": {"function": "Count"},
                    "total": {"function": "Sum", "of": "event.value"},
                }},
            ],
            "sink": {"topic": sink},
            "state": {"checkpointInterval": "200ms"},
        },
    })
}

fn produce(environment: &Environment, topic: &str, per_partition: &[Vec<String>]) -> Result<()> {
    let producer = producer(environment, None)?;
    for (partition, records) in per_partition.iter().enumerate() {
        let partition = i32::try_from(partition)?;
        for record in records {
            let mut pending = BaseRecord::<(), str>::to(topic)
                .partition(partition)
                .payload(record);
            loop {
                match producer.send(pending) {
                    Ok(()) => break,
                    Err((_, returned)) => {
                        std::thread::sleep(Duration::from_millis(5));
                        pending = returned;
                    }
                }
            }
        }
    }
    // The far-future records move every partition's clock past every window.
    let flush = format!(r#"{{"key":"flush","ts":{FAR_FUTURE},"value":0}}"#);
    for partition in 0..per_partition.len() {
        producer
            .send(
                BaseRecord::<(), str>::to(topic)
                    .partition(i32::try_from(partition)?)
                    .payload(&flush),
            )
            .map_err(|(error, _)| error)?;
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(())
}

/// What the sink holds: occurrences of each (key, window) and its values.
struct Output {
    results: HashMap<(String, i64), Vec<(u64, i64)>>,
    records: usize,
}

fn read_output(
    environment: &Environment,
    topic: &str,
    expected_records: usize,
    deadline: Instant,
) -> Result<Output> {
    let consumer: BaseConsumer = config(environment)
        .set("group.id", unique_name("chaos-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..4 {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut output = Output {
        results: HashMap::new(),
        records: 0,
    };
    let mut quiet_since = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(message) => {
                let message = message?;
                let value: Value = serde_json::from_slice(message.payload().unwrap_or_default())?;
                let start = chrono_millis(value["windowStart"].as_str().context("windowStart")?)?;
                let key = value["key"].as_str().context("key")?.to_string();
                output.results.entry((key, start)).or_default().push((
                    value["n"].as_u64().context("n")?,
                    value["total"].as_i64().context("total")?,
                ));
                output.records += 1;
                quiet_since = Instant::now();
            }
            None => {
                if output.records >= expected_records
                    && quiet_since.elapsed() > Duration::from_secs(5)
                {
                    return Ok(output);
                }
                if Instant::now() > deadline {
                    return Ok(output);
                }
            }
        }
    }
}

/// Milliseconds of an RFC 3339 UTC time as the worker writes it.
fn chrono_millis(text: &str) -> Result<i64> {
    // YYYY-MM-DDTHH:MM:SS(.fff)Z
    let (date, time) = text
        .trim_end_matches('Z')
        .split_once('T')
        .context("a time")?;
    let parts: Vec<i64> = date
        .split('-')
        .map(|part| part.parse().unwrap_or(0))
        .collect();
    let (year, month, day) = (parts[0], parts[1], parts[2]);
    let (clock, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let hms: Vec<i64> = clock
        .split(':')
        .map(|part| part.parse().unwrap_or(0))
        .collect();
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let millis_fraction: i64 = format!("{fraction:0<3}")[..3].parse().unwrap_or(0);
    Ok(((days * 24 + hms[0]) * 60 + hms[1]) * 60_000 + hms[2] * 1_000 + millis_fraction)
}

/// Compares the output with the expected results: none missing, none duplicated, none
/// wrong, nothing extra. Returns a summary line.
fn verify(expected: &Expected, output: &Output) -> Result<String> {
    let mut missing = Vec::new();
    let mut duplicated = Vec::new();
    let mut wrong = Vec::new();
    for (window, values) in expected {
        match output.results.get(window).map(Vec::as_slice) {
            None | Some([]) => missing.push(window.clone()),
            Some([value]) if value == values => {}
            Some([value]) => wrong.push((window.clone(), *value, *values)),
            Some(many) => duplicated.push((window.clone(), many.len())),
        }
    }
    let extra: Vec<_> = output
        .results
        .keys()
        .filter(|window| !expected.contains_key(*window))
        .take(5)
        .collect();
    ensure!(
        missing.is_empty() && duplicated.is_empty() && wrong.is_empty() && extra.is_empty(),
        "exactly-once violated: {} missing (e.g. {:?}), {} duplicated (e.g. {:?}), {} wrong (e.g. {:?}), extra (e.g. {:?})",
        missing.len(),
        missing.iter().take(3).collect::<Vec<_>>(),
        duplicated.len(),
        duplicated.iter().take(3).collect::<Vec<_>>(),
        wrong.len(),
        wrong.iter().take(3).collect::<Vec<_>>(),
        extra
    );
    Ok(format!(
        "{} results, each exactly once and right ({} records read)",
        expected.len(),
        output.records
    ))
}

fn work_directory(name: &str) -> Result<PathBuf> {
    let directory = std::env::temp_dir().join(unique_name(name));
    std::fs::create_dir_all(&directory)?;
    Ok(directory)
}

fn worker_spec(directory: &Path, job: &Path, ordinal: u32, crash: Option<String>) -> WorkerSpec {
    WorkerSpec {
        job: job.to_path_buf(),
        namespace: "chaos".into(),
        ordinal,
        parallelism: 2,
        state_dir: directory.join(format!("state-{ordinal}")),
        log: directory.join(format!("worker-{ordinal}.log")),
        extra: crash
            .map(|point| vec!["--crash-point".into(), point])
            .unwrap_or_default(),
    }
}

/// A million events, two workers killed at random moments at least ten times (SIGKILL)
/// plus crashes right before and right after a transaction commits, each restarted on its
/// state directory: every window's result is committed exactly once, and right.
#[test]
fn a_million_events_through_kills_and_crashes_give_each_result_exactly_once() -> Result<()> {
    let environment = Environment::load()?;
    let events = std::env::var("SLUICE_CHAOS_EVENTS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(1_000_000);
    let source = TestTopic::create(&environment, "chaos-in", 4)?;
    let sink = TestTopic::create(&environment, "chaos-out", 4)?;
    let (input, expected) = generate(events, 4, 2_000);
    let started = Instant::now();
    produce(&environment, &source.name, &input)?;
    eprintln!("chaos: produced {events} events in {:?}", started.elapsed());
    let directory = work_directory("chaos")?;
    let job = directory.join("streamjob.yaml");
    std::fs::write(
        &job,
        serde_yaml_ng::to_string(&manifest(&environment, &source.name, &sink.name))?,
    )?;

    let mut workers = Vec::new();
    for ordinal in 0..2 {
        let mut worker =
            WorkerProcess::start(&environment, &worker_spec(&directory, &job, ordinal, None))?;
        worker.wait_ready(Duration::from_secs(60))?;
        workers.push(worker);
    }
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
        let ordinal = usize::try_from(random(2))?;
        let crash = step.clone();
        match &step {
            None => workers[ordinal].kill()?,
            Some(_) => {
                // Restarted with a crash point: it crashes by itself at that commit.
                workers[ordinal].kill()?;
                let mut crashing = WorkerProcess::start(
                    &environment,
                    &worker_spec(&directory, &job, u32::try_from(ordinal)?, crash),
                )?;
                let status = crashing.wait(Duration::from_secs(120))?;
                ensure!(
                    !status.success(),
                    "the worker crashed at {step:?} as asked: {status}"
                );
            }
        }
        let mut restarted = WorkerProcess::start(
            &environment,
            &worker_spec(&directory, &job, u32::try_from(ordinal)?, None),
        )?;
        let resumed = restarted.wait_ready(Duration::from_secs(60))?;
        resume_times.push(resumed);
        eprintln!(
            "chaos: worker {ordinal} {} then restarted; ready again in {resumed:?}",
            step.as_deref().unwrap_or("killed (SIGKILL)")
        );
        workers[ordinal] = restarted;
    }
    let output = read_output(
        &environment,
        &sink.name,
        expected.len(),
        Instant::now() + Duration::from_secs(600),
    )?;
    let summary = verify(&expected, &output)?;
    let slowest = resume_times.iter().max().copied().unwrap_or_default();
    eprintln!(
        "chaos: {events} events, {} kills and crashes, slowest resume {slowest:?}, total {:?}: {summary}",
        resume_times.len(),
        started.elapsed()
    );
    for worker in &mut workers {
        let status = worker.terminate(Duration::from_secs(60))?;
        ensure!(status.success(), "SIGTERM stops a worker cleanly: {status}");
    }
    Ok(())
}

/// The broker killed with SIGKILL mid-run and started again: the workers reconnect and
/// the output is still exactly once.
#[test]
fn exactly_once_holds_across_a_broker_restart() -> Result<()> {
    let environment = Environment::load()?;
    let source = TestTopic::create(&environment, "chaos-in", 4)?;
    let sink = TestTopic::create(&environment, "chaos-out", 4)?;
    let (input, expected) = generate(200_000, 4, 500);
    produce(&environment, &source.name, &input)?;
    let directory = work_directory("broker-restart")?;
    let job = directory.join("streamjob.yaml");
    std::fs::write(
        &job,
        serde_yaml_ng::to_string(&manifest(&environment, &source.name, &sink.name))?,
    )?;
    let mut workers = Vec::new();
    for ordinal in 0..2 {
        let mut worker =
            WorkerProcess::start(&environment, &worker_spec(&directory, &job, ordinal, None))?;
        worker.wait_ready(Duration::from_secs(60))?;
        workers.push(worker);
    }
    std::thread::sleep(Duration::from_secs(2));
    kill_broker()?;
    std::thread::sleep(Duration::from_secs(3));
    let status = std::process::Command::new("bash")
        .arg(repo_root().join("tests/cluster/cluster.sh"))
        .arg("up")
        .status()
        .context("failed to run cluster.sh up")?;
    ensure!(status.success(), "cluster.sh up brought the broker back");
    let output = read_output(
        &environment,
        &sink.name,
        expected.len(),
        Instant::now() + Duration::from_secs(600),
    )?;
    let summary = verify(&expected, &output)?;
    eprintln!("broker restart: {summary}");
    for worker in &mut workers {
        ensure!(worker.running(), "a worker survived the broker's restart");
        let status = worker.terminate(Duration::from_secs(60))?;
        ensure!(status.success(), "{status}");
    }
    // The topics are deleted by their drop, on the restarted broker.
    let _ = TIMEOUT;
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
