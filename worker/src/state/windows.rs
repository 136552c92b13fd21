//! The windows of each key, with a bounded in-memory cache of hot keys in front of the
//! store, and the timers that fire and expire windows.
//!
//! A key's windows are loaded into the cache whole (one prefix scan) the first time it
//! is touched; from then on the cache is the truth for that key until it is evicted,
//! when its changes are written to the store in one batch with the other evicted keys.
//! A checkpoint writes every changed key. Timers are written to the store (batched) and
//! read back in time order when the watermark passes them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::pipeline::aggregate::Accumulator;
use crate::time::Millis;
use crate::time::window::WindowRange;

use super::format;
use super::key_group::KeyGroup;
use super::store::{Column, Entries, StateBatch, StateError, StateStore};

/// One window of a key.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowState {
    /// Its range.
    pub range: WindowRange,
    /// Whether a result for it was emitted already (the next one is an update).
    pub fired: bool,
    /// Whether the firing at its end happened (its next timer is its expiry). Only a
    /// fired session that an allowed-late event extended past the watermark has fired
    /// and not passed its end: it fires again (an update) at its new end.
    pub end_passed: bool,
    /// One per aggregate output.
    pub accumulators: Vec<Accumulator>,
    /// Whether it changed since it was last written to the store (set by whoever changes
    /// it): a key's unchanged windows are not written again.
    pub changed: bool,
}

/// What a timer does when the watermark passes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimerKind {
    /// Delete the window's state (at its end plus the allowed lateness).
    Expire,
    /// Emit the window's result (at its end).
    Fire,
}

impl TimerKind {
    fn byte(self) -> u8 {
        match self {
            Self::Expire => format::TIMER_EXPIRE,
            Self::Fire => format::TIMER_FIRE,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            format::TIMER_EXPIRE => Some(Self::Expire),
            format::TIMER_FIRE => Some(Self::Fire),
            _ => None,
        }
    }
}

/// A due timer. Timers order by time, kind, window start, window end, key (its JSON
/// text), key group: the order of their store keys, and the order results are emitted in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timer {
    /// When it is due.
    pub time: Millis,
    /// What it does.
    pub kind: TimerKind,
    /// The window's start.
    pub start: Millis,
    /// The window's end.
    pub end: Millis,
    /// The key's canonical bytes.
    pub key: Arc<[u8]>,
    /// The key's group.
    pub key_group: KeyGroup,
}

/// The timers due at the same time for the same window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct TimerSlot {
    time: Millis,
    kind: TimerKind,
    start: Millis,
    end: Millis,
}

impl TimerSlot {
    fn of(timer: &Timer) -> Self {
        Self {
            time: timer.time,
            kind: timer.kind,
            start: timer.start,
            end: timer.end,
        }
    }
}

/// A key of a slot: key bytes and key group (the order of timers within a slot).
type SlotMember = (Arc<[u8]>, KeyGroup);

/// The keys of a slot: hashed while it fills (adding a key is a hash insert), ordered once
/// it is taken in parts: up to the last store timer when store timers due at the same
/// time come in batches (so each batch takes its keys without looking at the others
/// again), or a chunk at a time when it fires from memory alone.
enum SlotMembers {
    Hashed(FxHashSet<SlotMember>),
    Ordered(BTreeSet<SlotMember>),
    /// Sorted from last to first, so the first is taken from the end.
    Sorted(Vec<SlotMember>),
}

impl Default for SlotMembers {
    fn default() -> Self {
        Self::Hashed(FxHashSet::default())
    }
}

impl SlotMembers {
    fn insert(&mut self, member: SlotMember) -> bool {
        match self {
            Self::Hashed(members) => members.insert(member),
            Self::Ordered(members) => members.insert(member),
            Self::Sorted(members) => match members.binary_search_by(|probe| member.cmp(probe)) {
                Ok(_) => false,
                Err(index) => {
                    members.insert(index, member);
                    true
                }
            },
        }
    }

    fn remove(&mut self, member: &SlotMember) -> bool {
        match self {
            Self::Hashed(members) => members.remove(member),
            Self::Ordered(members) => members.remove(member),
            Self::Sorted(members) => match members.binary_search_by(|probe| member.cmp(probe)) {
                Ok(index) => {
                    members.remove(index);
                    true
                }
                Err(_) => false,
            },
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Hashed(members) => members.len(),
            Self::Ordered(members) => members.len(),
            Self::Sorted(members) => members.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every member, in order.
    fn into_sorted(self) -> Vec<SlotMember> {
        match self {
            Self::Hashed(members) => sort_members(members.into_iter().collect()),
            Self::Ordered(members) => members.into_iter().collect(),
            Self::Sorted(mut members) => {
                members.reverse();
                members
            }
        }
    }

    /// Removes and returns, in order, the members not after `last`.
    fn take_up_to(&mut self, last: &SlotMember) -> Vec<SlotMember> {
        if !matches!(self, Self::Ordered(_)) {
            *self = Self::Ordered(std::mem::take(self).into_sorted().into_iter().collect());
        }
        let Self::Ordered(members) = self else {
            return Vec::new();
        };
        let mut taken = Vec::new();
        while let Some(first) = members.first()
            && first <= last
        {
            taken.extend(members.pop_first());
        }
        taken
    }

    /// Removes and returns, in order, the first `count` members.
    fn take_first(&mut self, count: usize) -> Vec<SlotMember> {
        if !matches!(self, Self::Sorted(_)) {
            let mut sorted = std::mem::take(self).into_sorted();
            sorted.reverse();
            *self = Self::Sorted(sorted);
        }
        let Self::Sorted(members) = self else {
            return Vec::new();
        };
        let rest = members.len().saturating_sub(count);
        let mut taken = members.split_off(rest);
        taken.reverse();
        taken
    }
}

/// The first 16 bytes of a key, big-endian, zero-padded: when two keys' prefixes differ,
/// they order as the keys do (a key that ends inside it pads with zeros, below any byte of
/// a longer key it is a prefix of, and equal to a zero byte: a tie, which the whole keys
/// decide).
fn key_prefix(key: &[u8]) -> u128 {
    let mut bytes = [0u8; 16];
    let length = key.len().min(16);
    bytes[..length].copy_from_slice(&key[..length]);
    u128::from_be_bytes(bytes)
}

/// `members` in order (key bytes, then key group). A window's keys are many (every key
/// that had an event in it) and sit all over the heap: each is read once for its prefix,
/// and the sort compares prefixes in one array, reading whole keys only on a tie, rather
/// than two scattered keys per comparison (which showed as 4% of a worker's profile).
fn sort_members(members: Vec<SlotMember>) -> Vec<SlotMember> {
    let mut prefixed: Vec<(u128, SlotMember)> = members
        .into_iter()
        .map(|member| (key_prefix(&member.0), member))
        .collect();
    prefixed.sort_unstable_by(|(prefix, member), (other_prefix, other)| {
        prefix.cmp(other_prefix).then_with(|| member.cmp(other))
    });
    prefixed.into_iter().map(|(_, member)| member).collect()
}

/// Timers in memory, grouped by slot: all keys of a window fire at once, so a slot holds
/// many keys and adding one costs a hash insert.
#[derive(Default)]
struct MemoryTimers {
    slots: BTreeMap<TimerSlot, SlotMembers>,
    count: usize,
}

impl MemoryTimers {
    fn insert(&mut self, timer: Timer) {
        if self
            .slots
            .entry(TimerSlot::of(&timer))
            .or_default()
            .insert((timer.key, timer.key_group))
        {
            self.count += 1;
        }
    }

    fn remove(&mut self, timer: &Timer) {
        let slot = TimerSlot::of(timer);
        if let Some(members) = self.slots.get_mut(&slot) {
            if members.remove(&(timer.key.clone(), timer.key_group)) {
                self.count -= 1;
            }
            if members.is_empty() {
                self.slots.remove(&slot);
            }
        }
    }

    /// Removes and returns, in order, the timers due at or before `watermark` and not
    /// after `cutoff`; at most about `limit` of them (whole slots while they fit, then the
    /// first part of the next).
    fn pop_due(&mut self, watermark: Millis, cutoff: Option<&Timer>, limit: usize) -> Vec<Timer> {
        let mut due = Vec::new();
        while let Some(entry) = self.slots.first_entry() {
            let slot = *entry.key();
            if slot.time > watermark || cutoff.is_some_and(|cutoff| slot > TimerSlot::of(cutoff)) {
                break;
            }
            let partial = cutoff.filter(|cutoff| slot == TimerSlot::of(cutoff));
            let room = limit.saturating_sub(due.len());
            let (members, last) = match partial {
                None if entry.get().len() <= room => (entry.remove().into_sorted(), false),
                None => {
                    let members = entry.into_mut();
                    let taken = members.take_first(room);
                    if members.is_empty() {
                        self.slots.remove(&slot);
                    }
                    (taken, true)
                }
                Some(cutoff) => {
                    let members = entry.into_mut();
                    let taken = members.take_up_to(&(cutoff.key.clone(), cutoff.key_group));
                    if members.is_empty() {
                        self.slots.remove(&slot);
                    }
                    (taken, true)
                }
            };
            self.count -= members.len();
            due.extend(members.into_iter().map(|(key, key_group)| Timer {
                time: slot.time,
                kind: slot.kind,
                start: slot.start,
                end: slot.end,
                key,
                key_group,
            }));
            if last || due.len() >= limit {
                break;
            }
        }
        due
    }
}

impl Timer {
    /// The window.
    pub fn range(&self) -> WindowRange {
        WindowRange {
            start: self.start,
            end: self.end,
        }
    }

    fn store_key(&self) -> Vec<u8> {
        format::timer_key(
            self.time,
            self.kind.byte(),
            self.range(),
            self.key_group,
            &self.key,
        )
    }

    fn from_store_key(bytes: &[u8]) -> Option<Self> {
        let (time, kind, range, key_group, key) = format::decode_timer_key(bytes)?;
        Some(Self {
            time,
            kind: TimerKind::from_byte(kind)?,
            start: range.start,
            end: range.end,
            key: key.into(),
            key_group,
        })
    }
}

/// A pending timer of a cached key, held in memory (and in `timers` of the state).
#[derive(Clone, Copy, Debug, PartialEq)]
struct KeyTimer {
    time: Millis,
    kind: TimerKind,
    range: WindowRange,
    /// Whether the store holds a copy, written by a savepoint's checkpoint so that a start
    /// from it finds every timer. The copy comes due in the same
    /// [`KeyedWindowState::due_timers`] as this one (it sorts the same and is never
    /// behind the store scan), which runs the two once.
    in_store: bool,
}

impl KeyTimer {
    fn timer(&self, key: &Arc<[u8]>, key_group: KeyGroup) -> Timer {
        Timer {
            time: self.time,
            kind: self.kind,
            start: self.range.start,
            end: self.range.end,
            key: key.clone(),
            key_group,
        }
    }
}

struct CachedKey {
    key: Arc<[u8]>,
    key_group: KeyGroup,
    windows: Vec<WindowState>,
    /// Windows of this key that have an entry in the store.
    stored: Vec<WindowRange>,
    /// Stored windows to delete from the store when this key is written.
    removed: Vec<WindowRange>,
    /// Pending timers of this key held in memory (`timers` of the state).
    timers: Vec<KeyTimer>,
    /// Whether it may have changes the store lacks (it is then in `dirty_keys`).
    dirty: bool,
    /// The eviction epoch it was last used in.
    last_used: u64,
    /// How often it was used lately: one more per use after the first, one less per
    /// eviction epoch without use, at most [`MAX_HITS`] (see [`evicts`]).
    hits: u8,
}

/// The most [`CachedKey::hits`] counts: a key used often stays through this many
/// eviction epochs without use.
const MAX_HITS: u8 = 3;

/// The passes of an eviction, in order: each runs only while the cache is still above
/// its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EvictionPass {
    /// Keys not used again since they entered the cache (nearly all keys, when most
    /// are new): a key used often is kept, so its next event needs no read.
    Unproven,
    /// Keys not used since the last eviction.
    Idle,
    /// Any key.
    Any,
}

/// Whether `pass` evicts a key used `hits` times lately and last in epoch `last_used`,
/// in eviction epoch `epoch`.
fn evicts(pass: EvictionPass, hits: u8, last_used: u64, epoch: u64) -> bool {
    match pass {
        EvictionPass::Unproven => hits == 0,
        EvictionPass::Idle => last_used < epoch,
        EvictionPass::Any => true,
    }
}

impl CachedKey {
    /// Adds this key's changes to `batch`: deletes of its removed windows, puts of its
    /// new and changed ones. It is clean afterwards.
    fn write_changes(
        &mut self,
        batch: &mut StateBatch,
        stored_keys: &mut FxHashMap<u64, u32>,
        value: &mut Vec<u8>,
    ) {
        let hash = key_hash(&self.key);
        for range in self.removed.drain(..) {
            let mut state_key = Vec::new();
            format::window_key(self.key_group, &self.key, range, &mut state_key);
            batch.delete(Column::Windows, state_key);
            if let Some(count) = stored_keys.get_mut(&hash) {
                *count -= 1;
                if *count == 0 {
                    stored_keys.remove(&hash);
                }
            }
        }
        for window in &mut self.windows {
            let is_stored = self.stored.contains(&window.range);
            if is_stored && !window.changed {
                continue;
            }
            let mut state_key = Vec::new();
            format::window_key(self.key_group, &self.key, window.range, &mut state_key);
            format::window_value(
                format::window_flag(window.fired, window.end_passed),
                &window.accumulators,
                value,
            );
            batch.put(Column::Windows, state_key, value.clone());
            window.changed = false;
            if !is_stored {
                self.stored.push(window.range);
                *stored_keys.entry(hash).or_default() += 1;
            }
        }
        self.dirty = false;
    }

    /// Adds to `batch` a store copy of each of this key's memory timers that has none (a
    /// savepoint's checkpoint: the store then holds every timer). Returns the least store
    /// key written.
    fn write_timers(&mut self, batch: &mut StateBatch) -> Option<Vec<u8>> {
        let mut earliest: Option<Vec<u8>> = None;
        for key_timer in self.timers.iter_mut().filter(|timer| !timer.in_store) {
            let store_key = key_timer.timer(&self.key, self.key_group).store_key();
            if earliest.as_ref().is_none_or(|least| store_key < *least) {
                earliest = Some(store_key.clone());
            }
            batch.put(Column::Timers, store_key, Vec::new());
            key_timer.in_store = true;
        }
        earliest
    }
}

/// A checkpoint looks up its listed dirty keys one by one while there are fewer than one
/// for every this many cached keys, and passes over the whole cache otherwise: a lookup
/// costs about as much as passing over this many entries.
const DIRTY_LIST_PER_CACHED_KEY: usize = 8;

/// The hash of a key for [`KeyedWindowState::stored_keys`] (in memory only).
fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// How many memory timers [`KeyedWindowState::due_timers`] returns at most when no store
/// timer is due: the keys of a chunk stay in the CPU's caches between the lookups of
/// taking their timers and of firing their windows.
const MEMORY_TIMER_CHUNK: usize = 256;

/// How many timers one store scan returns. The windows of those whose key is not cached
/// are then read in one pass in key order, so a larger batch means more of them share
/// the blocks the pass reads.
const TIMER_SCAN_LIMIT: usize = 32_768;

/// From how many timers one store scan returns their deletion is one range deletion
/// rather than a delete each: a window fired in the store then costs no memtable insert
/// for its timer. Below it, deletes each, so that a run firing a few store timers at a
/// time does not pile up range tombstones, which every later read must step over.
const TIMER_RANGE_DELETE_FROM: usize = 256;

/// Whether the `scanned` timers one store scan returned are deleted with one range
/// deletion (see [`TIMER_RANGE_DELETE_FROM`]).
fn delete_timers_as_range(scanned: usize) -> bool {
    scanned >= TIMER_RANGE_DELETE_FROM
}

/// Sets the flag of a window entry whose end passed by [`format::end_passed`] with
/// `fired_through` to [`format::WINDOW_FIRED`]. Whether it changed it.
fn set_fired_flag(state_key: &[u8], value: &mut [u8], fired_through: Millis) -> bool {
    let Some(key) = format::key_of_window_key(state_key) else {
        return false;
    };
    let Some(range) = format::window_of_key(state_key, 6 + key.len()) else {
        return false;
    };
    match value.first_mut() {
        Some(flag)
            if *flag != format::WINDOW_FIRED
                && format::end_passed(*flag, range.end, fired_through) =>
        {
            *flag = format::WINDOW_FIRED;
            true
        }
        _ => false,
    }
}

/// Sets, in `store`, the flag of every window of `[from, to)` whose end passed by the
/// store's [`format::META_FIRED_THROUGH`] to [`format::WINDOW_FIRED`], so that the windows
/// say it themselves before
/// that watermark goes down (an import of windows that fired up to another one, a resume
/// behind it). The meta entry is left as it is. Returns the windows changed.
pub fn set_fired_flags(
    store: &mut dyn StateStore,
    from: &[u8],
    to: Option<&[u8]>,
) -> Result<u64, StateError> {
    const PAGE: usize = 65_536;
    let fired_through = format::fired_through_of(
        store
            .get(Column::Meta, format::META_FIRED_THROUGH)?
            .as_deref(),
    );
    if fired_through == Millis::MIN {
        return Ok(0);
    }
    let mut changed = 0;
    let mut from = from.to_vec();
    loop {
        let entries = store.scan_range(Column::Windows, &from, to, PAGE)?;
        let mut batch = StateBatch::default();
        for (state_key, mut value) in entries.iter().cloned() {
            if set_fired_flag(&state_key, &mut value, fired_through) {
                batch.put(Column::Windows, state_key, value);
                changed += 1;
            }
        }
        if !batch.is_empty() {
            store.write(batch)?;
        }
        match entries.last() {
            Some((last, _)) if entries.len() == PAGE => {
                from.clone_from(last);
                from.push(0);
            }
            _ => return Ok(changed),
        }
    }
}

/// The window a due timer is about, as [`KeyedWindowState::read_stored_windows`] found it.
#[derive(Clone, Debug, PartialEq)]
pub enum StoredWindow {
    /// The key is cached: the cache is the truth.
    Cached,
    /// Not read (the key is not cached, but the timer needs no read).
    NotRead,
    /// Read from the store: the window, or `None` when it is not there (a stale timer of
    /// a session merged away).
    Read(Option<WindowState>),
}

/// Whether a checkpoint writes the cached keys' timers to the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointTimers {
    /// They stay in memory only: a periodic checkpoint, which then costs nothing per
    /// timer. A start from it rebuilds every timer from the windows.
    InMemory,
    /// Each gets a store copy (once): a savepoint's checkpoint. A start from it takes the
    /// timers as stored, without a pass that writes them all again.
    InStore,
}

/// The windows of every key, cached, with their timers.
///
/// Timers of cached keys are held in memory; when a key is evicted its timers go to
/// the store with its windows, and come due from there. So memory is bounded by the
/// cache, and the store is only touched for keys that did not fit.
pub struct KeyedWindowState {
    store: Box<dyn StateStore>,
    cache: FxHashMap<Arc<[u8]>, CachedKey>,
    cached_windows: usize,
    cache_capacity: usize,
    epoch: u64,
    /// Timers of cached keys.
    timers: MemoryTimers,
    /// Writes to windows of keys not cached (fired or expired in the store) and deletes
    /// of processed store timers, written with the next batch and always before the
    /// store is read.
    pending_writes: StateBatch,
    /// Store timers below this key were processed (and deleted).
    timers_from: Vec<u8>,
    /// The earliest timer in the store not yet processed (`None`: none).
    next_store_timer: Option<Millis>,
    /// Windows with an entry in the store, per 64-bit hash of their key (keys sharing a
    /// hash share a count): a key missing from the cache whose hash has none is new, and
    /// the store is not read. Proportional to the open windows in the store, not history.
    stored_keys: FxHashMap<u64, u32>,
    /// The cached keys that became dirty since they were last written (and some that
    /// were evicted or written since: checked when read), so a checkpoint writes the
    /// changes without looking at every cached key.
    dirty_keys: Vec<Arc<[u8]>>,
    open_windows: u64,
    /// The allowed lateness expiry timers are computed with, recorded with the timers
    /// ([`format::META_TIMERS_COMPLETE`]).
    allowed_lateness: Millis,
    /// Whether the store's timers and the memory timers are every window's: not from an
    /// import or a retain until the rebuild that follows it.
    timers_complete: bool,
    /// Every window ending at or before it has fired, whatever its stored flag says
    /// ([`format::has_fired`]): the watermark of the last completed firing. So a window
    /// fired in the store is not written again to set its flag.
    fired_through: Millis,
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
            timers: MemoryTimers::default(),
            pending_writes: StateBatch::default(),
            timers_from: Vec::new(),
            next_store_timer: None,
            stored_keys: FxHashMap::default(),
            dirty_keys: Vec::new(),
            open_windows: 0,
            allowed_lateness: 0,
            timers_complete: true,
            fired_through: Millis::MIN,
            scratch: Vec::new(),
        }
    }

    /// Sets the allowed lateness the window operator computes expiry timers with: the
    /// timers a checkpoint records are marked with it.
    pub fn set_allowed_lateness(&mut self, allowed_lateness: Millis) {
        self.allowed_lateness = allowed_lateness;
    }

    /// Windows with state now (kept incrementally; see also [`Self::count_stored_windows`]).
    pub fn open_windows(&self) -> u64 {
        self.open_windows
    }

    /// Windows held in the cache.
    pub fn cached_windows(&self) -> usize {
        self.cached_windows
    }

    /// Every window ending at or before `watermark` has fired (the window operator
    /// finished firing up to it): their stored flags need not say so.
    pub fn fired_through(&mut self, watermark: Millis) {
        self.fired_through = self.fired_through.max(watermark);
    }

    /// The windows of a key, loaded into the cache if needed, for reading and changing.
    /// Call [`Self::windows_changed`] after changing their number.
    pub fn windows_mut(
        &mut self,
        key_group: KeyGroup,
        key: &[u8],
    ) -> Result<&mut Vec<WindowState>, StateError> {
        let mut hit = true;
        if !self.cache.contains_key(key) {
            if self.cached_windows >= self.cache_capacity {
                self.evict()?;
            }
            if self.dirty_keys.len() > 2 * self.cache.len() + 1024 {
                // Keys evicted or written since outnumber the dirty ones: list them anew.
                // (Only a key entering the cache makes the list grow between checkpoints.)
                self.dirty_keys = self
                    .cache
                    .values()
                    .filter(|entry| entry.dirty)
                    .map(|entry| entry.key.clone())
                    .collect();
            }
            let windows = if !self.stored_keys.contains_key(&key_hash(key)) {
                Vec::new()
            } else {
                self.load(key_group, key)?
            };
            self.cached_windows += windows.len();
            let loaded = !windows.is_empty();
            let key: Arc<[u8]> = key.into();
            self.cache.insert(
                key.clone(),
                CachedKey {
                    key,
                    key_group,
                    stored: windows.iter().map(|window| window.range).collect(),
                    windows,
                    removed: Vec::new(),
                    timers: Vec::new(),
                    dirty: false,
                    last_used: self.epoch,
                    // A key read back from the store was used before: it counts once.
                    hits: u8::from(loaded),
                },
            );
            hit = false;
        }
        let entry = self.cache.get_mut(key).ok_or_else(|| StateError {
            action: "cache a key",
            message: "the key vanished from the cache".into(),
        })?;
        entry.last_used = self.epoch;
        if hit {
            entry.hits = entry.hits.saturating_add(1).min(MAX_HITS);
        }
        if !entry.dirty {
            entry.dirty = true;
            self.dirty_keys.push(entry.key.clone());
        }
        Ok(&mut entry.windows)
    }

    /// Whether a key is in the cache.
    pub fn is_cached(&self, key: &[u8]) -> bool {
        self.cache.contains_key(key)
    }

    /// Deletes a window of a key that is not cached straight from the store, without
    /// reading it (an expiry: the window is known to be stored).
    pub fn delete_stored_window(&mut self, key_group: KeyGroup, key: &[u8], range: WindowRange) {
        let mut state_key = Vec::new();
        format::window_key(key_group, key, range, &mut state_key);
        self.pending_writes.delete(Column::Windows, state_key);
        let hash = key_hash(key);
        if let Some(count) = self.stored_keys.get_mut(&hash) {
            *count -= 1;
            if *count == 0 {
                self.stored_keys.remove(&hash);
            }
        }
        self.open_windows -= 1;
    }

    /// Marks a key as not used by its last [`Self::windows_mut`]: that was to fire or
    /// expire a window, which says nothing of its next event.
    pub fn release(&mut self, key: &[u8]) {
        if let Some(entry) = self.cache.get_mut(key) {
            entry.last_used = 0;
            entry.hits = entry.hits.saturating_sub(1);
        }
    }

    /// Records that a key gained `added` windows and lost the `removed` ones (their
    /// timers are dropped and their store entries deleted).
    pub fn windows_changed(&mut self, key: &[u8], added: usize, removed: &[WindowRange]) {
        self.open_windows += added as u64;
        self.open_windows -= removed.len() as u64;
        self.cached_windows += added;
        self.cached_windows -= removed.len();
        let Some(entry) = self.cache.get_mut(key) else {
            return;
        };
        for range in removed {
            if let Some(index) = entry.stored.iter().position(|stored| stored == range) {
                entry.stored.swap_remove(index);
                entry.removed.push(*range);
            }
            // A store copy of a removed window's timer stays: it is stale (a session merged
            // away), and firing skips it when it comes due.
            let timers = &mut self.timers;
            entry.timers.retain(|key_timer| {
                if key_timer.range == *range {
                    timers.remove(&key_timer.timer(&entry.key, entry.key_group));
                    false
                } else {
                    true
                }
            });
        }
        if entry.windows.is_empty() && entry.removed.is_empty() && entry.timers.is_empty() {
            self.cache.remove(key);
        }
    }

    fn load(&mut self, key_group: KeyGroup, key: &[u8]) -> Result<Vec<WindowState>, StateError> {
        self.flush_pending_writes()?;
        format::key_prefix(key_group, key, &mut self.scratch);
        let prefix_length = self.scratch.len();
        let entries = self.store.scan_prefix(Column::Windows, &self.scratch)?;
        let mut windows = Vec::with_capacity(entries.len());
        for (state_key, value) in entries {
            let (range, (fired, accumulators)) = format::window_of_key(&state_key, prefix_length)
                .zip(format::decode_window_value(&value))
                .ok_or_else(|| StateError {
                    action: "decode window state",
                    message: format!("malformed entry of {} bytes", value.len()),
                })?;
            windows.push(WindowState {
                range,
                fired: format::has_fired(fired, range.end, self.fired_through),
                end_passed: format::end_passed(fired, range.end, self.fired_through),
                accumulators,
                changed: false,
            });
        }
        Ok(windows)
    }

    /// Drops the keys `evict` chooses from the cache, writing their changes and their
    /// in-memory timers to the store; with `write_all`, also writes the changes of the
    /// keys kept (a checkpoint).
    fn write_back(
        &mut self,
        write_all: bool,
        mut evict: impl FnMut(&mut CachedKey) -> bool,
    ) -> Result<(), StateError> {
        let mut batch = std::mem::take(&mut self.pending_writes);
        let mut value = Vec::new();
        let mut evicted_windows = 0;
        let stored_keys = &mut self.stored_keys;
        let mut earliest_timer_key: Option<Vec<u8>> = None;
        let timers = &mut self.timers;
        self.cache.retain(|_, entry| {
            let evicted = evict(entry);
            if entry.dirty && (evicted || write_all) {
                entry.write_changes(&mut batch, stored_keys, &mut value);
            }
            if evicted {
                evicted_windows += entry.windows.len();
                for key_timer in entry.timers.drain(..) {
                    let timer = key_timer.timer(&entry.key, entry.key_group);
                    timers.remove(&timer);
                    if key_timer.in_store {
                        continue;
                    }
                    let store_key = timer.store_key();
                    if earliest_timer_key
                        .as_ref()
                        .is_none_or(|earliest| store_key < *earliest)
                    {
                        earliest_timer_key = Some(store_key.clone());
                    }
                    batch.put(Column::Timers, store_key, Vec::new());
                }
            }
            !evicted
        });
        self.cached_windows -= evicted_windows;
        if let Some(earliest) = earliest_timer_key {
            // (An expiry scheduled while firing can be earlier than the last store timer
            // fired: the scan starts again from there.)
            self.note_store_timer(earliest);
        }
        if !batch.is_empty() {
            self.store.write(batch)?;
        }
        Ok(())
    }

    /// Makes room: writes back and drops keys until the cache is at 80% of its
    /// capacity, first those not used again since they entered it, then those not used
    /// since the last eviction, then any (see [`evicts`]). The keys kept that were not
    /// used since the last eviction count one use less.
    fn evict(&mut self) -> Result<(), StateError> {
        let target = self.cache_capacity / 5 * 4;
        let epoch = self.epoch;
        for pass in [
            EvictionPass::Unproven,
            EvictionPass::Idle,
            EvictionPass::Any,
        ] {
            let mut excess = self.cached_windows.saturating_sub(target);
            if excess == 0 && pass != EvictionPass::Unproven {
                break;
            }
            self.write_back(false, |entry| {
                if excess > 0 && evicts(pass, entry.hits, entry.last_used, epoch) {
                    excess = excess.saturating_sub(entry.windows.len().max(1));
                    return true;
                }
                if pass == EvictionPass::Unproven && entry.last_used < epoch {
                    entry.hits = entry.hits.saturating_sub(1);
                }
                false
            })?;
        }
        self.epoch += 1;
        Ok(())
    }

    /// Schedules a timer for a window of a cached key (one just returned by
    /// [`Self::windows_mut`]).
    pub fn add_timer(
        &mut self,
        time: Millis,
        kind: TimerKind,
        range: WindowRange,
        key_group: KeyGroup,
        key: &[u8],
    ) {
        let Some(entry) = self.cache.get_mut(key) else {
            return;
        };
        let key_timer = KeyTimer {
            time,
            kind,
            range,
            in_store: false,
        };
        entry.timers.push(key_timer);
        self.timers.insert(key_timer.timer(&entry.key, key_group));
    }

    /// Drops a pending timer of a window of a cached key (one just returned by
    /// [`Self::windows_mut`]): its memory copy, and its store copy (a savepoint's, or from
    /// an eviction or a rebuild) with the next write. A window that is to fire again keeps
    /// only that timer, not its expiry besides.
    pub fn remove_timer(
        &mut self,
        time: Millis,
        kind: TimerKind,
        range: WindowRange,
        key_group: KeyGroup,
        key: &[u8],
    ) {
        let Some(entry) = self.cache.get_mut(key) else {
            return;
        };
        entry.timers.retain(|key_timer| {
            key_timer.time != time || key_timer.kind != kind || key_timer.range != range
        });
        let timer = KeyTimer {
            time,
            kind,
            range,
            in_store: false,
        }
        .timer(&entry.key, key_group);
        self.timers.remove(&timer);
        self.pending_writes
            .delete(Column::Timers, timer.store_key());
    }

    /// The next timers due at or before `watermark`, in order, from memory and from the
    /// store; empty when none is due. They are removed. Not necessarily all of them (see
    /// [`MEMORY_TIMER_CHUNK`]): call again until it returns none.
    pub fn due_timers(&mut self, watermark: Millis) -> Result<Vec<Timer>, StateError> {
        let mut from_store = Vec::new();
        let mut store_exhausted = true;
        if self.next_store_timer.is_some_and(|next| next <= watermark) {
            self.flush_pending_writes()?;
            let upper = watermark
                .checked_add(1)
                .map(|after| format::time_bytes(after).to_vec());
            let keys = self.store.scan_keys(
                Column::Timers,
                &self.timers_from,
                upper.as_deref(),
                TIMER_SCAN_LIMIT,
            )?;
            store_exhausted = keys.len() < TIMER_SCAN_LIMIT;
            let as_range = delete_timers_as_range(keys.len());
            for timer_key in &keys {
                let timer = Timer::from_store_key(timer_key).ok_or_else(|| StateError {
                    action: "decode a timer",
                    message: format!("malformed timer of {} bytes", timer_key.len()),
                })?;
                from_store.push(timer);
                if !as_range {
                    self.pending_writes
                        .delete(Column::Timers, timer_key.clone());
                }
            }
            if let Some(last) = keys.last() {
                let mut after_last = last.clone();
                after_last.push(0);
                if as_range {
                    // Every timer in [timers_from, last] is one just read (pending
                    // writes were written before the scan). Written now, the deletion
                    // precedes any timer put from here on, even one in that range.
                    self.store
                        .delete_range(Column::Timers, &self.timers_from, &after_last)?;
                }
                self.timers_from = after_last;
            }
            if store_exhausted {
                self.flush_pending_writes()?;
                let next = self
                    .store
                    .scan_keys(Column::Timers, &self.timers_from, None, 1)?;
                self.next_store_timer = next
                    .first()
                    .and_then(|key| key.first_chunk::<8>())
                    .map(|bytes| format::time_from_bytes(*bytes));
            }
        }
        // Memory timers up to the watermark, and not past the last store timer when the
        // store has more: the two lists then merge in order.
        let cutoff = if store_exhausted {
            None
        } else {
            from_store.last().cloned()
        };
        // Alone, memory timers come in chunks: the caller then works through a chunk's keys
        // while the lookups here left them in the CPU's caches (a window can have hundreds
        // of thousands). With store timers, all up to the last of them, to merge in order.
        let limit = if from_store.is_empty() {
            MEMORY_TIMER_CHUNK
        } else {
            usize::MAX
        };
        let from_memory = self.timers.pop_due(watermark, cutoff.as_ref(), limit);
        for timer in &from_memory {
            if let Some(entry) = self.cache.get_mut(&timer.key) {
                let range = timer.range();
                if let Some(index) = entry.timers.iter().position(|key_timer| {
                    key_timer.time == timer.time
                        && key_timer.kind == timer.kind
                        && key_timer.range == range
                }) {
                    entry.timers.swap_remove(index);
                }
            }
        }
        if from_store.is_empty() {
            return Ok(from_memory);
        }
        let mut merged = Vec::with_capacity(from_store.len() + from_memory.len());
        let mut memory = from_memory.into_iter().peekable();
        for timer in from_store {
            while memory.peek().is_some_and(|first| *first < timer) {
                merged.extend(memory.next());
            }
            merged.push(timer);
        }
        merged.extend(memory);
        // A memory timer a checkpoint wrote to the store comes due from both (the copy
        // is at or after `timers_from`, so it is scanned whenever the memory timer is
        // popped, and the other way round), and a key evicted with a timer and loaded
        // again can schedule the same timer anew (an event re-creates or extends a
        // session to the same range): the store copy and the memory copy are equal, so
        // they sit side by side here. Running both would fire the window twice.
        merged.dedup();
        Ok(merged)
    }

    /// The windows of `timers` (due timers, in order) whose key is not cached, read from
    /// the store in one forward pass in key-group/key/window order rather than a seek
    /// each; expiries are read only with `read_expiries`. One per timer.
    pub fn read_stored_windows(
        &mut self,
        timers: &[Timer],
        read_expiries: bool,
    ) -> Result<Vec<StoredWindow>, StateError> {
        let mut found = Vec::with_capacity(timers.len());
        let mut wanted = Vec::new();
        for (index, timer) in timers.iter().enumerate() {
            if self.cache.contains_key(&timer.key) {
                found.push(StoredWindow::Cached);
                continue;
            }
            found.push(StoredWindow::NotRead);
            if timer.kind == TimerKind::Fire || read_expiries {
                let mut state_key = Vec::new();
                format::window_key(timer.key_group, &timer.key, timer.range(), &mut state_key);
                wanted.push((state_key, index));
            }
        }
        if wanted.is_empty() {
            return Ok(found);
        }
        self.flush_pending_writes()?;
        wanted.sort_unstable();
        let (keys, indices): (Vec<Vec<u8>>, Vec<usize>) = wanted.into_iter().unzip();
        let values = self.store.get_sorted(Column::Windows, &keys)?;
        for ((index, value), state_key) in indices.into_iter().zip(values).zip(&keys) {
            let window = match value {
                None => None,
                Some(value) => Some(self.decode_window(state_key, &value)?),
            };
            found[index] = StoredWindow::Read(window);
        }
        Ok(found)
    }

    fn decode_window(&self, state_key: &[u8], value: &[u8]) -> Result<WindowState, StateError> {
        let malformed = || StateError {
            action: "decode window state",
            message: format!("malformed entry of {} bytes", value.len()),
        };
        let key = format::key_of_window_key(state_key).ok_or_else(malformed)?;
        let range = format::window_of_key(state_key, 6 + key.len()).ok_or_else(malformed)?;
        let (fired, accumulators) = format::decode_window_value(value).ok_or_else(malformed)?;
        Ok(WindowState {
            range,
            fired: format::has_fired(fired, range.end, self.fired_through),
            end_passed: format::end_passed(fired, range.end, self.fired_through),
            accumulators,
            changed: false,
        })
    }

    /// One window of a key that is not cached, as stored (`None`: not stored).
    pub fn stored_window(
        &mut self,
        key_group: KeyGroup,
        key: &[u8],
        range: WindowRange,
    ) -> Result<Option<WindowState>, StateError> {
        self.flush_pending_writes()?;
        let mut state_key = Vec::new();
        format::window_key(key_group, key, range, &mut state_key);
        match self.store.get(Column::Windows, &state_key)? {
            Some(value) => self.decode_window(&state_key, &value).map(Some),
            None => Ok(None),
        }
    }

    /// Records in the store that `window` of a key that is not cached fired (its result
    /// was emitted) at `watermark`: with allowed lateness it is kept and expires at its
    /// end plus the lateness; when that is already past (no lateness), it is deleted. The
    /// key is not loaded into the cache, and the window is not written again: its end is
    /// at or before the watermark, so it counts as fired once the firing completes
    /// ([`Self::fired_through`]).
    pub fn fire_stored_window(
        &mut self,
        key_group: KeyGroup,
        key: &[u8],
        window: &WindowState,
        allowed_lateness: Millis,
        watermark: Millis,
    ) {
        if window.range.end.saturating_add(allowed_lateness) <= watermark {
            // It expires at once too (no lateness, or the watermark jumped past it).
            self.delete_stored_window(key_group, key, window.range);
            return;
        }
        let expire = Timer {
            time: window.range.end.saturating_add(allowed_lateness),
            kind: TimerKind::Expire,
            start: window.range.start,
            end: window.range.end,
            key: key.into(),
            key_group,
        };
        let store_key = expire.store_key();
        self.next_store_timer = Some(
            self.next_store_timer
                .map_or(expire.time, |next| next.min(expire.time)),
        );
        if store_key < self.timers_from {
            // Earlier than store timers already processed (a watermark that jumped past
            // the expiry too): scan again from it (the processed ones are deleted first).
            self.timers_from.clone_from(&store_key);
        }
        self.pending_writes
            .put(Column::Timers, store_key, Vec::new());
    }

    fn flush_pending_writes(&mut self) -> Result<(), StateError> {
        if !self.pending_writes.is_empty() {
            let batch = std::mem::take(&mut self.pending_writes);
            self.store.write(batch)?;
        }
        Ok(())
    }

    /// Writes every change of the cached keys to the store, keeping the cache (timers of
    /// cached keys stay in memory).
    pub fn checkpoint(&mut self) -> Result<(), StateError> {
        self.persist_changes(StateBatch::default(), CheckpointTimers::InMemory, None)
    }

    /// [`Self::checkpoint`] for checkpoint `id`, writing `batch` (its record) in the same
    /// write batch: one atomic write of what changed since the last one, found through the
    /// list of dirty keys rather than a look at every cached key. With
    /// [`CheckpointTimers::InStore`], every cached key's timers get a store copy too, and
    /// the store is marked as holding every timer of checkpoint `id`
    /// ([`format::META_TIMERS_COMPLETE`]).
    pub fn checkpoint_with(
        &mut self,
        batch: StateBatch,
        timers: CheckpointTimers,
        id: u64,
    ) -> Result<(), StateError> {
        self.persist_changes(batch, timers, Some(id))
    }

    /// What [`Self::checkpoint_with`] does; `None` for a write that is no checkpoint of
    /// the engine (the mark of complete timers then goes).
    fn persist_changes(
        &mut self,
        mut batch: StateBatch,
        timers: CheckpointTimers,
        checkpoint: Option<u64>,
    ) -> Result<(), StateError> {
        batch
            .operations
            .append(&mut std::mem::take(&mut self.pending_writes).operations);
        batch.put(
            Column::Meta,
            format::META_FIRED_THROUGH.to_vec(),
            format::time_bytes(self.fired_through).to_vec(),
        );
        let mut value = Vec::new();
        let listed = std::mem::take(&mut self.dirty_keys);
        let mut earliest_timer: Option<Vec<u8>> = None;
        if timers == CheckpointTimers::InStore {
            // Every cached key: a key written by an earlier checkpoint is clean, and its
            // timers may still be in memory only.
            for entry in self.cache.values_mut() {
                if entry.dirty {
                    entry.write_changes(&mut batch, &mut self.stored_keys, &mut value);
                }
                if let Some(written) = entry.write_timers(&mut batch)
                    && earliest_timer
                        .as_ref()
                        .is_none_or(|earliest| written < *earliest)
                {
                    earliest_timer = Some(written);
                }
            }
        } else if listed.len().saturating_mul(DIRTY_LIST_PER_CACHED_KEY) >= self.cache.len() {
            // Many keys entered the cache since the last checkpoint (most of them evicted
            // and written since): a pass over the cache, in memory order, checks each
            // entry's flag in place, where looking up each listed key is a few cache
            // misses apiece (1.6 s for 400,000 listed and 119,000 dirty, the most of a
            // savepoint's pause at 1.3 GiB in bench/README.md). Every dirty entry is
            // listed, so both passes write the same entries.
            for entry in self.cache.values_mut().filter(|entry| entry.dirty) {
                entry.write_changes(&mut batch, &mut self.stored_keys, &mut value);
            }
        } else {
            for key in listed {
                if let Some(entry) = self.cache.get_mut(&key)
                    && entry.dirty
                {
                    entry.write_changes(&mut batch, &mut self.stored_keys, &mut value);
                }
            }
        }
        if let Some(earliest) = earliest_timer {
            self.note_store_timer(earliest);
        }
        // The store holds every timer when the cached keys' timers were just written, or
        // when none is in memory.
        if let Some(id) = checkpoint
            && self.timers_complete
            && (timers == CheckpointTimers::InStore || self.timers.count == 0)
        {
            batch.put(
                Column::Meta,
                format::META_TIMERS_COMPLETE.to_vec(),
                format::timers_complete_value(self.allowed_lateness, id),
            );
        } else {
            batch.delete(Column::Meta, format::META_TIMERS_COMPLETE.to_vec());
        }
        self.store.write(batch)
    }

    /// Accounts for timers written to the store, the least of which is `store_key`:
    /// [`Self::next_store_timer`] is no later than it, and the next scan starts no later
    /// than it, even when store timers after it were processed already.
    fn note_store_timer(&mut self, store_key: Vec<u8>) {
        if let Some(bytes) = store_key.first_chunk::<8>() {
            let time = format::time_from_bytes(*bytes);
            self.next_store_timer = Some(self.next_store_timer.map_or(time, |next| next.min(time)));
        }
        if store_key < self.timers_from {
            self.timers_from = store_key;
        }
    }

    /// Makes the in-memory bookkeeping agree with what the store holds, after the store
    /// was restored or filled from elsewhere: the cache and memory timers are emptied and
    /// the counts of stored windows recomputed, in one scan of the windows. When the store
    /// was `restored` to a checkpoint that records its timers complete at the allowed
    /// lateness set ([`Self::set_allowed_lateness`], [`format::META_TIMERS_COMPLETE`]),
    /// they are taken as they are; otherwise
    /// every timer is rebuilt from window state in the same scan.
    pub fn rebuild_from_store(&mut self, restored: Option<u64>) -> Result<(), StateError> {
        const PAGE: usize = 65_536;
        let allowed_lateness = self.allowed_lateness;
        self.cache.clear();
        self.dirty_keys.clear();
        self.cached_windows = 0;
        self.timers = MemoryTimers::default();
        self.pending_writes = StateBatch::default();
        self.timers_from.clear();
        self.next_store_timer = None;
        self.stored_keys.clear();
        self.open_windows = 0;
        self.fired_through = format::fired_through_of(
            self.store
                .get(Column::Meta, format::META_FIRED_THROUGH)?
                .as_deref(),
        );
        // After a restore from several parts: the key groups whose windows fired further.
        let ranges: Vec<format::FiredThroughRange> = match self
            .store
            .get(Column::Meta, format::META_FIRED_THROUGH_RANGES)?
        {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|error| StateError {
                action: "read the fired-through ranges",
                message: error.to_string(),
            })?,
            None => Vec::new(),
        };
        let mark = match restored {
            Some(_) => self.store.get(Column::Meta, format::META_TIMERS_COMPLETE)?,
            None => None,
        };
        let keep_timers = restored.is_some_and(|id| {
            mark.as_deref().and_then(format::timers_complete_of) == Some((allowed_lateness, id))
        });
        if !keep_timers {
            self.store.clear(Column::Timers)?;
        }
        // Nothing to write (no timer, no flag): one pass over the keys alone counts the
        // windows.
        let count_only = keep_timers && ranges.is_empty();
        if count_only {
            let stored_keys = &mut self.stored_keys;
            let open_windows = &mut self.open_windows;
            self.store.visit_keys(Column::Windows, &mut |state_key| {
                let key = format::key_of_window_key(state_key).ok_or_else(|| StateError {
                    action: "count the windows",
                    message: format!("malformed window entry of {} bytes", state_key.len()),
                })?;
                *stored_keys.entry(key_hash(key)).or_default() += 1;
                *open_windows += 1;
                Ok(())
            })?;
        } else {
            let mut from = Vec::new();
            // The timers go to the store as a bulk load of runs of about this many bytes
            // of keys, each sorted and written beside the scan: written through the
            // write buffers, millions of them waited on flushes and compactions
            // (bench/README.md, "A start from a periodic checkpoint").
            const TIMER_RUN_BYTES: usize = 64 << 20;
            let mut load = (!keep_timers)
                .then(|| self.store.bulk_load(Column::Timers))
                .transpose()?;
            let mut timer_run: Vec<Vec<u8>> = Vec::new();
            let mut timer_run_bytes = 0;
            loop {
                let entries = self.store.scan_range(Column::Windows, &from, None, PAGE)?;
                let mut flags = StateBatch::default();
                for (state_key, value) in &entries {
                    let malformed = || StateError {
                        action: "rebuild timers",
                        message: format!("malformed window entry of {} bytes", state_key.len()),
                    };
                    let key = format::key_of_window_key(state_key).ok_or_else(malformed)?;
                    let key_group =
                        format::key_group_of_window_key(state_key).ok_or_else(malformed)?;
                    let range =
                        format::window_of_key(state_key, 6 + key.len()).ok_or_else(malformed)?;
                    *self.stored_keys.entry(key_hash(key)).or_default() += 1;
                    self.open_windows += 1;
                    let flag = *value.first().ok_or_else(malformed)?;
                    let fired_through =
                        format::fired_through_of_group(&ranges, key_group, self.fired_through);
                    let end_passed = format::end_passed(flag, range.end, fired_through);
                    if end_passed && !format::end_passed(flag, range.end, self.fired_through) {
                        // Fired by its part's watermark only: the flag says it from now on.
                        let mut value = value.clone();
                        value[0] = format::WINDOW_FIRED;
                        flags.put(Column::Windows, state_key.clone(), value);
                    }
                    if keep_timers {
                        continue;
                    }
                    let (time, kind) = format::timer_of_window(range, end_passed, allowed_lateness);
                    let timer_key = format::timer_key(time, kind, range, key_group, key);
                    timer_run_bytes += timer_key.len();
                    timer_run.push(timer_key);
                    self.next_store_timer =
                        Some(self.next_store_timer.map_or(time, |next| next.min(time)));
                }
                if !flags.is_empty() {
                    self.store.write(flags)?;
                }
                if timer_run_bytes >= TIMER_RUN_BYTES
                    && let Some(load) = &mut load
                {
                    load.add(std::mem::take(&mut timer_run))?;
                    timer_run_bytes = 0;
                }
                match entries.last() {
                    Some((last, _)) if entries.len() == PAGE => {
                        from.clone_from(last);
                        from.push(0);
                    }
                    _ => break,
                }
            }
            if let Some(mut load) = load {
                load.add(timer_run)?;
                self.store.finish_bulk_load(load)?;
            }
        }
        if keep_timers {
            let first = self.store.scan_keys(Column::Timers, &[], None, 1)?;
            self.next_store_timer = first
                .first()
                .and_then(|key| key.first_chunk::<8>())
                .map(|bytes| format::time_from_bytes(*bytes));
        }
        self.timers_complete = true;
        if !ranges.is_empty() {
            let mut batch = StateBatch::default();
            batch.delete(Column::Meta, format::META_FIRED_THROUGH_RANGES.to_vec());
            self.store.write(batch)?;
        }
        Ok(())
    }

    /// The state resumes at operator watermark `watermark`. When that is behind what
    /// fired here (a record of another worker), the windows ending between the two fired
    /// but the watermark would no longer say so: every fired window gets its flag set
    /// first, then `fired_through` follows the watermark down.
    pub fn resume_at(&mut self, watermark: Millis) -> Result<(), StateError> {
        if watermark >= self.fired_through {
            return Ok(());
        }
        self.checkpoint()?;
        set_fired_flags(self.store.as_mut(), &[], None)?;
        self.fired_through = watermark;
        self.checkpoint()
    }

    /// The window entries of key groups `[first, end)`, as stored (after writing the
    /// cache back) with the flag of every fired window set: what moves to another worker
    /// when a job rescales, whose windows fired up to another watermark.
    pub fn export_key_groups(&mut self, first: u32, end: u32) -> Result<Entries, StateError> {
        self.checkpoint()?;
        let mut entries = self.store.scan_range(
            Column::Windows,
            &format::key_group_start(first),
            Some(&format::key_group_start(end)),
            usize::MAX,
        )?;
        for (state_key, value) in &mut entries {
            set_fired_flag(state_key, value, self.fired_through);
        }
        Ok(entries)
    }

    /// Adds window entries exported from another store (each fired one flagged, see
    /// [`Self::export_key_groups`]). The windows held here get their flags set first,
    /// and the store forgets its fired-through watermark: it would say that imported
    /// windows fired that did not. Call [`Self::rebuild_from_store`] once every import
    /// is done.
    pub fn import(&mut self, entries: Entries) -> Result<(), StateError> {
        self.checkpoint()?;
        set_fired_flags(self.store.as_mut(), &[], None)?;
        self.fired_through = Millis::MIN;
        self.timers_complete = false;
        let mut batch = StateBatch::default();
        batch.delete(Column::Meta, format::META_FIRED_THROUGH.to_vec());
        batch.delete(Column::Meta, format::META_TIMERS_COMPLETE.to_vec());
        for (key, value) in entries {
            batch.put(Column::Windows, key, value);
        }
        self.store.write(batch)
    }

    /// Deletes the window state of every key group outside `[first, end)`: after a
    /// rescale, the groups another worker owns now. Call [`Self::rebuild_from_store`]
    /// after.
    pub fn retain_key_groups(&mut self, first: u32, end: u32) -> Result<(), StateError> {
        // The timers of the windows deleted stay behind until the rebuild.
        self.timers_complete = false;
        let mut batch = StateBatch::default();
        batch.delete(Column::Meta, format::META_TIMERS_COMPLETE.to_vec());
        self.store.write(batch)?;
        self.store
            .delete_range(Column::Windows, &[], &format::key_group_start(first))?;
        self.store.delete_range(
            Column::Windows,
            &format::key_group_start(end),
            &format::key_group_start(u32::MAX),
        )
    }

    /// The store, for what lies beyond window state (the meta column, checkpoints).
    pub fn store(&mut self) -> &mut dyn StateStore {
        self.store.as_mut()
    }

    /// Writes everything back and empties the cache, so the store holds all state.
    pub fn evict_all(&mut self) -> Result<(), StateError> {
        self.write_back(true, |_| true)?;
        self.dirty_keys.clear();
        self.flush_pending_writes()
    }

    /// Window entries in the store once the cache is written back: equals
    /// [`Self::open_windows`] when no state leaks.
    pub fn count_stored_windows(&mut self) -> Result<u64, StateError> {
        self.checkpoint()?;
        self.store.count(Column::Windows)
    }

    /// Timers pending, in the store and in memory only (not counting memory timers
    /// twice when a checkpoint wrote them to the store too).
    pub fn count_timers(&mut self) -> Result<u64, StateError> {
        self.flush_pending_writes()?;
        let in_memory_only = self
            .cache
            .values()
            .flat_map(|entry| &entry.timers)
            .filter(|key_timer| !key_timer.in_store)
            .count();
        Ok(in_memory_only as u64 + self.store.count(Column::Timers)?)
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
            end_passed: false,
            accumulators: vec![Accumulator::new(AggregateFunction::Count)],
            changed: true,
        }
    }

    proptest::proptest! {
        /// Keys from a small alphabet with a zero byte, lengths around the 16-byte prefix,
        /// so that prefixes tie, keys end inside and past it, and equal keys differ by
        /// group.
        #[test]
        fn the_keys_of_a_slot_sort_as_their_bytes_and_groups_do(
            members in proptest::collection::vec(
                (proptest::collection::vec(proptest::sample::select(vec![0u8, 1, b'a', 255]), 0..20), 0u16..3),
                0..64,
            )
        ) {
            let members: Vec<SlotMember> = members
                .into_iter()
                .map(|(key, group)| (Arc::from(key), group))
                .collect();
            let mut expected = members.clone();
            expected.sort();
            proptest::prop_assert_eq!(sort_members(members), expected);
        }
    }

    proptest::proptest! {
        /// Taken in chunks of any size, with keys added to and removed from a slot taken
        /// in part, memory timers come due as taking them all at once gives them: in
        /// order, each once, those past the watermark kept.
        #[test]
        fn memory_timers_taken_in_chunks_come_as_taken_at_once(
            timers in proptest::collection::vec((0i64..4, 0u8..40), 0..120),
            changes in proptest::collection::vec((proptest::bool::ANY, 0i64..4, 0u8..40), 0..10),
            limit in 1usize..50,
        ) {
            let timer = |time: Millis, key: u8| Timer {
                time,
                kind: TimerKind::Fire,
                start: time - 10,
                end: time,
                key: Arc::from(format!("k{key}").as_bytes()),
                key_group: u16::from(key % 3),
            };
            let mut chunked = MemoryTimers::default();
            let mut at_once = MemoryTimers::default();
            for (time, key) in &timers {
                chunked.insert(timer(*time, *key));
                at_once.insert(timer(*time, *key));
            }
            let watermark = 2;
            let mut taken = chunked.pop_due(watermark, None, limit);
            proptest::prop_assert!(taken.len() <= limit);
            // Changes to slots after the first chunk (a slot may be taken in part), made
            // to both: what is due afterwards must still agree.
            for (add, time, key) in &changes {
                let changed = timer(*time, *key);
                // (none goes before what was taken: a firing adds only later timers)
                if taken.last().is_some_and(|last| changed <= *last) {
                    continue;
                }
                if *add {
                    chunked.insert(changed.clone());
                    at_once.insert(changed);
                } else {
                    chunked.remove(&changed);
                    at_once.remove(&changed);
                }
            }
            loop {
                let chunk = chunked.pop_due(watermark, None, limit);
                proptest::prop_assert!(chunk.len() <= limit);
                if chunk.is_empty() {
                    break;
                }
                taken.extend(chunk);
            }
            proptest::prop_assert_eq!(&taken, &at_once.pop_due(watermark, None, usize::MAX));
            proptest::prop_assert!(taken.windows(2).all(|pair| pair[0] < pair[1]), "not in order");
            proptest::prop_assert_eq!(chunked.count, at_once.count);
            proptest::prop_assert_eq!(
                chunked.pop_due(Millis::MAX, None, usize::MAX),
                at_once.pop_due(Millis::MAX, None, usize::MAX)
            );
        }
    }

    /// A store holding, for key `k1` of key group 1 and key `k9` of key group 9, windows
    /// [0, 10) and [10, 20), all with their fired flag unset.
    fn unflagged_windows() -> MemoryStore {
        let mut store = MemoryStore::default();
        let mut batch = StateBatch::default();
        for group in [1, 9] {
            for (start, end) in [(0, 10), (10, 20)] {
                let mut key = Vec::new();
                let name = format!("k{group}");
                format::window_key(group, name.as_bytes(), WindowRange { start, end }, &mut key);
                let mut value = Vec::new();
                format::window_value(
                    format::WINDOW_NOT_FIRED,
                    &window(start, end).accumulators,
                    &mut value,
                );
                batch.put(Column::Windows, key, value);
            }
        }
        store.write(batch).unwrap();
        store
    }

    /// The due timers of `state` as (time, kind, key group, window end).
    fn all_due(state: &mut KeyedWindowState) -> Vec<(Millis, TimerKind, KeyGroup, Millis)> {
        let mut due: Vec<_> = state
            .due_timers(Millis::MAX)
            .unwrap()
            .into_iter()
            .map(|timer| (timer.time, timer.kind, timer.key_group, timer.end))
            .collect();
        due.sort();
        due
    }

    #[test]
    fn a_window_fired_by_its_flag_or_by_the_watermark_of_its_key_groups() {
        use TimerKind::{Expire, Fire};
        let mut store = unflagged_windows();
        // Everything fired through 10; key groups [8, 16) (another part's) through 20.
        let mut batch = StateBatch::default();
        batch.put(
            Column::Meta,
            format::META_FIRED_THROUGH.to_vec(),
            format::time_bytes(10).to_vec(),
        );
        batch.put(
            Column::Meta,
            format::META_FIRED_THROUGH_RANGES.to_vec(),
            serde_json::to_vec(&[format::FiredThroughRange {
                first: 8,
                end: 16,
                fired_through: 20,
            }])
            .unwrap(),
        );
        store.write(batch).unwrap();
        let mut state = KeyedWindowState::new(Box::new(store), 100);
        state.set_allowed_lateness(5);
        state.rebuild_from_store(None).unwrap();
        // Fired: expires at end + 5. Not fired: fires at its end.
        assert_eq!(
            all_due(&mut state),
            vec![
                (15, Expire, 1, 10),
                (15, Expire, 9, 10),
                (20, Fire, 1, 20),
                (25, Expire, 9, 20)
            ]
        );
        // The window that fired by its part's watermark alone says so itself now.
        let fired = |state: &mut KeyedWindowState, group| {
            let windows = state
                .windows_mut(group, format!("k{group}").as_bytes())
                .unwrap();
            windows.sort_by_key(|window| window.range.start);
            windows
                .iter()
                .map(|window| window.fired)
                .collect::<Vec<_>>()
        };
        assert_eq!(fired(&mut state, 1), [true, false]);
        assert_eq!(fired(&mut state, 9), [true, true]);
        assert_eq!(
            state
                .store()
                .get(Column::Meta, format::META_FIRED_THROUGH_RANGES)
                .unwrap(),
            None
        );
    }

    #[test]
    fn resuming_behind_what_fired_sets_the_flags_first() {
        use TimerKind::{Expire, Fire};
        let mut state = KeyedWindowState::new(Box::new(unflagged_windows()), 100);
        state.set_allowed_lateness(15);
        state.rebuild_from_store(None).unwrap();
        // Fired through 20 in the store, as the window operator fires keys not cached.
        for timer in state.due_timers(20).unwrap() {
            let window = state
                .stored_window(timer.key_group, &timer.key, timer.range())
                .unwrap()
                .unwrap();
            state.fire_stored_window(timer.key_group, &timer.key, &window, 15, 20);
        }
        state.fired_through(20);
        state.checkpoint().unwrap();
        let flags = |state: &mut KeyedWindowState| -> Vec<u8> {
            let entries = state
                .store()
                .scan_range(Column::Windows, &[], None, usize::MAX)
                .unwrap();
            entries.iter().map(|(_, value)| value[0]).collect()
        };
        // Fired by the watermark alone: not written again.
        assert_eq!(flags(&mut state), vec![format::WINDOW_NOT_FIRED; 4]);
        // Resumed at 5 (another worker's record): 10 and 20 fired here all the same.
        state.resume_at(5).unwrap();
        assert_eq!(
            format::fired_through_of(
                state
                    .store()
                    .get(Column::Meta, format::META_FIRED_THROUGH)
                    .unwrap()
                    .as_deref()
            ),
            5
        );
        assert_eq!(flags(&mut state), vec![format::WINDOW_FIRED; 4]);
        state.set_allowed_lateness(15);
        state.rebuild_from_store(None).unwrap();
        assert_eq!(
            all_due(&mut state),
            vec![
                (25, Expire, 1, 10),
                (25, Expire, 9, 10),
                (35, Expire, 1, 20),
                (35, Expire, 9, 20)
            ]
        );
        // Without the resume, nothing had fired: each fires at its end.
        let mut state = KeyedWindowState::new(Box::new(unflagged_windows()), 100);
        state.set_allowed_lateness(5);
        state.rebuild_from_store(None).unwrap();
        assert_eq!(
            all_due(&mut state),
            vec![
                (10, Fire, 1, 10),
                (10, Fire, 9, 10),
                (20, Fire, 1, 20),
                (20, Fire, 9, 20)
            ]
        );
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

    /// Twenty keys with a window each ending at `(index * 7) % 50 + 10` and a fire timer,
    /// in a cache of 4 windows: most keys are evicted with their timers to the store. With
    /// `savepoint_halfway`, a savepoint's checkpoint (timers written too) after the tenth
    /// key. Returns the state and the (time, key) expected due.
    fn twenty_keys(savepoint_halfway: bool) -> (KeyedWindowState, Vec<(Millis, Vec<u8>)>) {
        let mut state = KeyedWindowState::new(Box::new(MemoryStore::default()), 4);
        state.set_allowed_lateness(5);
        let mut expected = Vec::new();
        for index in 0..20i64 {
            let key = format!("k{index:02}").into_bytes();
            let end = (index * 7) % 50 + 10;
            let range = WindowRange {
                start: end - 10,
                end,
            };
            state
                .windows_mut(0, &key)
                .unwrap()
                .push(window(range.start, range.end));
            state.windows_changed(&key, 1, &[]);
            state.add_timer(end, TimerKind::Fire, range, 0, &key);
            expected.push((end, key));
            if savepoint_halfway && index == 9 {
                state
                    .checkpoint_with(StateBatch::default(), CheckpointTimers::InStore, 1)
                    .unwrap();
            }
        }
        expected.sort();
        (state, expected)
    }

    #[test]
    fn timers_come_due_in_order_and_once_from_memory_and_store() {
        let (mut state, expected) = twenty_keys(false);
        assert_eq!(state.count_timers().unwrap(), 20);
        assert!(state.due_timers(9).unwrap().is_empty());
        assert_eq!(due_keys(&mut state, Millis::MAX), expected);
        assert!(state.due_timers(Millis::MAX).unwrap().is_empty());
        assert_eq!(state.count_timers().unwrap(), 0);
    }

    /// The store's mark of complete timers ([`format::META_TIMERS_COMPLETE`]).
    fn timers_mark(state: &mut KeyedWindowState) -> Option<Vec<u8>> {
        state
            .store()
            .get(Column::Meta, format::META_TIMERS_COMPLETE)
            .unwrap()
    }

    fn due_keys(state: &mut KeyedWindowState, watermark: Millis) -> Vec<(Millis, Vec<u8>)> {
        state
            .due_timers(watermark)
            .unwrap()
            .into_iter()
            .map(|timer| (timer.time, timer.key.to_vec()))
            .collect()
    }

    #[test]
    fn timers_a_checkpoint_wrote_to_the_store_come_due_once() {
        let (mut state, expected) = twenty_keys(true);
        state
            .checkpoint_with(StateBatch::default(), CheckpointTimers::InStore, 1)
            .unwrap();
        // Every timer is in the store now, the cached keys' in memory as well.
        assert_eq!(state.store().count(Column::Timers).unwrap(), 20);
        assert_eq!(state.count_timers().unwrap(), 20);
        // Due in two steps, each timer once, in order.
        let mut due = due_keys(&mut state, 30);
        assert!(due.iter().all(|(time, _)| *time <= 30));
        due.extend(due_keys(&mut state, Millis::MAX));
        assert_eq!(due, expected);
        assert!(state.due_timers(Millis::MAX).unwrap().is_empty());
        assert_eq!(state.count_timers().unwrap(), 0);
    }

    #[test]
    fn a_start_takes_the_checkpointed_timers_unless_the_lateness_or_checkpoint_differs() {
        // A timer no window has, put into the store behind the state's back, shows which
        // way the start went: taken as they are, it stays; rebuilt, it is gone.
        let stray = Timer {
            time: 3,
            kind: TimerKind::Expire,
            start: 0,
            end: 1,
            key: b"stray".as_slice().into(),
            key_group: 0,
        };
        // (allowed lateness at the start, checkpoint it starts from, stray timer still
        // there). Another checkpoint than the one that wrote the mark: one written since
        // by a worker that does not know the mark and left it in place.
        for (lateness, restored, kept) in [(5, 2, true), (6, 2, false), (5, 3, false)] {
            let (mut state, expected) = twenty_keys(true);
            state
                .checkpoint_with(StateBatch::default(), CheckpointTimers::InStore, 2)
                .unwrap();
            assert_eq!(
                timers_mark(&mut state),
                Some(format::timers_complete_value(5, 2))
            );
            let mut batch = StateBatch::default();
            batch.put(Column::Timers, stray.store_key(), Vec::new());
            state.store().write(batch).unwrap();
            state.set_allowed_lateness(lateness);
            state.rebuild_from_store(Some(restored)).unwrap();
            assert_eq!(state.open_windows(), 20);
            let mut due = due_keys(&mut state, Millis::MAX);
            let case = format!("lateness {lateness}, checkpoint {restored}");
            assert_eq!(due.first() == Some(&(3, b"stray".to_vec())), kept, "{case}");
            if kept {
                due.remove(0);
            }
            assert_eq!(due, expected, "{case}");
        }
    }

    #[test]
    fn a_periodic_checkpoint_with_timers_in_memory_drops_the_mark() {
        let (mut state, _) = twenty_keys(true);
        // Keys are cached with timers in memory only.
        state
            .checkpoint_with(StateBatch::default(), CheckpointTimers::InMemory, 2)
            .unwrap();
        assert_eq!(timers_mark(&mut state), None);
        // Once every timer is due and gone, nothing is in memory: complete again.
        state.due_timers(Millis::MAX).unwrap();
        state
            .checkpoint_with(StateBatch::default(), CheckpointTimers::InMemory, 3)
            .unwrap();
        assert_eq!(
            timers_mark(&mut state),
            Some(format::timers_complete_value(5, 3))
        );
    }

    #[test]
    fn an_import_or_a_retain_leaves_the_timers_to_be_rebuilt() {
        for import in [true, false] {
            let (mut state, _) = twenty_keys(true);
            state
                .checkpoint_with(StateBatch::default(), CheckpointTimers::InStore, 1)
                .unwrap();
            if import {
                let mut state_key = Vec::new();
                format::window_key(1, b"new", WindowRange { start: 0, end: 10 }, &mut state_key);
                let mut value = Vec::new();
                format::window_value(
                    format::WINDOW_NOT_FIRED,
                    &window(0, 10).accumulators,
                    &mut value,
                );
                state.import(vec![(state_key, value)]).unwrap();
            } else {
                state.retain_key_groups(1, 2).unwrap();
            }
            // A checkpoint in between does not mark the timers complete.
            state.checkpoint().unwrap();
            assert_eq!(timers_mark(&mut state), None, "import {import}");
            state.set_allowed_lateness(5);
            state.rebuild_from_store(None).unwrap();
            let due = due_keys(&mut state, Millis::MAX);
            let expected: Vec<(Millis, Vec<u8>)> = if import {
                // The imported window's timer, besides the twenty.
                let mut all: Vec<_> = twenty_keys(true).1;
                all.push((10, b"new".to_vec()));
                all.sort();
                all
            } else {
                Vec::new()
            };
            assert_eq!(due, expected, "import {import}");
        }
    }

    #[test]
    fn which_keys_each_eviction_pass_drops() {
        use EvictionPass::{Any, Idle, Unproven};
        // (pass, hits, last used, epoch now, evicted)
        let table = [
            (Unproven, 0, 5, 5, true),
            (Unproven, 0, 4, 5, true),
            (Unproven, 1, 4, 5, false),
            (Unproven, MAX_HITS, 0, 5, false),
            (Idle, 0, 5, 5, false),
            (Idle, MAX_HITS, 4, 5, true),
            (Idle, 1, 5, 5, false),
            (Any, MAX_HITS, 5, 5, true),
            (Any, 0, 0, 0, true),
        ];
        for (pass, hits, last_used, epoch, evicted) in table {
            assert_eq!(
                evicts(pass, hits, last_used, epoch),
                evicted,
                "{pass:?} hits {hits} last used {last_used} epoch {epoch}"
            );
        }
    }

    #[test]
    fn many_store_timers_are_deleted_as_one_range() {
        // (timers one scan returned, deleted as one range)
        let table = [
            (0, false),
            (1, false),
            (TIMER_RANGE_DELETE_FROM - 1, false),
            (TIMER_RANGE_DELETE_FROM, true),
            (TIMER_SCAN_LIMIT, true),
        ];
        for (scanned, as_range) in table {
            assert_eq!(
                delete_timers_as_range(scanned),
                as_range,
                "{scanned} timers"
            );
        }
    }

    #[test]
    fn store_timers_fire_once_whether_deleted_one_by_one_or_as_a_range() {
        for keys in [10, TIMER_RANGE_DELETE_FROM * 3] {
            // A cache of 1 window: nearly every timer goes to the store.
            let mut state = KeyedWindowState::new(Box::new(MemoryStore::default()), 1);
            for index in 0..keys {
                let key = format!("k{index:05}").into_bytes();
                let end = 10 + i64::try_from(index % 3).unwrap();
                state.windows_mut(0, &key).unwrap().push(window(0, end));
                state.windows_changed(&key, 1, &[]);
                state.add_timer(end, TimerKind::Fire, WindowRange { start: 0, end }, 0, &key);
            }
            let mut due = 0;
            loop {
                let timers = state.due_timers(11).unwrap();
                if timers.is_empty() {
                    break;
                }
                due += timers.len();
            }
            let expected = (0..keys).filter(|index| index % 3 < 2).count();
            assert_eq!(due, expected, "{keys} keys");
            assert_eq!(state.count_timers().unwrap(), (keys - expected) as u64);
            // A timer scheduled again below the ones processed is still found.
            let key = b"k00000".to_vec();
            state.windows_mut(0, &key).unwrap();
            state.add_timer(
                5,
                TimerKind::Expire,
                WindowRange { start: 0, end: 5 },
                0,
                &key,
            );
            state.evict_all().unwrap();
            let timers = state.due_timers(11).unwrap();
            assert_eq!(timers.len(), 1, "{keys} keys");
            assert_eq!(timers[0].time, 5);
            assert!(state.due_timers(11).unwrap().is_empty());
        }
    }

    #[test]
    fn keys_used_often_stay_cached_while_new_keys_stream_through() {
        // A cache of 100 windows; 10 hot keys used between every 20 new ones.
        let mut state = KeyedWindowState::new(Box::new(MemoryStore::default()), 100);
        let hot: Vec<Vec<u8>> = (0..10)
            .map(|key| format!("hot{key}").into_bytes())
            .collect();
        for round in 0..200 {
            for key in &hot {
                let windows = state.windows_mut(0, key).unwrap();
                if windows.is_empty() {
                    windows.push(window(0, 10));
                    state.windows_changed(key, 1, &[]);
                }
            }
            for new in 0..20 {
                let key = format!("new{round}-{new}").into_bytes();
                state.windows_mut(0, &key).unwrap().push(window(0, 10));
                state.windows_changed(&key, 1, &[]);
            }
            assert!(state.cached_windows() <= 100);
            if round > 2 {
                for key in &hot {
                    assert!(state.is_cached(key), "round {round}");
                }
            }
        }
        assert_eq!(state.open_windows(), 10 + 200 * 20);
        assert_eq!(state.count_stored_windows().unwrap(), 10 + 200 * 20);
    }

    #[test]
    fn removing_a_window_drops_its_timers() {
        let mut state = KeyedWindowState::new(Box::new(MemoryStore::default()), 100);
        let range = WindowRange { start: 0, end: 10 };
        state.windows_mut(0, b"a").unwrap().push(window(0, 10));
        state.windows_changed(b"a", 1, &[]);
        state.add_timer(10, TimerKind::Fire, range, 0, b"a");
        state.windows_mut(0, b"a").unwrap().clear();
        state.windows_changed(b"a", 0, &[range]);
        assert!(state.due_timers(Millis::MAX).unwrap().is_empty());
        assert_eq!(state.open_windows(), 0);
        assert_eq!(state.count_timers().unwrap(), 0);
    }

    #[test]
    fn a_removed_timer_goes_from_memory_and_from_the_store() {
        use TimerKind::{Expire, Fire};
        let range = WindowRange { start: 0, end: 10 };
        // (where the expiry is when it is removed, copied to the store by a savepoint,
        // evicted with its key)
        let table = [
            ("in memory", false, false),
            ("in memory and in the store", true, false),
            ("in the store", false, true),
        ];
        for (case, savepoint, evicted) in table {
            let mut state = KeyedWindowState::new(Box::new(MemoryStore::default()), 100);
            state.windows_mut(1, b"k").unwrap().push(window(0, 10));
            state.windows_changed(b"k", 1, &[]);
            state.add_timer(10, Expire, range, 1, b"k");
            if savepoint {
                state
                    .checkpoint_with(StateBatch::default(), CheckpointTimers::InStore, 1)
                    .unwrap();
            }
            if evicted {
                state.evict_all().unwrap();
            }
            state.windows_mut(1, b"k").unwrap();
            state.remove_timer(10, Expire, range, 1, b"k");
            state.add_timer(10, Fire, range, 1, b"k");
            assert_eq!(state.count_timers().unwrap(), 1, "{case}");
            assert_eq!(all_due(&mut state), vec![(10, Fire, 1, 10)], "{case}");
            assert_eq!(state.count_timers().unwrap(), 0, "{case}");
            assert_eq!(state.open_windows(), 1, "{case}");
        }
    }
}
