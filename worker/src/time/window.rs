//! Window assignment: which windows an event time falls into, and how session windows
//! merge. Pure functions, tested as tables.

use sluice_crds::pipeline::WindowKind;

use super::event_time::{MAX_EVENT_TIME, MIN_EVENT_TIME};
use super::{Millis, duration_millis};

/// A window `[start, end)` in event time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WindowRange {
    /// First instant in the window.
    pub start: Millis,
    /// First instant after it.
    pub end: Millis,
}

impl WindowRange {
    /// Whether two windows share an instant (touching windows do not).
    pub fn overlaps(&self, other: &WindowRange) -> bool {
        self.start < other.end && other.start < self.end
    }

    /// The smallest window covering both.
    pub fn cover(&self, other: &WindowRange) -> WindowRange {
        WindowRange {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}

/// How events are assigned to windows, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowAssigner {
    /// Windows of `size` aligned to the Unix epoch.
    Tumbling {
        /// Length.
        size: Millis,
    },
    /// Windows of `size` starting at every multiple of `slide`.
    Sliding {
        /// Length.
        size: Millis,
        /// Distance between starts.
        slide: Millis,
    },
    /// `[t, t + gap)` per event, merged while they overlap.
    Session {
        /// Inactivity that closes a session.
        gap: Millis,
    },
}

impl From<WindowKind> for WindowAssigner {
    fn from(kind: WindowKind) -> Self {
        match kind {
            WindowKind::Tumbling { size } => Self::Tumbling {
                size: duration_millis(size).max(1),
            },
            WindowKind::Sliding { size, slide } => Self::Sliding {
                size: duration_millis(size).max(1),
                slide: duration_millis(slide).max(1),
            },
            WindowKind::Session { gap } => Self::Session {
                gap: duration_millis(gap).max(1),
            },
        }
    }
}

impl WindowAssigner {
    /// The earliest and latest event times whose windows all lie within years 0000 to
    /// 9999: every window starts at or after [`MIN_EVENT_TIME`] and ends at or before
    /// [`MAX_EVENT_TIME`] (its end is exclusive, but it is written too), so both bounds
    /// of every result can be written as RFC 3339 with a four-digit year. Exact: an event
    /// time is within them exactly when [`Self::assign`] gives it only such windows (before
    /// session merging, which only joins windows that are within them).
    pub fn event_time_bounds(&self) -> (Millis, Millis) {
        let (size, slide) = match *self {
            Self::Tumbling { size } => (size, size),
            Self::Sliding { size, slide } => (size, slide),
            Self::Session { gap } => {
                return (MIN_EVENT_TIME, MAX_EVENT_TIME.saturating_sub(gap));
            }
        };
        // In i128: sizes come from durations and may be near i64::MAX.
        let (size, slide) = (i128::from(size), i128::from(slide));
        let (min, max) = (i128::from(MIN_EVENT_TIME), i128::from(MAX_EVENT_TIME));
        // The windows of `t` start at the multiples of `slide` in (t - size, t]. The
        // earliest starts at or after `min` when t - size >= (first multiple at or after
        // min) - slide.
        let first_start = -((-min).div_euclid(slide)) * slide;
        let earliest = (first_start - slide + size).max(min);
        // The latest, at floor(t / slide) * slide, ends at or before `max` when
        // floor(t / slide) <= floor((max - size) / slide).
        let latest = (((max - size).div_euclid(slide) + 1) * slide - 1).min(max);
        let clamp = |time: i128| {
            Millis::try_from(time).unwrap_or(if time < 0 { Millis::MIN } else { Millis::MAX })
        };
        (clamp(earliest), clamp(latest))
    }

    /// Whether windows of a key merge (sessions).
    pub fn is_merging(&self) -> bool {
        matches!(self, Self::Session { .. })
    }

    /// Whether a window ends in `(before, after]`: a watermark moving from `before` to
    /// `after` reaches a window's end, which fires it where it holds events (a window
    /// fires when the watermark reaches its end). Always false for sessions, whose ends
    /// depend on each key's events.
    pub fn ends_between(&self, before: Millis, after: Millis) -> bool {
        let (size, slide) = match *self {
            Self::Tumbling { size } => (size, size),
            Self::Sliding { size, slide } => (size, slide),
            Self::Session { .. } => return false,
        };
        // The ends are the multiples of `slide` plus `size`: those at or before `time`
        // are counted, up to a constant, by floor((time - size) / slide). In i128: a
        // watermark may be near either end of i64.
        let (size, slide) = (i128::from(size), i128::from(slide));
        let ends_up_to = |time: Millis| (i128::from(time) - size).div_euclid(slide);
        after > before && ends_up_to(after) > ends_up_to(before)
    }

    /// The windows an event at `time` belongs to, earliest start first (before any
    /// session merging).
    pub fn assign(&self, time: Millis, windows: &mut Vec<WindowRange>) {
        windows.clear();
        match *self {
            Self::Tumbling { size } => {
                let start = time - time.rem_euclid(size);
                windows.push(WindowRange {
                    start,
                    end: start.saturating_add(size),
                });
            }
            Self::Sliding { size, slide } => {
                let last_start = time - time.rem_euclid(slide);
                // Starts from the earliest window still containing `time` up to the last.
                let mut start = last_start - ((size - 1) / slide) * slide;
                while start <= last_start {
                    let end = start.saturating_add(size);
                    if end > time {
                        windows.push(WindowRange { start, end });
                    }
                    start += slide;
                }
            }
            Self::Session { gap } => windows.push(WindowRange {
                start: time,
                end: time.saturating_add(gap),
            }),
        }
    }
}

/// The session that a new window `[t, t + gap)` forms with the existing sessions of its
/// key: the cover of it and every session it overlaps, transitively (sessions of a key
/// never overlap each other, so one pass over them sorted by start is enough), and the
/// indexes of the sessions it absorbs.
pub fn merge_session(sessions: &[WindowRange], new: WindowRange) -> (WindowRange, Vec<usize>) {
    let mut order: Vec<usize> = (0..sessions.len()).collect();
    order.sort_by_key(|&index| sessions[index].start);
    let mut merged = new;
    let mut absorbed = Vec::new();
    for index in order {
        if sessions[index].overlaps(&merged) {
            merged = merged.cover(&sessions[index]);
            absorbed.push(index);
        }
    }
    absorbed.sort_unstable();
    (merged, absorbed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: Millis, end: Millis) -> WindowRange {
        WindowRange { start, end }
    }

    #[test]
    fn a_window_ends_between_two_watermarks_when_one_ends_after_the_first_up_to_the_second() {
        let tumbling = WindowAssigner::Tumbling { size: 60 };
        let sliding = WindowAssigner::Sliding { size: 10, slide: 4 };
        let session = WindowAssigner::Session { gap: 5 };
        let cases = [
            // (assigner, before, after, a window ends in (before, after])
            (tumbling, 59, 60, true),
            (tumbling, 60, 60, false),
            (tumbling, 60, 119, false),
            (tumbling, 0, 59, false),
            (tumbling, 0, 119, true),
            (tumbling, -1, 0, true),
            (tumbling, 61, 60, false),
            (tumbling, Millis::MIN, -1_000, true),
            (tumbling, Millis::MIN, Millis::MIN + 1, false),
            (tumbling, 0, Millis::MAX, true),
            // Sliding windows of 10 every 4 end at 2, 6, 10, 14, ...
            (sliding, 5, 6, true),
            (sliding, 6, 9, false),
            (sliding, 9, 10, true),
            (sliding, -2, 1, false),
            (sliding, -3, 1, true),
            (sliding, -2, 2, true),
            (session, 0, 1_000, false),
        ];
        for (assigner, before, after, expected) in cases {
            assert_eq!(
                assigner.ends_between(before, after),
                expected,
                "{assigner:?} from {before} to {after}"
            );
        }
    }

    proptest::proptest! {
        /// Against the windows themselves: some time in `(before, after]` is the end of
        /// a window that the time just before it belongs to.
        #[test]
        fn ends_between_agrees_with_the_assigned_windows(
            size in 1..40i64,
            slide in 1..40i64,
            before in -200..200i64,
            length in 0..120i64,
        ) {
            let slide = slide.min(size);
            let after = before + length;
            for assigner in [
                WindowAssigner::Tumbling { size },
                WindowAssigner::Sliding { size, slide },
            ] {
                let mut windows = Vec::new();
                let expected = ((before + 1)..=after).any(|end| {
                    assigner.assign(end - 1, &mut windows);
                    windows.iter().any(|window| window.end == end)
                });
                proptest::prop_assert_eq!(
                    assigner.ends_between(before, after),
                    expected,
                    "{:?} from {} to {}",
                    assigner,
                    before,
                    after
                );
            }
        }
    }

    #[test]
    fn assigns_tumbling_and_sliding_windows() {
        let cases: Vec<(WindowAssigner, Millis, Vec<WindowRange>)> = vec![
            (WindowAssigner::Tumbling { size: 60 }, 0, vec![range(0, 60)]),
            (
                WindowAssigner::Tumbling { size: 60 },
                59,
                vec![range(0, 60)],
            ),
            (
                WindowAssigner::Tumbling { size: 60 },
                60,
                vec![range(60, 120)],
            ),
            (
                WindowAssigner::Tumbling { size: 60 },
                -1,
                vec![range(-60, 0)],
            ),
            (
                WindowAssigner::Sliding { size: 10, slide: 5 },
                1,
                vec![range(-5, 5), range(0, 10)],
            ),
            (
                WindowAssigner::Sliding { size: 10, slide: 5 },
                5,
                vec![range(0, 10), range(5, 15)],
            ),
            (
                WindowAssigner::Sliding { size: 10, slide: 5 },
                9,
                vec![range(0, 10), range(5, 15)],
            ),
            (
                WindowAssigner::Sliding {
                    size: 10,
                    slide: 10,
                },
                9,
                vec![range(0, 10)],
            ),
            (
                WindowAssigner::Sliding { size: 10, slide: 3 },
                9,
                vec![range(0, 10), range(3, 13), range(6, 16), range(9, 19)],
            ),
            (
                WindowAssigner::Sliding { size: 10, slide: 4 },
                1,
                vec![range(-8, 2), range(-4, 6), range(0, 10)],
            ),
            (WindowAssigner::Session { gap: 30 }, 7, vec![range(7, 37)]),
        ];
        let mut windows = Vec::new();
        for (assigner, time, expected) in cases {
            assigner.assign(time, &mut windows);
            assert_eq!(windows, expected, "{assigner:?} at {time}");
        }
    }

    #[test]
    fn every_sliding_window_contains_its_event() {
        let mut windows = Vec::new();
        for size in 1..12 {
            for slide in 1..=size {
                let assigner = WindowAssigner::Sliding { size, slide };
                for time in -30..30 {
                    assigner.assign(time, &mut windows);
                    // the multiples of slide in (time - size, time]
                    let expected = time.div_euclid(slide) - (time - size).div_euclid(slide);
                    assert!(windows.iter().all(|w| w.start <= time && time < w.end));
                    assert!(
                        windows
                            .iter()
                            .all(|w| w.start.rem_euclid(slide) == 0 && w.end - w.start == size)
                    );
                    assert_eq!(
                        i64::try_from(windows.len()).unwrap(),
                        expected,
                        "{size}/{slide} at {time}"
                    );
                }
            }
        }
    }

    #[test]
    fn event_time_bounds_are_exactly_the_times_with_writable_windows() {
        use crate::time::event_time::{MAX_EVENT_TIME, MIN_EVENT_TIME};
        let writable = |windows: &[WindowRange]| {
            windows
                .iter()
                .all(|window| window.start >= MIN_EVENT_TIME && window.end <= MAX_EVENT_TIME)
        };
        let minute = 60_000;
        let week = 7 * 24 * 3_600_000;
        let assigners = [
            WindowAssigner::Tumbling { size: minute },
            WindowAssigner::Tumbling { size: week },
            WindowAssigner::Tumbling { size: 7 },
            WindowAssigner::Sliding {
                size: 10 * minute,
                slide: 5 * minute,
            },
            WindowAssigner::Sliding {
                size: week,
                slide: 3 * 3_600_000 + 7,
            },
            WindowAssigner::Sliding { size: 10, slide: 3 },
            WindowAssigner::Session { gap: minute },
        ];
        let mut windows = Vec::new();
        for assigner in assigners {
            let (earliest, latest) = assigner.event_time_bounds();
            for time in (earliest - 3..=earliest + 3).chain(latest - 3..=latest + 3) {
                if !(MIN_EVENT_TIME..=MAX_EVENT_TIME).contains(&time) {
                    continue;
                }
                assigner.assign(time, &mut windows);
                assert_eq!(
                    writable(&windows),
                    (earliest..=latest).contains(&time),
                    "{assigner:?} at {time} ({earliest}..={latest}): {windows:?}"
                );
            }
        }
        // A tumbling week does not divide the years: the first whole week starts after
        // 0000-01-01, and earlier events would be in a week starting in year -0001.
        let (earliest, _) = WindowAssigner::Tumbling { size: week }.event_time_bounds();
        assert!(earliest > MIN_EVENT_TIME && earliest % week == 0);
    }

    #[test]
    fn merges_sessions_it_overlaps() {
        let cases = vec![
            (vec![], range(10, 20), range(10, 20), vec![]),
            (vec![range(0, 10)], range(10, 20), range(10, 20), vec![]),
            (vec![range(0, 11)], range(10, 20), range(0, 20), vec![0]),
            (
                vec![range(25, 40), range(0, 12)],
                range(10, 26),
                range(0, 40),
                vec![0, 1],
            ),
            (
                vec![range(25, 40), range(0, 12), range(50, 60)],
                range(15, 20),
                range(15, 20),
                vec![],
            ),
        ];
        for (sessions, new, merged, absorbed) in cases {
            assert_eq!(
                merge_session(&sessions, new),
                (merged, absorbed),
                "{sessions:?} + {new:?}"
            );
        }
    }
}
