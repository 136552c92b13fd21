//! Kafka for a worker: client settings from the StreamJob and its mounted Secret, the
//! names the job owns (consumer group, transactional ids, repartition topic), and the
//! transactional sink every output goes through.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use sluice_crds::CheckedJob;

use super::{OutputRecord, Position, Rejected, Sink};
use crate::metrics::Metrics;

/// Client properties the worker sets itself, defined with the validation that refuses
/// them in `spec.kafka.properties` (properties from the Secret are checked here).
pub use sluice_crds::kafka::OWNED_PROPERTIES;

/// The names a job owns in Kafka, derived from its namespace and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobNames {
    /// The consumer group its committed offsets live under (no consumer joins it).
    pub group_id: String,
    /// Its namespace and name, which its workers' transactional ids are made of.
    job: (String, String),
    /// Its repartition topic (`Any` partitioning).
    pub repartition_topic: String,
}

impl JobNames {
    /// The names of job `name` in `namespace`. A namespace has no '.', so
    /// `sluice.<namespace>.<name>` is unambiguous; a name too long for a topic is
    /// shortened with a hash of the whole.
    pub fn new(namespace: &str, name: &str) -> Self {
        let repartition_topic = sluice_crds::kafka::repartition_topic(namespace, name);
        Self {
            group_id: sluice_crds::kafka::group_id(namespace, name),
            job: (namespace.to_string(), name.to_string()),
            repartition_topic,
        }
    }

    /// The transactional id of worker `ordinal`.
    pub fn transactional_id(&self, ordinal: u32) -> String {
        sluice_crds::kafka::transactional_id(&self.job.0, &self.job.1, ordinal)
    }
}

/// Reads client properties from a directory of files (a mounted Secret): each file's name
/// is a property and its content the value, without a final newline.
pub fn read_properties_directory(directory: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let mut properties = BTreeMap::new();
    let entries = std::fs::read_dir(directory).with_context(|| {
        format!(
            "failed to read Kafka client properties from {} (the Secret of spec.kafka.secretRef)",
            directory.display()
        )
    })?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // A mounted Secret has hidden bookkeeping entries (..data, ..2026_...).
        if name.starts_with('.') || !entry.path().is_file() {
            continue;
        }
        let value = std::fs::read_to_string(entry.path())
            .with_context(|| format!("failed to read {}", entry.path().display()))?;
        properties.insert(name, value.trim_end_matches(['\n', '\r']).to_string());
    }
    Ok(properties)
}

/// The client configuration every client of the job shares: the brokers, the job's
/// properties and those of its Secret (which win). Fails when either sets a property the
/// worker owns.
pub fn client_config(
    job: &CheckedJob,
    secret_properties: &BTreeMap<String, String>,
) -> anyhow::Result<ClientConfig> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &job.spec.kafka.bootstrap_servers);
    for (origin, properties) in [
        ("spec.kafka.properties", &job.spec.kafka.properties),
        ("the Secret of spec.kafka.secretRef", secret_properties),
    ] {
        for (name, value) in properties {
            if OWNED_PROPERTIES.contains(&name.as_str()) {
                anyhow::bail!(
                    "failed to configure Kafka: {origin} sets {name}, which the worker sets itself for exactly-once processing: remove it"
                );
            }
            config.set(name, value);
        }
    }
    Ok(config)
}

/// Producer properties the worker sets unless the job does. Results become visible
/// only when a checkpoint commits (every `checkpointInterval`, seconds), and a commit
/// sends whatever lingers, so batching for 100 ms (as Kafka Streams' producers do) costs
/// no latency a reader can see, and saves most of a lightly loaded worker's wake-ups.
pub const PRODUCER_DEFAULTS: &[(&str, &str)] = &[("linger.ms", "100")];

/// Consumer properties the worker sets unless the job does: the broker answers a fetch
/// when 64 KiB are ready or after 100 ms, rather than for every few records, which at a
/// light load cost a worker more CPU than its records did. A record waits at most 100 ms
/// longer, against windows that close and commit in seconds. A partition whose prefetch
/// queue is full is fetched again after 100 ms, not librdkafka's 1 s: the worker drains a
/// full queue (`queued.min.messages`, 100,000 records) in under a second, and then sat
/// idle until the second was up, at less than half its speed (bench/README.md, "Fetching").
pub const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    ("fetch.wait.max.ms", "100"),
    ("fetch.min.bytes", "65536"),
    ("fetch.queue.backoff.ms", "100"),
];

/// `base` with each of `defaults` that it does not set.
pub fn with_defaults(base: &ClientConfig, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut config = base.clone();
    for (name, value) in defaults {
        if config.get(name).is_none() {
            config.set(*name, *value);
        }
    }
    config
}

/// Where the transactional sink writes.
#[derive(Clone, Debug)]
pub struct SinkTopics {
    /// Results.
    pub results: String,
    /// Dead letters (`None`: counted and dropped).
    pub dead_letters: Option<String>,
    /// Late events (`None`: counted and dropped).
    pub late: Option<String>,
    /// The repartition topic (`Any` partitioning).
    pub repartition: String,
}

/// The sink of a worker: every record goes to the open transaction of its one
/// transactional producer. When the producer's queue is full it waits for deliveries
/// (backpressure: the caller reads nothing meanwhile, so memory stays bounded).
pub struct TransactionalSink {
    producer: BaseProducer,
    topics: SinkTopics,
    metrics: Metrics,
    /// Records sent since it was made.
    sent: std::cell::Cell<u64>,
}

/// How long a send waits for room in a full queue before trying again.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(50);

impl TransactionalSink {
    /// A sink over `producer`, whose transactions were initialised.
    pub fn new(producer: BaseProducer, topics: SinkTopics, metrics: Metrics) -> Self {
        Self {
            producer,
            topics,
            metrics,
            sent: std::cell::Cell::new(0),
        }
    }

    /// The producer (for the transaction's steps).
    pub fn producer(&self) -> &BaseProducer {
        &self.producer
    }

    fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        value: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> anyhow::Result<()> {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).payload(value);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.sent.set(self.sent.get() + 1);
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    self.metrics.producer_queue_full.inc();
                    self.producer.poll(QUEUE_FULL_WAIT);
                    record = returned;
                }
                Err((error, _)) => {
                    return Err(error).with_context(|| format!("failed to produce to {topic}"));
                }
            }
        }
    }

    /// Writes a repartition record to partition `partition` (a key group).
    pub fn exchange(&self, partition: i32, value: &[u8]) -> anyhow::Result<()> {
        self.send(&self.topics.repartition, Some(partition), None, value, None)
    }

    fn rejected(&self, topic: Option<&str>, rejected: Rejected<'_>) -> anyhow::Result<()> {
        let Some(topic) = topic else {
            return Ok(());
        };
        let mut headers = OwnedHeaders::new_with_capacity(5)
            .insert(Header {
                key: "sluice-reason",
                value: Some(rejected.reason.as_str()),
            })
            .insert(Header {
                key: "sluice-detail",
                value: Some(rejected.detail),
            });
        if let Some(Position::Kafka {
            topic: source_topic,
            partition,
            offset,
        }) = rejected.position
        {
            headers = headers
                .insert(Header {
                    key: "sluice-source-topic",
                    value: Some(source_topic.as_str()),
                })
                .insert(Header {
                    key: "sluice-source-partition",
                    value: Some(&partition.to_string()),
                })
                .insert(Header {
                    key: "sluice-source-offset",
                    value: Some(&offset.to_string()),
                });
        }
        self.send(topic, None, None, rejected.original, Some(headers))
    }

    /// Records sent (into transactions) since the sink was made.
    pub fn sent(&self) -> u64 {
        self.sent.get()
    }

    /// Records waiting to be delivered.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }
}

impl Sink for TransactionalSink {
    fn result(&mut self, record: OutputRecord) -> anyhow::Result<()> {
        self.send(
            &self.topics.results,
            None,
            record.key.as_deref(),
            &record.value,
            None,
        )
    }

    fn dead_letter(&mut self, rejected: Rejected<'_>) -> anyhow::Result<()> {
        self.rejected(self.topics.dead_letters.as_deref(), rejected)
    }

    fn late(&mut self, rejected: Rejected<'_>) -> anyhow::Result<()> {
        self.rejected(self.topics.late.as_deref(), rejected)
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        // The transaction's commit flushes: nothing is durable before it.
        self.producer.poll(Duration::ZERO);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_fit_kafka() {
        let names = JobNames::new("shop", "page-views");
        assert_eq!(names.group_id, "sluice.shop.page-views");
        assert_eq!(names.transactional_id(3), "sluice.shop.page-views.3");
        assert_eq!(
            names.repartition_topic,
            "sluice.shop.page-views.repartition"
        );
        let long = JobNames::new("shop", &"a".repeat(253));
        assert_eq!(long.repartition_topic.len(), 249);
        assert!(long.repartition_topic.ends_with(".repartition"));
        assert_ne!(
            long.repartition_topic,
            JobNames::new("shop", &"a".repeat(252)).repartition_topic
        );
    }

    #[test]
    fn a_secret_directory_gives_properties_without_final_newlines() {
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(directory.path().join("sasl.username"), "user\n").unwrap();
        std::fs::write(directory.path().join("security.protocol"), "SASL_SSL").unwrap();
        std::fs::create_dir(directory.path().join("..data")).unwrap();
        let properties = read_properties_directory(directory.path()).unwrap();
        assert_eq!(
            properties.into_iter().collect::<Vec<_>>(),
            vec![
                ("sasl.username".to_string(), "user".to_string()),
                ("security.protocol".to_string(), "SASL_SSL".to_string())
            ]
        );
    }

    #[test]
    fn batching_defaults_yield_to_the_jobs_properties() {
        let mut base = ClientConfig::new();
        base.set("linger.ms", "0");
        let producer = with_defaults(&base, PRODUCER_DEFAULTS);
        assert_eq!(producer.get("linger.ms"), Some("0"), "the job's value wins");
        let consumer = with_defaults(&base, CONSUMER_DEFAULTS);
        assert_eq!(consumer.get("fetch.wait.max.ms"), Some("100"));
        assert_eq!(consumer.get("fetch.min.bytes"), Some("65536"));
        assert_eq!(consumer.get("fetch.queue.backoff.ms"), Some("100"));
        assert_eq!(
            with_defaults(&ClientConfig::new(), PRODUCER_DEFAULTS).get("linger.ms"),
            Some("100")
        );
    }
}
