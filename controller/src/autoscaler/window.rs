//! The samples of one job over the autoscaler's window, and what they say (pure).
//!
//! Each source partition is classified as Burrow classifies a consumer's partitions
//! (docs/architecture.md, "The autoscaler"), from its samples alone; rates and the
//! workers' utilization are taken over the whole window.

use std::collections::{BTreeMap, VecDeque};

use sluice_crds::status::PartitionClasses;

/// A source partition: topic and partition number.
pub type Partition = (String, i32);

/// One reading of one source partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    /// The last stable offset.
    pub end: i64,
    /// The offset the job committed (where a restarted worker resumes).
    pub position: i64,
}

impl Reading {
    /// Records not yet processed.
    pub fn lag(&self) -> i64 {
        (self.end - self.position).max(0)
    }
}

/// One worker's counters in a sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WorkerReading {
    /// Seconds its processing loop spent on records and timers.
    pub busy_seconds: f64,
    /// CPU seconds its process used, every thread (`None`: not served).
    pub cpu_seconds: Option<f64>,
    /// The cores it may use, its CPU limit (`None`: not served).
    pub cpu_limit_cores: Option<f64>,
}

/// One sample of a job.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// When it was taken, in seconds (any fixed origin).
    pub at: f64,
    /// Every source partition's reading.
    pub partitions: BTreeMap<Partition, Reading>,
    /// Each worker's counters, by ordinal (`None`: not readable).
    pub workers: Vec<Option<WorkerReading>>,
    /// Whether every worker was ready.
    pub workers_ready: bool,
}

/// How one partition behaved over the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionClass {
    /// Lag reached zero, or shrank at least once: the job keeps up.
    Ok,
    /// The position advances but lag grew or held at every sample: falling behind.
    Warn,
    /// The position did not move while lag stayed above zero, the workers up.
    Stall,
    /// As `Stall`, with workers not ready: nothing runs to commit.
    Stop,
    /// The position went back.
    Rewind,
}

/// Classifies one partition from its readings, oldest first. Positions move only when the
/// workers commit (at checkpoints), so growth of lag is judged between the readings where
/// the position moved, as Burrow judges it between commits. A partition whose input
/// stopped with one record of lag is caught up: that record is a transaction's commit
/// marker, which takes an offset and is never delivered (the last stable offset is past
/// it once the transaction is closed).
pub fn classify(readings: &[Reading], workers_ready: bool) -> PartitionClass {
    if readings.len() < 2 || readings.iter().any(|reading| reading.lag() == 0) {
        // A partition seen once (added during the window) is judged in the next one.
        return PartitionClass::Ok;
    }
    let input_stopped = readings.windows(2).all(|pair| pair[1].end == pair[0].end);
    if input_stopped && readings.iter().any(|reading| reading.lag() <= 1) {
        return PartitionClass::Ok;
    }
    if readings
        .windows(2)
        .any(|pair| pair[1].position < pair[0].position)
    {
        return PartitionClass::Rewind;
    }
    let (Some(first), Some(last)) = (readings.first(), readings.last()) else {
        return PartitionClass::Ok;
    };
    if first.position == last.position {
        return if workers_ready {
            PartitionClass::Stall
        } else {
            PartitionClass::Stop
        };
    }
    // The readings where the position moved (and the first): the commits.
    let mut commits: Vec<Reading> = Vec::with_capacity(readings.len());
    for reading in readings {
        if commits
            .last()
            .is_none_or(|previous| previous.position != reading.position)
        {
            commits.push(*reading);
        }
    }
    let never_shrank = commits
        .windows(2)
        .all(|pair| pair[1].lag() >= pair[0].lag());
    let newest = commits.last().copied().unwrap_or(*last);
    if never_shrank && newest.lag() > first.lag() {
        PartitionClass::Warn
    } else {
        PartitionClass::Ok
    }
}

/// What a full window says.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// When the window's oldest sample was taken (the window's clock).
    pub started_at: f64,
    /// Source partitions per class.
    pub classes: PartitionClasses,
    /// The partitions that are stalled, stopped or rewound, for the reason.
    pub stuck: Vec<Partition>,
    /// Lag at the newest sample, summed over partitions.
    pub lag: i64,
    /// Records per second arriving (growth of end offsets).
    pub input_rate: f64,
    /// Records per second arriving over the newest quarter of the window (at least the
    /// last two samples).
    pub recent_input_rate: f64,
    /// Records per second committed (growth of positions).
    pub processing_rate: f64,
    /// Busy share of the workers, 0 to 1 (`None`: a worker's counter was unreadable or
    /// went back, as after a worker restart).
    pub utilization: Option<f64>,
    /// The number of source partitions.
    pub partitions: i32,
    /// Partitions with lag whose position has not moved for `Window::recent` seconds: not
    /// stalled over the whole window (yet), but not to be scaled for either.
    pub quiet: Vec<Partition>,
    /// Whether every worker was ready at the newest sample.
    pub workers_ready: bool,
}

/// The samples of one job since its workers last restarted.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    /// What the samples measured: the deployed generation and parallelism. Samples of
    /// other workers are not compared.
    pub measures: (i64, i32),
    /// How many seconds a full window covers.
    pub span: f64,
    /// How long a position may rest between commits (two checkpoint intervals and a
    /// sample interval): a partition with lag whose position rested longer is quiet.
    pub recent: f64,
    samples: VecDeque<Sample>,
}

impl Window {
    /// An empty window of `span` seconds over workers `measures`, whose positions move at
    /// least every `recent` seconds while they consume.
    pub fn new(measures: (i64, i32), span: f64, recent: f64) -> Self {
        Self {
            measures,
            span,
            recent,
            samples: VecDeque::new(),
        }
    }

    /// Adds a sample, keeping those within `span` of it (and the one just before, so a
    /// full window covers at least `span`).
    pub fn push(&mut self, sample: Sample) {
        let newest = sample.at;
        self.samples.push_back(sample);
        while self.samples.len() > 2 && newest - self.samples[1].at >= self.span {
            self.samples.pop_front();
        }
    }

    /// The time of the newest sample.
    pub fn newest(&self) -> Option<f64> {
        self.samples.back().map(|sample| sample.at)
    }

    /// How many samples it holds.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether it holds no sample.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Whether the samples cover the whole span.
    pub fn is_full(&self) -> bool {
        match (self.samples.front(), self.samples.back()) {
            (Some(first), Some(last)) => last.at - first.at >= self.span,
            _ => false,
        }
    }

    /// What the window says, once full (`None` before).
    pub fn summary(&self) -> Option<Summary> {
        if !self.is_full() {
            return None;
        }
        let (first, last) = (self.samples.front()?, self.samples.back()?);
        let seconds = last.at - first.at;
        let mut classes = PartitionClasses::default();
        let mut stuck = Vec::new();
        let mut quiet = Vec::new();
        let (mut lag, mut input, mut processed) = (0_i64, 0_i64, 0_i64);
        for (partition, newest) in &last.partitions {
            // A partition added during the window counts from its first sample.
            let readings: Vec<Reading> = self
                .samples
                .iter()
                .filter_map(|sample| sample.partitions.get(partition).copied())
                .collect();
            let oldest = readings.first().copied().unwrap_or(*newest);
            lag += newest.lag();
            input += (newest.end - oldest.end).max(0);
            processed += (newest.position - oldest.position).max(0);
            let class = classify(&readings, last.workers_ready);
            match class {
                PartitionClass::Ok => classes.ok += 1,
                PartitionClass::Warn => classes.warn += 1,
                PartitionClass::Stall => classes.stall += 1,
                PartitionClass::Stop => classes.stop += 1,
                PartitionClass::Rewind => classes.rewind += 1,
            }
            if matches!(
                class,
                PartitionClass::Stall | PartitionClass::Stop | PartitionClass::Rewind
            ) {
                stuck.push(partition.clone());
            } else if newest.lag() > 1 {
                // Has the position moved lately? (A job that just got stuck still shows
                // its earlier progress for most of a window.)
                let rested_since = self
                    .samples
                    .iter()
                    .rev()
                    .filter_map(|sample| {
                        sample
                            .partitions
                            .get(partition)
                            .map(|reading| (sample.at, reading.position))
                    })
                    .take_while(|(_, position)| *position == newest.position)
                    .last()
                    .map_or(last.at, |(at, _)| at);
                if last.at - rested_since > self.recent {
                    quiet.push(partition.clone());
                }
            }
        }
        // The newest quarter of the window: from the newest sample at least a quarter span
        // older than the newest (or the one before it).
        let count = self.samples.len();
        let recent_start = self
            .samples
            .iter()
            .rev()
            .skip(1)
            .find(|sample| last.at - sample.at >= self.span / 4.0)
            .unwrap_or(&self.samples[count - 2]);
        let recent_seconds = last.at - recent_start.at;
        let recent_input: i64 = last
            .partitions
            .iter()
            .map(|(partition, newest)| {
                recent_start
                    .partitions
                    .get(partition)
                    .map_or(0, |older| (newest.end - older.end).max(0))
            })
            .sum();
        Some(Summary {
            started_at: first.at,
            recent_input_rate: if recent_seconds > 0.0 {
                recent_input as f64 / recent_seconds
            } else {
                input as f64 / seconds
            },
            classes,
            stuck,
            lag,
            input_rate: input as f64 / seconds,
            processing_rate: processed as f64 / seconds,
            utilization: utilization(&first.workers, &last.workers, seconds),
            partitions: i32::try_from(last.partitions.len()).unwrap_or(i32::MAX),
            quiet,
            workers_ready: last.workers_ready,
        })
    }
}

/// The workers' mean utilization between two readings of their counters. A worker's is
/// the larger of its loop's busy share and its CPU use over its CPU limit: the loop waits
/// for records while the Kafka client's threads use up the quota, so a worker limited to
/// a fraction of a core can be saturated with its loop half idle.
fn utilization(
    before: &[Option<WorkerReading>],
    after: &[Option<WorkerReading>],
    seconds: f64,
) -> Option<f64> {
    if before.is_empty() || before.len() != after.len() || seconds <= 0.0 {
        return None;
    }
    let mut total = 0.0;
    for (before, after) in before.iter().zip(after) {
        let (before, after) = ((*before)?, (*after)?);
        let busy = after.busy_seconds - before.busy_seconds;
        if busy < 0.0 {
            return None;
        }
        let cpu = match (before.cpu_seconds, after.cpu_seconds, after.cpu_limit_cores) {
            (Some(before), Some(after), Some(limit)) if after >= before && limit > 0.0 => {
                (after - before) / (seconds * limit)
            }
            _ => 0.0,
        };
        total += (busy / seconds).max(cpu).min(1.0);
    }
    Some(total / before.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readings(pairs: &[(i64, i64)]) -> Vec<Reading> {
        pairs
            .iter()
            .map(|&(end, position)| Reading { end, position })
            .collect()
    }

    #[test]
    fn partitions_are_classified_as_burrow_does() {
        use PartitionClass::*;
        // (case, (end, position) per sample, workers ready, class)
        type Case<'a> = (&'a str, &'a [(i64, i64)], bool, PartitionClass);
        let cases: [Case; 13] = [
            (
                "caught up at one sample",
                &[(10, 5), (20, 20), (30, 25)],
                true,
                Ok,
            ),
            (
                "idle and caught up",
                &[(10, 10), (10, 10), (10, 10)],
                true,
                Ok,
            ),
            (
                "lag shrinking",
                &[(100, 10), (110, 60), (120, 100)],
                true,
                Ok,
            ),
            (
                "steady lag between commits",
                &[(100, 90), (110, 100), (120, 110)],
                true,
                Ok,
            ),
            (
                "lag oscillating",
                &[(100, 80), (110, 100), (120, 105)],
                true,
                Ok,
            ),
            (
                "commits between samples",
                &[(100, 80), (200, 80), (300, 150), (400, 150), (500, 220)],
                true,
                Warn,
            ),
            (
                "caught up but for a commit marker",
                &[(101, 100), (101, 100), (101, 100)],
                true,
                Ok,
            ),
            ("seen once", &[(100, 50)], true, Ok),
            (
                "falling behind",
                &[(100, 80), (200, 150), (300, 220)],
                true,
                Warn,
            ),
            (
                "not moving, workers up",
                &[(100, 50), (120, 50), (140, 50)],
                true,
                Stall,
            ),
            (
                "not moving, idle input",
                &[(100, 50), (100, 50), (100, 50)],
                true,
                Stall,
            ),
            (
                "not moving, workers down",
                &[(100, 50), (120, 50), (140, 50)],
                false,
                Stop,
            ),
            (
                "went back",
                &[(100, 50), (120, 60), (140, 40)],
                true,
                Rewind,
            ),
        ];
        for (case, pairs, ready, class) in cases {
            assert_eq!(classify(&readings(pairs), ready), class, "{case}");
        }
    }

    fn busy_only(busy_seconds: f64) -> WorkerReading {
        WorkerReading {
            busy_seconds,
            cpu_seconds: None,
            cpu_limit_cores: None,
        }
    }

    fn sample(at: f64, pairs: &[(i64, i64)], busy: &[Option<f64>]) -> Sample {
        Sample {
            at,
            partitions: pairs
                .iter()
                .enumerate()
                .map(|(partition, &(end, position))| {
                    (
                        ("in".to_string(), i32::try_from(partition).unwrap()),
                        Reading { end, position },
                    )
                })
                .collect(),
            workers: busy.iter().map(|busy| busy.map(busy_only)).collect(),
            workers_ready: true,
        }
    }

    #[test]
    fn a_window_decides_nothing_until_it_covers_its_span() {
        let mut window = Window::new((1, 2), 30.0, 20.0);
        window.push(sample(0.0, &[(10, 0)], &[Some(0.0)]));
        window.push(sample(15.0, &[(160, 100)], &[Some(7.5)]));
        assert!(window.summary().is_none(), "15 s of 30");
        window.push(sample(30.0, &[(310, 200)], &[Some(15.0)]));
        let summary = window.summary().expect("full");
        assert_eq!(summary.lag, 110);
        assert!((summary.input_rate - 10.0).abs() < 1e-9);
        assert!((summary.processing_rate - 200.0 / 30.0).abs() < 1e-9);
        assert_eq!(summary.utilization, Some(0.5));
        assert_eq!(summary.classes.warn, 1);
        assert!(summary.quiet.is_empty());
        // Older samples leave once the newer ones cover the span.
        window.push(sample(45.0, &[(450, 450)], &[Some(20.0)]));
        window.push(sample(60.0, &[(600, 600)], &[Some(25.0)]));
        assert_eq!(window.len(), 3);
        assert_eq!(window.summary().expect("full").classes.ok, 1);
    }

    #[test]
    fn a_partition_that_just_stopped_moving_is_quiet_before_it_is_stalled() {
        let mut window = Window::new((1, 1), 30.0, 10.0);
        // Keeping up, then stuck at position 300 from 20 s on, with lag growing.
        for (at, end, position) in [
            (0.0, 100, 100),
            (10.0, 200, 200),
            (20.0, 300, 300),
            (30.0, 400, 300),
            (40.0, 500, 300),
        ] {
            window.push(sample(at, &[(end, position)], &[Some(at)]));
        }
        let summary = window.summary().expect("full");
        assert_eq!(summary.classes.ok, 1, "lag was zero in the window");
        assert_eq!(summary.quiet, vec![("in".to_string(), 0)]);
    }

    #[test]
    fn utilization_is_unknown_when_a_counter_is_missing_or_went_back() {
        let busy = |values: &[Option<f64>]| -> Vec<Option<WorkerReading>> {
            values.iter().map(|value| value.map(busy_only)).collect()
        };
        assert_eq!(utilization(&busy(&[Some(0.0)]), &busy(&[None]), 10.0), None);
        assert_eq!(
            utilization(&busy(&[Some(9.0)]), &busy(&[Some(1.0)]), 10.0),
            None,
            "restarted"
        );
        assert_eq!(
            utilization(&busy(&[Some(0.0)]), &busy(&[Some(1.0), Some(1.0)]), 10.0),
            None
        );
        assert_eq!(
            utilization(
                &busy(&[Some(0.0), Some(0.0)]),
                &busy(&[Some(10.0), Some(5.0)]),
                10.0
            ),
            Some(0.75)
        );
    }

    #[test]
    fn a_worker_is_as_busy_as_its_loop_or_its_cpu_quota_says_whichever_is_more() {
        let reading = |busy_seconds: f64, cpu: Option<f64>, limit: Option<f64>| {
            Some(WorkerReading {
                busy_seconds,
                cpu_seconds: cpu,
                cpu_limit_cores: limit,
            })
        };
        let cases = [
            // (case, before, after over 10 s, utilization)
            (
                "loop 30% busy, 0.09 of a 0.1-core limit: 90%",
                reading(0.0, Some(1.0), Some(0.1)),
                reading(3.0, Some(1.9), Some(0.1)),
                0.9,
            ),
            (
                "loop 60% busy, a fifth of 2 cores: 60%",
                reading(0.0, Some(0.0), Some(2.0)),
                reading(6.0, Some(4.0), Some(2.0)),
                0.6,
            ),
            (
                "throttled beyond the limit: capped at 100%",
                reading(0.0, Some(0.0), Some(0.1)),
                reading(2.0, Some(1.5), Some(0.1)),
                1.0,
            ),
            (
                "no CPU metrics (an older worker): the loop's share",
                reading(0.0, None, None),
                reading(4.0, None, None),
                0.4,
            ),
            (
                "CPU counter restarted: the loop's share",
                reading(0.0, Some(9.0), Some(1.0)),
                reading(4.0, Some(1.0), Some(1.0)),
                0.4,
            ),
            (
                "a zero limit: the loop's share",
                reading(0.0, Some(0.0), Some(0.0)),
                reading(4.0, Some(1.0), Some(0.0)),
                0.4,
            ),
        ];
        for (case, before, after, expected) in cases {
            let found = utilization(&[before], &[after], 10.0).expect(case);
            assert!((found - expected).abs() < 1e-9, "{case}: {found}");
        }
    }
}
