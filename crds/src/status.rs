//! `StreamJobStatus`: what the controller observed and decided, written through the
//! status subresource. Conditions follow the kstatus convention (`Ready`, `Reconciling`,
//! `Stalled`), so `kubectl wait`, Argo CD and Flux understand a StreamJob's health.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The most recent savepoints kept in `status.savepointHistory`.
pub const SAVEPOINT_HISTORY_LIMIT: usize = 10;

/// The observed state of a StreamJob.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamJobStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Where the job is in its lifecycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// `Ready`, `Reconciling` and `Stalled`, with reasons and messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Workers that exist (the scale subresource's status replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,

    /// Workers that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,

    /// Label selector of the worker pods (for the scale subresource and HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// Records not yet processed, summed over the source partitions (the autoscaler
    /// reads it from Kafka and writes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_lag: Option<i64>,

    /// The spec the workers run now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed: Option<DeployedSpec>,

    /// The newest completed savepoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_savepoint: Option<SavepointRecord>,

    /// Recent savepoints, newest first, at most ten.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub savepoint_history: Vec<SavepointRecord>,

    /// The upgrade, rescale or restart in progress, recorded before any step is taken so
    /// a restarted controller resumes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeStatus>,

    /// The last automatic rollback (docs/lifecycle.md); cleared by the next completed
    /// upgrade, rescale or suspend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackRecord>,

    /// The autoscaler's latest figures and decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<AutoscalerStatus>,

    /// The latest error, until a reconcile succeeds: for a stalled job each field and
    /// its fix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Where a StreamJob is in its lifecycle.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Accepted, no worker pod created yet.
    Pending,
    /// Workers are starting (or restarting) on the deployed spec.
    Deploying,
    /// All workers run the deployed spec.
    Running,
    /// Moving to a new spec or parallelism (`Ready` says which: `Upgrading` or
    /// `Rescaling`).
    Upgrading,
    /// Stopped on request (`spec.suspend`): no worker runs, the volumes keep the state.
    Suspended,
    /// Cannot make progress without a change by the user (see `Stalled`); workers
    /// already running keep their last good spec.
    Failed,
}

/// The spec the workers run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployedSpec {
    /// `metadata.generation` of the deployed spec.
    pub generation: i64,
    /// Hash of the deployed spec (see `spec_hash`).
    pub spec_hash: String,
    /// Parallelism of the deployed spec.
    pub parallelism: i32,
    /// The savepoint the workers started from (their `SLUICE_RESTORE_FROM`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint: Option<String>,
    /// The parallelism of the workers that took that savepoint (their
    /// `SLUICE_PREVIOUS_PARALLELISM`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_parallelism: Option<i32>,
    /// Whether the workers took only the Kafka offsets of that savepoint, their windows
    /// starting empty (an upgrade with `upgradeMode: Stateless`; their
    /// `SLUICE_RESTORE_OFFSETS_ONLY`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub offsets_only: bool,
    /// The epoch of that restore (their `SLUICE_RESTORE_EPOCH`): set by a rollback, so
    /// the workers restore the savepoint afresh rather than keep what the rolled-back
    /// spec's workers made of it on their volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_epoch: Option<u64>,
}

/// A completed savepoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SavepointRecord {
    /// Unique identifier.
    pub id: String,
    /// Where it is stored.
    pub location: String,
    /// Why it was taken.
    pub trigger: SavepointTrigger,
    /// When it completed.
    pub completed_at: Time,
    /// `metadata.generation` of the spec that took it.
    pub generation: i64,
}

/// Why a savepoint was taken.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SavepointTrigger {
    /// `spec.savepoints.interval`.
    Periodic,
    /// Before an upgrade or rescale.
    Upgrade,
    /// `spec.savepointTriggerNonce` changed.
    Manual,
    /// The StreamJob was deleted.
    Delete,
    /// `spec.suspend` was set.
    Suspend,
}

/// A change in progress, the controller's write-ahead log: recorded before each step's
/// effect starts, so a restarted controller repeats that step (each step is idempotent)
/// and the change completes once (docs/lifecycle.md).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeStatus {
    /// What kind of change is being applied.
    pub kind: ChangeKind,
    /// The step it is in.
    pub state: UpgradeState,
    /// `metadata.generation` being moved to.
    pub target_generation: i64,
    /// Hash of the spec being moved to.
    pub target_spec_hash: String,
    /// The parallelism of the workers it started from.
    pub from_parallelism: i32,
    /// When the change started.
    pub started_at: Time,
    /// When the current step started (its timeout counts from here).
    pub state_since: Time,
    /// Which attempt this is: a failed savepoint is retried with backoff.
    pub attempt: i32,
    /// The id of the savepoint this attempt takes (the same on every worker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_id: Option<String>,
    /// The savepoint the new workers start from, once taken (its location).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint: Option<String>,
    /// Whether the new workers take only the savepoint's Kafka offsets, their windows
    /// starting empty (an upgrade with `upgradeMode: Stateless`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub offsets_only: bool,
    /// The spec the workers ran when the change started (JSON), which a rollback
    /// returns to: kept for changes that start new workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_spec: Option<String>,
    /// The generation of that spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_generation: Option<i64>,
    /// The job's committed Kafka positions, summed over its source and repartition
    /// partitions, when the savepoint completed and every worker had stopped: while the
    /// sum is the same, no worker of the new spec has committed anything, and a rollback
    /// to the savepoint repeats nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed_positions: Option<i64>,
    /// Why this change is not rolled back automatically, once found: the change waits in
    /// `Rolling` for a fix of the spec, and is not checked again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_refused: Option<String>,
}

/// An automatic rollback: the spec it left is not tried again until the spec changes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackRecord {
    /// The generation whose workers were not Ready in time.
    pub generation: i64,
    /// The hash of its spec (see `spec_hash`).
    pub spec_hash: String,
    /// Its parallelism.
    pub parallelism: i32,
    /// The generation the workers run again.
    pub to_generation: i64,
    /// The savepoint they started from.
    pub savepoint: String,
    /// What the workers of the new spec showed.
    pub reason: String,
    /// When the rollback completed.
    pub completed_at: Time,
}

/// A classified spec change, from least to most disruptive.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum ChangeKind {
    /// Nothing the workers see (autoscaler settings, savepoint retention and interval,
    /// the upgrade mode itself): applied at once.
    None,
    /// `spec.savepointTriggerNonce` changed: a savepoint, then the workers go on.
    SavepointOnly,
    /// `spec.savepoints.interval` passed since the last savepoint: a savepoint, then the
    /// workers go on.
    PeriodicSavepoint,
    /// `spec.suspend` was cleared: the workers start from the suspend savepoint.
    Resume,
    /// `spec.restartNonce` changed: the workers restart from their volumes.
    Restart,
    /// `spec.parallelism` changed: a savepoint, then the workers restart with key groups
    /// and partitions redistributed.
    Rescale,
    /// Anything the workers run changed (image, pipeline, source, sink, Kafka settings,
    /// resources, pod template, state settings): moved as `spec.upgradeMode` says.
    Upgrade,
    /// `spec.suspend` was set: a savepoint, then no worker runs.
    Suspend,
    /// The StreamJob was deleted with `spec.savepoints.onDelete`: a final savepoint, then
    /// the workers go with it.
    Delete,
}

/// Steps of a change (docs/lifecycle.md).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum UpgradeState {
    /// Every worker was asked for a stop-with-savepoint; waiting for every part and the
    /// manifest.
    TakingSavepoint,
    /// A savepoint of `SavepointOnly` is complete: the workers are told to go on.
    Resuming,
    /// The StatefulSet runs the new spec from the savepoint; waiting for every worker to
    /// be Ready on it.
    Rolling,
    /// The savepoint failed or timed out: the workers are told to go on with the old
    /// spec.
    Aborting,
    /// The savepoint failed (see `lastError`); the old spec runs and the change is
    /// retried after a backoff.
    Failed,
    /// The new spec's workers were not all Ready within `spec.rollback.readyTimeout`: the
    /// StatefulSet runs none, and once every worker pod is gone their transactional ids
    /// are fenced and the job's committed positions compared with `committedPositions`.
    /// Unchanged: `RollingBack`; moved (a new worker committed output): back to `Rolling`
    /// with `rollbackRefused`.
    StoppingForRollback,
    /// No worker of the new spec committed anything and none runs: the StatefulSet runs
    /// the spec of `fromSpec` again from the savepoint, restored afresh in a new epoch
    /// (`restoreEpoch`); waiting for every worker to be Ready on it.
    RollingBack,
}

/// The autoscaler's latest figures and decision (docs/autoscaling.md).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerStatus {
    /// The parallelism the autoscaler chose: the one the job runs with while the
    /// autoscaler is enabled (`spec.parallelism` is left as the user wrote it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<i32>,
    /// The parallelism the last full window of samples asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommended_parallelism: Option<i32>,
    /// Records not yet processed, summed over the source partitions (end offsets are
    /// last stable offsets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_records: Option<i64>,
    /// Records per second arriving on the source partitions, over the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_records_per_second: Option<f64>,
    /// Records per second the job committed, over the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processed_records_per_second: Option<f64>,
    /// How busy the workers are, in percent, over the window: per worker the larger of its
    /// busy share and its CPU use over its CPU limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization_percent: Option<f64>,
    /// How many source partitions are in each class over the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<PartitionClasses>,
    /// What it decided and why, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    /// When it last changed parallelism.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// The parallelism it scaled down or up from at `lastScaleTime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_from: Option<i32>,
    /// The job's capacity (records per second when fully busy) measured before the last
    /// scale-up, to tell whether it helped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_before_scale: Option<f64>,
    /// A scale-up that did not raise capacity: no parallelism above `from` is proposed
    /// again until the input rate has doubled since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ineffective_scale_up: Option<IneffectiveScaleUp>,
}

/// Source partitions per class over the autoscaler's window (as Burrow classifies them).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionClasses {
    /// Lag reached zero in the window.
    pub ok: i32,
    /// The position advances but lag does not shrink: falling behind.
    pub warn: i32,
    /// The position did not move while lag stayed above zero, the workers up.
    pub stall: i32,
    /// As stall, with workers not ready: nothing runs to commit.
    pub stop: i32,
    /// The position went back.
    pub rewind: i32,
}

/// A scale-up that did not help.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IneffectiveScaleUp {
    /// The parallelism it scaled up from (and went back to).
    pub from: i32,
    /// The parallelism that did not help.
    pub to: i32,
    /// The input rate when it was found (records per second).
    pub input_records_per_second: f64,
}

/// The kstatus condition types a StreamJob reports.
pub mod condition_type {
    /// All workers run the current spec and are ready.
    pub const READY: &str = "Ready";
    /// The controller is moving the job towards its spec.
    pub const RECONCILING: &str = "Reconciling";
    /// The job cannot progress without a change by the user.
    pub const STALLED: &str = "Stalled";
    /// The workers' committed positions advance on every source partition with lag
    /// (measured by the autoscaler, so only set while it is enabled).
    pub const CONSUMING: &str = "Consuming";
}

/// Sets a condition in `conditions`, keeping its `lastTransitionTime` unless its status
/// changes, so writing the same status twice changes nothing (and does not retrigger
/// watches). Returns whether anything changed.
pub fn set_condition(conditions: &mut Vec<Condition>, new: Condition) -> bool {
    match conditions
        .iter_mut()
        .find(|existing| existing.type_ == new.type_)
    {
        Some(existing) => {
            let transition_time = if existing.status == new.status {
                existing.last_transition_time.clone()
            } else {
                new.last_transition_time.clone()
            };
            let updated = Condition {
                last_transition_time: transition_time,
                ..new
            };
            if *existing == updated {
                false
            } else {
                *existing = updated;
                true
            }
        }
        None => {
            conditions.push(new);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn condition(status: &str, reason: &str, seconds: i64, generation: i64) -> Condition {
        Condition {
            type_: condition_type::READY.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message: format!("{reason} message"),
            observed_generation: Some(generation),
            last_transition_time: Time(Timestamp::from_second(seconds).unwrap()),
        }
    }

    #[test]
    fn condition_transition_time_changes_only_with_status() {
        struct Case {
            name: &'static str,
            existing: Option<Condition>,
            new: Condition,
            expect_changed: bool,
            expect_transition_seconds: i64,
        }
        let cases = [
            Case {
                name: "first condition is added as is",
                existing: None,
                new: condition("True", "Running", 100, 1),
                expect_changed: true,
                expect_transition_seconds: 100,
            },
            Case {
                name: "same status and reason: nothing changes",
                existing: Some(condition("True", "Running", 100, 1)),
                new: condition("True", "Running", 200, 1),
                expect_changed: false,
                expect_transition_seconds: 100,
            },
            Case {
                name: "same status, new reason: time kept",
                existing: Some(condition("False", "Deploying", 100, 1)),
                new: condition("False", "Upgrading", 200, 2),
                expect_changed: true,
                expect_transition_seconds: 100,
            },
            Case {
                name: "status flips: time moves",
                existing: Some(condition("False", "Deploying", 100, 1)),
                new: condition("True", "Running", 200, 1),
                expect_changed: true,
                expect_transition_seconds: 200,
            },
        ];
        for case in cases {
            let mut conditions: Vec<Condition> = case.existing.into_iter().collect();
            let changed = set_condition(&mut conditions, case.new.clone());
            assert_eq!(changed, case.expect_changed, "{}", case.name);
            assert_eq!(conditions.len(), 1, "{}", case.name);
            assert_eq!(conditions[0].reason, case.new.reason, "{}", case.name);
            assert_eq!(
                conditions[0].last_transition_time.0.as_second(),
                case.expect_transition_seconds,
                "{}",
                case.name
            );
        }
    }
}
