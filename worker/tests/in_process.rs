//! The in-process exchange: a worker that owns every key group hands its keyed events and
//! its source clocks to its windows directly (`Engine::keep_keyed`, `Engine::keep_clocks`)
//! instead of through the repartition topic. Fed the same events, with the clocks applied
//! at the same moments, it gives what the topic path gives: the same results in the same
//! order, the same late events with the same details, the same dead letters, and a
//! checkpoint with the same watermark and channel clocks (which a later run reading the
//! topic again starts from).

mod common;

use common::job::{Generated, JobBuilder, generate_events};
use sluice_worker::engine::{Engine, EngineOptions, Routed};
use sluice_worker::exchange::{ExchangeRecord, Origin, SourcePartition};
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
    /// Encoded, "written" to the key group's repartition partition and read back.
    Topic,
    /// Kept in process.
    InProcess,
}

/// Runs `events` through an engine in `Any` mode that owns every key group, applying its
/// source clocks every `clock_every` events; checkpoints at the end (before `finish`).
fn run(
    manifest: &str,
    events: &[Generated],
    hop: Hop,
    clock_every: usize,
) -> (MemorySink, CheckpointRecord) {
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
    let mut buffer = Vec::new();
    let mut through_topic =
        |engine: &mut Engine, channel: i32, record: ExchangeRecord, sink: &mut MemorySink| {
            record.encode(&mut buffer);
            let read = ExchangeRecord::decode(&buffer).unwrap();
            let offset = &mut channel_offsets[usize::try_from(channel).unwrap()];
            engine
                .receive(channel, *offset, read, "repartition", sink)
                .unwrap();
            *offset += 1;
        };
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
                    let origin = Some(Origin {
                        source: SourcePartition {
                            topic: "in".into(),
                            partition: event.partition,
                        },
                        offset: event.offset,
                        original: event.payload.as_bytes().to_vec(),
                    });
                    let record = ExchangeRecord::Event {
                        event: keyed,
                        origin,
                    };
                    through_topic(&mut engine, channel, record, &mut sink);
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
                    for channel in 0..key_groups {
                        let record = ExchangeRecord::Watermark(clocks.clone());
                        through_topic(&mut engine, channel, record, &mut sink);
                    }
                }
                Hop::InProcess => engine.keep_clocks(&clocks, &mut sink).unwrap(),
            }
        }
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
    (sink, record)
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
                let (topic, topic_record) = run(&manifest, &events, Hop::Topic, clock_every);
                let (kept, kept_record) = run(&manifest, &events, Hop::InProcess, clock_every);
                let case = format!("{name}, clocks every {clock_every} events");
                let (topic_results, topic_late, topic_dead) = lines(&topic);
                let (kept_results, kept_late, kept_dead) = lines(&kept);
                assert!(!topic_results.is_empty(), "{case}: results");
                assert!(!topic_late.is_empty(), "{case}: late events");
                assert!(!topic_dead.is_empty(), "{case}: dead letters");
                assert_eq!(kept_results, topic_results, "{case}: results");
                assert_eq!(kept_late, topic_late, "{case}: late events");
                assert_eq!(kept_dead, topic_dead, "{case}: dead letters");
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
