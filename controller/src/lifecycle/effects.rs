//! The lifecycle's effects on the workers, through their admin API (docs/savepoints.md):
//! ask each for a stop-with-savepoint, read how far each is, tell each to go on. Each is
//! idempotent, so a controller restarted in any step repeats it safely: a savepoint
//! already asked for is only read, and a resume of a running worker changes nothing.
//!
//! Workers are addressed by their pod IP (read from the API server), so the controller
//! needs no cluster DNS, in a pod or from a shell beside the cluster.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use serde::Deserialize;
use tracing::{debug, warn};

use kube::ResourceExt;
use sluice_crds::status::UpgradeStatus;
use sluice_crds::{StreamJob, StreamJobSpec};

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::machine::{Found, rollback_verdict};
use crate::context::Context;
use crate::error::Error;
use crate::names::ADMIN_PORT;
use crate::names::SPEC_HASH_ANNOTATION;

/// The longest wait for one admin-API request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP client for the workers' admin API (plain HTTP inside the pod network; the
/// bearer token guards the savepoint endpoints, the NetworkPolicy the port).
#[derive(Clone, Debug)]
pub struct WorkerAdmin {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for WorkerAdmin {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(3)));
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }
}

/// What one worker answered about a savepoint.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "state")]
pub enum PartState {
    /// Asked for, not taken yet.
    Pending,
    /// Being written.
    InProgress,
    /// Written.
    Completed {
        /// The savepoint's location.
        location: String,
        /// Whether this worker wrote the manifest (every part was there).
        manifest: bool,
    },
    /// Failed.
    Failed {
        /// Why.
        reason: String,
    },
}

/// One worker's answer, or why there is none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// It answered.
    Part(PartState),
    /// No pod IP, no connection, a timeout or an unexpected answer: asked again later.
    Unreachable(String),
}

/// The savepoint as a whole, from every worker's answer (pure): failed when any part
/// failed, complete when every part is written and one worker wrote the manifest.
pub fn savepoint_found(answers: &[Answer]) -> Found {
    for answer in answers {
        if let Answer::Part(PartState::Failed { reason }) = answer {
            return Found::SavepointFailed {
                reason: reason.clone(),
            };
        }
    }
    let mut location = None;
    let mut manifest = false;
    for answer in answers {
        match answer {
            Answer::Part(PartState::Completed {
                location: part,
                manifest: wrote,
            }) => {
                location = Some(part.clone());
                manifest |= wrote;
            }
            _ => return Found::Waiting,
        }
    }
    match location {
        Some(location) if manifest => Found::SavepointCompleted { location },
        _ => Found::Waiting,
    }
}

/// The job's committed Kafka positions, summed over the partitions of its source topics,
/// `also_topics` (the source topics of the spec it moves from) and its repartition topic,
/// read with the connection of its spec (the rollback's check, docs/lifecycle.md).
pub async fn committed_positions(
    job: &StreamJob,
    ctx: &Context,
    connection: &StreamJobSpec,
    also_topics: &[String],
) -> Result<i64, String> {
    let namespace = job.namespace().unwrap_or_default();
    let name = crate::build::job_name(job);
    let properties = crate::autoscaler::kafka_properties_of(ctx, &namespace, connection).await?;
    let group = sluice_crds::kafka::group_id(&namespace, &name);
    let mut config = crate::autoscaler::measure::client_config(
        &connection.kafka.bootstrap_servers,
        &group,
        &properties,
    );
    config.set("client.id", "sluice-controller-lifecycle");
    let reader = crate::autoscaler::measure::KafkaReader::new(&config)?;
    let mut topics: Vec<String> = connection.source.topics.clone();
    topics.extend(also_topics.iter().cloned());
    topics.push(sluice_crds::kafka::repartition_topic(&namespace, &name));
    topics.sort();
    topics.dedup();
    reader.committed_positions(&topics).await
}

/// Fences the transactional ids of workers `0..ordinals` of `job` with the Kafka
/// connection of `connection`: initialising each id aborts the transaction its last
/// producer left open and fences that producer, so it can never commit again.
pub async fn fence_workers(
    job: &StreamJob,
    ctx: &Context,
    connection: &StreamJobSpec,
    ordinals: u32,
) -> Result<(), String> {
    use rdkafka::producer::{BaseProducer, Producer as _};
    let namespace = job.namespace().unwrap_or_default();
    let name = crate::build::job_name(job);
    let properties = crate::autoscaler::kafka_properties_of(ctx, &namespace, connection).await?;
    let mut config = rdkafka::ClientConfig::new();
    for (key, value) in &properties {
        if !sluice_crds::kafka::OWNED_PROPERTIES.contains(&key.as_str()) {
            config.set(key, value);
        }
    }
    config
        .set("bootstrap.servers", &connection.kafka.bootstrap_servers)
        .set("client.id", "sluice-controller-lifecycle");
    let ids: Vec<String> = (0..ordinals)
        .map(|ordinal| sluice_crds::kafka::transactional_id(&namespace, &name, ordinal))
        .collect();
    tokio::task::spawn_blocking(move || {
        for id in ids {
            let producer: BaseProducer = config
                .clone()
                .set("transactional.id", &id)
                .create()
                .map_err(|error| format!("failed to create a producer for {id}: {error}"))?;
            producer
                .init_transactions(REQUEST_TIMEOUT)
                .map_err(|error| format!("failed to fence transactional id {id}: {error}"))?;
        }
        Ok(())
    })
    .await
    .map_err(|error| format!("failed to fence the workers: {error}"))?
}

/// The effect of `StoppingForRollback` (the StatefulSet has no replica): waits until no
/// pod of workers `0..ordinals` is left, fences their transactional ids, then compares
/// the job's committed positions with those recorded at the savepoint, all with the
/// Kafka connection of `last_good` (the spec the rollback returns to). A failure to read
/// is `Waiting` (the machine gives up after the savepoint timeout).
pub async fn stopped_for_rollback(
    job: &StreamJob,
    ctx: &Context,
    last_good: &StreamJobSpec,
    upgrade: &UpgradeStatus,
    ordinals: i32,
) -> Found {
    let namespace = job.namespace().unwrap_or_default();
    let workers = crate::names::ChildNames::of(&crate::build::job_name(job)).workers;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    for ordinal in 0..ordinals {
        let name = format!("{workers}-{ordinal}");
        match ctx.limited(pods.get_opt(&name)).await {
            Ok(None) => {}
            Ok(Some(_)) => {
                debug!("worker pod {name} is still there: the rollback waits for it to go");
                return Found::Waiting;
            }
            Err(error) => {
                warn!("failed to read pod {name}: {error}");
                return Found::Waiting;
            }
        }
    }
    let ordinals = u32::try_from(ordinals).unwrap_or_default();
    if let Err(error) = fence_workers(job, ctx, last_good, ordinals).await {
        warn!("{error}: the rollback waits");
        return Found::Waiting;
    }
    match committed_positions(job, ctx, last_good, &job.spec.source.topics).await {
        Ok(now) => match rollback_verdict(upgrade.committed_positions, Ok(now)) {
            Ok(()) => Found::RollbackSafe,
            Err(reason) => Found::RollbackRefused { reason },
        },
        Err(error) => {
            warn!("{error}: the rollback waits");
            Found::Waiting
        }
    }
}

/// What keeps a worker pod from being Ready (pure), for the rollback's record and event:
/// `None` when it is Ready.
pub fn pod_problem(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|condition| condition.type_ == "Ready" && condition.status == "True");
    if ready {
        return None;
    }
    let shorten = |text: &str| -> String {
        let text = text.trim();
        match text.char_indices().nth(160) {
            Some((cut, _)) => format!("{}…", &text[..cut]),
            None => text.to_string(),
        }
    };
    for container in status.container_statuses.iter().flatten() {
        let state = container.state.clone().unwrap_or_default();
        if let Some(waiting) = state.waiting {
            let reason = waiting.reason.unwrap_or_else(|| "Waiting".into());
            let last_exit = container
                .last_state
                .as_ref()
                .and_then(|last| last.terminated.as_ref())
                .map(|exit| format!(", last exit code {}", exit.exit_code))
                .unwrap_or_default();
            return Some(match waiting.message {
                Some(message) if !message.trim().is_empty() => {
                    format!("{reason} ({}){last_exit}", shorten(&message))
                }
                _ => format!("{reason}{last_exit}"),
            });
        }
        if let Some(terminated) = state.terminated {
            return Some(format!(
                "exited with code {} ({})",
                terminated.exit_code,
                terminated.reason.unwrap_or_default()
            ));
        }
        if state.running.is_some() {
            return Some(format!(
                "running but not Ready (restarted {} times)",
                container.restart_count
            ));
        }
    }
    let unscheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|condition| condition.type_ == "PodScheduled" && condition.status == "False");
    Some(match unscheduled {
        Some(condition) => format!(
            "not scheduled ({})",
            shorten(condition.message.as_deref().unwrap_or_default())
        ),
        None => format!(
            "{} and not Ready",
            status.phase.as_deref().unwrap_or("no phase")
        ),
    })
}

/// What keeps workers `0..replicas` of an overdue roll from being Ready, as one line
/// ("worker 1: ImagePullBackOff (…); worker 2: no pod").
pub async fn overdue_workers(
    ctx: &Context,
    namespace: &str,
    workers: &str,
    replicas: i32,
) -> String {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let mut problems = Vec::new();
    for ordinal in 0..replicas {
        let name = format!("{workers}-{ordinal}");
        match ctx.limited(pods.get_opt(&name)).await {
            Ok(Some(pod)) => {
                if let Some(problem) = pod_problem(&pod) {
                    problems.push(format!("worker {ordinal}: {problem}"));
                }
            }
            Ok(None) => problems.push(format!("worker {ordinal}: no pod")),
            Err(error) => problems.push(format!(
                "worker {ordinal}: failed to read pod {name}: {error}"
            )),
        }
    }
    if problems.is_empty() {
        "every worker Ready by now".to_string()
    } else {
        problems.join("; ")
    }
}

/// Whether `pod` runs another template than `template` (pure): another spec hash (the
/// pod annotation), or a plain environment value of the template (the restore settings,
/// the parallelism) that the pod does not have. Variables an admission webhook adds to
/// the pod (cloud credentials, say) do not count.
pub fn outdated(pod: &Pod, template: &PodTemplateSpec) -> bool {
    let hash_of = |annotations: Option<&std::collections::BTreeMap<String, String>>| {
        annotations.and_then(|annotations| annotations.get(SPEC_HASH_ANNOTATION).cloned())
    };
    // Plain values only: the API server fills in defaults of `valueFrom` references.
    let env_of = |spec: Option<&k8s_openapi::api::core::v1::PodSpec>| {
        spec.and_then(|spec| spec.containers.first())
            .and_then(|container| container.env.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|var| Some((var.name.clone(), var.value.clone()?)))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    hash_of(pod.metadata.annotations.as_ref())
        != hash_of(
            template
                .metadata
                .as_ref()
                .and_then(|meta| meta.annotations.as_ref()),
        )
        || {
            let running = env_of(pod.spec.as_ref());
            env_of(template.spec.as_ref())
                .iter()
                .any(|(name, value)| running.get(name) != Some(value))
        }
}

/// Deletes the pods of workers `0..replicas` created before `since` that run another
/// template than `template` and are not terminating yet, so the StatefulSet starts them
/// all at once on it rather than one at a time (its rolling update waits for each new pod
/// to be Ready before it replaces the next). Only while a change starts new workers from a
/// savepoint (`since`: when that step began): the old ones are stopped at it, or never
/// became Ready. A pod created since is never deleted, whatever it looks like, so nothing
/// can make this loop. Returns the pods deleted.
pub async fn replace_outdated_workers(
    ctx: &Context,
    namespace: &str,
    workers: &str,
    replicas: i32,
    template: &PodTemplateSpec,
    since: &Time,
) -> Result<Vec<String>, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let mut deleted = Vec::new();
    for ordinal in 0..replicas {
        let name = format!("{workers}-{ordinal}");
        let Some(pod) = ctx
            .limited(pods.get_opt(&name))
            .await
            .map_err(Error::api(format!("read Pod {name}")))?
        else {
            continue;
        };
        let created_before = pod
            .metadata
            .creation_timestamp
            .as_ref()
            .is_some_and(|created| created.0 < since.0);
        if !created_before || pod.metadata.deletion_timestamp.is_some() || !outdated(&pod, template)
        {
            continue;
        }
        match ctx
            .limited(pods.delete(&name, &kube::api::DeleteParams::default()))
            .await
        {
            Ok(_) => deleted.push(name),
            // Gone meanwhile: the StatefulSet replaces it anyway.
            Err(kube::Error::Api(response)) if response.code == 404 => {}
            Err(error) => return Err(Error::api(format!("delete Pod {name}"))(error)),
        }
    }
    Ok(deleted)
}

/// The pod IPs of workers `0..replicas` of StatefulSet `workers` (`None`: no pod or no IP
/// yet).
pub async fn worker_addresses(
    ctx: &Context,
    namespace: &str,
    workers: &str,
    replicas: i32,
) -> Result<Vec<Option<String>>, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let mut addresses = Vec::new();
    for ordinal in 0..replicas {
        let name = format!("{workers}-{ordinal}");
        let pod = ctx
            .limited(pods.get_opt(&name))
            .await
            .map_err(Error::api(format!("read Pod {name}")))?;
        addresses.push(
            pod.and_then(|pod| pod.status)
                .and_then(|status| status.pod_ip),
        );
    }
    Ok(addresses)
}

impl WorkerAdmin {
    async fn call(
        &self,
        method: http::Method,
        address: &str,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(http::StatusCode, Bytes), String> {
        let uri = format!("http://{address}:{ADMIN_PORT}{path}");
        let mut request = http::Request::builder()
            .method(method)
            .uri(&uri)
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        let body = match body {
            Some(body) => {
                request = request.header(http::header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(body.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let request = request
            .body(body)
            .map_err(|error| format!("failed to build the request to {uri}: {error}"))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|error| format!("failed to reach {uri}: {error}"))?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|error| format!("failed to read the answer of {uri}: {error}"))?
                .to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("{uri} did not answer within {REQUEST_TIMEOUT:?}"))?
    }

    /// Savepoint `id` on the worker at `address`: read it, and ask for it (stop-with-
    /// savepoint) when the worker does not know it yet.
    pub async fn savepoint(&self, address: &str, token: &str, id: &str) -> Answer {
        let path = format!("/v1/savepoints/{id}");
        let read = self
            .call(http::Method::GET, address, &path, token, None)
            .await;
        let answer = match read {
            Ok((status, _)) if status == http::StatusCode::NOT_FOUND => {
                debug!(address, id, "asking for a stop-with-savepoint");
                self.call(
                    http::Method::POST,
                    address,
                    "/v1/savepoints",
                    token,
                    Some(serde_json::json!({"stop": true, "id": id})),
                )
                .await
            }
            other => other,
        };
        match answer {
            Ok((status, bytes)) if status.is_success() => {
                match serde_json::from_slice::<PartState>(&bytes) {
                    Ok(state) => Answer::Part(state),
                    Err(error) => Answer::Unreachable(format!(
                        "worker {address} answered {}: {error}",
                        String::from_utf8_lossy(&bytes)
                    )),
                }
            }
            Ok((status, bytes)) if status == http::StatusCode::CONFLICT => {
                // The worker refuses the request itself (no location, say): it will not
                // change by asking again.
                Answer::Part(PartState::Failed {
                    reason: format!(
                        "worker {address} refused the savepoint: {}",
                        String::from_utf8_lossy(&bytes)
                    ),
                })
            }
            Ok((status, bytes)) => Answer::Unreachable(format!(
                "worker {address} answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            )),
            Err(error) => Answer::Unreachable(error),
        }
    }

    /// The worker's metrics, in the Prometheus text exposition (no token needed).
    pub async fn metrics(&self, address: &str) -> Result<String, String> {
        match self
            .call(http::Method::GET, address, "/metrics", "", None)
            .await?
        {
            (status, bytes) if status.is_success() => {
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            (status, _) => Err(format!("worker {address} answered {status} for /metrics")),
        }
    }

    /// Asks the worker at `address` to delete the job's savepoints `retention` no longer
    /// keeps (it has the location and its credentials); returns the ids it deleted.
    pub async fn retention(
        &self,
        address: &str,
        token: &str,
        retention: serde_json::Value,
    ) -> Result<Vec<String>, String> {
        #[derive(Deserialize)]
        struct Applied {
            deleted: Vec<String>,
        }
        match self
            .call(
                http::Method::POST,
                address,
                "/v1/savepoints/retention",
                token,
                Some(retention),
            )
            .await?
        {
            (status, bytes) if status.is_success() => serde_json::from_slice::<Applied>(&bytes)
                .map(|applied| applied.deleted)
                .map_err(|error| {
                    format!(
                        "worker {address} answered {}: {error}",
                        String::from_utf8_lossy(&bytes)
                    )
                }),
            (status, bytes) => Err(format!(
                "worker {address} answered {status} to the retention: {}",
                String::from_utf8_lossy(&bytes)
            )),
        }
    }

    /// Tells the worker at `address` to go on consuming; true once it acknowledged.
    pub async fn resume(&self, address: &str, token: &str) -> Result<(), String> {
        match self
            .call(http::Method::POST, address, "/v1/resume", token, None)
            .await?
        {
            (status, _) if status.is_success() => Ok(()),
            (status, bytes) => Err(format!(
                "worker {address} answered {status} to resume: {}",
                String::from_utf8_lossy(&bytes)
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completed(manifest: bool) -> Answer {
        Answer::Part(PartState::Completed {
            location: "s3://b/ns/job/upgrade-7-1".into(),
            manifest,
        })
    }

    #[test]
    fn a_savepoint_is_whole_when_every_part_is_and_the_manifest_is_written() {
        let failed = Answer::Part(PartState::Failed {
            reason: "disk full".into(),
        });
        let unreachable = Answer::Unreachable("no pod IP".into());
        let whole = Found::SavepointCompleted {
            location: "s3://b/ns/job/upgrade-7-1".into(),
        };
        let cases = [
            ("no worker", vec![], Found::Waiting),
            (
                "one part, with the manifest",
                vec![completed(true)],
                whole.clone(),
            ),
            (
                "every part, one manifest",
                vec![completed(false), completed(true)],
                whole.clone(),
            ),
            (
                "every part, no manifest yet",
                vec![completed(false), completed(false)],
                Found::Waiting,
            ),
            (
                "a part still in progress",
                vec![completed(true), Answer::Part(PartState::InProgress)],
                Found::Waiting,
            ),
            (
                "a worker unreachable",
                vec![completed(true), unreachable.clone()],
                Found::Waiting,
            ),
            (
                "a failed part wins over everything",
                vec![unreachable, completed(true), failed],
                Found::SavepointFailed {
                    reason: "disk full".into(),
                },
            ),
        ];
        for (name, answers, expect) in cases {
            assert_eq!(savepoint_found(&answers), expect, "{name}");
        }
    }

    #[test]
    fn a_pod_is_outdated_when_its_spec_hash_or_settings_differ() {
        let template = |hash: &str, restore: &str| -> PodTemplateSpec {
            serde_json::from_value(serde_json::json!({
                "metadata": {"annotations": {SPEC_HASH_ANNOTATION: hash}},
                "spec": {"containers": [{"name": "worker", "env": [
                    {"name": "SLUICE_RESTORE_FROM", "value": restore},
                    {"name": "SLUICE_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                ]}]}
            }))
            .unwrap()
        };
        let pod = |hash: &str, restore: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "w-0", "annotations": {SPEC_HASH_ANNOTATION: hash, "other": "x"}},
                "spec": {"containers": [{"name": "worker", "env": [
                    {"name": "SLUICE_RESTORE_FROM", "value": restore},
                    // As the API server stores it, with its default filled in.
                    {"name": "SLUICE_NAMESPACE", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}},
                ]}]}
            }))
            .unwrap()
        };
        let wanted = template("h2", "s3://b/sp-2");
        let cases = [
            ("the same template", pod("h2", "s3://b/sp-2"), false),
            (
                "stopped at the savepoint, on the old spec",
                pod("h1", "s3://b/sp-1"),
                true,
            ),
            (
                "the same spec from another savepoint",
                pod("h2", "s3://b/sp-1"),
                true,
            ),
            (
                "a failed spec, from the same savepoint (a rollback)",
                pod("h3", "s3://b/sp-2"),
                true,
            ),
            (
                "a variable a webhook added",
                {
                    let mut pod = pod("h2", "s3://b/sp-2");
                    pod.spec.as_mut().unwrap().containers[0]
                        .env
                        .as_mut()
                        .unwrap()
                        .push(
                            serde_json::from_value(
                                serde_json::json!({"name": "AWS_ROLE_ARN", "value": "arn:x"}),
                            )
                            .unwrap(),
                        );
                    pod
                },
                false,
            ),
        ];
        for (name, pod, expected) in cases {
            assert_eq!(outdated(&pod, &wanted), expected, "{name}");
        }
    }

    #[test]
    fn what_keeps_a_worker_from_being_ready() {
        let pod = |status: serde_json::Value| -> Pod {
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": "w-0"}, "status": status}),
            )
            .unwrap()
        };
        let cases = [
            (
                "ready",
                serde_json::json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}),
                None,
            ),
            (
                "an image that does not pull",
                serde_json::json!({"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}],
                    "containerStatuses": [{"name": "worker", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
                        "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"x\""}}}]}),
                Some("ImagePullBackOff (Back-off pulling image \"x\")"),
            ),
            (
                "a crash loop",
                serde_json::json!({"phase": "Running",
                    "containerStatuses": [{"name": "worker", "ready": false, "restartCount": 3, "image": "x", "imageID": "",
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                        "lastState": {"terminated": {"exitCode": 2}}}]}),
                Some("CrashLoopBackOff, last exit code 2"),
            ),
            (
                "running, probe failing",
                serde_json::json!({"phase": "Running",
                    "containerStatuses": [{"name": "worker", "ready": false, "restartCount": 1, "image": "x", "imageID": "",
                        "state": {"running": {}}}]}),
                Some("running but not Ready (restarted 1 times)"),
            ),
            (
                "not scheduled",
                serde_json::json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                    "message": "0/1 nodes are available: 1 Insufficient cpu."}]}),
                Some("not scheduled (0/1 nodes are available: 1 Insufficient cpu.)"),
            ),
        ];
        for (name, status, expect) in cases {
            assert_eq!(pod_problem(&pod(status)).as_deref(), expect, "{name}");
        }
    }

    #[test]
    fn the_workers_answers_parse() {
        let cases = [
            (
                r#"{"id":"x","stop":true,"state":"Pending"}"#,
                PartState::Pending,
            ),
            (
                r#"{"id":"x","stop":true,"state":"Completed","location":"file:///s/ns/j/x","bytes":10,"manifest":true}"#,
                PartState::Completed {
                    location: "file:///s/ns/j/x".into(),
                    manifest: true,
                },
            ),
            (
                r#"{"id":"x","stop":true,"state":"Failed","reason":"no space"}"#,
                PartState::Failed {
                    reason: "no space".into(),
                },
            ),
        ];
        for (text, expect) in cases {
            assert_eq!(serde_json::from_str::<PartState>(text).unwrap(), expect);
        }
    }
}
