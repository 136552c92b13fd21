//! The persisted state format: every byte the worker writes to its state store, in one
//! place (documented in `docs/worker.md`, "Persisted format"). A store records the format
//! version it was written with; a worker refuses a store of a version it does not know.
//!
//! Column families:
//! - `windows`: key `key group (u16 BE) | key length (u32 BE) | key | start | end`, value
//!   `flag (u8) | accumulators...` (see [`window_flag`], [`encode_accumulator`]), in the
//!   order of the aggregates recorded in `meta`. A window has fired when its flag says so
//!   or its end is at or before [`META_FIRED_THROUGH`] ([`has_fired`], [`end_passed`]): a
//!   window fired in the store is not written again just to set its flag.
//! - `timers`: key `time | kind (u8) | start | end | key | 0x00 | key group (u16 BE)`,
//!   empty value. Each window has exactly one pending timer (fire at its end until that
//!   firing happened, then expire at end + allowed lateness), derived from the window
//!   ([`timer_of_window`]). A periodic checkpoint leaves the cached keys' timers in
//!   memory; a savepoint's writes them too and marks the column complete
//!   ([`META_TIMERS_COMPLETE`]), so a worker starting from it takes the timers as they
//!   are. Without that mark a start rebuilds them from `windows`.
//! - `meta`: [`META_FORMAT_VERSION`], [`META_KEY_GROUPS`], [`META_AGGREGATES`],
//!   [`META_CHECKPOINT`], [`META_FIRED_THROUGH`], [`META_FIRED_THROUGH_RANGES`] and
//!   [`META_TIMERS_COMPLETE`], see
//!   [`StateMeta`] and [`CheckpointRecord`].
//!
//! Times are order-preserving: an `i64` with its sign bit flipped, big-endian, so byte
//! order is time order. Window keys sort by key group first, so a range of key groups is
//! a range of keys (what moves on a rescale); timer keys sort by time, then kind, then
//! window, then key (its JSON text, which never contains a 0x00 byte, so the terminator
//! keeps text order), which is the order results are emitted in.

use serde::{Deserialize, Serialize};
use sluice_crds::pipeline::AggregateFunction;

use crate::pipeline::aggregate::Accumulator;
use crate::pipeline::aggregate::exact_sum::ExactSum;
use crate::time::Millis;
use crate::time::window::WindowRange;

use super::key_group::KeyGroup;

/// Order-preserving bytes of a time.
pub fn time_bytes(time: Millis) -> [u8; 8] {
    #[allow(clippy::cast_sign_loss)]
    let flipped = (time as u64) ^ (1 << 63);
    flipped.to_be_bytes()
}

/// The time of [`time_bytes`].
pub fn time_from_bytes(bytes: [u8; 8]) -> Millis {
    #[allow(clippy::cast_possible_wrap)]
    let time = (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64;
    time
}

/// The prefix shared by every window of a key.
pub fn key_prefix(key_group: KeyGroup, key: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&key_group.to_be_bytes());
    let length = u32::try_from(key.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(key);
}

/// The state key of one window of a key.
pub fn window_key(key_group: KeyGroup, key: &[u8], range: WindowRange, out: &mut Vec<u8>) {
    key_prefix(key_group, key, out);
    out.extend_from_slice(&time_bytes(range.start));
    out.extend_from_slice(&time_bytes(range.end));
}

/// The window of a state key that starts with `prefix_length` bytes of key prefix.
pub fn window_of_key(state_key: &[u8], prefix_length: usize) -> Option<WindowRange> {
    let rest = state_key.get(prefix_length..)?;
    let (start, rest) = rest.split_first_chunk::<8>()?;
    let (end, _) = rest.split_first_chunk::<8>()?;
    Some(WindowRange {
        start: time_from_bytes(*start),
        end: time_from_bytes(*end),
    })
}

/// The key group of a window state key.
pub fn key_group_of_window_key(state_key: &[u8]) -> Option<KeyGroup> {
    state_key
        .first_chunk::<2>()
        .map(|bytes| KeyGroup::from_be_bytes(*bytes))
}

/// The key (canonical bytes) of a window state key.
pub fn key_of_window_key(state_key: &[u8]) -> Option<&[u8]> {
    let length = state_key.get(2..6)?;
    let length = usize::try_from(u32::from_be_bytes(length.try_into().ok()?)).ok()?;
    state_key.get(6..6 + length)
}

/// The first window state key of key group `key_group` (the bound of a key-group range).
pub fn key_group_start(key_group: u32) -> Vec<u8> {
    match KeyGroup::try_from(key_group) {
        Ok(group) => group.to_be_bytes().to_vec(),
        // Past the last group: a key greater than every window key.
        Err(_) => vec![0xff; 3],
    }
}

/// A window's flag: no result emitted yet (or, when its end is at or before
/// [`META_FIRED_THROUGH`], it fired in the store and was not written again).
pub const WINDOW_NOT_FIRED: u8 = 0;
/// A window's flag: its result was emitted at its end; it expires next.
pub const WINDOW_FIRED: u8 = 1;
/// A window's flag: a result was emitted before, and it fires again (an update) at its
/// end, unless that is at or before [`META_FIRED_THROUGH`]: a fired session that an
/// allowed-late event merged into one ending after the watermark.
pub const WINDOW_FIRED_BEFORE_ITS_END: u8 = 2;

/// The flag of a window that was emitted before (`fired`) and whose firing at its end
/// happened or not (`end_passed`).
pub fn window_flag(fired: bool, end_passed: bool) -> u8 {
    match (fired, end_passed) {
        (_, true) => WINDOW_FIRED,
        (true, false) => WINDOW_FIRED_BEFORE_ITS_END,
        (false, false) => WINDOW_NOT_FIRED,
    }
}

/// The value of one window, with its flag ([`window_flag`]).
pub fn window_value(flag: u8, accumulators: &[Accumulator], out: &mut Vec<u8>) {
    out.clear();
    out.push(flag);
    for accumulator in accumulators {
        encode_accumulator(accumulator, out);
    }
}

/// Reads a window value: its flag and accumulators.
pub fn decode_window_value(bytes: &[u8]) -> Option<(u8, Vec<Accumulator>)> {
    let (&fired, mut rest) = bytes.split_first()?;
    let mut accumulators = Vec::new();
    while !rest.is_empty() {
        let (accumulator, remaining) = decode_accumulator(rest)?;
        accumulators.push(accumulator);
        rest = remaining;
    }
    Some((fired, accumulators))
}

/// Whether a result of a window that ends at `end`, stored with flag `flag`, was emitted
/// (its next one is an update), in a store whose [`META_FIRED_THROUGH`] is
/// `fired_through`.
pub fn has_fired(flag: u8, end: Millis, fired_through: Millis) -> bool {
    flag != WINDOW_NOT_FIRED || end <= fired_through
}

/// Whether the firing at the end of a window that ends at `end`, stored with flag `flag`,
/// happened (it expires next), in a store whose [`META_FIRED_THROUGH`] is
/// `fired_through`.
pub fn end_passed(flag: u8, end: Millis, fired_through: Millis) -> bool {
    flag == WINDOW_FIRED || end <= fired_through
}

/// The [`META_FIRED_THROUGH`] of a store from its entry (`None`: none, every flag is set).
pub fn fired_through_of(entry: Option<&[u8]>) -> Millis {
    entry
        .and_then(|bytes| bytes.first_chunk::<8>())
        .map_or(Millis::MIN, |bytes| time_from_bytes(*bytes))
}

/// A timer key.
pub fn timer_key(
    time: Millis,
    kind: u8,
    range: WindowRange,
    key_group: KeyGroup,
    key: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(28 + key.len());
    out.extend_from_slice(&time_bytes(time));
    out.push(kind);
    out.extend_from_slice(&time_bytes(range.start));
    out.extend_from_slice(&time_bytes(range.end));
    out.extend_from_slice(key);
    out.push(0);
    out.extend_from_slice(&key_group.to_be_bytes());
    out
}

/// The parts of a timer key: time, kind, window, key group, key.
pub fn decode_timer_key(bytes: &[u8]) -> Option<(Millis, u8, WindowRange, KeyGroup, &[u8])> {
    let (time, rest) = bytes.split_first_chunk::<8>()?;
    let (&kind, rest) = rest.split_first()?;
    let (start, rest) = rest.split_first_chunk::<8>()?;
    let (end, rest) = rest.split_first_chunk::<8>()?;
    let (rest, group) = rest.split_last_chunk::<2>()?;
    let (&terminator, key) = rest.split_last()?;
    if terminator != 0 {
        return None;
    }
    Some((
        time_from_bytes(*time),
        kind,
        WindowRange {
            start: time_from_bytes(*start),
            end: time_from_bytes(*end),
        },
        KeyGroup::from_be_bytes(*group),
        key,
    ))
}

/// Appends the bytes of an accumulator: a tag, then its fields little-endian.
/// `c` count (u64); `s` sum (i128 integer sum, f64 double sum, any-double flag u8);
/// `m`/`M` min/max (presence bits u8, i128, f64); `a` avg (i128, f64, u64 count).
/// A sum or mean whose double part is not one double is written whole: `S` (i128, any-double
/// flag u8, exact sum) and `A` (i128, u64 count, exact sum), where an exact sum is the index
/// of its lowest limb (u32), the number of limbs (u32) and the limbs (u64 each, least
/// significant first, two's complement; limb i weighs 2^(64·(low+i) − 1088)).
pub fn encode_accumulator(accumulator: &Accumulator, out: &mut Vec<u8>) {
    match accumulator {
        Accumulator::Count(count) => {
            out.push(b'c');
            out.extend_from_slice(&count.to_le_bytes());
        }
        Accumulator::Sum {
            integers,
            doubles,
            any_double,
        } => match as_one_double(doubles) {
            Some(double) => {
                out.push(b's');
                out.extend_from_slice(&integers.to_le_bytes());
                out.extend_from_slice(&double.to_le_bytes());
                out.push(u8::from(*any_double));
            }
            None => {
                out.push(b'S');
                out.extend_from_slice(&integers.to_le_bytes());
                out.push(u8::from(*any_double));
                encode_exact_sum(doubles, out);
            }
        },
        Accumulator::Extreme {
            greatest,
            integer,
            double,
        } => {
            out.push(if *greatest { b'M' } else { b'm' });
            out.push(u8::from(integer.is_some()) | (u8::from(double.is_some()) << 1));
            out.extend_from_slice(&integer.unwrap_or_default().to_le_bytes());
            out.extend_from_slice(&double.unwrap_or_default().to_le_bytes());
        }
        Accumulator::Average {
            integers,
            doubles,
            count,
        } => match as_one_double(doubles) {
            Some(double) => {
                out.push(b'a');
                out.extend_from_slice(&integers.to_le_bytes());
                out.extend_from_slice(&double.to_le_bytes());
                out.extend_from_slice(&count.to_le_bytes());
            }
            None => {
                out.push(b'A');
                out.extend_from_slice(&integers.to_le_bytes());
                out.extend_from_slice(&count.to_le_bytes());
                encode_exact_sum(doubles, out);
            }
        },
    }
}

/// Reads one accumulator from the front of `bytes`, returning the rest.
pub fn decode_accumulator(bytes: &[u8]) -> Option<(Accumulator, &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let mut reader = Reader(rest);
    let accumulator = match tag {
        b'c' => Accumulator::Count(u64::from_le_bytes(reader.take()?)),
        b's' => Accumulator::Sum {
            integers: i128::from_le_bytes(reader.take()?),
            doubles: exact_of_one_double(f64::from_le_bytes(reader.take()?))?,
            any_double: reader.take::<1>()?[0] != 0,
        },
        b'S' => Accumulator::Sum {
            integers: i128::from_le_bytes(reader.take()?),
            any_double: reader.take::<1>()?[0] != 0,
            doubles: reader.exact_sum()?,
        },
        b'M' | b'm' => {
            let present = reader.take::<1>()?[0];
            let integer = i128::from_le_bytes(reader.take()?);
            let double = f64::from_le_bytes(reader.take()?);
            Accumulator::Extreme {
                greatest: tag == b'M',
                integer: (present & 1 != 0).then_some(integer),
                double: (present & 2 != 0).then_some(double),
            }
        }
        b'a' => Accumulator::Average {
            integers: i128::from_le_bytes(reader.take()?),
            doubles: exact_of_one_double(f64::from_le_bytes(reader.take()?))?,
            count: u64::from_le_bytes(reader.take()?),
        },
        b'A' => Accumulator::Average {
            integers: i128::from_le_bytes(reader.take()?),
            count: u64::from_le_bytes(reader.take()?),
            doubles: reader.exact_sum()?,
        },
        _ => return None,
    };
    Some((accumulator, reader.0))
}

/// The double an exact sum equals, if it equals one.
fn as_one_double(sum: &ExactSum) -> Option<f64> {
    let double = sum.to_f64();
    (double.is_finite() && ExactSum::of_f64(double) == *sum).then_some(double)
}

/// The exact sum of a stored double (an infinite or NaN one, which state written before
/// sums were exact could hold, has none: the entry is malformed).
fn exact_of_one_double(double: f64) -> Option<ExactSum> {
    double.is_finite().then(|| ExactSum::of_f64(double))
}

fn encode_exact_sum(sum: &ExactSum, out: &mut Vec<u8>) {
    let (low, limbs) = sum.parts();
    out.extend_from_slice(&low.to_le_bytes());
    let count = u32::try_from(limbs.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&count.to_le_bytes());
    for limb in limbs {
        out.extend_from_slice(&limb.to_le_bytes());
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    fn exact_sum(&mut self) -> Option<ExactSum> {
        let low = u32::from_le_bytes(self.take()?);
        let count = usize::try_from(u32::from_le_bytes(self.take()?)).ok()?;
        if self.0.len() < count.checked_mul(8)? {
            return None;
        }
        let mut limbs = Vec::with_capacity(count);
        for _ in 0..count {
            limbs.push(u64::from_le_bytes(self.take()?));
        }
        Some(ExactSum::from_parts(low, limbs))
    }
}

/// The timer a window has pending, from its state alone: until the firing at its end
/// happened ([`end_passed`]), fire at its end; after it (with allowed lateness, or it
/// would be gone), expire at end + lateness.
pub fn timer_of_window(
    range: WindowRange,
    end_passed: bool,
    allowed_lateness: Millis,
) -> (Millis, u8) {
    if end_passed {
        (range.end.saturating_add(allowed_lateness), TIMER_EXPIRE)
    } else {
        (range.end, TIMER_FIRE)
    }
}

/// The timer kind byte of an expiry.
pub const TIMER_EXPIRE: u8 = 0;
/// The timer kind byte of a firing.
pub const TIMER_FIRE: u8 = 1;

/// The version of this format. A store written with a greater version is refused; one
/// written with a smaller version is read by the rules of its version, and stamped with
/// this one when a worker opens it. Version 2 added [`META_FIRED_THROUGH`] (a version 1
/// store has none: its flags say it all, which version 2 reads the same way).
pub const FORMAT_VERSION: u32 = 2;

/// `meta` key: the format version, u32 BE.
pub const META_FORMAT_VERSION: &[u8] = b"format-version";
/// `meta` key: the number of key groups (`maxParallelism`), u32 BE.
pub const META_KEY_GROUPS: &[u8] = b"key-groups";
/// `meta` key: the aggregates, JSON `[{"name": .., "function": ..}]`, in the order their
/// accumulators are stored in each window value.
pub const META_AGGREGATES: &[u8] = b"aggregates";
/// `meta` key: the latest checkpoint record, JSON ([`CheckpointRecord`]).
pub const META_CHECKPOINT: &[u8] = b"checkpoint";
/// `meta` key: the watermark up to which every window has fired ([`time_bytes`]; absent:
/// none), written with each checkpoint. A window ending at or before it has fired
/// whatever its flag says ([`has_fired`]).
pub const META_FIRED_THROUGH: &[u8] = b"fired-through";
/// `meta` key, written by a restore from the parts of a savepoint and removed by the next
/// timer rebuild: the key-group ranges whose windows fired further than
/// [`META_FIRED_THROUGH`] (their part's watermark), JSON [`FiredThroughRange`]s. The
/// rebuild sets the flags of the windows that fired only by these.
pub const META_FIRED_THROUGH_RANGES: &[u8] = b"fired-through-ranges";

/// `meta` key: the `timers` column holds the pending timer of every window in `windows`
/// in checkpoint `id`, computed with allowed lateness `lateness`
/// ([`timers_complete_value`]). Written by a checkpoint that writes the cached keys'
/// timers too (a savepoint's) or finds none in memory; removed by any other checkpoint,
/// and when windows come in without their timers (an import, a restore from several parts
/// or a cut part) or leave without them (a retain). A worker starting from checkpoint `id`
/// at the same allowed lateness takes the timers as they are; otherwise it rebuilds them
/// from `windows` ([`timer_of_window`]). The checkpoint id keeps a mark that a writer not
/// knowing it (an older worker) left in place from being believed after that writer's own
/// checkpoints. The column may also hold stale timers of windows merged away, which
/// firing skips.
pub const META_TIMERS_COMPLETE: &[u8] = b"timers-complete";

/// The value of [`META_TIMERS_COMPLETE`]: the allowed lateness ([`time_bytes`]), then the
/// checkpoint id (u64 BE).
pub fn timers_complete_value(allowed_lateness: Millis, checkpoint: u64) -> Vec<u8> {
    let mut value = time_bytes(allowed_lateness).to_vec();
    value.extend_from_slice(&checkpoint.to_be_bytes());
    value
}

/// The allowed lateness and checkpoint id of a [`META_TIMERS_COMPLETE`] value.
pub fn timers_complete_of(value: &[u8]) -> Option<(Millis, u64)> {
    let (lateness, checkpoint) = value.split_first_chunk::<8>()?;
    let checkpoint: [u8; 8] = checkpoint.try_into().ok()?;
    Some((time_from_bytes(*lateness), u64::from_be_bytes(checkpoint)))
}

/// Key groups `[first, end)`, whose windows fired up to `fired_through`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FiredThroughRange {
    /// The first key group.
    pub first: u32,
    /// The key group after the last.
    pub end: u32,
    /// Every window of these key groups ending at or before it has fired.
    pub fired_through: Millis,
}

/// The fired-through watermark of `key_group`: that of the range of `ranges` holding it,
/// else `fired_through`.
pub fn fired_through_of_group(
    ranges: &[FiredThroughRange],
    key_group: KeyGroup,
    fired_through: Millis,
) -> Millis {
    let group = u32::from(key_group);
    ranges
        .iter()
        .find(|range| range.first <= group && group < range.end)
        .map_or(fired_through, |range| range.fired_through)
}

/// One aggregate as recorded in `meta`: accumulators are found by name, never by position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAggregate {
    /// The output name.
    pub name: String,
    /// The function.
    pub function: AggregateFunction,
}

/// What `meta` says about the state in a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateMeta {
    /// The format version.
    pub format_version: u32,
    /// The number of key groups.
    pub key_groups: u32,
    /// The aggregates, in stored order.
    pub aggregates: Vec<StoredAggregate>,
}

impl StateMeta {
    /// The `meta` entries of this description.
    pub fn entries(&self) -> Vec<(&'static [u8], Vec<u8>)> {
        vec![
            (
                META_FORMAT_VERSION,
                self.format_version.to_be_bytes().to_vec(),
            ),
            (META_KEY_GROUPS, self.key_groups.to_be_bytes().to_vec()),
            (
                META_AGGREGATES,
                serde_json::to_vec(&self.aggregates).unwrap_or_default(),
            ),
        ]
    }

    /// Reads the description from the values of the `meta` keys (`None`: a new store).
    pub fn decode(
        format_version: Option<&[u8]>,
        key_groups: Option<&[u8]>,
        aggregates: Option<&[u8]>,
    ) -> Result<Option<Self>, String> {
        let Some(format_version) = format_version else {
            return Ok(None);
        };
        let u32_of = |name: &str, bytes: &[u8]| {
            bytes
                .try_into()
                .map(u32::from_be_bytes)
                .map_err(|_| format!("the {name} entry has {} bytes, not 4", bytes.len()))
        };
        Ok(Some(Self {
            format_version: u32_of("format-version", format_version)?,
            key_groups: u32_of(
                "key-groups",
                key_groups.ok_or("the key-groups entry is missing")?,
            )?,
            aggregates: serde_json::from_slice(
                aggregates.ok_or("the aggregates entry is missing")?,
            )
            .map_err(|error| format!("failed to read the aggregates entry: {error}"))?,
        }))
    }
}

/// The position and clock of one source partition at a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionCheckpoint {
    /// The topic's name (not its position in the spec, which an upgrade may change).
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset of the next record to read.
    pub next_offset: i64,
    /// The greatest event time read from it (`None`: none yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_event_time: Option<Millis>,
}

/// What a checkpoint records besides window state: where each partition is, and the
/// operator watermark, so a restore continues exactly where the checkpoint stood.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointRecord {
    /// The checkpoint's number, increasing.
    pub id: u64,
    /// A token unique to this checkpoint, committed with its offsets (see `commit`).
    #[serde(default)]
    pub token: String,
    /// The operator watermark (it never goes back).
    pub watermark: Millis,
    /// Every source partition read so far.
    pub partitions: Vec<PartitionCheckpoint>,
    /// Every repartition partition read (`Any` partitioning), with its watermark clocks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<ChannelCheckpoint>,
    /// Set on the checkpoint a savepoint restore makes: the savepoint's location. Its
    /// partitions are the only offsets to start from (committed offsets of the consumer
    /// group are newer, or another run's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
}

/// A repartition partition at a checkpoint: where it was read to, and the latest clock of
/// each source partition its watermark records reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelCheckpoint {
    /// The repartition partition (a key group).
    pub partition: i32,
    /// The offset of the next record to read.
    pub next_offset: i64,
    /// The clocks heard of on it.
    pub clocks: Vec<ClockCheckpoint>,
}

/// The clock of a source partition as a channel last heard it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClockCheckpoint {
    /// The source topic.
    pub topic: String,
    /// The source partition.
    pub partition: i32,
    /// Its greatest event time (`None`: none yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_event_time: Option<Millis>,
    /// Whether it was idle.
    #[serde(default)]
    pub idle: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_bytes_sort_like_times() {
        let times = [
            Millis::MIN,
            -1_000,
            -1,
            0,
            1,
            1_795_687_200_000,
            Millis::MAX,
        ];
        for pair in times.windows(2) {
            assert!(time_bytes(pair[0]) < time_bytes(pair[1]), "{pair:?}");
        }
        for time in times {
            assert_eq!(time_from_bytes(time_bytes(time)), time);
        }
    }

    #[test]
    fn accumulators_round_trip() {
        use crate::pipeline::aggregate::Number128;
        use AggregateFunction::{Avg, Count, Max, Min, Sum};
        for function in [Count, Sum, Min, Max, Avg] {
            // One double sum that is a double (the fixed layout) and one that is not.
            for doubles in [vec![2.25], vec![2.25, 1e-30]] {
                let mut accumulator = Accumulator::new(function);
                accumulator.add(Some(Number128::Integer(-7)));
                for double in &doubles {
                    accumulator.add(Some(Number128::Double(*double)));
                }
                let mut bytes = Vec::new();
                encode_accumulator(&accumulator, &mut bytes);
                bytes.push(0xff);
                let (decoded, rest) = decode_accumulator(&bytes).unwrap();
                assert_eq!(decoded, accumulator, "{function:?} of {doubles:?}");
                assert_eq!(rest, &[0xff]);
            }
        }
    }

    #[test]
    fn keeps_the_fixed_layout_when_the_double_sum_is_one_double() {
        use crate::pipeline::aggregate::Number128;
        use AggregateFunction::{Avg, Sum};
        // The bytes of a sum and a mean written before sums were exact.
        let mut sum = vec![b's'];
        sum.extend_from_slice(&(-7i128).to_le_bytes());
        sum.extend_from_slice(&2.25f64.to_le_bytes());
        sum.push(1);
        let mut mean = vec![b'a'];
        mean.extend_from_slice(&(-7i128).to_le_bytes());
        mean.extend_from_slice(&2.25f64.to_le_bytes());
        mean.extend_from_slice(&2u64.to_le_bytes());
        for (function, old_bytes) in [(Sum, sum), (Avg, mean)] {
            let mut accumulator = Accumulator::new(function);
            accumulator.add(Some(Number128::Integer(-7)));
            accumulator.add(Some(Number128::Double(2.25)));
            let mut bytes = Vec::new();
            encode_accumulator(&accumulator, &mut bytes);
            assert_eq!(bytes, old_bytes, "{function:?}");
        }
    }

    #[test]
    fn keys_round_trip() {
        let range = WindowRange { start: -5, end: 5 };
        let mut state_key = Vec::new();
        window_key(7, b"\"d1\"", range, &mut state_key);
        assert_eq!(window_of_key(&state_key, 2 + 4 + 4), Some(range));
        let timer = timer_key(5, 1, range, 7, b"\"d1\"");
        assert_eq!(
            decode_timer_key(&timer),
            Some((5, 1, range, 7, &b"\"d1\""[..]))
        );
    }
}
