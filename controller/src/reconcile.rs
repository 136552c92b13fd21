//! The reconciler: one StreamJob, in named phases.
//!
//! dereference (reads: the Secret it names) → validate (pure: `sluice_crds::validate` and
//! the controller's own rules) → build (pure, infallible: every child) → plan (pure: which
//! children the watches show are not yet what was built, see `cache`) → for a new
//! generation, the status first (observedGeneration, Reconciling) → apply (server-side
//! apply, one field manager; the independent children at once, the StatefulSet last) →
//! delete orphans → status (pure decision, written only when it changed) and an Event per
//! transition or failure.
//!
//! A steady-state reconcile (every child in sync) sends no request but a status write
//! when the workers changed; a new job has its first status after one request, usually
//! written before its reconcile by the `intake`, which writes the same status.
//!
//! A spec only the user can fix stalls the job (`Stalled`, an Event, no requeue: the next
//! edit reconciles it) and applies nothing, so running workers keep their last good spec.
//! Other failures requeue with per-job exponential backoff.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_crds::status::UpgradeState;
use sluice_crds::{CheckedJob, StreamJob, ValidationErrors};
use tracing::{debug, info, instrument, warn};

use crate::autoscaler;
use crate::build::{
    BuildInputs, Children, Orphan, build, claim_storage_class, job_name, storage_class,
};
use crate::cache::{ChildCache, cached, in_sync, stamp};
use crate::context::Context;
use crate::error::{Error, ErrorKind};
use crate::lifecycle::{self, Deploy};
use crate::names::{ChildNames, FIELD_MANAGER, FINAL_SAVEPOINT_FINALIZER, TOKEN_FILE};
use crate::spec_hash::spec_hash;
use crate::status::{Observation, Transition, WorkerCounts, next_status};

/// How often a job with a change in progress is reconciled (a savepoint's progress is
/// read from the workers, which no watch reports).
const LIFECYCLE_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// How often a change is checked while the workers write a savepoint or are told to go on:
/// each check is one admin-API request per worker, and the workers wait meanwhile.
const SAVEPOINT_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// When to check a change in progress again.
fn lifecycle_poll(job: &StreamJob) -> std::time::Duration {
    match job
        .status
        .as_ref()
        .and_then(|status| status.upgrade.as_ref())
        .map(|upgrade| upgrade.state)
    {
        Some(UpgradeState::TakingSavepoint | UpgradeState::Resuming | UpgradeState::Aborting) => {
            SAVEPOINT_POLL_INTERVAL
        }
        _ => LIFECYCLE_POLL_INTERVAL,
    }
}

/// Reconciles one StreamJob (the `Controller`'s reconcile function).
#[instrument(skip_all, fields(namespace = %job.namespace().unwrap_or_default(), job = %job.name_any()))]
pub async fn reconcile(job: Arc<StreamJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started();
    let key = object_key(&job);
    let deleted = job.metadata.deletion_timestamp.is_some();
    if deleted && !holds_finalizer(&job) {
        // Garbage collection deletes the children through their owner references.
        return Ok(Action::await_change());
    }
    // The job as this reconcile last wrote its status (the status phase compares with it).
    let mut job = StreamJob::clone(&job);
    let outcome = if deleted {
        // The final savepoint, then the finalizer goes.
        deleting(&mut job, &ctx).await
    } else {
        phases(&mut job, &ctx).await
    };
    match outcome {
        Ok(action) => {
            ctx.backoff.succeeded(&key);
            Ok(action)
        }
        Err(error) => {
            ctx.metrics.failure(error.kind());
            warn!(kind = error.kind().as_str(), "{error}");
            if deleted {
                return Err(error);
            }
            let observation = if error.kind().stalls() {
                Observation::Stalled {
                    reason: error.kind(),
                    message: error.user_message(),
                }
            } else {
                Observation::Failed {
                    message: error.to_string(),
                }
            };
            if let Err(status_error) = report(&mut job, &ctx, &observation).await {
                warn!("{status_error}");
            }
            match error.kind() {
                // Nothing but an edit can fix the spec, and an edit triggers a reconcile.
                ErrorKind::InvalidSpec
                | ErrorKind::IncompatibleState
                | ErrorKind::NoSavepointLocation
                | ErrorKind::RolledBack => {
                    ctx.backoff.succeeded(&key);
                    Ok(Action::await_change())
                }
                // A missing Secret may be created (Secrets are not watched), the API may
                // come back: retry with backoff.
                ErrorKind::MissingReference | ErrorKind::KubernetesApi => Err(error),
            }
        }
    }
}

/// What the `Controller` does after a failed reconcile: retry this job alone, later each
/// time it fails again.
pub fn error_policy(job: Arc<StreamJob>, error: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.backoff.failed(&object_key(&job));
    debug!(
        namespace = %job.namespace().unwrap_or_default(),
        job = %job.name_any(),
        kind = error.kind().as_str(),
        "retrying in {delay:?}"
    );
    Action::requeue(delay)
}

/// Whether the job carries the finalizer of its final savepoint.
fn holds_finalizer(job: &StreamJob) -> bool {
    job.finalizers()
        .iter()
        .any(|finalizer| finalizer == FINAL_SAVEPOINT_FINALIZER)
}

/// Whether the job wants a final savepoint when it is deleted.
fn wants_final_savepoint(job: &StreamJob) -> bool {
    job.spec
        .savepoints
        .as_ref()
        .is_some_and(|savepoints| savepoints.on_delete)
}

/// Adds or removes the finalizer of the final savepoint, with a JSON patch that first
/// tests what it changes (so another writer's finalizer is never lost, and a conflict
/// fails and retries), as kube-runtime's `finalizer` does.
async fn set_finalizer(job: &mut StreamJob, ctx: &Context, hold: bool) -> Result<(), Error> {
    let current = job.finalizers().to_vec();
    let operations = if hold {
        if current.is_empty() {
            serde_json::json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": [FINAL_SAVEPOINT_FINALIZER]},
            ])
        } else {
            serde_json::json!([
                {"op": "test", "path": "/metadata/finalizers", "value": current},
                {"op": "add", "path": "/metadata/finalizers/-", "value": FINAL_SAVEPOINT_FINALIZER},
            ])
        }
    } else {
        let Some(index) = current
            .iter()
            .position(|finalizer| finalizer == FINAL_SAVEPOINT_FINALIZER)
        else {
            return Ok(());
        };
        let path = format!("/metadata/finalizers/{index}");
        serde_json::json!([
            {"op": "test", "path": path, "value": FINAL_SAVEPOINT_FINALIZER},
            {"op": "remove", "path": path},
        ])
    };
    let patch: json_patch::Patch =
        serde_json::from_value(operations).expect("a JSON patch of finalizers is well formed");
    let jobs: Api<StreamJob> =
        Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let name = job.name_any();
    let patched = ctx
        .limited(jobs.patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch)))
        .await
        .map_err(Error::api(format!(
            "{} the finalizer {FINAL_SAVEPOINT_FINALIZER} of StreamJob {name}",
            if hold { "add" } else { "remove" }
        )))?;
    job.metadata.finalizers = patched.metadata.finalizers;
    Ok(())
}

/// A deleted job that holds the finalizer: its final savepoint, then the finalizer goes
/// and garbage collection takes the children.
async fn deleting(job: &mut StreamJob, ctx: &Context) -> Result<Action, Error> {
    ctx.children.wait_until_ready().await;
    let namespace = job.namespace().unwrap_or_default();
    let names = ChildNames::of(&job_name(job));
    let token = cached(&ctx.children.admin_tokens, &namespace, &names.admin_token)
        .and_then(|secret| token_of(&secret));
    let workers = cached(&ctx.children.workers, &namespace, &names.workers)
        .as_deref()
        .map(WorkerCounts::of)
        .unwrap_or_default();
    let done = !wants_final_savepoint(job)
        || lifecycle::final_savepoint(job, ctx, token.as_deref(), &workers).await?;
    if !done {
        return Ok(Action::requeue(lifecycle_poll(job)));
    }
    info!("letting the job go");
    set_finalizer(job, ctx, false).await?;
    Ok(Action::await_change())
}

fn object_key(job: &StreamJob) -> String {
    format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any())
}

async fn phases(job: &mut StreamJob, ctx: &Context) -> Result<Action, Error> {
    // After a start, decide from a full cache rather than apply every child again.
    ctx.children.wait_until_ready().await;
    if wants_final_savepoint(job) != holds_finalizer(job) {
        set_finalizer(job, ctx, wants_final_savepoint(job)).await?;
    }
    dereference(job, ctx).await?;
    // While the autoscaler is enabled, the job runs at its parallelism (in this copy only:
    // the user's spec is never written).
    job.spec.parallelism = autoscaler::effective_parallelism(job);
    let mut checked = validate(job)?;
    let namespace = job.namespace().unwrap_or_default();
    let names = ChildNames::of(&job_name(job));
    let spec_hash = spec_hash(&job.spec);
    let cached_token = cached(&ctx.children.admin_tokens, &namespace, &names.admin_token)
        .and_then(|secret| token_of(&secret));
    let cached_workers = cached(&ctx.children.workers, &namespace, &names.workers);
    let storage_class_name = storage_class(
        job.spec.state.storage_class_name.as_deref(),
        cached_workers.as_deref().map(claim_storage_class),
        ctx.settings.workers.storage_class_name.as_deref(),
    )
    .map(str::to_string);
    // The autoscaler: a sample when one is due, and perhaps a new parallelism, which the
    // lifecycle then carries out as a rescale.
    let parallelism = job.spec.parallelism;
    let next_sample = autoscaler::step(
        job,
        ctx,
        &cached_workers
            .as_deref()
            .map(WorkerCounts::of)
            .unwrap_or_default(),
    )
    .await?;
    if job.spec.parallelism != parallelism {
        checked = validate(job)?;
    }
    // The lifecycle: a change that takes a savepoint holds the workers on what they run
    // until it is taken (docs/lifecycle.md).
    let current_workers = cached_workers
        .as_deref()
        .map(WorkerCounts::of)
        .unwrap_or_default();
    // The build reads the spec (the wanted one, or the last good one in a rollback); the
    // status phase updates `job.status`.
    let built_from;
    let mut spec_hash = spec_hash;
    let restore = match lifecycle::decide(
        job,
        ctx,
        &checked,
        cached_token.as_deref(),
        &current_workers,
    )
    .await?
    {
        Deploy::Wanted(restore) => {
            built_from = job.clone();
            restore
        }
        Deploy::RollBack(to) => {
            let lifecycle::RollBackTo {
                spec,
                generation,
                restore,
            } = *to;
            let mut last_good = job.clone();
            last_good.spec = spec;
            last_good.metadata.generation = Some(generation);
            checked = validate(&last_good)?;
            built_from = last_good;
            spec_hash = self::spec_hash(&built_from.spec);
            restore
        }
        Deploy::Hold => {
            let workers = cached_workers
                .as_deref()
                .map(WorkerCounts::of)
                .unwrap_or_default();
            report(job, ctx, &Observation::Applied { spec_hash, workers }).await?;
            return Ok(Action::requeue(lifecycle_poll(job)));
        }
    };
    let build_with = |admin_token: &str| {
        build(&BuildInputs {
            job: &built_from,
            checked: &checked,
            defaults: &ctx.settings.workers,
            storage_class_name: storage_class_name.as_deref(),
            admin_token,
            spec_hash: &spec_hash,
            restore: &restore,
        })
    };
    let mut children = build_with(cached_token.as_deref().unwrap_or_default());
    let mut plan = plan(&mut children, &ctx.children, &namespace);
    if job
        .status
        .as_ref()
        .and_then(|status| status.observed_generation)
        != job.metadata.generation
    {
        // Write-ahead: the new generation is recorded as in progress before anything is
        // applied, so a new job has a status after one request.
        let mut workers = WorkerCounts::of(cached_workers.as_deref().unwrap_or(&children.workers));
        if plan.workers {
            workers.rolled_out = false;
        }
        let observation = Observation::Applied {
            spec_hash: spec_hash.clone(),
            workers,
        };
        report(job, ctx, &observation).await?;
    }
    let mut admin_token = cached_token.clone();
    if cached_token.is_none() {
        // Not seen by the watch (a new job, or a Secret created a moment ago): read it, so
        // the workers' token never changes.
        let token = read_admin_token(ctx, &namespace, &names.admin_token).await?;
        children = build_with(&token);
        admin_token = Some(token.clone());
        plan = Plan {
            admin_token: true,
            ..self::plan(&mut children, &ctx.children, &namespace)
        };
    }
    let workers =
        WorkerCounts::of(&apply(ctx, &namespace, &children, &plan, cached_workers).await?);
    if plan.workers
        && job
            .status
            .as_ref()
            .and_then(|status| status.upgrade.as_ref())
            .is_some_and(|upgrade| upgrade.state == UpgradeState::Rolling)
    {
        lifecycle::crash_if(ctx, lifecycle::CrashPoint::Rolling);
    }
    delete_orphans(ctx, &namespace, &children, &names).await?;
    if let Some(since) = job
        .status
        .as_ref()
        .and_then(|status| status.upgrade.as_ref())
        .filter(|upgrade| {
            matches!(
                upgrade.state,
                UpgradeState::Rolling | UpgradeState::RollingBack
            )
        })
        .map(|upgrade| upgrade.state_since.clone())
    {
        // Every worker starts from the savepoint at once (docs/lifecycle.md).
        let replaced = lifecycle::effects::replace_outdated_workers(
            ctx,
            &namespace,
            &names.workers,
            workers.desired.max(workers.replicas),
            &children.workers.spec.template,
            &since,
        )
        .await?;
        if !replaced.is_empty() {
            info!(
                "replacing workers {} on the new template at once",
                replaced.join(", ")
            );
        }
    }
    if lifecycle::rolled_out(job, ctx, &workers, &spec_hash, admin_token.as_deref()).await? {
        // Rolled back just now: the workers run the last good spec, which this reconcile's
        // status must not take for the wanted one. The next one decides afresh: it refuses
        // the spec left behind, or (the autoscaler's rescale rolled back) runs on.
        return Ok(Action::requeue(std::time::Duration::from_millis(100)));
    }
    let changing = job
        .status
        .as_ref()
        .is_some_and(|status| status.upgrade.is_some());
    report(job, ctx, &Observation::Applied { spec_hash, workers }).await?;
    let requeue = if changing {
        lifecycle_poll(job)
    } else {
        lifecycle::next_periodic_savepoint(job).map_or(ctx.settings.resync_interval, |due| {
            due.min(ctx.settings.resync_interval)
        })
    };
    Ok(Action::requeue(
        next_sample.map_or(requeue, |next| next.min(requeue)),
    ))
}

/// The reads phase: the Secret of `spec.kafka.secretRef` must exist. Only its metadata is
/// read here, and it is not watched: only the autoscaler reads its data, for the Kafka
/// client of an autoscaled job.
pub async fn dereference(job: &StreamJob, ctx: &Context) -> Result<(), Error> {
    let Some(reference) = &job.spec.kafka.secret_ref else {
        return Ok(());
    };
    let secrets: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let found = ctx
        .limited(secrets.get_metadata_opt(&reference.name))
        .await
        .map_err(Error::api(format!("read Secret {}", reference.name)))?;
    match found {
        Some(_) => Ok(()),
        None => Err(Error::MissingReference {
            kind: "Secret",
            name: reference.name.clone(),
            field: "spec.kafka.secretRef",
        }),
    }
}

/// The admin token of the existing Secret `name`, else a new one.
async fn read_admin_token(ctx: &Context, namespace: &str, name: &str) -> Result<String, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let existing = ctx
        .limited(secrets.get_opt(name))
        .await
        .map_err(Error::api(format!("read Secret {name}")))?;
    Ok(existing
        .as_ref()
        .and_then(token_of)
        .unwrap_or_else(new_token))
}

fn token_of(secret: &Secret) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(TOKEN_FILE)?;
    String::from_utf8(bytes.0.clone())
        .ok()
        .filter(|token| !token.is_empty())
}

/// A new admin token: 32 random bytes as hex.
fn new_token() -> String {
    let mut bytes = [0_u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system provides randomness");
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Which children to apply: those whose cached copy is not in sync with what was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The ServiceAccount (when the build has one).
    pub service_account: bool,
    /// The admin-token Secret.
    pub admin_token: bool,
    /// The job ConfigMap.
    pub job_config: bool,
    /// The headless Service.
    pub service: bool,
    /// The PodDisruptionBudget.
    pub disruption_budget: bool,
    /// The StatefulSet.
    pub workers: bool,
}

/// Stamps every child with its hash and compares with the cache (pure but for reading
/// the cache).
pub fn plan(children: &mut Children, cache: &ChildCache, namespace: &str) -> Plan {
    fn needed<K: Resource + Serialize>(object: &mut K, meta: Option<&ObjectMeta>) -> bool {
        let hash = stamp(object);
        !meta.is_some_and(|meta| in_sync(meta, &hash))
    }
    let service_account = match children.service_account.as_mut() {
        Some(account) => {
            let found = cached(&cache.service_accounts, namespace, &account.name_any());
            needed(account, found.as_ref().map(|found| &found.metadata))
        }
        None => false,
    };
    let admin_token = cached(
        &cache.admin_tokens,
        namespace,
        &children.admin_token.name_any(),
    );
    let job_config = cached(
        &cache.job_configs,
        namespace,
        &children.job_config.name_any(),
    );
    let service = cached(&cache.services, namespace, &children.service.name_any());
    let disruption_budget = cached(
        &cache.disruption_budgets,
        namespace,
        &children.disruption_budget.name_any(),
    );
    let workers = cached(&cache.workers, namespace, &children.workers.name_any());
    Plan {
        service_account,
        admin_token: needed(
            &mut children.admin_token,
            admin_token.as_ref().map(|found| &found.metadata),
        ),
        job_config: needed(
            &mut children.job_config,
            job_config.as_ref().map(|found| &found.metadata),
        ),
        service: needed(
            &mut children.service,
            service.as_ref().map(|found| &found.metadata),
        ),
        disruption_budget: needed(
            &mut children.disruption_budget,
            disruption_budget.as_ref().map(|found| &found.metadata),
        ),
        workers: needed(
            &mut children.workers,
            workers.as_ref().map(|found| &found.metadata),
        ),
    }
}

/// Checks the job: `sluice_crds::validate` (the CRD's rules and the pipeline's CEL), and
/// the CRD's rule on the name (a job created before the CRD had it may break it).
pub fn validate(job: &StreamJob) -> Result<CheckedJob, Error> {
    let name = job_name(job);
    let mut errors = Vec::new();
    if let Err(error) = sluice_crds::validate::validate_name(&name) {
        errors.push(error);
    }
    // The job as the API server has it names its namespace.
    errors.extend(sluice_crds::validate::initial_savepoint_problem(job));
    match sluice_crds::validate(&job.spec) {
        Ok(checked) if errors.is_empty() => Ok(checked),
        Ok(_) => Err(Error::InvalidSpec {
            name,
            source: ValidationErrors { errors },
        }),
        Err(invalid) => {
            errors.extend(invalid.errors);
            Err(Error::InvalidSpec {
                name,
                source: ValidationErrors { errors },
            })
        }
    }
}

/// Applies the children of the plan with server-side apply: the independent ones at once,
/// then the StatefulSet (so its pods start once, with everything they mount present).
/// Returns the StatefulSet as the API server answered, or as cached when in sync.
async fn apply(
    ctx: &Context,
    namespace: &str,
    children: &Children,
    plan: &Plan,
    cached_workers: Option<Arc<StatefulSet>>,
) -> Result<StatefulSet, Error> {
    tokio::try_join!(
        apply_if(
            ctx,
            namespace,
            children
                .service_account
                .as_ref()
                .filter(|_| plan.service_account)
        ),
        apply_if(
            ctx,
            namespace,
            Some(&children.admin_token).filter(|_| plan.admin_token)
        ),
        apply_if(
            ctx,
            namespace,
            Some(&children.job_config).filter(|_| plan.job_config)
        ),
        apply_if(
            ctx,
            namespace,
            Some(&children.service).filter(|_| plan.service)
        ),
        apply_if(
            ctx,
            namespace,
            Some(&children.disruption_budget).filter(|_| plan.disruption_budget)
        ),
    )?;
    match cached_workers {
        Some(workers) if !plan.workers => Ok(StatefulSet::clone(&workers)),
        _ => apply_one::<StatefulSet>(ctx, namespace, &children.workers).await,
    }
}

async fn apply_if<K>(ctx: &Context, namespace: &str, object: Option<&K>) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    match object {
        Some(object) => apply_one(ctx, namespace, object).await.map(drop),
        None => Ok(()),
    }
}

async fn apply_one<K>(ctx: &Context, namespace: &str, object: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    // force: the controller owns these fields; a hand edit of them is put back.
    let params = PatchParams::apply(FIELD_MANAGER).force();
    ctx.limited(api.patch(&name, &params, &Patch::Apply(object)))
        .await
        .map_err(Error::api(format!("apply {} {name}", K::kind(&()))))
}

/// Deletes the children this build no longer produces and the watches still show.
async fn delete_orphans(
    ctx: &Context,
    namespace: &str,
    children: &Children,
    names: &ChildNames,
) -> Result<(), Error> {
    for orphan in children.orphans(names) {
        match orphan {
            Orphan::ServiceAccount(name) => {
                if cached(&ctx.children.service_accounts, namespace, &name).is_none() {
                    continue;
                }
                let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), namespace);
                match ctx
                    .limited(api.delete(&name, &DeleteParams::background()))
                    .await
                {
                    Ok(_) => info!("deleted ServiceAccount {name}: podTemplate names another"),
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(error) => {
                        return Err(Error::api(format!("delete ServiceAccount {name}"))(error));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Writes `job.status` as it is (the lifecycle's write-ahead records), with server-side
/// apply on the status subresource.
pub(crate) async fn write_status(job: &StreamJob, ctx: &Context) -> Result<(), Error> {
    let status = job.status.clone().unwrap_or_default();
    patch_status(job, ctx, &status).await
}

async fn patch_status(
    job: &StreamJob,
    ctx: &Context,
    status: &sluice_crds::StreamJobStatus,
) -> Result<(), Error> {
    let name = job_name(job);
    let api: Api<StreamJob> =
        Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": StreamJob::api_version(&()),
        "kind": StreamJob::kind(&()),
        "status": status,
    });
    ctx.limited(api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    ))
    .await
    .map_err(Error::api(format!("write the status of StreamJob {name}")))?;
    Ok(())
}

/// The status phase: decides the next status, writes it when it changed (server-side
/// apply on the status subresource) and publishes an Event for a transition.
/// `job.status` becomes what was written.
async fn report(
    job: &mut StreamJob,
    ctx: &Context,
    observation: &Observation,
) -> Result<(), Error> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let (status, transition) = next_status(job, observation, &now);
    if job.status.as_ref() != Some(&status) {
        patch_status(job, ctx, &status).await?;
        job.status = Some(status);
    }
    if let Some(transition) = transition {
        publish(job, ctx, &transition).await;
    }
    Ok(())
}

/// Publishes `transition` as a Kubernetes Event on `job`, and logs it.
pub(crate) async fn publish(job: &StreamJob, ctx: &Context, transition: &Transition) {
    if transition.warning {
        warn!(reason = %transition.reason, "{}", transition.message);
    } else {
        info!(reason = %transition.reason, "{}", transition.message);
    }
    let event = Event {
        type_: if transition.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: transition.reason.clone(),
        note: Some(truncate(&transition.message, 1024)),
        action: "Reconcile".to_string(),
        secondary: None,
    };
    // A warning goes through the shared recorder: a failure repeated on each retry becomes
    // one Event whose count grows. A normal Event marks a transition, which happens once
    // per change of state: it goes through a recorder of its own, as kube-runtime intends
    // one per reconcile, because the shared one keeps every Event it sent for six minutes
    // to aggregate repeats (3,000 Events, some megabytes, while 1,000 new jobs start).
    let recorder = if transition.warning {
        ctx.recorder.clone()
    } else {
        Recorder::new(ctx.client.clone(), ctx.reporter.clone())
    };
    if let Err(error) = ctx
        .limited(recorder.publish(&event, &job.object_ref(&())))
        .await
    {
        warn!("unable to publish event {}: {error}", transition.reason);
    }
}

/// At most `limit` bytes, cut at a character boundary (an Event's note is at most 1 kB).
fn truncate(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    let mut end = limit.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn validation_reports_the_field_and_the_fix() {
        struct Case {
            name: &'static str,
            change: fn(&mut StreamJob),
            expect_fields: &'static [&'static str],
            /// Words every case's messages must contain together (the fix).
            expect_words: &'static [&'static str],
        }
        fn filter(job: &mut StreamJob, expression: String) {
            job.spec.pipeline[0] =
                serde_json::from_value(serde_json::json!({ "filter": expression })).unwrap();
        }
        let cases = [
            Case {
                name: "valid",
                change: |_| {},
                expect_fields: &[],
                expect_words: &[],
            },
            Case {
                name: "a filter that does not type-check",
                change: |job| {
                    job.spec.pipeline[0] =
                        serde_json::from_value(serde_json::json!({"filter": "size(1) > 0"}))
                            .unwrap();
                },
                expect_fields: &["spec.pipeline[0].filter"],
                expect_words: &[],
            },
            Case {
                name: "a name too long for pod labels",
                change: |job| job.metadata.name = Some("x".repeat(53)),
                expect_fields: &["metadata.name"],
                expect_words: &[],
            },
            Case {
                name: "a name with a dot, which a Service cannot take",
                change: |job| job.metadata.name = Some("page.views".to_string()),
                expect_fields: &["metadata.name"],
                expect_words: &[],
            },
            // One bad StreamJob must never take the controller down (issue 17): these
            // crashed or used hundreds of megabytes before the bounds.
            Case {
                name: "a filter too deep to evaluate safely (1,500 terms of 1+1+…)",
                change: |job| filter(job, format!("{} > 0", vec!["1"; 1500].join("+"))),
                expect_fields: &["spec.pipeline[0].filter"],
                expect_words: &["deep"],
            },
            Case {
                name: "a megabyte of ||",
                change: |job| filter(job, vec!["true"; 200_000].join(" || ")),
                expect_fields: &["spec.pipeline[0].filter"],
                expect_words: &["4096"],
            },
            Case {
                name: "100,000 nested parentheses",
                change: |job| {
                    filter(
                        job,
                        format!("{}true{}", "(".repeat(100_000), ")".repeat(100_000)),
                    )
                },
                expect_fields: &["spec.pipeline[0].filter"],
                expect_words: &["4096"],
            },
            Case {
                name: "a Kafka property the worker owns",
                change: |job| {
                    job.spec.kafka.properties.insert(
                        "bootstrap.servers".to_string(),
                        "elsewhere:9092".to_string(),
                    );
                },
                expect_fields: &["spec.kafka.properties.bootstrap.servers"],
                expect_words: &["bootstrapServers"],
            },
        ];
        for case in cases {
            let mut job = fixtures::job();
            (case.change)(&mut job);
            let (fields, messages): (Vec<String>, Vec<String>) = match validate(&job) {
                Ok(_) => Default::default(),
                Err(Error::InvalidSpec { source, .. }) => source
                    .errors
                    .into_iter()
                    .map(|error| (error.field, error.message))
                    .unzip(),
                Err(other) => panic!("{}: {other}", case.name),
            };
            assert_eq!(fields, case.expect_fields, "{}", case.name);
            let messages = messages.join("\n");
            for words in case.expect_words {
                assert!(messages.contains(words), "{}: {messages}", case.name);
            }
        }
    }

    #[test]
    fn event_notes_fit_in_a_kilobyte() {
        assert_eq!(truncate("short", 1024), "short");
        let long = "é".repeat(1000);
        let cut = truncate(&long, 1024);
        assert!(cut.len() <= 1024);
        assert!(cut.ends_with("..."));
    }

    #[test]
    fn tokens_are_random_hex() {
        let (first, second) = (new_token(), new_token());
        assert_eq!(first.len(), 64);
        assert_ne!(first, second);
        assert!(first.chars().all(|c| c.is_ascii_hexdigit()));
    }
}

#[cfg(test)]
mod mock_api;
