//! The byte layout of keyed state and timers in the store (documented in
//! `docs/worker.md`; part of the persisted format).
//!
//! - window state key: `key group (u16 BE) | key length (u32 BE) | key | start | end`
//! - window state value: `fired (u8) | accumulators...` (see `Accumulator::encode`)
//! - timer key: `time | kind (u8) | start | end | key | 0x00 | key group (u16 BE)`
//!
//! Times are order-preserving: an `i64` with its sign bit flipped, big-endian, so byte
//! order is time order. Window keys sort by key group first, so a range of key groups is
//! a range of keys; timer keys sort by time, then kind, then window, then key (its JSON
//! text, which never contains a 0x00 byte, so the terminator keeps text order), which is
//! the order results are emitted in.

use crate::pipeline::aggregate::Accumulator;
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

/// The value of one window.
pub fn window_value(fired: bool, accumulators: &[Accumulator], out: &mut Vec<u8>) {
    out.clear();
    out.push(u8::from(fired));
    for accumulator in accumulators {
        accumulator.encode(out);
    }
}

/// Reads a window value.
pub fn decode_window_value(bytes: &[u8]) -> Option<(bool, Vec<Accumulator>)> {
    let (&fired, mut rest) = bytes.split_first()?;
    let mut accumulators = Vec::new();
    while !rest.is_empty() {
        let (accumulator, remaining) = Accumulator::decode(rest)?;
        accumulators.push(accumulator);
        rest = remaining;
    }
    Some((fired != 0, accumulators))
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
