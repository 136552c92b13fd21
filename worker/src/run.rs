//! Kafka mode, `sluice-worker run`: what a worker pod executes.
//!
//! One thread runs the loop: read the worker's partitions (assigned, never subscribed),
//! route and window the records, write everything to the open Kafka transaction, and at
//! each checkpoint interval commit state, offsets and outputs together
//! (docs/architecture.md, "Exactly once"). A failure that aborts the transaction, or a
//! broker that goes away, makes the loop start over from the last complete checkpoint; a
//! fenced worker (another one took its ordinal) stops and says why.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use prometheus_client::metrics::counter::Counter;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use sluice_crds::streamjob::{Partitioning, StartPosition};
use sluice_crds::{CheckedJob, StreamJob};

use crate::commit;
use crate::engine::{Engine, EngineOptions, Routed};
use crate::exchange::{ExchangeBatches, ExchangeRecord, OriginRef, SourceClock, SourcePartition};
use crate::io::kafka::{
    CONSUMER_DEFAULTS, JobNames, PRODUCER_DEFAULTS, SinkTopics, TransactionalSink, client_config,
    with_defaults,
};
use crate::io::{Position, SourceRecord};
use crate::metrics::{Metrics, PartitionLabels};
use crate::ownership::{all_partitions, key_group_of_partition, ownership};
use crate::savepoint::format::{KeyGroupRange, Part, SAVEPOINT_FORMAT_VERSION};
use crate::savepoint::restore::{self as savepoint_restore, Owned};
use crate::savepoint::{JobIdentity, SavepointState, Savepoints, StateDescription, Url};
use crate::state::format::{ChannelCheckpoint, CheckpointRecord};
use crate::state::rocksdb::RocksDbStore;
use crate::state::{CheckpointTimers, key_group};
use crate::time::Millis;
use crate::time::watermark::PartitionId;

/// What a worker runs, and as which worker.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The StreamJob manifest.
    pub job: PathBuf,
    /// The namespace of the StreamJob (its manifest's, unless set).
    pub namespace: Option<String>,
    /// This worker's ordinal.
    pub ordinal: u32,
    /// The number of workers.
    pub parallelism: u32,
    /// The parallelism before a rescale down: worker 0 aborts the transactions that
    /// workers `parallelism..previous` may have left open.
    pub previous_parallelism: Option<u32>,
    /// A directory of Kafka client properties (the mounted Secret of
    /// `spec.kafka.secretRef`).
    pub kafka_properties: Option<PathBuf>,
    /// The state directory (the pod's volume).
    pub state_dir: PathBuf,
    /// Windows the hot-state cache holds.
    pub state_cache_entries: usize,
    /// How long a Kafka request may take before the worker treats it as failed.
    pub kafka_timeout: Duration,
    /// For tests of recovery only: crash at a point of the commit protocol.
    pub crash_point: Option<CrashPoint>,
    /// Where savepoints are written (`spec.savepoints.location` unless set).
    pub savepoint_location: Option<Url>,
    /// A savepoint to start from, once (a restart keeps the state made since).
    pub restore_from: Option<Url>,
    /// Take only the Kafka offsets of `restore_from`; the windows start empty.
    pub restore_offsets_only: bool,
    /// The restore's epoch: a new epoch restores `restore_from` again, whatever the
    /// volume holds (a rollback to the savepoint another spec's workers restored).
    pub restore_epoch: Option<u64>,
    /// The hash of the spec the worker runs (recorded in savepoints).
    pub spec_hash: Option<String>,
}

/// A point of the commit protocol where a test makes the worker crash (abort, no
/// cleanup), to show what recovery does there (docs/architecture.md, "Exactly once").
/// Set with `SLUICE_TEST_CRASH=<point>:<checkpoint number of this process>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// After the state and its pending checkpoint are written, before the commit.
    BeforeCommit(u64),
    /// After the transaction committed, before the checkpoint is marked complete.
    AfterCommit(u64),
}

impl std::str::FromStr for CrashPoint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (point, count) = text
            .split_once(':')
            .ok_or_else(|| format!("{text:?} is not <point>:<checkpoint>"))?;
        let count: u64 = count
            .parse()
            .map_err(|_| format!("{count:?} is not a checkpoint number"))?;
        match point {
            "before-commit" => Ok(Self::BeforeCommit(count)),
            "after-commit" => Ok(Self::AfterCommit(count)),
            other => Err(format!("{other:?} is not before-commit or after-commit")),
        }
    }
}

/// What the worker tells the admin API, and what the admin API asks of it.
#[derive(Debug)]
pub struct WorkerStatus {
    /// State restored, partitions assigned, consuming.
    pub ready: AtomicBool,
    /// Set on SIGTERM: commit and stop.
    pub shutdown: AtomicBool,
    /// Set by a stop-with-savepoint: the worker committed, took the savepoint and no
    /// longer consumes; it stays up until told to exit.
    pub stopped: AtomicBool,
    /// The savepoints asked for.
    pub savepoints: Arc<Savepoints>,
}

impl WorkerStatus {
    /// A worker's status, with its savepoint table.
    pub fn new(savepoints: Savepoints) -> Self {
        Self {
            ready: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            savepoints: Arc::new(savepoints),
        }
    }
}

impl Default for WorkerStatus {
    fn default() -> Self {
        Self::new(Savepoints::new(false, None))
    }
}

/// The directory of a worker's savepoint snapshots (hard links, removed once uploaded).
pub fn snapshot_directory(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("savepoint-snapshots")
}

/// The directory where a worker records its savepoints' states across restarts.
pub fn savepoint_records_directory(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("savepoint-states")
}

/// The file where a worker records that it stopped after a savepoint (its id), so that a
/// restart before the controller rolls the workers does not consume past the savepoint's
/// cut (docs/architecture.md, "Crash points").
pub fn stop_record_path(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("stopped-after-savepoint")
}

/// What a starting worker does about a stop it recorded.
#[derive(Debug, PartialEq, Eq)]
enum RecordedStop {
    /// None recorded: consume.
    Consume,
    /// It stopped after that savepoint and has not been told to go on: stay stopped
    /// until `POST /v1/resume` (an aborted change) or the roll (the pods are replaced).
    StayStopped,
    /// It restores the savepoint it stopped after (the new spec, or a rescale), or another
    /// one it has not restored yet (a volume kept from before a scale-down, taken again
    /// by a scale-up): the state becomes a savepoint's cut; or its part of the savepoint
    /// failed (it crashed first: the savepoint never completes, nobody restores it).
    /// Either way, consume.
    Clear,
}

/// [`RecordedStop`] from the savepoint id recorded (if any), whether this worker's part
/// of it failed (it crashed before writing it: the savepoint never completes), the id of
/// the savepoint the worker is told to restore (if any), and whether that restore is
/// still to happen (it replaces the state).
fn recorded_stop(
    recorded: Option<&str>,
    part_failed: bool,
    restoring: Option<&str>,
    restores_now: bool,
) -> RecordedStop {
    match (recorded, restoring) {
        (None, _) => RecordedStop::Consume,
        (Some(stopped_after), Some(restoring)) if stopped_after == restoring => RecordedStop::Clear,
        (Some(_), _) if part_failed || restores_now => RecordedStop::Clear,
        (Some(_), _) => RecordedStop::StayStopped,
    }
}

/// The most periodic checkpoints an idle worker skips in a row: every tenth interval it
/// commits anyway, so the group's committed offsets stay fresh (Kafka expires those of
/// a group nothing commits to) and a stuck worker is told from an idle one.
const MAX_SKIPPED_CHECKPOINTS: u32 = 9;

/// Whether a periodic checkpoint is skipped: nothing was read since the last commit of
/// this worker instance (`sent_at_commit`: the sink's count of records sent then),
/// nothing was written since (`sent_now`), and fewer than [`MAX_SKIPPED_CHECKPOINTS`]
/// were skipped since.
fn skips_checkpoint(
    read_since_commit: bool,
    sent_at_commit: Option<u64>,
    sent_now: u64,
    skipped: u32,
) -> bool {
    !read_since_commit && sent_at_commit == Some(sent_now) && skipped < MAX_SKIPPED_CHECKPOINTS
}

/// How often a worker in `Any` mode sends its source clocks to the repartition topic
/// when they moved, besides at each checkpoint (Flink's default watermark interval). A
/// transaction's events and the watermark records among them become readable together,
/// at its commit: with records only at checkpoints, the keyed side read an interval of
/// events before its watermark moved, and with long intervals held several windows open
/// at once, more than its cache (bench/README.md, "Watermark records every 200 ms").
const WATERMARK_INTERVAL: Duration = Duration::from_millis(200);

/// The most checkpoints a worker takes on a firing within any checkpoint interval.
const MAX_FIRING_CHECKPOINTS_PER_INTERVAL: usize = 10;

/// Whether the worker checkpoints now, ahead of its interval, because results wait
/// for its commit (`waiting`): windows fired here (in `ByKey` mode, or at the keyed
/// side a watermark record from the repartition topic), or with `partitioning: Any`
/// its source watermark passed a window's end, and the keyed side fires that window
/// once the watermark records it sent are readable. Without it a result waits for the
/// next interval: with `Any`, the source side's and then the keyed side's. Only a
/// worker that has read everything there is (`caught_up`: its last poll found
/// nothing, and [`read_to_reported_ends`]) takes one: one behind (catching up,
/// replaying) passes window ends and fires nearly all the time, and commits as often
/// would cost it throughput where latency is lost anyway. At most
/// [`MAX_FIRING_CHECKPOINTS_PER_INTERVAL`] within any `interval` (`tenth_last`: when
/// this worker instance finished the tenth last, `None` before its tenth), in bursts:
/// a source side's checkpoint on passing a window's end and, a moment later, the
/// keyed side's on firing it, go one after the other. A firing checkpoint sends no
/// clocks of its own, so a chain of them ends at the keyed side's: the source side's
/// commits the clocks that let the keyed side fire, the keyed side's commits results
/// only; and a worker passes each window's end once.
fn checkpoints_on_firing(
    waiting: bool,
    caught_up: bool,
    tenth_last: Option<Instant>,
    now: Instant,
    interval: Duration,
) -> bool {
    waiting
        && caught_up
        && tenth_last.is_none_or(|tenth_last| now.saturating_duration_since(tenth_last) >= interval)
}

/// Whether a worker has read each partition it reads (`next`: the offset it reads next)
/// up to the end librdkafka's statistics last reported for it (`end`, the last stable
/// offset; `None`: none reported yet, as in the first `statistics.interval.ms` after a
/// start, when a restarted worker may have a backlog). The report is up to that
/// interval old: a worker keeping up has read past it, one catching up or replaying a
/// backlog has not, even when its consumer's queue ran dry for a moment (between two
/// fetches).
fn read_to_reported_ends(partitions: impl IntoIterator<Item = (i64, Option<i64>)>) -> bool {
    partitions
        .into_iter()
        .all(|(next, end)| end.is_some_and(|end| next >= end))
}

/// When a worker instance finished its last [`MAX_FIRING_CHECKPOINTS_PER_INTERVAL`]
/// checkpoints on a firing, oldest first.
#[derive(Debug, Default)]
struct FiringCheckpoints(VecDeque<Instant>);

impl FiringCheckpoints {
    /// When the tenth last finished (`None` before the tenth), for
    /// [`checkpoints_on_firing`].
    fn tenth_last(&self) -> Option<Instant> {
        (self.0.len() == MAX_FIRING_CHECKPOINTS_PER_INTERVAL)
            .then(|| self.0.front().copied())
            .flatten()
    }

    /// One finished at `at`.
    fn finished(&mut self, at: Instant) {
        if self.0.len() == MAX_FIRING_CHECKPOINTS_PER_INTERVAL {
            self.0.pop_front();
        }
        self.0.push_back(at);
    }
}

/// How a worker with `partitioning: Any` hands its keyed events to their windows
/// (docs/architecture.md, "Data distribution").
#[derive(Clone, Debug, PartialEq, Eq)]
enum Hop {
    /// Through the repartition topic: the job has more than one worker (or a keyed
    /// event of this run already went there, see [`Worker::finish_draining`]).
    Topic,
    /// The worker owns every key group and source partition, but earlier runs left
    /// records in the repartition topic: it reads them up to `ends` (each partition's
    /// last stable offset when this run began) with its source partitions paused, then
    /// goes [`Hop::InProcess`].
    Draining {
        ends: BTreeMap<i32, i64>,
        /// When it began.
        started: Instant,
    },
    /// Its keyed events and its source clocks go straight to its windows, as they
    /// would arrive through the repartition topic, without the broker round trip.
    InProcess,
}

impl Hop {
    /// Its label in `sluice_worker_hop` (one of [`crate::metrics::HOPS`]).
    fn label(&self) -> &'static str {
        match self {
            Hop::Topic => "topic",
            Hop::Draining { .. } => "draining",
            Hop::InProcess => "in-process",
        }
    }
}

/// The repartition partitions to purge below their committed offsets (`channels`):
/// those this run has not yet purged up to there (`purged`).
fn offsets_to_purge(
    channels: &[ChannelCheckpoint],
    purged: &BTreeMap<i32, i64>,
) -> Vec<(i32, i64)> {
    channels
        .iter()
        .filter(|channel| {
            purged
                .get(&channel.partition)
                .is_none_or(|done| *done < channel.next_offset)
        })
        .map(|channel| (channel.partition, channel.next_offset))
        .collect()
}

/// The hop of a run of a worker that owns every key group and source partition, from
/// where it reads each repartition partition next (`starts`; a partition without one
/// from its first retained record) and each partition's first and last stable offsets
/// (`extents`): in process at once when nothing is left to read, else after reading up
/// to the ends. The topic's records come from earlier runs (this worker's, or of
/// workers before a rescale): read after this worker's own clocks applied in process,
/// their events would meet a watermark their own source clocks had already moved.
/// A partition whose records below its end were deleted (`start` below `first`) is read
/// from `first`, as the consumer does.
fn hop_at_start(
    starts: &BTreeMap<i32, i64>,
    extents: &BTreeMap<i32, (i64, i64)>,
    now: Instant,
) -> Hop {
    let ends: BTreeMap<i32, i64> = extents
        .iter()
        .filter(|(channel, (first, end))| {
            starts.get(channel).copied().unwrap_or(*first).max(*first) < *end
        })
        .map(|(channel, (_, end))| (*channel, *end))
        .collect();
    if ends.is_empty() {
        Hop::InProcess
    } else {
        Hop::Draining { ends, started: now }
    }
}

/// How far a partition was read ([`Worker::read_so_far`]).
#[derive(Debug)]
struct ReadSoFar {
    topic: String,
    partition: i32,
    /// The offset read next.
    next: i64,
    /// The end (last stable offset) librdkafka's statistics last reported.
    end: Option<i64>,
}

/// Whether each repartition partition was read up to its end in `ends`: `read` is how
/// far ([`Worker::read_so_far`]).
fn drained(ends: &BTreeMap<i32, i64>, read: &BTreeMap<i32, i64>) -> bool {
    ends.iter()
        .all(|(channel, end)| read.get(channel).is_some_and(|read| read >= end))
}

/// Whether a checkpoint first fires what the clock made due and sends this worker's
/// changed source clocks to the repartition topic ([`Worker::advance_and_broadcast`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Clocks {
    Send,
    /// A checkpoint on a firing: the clocks go with the next periodic one.
    Hold,
}

/// Records durably that the worker stops after savepoint `id` (written, synced, renamed
/// into place).
fn write_stop_record(state_dir: &std::path::Path, id: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let path = stop_record_path(state_dir);
    let pending = path.with_extension("pending");
    let mut file = std::fs::File::create(&pending)?;
    file.write_all(id.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&pending, &path)?;
    std::fs::File::open(state_dir)?.sync_all()
}

/// Removes the stop record (the worker goes on).
fn clear_stop_record(state_dir: &std::path::Path) -> std::io::Result<()> {
    match std::fs::remove_file(stop_record_path(state_dir)) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Why the loop stopped.
#[derive(Debug)]
enum Stop {
    /// Asked to (SIGTERM): the last transaction committed.
    Requested,
    /// Another worker took this worker's transactional id.
    Fenced(String),
    /// Start over from the last complete checkpoint (the transaction was aborted, or a
    /// client failed), after `backoff`.
    Restart { reason: String, backoff: bool },
    /// A setting is wrong: stop with this message.
    Invalid(anyhow::Error),
}

/// Failures the loop recovers from by starting over.
fn restart(reason: impl std::fmt::Display) -> Stop {
    Stop::Restart {
        reason: reason.to_string(),
        backoff: true,
    }
}

/// The job a worker runs: its name, and its namespace from `--namespace`, else the
/// manifest's, else `default`.
pub fn job_identity(manifest: &StreamJob, namespace: Option<&str>) -> anyhow::Result<JobIdentity> {
    let name = manifest
        .metadata
        .name
        .clone()
        .context("failed to name the job: the StreamJob has no metadata.name")?;
    let namespace = namespace
        .map(str::to_string)
        .or(manifest.metadata.namespace.clone())
        .unwrap_or_else(|| "default".into());
    Ok(JobIdentity { namespace, name })
}

/// Applies a stop this worker recorded before it restarted (see [`RecordedStop`]): sets
/// `status.stopped`, or removes the record. Called before the admin API starts, so a
/// resume can never come first and be overridden.
pub fn apply_recorded_stop(options: &RunOptions, status: &WorkerStatus) -> anyhow::Result<()> {
    let path = stop_record_path(&options.state_dir);
    let recorded = std::fs::read_to_string(&path).ok();
    let recorded = recorded.as_deref().map(str::trim);
    let restoring = options
        .restore_from
        .as_ref()
        .and_then(|url| url.split_last())
        .map(|(_, id)| id);
    // A restore that has not happened yet replaces the state by a savepoint's cut.
    let restores_now = options.restore_from.as_ref().is_some_and(|url| {
        !savepoint_restore::already_restored(&options.state_dir, url, options.restore_epoch)
    });
    // Its savepoints' states survive restarts (one it was writing is reported failed); a
    // state it cannot read counts as written, the safe side.
    let part_failed = recorded
        .and_then(|id| status.savepoints.status(id))
        .is_some_and(|savepoint| matches!(savepoint.state, SavepointState::Failed { .. }));
    match recorded_stop(recorded, part_failed, restoring.as_deref(), restores_now) {
        RecordedStop::Consume => Ok(()),
        RecordedStop::StayStopped => {
            tracing::info!(
                savepoint = recorded,
                "this worker stopped after a savepoint before it restarted: it stays stopped until told to resume or replaced"
            );
            status.stopped.store(true, Ordering::SeqCst);
            Ok(())
        }
        RecordedStop::Clear => clear_stop_record(&options.state_dir)
            .with_context(|| format!("failed to remove {}", path.display())),
    }
}

/// Runs the worker until it is asked to stop or fenced. Returns whether it stopped
/// cleanly (requested), or the reason it was fenced.
pub fn run(
    manifest: &StreamJob,
    job: &CheckedJob,
    options: &RunOptions,
    status: &Arc<WorkerStatus>,
    metrics: &Metrics,
) -> anyhow::Result<Result<(), String>> {
    let identity = job_identity(manifest, options.namespace.as_deref())?;
    anyhow::ensure!(
        options.ordinal < options.parallelism,
        "failed to start: ordinal {} is not below parallelism {} (--ordinal, --parallelism)",
        options.ordinal,
        options.parallelism
    );
    anyhow::ensure!(
        options.parallelism <= u32::from(job.key_groups.get()),
        "failed to start: parallelism {} exceeds spec.maxParallelism {}",
        options.parallelism,
        job.key_groups
    );
    let names = JobNames::new(&identity.namespace, &identity.name);
    // Snapshots a crash left behind were never uploaded whole; their savepoints are
    // reported failed (`Savepoints::new`).
    let snapshots = snapshot_directory(&options.state_dir);
    if snapshots.exists() {
        std::fs::remove_dir_all(&snapshots)
            .with_context(|| format!("failed to clear {}", snapshots.display()))?;
    }
    let secret = match &options.kafka_properties {
        Some(directory) => crate::io::kafka::read_properties_directory(directory)?,
        None => BTreeMap::new(),
    };
    let base = client_config(job, &secret)?;
    let mut attempt = 0u32;
    loop {
        let outcome = Worker::start(options, job, &names, &identity, &base, status, metrics)
            .and_then(|mut worker| worker.run());
        status.ready.store(false, Ordering::SeqCst);
        // The next run decides its hop afresh; until then there is none.
        metrics.hop.clear();
        match outcome {
            Err(Stop::Requested) => return Ok(Ok(())),
            Err(Stop::Fenced(reason)) => return Ok(Err(reason)),
            Err(Stop::Invalid(error)) => return Err(error),
            Err(Stop::Restart { reason, backoff }) => {
                if status.shutdown.load(Ordering::SeqCst) {
                    return Ok(Ok(()));
                }
                let delay = if backoff {
                    attempt = attempt.saturating_add(1);
                    Duration::from_millis(500 * 2u64.pow(attempt.min(6)))
                } else {
                    attempt = 0;
                    Duration::ZERO
                };
                tracing::warn!(%reason, retry_in = ?delay, "starting over from the last complete checkpoint");
                sleep_unless_shutdown(delay, status);
            }
            Ok(()) => unreachable!("the loop only ends with a stop"),
        }
    }
}

fn sleep_unless_shutdown(delay: Duration, status: &WorkerStatus) {
    let deadline = Instant::now() + delay;
    while Instant::now() < deadline && !status.shutdown.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50).min(deadline - Instant::now()));
    }
}

/// Whether a Kafka error means this worker was fenced by another with its ordinal.
fn is_fenced(error: &KafkaError) -> bool {
    error.rdkafka_error_code().is_some_and(is_fenced_code)
}

fn is_fenced_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::Fenced
    )
}

/// `stop`, or `Stop::Fenced` when the producer's fatal error (librdkafka's
/// `rd_kafka_fatal_error`) says it was fenced: a restart would then take the
/// transactional id back from the newer worker.
fn fenced_or(
    stop: Stop,
    fatal_error: Option<(RDKafkaErrorCode, String)>,
    ordinal: u32,
    transactional_id: &str,
) -> Stop {
    let Stop::Restart { reason, .. } = &stop else {
        return stop;
    };
    match fatal_error {
        Some((code, message)) if is_fenced_code(code) => Stop::Fenced(format!(
            "fenced: another worker with ordinal {ordinal} (transactional id {transactional_id}) started and took over; this one stops ({reason}: {message})"
        )),
        _ => stop,
    }
}

fn kafka_stop(action: &str, error: KafkaError, ordinal: u32, transactional_id: &str) -> Stop {
    if is_fenced(&error) {
        return Stop::Fenced(format!(
            "fenced while trying to {action}: another worker with ordinal {ordinal} (transactional id {transactional_id}) started and took over; this one stops ({error})"
        ));
    }
    restart(format!("failed to {action}: {error}"))
}

/// Keeps the last stable offset of each partition the consumer reads, and how far its
/// fetcher had got, from librdkafka's statistics: lag metrics cost no request of their
/// own.
#[derive(Default)]
struct EndOffsets(Mutex<HashMap<(String, i32), ReportedOffsets>>);

/// A partition's offsets in the consumer's last statistics.
#[derive(Clone, Copy, Debug)]
struct ReportedOffsets {
    /// The last stable offset: the end a `read_committed` consumer can read to.
    end: i64,
    /// The next offset the fetcher would fetch (`None`: not known yet). Known before the
    /// consumer returns any record of the partition, unlike its position.
    fetch_position: Option<i64>,
}

impl ClientContext for EndOffsets {
    fn stats(&self, statistics: Statistics) {
        let Ok(mut ends) = self.0.lock() else { return };
        for (topic, stats) in statistics.topics {
            for (partition, stats) in stats.partitions {
                if partition >= 0 && stats.ls_offset >= 0 {
                    ends.insert(
                        (topic.clone(), partition),
                        ReportedOffsets {
                            end: stats.ls_offset,
                            fetch_position: (stats.next_offset >= 0).then_some(stats.next_offset),
                        },
                    );
                }
            }
        }
    }
}

impl ConsumerContext for EndOffsets {}

type WorkerConsumer = BaseConsumer<EndOffsets>;

/// The partition counts of `topics`, or why they cannot be read.
fn partition_counts(
    consumer: &WorkerConsumer,
    topics: &[String],
    timeout: Duration,
    bootstrap: &str,
) -> Result<Vec<i32>, Stop> {
    let mut counts = Vec::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), timeout).map_err(|error| {
            restart(format!(
                "failed to read the metadata of topic {topic} from the brokers {bootstrap} (spec.kafka.bootstrapServers): {error}; check that the brokers are reachable from the worker and that the credentials of spec.kafka.secretRef are right"
            ))
        })?;
        let found = metadata.topics().iter().find(|found| found.name() == topic);
        match found {
            Some(found) if found.error().is_none() && !found.partitions().is_empty() => {
                counts.push(i32::try_from(found.partitions().len()).unwrap_or(i32::MAX));
            }
            _ => {
                return Err(restart(format!(
                    "topic {topic} (spec.source.topics) does not exist on the brokers {bootstrap}: create it, or fix spec.source.topics; retrying"
                )));
            }
        }
    }
    Ok(counts)
}

/// One run of the loop, from a complete checkpoint to a stop.
struct Worker<'a> {
    options: &'a RunOptions,
    job: &'a CheckedJob,
    names: &'a JobNames,
    identity: &'a JobIdentity,
    status: &'a Arc<WorkerStatus>,
    metrics: &'a Metrics,
    engine: Engine,
    /// The key groups this worker owns.
    owned_key_groups: std::ops::Range<u32>,
    sink: TransactionalSink,
    consumer: WorkerConsumer,
    admin: AdminClient<DefaultClientContext>,
    /// Positions of the source partitions, by topic and partition, reused for each record.
    positions: HashMap<String, HashMap<i32, (PartitionId, Position, Counter)>>,
    /// Buffers a record is copied into, reused.
    payload_buffer: Vec<u8>,
    topic_buffer: String,
    /// Counters of the repartition partitions read.
    channel_counters: HashMap<i32, Counter>,
    /// Whether keyed events go through the repartition topic.
    exchange: bool,
    /// Whether late events or dead letters are written out: keyed events then carry their
    /// origin (a late event, or one whose aggregate would overflow, is set aside on the
    /// windows' side).
    keep_origin: bool,
    key_groups: u32,
    next_checkpoint_id: u64,
    started: Instant,
    transactional_id: String,
    /// A watermark record's bytes, reused.
    exchange_buffer: Vec<u8>,
    /// Keyed events routed to the repartition topic and not sent yet (dropped with the
    /// run when it starts over: its transaction aborts).
    exchange_batches: ExchangeBatches,
    /// Checkpoints this process made (for crash points).
    checkpoints_made: u64,
    /// Consumption paused by a stop-with-savepoint.
    paused: bool,
    /// Whether a record was read since the last commit.
    read_since_commit: bool,
    /// The sink's count of records sent at the last commit (`None`: no commit yet by this
    /// instance).
    sent_at_commit: Option<u64>,
    /// The source clocks last sent to the repartition topic (by this instance).
    broadcast_clocks: Vec<(SourcePartition, SourceClock)>,
    /// Periodic checkpoints skipped since the last commit (idle).
    skipped_checkpoints: u32,
    /// Whether results wait for this worker's next commit: a watermark record from the
    /// repartition topic fired windows with results, or the source watermark passed a
    /// window's end ([`Worker::passed_window_end`]), since the last commit.
    results_await_commit: bool,
    /// The source watermark when last checked for a window's end
    /// ([`Worker::passed_window_end`]).
    source_watermark_checked: Millis,
    /// When this instance finished its last checkpoints on a firing.
    firing_checkpoints: FiringCheckpoints,
    /// How keyed events reach their windows (`partitioning: Any`).
    hop: Hop,
    /// Whether this instance wrote a keyed event to the repartition topic.
    sent_keyed_events_to_topic: bool,
    /// Where this run purged each repartition partition up to.
    purged: BTreeMap<i32, i64>,
}

impl<'a> Worker<'a> {
    fn start(
        options: &'a RunOptions,
        job: &'a CheckedJob,
        names: &'a JobNames,
        identity: &'a JobIdentity,
        base: &ClientConfig,
        status: &'a Arc<WorkerStatus>,
        metrics: &'a Metrics,
    ) -> Result<Self, Stop> {
        let timeout = options.kafka_timeout;
        let bootstrap = &job.spec.kafka.bootstrap_servers;
        let transactional_id = names.transactional_id(options.ordinal);
        let invalid = |error: KafkaError, what: &str| {
            Stop::Invalid(anyhow::anyhow!(
                "failed to create the Kafka {what}: {error} (check spec.kafka.properties and the Secret of spec.kafka.secretRef)"
            ))
        };
        let producer: BaseProducer = with_defaults(base, PRODUCER_DEFAULTS)
            .set("transactional.id", &transactional_id)
            .set("enable.idempotence", "true")
            .set(
                "transaction.timeout.ms",
                (job.spec.state.checkpoint_interval.get().as_millis() * 6)
                    .clamp(60_000, 900_000)
                    .to_string(),
            )
            .create()
            .map_err(|error| invalid(error, "producer"))?;
        let consumer: WorkerConsumer = with_defaults(base, CONSUMER_DEFAULTS)
            .set("group.id", &names.group_id)
            .set("statistics.interval.ms", "5000")
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                match job.source.start_from {
                    StartPosition::Earliest => "earliest",
                    StartPosition::Latest => "latest",
                },
            )
            // Bounded prefetch: with the producer's bounded queue, memory stays bounded
            // whatever the input rate.
            .set("queued.max.messages.kbytes", "32768")
            .create_with_context(EndOffsets::default())
            .map_err(|error| invalid(error, "consumer"))?;
        let admin: AdminClient<DefaultClientContext> = base
            .create()
            .map_err(|error| invalid(error, "admin client"))?;

        let counts = partition_counts(&consumer, &job.source.topics, timeout, bootstrap)?;
        let key_groups = u32::from(job.key_groups.get());
        let windowed = job.pipeline.windowed().is_some();
        let exchange = windowed && job.source.partitioning == Partitioning::Any;
        if exchange {
            ensure_repartition_topic(&admin, &consumer, names, key_groups, timeout)?;
        }
        let owned = ownership(options.ordinal, options.parallelism, key_groups, &counts);

        // Fence every older instance of this ordinal and finish its transaction.
        producer.init_transactions(timeout).map_err(|error| {
            kafka_stop(
                "initialise transactions",
                error,
                options.ordinal,
                &transactional_id,
            )
        })?;
        if options.ordinal == 0 {
            abort_removed_ordinals(base, names, options, timeout)?;
        }

        // Where each owned partition's committed offset is, with its metadata.
        let mut wanted = TopicPartitionList::new();
        for partition in &owned.partitions {
            wanted.add_partition(
                &job.source.topics[usize::from(partition.topic)],
                partition.partition,
            );
        }
        if exchange {
            for group in owned.key_groups.clone() {
                wanted.add_partition(&names.repartition_topic, group_partition(group));
            }
        }
        let committed = if wanted.count() == 0 {
            TopicPartitionList::new()
        } else {
            consumer
                .committed_offsets(wanted.clone(), timeout)
                .map_err(|error| {
                    restart(format!(
                        "failed to read the committed offsets of group {}: {error}",
                        names.group_id
                    ))
                })?
        };
        let metadata: Vec<Option<String>> = committed
            .elements()
            .iter()
            .map(|element| Some(element.metadata().to_string()).filter(|text| !text.is_empty()))
            .collect();

        // A savepoint to start from replaces the state, once.
        if let Some(url) = &options.restore_from
            && !savepoint_restore::already_restored(&options.state_dir, url, options.restore_epoch)
        {
            let started = Instant::now();
            let savepoint =
                crate::savepoint::restore::Savepoint::open(url).map_err(Stop::Invalid)?;
            let owned_here = Owned {
                key_groups: (owned.key_groups.start, owned.key_groups.end),
                partitions: owned
                    .partitions
                    .iter()
                    .map(|partition| {
                        (
                            job.source.topics[usize::from(partition.topic)].clone(),
                            partition.partition,
                        )
                    })
                    .collect(),
            };
            let record = savepoint_restore::restore(
                &savepoint,
                identity,
                &StateDescription::of(job),
                &owned_here,
                &options.state_dir,
                if options.restore_offsets_only {
                    savepoint_restore::Take::OffsetsOnly
                } else if job.spec.allow_non_restored_state {
                    savepoint_restore::Take::WhatMaps
                } else {
                    savepoint_restore::Take::Everything
                },
                options.restore_epoch,
            )
            .map_err(Stop::Invalid)?;
            tracing::info!(
                savepoint = %url,
                offsets_only = options.restore_offsets_only,
                taken_at_parallelism = savepoint.manifest.parallelism,
                key_groups = ?owned.key_groups,
                partitions = record.partitions.len(),
                seconds = started.elapsed().as_secs_f64(),
                "restored the savepoint"
            );
        }

        // Settle what a crash left pending, then return to the last complete checkpoint.
        let mut store =
            RocksDbStore::open(&options.state_dir).map_err(|error| Stop::Invalid(error.into()))?;
        for (id, outcome) in commit::settle_pending(&mut store, &metadata)
            .map_err(|error| Stop::Invalid(error.into()))?
        {
            tracing::info!(
                checkpoint = id,
                ?outcome,
                "settled a checkpoint left pending"
            );
        }
        let engine_options = EngineOptions {
            state_cache_entries: options.state_cache_entries,
        };
        let now = 0;
        let (mut engine, restored) =
            Engine::restore(job, Box::new(store), engine_options, metrics.clone(), now)
                .map_err(Stop::Invalid)?;
        let committed_by_us = metadata
            .iter()
            .flatten()
            .any(|text| commit::parse_offset_metadata(text).is_some());
        if restored.is_none() && windowed && committed_by_us {
            return Err(Stop::Invalid(anyhow::anyhow!(
                "failed to start: the job committed progress for this worker's partitions but its state volume {} holds no checkpoint; its window state is lost. Restore a savepoint, or delete the committed offsets of group {} to start over",
                options.state_dir.display(),
                names.group_id
            )));
        }
        if exchange {
            let sources = all_partitions(&counts)
                .into_iter()
                .map(|partition| SourcePartition {
                    topic: job.source.topics[usize::from(partition.topic)].clone(),
                    partition: partition.partition,
                })
                .collect();
            engine.use_exchange(sources);
            if let Some(record) = &restored {
                engine.resume_from(record, now).map_err(Stop::Invalid)?;
            }
        }

        // Start offsets: the checkpoint's, else the committed ones, else the start
        // position resolved to a number now (so a restart never skips records).
        let restored_offsets = restored
            .as_ref()
            .map(|record| record_offsets(record, &names.repartition_topic))
            .unwrap_or_default();
        // Just restored from a savepoint: its offsets are the only ones to start from (the
        // group's committed offsets are another run's).
        let from_savepoint = restored
            .as_ref()
            .is_some_and(|record| record.restored_from.is_some());
        let committed_offsets: HashMap<(String, i32), i64> = committed
            .elements()
            .iter()
            .filter(|_| !from_savepoint)
            .filter_map(|element| match element.offset() {
                Offset::Offset(offset) => {
                    Some(((element.topic().to_string(), element.partition()), offset))
                }
                _ => None,
            })
            .collect();
        let mut assignment = TopicPartitionList::new();
        let mut source_starts = Vec::new();
        let mut channel_starts = BTreeMap::new();
        for element in wanted.elements() {
            let key = (element.topic().to_string(), element.partition());
            let is_source = key.0 != names.repartition_topic;
            let offset = match restored_offsets.get(&key).or(committed_offsets.get(&key)) {
                Some(offset) => Some(*offset),
                // Never read yet: from the start of what is retained, or for `Latest` from
                // the end as it is now, a number recorded at the first checkpoint so a
                // restart never skips records.
                None if is_source && job.source.start_from == StartPosition::Latest => {
                    let (_, high) = consumer
                        .fetch_watermarks(element.topic(), element.partition(), timeout)
                        .map_err(|error| {
                            restart(format!(
                                "failed to read the end offset of {}/{}: {error}",
                                key.0, key.1
                            ))
                        })?;
                    Some(high)
                }
                None => None,
            };
            assignment
                .add_partition_offset(
                    element.topic(),
                    element.partition(),
                    offset.map_or(Offset::Beginning, Offset::Offset),
                )
                .map_err(restart)?;
            match (is_source, offset) {
                (false, Some(offset)) => {
                    channel_starts.insert(key.1, offset);
                }
                (false, None) => {}
                (true, _) => source_starts.push((key, offset)),
            }
        }
        consumer
            .assign(&assignment)
            .map_err(|error| restart(format!("failed to assign partitions: {error}")))?;

        let mut positions = HashMap::new();
        let mut partition_ids = Vec::new();
        let mut known_starts = Vec::new();
        for ((topic, partition), offset) in source_starts {
            let index = job
                .source
                .topics
                .iter()
                .position(|known| *known == topic)
                .and_then(|index| u16::try_from(index).ok())
                .unwrap_or_default();
            let id = PartitionId::new(index, partition);
            partition_ids.push(id);
            if let Some(offset) = offset {
                known_starts.push((id, offset));
            }
            let counter = metrics
                .partition_records_in
                .get_or_create(&PartitionLabels {
                    topic: topic.clone(),
                    partition,
                })
                .clone();
            positions
                .entry(topic.clone())
                .or_insert_with(HashMap::new)
                .insert(
                    partition,
                    (
                        id,
                        Position::Kafka {
                            topic,
                            partition,
                            offset: offset.unwrap_or_default(),
                        },
                        counter,
                    ),
                );
        }
        engine.assign_partitions(&partition_ids, now);
        engine.seed_offsets(&known_starts);
        if windowed && !exchange {
            // ByKey: an event's key group is its partition's, so state moves with it.
            let total = u32::try_from(all_partitions(&counts).len()).unwrap_or(u32::MAX);
            let groups = all_partitions(&counts)
                .into_iter()
                .enumerate()
                .map(|(index, partition)| {
                    let index = u32::try_from(index).unwrap_or(u32::MAX);
                    (partition, key_group_of_partition(index, total, key_groups))
                })
                .collect();
            engine.group_by_partition(groups);
        }
        let channels: Vec<i32> = if exchange {
            owned.key_groups.clone().map(group_partition).collect()
        } else {
            Vec::new()
        };
        let owns_everything = owned.key_groups == (0..key_groups)
            && owned.partitions.len() == all_partitions(&counts).len();
        // The repartition partitions' first and last stable offsets, asked once: a
        // savepoint's offsets there must still be retained, and a worker that owns every
        // key group takes its hop from them.
        let extents = if exchange && (from_savepoint || owns_everything) {
            Some(
                channel_extents(&consumer, &names.repartition_topic, &channels, timeout)
                    .map_err(|error| restart(format!("{error:#}")))?,
            )
        } else {
            None
        };
        if from_savepoint && let Some(extents) = &extents {
            check_repartition_retained(names, &channel_starts, extents)?;
        }
        engine.assign_channels(&channel_starts);
        engine.read_channels(&channels);
        let hop = match &extents {
            Some(extents) if owns_everything => {
                let hop = hop_at_start(&engine.channel_offsets(), extents, Instant::now());
                // A partition never read starts at its first retained record, as the
                // consumer does; recorded, its checkpoints commit where it is (in
                // process, at its end), which lag tools and a later run read.
                engine.assign_channels(
                    &extents
                        .iter()
                        .map(|(channel, (first, _))| (*channel, *first))
                        .collect(),
                );
                hop
            }
            _ => Hop::Topic,
        };
        let channel_counters = channels
            .iter()
            .map(|channel| {
                (
                    *channel,
                    metrics
                        .partition_records_in
                        .get_or_create(&PartitionLabels {
                            topic: names.repartition_topic.clone(),
                            partition: *channel,
                        })
                        .clone(),
                )
            })
            .collect();
        producer.begin_transaction().map_err(|error| {
            kafka_stop(
                "begin a transaction",
                error,
                options.ordinal,
                &transactional_id,
            )
        })?;
        let sink = TransactionalSink::new(
            producer,
            SinkTopics {
                results: job.sink.topic.clone(),
                dead_letters: job.sink.dead_letter_topic.clone(),
                late: job.sink.late_data_topic.clone(),
                repartition: names.repartition_topic.clone(),
            },
            metrics.clone(),
        );
        tracing::info!(
            ordinal = options.ordinal,
            parallelism = options.parallelism,
            key_groups = ?owned.key_groups,
            source_partitions = owned.partitions.len(),
            restored_checkpoint = restored.as_ref().map(|record| record.id),
            exchange,
            in_process = hop == Hop::InProcess,
            repartition_partitions_to_drain = match &hop {
                Hop::Draining { ends, .. } => ends.len(),
                _ => 0,
            },
            "worker ready"
        );
        if exchange {
            metrics.set_hop(hop.label());
        }
        status.ready.store(true, Ordering::SeqCst);
        let source_watermark_checked = engine.source_watermark();
        let worker = Self {
            options,
            job,
            names,
            identity,
            status,
            metrics,
            owned_key_groups: owned.key_groups.clone(),
            next_checkpoint_id: restored.as_ref().map_or(0, |record| record.id) + 1,
            engine,
            sink,
            consumer,
            admin,
            positions,
            channel_counters,
            exchange,
            keep_origin: job.sink.late_data_topic.is_some() || job.sink.dead_letter_topic.is_some(),
            key_groups,
            started: Instant::now(),
            transactional_id,
            exchange_buffer: Vec::new(),
            exchange_batches: ExchangeBatches::default(),
            checkpoints_made: 0,
            paused: false,
            read_since_commit: false,
            sent_at_commit: None,
            broadcast_clocks: Vec::new(),
            skipped_checkpoints: 0,
            results_await_commit: false,
            source_watermark_checked,
            firing_checkpoints: FiringCheckpoints::default(),
            payload_buffer: Vec::new(),
            topic_buffer: String::new(),
            hop,
            sent_keyed_events_to_topic: false,
            purged: BTreeMap::new(),
        };
        if matches!(worker.hop, Hop::Draining { .. }) {
            worker.pause_sources()?;
        }
        Ok(worker)
    }

    /// The source partitions this worker reads.
    fn source_partitions(&self) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for (topic, partitions) in &self.positions {
            for partition in partitions.keys() {
                list.add_partition(topic, *partition);
            }
        }
        list
    }

    /// Stops reading the source partitions while the repartition topic is drained
    /// ([`Hop::Draining`]).
    fn pause_sources(&self) -> Result<(), Stop> {
        self.consumer
            .pause(&self.source_partitions())
            .map_err(|error| restart(format!("failed to pause the source partitions: {error}")))
    }

    /// While draining, with the consumer's queue empty: once the repartition topic is
    /// read up to its ends, keyed events stay in process and the source partitions are
    /// read again (their silence while paused makes none idle). A source record read
    /// meanwhile would have gone through the topic, where its events must not meet
    /// clocks applied in process: then the topic stays the hop for this run. (librdkafka
    /// pauses before the next poll, so this is a guard, not a path taken.)
    fn finish_draining(&mut self) -> Result<(), Stop> {
        let Hop::Draining { ends, started } = &self.hop else {
            return Ok(());
        };
        let Some(read) = self.read_so_far() else {
            return Ok(());
        };
        let read: BTreeMap<i32, i64> = read
            .into_iter()
            .filter(|partition| partition.topic == self.names.repartition_topic)
            .map(|partition| (partition.partition, partition.next))
            .collect();
        if !drained(ends, &read) {
            return Ok(());
        }
        let (partitions, seconds) = (ends.len(), started.elapsed().as_secs_f64());
        self.hop = if self.sent_keyed_events_to_topic {
            Hop::Topic
        } else {
            Hop::InProcess
        };
        self.metrics.set_hop(self.hop.label());
        let now = self.now();
        self.engine.resume_reading(now);
        self.consumer
            .resume(&self.source_partitions())
            .map_err(|error| restart(format!("failed to resume the source partitions: {error}")))?;
        tracing::info!(
            repartition_partitions = partitions,
            seconds,
            in_process = self.hop == Hop::InProcess,
            "read what earlier runs left in the repartition topic"
        );
        Ok(())
    }

    fn now(&self) -> Millis {
        Millis::try_from(self.started.elapsed().as_millis()).unwrap_or(Millis::MAX)
    }

    /// Runs until a stop. A step that failed because another worker took this one's
    /// transactional id reports it as fenced, whatever error the step itself saw: once
    /// fenced, librdkafka fails every produce with a generic fatal error, and starting
    /// over would fence the newer worker in turn.
    fn run(&mut self) -> Result<(), Stop> {
        self.run_until_stopped()
            .map_err(|stop| self.fenced_or(stop))
    }

    /// `stop`, or `Stop::Fenced` if the producer was fenced.
    fn fenced_or(&self, stop: Stop) -> Stop {
        fenced_or(
            stop,
            self.sink.producer().client().fatal_error(),
            self.options.ordinal,
            &self.transactional_id,
        )
    }

    fn run_until_stopped(&mut self) -> Result<(), Stop> {
        let interval = self.job.spec.state.checkpoint_interval.get();
        let mut next_checkpoint = Instant::now() + interval;
        let mut next_advance = Instant::now();
        let mut next_broadcast = Instant::now() + WATERMARK_INTERVAL;
        let mut next_lag = Instant::now();
        loop {
            if self.status.shutdown.load(Ordering::SeqCst) {
                if self.status.stopped.load(Ordering::SeqCst) {
                    // Stopped with a savepoint: the open transaction is empty, and nothing
                    // may be written after the savepoint (not even windows a processing-time
                    // idle timeout would fire), or a restore from it would write it twice.
                    let _ = self
                        .sink
                        .producer()
                        .abort_transaction(self.options.kafka_timeout);
                    tracing::info!("stopped on request after a stop-with-savepoint");
                    return Err(Stop::Requested);
                }
                self.checkpoint(Clocks::Send, CheckpointTimers::InMemory)?;
                tracing::info!("stopped on request after committing the last transaction");
                return Err(Stop::Requested);
            }
            if let Some((id, stop)) = self.status.savepoints.take_request() {
                if stop && let Err(error) = write_stop_record(&self.options.state_dir, &id) {
                    // Without the record a crash after the stop would consume past the
                    // cut: refuse the savepoint rather than stop unrecorded.
                    self.status.savepoints.set(
                        &id,
                        SavepointState::Failed {
                            reason: format!(
                                "failed to record the stop in {}: {error}",
                                stop_record_path(&self.options.state_dir).display()
                            ),
                        },
                    );
                    continue;
                }
                self.take_savepoint(&id)?;
                if stop && !self.status.stopped.swap(true, Ordering::SeqCst) {
                    tracing::info!(
                        savepoint = id,
                        "stopped consuming after the savepoint; waiting to be told to exit"
                    );
                }
            }
            if self.status.stopped.load(Ordering::SeqCst) {
                // Stop-with-savepoint: nothing is read, nothing is written; the open
                // transaction stays empty until the worker is told to exit or resume.
                if !self.paused
                    && let Ok(assignment) = self.consumer.assignment()
                {
                    let _ = self.consumer.pause(&assignment);
                }
                self.paused = true;
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            if std::mem::take(&mut self.paused) {
                // Told to go on: a restart from here consumes as well.
                clear_stop_record(&self.options.state_dir).map_err(|error| {
                    restart(format!(
                        "failed to remove {}: {error}",
                        stop_record_path(&self.options.state_dir).display()
                    ))
                })?;
                if let Ok(assignment) = self.consumer.assignment() {
                    let _ = self.consumer.resume(&assignment);
                }
                if matches!(self.hop, Hop::Draining { .. }) {
                    self.pause_sources()?;
                }
                let now = self.now();
                self.engine.resume_reading(now);
                tracing::info!("consuming again after a stop-with-savepoint");
                next_checkpoint = Instant::now() + interval;
            }
            // A batch of records, then the clock-driven work. The time spent waiting for
            // the first record, and committing, is not busy; the rest of the iteration is.
            let iteration = Instant::now();
            let mut idle = Duration::ZERO;
            let mut budget = 1_000;
            let mut wait = Duration::from_millis(50);
            let mut caught_up = false;
            while budget > 0 {
                let polled = (!wait.is_zero()).then(Instant::now);
                let message = self.consumer.poll(wait);
                if let Some(polled) = polled {
                    idle += polled.elapsed();
                }
                match message {
                    None => {
                        caught_up = true;
                        break;
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%error, "the consumer reported an error");
                        break;
                    }
                    Some(Ok(message)) => {
                        // Copied into buffers reused for every record: the message borrows
                        // the consumer, and handling it needs the rest of the worker.
                        let mut payload = std::mem::take(&mut self.payload_buffer);
                        let mut topic = std::mem::take(&mut self.topic_buffer);
                        payload.clear();
                        payload.extend_from_slice(message.payload().unwrap_or_default());
                        topic.clear();
                        topic.push_str(message.topic());
                        let (partition, offset) = (message.partition(), message.offset());
                        drop(message);
                        let handled = self.handle(&topic, partition, offset, &payload);
                        self.payload_buffer = payload;
                        self.topic_buffer = topic;
                        handled?;
                    }
                }
                wait = Duration::ZERO;
                budget -= 1;
            }
            if caught_up {
                // The queue ran dry: what the fetcher had fetched was handed over, so its
                // position counts as read.
                self.finish_draining()?;
            }
            let now = Instant::now();
            if self.exchange && now >= next_broadcast {
                self.advance_and_broadcast()?;
                next_broadcast = now + WATERMARK_INTERVAL;
                next_advance = now + Duration::from_millis(100);
            } else if now >= next_advance {
                let millis = self.now();
                self.engine
                    .advance(millis, &mut self.sink)
                    .map_err(restart)?;
                next_advance = now + Duration::from_millis(100);
            }
            if now >= next_lag {
                self.report_lag();
                next_lag = now + Duration::from_secs(10);
            }
            if !self.exchange
                && self.passed_window_end()
                && self.sent_at_commit != Some(self.sink.sent())
            {
                // Fired here: the results are in the open transaction (unless nothing
                // was written since the last commit: no window of the end held events).
                self.results_await_commit = true;
            }

            // Caught up: the last poll found nothing, and the partitions were read to
            // their last reported ends (asked only when results wait).
            let caught_up =
                caught_up && (!self.results_await_commit || self.read_to_reported_ends());
            if checkpoints_on_firing(
                self.results_await_commit,
                caught_up,
                self.firing_checkpoints.tenth_last(),
                now,
                interval,
            ) {
                // Taken only when caught up: its commit is a wait, as a periodic one's.
                let committing = Instant::now();
                self.checkpoint(Clocks::Hold, CheckpointTimers::InMemory)?;
                idle += committing.elapsed();
                self.metrics.firing_checkpoints.inc();
                self.firing_checkpoints.finished(Instant::now());
                next_checkpoint = Instant::now() + interval;
            } else if now >= next_checkpoint {
                // A commit is a fixed cost per checkpoint interval, mostly a wait for the
                // broker: not counted as busy, so busy time grows with the records.
                let committing = Instant::now();
                self.periodic_checkpoint()?;
                idle += committing.elapsed();
                next_checkpoint = Instant::now() + interval;
            }
            self.metrics
                .busy_seconds
                .inc_by(iteration.elapsed().saturating_sub(idle).as_secs_f64());
        }
    }

    fn handle(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        payload: &[u8],
    ) -> Result<(), Stop> {
        self.read_since_commit = true;
        let now = self.now();
        if self.exchange && topic == self.names.repartition_topic {
            if let Some(counter) = self.channel_counters.get(&partition) {
                counter.inc();
            }
            let record = ExchangeRecord::decode(payload).map_err(|error| {
                Stop::Invalid(anyhow::anyhow!(
                    "failed to read record {offset} of {topic}/{partition}: {error}"
                ))
            })?;
            let watermark = matches!(record, ExchangeRecord::Watermark(_));
            let sent = self.sink.sent();
            self.engine
                .receive(
                    partition,
                    offset,
                    record,
                    &self.names.repartition_topic,
                    &mut self.sink,
                )
                .map_err(restart)?;
            if watermark && self.sink.sent() > sent {
                self.results_await_commit = true;
            }
            return Ok(());
        }
        let Some((id, position, counter)) = self
            .positions
            .get_mut(topic)
            .and_then(|partitions| partitions.get_mut(&partition))
        else {
            tracing::warn!(
                topic,
                partition,
                "a record of a partition this worker does not own"
            );
            return Ok(());
        };
        counter.inc();
        if let Position::Kafka { offset: at, .. } = position {
            *at = offset;
        }
        let record = SourceRecord {
            partition: *id,
            position,
            payload,
        };
        if !self.exchange {
            return self
                .engine
                .process(record, now, &mut self.sink)
                .map_err(restart);
        }
        let routed = self
            .engine
            .route(record, now, &mut self.sink)
            .map_err(restart)?;
        if let Routed::Keyed(event) = routed {
            if self.hop == Hop::InProcess {
                return self
                    .engine
                    .keep_keyed(&event, position, payload, &mut self.sink)
                    .map_err(restart);
            }
            self.sent_keyed_events_to_topic = true;
            let group = u32::from(key_group(&event.key, self.key_groups));
            let origin = self.keep_origin.then_some(OriginRef {
                topic,
                partition,
                offset,
                original: payload,
            });
            if self
                .exchange_batches
                .push(group_partition(group), &event, origin)
            {
                let ready = self.exchange_batches.take_ready();
                self.send_exchange_records(ready)?;
            }
        }
        Ok(())
    }

    /// Sends every batch of keyed events to the repartition topic: before a watermark
    /// record, which must follow the events it covers, and before a commit.
    fn send_exchange_batches(&mut self) -> Result<(), Stop> {
        let records = self.exchange_batches.take_all();
        self.send_exchange_records(records)
    }

    fn send_exchange_records(&mut self, records: Vec<(i32, Vec<u8>)>) -> Result<(), Stop> {
        for (partition, record) in records {
            self.sink.exchange(partition, &record).map_err(restart)?;
        }
        Ok(())
    }

    /// Takes this worker's part of savepoint `id`: a checkpoint (a transaction boundary),
    /// hard links to its files, then an upload on another thread while processing goes
    /// on. A failure is reported in the savepoint's state; one of the checkpoint also
    /// starts the loop over, as any failed checkpoint does.
    fn take_savepoint(&mut self, id: &str) -> Result<(), Stop> {
        let savepoints = self.status.savepoints.clone();
        let failed = |reason: String| SavepointState::Failed { reason };
        let Some(location) = self.options.savepoint_location.clone() else {
            savepoints.set(id, failed("no savepoint location is configured".into()));
            return Ok(());
        };
        let started = Instant::now();
        // Its timers go to the store too: a worker restored from it starts without
        // rebuilding them.
        let record = match self.checkpoint(Clocks::Send, CheckpointTimers::InStore) {
            Ok(record) => record,
            Err(stop) => {
                savepoints.set(
                    id,
                    failed(format!(
                        "failed to commit the checkpoint it starts from: {stop:?}"
                    )),
                );
                return Err(stop);
            }
        };
        let snapshot = snapshot_directory(&self.options.state_dir).join(id);
        if snapshot.exists() {
            let _ = std::fs::remove_dir_all(&snapshot);
        }
        if let Err(error) =
            crate::state::rocksdb::link_checkpoint(&self.options.state_dir, record.id, &snapshot)
        {
            savepoints.set(id, failed(format!("failed to snapshot the state: {error}")));
            return Ok(());
        }
        self.metrics
            .savepoint_pause
            .observe(started.elapsed().as_secs_f64());
        let part = Part {
            format_version: SAVEPOINT_FORMAT_VERSION,
            savepoint: id.to_string(),
            job: self.identity.clone(),
            spec_hash: self.options.spec_hash.clone(),
            state: StateDescription::of(self.job),
            ordinal: self.options.ordinal,
            parallelism: self.options.parallelism,
            key_groups: KeyGroupRange {
                first: self.owned_key_groups.start,
                end: self.owned_key_groups.end,
            },
            checkpoint: record,
            files: Vec::new(),
            taken_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        };
        savepoints.set(id, SavepointState::InProgress);
        crate::savepoint::spawn_upload(
            savepoints,
            crate::savepoint::job_url(&location, self.identity),
            part,
            snapshot,
        );
        Ok(())
    }

    /// The checkpoint of every interval, which an idle worker mostly skips: when it read
    /// nothing and wrote nothing since its last commit (a watermark that did not move is
    /// not sent again), the last checkpoint still holds, so there is no transaction to
    /// commit and no state to write. Each instance commits once before it skips any, and
    /// at least every tenth interval ([`MAX_SKIPPED_CHECKPOINTS`]).
    fn periodic_checkpoint(&mut self) -> Result<(), Stop> {
        self.advance_and_broadcast()?;
        if self.pass_skipped_records() {
            // A marker passed is worth a commit: without it the group shows lag 1.
            self.read_since_commit = true;
        }
        if skips_checkpoint(
            self.read_since_commit,
            self.sent_at_commit,
            self.sink.sent(),
            self.skipped_checkpoints,
        ) {
            self.skipped_checkpoints += 1;
            return Ok(());
        }
        self.checkpoint(Clocks::Send, CheckpointTimers::InMemory)
            .map(|_| ())
    }

    /// Moves the engine's next offsets to the consumer's positions where the consumer
    /// passed records it never handed over: transaction markers and aborted records
    /// (`read_committed`). Every record it handed over was handled (the loop handles each
    /// before the next poll), so what lies between is only such records. Returns whether
    /// an offset moved.
    fn pass_skipped_records(&mut self) -> bool {
        let Ok(positions) = self.consumer.position() else {
            return false;
        };
        let mut moved = false;
        for element in positions.elements() {
            let Offset::Offset(position) = element.offset() else {
                continue;
            };
            let topic = element.topic();
            let source_topic =
                (!(self.exchange && topic == self.names.repartition_topic)).then_some(topic);
            moved |= self
                .engine
                .pass_skipped_records(source_topic, element.partition(), position);
        }
        moved
    }

    /// Fires what the clock makes due, then sends this worker's source clocks to every
    /// repartition partition when they changed since it last sent them: they follow every
    /// event they cover. At each checkpoint but one on a firing, and every
    /// [`WATERMARK_INTERVAL`] between. (Unchanged clocks say nothing new: a receiver keeps
    /// the clocks it heard in its checkpoints.) In process ([`Hop::InProcess`]) they reach
    /// its own windows at once, which may fire.
    fn advance_and_broadcast(&mut self) -> Result<(), Stop> {
        let now = self.now();
        self.engine.advance(now, &mut self.sink).map_err(restart)?;
        if !self.exchange {
            return Ok(());
        }
        let clocks = self.engine.source_clocks(now);
        if clocks.is_empty() || clocks == self.broadcast_clocks {
            return Ok(());
        }
        match self.hop {
            Hop::Topic => {
                self.send_exchange_batches()?;
                ExchangeRecord::Watermark(clocks.clone()).encode(&mut self.exchange_buffer);
                for group in 0..self.key_groups {
                    self.sink
                        .exchange(group_partition(group), &self.exchange_buffer)
                        .map_err(restart)?;
                }
                if self.passed_window_end() {
                    // The keyed side fires once these watermark records are readable.
                    self.results_await_commit = true;
                }
            }
            // Its source partitions are paused: nothing it sends now is news.
            Hop::Draining { .. } => return Ok(()),
            Hop::InProcess => {
                let sent = self.sink.sent();
                self.engine
                    .keep_clocks(&clocks, &mut self.sink)
                    .map_err(restart)?;
                if self.sink.sent() > sent {
                    // Fired here: the results are in the open transaction.
                    self.results_await_commit = true;
                }
            }
        }
        self.broadcast_clocks = clocks;
        Ok(())
    }

    /// Whether the source watermark ([`Engine::source_watermark`]) passed a window's end
    /// since this was last asked: results then wait for this worker's commit, whether
    /// the window fired here (`ByKey`) or fires at the keyed side once the watermark
    /// records just sent are readable (`Any`). Session windows end where each key's
    /// events say, so they never count ([`Engine::window_ends_between`]).
    fn passed_window_end(&mut self) -> bool {
        let watermark = self.engine.source_watermark();
        let checked = std::mem::replace(&mut self.source_watermark_checked, watermark);
        self.engine.window_ends_between(checked, watermark)
    }

    /// Commits state, offsets and outputs together (docs/architecture.md, "Exactly
    /// once"). An abortable failure starts over from the last complete checkpoint.
    /// Returns the checkpoint's record. `timers`: see [`CheckpointTimers`].
    fn checkpoint(
        &mut self,
        clocks: Clocks,
        timers: CheckpointTimers,
    ) -> Result<CheckpointRecord, Stop> {
        if clocks == Clocks::Send {
            self.advance_and_broadcast()?;
        }
        // The transaction holds every keyed event routed before it commits.
        self.send_exchange_batches()?;
        self.pass_skipped_records();
        let id = self.next_checkpoint_id;
        let started = Instant::now();
        let record = self
            .engine
            .checkpoint(id, &commit::new_token(id), timers)
            .map_err(|error| restart(format!("failed to write checkpoint {id}: {error:#}")))?;
        self.metrics
            .checkpoint_duration
            .observe(started.elapsed().as_secs_f64());
        let mut offsets = TopicPartitionList::new();
        let metadata = commit::offset_metadata(&record);
        for partition in &record.partitions {
            add_offset(
                &mut offsets,
                &partition.topic,
                partition.partition,
                partition.next_offset,
                &metadata,
            )?;
        }
        for channel in &record.channels {
            add_offset(
                &mut offsets,
                &self.names.repartition_topic,
                channel.partition,
                channel.next_offset,
                &metadata,
            )?;
        }
        self.checkpoints_made += 1;
        self.crash_if(CrashPoint::BeforeCommit(self.checkpoints_made));
        let started = Instant::now();
        let producer = self.sink.producer();
        let ordinal = self.options.ordinal;
        let transactional_id = self.transactional_id.clone();
        if offsets.count() > 0 {
            let group = self
                .consumer
                .group_metadata()
                .ok_or_else(|| restart("failed to read the consumer's group metadata"))?;
            producer
                .send_offsets_to_transaction(&offsets, &group, self.options.kafka_timeout)
                .map_err(|error| self.abort("send offsets to the transaction", error))?;
        }
        producer
            .commit_transaction(self.options.kafka_timeout)
            .map_err(|error| self.abort("commit the transaction", error))?;
        self.metrics
            .commit_duration
            .observe(started.elapsed().as_secs_f64());
        self.crash_if(CrashPoint::AfterCommit(self.checkpoints_made));
        self.engine.complete_checkpoint(id).map_err(|error| {
            Stop::Invalid(error.context(format!("failed to complete checkpoint {id}")))
        })?;
        self.metrics.checkpoints.inc();
        self.next_checkpoint_id = id + 1;
        self.read_since_commit = false;
        self.sent_at_commit = Some(self.sink.sent());
        self.skipped_checkpoints = 0;
        self.results_await_commit = false;
        self.sink.producer().begin_transaction().map_err(|error| {
            kafka_stop("begin a transaction", error, ordinal, &transactional_id)
        })?;
        if self.exchange && id.is_multiple_of(10) {
            self.purge_repartition(&record);
        }
        let lag = wall_clock_millis().saturating_sub(self.engine.watermark());
        self.metrics.watermark_lag.set(lag.max(0));
        self.metrics
            .producer_queue
            .set(i64::from(self.sink.in_flight()));
        Ok(record)
    }

    fn crash_if(&self, point: CrashPoint) {
        if self.options.crash_point == Some(point) {
            tracing::error!(?point, "crashing on purpose (SLUICE_TEST_CRASH)");
            std::process::abort();
        }
    }

    /// A transaction step failed: fenced, or abort and start over.
    fn abort(&self, action: &str, error: KafkaError) -> Stop {
        if is_fenced(&error) {
            return kafka_stop(action, error, self.options.ordinal, &self.transactional_id);
        }
        self.metrics.aborted_transactions.inc();
        if let Err(abort_error) = self
            .sink
            .producer()
            .abort_transaction(self.options.kafka_timeout)
        {
            tracing::warn!(%abort_error, "failed to abort the transaction; a new instance will");
        }
        restart(format!("failed to {action}: {error}"))
    }

    /// Deletes repartition records below the committed offsets (as Kafka Streams purges
    /// its repartition topics): the topic keeps only what is in flight. Partitions this
    /// run already purged up to their committed offset are not asked again (in process
    /// the offsets move at most past a last transaction marker, then stay).
    fn purge_repartition(&mut self, record: &CheckpointRecord) {
        let purge = offsets_to_purge(&record.channels, &self.purged);
        if purge.is_empty() {
            return;
        }
        let mut offsets = TopicPartitionList::new();
        for (partition, offset) in &purge {
            let _ = offsets.add_partition_offset(
                &self.names.repartition_topic,
                *partition,
                Offset::Offset(*offset),
            );
        }
        let options = AdminOptions::new().operation_timeout(Some(self.options.kafka_timeout));
        match futures_lite_block_on(self.admin.delete_records(&offsets, &options)) {
            Ok(deleted) => {
                // A partition's own error (its leader moving, say) leaves it to be
                // asked again at the next purge.
                let done: BTreeSet<i32> = deleted
                    .elements()
                    .iter()
                    .filter(|partition| partition.error().is_ok())
                    .map(|partition| partition.partition())
                    .collect();
                self.purged.extend(
                    purge
                        .into_iter()
                        .filter(|(partition, _)| done.contains(partition)),
                );
            }
            Err(error) => {
                tracing::warn!(%error, "failed to purge consumed repartition records; retrying at a later checkpoint");
            }
        }
    }

    /// Whether every partition this worker reads was read up to the end librdkafka's
    /// statistics last reported ([`read_to_reported_ends`]). A partition's next offset is
    /// the furthest of the engine's, the consumer's position (past the transaction
    /// markers it read over, which the engine's offsets pass only at a checkpoint,
    /// [`Self::pass_skipped_records`]; unknown until the consumer returned a record of
    /// the partition) and the fetcher's in the same statistics (known from the first
    /// fetch, so a partition with nothing to read since the start, or whose records
    /// retention deleted, is not behind for good). Asked only with the consumer's queue
    /// empty, so what the fetcher had fetched was handed over.
    fn read_to_reported_ends(&self) -> bool {
        self.read_so_far().is_some_and(|read| {
            read_to_reported_ends(read.iter().map(|partition| (partition.next, partition.end)))
        })
    }

    /// How far each partition the consumer is assigned was read: the furthest of the
    /// engine's next offset, the consumer's position (past transaction markers and
    /// aborted records) and the fetcher's position in librdkafka's statistics, with the
    /// end those last reported. `None` when the consumer cannot say.
    fn read_so_far(&self) -> Option<Vec<ReadSoFar>> {
        let (Ok(positions), Ok(ends)) =
            (self.consumer.position(), self.consumer.context().0.lock())
        else {
            return None;
        };
        let next_offsets = self.engine.next_offsets();
        let channel_offsets = self.engine.channel_offsets();
        let read = positions
            .elements()
            .iter()
            .map(|element| {
                let (topic, partition) = (element.topic(), element.partition());
                let engine_next = if self.exchange && topic == self.names.repartition_topic {
                    channel_offsets.get(&partition).copied()
                } else {
                    self.positions
                        .get(topic)
                        .and_then(|partitions| partitions.get(&partition))
                        .and_then(|(id, _, _)| next_offsets.get(id).copied())
                };
                let position = match element.offset() {
                    Offset::Offset(position) => Some(position),
                    _ => None,
                };
                let reported = ends.get(&(topic.to_string(), partition)).copied();
                let fetched = reported.and_then(|reported| reported.fetch_position);
                ReadSoFar {
                    topic: topic.to_string(),
                    partition,
                    next: position.max(engine_next).max(fetched).unwrap_or_default(),
                    end: reported.map(|reported| reported.end),
                }
            })
            .collect();
        Some(read)
    }

    /// Updates the per-partition position, end offset and lag.
    fn report_lag(&self) {
        let positions = self.engine.next_offsets();
        for (id, position, _) in self.positions.values().flat_map(HashMap::values) {
            let Position::Kafka {
                topic, partition, ..
            } = position
            else {
                continue;
            };
            let next = positions.get(id).copied().unwrap_or_default();
            self.record_lag(topic, *partition, next);
        }
        for (channel, next) in self.engine.channel_offsets() {
            self.record_lag(&self.names.repartition_topic, channel, next);
        }
    }

    fn record_lag(&self, topic: &str, partition: i32, next: i64) {
        let labels = PartitionLabels {
            topic: topic.to_string(),
            partition,
        };
        self.metrics
            .consumer_position
            .get_or_create(&labels)
            .set(next);
        let end = self.consumer.context().0.lock().ok().and_then(|ends| {
            ends.get(&(topic.to_string(), partition))
                .map(|reported| reported.end)
        });
        if let Some(end) = end {
            self.metrics.end_offset.get_or_create(&labels).set(end);
            self.metrics
                .consumer_lag
                .get_or_create(&labels)
                .set((end - next).max(0));
        }
    }
}

fn wall_clock_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            Millis::try_from(since.as_millis()).unwrap_or(Millis::MAX)
        })
}

/// After a savepoint restore: the repartition records the savepoint's offsets point at
/// must still be there (they are purged once committed; restoring a savepoint older than
/// the purge would skip events).
fn check_repartition_retained(
    names: &JobNames,
    channel_starts: &BTreeMap<i32, i64>,
    extents: &BTreeMap<i32, (i64, i64)>,
) -> Result<(), Stop> {
    for (channel, start) in channel_starts {
        if let Some((first, _)) = extents.get(channel)
            && first > start
        {
            return Err(Stop::Invalid(anyhow::anyhow!(
                "failed to restore the savepoint: it continues {}/{channel} from offset {start}, but records up to {first} were purged since it was taken (the job ran on after it); restore a newer savepoint",
                names.repartition_topic
            )));
        }
    }
    Ok(())
}

/// The first and last stable offsets of repartition partitions `channels` of `topic`
/// (two requests for all of them; `read_committed`, so the end is the last stable
/// offset). Asked again for up to `timeout`: a topic just created has no leaders for a
/// moment.
fn channel_extents(
    consumer: &WorkerConsumer,
    topic: &str,
    channels: &[i32],
    timeout: Duration,
) -> anyhow::Result<BTreeMap<i32, (i64, i64)>> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        match ask_channel_extents(consumer, topic, channels, left) {
            Err(error) if Instant::now() < deadline => {
                tracing::debug!(error = format!("{error:#}"), "asking again");
                std::thread::sleep(Duration::from_millis(200));
            }
            answer => return answer,
        }
    }
}

fn ask_channel_extents(
    consumer: &WorkerConsumer,
    topic: &str,
    channels: &[i32],
    timeout: Duration,
) -> anyhow::Result<BTreeMap<i32, (i64, i64)>> {
    let ask = |at: Offset, what: &str| -> anyhow::Result<BTreeMap<i32, i64>> {
        let mut list = TopicPartitionList::new();
        for channel in channels {
            list.add_partition_offset(topic, *channel, at)
                .with_context(|| {
                    format!("failed to ask for the {what} offset of {topic}/{channel}")
                })?;
        }
        let found = consumer
            .offsets_for_times(list, timeout)
            .with_context(|| format!("failed to read the {what} offsets of {topic}"))?;
        found
            .elements()
            .iter()
            .map(|element| {
                element.error().with_context(|| {
                    format!("failed to read the {what} offset of {topic}/{}", element.partition())
                })?;
                match element.offset() {
                    Offset::Offset(offset) => Ok((element.partition(), offset)),
                    other => anyhow::bail!(
                        "failed to read the {what} offset of {topic}/{}: the broker answered {other:?}",
                        element.partition()
                    ),
                }
            })
            .collect()
    };
    let firsts = ask(Offset::Beginning, "first")?;
    let ends = ask(Offset::End, "last stable")?;
    channels
        .iter()
        .map(|channel| match (firsts.get(channel), ends.get(channel)) {
            (Some(first), Some(end)) => Ok((*channel, (*first, *end))),
            _ => anyhow::bail!("failed to read the offsets of {topic}/{channel}: no answer"),
        })
        .collect()
}

/// The repartition partition of a key group.
fn group_partition(group: u32) -> i32 {
    i32::try_from(group).unwrap_or(i32::MAX)
}

fn add_offset(
    offsets: &mut TopicPartitionList,
    topic: &str,
    partition: i32,
    next_offset: i64,
    metadata: &str,
) -> Result<(), Stop> {
    let mut element = offsets
        .add_partition_offset(topic, partition, Offset::Offset(next_offset))
        .map(|()| offsets.find_partition(topic, partition))
        .map_err(restart)?
        .ok_or_else(|| restart("failed to add an offset to commit"))?;
    element.set_metadata(metadata);
    Ok(())
}

/// The next offset of every partition a checkpoint records: source partitions and
/// repartition partitions (channels).
fn record_offsets(
    record: &CheckpointRecord,
    repartition_topic: &str,
) -> HashMap<(String, i32), i64> {
    let sources = record.partitions.iter().map(|partition| {
        (
            (partition.topic.clone(), partition.partition),
            partition.next_offset,
        )
    });
    let channels = record.channels.iter().map(|channel| {
        (
            (repartition_topic.to_string(), channel.partition),
            channel.next_offset,
        )
    });
    sources.chain(channels).collect()
}

/// Creates the job's repartition topic with one partition per key group, or checks the
/// one that exists.
fn ensure_repartition_topic(
    admin: &AdminClient<DefaultClientContext>,
    consumer: &WorkerConsumer,
    names: &JobNames,
    key_groups: u32,
    timeout: Duration,
) -> Result<(), Stop> {
    let topic = &names.repartition_topic;
    let partitions = i32::try_from(key_groups).unwrap_or(i32::MAX);
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1))
        // Purged explicitly once consumed: never by age, or in-flight events could go.
        .set("retention.ms", "-1")
        .set("cleanup.policy", "delete");
    let options = AdminOptions::new().operation_timeout(Some(timeout));
    match futures_lite_block_on(admin.create_topics([&new], &options)) {
        Ok(results) => {
            for result in results {
                if let Err((_, code)) = result
                    && code != RDKafkaErrorCode::TopicAlreadyExists
                {
                    return Err(restart(format!(
                        "failed to create the repartition topic {topic}: {code}; the worker needs the right to create topics, or create it with {partitions} partitions"
                    )));
                }
            }
        }
        Err(error) => {
            return Err(restart(format!(
                "failed to create the repartition topic {topic}: {error}"
            )));
        }
    }
    // Right after another worker created the topic, a broker may still answer its
    // metadata with an error or no partitions: that is "not yet", not a mismatch.
    let deadline = Instant::now() + timeout;
    let found = loop {
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|error| restart(format!("failed to read the metadata of {topic}: {error}")))?;
        let found = metadata
            .topics()
            .iter()
            .find(|found| found.name() == topic)
            .filter(|found| found.error().is_none())
            .map_or(0, |found| found.partitions().len());
        if found > 0 {
            break found;
        }
        if Instant::now() >= deadline {
            return Err(restart(format!(
                "failed to read the metadata of {topic}: the broker reports no partitions for it yet"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if found != usize::try_from(partitions).unwrap_or(usize::MAX) {
        return Err(Stop::Invalid(anyhow::anyhow!(
            "failed to use the repartition topic {topic}: it has {found} partitions, but the job has {partitions} key groups (spec.maxParallelism); it belongs to another job or was changed by hand"
        )));
    }
    Ok(())
}

/// After a rescale down, the transactions of the ordinals that are gone may still be open
/// and hold back read_committed consumers: initialising their ids aborts them at once.
fn abort_removed_ordinals(
    base: &ClientConfig,
    names: &JobNames,
    options: &RunOptions,
    timeout: Duration,
) -> Result<(), Stop> {
    let Some(previous) = options.previous_parallelism else {
        return Ok(());
    };
    for ordinal in options.parallelism..previous {
        let id = names.transactional_id(ordinal);
        let producer: BaseProducer = base
            .clone()
            .set("transactional.id", &id)
            .create()
            .map_err(|error| restart(format!("failed to create a producer for {id}: {error}")))?;
        producer.init_transactions(timeout).map_err(|error| {
            restart(format!(
                "failed to abort the transactions of removed worker {ordinal} ({id}): {error}"
            ))
        })?;
        tracing::info!(ordinal, transactional_id = %id, "aborted what a removed worker left open");
    }
    Ok(())
}

/// Runs an admin future to completion on this thread (rdkafka's admin futures are driven
/// by its own background thread; no async runtime is needed).
fn futures_lite_block_on<F: std::future::Future>(future: F) -> F::Output {
    futures::executor::block_on(future)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_that_stopped_after_a_savepoint_stays_stopped_until_it_restores_it() {
        use RecordedStop::{Clear, Consume, StayStopped};
        let cases = [
            ("nothing recorded", None, false, None, false, Consume),
            (
                "nothing recorded, restoring",
                None,
                false,
                Some("rescale-3-1"),
                true,
                Consume,
            ),
            (
                "stopped, restarted before the roll",
                Some("upgrade-4-1"),
                false,
                None,
                false,
                StayStopped,
            ),
            (
                "stopped, restarted before the roll, with an earlier restore done",
                Some("upgrade-4-1"),
                false,
                Some("rescale-3-1"),
                false,
                StayStopped,
            ),
            (
                "rolled: restoring that savepoint",
                Some("upgrade-4-1"),
                false,
                Some("upgrade-4-1"),
                true,
                Clear,
            ),
            (
                "rolled, restored, restarted",
                Some("upgrade-4-1"),
                false,
                Some("upgrade-4-1"),
                false,
                Clear,
            ),
            (
                "a volume kept since a scale-down, restoring a newer savepoint",
                Some("rescale-5-1"),
                false,
                Some("rescale-9-1"),
                true,
                Clear,
            ),
            (
                "crashed before its part was written: the savepoint failed",
                Some("upgrade-4-1"),
                true,
                None,
                false,
                Clear,
            ),
        ];
        for (name, recorded, part_failed, restoring, restores_now, expect) in cases {
            assert_eq!(
                recorded_stop(recorded, part_failed, restoring, restores_now),
                expect,
                "{name}"
            );
        }
    }

    #[test]
    fn an_idle_worker_skips_its_periodic_checkpoints_once_it_committed() {
        let cases = [
            (
                "nothing committed yet by this instance",
                false,
                None,
                0,
                0,
                false,
            ),
            ("idle since the last commit", false, Some(7), 7, 0, true),
            ("idle, eight skipped", false, Some(7), 7, 8, true),
            (
                "idle, nine skipped: the tenth commits",
                false,
                Some(7),
                7,
                9,
                false,
            ),
            ("read a record", true, Some(7), 7, 0, false),
            (
                "wrote a record (a window fired on the clock)",
                false,
                Some(7),
                8,
                0,
                false,
            ),
            ("read and wrote", true, Some(7), 9, 3, false),
        ];
        for (name, read, sent_at_commit, sent_now, skipped, expect) in cases {
            assert_eq!(
                skips_checkpoint(read, sent_at_commit, sent_now, skipped),
                expect,
                "{name}"
            );
        }
    }

    #[test]
    fn waiting_results_checkpoint_when_caught_up_at_most_ten_times_within_an_interval() {
        let now = Instant::now() + Duration::from_secs(60);
        let ago = |millis: u64| Some(now - Duration::from_millis(millis));
        let interval = Duration::from_secs(5);
        let cases = [
            // (name, waiting, caught up, the tenth last finished, checkpoints)
            ("nothing waits", false, true, None, false),
            (
                "nothing waits, none taken for long",
                false,
                true,
                ago(60_000),
                false,
            ),
            ("results wait, fewer than ten taken", true, true, None, true),
            (
                "results wait, the tenth last an interval ago",
                true,
                true,
                ago(5_000),
                true,
            ),
            (
                "results wait, the tenth last under an interval ago",
                true,
                true,
                ago(4_999),
                false,
            ),
            (
                "results wait, the tenth last just now",
                true,
                true,
                ago(0),
                false,
            ),
            (
                "results wait while behind (catching up)",
                true,
                false,
                None,
                false,
            ),
            (
                "results wait while behind, none taken for long",
                true,
                false,
                ago(60_000),
                false,
            ),
        ];
        for (name, waiting, caught_up, tenth_last, expect) in cases {
            assert_eq!(
                checkpoints_on_firing(waiting, caught_up, tenth_last, now, interval),
                expect,
                "{name}"
            );
        }
    }

    #[test]
    fn a_worker_read_to_the_reported_ends_when_no_partition_is_behind_its_end() {
        // (name, each partition's next offset and reported end, read to the ends)
        type Case<'a> = (&'a str, &'a [(i64, Option<i64>)], bool);
        let cases: [Case; 7] = [
            ("no partitions", &[], true),
            ("at the end", &[(100, Some(100))], true),
            ("past a stale end", &[(150, Some(100))], true),
            ("one record short", &[(99, Some(100))], false),
            ("no end reported yet", &[(0, None)], false),
            (
                "one partition of three behind",
                &[(100, Some(100)), (5, Some(5_000_000)), (7, Some(7))],
                false,
            ),
            (
                "one partition of two with no end yet",
                &[(100, Some(100)), (7, None)],
                false,
            ),
        ];
        for (name, partitions, expect) in cases {
            assert_eq!(
                read_to_reported_ends(partitions.iter().copied()),
                expect,
                "{name}"
            );
        }
    }

    #[test]
    fn only_partitions_committed_past_where_this_run_purged_are_purged() {
        // (partition, offset): committed in the checkpoint, purged by this run so far,
        // and to purge now.
        type Offsets = &'static [(i32, i64)];
        let cases: [(&str, Offsets, Offsets, Offsets); 5] = [
            ("first purge", &[(0, 5), (1, 0)], &[], &[(0, 5), (1, 0)]),
            (
                "nothing moved (in process)",
                &[(0, 5), (1, 0)],
                &[(0, 5), (1, 0)],
                &[],
            ),
            ("one moved", &[(0, 9), (1, 0)], &[(0, 5), (1, 0)], &[(0, 9)]),
            ("one never purged", &[(0, 5), (1, 3)], &[(0, 5)], &[(1, 3)]),
            ("no partitions", &[], &[(0, 5)], &[]),
        ];
        for (name, committed, purged, expected) in cases {
            let channels: Vec<ChannelCheckpoint> = committed
                .iter()
                .map(|(partition, next_offset)| ChannelCheckpoint {
                    partition: *partition,
                    next_offset: *next_offset,
                    clocks: Vec::new(),
                })
                .collect();
            let purged = purged.iter().copied().collect();
            assert_eq!(offsets_to_purge(&channels, &purged), expected, "{name}");
        }
    }

    #[test]
    fn each_hop_has_its_own_series() {
        let hops = [
            Hop::Topic,
            Hop::Draining {
                ends: BTreeMap::new(),
                started: Instant::now(),
            },
            Hop::InProcess,
        ];
        let labels: Vec<&str> = hops.iter().map(Hop::label).collect();
        assert_eq!(labels, crate::metrics::HOPS);
    }

    #[test]
    fn a_worker_owning_every_key_group_goes_in_process_once_nothing_is_left_in_the_topic() {
        // (name, next offset per partition, (first, last stable) per partition, the ends
        // to drain: none means in process)
        type Case<'a> = (
            &'a str,
            &'a [(i32, i64)],
            &'a [(i32, (i64, i64))],
            &'a [(i32, i64)],
        );
        let cases: [Case; 10] = [
            ("no partitions", &[], &[], &[]),
            (
                "read to the end",
                &[(0, 40), (1, 7)],
                &[(0, (0, 40)), (1, (7, 7))],
                &[],
            ),
            ("empty, never read", &[], &[(0, (0, 0)), (1, (12, 12))], &[]),
            ("read past a stale end", &[(0, 41)], &[(0, (0, 40))], &[]),
            (
                "one record left",
                &[(0, 39), (1, 7)],
                &[(0, (0, 40)), (1, (7, 7))],
                &[(0, 40)],
            ),
            (
                "never read, records retained",
                &[],
                &[(0, (3, 9))],
                &[(0, 9)],
            ),
            ("never read, all purged", &[], &[(0, (9, 9))], &[]),
            (
                "records below the end deleted",
                &[(0, 4)],
                &[(0, (9, 9))],
                &[],
            ),
            (
                "some deleted, some left",
                &[(0, 4)],
                &[(0, (6, 9))],
                &[(0, 9)],
            ),
            (
                "two partitions with records left",
                &[(0, 1), (1, 2), (2, 5)],
                &[(0, (0, 4)), (1, (0, 2)), (2, (0, 8))],
                &[(0, 4), (2, 8)],
            ),
        ];
        let now = Instant::now();
        for (name, starts, extents, ends) in cases {
            let starts: BTreeMap<i32, i64> = starts.iter().copied().collect();
            let extents: BTreeMap<i32, (i64, i64)> = extents.iter().copied().collect();
            let expect = if ends.is_empty() {
                Hop::InProcess
            } else {
                Hop::Draining {
                    ends: ends.iter().copied().collect(),
                    started: now,
                }
            };
            assert_eq!(hop_at_start(&starts, &extents, now), expect, "{name}");
        }
    }

    #[test]
    fn a_savepoint_whose_repartition_records_were_purged_is_refused() {
        let names = JobNames::new("ns", "job");
        let extents: BTreeMap<i32, (i64, i64)> = [(0, (10, 40)), (1, (0, 0))].into();
        // (name, where the savepoint continues each partition, refused)
        type Case<'a> = (&'a str, &'a [(i32, i64)], bool);
        let cases: [Case; 5] = [
            ("at the first retained record", &[(0, 10), (1, 0)], false),
            ("past it", &[(0, 40)], false),
            ("one record purged", &[(0, 9)], true),
            ("a partition not asked about", &[(7, 0)], false),
            ("nothing to continue", &[], false),
        ];
        for (name, starts, refused) in cases {
            let starts: BTreeMap<i32, i64> = starts.iter().copied().collect();
            let outcome = check_repartition_retained(&names, &starts, &extents);
            assert_eq!(outcome.is_err(), refused, "{name}");
            if let Err(Stop::Invalid(error)) = outcome {
                assert!(
                    error.to_string().contains("restore a newer savepoint"),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn the_repartition_topic_is_drained_when_every_partition_is_read_to_its_end() {
        // (name, ends, how far each partition was read, drained)
        type Case<'a> = (&'a str, &'a [(i32, i64)], &'a [(i32, i64)], bool);
        let cases: [Case; 6] = [
            ("nothing to drain", &[], &[(0, 3)], true),
            ("at the end", &[(0, 40)], &[(0, 40)], true),
            ("past it (a marker passed)", &[(0, 40)], &[(0, 41)], true),
            ("one short", &[(0, 40)], &[(0, 39)], false),
            ("not read at all", &[(0, 40)], &[], false),
            (
                "one of two behind",
                &[(0, 40), (3, 9)],
                &[(0, 40), (3, 8)],
                false,
            ),
        ];
        for (name, ends, read, expect) in cases {
            let ends: BTreeMap<i32, i64> = ends.iter().copied().collect();
            let read: BTreeMap<i32, i64> = read.iter().copied().collect();
            assert_eq!(drained(&ends, &read), expect, "{name}");
        }
    }

    #[test]
    fn the_tenth_last_firing_checkpoint_is_known_from_the_tenth_on() {
        let start = Instant::now();
        let at = |index: u64| start + Duration::from_millis(100 * index);
        let mut firing_checkpoints = FiringCheckpoints::default();
        for index in 0..9 {
            firing_checkpoints.finished(at(index));
            assert_eq!(firing_checkpoints.tenth_last(), None, "after {}", index + 1);
        }
        firing_checkpoints.finished(at(9));
        assert_eq!(firing_checkpoints.tenth_last(), Some(at(0)));
        firing_checkpoints.finished(at(10));
        assert_eq!(firing_checkpoints.tenth_last(), Some(at(1)));
        // Ten in a second: the next waits until an interval after the tenth last.
        let interval = Duration::from_secs(5);
        assert!(!checkpoints_on_firing(
            true,
            true,
            firing_checkpoints.tenth_last(),
            at(11),
            interval
        ));
        assert!(checkpoints_on_firing(
            true,
            true,
            firing_checkpoints.tenth_last(),
            at(1) + interval,
            interval
        ));
    }

    #[test]
    fn the_stop_record_survives_a_restart_and_goes_when_cleared() {
        let directory = tempfile::tempdir().unwrap();
        let path = stop_record_path(directory.path());
        clear_stop_record(directory.path()).unwrap();
        write_stop_record(directory.path(), "upgrade-4-1").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "upgrade-4-1");
        write_stop_record(directory.path(), "upgrade-4-2").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "upgrade-4-2");
        clear_stop_record(directory.path()).unwrap();
        assert!(!path.exists());
    }

    fn restart_stop() -> Stop {
        restart("failed to produce to job.repartition: Local: Fatal error")
    }

    #[test]
    fn a_failed_step_is_a_fencing_only_when_the_producer_says_so() {
        let fenced = |code| Some((code, "fenced by a newer instance".to_string()));
        type FatalError = Option<(RDKafkaErrorCode, String)>;
        let cases: [(&str, Stop, FatalError, bool); 6] = [
            ("no fatal error: start over", restart_stop(), None, false),
            (
                "fenced producer (librdkafka's own code)",
                restart_stop(),
                fenced(RDKafkaErrorCode::Fenced),
                true,
            ),
            (
                "fenced producer (the broker's code)",
                restart_stop(),
                fenced(RDKafkaErrorCode::ProducerFenced),
                true,
            ),
            (
                "old epoch",
                restart_stop(),
                fenced(RDKafkaErrorCode::InvalidProducerEpoch),
                true,
            ),
            (
                "another fatal error: start over with a new producer",
                restart_stop(),
                fenced(RDKafkaErrorCode::OutOfOrderSequenceNumber),
                false,
            ),
            (
                "a requested stop stays requested",
                Stop::Requested,
                fenced(RDKafkaErrorCode::Fenced),
                false,
            ),
        ];
        for (case, stop, fatal_error, expect_fenced) in cases {
            let decided = fenced_or(stop, fatal_error, 2, "ns.job.2");
            match decided {
                Stop::Fenced(reason) => {
                    assert!(expect_fenced, "{case}: fenced");
                    assert!(
                        reason.contains("ordinal 2") && reason.contains("ns.job.2"),
                        "{case}: {reason}"
                    );
                    assert!(reason.contains("failed to produce"), "{case}: {reason}");
                }
                other => assert!(!expect_fenced, "{case}: {other:?}"),
            }
        }
    }

    /// What a fenced transactional producer does in librdkafka, against its in-process
    /// mock broker: once a newer producer took the transactional id, the older one's sends
    /// fail with a generic code, so only the producer's fatal error says it was fenced.
    #[test]
    fn after_fencing_a_send_fails_without_saying_fenced() {
        let cluster = rdkafka::mocking::MockCluster::new(1).expect("a mock broker");
        cluster
            .create_topic("topic", 1, 1)
            .expect("a topic on the mock broker");
        let producer = |id: &str| -> BaseProducer {
            let producer: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", cluster.bootstrap_servers())
                .set("transactional.id", id)
                .create()
                .expect("a producer");
            producer
                .init_transactions(Duration::from_secs(10))
                .expect("init_transactions");
            producer
        };
        let older = producer("sluice-test.0");
        older.begin_transaction().expect("begin_transaction");
        // What the broker answers a producer whose epoch a newer one bumped (as in the
        // failure this test was written for: "Failed to add partition to transaction:
        // Producer attempted an operation with an old epoch").
        cluster.request_errors(
            rdkafka::types::RDKafkaApiKey::AddPartitionsToTxn,
            &[rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH; 5],
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let error = loop {
            let record = rdkafka::producer::BaseRecord::<(), [u8]>::to("topic").payload(b"x");
            if let Err((error, _)) = older.send(record) {
                break error;
            }
            older.poll(Duration::from_millis(10));
            assert!(
                Instant::now() < deadline,
                "the older producer was never fenced"
            );
        };
        assert!(!is_fenced(&error), "the send says {error}, not fenced");
        let stop = fenced_or(
            restart(format!("failed to produce: {error}")),
            older.client().fatal_error(),
            0,
            "sluice-test.0",
        );
        assert!(matches!(stop, Stop::Fenced(_)), "{stop:?}");
    }
}
