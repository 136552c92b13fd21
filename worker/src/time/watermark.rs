//! Watermarks: how far event time has certainly progressed.
//!
//! Each source partition's watermark is the greatest event time seen on it minus the
//! maximum out-of-orderness. The operator watermark is the least over the active
//! partitions; a partition that has received nothing for longer than the idle timeout
//! (in processing time, handed in by the caller) stops holding it back. The operator
//! watermark never goes backwards.
//!
//! A partition counts from the moment it is assigned ([`WatermarkTracker::assign`], as a
//! Kafka consumer is told after a rebalance) or from its first record, whichever comes
//! first: an assigned partition that has sent nothing holds the watermark at its start
//! until it sends an event or goes idle, so its first events are not late because a
//! faster partition ran ahead.

use std::collections::BTreeMap;

use super::Millis;

/// The watermark before any event: nothing has happened yet.
pub const NO_WATERMARK: Millis = Millis::MIN;
/// The watermark at the end of a bounded input: every window can fire.
pub const END_OF_INPUT: Millis = Millis::MAX;

/// A source partition: a topic of the job (its position in `spec.source.topics`) and one
/// of its partitions. Partition 0 of two topics are two partitions with two clocks. Local
/// mode's input file is topic 0, partition 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionId {
    /// The topic's position in `spec.source.topics`.
    pub topic: u16,
    /// The partition of that topic.
    pub partition: i32,
}

impl PartitionId {
    /// Partition `partition` of the job's topic number `topic`.
    pub const fn new(topic: u16, partition: i32) -> Self {
        Self { topic, partition }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PartitionClock {
    /// Greatest event time seen, or `None` before the first event with a valid time.
    max_event_time: Option<Millis>,
    /// Processing time of the latest record, valid or not.
    last_activity: Millis,
}

/// Tracks the watermark of each partition and of the operator.
#[derive(Clone, Debug)]
pub struct WatermarkTracker {
    max_out_of_orderness: Millis,
    idle_timeout: Option<Millis>,
    partitions: BTreeMap<PartitionId, PartitionClock>,
    current: Millis,
}

impl WatermarkTracker {
    /// A tracker with no partitions yet.
    pub fn new(max_out_of_orderness: Millis, idle_timeout: Option<Millis>) -> Self {
        Self {
            max_out_of_orderness,
            idle_timeout,
            partitions: BTreeMap::new(),
            current: NO_WATERMARK,
        }
    }

    /// The operator watermark.
    pub fn current(&self) -> Millis {
        self.current
    }

    /// Partitions assigned at processing time `now`: each holds the watermark back until
    /// it sends an event with a valid time or stays silent longer than the idle timeout.
    /// Partitions already known keep their clocks.
    pub fn assign(&mut self, partitions: &[PartitionId], now: Millis) {
        for partition in partitions {
            self.partitions.entry(*partition).or_insert(PartitionClock {
                max_event_time: None,
                last_activity: now,
            });
        }
    }

    /// Each known partition's greatest event time and whether it is idle at processing
    /// time `now` (what watermark records report).
    pub fn clocks_at(
        &self,
        now: Millis,
    ) -> impl Iterator<Item = (PartitionId, Option<Millis>, bool)> + '_ {
        self.partitions.iter().map(move |(partition, clock)| {
            (*partition, clock.max_event_time, self.is_idle(clock, now))
        })
    }

    /// The greatest event time seen on each known partition, for a checkpoint.
    pub fn clocks(&self) -> impl Iterator<Item = (PartitionId, Option<Millis>)> + '_ {
        self.partitions
            .iter()
            .map(|(partition, clock)| (*partition, clock.max_event_time))
    }

    /// Returns to a checkpoint at processing time `now`: the operator watermark and the
    /// partitions' clocks as they were (their idleness starts again from `now`).
    pub fn restore(
        &mut self,
        watermark: Millis,
        clocks: impl IntoIterator<Item = (PartitionId, Option<Millis>)>,
        now: Millis,
    ) {
        self.current = watermark;
        self.partitions = clocks
            .into_iter()
            .map(|(partition, max_event_time)| {
                (
                    partition,
                    PartitionClock {
                        max_event_time,
                        last_activity: now,
                    },
                )
            })
            .collect();
    }

    /// Reading resumes at processing time `now` after a pause (a stop-with-savepoint,
    /// or a worker reading the repartition topic before its sources): the partitions
    /// were not read, so their silence says nothing, and their idleness starts again
    /// from `now`.
    pub fn resume(&mut self, now: Millis) {
        for clock in self.partitions.values_mut() {
            clock.last_activity = clock.last_activity.max(now);
        }
    }

    /// Partitions revoked (moved to another worker): they no longer hold the watermark.
    pub fn revoke(&mut self, partitions: &[PartitionId]) {
        for partition in partitions {
            self.partitions.remove(partition);
        }
    }

    /// A record arrived on `partition` at processing time `now`, with a valid event time
    /// (`Some`) or not (`None`: it still shows the partition is active).
    pub fn observe(&mut self, partition: PartitionId, event_time: Option<Millis>, now: Millis) {
        let clock = self.partitions.entry(partition).or_insert(PartitionClock {
            max_event_time: None,
            last_activity: now,
        });
        clock.last_activity = clock.last_activity.max(now);
        if let Some(event_time) = event_time {
            clock.max_event_time = Some(
                clock
                    .max_event_time
                    .map_or(event_time, |max| max.max(event_time)),
            );
        }
    }

    /// Recomputes the operator watermark at processing time `now`; returns it when it
    /// advanced.
    pub fn advance(&mut self, now: Millis) -> Option<Millis> {
        let candidate = self
            .partitions
            .values()
            .filter(|clock| !self.is_idle(clock, now))
            .map(|clock| match clock.max_event_time {
                Some(max) => max.saturating_sub(self.max_out_of_orderness),
                None => NO_WATERMARK,
            })
            .min()?;
        if candidate > self.current {
            self.current = candidate;
            Some(candidate)
        } else {
            None
        }
    }

    /// The input ended: every window may fire.
    pub fn end_of_input(&mut self) -> Millis {
        self.current = END_OF_INPUT;
        END_OF_INPUT
    }

    fn is_idle(&self, clock: &PartitionClock, now: Millis) -> bool {
        self.idle_timeout
            .is_some_and(|timeout| now.saturating_sub(clock.last_activity) > timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(partition: i32) -> PartitionId {
        PartitionId::new(0, partition)
    }

    /// (partition, event time, processing time) then the expected operator watermark.
    type Step = (i32, Option<Millis>, Millis, Millis);

    fn run(idle_timeout: Option<Millis>, steps: &[Step]) {
        let mut tracker = WatermarkTracker::new(5, idle_timeout);
        for (index, &(partition, event_time, now, expected)) in steps.iter().enumerate() {
            tracker.observe(p(partition), event_time, now);
            tracker.advance(now);
            assert_eq!(tracker.current(), expected, "step {index}");
        }
    }

    #[test]
    fn one_partition_follows_the_max_event_time_minus_out_of_orderness() {
        run(
            None,
            &[
                (0, Some(100), 0, 95),
                (0, Some(90), 1, 95),
                (0, Some(120), 2, 115),
                (0, None, 3, 115),
            ],
        );
    }

    #[test]
    fn the_slowest_partition_holds_the_watermark_back() {
        run(
            None,
            &[
                (0, Some(100), 0, 95),
                (1, None, 0, 95),
                (1, Some(50), 1, 95),
                (1, Some(200), 2, 95),
                (0, Some(300), 3, 195),
            ],
        );
    }

    #[test]
    fn an_idle_partition_stops_holding_it_back_and_never_lowers_it() {
        run(
            Some(10),
            &[
                (0, Some(100), 0, 95),
                (1, Some(20), 0, 95),
                (0, Some(200), 5, 95),
                (0, Some(300), 11, 295),
                // partition 1 wakes up far behind: the watermark stays
                (1, Some(30), 12, 295),
            ],
        );
    }

    #[test]
    fn an_assigned_partition_holds_the_watermark_before_its_first_record() {
        let mut tracker = WatermarkTracker::new(5, Some(10));
        tracker.assign(&[p(0), p(1)], 0);
        tracker.observe(p(0), Some(100), 1);
        assert_eq!(tracker.advance(1), None, "partition 1 has sent nothing yet");
        assert_eq!(tracker.current(), NO_WATERMARK);
        tracker.observe(p(1), Some(50), 2);
        assert_eq!(tracker.advance(2), Some(45));
        // Revoked, partition 1 no longer holds it back.
        tracker.revoke(&[p(1)]);
        assert_eq!(tracker.advance(3), Some(95));
    }

    #[test]
    fn a_pause_longer_than_the_idle_timeout_makes_no_partition_idle() {
        let mut tracker = WatermarkTracker::new(5, Some(100));
        tracker.assign(&[p(0), p(1)], 0);
        tracker.observe(p(0), Some(1_000), 10);
        tracker.observe(p(1), Some(500), 10);
        tracker.advance(10);
        assert_eq!(tracker.current(), 495);
        // Paused from 10 to 1_000: without the resume both would be idle, and the first
        // partition read again would move the watermark alone.
        tracker.resume(1_000);
        tracker.observe(p(0), Some(2_000), 1_001);
        assert_eq!(tracker.advance(1_001), None);
        assert_eq!(tracker.current(), 495);
        assert!(tracker.clocks_at(1_001).all(|(_, _, idle)| !idle));
        // Silent for longer than the timeout after the resume: idle, as before.
        tracker.observe(p(0), Some(2_000), 1_100);
        assert_eq!(tracker.advance(1_101), Some(1_995));
    }

    #[test]
    fn an_assigned_partition_that_stays_silent_goes_idle() {
        let mut tracker = WatermarkTracker::new(5, Some(10));
        tracker.assign(&[p(0), p(1)], 0);
        tracker.observe(p(0), Some(100), 5);
        assert_eq!(tracker.advance(10), None);
        assert_eq!(tracker.advance(11), Some(95));
    }

    #[test]
    fn end_of_input_releases_every_window() {
        let mut tracker = WatermarkTracker::new(5, None);
        tracker.observe(p(0), Some(10), 0);
        tracker.advance(0);
        assert_eq!(tracker.end_of_input(), END_OF_INPUT);
        assert_eq!(tracker.current(), END_OF_INPUT);
    }
}
