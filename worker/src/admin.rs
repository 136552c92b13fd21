//! The worker's admin API, on its own thread: `/healthz` (the process is alive),
//! `/readyz` (state restored, partitions assigned, consuming), `/metrics` (Prometheus
//! text), and, behind a bearer token, `POST /v1/savepoints`, `GET /v1/savepoints/{id}`,
//! `POST /v1/resume` and `POST /v1/savepoints/retention` (docs/savepoints.md).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde::Deserialize;

use crate::run::WorkerStatus;

/// What the handlers read.
#[derive(Clone)]
pub struct AdminState {
    /// The worker's readiness and shutdown flags.
    pub status: Arc<WorkerStatus>,
    /// The metrics registry.
    pub registry: Arc<Mutex<Registry>>,
    /// The bearer token the savepoint endpoints require (`None`: they refuse every
    /// request).
    pub token: Option<String>,
    /// The job's savepoints (`<location>/<namespace>/<name>`), when it has a location.
    pub job_savepoints: Option<crate::savepoint::Url>,
    /// The file recording a stop-with-savepoint, removed by a resume.
    pub stop_record: Option<std::path::PathBuf>,
}

/// The routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route(
            "/v1/savepoints",
            post(request_savepoint).get(list_savepoints),
        )
        .route("/v1/savepoints/retention", post(apply_retention))
        .route("/v1/savepoints/{id}", get(savepoint_status))
        .route("/v1/resume", post(resume))
        .with_state(state)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// The refusal of a request without the token (`None`: it has it); compared in
/// constant time.
fn refusal(state: &AdminState, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = &state.token else {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "savepoint requests need a token, and this worker has none: start it with --admin-token-file",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    let same = given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0;
    (!same).then(|| {
        error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer <token>)",
        )
    })
}

/// The body of `POST /v1/savepoints`, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavepointRequest {
    /// Stop consuming once it is taken.
    #[serde(default)]
    stop: bool,
    /// The id (the controller gives every worker of a job the same); default: from the
    /// clock.
    #[serde(default)]
    id: Option<String>,
}

async fn request_savepoint(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(refused) = refusal(&state, &headers) {
        return refused;
    }
    let request: SavepointRequest = if body.iter().all(u8::is_ascii_whitespace) {
        SavepointRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(problem) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "failed to read the request body: {problem} (expected {{\"stop\": bool, \"id\": string}}, both optional)"
                    ),
                );
            }
        }
    };
    match state.status.savepoints.request(request.id, request.stop) {
        Ok(id) => {
            let status = state.status.savepoints.status(&id);
            (StatusCode::ACCEPTED, Json(status)).into_response()
        }
        Err(refused) => error(StatusCode::CONFLICT, refused.to_string()),
    }
}

async fn savepoint_status(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(refused) = refusal(&state, &headers) {
        return refused;
    }
    match state.status.savepoints.status(&id) {
        Some(status) => Json(status).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("this worker knows no savepoint {id:?}"),
        ),
    }
}

/// The body of `POST /v1/savepoints/retention`: `spec.savepoints.retention`, and the
/// savepoints the job's status refers to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RetentionRequest {
    max_count: usize,
    #[serde(default)]
    max_age_seconds: Option<u64>,
    #[serde(default)]
    keep: Vec<String>,
}

/// Deletes the job's savepoints that retention no longer keeps (`manage::expired`), and
/// says which it deleted and which are left. Refused while this worker takes one.
async fn apply_retention(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(refused) = refusal(&state, &headers) {
        return refused;
    }
    let request: RetentionRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(problem) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "failed to read the request body: {problem} (expected {{\"maxCount\": int, \"maxAgeSeconds\": int, \"keep\": [string]}})"
                ),
            );
        }
    };
    let Some(job_savepoints) = state.job_savepoints.clone() else {
        return error(
            StatusCode::CONFLICT,
            "this job has no savepoint location (spec.savepoints.location)",
        );
    };
    if state.status.savepoints.busy() {
        return error(
            StatusCode::CONFLICT,
            "a savepoint is being taken: ask again once it is done (retention never deletes files a savepoint being written may share)",
        );
    }
    let retention = crate::savepoint::manage::Retention {
        max_count: request.max_count,
        max_age: request.max_age_seconds.map(std::time::Duration::from_secs),
        keep: request.keep.into_iter().collect(),
    };
    // On a thread of its own: the directory blocks on a runtime of its own, which may not
    // run inside this one.
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let applied =
            crate::savepoint::location::Directory::open(&job_savepoints).and_then(|directory| {
                crate::savepoint::manage::apply_retention(
                    &directory,
                    &retention,
                    chrono::Utc::now(),
                )
            });
        let _ = sender.send(applied);
    });
    match receiver.await {
        Ok(Ok(applied)) => {
            tracing::info!(deleted = ?applied.deleted, kept = applied.kept.len(), "applied the savepoint retention");
            Json(applied).into_response()
        }
        Ok(Err(problem)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to apply the retention: {problem:#}"),
        ),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "failed to apply the retention: its thread ended without an answer",
        ),
    }
}

/// After a stop-with-savepoint: consume again.
async fn resume(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(refused) = refusal(&state, &headers) {
        return refused;
    }
    // The record goes first: a crash right after this answer must not come back stopped.
    if let Some(path) = &state.stop_record
        && let Err(problem) = std::fs::remove_file(path)
        && problem.kind() != std::io::ErrorKind::NotFound
    {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to remove {}: {problem}; ask again", path.display()),
        );
    }
    let was_stopped = state.status.stopped.swap(false, Ordering::SeqCst);
    Json(serde_json::json!({ "resumed": was_stopped })).into_response()
}

async fn list_savepoints(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(refused) = refusal(&state, &headers) {
        return refused;
    }
    Json(state.status.savepoints.all()).into_response()
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
