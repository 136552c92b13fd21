//! The engine: drives records from a source through the compiled pipeline, the watermark
//! and the window operator to a sink. It never reads a clock: the caller passes the
//! processing time (for idle partitions), so runs are deterministic.
//!
//! Per record, in two halves:
//! 1. **route** ([`Engine::route`]): decode → event time (the partition's watermark
//!    moves) → stages before the key → the key → stages before the window → aggregate
//!    inputs. An unkeyed or unwindowed pipeline's event is an output now; a windowed one
//!    becomes a [`KeyedEvent`] for the owner of its key group.
//! 2. **window** ([`Engine::add_keyed`]): the window operator (late events leave here);
//!    when the watermark advances windows fire → stages after the window → sink key → sink.
//!
//! In local mode, and in Kafka mode when the source is partitioned by key, both halves run
//! here one after the other ([`Engine::process`]). Any failure on an event sends it to the
//! dead-letter output; only sink and state-store failures stop the engine.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;

use serde_json::{Map, Value};
use sluice_crds::CheckedJob;

use crate::dead_letter::{DeadLetterReason, Failure};
use crate::exchange::{ChannelWatermarks, ExchangeRecord, SourceClock, SourcePartition};
use crate::io::{OutputRecord, Position, RejectReason, Rejected, Sink, SourceRecord};
use crate::metrics::Metrics;
use crate::pipeline::aggregate::Number128;
use crate::pipeline::window_operator::{Admission, WindowOperator, WindowResult};
use crate::pipeline::{
    CompiledPipeline, Event, StageOutcome, aggregate_inputs, compile, evaluate_key, run_stages,
};
use crate::state::format::{
    self, ChannelCheckpoint, CheckpointRecord, ClockCheckpoint, PartitionCheckpoint, StateMeta,
    StoredAggregate,
};
use crate::state::key_group::KeyGroup;
use crate::state::store::Entries;
use crate::state::{
    CheckpointTimers, Column, KeyedWindowState, StateBatch, StateStore, key_group, meta,
};
use crate::time::Millis;
use crate::time::event_time::{EventTimeError, format_rfc3339};
use crate::time::watermark::{NO_WATERMARK, PartitionId, WatermarkTracker};
use crate::time::window::WindowRange;

/// Settings of an engine that are not in the StreamJob.
#[derive(Clone, Copy, Debug)]
pub struct EngineOptions {
    /// About how many windows the hot-state cache holds before it evicts to the store.
    pub state_cache_entries: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            state_cache_entries: 500_000,
        }
    }
}

/// An event on its way to the window of its key: what the window operator needs, and
/// nothing of the event's fields.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyedEvent {
    /// The key's canonical bytes (its compact JSON).
    pub key: Vec<u8>,
    /// The key group its state lives in: the key's, or in `ByKey` mode its partition's.
    pub key_group: KeyGroup,
    /// The event time.
    pub time: Millis,
    /// One input per aggregate output (`None` for count).
    pub inputs: Vec<Option<Number128>>,
}

/// What routing did with a record.
#[derive(Debug, PartialEq)]
pub enum Routed {
    /// Written to the sink (a pipeline without a window), dropped by a filter, or
    /// dead-lettered: nothing more to do.
    Done,
    /// It goes to the window of its key.
    Keyed(KeyedEvent),
}

/// Where an engine keeps state: the window operator's keyed state, or a bare store for a
/// pipeline without a window (whose checkpoints hold only positions).
enum EngineState {
    Windowed(Box<WindowOperator>),
    Stateless(Box<dyn StateStore>),
}

/// Where the window operator's watermark comes from.
enum Distribution {
    /// This engine routes and windows the same events (local mode, `ByKey`): the least
    /// clock of its source partitions.
    Direct,
    /// Keyed events arrive through the repartition topic (`Any`): the watermark records
    /// of its channels, and the next offset of each repartition partition read.
    Exchange {
        channels: ChannelWatermarks,
        next_offsets: BTreeMap<i32, i64>,
    },
}

/// A running pipeline.
pub struct Engine {
    pipeline: CompiledPipeline,
    /// The clocks of the source partitions this engine reads.
    watermarks: WatermarkTracker,
    distribution: Distribution,
    state: EngineState,
    /// The job's source topics, to name partitions in checkpoints.
    topics: Vec<String>,
    /// The offset of the next record of each partition read so far.
    next_offsets: BTreeMap<PartitionId, i64>,
    /// In `ByKey` mode, the key group of each source partition's events.
    partition_key_groups: Option<HashMap<PartitionId, KeyGroup>>,
    metrics: Metrics,
    results: Vec<WindowResult>,
    output_names: Vec<String>,
    /// Per output, `,"<name>":` (encoded once, written in every result).
    output_prefixes: Vec<Vec<u8>>,
    /// The last window formatted for results, and its formatted bounds.
    window_bounds: (Option<WindowRange>, String),
    /// The result fields the sink key reads (`None`: all).
    sink_key_fields: Option<Vec<String>>,
}

impl Engine {
    /// Compiles `job` and starts it with empty state on `store`, which must hold no
    /// state of another job (its format is checked and recorded).
    pub fn new(
        job: &CheckedJob,
        mut store: Box<dyn StateStore>,
        options: EngineOptions,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let pipeline = compile(job)?;
        meta::open(
            store.as_mut(),
            &state_meta(&pipeline),
            job.spec.allow_non_restored_state,
        )?;
        Self::build(job, pipeline, store, options, metrics)
    }

    /// Compiles `job` and returns to the latest complete checkpoint in `store` at
    /// processing time `now`: window state, timers, the partitions' positions and clocks,
    /// the watermark. Without a complete checkpoint, starts with empty state. Returns the
    /// checkpoint restored, whose offsets say where to read from.
    pub fn restore(
        job: &CheckedJob,
        mut store: Box<dyn StateStore>,
        options: EngineOptions,
        metrics: Metrics,
        now: Millis,
    ) -> anyhow::Result<(Self, Option<CheckpointRecord>)> {
        let pipeline = compile(job)?;
        let latest = store
            .checkpoints()?
            .into_iter()
            .filter(|checkpoint| checkpoint.complete)
            .map(|checkpoint| checkpoint.id)
            .max();
        let Some(id) = latest else {
            // Whatever the live database holds was never part of a complete checkpoint.
            for column in Column::ALL {
                store.delete_range(column, &[], &[0xff; 32])?;
            }
            return Ok((Self::new(job, store, options, metrics)?, None));
        };
        store.restore_checkpoint(id)?;
        meta::open(
            store.as_mut(),
            &state_meta(&pipeline),
            job.spec.allow_non_restored_state,
        )?;
        let record: CheckpointRecord = match store.get(Column::Meta, format::META_CHECKPOINT)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|error| {
                anyhow::anyhow!("failed to read the record of checkpoint {id}: {error}")
            })?,
            None => anyhow::bail!("failed to restore checkpoint {id}: it has no checkpoint record"),
        };
        let mut engine = Self::build(job, pipeline, store, options, metrics)?;
        if let EngineState::Windowed(windows) = &mut engine.state {
            windows.state().rebuild_from_store(Some(record.id))?;
        }
        engine.resume_from(&record, now)?;
        engine.update_open_windows();
        Ok((engine, Some(record)))
    }

    /// Takes the partitions' positions and clocks and the watermark of `record` (a
    /// checkpoint of this job, or of the worker whose key groups this one took over), at
    /// processing time `now`. Partitions of topics the job no longer reads are forgotten.
    pub fn resume_from(&mut self, record: &CheckpointRecord, now: Millis) -> anyhow::Result<()> {
        if let EngineState::Windowed(windows) = &mut self.state {
            windows.state().resume_at(record.watermark)?;
        }
        let mut clocks = Vec::new();
        self.next_offsets.clear();
        for partition in &record.partitions {
            let Some(topic) = self.topic_index(&partition.topic) else {
                continue;
            };
            let id = PartitionId::new(topic, partition.partition);
            clocks.push((id, partition.max_event_time));
            self.next_offsets.insert(id, partition.next_offset);
        }
        if let Distribution::Exchange {
            channels,
            next_offsets,
        } = &mut self.distribution
        {
            let mut restored = BTreeMap::new();
            next_offsets.clear();
            for channel in &record.channels {
                next_offsets.insert(channel.partition, channel.next_offset);
                restored.insert(
                    channel.partition,
                    channel
                        .clocks
                        .iter()
                        .map(|clock| {
                            (
                                SourcePartition {
                                    topic: clock.topic.clone(),
                                    partition: clock.partition,
                                },
                                SourceClock {
                                    max_event_time: clock.max_event_time,
                                    idle: clock.idle,
                                },
                            )
                        })
                        .collect(),
                );
            }
            channels.restore(record.watermark, restored);
            // The source half's clocks keep their own greatest times; its watermark is
            // not the window operator's.
            self.watermarks.restore(NO_WATERMARK, clocks, now);
        } else {
            self.watermarks.restore(record.watermark, clocks, now);
        }
        self.metrics.watermark.set(record.watermark);
        Ok(())
    }

    fn build(
        job: &CheckedJob,
        pipeline: CompiledPipeline,
        store: Box<dyn StateStore>,
        options: EngineOptions,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let state = match pipeline.window() {
            Some(window) => EngineState::Windowed(Box::new(WindowOperator::new(
                window.assigner,
                window.allowed_lateness,
                window
                    .outputs
                    .iter()
                    .map(|output| output.function)
                    .collect(),
                KeyedWindowState::new(store, options.state_cache_entries),
            ))),
            None => EngineState::Stateless(store),
        };
        let output_names: Vec<String> = pipeline
            .window()
            .map(|window| {
                window
                    .outputs
                    .iter()
                    .map(|output| output.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        tracing::debug!(pipeline = ?pipeline, "compiled the pipeline");
        Ok(Self {
            watermarks: WatermarkTracker::new(pipeline.max_out_of_orderness, pipeline.idle_timeout),
            pipeline,
            distribution: Distribution::Direct,
            state,
            topics: job.source.topics.clone(),
            next_offsets: BTreeMap::new(),
            partition_key_groups: None,
            metrics,
            results: Vec::new(),
            output_prefixes: output_names
                .iter()
                .map(|name| {
                    let mut prefix = vec![b','];
                    let _ = serde_json::to_writer(&mut prefix, name);
                    prefix.push(b':');
                    prefix
                })
                .collect(),
            output_names,
            window_bounds: (None, String::new()),
            sink_key_fields: job
                .sink
                .key
                .as_ref()
                .and_then(|expression| expression.event_fields.as_ref())
                .map(|fields| fields.iter().cloned().collect()),
        })
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn windows(&mut self) -> Option<&mut WindowOperator> {
        match &mut self.state {
            EngineState::Windowed(windows) => Some(windows),
            EngineState::Stateless(_) => None,
        }
    }

    fn store(&mut self) -> &mut dyn StateStore {
        match &mut self.state {
            EngineState::Windowed(windows) => windows.state().store(),
            EngineState::Stateless(store) => store.as_mut(),
        }
    }

    fn topic_index(&self, topic: &str) -> Option<u16> {
        self.topics
            .iter()
            .position(|known| known == topic)
            .and_then(|index| u16::try_from(index).ok())
    }

    /// Where each partition is read from, unless the engine knows already (so a
    /// checkpoint records partitions assigned but not read yet).
    pub fn seed_offsets(&mut self, offsets: &[(PartitionId, i64)]) {
        for (partition, offset) in offsets {
            self.next_offsets.entry(*partition).or_insert(*offset);
        }
    }

    /// `ByKey` mode: the key group of each source partition, which its events' state
    /// lives in (so it moves with the partition on a rescale).
    pub fn group_by_partition(&mut self, groups: HashMap<PartitionId, u32>) {
        self.partition_key_groups = Some(
            groups
                .into_iter()
                .map(|(partition, group)| {
                    (
                        partition,
                        KeyGroup::try_from(group).unwrap_or(KeyGroup::MAX),
                    )
                })
                .collect(),
        );
    }

    /// Moves the next offset of partition `partition` of source topic `source_topic`, or
    /// of the repartition topic (`None`), forward to `position`, the consumer's position:
    /// records the consumer passed without handing them over (a transaction's commit or
    /// abort marker, aborted records) must not hold the committed offset back, or a job
    /// caught up on a transactional topic shows lag for good. Only a partition already
    /// read or seeded moves, never back. Returns whether it moved.
    pub fn pass_skipped_records(
        &mut self,
        source_topic: Option<&str>,
        partition: i32,
        position: i64,
    ) -> bool {
        let next = match source_topic {
            Some(topic) => match self.topic_index(topic) {
                Some(index) => self
                    .next_offsets
                    .get_mut(&PartitionId::new(index, partition)),
                None => None,
            },
            None => match &mut self.distribution {
                Distribution::Exchange { next_offsets, .. } => next_offsets.get_mut(&partition),
                Distribution::Direct => None,
            },
        };
        match next {
            Some(next) if position > *next => {
                *next = position;
                true
            }
            _ => false,
        }
    }

    /// The offset of the next record to read of each partition read so far.
    pub fn next_offsets(&self) -> &BTreeMap<PartitionId, i64> {
        &self.next_offsets
    }

    fn update_open_windows(&mut self) {
        let open = self.open_windows();
        self.metrics
            .open_windows
            .set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    /// The window operator's watermark.
    pub fn watermark(&self) -> Millis {
        match &self.distribution {
            Distribution::Direct => self.watermarks.current(),
            Distribution::Exchange { channels, .. } => channels.current(),
        }
    }

    /// The watermark of the source partitions this engine reads: in `Direct` mode the
    /// window operator's; in `Exchange` mode the one its own partitions' clocks give, as
    /// the keyed side would take it were they the only ones (it takes the least of every
    /// source partition's).
    pub fn source_watermark(&self) -> Millis {
        self.watermarks.current()
    }

    /// Whether a window of the job ends in `(before, after]`
    /// ([`WindowAssigner::ends_between`](crate::time::window::WindowAssigner::ends_between));
    /// false for a job without a window.
    pub fn window_ends_between(&self, before: Millis, after: Millis) -> bool {
        self.pipeline
            .keyed
            .as_ref()
            .and_then(|keyed| keyed.window.as_ref())
            .is_some_and(|window| window.assigner.ends_between(before, after))
    }

    /// Keyed events will arrive through the repartition topic ([`Self::receive`]), and
    /// the window operator's watermark from its watermark records; `sources` are every
    /// source partition of the job, each of which holds that watermark back until heard
    /// of. Call before restoring positions.
    pub fn use_exchange(&mut self, sources: Vec<SourcePartition>) {
        self.distribution = Distribution::Exchange {
            channels: ChannelWatermarks::new(self.pipeline.max_out_of_orderness, sources),
            next_offsets: BTreeMap::new(),
        };
    }

    /// The repartition partitions this engine reads, from `offsets` (their next offsets,
    /// unless a checkpoint already set them).
    pub fn assign_channels(&mut self, offsets: &BTreeMap<i32, i64>) {
        if let Distribution::Exchange {
            channels,
            next_offsets,
        } = &mut self.distribution
        {
            channels.assign(offsets.keys().copied());
            for (channel, offset) in offsets {
                next_offsets.entry(*channel).or_insert(*offset);
            }
        }
    }

    /// The repartition partitions this engine reads: each holds the watermark back until
    /// its watermark records say how far every source partition is.
    pub fn read_channels(&mut self, partitions: &[i32]) {
        if let Distribution::Exchange { channels, .. } = &mut self.distribution {
            channels.assign(partitions.iter().copied());
        }
    }

    /// The next offset of each repartition partition read (empty in `Direct` mode).
    pub fn channel_offsets(&self) -> BTreeMap<i32, i64> {
        match &self.distribution {
            Distribution::Direct => BTreeMap::new(),
            Distribution::Exchange { next_offsets, .. } => next_offsets.clone(),
        }
    }

    /// The clocks of the source partitions this engine reads at processing time `now`,
    /// for the watermark records it writes to every repartition partition.
    pub fn source_clocks(&self, now: Millis) -> Vec<(SourcePartition, SourceClock)> {
        self.watermarks
            .clocks_at(now)
            .filter_map(|(partition, max_event_time, idle)| {
                Some((
                    SourcePartition {
                        topic: self.topics.get(usize::from(partition.topic))?.clone(),
                        partition: partition.partition,
                    },
                    SourceClock {
                        max_event_time,
                        idle,
                    },
                ))
            })
            .collect()
    }

    /// Takes in a record of repartition partition `channel` at `offset`: keyed events go
    /// to their windows; a watermark record may fire windows.
    pub fn receive(
        &mut self,
        channel: i32,
        offset: i64,
        record: ExchangeRecord,
        repartition_topic: &str,
        sink: &mut dyn Sink,
    ) -> anyhow::Result<()> {
        let Distribution::Exchange {
            channels,
            next_offsets,
        } = &mut self.distribution
        else {
            anyhow::bail!(
                "failed to take in a repartition record: the engine reads no repartition topic"
            );
        };
        next_offsets.insert(channel, offset + 1);
        match record {
            ExchangeRecord::Events(events) => {
                // No watermark moves within a record.
                let watermark = channels.current();
                // Where an event without its origin came from: this record.
                let record_position = Position::Kafka {
                    topic: repartition_topic.to_string(),
                    partition: channel,
                    offset,
                };
                for (event, origin) in events {
                    match origin {
                        Some(origin) => {
                            let position = Position::Kafka {
                                topic: origin.source.topic,
                                partition: origin.source.partition,
                                offset: origin.offset,
                            };
                            self.add_keyed(&event, &position, &origin.original, watermark, sink)?;
                        }
                        None => self.add_keyed(&event, &record_position, &[], watermark, sink)?,
                    }
                }
                Ok(())
            }
            ExchangeRecord::Watermark(clocks) => {
                channels.observe(channel, &clocks);
                match channels.advance() {
                    Some(watermark) => self.fire(watermark, sink),
                    None => Ok(()),
                }
            }
        }
    }

    /// The in-process exchange (a worker that owns every key group, once it has read
    /// what earlier runs left in the repartition topic): a keyed event this engine routed
    /// goes to its windows at once, at the channels' watermark, as it would when read
    /// back from the repartition topic; a late one is set aside with `position` and
    /// `original`, the record it came from.
    pub fn keep_keyed(
        &mut self,
        event: &KeyedEvent,
        position: &Position,
        original: &[u8],
        sink: &mut dyn Sink,
    ) -> anyhow::Result<()> {
        let Distribution::Exchange { channels, .. } = &self.distribution else {
            anyhow::bail!(
                "failed to keep a keyed event in process: the engine reads no repartition topic"
            );
        };
        let watermark = channels.current();
        self.add_keyed(event, position, original, watermark, sink)
    }

    /// The in-process exchange: `clocks`, this engine's source clocks, reach every
    /// channel it reads at once, as its watermark records would through the repartition
    /// topic; fires what the watermark passes. The channels' clocks stay in checkpoints,
    /// so a later run that reads the topic again starts from them.
    pub fn keep_clocks(
        &mut self,
        clocks: &[(SourcePartition, SourceClock)],
        sink: &mut dyn Sink,
    ) -> anyhow::Result<()> {
        let Distribution::Exchange { channels, .. } = &mut self.distribution else {
            anyhow::bail!(
                "failed to apply source clocks in process: the engine reads no repartition topic"
            );
        };
        channels.observe_everywhere(clocks);
        match channels.advance() {
            Some(watermark) => self.fire(watermark, sink),
            None => Ok(()),
        }
    }

    /// Windows with state (0 without a window step).
    pub fn open_windows(&self) -> u64 {
        match &self.state {
            EngineState::Windowed(windows) => windows.open_windows(),
            EngineState::Stateless(_) => 0,
        }
    }

    /// Window entries in the store after a checkpoint (cache written back): for tests
    /// that state does not leak.
    pub fn count_stored_windows(&mut self) -> anyhow::Result<u64> {
        match self.windows() {
            Some(windows) => Ok(windows.state().count_stored_windows()?),
            None => Ok(0),
        }
    }

    /// Pending timers, in memory and in the store.
    pub fn count_timers(&mut self) -> anyhow::Result<u64> {
        match self.windows() {
            Some(windows) => Ok(windows.state().count_timers()?),
            None => Ok(0),
        }
    }

    /// The window state of key groups `[first, end)`, written back and read from the
    /// store: what moves to the new owner of those groups on a rescale.
    pub fn export_key_groups(&mut self, first: u32, end: u32) -> anyhow::Result<Entries> {
        match self.windows() {
            Some(windows) => Ok(windows.state().export_key_groups(first, end)?),
            None => Ok(Vec::new()),
        }
    }

    /// Takes in window state exported by [`Self::export_key_groups`] of another engine of
    /// the same job, and rebuilds the timers of everything now held.
    pub fn import_key_groups(&mut self, entries: Entries) -> anyhow::Result<()> {
        if let Some(windows) = self.windows() {
            let state = windows.state();
            state.checkpoint()?;
            state.import(entries)?;
            state.rebuild_from_store(None)?;
        }
        self.update_open_windows();
        Ok(())
    }

    /// Keeps only the window state of key groups `[first, end)` (after a rescale, the
    /// others belong to other workers).
    pub fn retain_key_groups(&mut self, first: u32, end: u32) -> anyhow::Result<()> {
        if let Some(windows) = self.windows() {
            let state = windows.state();
            state.checkpoint()?;
            state.retain_key_groups(first, end)?;
            state.rebuild_from_store(None)?;
        }
        self.update_open_windows();
        Ok(())
    }

    /// The source's partitions assigned to this engine at processing time `now` (all of
    /// them in local mode; a Kafka consumer's assignment): each holds the watermark back
    /// until it sends an event or goes idle.
    pub fn assign_partitions(&mut self, partitions: &[PartitionId], now: Millis) {
        self.watermarks.assign(partitions, now);
    }

    /// Reading the source partitions resumes at processing time `now` after a pause:
    /// their silence meanwhile does not make them idle.
    pub fn resume_reading(&mut self, now: Millis) {
        self.watermarks.resume(now);
    }

    /// Partitions moved away from this engine no longer hold its watermark back.
    pub fn revoke_partitions(
        &mut self,
        partitions: &[PartitionId],
        now: Millis,
        sink: &mut dyn Sink,
    ) -> anyhow::Result<()> {
        self.watermarks.revoke(partitions);
        self.advance(now, sink)
    }

    /// Processes one record at processing time `now`: routes it and, when it is keyed,
    /// adds it to its windows here (this engine owns every key group it sees).
    pub fn process(
        &mut self,
        record: SourceRecord<'_>,
        now: Millis,
        sink: &mut dyn Sink,
    ) -> anyhow::Result<()> {
        if let Routed::Keyed(event) = self.route(record, now, sink)? {
            let watermark = self.watermarks.current();
            self.add_keyed(&event, record.position, record.payload, watermark, sink)?;
        }
        self.advance(now, sink)
    }

    /// The first half of processing a record at processing time `now`: everything before
    /// the window. Outputs of a pipeline without a window, and dead letters, go to `sink`;
    /// the watermark of the record's partition moves but windows do not fire (call
    /// [`Self::advance`]).
    pub fn route(
        &mut self,
        record: SourceRecord<'_>,
        now: Millis,
        sink: &mut dyn Sink,
    ) -> anyhow::Result<Routed> {
        self.metrics.events_in.inc();
        self.next_offsets
            .insert(record.partition, record.position.offset() + 1);
        let decoded = decode(record.payload).and_then(|fields| {
            let time = self
                .pipeline
                .event_time
                .extract(&fields, record.payload)
                .map_err(event_time_failure)?;
            Ok((fields, time))
        });
        let (fields, time) = match decoded {
            Ok(decoded) => decoded,
            Err(failure) => {
                // The record still shows its partition is active, and processing time
                // moved: an idle partition may release the watermark.
                self.watermarks.observe(record.partition, None, now);
                self.dead_letter(&failure, Some(record.position), record.payload, sink)?;
                return Ok(Routed::Done);
            }
        };
        self.watermarks.observe(record.partition, Some(time), now);
        let mut event = Event {
            fields,
            time,
            key: None,
        };
        match self.key_and_inputs(&mut event) {
            Ok(None) => Ok(Routed::Done),
            Ok(Some(inputs)) => match (event.key, inputs) {
                (Some(key), Some(inputs)) => {
                    let key_group = match &self.partition_key_groups {
                        Some(groups) => groups
                            .get(&record.partition)
                            .copied()
                            .unwrap_or_else(|| key_group(&key, self.pipeline.key_groups)),
                        None => key_group(&key, self.pipeline.key_groups),
                    };
                    Ok(Routed::Keyed(KeyedEvent {
                        key,
                        key_group,
                        time,
                        inputs,
                    }))
                }
                (key, _) => {
                    event.key = key;
                    self.emit_event(event, sink)?;
                    Ok(Routed::Done)
                }
            },
            Err(failure) => {
                self.dead_letter(&failure, Some(record.position), record.payload, sink)?;
                Ok(Routed::Done)
            }
        }
    }

    /// Runs the stages before the window on `event`, sets its key, and evaluates its
    /// aggregate inputs. `Ok(None)`: a filter dropped it. `Ok(Some(None))`: there is no
    /// window, the event is an output.
    #[allow(clippy::type_complexity)]
    fn key_and_inputs(
        &mut self,
        event: &mut Event,
    ) -> Result<Option<Option<Vec<Option<Number128>>>>, Failure> {
        if !self.pass(event, Before::Key)? {
            return Ok(None);
        }
        let Some(keyed) = &mut self.pipeline.keyed else {
            return Ok(Some(None));
        };
        event.key = Some(evaluate_key(&mut keyed.key, event)?);
        if !self.pass(event, Before::Window)? {
            return Ok(None);
        }
        let Some(window) = self
            .pipeline
            .keyed
            .as_mut()
            .and_then(|keyed| keyed.window.as_mut())
        else {
            return Ok(Some(None));
        };
        let mut inputs = Vec::with_capacity(window.outputs.len());
        aggregate_inputs(&mut window.outputs, event, &mut inputs)?;
        Ok(Some(Some(inputs)))
    }

    /// Runs the stages before the key or before the window; `Ok(false)`: dropped.
    fn pass(&mut self, event: &mut Event, before: Before) -> Result<bool, Failure> {
        let stages = match (before, &mut self.pipeline.keyed) {
            (Before::Key, _) => &mut self.pipeline.before_key,
            (Before::Window, Some(keyed)) => &mut keyed.before_window,
            (Before::Window, None) => return Ok(true),
        };
        match run_stages(stages, event) {
            StageOutcome::Passed => Ok(true),
            StageOutcome::Dropped => {
                self.metrics.filtered_events.inc();
                Ok(false)
            }
            StageOutcome::Failed(failure) => Err(failure),
        }
    }

    /// The second half: adds a keyed event to its windows at operator watermark
    /// `watermark`, emitting updates of fired windows; a late event goes to the late
    /// output with `position` and `original`, the bytes it came as.
    pub fn add_keyed(
        &mut self,
        event: &KeyedEvent,
        position: &Position,
        original: &[u8],
        watermark: Millis,
        sink: &mut dyn Sink,
    ) -> anyhow::Result<()> {
        let EngineState::Windowed(windows) = &mut self.state else {
            anyhow::bail!("failed to add a keyed event: the pipeline has no window");
        };
        match windows.add(
            event.key_group,
            &event.key,
            event.time,
            &event.inputs,
            watermark,
            &mut self.results,
        )? {
            Admission::Accepted => self.emit_results(sink),
            Admission::Overflow {
                window,
                output,
                overflow,
            } => {
                let failure = Failure::new(
                    DeadLetterReason::AggregateOverflow,
                    format!(
                        "aggregate {}: with this event, in window [{}, {}): {overflow}; the window keeps its result without it",
                        self.output_names[output],
                        format_rfc3339(window.start),
                        format_rfc3339(window.end),
                    ),
                );
                self.dead_letter(&failure, Some(position), original, sink)
            }
            Admission::Late { window } => {
                self.metrics.late_events.inc();
                let allowed_lateness = windows.allowed_lateness();
                let detail = format!(
                    "event time {} is in window [{}, {}), whose state expired at {} (window end plus allowed lateness {}ms); watermark {}",
                    format_rfc3339(event.time),
                    format_rfc3339(window.start),
                    format_rfc3339(window.end),
                    format_rfc3339(window.end.saturating_add(allowed_lateness)),
                    allowed_lateness,
                    format_rfc3339(watermark),
                );
                sink.late(Rejected {
                    reason: RejectReason::Late,
                    detail: &detail,
                    position: Some(position),
                    original,
                })
            }
        }
    }

    /// Lets the watermark move at processing time `now` with no new record (an idle
    /// partition timing out), firing what it passes.
    pub fn advance(&mut self, now: Millis, sink: &mut dyn Sink) -> anyhow::Result<()> {
        let advanced = self.watermarks.advance(now);
        if let (Distribution::Direct, Some(watermark)) = (&self.distribution, advanced) {
            self.fire(watermark, sink)?;
        }
        Ok(())
    }

    /// The input ended: the watermark moves to the end of time and every window fires.
    pub fn finish(&mut self, sink: &mut dyn Sink) -> anyhow::Result<()> {
        let watermark = self.watermarks.end_of_input();
        self.fire(watermark, sink)?;
        sink.flush()
    }

    /// Makes checkpoint `id` (with `token`, see `commit`): writes every change of state
    /// since the last checkpoint to the store with the checkpoint record (each
    /// partition's next offset and clock, the watermark) in one batch, and cuts a
    /// restorable copy, not yet complete. The caller commits the outputs
    /// and offsets (a Kafka transaction), then calls [`Self::complete_checkpoint`].
    /// `timers` says whether the cached keys' timers are written too (a savepoint's
    /// checkpoint, which a start then takes the timers from as they are).
    pub fn checkpoint(
        &mut self,
        id: u64,
        token: &str,
        timers: CheckpointTimers,
    ) -> anyhow::Result<CheckpointRecord> {
        let clocks: BTreeMap<PartitionId, Option<Millis>> = self.watermarks.clocks().collect();
        let partitions = self
            .next_offsets
            .iter()
            .map(|(partition, next_offset)| PartitionCheckpoint {
                topic: self
                    .topics
                    .get(usize::from(partition.topic))
                    .cloned()
                    .unwrap_or_default(),
                partition: partition.partition,
                next_offset: *next_offset,
                max_event_time: clocks.get(partition).copied().flatten(),
            })
            .collect();
        let channels = match &self.distribution {
            Distribution::Direct => Vec::new(),
            Distribution::Exchange {
                channels,
                next_offsets,
            } => next_offsets
                .iter()
                .map(|(channel, next_offset)| ChannelCheckpoint {
                    partition: *channel,
                    next_offset: *next_offset,
                    clocks: channels
                        .channels()
                        .get(channel)
                        .into_iter()
                        .flatten()
                        .map(|(source, clock)| ClockCheckpoint {
                            topic: source.topic.clone(),
                            partition: source.partition,
                            max_event_time: clock.max_event_time,
                            idle: clock.idle,
                        })
                        .collect(),
                })
                .collect(),
        };
        let record = CheckpointRecord {
            id,
            token: token.to_string(),
            watermark: self.watermark(),
            partitions,
            channels,
            restored_from: None,
        };
        // The record and every change of state since the last checkpoint, in one batch.
        let mut batch = StateBatch::default();
        batch.put(
            Column::Meta,
            format::META_CHECKPOINT.to_vec(),
            serde_json::to_vec(&record)?,
        );
        match &mut self.state {
            EngineState::Windowed(windows) => windows.state().checkpoint_with(batch, timers, id)?,
            EngineState::Stateless(store) => store.write(batch)?,
        }
        let store = self.store();
        store.create_checkpoint(id)?;
        let size = store.size_bytes();
        self.metrics
            .state_size
            .set(i64::try_from(size).unwrap_or(i64::MAX));
        Ok(record)
    }

    /// Checkpoint `id` is committed: a restore returns to it from now on.
    pub fn complete_checkpoint(&mut self, id: u64) -> anyhow::Result<()> {
        Ok(self.store().complete_checkpoint(id)?)
    }

    /// Fires the windows the operator watermark `watermark` passes.
    pub fn fire(&mut self, watermark: Millis, sink: &mut dyn Sink) -> anyhow::Result<()> {
        self.metrics.watermark.set(watermark);
        if let EngineState::Windowed(windows) = &mut self.state {
            windows.advance(watermark, &mut self.results)?;
            self.update_open_windows();
            self.emit_results(sink)?;
        }
        Ok(())
    }

    fn emit_results(&mut self, sink: &mut dyn Sink) -> anyhow::Result<()> {
        let results = std::mem::take(&mut self.results);
        for result in &results {
            self.emit_result(result, sink)?;
        }
        self.results = results;
        self.results.clear();
        Ok(())
    }

    fn emit_result(&mut self, result: &WindowResult, sink: &mut dyn Sink) -> anyhow::Result<()> {
        let after_window = self
            .pipeline
            .keyed
            .as_mut()
            .and_then(|keyed| keyed.window.as_mut())
            .map(|window| &mut window.after_window);
        let Some(stages) = after_window.filter(|stages| !stages.is_empty()) else {
            // The common case: the result is the output. Encode it directly, and give the
            // sink key only the fields it reads.
            let value = self.encode_result_directly(result);
            let key = match &mut self.pipeline.sink_key {
                // (`event.key`, the usual sink key, is the window's key as it is)
                None => key_bytes_of_canonical(&result.key),
                Some(expression) if expression.field_name() == Some("key") => {
                    key_bytes_of_canonical(&result.key)
                }
                Some(expression) => {
                    let fields =
                        result_fields(result, &self.output_names, self.sink_key_fields.as_deref());
                    match expression.evaluate(&fields) {
                        Ok(key) => key_bytes(&key),
                        Err(error) => {
                            let failure =
                                Failure::new(DeadLetterReason::SinkKeyError, error.to_string());
                            return self.dead_letter(&failure, None, &value, sink);
                        }
                    }
                }
            };
            self.metrics.results_out.inc();
            return sink.result(OutputRecord {
                key: Some(key),
                value,
            });
        };
        let mut event = Event {
            fields: result_fields(result, &self.output_names, None),
            time: result.range.end.saturating_sub(1),
            key: Some(result.key.clone()),
        };
        match run_stages(stages, &mut event) {
            StageOutcome::Passed => self.emit_event(event, sink),
            StageOutcome::Dropped => {
                self.metrics.filtered_events.inc();
                Ok(())
            }
            StageOutcome::Failed(failure) => {
                let original = self.encode_fields(&event.fields);
                self.dead_letter(&failure, None, &original, sink)
            }
        }
    }

    /// A result as `{"key", "windowStart", "windowEnd", outputs..., "isUpdate"}`.
    fn encode_result_directly(&mut self, result: &WindowResult) -> Vec<u8> {
        // Every key of a window fires together: format its bounds once.
        if self.window_bounds.0 != Some(result.range) {
            self.window_bounds = (
                Some(result.range),
                format!(
                    ",\"windowStart\":\"{}\",\"windowEnd\":\"{}\"",
                    format_rfc3339(result.range.start),
                    format_rfc3339(result.range.end)
                ),
            );
        }
        let mut out = Vec::with_capacity(128 + result.key.len());
        out.extend_from_slice(b"{\"key\":");
        out.extend_from_slice(&result.key);
        out.extend_from_slice(self.window_bounds.1.as_bytes());
        for (prefix, value) in self.output_prefixes.iter().zip(&result.values) {
            out.extend_from_slice(prefix);
            value.write_json(&mut out);
        }
        let _ = write!(out, ",\"isUpdate\":{}}}", result.is_update);
        out
    }

    /// Fields as a JSON object, result fields first in their usual order.
    fn encode_fields(&self, fields: &Map<String, Value>) -> Vec<u8> {
        let mut first: Vec<&str> = vec!["key", "windowStart", "windowEnd"];
        first.extend(self.output_names.iter().map(String::as_str));
        first.push("isUpdate");
        let mut out = Vec::with_capacity(128);
        out.push(b'{');
        let mut separator = false;
        let ordered = first
            .iter()
            .filter_map(|name| fields.get_key_value(*name))
            .chain(
                fields
                    .iter()
                    .filter(|(name, _)| !first.contains(&name.as_str())),
            );
        for (name, value) in ordered {
            if separator {
                out.push(b',');
            }
            separator = true;
            let _ = serde_json::to_writer(&mut out, name);
            out.push(b':');
            let _ = serde_json::to_writer(&mut out, value);
        }
        out.push(b'}');
        out
    }

    fn emit_event(&mut self, event: Event, sink: &mut dyn Sink) -> anyhow::Result<()> {
        let value = self.encode_fields(&event.fields);
        let key = match &mut self.pipeline.sink_key {
            Some(expression) => match expression.evaluate(&event.fields) {
                Ok(key) => Some(key_bytes(&key)),
                Err(error) => {
                    let failure = Failure::new(DeadLetterReason::SinkKeyError, error.to_string());
                    return self.dead_letter(&failure, None, &value, sink);
                }
            },
            None => event.key.as_deref().map(key_bytes_of_canonical),
        };
        self.metrics.results_out.inc();
        sink.result(OutputRecord { key, value })
    }

    fn dead_letter(
        &self,
        failure: &Failure,
        position: Option<&Position>,
        original: &[u8],
        sink: &mut dyn Sink,
    ) -> anyhow::Result<()> {
        let count = self.metrics.dead_letter(failure.reason);
        // Rate-limited: the 1st, 2nd, 4th, 8th... of each reason, so a stream of bad
        // records is visible without flooding the log; every one is counted in metrics.
        if count.is_power_of_two() {
            tracing::warn!(
                reason = %failure.reason,
                count,
                detail = %failure.detail,
                ?position,
                "dead letter (logged at counts 1, 2, 4, 8, ... of each reason)"
            );
        } else {
            tracing::debug!(reason = %failure.reason, detail = %failure.detail, ?position, "dead letter");
        }
        sink.dead_letter(Rejected {
            reason: RejectReason::DeadLetter(failure.reason),
            detail: &failure.detail,
            position,
            original,
        })
    }
}

/// Which stateless stages to run.
#[derive(Clone, Copy)]
enum Before {
    Key,
    Window,
}

/// Decodes a record into the fields of an event.
pub fn decode(payload: &[u8]) -> Result<Map<String, Value>, Failure> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(other) => Err(Failure::new(
            DeadLetterReason::DecodeNotAnObject,
            format!("the record is a JSON {}, not an object", json_type(&other)),
        )),
        Err(error) => Err(Failure::new(
            DeadLetterReason::DecodeInvalidJson,
            format!("failed to decode the record as JSON: {error}"),
        )),
    }
}

/// The fields of a result as an event: all of them, or only `wanted`.
fn result_fields(
    result: &WindowResult,
    output_names: &[String],
    wanted: Option<&[String]>,
) -> Map<String, Value> {
    let wants = |name: &str| wanted.is_none_or(|wanted| wanted.iter().any(|field| field == name));
    let mut fields = Map::new();
    if wants("key") {
        fields.insert(
            "key".into(),
            serde_json::from_slice(&result.key).unwrap_or(Value::Null),
        );
    }
    if wants("windowStart") {
        fields.insert(
            "windowStart".into(),
            Value::String(format_rfc3339(result.range.start)),
        );
    }
    if wants("windowEnd") {
        fields.insert(
            "windowEnd".into(),
            Value::String(format_rfc3339(result.range.end)),
        );
    }
    for (name, value) in output_names.iter().zip(&result.values) {
        if wants(name) {
            fields.insert(name.clone(), value.to_json());
        }
    }
    if wants("isUpdate") {
        fields.insert("isUpdate".into(), Value::Bool(result.is_update));
    }
    fields
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A Kafka record key from a value: a string's text, anything else's JSON.
fn key_bytes(value: &Value) -> Vec<u8> {
    match value {
        Value::String(text) => text.as_bytes().to_vec(),
        other => other.to_string().into_bytes(),
    }
}

/// The Kafka record key of a key's canonical bytes (its compact JSON): as
/// [`key_bytes`] of the value they encode.
fn key_bytes_of_canonical(canonical: &[u8]) -> Vec<u8> {
    // A string with no escape in it is its text between the quotes.
    if let [b'"', text @ .., b'"'] = canonical
        && !text.contains(&b'\\')
    {
        return text.to_vec();
    }
    match serde_json::from_slice::<Value>(canonical) {
        Ok(value) => key_bytes(&value),
        Err(_) => canonical.to_vec(),
    }
}

/// The dead letter of an event whose time cannot be used.
fn event_time_failure(error: EventTimeError) -> Failure {
    let reason = match error {
        EventTimeError::Missing { .. } => DeadLetterReason::EventTimeMissing,
        EventTimeError::Invalid { .. } => DeadLetterReason::EventTimeInvalid,
        EventTimeError::OutOfRange { .. }
        | EventTimeError::TooEarlyForWindow { .. }
        | EventTimeError::TooLateForWindow { .. } => DeadLetterReason::EventTimeOutOfRange,
    };
    Failure::new(reason, error.to_string())
}

/// What the state of `pipeline` is, as its store records it.
fn state_meta(pipeline: &CompiledPipeline) -> StateMeta {
    StateMeta {
        format_version: format::FORMAT_VERSION,
        key_groups: pipeline.key_groups,
        aggregates: pipeline
            .window()
            .map(|window| {
                window
                    .outputs
                    .iter()
                    .map(|output| StoredAggregate {
                        name: output.name.clone(),
                        function: output.function,
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_canonical_key_gives_the_record_key_its_value_gives() {
        for value in [
            serde_json::json!("/home"),
            serde_json::json!(""),
            serde_json::json!("a \"quoted\" \\ path\n"),
            serde_json::json!("caf\u{e9} \u{1f600}"),
            serde_json::json!("\u{1}"),
            serde_json::json!(42),
            serde_json::json!(-1.5),
            serde_json::json!(true),
            serde_json::json!(null),
            serde_json::json!({"a": "b"}),
            serde_json::json!(["x"]),
        ] {
            let canonical = serde_json::to_vec(&value).unwrap();
            assert_eq!(
                key_bytes_of_canonical(&canonical),
                key_bytes(&value),
                "{value}"
            );
        }
    }
}
