//! The exchange between the two halves of a worker in `Any` partitioning mode
//! (docs/architecture.md, "Data distribution"): keyed events travel through the job's
//! repartition topic to the owner of their key group, with watermark records that say
//! how far each source partition has been read.
//!
//! - [`ExchangeRecord`]: the bytes of a repartition record (part of the persisted format:
//!   records in flight survive upgrades, so the layout is versioned).
//! - [`ExchangeBatches`]: the writer's side: keyed events gathered into one record per
//!   repartition partition, sent when a batch is full and before anything that must
//!   follow them (a watermark record, a commit).
//! - [`ChannelWatermarks`]: the reader's view: per repartition partition it reads, the
//!   latest clock of every source partition of the job; the watermark is the least.

use std::collections::BTreeMap;

use crate::engine::KeyedEvent;
use crate::pipeline::aggregate::Number128;
use crate::time::Millis;
use crate::time::watermark::NO_WATERMARK;

/// The version byte every repartition record starts with. Version 2 added batches of
/// keyed events (`B`); version 1 wrote one keyed event per record (`E`), which a worker
/// still reads (records in flight across an upgrade).
pub const EXCHANGE_FORMAT_VERSION: u8 = 2;

const KIND_EVENT: u8 = b'E';
const KIND_EVENTS: u8 = b'B';
const KIND_WATERMARK: u8 = b'W';

/// A batch is sent once it holds this many bytes: a few hundred keyed events per
/// repartition record rather than one. An event that would take a batch past it starts
/// the next one, so a record is larger only when its one event is (as a record of one
/// event was before batches).
pub const BATCH_BYTES: usize = 64 * 1024;

/// Every batch is sent once the batches hold this many bytes together, which bounds a
/// worker's memory however many repartition partitions (key groups) it writes to.
pub const PENDING_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// A source partition by name (names, not positions in the spec, survive upgrades).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourcePartition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
}

/// Where a keyed event came from, carried only when late events are written out (they
/// go to the late topic with their original bytes and source position).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The source partition.
    pub source: SourcePartition,
    /// The record's offset there.
    pub offset: i64,
    /// The record's original bytes.
    pub original: Vec<u8>,
}

/// [`Origin`], borrowed from the source record (what the writer encodes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OriginRef<'a> {
    /// The source topic.
    pub topic: &'a str,
    /// The source partition.
    pub partition: i32,
    /// The record's offset there.
    pub offset: i64,
    /// The record's original bytes.
    pub original: &'a [u8],
}

impl Origin {
    fn borrowed(&self) -> OriginRef<'_> {
        OriginRef {
            topic: &self.source.topic,
            partition: self.source.partition,
            offset: self.offset,
            original: &self.original,
        }
    }
}

/// The clock of one source partition as its reader reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceClock {
    /// The greatest event time read from it (`None`: none yet).
    pub max_event_time: Option<Millis>,
    /// Whether it has been silent for longer than the idle timeout.
    pub idle: bool,
}

/// One record of the repartition topic.
#[derive(Clone, Debug, PartialEq)]
pub enum ExchangeRecord {
    /// Keyed events for the window operator of their key group, in the order they were
    /// routed, each with where it came from when late events or dead letters are written
    /// out. (A version 1 record of one event reads as a batch of one.)
    Events(Vec<(KeyedEvent, Option<Origin>)>),
    /// The clocks of the source partitions a worker reads.
    Watermark(Vec<(SourcePartition, SourceClock)>),
}

/// Why bytes are not a repartition record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    /// Written by a newer worker.
    #[error(
        "a repartition record has format version {0}, newer than this worker's {EXCHANGE_FORMAT_VERSION}: run the newer worker image"
    )]
    NewerFormat(u8),
    /// Cut short or garbled.
    #[error("a repartition record is malformed: {0}")]
    Malformed(&'static str),
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn bytes(&mut self, bytes: &[u8]) {
        let length = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&length.to_be_bytes());
        self.0.extend_from_slice(bytes);
    }

    fn source(&mut self, topic: &str, partition: i32) {
        self.bytes(topic.as_bytes());
        self.0.extend_from_slice(&partition.to_be_bytes());
    }

    /// A keyed event: event time, key group, key, inputs (a tag each: 0 none, 1 integer
    /// (i128 LE), 2 double (f64 LE)), then the origin (flag 0, or 1 and its fields).
    fn event(&mut self, event: &KeyedEvent, origin: Option<OriginRef<'_>>) {
        self.0.extend_from_slice(&event.time.to_be_bytes());
        self.0.extend_from_slice(&event.key_group.to_be_bytes());
        self.bytes(&event.key);
        self.0
            .push(u8::try_from(event.inputs.len()).unwrap_or(u8::MAX));
        for input in &event.inputs {
            match input {
                None => self.0.push(0),
                Some(Number128::Integer(integer)) => {
                    self.0.push(1);
                    self.0.extend_from_slice(&integer.to_le_bytes());
                }
                Some(Number128::Double(double)) => {
                    self.0.push(2);
                    self.0.extend_from_slice(&double.to_le_bytes());
                }
            }
        }
        match origin {
            None => self.0.push(0),
            Some(origin) => {
                self.0.push(1);
                self.source(origin.topic, origin.partition);
                self.0.extend_from_slice(&origin.offset.to_be_bytes());
                self.bytes(origin.original);
            }
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ExchangeError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(ExchangeError::Malformed(what))?;
        self.0 = rest;
        Ok(*head)
    }

    fn byte(&mut self, what: &'static str) -> Result<u8, ExchangeError> {
        Ok(self.take::<1>(what)?[0])
    }

    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], ExchangeError> {
        let length = usize::try_from(u32::from_be_bytes(self.take(what)?))
            .map_err(|_| ExchangeError::Malformed(what))?;
        if self.0.len() < length {
            return Err(ExchangeError::Malformed(what));
        }
        let (head, rest) = self.0.split_at(length);
        self.0 = rest;
        Ok(head)
    }

    fn source(&mut self) -> Result<SourcePartition, ExchangeError> {
        let topic = std::str::from_utf8(self.bytes("a topic name")?)
            .map_err(|_| ExchangeError::Malformed("a topic name"))?
            .to_string();
        Ok(SourcePartition {
            topic,
            partition: i32::from_be_bytes(self.take("a partition")?),
        })
    }

    /// A keyed event as [`Writer::event`] writes it.
    fn event(&mut self) -> Result<(KeyedEvent, Option<Origin>), ExchangeError> {
        let time = Millis::from_be_bytes(self.take("the event time")?);
        let key_group = u16::from_be_bytes(self.take("the key group")?);
        let key = self.bytes("the key")?.to_vec();
        let count = self.byte("the input count")?;
        let mut inputs = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            inputs.push(match self.byte("an input tag")? {
                0 => None,
                1 => Some(Number128::Integer(i128::from_le_bytes(
                    self.take("an integer input")?,
                ))),
                2 => Some(Number128::Double(f64::from_le_bytes(
                    self.take("a double input")?,
                ))),
                _ => return Err(ExchangeError::Malformed("an input tag")),
            });
        }
        let origin = match self.byte("the origin flag")? {
            0 => None,
            _ => Some(Origin {
                source: self.source()?,
                offset: i64::from_be_bytes(self.take("the offset")?),
                original: self.bytes("the original bytes")?.to_vec(),
            }),
        };
        Ok((
            KeyedEvent {
                key,
                key_group,
                time,
                inputs,
            },
            origin,
        ))
    }
}

impl ExchangeRecord {
    /// The record's bytes: version, kind, then the kind's fields (big-endian lengths and
    /// numbers): a batch's count of events and each event ([`Writer::event`]), a
    /// watermark record's count of clocks and each clock.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        out.push(EXCHANGE_FORMAT_VERSION);
        let mut writer = Writer(out);
        match self {
            Self::Events(events) => {
                writer.0.push(KIND_EVENTS);
                let count = u32::try_from(events.len()).unwrap_or(u32::MAX);
                writer.0.extend_from_slice(&count.to_be_bytes());
                for (event, origin) in events {
                    writer.event(event, origin.as_ref().map(Origin::borrowed));
                }
            }
            Self::Watermark(clocks) => {
                writer.0.push(KIND_WATERMARK);
                let count = u32::try_from(clocks.len()).unwrap_or(u32::MAX);
                writer.0.extend_from_slice(&count.to_be_bytes());
                for (source, clock) in clocks {
                    writer.source(&source.topic, source.partition);
                    let flags =
                        u8::from(clock.max_event_time.is_some()) | (u8::from(clock.idle) << 1);
                    writer.0.push(flags);
                    writer
                        .0
                        .extend_from_slice(&clock.max_event_time.unwrap_or_default().to_be_bytes());
                }
            }
        }
    }

    /// Reads a record (of this worker's format version or older).
    pub fn decode(bytes: &[u8]) -> Result<Self, ExchangeError> {
        let mut reader = Reader(bytes);
        let version = reader.byte("the version")?;
        if version > EXCHANGE_FORMAT_VERSION {
            return Err(ExchangeError::NewerFormat(version));
        }
        if version == 0 {
            return Err(ExchangeError::Malformed("the version"));
        }
        let record = match reader.byte("the kind")? {
            KIND_EVENT if version == 1 => Self::Events(vec![reader.event()?]),
            KIND_EVENTS if version >= 2 => {
                let count = u32::from_be_bytes(reader.take("the event count")?);
                // Each event takes at least 16 bytes: no allocation larger than the record.
                let mut events = Vec::with_capacity(
                    usize::try_from(count)
                        .unwrap_or(usize::MAX)
                        .min(reader.0.len() / 16),
                );
                for _ in 0..count {
                    events.push(reader.event()?);
                }
                Self::Events(events)
            }
            KIND_WATERMARK => {
                let count = u32::from_be_bytes(reader.take("the clock count")?);
                let mut clocks = Vec::new();
                for _ in 0..count {
                    let source = reader.source()?;
                    let flags = reader.byte("the clock flags")?;
                    let time = Millis::from_be_bytes(reader.take("a clock")?);
                    clocks.push((
                        source,
                        SourceClock {
                            max_event_time: (flags & 1 != 0).then_some(time),
                            idle: flags & 2 != 0,
                        },
                    ));
                }
                Self::Watermark(clocks)
            }
            _ => return Err(ExchangeError::Malformed("the kind")),
        };
        if reader.0.is_empty() {
            Ok(record)
        } else {
            Err(ExchangeError::Malformed("trailing bytes"))
        }
    }
}

/// Keyed events on their way to the repartition topic, one batch (one record) per
/// partition. Sending them is the caller's: the records [`ExchangeBatches::push`] says
/// are ready at once, and every batch before a watermark record (which must follow the
/// events it covers on each partition) and before a commit (which must include them).
/// Dropped with the run when it starts over, as its aborted transaction's records are.
#[derive(Debug)]
pub struct ExchangeBatches {
    /// A batch is sealed at this many bytes.
    batch_bytes: usize,
    /// Every batch is sealed when the open ones hold this many bytes of events.
    pending_bytes: usize,
    /// Per partition, the record so far (its count written in when sealed) and its
    /// count of events.
    open: BTreeMap<i32, (Vec<u8>, u32)>,
    /// Bytes of events in open batches.
    open_bytes: usize,
    /// Sealed records, in the order they were sealed: each goes before any open batch of
    /// its partition.
    ready: Vec<(i32, Vec<u8>)>,
}

/// The bytes before a batch's events: version, kind, count.
const BATCH_HEADER: usize = 6;

/// An open batch with no event yet.
fn open_batch() -> Vec<u8> {
    vec![EXCHANGE_FORMAT_VERSION, KIND_EVENTS, 0, 0, 0, 0]
}

/// A batch's record with its count of events written in.
fn sealed(mut batch: Vec<u8>, count: u32) -> Vec<u8> {
    batch[2..BATCH_HEADER].copy_from_slice(&count.to_be_bytes());
    batch
}

impl Default for ExchangeBatches {
    fn default() -> Self {
        Self::with_limits(BATCH_BYTES, PENDING_BATCH_BYTES)
    }
}

impl ExchangeBatches {
    /// Batches sealed at `batch_bytes` each, and all of them when the open ones hold
    /// `pending_bytes` of events together (the worker's are [`BATCH_BYTES`] and
    /// [`PENDING_BATCH_BYTES`]).
    pub fn with_limits(batch_bytes: usize, pending_bytes: usize) -> Self {
        Self {
            batch_bytes,
            pending_bytes,
            open: BTreeMap::new(),
            open_bytes: 0,
            ready: Vec::new(),
        }
    }

    /// Adds a keyed event to the batch of repartition partition `partition`. Returns
    /// whether records are ready to send ([`ExchangeBatches::take_ready`]): a batch that
    /// reached `batch_bytes` (one the event would take past it is sealed without it, so
    /// a batch is larger only when its one event is), or every batch once the open ones
    /// hold `pending_bytes`.
    pub fn push(
        &mut self,
        partition: i32,
        event: &KeyedEvent,
        origin: Option<OriginRef<'_>>,
    ) -> bool {
        let (batch, count) = self
            .open
            .entry(partition)
            .or_insert_with(|| (open_batch(), 0));
        let before = batch.len();
        Writer(batch).event(event, origin);
        *count += 1;
        self.open_bytes += batch.len() - before;
        if batch.len() > self.batch_bytes && *count > 1 {
            let mut next = open_batch();
            next.extend_from_slice(&batch[before..]);
            batch.truncate(before);
            let full = std::mem::replace(batch, next);
            self.ready.push((partition, sealed(full, *count - 1)));
            *count = 1;
            self.open_bytes -= before - BATCH_HEADER;
        }
        if batch.len() >= self.batch_bytes {
            let length = batch.len();
            if let Some((batch, count)) = self.open.remove(&partition) {
                self.ready.push((partition, sealed(batch, count)));
            }
            self.open_bytes -= length - BATCH_HEADER;
        }
        if self.open_bytes >= self.pending_bytes {
            self.seal_all();
        }
        !self.ready.is_empty()
    }

    fn seal_all(&mut self) {
        self.open_bytes = 0;
        for (partition, (batch, count)) in std::mem::take(&mut self.open) {
            self.ready.push((partition, sealed(batch, count)));
        }
    }

    /// The records ready to send, in order; none is left.
    pub fn take_ready(&mut self) -> Vec<(i32, Vec<u8>)> {
        std::mem::take(&mut self.ready)
    }

    /// Every batch's record: those ready, then the open batches by partition; none is
    /// left.
    pub fn take_all(&mut self) -> Vec<(i32, Vec<u8>)> {
        self.seal_all();
        self.take_ready()
    }

    /// Whether no event waits.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty() && self.ready.is_empty()
    }
}

/// The watermark of the window operator in `Any` mode, from the watermark records of the
/// repartition partitions it reads. Each such partition is a channel whose watermark is
/// the least, over every source partition of the job, of the latest clock reported on
/// it (less the out-of-orderness; idle sources do not count; a source not heard of yet
/// holds the channel back). The operator's watermark is the least over its channels, and
/// never goes back.
#[derive(Clone, Debug)]
pub struct ChannelWatermarks {
    max_out_of_orderness: Millis,
    sources: Vec<SourcePartition>,
    channels: BTreeMap<i32, BTreeMap<SourcePartition, SourceClock>>,
    current: Millis,
}

impl ChannelWatermarks {
    /// No channel yet; every source partition of the job is in `sources`.
    pub fn new(max_out_of_orderness: Millis, sources: Vec<SourcePartition>) -> Self {
        Self {
            max_out_of_orderness,
            sources,
            channels: BTreeMap::new(),
            current: NO_WATERMARK,
        }
    }

    /// The operator watermark.
    pub fn current(&self) -> Millis {
        self.current
    }

    /// The source partitions of the job changed (a topic gained partitions).
    pub fn set_sources(&mut self, sources: Vec<SourcePartition>) {
        self.sources = sources;
    }

    /// The repartition partitions read (their channels hold the watermark from now on).
    pub fn assign(&mut self, channels: impl IntoIterator<Item = i32>) {
        for channel in channels {
            self.channels.entry(channel).or_default();
        }
    }

    /// A watermark record arrived on `channel`.
    pub fn observe(&mut self, channel: i32, clocks: &[(SourcePartition, SourceClock)]) {
        let known = self.channels.entry(channel).or_default();
        for (source, clock) in clocks {
            let entry = known.entry(source.clone()).or_insert(*clock);
            // A clock never goes back on a channel (a restarted reader reports again
            // from its checkpoint, which is never behind what it reported and committed).
            entry.max_event_time = entry.max_event_time.max(clock.max_event_time);
            entry.idle = clock.idle;
        }
    }

    /// Clocks that reach every channel at once: a worker that owns every key group
    /// applies its own source clocks in process, as its watermark records would arrive
    /// on each of its channels through the repartition topic.
    pub fn observe_everywhere(&mut self, clocks: &[(SourcePartition, SourceClock)]) {
        let channels: Vec<i32> = self.channels.keys().copied().collect();
        for channel in channels {
            self.observe(channel, clocks);
        }
    }

    fn channel_watermark(&self, clocks: &BTreeMap<SourcePartition, SourceClock>) -> Option<Millis> {
        self.sources
            .iter()
            .filter_map(|source| match clocks.get(source) {
                None => Some(NO_WATERMARK),
                Some(clock) if clock.idle => None,
                Some(clock) => Some(clock.max_event_time.map_or(NO_WATERMARK, |max| {
                    max.saturating_sub(self.max_out_of_orderness)
                })),
            })
            .min()
    }

    /// Recomputes the operator watermark; returns it when it advanced.
    pub fn advance(&mut self) -> Option<Millis> {
        let candidate = self
            .channels
            .values()
            .filter_map(|clocks| self.channel_watermark(clocks))
            .min()?;
        (candidate > self.current).then(|| {
            self.current = candidate;
            candidate
        })
    }

    /// The clocks of each channel, for a checkpoint.
    pub fn channels(&self) -> &BTreeMap<i32, BTreeMap<SourcePartition, SourceClock>> {
        &self.channels
    }

    /// Returns to a checkpoint.
    pub fn restore(
        &mut self,
        watermark: Millis,
        channels: BTreeMap<i32, BTreeMap<SourcePartition, SourceClock>>,
    ) {
        self.current = watermark;
        self.channels = channels;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(topic: &str, partition: i32) -> SourcePartition {
        SourcePartition {
            topic: topic.into(),
            partition,
        }
    }

    fn clock(max_event_time: Option<Millis>, idle: bool) -> SourceClock {
        SourceClock {
            max_event_time,
            idle,
        }
    }

    fn event(key: &[u8], key_group: u16, time: Millis) -> KeyedEvent {
        KeyedEvent {
            key: key.to_vec(),
            key_group,
            time,
            inputs: vec![
                None,
                Some(Number128::Integer(i128::MIN)),
                Some(Number128::Double(-2.5)),
            ],
        }
    }

    fn origin(offset: i64, original: &[u8]) -> Origin {
        Origin {
            source: source("page-views", 3),
            offset,
            original: original.to_vec(),
        }
    }

    #[test]
    fn records_round_trip_and_refuse_what_they_are_not() {
        let records = [
            ExchangeRecord::Events(vec![(event(b"\"/home\"", 7, -5), None)]),
            ExchangeRecord::Events(vec![
                (
                    KeyedEvent {
                        key: b"42".to_vec(),
                        key_group: 0,
                        time: 1_795_687_200_000,
                        inputs: vec![],
                    },
                    Some(origin(77, b"{\"not\": \"parsed\"}")),
                ),
                (event(b"\"/a\"", 0, 3), None),
                (event(b"\"/b\"", 0, 1), Some(origin(78, b""))),
            ]),
            ExchangeRecord::Events(vec![]),
            ExchangeRecord::Watermark(vec![
                (source("a", 0), clock(Some(10), false)),
                (source("b", 0), clock(None, true)),
            ]),
        ];
        for record in records {
            let mut bytes = Vec::new();
            record.encode(&mut bytes);
            assert_eq!(ExchangeRecord::decode(&bytes), Ok(record.clone()));
            // A record cut anywhere, even between a batch's events, is refused.
            for cut in 0..bytes.len() {
                assert!(
                    ExchangeRecord::decode(&bytes[..cut]).is_err(),
                    "{record:?} cut at {cut}"
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(
                ExchangeRecord::decode(&longer),
                Err(ExchangeError::Malformed("trailing bytes"))
            );
            let mut newer = bytes.clone();
            newer[0] = EXCHANGE_FORMAT_VERSION + 1;
            assert_eq!(
                ExchangeRecord::decode(&newer),
                Err(ExchangeError::NewerFormat(EXCHANGE_FORMAT_VERSION + 1))
            );
        }
    }

    #[test]
    fn a_version_1_record_of_one_event_reads_as_a_batch_of_one() {
        // Written by a worker before batches (in flight across an upgrade): version 1,
        // kind E, the event's fields as a batch holds them.
        let keyed = event(b"\"/home\"", 7, 12);
        let mut bytes = vec![1, b'E'];
        bytes.extend_from_slice(&12_i64.to_be_bytes());
        bytes.extend_from_slice(&7_u16.to_be_bytes());
        bytes.extend_from_slice(&7_u32.to_be_bytes());
        bytes.extend_from_slice(b"\"/home\"");
        bytes.push(3);
        bytes.push(0);
        bytes.push(1);
        bytes.extend_from_slice(&i128::MIN.to_le_bytes());
        bytes.push(2);
        bytes.extend_from_slice(&(-2.5_f64).to_le_bytes());
        bytes.push(1);
        bytes.extend_from_slice(&10_u32.to_be_bytes());
        bytes.extend_from_slice(b"page-views");
        bytes.extend_from_slice(&3_i32.to_be_bytes());
        bytes.extend_from_slice(&77_i64.to_be_bytes());
        bytes.extend_from_slice(&2_u32.to_be_bytes());
        bytes.extend_from_slice(b"{}");
        assert_eq!(
            ExchangeRecord::decode(&bytes),
            Ok(ExchangeRecord::Events(vec![(
                keyed,
                Some(origin(77, b"{}"))
            )]))
        );
        // Batches came with version 2: a version 1 record of kind B is not one.
        let mut batch = Vec::new();
        ExchangeRecord::Events(vec![]).encode(&mut batch);
        batch[0] = 1;
        assert_eq!(
            ExchangeRecord::decode(&batch),
            Err(ExchangeError::Malformed("the kind"))
        );
    }

    /// Keyed events with their origins, by repartition partition.
    type Batches = Vec<(i32, Vec<(KeyedEvent, Option<Origin>)>)>;

    /// Each record's partition and events, checking each decodes as a batch.
    fn decoded(records: Vec<(i32, Vec<u8>)>) -> Batches {
        records
            .into_iter()
            .map(
                |(partition, record)| match ExchangeRecord::decode(&record) {
                    Ok(ExchangeRecord::Events(events)) => (partition, events),
                    other => panic!("partition {partition}: {other:?}"),
                },
            )
            .collect()
    }

    #[test]
    fn batches_hold_each_partitions_events_in_order_until_taken() {
        let mut batches = ExchangeBatches::default();
        let first = origin(5, b"{\"page\": \"/a\"}");
        assert!(batches.is_empty());
        assert!(!batches.push(3, &event(b"\"/a\"", 3, 10), Some(first.borrowed())));
        assert!(!batches.push(1, &event(b"\"/b\"", 1, 11), None));
        assert!(!batches.push(3, &event(b"\"/c\"", 3, 9), None));
        assert!(!batches.is_empty());
        assert!(batches.take_ready().is_empty(), "none full");
        assert_eq!(
            decoded(batches.take_all()),
            vec![
                (1, vec![(event(b"\"/b\"", 1, 11), None)]),
                (
                    3,
                    vec![
                        (event(b"\"/a\"", 3, 10), Some(first.clone())),
                        (event(b"\"/c\"", 3, 9), None),
                    ]
                ),
            ]
        );
        assert!(batches.is_empty());
        assert_eq!(batches.open_bytes, 0);
        assert!(batches.take_all().is_empty(), "taken once");
    }

    #[test]
    fn a_batch_is_sealed_at_its_size_and_all_are_when_together_they_reach_theirs() {
        let original = vec![b'x'; 100];
        let with_origin = |offset| {
            Some(OriginRef {
                topic: "page-views",
                partition: 0,
                offset,
                original: &original,
            })
        };
        let size = {
            let mut one = ExchangeBatches::default();
            one.push(0, &event(b"\"/a\"", 0, 1), with_origin(0));
            one.open_bytes
        };
        // (case, batch bytes, pending bytes, the partitions pushed to in turn, events
        // pushed, the events of each record ready after the last push).
        type Case = (
            &'static str,
            usize,
            usize,
            Vec<i32>,
            usize,
            Vec<(i32, usize)>,
        );
        let cases: [Case; 4] = [
            (
                "a batch that reaches its size exactly is sealed",
                BATCH_HEADER + 3 * size,
                usize::MAX,
                vec![4],
                3,
                vec![(4, 3)],
            ),
            (
                "an event that would take a batch past its size starts the next",
                BATCH_HEADER + 3 * size - 1,
                usize::MAX,
                vec![4],
                3,
                vec![(4, 2)],
            ),
            (
                "one event larger than a batch is a batch of its own",
                size - 1,
                usize::MAX,
                vec![4],
                1,
                vec![(4, 1)],
            ),
            (
                "the open batches together reach theirs: all are sealed",
                usize::MAX,
                5 * size,
                vec![0, 1, 2],
                5,
                vec![(0, 2), (1, 2), (2, 1)],
            ),
        ];
        for (case, batch_bytes, pending_bytes, partitions, pushes, expected) in cases {
            let mut batches = ExchangeBatches::with_limits(batch_bytes, pending_bytes);
            let mut ready = false;
            for pushed in 0..pushes {
                let partition = partitions[pushed % partitions.len()];
                let offset = i64::try_from(pushed).unwrap();
                ready = batches.push(partition, &event(b"\"/a\"", 0, 1), with_origin(offset));
                assert_eq!(
                    ready,
                    pushed + 1 == pushes,
                    "{case}: ready only at the last push"
                );
            }
            assert!(ready, "{case}");
            let records = batches.take_ready();
            assert!(
                records
                    .iter()
                    .all(|(_, record)| record.len() <= batch_bytes.max(BATCH_HEADER + size)),
                "{case}: no record larger than its batch size or its one event"
            );
            let counts: Vec<(i32, usize)> = decoded(records)
                .iter()
                .map(|(partition, events)| (*partition, events.len()))
                .collect();
            assert_eq!(counts, expected, "{case}");
            // Every event pushed is in a record.
            let all = decoded(batches.take_all());
            let left: usize = all.iter().map(|(_, events)| events.len()).sum();
            let sealed: usize = expected.iter().map(|(_, events)| events).sum();
            assert_eq!(left + sealed, pushes, "{case}: every event in a record");
            assert_eq!(batches.open_bytes, 0, "{case}");
        }
    }

    #[test]
    fn sealed_and_open_records_of_a_partition_keep_the_order_of_its_events() {
        let mut batches = ExchangeBatches::with_limits(BATCH_HEADER + 100, usize::MAX);
        let mut sent = Vec::new();
        for offset in 0..50 {
            let origin = OriginRef {
                topic: "in",
                partition: 0,
                offset,
                original: b"{}",
            };
            if batches.push(
                offset.rem_euclid(2).try_into().unwrap(),
                &event(b"1", 0, offset),
                Some(origin),
            ) {
                sent.extend(batches.take_ready());
            }
        }
        sent.extend(batches.take_all());
        for partition in [0, 1] {
            let offsets: Vec<i64> = decoded(sent.clone())
                .into_iter()
                .filter(|(of, _)| *of == partition)
                .flat_map(|(_, events)| {
                    events.into_iter().map(|(_, origin)| origin.unwrap().offset)
                })
                .collect();
            let expected: Vec<i64> = (0..50)
                .filter(|offset| offset % 2 == i64::from(partition))
                .collect();
            assert_eq!(offsets, expected, "partition {partition}");
        }
    }

    #[test]
    fn the_watermark_is_the_least_clock_over_sources_and_channels() {
        let sources = vec![source("a", 0), source("b", 0)];
        let mut watermarks = ChannelWatermarks::new(5, sources);
        watermarks.assign([0, 1]);
        // Nothing heard yet: held.
        assert_eq!(watermarks.advance(), None);
        watermarks.observe(0, &[(source("a", 0), clock(Some(100), false))]);
        watermarks.observe(0, &[(source("b", 0), clock(Some(50), false))]);
        assert_eq!(watermarks.advance(), None, "channel 1 has heard nothing");
        watermarks.observe(
            1,
            &[
                (source("a", 0), clock(Some(90), false)),
                (source("b", 0), clock(Some(200), false)),
            ],
        );
        assert_eq!(watermarks.advance(), Some(45), "least of 95, 45, 85, 195");
        // An idle source stops counting; a clock never goes back on a channel.
        watermarks.observe(0, &[(source("b", 0), clock(Some(40), true))]);
        watermarks.observe(1, &[(source("b", 0), clock(Some(10), true))]);
        assert_eq!(watermarks.advance(), Some(85));
        // Partition 0 of topic "b" is not partition 0 of topic "a".
        watermarks.observe(0, &[(source("b", 0), clock(Some(60), false))]);
        assert_eq!(watermarks.advance(), None, "never goes back");
        assert_eq!(watermarks.current(), 85);
    }
}
