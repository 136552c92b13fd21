//! The keyed window operator: assigns events to windows, keeps their accumulators in
//! keyed state, fires windows when the watermark passes their end, emits updates for
//! events within the allowed lateness, expires state after it, and says which events
//! are late.

use crate::pipeline::aggregate::{Accumulator, AggregateOverflow, AggregateValue, Number128};
use crate::state::key_group::KeyGroup;
use crate::state::{KeyedWindowState, StateError, StoredWindow, TimerKind, WindowState};
use crate::time::Millis;
use crate::time::window::{WindowAssigner, WindowRange, merge_session};
use sluice_crds::pipeline::AggregateFunction;

/// A window result ready to emit.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowResult {
    /// The key's canonical bytes (its compact JSON).
    pub key: Vec<u8>,
    /// The window.
    pub range: WindowRange,
    /// Whether a result for this window was emitted before.
    pub is_update: bool,
    /// One value per aggregate output.
    pub values: Vec<AggregateValue>,
}

impl WindowResult {
    /// The result of `window` of `key` now (an update if it fired before).
    fn of(key: &[u8], window: &WindowState) -> Self {
        Self {
            key: key.to_vec(),
            range: window.range,
            is_update: window.fired,
            values: window
                .accumulators
                .iter()
                .map(Accumulator::result)
                .collect(),
        }
    }
}

/// Whether an event was taken into its windows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Counted (and any updates it caused were emitted).
    Accepted,
    /// Every window it belongs to has expired: it goes to the late-data output.
    Late {
        /// The last window it belonged to.
        window: WindowRange,
    },
    /// Adding it would take an aggregate of one of its windows out of range (a double
    /// sum beyond the largest double): it is counted in none of them (a dead letter).
    Overflow {
        /// The window.
        window: WindowRange,
        /// The aggregate output (its index).
        output: usize,
        /// What would overflow.
        overflow: AggregateOverflow,
    },
}

/// The window operator and its keyed state.
pub struct WindowOperator {
    assigner: WindowAssigner,
    allowed_lateness: Millis,
    functions: Vec<AggregateFunction>,
    state: KeyedWindowState,
    assigned: Vec<WindowRange>,
}

/// The first of `ranges` (among `windows`) that `inputs` would overflow, as an admission.
fn first_overflow(
    windows: &[WindowState],
    ranges: &[WindowRange],
    inputs: &[Option<Number128>],
) -> Option<Admission> {
    for range in ranges {
        let Some(window) = windows.iter().find(|window| window.range == *range) else {
            continue;
        };
        for (output, (accumulator, input)) in window.accumulators.iter().zip(inputs).enumerate() {
            if let Err(overflow) = accumulator.check(*input) {
                return Some(Admission::Overflow {
                    window: *range,
                    output,
                    overflow,
                });
            }
        }
    }
    None
}

impl WindowOperator {
    /// An operator over `state`.
    pub fn new(
        assigner: WindowAssigner,
        allowed_lateness: Millis,
        functions: Vec<AggregateFunction>,
        mut state: KeyedWindowState,
    ) -> Self {
        state.set_allowed_lateness(allowed_lateness);
        Self {
            assigner,
            allowed_lateness,
            functions,
            state,
            assigned: Vec::new(),
        }
    }

    /// Windows with state.
    pub fn open_windows(&self) -> u64 {
        self.state.open_windows()
    }

    /// How long after its end a window keeps its state.
    pub fn allowed_lateness(&self) -> Millis {
        self.allowed_lateness
    }

    /// The keyed state.
    pub fn state(&mut self) -> &mut KeyedWindowState {
        &mut self.state
    }

    fn expired(&self, range: WindowRange, watermark: Millis) -> bool {
        range.end.saturating_add(self.allowed_lateness) <= watermark
    }

    fn new_window(&self, range: WindowRange) -> WindowState {
        WindowState {
            range,
            fired: false,
            end_passed: false,
            accumulators: self
                .functions
                .iter()
                .map(|function| Accumulator::new(*function))
                .collect(),
            changed: true,
        }
    }

    /// Adds an event of `key` (in key group `group`) at `time` with one input per output
    /// (`None` for count),
    /// at operator watermark `watermark`. Results that must be emitted now (updates of
    /// fired windows) are appended to `results`.
    pub fn add(
        &mut self,
        group: KeyGroup,
        key: &[u8],
        time: Millis,
        inputs: &[Option<Number128>],
        watermark: Millis,
        results: &mut Vec<WindowResult>,
    ) -> Result<Admission, StateError> {
        if self.assigner.is_merging() {
            return self.add_to_session(group, key, time, inputs, watermark, results);
        }
        let mut assigned = std::mem::take(&mut self.assigned);
        self.assigner.assign(time, &mut assigned);
        let last = *assigned.last().unwrap_or(&WindowRange {
            start: time,
            end: time,
        });
        assigned.retain(|range| !self.expired(*range, watermark));
        if assigned.is_empty() {
            self.assigned = assigned;
            return Ok(Admission::Late { window: last });
        }
        let mut created = 0;
        let mut timers = Vec::new();
        // Windows whose expiry goes: they fire again instead.
        let mut rearmed = Vec::new();
        let functions = &self.functions;
        let windows = self.state.windows_mut(group, key)?;
        // All or nothing: an event that would overflow one of its windows is counted in
        // none. (A new window takes any one input.)
        if let Some(refused) = first_overflow(windows, &assigned, inputs) {
            self.state.windows_changed(key, 0, &[]);
            self.assigned = assigned;
            return Ok(refused);
        }
        for range in &assigned {
            let index = match windows.iter().position(|window| window.range == *range) {
                // Fired at its end by a worker whose watermark was ahead of this one's
                // (state restored from a savepoint's parts): this event's update is due
                // when this watermark passes its end. That firing is its one timer: its
                // expiry goes (with no allowed lateness, due with the firing and run
                // first, it would delete the window before the update, or with the firing
                // delete it twice).
                Some(index) if windows[index].end_passed && range.end > watermark => {
                    windows[index].end_passed = false;
                    rearmed.push(*range);
                    timers.push((range.end, TimerKind::Fire, *range));
                    index
                }
                Some(index) => index,
                None => {
                    windows.push(WindowState {
                        range: *range,
                        fired: false,
                        end_passed: false,
                        accumulators: functions
                            .iter()
                            .map(|function| Accumulator::new(*function))
                            .collect(),
                        changed: true,
                    });
                    created += 1;
                    if range.end > watermark {
                        timers.push((range.end, TimerKind::Fire, *range));
                    } else {
                        // Created past its end, within the allowed lateness: it is
                        // emitted now and expires later.
                        timers.push((
                            range.end.saturating_add(self.allowed_lateness),
                            TimerKind::Expire,
                            *range,
                        ));
                    }
                    windows.len() - 1
                }
            };
            let window = &mut windows[index];
            for (accumulator, input) in window.accumulators.iter_mut().zip(inputs) {
                accumulator.add(*input);
            }
            window.changed = true;
            if range.end <= watermark {
                results.push(WindowResult::of(key, window));
                window.fired = true;
                window.end_passed = true;
            }
        }
        self.state.windows_changed(key, created, &[]);
        for range in rearmed {
            self.state.remove_timer(
                range.end.saturating_add(self.allowed_lateness),
                TimerKind::Expire,
                range,
                group,
                key,
            );
        }
        for (time, kind, range) in timers {
            self.state.add_timer(time, kind, range, group, key);
        }
        self.assigned = assigned;
        Ok(Admission::Accepted)
    }

    fn add_to_session(
        &mut self,
        group: KeyGroup,
        key: &[u8],
        time: Millis,
        inputs: &[Option<Number128>],
        watermark: Millis,
        results: &mut Vec<WindowResult>,
    ) -> Result<Admission, StateError> {
        let mut assigned = std::mem::take(&mut self.assigned);
        self.assigner.assign(time, &mut assigned);
        let new = assigned[0];
        self.assigned = assigned;
        let allowed_lateness = self.allowed_lateness;
        let mut merged_state = self.new_window(new);
        let windows = self.state.windows_mut(group, key)?;
        let ranges: Vec<WindowRange> = windows.iter().map(|window| window.range).collect();
        let (merged, absorbed) = merge_session(&ranges, new);
        if merged.end.saturating_add(allowed_lateness) <= watermark {
            // (lets the cache drop the key again if it has no session)
            self.state.windows_changed(key, 0, &[]);
            return Ok(Admission::Late { window: merged });
        }
        merged_state.range = merged;
        // The merged session first, then the event checked against it: an event that
        // would overflow it is counted nowhere and the sessions stay as they were.
        for index in &absorbed {
            let old = &windows[*index];
            merged_state.fired |= old.fired;
            for (output, (accumulator, other)) in merged_state
                .accumulators
                .iter_mut()
                .zip(&old.accumulators)
                .enumerate()
            {
                if let Err(overflow) = accumulator.merge(other) {
                    self.state.windows_changed(key, 0, &[]);
                    return Ok(Admission::Overflow {
                        window: merged,
                        output,
                        overflow,
                    });
                }
            }
        }
        if let Some(refused) = first_overflow(
            std::slice::from_ref(&merged_state),
            std::slice::from_ref(&merged),
            inputs,
        ) {
            self.state.windows_changed(key, 0, &[]);
            return Ok(refused);
        }
        // A session fired at its end by a worker whose watermark was ahead of this one's,
        // which the event leaves as it is: it fires again, and that is its one timer (as
        // in `add`, its expiry goes).
        let rearmed = merged.end > watermark
            && absorbed
                .iter()
                .any(|index| windows[*index].range == merged && windows[*index].end_passed);
        let mut removed = Vec::with_capacity(absorbed.len());
        for index in absorbed.iter().rev() {
            removed.push(windows.swap_remove(*index).range);
        }
        for (accumulator, input) in merged_state.accumulators.iter_mut().zip(inputs) {
            accumulator.add(*input);
        }
        let timer = if merged.end > watermark {
            // (when a part of it fired, this firing is an update)
            (merged.end, TimerKind::Fire)
        } else {
            results.push(WindowResult::of(key, &merged_state));
            merged_state.fired = true;
            merged_state.end_passed = true;
            (
                merged.end.saturating_add(allowed_lateness),
                TimerKind::Expire,
            )
        };
        windows.push(merged_state);
        self.state.windows_changed(key, 1, &removed);
        if rearmed {
            self.state.remove_timer(
                merged.end.saturating_add(allowed_lateness),
                TimerKind::Expire,
                merged,
                group,
                key,
            );
        }
        self.state.add_timer(timer.0, timer.1, merged, group, key);
        Ok(Admission::Accepted)
    }

    /// The watermark advanced to `watermark`: fires windows whose end it passed (results
    /// appended in order of window end, window start, key) and expires windows past
    /// their allowed lateness.
    pub fn advance(
        &mut self,
        watermark: Millis,
        results: &mut Vec<WindowResult>,
    ) -> Result<(), StateError> {
        let merging = self.assigner.is_merging();
        loop {
            let timers = self.state.due_timers(watermark)?;
            if timers.is_empty() {
                // Every window ending by the watermark has fired now, in the store too.
                self.state.fired_through(watermark);
                return Ok(());
            }
            // The windows of keys not cached are read in one pass over the store and fired
            // there, without loading their keys into the cache. (Expiries need no read,
            // except for sessions: one merged away leaves a stale timer.)
            let stored = self.state.read_stored_windows(&timers, merging)?;
            for (timer, stored) in timers.into_iter().zip(stored) {
                let allowed_lateness = self.allowed_lateness;
                let range = timer.range();
                // Keys leave the cache while firing, none enters it: a key not cached when
                // the batch was read is not cached now.
                let cached =
                    matches!(stored, StoredWindow::Cached) && self.state.is_cached(&timer.key);
                if !cached {
                    if timer.kind == TimerKind::Expire && !merging {
                        self.state
                            .delete_stored_window(timer.key_group, &timer.key, range);
                        continue;
                    }
                    let window = match stored {
                        StoredWindow::Read(window) => window,
                        // Cached when the batch was read, dropped from the cache since
                        // (with nothing stored): look again.
                        StoredWindow::Cached | StoredWindow::NotRead => {
                            self.state
                                .stored_window(timer.key_group, &timer.key, range)?
                        }
                    };
                    // A timer of a window merged away is stale: skip it.
                    let Some(window) = window else { continue };
                    match timer.kind {
                        TimerKind::Fire => {
                            results.push(WindowResult::of(&timer.key, &window));
                            self.state.fire_stored_window(
                                timer.key_group,
                                &timer.key,
                                &window,
                                allowed_lateness,
                                watermark,
                            );
                        }
                        TimerKind::Expire => {
                            self.state
                                .delete_stored_window(timer.key_group, &timer.key, range);
                        }
                    }
                    continue;
                }
                let windows = self.state.windows_mut(timer.key_group, &timer.key)?;
                // A timer of a window merged away or already expired is stale: skip it.
                let Some(index) = windows.iter().position(|window| window.range == range) else {
                    // (lets the cache drop the key if it has nothing left)
                    self.state.windows_changed(&timer.key, 0, &[]);
                    continue;
                };
                match timer.kind {
                    TimerKind::Fire => {
                        let window = &mut windows[index];
                        results.push(WindowResult::of(&timer.key, window));
                        window.fired = true;
                        window.end_passed = true;
                        window.changed = true;
                        if allowed_lateness == 0 {
                            windows.swap_remove(index);
                            self.state.windows_changed(&timer.key, 0, &[range]);
                        } else {
                            self.state.add_timer(
                                range.end.saturating_add(allowed_lateness),
                                TimerKind::Expire,
                                range,
                                timer.key_group,
                                &timer.key,
                            );
                        }
                    }
                    TimerKind::Expire => {
                        windows.swap_remove(index);
                        self.state.windows_changed(&timer.key, 0, &[range]);
                    }
                }
                self.state.release(&timer.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use super::*;
    use crate::state::format;
    use crate::state::store::Entries;
    use crate::state::{Column, MemoryStore, StateBatch, StateStore, StoredCheckpoint};

    /// A memory store that counts the loads of one key's windows (a seek each in RocksDB).
    #[derive(Default)]
    struct CountingStore {
        inner: MemoryStore,
        key_reads: Rc<Cell<usize>>,
    }

    impl StateStore for CountingStore {
        fn scan_prefix(&self, column: Column, prefix: &[u8]) -> Result<Entries, StateError> {
            self.key_reads.set(self.key_reads.get() + 1);
            self.inner.scan_prefix(column, prefix)
        }
        fn scan_keys(
            &self,
            column: Column,
            from: &[u8],
            to: Option<&[u8]>,
            limit: usize,
        ) -> Result<Vec<Vec<u8>>, StateError> {
            self.inner.scan_keys(column, from, to, limit)
        }
        fn scan_range(
            &self,
            column: Column,
            from: &[u8],
            to: Option<&[u8]>,
            limit: usize,
        ) -> Result<Entries, StateError> {
            self.inner.scan_range(column, from, to, limit)
        }
        fn get(&self, column: Column, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
            self.inner.get(column, key)
        }
        fn get_sorted(
            &self,
            column: Column,
            keys: &[Vec<u8>],
        ) -> Result<Vec<Option<Vec<u8>>>, StateError> {
            self.inner.get_sorted(column, keys)
        }
        fn write(&mut self, batch: StateBatch) -> Result<(), StateError> {
            self.inner.write(batch)
        }
        fn delete_range(
            &mut self,
            column: Column,
            from: &[u8],
            to: &[u8],
        ) -> Result<(), StateError> {
            self.inner.delete_range(column, from, to)
        }
        fn count(&self, column: Column) -> Result<u64, StateError> {
            self.inner.count(column)
        }
        fn size_bytes(&self) -> u64 {
            self.inner.size_bytes()
        }
        fn create_checkpoint(&mut self, id: u64) -> Result<(), StateError> {
            self.inner.create_checkpoint(id)
        }
        fn complete_checkpoint(&mut self, id: u64) -> Result<(), StateError> {
            self.inner.complete_checkpoint(id)
        }
        fn discard_checkpoint(&mut self, id: u64) -> Result<(), StateError> {
            self.inner.discard_checkpoint(id)
        }
        fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, StateError> {
            self.inner.checkpoints()
        }
        fn restore_checkpoint(&mut self, id: u64) -> Result<(), StateError> {
            self.inner.restore_checkpoint(id)
        }
    }

    /// Everything one run emitted, and how many single-key reads firing cost.
    struct Run {
        results: Vec<WindowResult>,
        admissions: Vec<Admission>,
        key_reads_while_firing: usize,
        most_open_windows: u64,
    }

    /// 20,000 events over 3,000 keys (many keys only once, some again after they were
    /// evicted), out of order within 6 ms, 4% beyond that; the watermark is the greatest
    /// time less 6 and windows fire after each event, as the engine drives them. With
    /// `restore_every`, the state is checkpointed and restored (cache and timers rebuilt
    /// from the store) after every that many events.
    fn run(
        assigner: WindowAssigner,
        allowed_lateness: Millis,
        cache: usize,
        restore_every: Option<i64>,
    ) -> Run {
        let store = CountingStore::default();
        let key_reads = store.key_reads.clone();
        let state = KeyedWindowState::new(Box::new(store), cache);
        let functions = vec![AggregateFunction::Count, AggregateFunction::Sum];
        let mut operator = WindowOperator::new(assigner, allowed_lateness, functions, state);
        let mut random: u64 = 17;
        let mut next = move |bound: u64| {
            random = random
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (random >> 33) % bound
        };
        let mut run = Run {
            results: Vec::new(),
            admissions: Vec::new(),
            key_reads_while_firing: 0,
            most_open_windows: 0,
        };
        let mut greatest = Millis::MIN;
        for index in 0..20_000i64 {
            let key = format!("\"k{}\"", next(3_000)).into_bytes();
            let group = crate::state::key_group(&key, 16);
            let mut time = index / 40 - i64::try_from(next(6)).unwrap();
            if next(25) == 0 {
                // Behind the watermark: an update of a fired window, or late.
                time -= 6 + i64::try_from(next(30)).unwrap();
            }
            greatest = greatest.max(time);
            let watermark = greatest - 6;
            let input = Number128::Integer(i128::from(index % 7));
            let admission = operator
                .add(
                    group,
                    &key,
                    time,
                    &[None, Some(input)],
                    watermark,
                    &mut run.results,
                )
                .unwrap();
            run.admissions.push(admission);
            let before = key_reads.get();
            operator.advance(watermark, &mut run.results).unwrap();
            run.key_reads_while_firing += key_reads.get() - before;
            run.most_open_windows = run.most_open_windows.max(operator.open_windows());
            if restore_every.is_some_and(|every| index % every == every - 1) {
                operator.state().checkpoint().unwrap();
                operator.state().rebuild_from_store(None).unwrap();
            }
        }
        let before = key_reads.get();
        operator.advance(Millis::MAX, &mut run.results).unwrap();
        run.key_reads_while_firing += key_reads.get() - before;
        assert_eq!(operator.open_windows(), 0);
        run
    }

    #[test]
    fn evicted_windows_fire_from_the_store_as_cached_ones_would_without_a_read_each() {
        let kinds = [
            ("tumbling", WindowAssigner::Tumbling { size: 10 }, 7),
            (
                "tumbling without lateness",
                WindowAssigner::Tumbling { size: 10 },
                0,
            ),
            (
                "sliding",
                WindowAssigner::Sliding {
                    size: 20,
                    slide: 10,
                },
                5,
            ),
            ("session", WindowAssigner::Session { gap: 4 }, 7),
            (
                "session without lateness",
                WindowAssigner::Session { gap: 4 },
                0,
            ),
        ];
        for (kind, assigner, lateness) in kinds {
            let reference = run(assigner, lateness, 1_000_000, None);
            let evicting = run(assigner, lateness, 40, None);
            assert!(reference.results.len() > 5_000, "{kind}: results");
            assert!(
                lateness == 0 || reference.results.iter().any(|result| result.is_update),
                "{kind}: updates of fired windows"
            );
            assert!(
                reference
                    .admissions
                    .iter()
                    .any(|admission| matches!(admission, Admission::Late { .. })),
                "{kind}: late events"
            );
            assert!(
                reference.most_open_windows > 300,
                "{kind}: far more open windows than the cache holds"
            );
            assert_eq!(evicting.admissions, reference.admissions, "{kind}");
            assert_eq!(evicting.most_open_windows, reference.most_open_windows);
            let first_difference = evicting
                .results
                .iter()
                .zip(&reference.results)
                .position(|(left, right)| left != right);
            assert!(
                evicting.results == reference.results,
                "{kind}: {} results instead of {}, first difference at {first_difference:?}",
                evicting.results.len(),
                reference.results.len()
            );
            // Evicted windows are read a batch at a time, never one key at a time.
            assert_eq!(evicting.key_reads_while_firing, 0, "{kind}");
        }
    }

    #[test]
    fn a_restore_at_any_point_gives_the_results_of_an_uninterrupted_run() {
        let kinds = [
            ("tumbling", WindowAssigner::Tumbling { size: 10 }, 7),
            (
                "sliding",
                WindowAssigner::Sliding {
                    size: 20,
                    slide: 10,
                },
                5,
            ),
            ("session", WindowAssigner::Session { gap: 4 }, 7),
            (
                "session without lateness",
                WindowAssigner::Session { gap: 4 },
                0,
            ),
        ];
        for (kind, assigner, lateness) in kinds {
            let reference = run(assigner, lateness, 1_000_000, None);
            for (cache, every) in [(1_000_000, 97), (40, 97), (40, 1_013)] {
                let restored = run(assigner, lateness, cache, Some(every));
                assert_eq!(restored.admissions, reference.admissions, "{kind}");
                let first_difference = restored
                    .results
                    .iter()
                    .zip(&reference.results)
                    .position(|(left, right)| left != right);
                assert!(
                    restored.results == reference.results,
                    "{kind}, cache {cache}, restored every {every} events: {} results instead of {}, first difference at {first_difference:?}: {:?}",
                    restored.results.len(),
                    reference.results.len(),
                    first_difference
                        .map(|index| (&restored.results[index], &reference.results[index]))
                );
            }
        }
    }

    #[test]
    fn a_fired_session_extended_past_the_watermark_fires_its_update_after_a_restore() {
        // Session gap 10, allowed lateness 100. [0, 10) fires at watermark 10; an
        // allowed-late event at 5 makes it [0, 15), which fires again (an update) when the
        // watermark passes 15, whether or not the state was restored in between, and
        // whether or not its key was cached.
        let run = |restore: bool, cache: usize| {
            let state = KeyedWindowState::new(Box::new(MemoryStore::default()), cache);
            let mut operator = WindowOperator::new(
                WindowAssigner::Session { gap: 10 },
                100,
                vec![AggregateFunction::Count],
                state,
            );
            let mut results = Vec::new();
            let group = crate::state::key_group(b"\"k\"", 16);
            let other = crate::state::key_group(b"\"o\"", 16);
            operator
                .add(group, b"\"k\"", 0, &[None], 0, &mut results)
                .unwrap();
            operator.advance(10, &mut results).unwrap();
            operator
                .add(group, b"\"k\"", 5, &[None], 10, &mut results)
                .unwrap();
            // Another key, so that a cache of one evicts the first.
            operator
                .add(other, b"\"o\"", 12, &[None], 10, &mut results)
                .unwrap();
            if restore {
                operator.state().checkpoint().unwrap();
                operator.state().rebuild_from_store(None).unwrap();
            }
            operator.advance(20, &mut results).unwrap();
            operator.advance(Millis::MAX, &mut results).unwrap();
            results
                .iter()
                .map(|result| (result.range.start, result.range.end, result.is_update))
                .collect::<Vec<_>>()
        };
        let expected = vec![(0, 10, false), (0, 15, true), (12, 22, false)];
        for (restore, cache) in [(false, 100), (true, 100), (false, 1), (true, 1)] {
            assert_eq!(
                run(restore, cache),
                expected,
                "restore {restore}, cache {cache}"
            );
        }
    }

    #[test]
    fn an_event_for_a_window_fired_ahead_of_the_watermark_is_emitted_when_it_passes_the_end() {
        // [60, 70) fired at watermark 70; the state then resumes at watermark 50 (restored
        // from savepoint parts, one of which had fired further). An event at 66 counts in
        // it, and its update comes out when the watermark passes 70 again.
        let run = |cache: usize| {
            let state = KeyedWindowState::new(Box::new(MemoryStore::default()), cache);
            let mut operator = WindowOperator::new(
                WindowAssigner::Tumbling { size: 10 },
                100,
                vec![AggregateFunction::Count],
                state,
            );
            let mut results = Vec::new();
            let group = crate::state::key_group(b"\"k\"", 16);
            let other = crate::state::key_group(b"\"o\"", 16);
            operator
                .add(group, b"\"k\"", 65, &[None], 0, &mut results)
                .unwrap();
            operator.advance(70, &mut results).unwrap();
            operator.state().resume_at(50).unwrap();
            operator.state().rebuild_from_store(None).unwrap();
            operator
                .add(group, b"\"k\"", 66, &[None], 50, &mut results)
                .unwrap();
            // Another key, so that a cache of one evicts the first.
            operator
                .add(other, b"\"o\"", 55, &[None], 50, &mut results)
                .unwrap();
            operator.advance(80, &mut results).unwrap();
            operator.advance(Millis::MAX, &mut results).unwrap();
            results
                .iter()
                .map(|result| (result.range.start, result.is_update, result.values[0]))
                .collect::<Vec<_>>()
        };
        let count = AggregateValue::Integer;
        for cache in [100, 1] {
            assert_eq!(
                run(cache),
                vec![
                    (60, false, count(1)),
                    (50, false, count(1)),
                    (60, true, count(2))
                ],
                "cache {cache}"
            );
        }
    }

    #[test]
    fn a_window_fired_ahead_of_the_watermark_keeps_one_timer_at_any_allowed_lateness() {
        // A savepoint's part fired [60, 70) of "k" at 70 with allowed lateness 100 and kept
        // it; the job starts from it with another allowed lateness at watermark 50 (the
        // slowest part's), as a restore leaves it. An event (for a session: at 60, the same
        // session) counts in it, and its one timer is the firing at 70 again: the update
        // comes out once, and the window goes after its new lateness. Its expiry at 70
        // (no lateness) used to stay too and run first: it deleted the window before the
        // update (cached), or with the firing deleted it twice (in the store).
        let count = AggregateValue::Integer;
        let tumbling = WindowAssigner::Tumbling { size: 10 };
        let session = WindowAssigner::Session { gap: 10 };
        // (assigner, time of the event of "k", start of the window of "o" (an event at
        // 55), allowed lateness, cache)
        let table = [
            (tumbling, 66, 50, 0, 100),
            (tumbling, 66, 50, 0, 1),
            (tumbling, 66, 50, 5, 100),
            (tumbling, 66, 50, 5, 1),
            (session, 60, 55, 0, 100),
            (session, 60, 55, 0, 1),
            (session, 60, 55, 5, 100),
            (session, 60, 55, 5, 1),
        ];
        for (assigner, time, other_start, lateness, cache) in table {
            let case = format!("{assigner:?}, allowed lateness {lateness}, cache {cache}");
            let group = crate::state::key_group(b"\"k\"", 16);
            let other = crate::state::key_group(b"\"o\"", 16);
            let mut store = MemoryStore::default();
            let mut batch = StateBatch::default();
            let mut accumulator = Accumulator::new(AggregateFunction::Count);
            accumulator.add(None);
            let mut state_key = Vec::new();
            format::window_key(
                group,
                b"\"k\"",
                WindowRange { start: 60, end: 70 },
                &mut state_key,
            );
            let mut value = Vec::new();
            format::window_value(format::WINDOW_NOT_FIRED, &[accumulator], &mut value);
            batch.put(Column::Windows, state_key, value);
            batch.put(
                Column::Meta,
                format::META_FIRED_THROUGH.to_vec(),
                format::time_bytes(50).to_vec(),
            );
            batch.put(
                Column::Meta,
                format::META_FIRED_THROUGH_RANGES.to_vec(),
                serde_json::to_vec(&[format::FiredThroughRange {
                    first: u32::from(group),
                    end: u32::from(group) + 1,
                    fired_through: 70,
                }])
                .unwrap(),
            );
            store.write(batch).unwrap();
            let state = KeyedWindowState::new(Box::new(store), cache);
            let mut operator =
                WindowOperator::new(assigner, lateness, vec![AggregateFunction::Count], state);
            operator.state().rebuild_from_store(None).unwrap();
            operator.state().resume_at(50).unwrap();
            let mut results = Vec::new();
            let admission = operator
                .add(group, b"\"k\"", time, &[None], 50, &mut results)
                .unwrap();
            assert_eq!(admission, Admission::Accepted, "{case}");
            // Another key, so that a cache of one evicts the first.
            operator
                .add(other, b"\"o\"", 55, &[None], 50, &mut results)
                .unwrap();
            assert_eq!(operator.open_windows(), 2, "{case}");
            // One timer per window: its firing.
            assert_eq!(operator.state().count_timers().unwrap(), 2, "{case}");
            operator.advance(70, &mut results).unwrap();
            // With lateness, "k" stays until 75 ("o" went at 65).
            assert_eq!(operator.open_windows(), u64::from(lateness > 0), "{case}");
            assert_eq!(
                operator.state().count_timers().unwrap(),
                u64::from(lateness > 0),
                "{case}"
            );
            operator.advance(Millis::MAX, &mut results).unwrap();
            assert_eq!(operator.open_windows(), 0, "{case}");
            assert_eq!(operator.state().count_timers().unwrap(), 0, "{case}");
            assert_eq!(
                results
                    .iter()
                    .map(|result| (result.range.start, result.is_update, result.values[0]))
                    .collect::<Vec<_>>(),
                vec![(other_start, false, count(1)), (60, true, count(2))],
                "{case}"
            );
        }
    }
}
