//! What every reconcile is handed, as controller-rs does: the client, the metrics, and the
//! controller's settings. Created once in `run` and shared.

use std::sync::Arc;

use crate::metrics::Metrics;

/// The controller's settings (from flags and environment).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The worker image used when a StreamJob sets none.
    pub worker_image: String,
}

/// Shared by every reconcile.
#[derive(Clone)]
pub struct Context {
    /// The Kubernetes client.
    pub client: kube::Client,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The settings.
    pub settings: Arc<Settings>,
}
