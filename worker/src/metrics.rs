//! The worker's counters, in a prometheus-client registry (served by the admin API in
//! Kafka mode; summarised at the end of a local run).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::dead_letter::DeadLetterReason;

/// The label of a dead-letter counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The kebab-case reason.
    pub reason: &'static str,
}

/// The label of the hop metric: how keyed events reach their windows.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HopLabels {
    /// `topic`, `draining` or `in-process`.
    pub hop: &'static str,
}

/// The values of [`HopLabels::hop`], each a series of `sluice_worker_hop`.
pub const HOPS: [&str; 3] = ["topic", "draining", "in-process"];

/// The labels of a per-partition metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
}

/// The worker's metrics (the engine's and, in Kafka mode, the commit protocol's and the
/// clients'). Cloning shares the same counters.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Records read from the source.
    pub events_in: Counter,
    /// Seconds spent on records and timers, not waiting for records nor committing (Kafka
    /// mode): busy time over wall time is how busy the worker is (the autoscaler reads it).
    pub busy_seconds: Counter<f64, AtomicU64>,
    /// Results written to the sink.
    pub results_out: Counter,
    /// Dead letters, by reason.
    pub dead_letters: Family<ReasonLabels, Counter>,
    /// Events later than their windows' allowed lateness.
    pub late_events: Counter,
    /// Events dropped by a filter.
    pub filtered_events: Counter,
    /// Windows with state.
    pub open_windows: Gauge,
    /// The operator watermark (milliseconds since the epoch).
    pub watermark: Gauge,
    /// How far the watermark is behind the wall clock, in milliseconds (Kafka mode).
    pub watermark_lag: Gauge,
    /// With `partitioning: Any`, how keyed events reach their windows: 1 for the hop
    /// taken (through the repartition topic, draining it, or in process), 0 for the
    /// others (Kafka mode; no series with `ByKey` or without a window, which have no
    /// hop, nor while a run restarts).
    pub hop: Family<HopLabels, Gauge>,
    /// Records read, per source or repartition partition (Kafka mode).
    pub partition_records_in: Family<PartitionLabels, Counter>,
    /// The next offset to read, per partition (Kafka mode).
    pub consumer_position: Family<PartitionLabels, Gauge>,
    /// The partition's last stable offset (what a read_committed consumer can reach).
    pub end_offset: Family<PartitionLabels, Gauge>,
    /// Records not yet read: end offset minus position.
    pub consumer_lag: Family<PartitionLabels, Gauge>,
    /// Bytes of state on disk (RocksDB table files).
    pub state_size: Gauge,
    /// How long a checkpoint takes: state written, RocksDB checkpoint cut.
    pub checkpoint_duration: Histogram,
    /// How long committing a transaction takes.
    pub commit_duration: Histogram,
    /// How long processing pauses for a savepoint (its checkpoint and snapshot).
    pub savepoint_pause: Histogram,
    /// Checkpoints completed.
    pub checkpoints: Counter,
    /// Checkpoints taken ahead of the interval because results wait for them: a
    /// watermark passed a window's end.
    pub firing_checkpoints: Counter,
    /// Transactions aborted (the worker then returns to its last checkpoint).
    pub aborted_transactions: Counter,
    /// Records the producer holds, not yet delivered.
    pub producer_queue: Gauge,
    /// Times a send found the producer's queue full and waited (backpressure).
    pub producer_queue_full: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            events_in: Counter::default(),
            busy_seconds: Counter::default(),
            results_out: Counter::default(),
            dead_letters: Family::default(),
            late_events: Counter::default(),
            filtered_events: Counter::default(),
            open_windows: Gauge::default(),
            watermark: Gauge::default(),
            watermark_lag: Gauge::default(),
            hop: Family::default(),
            partition_records_in: Family::default(),
            consumer_position: Family::default(),
            end_offset: Family::default(),
            consumer_lag: Family::default(),
            state_size: Gauge::default(),
            checkpoint_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            commit_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            savepoint_pause: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            checkpoints: Counter::default(),
            firing_checkpoints: Counter::default(),
            aborted_transactions: Counter::default(),
            producer_queue: Gauge::default(),
            producer_queue_full: Counter::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric under the `sluice_worker` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("sluice_worker");
        registry.register(
            "events_in",
            "Records read from the source",
            self.events_in.clone(),
        );
        registry.register(
            "busy_seconds",
            "Seconds spent on records and timers, not waiting for records nor committing",
            self.busy_seconds.clone(),
        );
        registry.register_collector(Box::new(crate::cpu::CpuCollector));
        registry.register(
            "results_out",
            "Results written to the sink",
            self.results_out.clone(),
        );
        registry.register(
            "dead_letters",
            "Events sent to the dead-letter output, by reason",
            self.dead_letters.clone(),
        );
        registry.register(
            "late_events",
            "Events later than their windows' allowed lateness",
            self.late_events.clone(),
        );
        registry.register(
            "filtered_events",
            "Events dropped by a filter",
            self.filtered_events.clone(),
        );
        registry.register(
            "open_windows",
            "Windows with keyed state",
            self.open_windows.clone(),
        );
        registry.register(
            "watermark_millis",
            "The operator watermark, in milliseconds since the Unix epoch",
            self.watermark.clone(),
        );
        registry.register(
            "watermark_lag_millis",
            "How far the watermark is behind the wall clock, in milliseconds",
            self.watermark_lag.clone(),
        );
        registry.register(
            "hop",
            "With partitioning Any, how keyed events reach their windows: 1 for the hop taken (topic: through the repartition topic; draining: reading what earlier runs left there first; in-process: one worker owns every key group), 0 for the others; no series with ByKey or without a window",
            self.hop.clone(),
        );
        registry.register(
            "partition_records_in",
            "Records read, per source or repartition partition",
            self.partition_records_in.clone(),
        );
        registry.register(
            "consumer_position",
            "The offset of the next record to read, per partition",
            self.consumer_position.clone(),
        );
        registry.register(
            "end_offset",
            "The last stable offset of each partition read",
            self.end_offset.clone(),
        );
        registry.register(
            "consumer_lag_records",
            "Records not yet read, per partition (end offset minus position)",
            self.consumer_lag.clone(),
        );
        registry.register(
            "state_size_bytes",
            "Bytes of keyed state on disk",
            self.state_size.clone(),
        );
        registry.register(
            "checkpoint_duration_seconds",
            "How long writing a checkpoint takes",
            self.checkpoint_duration.clone(),
        );
        registry.register(
            "savepoint_pause_seconds",
            "How long processing pauses for a savepoint: its checkpoint and the snapshot's hard links",
            self.savepoint_pause.clone(),
        );
        registry.register(
            "transaction_commit_duration_seconds",
            "How long committing a Kafka transaction takes",
            self.commit_duration.clone(),
        );
        registry.register(
            "checkpoints",
            "Checkpoints completed (state and offsets committed together)",
            self.checkpoints.clone(),
        );
        registry.register(
            "firing_checkpoints",
            "Checkpoints taken ahead of the interval because results wait for them: the worker's watermark or the watermark records it wrote passed a window's end, or a watermark record from the repartition topic fired windows (also counted in checkpoints)",
            self.firing_checkpoints.clone(),
        );
        registry.register(
            "aborted_transactions",
            "Kafka transactions aborted; the worker returned to its last checkpoint",
            self.aborted_transactions.clone(),
        );
        registry.register(
            "producer_queue_records",
            "Records in the producer's queue, not yet delivered",
            self.producer_queue.clone(),
        );
        registry.register(
            "producer_queue_full",
            "Times the producer's queue was full and reading paused (backpressure)",
            self.producer_queue_full.clone(),
        );
    }

    /// Sets the hop taken (one of [`HOPS`]) to 1 and the others to 0.
    pub fn set_hop(&self, taken: &'static str) {
        for hop in HOPS {
            self.hop
                .get_or_create(&HopLabels { hop })
                .set(i64::from(hop == taken));
        }
    }

    /// Counts a dead letter; returns how many of `reason` there are now.
    pub fn dead_letter(&self, reason: DeadLetterReason) -> u64 {
        self.dead_letters
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc()
            + 1
    }

    /// The dead letters counted for `reason`.
    pub fn dead_letters_for(&self, reason: DeadLetterReason) -> u64 {
        self.dead_letters
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counters_with_reasons() {
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.events_in.inc();
        metrics.dead_letter(DeadLetterReason::KeyError);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("sluice_worker_events_in_total 1"), "{text}");
        assert!(
            text.contains("sluice_worker_dead_letters_total{reason=\"key-error\"} 1"),
            "{text}"
        );
        assert_eq!(metrics.dead_letters_for(DeadLetterReason::KeyError), 1);
    }

    #[test]
    fn the_hop_taken_is_the_only_one_set() {
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let encoded = || {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
            text
        };
        assert!(
            !encoded().contains("sluice_worker_hop{"),
            "no hop before one is set"
        );
        metrics.set_hop("draining");
        metrics.set_hop("in-process");
        let text = encoded();
        for (hop, value) in [("topic", 0), ("draining", 0), ("in-process", 1)] {
            assert!(
                text.contains(&format!("sluice_worker_hop{{hop=\"{hop}\"}} {value}\n")),
                "{hop} {value}: {text}"
            );
        }
    }
}
