//! State that goes back to a checkpoint: an engine that crashes after a checkpoint and is
//! restored from it gives exactly the results of an uninterrupted run; a restore maps
//! aggregates by name (or refuses what cannot be reused); and a key group's state and
//! timers move to another engine as a rescale moves them.

use crate::common;

use common::job::{Generated, JobBuilder, generate_events};
use sluice_worker::engine::{Engine, EngineOptions, Routed};
use sluice_worker::io::memory::MemorySink;
use sluice_worker::io::{Position, SourceRecord};
use sluice_worker::metrics::Metrics;
use sluice_worker::state::rocksdb::RocksDbStore;
use sluice_worker::state::{CheckpointTimers, key_group};
use sluice_worker::time::watermark::PartitionId;

fn options(cache: usize) -> EngineOptions {
    EngineOptions {
        state_cache_entries: cache,
    }
}

fn record<'a>(event: &'a Generated, position: &'a Position) -> SourceRecord<'a> {
    SourceRecord {
        partition: PartitionId::new(0, event.partition),
        position,
        payload: event.payload.as_bytes(),
    }
}

fn position(event: &Generated) -> Position {
    Position::Kafka {
        topic: "in".into(),
        partition: event.partition,
        offset: event.offset,
    }
}

/// Feeds `events` to `engine`, the processing time being the event's index.
fn feed(engine: &mut Engine, events: &[Generated], sink: &mut MemorySink) {
    for event in events {
        let position = position(event);
        engine
            .process(record(event, &position), event.index, sink)
            .unwrap();
    }
}

fn result_lines(sink: &MemorySink) -> Vec<String> {
    sink.results
        .iter()
        .map(|record| String::from_utf8(record.value.clone()).unwrap())
        .collect()
}

/// The results of one run over every event, with no checkpoint or crash.
fn uninterrupted(manifest: &str, events: &[Generated]) -> Vec<String> {
    let directory = tempfile::tempdir().unwrap();
    let (_, job) = sluice_crds::load_manifest(manifest).unwrap();
    let store = RocksDbStore::open(directory.path()).unwrap();
    let mut engine =
        Engine::new(&job, Box::new(store), options(100_000), Metrics::default()).unwrap();
    let mut sink = MemorySink::default();
    feed(&mut engine, events, &mut sink);
    engine.finish(&mut sink).unwrap();
    result_lines(&sink)
}

/// Runs events `[0, checkpoint_at)`, checkpoints (committed), runs up to `crash_at`
/// (with a second checkpoint that never commits when `pending_at` is set), crashes, restores
/// and replays from the restored offsets. Returns the committed results.
fn crash_and_restore(
    manifest: &str,
    events: &[Generated],
    cache: usize,
    checkpoint_at: usize,
    pending_at: Option<usize>,
    crash_at: usize,
) -> Vec<String> {
    let directory = tempfile::tempdir().unwrap();
    let (_, job) = sluice_crds::load_manifest(manifest).unwrap();
    let mut committed = Vec::new();
    {
        let store = RocksDbStore::open(directory.path()).unwrap();
        let mut engine =
            Engine::new(&job, Box::new(store), options(cache), Metrics::default()).unwrap();
        let mut sink = MemorySink::default();
        feed(&mut engine, &events[..checkpoint_at], &mut sink);
        engine
            .checkpoint(1, "t1", CheckpointTimers::InMemory)
            .unwrap();
        engine.complete_checkpoint(1).unwrap();
        committed.extend(result_lines(&sink));
        // Outputs after the checkpoint belong to a transaction that never commits.
        let mut lost = MemorySink::default();
        let pending_at = pending_at.unwrap_or(crash_at);
        feed(&mut engine, &events[checkpoint_at..pending_at], &mut lost);
        if pending_at < crash_at {
            engine
                .checkpoint(2, "t2", CheckpointTimers::InMemory)
                .unwrap();
        }
        feed(&mut engine, &events[pending_at..crash_at], &mut lost);
        // The process dies: nothing is written back.
    }
    let store = RocksDbStore::open(directory.path()).unwrap();
    let (mut engine, record) =
        Engine::restore(&job, Box::new(store), options(cache), Metrics::default(), 0).unwrap();
    let record = record.expect("checkpoint 1 is restored");
    assert_eq!(record.id, 1);
    let mut sink = MemorySink::default();
    let replay: Vec<Generated> = events
        .iter()
        .filter(|event| {
            let next = record
                .partitions
                .iter()
                .find(|partition| partition.partition == event.partition)
                .map_or(0, |partition| partition.next_offset);
            event.offset >= next
        })
        .cloned()
        .collect();
    assert_eq!(
        replay.len(),
        events.len() - checkpoint_at,
        "the offsets restored are exactly those at the checkpoint"
    );
    feed(&mut engine, &replay, &mut sink);
    engine.finish(&mut sink).unwrap();
    committed.extend(result_lines(&sink));
    committed
}

#[test]
fn a_crash_after_a_checkpoint_gives_the_results_of_an_uninterrupted_run() {
    let events = generate_events(3_000, 2, 40, 7);
    for (kind, manifest) in JobBuilder::every_window_kind() {
        let expected = uninterrupted(&manifest, &events);
        assert!(expected.len() > 30, "{kind}: the run produces results");
        for cache in [5, 100_000] {
            for (checkpoint_at, pending_at, crash_at) in [
                (1_000, None, 1_700),
                (1_500, Some(2_000), 2_600),
                (10, None, 2_999),
                (2_999, None, 3_000),
            ] {
                let actual = crash_and_restore(
                    &manifest,
                    &events,
                    cache,
                    checkpoint_at,
                    pending_at,
                    crash_at,
                );
                assert!(
                    actual == expected,
                    "{kind}, cache {cache}, checkpoint at {checkpoint_at}, crash at {crash_at}: \
                     {} results instead of {}; first difference: {:?}",
                    actual.len(),
                    expected.len(),
                    actual
                        .iter()
                        .zip(&expected)
                        .find(|(actual, expected)| actual != expected)
                );
            }
        }
    }
}

/// Checkpoints along a run, some of which write the cached keys' timers to the store
/// (where they then come due as well as from memory, as after a savepoint), change no
/// result nor its order. The run then restarts from its last checkpoint (whose timers it
/// takes as stored when that checkpoint wrote them, and rebuilds otherwise) and finishes
/// with the results of a run without checkpoints.
#[test]
fn checkpoints_along_a_run_change_no_result_nor_its_order() {
    use CheckpointTimers::{InMemory, InStore};
    let events = generate_events(3_000, 2, 40, 11);
    for (kind, manifest) in JobBuilder::every_window_kind() {
        let expected = uninterrupted(&manifest, &events);
        let (_, job) = sluice_crds::load_manifest(&manifest).unwrap();
        for cache in [5, 100_000] {
            for (every, last) in [
                (20, InStore),
                (20, InMemory),
                (400, InStore),
                (400, InMemory),
            ] {
                let directory = tempfile::tempdir().unwrap();
                let mut committed = Vec::new();
                let restart_at = 2_000;
                {
                    let store = RocksDbStore::open(directory.path()).unwrap();
                    let mut engine =
                        Engine::new(&job, Box::new(store), options(cache), Metrics::default())
                            .unwrap();
                    let mut sink = MemorySink::default();
                    let chunks: Vec<&[Generated]> = events[..restart_at].chunks(every).collect();
                    for (id, chunk) in (1..).zip(&chunks) {
                        feed(&mut engine, chunk, &mut sink);
                        let timers = if id == chunks.len() as u64 {
                            last
                        } else if id % 3 == 0 {
                            InStore
                        } else {
                            InMemory
                        };
                        engine.checkpoint(id, &format!("t{id}"), timers).unwrap();
                        engine.complete_checkpoint(id).unwrap();
                    }
                    committed.extend(result_lines(&sink));
                }
                let store = RocksDbStore::open(directory.path()).unwrap();
                let (mut engine, record) =
                    Engine::restore(&job, Box::new(store), options(cache), Metrics::default(), 0)
                        .unwrap();
                assert!(record.is_some(), "{kind}: the last checkpoint is restored");
                let mut sink = MemorySink::default();
                feed(&mut engine, &events[restart_at..], &mut sink);
                engine.finish(&mut sink).unwrap();
                committed.extend(result_lines(&sink));
                assert!(
                    committed == expected,
                    "{kind}, cache {cache}, a checkpoint every {every} events, the last \
                     {last:?}: {} results instead of {}; first difference: {:?}",
                    committed.len(),
                    expected.len(),
                    committed
                        .iter()
                        .zip(&expected)
                        .find(|(actual, expected)| actual != expected)
                );
            }
        }
    }
}

#[test]
fn a_restore_without_a_complete_checkpoint_starts_empty() {
    let events = generate_events(200, 1, 5, 3);
    let manifest = JobBuilder::tumbling().build();
    let (_, job) = sluice_crds::load_manifest(&manifest).unwrap();
    let directory = tempfile::tempdir().unwrap();
    {
        let store = RocksDbStore::open(directory.path()).unwrap();
        let mut engine =
            Engine::new(&job, Box::new(store), options(3), Metrics::default()).unwrap();
        feed(&mut engine, &events, &mut MemorySink::default());
        // A checkpoint made but never committed.
        engine
            .checkpoint(1, "t1", CheckpointTimers::InMemory)
            .unwrap();
    }
    let store = RocksDbStore::open(directory.path()).unwrap();
    let (mut engine, record) =
        Engine::restore(&job, Box::new(store), options(3), Metrics::default(), 0).unwrap();
    assert_eq!(record, None);
    assert_eq!(engine.count_stored_windows().unwrap(), 0);
    assert_eq!(engine.count_timers().unwrap(), 0);
}

#[test]
fn a_restore_maps_aggregates_by_name_and_refuses_what_cannot_be_reused() {
    let events = generate_events(400, 1, 3, 11);
    let before = JobBuilder::tumbling()
        .aggregates(&[
            ("views", "Count", None),
            ("total", "Sum", Some("event.value")),
        ])
        .build();
    let (_, job) = sluice_crds::load_manifest(&before).unwrap();
    let directory = tempfile::tempdir().unwrap();
    {
        let store = RocksDbStore::open(directory.path()).unwrap();
        let mut engine =
            Engine::new(&job, Box::new(store), options(2), Metrics::default()).unwrap();
        feed(&mut engine, &events[..200], &mut MemorySink::default());
        engine
            .checkpoint(1, "t1", CheckpointTimers::InMemory)
            .unwrap();
        engine.complete_checkpoint(1).unwrap();
    }
    let refusals = [
        (
            JobBuilder::tumbling()
                .aggregates(&[("views", "Count", None)])
                .build(),
            "the state holds aggregate \"total\" (Sum), which the job no longer has",
        ),
        (
            JobBuilder::tumbling()
                .aggregates(&[
                    ("views", "Count", None),
                    ("total", "Max", Some("event.value")),
                ])
                .build(),
            "aggregate \"total\" was Sum and is now Max",
        ),
        (
            JobBuilder::tumbling()
                .key_groups(32)
                .aggregates(&[
                    ("views", "Count", None),
                    ("total", "Sum", Some("event.value")),
                ])
                .build(),
            "the state has 16 key groups but the job has maxParallelism 32",
        ),
    ];
    for (manifest, message) in refusals {
        let (_, job) = sluice_crds::load_manifest(&manifest).unwrap();
        let store = RocksDbStore::open(directory.path()).unwrap();
        let error = Engine::restore(&job, Box::new(store), options(2), Metrics::default(), 0)
            .err()
            .expect("refused");
        assert!(format!("{error:#}").contains(message), "{error:#}");
    }
    // An aggregate added first in name order: the others keep their state by name.
    let after = JobBuilder::tumbling()
        .aggregates(&[
            ("views", "Count", None),
            ("total", "Sum", Some("event.value")),
            ("average", "Avg", Some("event.value")),
        ])
        .build();
    let (_, job) = sluice_crds::load_manifest(&after).unwrap();
    let store = RocksDbStore::open(directory.path()).unwrap();
    let (mut engine, _) =
        Engine::restore(&job, Box::new(store), options(2), Metrics::default(), 0).unwrap();
    let mut sink = MemorySink::default();
    feed(&mut engine, &events[200..], &mut sink);
    engine.finish(&mut sink).unwrap();
    let expected = uninterrupted(&before, &events);
    let restored = sink.result_values();
    for result in &restored {
        // The same window and key in the uninterrupted run without `average`.
        let same = expected
            .iter()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .find(|other| {
                other["key"] == result["key"]
                    && other["windowStart"] == result["windowStart"]
                    && other["isUpdate"] == result["isUpdate"]
            })
            .unwrap_or_else(|| panic!("{result} has a counterpart"));
        assert_eq!(result["views"], same["views"], "{result}");
        assert_eq!(result["total"], same["total"], "{result}");
    }
    assert!(!restored.is_empty());
}

#[test]
fn a_key_groups_state_and_timers_move_to_another_engine() {
    let events = generate_events(3_000, 2, 40, 5);
    for (kind, manifest) in JobBuilder::every_window_kind() {
        let (_, job) = sluice_crds::load_manifest(&manifest).unwrap();
        let key_groups = u32::from(job.key_groups.get());
        let mut expected = uninterrupted(&manifest, &events);
        // Engine A runs alone, checkpoints, then gives key groups [0, 8) to engine B.
        let directories = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let open = |index: usize| {
            let store = RocksDbStore::open(directories[index].path()).unwrap();
            Engine::new(&job, Box::new(store), options(5), Metrics::default()).unwrap()
        };
        let mut first = open(0);
        let mut sinks = [MemorySink::default(), MemorySink::default()];
        let split = 1_400;
        feed(&mut first, &events[..split], &mut sinks[0]);
        let checkpoint = first
            .checkpoint(1, "t1", CheckpointTimers::InMemory)
            .unwrap();
        first.complete_checkpoint(1).unwrap();
        let mut second = open(1);
        second
            .import_key_groups(first.export_key_groups(0, 8).unwrap())
            .unwrap();
        second.resume_from(&checkpoint, 0).unwrap();
        first.retain_key_groups(8, key_groups).unwrap();
        assert!(second.open_windows() > 0, "{kind}: windows moved");
        let mut engines = [first, second];
        // Each event is routed by both (their watermarks see every partition), and added
        // to the windows of the one that owns its key group.
        for event in &events[split..] {
            let position = position(event);
            let mut routed = Vec::new();
            for (engine, sink) in engines.iter_mut().zip(sinks.iter_mut()) {
                routed.push(
                    engine
                        .route(record(event, &position), event.index, sink)
                        .unwrap(),
                );
            }
            if let Routed::Keyed(keyed) = &routed[0] {
                // Engine 0 kept key groups 8 and up; engine 1 took the groups below 8.
                let owner = usize::from(keyed.key_group < 8);
                assert_eq!(keyed.key_group, key_group(&keyed.key, key_groups));
                let engine = &mut engines[owner];
                let watermark = engine.watermark();
                engine
                    .add_keyed(
                        keyed,
                        &position,
                        event.payload.as_bytes(),
                        watermark,
                        &mut sinks[owner],
                    )
                    .unwrap();
            }
            for (engine, sink) in engines.iter_mut().zip(sinks.iter_mut()) {
                engine.advance(event.index, sink).unwrap();
            }
        }
        for (engine, sink) in engines.iter_mut().zip(sinks.iter_mut()) {
            engine.finish(sink).unwrap();
        }
        // Dead letters and outputs of unwindowed records are routed twice; results are
        // windowed, so each comes from exactly one engine.
        let mut actual: Vec<String> = sinks.iter().flat_map(result_lines).collect();
        actual.sort();
        expected.sort();
        let extra: Vec<&String> = actual
            .iter()
            .filter(|line| !expected.contains(line))
            .take(4)
            .collect();
        let missing: Vec<&String> = expected
            .iter()
            .filter(|line| !actual.contains(line))
            .take(4)
            .collect();
        assert!(
            actual == expected,
            "{kind}: {} results instead of {}; extra {extra:#?}; missing {missing:#?}",
            actual.len(),
            expected.len()
        );
    }
}

/// The consumer's position passes records it never hands over (a transaction's markers,
/// aborted records): the engine's next offsets move forward to it, on source partitions
/// and repartition partitions already read, never back, and the checkpoint records
/// them, so a caught-up job's committed offsets reach the ends.
#[test]
fn skipped_records_move_the_next_offsets_forward_only() {
    let directory = tempfile::tempdir().unwrap();
    let (_, job) = sluice_crds::load_manifest(&JobBuilder::tumbling().build()).unwrap();
    let store = RocksDbStore::open(directory.path()).unwrap();
    let mut engine = Engine::new(&job, Box::new(store), options(100), Metrics::default()).unwrap();
    engine.use_exchange(Vec::new());
    engine.seed_offsets(&[(PartitionId::new(0, 0), 5)]);
    engine.assign_channels(&[(0, 3)].into_iter().collect());
    // (source topic, or None for the repartition topic; partition; consumer position;
    // moved; next offset of source partition 0 after; of repartition partition 0 after)
    let table = [
        (Some("in"), 0, 7, true, 7, 3),
        (Some("in"), 0, 6, false, 7, 3),
        (Some("in"), 0, 7, false, 7, 3),
        (Some("in"), 1, 9, false, 7, 3),
        (Some("other"), 0, 9, false, 7, 3),
        (None, 0, 4, true, 7, 4),
        (None, 0, 2, false, 7, 4),
        (None, 1, 9, false, 7, 4),
    ];
    for (source_topic, partition, position, moved, source_next, channel_next) in table {
        let case = format!("{source_topic:?} partition {partition} at {position}");
        assert_eq!(
            engine.pass_skipped_records(source_topic, partition, position),
            moved,
            "{case}"
        );
        assert_eq!(
            engine.next_offsets().get(&PartitionId::new(0, 0)),
            Some(&source_next),
            "{case}"
        );
        assert_eq!(engine.next_offsets().len(), 1, "{case}");
        assert_eq!(
            engine.channel_offsets().into_iter().collect::<Vec<_>>(),
            vec![(0, channel_next)],
            "{case}"
        );
    }
    let record = engine
        .checkpoint(1, "token", CheckpointTimers::InMemory)
        .unwrap();
    assert_eq!(
        record
            .partitions
            .iter()
            .map(|partition| (
                partition.topic.as_str(),
                partition.partition,
                partition.next_offset
            ))
            .collect::<Vec<_>>(),
        vec![("in", 0, 7)]
    );
    assert_eq!(
        record
            .channels
            .iter()
            .map(|channel| (channel.partition, channel.next_offset))
            .collect::<Vec<_>>(),
        vec![(0, 4)]
    );
}
