//! What every reconcile is handed, as controller-rs does: the client, the event recorder,
//! the metrics, the per-object backoff and the controller's settings. Created once in
//! `run` and shared.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::events::{Recorder, Reporter};
use tokio::sync::Semaphore;

use crate::autoscaler::{self, Autoscaler};
use crate::backoff::Backoff;
use crate::build::WorkerDefaults;
use crate::cache::ChildCache;
use crate::lifecycle::effects::WorkerAdmin;
use crate::lifecycle::machine::Timing;
use crate::metrics::Metrics;

/// The worker image of this controller's own version.
pub fn default_worker_image() -> String {
    format!(
        "ghcr.io/sluice-dev/sluice-worker:{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// The controller's settings (from flags and environment).
#[derive(Clone, Debug)]
pub struct Settings {
    /// What the controller fills in where a StreamJob leaves a worker setting unset.
    pub workers: WorkerDefaults,
    /// How often a healthy job is reconciled with no event (repairs what no watch sees,
    /// such as an edited admin-token Secret).
    pub resync_interval: Duration,
    /// The timing of changes that take a savepoint.
    pub lifecycle: Timing,
    /// How often the autoscaler samples, and the window it decides from.
    pub autoscaler: autoscaler::Timing,
    /// How many API requests the reconciles have in flight at most, all jobs together (the
    /// watches aside): each in-flight request holds a connection and its buffers, so this
    /// bounds the controller's memory when many reconciles apply children at once.
    pub requests_in_flight: usize,
    /// For recovery tests only: where the controller aborts (`--test-crash`).
    pub crash_point: Option<crate::lifecycle::CrashPoint>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            workers: WorkerDefaults {
                image: default_worker_image(),
                resources: None,
                storage_class_name: None,
            },
            resync_interval: Duration::from_secs(600),
            lifecycle: Timing::default(),
            autoscaler: autoscaler::Timing::default(),
            requests_in_flight: 16,
            crash_point: None,
        }
    }
}

/// Shared by every reconcile.
#[derive(Clone)]
pub struct Context {
    /// The Kubernetes client.
    pub client: kube::Client,
    /// Publishes warning Events (one recorder, so a repeated warning is aggregated into a
    /// series).
    pub recorder: Recorder,
    /// Who publishes the Events: `sluice-controller`, and this instance.
    pub reporter: Reporter,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per job.
    pub backoff: Arc<Backoff>,
    /// The settings.
    pub settings: Arc<Settings>,
    /// Permits for the reconciles' API requests (`Settings::requests_in_flight`).
    pub requests: Arc<Semaphore>,
    /// The cached children of the jobs this context's controller watches (one per watched
    /// namespace; empty until `run` sets it).
    pub children: ChildCache,
    /// The client of the workers' admin API.
    pub worker_admin: WorkerAdmin,
    /// The autoscaler's windows, per job.
    pub autoscaler: Arc<Autoscaler>,
}

impl Context {
    /// A context for `client`, reporting Events as `instance` of `sluice-controller`.
    pub fn new(
        client: kube::Client,
        instance: Option<String>,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> Self {
        let reporter = Reporter {
            controller: crate::names::FIELD_MANAGER.to_string(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter.clone()),
            reporter,
            client,
            metrics,
            backoff: Arc::default(),
            requests: Arc::new(Semaphore::new(settings.requests_in_flight.max(1))),
            settings: Arc::new(settings),
            children: ChildCache::default(),
            worker_admin: WorkerAdmin::default(),
            autoscaler: Arc::default(),
        }
    }

    /// Sends `request` once fewer than `Settings::requests_in_flight` are in flight.
    pub async fn limited<T>(&self, request: impl std::future::Future<Output = T>) -> T {
        let _permit = self
            .requests
            .acquire()
            .await
            .expect("the request permits are never closed");
        request.await
    }

    /// The same context over the children cache of one watch scope.
    pub fn with_children(&self, children: ChildCache) -> Self {
        Self {
            children,
            ..self.clone()
        }
    }
}
