//! The autoscaler's effects: one sample of a job, from Kafka and from its workers.
//!
//! From Kafka (rdkafka, `read_committed`): per source partition the end offset, which
//! for a `read_committed` client is the last stable offset (librdkafka's ListOffsets asks
//! with the client's isolation level, so a transaction's commit marker is not lag), and
//! the position the job committed under its group. From each worker's `/metrics`: its
//! busy seconds, the CPU seconds its process used and the cores it may use. Any failure fails the whole sample: a failed measurement is
//! never zero lag.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::window::{Partition, Reading, WorkerReading};
use crate::lifecycle::effects::WorkerAdmin;

/// The longest wait for one Kafka request.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// The worker metric that says how busy a worker's processing loop is.
pub const BUSY_SECONDS_METRIC: &str = "sluice_worker_busy_seconds_total";
/// The worker metric of the CPU time its process used (every thread).
pub const CPU_SECONDS_METRIC: &str = "sluice_worker_cpu_seconds_total";
/// The worker metric of the cores it may use (its container's CPU limit).
pub const CPU_LIMIT_METRIC: &str = "sluice_worker_cpu_limit_cores";

/// The client settings of a job's Kafka reader: bootstrap servers, the job's group, and
/// the user's client properties (spec and Secret) but those the reader owns.
pub fn client_config(
    bootstrap_servers: &str,
    group_id: &str,
    properties: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (key, value) in properties {
        if !sluice_crds::kafka::OWNED_PROPERTIES.contains(&key.as_str()) {
            config.set(key, value);
        }
    }
    config
        .set("bootstrap.servers", bootstrap_servers)
        .set("group.id", group_id)
        .set("client.id", "sluice-controller-autoscaler")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    config
}

/// A Kafka reader for one job; it never subscribes, so it never joins the job's group.
pub struct KafkaReader {
    consumer: Arc<BaseConsumer>,
}

impl std::fmt::Debug for KafkaReader {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("KafkaReader")
            .finish_non_exhaustive()
    }
}

impl KafkaReader {
    /// A reader with `config`.
    pub fn new(config: &ClientConfig) -> Result<Self, String> {
        let consumer: BaseConsumer = config
            .create()
            .map_err(|error| format!("failed to create the Kafka client: {error}"))?;
        Ok(Self {
            consumer: Arc::new(consumer),
        })
    }

    /// Every partition of `topics`: its last stable offset and the job's committed
    /// position (a partition the job never committed counts from its first offset).
    pub async fn read(&self, topics: &[String]) -> Result<BTreeMap<Partition, Reading>, String> {
        let consumer = Arc::clone(&self.consumer);
        let topics = topics.to_vec();
        tokio::task::spawn_blocking(move || read_blocking(&consumer, &topics))
            .await
            .map_err(|error| format!("failed to read Kafka offsets: {error}"))?
    }
}

impl KafkaReader {
    /// The job's committed positions summed over every partition of `topics`; a topic
    /// that does not exist (a job without a repartition hop) and a partition the job never
    /// committed count nothing. The sum only grows while the job commits.
    pub async fn committed_positions(&self, topics: &[String]) -> Result<i64, String> {
        let consumer = Arc::clone(&self.consumer);
        let topics = topics.to_vec();
        tokio::task::spawn_blocking(move || committed_blocking(&consumer, &topics))
            .await
            .map_err(|error| format!("failed to read Kafka offsets: {error}"))?
    }
}

fn committed_blocking(consumer: &BaseConsumer, topics: &[String]) -> Result<i64, String> {
    let _ = consumer.poll(Duration::ZERO);
    let mut partitions = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), KAFKA_TIMEOUT)
            .map_err(|error| format!("failed to read the metadata of topic {topic}: {error}"))?;
        let Some(described) = metadata.topics().iter().find(|found| found.name() == topic) else {
            continue;
        };
        match described.error() {
            None => {}
            Some(rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => {
                continue;
            }
            Some(error) => return Err(format!("failed to read topic {topic}: {error:?}")),
        }
        for partition in described.partitions() {
            partitions.add_partition(topic, partition.id());
        }
    }
    if partitions.count() == 0 {
        return Ok(0);
    }
    let committed = consumer
        .committed_offsets(partitions, KAFKA_TIMEOUT)
        .map_err(|error| format!("failed to read the job's committed offsets: {error}"))?;
    let mut sum = 0_i64;
    for element in committed.elements() {
        if let Err(error) = element.error() {
            return Err(format!(
                "failed to read the committed offset of {}/{}: {error}",
                element.topic(),
                element.partition()
            ));
        }
        if let Offset::Offset(offset) = element.offset() {
            sum = sum.saturating_add(offset);
        }
    }
    Ok(sum)
}

fn read_blocking(
    consumer: &BaseConsumer,
    topics: &[String],
) -> Result<BTreeMap<Partition, Reading>, String> {
    // Serves the client's queued events and logs (it is never assigned a partition, so
    // no record comes back).
    let _ = consumer.poll(Duration::ZERO);
    let mut ends = TopicPartitionList::new();
    let mut starts = TopicPartitionList::new();
    let mut committed = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), KAFKA_TIMEOUT)
            .map_err(|error| format!("failed to read the metadata of topic {topic}: {error}"))?;
        let Some(described) = metadata.topics().iter().find(|found| found.name() == topic) else {
            return Err(format!("topic {topic} is not in the broker's metadata"));
        };
        if let Some(error) = described.error() {
            return Err(format!("failed to read topic {topic}: {error:?}"));
        }
        for partition in described.partitions() {
            let id = partition.id();
            ends.add_partition_offset(topic, id, Offset::End)
                .map_err(|error| format!("failed to list {topic}/{id}: {error}"))?;
            starts
                .add_partition_offset(topic, id, Offset::Beginning)
                .map_err(|error| format!("failed to list {topic}/{id}: {error}"))?;
            committed.add_partition(topic, id);
        }
    }
    // Timestamp -1 (the end) and -2 (the beginning): ListOffsets, one request per leader.
    let ends = consumer
        .offsets_for_times(ends, KAFKA_TIMEOUT)
        .map_err(|error| format!("failed to read the end offsets: {error}"))?;
    let starts = consumer
        .offsets_for_times(starts, KAFKA_TIMEOUT)
        .map_err(|error| format!("failed to read the first offsets: {error}"))?;
    let committed = consumer
        .committed_offsets(committed, KAFKA_TIMEOUT)
        .map_err(|error| format!("failed to read the job's committed offsets: {error}"))?;
    let offset_of = |list: &TopicPartitionList, topic: &str, partition: i32| {
        let element = list.find_partition(topic, partition)?;
        if let Err(error) = element.error() {
            return Some(Err(format!(
                "failed to read the offset of {topic}/{partition}: {error}"
            )));
        }
        match element.offset() {
            Offset::Offset(offset) => Some(Ok(offset)),
            _ => None,
        }
    };
    let mut readings = BTreeMap::new();
    for element in ends.elements() {
        let (topic, partition) = (element.topic(), element.partition());
        let end = offset_of(&ends, topic, partition)
            .ok_or_else(|| format!("no end offset for {topic}/{partition}"))??;
        let start = offset_of(&starts, topic, partition)
            .transpose()?
            .unwrap_or(0);
        let position = offset_of(&committed, topic, partition)
            .transpose()?
            .unwrap_or(start);
        readings.insert(
            (topic.to_string(), partition),
            Reading {
                end,
                position: position.max(start),
            },
        );
    }
    Ok(readings)
}

/// The value of metric `name` (no labels) in a Prometheus text exposition.
pub fn metric_value(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let value = rest.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// Each worker's reading (`None` for a worker whose metrics could not be read).
pub async fn worker_readings(
    admin: &WorkerAdmin,
    addresses: &[Option<String>],
) -> Vec<Option<WorkerReading>> {
    let mut readings = Vec::with_capacity(addresses.len());
    for address in addresses {
        let exposition = match address {
            Some(address) => admin.metrics(address).await.ok(),
            None => None,
        };
        readings.push(exposition.as_deref().and_then(worker_reading));
    }
    readings
}

/// A worker's reading from its metrics; `None` without the busy counter.
pub fn worker_reading(exposition: &str) -> Option<WorkerReading> {
    Some(WorkerReading {
        busy_seconds: metric_value(exposition, BUSY_SECONDS_METRIC)?,
        cpu_seconds: metric_value(exposition, CPU_SECONDS_METRIC),
        cpu_limit_cores: metric_value(exposition, CPU_LIMIT_METRIC),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metric_is_read_from_the_exposition() {
        let exposition = "# HELP sluice_worker_busy_seconds Seconds spent\n\
            # TYPE sluice_worker_busy_seconds counter\n\
            sluice_worker_busy_seconds_total 12.5\n\
            sluice_worker_busy_seconds_totalish 3\n";
        assert_eq!(metric_value(exposition, BUSY_SECONDS_METRIC), Some(12.5));
        assert_eq!(metric_value("", BUSY_SECONDS_METRIC), None);
        assert_eq!(
            metric_value("sluice_worker_busy_seconds_total NaNx", BUSY_SECONDS_METRIC),
            None
        );
    }

    #[test]
    fn a_worker_reading_needs_the_busy_counter_and_takes_cpu_when_served() {
        let full = "sluice_worker_busy_seconds_total 3.5\n\
            sluice_worker_cpu_seconds_total 7.25\n\
            sluice_worker_cpu_limit_cores 0.1\n";
        assert_eq!(
            worker_reading(full),
            Some(WorkerReading {
                busy_seconds: 3.5,
                cpu_seconds: Some(7.25),
                cpu_limit_cores: Some(0.1),
            })
        );
        assert_eq!(
            worker_reading("sluice_worker_busy_seconds_total 1\n"),
            Some(WorkerReading {
                busy_seconds: 1.0,
                cpu_seconds: None,
                cpu_limit_cores: None,
            })
        );
        assert_eq!(worker_reading("sluice_worker_cpu_seconds_total 7\n"), None);
    }

    #[test]
    fn the_reader_owns_what_keeps_it_out_of_the_group() {
        let properties = BTreeMap::from([
            ("group.id".to_string(), "other".to_string()),
            (
                "isolation.level".to_string(),
                "read_uncommitted".to_string(),
            ),
            ("security.protocol".to_string(), "SASL_SSL".to_string()),
        ]);
        let config = client_config("k:9092", "sluice.ns.job", &properties);
        assert_eq!(config.get("group.id"), Some("sluice.ns.job"));
        assert_eq!(config.get("isolation.level"), Some("read_committed"));
        assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(config.get("bootstrap.servers"), Some("k:9092"));
    }
}
