//! The worker's counters, in a prometheus-client registry (served by the admin API in
//! Kafka mode; summarised at the end of a local run).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::dead_letter::DeadLetterReason;

/// The label of a dead-letter counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The kebab-case reason.
    pub reason: &'static str,
}

/// The engine's metrics. Cloning shares the same counters.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Records read from the source.
    pub events_in: Counter,
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
    }

    /// Counts a dead letter.
    pub fn dead_letter(&self, reason: DeadLetterReason) {
        self.dead_letters
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
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
}
