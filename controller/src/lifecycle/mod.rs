//! The job lifecycle: how a change to a StreamJob reaches its workers (docs/lifecycle.md).
//!
//! `classify` (pure) says what kind of change it is, from the spec the workers run (the
//! job ConfigMap's) and the wanted one; a change that needs a savepoint is recorded in
//! `status.upgrade` before anything happens, and `machine` (pure) moves it step by step
//! on what `effects` (the workers' admin API) found. While a savepoint is being taken the
//! reconcile applies nothing, so the workers keep the spec they run; in `Rolling` it
//! applies the new spec, restoring from the savepoint.

pub mod classify;
pub mod effects;
pub mod machine;

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::Api;
use sluice_crds::status::RollbackRecord;
use sluice_crds::status::{
    ChangeKind, DeployedSpec, SAVEPOINT_HISTORY_LIMIT, SavepointRecord, SavepointTrigger,
    UpgradeState, UpgradeStatus,
};
use sluice_crds::streamjob::UpgradeMode;
use sluice_crds::{CheckedJob, StreamJob, StreamJobSpec, StreamJobStatus};
use tracing::{info, warn};

use self::effects::{
    Answer, committed_positions, overdue_workers, savepoint_found, stopped_for_rollback,
    worker_addresses,
};
use self::machine::{Found, Next};
use crate::build::job_name;
use crate::context::Context;
use crate::error::{Error, ErrorKind};
use crate::metrics::ChangeOutcome;
use crate::names::{ChildNames, JOB_FILE};
use crate::spec_hash::spec_hash;
use crate::status::{Transition, WorkerCounts};

/// For recovery tests only: a step of a change where the controller aborts, as if killed
/// there (`--test-crash`, `SLUICE_TEST_CRASH`), to show that a controller restarted in
/// any step completes the change once (docs/architecture.md, "Crash points").
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CrashPoint {
    /// Right after `TakingSavepoint` is recorded, before any worker is asked.
    Recorded,
    /// Right after every worker was asked for the savepoint.
    SavepointRequested,
    /// With the savepoint complete, before `Rolling` is recorded.
    SavepointCompleted,
    /// Right after the StatefulSet of the new spec is applied.
    Rolling,
}

/// Aborts the process at `point` if the controller was told to (`--test-crash`).
pub fn crash_if(ctx: &Context, point: CrashPoint) {
    if ctx.settings.crash_point == Some(point) {
        tracing::error!(?point, "crashing on purpose (--test-crash)");
        std::process::abort();
    }
}

/// Where the workers restore from (their `SLUICE_RESTORE_FROM` and
/// `SLUICE_PREVIOUS_PARALLELISM`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restore {
    /// The savepoint's location.
    pub savepoint: Option<String>,
    /// The parallelism of the workers that took it.
    pub previous_parallelism: Option<i32>,
    /// Only its Kafka offsets: the windows start empty (`upgradeMode: Stateless`).
    pub offsets_only: bool,
    /// The restore's epoch (`SLUICE_RESTORE_EPOCH`): a rollback's, so the workers restore
    /// the savepoint afresh whatever their volumes hold.
    pub epoch: Option<u64>,
}

/// The last good spec a rollback starts again.
#[derive(Clone, Debug, PartialEq)]
pub struct RollBackTo {
    /// The spec the workers ran before the change.
    pub spec: StreamJobSpec,
    /// Its generation.
    pub generation: i64,
    /// The savepoint taken before the change, by the workers that ran it.
    pub restore: Restore,
}

impl RollBackTo {
    /// The same, with no worker running (`StoppingForRollback`): the StatefulSet already
    /// has the last good template, and no replica.
    fn stopped(mut self) -> Self {
        self.spec.suspend = true;
        self
    }
}

/// What this reconcile deploys.
#[derive(Clone, Debug, PartialEq)]
pub enum Deploy {
    /// The wanted spec.
    Wanted(Restore),
    /// The last good spec, from the savepoint taken before the change (a rollback).
    RollBack(Box<RollBackTo>),
    /// Nothing: the workers keep the spec they run (a savepoint, resume or retry wait is
    /// in progress).
    Hold,
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// The restore settings of the deployed workers.
fn deployed_restore(job: &StreamJob) -> Restore {
    job.status
        .as_ref()
        .and_then(|status| status.deployed.as_ref())
        .map(|deployed| Restore {
            savepoint: deployed.savepoint.clone(),
            previous_parallelism: deployed.previous_parallelism,
            offsets_only: deployed.offsets_only,
            epoch: deployed.restore_epoch,
        })
        .unwrap_or_default()
}

/// Decides what to deploy, and carries a change that needs a savepoint one step
/// further. `token` is the workers' admin token.
pub async fn decide(
    job: &mut StreamJob,
    ctx: &Context,
    checked: &CheckedJob,
    token: Option<&str>,
    workers: &WorkerCounts,
) -> Result<Deploy, Error> {
    let generation = job.metadata.generation.unwrap_or(0);
    if let Some(upgrade) = job
        .status
        .as_ref()
        .and_then(|status| status.upgrade.clone())
    {
        let autoscaled = upgrade.kind == ChangeKind::Rescale
            && upgrade.target_generation == generation
            && job
                .spec
                .autoscaler
                .as_ref()
                .is_some_and(|autoscaler| autoscaler.enabled);
        if upgrade.state == UpgradeState::Failed && upgrade.target_generation != generation {
            // Edited since the change failed: classify the new spec afresh.
            info!(
                "spec changed after a failed change to generation {}: starting over",
                upgrade.target_generation
            );
            set_upgrade(job, ctx, None).await?;
        } else if upgrade.state == UpgradeState::Failed && autoscaled {
            // The autoscaler's rescale failed: back to the parallelism the workers run, and
            // the autoscaler decides again from a new window (its retry) rather than this
            // change retrying a target that may no longer be right.
            let running = upgrade.from_parallelism;
            info!("the autoscaler's rescale failed: staying at {running} workers");
            if let Some(autoscaler) = job
                .status
                .get_or_insert_with(Default::default)
                .autoscaler
                .as_mut()
            {
                autoscaler.parallelism = Some(running);
            }
            job.spec.parallelism = running;
            set_upgrade(job, ctx, None).await?;
        } else if upgrade.state == UpgradeState::Rolling && upgrade.target_generation != generation
        {
            // Edited while the workers start: they start the newest spec from the same
            // savepoint, and its ready timeout counts from now.
            info!(
                "spec changed while generation {} was starting: starting generation {generation} from the same savepoint",
                upgrade.target_generation
            );
            let upgrade = UpgradeStatus {
                target_generation: generation,
                target_spec_hash: spec_hash(&job.spec),
                state_since: now(),
                ..upgrade
            };
            set_upgrade(job, ctx, Some(upgrade.clone())).await?;
            if let Some(deploy) = step(job, ctx, upgrade, token).await? {
                return Ok(deploy);
            }
        } else if let Some(deploy) = overdue(job, ctx, &upgrade, workers).await? {
            return Ok(deploy);
        } else if let Some(deploy) = step(job, ctx, upgrade, token).await? {
            return Ok(deploy);
        }
        // A savepoint taken while the workers went on completed: the spec may have been
        // edited meanwhile, so it is classified afresh.
    }
    let status = job.status.clone().unwrap_or_default();
    let Some(deployed) = status.deployed.clone() else {
        // A new job: from `spec.savepoints.initialSavepoint` if set.
        return Ok(Deploy::Wanted(Restore {
            savepoint: initial_savepoint(job),
            ..Restore::default()
        }));
    };
    if let Some(refusal) = rolled_back_refusal(job) {
        return Err(refusal);
    }
    // The parallelism may change without a new generation: the autoscaler's.
    if deployed.generation == generation && deployed.parallelism == job.spec.parallelism {
        if let Some(interval) = job
            .spec
            .savepoints
            .as_ref()
            .and_then(|savepoints| savepoints.interval)
            && !job.spec.suspend
            && workers.all_ready()
            && machine::periodic_savepoint(
                interval.get(),
                status
                    .last_savepoint
                    .as_ref()
                    .map(|last| &last.completed_at),
                running_since(&status).as_ref(),
                &now(),
            ) == machine::Periodic::Due
        {
            return begin(
                job,
                ctx,
                ChangeKind::PeriodicSavepoint,
                deployed.parallelism,
                None,
                token,
            )
            .await;
        }
        return Ok(Deploy::Wanted(deployed_restore(job)));
    }
    let namespace = job.namespace().unwrap_or_default();
    let names = ChildNames::of(&job_name(job));
    let Some(running) = read_running(ctx, &namespace, &names.job_config).await? else {
        return Ok(Deploy::Wanted(deployed_restore(job)));
    };
    let kind = classify::classify(&running.spec, &job.spec);
    let name = job_name(job);
    if kind != ChangeKind::None
        && let Some(why) = classify::refusal(job.spec.upgrade_mode, &running, checked)
    {
        return Err(Error::ChangeRefused {
            name,
            kind: ErrorKind::IncompatibleState,
            message: why,
        });
    }
    if !classify::needs_savepoint(kind, &job.spec) {
        return Ok(Deploy::Wanted(deployed_restore(job)));
    }
    if job.spec.savepoints.is_none() {
        let stateful = running.pipeline.windowed().is_some();
        match kind {
            // A stateless job's workers keep nothing but Kafka offsets: they restart.
            ChangeKind::Rescale | ChangeKind::Upgrade | ChangeKind::Suspend if !stateful => {
                return Ok(Deploy::Wanted(deployed_restore(job)));
            }
            _ => {
                let what = match kind {
                    ChangeKind::Rescale => {
                        "a rescale moves key groups between workers, so it restores them from a savepoint"
                    }
                    ChangeKind::Suspend => "a suspend takes a savepoint to resume from",
                    ChangeKind::SavepointOnly => "spec.savepointTriggerNonce asks for a savepoint",
                    _ if job.spec.upgrade_mode == UpgradeMode::Stateless => {
                        "upgradeMode Stateless keeps the Kafka offsets through a savepoint"
                    }
                    _ => "upgradeMode Savepoint takes a savepoint before the upgrade",
                };
                return Err(Error::ChangeRefused {
                    name,
                    kind: ErrorKind::NoSavepointLocation,
                    message: format!(
                        "{what}, and spec.savepoints.location is not set: set it (file:// or s3://){}",
                        if kind == ChangeKind::Upgrade {
                            ", or set spec.upgradeMode: LastState"
                        } else {
                            ""
                        },
                    ),
                });
            }
        }
    }
    let from = matches!(kind, ChangeKind::Upgrade | ChangeKind::Rescale)
        .then_some((&running.spec, deployed.generation));
    begin(job, ctx, kind, running.spec.parallelism, from, token).await
}

/// Records a change of `kind` that starts with a savepoint of the `from_parallelism`
/// workers that run, announces it, and takes its first step. `from`: the spec those
/// workers run and its generation, for a change that starts new workers (a rollback
/// returns to it).
async fn begin(
    job: &mut StreamJob,
    ctx: &Context,
    kind: ChangeKind,
    from_parallelism: i32,
    from: Option<(&StreamJobSpec, i64)>,
    token: Option<&str>,
) -> Result<Deploy, Error> {
    let generation = job.metadata.generation.unwrap_or(0);
    let upgrade = UpgradeStatus {
        // An upgrade in `Stateless` mode keeps the Kafka offsets alone.
        offsets_only: kind == ChangeKind::Upgrade
            && job.spec.upgrade_mode == UpgradeMode::Stateless,
        from_spec: from.map(|(spec, _)| {
            serde_json::to_string(spec).expect("a StreamJobSpec always serializes")
        }),
        from_generation: from.map(|(_, generation)| generation),
        ..machine::start(
            kind,
            generation,
            &spec_hash(&job.spec),
            from_parallelism,
            &now(),
        )
    };
    let savepoint = upgrade.savepoint_id.clone().unwrap_or_default();
    let what = match kind {
        ChangeKind::PeriodicSavepoint => "a periodic savepoint (spec.savepoints.interval)".into(),
        ChangeKind::Delete => "the job was deleted: its final savepoint".into(),
        _ => format!("{kind:?} to generation {generation}"),
    };
    info!(kind = ?kind, savepoint, "{what}: taking a savepoint first");
    set_upgrade(job, ctx, Some(upgrade.clone())).await?;
    crash_if(ctx, CrashPoint::Recorded);
    publish(
        job,
        ctx,
        false,
        "TakingSavepoint",
        format!("{what}: taking savepoint {savepoint} on every worker"),
    )
    .await;
    Ok(step(job, ctx, upgrade, token)
        .await?
        .unwrap_or(Deploy::Hold))
}

/// How long until the next periodic savepoint is due (the reconcile requeues by then),
/// or `None` when the job takes none, or one is due but could not begin (a worker not
/// Ready: the StatefulSet's watch reconciles again when it is).
pub fn next_periodic_savepoint(job: &StreamJob) -> Option<std::time::Duration> {
    let interval = job.spec.savepoints.as_ref()?.interval?;
    let status = job.status.as_ref()?;
    if job.spec.suspend || status.upgrade.is_some() {
        return None;
    }
    match machine::periodic_savepoint(
        interval.get(),
        status
            .last_savepoint
            .as_ref()
            .map(|last| &last.completed_at),
        running_since(status).as_ref(),
        &now(),
    ) {
        machine::Periodic::Due => None,
        machine::Periodic::In(wait) => Some(wait),
    }
}

/// `spec.savepoints.initialSavepoint`, which a new job starts from.
fn initial_savepoint(job: &StreamJob) -> Option<String> {
    job.spec
        .savepoints
        .as_ref()
        .and_then(|savepoints| savepoints.initial_savepoint.clone())
}

/// Since when every worker is Ready (the Ready condition's last transition to True).
fn running_since(status: &StreamJobStatus) -> Option<Time> {
    status
        .conditions
        .iter()
        .find(|condition| {
            condition.type_ == sluice_crds::status::condition_type::READY
                && condition.status == "True"
        })
        .map(|condition| condition.last_transition_time.clone())
}

/// One step of a recorded change: its effect, then the transition. `None`: the change
/// completed and the workers went on (a savepoint while they run) or are gone (the
/// final savepoint).
async fn step(
    job: &mut StreamJob,
    ctx: &Context,
    upgrade: UpgradeStatus,
    token: Option<&str>,
) -> Result<Option<Deploy>, Error> {
    if upgrade.state == UpgradeState::Rolling {
        // The roll is applied by the reconcile; `rolled_out` completes it.
        return Ok(Some(Deploy::Wanted(rolling(&upgrade))));
    }
    if upgrade.state == UpgradeState::StoppingForRollback {
        return stop_for_rollback(job, ctx, upgrade).await.map(Some);
    }
    if upgrade.state == UpgradeState::RollingBack {
        return Ok(Some(match roll_back_to(&upgrade) {
            Some(to) => Deploy::RollBack(Box::new(to)),
            None => {
                warn!("status.upgrade.fromSpec does not load: the rollback waits");
                Deploy::Hold
            }
        }));
    }
    let found = effect(job, ctx, &upgrade, token).await?;
    if matches!(found, Found::SavepointCompleted { .. }) {
        crash_if(ctx, CrashPoint::SavepointCompleted);
    }
    let next = machine::next(&upgrade, &found, &now(), &ctx.settings.lifecycle);
    match next {
        Next::Stay => Ok(Some(Deploy::Hold)),
        Next::Enter(mut entered) => {
            let state = entered.state;
            if state == UpgradeState::Rolling
                && entered.from_spec.is_some()
                && ready_timeout(&job.spec).is_some()
            {
                // Every worker has stopped at the savepoint: the positions a rollback
                // checks against, read as the spec it would return to reads them.
                entered.committed_positions = match from_spec(&entered) {
                    Some(last_good) => {
                        match committed_positions(job, ctx, &last_good, &job.spec.source.topics)
                            .await
                        {
                            Ok(sum) => Some(sum),
                            Err(error) => {
                                warn!("{error}: a rollback of this change will not be automatic");
                                None
                            }
                        }
                    }
                    None => None,
                };
            }
            let reason = match &found {
                Found::SavepointFailed { reason } => reason.clone(),
                _ => format!(
                    "savepoint {} did not complete within {:?}",
                    upgrade.savepoint_id.as_deref().unwrap_or_default(),
                    ctx.settings.lifecycle.savepoint_timeout
                ),
            };
            if state == UpgradeState::Aborting {
                warn!("{reason}: telling the workers to go on with the spec they run");
                if let Some(status) = job.status.as_mut() {
                    status.last_error = Some(format!("failed to take a savepoint: {reason}"));
                }
            }
            set_upgrade(job, ctx, Some(entered.clone())).await?;
            match state {
                UpgradeState::Rolling => {
                    publish(
                        job,
                        ctx,
                        false,
                        "SavepointCompleted",
                        format!(
                            "savepoint {} complete: starting the workers of generation {} from it",
                            entered.savepoint.as_deref().unwrap_or_default(),
                            entered.target_generation
                        ),
                    )
                    .await;
                    Ok(Some(Deploy::Wanted(rolling(&entered))))
                }
                UpgradeState::Aborting => {
                    publish(
                        job,
                        ctx,
                        true,
                        "SavepointFailed",
                        format!("{reason}; the workers go on with the spec they run, and the change is retried"),
                    )
                    .await;
                    Ok(Some(Deploy::Hold))
                }
                UpgradeState::Failed => {
                    ctx.metrics
                        .change_ended(entered.kind, ChangeOutcome::Failed, 0.0);
                    let wait = machine::backoff(&ctx.settings.lifecycle, entered.attempt);
                    publish(
                        job,
                        ctx,
                        true,
                        "UpgradeFailed",
                        format!(
                            "attempt {} failed; the workers run the spec they ran; retrying in {wait:?}",
                            entered.attempt
                        ),
                    )
                    .await;
                    Ok(Some(Deploy::Hold))
                }
                UpgradeState::TakingSavepoint => {
                    publish(
                        job,
                        ctx,
                        false,
                        "TakingSavepoint",
                        format!(
                            "attempt {}: taking savepoint {} on every worker",
                            entered.attempt,
                            entered.savepoint_id.as_deref().unwrap_or_default()
                        ),
                    )
                    .await;
                    Ok(Some(Deploy::Hold))
                }
                UpgradeState::Resuming => Ok(Some(Deploy::Hold)),
                // Entered from `Rolling` and `StoppingForRollback` only, not here.
                UpgradeState::StoppingForRollback | UpgradeState::RollingBack => {
                    Ok(Some(Deploy::Hold))
                }
            }
        }
        Next::Done { savepoint } => {
            // A savepoint while the workers went on, or the final one, ends here.
            finish(job, ctx, &upgrade, savepoint, token).await?;
            Ok(None)
        }
    }
}

/// The effect of the step `upgrade` is in (not `Rolling`, which the reconcile applies).
async fn effect(
    job: &StreamJob,
    ctx: &Context,
    upgrade: &UpgradeStatus,
    token: Option<&str>,
) -> Result<Found, Error> {
    let Some(token) = token else {
        return Ok(Found::Waiting);
    };
    let namespace = job.namespace().unwrap_or_default();
    let names = ChildNames::of(&job_name(job));
    match upgrade.state {
        UpgradeState::TakingSavepoint => {
            let Some(id) = upgrade.savepoint_id.as_deref() else {
                return Ok(Found::SavepointFailed {
                    reason: "status.upgrade has no savepointId".into(),
                });
            };
            let addresses =
                worker_addresses(ctx, &namespace, &names.workers, upgrade.from_parallelism).await?;
            let answers = futures::future::join_all(addresses.iter().enumerate().map(
                |(ordinal, address)| async move {
                    match address {
                        Some(address) => ctx.worker_admin.savepoint(address, token, id).await,
                        None => Answer::Unreachable(format!("worker {ordinal} has no pod IP")),
                    }
                },
            ))
            .await;
            crash_if(ctx, CrashPoint::SavepointRequested);
            for answer in &answers {
                if let Answer::Unreachable(why) = answer {
                    info!("savepoint {id}: {why}; asking again");
                }
            }
            Ok(savepoint_found(&answers))
        }
        UpgradeState::Resuming | UpgradeState::Aborting => {
            let addresses =
                worker_addresses(ctx, &namespace, &names.workers, upgrade.from_parallelism).await?;
            let mut all = true;
            for (ordinal, address) in addresses.iter().enumerate() {
                let outcome = match address {
                    Some(address) => ctx.worker_admin.resume(address, token).await,
                    None => Err(format!("worker {ordinal} has no pod IP")),
                };
                if let Err(why) = outcome {
                    info!("resume: {why}; asking again");
                    all = false;
                }
            }
            Ok(if all { Found::Resumed } else { Found::Waiting })
        }
        UpgradeState::Rolling
        | UpgradeState::StoppingForRollback
        | UpgradeState::RollingBack
        | UpgradeState::Failed => Ok(Found::Waiting),
    }
}

/// After the apply: completes a roll once every worker runs the new spec and is Ready, or
/// a rollback once every worker runs the last good one. `true`: a rollback completed, and
/// the reconcile starts over (the spec it read is not the one the workers run).
pub async fn rolled_out(
    job: &mut StreamJob,
    ctx: &Context,
    workers: &WorkerCounts,
    applied_spec_hash: &str,
    token: Option<&str>,
) -> Result<bool, Error> {
    let Some(upgrade) = job
        .status
        .as_ref()
        .and_then(|status| status.upgrade.clone())
    else {
        return Ok(false);
    };
    if upgrade.state == UpgradeState::RollingBack {
        let Some(to) = roll_back_to(&upgrade) else {
            return Ok(false);
        };
        if workers.all_ready() && applied_spec_hash == spec_hash(&to.spec) {
            rolled_back(job, ctx, &upgrade, &to).await?;
            return Ok(true);
        }
        return Ok(false);
    }
    if upgrade.state != UpgradeState::Rolling
        || !workers.all_ready()
        || applied_spec_hash != spec_hash(&job.spec)
    {
        return Ok(false);
    }
    if let Next::Done { savepoint } =
        machine::next(&upgrade, &Found::RolledOut, &now(), &ctx.settings.lifecycle)
    {
        finish(job, ctx, &upgrade, savepoint, token).await?;
    }
    Ok(false)
}

/// The refusal of a spec that was rolled back (`status.rollback`), until it changes.
pub fn rolled_back_refusal(job: &StreamJob) -> Option<Error> {
    let status = job.status.as_ref()?;
    let rollback = status.rollback.as_ref()?;
    let generation = job.metadata.generation.unwrap_or(0);
    (status.upgrade.is_none()
        && rollback.generation == generation
        && rollback.spec_hash == spec_hash(&job.spec)
        && rollback.parallelism == job.spec.parallelism)
        .then(|| Error::ChangeRefused {
            name: job_name(job),
            kind: ErrorKind::RolledBack,
            message: format!(
                "generation {generation} was rolled back ({}): the workers run generation {} again, from savepoint {}; fix the spec and apply it (any change, or spec.restartNonce, tries again)",
                rollback.reason, rollback.to_generation, rollback.savepoint
            ),
        })
}

/// Records the savepoint a change took in `lastSavepoint` and the history.
fn record_savepoint(
    status: &mut StreamJobStatus,
    upgrade: &UpgradeStatus,
    savepoint: Option<&str>,
    completed_at: &Time,
) {
    let (Some(location), Some(id)) = (savepoint, &upgrade.savepoint_id) else {
        return;
    };
    let record = SavepointRecord {
        id: id.clone(),
        location: location.to_string(),
        trigger: match upgrade.kind {
            ChangeKind::SavepointOnly => SavepointTrigger::Manual,
            ChangeKind::PeriodicSavepoint => SavepointTrigger::Periodic,
            ChangeKind::Suspend => SavepointTrigger::Suspend,
            ChangeKind::Delete => SavepointTrigger::Delete,
            _ => SavepointTrigger::Upgrade,
        },
        completed_at: completed_at.clone(),
        generation: upgrade.target_generation,
    };
    status.savepoint_history.insert(0, record.clone());
    status.savepoint_history.truncate(SAVEPOINT_HISTORY_LIMIT);
    status.last_savepoint = Some(record);
}

/// `spec.rollback.readyTimeout` when rollback is enabled (the default).
fn ready_timeout(spec: &StreamJobSpec) -> Option<std::time::Duration> {
    let rollback = spec.rollback.clone().unwrap_or_default();
    rollback.enabled.then(|| rollback.ready_timeout.get())
}

/// The spec a change started from (`status.upgrade.fromSpec`).
fn from_spec(upgrade: &UpgradeStatus) -> Option<StreamJobSpec> {
    serde_json::from_str(upgrade.from_spec.as_deref()?).ok()
}

/// What the new workers of `upgrade` start from: its savepoint.
fn rolling(upgrade: &UpgradeStatus) -> Restore {
    Restore {
        savepoint: upgrade.savepoint.clone(),
        previous_parallelism: Some(upgrade.from_parallelism),
        offsets_only: upgrade.offsets_only,
        epoch: None,
    }
}

/// What a rollback of `upgrade` starts: the spec it started from, from its savepoint,
/// restored afresh (the epoch is the generation rolled back: a rollback of a generation
/// happens once per savepoint).
fn roll_back_to(upgrade: &UpgradeStatus) -> Option<RollBackTo> {
    Some(RollBackTo {
        spec: from_spec(upgrade)?,
        generation: upgrade.from_generation?,
        restore: Restore {
            savepoint: upgrade.savepoint.clone(),
            previous_parallelism: Some(upgrade.from_parallelism),
            offsets_only: false,
            epoch: Some(u64::try_from(upgrade.target_generation).unwrap_or_default()),
        },
    })
}

/// A roll not Ready within `spec.rollback.readyTimeout`: stops the new spec's workers
/// (`StoppingForRollback`), the first step of a rollback. `None`: nothing to do here.
async fn overdue(
    job: &mut StreamJob,
    ctx: &Context,
    upgrade: &UpgradeStatus,
    workers: &WorkerCounts,
) -> Result<Option<Deploy>, Error> {
    let timeout = ready_timeout(&job.spec);
    if !machine::rollback_due(upgrade, timeout, workers.all_ready(), &now()) {
        return Ok(None);
    }
    let Some(to) = roll_back_to(upgrade) else {
        return Ok(None);
    };
    // Nothing to compare the positions with (not read when the savepoint completed): the
    // rollback would be refused, so the workers are not stopped for it.
    let found = match machine::rollback_verdict(upgrade.committed_positions, Ok(0)) {
        Err(reason) if upgrade.committed_positions.is_none() => Found::RollbackRefused { reason },
        _ => Found::RollbackDue,
    };
    let Next::Enter(entered) = machine::next(upgrade, &found, &now(), &ctx.settings.lifecycle)
    else {
        return Ok(None);
    };
    let namespace = job.namespace().unwrap_or_default();
    let names = ChildNames::of(&job_name(job));
    let problems = overdue_workers(
        ctx,
        &namespace,
        &names.workers,
        workers.desired.max(workers.replicas),
    )
    .await;
    let late = format!(
        "the workers of generation {} were not all Ready within {:?} (spec.rollback.readyTimeout): {problems}",
        upgrade.target_generation,
        timeout.unwrap_or_default(),
    );
    job.status.get_or_insert_with(Default::default).last_error = Some(late.clone());
    if entered.state == UpgradeState::Rolling {
        refuse_rollback(job, ctx, entered, &to).await?;
        return Ok(None);
    }
    // The status's `RollingBack` transition announces it, with `lastError`.
    warn!(
        "{late}: stopping them to roll back to generation {}",
        to.generation
    );
    set_upgrade(job, ctx, Some(entered)).await?;
    Ok(Some(Deploy::RollBack(Box::new(to.stopped()))))
}

/// `StoppingForRollback`: no worker of the new spec may run while the rollback decides,
/// so none can commit after the check. Once every worker pod is gone, their
/// transactional ids are fenced and the job's committed positions compared with those
/// recorded at the savepoint: unchanged, the last good spec starts from it
/// (`RollingBack`); moved, a new worker committed output that a restart from the
/// savepoint would repeat, so the new spec starts again and waits for a fix, and the
/// refusal is recorded once.
async fn stop_for_rollback(
    job: &mut StreamJob,
    ctx: &Context,
    upgrade: UpgradeStatus,
) -> Result<Deploy, Error> {
    let Some(to) = roll_back_to(&upgrade) else {
        warn!("status.upgrade.fromSpec does not load: the rollback waits");
        return Ok(Deploy::Hold);
    };
    // Every ordinal the new spec or the last good one may have run.
    let ordinals = upgrade.from_parallelism.max(job.spec.parallelism);
    let found = stopped_for_rollback(job, ctx, &to.spec, &upgrade, ordinals).await;
    match machine::next(&upgrade, &found, &now(), &ctx.settings.lifecycle) {
        Next::Enter(entered) if entered.state == UpgradeState::RollingBack => {
            info!(
                "no worker of generation {} runs or committed anything since savepoint {}: starting generation {} from it again",
                upgrade.target_generation,
                to.restore.savepoint.as_deref().unwrap_or_default(),
                to.generation
            );
            set_upgrade(job, ctx, Some(entered)).await?;
            Ok(Deploy::RollBack(Box::new(to)))
        }
        Next::Enter(entered) => {
            let deploy = Deploy::Wanted(rolling(&entered));
            refuse_rollback(job, ctx, entered, &to).await?;
            Ok(deploy)
        }
        Next::Stay | Next::Done { .. } => Ok(Deploy::RollBack(Box::new(to.stopped()))),
    }
}

/// Records the refusal of a rollback (`entered`: back in `Rolling` with
/// `rollbackRefused`) and announces it, once: the new spec's workers run on and wait for
/// a fix.
async fn refuse_rollback(
    job: &mut StreamJob,
    ctx: &Context,
    entered: UpgradeStatus,
    to: &RollBackTo,
) -> Result<(), Error> {
    let why = entered.rollback_refused.clone().unwrap_or_default();
    let message = format!("no automatic rollback: {why}");
    let status = job.status.get_or_insert_with(Default::default);
    let late = status
        .last_error
        .replace(message.clone())
        .unwrap_or_default();
    warn!("{late}; {message}");
    set_upgrade(job, ctx, Some(entered)).await?;
    publish(
        job,
        ctx,
        true,
        "RollbackRefused",
        format!(
            "{late}; {message}. Fix the spec: its workers start from savepoint {}",
            to.restore.savepoint.as_deref().unwrap_or_default()
        ),
    )
    .await;
    Ok(())
}

/// Completes a rollback: the workers run the last good spec again, from the savepoint;
/// the spec left behind is recorded so it is not tried again until it changes.
async fn rolled_back(
    job: &mut StreamJob,
    ctx: &Context,
    upgrade: &UpgradeStatus,
    to: &RollBackTo,
) -> Result<(), Error> {
    let completed_at = now();
    let autoscaled = job
        .spec
        .autoscaler
        .as_ref()
        .is_some_and(|autoscaler| autoscaler.enabled);
    let status = job.status.get_or_insert_with(Default::default);
    record_savepoint(status, upgrade, upgrade.savepoint.as_deref(), &completed_at);
    let savepoint = upgrade.savepoint.clone().unwrap_or_default();
    let reason = status.last_error.clone().unwrap_or_else(|| {
        format!(
            "the workers of generation {} were not all Ready in time",
            upgrade.target_generation
        )
    });
    status.deployed = Some(DeployedSpec {
        generation: to.generation,
        spec_hash: spec_hash(&to.spec),
        parallelism: to.spec.parallelism,
        savepoint: to.restore.savepoint.clone(),
        previous_parallelism: to.restore.previous_parallelism,
        offsets_only: false,
        restore_epoch: to.restore.epoch,
    });
    status.rollback = Some(RollbackRecord {
        generation: upgrade.target_generation,
        spec_hash: upgrade.target_spec_hash.clone(),
        parallelism: job.spec.parallelism,
        to_generation: to.generation,
        savepoint: savepoint.clone(),
        reason: reason.clone(),
        completed_at,
    });
    if autoscaled && let Some(autoscaler) = status.autoscaler.as_mut() {
        // The autoscaler decides again from a new window rather than retry this target.
        autoscaler.parallelism = Some(to.spec.parallelism);
    }
    // The reconcile then refuses the spec left behind (`rolled_back_refusal`): that
    // `Stalled` transition announces the rollback.
    info!(
        "rolled back to generation {} from savepoint {savepoint}: {reason}",
        to.generation
    );
    set_upgrade(job, ctx, None).await?;
    ctx.metrics
        .change_ended(upgrade.kind, ChangeOutcome::RolledBack, 0.0);
    Ok(())
}

/// Completes a change: records the savepoint and what the workers run, clears
/// `status.upgrade`, and announces it.
async fn finish(
    job: &mut StreamJob,
    ctx: &Context,
    upgrade: &UpgradeStatus,
    savepoint: Option<String>,
    token: Option<&str>,
) -> Result<(), Error> {
    let generation = job.metadata.generation.unwrap_or(0);
    let completed_at = now();
    let status = job.status.get_or_insert_with(Default::default);
    record_savepoint(status, upgrade, savepoint.as_deref(), &completed_at);
    let rolled = !matches!(
        upgrade.kind,
        ChangeKind::SavepointOnly | ChangeKind::PeriodicSavepoint | ChangeKind::Delete
    );
    let previous = status.deployed.clone();
    // A roll completes once the workers run the spec as it is now; a savepoint while
    // they went on leaves them on the spec it was taken for (an edit made meanwhile is
    // classified next).
    let (generation, deployed_hash, parallelism) = if rolled {
        (generation, spec_hash(&job.spec), job.spec.parallelism)
    } else {
        (
            upgrade.target_generation,
            upgrade.target_spec_hash.clone(),
            upgrade.from_parallelism,
        )
    };
    status.deployed = Some(DeployedSpec {
        generation,
        spec_hash: deployed_hash,
        parallelism,
        savepoint: if rolled {
            savepoint.clone()
        } else {
            previous
                .as_ref()
                .and_then(|deployed| deployed.savepoint.clone())
        },
        previous_parallelism: if rolled {
            Some(upgrade.from_parallelism)
        } else {
            previous
                .as_ref()
                .and_then(|deployed| deployed.previous_parallelism)
        },
        offsets_only: if rolled {
            upgrade.offsets_only
        } else {
            previous
                .as_ref()
                .is_some_and(|deployed| deployed.offsets_only)
        },
        restore_epoch: if rolled {
            None
        } else {
            previous.and_then(|deployed| deployed.restore_epoch)
        },
    });
    status.last_error = None;
    if rolled {
        status.rollback = None;
    }
    set_upgrade(job, ctx, None).await?;
    let milliseconds = completed_at.0.as_millisecond() - upgrade.started_at.0.as_millisecond();
    let seconds = milliseconds / 1000;
    ctx.metrics.change_ended(
        upgrade.kind,
        ChangeOutcome::Completed,
        milliseconds as f64 / 1000.0,
    );
    let (reason, what) = match upgrade.kind {
        ChangeKind::Rescale => (
            "Rescaled",
            format!(
                "rescaled from {} to {} workers",
                upgrade.from_parallelism, job.spec.parallelism
            ),
        ),
        ChangeKind::Suspend => ("Suspended", "suspended".to_string()),
        ChangeKind::SavepointOnly => ("SavepointCompleted", "took a savepoint".to_string()),
        ChangeKind::PeriodicSavepoint => (
            "SavepointCompleted",
            "took a periodic savepoint".to_string(),
        ),
        ChangeKind::Delete => {
            let location = savepoint.as_deref().unwrap_or_default();
            publish(
                job,
                ctx,
                false,
                "FinalSavepointCompleted",
                format!(
                    "took the final savepoint {location} in {seconds}s; the workers go with the job. A new StreamJob {} in this namespace starts from it with spec.savepoints.initialSavepoint: {location}",
                    job_name(job)
                ),
            )
            .await;
            return Ok(());
        }
        _ => ("Upgraded", format!("upgraded to generation {generation}")),
    };
    publish(
        job,
        ctx,
        false,
        reason,
        format!(
            "{what} through savepoint {} in {seconds}s",
            savepoint.as_deref().unwrap_or("(none)")
        ),
    )
    .await;
    if upgrade.kind != ChangeKind::Suspend {
        apply_retention(job, ctx, token).await?;
    }
    Ok(())
}

/// The deletion of a job with `spec.savepoints.onDelete` (the controller holds its
/// finalizer): takes the final savepoint of its running workers as a `Delete` change.
/// `true` once the job may go: the savepoint is taken, or no worker runs to take one (a
/// suspended job's state is in its suspend savepoint). A final savepoint that fails is
/// retried with backoff; removing the finalizer by hand lets the job go without it.
pub async fn final_savepoint(
    job: &mut StreamJob,
    ctx: &Context,
    token: Option<&str>,
    workers: &WorkerCounts,
) -> Result<bool, Error> {
    let status = job.status.clone().unwrap_or_default();
    let generation = job.metadata.generation.unwrap_or(0);
    if status.upgrade.is_none()
        && status.last_savepoint.as_ref().is_some_and(|last| {
            last.trigger == SavepointTrigger::Delete && last.generation == generation
        })
    {
        // Taken already; the finalizer's removal failed or the controller stopped.
        return Ok(true);
    }
    // The newest savepoint, for a deletion that cannot take one: a change's, once taken,
    // is newer than the last recorded.
    let newest = status
        .upgrade
        .as_ref()
        .and_then(|upgrade| upgrade.savepoint.clone())
        .or_else(|| {
            status
                .last_savepoint
                .as_ref()
                .map(|last| last.location.clone())
        })
        .unwrap_or_else(|| "none".to_string());
    if workers.desired == 0 && workers.replicas == 0 {
        return deleted_without(
            job,
            ctx,
            &newest,
            false,
            "no worker runs (the job is suspended: its state is in its suspend savepoint)",
        )
        .await;
    }
    // Pods gone (their namespace is being deleted) or no admin token: nothing can answer,
    // and a change in progress would wait forever.
    if workers.replicas == 0 || token.is_none() {
        return deleted_without(
            job,
            ctx,
            &newest,
            true,
            "no worker can take a final savepoint (its pods or admin token are gone)",
        )
        .await;
    }
    if let Some(upgrade) = status.upgrade {
        match (upgrade.kind, upgrade.state) {
            (ChangeKind::Delete, _) => {
                return Ok(step(job, ctx, upgrade, token).await?.is_none());
            }
            // The workers are stopping at another change's savepoint: it becomes the
            // final one.
            (_, UpgradeState::TakingSavepoint) => {
                let upgrade = UpgradeStatus {
                    kind: ChangeKind::Delete,
                    ..upgrade
                };
                info!(
                    savepoint = upgrade.savepoint_id.as_deref().unwrap_or_default(),
                    "the job was deleted while a savepoint was being taken: it is the final one"
                );
                set_upgrade(job, ctx, Some(upgrade.clone())).await?;
                return Ok(step(job, ctx, upgrade, token).await?.is_none());
            }
            // The workers are being told to go on: once they have, the final savepoint.
            (_, UpgradeState::Resuming | UpgradeState::Aborting) => {
                step(job, ctx, upgrade, token).await?;
                return Ok(false);
            }
            (
                _,
                UpgradeState::Rolling
                | UpgradeState::StoppingForRollback
                | UpgradeState::RollingBack
                | UpgradeState::Failed,
            ) => {}
        }
    }
    if !workers.all_ready() {
        return deleted_without(
            job,
            ctx,
            &newest,
            true,
            "not every worker is Ready, so no consistent final savepoint can be taken",
        )
        .await;
    }
    let namespace = job.namespace().unwrap_or_default();
    let names = ChildNames::of(&job_name(job));
    if read_running(ctx, &namespace, &names.job_config)
        .await?
        .is_some_and(|running| running.spec.savepoints.is_none())
    {
        return deleted_without(
            job,
            ctx,
            &newest,
            true,
            "the workers run a spec with no spec.savepoints.location, so they cannot write one",
        )
        .await;
    }
    begin(job, ctx, ChangeKind::Delete, workers.desired, None, token).await?;
    Ok(job
        .status
        .as_ref()
        .is_none_or(|status| status.upgrade.is_none()))
}

/// Lets a deleted job go without a final savepoint, saying why and which savepoint is
/// the newest.
async fn deleted_without(
    job: &StreamJob,
    ctx: &Context,
    newest: &str,
    warning: bool,
    why: &str,
) -> Result<bool, Error> {
    publish(
        job,
        ctx,
        warning,
        "DeletedWithoutFinalSavepoint",
        format!("{why}; the newest savepoint: {newest}"),
    )
    .await;
    Ok(true)
}

/// The savepoints the status refers to, which retention never deletes: the newest, the
/// one the workers started from, and the one a change in progress takes.
pub fn referenced_savepoints(status: &StreamJobStatus) -> BTreeSet<String> {
    let id_of = |location: &str| {
        location
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string()
    };
    status
        .last_savepoint
        .iter()
        .map(|record| record.id.clone())
        .chain(
            status
                .deployed
                .iter()
                .filter_map(|deployed| deployed.savepoint.as_deref())
                .map(id_of),
        )
        .chain(
            status
                .upgrade
                .iter()
                .filter_map(|upgrade| upgrade.savepoint_id.clone()),
        )
        .filter(|id| !id.is_empty())
        .collect()
}

/// After a change: deletes the savepoints `spec.savepoints.retention` no longer keeps,
/// through worker 0 (the workers have the location and its credentials; no savepoint is
/// being taken now). Those deleted leave `status.savepointHistory`, with an Event. A
/// failure is a warning Event only: the next completed change applies it again.
async fn apply_retention(
    job: &mut StreamJob,
    ctx: &Context,
    token: Option<&str>,
) -> Result<(), Error> {
    let (Some(savepoints), Some(token)) = (job.spec.savepoints.as_ref(), token) else {
        return Ok(());
    };
    let status = job.status.clone().unwrap_or_default();
    let retention = serde_json::json!({
        "maxCount": savepoints.retention.max_count,
        "maxAgeSeconds": savepoints.retention.max_age.map(|age| age.get().as_secs()),
        "keep": referenced_savepoints(&status),
    });
    let namespace = job.namespace().unwrap_or_default();
    let names = ChildNames::of(&job_name(job));
    let outcome = match worker_addresses(ctx, &namespace, &names.workers, 1).await {
        Ok(addresses) => match addresses.first().cloned().flatten() {
            Some(address) => ctx.worker_admin.retention(&address, token, retention).await,
            None => Err("worker 0 has no pod IP".to_string()),
        },
        Err(error) => Err(error.to_string()),
    };
    match outcome {
        Ok(deleted) if deleted.is_empty() => Ok(()),
        Ok(deleted) => {
            let history = &mut job
                .status
                .get_or_insert_with(Default::default)
                .savepoint_history;
            history.retain(|record| !deleted.contains(&record.id));
            // The change is done whatever happens here: a failed write only leaves the
            // deleted ids in the history until the next status write.
            if let Err(error) = crate::reconcile::write_status(job, ctx).await {
                warn!("failed to drop deleted savepoints from the history: {error}");
            }
            publish(
                job,
                ctx,
                false,
                "SavepointsDeleted",
                format!(
                    "deleted savepoints {} (spec.savepoints.retention)",
                    deleted.join(", ")
                ),
            )
            .await;
            Ok(())
        }
        Err(why) => {
            warn!("failed to apply the savepoint retention: {why}");
            publish(
                job,
                ctx,
                true,
                "RetentionFailed",
                format!("failed to delete savepoints retention no longer keeps: {why}; the next completed change tries again"),
            )
            .await;
            Ok(())
        }
    }
}

/// The checked job the workers run: the job ConfigMap's manifest (`None`: no ConfigMap,
/// or one the controller cannot read back, which it then replaces).
async fn read_running(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Option<CheckedJob>, Error> {
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let found = ctx
        .limited(config_maps.get_opt(name))
        .await
        .map_err(Error::api(format!("read ConfigMap {name}")))?;
    let Some(text) = found
        .and_then(|config| config.data)
        .and_then(|mut data| data.remove(JOB_FILE))
    else {
        return Ok(None);
    };
    match sluice_crds::load_manifest(&text) {
        Ok((_, checked)) => Ok(Some(checked)),
        Err(error) => {
            warn!(
                "the running manifest in ConfigMap {name} does not load ({error}); it is replaced"
            );
            Ok(None)
        }
    }
}

/// Records `upgrade` as `status.upgrade` (the write-ahead log) before its effect starts.
async fn set_upgrade(
    job: &mut StreamJob,
    ctx: &Context,
    upgrade: Option<UpgradeStatus>,
) -> Result<(), Error> {
    job.status.get_or_insert_with(Default::default).upgrade = upgrade;
    crate::reconcile::write_status(job, ctx).await
}

async fn publish(job: &StreamJob, ctx: &Context, warning: bool, reason: &str, message: String) {
    let transition = Transition {
        warning,
        reason: reason.to_string(),
        message,
    };
    crate::reconcile::publish(job, ctx, &transition).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rolled_back_spec_is_refused_until_it_changes() {
        let mut job = crate::fixtures::job();
        job.metadata.generation = Some(5);
        let record = RollbackRecord {
            generation: 5,
            spec_hash: spec_hash(&job.spec),
            parallelism: job.spec.parallelism,
            to_generation: 4,
            savepoint: "s3://b/ns/job/upgrade-5-1700000000-1".into(),
            reason: "worker 0: ErrImageNeverPull".into(),
            completed_at: now(),
        };
        let with = |change: fn(&mut StreamJob)| -> Option<String> {
            let mut job = job.clone();
            job.status = Some(StreamJobStatus {
                rollback: Some(record.clone()),
                ..StreamJobStatus::default()
            });
            change(&mut job);
            rolled_back_refusal(&job).map(|error| error.to_string())
        };
        let refused = with(|_| {}).expect("the rolled back spec is refused");
        assert!(
            refused.contains("generation 5 was rolled back")
                && refused.contains("ErrImageNeverPull")
                && refused.contains("upgrade-5-1700000000-1"),
            "{refused}"
        );
        type Change = fn(&mut StreamJob);
        let cases: [(&str, Change); 4] = [
            ("a new generation", |job| job.metadata.generation = Some(6)),
            ("another parallelism (the autoscaler's)", |job| {
                job.spec.parallelism += 1
            }),
            ("a change in progress", |job| {
                job.status.as_mut().unwrap().upgrade =
                    Some(machine::start(ChangeKind::Upgrade, 5, "h", 1, &now()));
            }),
            ("no rollback", |job| {
                job.status.as_mut().unwrap().rollback = None
            }),
        ];
        for (name, change) in cases {
            assert_eq!(with(change), None, "{name}");
        }
    }

    #[test]
    fn retention_never_deletes_a_savepoint_the_status_refers_to() {
        let status = |value: serde_json::Value| -> StreamJobStatus {
            serde_json::from_value(value).unwrap()
        };
        let last = serde_json::json!({
            "id": "manual-5-1", "location": "s3://b/ns/job/manual-5-1", "trigger": "Manual",
            "completedAt": "2026-11-30T10:00:00Z", "generation": 5
        });
        let deployed = serde_json::json!({
            "generation": 4, "specHash": "h", "parallelism": 2,
            "savepoint": "s3://b/ns/job/rescale-4-1700000000-1"
        });
        let upgrade = serde_json::json!({
            "kind": "Upgrade", "state": "TakingSavepoint", "targetGeneration": 6,
            "targetSpecHash": "h", "fromParallelism": 2, "startedAt": "2026-11-30T10:00:00Z",
            "stateSince": "2026-11-30T10:00:00Z", "attempt": 1, "savepointId": "upgrade-6-1"
        });
        let cases = [
            ("a new job", status(serde_json::json!({})), vec![]),
            (
                "the newest and the one the workers started from",
                status(serde_json::json!({"lastSavepoint": last, "deployed": deployed})),
                vec!["manual-5-1", "rescale-4-1700000000-1"],
            ),
            (
                "and the one a change takes",
                status(serde_json::json!({
                    "lastSavepoint": last, "deployed": deployed, "upgrade": upgrade
                })),
                vec!["manual-5-1", "rescale-4-1700000000-1", "upgrade-6-1"],
            ),
            (
                "started from the newest",
                status(serde_json::json!({
                    "lastSavepoint": last,
                    "deployed": {"generation": 5, "specHash": "h", "parallelism": 2,
                                 "savepoint": "s3://b/ns/job/manual-5-1/"}
                })),
                vec!["manual-5-1"],
            ),
        ];
        for (name, status, expect) in cases {
            let expect: BTreeSet<String> = expect.into_iter().map(str::to_string).collect();
            assert_eq!(referenced_savepoints(&status), expect, "{name}");
        }
    }
}
