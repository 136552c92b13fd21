//! Kafka helpers for the end-to-end tests: topics that delete themselves, producers and
//! consumers of the test broker.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures::executor::block_on;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};
use rdkafka::{Message as _, Offset, TopicPartitionList};

use crate::{Environment, unique_name};

/// How long a Kafka operation of a test may take.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// A client configuration for the test broker.
pub fn config(environment: &Environment) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &environment.kafka_bootstrap);
    config
}

/// A topic with `partitions` partitions that is deleted when dropped.
pub struct TestTopic {
    pub name: String,
    admin: AdminClient<DefaultClientContext>,
}

impl TestTopic {
    /// Creates a topic named after `prefix`.
    pub fn create(environment: &Environment, prefix: &str, partitions: i32) -> Result<Self> {
        let admin: AdminClient<DefaultClientContext> =
            config(environment).create().with_context(|| {
                format!(
                    "failed to create a Kafka admin client for {}",
                    environment.kafka_bootstrap
                )
            })?;
        let name = unique_name(prefix);
        let topic = NewTopic::new(&name, partitions, TopicReplication::Fixed(1));
        let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
        let results = block_on(admin.create_topics([&topic], &options))
            .with_context(|| format!("failed to create topic {name}"))?;
        for result in results {
            if let Err((topic, error)) = result {
                bail!("failed to create topic {topic}: {error}");
            }
        }
        Ok(Self { name, admin })
    }
}

impl Drop for TestTopic {
    fn drop(&mut self) {
        let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
        if let Err(error) = block_on(self.admin.delete_topics(&[&self.name], &options)) {
            eprintln!("unable to delete topic {}: {error}", self.name);
        }
    }
}

/// An idempotent producer, transactional with `transactional_id`.
pub fn producer(
    environment: &Environment,
    transactional_id: Option<&str>,
) -> Result<ThreadedProducer<DefaultProducerContext>> {
    let mut config = config(environment);
    config
        .set("enable.idempotence", "true")
        .set("linger.ms", "5");
    if let Some(id) = transactional_id {
        config.set("transactional.id", id);
    }
    config.create().context("failed to create a Kafka producer")
}

/// A consumer reading `partitions` partitions of `topic` from the beginning.
pub fn consumer(
    environment: &Environment,
    topic: &str,
    partitions: i32,
    isolation: &str,
) -> Result<BaseConsumer> {
    let consumer: BaseConsumer = config(environment)
        .set("group.id", unique_name("e2e-group"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", isolation)
        .create()
        .context("failed to create a Kafka consumer")?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .context("failed to build the partition assignment")?;
    }
    consumer
        .assign(&assignment)
        .context("failed to assign partitions")?;
    Ok(consumer)
}

/// Polls until `count` messages arrived or `timeout` passed; returns (partition, payload)s.
pub fn poll_messages(
    consumer: &BaseConsumer,
    count: usize,
    timeout: Duration,
) -> Result<Vec<(i32, String)>> {
    let deadline = Instant::now() + timeout;
    let mut received = Vec::new();
    while received.len() < count && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(message)) => received.push((
                message.partition(),
                String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
            )),
            Some(Err(error)) => bail!("failed to consume: {error}"),
        }
    }
    Ok(received)
}

/// Enqueues one record.
pub fn send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    partition: Option<i32>,
    key: &str,
    payload: &str,
) -> Result<()> {
    let mut record = BaseRecord::to(topic).key(key).payload(payload);
    if let Some(partition) = partition {
        record = record.partition(partition);
    }
    producer
        .send(record)
        .map_err(|(error, _)| error)
        .with_context(|| format!("failed to enqueue {payload:?} for {topic}"))
}
