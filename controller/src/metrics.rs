//! The controller's metrics (prometheus-client), under the `sluice_controller` prefix:
//! reconciles, failures by error kind, how long a reconcile takes, StreamJobs by phase,
//! and the changes to running jobs (upgrades, rescales, savepoints) by kind and outcome.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sluice_crds::status::{ChangeKind, Phase};

use crate::error::ErrorKind;

/// The label of a failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The error kind.
    pub kind: &'static str,
}

/// The label of an API request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `read` (get or list), `watch`, `create`, `patch`, `update`, `delete`.
    pub verb: &'static str,
}

/// The Kubernetes verb of a request: its method, and `watch=true` in the query.
pub fn verb<B>(request: &http::Request<B>) -> &'static str {
    let watch = request
        .uri()
        .query()
        .is_some_and(|query| query.split('&').any(|pair| pair == "watch=true"));
    match *request.method() {
        http::Method::GET if watch => "watch",
        // get and list: the path alone does not tell them apart without discovery.
        http::Method::GET => "read",
        http::Method::POST => "create",
        http::Method::PATCH => "patch",
        http::Method::PUT => "update",
        http::Method::DELETE => "delete",
        _ => "other",
    }
}

/// The label of an admission review's verdict.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    /// `allowed` or `denied`.
    pub verdict: &'static str,
}

/// The labels of an autoscaled job.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// The job's namespace.
    pub namespace: String,
    /// The job's name.
    pub job: String,
}

/// The labels of a scaling decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScalingLabels {
    /// `up` or `down`.
    pub direction: &'static str,
}

/// The labels of a change that ended, or of an attempt that failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabels {
    /// Its kind, as in `status.upgrade.kind` (`Upgrade`, `Rescale`, `Suspend`, ...).
    pub kind: &'static str,
    /// [`ChangeOutcome::as_str`].
    pub outcome: &'static str,
}

/// How a change (or one attempt of it) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeOutcome {
    /// The workers run its result.
    Completed,
    /// The new workers were not Ready in time: the last good spec runs again.
    RolledBack,
    /// An attempt whose savepoint failed or timed out; the change is retried.
    Failed,
}

impl ChangeOutcome {
    /// Every outcome.
    pub const ALL: [Self; 3] = [Self::Completed, Self::RolledBack, Self::Failed];

    /// Its label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::RolledBack => "rolled_back",
            Self::Failed => "failed",
        }
    }
}

/// The label of a change's kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeKindLabels {
    /// As in `status.upgrade.kind`.
    pub kind: &'static str,
}

/// The label of a change's kind: its name in `status.upgrade.kind`.
pub fn change_kind_label(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::None => "None",
        ChangeKind::SavepointOnly => "SavepointOnly",
        ChangeKind::PeriodicSavepoint => "PeriodicSavepoint",
        ChangeKind::Resume => "Resume",
        ChangeKind::Restart => "Restart",
        ChangeKind::Rescale => "Rescale",
        ChangeKind::Upgrade => "Upgrade",
        ChangeKind::Suspend => "Suspend",
        ChangeKind::Delete => "Delete",
    }
}

/// The label of a phase.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// The phase (`Unknown` before the first status).
    pub phase: &'static str,
}

/// Every phase label, so a phase with no job reads 0 rather than disappearing.
pub const PHASES: [&str; 7] = [
    "Unknown",
    "Pending",
    "Deploying",
    "Running",
    "Upgrading",
    "Suspended",
    "Failed",
];

/// The label of `phase`.
pub fn phase_label(phase: Option<Phase>) -> &'static str {
    match phase {
        None => "Unknown",
        Some(Phase::Pending) => "Pending",
        Some(Phase::Deploying) => "Deploying",
        Some(Phase::Running) => "Running",
        Some(Phase::Upgrading) => "Upgrading",
        Some(Phase::Suspended) => "Suspended",
        Some(Phase::Failed) => "Failed",
    }
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
    /// StreamJobs by phase (set from the controller's cache at each scrape).
    pub jobs: Family<PhaseLabels, Gauge>,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
    /// Requests sent to the Kubernetes API, by verb.
    pub api_requests: Family<RequestLabels, Counter>,
    /// StreamJob creates and updates the validating webhook answered, by verdict.
    pub admission_reviews: Family<AdmissionLabels, Counter>,
    /// Changes to running jobs that ended, and attempts that failed, by kind and outcome.
    pub changes: Family<ChangeLabels, Counter>,
    /// How long changes that completed took, from their start to the workers running
    /// the result, by kind.
    pub change_duration: Family<ChangeKindLabels, Histogram, fn() -> Histogram>,
    /// The autoscaler's last figures per job.
    pub autoscaler: AutoscalerMetrics,
}

/// The autoscaler's figures per job (only for jobs with the autoscaler enabled).
#[derive(Clone, Debug, Default)]
pub struct AutoscalerMetrics {
    /// Records not yet processed over the source partitions.
    pub lag: Family<JobLabels, Gauge>,
    /// Records per second arriving.
    pub input_rate: Family<JobLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Records per second committed.
    pub processing_rate: Family<JobLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Busy share of the workers, 0 to 1.
    pub utilization: Family<JobLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// The parallelism the last full window asks for.
    pub recommended_parallelism: Family<JobLabels, Gauge>,
    /// Scaling decisions, by direction.
    pub scalings: Family<ScalingLabels, Counter>,
}

impl AutoscalerMetrics {
    /// Removes the series of a job the autoscaler no longer follows.
    pub fn remove(&self, labels: &JobLabels) {
        self.lag.remove(labels);
        self.input_rate.remove(labels);
        self.processing_rate.remove(labels);
        self.utilization.remove(labels);
        self.recommended_parallelism.remove(labels);
    }
}

/// The kinds of change that take a savepoint and end with a `changes_total` count.
const COUNTED_CHANGES: [ChangeKind; 6] = [
    ChangeKind::Upgrade,
    ChangeKind::Rescale,
    ChangeKind::Suspend,
    ChangeKind::SavepointOnly,
    ChangeKind::PeriodicSavepoint,
    ChangeKind::Delete,
];

impl Default for Metrics {
    fn default() -> Self {
        let changes: Family<ChangeLabels, Counter> = Family::default();
        let change_duration: Family<ChangeKindLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(change_duration_histogram);
        // Every series from 0, so the first change of a kind shows as an increase (a
        // series that appears at 1 does not, to `increase()` and `rate()`).
        for kind in COUNTED_CHANGES {
            let _ = change_duration.get_or_create(&ChangeKindLabels {
                kind: change_kind_label(kind),
            });
            let rolls = matches!(kind, ChangeKind::Upgrade | ChangeKind::Rescale);
            for outcome in ChangeOutcome::ALL {
                if outcome != ChangeOutcome::RolledBack || rolls {
                    let _ = changes.get_or_create(&ChangeLabels {
                        kind: change_kind_label(kind),
                        outcome: outcome.as_str(),
                    });
                }
            }
        }
        Self {
            reconciles: Counter::default(),
            failures: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            jobs: Family::default(),
            leader: Gauge::default(),
            api_requests: Family::default(),
            admission_reviews: Family::default(),
            changes,
            change_duration,
            autoscaler: AutoscalerMetrics::default(),
        }
    }
}

/// Buckets from 1 s to about 68 minutes: a savepoint and a restart take seconds, a change
/// that waits for a slow pod or a large state minutes.
fn change_duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
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
        registry.register(
            "streamjobs",
            "StreamJobs by phase, as last reported in their status",
            self.jobs.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            self.leader.clone(),
        );
        registry.register(
            "api_requests",
            "Requests sent to the Kubernetes API, by verb (a watch counts once, when opened)",
            self.api_requests.clone(),
        );
        registry.register(
            "admission_reviews",
            "StreamJob creates and updates the validating webhook answered, by verdict",
            self.admission_reviews.clone(),
        );
        registry.register(
            "changes",
            "Changes to running jobs that took a savepoint and ended (completed, rolled_back), and attempts that failed (failed: retried), by kind and outcome",
            self.changes.clone(),
        );
        registry.register(
            "change_duration_seconds",
            "How long changes that completed took, from their start (whole seconds, failed attempts included) to the workers running the result, by kind",
            self.change_duration.clone(),
        );
        let autoscaler = registry.sub_registry_with_prefix("autoscaler");
        autoscaler.register(
            "lag_records",
            "Records not yet processed over the job's source partitions (last stable offsets)",
            self.autoscaler.lag.clone(),
        );
        autoscaler.register(
            "input_records_per_second",
            "Records per second arriving on the job's source partitions, over the window",
            self.autoscaler.input_rate.clone(),
        );
        autoscaler.register(
            "processed_records_per_second",
            "Records per second the job committed, over the window",
            self.autoscaler.processing_rate.clone(),
        );
        autoscaler.register(
            "utilization_ratio",
            "Busy share of the job's workers, over the window",
            self.autoscaler.utilization.clone(),
        );
        autoscaler.register(
            "recommended_parallelism",
            "The parallelism the last full window asks for",
            self.autoscaler.recommended_parallelism.clone(),
        );
        autoscaler.register(
            "scalings",
            "Parallelism changes the autoscaler decided, by direction",
            self.autoscaler.scalings.clone(),
        );
    }

    /// Counts an admission review the webhook answered.
    pub fn count_admission(&self, allowed: bool) {
        self.admission_reviews
            .get_or_create(&AdmissionLabels {
                verdict: if allowed { "allowed" } else { "denied" },
            })
            .inc();
    }

    /// A layer for the kube client that counts every request in `api_requests`.
    pub fn count_requests(&self) -> CountRequests {
        CountRequests {
            counter: self.api_requests.clone(),
        }
    }

    /// Counts a change of `kind` that ended with `outcome`, and records how long a
    /// completed one took.
    pub fn change_ended(&self, kind: ChangeKind, outcome: ChangeOutcome, seconds: f64) {
        let kind = change_kind_label(kind);
        self.changes
            .get_or_create(&ChangeLabels {
                kind,
                outcome: outcome.as_str(),
            })
            .inc();
        if outcome == ChangeOutcome::Completed {
            self.change_duration
                .get_or_create(&ChangeKindLabels { kind })
                .observe(seconds);
        }
    }

    /// Counts a failure of `kind`.
    pub fn failure(&self, kind: ErrorKind) {
        self.failures
            .get_or_create(&ErrorLabels {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// Counts a reconcile and returns a timer that records its duration when dropped.
    pub fn reconcile_started(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer {
            histogram: &self.reconcile_duration,
            start: Instant::now(),
        }
    }

    /// Sets the jobs-by-phase gauges from the phases of every cached job.
    pub fn set_phases(&self, phases: impl IntoIterator<Item = Option<Phase>>) {
        let mut counts = [0_i64; PHASES.len()];
        for phase in phases {
            let label = phase_label(phase);
            if let Some(index) = PHASES.iter().position(|known| *known == label) {
                counts[index] += 1;
            }
        }
        for (phase, count) in PHASES.iter().zip(counts) {
            self.jobs.get_or_create(&PhaseLabels { phase }).set(count);
        }
    }
}

/// A tower layer that counts the requests of the client it wraps.
#[derive(Clone, Debug)]
pub struct CountRequests {
    counter: Family<RequestLabels, Counter>,
}

impl<S> tower::Layer<S> for CountRequests {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            counter: self.counter.clone(),
        }
    }
}

/// A service whose requests are counted.
#[derive(Clone, Debug)]
pub struct Counted<S> {
    inner: S,
    counter: Family<RequestLabels, Counter>,
}

impl<S, B> tower::Service<http::Request<B>> for Counted<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.counter
            .get_or_create(&RequestLabels {
                verb: verb(&request),
            })
            .inc();
        self.inner.call(request)
    }
}

/// Records how long a reconcile took when dropped (whatever way it ends).
pub struct ReconcileTimer<'a> {
    histogram: &'a Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(metrics: &Metrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn failures_are_labelled_by_kind() {
        let metrics = Metrics::default();
        metrics.failure(ErrorKind::InvalidSpec);
        let text = encoded(&metrics);
        assert!(
            text.contains("sluice_controller_reconcile_failures_total{kind=\"InvalidSpec\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn changes_are_counted_by_kind_and_outcome_and_completed_ones_timed() {
        let metrics = Metrics::default();
        metrics.change_ended(ChangeKind::Upgrade, ChangeOutcome::Completed, 5.5);
        metrics.change_ended(ChangeKind::Upgrade, ChangeOutcome::Completed, 40.0);
        metrics.change_ended(ChangeKind::Rescale, ChangeOutcome::RolledBack, 0.0);
        metrics.change_ended(ChangeKind::Suspend, ChangeOutcome::Failed, 0.0);
        let text = encoded(&metrics);
        for line in [
            "sluice_controller_changes_total{kind=\"Upgrade\",outcome=\"completed\"} 2",
            "sluice_controller_changes_total{kind=\"Rescale\",outcome=\"rolled_back\"} 1",
            "sluice_controller_changes_total{kind=\"Suspend\",outcome=\"failed\"} 1",
            "sluice_controller_change_duration_seconds_count{kind=\"Upgrade\"} 2",
            "sluice_controller_change_duration_seconds_sum{kind=\"Upgrade\"} 45.5",
            "sluice_controller_change_duration_seconds_bucket{le=\"8.0\",kind=\"Upgrade\"} 1",
            "sluice_controller_change_duration_seconds_bucket{le=\"64.0\",kind=\"Upgrade\"} 2",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(
            text.contains(
                "sluice_controller_changes_total{kind=\"Rescale\",outcome=\"completed\"} 0"
            ),
            "every counted kind and outcome starts at 0: {text}"
        );
        // Only completed changes are timed.
        assert!(
            text.contains("sluice_controller_change_duration_seconds_count{kind=\"Rescale\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn requests_are_counted_by_verb() {
        let cases = [
            (
                "GET",
                "/apis/apps/v1/statefulsets?watch=true&resourceVersion=1",
                "watch",
            ),
            ("GET", "/api/v1/namespaces/a/secrets/x", "read"),
            (
                "PATCH",
                "/api/v1/namespaces/a/configmaps/x?fieldManager=f",
                "patch",
            ),
            (
                "POST",
                "/apis/events.k8s.io/v1/namespaces/a/events",
                "create",
            ),
            ("DELETE", "/api/v1/namespaces/a/serviceaccounts/x", "delete"),
        ];
        for (method, uri, expect) in cases {
            let request = http::Request::builder()
                .method(method)
                .uri(uri)
                .body(())
                .unwrap();
            assert_eq!(verb(&request), expect, "{method} {uri}");
        }
    }

    #[test]
    fn jobs_are_counted_by_phase_and_a_timer_records_a_duration() {
        let metrics = Metrics::default();
        metrics.set_phases([Some(Phase::Running), Some(Phase::Running), None]);
        drop(metrics.reconcile_started());
        let text = encoded(&metrics);
        for line in [
            "sluice_controller_streamjobs{phase=\"Running\"} 2",
            "sluice_controller_streamjobs{phase=\"Unknown\"} 1",
            "sluice_controller_streamjobs{phase=\"Failed\"} 0",
            "sluice_controller_reconciles_total 1",
            "sluice_controller_reconcile_duration_seconds_count 1",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
