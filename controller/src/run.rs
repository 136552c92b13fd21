//! `sluice-controller run`: watches StreamJobs (all namespaces or a list) and their
//! children, reconciles each job, serves metrics and health, and with leader election
//! runs the controllers only while this process holds the Lease.
//!
//! Triggers: a StreamJob's spec (its generation: the controller's own status writes do
//! not reconcile again), a change that matters to a child it owns (watches filtered by the
//! `managed-by` label, cached for the reconciles to decide from, see `cache`: hand edits
//! and deletions are put back at once, a StatefulSet's status updates the job's), a retry
//! after a failure (per-job backoff), and a resync every `--resync-interval`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Api, Client, Resource};
use kube_lease_manager::LeaseManagerBuilder;
use serde::de::DeserializeOwned;
use sluice_crds::StreamJob;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::cache::{ChildCache, Signature, significant, trim_meta, trim_workers};
use crate::context::{Context, Settings};
use crate::http::{self, HttpState};
use crate::metrics::Metrics;
use crate::names::MANAGED_SELECTOR;
use crate::reconcile::{error_policy, reconcile};

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The namespaces to watch; empty: all.
    pub namespaces: Vec<String>,
    /// What reconciles need.
    pub settings: Settings,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub http_address: SocketAddr,
    /// How many jobs are reconciled at once.
    pub concurrency: u16,
    /// How long a reconcile waits after the last change that asked for it.
    pub debounce: Duration,
    /// Leader election; `None`: this process always leads (one replica, or a shell).
    pub leader_election: Option<LeaderElection>,
    /// This process's name in Events and in the Lease.
    pub identity: String,
}

/// Leader election through a `coordination.k8s.io` Lease.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    /// The Lease's name.
    pub lease_name: String,
    /// The Lease's namespace; `None`: the client's default namespace.
    pub lease_namespace: Option<String>,
    /// How long a Lease is held without renewal: a standby takes over at most this long
    /// after the leader stops renewing.
    pub lease_duration: Duration,
    /// How long before the Lease expires the leader renews it.
    pub renew_before: Duration,
}

/// Runs until SIGTERM or SIGINT (a clean shutdown: in-flight reconciles finish, the Lease
/// is released so a standby takes over at once), or until the Lease is lost (an error: the
/// process exits and its restart starts as a standby).
pub async fn run(options: RunOptions) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let config = kube::Config::infer()
        .await
        .context("failed to configure a Kubernetes client (in-cluster or KUBECONFIG)")?;
    let client = kube::client::ClientBuilder::try_from(config)
        .context("failed to build a Kubernetes client")?
        .with_layer(&metrics.count_requests())
        .build();
    let version = client
        .apiserver_version()
        .await
        .context("failed to reach the API server")?;
    info!(
        api_server = %version.git_version,
        namespaces = %describe_namespaces(&options.namespaces),
        worker_image = %options.settings.worker_image,
        "sluice-controller {} starting",
        env!("CARGO_PKG_VERSION")
    );
    let http_state = HttpState::new(metrics.clone());
    http::serve(options.http_address, http_state.clone()).await?;
    let context = Arc::new(Context::new(
        client.clone(),
        Some(options.identity.clone()),
        metrics.clone(),
        options.settings.clone(),
    ));
    let (stop_sender, stop) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("asked to stop: finishing the reconciles in flight");
        let _ = stop_sender.send(true);
    });

    let Some(election) = options.leader_election.clone() else {
        run_controllers(&context, &options, &http_state, &stop).await;
        return Ok(());
    };
    let lease_namespace = election
        .lease_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let lease = format!("{lease_namespace}/{}", election.lease_name);
    let manager = LeaseManagerBuilder::new(client.clone(), &election.lease_name)
        .with_namespace(&lease_namespace)
        .with_identity(&options.identity)
        .with_duration(election.lease_duration.as_secs().max(1))
        .with_grace(election.renew_before.as_secs().max(1))
        .build()
        .await
        .with_context(|| format!("failed to set up the leader Lease {lease}"))?;
    let (mut leading, lease_task) = manager.watch().await;
    // A standby is ready: it serves health and metrics and waits to take over.
    http_state.ready.store(true, Ordering::SeqCst);
    info!(%lease, identity = %options.identity, "waiting to lead");
    let mut stop_waiting = stop.clone();
    loop {
        if *leading.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = leading.changed() => {
                if changed.is_err() {
                    return Err(anyhow!("the leader election of {lease} stopped"));
                }
            }
            _ = stop_waiting.wait_for(|stop| *stop) => {
                drop(leading);
                release(lease_task, &lease).await;
                return Ok(());
            }
        }
    }
    metrics.leader.set(1);
    info!(%lease, identity = %options.identity, "leading");
    let mut watching = leading.clone();
    let lost = async move {
        while watching.changed().await.is_ok() {
            if !*watching.borrow() {
                break;
            }
        }
    };
    let outcome = tokio::select! {
        () = run_controllers(&context, &options, &http_state, &stop) => Ok(()),
        () = lost => Err(anyhow!(
            "lost the leader Lease {lease}: stopping, so that only the new leader acts"
        )),
    };
    metrics.leader.set(0);
    drop(leading);
    release(lease_task, &lease).await;
    outcome
}

/// Gives the Lease back (the lease manager releases it when its channel closes), so a
/// standby takes over without waiting for it to expire.
async fn release(
    task: tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
    lease: &str,
) {
    match tokio::time::timeout(Duration::from_secs(5), task).await {
        Ok(Ok(Ok(_))) => info!(%lease, "released the leader Lease"),
        Ok(Ok(Err(error))) => warn!(%lease, "unable to release the leader Lease: {error}"),
        Ok(Err(error)) => warn!(%lease, "the leader election task failed: {error}"),
        Err(_) => warn!(%lease, "the leader Lease was not released within 5s"),
    }
}

/// One controller per watched namespace (one for all namespaces when none is named),
/// sharing the context; returns when all have stopped.
async fn run_controllers(
    context: &Arc<Context>,
    options: &RunOptions,
    http_state: &HttpState,
    stop: &watch::Receiver<bool>,
) {
    let scopes: Vec<Option<String>> = if options.namespaces.is_empty() {
        vec![None]
    } else {
        options.namespaces.iter().cloned().map(Some).collect()
    };
    let mut stores = Vec::new();
    let mut controllers = Vec::new();
    for scope in scopes {
        let (store, controller) = controller_for(context.clone(), scope, options, stop.clone());
        stores.push(store);
        controllers.push(controller);
    }
    if let Ok(mut shared) = http_state.stores.lock() {
        shared.clone_from(&stores);
    }
    let ready = http_state.ready.clone();
    tokio::spawn(async move {
        // A store's readiness wakes only its last waiter (the Controller's, which polls it
        // after this task), so ask again every 100 ms rather than wait once.
        for store in stores {
            loop {
                match tokio::time::timeout(Duration::from_millis(100), store.wait_until_ready())
                    .await
                {
                    Ok(Ok(())) => break,
                    Ok(Err(_)) => return,
                    Err(_) => {}
                }
            }
        }
        ready.store(true, Ordering::SeqCst);
        info!("StreamJob caches filled");
    });
    futures::future::join_all(controllers).await;
    info!("controllers stopped");
}

fn api<K>(client: Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client, namespace),
        None => Api::all(client),
    }
}

/// A metadata-only watch of the children of kind `K` the controller manages, cached in
/// `writer` (trimmed): enough to tell whether a child is in sync and to map a change to its
/// owner, and light on memory with thousands of jobs. Yields the changes that matter.
fn owned_metadata<K>(
    client: Client,
    namespace: Option<&str>,
    writer: reflector::store::Writer<PartialObjectMeta<K>>,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let api: Api<PartialObjectMeta<K>> = match namespace {
        Some(namespace) => Api::namespaced(client, namespace),
        None => Api::all(client),
    };
    let events = watcher(api, watcher::Config::default().labels(MANAGED_SELECTOR))
        .default_backoff()
        .modify(|object| trim_meta(&mut object.metadata))
        .reflect(writer);
    significant(events)
}

/// A full watch of the children of kind `K` the controller manages (the StatefulSets, for
/// their status; the admin-token Secrets, for the token), trimmed by `trim` and cached in
/// `writer`. Yields the changes that matter.
fn owned_objects<K>(
    client: Client,
    namespace: Option<&str>,
    writer: reflector::store::Writer<K>,
    trim: fn(&mut K),
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Signature
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let events = watcher(
        api::<K>(client, namespace),
        watcher::Config::default().labels(MANAGED_SELECTOR),
    )
    .default_backoff()
    .modify(trim)
    .reflect(writer);
    significant(events)
}

fn controller_for(
    context: Arc<Context>,
    namespace: Option<String>,
    options: &RunOptions,
    stop: watch::Receiver<bool>,
) -> (Store<StreamJob>, impl Future<Output = ()>) {
    let client = context.client.clone();
    let namespace = namespace.as_deref();
    let (reader, writer) = reflector::store();
    let jobs = reflector::reflector(
        writer,
        watcher(
            api::<StreamJob>(client.clone(), namespace),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .applied_objects()
    .predicate_filter(predicates::generation, Default::default());
    let (workers, workers_writer) = reflector::store();
    let (admin_tokens, admin_tokens_writer) = reflector::store();
    let (job_configs, job_configs_writer) = reflector::store();
    let (services, services_writer) = reflector::store();
    let (disruption_budgets, disruption_budgets_writer) = reflector::store();
    let (service_accounts, service_accounts_writer) = reflector::store();
    let context = Arc::new(context.with_children(ChildCache::new(
        workers,
        admin_tokens,
        job_configs,
        services,
        disruption_budgets,
        service_accounts,
    )));
    let scope = namespace.unwrap_or("all namespaces").to_string();
    let shutdown = async move {
        let mut stop = stop;
        let _ = stop.wait_for(|stop| *stop).await;
    };
    let controller = Controller::for_stream(jobs, reader.clone())
        .owns_stream(owned_objects::<StatefulSet>(
            client.clone(),
            namespace,
            workers_writer,
            trim_workers,
        ))
        .owns_stream(owned_objects::<Secret>(
            client.clone(),
            namespace,
            admin_tokens_writer,
            |secret| trim_meta(&mut secret.metadata),
        ))
        .owns_stream(owned_metadata::<ConfigMap>(
            client.clone(),
            namespace,
            job_configs_writer,
        ))
        .owns_stream(owned_metadata::<Service>(
            client.clone(),
            namespace,
            services_writer,
        ))
        .owns_stream(owned_metadata::<PodDisruptionBudget>(
            client.clone(),
            namespace,
            disruption_budgets_writer,
        ))
        .owns_stream(owned_metadata::<ServiceAccount>(
            client,
            namespace,
            service_accounts_writer,
        ))
        .with_config(
            controller::Config::default()
                .concurrency(options.concurrency)
                .debounce(options.debounce),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(move |result| {
            if let Err(error) = result {
                match error {
                    // Logged with its job by the reconciler.
                    controller::Error::ReconcilerFailed(..) => {}
                    other => warn!(scope = %scope, "controller: {other}"),
                }
            }
            futures::future::ready(())
        });
    (reader, controller)
}

async fn wait_for_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                error!(%error, "failed to watch for SIGTERM");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn describe_namespaces(namespaces: &[String]) -> String {
    if namespaces.is_empty() {
        "all".to_string()
    } else {
        namespaces.join(",")
    }
}

/// This process's identity: the pod's name (`POD_NAME`, from the downward API), else the
/// host name and a random suffix, so two processes on one machine differ.
pub fn default_identity() -> String {
    if let Some(pod) = std::env::var("POD_NAME")
        .ok()
        .filter(|name| !name.is_empty())
    {
        return pod;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "sluice-controller".to_string());
    let mut bytes = [0_u8; 3];
    let suffix = match getrandom::fill(&mut bytes) {
        Ok(()) => bytes.iter().map(|byte| format!("{byte:02x}")).collect(),
        Err(_) => std::process::id().to_string(),
    };
    format!("{host}-{suffix}")
}
