//! Kafka from Rust through rdkafka against the real broker: topics with several partitions,
//! a produce/consume round trip, and transactions as a `read_committed` consumer sees them.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use rdkafka::producer::Producer as _;
use sluice_e2e::kafka::{TIMEOUT, TestTopic, consumer, poll_messages, producer, send};
use sluice_e2e::{Environment, unique_name};

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
