//! Helpers for the node tests (`tests/tests/node.rs`): a client for the local cluster (or
//! any cluster named by `KUBECONFIG`), a check that a node really runs pods, per-test
//! namespaces, polling with deadlines, and pod diagnostics for failure messages.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Event, Namespace, Node, Pod};
use kube::api::{DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Field manager for server-side apply from these tests.
pub const FIELD_MANAGER: &str = "sluice-e2e-node";

/// Label put on every namespace these tests create.
pub const NAMESPACE_LABEL: &str = "sluice.dev/e2e";

/// What the node tests need to know about the environment.
pub struct NodeEnv {
    pub client: Client,
    /// Kafka bootstrap address for clients on the host (the test process).
    pub kafka_bootstrap: String,
    /// Kafka bootstrap address for pods (the broker's listener on the project's bridge).
    pub kafka_bootstrap_pod: String,
    pub worker_image: String,
    pub controller_image: String,
    /// Debian base image with a shell (bash) and coreutils.
    pub base_image: String,
    /// Debian base image with kcat and netcat (test tools).
    pub tools_image: String,
}

/// Reads `export NAME=value` lines from the cluster's env file
/// (`${SLUICE_STATE:-/var/tmp/sluice-cluster}/env`, written by `tests/cluster/cluster.sh`).
fn cluster_env_file() -> BTreeMap<String, String> {
    let state = std::env::var("SLUICE_STATE").unwrap_or_else(|_| "/var/tmp/sluice-cluster".into());
    let path = PathBuf::from(state).join("env");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return BTreeMap::new();
    };
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("export "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let v = v.trim().trim_matches('"').trim_matches('\'');
            (k.trim().to_string(), v.to_string())
        })
        .collect()
}

/// A setting from the process environment, else from the cluster's env file, else a default.
fn setting(name: &str, file: &BTreeMap<String, String>, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| file.get(name).cloned())
        .unwrap_or_else(|| default.to_string())
}

/// Connects to the cluster and fails (never skips) unless a node is Ready to run pods.
pub async fn node_env() -> Result<NodeEnv> {
    let file = cluster_env_file();
    let kubeconfig = setting("KUBECONFIG", &file, "");
    if kubeconfig.is_empty() {
        bail!(
            "no KUBECONFIG in the environment and no ${{SLUICE_STATE}}/env: start the local \
             cluster first with `bash tests/cluster/cluster.sh up` (it starts the node too)"
        );
    }
    let kc = Kubeconfig::read_from(&kubeconfig)
        .with_context(|| format!("reading kubeconfig {kubeconfig}"))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {kubeconfig}"))?;
    let client = Client::try_from(config).context("building the Kubernetes client")?;
    require_ready_node(&client).await?;
    Ok(NodeEnv {
        client,
        kafka_bootstrap: setting("SLUICE_KAFKA_BOOTSTRAP", &file, "127.0.0.1:9092"),
        kafka_bootstrap_pod: setting("SLUICE_KAFKA_BOOTSTRAP_POD", &file, "10.244.0.1:9094"),
        worker_image: setting("SLUICE_WORKER_IMAGE", &file, "localhost/sluice-worker:dev"),
        controller_image: setting(
            "SLUICE_CONTROLLER_IMAGE",
            &file,
            "localhost/sluice-controller:dev",
        ),
        base_image: setting("SLUICE_BASE_IMAGE", &file, "localhost/sluice-base:bookworm"),
        tools_image: setting(
            "SLUICE_TESTTOOLS_IMAGE",
            &file,
            "localhost/sluice-testtools:dev",
        ),
    })
}

/// Fails with a clear message unless at least one schedulable node is Ready.
pub async fn require_ready_node(client: &Client) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let list = nodes
        .list(&ListParams::default())
        .await
        .context("listing nodes (is the API server up? `bash tests/cluster/cluster.sh status`)")?;
    let mut seen = Vec::new();
    for node in &list.items {
        let name = node.metadata.name.clone().unwrap_or_default();
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.clone())
            .unwrap_or_else(|| "Unknown".into());
        let unschedulable = node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        if ready == "True" && !unschedulable {
            return Ok(());
        }
        seen.push(format!(
            "{name} (Ready={ready}, unschedulable={unschedulable})"
        ));
    }
    bail!(
        "no Ready node runs pods in this cluster (nodes: [{}]). The node tests need a real \
         node: run `bash tests/cluster/cluster.sh up` (it runs tests/cluster/node.sh up) and \
         check `bash tests/cluster/node.sh status` and ${{SLUICE_STATE}}/node/logs/kubelet.log",
        seen.join(", ")
    )
}

/// Polls `probe` every `every` until it returns `Some`, or fails after `timeout` with
/// `what` and the last diagnostic the probe reported through `Err`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last = String::from("(no observation yet)");
    loop {
        match probe().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(err) => last = format!("{err:#}"),
        }
        if start.elapsed() >= timeout {
            bail!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Server-side applies `obj` (forced, so reruns converge).
pub async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
    K::DynamicType: Default,
{
    let name = obj
        .meta()
        .name
        .clone()
        .context("object to apply has no metadata.name")?;
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    // kube's Display of an API error is terse; the Debug form carries the server's message.
    .map_err(|err| anyhow::anyhow!("applying {} {name}: {err:?}", K::kind(&Default::default())))
}

/// Builds a typed object from JSON, with the field path in the error.
pub fn from_json<K: DeserializeOwned>(value: serde_json::Value) -> Result<K> {
    serde_json::from_value(value).context("building a Kubernetes object from JSON")
}

/// Lets the StreamJobs of a test namespace go: the finalizer of a job's final savepoint
/// (`spec.savepoints.onDelete`) would hold it forever once the controller of an earlier,
/// interrupted run is gone. Nothing to do where the CRD is not installed.
pub async fn release_stream_jobs(client: &Client, namespace: &str) {
    let jobs: Api<sluice_crds::StreamJob> = Api::namespaced(client.clone(), namespace);
    let Ok(list) = jobs.list(&ListParams::default()).await else {
        return;
    };
    for job in list {
        if job
            .metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| !f.is_empty())
        {
            let name = job.metadata.name.unwrap_or_default();
            let patch = serde_json::json!({"metadata": {"finalizers": null}});
            let _ = jobs
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
        }
    }
}

/// Deletes namespace `name` if present (leftover of an earlier failed run) and recreates it.
pub async fn fresh_namespace(client: &Client, name: &str) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(name).await?.is_some() {
        release_stream_jobs(client, name).await;
        let _ = namespaces.delete(name, &DeleteParams::foreground()).await;
        wait_for(
            &format!("leftover namespace {name} to be deleted"),
            Duration::from_secs(120),
            || async {
                release_stream_jobs(client, name).await;
                Ok(match namespaces.get_opt(name).await? {
                    None => Some(()),
                    Some(ns) => bail!(
                        "namespace {name} still exists (phase {:?})",
                        ns.status.and_then(|s| s.phase)
                    ),
                })
            },
        )
        .await?;
    }
    let ns: Namespace = from_json(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": name, "labels": { NAMESPACE_LABEL: "node" } },
    }))?;
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    // The ServiceAccount admission plugin needs the namespace's default ServiceAccount.
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), name);
    wait_for(
        &format!("ServiceAccount default in namespace {name}"),
        Duration::from_secs(60),
        || async { Ok(sas.get_opt("default").await?.map(|_| ())) },
    )
    .await?;
    Ok(())
}

/// Deletes a test namespace at the end of a passing test (not waiting for it to go).
pub async fn delete_namespace(client: &Client, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces.delete(name, &DeleteParams::background()).await;
}

/// Whether a pod's Ready condition is True.
pub fn pod_is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn pod_phase(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Unknown".into())
}

/// A one-paragraph account of a pod for failure messages: phase, node, container states,
/// recent events and the tail of its log.
pub async fn describe_pod(client: &Client, namespace: &str, name: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut out = String::new();
    match pods.get_opt(name).await {
        Ok(Some(pod)) => {
            let status = pod.status.clone().unwrap_or_default();
            let _ = write!(
                out,
                "pod {namespace}/{name}: phase={} node={} reason={:?} message={:?}",
                pod_phase(&pod),
                pod.spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_else(|| "<unscheduled>".into()),
                status.reason,
                status.message,
            );
            for c in status.conditions.unwrap_or_default() {
                let _ = write!(
                    out,
                    "; condition {}={} {:?}",
                    c.type_,
                    c.status,
                    c.message.unwrap_or_default()
                );
            }
            for cs in status.container_statuses.unwrap_or_default() {
                let _ = write!(
                    out,
                    "; container {} ready={} restarts={} state={}",
                    cs.name,
                    cs.ready,
                    cs.restart_count,
                    serde_json::to_string(&cs.state).unwrap_or_default()
                );
            }
        }
        Ok(None) => {
            let _ = write!(out, "pod {namespace}/{name} does not exist");
        }
        Err(err) => {
            let _ = write!(out, "pod {namespace}/{name}: get failed: {err}");
        }
    }
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let lp = ListParams::default().fields(&format!("involvedObject.name={name}"));
    if let Ok(list) = events.list(&lp).await {
        for e in list.items.iter().rev().take(8) {
            let _ = write!(
                out,
                "\n  event {} {}: {}",
                e.type_.clone().unwrap_or_default(),
                e.reason.clone().unwrap_or_default(),
                e.message.clone().unwrap_or_default()
            );
        }
    }
    let lp = LogParams {
        tail_lines: Some(20),
        ..LogParams::default()
    };
    match pods.logs(name, &lp).await {
        Ok(log) if !log.is_empty() => {
            let _ = write!(out, "\n  log tail:\n{}", indent(&log));
        }
        Ok(_) => {}
        Err(err) => {
            let _ = write!(out, "\n  (log unavailable: {err})");
        }
    }
    out
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Container states that never resolve by waiting (a missing image with pull policy Never,
/// a bad spec): a wait for the pod fails at once with this reason instead of at its deadline.
pub fn stuck_reason(pod: &Pod) -> Option<String> {
    const STUCK: [&str; 5] = [
        "ErrImageNeverPull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    ];
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses.iter().find_map(|cs| {
        let waiting = cs.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref()?;
        STUCK.contains(&reason).then(|| {
            format!(
                "is stuck: container {} {reason}: {} (images are never pulled: \
                 `bash tests/cluster/images.sh` builds and imports them)",
                cs.name,
                waiting.message.clone().unwrap_or_default()
            )
        })
    })
}

/// Waits until pod `name` has finished, returning its log; fails with the pod's account if
/// it failed or did not finish in time.
pub async fn wait_pod_succeeded(
    client: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let outcome = wait_for(
        &format!("pod {namespace}/{name} to succeed"),
        timeout,
        || async {
            let pod = pods.get(name).await?;
            if let Some(reason) = stuck_reason(&pod) {
                return Ok(Some(Err(reason)));
            }
            match pod_phase(&pod).as_str() {
                "Succeeded" => Ok(Some(Ok(()))),
                "Failed" => Ok(Some(Err("failed".to_string()))),
                phase => bail!("phase {phase}"),
            }
        },
    )
    .await;
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => bail!(
            "pod {namespace}/{name} {reason}\n{}",
            describe_pod(client, namespace, name).await
        ),
        Err(err) => bail!("{err:#}\n{}", describe_pod(client, namespace, name).await),
    }
    pods.logs(name, &LogParams::default())
        .await
        .with_context(|| format!("reading the log of pod {namespace}/{name}"))
}
