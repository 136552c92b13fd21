//! The in-process exchange: a worker that owns every key group hands its keyed events and
//! its source clocks to its windows directly (`Engine::keep_keyed`, `Engine::keep_clocks`)
//! instead of through the repartition topic. Fed the same events, with the clocks applied
//! at the same moments, it gives what the topic path gives: the same results in the same
//! order for each key, the same late events with the same details, the same dead letters
//! (across key groups, in the order their batches arrive through the topic), and a
//! checkpoint with the same watermark and channel clocks (which a later run reading the
//! topic again starts from).

use crate::common;

use common::job::{Generated, JobBuilder, generate_events};
use sluice_worker::engine::{Engine, EngineOptions, Routed};
use sluice_worker::exchange::{ExchangeBatches, ExchangeRecord, OriginRef, SourcePartition};
use sluice_worker::io::memory::MemorySink;
use sluice_worker::io::{Position, SourceRecord};
use sluice_worker::metrics::Metrics;
use sluice_worker::state::CheckpointTimers;
use sluice_worker::state::format::CheckpointRecord;
use sluice_worker::state::rocksdb::RocksDbStore;
use sluice_worker::time::watermark::PartitionId;

const PARTITIONS: i32 = 3;

/// The two ways keyed events reach their windows.
#[derive(Clone, Copy, Debug)]
enum Hop {
    /// Encoded into the batch of the key group's repartition partition, "written" there
    /// (when full, and every batch before a watermark record and at the end, as a worker
    /// sends them) and read back.
    Topic,
    /// Kept in process.
    InProcess,
}

/// What a run gave: the sink, the checkpoint at the end, and how many repartition records
/// were sent before the clocks or the end made every batch go (full batches).
struct Ran {
    sink: MemorySink,
    record: CheckpointRecord,
    sent_full: usize,
}

/// Small batches, so that some fill between clocks: 1 KiB each (a few events), 16 KiB
/// together.
const BATCH_BYTES: usize = 1024;
const PENDING_BATCH_BYTES: usize = 16 * 1024;

/// Runs `events` through an engine in `Any` mode that owns every key group, applying its
/// source clocks every `clock_every` events; checkpoints at the end (before `finish`).
fn run(manifest: &str, events: &[Generated], hop: Hop, clock_every: usize) -> Ran {
    let directory = tempfile::tempdir().unwrap();
    let (_, job) = sluice_crds::load_manifest(manifest).unwrap();
    let key_groups = i32::from(job.key_groups.get());
    let store = RocksDbStore::open(directory.path()).unwrap();
    let options = EngineOptions {
        state_cache_entries: 50,
    };
    let mut engine = Engine::new(&job, Box::new(store), options, Metrics::default()).unwrap();
    let sources: Vec<SourcePartition> = (0..PARTITIONS)
        .map(|partition| SourcePartition {
            topic: "in".into(),
            partition,
        })
        .collect();
    engine.use_exchange(sources);
    let partitions: Vec<PartitionId> = (0..PARTITIONS)
        .map(|partition| PartitionId::new(0, partition))
        .collect();
    engine.assign_partitions(&partitions, 0);
    engine.assign_channels(&(0..key_groups).map(|channel| (channel, 0)).collect());
    engine.read_channels(&(0..key_groups).collect::<Vec<_>>());
    let mut sink = MemorySink::default();
    let mut channel_offsets = vec![0i64; usize::try_from(key_groups).unwrap()];
    let mut through_topic =
        |engine: &mut Engine, channel: i32, bytes: &[u8], sink: &mut MemorySink| {
            let read = ExchangeRecord::decode(bytes).unwrap();
            let offset = &mut channel_offsets[usize::try_from(channel).unwrap()];
            engine
                .receive(channel, *offset, read, "repartition", sink)
                .unwrap();
            *offset += 1;
        };
    let mut batches = ExchangeBatches::with_limits(BATCH_BYTES, PENDING_BATCH_BYTES);
    let mut sent_full = 0;
    let mut buffer = Vec::new();
    for (index, event) in events.iter().enumerate() {
        let position = Position::Kafka {
            topic: "in".into(),
            partition: event.partition,
            offset: event.offset,
        };
        let record = SourceRecord {
            partition: PartitionId::new(0, event.partition),
            position: &position,
            payload: event.payload.as_bytes(),
        };
        let routed = engine.route(record, event.index, &mut sink).unwrap();
        if let Routed::Keyed(keyed) = routed {
            match hop {
                Hop::Topic => {
                    let channel = i32::from(keyed.key_group);
                    let origin = OriginRef {
                        topic: "in",
                        partition: event.partition,
                        offset: event.offset,
                        original: event.payload.as_bytes(),
                    };
                    if batches.push(channel, &keyed, Some(origin)) {
                        for (channel, bytes) in batches.take_ready() {
                            sent_full += 1;
                            through_topic(&mut engine, channel, &bytes, &mut sink);
                        }
                    }
                }
                Hop::InProcess => engine
                    .keep_keyed(&keyed, &position, event.payload.as_bytes(), &mut sink)
                    .unwrap(),
            }
        }
        // As a worker does: its source watermark moves more often than it sends clocks.
        engine.advance(event.index, &mut sink).unwrap();
        if index % clock_every == clock_every - 1 {
            let clocks = engine.source_clocks(event.index);
            match hop {
                Hop::Topic => {
                    // The events first: a watermark record follows those it covers.
                    for (channel, bytes) in batches.take_all() {
                        through_topic(&mut engine, channel, &bytes, &mut sink);
                    }
                    ExchangeRecord::Watermark(clocks).encode(&mut buffer);
                    for channel in 0..key_groups {
                        through_topic(&mut engine, channel, &buffer, &mut sink);
                    }
                }
                Hop::InProcess => engine.keep_clocks(&clocks, &mut sink).unwrap(),
            }
        }
    }
    for (channel, bytes) in batches.take_all() {
        through_topic(&mut engine, channel, &bytes, &mut sink);
    }
    let mut record = engine
        .checkpoint(1, "token", CheckpointTimers::InMemory)
        .unwrap();
    // Nothing was read through the topic in process: the next offsets stay where they
    // were, which is what the checkpoint of a worker in process records.
    for channel in &mut record.channels {
        channel.next_offset = 0;
    }
    engine.finish(&mut sink).unwrap();
    Ran {
        sink,
        record,
        sent_full,
    }
}

fn lines(sink: &MemorySink) -> (Vec<String>, Vec<String>, Vec<String>) {
    let results = sink
        .results
        .iter()
        .map(|record| String::from_utf8(record.value.clone()).unwrap())
        .collect();
    let rejected = |records: &[sluice_worker::io::memory::CollectedRejected]| {
        records
            .iter()
            .map(|record| format!("{record:?}"))
            .collect::<Vec<_>>()
    };
    (results, rejected(&sink.late), rejected(&sink.dead_letters))
}

/// Results in a stable order of their keys: each key's results in the order they came.
fn by_key(mut results: Vec<String>) -> Vec<String> {
    results.sort_by_cached_key(|result| {
        serde_json::from_str::<serde_json::Value>(result).unwrap()["key"].to_string()
    });
    results
}

fn sorted(mut lines: Vec<String>) -> Vec<String> {
    lines.sort();
    lines
}

#[test]
fn kept_in_process_the_keyed_events_give_what_the_repartition_topic_gives() {
    let events = generate_events(4_000, PARTITIONS, 60, 11);
    for (kind, manifest) in JobBuilder::every_window_kind() {
        // Disorder beyond the bound: which events are late depends on the watermark each
        // meets, and so on when the clocks arrive.
        let disordered = JobBuilder::tumbling()
            .out_of_orderness("500ms")
            .lateness(Some("300ms"))
            .build();
        for (name, manifest) in [(kind, manifest), ("tumbling, disordered", disordered)] {
            for clock_every in [1, 25, 200] {
                let topic = run(&manifest, &events, Hop::Topic, clock_every);
                let kept = run(&manifest, &events, Hop::InProcess, clock_every);
                let (topic_record, kept_record) = (&topic.record, &kept.record);
                let case = format!("{name}, clocks every {clock_every} events");
                if clock_every == 200 {
                    assert!(topic.sent_full > 0, "{case}: some batches filled");
                }
                let (topic_results, topic_late, topic_dead) = lines(&topic.sink);
                let (kept_results, kept_late, kept_dead) = lines(&kept.sink);
                assert!(!topic_results.is_empty(), "{case}: results");
                assert!(!topic_late.is_empty(), "{case}: late events");
                assert!(!topic_dead.is_empty(), "{case}: dead letters");
                if clock_every == 1 {
                    // Every batch goes at each event's clocks: the same order too.
                    assert_eq!(kept_results, topic_results, "{case}: results");
                    assert_eq!(kept_late, topic_late, "{case}: late events");
                    assert_eq!(kept_dead, topic_dead, "{case}: dead letters");
                }
                // Through the topic a batch holds one key group's events, so what a
                // keyed event makes at once (an update within the allowed lateness, a
                // late event set aside) comes out in the order the key groups' batches
                // arrive, as it always did from two workers: each key's results in the
                // same order, the same late events and dead letters.
                assert_eq!(
                    by_key(kept_results),
                    by_key(topic_results),
                    "{case}: results"
                );
                assert_eq!(sorted(kept_late), sorted(topic_late), "{case}: late events");
                assert_eq!(
                    sorted(kept_dead),
                    sorted(topic_dead),
                    "{case}: dead letters"
                );
                assert_eq!(kept_record.watermark, topic_record.watermark, "{case}");
                assert_eq!(
                    format!("{:?}", kept_record.channels),
                    format!("{:?}", topic_record.channels),
                    "{case}: channel clocks"
                );
            }
        }
    }
}
