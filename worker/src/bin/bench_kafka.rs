//! The Kafka side of the benchmark (bench/kafka-throughput.sh), not part of the image:
//!
//! - `load`: writes a JSON-lines file into a topic, fast (keyed by `url` or spread over
//!   the partitions);
//! - `passthrough`: the limit: consumes a topic with read_committed and produces every
//!   record unchanged to another in transactions with the offsets, no processing, until
//!   it has read everything the topic held when it started;
//! - `wait`: waits until a consumer group's committed offsets reach the end of a topic (a
//!   Sluice worker caught up), printing the elapsed time;
//! - `latency`: produces page views at a fixed rate with the wall clock as their event
//!   time and reads the results, printing how long after its window could fire (window
//!   end plus the out-of-orderness) each result became visible.

use std::collections::HashMap;
use std::io::BufRead as _;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};
use sluice_worker::io::kafka::{CONSUMER_DEFAULTS, with_defaults};

#[derive(Debug, Parser)]
#[command(about = "Kafka tools of the Sluice benchmark")]
struct Arguments {
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a topic (replacing one of the same name).
    CreateTopic {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        partitions: i32,
    },
    /// Delete every topic whose name starts with `prefix`.
    DeleteTopics {
        #[arg(long)]
        prefix: String,
    },
    /// Print the number of records in a topic (end minus beginning offsets).
    Count {
        #[arg(long)]
        topic: String,
    },
    /// Write a JSON-lines file into a topic.
    Load {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        input: PathBuf,
        /// Use the event's `url` as the record key (the producer partitions by it).
        #[arg(long)]
        keyed: bool,
        /// Write record i to partition i mod N of the topic's N partitions (unkeyed input
        /// whose partitions advance in event time together), instead of librdkafka's
        /// sticky partitioner (runs of a few thousand records per partition).
        #[arg(long, conflicts_with = "keyed")]
        round_robin: Option<i32>,
    },
    /// Consume → transactional produce with no processing: the limit.
    Passthrough {
        #[arg(long)]
        input: String,
        #[arg(long)]
        output: String,
        /// Commit interval, milliseconds.
        #[arg(long, default_value_t = 1000)]
        commit_interval: u64,
    },
    /// Wait until `group`'s committed offsets reach the end of `topic`.
    Wait {
        #[arg(long)]
        group: String,
        #[arg(long)]
        topic: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Produce at a fixed rate and measure result visibility.
    Latency {
        #[arg(long)]
        input: String,
        #[arg(long)]
        output: String,
        /// Events per second.
        #[arg(long)]
        rate: u64,
        /// For how long, seconds.
        #[arg(long, default_value_t = 120)]
        seconds: u64,
        /// The job's maximum out-of-orderness, milliseconds (part of the window wait).
        #[arg(long, default_value_t = 5000)]
        out_of_orderness: i64,
        /// How long to keep reading results after the last event, seconds.
        #[arg(long, default_value_t = 90)]
        drain: u64,
    },
}

fn config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    config
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process, in clock ticks (100 per second on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

fn send_blocking(
    producer: &BaseProducer,
    mut record: BaseRecord<'_, [u8], [u8]>,
) -> anyhow::Result<()> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                returned,
            )) => {
                producer.poll(Duration::from_millis(10));
                record = returned;
            }
            Err((error, _)) => return Err(error.into()),
        }
    }
}

fn load(
    bootstrap: &str,
    topic: &str,
    input: &PathBuf,
    keyed: bool,
    round_robin: Option<i32>,
) -> anyhow::Result<()> {
    let producer: BaseProducer = config(bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.kbytes", "262144")
        .create()?;
    let file = std::io::BufReader::with_capacity(1 << 22, std::fs::File::open(input)?);
    let started = Instant::now();
    let mut count = 0u64;
    for line in file.split(b'\n') {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        let key = if keyed { url_of(&line) } else { None };
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).payload(&line);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(partitions) = round_robin.filter(|partitions| *partitions > 0) {
            let partition = count % u64::try_from(partitions)?;
            record = record.partition(i32::try_from(partition)?);
        }
        send_blocking(&producer, record)?;
        count += 1;
        if count.is_multiple_of(100_000) {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(300))?;
    eprintln!(
        "loaded {count} records into {topic} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The value of the `url` field, found in the text (the loader must not cost a JSON parse).
fn url_of(line: &[u8]) -> Option<&[u8]> {
    let marker = b"\"url\":\"";
    let start = line
        .windows(marker.len())
        .position(|window| window == marker)?
        + marker.len();
    let end = line[start..].iter().position(|byte| *byte == b'"')? + start;
    Some(&line[start..end])
}

/// The end offsets of every partition of `topic`.
fn end_offsets(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<Vec<(i32, i64)>> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
    let partitions = metadata
        .topics()
        .first()
        .map(|found| found.partitions().len())
        .context("the topic has no metadata")?;
    let mut ends = Vec::new();
    for partition in 0..i32::try_from(partitions)? {
        let (_, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(30))?;
        ends.push((partition, high));
    }
    Ok(ends)
}

fn passthrough(
    bootstrap: &str,
    input: &str,
    output: &str,
    commit_interval: u64,
) -> anyhow::Result<()> {
    let group = format!("bench-passthrough-{}", now_millis());
    // The worker's fetch defaults (batched fetches, a full prefetch queue fetched again
    // after 100 ms), so the limit reads at least as fast as the worker can.
    let consumer: BaseConsumer = with_defaults(&config(bootstrap), CONSUMER_DEFAULTS)
        .set("group.id", &group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()?;
    let producer: BaseProducer = config(bootstrap)
        .set("transactional.id", &group)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("transaction.timeout.ms", "60000")
        .create()?;
    producer.init_transactions(Duration::from_secs(30))?;
    let ends = end_offsets(&consumer, input)?;
    let total: i64 = ends.iter().map(|(_, end)| end).sum();
    let mut assignment = TopicPartitionList::new();
    for (partition, _) in &ends {
        assignment.add_partition_offset(input, *partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    producer.begin_transaction()?;
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    let mut positions: HashMap<i32, i64> = HashMap::new();
    let mut read = 0i64;
    let mut last_commit = Instant::now();
    let interval = Duration::from_millis(commit_interval);
    let commit = |positions: &HashMap<i32, i64>| -> anyhow::Result<()> {
        let mut offsets = TopicPartitionList::new();
        for (partition, next) in positions {
            offsets.add_partition_offset(input, *partition, Offset::Offset(*next))?;
        }
        if offsets.count() > 0 {
            let metadata = consumer.group_metadata().context("no group metadata")?;
            producer.send_offsets_to_transaction(&offsets, &metadata, Duration::from_secs(30))?;
        }
        producer.commit_transaction(Duration::from_secs(60))?;
        producer.begin_transaction()?;
        Ok(())
    };
    let done = |positions: &HashMap<i32, i64>| {
        ends.iter()
            .all(|(partition, end)| positions.get(partition).copied().unwrap_or(0) >= *end)
    };
    while !done(&positions) {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message?;
            let record =
                BaseRecord::<[u8], [u8]>::to(output).payload(message.payload().unwrap_or_default());
            send_blocking(&producer, record)?;
            positions.insert(message.partition(), message.offset() + 1);
            read += 1;
        }
        if last_commit.elapsed() >= interval {
            commit(&positions)?;
            last_commit = Instant::now();
        }
    }
    commit(&positions)?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    println!(
        "{{\"mode\":\"passthrough\",\"events\":{read},\"records_in_topic\":{total},\"seconds\":{seconds:.2},\"events_per_second\":{:.0},\"cpu_seconds\":{cpu:.2},\"events_per_cpu_second\":{:.0}}}",
        read as f64 / seconds,
        read as f64 / cpu.max(1e-9)
    );
    Ok(())
}

fn wait(bootstrap: &str, group: &str, topic: &str, timeout: u64) -> anyhow::Result<()> {
    let consumer: BaseConsumer = config(bootstrap).set("group.id", group).create()?;
    let ends = end_offsets(&consumer, topic)?;
    let mut wanted = TopicPartitionList::new();
    for (partition, _) in &ends {
        wanted.add_partition(topic, *partition);
    }
    let started = Instant::now();
    loop {
        let committed = consumer.committed_offsets(wanted.clone(), Duration::from_secs(30))?;
        let caught_up = ends.iter().all(|(partition, end)| {
            committed
                .find_partition(topic, *partition)
                .and_then(|element| match element.offset() {
                    Offset::Offset(offset) => Some(offset),
                    _ => None,
                })
                .is_some_and(|offset| offset >= *end)
        });
        if caught_up {
            println!(
                "{{\"caught_up_after_seconds\":{:.2}}}",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(timeout) {
            bail!("group {group} did not reach the end of {topic} within {timeout}s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn latency(
    bootstrap: &str,
    input: &str,
    output: &str,
    rate: u64,
    seconds: u64,
    out_of_orderness: i64,
    drain: u64,
) -> anyhow::Result<()> {
    let producer: BaseProducer = config(bootstrap).set("linger.ms", "5").create()?;
    let consumer: BaseConsumer = config(bootstrap)
        .set("group.id", format!("bench-latency-{}", now_millis()))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()?;
    let ends = end_offsets(&consumer, output)?;
    let mut assignment = TopicPartitionList::new();
    for (partition, end) in &ends {
        assignment.add_partition_offset(output, *partition, Offset::Offset(*end))?;
    }
    consumer.assign(&assignment)?;
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut next = Instant::now();
    let mut sent = 0u64;
    let mut latencies = Vec::new();
    let mut page = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) + Duration::from_secs(drain) {
        if started.elapsed() < Duration::from_secs(seconds) {
            while Instant::now() >= next {
                page = (page + 7919) % 1000;
                let timestamp = chrono_like(now_millis());
                let line = format!(
                    r#"{{"timestamp":"{timestamp}","url":"/p/{page}","status":200,"latencyMs":5}}"#
                );
                send_blocking(
                    &producer,
                    BaseRecord::<[u8], [u8]>::to(input).payload(line.as_bytes()),
                )?;
                sent += 1;
                next += interval;
            }
        }
        producer.poll(Duration::ZERO);
        while let Some(message) = consumer.poll(Duration::from_millis(1)) {
            let message = message?;
            let visible = now_millis();
            let value: serde_json::Value =
                serde_json::from_slice(message.payload().unwrap_or_default())?;
            if value["isUpdate"] == true {
                continue;
            }
            if let Some(end) = value["windowEnd"].as_str().and_then(parse_millis) {
                // Only windows wholly inside the measured period.
                latencies.push(visible - end - out_of_orderness);
            }
        }
    }
    latencies.sort_unstable();
    let at = |fraction: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * fraction).round() as usize)
            .copied()
            .unwrap_or(-1)
    };
    println!(
        "{{\"mode\":\"latency\",\"rate\":{rate},\"sent\":{sent},\"results\":{},\"p50_ms\":{},\"p99_ms\":{},\"max_ms\":{}}}",
        latencies.len(),
        at(0.5),
        at(0.99),
        latencies.last().copied().unwrap_or(-1)
    );
    Ok(())
}

/// RFC 3339 of a time in milliseconds, UTC.
fn chrono_like(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .map(|time| time.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

fn parse_millis(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|time| time.timestamp_millis())
}

fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = config(bootstrap).create()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(60)));
    let _ = futures::executor::block_on(admin.delete_topics(&[topic], &options))?;
    // Deletion is asynchronous: retry the creation until the old topic is gone.
    let started = Instant::now();
    loop {
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let results = futures::executor::block_on(admin.create_topics([&new], &options))?;
        match results.into_iter().next() {
            Some(Ok(_)) => return Ok(()),
            Some(Err((_, code))) if started.elapsed() < Duration::from_secs(60) => {
                eprintln!("waiting to create {topic}: {code}");
                std::thread::sleep(Duration::from_millis(500));
            }
            Some(Err((_, code))) => bail!("failed to create {topic}: {code}"),
            None => bail!("failed to create {topic}: no result"),
        }
    }
}

fn delete_topics(bootstrap: &str, prefix: &str) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    let consumer: BaseConsumer = config(bootstrap).create()?;
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(30))?;
    let names: Vec<String> = metadata
        .topics()
        .iter()
        .map(|topic| topic.name().to_owned())
        .filter(|name| name.starts_with(prefix))
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = config(bootstrap).create()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(60)));
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    for result in futures::executor::block_on(admin.delete_topics(&refs, &options))? {
        match result {
            Ok(name) => eprintln!("deleted {name}"),
            Err((name, code)) => eprintln!("could not delete {name}: {code}"),
        }
    }
    Ok(())
}

fn count(bootstrap: &str, topic: &str) -> anyhow::Result<()> {
    let consumer: BaseConsumer = config(bootstrap).create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
    let found = metadata.topics().first().context("no metadata")?;
    if found.error().is_some() || found.partitions().is_empty() {
        bail!("no topic {topic}");
    }
    let mut total = 0;
    for partition in found.partitions() {
        let (low, high) =
            consumer.fetch_watermarks(topic, partition.id(), Duration::from_secs(30))?;
        total += high - low;
    }
    println!("{} {total}", found.partitions().len());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let arguments = Arguments::parse();
    match &arguments.command {
        Command::CreateTopic { topic, partitions } => {
            create_topic(&arguments.bootstrap, topic, *partitions)
        }
        Command::Load {
            topic,
            input,
            keyed,
            round_robin,
        } => load(&arguments.bootstrap, topic, input, *keyed, *round_robin),
        Command::Passthrough {
            input,
            output,
            commit_interval,
        } => passthrough(&arguments.bootstrap, input, output, *commit_interval),
        Command::Wait {
            group,
            topic,
            timeout,
        } => wait(&arguments.bootstrap, group, topic, *timeout),
        Command::Latency {
            input,
            output,
            rate,
            seconds,
            out_of_orderness,
            drain,
        } => latency(
            &arguments.bootstrap,
            input,
            output,
            *rate,
            *seconds,
            *out_of_orderness,
            *drain,
        ),
        Command::DeleteTopics { prefix } => delete_topics(&arguments.bootstrap, prefix),
        Command::Count { topic } => count(&arguments.bootstrap, topic),
    }
}
