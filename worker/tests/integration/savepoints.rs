//! Savepoints without a broker: parts written from real RocksDB checkpoints to a
//! `file://` location, restored at the same and at another parallelism (2 → 2 → 3 → 1)
//! with results equal to an uninterrupted run's; corrupt, incomplete and foreign
//! savepoints refused before any state changes; incremental savepoints share files and
//! survive their parent's deletion.
//! (The same with Kafka and real workers: tests/tests/savepoint.rs.)

use crate::common;

use std::collections::BTreeSet;
use std::path::Path;

use common::job::{Generated, JobBuilder, generate_events};
use sluice_crds::CheckedJob;
use sluice_worker::engine::{Engine, EngineOptions, Routed};
use sluice_worker::io::memory::MemorySink;
use sluice_worker::io::{Position, SourceRecord};
use sluice_worker::metrics::Metrics;
use sluice_worker::savepoint::format::{KeyGroupRange, Part, SAVEPOINT_FORMAT_VERSION};
use sluice_worker::savepoint::restore::{Owned, Savepoint, Take, already_restored, restore};
use sluice_worker::savepoint::{Directory, JobIdentity, StateDescription, Url, manage, take};
use sluice_worker::state::format::META_TIMERS_COMPLETE;
use sluice_worker::state::key_group::key_group_range;
use sluice_worker::state::rocksdb::{RocksDbStore, link_checkpoint};
use sluice_worker::state::{CheckpointTimers, Column, StateStore};
use sluice_worker::time::watermark::PartitionId;

const PARTITIONS: i32 = 2;

fn options() -> EngineOptions {
    EngineOptions {
        state_cache_entries: 5,
    }
}

fn identity() -> JobIdentity {
    JobIdentity {
        namespace: "default".into(),
        name: "test".into(),
    }
}

fn position(event: &Generated) -> Position {
    Position::Kafka {
        topic: "in".into(),
        partition: event.partition,
        offset: event.offset,
    }
}

fn result_lines(sink: &MemorySink) -> Vec<String> {
    sink.results
        .iter()
        .map(|record| String::from_utf8(record.value.clone()).unwrap())
        .collect()
}

fn uninterrupted(job: &CheckedJob, events: &[Generated]) -> Vec<String> {
    let directory = tempfile::tempdir().unwrap();
    let store = RocksDbStore::open(directory.path()).unwrap();
    let mut engine = Engine::new(job, Box::new(store), options(), Metrics::default()).unwrap();
    let mut sink = MemorySink::default();
    for event in events {
        let position = position(event);
        let record = SourceRecord {
            partition: PartitionId::new(0, event.partition),
            position: &position,
            payload: event.payload.as_bytes(),
        };
        engine.process(record, event.index, &mut sink).unwrap();
    }
    engine.finish(&mut sink).unwrap();
    result_lines(&sink)
}

/// Workers of one job at one parallelism, each with its state directory. Every worker
/// routes every event (so each sees every partition's clock) and only the owner of the
/// event's key group adds it to its windows: what the repartition topic does.
struct Workers {
    engines: Vec<Engine>,
    sinks: Vec<MemorySink>,
    directories: Vec<tempfile::TempDir>,
    key_groups: u32,
}

impl Workers {
    fn parallelism(&self) -> u32 {
        u32::try_from(self.engines.len()).unwrap()
    }

    fn feed(&mut self, events: &[Generated]) {
        let parallelism = self.parallelism();
        for event in events {
            let position = position(event);
            let mut owner_event = None;
            for (engine, sink) in self.engines.iter_mut().zip(self.sinks.iter_mut()) {
                let record = SourceRecord {
                    partition: PartitionId::new(0, event.partition),
                    position: &position,
                    payload: event.payload.as_bytes(),
                };
                if let Routed::Keyed(keyed) = engine.route(record, event.index, sink).unwrap() {
                    owner_event = Some(keyed);
                }
            }
            if let Some(keyed) = owner_event {
                let owner = (0..parallelism)
                    .find(|ordinal| {
                        key_group_range(*ordinal, parallelism, self.key_groups)
                            .contains(&u32::from(keyed.key_group))
                    })
                    .unwrap();
                let owner = usize::try_from(owner).unwrap();
                let watermark = self.engines[owner].watermark();
                self.engines[owner]
                    .add_keyed(
                        &keyed,
                        &position,
                        event.payload.as_bytes(),
                        watermark,
                        &mut self.sinks[owner],
                    )
                    .unwrap();
            }
            for (engine, sink) in self.engines.iter_mut().zip(self.sinks.iter_mut()) {
                engine.advance(event.index, sink).unwrap();
            }
        }
    }

    /// Each worker commits checkpoint `checkpoint` and writes its part of savepoint `id`.
    fn savepoint(&mut self, job: &CheckedJob, location: &Url, id: &str, checkpoint: u64) {
        let job_directory = Directory::open(location).unwrap();
        let parallelism = self.parallelism();
        for (ordinal, engine) in self.engines.iter_mut().enumerate() {
            let ordinal = u32::try_from(ordinal).unwrap();
            let record = engine
                .checkpoint(checkpoint, "token", CheckpointTimers::InStore)
                .unwrap();
            engine.complete_checkpoint(checkpoint).unwrap();
            let state_dir = self.directories[usize::try_from(ordinal).unwrap()].path();
            let snapshot = state_dir.join("snapshot");
            link_checkpoint(state_dir, checkpoint, &snapshot).unwrap();
            let range = key_group_range(ordinal, parallelism, self.key_groups);
            let part = Part {
                format_version: SAVEPOINT_FORMAT_VERSION,
                savepoint: id.into(),
                job: identity(),
                spec_hash: None,
                state: StateDescription::of(job),
                ordinal,
                parallelism,
                key_groups: KeyGroupRange {
                    first: range.start,
                    end: range.end,
                },
                checkpoint: record,
                files: Vec::new(),
                taken_at: "2026-11-29T00:00:00Z".into(),
            };
            let written = take::write_part(&job_directory, part, &snapshot).unwrap();
            std::fs::remove_dir_all(&snapshot).unwrap();
            assert_eq!(
                written.manifest.is_some(),
                ordinal + 1 == parallelism,
                "the last part writes the manifest"
            );
        }
    }

    fn finish(mut self) -> Vec<String> {
        for (engine, sink) in self.engines.iter_mut().zip(self.sinks.iter_mut()) {
            engine.finish(sink).unwrap();
        }
        self.sinks.iter().flat_map(result_lines).collect()
    }
}

fn all_partitions() -> BTreeSet<(String, i32)> {
    (0..PARTITIONS)
        .map(|partition| ("in".into(), partition))
        .collect()
}

fn fresh(job: &CheckedJob, parallelism: u32) -> Workers {
    let directories: Vec<_> = (0..parallelism)
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let engines = directories
        .iter()
        .map(|directory| {
            let store = RocksDbStore::open(directory.path()).unwrap();
            let mut engine =
                Engine::new(job, Box::new(store), options(), Metrics::default()).unwrap();
            let partitions: Vec<_> = (0..PARTITIONS)
                .map(|partition| PartitionId::new(0, partition))
                .collect();
            engine.assign_partitions(&partitions, 0);
            engine
        })
        .collect();
    Workers {
        engines,
        sinks: (0..parallelism).map(|_| MemorySink::default()).collect(),
        directories,
        key_groups: u32::from(job.key_groups.get()),
    }
}

/// Workers at `parallelism` restored from the savepoint at `savepoint`; returns them and
/// the offset to continue each partition from.
fn restored(job: &CheckedJob, savepoint: &Url, parallelism: u32) -> (Workers, Vec<i64>) {
    restored_taking(job, savepoint, parallelism, Take::Everything)
}

/// [`restored`], taking `take` of the savepoint.
fn restored_taking(
    job: &CheckedJob,
    savepoint: &Url,
    parallelism: u32,
    take: Take,
) -> (Workers, Vec<i64>) {
    let opened = Savepoint::open(savepoint).unwrap();
    let key_groups = u32::from(job.key_groups.get());
    let mut workers = fresh(job, 0);
    let mut next_offsets = vec![0; usize::try_from(PARTITIONS).unwrap()];
    for ordinal in 0..parallelism {
        let directory = tempfile::tempdir().unwrap();
        let range = key_group_range(ordinal, parallelism, key_groups);
        let owned = Owned {
            key_groups: (range.start, range.end),
            partitions: all_partitions(),
        };
        let record = restore(
            &opened,
            &identity(),
            &StateDescription::of(job),
            &owned,
            directory.path(),
            take,
            None,
        )
        .unwrap();
        for partition in &record.partitions {
            next_offsets[usize::try_from(partition.partition).unwrap()] = partition.next_offset;
        }
        let store = RocksDbStore::open(directory.path()).unwrap();
        // A part taken whole (the same parallelism) keeps the timers its savepoint wrote;
        // cut or merged, they are dropped and rebuilt when the worker starts.
        let whole = take != Take::OffsetsOnly
            && opened.manifest.parts.len() == usize::try_from(parallelism).unwrap();
        assert_eq!(
            store
                .get(Column::Meta, META_TIMERS_COMPLETE)
                .unwrap()
                .is_some(),
            whole,
            "restored at parallelism {parallelism} from {} parts",
            opened.manifest.parts.len()
        );
        let (mut engine, again) =
            Engine::restore(job, Box::new(store), options(), Metrics::default(), 0).unwrap();
        assert_eq!(again.as_ref(), Some(&record));
        let partitions: Vec<_> = (0..PARTITIONS)
            .map(|partition| PartitionId::new(0, partition))
            .collect();
        engine.assign_partitions(&partitions, 0);
        workers.engines.push(engine);
        workers.sinks.push(MemorySink::default());
        workers.directories.push(directory);
    }
    (workers, next_offsets)
}

fn after(events: &[Generated], next_offsets: &[i64]) -> Vec<Generated> {
    events
        .iter()
        .filter(|event| event.offset >= next_offsets[usize::try_from(event.partition).unwrap()])
        .cloned()
        .collect()
}

fn assert_same_results(mut actual: Vec<String>, mut expected: Vec<String>, context: &str) {
    actual.sort();
    expected.sort();
    let missing: Vec<_> = expected
        .iter()
        .filter(|line| !actual.contains(line))
        .take(3)
        .collect();
    let extra: Vec<_> = actual
        .iter()
        .filter(|line| !expected.contains(line))
        .take(3)
        .collect();
    assert!(
        actual == expected,
        "{context}: {} results instead of {}; missing {missing:#?}; extra {extra:#?}",
        actual.len(),
        expected.len()
    );
}

#[test]
fn a_job_rescaled_through_savepoints_gives_the_results_of_an_uninterrupted_run() {
    let events = generate_events(4_000, PARTITIONS, 50, 21);
    for (kind, manifest) in JobBuilder::every_window_kind() {
        let (_, job) = sluice_crds::load_manifest(&manifest).unwrap();
        let expected = uninterrupted(&job, &events);
        let root = tempfile::tempdir().unwrap();
        let location = Url::File(root.path().join("default/test"));

        // Parallelism 2, savepoint after 1,300 events.
        let mut two = fresh(&job, 2);
        two.feed(&events[..1_300]);
        two.savepoint(&job, &location, "sp-two", 1);
        let mut committed = two.finish_committed();

        // Parallelism 2 again from it (each worker takes its part whole, timers and
        // all), savepoint after 2,000 events in all.
        let (mut again, next) = restored(&job, &location.join("sp-two"), 2);
        let rest = after(&events, &next);
        assert_eq!(rest.len(), events.len() - 1_300, "{kind}: offsets restored");
        again.feed(&rest[..700]);
        again.savepoint(&job, &location, "sp-two-again", 4);
        committed.extend(again.finish_committed());

        // Parallelism 3 from that, savepoint after 2,700 events in all.
        let (mut three, next) = restored(&job, &location.join("sp-two-again"), 3);
        let rest = after(&events, &next);
        assert_eq!(rest.len(), events.len() - 2_000, "{kind}: offsets restored");
        three.feed(&rest[..700]);
        three.savepoint(&job, &location, "sp-three", 7);
        committed.extend(three.finish_committed());

        // Parallelism 1 from that, to the end.
        let (mut one, next) = restored(&job, &location.join("sp-three"), 1);
        let rest = after(&events, &next);
        assert_eq!(rest.len(), events.len() - 2_700, "{kind}: offsets restored");
        one.feed(&rest);
        committed.extend(one.finish());
        assert_same_results(committed, expected, kind);
    }
}

#[test]
fn an_offsets_only_restore_takes_the_offsets_of_any_pipeline_and_no_window() {
    let events = generate_events(4_000, PARTITIONS, 50, 31);
    let (_, job) = sluice_crds::load_manifest(&JobBuilder::tumbling().build()).unwrap();
    let rekeyed = JobBuilder::tumbling().key_by("'re-' + event.user").build();
    let (_, rekeyed) = sluice_crds::load_manifest(&rekeyed).unwrap();
    let root = tempfile::tempdir().unwrap();
    let location = Url::File(root.path().join("default/test"));
    let mut two = fresh(&job, 2);
    two.feed(&events[..1_500]);
    two.savepoint(&job, &location, "sp-two", 1);
    let savepoint = location.join("sp-two");

    // The whole state cannot serve another key; the offsets alone can, at any parallelism.
    assert!(refusal(&savepoint, &rekeyed, &identity()).contains("keyBy"));
    let (mut three, next) = restored_taking(&rekeyed, &savepoint, 3, Take::OffsetsOnly);
    let rest = after(&events, &next);
    assert_eq!(rest.len(), events.len() - 1_500, "offsets restored");
    three.feed(&rest);
    let results = three.finish();
    assert!(!results.is_empty());
    // No window of the old job came along: exactly the results of a fresh run of the new
    // job over the events after the savepoint (none of which is behind the restored
    // watermark here, so none is late).
    assert_same_results(results, uninterrupted(&rekeyed, &rest), "offsets only");
}

impl Workers {
    /// The results committed with the last savepoint's checkpoint (the workers then stop:
    /// what they would write later belongs to no committed transaction).
    fn finish_committed(self) -> Vec<String> {
        self.sinks.iter().flat_map(result_lines).collect()
    }
}

fn one_savepoint(job: &CheckedJob, location: &Url, id: &str) -> Workers {
    let events = generate_events(1_500, PARTITIONS, 30, 5);
    let mut workers = fresh(job, 2);
    workers.feed(&events);
    workers.savepoint(job, location, id, 1);
    workers
}

/// Restores `savepoint` into `target` as the only worker of `job` (every key group and
/// partition), in restore epoch `epoch`.
fn restore_whole(
    savepoint: &Savepoint,
    job: &CheckedJob,
    identity: &JobIdentity,
    target: &Path,
    epoch: Option<u64>,
) -> anyhow::Result<()> {
    restore(
        savepoint,
        identity,
        &StateDescription::of(job),
        &Owned {
            key_groups: (0, u32::from(job.key_groups.get())),
            partitions: all_partitions(),
        },
        target,
        Take::Everything,
        epoch,
    )
    .map(|_| ())
}

fn refusal(savepoint: &Url, job: &CheckedJob, identity: &JobIdentity) -> String {
    let directory = tempfile::tempdir().unwrap();
    let marker = directory.path().join("live-before");
    std::fs::write(&marker, "state that must survive a refused restore").unwrap();
    let outcome = Savepoint::open(savepoint)
        .and_then(|opened| restore_whole(&opened, job, identity, directory.path(), None));
    assert!(marker.exists(), "nothing changes before every check passed");
    assert!(!directory.path().join("live").exists());
    format!("{:#}", outcome.expect_err("the restore is refused"))
}

fn files_of(root: &Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(directory) = stack.pop() {
        for entry in std::fs::read_dir(directory).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn corrupt_incomplete_and_foreign_savepoints_are_refused_with_the_file_and_the_problem() {
    let manifest = JobBuilder::tumbling().build();
    let (_, job) = sluice_crds::load_manifest(&manifest).unwrap();
    let root = tempfile::tempdir().unwrap();
    let location = Url::File(root.path().join("default/test"));
    let _workers = one_savepoint(&job, &location, "sp-1");
    let savepoint = location.join("sp-1");
    let job_path = root.path().join("default/test");

    // A foreign job, and a job whose state does not fit.
    let other = JobIdentity {
        namespace: "default".into(),
        name: "other".into(),
    };
    assert!(refusal(&savepoint, &job, &other).contains("belongs to StreamJob default/test"));
    let resized = JobBuilder::tumbling().key_groups(32).build();
    let (_, resized) = sluice_crds::load_manifest(&resized).unwrap();
    assert!(refusal(&savepoint, &resized, &identity()).contains("maxParallelism"));

    // One byte of a table file flipped.
    let table = files_of(&job_path.join("shared"), ".sst")[0].clone();
    let original = std::fs::read(&table).unwrap();
    let mut corrupt = original.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 0x01;
    std::fs::write(&table, &corrupt).unwrap();
    let message = refusal(&savepoint, &job, &identity());
    assert!(
        message.contains("SHA-256") && message.contains("corrupt"),
        "{message}"
    );
    std::fs::write(&table, &original).unwrap();

    // A file deleted.
    let small = files_of(&job_path.join("sp-1"), "CURRENT")[0].clone();
    let kept = std::fs::read(&small).unwrap();
    std::fs::remove_file(&small).unwrap();
    let message = refusal(&savepoint, &job, &identity());
    assert!(
        message.contains("CURRENT") && message.contains("missing"),
        "{message}"
    );
    std::fs::write(&small, kept).unwrap();

    // The manifest truncated, then gone.
    let manifest_path = job_path.join("sp-1/manifest.json");
    let text = std::fs::read(&manifest_path).unwrap();
    std::fs::write(&manifest_path, &text[..text.len() / 2]).unwrap();
    let message = refusal(&savepoint, &job, &identity());
    assert!(message.contains("malformed or truncated"), "{message}");
    std::fs::remove_file(&manifest_path).unwrap();
    let message = refusal(&savepoint, &job, &identity());
    assert!(message.contains("not a complete savepoint"), "{message}");

    // Put back, it restores and verifies.
    std::fs::write(&manifest_path, &text).unwrap();
    Savepoint::open(&savepoint).unwrap().verify().unwrap();
}

#[test]
fn an_incremental_savepoint_shares_files_and_survives_its_parents_deletion() {
    let manifest = JobBuilder::tumbling().build();
    let (_, job) = sluice_crds::load_manifest(&manifest).unwrap();
    let root = tempfile::tempdir().unwrap();
    let location = Url::File(root.path().join("default/test"));
    let mut workers = one_savepoint(&job, &location, "sp-1");
    // A little more input, then a second savepoint: most table files are unchanged.
    let more = generate_events(1_600, PARTITIONS, 30, 5);
    workers.feed(&more[1_500..]);
    workers.savepoint(&job, &location, "sp-2", 2);

    let directory = Directory::open(&location).unwrap();
    let listed = manage::list(&directory).unwrap();
    let ids: Vec<_> = listed.iter().map(|listed| listed.id.as_str()).collect();
    assert_eq!(ids, ["sp-1", "sp-2"]);
    let objects = |index: usize| -> BTreeSet<String> {
        listed[index]
            .manifest
            .as_ref()
            .unwrap()
            .objects()
            .filter(|object| object.starts_with("shared/"))
            .map(str::to_string)
            .collect()
    };
    let shared: Vec<_> = objects(0).intersection(&objects(1)).cloned().collect();
    assert!(
        !shared.is_empty(),
        "the second savepoint reuses table files"
    );

    let deleted = manage::delete(&directory, "sp-1").unwrap();
    assert_eq!(deleted.kept_shared, shared.len());
    for object in &shared {
        assert!(root.path().join("default/test").join(object).exists());
    }
    assert!(Savepoint::open(&location.join("sp-1")).is_err());
    let child = Savepoint::open(&location.join("sp-2")).unwrap();
    child.verify().unwrap();
    let target = tempfile::tempdir().unwrap();
    restore_whole(&child, &job, &identity(), target.path(), None).unwrap();
    // Deleting the last one removes every file.
    manage::delete(&directory, "sp-2").unwrap();
    assert!(files_of(&root.path().join("default/test"), ".sst").is_empty());
}

#[test]
fn a_restore_in_another_epoch_is_a_new_restore_of_the_same_savepoint() {
    let manifest = JobBuilder::tumbling().build();
    let (_, job) = sluice_crds::load_manifest(&manifest).unwrap();
    let root = tempfile::tempdir().unwrap();
    let location = Url::File(root.path().join("default/test"));
    let _workers = one_savepoint(&job, &location, "sp-epoch");
    let url = location.join("sp-epoch");
    let opened = Savepoint::open(&url).unwrap();
    let target = tempfile::tempdir().unwrap();
    let restore_in = |epoch: Option<u64>| {
        restore_whole(&opened, &job, &identity(), target.path(), epoch).unwrap()
    };
    // (the epoch restored in, then whether a start in each epoch keeps that restore)
    type Expectations = [(Option<u64>, bool); 3];
    let cases: [(Option<u64>, Expectations); 3] = [
        // A restart with the same savepoint and no epoch keeps what it made since.
        (None, [(None, true), (Some(7), false), (Some(8), false)]),
        // A rollback (epoch 7) restores it again, whatever the volume holds...
        (Some(7), [(None, false), (Some(7), true), (Some(8), false)]),
        // ...and a later one (epoch 8) does too.
        (Some(8), [(None, false), (Some(7), false), (Some(8), true)]),
    ];
    for (restored_in, expectations) in cases {
        restore_in(restored_in);
        for (asked, expected) in expectations {
            assert_eq!(
                already_restored(target.path(), &url, asked),
                expected,
                "restored in epoch {restored_in:?}, started with epoch {asked:?}"
            );
        }
    }
    // Another savepoint is never taken for this one, in any epoch.
    assert!(!already_restored(
        target.path(),
        &location.join("sp-other"),
        None
    ));
}
