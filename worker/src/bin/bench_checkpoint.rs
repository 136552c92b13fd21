//! What checkpoints cost the engine, without a broker: runs a job over a JSON-lines input
//! as Kafka mode does (RocksDB state, one partition per `--partitions` of the lines, round
//! robin), cutting and completing a checkpoint every `--events-per-checkpoint` events,
//! and prints the time spent in `Engine::checkpoint` against the whole run. The Kafka
//! transaction is left out: this measures only the engine's part (bench/README.md).

use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use sluice_worker::engine::{Engine, EngineOptions};
use sluice_worker::io::{OutputRecord, Position, Rejected, Sink, SourceRecord};
use sluice_worker::metrics::Metrics;
use sluice_worker::state::CheckpointTimers;
use sluice_worker::state::rocksdb::RocksDbStore;
use sluice_worker::time::watermark::PartitionId;

/// Measure the cost of checkpoints on a local input.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Arguments {
    /// The StreamJob manifest.
    #[arg(long)]
    job: PathBuf,
    /// JSON lines, one event each.
    #[arg(long)]
    input: PathBuf,
    /// Events between two checkpoints (at ~90K events/s, 90000 is a 1 s interval).
    #[arg(long, default_value_t = 90_000)]
    events_per_checkpoint: u64,
    /// Source partitions the lines are dealt to, round robin.
    #[arg(long, default_value_t = 2)]
    partitions: i32,
    /// The hot-state cache's capacity, in windows.
    #[arg(long, default_value_t = 500_000)]
    state_cache_entries: usize,
    /// Where the state directory is made (a temporary directory inside it).
    #[arg(long)]
    state: Option<PathBuf>,
}

/// Counts what it is given and drops it.
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

fn main() -> anyhow::Result<()> {
    let arguments = Arguments::parse();
    let manifest = std::fs::read_to_string(&arguments.job)
        .with_context(|| format!("failed to read {}", arguments.job.display()))?;
    let (_, job) = sluice_crds::load_manifest(&manifest)?;
    let directory = match &arguments.state {
        Some(parent) => tempfile::tempdir_in(parent)?,
        None => tempfile::tempdir()?,
    };
    let store = RocksDbStore::open(directory.path())?;
    let options = EngineOptions {
        state_cache_entries: arguments.state_cache_entries,
    };
    let mut engine = Engine::new(&job, Box::new(store), options, Metrics::default())?;
    let partitions: Vec<PartitionId> = (0..arguments.partitions.max(1))
        .map(|partition| PartitionId::new(0, partition))
        .collect();
    engine.assign_partitions(&partitions, 0);
    let input = std::fs::File::open(&arguments.input)
        .with_context(|| format!("failed to open {}", arguments.input.display()))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, input);
    let mut line = Vec::new();
    let mut sink = CountingSink::default();
    let mut offsets = vec![0i64; partitions.len()];
    let mut in_checkpoints = Duration::ZERO;
    let mut slowest = Duration::ZERO;
    let mut checkpoints = 0u64;
    let mut events = 0u64;
    let started = Instant::now();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let index = usize::try_from(events).unwrap_or(0) % partitions.len();
        let partition = partitions[index];
        let position = Position::Kafka {
            topic: "in".into(),
            partition: partition.partition,
            offset: offsets[index],
        };
        offsets[index] += 1;
        let payload = line.strip_suffix(b"\n").unwrap_or(&line);
        let record = SourceRecord {
            partition,
            position: &position,
            payload,
        };
        let now = i64::try_from(events).unwrap_or(i64::MAX);
        engine.process(record, now, &mut sink)?;
        events += 1;
        if events.is_multiple_of(arguments.events_per_checkpoint.max(1)) {
            checkpoints += 1;
            let before = Instant::now();
            engine.checkpoint(
                checkpoints,
                &format!("bench-{checkpoints}"),
                CheckpointTimers::InMemory,
            )?;
            engine.complete_checkpoint(checkpoints)?;
            let took = before.elapsed();
            in_checkpoints += took;
            slowest = slowest.max(took);
        }
    }
    let total = started.elapsed();
    println!(
        "events={events} results={} seconds={:.2} events_per_second={:.0} events_per_checkpoint={} checkpoints={checkpoints} checkpoint_seconds={:.2} share={:.1}% mean_checkpoint_ms={:.1} slowest_checkpoint_ms={:.1} state_bytes={}",
        sink.results,
        total.as_secs_f64(),
        events as f64 / total.as_secs_f64(),
        arguments.events_per_checkpoint,
        in_checkpoints.as_secs_f64(),
        100.0 * in_checkpoints.as_secs_f64() / total.as_secs_f64(),
        in_checkpoints.as_secs_f64() * 1000.0 / checkpoints.max(1) as f64,
        slowest.as_secs_f64() * 1000.0,
        engine.metrics().state_size.get(),
    );
    Ok(())
}
