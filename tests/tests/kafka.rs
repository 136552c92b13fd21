//! Kafka from Rust through rdkafka against the real broker: topics with several partitions,
//! a produce/consume round trip, and transactions as a `read_committed` consumer sees them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use futures::executor::block_on;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};
use rdkafka::{Message as _, Offset, TopicPartitionList};
use sluice_e2e::{Environment, unique_name};

const TIMEOUT: Duration = Duration::from_secs(30);

fn config(environment: &Environment) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &environment.kafka_bootstrap);
    config
}

/// A topic with `partitions` partitions that is deleted when dropped.
struct TestTopic {
    name: String,
    admin: AdminClient<DefaultClientContext>,
}

impl TestTopic {
    fn create(environment: &Environment, prefix: &str, partitions: i32) -> Result<Self> {
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

fn producer(
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
fn consumer(
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
fn poll_messages(
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

fn send(
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

#[test]
fn topic_with_partitions_round_trips_messages() -> Result<()> {
    const PARTITIONS: i32 = 3;
    const PER_PARTITION: usize = 5;
    let environment = Environment::load()?;
    let topic = TestTopic::create(&environment, "e2e-round-trip", PARTITIONS)?;

    let producer = producer(&environment, None)?;
    for partition in 0..PARTITIONS {
        for index in 0..PER_PARTITION {
            let payload = format!("p{partition}-m{index}");
            send(&producer, &topic.name, Some(partition), &payload, &payload)?;
        }
    }
    producer
        .flush(TIMEOUT)
        .context("failed to deliver the messages")?;

    let expected = usize::try_from(PARTITIONS)? * PER_PARTITION;
    let consumer = consumer(&environment, &topic.name, PARTITIONS, "read_uncommitted")?;
    let received = poll_messages(&consumer, expected, TIMEOUT)?;
    ensure!(
        received.len() == expected,
        "received {} of {expected} messages: {received:?}",
        received.len()
    );

    let mut by_partition: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for (partition, payload) in received {
        by_partition.entry(partition).or_default().push(payload);
    }
    for partition in 0..PARTITIONS {
        let expected: Vec<String> = (0..PER_PARTITION)
            .map(|index| format!("p{partition}-m{index}"))
            .collect();
        assert_eq!(
            by_partition.get(&partition),
            Some(&expected),
            "partition {partition} in order"
        );
    }
    Ok(())
}

#[test]
fn read_committed_consumer_sees_only_committed_transactions() -> Result<()> {
    let environment = Environment::load()?;
    let topic = TestTopic::create(&environment, "e2e-transactions", 2)?;
    let producer = producer(&environment, Some(&unique_name("e2e-tx")))?;
    producer
        .init_transactions(TIMEOUT)
        .context("failed to init transactions")?;

    // An aborted transaction: never visible to read_committed.
    producer
        .begin_transaction()
        .context("failed to begin the aborted transaction")?;
    for index in 0..3 {
        send(
            &producer,
            &topic.name,
            Some(index % 2),
            "aborted",
            &format!("aborted-{index}"),
        )?;
    }
    producer
        .flush(TIMEOUT)
        .context("failed to flush the aborted transaction")?;
    producer
        .abort_transaction(TIMEOUT)
        .context("failed to abort the transaction")?;

    // An open transaction: written to the log, not yet visible.
    producer
        .begin_transaction()
        .context("failed to begin the committed transaction")?;
    for index in 0..4 {
        send(
            &producer,
            &topic.name,
            Some(index % 2),
            "committed",
            &format!("committed-{index}"),
        )?;
    }
    producer
        .flush(TIMEOUT)
        .context("failed to flush the open transaction")?;

    let committed_reader = consumer(&environment, &topic.name, 2, "read_committed")?;
    let before_commit = poll_messages(&committed_reader, 1, Duration::from_secs(3))?;
    ensure!(
        before_commit.is_empty(),
        "read_committed saw an open transaction: {before_commit:?}"
    );

    // The uncommitted data is really there: read_uncommitted sees it, aborted records included.
    let uncommitted_reader = consumer(&environment, &topic.name, 2, "read_uncommitted")?;
    let uncommitted = poll_messages(&uncommitted_reader, 7, TIMEOUT)?;
    ensure!(
        uncommitted.len() == 7,
        "read_uncommitted saw {uncommitted:?}, expected 7 records"
    );

    producer
        .commit_transaction(TIMEOUT)
        .context("failed to commit the transaction")?;

    // Ask for more than was committed so an aborted record, if delivered, would show up.
    let mut after_commit: Vec<String> =
        poll_messages(&committed_reader, 5, Duration::from_secs(10))?
            .into_iter()
            .map(|(_, payload)| payload)
            .collect();
    after_commit.sort();
    let expected: Vec<String> = (0..4).map(|index| format!("committed-{index}")).collect();
    assert_eq!(
        after_commit, expected,
        "read_committed sees exactly the committed records"
    );
    Ok(())
}
