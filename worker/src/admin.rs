//! The worker's admin API, on its own thread: `/healthz` (the process is alive),
//! `/readyz` (state restored, partitions assigned, consuming) and `/metrics` (Prometheus
//! text). Savepoint endpoints, behind a bearer token, are planned
//! (docs/architecture.md, "Roadmap").

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::run::WorkerStatus;

/// What the handlers read.
#[derive(Clone)]
pub struct AdminState {
    /// The worker's readiness and shutdown flags.
    pub status: Arc<WorkerStatus>,
    /// The metrics registry.
    pub registry: Arc<Mutex<Registry>>,
}

/// The routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn ready(State(state): State<AdminState>) -> impl IntoResponse {
    if state.status.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: restoring state or connecting to Kafka\n",
        )
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut text = String::new();
    let encoded = match state.registry.lock() {
        Ok(registry) => prometheus_client::encoding::text::encode(&mut text, &registry),
        Err(_) => Err(std::fmt::Error),
    };
    match encoded {
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

/// Serves the admin API on `address` on a background thread with its own runtime, and
/// turns SIGTERM and SIGINT into a shutdown request. Fails when the address is taken.
pub fn serve(address: SocketAddr, state: AdminState) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(address))
        .map_err(|error| {
            anyhow::anyhow!("failed to listen on {address} (--admin-address): {error}")
        })?;
    let status = state.status.clone();
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                tokio::spawn(async move {
                    let mut terminate = match tokio::signal::unix::signal(
                        tokio::signal::unix::SignalKind::terminate(),
                    ) {
                        Ok(signal) => signal,
                        Err(error) => {
                            tracing::error!(%error, "failed to watch for SIGTERM");
                            return;
                        }
                    };
                    tokio::select! {
                        _ = terminate.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                    tracing::info!("asked to stop: committing the open transaction");
                    status.shutdown.store(true, Ordering::SeqCst);
                });
                if let Err(error) = axum::serve(listener, router(state)).await {
                    tracing::error!(%error, "the admin API stopped");
                }
            });
        })?;
    Ok(())
}
