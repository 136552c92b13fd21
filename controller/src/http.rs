//! The controller's own HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the
//! process serves requests) and `/readyz` (the controller reached the API server and, when
//! it leads, its caches are filled; a standby is ready to take over).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use kube::runtime::reflector::Store;
use prometheus_client::registry::Registry;
use sluice_crds::StreamJob;

use crate::metrics::Metrics;

/// What the endpoints read.
#[derive(Clone)]
pub struct HttpState {
    /// The registry with the controller's metrics.
    pub registry: Arc<Registry>,
    /// The metrics (the jobs-by-phase gauge is refreshed at each scrape).
    pub metrics: Arc<Metrics>,
    /// The StreamJob caches of the running controllers (one per watched namespace).
    pub stores: Arc<Mutex<Vec<Store<StreamJob>>>>,
    /// Set once the controller is ready (see the module doc).
    pub ready: Arc<AtomicBool>,
}

impl HttpState {
    /// A state with the metrics registered.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        Self {
            registry: Arc::new(registry),
            metrics,
            stores: Arc::default(),
            ready: Arc::default(),
        }
    }
}

/// The routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn ready(State(state): State<HttpState>) -> impl IntoResponse {
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: reaching the API server or filling the StreamJob cache\n",
        )
    }
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    let phases: Vec<_> = state
        .stores
        .lock()
        .map(|stores| {
            stores
                .iter()
                .flat_map(|store| store.state())
                .map(|job| job.status.as_ref().and_then(|status| status.phase))
                .collect()
        })
        .unwrap_or_default();
    state.metrics.set_phases(phases);
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            "failed to encode the metrics\n".to_string(),
        ),
    }
}

/// Serves the endpoints on `address` until the process ends.
pub async fn serve(address: SocketAddr, state: HttpState) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| {
            anyhow::anyhow!("failed to listen on {address} (--http-address): {error}")
        })?;
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router(state)).await {
            tracing::error!(%error, "the HTTP endpoints stopped");
        }
    });
    Ok(())
}
