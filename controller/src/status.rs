//! The status phase, as pure decisions: from what the reconcile observed to the next
//! `StreamJobStatus` (phase, counts, `deployed`, kstatus conditions) and the transition
//! to announce as an Event. `lastTransitionTime` moves only when a condition's status
//! does, so writing the same status twice is a no-op that triggers nothing.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use sluice_crds::status::{
    ChangeKind, DeployedSpec, Phase, UpgradeState, UpgradeStatus, condition_type, set_condition,
};
use sluice_crds::{StreamJob, StreamJobStatus};

use crate::error::ErrorKind;

/// The worker counts of the StatefulSet, as the apply returned it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerCounts {
    /// Workers wanted (0 when suspended).
    pub desired: i32,
    /// Pods that exist.
    pub replicas: i32,
    /// Pods that are ready.
    pub ready: i32,
    /// Pods on the newest pod template.
    pub updated: i32,
    /// Whether the StatefulSet controller has seen the newest spec and finished rolling it
    /// out (observedGeneration current and every pod on the update revision).
    pub rolled_out: bool,
}

impl WorkerCounts {
    /// Reads the counts of a StatefulSet.
    pub fn of(workers: &StatefulSet) -> Self {
        let desired = workers.spec.replicas.unwrap_or(1);
        let status = workers.status.clone().unwrap_or_default();
        let generation_seen =
            status.observed_generation.unwrap_or(0) >= workers.metadata.generation.unwrap_or(0);
        let revision_current = desired == 0
            || status.update_revision.is_none()
            || status.current_revision == status.update_revision;
        let updated = status.updated_replicas.unwrap_or(0);
        Self {
            desired,
            replicas: status.replicas,
            ready: status.ready_replicas.unwrap_or(0),
            updated,
            rolled_out: generation_seen && (revision_current || updated >= desired),
        }
    }

    /// Whether every wanted worker exists, runs the newest template and is ready.
    pub fn all_ready(&self) -> bool {
        self.rolled_out
            && self.replicas == self.desired
            && self.ready == self.desired
            && (self.updated >= self.desired || self.desired == 0)
    }
}

/// What one reconcile found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    /// Every child was applied; the StatefulSet reports these counts.
    Applied {
        /// The spec hash of what was applied.
        spec_hash: String,
        /// The worker counts.
        workers: WorkerCounts,
    },
    /// Only a change by the user can fix the job (invalid spec, missing Secret): nothing
    /// was applied, so the workers keep running the last good spec.
    Stalled {
        /// Why (an error kind, also the event reason).
        reason: ErrorKind,
        /// Each field and its fix.
        message: String,
    },
    /// A failure a retry may get past (the API server): only `lastError` changes.
    Failed {
        /// What failed.
        message: String,
    },
}

/// A change worth an Event: the reason users filter on, and the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Whether it is a warning.
    pub warning: bool,
    /// UpperCamelCase reason (a phase or an error kind).
    pub reason: String,
    /// What happened.
    pub message: String,
}

/// The next status of `job` after `observation`, and the transition to announce.
pub fn next_status(
    job: &StreamJob,
    observation: &Observation,
    now: &Time,
) -> (StreamJobStatus, Option<Transition>) {
    let previous = job.status.clone().unwrap_or_default();
    let generation = job.metadata.generation.unwrap_or(0);
    let name = job.metadata.name.as_deref().unwrap_or_default();
    let mut status = previous.clone();
    status.observed_generation = Some(generation);
    status.selector = Some(crate::names::selector_string(name));
    let condition = |type_: &str, value: bool, reason: &str, message: &str| Condition {
        type_: type_.to_string(),
        status: if value { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: Some(generation),
        last_transition_time: now.clone(),
    };
    let (ready, reconciling, stalled, reason, message);
    match observation {
        Observation::Failed { message } => {
            status.last_error = Some(message.clone());
            // The conditions still describe the last thing seen; a retry follows.
            status.observed_generation = previous.observed_generation;
            let transition = (previous.last_error.as_ref() != Some(message)).then(|| Transition {
                warning: true,
                reason: ErrorKind::KubernetesApi.as_str().to_string(),
                message: message.clone(),
            });
            return (status, transition);
        }
        Observation::Stalled {
            reason: kind,
            message: fix,
        } => {
            status.phase = Some(Phase::Failed);
            status.last_error = Some(fix.clone());
            reason = kind.as_str().to_string();
            message = match &previous.deployed {
                Some(deployed) => format!(
                    "{fix} (the workers keep running generation {})",
                    deployed.generation
                ),
                None => fix.clone(),
            };
            (ready, reconciling, stalled) = (false, false, true);
        }
        Observation::Applied { spec_hash, workers } => {
            status.replicas = Some(workers.replicas);
            status.ready_replicas = Some(workers.ready);
            let parallelism = job.spec.parallelism;
            if let Some(upgrade) = &previous.upgrade {
                // A change in progress (docs/lifecycle.md): the lifecycle writes
                // `deployed` when it completes, and `lastError` when a step fails.
                let (why, what) = changing(upgrade, parallelism);
                reason = why.to_string();
                message = match (&previous.last_error, upgrade.state) {
                    // Why it rolls back (the workers' problems), in the condition and Event.
                    (Some(late), UpgradeState::StoppingForRollback | UpgradeState::RollingBack) => {
                        format!(
                            "{what}; {late}; {} of {} workers ready",
                            workers.ready, workers.desired
                        )
                    }
                    _ => format!(
                        "{what}; {} of {} workers ready",
                        workers.ready, workers.desired
                    ),
                };
                // A periodic savepoint is routine: the job stays Running and Ready (no
                // alert, no GitOps tool seeing it progress every interval) while every
                // worker is, unless it fails or an edit waits for it.
                let routine = upgrade.kind == ChangeKind::PeriodicSavepoint
                    && matches!(
                        upgrade.state,
                        UpgradeState::TakingSavepoint | UpgradeState::Resuming
                    )
                    && workers.all_ready()
                    && upgrade.target_generation == generation;
                if routine {
                    status.phase = Some(Phase::Running);
                    (ready, reconciling, stalled) = (true, false, false);
                } else {
                    status.phase = Some(Phase::Upgrading);
                    (ready, reconciling, stalled) = (false, true, false);
                }
            } else if workers.all_ready() {
                status.last_error = None;
                if job.spec.suspend {
                    status.phase = Some(Phase::Suspended);
                    reason = "Suspended".to_string();
                    message = "spec.suspend is set: no worker runs; the volumes keep the state"
                        .to_string();
                } else {
                    status.phase = Some(Phase::Running);
                    let restore = previous.deployed.as_ref();
                    status.deployed = Some(DeployedSpec {
                        generation,
                        spec_hash: spec_hash.clone(),
                        parallelism,
                        // A new job started from `spec.savepoints.initialSavepoint`.
                        savepoint: match restore {
                            Some(deployed) => deployed.savepoint.clone(),
                            None => job
                                .spec
                                .savepoints
                                .as_ref()
                                .and_then(|savepoints| savepoints.initial_savepoint.clone()),
                        },
                        previous_parallelism: restore
                            .and_then(|deployed| deployed.previous_parallelism),
                        offsets_only: restore.is_some_and(|deployed| deployed.offsets_only),
                        restore_epoch: restore.and_then(|deployed| deployed.restore_epoch),
                    });
                    reason = "Running".to_string();
                    message = format!(
                        "{} of {} workers ready, running generation {generation}",
                        workers.ready, workers.desired
                    );
                }
                (ready, reconciling, stalled) = (true, false, false);
            } else {
                status.last_error = None;
                let (phase, why, what) = progress(&previous, spec_hash, parallelism, workers);
                status.phase = Some(phase);
                reason = why.to_string();
                message = what;
                (ready, reconciling, stalled) = (false, true, false);
            }
        }
    }
    let mut conditions = previous.conditions.clone();
    let ready_message = if ready {
        message.clone()
    } else {
        format!("not ready: {message}")
    };
    set_condition(
        &mut conditions,
        condition(condition_type::READY, ready, &reason, &ready_message),
    );
    set_condition(
        &mut conditions,
        condition(condition_type::RECONCILING, reconciling, &reason, &message),
    );
    set_condition(
        &mut conditions,
        condition(condition_type::STALLED, stalled, &reason, &message),
    );
    status.conditions = conditions;
    let previous_reason = previous
        .conditions
        .iter()
        .find(|condition| condition.type_ == condition_type::READY)
        .map(|condition| condition.reason.as_str());
    let transition = (previous.phase != status.phase
        || previous_reason != Some(reason.as_str())
        || (stalled && previous.last_error != status.last_error))
        .then_some(Transition {
            warning: stalled || reason == UPGRADE_FAILED || reason == "RollingBack",
            reason,
            message,
        });
    (status, transition)
}

/// The Ready reason of a change whose savepoint failed.
const UPGRADE_FAILED: &str = "UpgradeFailed";

/// The Ready reason and message of a change in progress.
fn changing(upgrade: &UpgradeStatus, parallelism: i32) -> (&'static str, String) {
    let what = match upgrade.kind {
        ChangeKind::Rescale => format!(
            "rescaling from {} to {parallelism} workers",
            upgrade.from_parallelism
        ),
        ChangeKind::Suspend => "suspending".to_string(),
        ChangeKind::SavepointOnly => "taking a savepoint on request".to_string(),
        ChangeKind::PeriodicSavepoint => "taking a periodic savepoint".to_string(),
        ChangeKind::Delete => "deleting the job after a final savepoint".to_string(),
        _ => format!("upgrading to generation {}", upgrade.target_generation),
    };
    let savepoint = upgrade.savepoint_id.as_deref().unwrap_or_default();
    let step = match upgrade.state {
        UpgradeState::TakingSavepoint => format!("taking savepoint {savepoint}"),
        UpgradeState::Resuming => format!("savepoint {savepoint} taken, the workers go on"),
        UpgradeState::Rolling => format!(
            "starting the workers from savepoint {}",
            upgrade.savepoint.as_deref().unwrap_or(savepoint)
        ),
        UpgradeState::Aborting => {
            format!("savepoint {savepoint} failed, the workers go on with the spec they run")
        }
        UpgradeState::Failed => format!(
            "attempt {} failed (see lastError), the workers run the spec they ran; retried after a backoff",
            upgrade.attempt
        ),
        UpgradeState::StoppingForRollback => format!(
            "its workers were not all Ready in time: stopping them, then starting generation {} again from savepoint {} if none committed anything",
            upgrade.from_generation.unwrap_or_default(),
            upgrade.savepoint.as_deref().unwrap_or(savepoint)
        ),
        UpgradeState::RollingBack => format!(
            "its workers were not all Ready in time and none committed anything: starting generation {} again from savepoint {}",
            upgrade.from_generation.unwrap_or_default(),
            upgrade.savepoint.as_deref().unwrap_or(savepoint)
        ),
    };
    let reason = match (upgrade.state, upgrade.kind) {
        (UpgradeState::Failed | UpgradeState::Aborting, _) => UPGRADE_FAILED,
        (UpgradeState::StoppingForRollback | UpgradeState::RollingBack, _) => "RollingBack",
        (_, ChangeKind::Rescale) => "Rescaling",
        (_, ChangeKind::Suspend) => "Suspending",
        (_, ChangeKind::SavepointOnly | ChangeKind::PeriodicSavepoint) => "TakingSavepoint",
        (_, ChangeKind::Delete) => "Deleting",
        _ => "Upgrading",
    };
    (reason, format!("{what}: {step}"))
}

/// Why the workers are not all ready and current yet: the phase, the reason and a message.
fn progress(
    previous: &StreamJobStatus,
    spec_hash: &str,
    parallelism: i32,
    workers: &WorkerCounts,
) -> (Phase, &'static str, String) {
    let counts = format!(
        "{} of {} workers ready, {} on the current spec",
        workers.ready, workers.desired, workers.updated
    );
    match &previous.deployed {
        Some(deployed) if deployed.spec_hash != spec_hash => (
            Phase::Upgrading,
            "Upgrading",
            format!(
                "moving from spec {} to {spec_hash}: {counts}",
                deployed.spec_hash
            ),
        ),
        Some(deployed) if deployed.parallelism != parallelism => (
            Phase::Upgrading,
            "Rescaling",
            format!(
                "rescaling from {} to {parallelism} workers: {counts}",
                deployed.parallelism
            ),
        ),
        _ if workers.replicas == 0 && workers.desired > 0 => (
            Phase::Pending,
            "Pending",
            format!("no worker pod yet: {counts}"),
        ),
        _ => (Phase::Deploying, "Deploying", counts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn counts(desired: i32, replicas: i32, ready: i32, rolled_out: bool) -> WorkerCounts {
        WorkerCounts {
            desired,
            replicas,
            ready,
            updated: if rolled_out { replicas } else { 0 },
            rolled_out,
        }
    }

    fn applied(hash: &str, workers: WorkerCounts) -> Observation {
        Observation::Applied {
            spec_hash: hash.to_string(),
            workers,
        }
    }

    fn condition<'a>(status: &'a StreamJobStatus, type_: &str) -> &'a Condition {
        status
            .conditions
            .iter()
            .find(|condition| condition.type_ == type_)
            .unwrap()
    }

    #[test]
    fn a_change_in_progress_is_reconciling_but_a_periodic_savepoint_is_routine() {
        use ChangeKind::{PeriodicSavepoint, SavepointOnly, Upgrade};
        use UpgradeState::{Failed, Resuming, TakingSavepoint};
        let cases = [
            (
                PeriodicSavepoint,
                TakingSavepoint,
                Phase::Running,
                "True",
                "TakingSavepoint",
            ),
            (
                PeriodicSavepoint,
                Resuming,
                Phase::Running,
                "True",
                "TakingSavepoint",
            ),
            (
                PeriodicSavepoint,
                Failed,
                Phase::Upgrading,
                "False",
                UPGRADE_FAILED,
            ),
            (
                SavepointOnly,
                TakingSavepoint,
                Phase::Upgrading,
                "False",
                "TakingSavepoint",
            ),
            (
                Upgrade,
                TakingSavepoint,
                Phase::Upgrading,
                "False",
                "Upgrading",
            ),
        ];
        for (kind, state, phase, ready, reason) in cases {
            let mut job = fixtures::job();
            job.status = Some(StreamJobStatus {
                upgrade: Some(UpgradeStatus {
                    state,
                    ..crate::lifecycle::machine::start(kind, 1, "h1", 2, &at(50))
                }),
                ..StreamJobStatus::default()
            });
            let (status, _) = next_status(&job, &applied("h1", counts(2, 2, 2, true)), &at(100));
            let name = format!("{kind:?} {state:?}");
            assert_eq!(status.phase, Some(phase), "{name}");
            let condition_ready = condition(&status, condition_type::READY);
            assert_eq!(condition_ready.status, ready, "{name}");
            assert_eq!(condition_ready.reason, reason, "{name}");
            assert_eq!(
                condition(&status, condition_type::RECONCILING).status == "True",
                ready == "False",
                "{name}"
            );
        }
        // Not routine while a worker is not Ready, nor while an edit waits for it.
        let periodic = |generation: i64| {
            let mut job = fixtures::job();
            job.metadata.generation = Some(generation);
            job.status = Some(StreamJobStatus {
                upgrade: Some(crate::lifecycle::machine::start(
                    PeriodicSavepoint,
                    1,
                    "h1",
                    2,
                    &at(50),
                )),
                ..StreamJobStatus::default()
            });
            job
        };
        for (job, workers) in [
            (periodic(1), counts(2, 2, 1, true)),
            (periodic(2), counts(2, 2, 2, true)),
        ] {
            let (status, _) = next_status(&job, &applied("h1", workers), &at(100));
            assert_eq!(status.phase, Some(Phase::Upgrading));
            assert_eq!(condition(&status, condition_type::READY).status, "False");
        }
    }

    #[test]
    fn a_rollback_says_why_in_its_warning() {
        for (state, says) in [
            (
                UpgradeState::StoppingForRollback,
                "stopping them, then starting generation 1 again from savepoint s3://b/ns/job/upgrade-2-50-1 if none committed anything",
            ),
            (
                UpgradeState::RollingBack,
                "starting generation 1 again from savepoint s3://b/ns/job/upgrade-2-50-1",
            ),
        ] {
            let mut job = fixtures::job();
            job.status = Some(StreamJobStatus {
                upgrade: Some(UpgradeStatus {
                    state,
                    from_generation: Some(1),
                    savepoint: Some("s3://b/ns/job/upgrade-2-50-1".into()),
                    ..crate::lifecycle::machine::start(ChangeKind::Upgrade, 2, "h2", 1, &at(50))
                }),
                last_error: Some("worker 0: ErrImageNeverPull".into()),
                ..StreamJobStatus::default()
            });
            let (status, transition) =
                next_status(&job, &applied("h1", counts(1, 1, 0, false)), &at(100));
            assert_eq!(status.phase, Some(Phase::Upgrading), "{state:?}");
            let ready = condition(&status, condition_type::READY);
            assert_eq!(ready.reason, "RollingBack", "{state:?}");
            assert!(
                ready.message.contains(says) && ready.message.contains("ErrImageNeverPull"),
                "{state:?}: {}",
                ready.message
            );
            let transition = transition.expect("an Event");
            assert!(transition.warning && transition.reason == "RollingBack");
        }
    }

    #[test]
    fn phases_and_conditions_follow_the_workers() {
        struct Case {
            name: &'static str,
            previous: Option<DeployedSpec>,
            parallelism: i32,
            suspend: bool,
            observation: Observation,
            expect_phase: Phase,
            expect_ready: &'static str,
            expect_reason: &'static str,
            expect_deployed_generation: Option<i64>,
        }
        let deployed = |hash: &str, parallelism| {
            Some(DeployedSpec {
                generation: 1,
                spec_hash: hash.to_string(),
                parallelism,
                savepoint: None,
                previous_parallelism: None,
                offsets_only: false,
                restore_epoch: None,
            })
        };
        let cases = [
            Case {
                name: "new job, no pod yet",
                previous: None,
                parallelism: 2,
                suspend: false,
                observation: applied("h1", counts(2, 0, 0, true)),
                expect_phase: Phase::Pending,
                expect_ready: "False",
                expect_reason: "Pending",
                expect_deployed_generation: None,
            },
            Case {
                name: "new job, pods starting",
                previous: None,
                parallelism: 2,
                suspend: false,
                observation: applied("h1", counts(2, 2, 1, true)),
                expect_phase: Phase::Deploying,
                expect_ready: "False",
                expect_reason: "Deploying",
                expect_deployed_generation: None,
            },
            Case {
                name: "all ready: running, deployed recorded",
                previous: None,
                parallelism: 2,
                suspend: false,
                observation: applied("h1", counts(2, 2, 2, true)),
                expect_phase: Phase::Running,
                expect_ready: "True",
                expect_reason: "Running",
                expect_deployed_generation: Some(3),
            },
            Case {
                name: "ready but the rollout is not finished",
                previous: deployed("h0", 2),
                parallelism: 2,
                suspend: false,
                observation: applied("h1", counts(2, 2, 2, false)),
                expect_phase: Phase::Upgrading,
                expect_ready: "False",
                expect_reason: "Upgrading",
                expect_deployed_generation: Some(1),
            },
            Case {
                name: "kubectl scale: rescaling from the volumes",
                previous: deployed("h1", 2),
                parallelism: 3,
                suspend: false,
                observation: applied("h1", counts(3, 2, 2, false)),
                expect_phase: Phase::Upgrading,
                expect_ready: "False",
                expect_reason: "Rescaling",
                expect_deployed_generation: Some(1),
            },
            Case {
                name: "a worker restarts on the same spec",
                previous: deployed("h1", 2),
                parallelism: 2,
                suspend: false,
                observation: applied("h1", counts(2, 2, 1, true)),
                expect_phase: Phase::Deploying,
                expect_ready: "False",
                expect_reason: "Deploying",
                expect_deployed_generation: Some(1),
            },
            Case {
                name: "suspended, every worker gone",
                previous: deployed("h1", 2),
                parallelism: 2,
                suspend: true,
                observation: applied("h1", counts(0, 0, 0, true)),
                expect_phase: Phase::Suspended,
                expect_ready: "True",
                expect_reason: "Suspended",
                expect_deployed_generation: Some(1),
            },
            Case {
                name: "invalid spec: stalled, last good spec kept",
                previous: deployed("h1", 2),
                parallelism: 2,
                suspend: false,
                observation: Observation::Stalled {
                    reason: ErrorKind::InvalidSpec,
                    message: "spec.pipeline[0].filter: must give a bool".into(),
                },
                expect_phase: Phase::Failed,
                expect_ready: "False",
                expect_reason: "InvalidSpec",
                expect_deployed_generation: Some(1),
            },
        ];
        for case in cases {
            let mut job = fixtures::job();
            job.metadata.generation = Some(3);
            job.spec.parallelism = case.parallelism;
            job.spec.suspend = case.suspend;
            job.status = Some(StreamJobStatus {
                deployed: case.previous.clone(),
                ..StreamJobStatus::default()
            });
            let (status, transition) = next_status(&job, &case.observation, &at(100));
            assert_eq!(status.phase, Some(case.expect_phase), "{}", case.name);
            assert_eq!(status.observed_generation, Some(3), "{}", case.name);
            let ready = condition(&status, condition_type::READY);
            assert_eq!(ready.status, case.expect_ready, "{}", case.name);
            assert_eq!(ready.reason, case.expect_reason, "{}", case.name);
            let stalled = condition(&status, condition_type::STALLED);
            assert_eq!(
                stalled.status == "True",
                case.expect_phase == Phase::Failed,
                "{}",
                case.name
            );
            let reconciling = condition(&status, condition_type::RECONCILING);
            assert_eq!(
                reconciling.status == "True",
                case.expect_ready == "False" && case.expect_phase != Phase::Failed,
                "{}",
                case.name
            );
            assert_eq!(
                status.deployed.map(|deployed| deployed.generation),
                case.expect_deployed_generation,
                "{}",
                case.name
            );
            let transition = transition.expect(case.name);
            assert_eq!(transition.reason, case.expect_reason, "{}", case.name);
            assert_eq!(
                transition.warning,
                case.expect_phase == Phase::Failed,
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn the_same_observation_twice_changes_nothing() {
        let mut job = fixtures::job();
        let observation = applied("h1", counts(2, 2, 2, true));
        let (first, transition) = next_status(&job, &observation, &at(100));
        assert!(transition.is_some());
        job.status = Some(first.clone());
        let (second, transition) = next_status(&job, &observation, &at(200));
        assert_eq!(second, first, "no write, no watch event, no reconcile loop");
        assert_eq!(transition, None);
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let mut job = fixtures::job();
        let (deploying, _) = next_status(&job, &applied("h1", counts(2, 2, 1, true)), &at(100));
        job.status = Some(deploying);
        let (still, _) = next_status(&job, &applied("h1", counts(2, 1, 1, true)), &at(150));
        assert_eq!(
            condition(&still, condition_type::READY).last_transition_time,
            at(100)
        );
        job.status = Some(still);
        let (running, _) = next_status(&job, &applied("h1", counts(2, 2, 2, true)), &at(200));
        assert_eq!(
            condition(&running, condition_type::READY).last_transition_time,
            at(200)
        );
        assert_eq!(
            condition(&running, condition_type::RECONCILING).last_transition_time,
            at(200)
        );
        assert_eq!(
            condition(&running, condition_type::STALLED).last_transition_time,
            at(100)
        );
    }

    #[test]
    fn an_api_failure_only_records_the_error() {
        let mut job = fixtures::job();
        let (running, _) = next_status(&job, &applied("h1", counts(2, 2, 2, true)), &at(100));
        job.status = Some(running.clone());
        let failure = Observation::Failed {
            message: "unable to apply StatefulSet page-views: timeout".into(),
        };
        let (status, transition) = next_status(&job, &failure, &at(200));
        assert_eq!(status.phase, Some(Phase::Running));
        assert_eq!(status.conditions, running.conditions);
        assert!(status.last_error.is_some());
        assert_eq!(transition.unwrap().reason, "KubernetesApi");
    }

    #[test]
    fn worker_counts_read_the_rollout() {
        let workers: StatefulSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "x", "generation": 4},
            "spec": {"replicas": 2, "selector": {}, "template": {}, "serviceName": "x"},
            "status": {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 1,
                       "observedGeneration": 4, "currentRevision": "a", "updateRevision": "b"}
        }))
        .unwrap();
        let counts = WorkerCounts::of(&workers);
        assert_eq!(counts.ready, 2);
        assert!(!counts.rolled_out);
        assert!(!counts.all_ready());
    }
}
