//! Local mode: one StreamJob run on a file (or stdin) with state in a temporary
//! directory, results to a file (or stdout). The end of the input moves the watermark to
//! the end of time, so every window fires.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use sluice_crds::CheckedJob;

use crate::dead_letter::DeadLetterReason;
use crate::engine::{Engine, EngineOptions};
use crate::io::{Sink, Source};
use crate::metrics::Metrics;
use crate::state::rocksdb::RocksDbStore;
use crate::time::Millis;
use crate::time::watermark::PartitionId;

/// How a local run reports and where it keeps state.
#[derive(Clone, Debug)]
pub struct LocalOptions {
    /// Engine settings.
    pub engine: EngineOptions,
    /// How often progress is logged (`None`: never).
    pub progress_interval: Option<Duration>,
}

/// What a local run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Records read.
    pub events_in: u64,
    /// Results written.
    pub results_out: u64,
    /// Events dropped by filters.
    pub filtered: u64,
    /// Dead letters by reason.
    pub dead_letters: BTreeMap<&'static str, u64>,
    /// Late events.
    pub late: u64,
    /// Open windows at the end (zero once every window fired and expired).
    pub open_windows: u64,
}

impl Summary {
    fn of(metrics: &Metrics, open_windows: u64) -> Self {
        Self {
            events_in: metrics.events_in.get(),
            results_out: metrics.results_out.get(),
            filtered: metrics.filtered_events.get(),
            dead_letters: DeadLetterReason::ALL
                .iter()
                .map(|reason| (reason.as_str(), metrics.dead_letters_for(*reason)))
                .filter(|(_, count)| *count > 0)
                .collect(),
            late: metrics.late_events.get(),
            open_windows,
        }
    }

    /// Dead letters of every reason.
    pub fn dead_letters_total(&self) -> u64 {
        self.dead_letters.values().sum()
    }
}

/// Runs `job` over `source` into `sink`, with RocksDB state in `state_directory`.
pub fn run(
    job: &CheckedJob,
    source: &mut dyn Source,
    sink: &mut dyn Sink,
    state_directory: &Path,
    options: &LocalOptions,
) -> anyhow::Result<Summary> {
    let store = RocksDbStore::open(state_directory)?;
    let metrics = Metrics::default();
    let mut engine = Engine::new(job, Box::new(store), options.engine, metrics.clone())?;
    // The input is one partition: topic 0, partition 0.
    engine.assign_partitions(&[PartitionId::new(0, 0)], 0);
    let started = Instant::now();
    let mut last_report = (started, 0u64);
    let mut records: u64 = 0;
    while let Some(record) = source.next_record()? {
        // One partition (the file): processing time only matters to idle partitions, so
        // the record count stands in for it and runs stay deterministic.
        let now = Millis::try_from(records).unwrap_or(Millis::MAX);
        engine.process(record, now, sink)?;
        records += 1;
        if let Some(interval) = options.progress_interval
            && records.is_multiple_of(65_536)
            && last_report.0.elapsed() >= interval
        {
            let elapsed = last_report.0.elapsed();
            let rate = (records - last_report.1) as f64 / elapsed.as_secs_f64();
            tracing::info!(
                events = records,
                events_per_second = rate.round(),
                open_windows = engine.open_windows(),
                watermark = %crate::time::event_time::format_rfc3339(engine.watermark()),
                "progress"
            );
            last_report = (Instant::now(), records);
        }
    }
    engine.finish(sink)?;
    let open_windows = engine.open_windows();
    let summary = Summary::of(&metrics, open_windows);
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        events = summary.events_in,
        results = summary.results_out,
        dead_letters = summary.dead_letters_total(),
        late = summary.late,
        seconds,
        events_per_second = (summary.events_in as f64 / seconds.max(1e-9)).round(),
        "local run finished"
    );
    Ok(summary)
}
