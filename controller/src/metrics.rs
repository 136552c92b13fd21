//! The controller's metrics (prometheus-client), under the `sluice_controller` prefix:
//! reconciles, failures by error kind, and how long a reconcile takes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::error::ErrorKind;

/// The label of a failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The error kind.
    pub kind: &'static str,
}

/// The controller's metrics. Cloning shares them.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Reconciles started.
    pub reconciles: Counter,
    /// Reconciles that failed, by error kind.
    pub failures: Family<ErrorLabels, Counter>,
    /// How long reconciles take, in seconds.
    pub reconcile_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconciles: Counter::default(),
            failures: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
        }
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("sluice_controller");
        registry.register(
            "reconciles",
            "Reconciles of StreamJobs",
            self.reconciles.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Reconciles that failed, by error kind",
            self.failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "How long a reconcile takes",
            self.reconcile_duration.clone(),
        );
    }

    /// Counts a failure of `kind`.
    pub fn failure(&self, kind: ErrorKind) {
        self.failures
            .get_or_create(&ErrorLabels {
                kind: kind.as_str(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_labelled_by_kind() {
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.failure(ErrorKind::InvalidSpec);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("sluice_controller_reconcile_failures_total{kind=\"InvalidSpec\"} 1"),
            "{text}"
        );
    }
}
