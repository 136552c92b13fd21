//! `sluice-worker run` against the real broker, as worker pods run it: the examples give
//! exactly their expected records in Kafka, bad records land in the dead-letter topic
//! with their reason and the worker goes on, and a second worker with the same ordinal
//! fences the first without breaking exactly-once, with `partitioning: Any` a fired
//! result commits without waiting for the next interval, and a caught-up job commits
//! past the markers of a transactional source and of its repartition topic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::producer::DefaultProducerContext;
use rdkafka::producer::{BaseRecord, Producer as _, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};
use sluice_e2e::kafka::{TIMEOUT, TestTopic, config, producer};
use sluice_e2e::worker::{WorkerProcess, WorkerSpec, log_tail};
use sluice_e2e::{Environment, repo_root, unique_name};

/// A record read back from a topic.
#[derive(Clone, Debug)]
struct Read {
    partition: i32,
    value: Vec<u8>,
    headers: BTreeMap<String, String>,
}

/// Reads every record of `topic` with read_committed until `count` arrived, then `quiet`
/// longer to catch any extra one.
fn read_committed(
    environment: &Environment,
    topic: &str,
    count: usize,
    quiet: Duration,
) -> Result<Vec<Read>> {
    let consumer: BaseConsumer = config(environment)
        .set("group.id", unique_name("e2e-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |found| found.partitions().len());
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, i32::try_from(partition)?, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut read = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut quiet_until: Option<Instant> = None;
    loop {
        if read.len() >= count && quiet_until.is_none() {
            quiet_until = Some(Instant::now() + quiet);
        }
        if quiet_until.is_some_and(|until| Instant::now() >= until) || Instant::now() >= deadline {
            return Ok(read);
        }
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message?;
            let headers = message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|header| {
                            (
                                header.key.to_string(),
                                String::from_utf8_lossy(header.value.unwrap_or_default())
                                    .into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            read.push(Read {
                partition: message.partition(),
                value: message.payload().unwrap_or_default().to_vec(),
                headers,
            });
        }
    }
}

fn send_to(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    partition: i32,
    payload: &[u8],
) -> Result<()> {
    producer
        .send(
            BaseRecord::<(), [u8]>::to(topic)
                .partition(partition)
                .payload(payload),
        )
        .map_err(|(error, _)| error)
        .with_context(|| format!("failed to produce to {topic}"))
}

/// A job's topics, deleted at the end.
struct Topics {
    source: TestTopic,
    sink: TestTopic,
    dead_letters: TestTopic,
    late: TestTopic,
}

impl Topics {
    fn create(environment: &Environment, source_partitions: i32) -> Result<Self> {
        Ok(Self {
            source: TestTopic::create(environment, "e2e-in", source_partitions)?,
            sink: TestTopic::create(environment, "e2e-out", 2)?,
            dead_letters: TestTopic::create(environment, "e2e-dead", 1)?,
            late: TestTopic::create(environment, "e2e-late", 1)?,
        })
    }
}

/// The manifest of `base` pointed at the test broker and `topics`, checkpointing often.
fn manifest(
    environment: &Environment,
    mut base: Value,
    topics: &Topics,
    partitioning: &str,
) -> Value {
    base["metadata"]["name"] = json!(unique_name("job"));
    let spec = &mut base["spec"];
    spec["kafka"]["bootstrapServers"] = json!(environment.kafka_bootstrap);
    spec["source"]["topics"] = json!([topics.source.name]);
    spec["source"]["partitioning"] = json!(partitioning);
    spec["sink"]["topic"] = json!(topics.sink.name);
    spec["sink"]["deadLetterTopic"] = json!(topics.dead_letters.name);
    spec["sink"]["lateDataTopic"] = json!(topics.late.name);
    spec["state"]["checkpointInterval"] = json!("200ms");
    base
}

/// A directory for one test's job files, state and logs.
fn work_directory(name: &str) -> Result<PathBuf> {
    let directory = std::env::temp_dir().join(unique_name(name));
    std::fs::create_dir_all(&directory)?;
    Ok(directory)
}

fn write_job(directory: &Path, manifest: &Value) -> Result<PathBuf> {
    let path = directory.join("streamjob.yaml");
    // JSON, a YAML subset with every key quoted: YAML 1.1 (what kubectl reads) would
    // take an unquoted key such as `n` for a boolean.
    std::fs::write(&path, serde_json::to_string_pretty(manifest)?)?;
    Ok(path)
}

fn spec(directory: &Path, job: &Path, ordinal: u32, parallelism: u32, state: &str) -> WorkerSpec {
    WorkerSpec {
        job: job.to_path_buf(),
        namespace: "e2e".into(),
        ordinal,
        parallelism,
        state_dir: directory.join(state),
        log: directory.join(format!("worker-{ordinal}.log")),
        extra: Vec::new(),
        env: Vec::new(),
    }
}

fn meaningful_lines(path: &Path) -> Result<Vec<String>> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("failed to read {}", path.display()))?
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(String::from)
        .collect())
}

/// An event the example's filter drops, at the end of year 2099 in its time format: on a
/// partition of its own it keeps that partition's clock ahead, and on the input's
/// partition it moves the watermark past every window of the example.
fn far_future_event(example: &str) -> Value {
    match example {
        "page-views" => {
            json!({"timestamp": "2099-12-31T00:00:00Z", "status": 0, "url": "/", "latencyMs": 0})
        }
        "sensor-averages" => {
            json!({"device": "none", "ts": 4_102_358_400_000_i64, "temperature": 1000.0})
        }
        other => panic!("no far-future event for example {other}: add one here"),
    }
}

/// The examples' expected output assumes one partition read in file order, so the input
/// goes to partition 0 and the other partitions hold a far-future event each (their
/// clocks never hold the watermark back). In `ByKey` mode the window operator's watermark
/// then moves exactly as in local mode; a last far-future event fires every window.
#[test]
fn examples_give_exactly_their_expected_records_in_kafka() -> Result<()> {
    let environment = Environment::load()?;
    for example in ["page-views", "sensor-averages"] {
        let example_directory = repo_root().join("examples").join(example);
        let topics = Topics::create(&environment, 3)?;
        let base: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(
            example_directory.join("streamjob.yaml"),
        )?)?;
        let manifest = manifest(&environment, base, &topics, "ByKey");
        let directory = work_directory(example)?;
        let job = write_job(&directory, &manifest)?;
        let producer = producer(&environment, None)?;
        let far = serde_json::to_vec(&far_future_event(example))?;
        for partition in [1, 2] {
            send_to(&producer, &topics.source.name, partition, &far)?;
        }
        producer.flush(TIMEOUT)?;
        let mut workers = Vec::new();
        for ordinal in 0..2 {
            let mut worker = WorkerProcess::start(
                &environment,
                &spec(&directory, &job, ordinal, 2, &format!("state-{ordinal}")),
            )?;
            worker.wait_ready(Duration::from_secs(60))?;
            workers.push(worker);
        }
        // Both far-future events read before the input arrives.
        let deadline = Instant::now() + Duration::from_secs(30);
        while workers
            .iter()
            .map(|worker| {
                worker
                    .metric("sluice_worker_events_in_total")
                    .unwrap_or(0.0)
            })
            .sum::<f64>()
            < 2.0
        {
            ensure!(
                Instant::now() < deadline,
                "{example}: the far-future events were not read"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let input = std::fs::read_to_string(example_directory.join("input.jsonl"))?;
        for line in input.lines() {
            send_to(&producer, &topics.source.name, 0, line.as_bytes())?;
        }
        send_to(&producer, &topics.source.name, 0, &far)?;
        producer.flush(TIMEOUT)?;

        let expected_results = meaningful_lines(&example_directory.join("expected-output.jsonl"))?;
        let expected_dead = meaningful_lines(&example_directory.join("expected-dead-letters.txt"))?;
        let expected_late = meaningful_lines(&example_directory.join("expected-late.txt"))?;
        let results = read_committed(
            &environment,
            &topics.sink.name,
            expected_results.len(),
            Duration::from_secs(3),
        )?;
        let mut actual: Vec<String> = results
            .iter()
            .map(|read| String::from_utf8_lossy(&read.value).into_owned())
            .collect();
        let mut expected = expected_results.clone();
        // Results of different keys may be on different sink partitions: compare as sets
        // of exact lines, each exactly once.
        actual.sort();
        expected.sort();
        assert_eq!(actual, expected, "{example}: results in the sink topic");

        let dead = read_committed(
            &environment,
            &topics.dead_letters.name,
            expected_dead.len(),
            Duration::from_secs(2),
        )?;
        let mut dead_found: Vec<(u64, String)> = dead
            .iter()
            .map(|read| {
                let offset: u64 = read.headers["sluice-source-offset"].parse().unwrap();
                (offset + 1, read.headers["sluice-reason"].clone())
            })
            .collect();
        dead_found.sort();
        assert_eq!(
            dead_found.len(),
            expected_dead.len(),
            "{example}: dead letters {dead_found:?}"
        );
        for ((line, reason), expectation) in dead_found.iter().zip(&expected_dead) {
            let (expected_line, prefix) = expectation.split_once(' ').unwrap();
            assert_eq!(
                line.to_string(),
                expected_line,
                "{example}: dead letters {dead_found:?}"
            );
            assert!(
                reason.starts_with(prefix.trim()),
                "{example}: line {line} reason {reason}"
            );
            let original = input.lines().nth(usize::try_from(*line - 1)?).unwrap();
            let read = dead
                .iter()
                .find(|read| read.headers["sluice-source-offset"] == (line - 1).to_string())
                .unwrap();
            assert_eq!(
                read.value,
                original.as_bytes(),
                "{example}: original bytes of line {line}"
            );
            assert_eq!(read.headers["sluice-source-topic"], topics.source.name);
            assert!(!read.headers["sluice-detail"].is_empty());
        }
        let late = read_committed(
            &environment,
            &topics.late.name,
            expected_late.len(),
            Duration::from_secs(2),
        )?;
        let mut late_lines: Vec<String> = late
            .iter()
            .map(|read| {
                (read.headers["sluice-source-offset"].parse::<u64>().unwrap() + 1).to_string()
            })
            .collect();
        late_lines.sort();
        assert_eq!(late_lines, expected_late, "{example}: late events");
        assert!(
            late.iter()
                .all(|read| read.headers["sluice-reason"] == "late" && read.partition == 0)
        );

        for mut worker in workers {
            let status = worker.terminate(Duration::from_secs(30))?;
            assert!(
                status.success(),
                "{example}: SIGTERM stops a worker cleanly: {status}"
            );
        }
    }
    Ok(())
}

/// A window's result commits as soon as the watermark passes its end, not at the next
/// interval: with `partitioning: Any` through the repartition topic (two workers) the
/// source side commits the watermark records that pass a window's end at once, and the
/// keyed side commits the result it fires at once (two checkpoints on a firing); with
/// `Any` and one worker (the in-process exchange), or with `ByKey`, the worker commits
/// what it fired at once. With a 20 s interval the result is visible within a second or
/// so of the events being read, where waiting for the next interval would take about 20 s
/// (40 s for the topic path's two).
#[test]
fn with_partitioning_any_a_fired_result_commits_without_waiting_for_the_interval() -> Result<()> {
    a_fired_result_commits_without_waiting_for_the_interval("Any", 2)
}

/// As [`with_partitioning_any_a_fired_result_commits_without_waiting_for_the_interval`],
/// with one worker, which keeps its keyed events in process.
#[test]
fn with_partitioning_any_in_process_a_fired_result_commits_without_waiting_for_the_interval()
-> Result<()> {
    a_fired_result_commits_without_waiting_for_the_interval("Any", 1)
}

/// As [`with_partitioning_any_a_fired_result_commits_without_waiting_for_the_interval`],
/// without the repartition topic.
#[test]
fn with_partitioning_by_key_a_fired_result_commits_without_waiting_for_the_interval() -> Result<()>
{
    a_fired_result_commits_without_waiting_for_the_interval("ByKey", 1)
}

fn a_fired_result_commits_without_waiting_for_the_interval(
    partitioning: &str,
    parallelism: u32,
) -> Result<()> {
    let environment = Environment::load()?;
    let topics = Topics::create(&environment, 1)?;
    let base: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(
        repo_root().join("examples/page-views/streamjob.yaml"),
    )?)?;
    let mut manifest = manifest(&environment, base, &topics, partitioning);
    manifest["spec"]["parallelism"] = json!(parallelism);
    manifest["spec"]["state"]["checkpointInterval"] = json!("20s");
    let directory = work_directory(&format!(
        "firing-commit-{}-{parallelism}",
        partitioning.to_lowercase()
    ))?;
    let job = write_job(&directory, &manifest)?;
    let producer = producer(&environment, None)?;
    let mut workers = Vec::new();
    for ordinal in 0..parallelism {
        let state = format!("state-{ordinal}");
        let worker = WorkerProcess::start(
            &environment,
            &spec(&directory, &job, ordinal, parallelism, &state),
        )?;
        workers.push(worker);
    }
    for worker in &mut workers {
        worker.wait_ready(Duration::from_secs(60))?;
    }
    // Which path the run took: the one this test is about.
    let in_process = partitioning == "Any" && parallelism == 1;
    let logs = || {
        (0..parallelism)
            .map(|ordinal| log_tail(&directory.join(format!("worker-{ordinal}.log"))))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let ready = std::fs::read_to_string(directory.join("worker-0.log"))?;
    ensure!(
        ready.contains(&format!("\"in_process\":{in_process}")),
        "worker 0 says whether it keeps keyed events in process ({in_process}); log: {}",
        logs()
    );
    let worker = &workers[0];
    // The hop metric says the same: with `Any`, 1 for the hop taken; with `ByKey`, none.
    worker.metric("sluice_worker_events_in_total")?;
    let hop = |hop: &str| worker.metric(&format!("sluice_worker_hop{{hop=\"{hop}\"}}"));
    if partitioning == "Any" {
        let hops = (hop("topic")?, hop("draining")?, hop("in-process")?);
        let expected = if in_process {
            (0.0, 0.0, 1.0)
        } else {
            (1.0, 0.0, 0.0)
        };
        ensure!(
            hops == expected,
            "sluice_worker_hop (topic, draining, in-process) is {hops:?}, expected {expected:?}"
        );
    } else {
        ensure!(
            hop("in-process").is_err(),
            "a ByKey worker has no hop metric"
        );
    }
    let event = |time: &str, status: u16, url: &str| {
        serde_json::to_vec(
            &json!({"timestamp": time, "status": status, "url": url, "latencyMs": 10}),
        )
    };

    // An event the filter drops makes the next periodic checkpoint commit: seeing the
    // count of checkpoints move gives the interval's phase.
    let committed = worker.metric("sluice_worker_checkpoints_total")?;
    send_to(
        &producer,
        &topics.source.name,
        0,
        &event("2026-01-01T00:00:01Z", 404, "/")?,
    )?;
    producer.flush(TIMEOUT)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while worker.metric("sluice_worker_checkpoints_total")? <= committed {
        ensure!(
            Instant::now() < deadline,
            "no checkpoint within 60 s of a record read; logs: {}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let checkpointed = Instant::now();
    // A view in the window [00:00, 00:01), then one whose time moves the watermark
    // (time less 5 s of out-of-orderness) past the window's end.
    send_to(
        &producer,
        &topics.source.name,
        0,
        &event("2026-01-01T00:00:10Z", 200, "/a")?,
    )?;
    send_to(
        &producer,
        &topics.source.name,
        0,
        &event("2026-01-01T00:01:06Z", 200, "/b")?,
    )?;
    producer.flush(TIMEOUT)?;

    let results = read_committed(&environment, &topics.sink.name, 1, Duration::ZERO)?;
    let visible = checkpointed.elapsed();
    eprintln!("the result became visible {visible:?} after the checkpoint before the events");
    let texts: Vec<String> = results
        .iter()
        .map(|read| String::from_utf8_lossy(&read.value).into_owned())
        .collect();
    ensure!(
        results.len() == 1,
        "expected the window's one result within 120 s, read {texts:?}; logs: {}",
        logs()
    );
    let result: Value = serde_json::from_slice(&results[0].value)?;
    assert_eq!(result["key"], json!("/a"), "{result}");
    assert_eq!(result["views"], json!(1), "{result}");
    // Read within a second of the checkpoint, the events would otherwise commit at the
    // next interval, 20 s after it. The checkpoints on a firing come within 200 ms of
    // reading the events (the watermark records' interval), then of reading those.
    let firing_checkpoints = |workers: &[WorkerProcess]| -> Result<f64> {
        workers
            .iter()
            .map(|worker| worker.metric("sluice_worker_firing_checkpoints_total"))
            .sum()
    };
    assert!(
        visible < Duration::from_secs(5),
        "the result became visible {visible:?} after the checkpoint before the events; \
         about a second is expected, 20 s or more means it waited for the next interval; \
         metrics: checkpoints {:?}, firing checkpoints {:?}; logs: {}",
        worker.metric("sluice_worker_checkpoints_total").ok(),
        firing_checkpoints(&workers).ok(),
        logs()
    );
    assert!(
        firing_checkpoints(&workers)? >= 1.0,
        "the firing checkpoint is counted"
    );
    for mut worker in workers {
        let status = worker.terminate(Duration::from_secs(30))?;
        assert!(
            status.success(),
            "SIGTERM stops the worker cleanly: {status}"
        );
    }
    Ok(())
}

/// The committed offset of every partition of `topics` (name, partitions) under `group`
/// that is not at the partition's end, as (topic, partition, committed, end).
fn behind_the_end(
    environment: &Environment,
    group: &str,
    topics: &[(&str, i32)],
) -> Result<Vec<(String, i32, i64, i64)>> {
    let consumer: BaseConsumer = config(environment)
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut wanted = TopicPartitionList::new();
    for (topic, partitions) in topics {
        for partition in 0..*partitions {
            wanted.add_partition(topic, partition);
        }
    }
    let committed = consumer.committed_offsets(wanted, TIMEOUT)?;
    let mut behind = Vec::new();
    for (topic, partitions) in topics {
        for partition in 0..*partitions {
            let (_, end) = consumer.fetch_watermarks(topic, partition, TIMEOUT)?;
            let position = match committed
                .find_partition(topic, partition)
                .map(|element| element.offset())
            {
                Some(Offset::Offset(offset)) => offset,
                _ => -1,
            };
            if position != end {
                behind.push((topic.to_string(), partition, position, end));
            }
        }
    }
    Ok(behind)
}

/// A job caught up on a transactional source (the output of another exactly-once job,
/// with a transaction aborted) commits past the transactions' markers and the aborted
/// records, on the source and on its repartition topic: its group's committed offsets
/// reach the ends, so Kafka's own tools show no lag, and so does its lag metric. Two
/// workers, whose keyed events go through the repartition topic.
#[test]
fn a_caught_up_job_commits_past_transaction_markers() -> Result<()> {
    caught_up_on_a_transactional_source(2)
}

/// As [`a_caught_up_job_commits_past_transaction_markers`] with one worker, which keeps
/// its keyed events in process: its repartition offsets are committed at their ends too.
#[test]
fn a_caught_up_job_in_process_commits_past_transaction_markers() -> Result<()> {
    caught_up_on_a_transactional_source(1)
}

fn caught_up_on_a_transactional_source(parallelism: u32) -> Result<()> {
    let environment = Environment::load()?;
    let topics = Topics::create(&environment, 2)?;
    let base: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(
        repo_root().join("examples/page-views/streamjob.yaml"),
    )?)?;
    let mut manifest = manifest(&environment, base, &topics, "Any");
    manifest["spec"]["parallelism"] = json!(parallelism);
    manifest["spec"]["state"]["checkpointInterval"] = json!("1s");
    // No idle timeout: a partition turning idle changes the clocks the worker sends
    // through the repartition topic, which would move its offsets past the markers.
    if let Some(watermark) = manifest["spec"]["source"]["watermark"].as_object_mut() {
        watermark.remove("idleTimeout");
    }
    let name = manifest["metadata"]["name"]
        .as_str()
        .context("the manifest has a name")?
        .to_string();
    let directory = work_directory(&format!("markers-{parallelism}"))?;
    let job = write_job(&directory, &manifest)?;
    let mut workers = Vec::new();
    for ordinal in 0..parallelism {
        let state = format!("state-{ordinal}");
        workers.push(WorkerProcess::start(
            &environment,
            &spec(&directory, &job, ordinal, parallelism, &state),
        )?);
    }
    for worker in &mut workers {
        worker.wait_ready(Duration::from_secs(60))?;
    }
    let logs = || {
        (0..parallelism)
            .map(|ordinal| log_tail(&directory.join(format!("worker-{ordinal}.log"))))
            .collect::<Vec<_>>()
            .join("\n")
    };

    let upstream = producer(&environment, Some(&unique_name("e2e-upstream")))?;
    upstream.init_transactions(TIMEOUT)?;
    for (transaction, commit) in [(0, true), (1, true), (2, false)] {
        upstream.begin_transaction()?;
        for partition in 0..2 {
            let event = json!({
                "timestamp": format!("2026-01-01T00:00:{:02}Z", 10 + transaction),
                "status": 200,
                "url": format!("/{transaction}/{partition}"),
                "latencyMs": 10,
            });
            send_to(
                &upstream,
                &topics.source.name,
                partition,
                &serde_json::to_vec(&event)?,
            )?;
        }
        // Written before the end of the transaction, so an aborted one leaves records.
        upstream.flush(TIMEOUT)?;
        if commit {
            upstream.commit_transaction(TIMEOUT)?;
        } else {
            upstream.abort_transaction(TIMEOUT)?;
        }
    }

    // Per partition: two committed transactions (a record and a marker each), then an
    // aborted one (a record and its marker): the job must pass four records it is never
    // handed.
    let reader: BaseConsumer = config(&environment).create()?;
    for partition in 0..2 {
        let (_, end) = reader.fetch_watermarks(&topics.source.name, partition, TIMEOUT)?;
        ensure!(
            end == 6,
            "partition {partition} of the source ends at {end}, not 6"
        );
    }
    let group = sluice_crds::kafka::group_id("e2e", &name);
    let repartition = sluice_crds::kafka::repartition_topic("e2e", &name);
    let read = [(topics.source.name.as_str(), 2), (repartition.as_str(), 16)];
    let lag_lines = |workers: &[WorkerProcess]| -> Result<Vec<String>> {
        let mut lines = Vec::new();
        for worker in workers {
            let (_, text) = worker.get("/metrics")?;
            lines.extend(
                text.lines()
                    .filter(|line| line.starts_with("sluice_worker_consumer_lag_records{"))
                    .filter(|line| !line.ends_with(" 0"))
                    .map(str::to_string),
            );
        }
        Ok(lines)
    };
    // Checkpoints every second; the lag metric is refreshed every 10 s from statistics
    // taken every 5 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let behind = behind_the_end(&environment, &group, &read)?;
        let lagging = lag_lines(&workers)?;
        if behind.is_empty() && lagging.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "60 s after the last transaction the group {group} still has committed offsets \
             short of the ends (topic, partition, committed, end): {behind:?}, and lag \
             metrics above 0: {lagging:?}; logs: {}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for mut worker in workers {
        let status = worker.terminate(Duration::from_secs(30))?;
        assert!(
            status.success(),
            "SIGTERM stops the worker cleanly: {status}"
        );
    }
    Ok(())
}

/// Records that are not JSON, not UTF-8, huge, or of the wrong types each land in the
/// dead-letter topic with their reason and original bytes, and the worker keeps running.
#[test]
fn poison_records_go_to_the_dead_letter_topic_and_the_worker_goes_on() -> Result<()> {
    let environment = Environment::load()?;
    let topics = Topics::create(&environment, 2)?;
    let base = json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "StreamJob",
        "metadata": {"name": "poison"},
        "spec": {
            "parallelism": 1,
            "kafka": {"bootstrapServers": "x:1"},
            "source": {"topics": ["x"], "eventTime": {"field": "ts", "format": "UnixMillis"}, "watermark": {"maxOutOfOrderness": "1s"}},
            "pipeline": [
                {"keyBy": "event.user"},
                {"window": {"tumbling": {"size": "10s"}}},
                {"aggregate": {"total": {"function": "Sum", "of": "event.value"}}},
            ],
            "sink": {"topic": "y"},
        },
    });
    let manifest = manifest(&environment, base, &topics, "Any");
    let directory = work_directory("poison")?;
    let job = write_job(&directory, &manifest)?;
    let mut worker = WorkerProcess::start(&environment, &spec(&directory, &job, 0, 1, "state"))?;
    worker.wait_ready(Duration::from_secs(60))?;
    let huge = format!(
        "{{\"user\":\"u\",\"ts\":1000,\"value\":1,\"padding\":\"{}\"}}",
        "x".repeat(900_000)
    );
    let poison: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "decode-invalid-json"),
        (vec![0xff, 0xfe, 0x00, 0x7b], "decode-invalid-json"),
        (b"[1, 2, 3]".to_vec(), "decode-not-an-object"),
        (
            br#"{"user":"u","ts":{"when":"now"},"value":1}"#.to_vec(),
            "event-time-invalid",
        ),
        (br#"{"user":"u","value":1}"#.to_vec(), "event-time-missing"),
        (
            br#"{"user":"u","ts":1000,"value":"seven"}"#.to_vec(),
            "aggregate-not-number",
        ),
        (
            br#"{"user":1.5,"ts":1000,"value":1}"#.to_vec(),
            "key-unsupported-type",
        ),
        (
            huge.replace("\"value\":1", "\"value\":[1]").into_bytes(),
            "aggregate-not-number",
        ),
    ];
    let producer = producer(&environment, None)?;
    for (payload, _) in &poison {
        send_to(&producer, &topics.source.name, 0, payload)?;
    }
    send_to(&producer, &topics.source.name, 0, huge.as_bytes())?;
    for partition in 0..2 {
        send_to(
            &producer,
            &topics.source.name,
            partition,
            br#"{"user":"flush","ts":100000,"value":0}"#,
        )?;
    }
    producer.flush(TIMEOUT)?;
    let dead = read_committed(
        &environment,
        &topics.dead_letters.name,
        poison.len(),
        Duration::from_secs(2),
    )?;
    assert_eq!(
        dead.len(),
        poison.len(),
        "one dead letter per poison record"
    );
    for (read, (payload, reason)) in dead.iter().zip(&poison) {
        assert_eq!(&read.headers["sluice-reason"], reason);
        assert_eq!(&read.value, payload, "the original bytes, untouched");
    }
    // The huge valid record was counted: its window's result is 1.
    let results = read_committed(&environment, &topics.sink.name, 1, Duration::from_secs(2))?;
    let values: Vec<Value> = results
        .iter()
        .map(|read| serde_json::from_slice(&read.value).unwrap())
        .collect();
    assert!(
        values
            .iter()
            .any(|value| value["key"] == "u" && value["total"] == 1),
        "{values:?}"
    );
    assert!(worker.running(), "the worker keeps running");
    let status = worker.terminate(Duration::from_secs(30))?;
    assert!(status.success(), "{status}");
    Ok(())
}

/// A worker frozen as by a network partition while a second one with its ordinal starts
/// on a copy of its volume: the second fences the first, which stops and says why when
/// it wakes, and every window's result is committed exactly once.
#[test]
fn a_second_worker_with_the_same_ordinal_fences_the_first() -> Result<()> {
    let environment = Environment::load()?;
    let topics = Topics::create(&environment, 2)?;
    let base = json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "StreamJob",
        "metadata": {"name": "zombie"},
        "spec": {
            "parallelism": 1,
            "kafka": {"bootstrapServers": "x:1"},
            "source": {"topics": ["x"], "eventTime": {"field": "ts", "format": "UnixMillis"}, "watermark": {"maxOutOfOrderness": "1s"}},
            "pipeline": [
                {"keyBy": "event.user"},
                {"window": {"tumbling": {"size": "1s"}}},
                {"aggregate": {"n": {"function": "Count"}}},
            ],
            "sink": {"topic": "y"},
        },
    });
    let manifest = manifest(&environment, base, &topics, "Any");
    let directory = work_directory("zombie")?;
    let job = write_job(&directory, &manifest)?;
    let producer = producer(&environment, None)?;
    // Per partition in time order: 10 users, 100 events per second of event time.
    let mut expected: BTreeMap<(String, i64), u64> = BTreeMap::new();
    let mut produce = |from: i64, to: i64| -> Result<()> {
        for index in from..to {
            let partition = i32::try_from(index % 2)?;
            let time = 1_000_000 + index * 10;
            let user = format!("u{}", index % 10);
            *expected
                .entry((user.clone(), time - time % 1_000))
                .or_default() += 1;
            let payload = format!(r#"{{"user":"{user}","ts":{time}}}"#);
            send_to(
                &producer,
                &topics.source.name,
                partition,
                payload.as_bytes(),
            )?;
        }
        producer.flush(TIMEOUT)?;
        Ok(())
    };
    produce(0, 3_000)?;
    // Each its own log: the assertions below say which one was fenced.
    let spec_of = |state: &str| WorkerSpec {
        log: directory.join(format!("{state}.log")),
        ..spec(&directory, &job, 0, 1, state)
    };
    let mut first = WorkerProcess::start(&environment, &spec_of("state-first"))?;
    first.wait_ready(Duration::from_secs(60))?;
    // Frozen once it read every event and committed since (an idle worker then commits
    // nothing more, so a count of checkpoints alone would wait forever).
    let deadline = Instant::now() + Duration::from_secs(60);
    let metric = |name: &str| first.metric(name).unwrap_or(0.0);
    while metric("sluice_worker_events_in_total") < 3_000.0 {
        ensure!(
            Instant::now() < deadline,
            "the first worker did not read the 3,000 events"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let after_reading = metric("sluice_worker_checkpoints_total");
    while metric("sluice_worker_checkpoints_total") < after_reading + 1.0 {
        ensure!(
            Instant::now() < deadline,
            "the first worker did not commit what it read"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    first.pause()?;
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(directory.join("state-first"))
        .arg(directory.join("state-second"))
        .status()?;
    ensure!(status.success(), "copied the frozen worker's volume");
    let mut second = WorkerProcess::start(&environment, &spec_of("state-second"))?;
    second.wait_ready(Duration::from_secs(60))?;
    // Events waiting when the first wakes: it is fenced while producing them (librdkafka
    // then fails each send with a generic fatal error) as often as while committing.
    produce(3_000, 4_000)?;
    first.resume()?;
    let status = first.wait(Duration::from_secs(60))?;
    assert_eq!(
        status.code(),
        Some(3),
        "the fenced worker exits with code 3"
    );
    let log = std::fs::read_to_string(directory.join("state-first.log"))?;
    assert!(log.contains("fenced"), "the fenced worker says why");
    assert!(
        !log.contains("starting over"),
        "the fenced worker does not start over (that would fence the newer one): {}",
        log_tail(&directory.join("state-first.log"))
    );
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        second.running(),
        "the newer worker keeps running: {}",
        log_tail(&directory.join("state-second.log"))
    );
    produce(4_000, 6_000)?;
    // Far ahead on both partitions: every window fires.
    for partition in 0..2 {
        send_to(
            &producer,
            &topics.source.name,
            partition,
            br#"{"user":"flush","ts":9000000}"#,
        )?;
    }
    producer.flush(TIMEOUT)?;
    let results = read_committed(
        &environment,
        &topics.sink.name,
        expected.len(),
        Duration::from_secs(3),
    )?;
    let mut seen: BTreeMap<(String, i64), Vec<u64>> = BTreeMap::new();
    for read in &results {
        let value: Value = serde_json::from_slice(&read.value)?;
        let start = value["windowStart"].as_str().unwrap().to_string();
        let millis = expected
            .keys()
            .map(|(_, start)| *start)
            .find(|candidate| format_millis(*candidate) == start)
            .unwrap_or(-1);
        seen.entry((value["key"].as_str().unwrap().to_string(), millis))
            .or_default()
            .push(value["n"].as_u64().unwrap());
    }
    for (window, count) in &expected {
        assert_eq!(
            seen.get(window),
            Some(&vec![*count]),
            "{window:?} exactly once"
        );
    }
    assert_eq!(seen.len(), expected.len(), "nothing extra");
    second.terminate(Duration::from_secs(30))?;
    Ok(())
}

/// A time as the worker writes it (RFC 3339, UTC, milliseconds only when not zero).
fn format_millis(millis: i64) -> String {
    let seconds = millis.div_euclid(1_000);
    let fraction = millis.rem_euclid(1_000);
    let days = seconds.div_euclid(86_400);
    let rest = seconds.rem_euclid(86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let time = format!(
        "{:02}:{:02}:{:02}",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    );
    if fraction == 0 {
        format!("{year:04}-{month:02}-{day:02}T{time}Z")
    } else {
        format!("{year:04}-{month:02}-{day:02}T{time}.{fraction:03}Z")
    }
}
