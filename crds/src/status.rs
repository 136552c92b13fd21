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

    /// Records not yet processed, summed over the source partitions (planned: the
    /// autoscaler reads it from Kafka and writes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_lag: Option<i64>,

    /// The spec the workers run now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed: Option<DeployedSpec>,

    /// The newest completed savepoint (planned: written by the job lifecycle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_savepoint: Option<SavepointRecord>,

    /// Recent savepoints, newest first, at most ten (planned: written by the job lifecycle).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub savepoint_history: Vec<SavepointRecord>,

    /// The upgrade, rescale or restart in progress, recorded before any step is taken so
    /// a restarted controller resumes it (planned: written by the job lifecycle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeStatus>,

    /// The autoscaler's latest figures and decision (planned: written by the autoscaler).
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

/// An upgrade in progress.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeStatus {
    /// What kind of change is being applied.
    pub kind: ChangeKind,
    /// The step the upgrade is in.
    pub state: UpgradeState,
    /// Generation being moved to.
    pub target_generation: i64,
    /// Hash of the spec being moved to.
    pub target_spec_hash: String,
    /// When the upgrade started.
    pub started_at: Time,
    /// The savepoint the new workers start from, once taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint: Option<String>,
}

/// A classified spec change, from least to most disruptive.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum ChangeKind {
    /// Status-only or cosmetic: nothing to do.
    None,
    /// Parallelism changed: savepoint, then restart with key groups redistributed.
    Rescale,
    /// Pipeline, image or resources changed: savepoint, then restart on the new spec.
    Upgrade,
    /// Restart requested by `restartNonce`.
    Restart,
}

/// Steps of an upgrade.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum UpgradeState {
    /// Waiting for the savepoint to complete.
    TakingSavepoint,
    /// Stopping the old workers.
    Stopping,
    /// Starting workers on the new spec.
    Starting,
    /// The upgrade failed; see `lastError`.
    Failed,
}

/// The autoscaler's latest figures and decision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerStatus {
    /// Events per second consumed, over all workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_per_second: Option<f64>,
    /// Busy share of the workers, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization_percent: Option<f64>,
    /// The parallelism the autoscaler would choose now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommended_parallelism: Option<i32>,
    /// What it decided and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    /// When it last changed parallelism.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
}

/// The kstatus condition types a StreamJob reports.
pub mod condition_type {
    /// All workers run the current spec and are ready.
    pub const READY: &str = "Ready";
    /// The controller is moving the job towards its spec.
    pub const RECONCILING: &str = "Reconciling";
    /// The job cannot progress without a change by the user.
    pub const STALLED: &str = "Stalled";
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
