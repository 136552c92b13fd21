//! Window assignment: which windows an event time falls into, and how session windows
//! merge. Pure functions, tested as tables.

use sluice_crds::pipeline::WindowKind;

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
    /// How far past an event's time its windows may end: the size, or the session gap.
    pub fn reach(&self) -> Millis {
        match *self {
            Self::Tumbling { size } | Self::Sliding { size, .. } => size,
            Self::Session { gap } => gap,
        }
    }

    /// Whether windows of a key merge (sessions).
    pub fn is_merging(&self) -> bool {
        matches!(self, Self::Session { .. })
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
