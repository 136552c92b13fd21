//! What a savepoint costs, without a broker (bench/README.md, "Savepoints"): fills a job's
//! RocksDB state with `--keys` keys, one open window each, through the engine as Kafka
//! mode does (a checkpoint every `--events-per-checkpoint` events), then takes a savepoint
//! part to each `--location` as the worker does: commit a checkpoint and hard-link its
//! files (the pause in processing), then upload them (on the worker, beside processing).
//! Then it updates `--changed-percent` of the keys and takes a second savepoint, which
//! uploads only the table files that changed (incremental), and restores the second one
//! into an empty state directory. The Kafka transaction of the checkpoint is left out.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use sluice_crds::CheckedJob;
use sluice_worker::engine::{Engine, EngineOptions};
use sluice_worker::io::{OutputRecord, Position, Rejected, Sink, SourceRecord};
use sluice_worker::metrics::Metrics;
use sluice_worker::savepoint::format::{KeyGroupRange, Part, SAVEPOINT_FORMAT_VERSION};
use sluice_worker::savepoint::restore::{self, Owned};
use sluice_worker::savepoint::{Directory, JobIdentity, StateDescription, Url, manage, take};
use sluice_worker::state::rocksdb::{RocksDbStore, link_checkpoint};
use sluice_worker::state::{CheckpointTimers, MemoryStore};
use sluice_worker::time::watermark::PartitionId;

/// Measure savepoints of a large state.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Arguments {
    /// The StreamJob manifest: keyBy event.key, a window that does not fire during the
    /// run (bench/savepoint-job.yaml).
    #[arg(long)]
    job: PathBuf,
    /// Distinct keys, one window of state each.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// The length of each key (random hex), which sets the bytes per key.
    #[arg(long, default_value_t = 96)]
    key_bytes: usize,
    /// Where to take the savepoints (`file:///…` or `s3://bucket/prefix`, with the AWS_*
    /// variables); repeat for several. Each run writes below `<location>/bench/<name>`
    /// and deletes what it wrote unless `--keep`.
    #[arg(long, required = true)]
    location: Vec<String>,
    /// The share of keys updated between the two savepoints, in percent.
    #[arg(long, default_value_t = 1.0)]
    changed_percent: f64,
    /// Events between two checkpoints while filling.
    #[arg(long, default_value_t = 500_000)]
    events_per_checkpoint: u64,
    /// Where the state directory is made (a temporary directory inside it).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Keep the savepoints written.
    #[arg(long)]
    keep: bool,
}

#[derive(Default)]
struct CountingSink {
    results: u64,
}

impl Sink for CountingSink {
    fn result(&mut self, _: OutputRecord) -> anyhow::Result<()> {
        self.results += 1;
        Ok(())
    }
    fn dead_letter(&mut self, _: Rejected<'_>) -> anyhow::Result<()> {
        Ok(())
    }
    fn late(&mut self, _: Rejected<'_>) -> anyhow::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Key `index`: `length` hex digits from a mix of the index, so keys spread over every
/// key group and compress as real identifiers do (hardly).
fn key(index: u64, length: usize) -> String {
    let mut text = String::with_capacity(length + 16);
    let mut state = index.wrapping_add(0x9e37_79b9_7f4a_7c15);
    while text.len() < length {
        state ^= state >> 30;
        state = state.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        state ^= state >> 27;
        state = state.wrapping_mul(0x94d0_49bb_1331_11eb);
        state ^= state >> 31;
        text.push_str(&format!("{state:016x}"));
    }
    text.truncate(length);
    text
}

struct Bench {
    engine: Engine,
    sink: CountingSink,
    partitions: Vec<PartitionId>,
    offsets: Vec<i64>,
    events: u64,
    checkpoints: u64,
    state_dir: PathBuf,
}

/// Every event is in the same window (time 0 of the bench's hour), so none fires.
const EVENT_TIME: i64 = 1_795_687_200_000;

impl Bench {
    fn process(&mut self, key: &str, value: u64) -> anyhow::Result<()> {
        let index = usize::try_from(self.events).unwrap_or(0) % self.partitions.len();
        let partition = self.partitions[index];
        let position = Position::Kafka {
            topic: "in".into(),
            partition: partition.partition,
            offset: self.offsets[index],
        };
        self.offsets[index] += 1;
        let payload = format!(r#"{{"key":"{key}","ts":{EVENT_TIME},"value":{value}}}"#);
        let record = SourceRecord {
            partition,
            position: &position,
            payload: payload.as_bytes(),
        };
        let now = i64::try_from(self.events).unwrap_or(i64::MAX);
        self.engine.process(record, now, &mut self.sink)?;
        self.events += 1;
        Ok(())
    }

    fn checkpoint(
        &mut self,
        timers: CheckpointTimers,
    ) -> anyhow::Result<sluice_worker::state::format::CheckpointRecord> {
        self.checkpoints += 1;
        let id = self.checkpoints;
        let record = self.engine.checkpoint(id, &format!("bench-{id}"), timers)?;
        self.engine.complete_checkpoint(id)?;
        Ok(record)
    }

    /// A crash, and the start that follows on the same volume (a pod restart): the
    /// engine is dropped and another restored from the state directory, back to the last
    /// complete checkpoint with its timers rebuilt (those of keys cached at a periodic
    /// checkpoint were in memory only). Returns the seconds the restore took.
    fn restart(&mut self, job: &CheckedJob) -> anyhow::Result<f64> {
        let placeholder = Engine::new(
            job,
            Box::new(MemoryStore::default()),
            EngineOptions::default(),
            Metrics::default(),
        )?;
        drop(std::mem::replace(&mut self.engine, placeholder));
        let started = Instant::now();
        let (engine, _) = Engine::restore(
            job,
            Box::new(RocksDbStore::open(&self.state_dir)?),
            EngineOptions::default(),
            Metrics::default(),
            0,
        )?;
        let seconds = started.elapsed().as_secs_f64();
        self.engine = engine;
        self.engine.assign_partitions(&self.partitions, 0);
        Ok(seconds)
    }

    /// What the worker's loop does for a savepoint: checkpoint, then hard links. Returns
    /// the part to upload, its snapshot directory and the pause.
    fn snapshot(
        &mut self,
        id: &str,
        identity: &JobIdentity,
        state: &StateDescription,
    ) -> anyhow::Result<(Part, PathBuf, Duration)> {
        let started = Instant::now();
        let record = self.checkpoint(CheckpointTimers::InStore)?;
        let snapshot = self.state_dir.join("savepoint-snapshots").join(id);
        link_checkpoint(&self.state_dir, record.id, &snapshot)?;
        let pause = started.elapsed();
        let part = Part {
            format_version: SAVEPOINT_FORMAT_VERSION,
            savepoint: id.to_string(),
            job: identity.clone(),
            spec_hash: None,
            state: state.clone(),
            ordinal: 0,
            parallelism: 1,
            key_groups: KeyGroupRange {
                first: 0,
                end: state.key_groups,
            },
            checkpoint: record,
            files: Vec::new(),
            taken_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        };
        Ok((part, snapshot, pause))
    }
}

/// Uploads a copy of the snapshot (the worker removes its snapshot once uploaded; here each
/// location gets the same one). Returns the seconds, the part's bytes and the bytes
/// uploaded.
fn upload(job_url: &Url, part: &Part, snapshot: &Path) -> anyhow::Result<(f64, u64, u64)> {
    let started = Instant::now();
    let directory = Directory::open(job_url)?;
    let written = take::write_part(&directory, part.clone(), snapshot)?;
    anyhow::ensure!(
        written.manifest.is_some(),
        "the one part did not complete savepoint {}",
        part.savepoint
    );
    Ok((
        started.elapsed().as_secs_f64(),
        written.part.size(),
        written.uploaded_bytes,
    ))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1024.0 / 1024.0
}

fn main() -> anyhow::Result<()> {
    let arguments = Arguments::parse();
    let manifest = std::fs::read_to_string(&arguments.job)
        .with_context(|| format!("failed to read {}", arguments.job.display()))?;
    let (_, job) = sluice_crds::load_manifest(&manifest)?;
    let state = StateDescription::of(&job);
    let identity = JobIdentity {
        namespace: "bench".into(),
        name: format!("savepoint-{}", std::process::id()),
    };
    let locations: Vec<Url> = arguments
        .location
        .iter()
        .map(|location| Url::parse(location))
        .collect::<anyhow::Result<_>>()?;
    let directory = match &arguments.state {
        Some(parent) => tempfile::tempdir_in(parent)?,
        None => tempfile::tempdir()?,
    };
    let state_dir = directory.path().join("state");
    let store = RocksDbStore::open(&state_dir)?;
    let mut engine = Engine::new(
        &job,
        Box::new(store),
        EngineOptions::default(),
        Metrics::default(),
    )?;
    let partitions: Vec<PartitionId> = (0..2)
        .map(|partition| PartitionId::new(0, partition))
        .collect();
    engine.assign_partitions(&partitions, 0);
    let mut bench = Bench {
        engine,
        sink: CountingSink::default(),
        offsets: vec![0; partitions.len()],
        partitions,
        events: 0,
        checkpoints: 0,
        state_dir,
    };

    let started = Instant::now();
    for index in 0..arguments.keys {
        bench.process(&key(index, arguments.key_bytes), index % 1000)?;
        if bench
            .events
            .is_multiple_of(arguments.events_per_checkpoint.max(1))
        {
            bench.checkpoint(CheckpointTimers::InMemory)?;
        }
    }
    println!(
        "filled: keys={} key_bytes={} seconds={:.1} state_bytes={}",
        arguments.keys,
        arguments.key_bytes,
        started.elapsed().as_secs_f64(),
        bench.engine.metrics().state_size.get()
    );

    bench.checkpoint(CheckpointTimers::InMemory)?;
    println!(
        "restart from a periodic checkpoint: seconds={:.2}",
        bench.restart(&job)?
    );

    let job_urls: Vec<Url> = locations
        .iter()
        .map(|location| location.join(&identity.namespace).join(&identity.name))
        .collect();
    let (full, full_snapshot, pause) = bench.snapshot("bench-full", &identity, &state)?;
    println!("savepoint=full pause_seconds={:.3}", pause.as_secs_f64());
    for job_url in &job_urls {
        let (seconds, bytes, uploaded) = upload(job_url, &full, &full_snapshot)?;
        println!(
            "savepoint=full location={job_url} upload_seconds={seconds:.2} part_mib={:.1} uploaded_mib={:.1} mib_per_second={:.0}",
            mib(bytes),
            mib(uploaded),
            mib(uploaded) / seconds
        );
    }
    std::fs::remove_dir_all(&full_snapshot).ok();

    // Every n-th key gets one more event: its window's state changes.
    let step = ((100.0 / arguments.changed_percent.max(0.001)).round() as u64).max(1);
    let mut changed = 0u64;
    for index in (0..arguments.keys).step_by(usize::try_from(step).unwrap_or(1)) {
        bench.process(&key(index, arguments.key_bytes), 1)?;
        changed += 1;
    }
    let (incremental, snapshot, pause) = bench.snapshot("bench-incremental", &identity, &state)?;
    println!(
        "savepoint=incremental changed_keys={changed} pause_seconds={:.3}",
        pause.as_secs_f64()
    );
    for job_url in &job_urls {
        let (seconds, bytes, uploaded) = upload(job_url, &incremental, &snapshot)?;
        println!(
            "savepoint=incremental location={job_url} upload_seconds={seconds:.2} part_mib={:.1} uploaded_mib={:.1}",
            mib(bytes),
            mib(uploaded)
        );
    }
    std::fs::remove_dir_all(&snapshot).ok();

    let owned = Owned {
        key_groups: (0, state.key_groups),
        partitions: (0..2)
            .map(|partition| ("in".to_string(), partition))
            .collect::<BTreeSet<_>>(),
    };
    // The bench's own state is no longer needed: its checkpoints and live database would
    // otherwise compete with the restores for the page cache.
    drop(bench);
    for job_url in &job_urls {
        let target = directory.path().join("restored");
        let started = Instant::now();
        let savepoint = restore::Savepoint::open(&job_url.join("bench-incremental"))?;
        restore::restore(
            &savepoint,
            &identity,
            &state,
            &owned,
            &target,
            restore::Take::Everything,
            None,
        )?;
        let restored = started.elapsed().as_secs_f64();
        // What a worker does next on its start, on any start: return to the checkpoint
        // and rebuild the timers from the window state (one scan of it).
        let started = Instant::now();
        let (engine, _) = Engine::restore(
            &job,
            Box::new(RocksDbStore::open(&target)?),
            EngineOptions::default(),
            Metrics::default(),
            0,
        )?;
        let start = started.elapsed().as_secs_f64();
        drop(engine);
        std::fs::remove_dir_all(&target).ok();
        // Worker 0 of 2: half the key groups, from the same one part.
        let half = Owned {
            key_groups: (0, state.key_groups / 2),
            partitions: owned.partitions.clone(),
        };
        let started = Instant::now();
        restore::restore(
            &savepoint,
            &identity,
            &state,
            &half,
            &target,
            restore::Take::Everything,
            None,
        )?;
        let restored_half = started.elapsed().as_secs_f64();
        std::fs::remove_dir_all(&target).ok();
        println!(
            "restore location={job_url} seconds={restored:.2} worker_start_seconds={start:.2} half_key_groups_seconds={restored_half:.2}"
        );
        if !arguments.keep {
            let directory = Directory::open(job_url)?;
            manage::delete(&directory, "bench-full")?;
            manage::delete(&directory, "bench-incremental")?;
        }
    }
    Ok(())
}
