//! Exactly-once checks shared by the tests that kill, crash, rescale and restore workers:
//! input generated with the results it must give, produced to a topic, and the committed
//! output (read_committed) compared with them: none missing, duplicated, wrong or extra.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};

use crate::kafka::{config, producer};
use crate::{Environment, unique_name};

pub const WINDOW_MILLIS: i64 = 1_000;
pub const FAR_FUTURE: i64 = 4_102_358_400_000;

/// Counts and sums per key and window start: what the job must output, once each.
pub type Expected = HashMap<(String, i64), (u64, i64)>;

/// A xorshift64* generator from `state`: the same numbers on every run.
fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// `events` records over `partitions` partitions for `keys` keys. On each partition
/// event time grows by 4 ms a record, with up to 300 ms of disorder: less than the job's
/// 1 s out-of-orderness, so no record is ever late and every window has exactly one
/// result, whatever the workers' interleaving and restarts.
pub fn generate(events: usize, partitions: i32, keys: u64) -> (Vec<Vec<String>>, Expected) {
    let mut next = xorshift(0x2545_f491_4f6c_dd1d);
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

pub fn manifest(environment: &Environment, source: &str, sink: &str) -> Value {
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

/// Produces each partition's records, in order, to that partition of `topic`.
pub fn produce(
    environment: &Environment,
    topic: &str,
    per_partition: &[Vec<String>],
) -> Result<()> {
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
    producer.flush(Duration::from_secs(120))?;
    Ok(())
}

/// One far-future record on each of `partitions` partitions: it moves every partition's
/// clock past every window, so every window fires.
pub fn produce_flush(environment: &Environment, topic: &str, partitions: usize) -> Result<()> {
    let producer = producer(environment, None)?;
    let flush = format!(r#"{{"key":"flush","ts":{FAR_FUTURE},"value":0}}"#);
    for partition in 0..partitions {
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
pub struct Output {
    /// Occurrences of each (key, window) and its values.
    pub results: HashMap<(String, i64), Vec<(u64, i64)>>,
    /// Records read.
    pub records: usize,
}

pub fn read_output(
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
pub fn chrono_millis(text: &str) -> Result<i64> {
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
pub fn verify(expected: &Expected, output: &Output) -> Result<String> {
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

pub fn work_directory(name: &str) -> Result<PathBuf> {
    let directory = std::env::temp_dir().join(unique_name(name));
    std::fs::create_dir_all(&directory)?;
    Ok(directory)
}

/// Produces input like `generate`'s, made as it goes, at a rate the test changes while
/// it runs (the autoscaler's load steps), spread evenly over the partitions; `finish`
/// returns the results what it sent must give.
pub struct PacedProducer {
    rate: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<Expected>>>,
}

impl PacedProducer {
    /// Starts producing to the `partitions` partitions of `topic`, `keys` keys, at `rate`
    /// records per second.
    pub fn start(
        environment: &Environment,
        topic: &str,
        partitions: i32,
        keys: u64,
        rate: u64,
    ) -> Result<Self> {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let producer = producer(environment, None)?;
        let topic = topic.to_string();
        let rate = Arc::new(AtomicU64::new(rate));
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_rate, thread_stop) = (Arc::clone(&rate), Arc::clone(&stop));
        let thread = std::thread::spawn(move || -> Result<Expected> {
            let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
            let base = 1_795_687_200_000_i64;
            let mut steps = vec![0_i64; usize::try_from(partitions)?];
            let mut expected = Expected::new();
            let mut owed = 0.0_f64;
            let mut last = Instant::now();
            let mut partition = 0_usize;
            while !thread_stop.load(Ordering::SeqCst) {
                let now = Instant::now();
                owed += now.duration_since(last).as_secs_f64()
                    * thread_rate.load(Ordering::SeqCst) as f64;
                last = now;
                while owed >= 1.0 {
                    let time = base + steps[partition] * 4 - i64::try_from(next() % 300)?;
                    let key = format!("k{}", next() % keys);
                    let value = i64::try_from(next() % 1_000)? - 200;
                    let record = format!(r#"{{"key":"{key}","ts":{time},"value":{value}}}"#);
                    let mut pending = BaseRecord::<(), str>::to(&topic)
                        .partition(i32::try_from(partition)?)
                        .payload(&record);
                    loop {
                        match producer.send(pending) {
                            Ok(()) => break,
                            Err((error, returned))
                                if error.rdkafka_error_code()
                                    == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                            {
                                std::thread::sleep(Duration::from_millis(5));
                                pending = returned;
                            }
                            Err((error, _)) => {
                                anyhow::bail!("failed to produce to {topic}: {error}")
                            }
                        }
                    }
                    let entry = expected
                        .entry((key, time - time.rem_euclid(WINDOW_MILLIS)))
                        .or_default();
                    entry.0 += 1;
                    entry.1 += value;
                    steps[partition] += 1;
                    partition = (partition + 1) % steps.len();
                    owed -= 1.0;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            producer.flush(Duration::from_secs(120))?;
            Ok(expected)
        });
        Ok(Self {
            rate,
            stop,
            thread: Some(thread),
        })
    }

    /// Changes the rate.
    pub fn set_rate(&self, rate: u64) {
        self.rate.store(rate, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops, waits until what was sent is delivered, and returns the results it must
    /// give.
    pub fn finish(mut self) -> Result<Expected> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| anyhow::anyhow!("the paced producer panicked"))?,
            None => Ok(Expected::new()),
        }
    }
}

impl Drop for PacedProducer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
