//! The keyed window operator: assigns events to windows, keeps their accumulators in
//! keyed state, fires windows when the watermark passes their end, emits updates for
//! events within the allowed lateness, expires state after it, and says which events
//! are late.

use crate::pipeline::aggregate::{Accumulator, AggregateOverflow, AggregateValue, Number128};
use crate::state::key_group::KeyGroup;
use crate::state::{KeyedWindowState, StateError, TimerKind, WindowState};
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
        state: KeyedWindowState,
    ) -> Self {
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
            accumulators: self
                .functions
                .iter()
                .map(|function| Accumulator::new(*function))
                .collect(),
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
                Some(index) => index,
                None => {
                    windows.push(WindowState {
                        range: *range,
                        fired: false,
                        accumulators: functions
                            .iter()
                            .map(|function| Accumulator::new(*function))
                            .collect(),
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
            if range.end <= watermark {
                results.push(WindowResult::of(key, window));
                window.fired = true;
            }
        }
        self.state.windows_changed(key, created, &[]);
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
        let mut removed = Vec::with_capacity(absorbed.len());
        for index in absorbed.iter().rev() {
            removed.push(windows.swap_remove(*index).range);
        }
        for (accumulator, input) in merged_state.accumulators.iter_mut().zip(inputs) {
            accumulator.add(*input);
        }
        let timer = if merged.end > watermark {
            (merged.end, TimerKind::Fire)
        } else {
            results.push(WindowResult::of(key, &merged_state));
            merged_state.fired = true;
            (
                merged.end.saturating_add(allowed_lateness),
                TimerKind::Expire,
            )
        };
        windows.push(merged_state);
        self.state.windows_changed(key, 1, &removed);
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
        loop {
            let timers = self.state.due_timers(watermark)?;
            if timers.is_empty() {
                return Ok(());
            }
            for timer in timers {
                let allowed_lateness = self.allowed_lateness;
                let range = timer.range();
                // The expiry of an evicted window deletes it without reading it back. (Not
                // for sessions: a merged-away session leaves a stale timer.)
                if timer.kind == TimerKind::Expire
                    && !self.assigner.is_merging()
                    && !self.state.is_cached(&timer.key)
                {
                    self.state
                        .delete_stored_window(timer.key_group, &timer.key, range);
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
