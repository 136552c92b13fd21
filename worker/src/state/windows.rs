//! The windows of each key, with a bounded in-memory cache of hot keys in front of the
//! store, and the timers that fire and expire windows.
//!
//! A key's windows are loaded into the cache whole (one prefix scan) the first time it
//! is touched; from then on the cache is the truth for that key until it is evicted,
//! when its changes are written to the store in one batch with the other evicted keys.
//! A checkpoint writes every changed key. Timers are written to the store (batched) and
//! read back in time order when the watermark passes them.

use rustc_hash::FxHashMap;

use crate::pipeline::aggregate::Accumulator;
use crate::time::Millis;
use crate::time::window::WindowRange;

use super::key_group::KeyGroup;
use super::layout;
use super::store::{Column, StateBatch, StateError, StateStore};

/// One window of a key.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowState {
    /// Its range.
    pub range: WindowRange,
    /// Whether a result for it was emitted already (the next one is an update).
    pub fired: bool,
    /// One per aggregate output.
    pub accumulators: Vec<Accumulator>,
}

/// What a timer does when the watermark passes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerKind {
    /// Emit the window's result (at its end).
    Fire,
    /// Delete the window's state (at its end plus the allowed lateness).
    Expire,
}

impl TimerKind {
    fn byte(self) -> u8 {
        match self {
            Self::Expire => 0,
            Self::Fire => 1,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::Expire),
            1 => Some(Self::Fire),
            _ => None,
        }
    }
}

/// A due timer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timer {
    /// When it is due.
    pub time: Millis,
    /// What it does.
    pub kind: TimerKind,
    /// The window.
    pub range: WindowRange,
    /// The key's group.
    pub key_group: KeyGroup,
    /// The key's canonical bytes.
    pub key: Vec<u8>,
}

struct CachedKey {
    key_group: KeyGroup,
    windows: Vec<WindowState>,
    /// Windows to delete from the store when this key is written.
    removed: Vec<WindowRange>,
    dirty: bool,
    last_used: u64,
}

/// How many timers one store scan returns.
const TIMER_SCAN_LIMIT: usize = 4096;

/// The windows of every key, cached, with their timers.
pub struct KeyedWindowState {
    store: Box<dyn StateStore>,
    cache: FxHashMap<Box<[u8]>, CachedKey>,
    cached_windows: usize,
    cache_capacity: usize,
    epoch: u64,
    pending_timers: StateBatch,
    /// Timers below this key were processed (and deleted).
    timers_from: Vec<u8>,
    /// The earliest timer not yet processed, when known; `None` means none (or unknown
    /// after a scan, see `next_timer_known`).
    next_timer: Option<Millis>,
    next_timer_known: bool,
    open_windows: u64,
    scratch: Vec<u8>,
}

impl KeyedWindowState {
    /// Window state over `store`, caching at most about `cache_capacity` windows.
    pub fn new(store: Box<dyn StateStore>, cache_capacity: usize) -> Self {
        Self {
            store,
            cache: FxHashMap::default(),
            cached_windows: 0,
            cache_capacity: cache_capacity.max(1),
            epoch: 0,
            pending_timers: StateBatch::default(),
            timers_from: Vec::new(),
            next_timer: None,
            next_timer_known: true,
            open_windows: 0,
            scratch: Vec::new(),
        }
    }

    /// Windows with state now (kept incrementally; see also [`Self::count_stored_windows`]).
    pub fn open_windows(&self) -> u64 {
        self.open_windows
    }

    /// Windows held in the cache.
    pub fn cached_windows(&self) -> usize {
        self.cached_windows
    }

    /// The windows of a key, loaded into the cache if needed, for reading and changing.
    /// Call [`Self::windows_changed`] after changing their number.
    pub fn windows_mut(
        &mut self,
        key_group: KeyGroup,
        key: &[u8],
    ) -> Result<&mut Vec<WindowState>, StateError> {
        if !self.cache.contains_key(key) {
            if self.cached_windows >= self.cache_capacity {
                self.evict()?;
            }
            let windows = self.load(key_group, key)?;
            self.cached_windows += windows.len();
            self.cache.insert(
                key.into(),
                CachedKey {
                    key_group,
                    windows,
                    removed: Vec::new(),
                    dirty: false,
                    last_used: self.epoch,
                },
            );
        }
        let entry = self.cache.get_mut(key).ok_or_else(|| StateError {
            action: "cache a key",
            message: "the key vanished from the cache".into(),
        })?;
        entry.dirty = true;
        entry.last_used = self.epoch;
        Ok(&mut entry.windows)
    }

    /// Records that a key gained `added` windows and lost `removed` ones (whose store
    /// entries must be deleted).
    pub fn windows_changed(&mut self, key: &[u8], added: usize, removed: &[WindowRange]) {
        self.open_windows += added as u64;
        self.open_windows -= removed.len() as u64;
        self.cached_windows += added;
        self.cached_windows -= removed.len();
        if let Some(entry) = self.cache.get_mut(key) {
            entry.removed.extend_from_slice(removed);
        }
    }

    fn load(&mut self, key_group: KeyGroup, key: &[u8]) -> Result<Vec<WindowState>, StateError> {
        layout::key_prefix(key_group, key, &mut self.scratch);
        let prefix_length = self.scratch.len();
        let entries = self.store.scan_prefix(Column::Windows, &self.scratch)?;
        let mut windows = Vec::with_capacity(entries.len());
        for (state_key, value) in entries {
            let (range, (fired, accumulators)) = layout::window_of_key(&state_key, prefix_length)
                .zip(layout::decode_window_value(&value))
                .ok_or_else(|| StateError {
                    action: "decode window state",
                    message: format!("malformed entry of {} bytes", value.len()),
                })?;
            windows.push(WindowState {
                range,
                fired,
                accumulators,
            });
        }
        Ok(windows)
    }

    /// Writes the changes of the cached keys chosen by `evict` (all changed keys when
    /// `evict` keeps everything), dropping the evicted ones from the cache.
    fn write_back(&mut self, mut evict: impl FnMut(&CachedKey) -> bool) -> Result<(), StateError> {
        let mut batch = StateBatch::default();
        let mut value = Vec::new();
        let mut evicted_windows = 0;
        self.cache.retain(|key, entry| {
            if entry.dirty {
                for range in entry.removed.drain(..) {
                    let mut state_key = Vec::new();
                    layout::window_key(entry.key_group, key, range, &mut state_key);
                    batch.delete(Column::Windows, state_key);
                }
                for window in &entry.windows {
                    let mut state_key = Vec::new();
                    layout::window_key(entry.key_group, key, window.range, &mut state_key);
                    layout::window_value(window.fired, &window.accumulators, &mut value);
                    batch.put(Column::Windows, state_key, value.clone());
                }
                entry.dirty = false;
            }
            let keep = !evict(entry);
            if !keep {
                evicted_windows += entry.windows.len();
            }
            keep
        });
        self.cached_windows -= evicted_windows;
        if !batch.is_empty() {
            self.store.write(batch)?;
        }
        Ok(())
    }

    /// Makes room: writes back and drops the keys not used since the last eviction, then
    /// any others, until the cache is at 80% of its capacity.
    fn evict(&mut self) -> Result<(), StateError> {
        let target = self.cache_capacity / 5 * 4;
        let epoch = self.epoch;
        let mut excess = self.cached_windows.saturating_sub(target);
        self.write_back(|entry| {
            if excess > 0 && entry.last_used < epoch {
                excess = excess.saturating_sub(entry.windows.len().max(1));
                true
            } else {
                false
            }
        })?;
        let mut excess = self.cached_windows.saturating_sub(target);
        if excess > 0 {
            self.write_back(|entry| {
                if excess > 0 {
                    excess = excess.saturating_sub(entry.windows.len().max(1));
                    true
                } else {
                    false
                }
            })?;
        }
        self.epoch += 1;
        Ok(())
    }

    /// Schedules a timer.
    pub fn add_timer(
        &mut self,
        time: Millis,
        kind: TimerKind,
        range: WindowRange,
        key_group: KeyGroup,
        key: &[u8],
    ) {
        let timer = layout::timer_key(time, kind.byte(), range, key_group, key);
        // Firing a chunk of timers can schedule expiries earlier than the chunk's last
        // timer: scan again from there (the processed timers are deleted by then).
        if timer < self.timers_from {
            self.timers_from.clone_from(&timer);
        }
        self.pending_timers.put(Column::Timers, timer, Vec::new());
        if self.next_timer_known {
            self.next_timer = Some(self.next_timer.map_or(time, |next| next.min(time)));
        }
    }

    /// The next timers due at or before `watermark`, in order (time, kind, window, key
    /// group, key), at most a few thousand at a time; empty when none is due. They are
    /// deleted from the store.
    pub fn due_timers(&mut self, watermark: Millis) -> Result<Vec<Timer>, StateError> {
        if self.next_timer_known && self.next_timer.is_none_or(|next| next > watermark) {
            return Ok(Vec::new());
        }
        self.flush_timers()?;
        let upper = watermark
            .checked_add(1)
            .map(|after| layout::time_bytes(after).to_vec());
        let keys = self.store.scan_keys(
            Column::Timers,
            &self.timers_from,
            upper.as_deref(),
            TIMER_SCAN_LIMIT,
        )?;
        let mut timers = Vec::with_capacity(keys.len());
        for timer_key in &keys {
            let (time, kind, range, key_group, key) = layout::decode_timer_key(timer_key)
                .and_then(|(time, kind, range, group, key)| {
                    Some((time, TimerKind::from_byte(kind)?, range, group, key))
                })
                .ok_or_else(|| StateError {
                    action: "decode a timer",
                    message: format!("malformed timer of {} bytes", timer_key.len()),
                })?;
            timers.push(Timer {
                time,
                kind,
                range,
                key_group,
                key: key.to_vec(),
            });
            self.pending_timers
                .delete(Column::Timers, timer_key.clone());
        }
        if let Some(last) = keys.last() {
            self.timers_from = last.clone();
            self.timers_from.push(0);
        }
        if keys.len() < TIMER_SCAN_LIMIT {
            // Everything due was returned: find the next timer once.
            self.flush_timers()?;
            let next = self
                .store
                .scan_keys(Column::Timers, &self.timers_from, None, 1)?;
            self.next_timer = next
                .first()
                .and_then(|key| key.first_chunk::<8>())
                .map(|bytes| layout::time_from_bytes(*bytes));
            self.next_timer_known = true;
        } else {
            self.next_timer_known = false;
        }
        Ok(timers)
    }

    fn flush_timers(&mut self) -> Result<(), StateError> {
        if !self.pending_timers.is_empty() {
            let batch = std::mem::take(&mut self.pending_timers);
            self.store.write(batch)?;
        }
        Ok(())
    }

    /// Writes every change to the store (cache and timers), keeping the cache.
    pub fn checkpoint(&mut self) -> Result<(), StateError> {
        self.write_back(|_| false)?;
        self.flush_timers()
    }

    /// Window entries in the store after a checkpoint: equals [`Self::open_windows`] when
    /// no state leaks.
    pub fn count_stored_windows(&mut self) -> Result<u64, StateError> {
        self.checkpoint()?;
        self.store.count(Column::Windows)
    }

    /// Timers in the store after a checkpoint.
    pub fn count_stored_timers(&mut self) -> Result<u64, StateError> {
        self.checkpoint()?;
        self.store.count(Column::Timers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryStore;
    use sluice_crds::pipeline::AggregateFunction;

    fn window(start: Millis, end: Millis) -> WindowState {
        WindowState {
            range: WindowRange { start, end },
            fired: false,
            accumulators: vec![Accumulator::new(AggregateFunction::Count)],
        }
    }

    #[test]
    fn evicted_keys_come_back_from_the_store() {
        let mut state = KeyedWindowState::new(Box::new(MemoryStore::default()), 10);
        for key in 0..100u32 {
            let key = key.to_string().into_bytes();
            let windows = state.windows_mut(1, &key).unwrap();
            assert!(windows.is_empty());
            let mut new = window(0, 10);
            new.accumulators[0].add(None);
            windows.push(new);
            state.windows_changed(&key, 1, &[]);
        }
        assert!(state.cached_windows() <= 10);
        assert_eq!(state.open_windows(), 100);
        for key in 0..100u32 {
            let key = key.to_string().into_bytes();
            let windows = state.windows_mut(1, &key).unwrap();
            assert_eq!(windows.len(), 1, "key {key:?}");
            assert_eq!(windows[0].accumulators[0].result(), serde_json::json!(1));
        }
        assert_eq!(state.count_stored_windows().unwrap(), 100);
        let key = b"7".to_vec();
        let windows = state.windows_mut(1, &key).unwrap();
        let range = windows.pop().unwrap().range;
        state.windows_changed(&key, 0, &[range]);
        assert_eq!(state.count_stored_windows().unwrap(), 99);
        assert_eq!(state.open_windows(), 99);
    }

    #[test]
    fn timers_come_due_in_order_and_once() {
        let mut state = KeyedWindowState::new(Box::new(MemoryStore::default()), 10);
        let range = |end| WindowRange {
            start: end - 10,
            end,
        };
        state.add_timer(30, TimerKind::Fire, range(30), 0, b"b");
        state.add_timer(10, TimerKind::Fire, range(10), 0, b"b");
        state.add_timer(10, TimerKind::Fire, range(10), 0, b"a");
        state.add_timer(20, TimerKind::Expire, range(10), 0, b"a");
        assert!(state.due_timers(9).unwrap().is_empty());
        let due: Vec<(Millis, Vec<u8>)> = state
            .due_timers(20)
            .unwrap()
            .into_iter()
            .map(|t| (t.time, t.key))
            .collect();
        assert_eq!(
            due,
            vec![
                (10, b"a".to_vec()),
                (10, b"b".to_vec()),
                (20, b"a".to_vec())
            ]
        );
        assert!(state.due_timers(20).unwrap().is_empty());
        state.add_timer(25, TimerKind::Fire, range(25), 0, b"c");
        let due: Vec<Millis> = state
            .due_timers(Millis::MAX)
            .unwrap()
            .into_iter()
            .map(|t| t.time)
            .collect();
        assert_eq!(due, vec![25, 30]);
        // A timer scheduled while firing, earlier than the last one fired, still comes due.
        state.add_timer(26, TimerKind::Expire, range(25), 0, b"c");
        let due: Vec<Millis> = state
            .due_timers(Millis::MAX)
            .unwrap()
            .into_iter()
            .map(|t| t.time)
            .collect();
        assert_eq!(due, vec![26]);
        assert_eq!(state.count_stored_timers().unwrap(), 0);
    }
}
