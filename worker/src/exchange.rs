//! The exchange between the two halves of a worker in `Any` partitioning mode
//! (docs/architecture.md, "Data distribution"): keyed events travel through the job's
//! repartition topic to the owner of their key group, with watermark records that say
//! how far each source partition has been read.
//!
//! - [`ExchangeRecord`]: the bytes of a repartition record (part of the persisted format:
//!   records in flight survive upgrades, so the layout is versioned).
//! - [`ChannelWatermarks`]: the reader's view: per repartition partition it reads, the
//!   latest clock of every source partition of the job; the watermark is the least.

use std::collections::BTreeMap;

use crate::engine::KeyedEvent;
use crate::pipeline::aggregate::Number128;
use crate::time::Millis;
use crate::time::watermark::NO_WATERMARK;

/// The version byte every repartition record starts with.
pub const EXCHANGE_FORMAT_VERSION: u8 = 1;

const KIND_EVENT: u8 = b'E';
const KIND_WATERMARK: u8 = b'W';

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
    /// A keyed event for the window operator of its key group.
    Event {
        /// The event.
        event: KeyedEvent,
        /// Where it came from, when late events are written out.
        origin: Option<Origin>,
    },
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

    fn source(&mut self, source: &SourcePartition) {
        self.bytes(source.topic.as_bytes());
        self.0.extend_from_slice(&source.partition.to_be_bytes());
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
}

impl ExchangeRecord {
    /// The record's bytes: version, kind, then the kind's fields (big-endian lengths and
    /// numbers; aggregate inputs as a tag 0 none, 1 integer (i128 LE), 2 double (f64 LE)).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        out.push(EXCHANGE_FORMAT_VERSION);
        let mut writer = Writer(out);
        match self {
            Self::Event { event, origin } => {
                writer.0.push(KIND_EVENT);
                writer.0.extend_from_slice(&event.time.to_be_bytes());
                writer.0.extend_from_slice(&event.key_group.to_be_bytes());
                writer.bytes(&event.key);
                writer
                    .0
                    .push(u8::try_from(event.inputs.len()).unwrap_or(u8::MAX));
                for input in &event.inputs {
                    match input {
                        None => writer.0.push(0),
                        Some(Number128::Integer(integer)) => {
                            writer.0.push(1);
                            writer.0.extend_from_slice(&integer.to_le_bytes());
                        }
                        Some(Number128::Double(double)) => {
                            writer.0.push(2);
                            writer.0.extend_from_slice(&double.to_le_bytes());
                        }
                    }
                }
                match origin {
                    None => writer.0.push(0),
                    Some(origin) => {
                        writer.0.push(1);
                        writer.source(&origin.source);
                        writer.0.extend_from_slice(&origin.offset.to_be_bytes());
                        writer.bytes(&origin.original);
                    }
                }
            }
            Self::Watermark(clocks) => {
                writer.0.push(KIND_WATERMARK);
                let count = u32::try_from(clocks.len()).unwrap_or(u32::MAX);
                writer.0.extend_from_slice(&count.to_be_bytes());
                for (source, clock) in clocks {
                    writer.source(source);
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

    /// Reads a record.
    pub fn decode(bytes: &[u8]) -> Result<Self, ExchangeError> {
        let mut reader = Reader(bytes);
        let version = reader.byte("the version")?;
        if version > EXCHANGE_FORMAT_VERSION {
            return Err(ExchangeError::NewerFormat(version));
        }
        let record = match reader.byte("the kind")? {
            KIND_EVENT => {
                let time = Millis::from_be_bytes(reader.take("the event time")?);
                let key_group = u16::from_be_bytes(reader.take("the key group")?);
                let key = reader.bytes("the key")?.to_vec();
                let count = reader.byte("the input count")?;
                let mut inputs = Vec::with_capacity(usize::from(count));
                for _ in 0..count {
                    inputs.push(match reader.byte("an input tag")? {
                        0 => None,
                        1 => Some(Number128::Integer(i128::from_le_bytes(
                            reader.take("an integer input")?,
                        ))),
                        2 => Some(Number128::Double(f64::from_le_bytes(
                            reader.take("a double input")?,
                        ))),
                        _ => return Err(ExchangeError::Malformed("an input tag")),
                    });
                }
                let origin = match reader.byte("the origin flag")? {
                    0 => None,
                    _ => Some(Origin {
                        source: reader.source()?,
                        offset: i64::from_be_bytes(reader.take("the offset")?),
                        original: reader.bytes("the original bytes")?.to_vec(),
                    }),
                };
                Self::Event {
                    event: KeyedEvent {
                        key,
                        key_group,
                        time,
                        inputs,
                    },
                    origin,
                }
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

    #[test]
    fn records_round_trip_and_refuse_what_they_are_not() {
        let records = [
            ExchangeRecord::Event {
                event: KeyedEvent {
                    key: b"\"/home\"".to_vec(),
                    key_group: 7,
                    time: -5,
                    inputs: vec![
                        None,
                        Some(Number128::Integer(i128::MIN)),
                        Some(Number128::Double(-2.5)),
                    ],
                },
                origin: None,
            },
            ExchangeRecord::Event {
                event: KeyedEvent {
                    key: b"42".to_vec(),
                    key_group: 0,
                    time: 1_795_687_200_000,
                    inputs: vec![],
                },
                origin: Some(Origin {
                    source: source("page-views", 3),
                    offset: 77,
                    original: b"{\"not\": \"parsed\"}".to_vec(),
                }),
            },
            ExchangeRecord::Watermark(vec![
                (source("a", 0), clock(Some(10), false)),
                (source("b", 0), clock(None, true)),
            ]),
        ];
        for record in records {
            let mut bytes = Vec::new();
            record.encode(&mut bytes);
            assert_eq!(ExchangeRecord::decode(&bytes), Ok(record.clone()));
            for cut in 0..bytes.len() {
                assert!(
                    ExchangeRecord::decode(&bytes[..cut]).is_err(),
                    "{record:?} cut at {cut}"
                );
            }
            let mut newer = bytes.clone();
            newer[0] = EXCHANGE_FORMAT_VERSION + 1;
            assert_eq!(
                ExchangeRecord::decode(&newer),
                Err(ExchangeError::NewerFormat(EXCHANGE_FORMAT_VERSION + 1))
            );
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
