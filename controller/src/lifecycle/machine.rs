//! The steps of a change, as one pure transition function: from the recorded step
//! (`status.upgrade`, the write-ahead log) and what that step's effect found this time, to
//! the next step. The effects themselves are in `effects`; each is idempotent, so a
//! controller restarted in any step repeats that step's effect and the change completes
//! once (docs/lifecycle.md).

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sluice_crds::status::{ChangeKind, UpgradeState, UpgradeStatus};

/// Timing settings of the lifecycle (controller flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long every worker may take to write its part of a savepoint.
    pub savepoint_timeout: Duration,
    /// The wait before the first retry of a failed savepoint; it doubles with every
    /// attempt, up to ten minutes.
    pub retry_backoff: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            savepoint_timeout: Duration::from_secs(600),
            retry_backoff: Duration::from_secs(30),
        }
    }
}

/// What the current step's effect found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// Nothing conclusive yet (a part still being written, a pod not Ready yet, a worker
    /// that did not answer).
    Waiting,
    /// Every worker wrote its part and the manifest is written.
    SavepointCompleted {
        /// The savepoint's location (what `SLUICE_RESTORE_FROM` takes).
        location: String,
    },
    /// A worker reports its part failed.
    SavepointFailed {
        /// Its reason.
        reason: String,
    },
    /// Every worker acknowledged `POST /v1/resume`.
    Resumed,
    /// Every worker runs the new spec (or, rolling back, the last good one) and is Ready.
    RolledOut,
    /// The new spec's workers are not all Ready within `spec.rollback.readyTimeout`
    /// ([`rollback_due`]).
    RollbackDue,
    /// No worker of the new spec runs any more, their transactional ids are fenced, and
    /// none of them committed anything since the savepoint ([`rollback_verdict`]).
    RollbackSafe,
    /// A rollback would repeat output, or cannot be shown not to: why.
    RollbackRefused {
        /// Why.
        reason: String,
    },
}

/// The next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Stay in the recorded step (and check again later).
    Stay,
    /// Record this step, then start its effect.
    Enter(UpgradeStatus),
    /// The change is complete: the workers run the target, from this savepoint if any.
    Done {
        /// The savepoint taken on the way, if any.
        savepoint: Option<String>,
    },
}

/// The id of the savepoint of attempt `attempt` of a change to `generation` started at
/// `started_at`: the same on every worker and for every retry of the same attempt after
/// a controller restart. It carries the change's start time (Unix seconds): one
/// generation may have many changes (the autoscaler's rescales, periodic savepoints), and
/// a job deleted and created again under its name starts again at generation 1 in the
/// same directory, where an id of the old job must not be taken for the new one's (a
/// worker answers for a savepoint already in the store).
pub fn savepoint_id(kind: ChangeKind, generation: i64, attempt: i32, started_at: &Time) -> String {
    let kind = match kind {
        ChangeKind::SavepointOnly => "manual",
        ChangeKind::PeriodicSavepoint => "periodic",
        ChangeKind::Rescale => "rescale",
        ChangeKind::Suspend => "suspend",
        ChangeKind::Delete => "final",
        ChangeKind::None | ChangeKind::Resume | ChangeKind::Restart | ChangeKind::Upgrade => {
            "upgrade"
        }
    };
    format!("{kind}-{generation}-{}-{attempt}", started_at.0.as_second())
}

/// The first step of a change that takes a savepoint.
pub fn start(
    kind: ChangeKind,
    target_generation: i64,
    target_spec_hash: &str,
    from_parallelism: i32,
    now: &Time,
) -> UpgradeStatus {
    UpgradeStatus {
        kind,
        state: UpgradeState::TakingSavepoint,
        target_generation,
        target_spec_hash: target_spec_hash.to_string(),
        from_parallelism,
        started_at: now.clone(),
        state_since: now.clone(),
        attempt: 1,
        savepoint_id: Some(savepoint_id(kind, target_generation, 1, now)),
        savepoint: None,
        offsets_only: false,
        from_spec: None,
        from_generation: None,
        committed_positions: None,
        rollback_refused: None,
    }
}

fn seconds_between(since: &Time, now: &Time) -> u64 {
    u64::try_from(now.0.as_second() - since.0.as_second()).unwrap_or(0)
}

/// The wait before attempt `attempt + 1` after attempt `attempt` failed.
pub fn backoff(timing: &Timing, attempt: i32) -> Duration {
    let doublings = u32::try_from(attempt.saturating_sub(1)).unwrap_or(0).min(8);
    timing
        .retry_backoff
        .saturating_mul(1 << doublings)
        .min(Duration::from_secs(600))
}

/// The transition function: from the recorded step `upgrade` and what its effect found
/// at `now`, the next step.
pub fn next(upgrade: &UpgradeStatus, found: &Found, now: &Time, timing: &Timing) -> Next {
    let enter = |state: UpgradeState| {
        Next::Enter(UpgradeStatus {
            state,
            state_since: now.clone(),
            ..upgrade.clone()
        })
    };
    let waited = seconds_between(&upgrade.state_since, now);
    match (upgrade.state, found) {
        (UpgradeState::TakingSavepoint, Found::SavepointCompleted { location }) => {
            let state = match upgrade.kind {
                ChangeKind::SavepointOnly | ChangeKind::PeriodicSavepoint => UpgradeState::Resuming,
                // The workers stay stopped at the final savepoint and go with the job.
                ChangeKind::Delete => {
                    return Next::Done {
                        savepoint: Some(location.clone()),
                    };
                }
                _ => UpgradeState::Rolling,
            };
            Next::Enter(UpgradeStatus {
                state,
                state_since: now.clone(),
                savepoint: Some(location.clone()),
                ..upgrade.clone()
            })
        }
        (UpgradeState::TakingSavepoint, Found::SavepointFailed { .. }) => {
            enter(UpgradeState::Aborting)
        }
        (UpgradeState::TakingSavepoint, _) if waited >= timing.savepoint_timeout.as_secs() => {
            enter(UpgradeState::Aborting)
        }
        (UpgradeState::Resuming, Found::Resumed) => Next::Done {
            savepoint: upgrade.savepoint.clone(),
        },
        (UpgradeState::Aborting, Found::Resumed) => enter(UpgradeState::Failed),
        (UpgradeState::Rolling | UpgradeState::RollingBack, Found::RolledOut) => Next::Done {
            savepoint: upgrade.savepoint.clone(),
        },
        (UpgradeState::Rolling, Found::RollbackDue)
            if upgrade.from_spec.is_some() && upgrade.rollback_refused.is_none() =>
        {
            enter(UpgradeState::StoppingForRollback)
        }
        (UpgradeState::StoppingForRollback, Found::RollbackSafe) => {
            enter(UpgradeState::RollingBack)
        }
        // Back to (or on with) the new spec, waiting for a fix; the refusal is recorded
        // and final. From `Rolling`: refused before stopping anything (nothing to compare
        // the positions with).
        (
            UpgradeState::Rolling | UpgradeState::StoppingForRollback,
            Found::RollbackRefused { reason },
        ) if upgrade.rollback_refused.is_none() => Next::Enter(UpgradeStatus {
            state: UpgradeState::Rolling,
            state_since: now.clone(),
            rollback_refused: Some(reason.clone()),
            ..upgrade.clone()
        }),
        (UpgradeState::StoppingForRollback, _) if waited >= timing.savepoint_timeout.as_secs() => {
            Next::Enter(UpgradeStatus {
                state: UpgradeState::Rolling,
                state_since: now.clone(),
                rollback_refused: Some(format!(
                    "the workers of the new spec did not all stop, or the job's committed Kafka positions could not be read, within {:?}",
                    timing.savepoint_timeout
                )),
                ..upgrade.clone()
            })
        }
        (UpgradeState::Failed, _) if waited >= backoff(timing, upgrade.attempt).as_secs() => {
            let attempt = upgrade.attempt + 1;
            Next::Enter(UpgradeStatus {
                state: UpgradeState::TakingSavepoint,
                state_since: now.clone(),
                attempt,
                savepoint_id: Some(savepoint_id(
                    upgrade.kind,
                    upgrade.target_generation,
                    attempt,
                    &upgrade.started_at,
                )),
                savepoint: None,
                ..upgrade.clone()
            })
        }
        _ => Next::Stay,
    }
}

/// Whether a roll is overdue: in `Rolling` for `ready_timeout` (`None`: rollback
/// disabled) without every worker Ready, with a last good spec to return to and no
/// refusal of a rollback recorded.
pub fn rollback_due(
    upgrade: &UpgradeStatus,
    ready_timeout: Option<Duration>,
    all_ready: bool,
    now: &Time,
) -> bool {
    let Some(timeout) = ready_timeout else {
        return false;
    };
    upgrade.state == UpgradeState::Rolling
        && upgrade.from_spec.is_some()
        && upgrade.rollback_refused.is_none()
        && !all_ready
        && seconds_between(&upgrade.state_since, now) >= timeout.as_secs()
}

/// Whether an overdue roll may go back to the savepoint without repeating output: only
/// if the job's committed positions are those recorded when the savepoint completed (no
/// worker of the new spec committed a transaction). `Err`: why not.
pub fn rollback_verdict(at_savepoint: Option<i64>, now: Result<i64, String>) -> Result<(), String> {
    match (at_savepoint, now) {
        (None, _) => Err("the job's committed Kafka positions could not be read when the savepoint completed, so nothing proves that the new workers committed nothing since".to_string()),
        (Some(_), Err(error)) => Err(format!("failed to read the job's committed Kafka positions: {error}")),
        (Some(then), Ok(now)) if then == now => Ok(()),
        (Some(then), Ok(now)) => Err(format!(
            "workers of the new spec committed output after the savepoint (the job's committed positions moved from {then} to {now}), so starting the last good spec from it would repeat that output"
        )),
    }
}

/// When the next periodic savepoint (`spec.savepoints.interval`) is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Periodic {
    /// Now.
    Due,
    /// After this wait.
    In(Duration),
}

/// When the next periodic savepoint is due: `interval` after the last savepoint of any
/// kind, else after the workers became Ready (`running_since`); with neither, a whole
/// interval from now.
pub fn periodic_savepoint(
    interval: Duration,
    last_savepoint: Option<&Time>,
    running_since: Option<&Time>,
    now: &Time,
) -> Periodic {
    let Some(since) = last_savepoint.or(running_since) else {
        return Periodic::In(interval);
    };
    let waited = Duration::from_secs(seconds_between(since, now));
    match interval.checked_sub(waited) {
        Some(wait) if !wait.is_zero() => Periodic::In(wait),
        _ => Periodic::Due,
    }
}

/// Whether the workers run the target spec in this step (else they keep the running one).
pub fn runs_target(state: UpgradeState) -> bool {
    state == UpgradeState::Rolling
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn in_state(kind: ChangeKind, state: UpgradeState, since: i64, attempt: i32) -> UpgradeStatus {
        UpgradeStatus {
            state,
            state_since: at(since),
            attempt,
            savepoint_id: Some(savepoint_id(kind, 7, attempt, &at(0))),
            savepoint: matches!(
                state,
                UpgradeState::Rolling
                    | UpgradeState::StoppingForRollback
                    | UpgradeState::RollingBack
                    | UpgradeState::Resuming
            )
            .then(|| "s3://b/ns/job/x".to_string()),
            from_spec: Some("{}".to_string()),
            from_generation: Some(6),
            committed_positions: Some(100),
            ..start(kind, 7, "h7", 2, &at(0))
        }
    }

    #[test]
    fn a_change_starts_by_recording_its_savepoint() {
        let upgrade = start(ChangeKind::Rescale, 7, "h7", 2, &at(5));
        assert_eq!(upgrade.state, UpgradeState::TakingSavepoint);
        assert_eq!(upgrade.savepoint_id.as_deref(), Some("rescale-7-5-1"));
        assert_eq!(upgrade.attempt, 1);
        assert_eq!(upgrade.from_parallelism, 2);
        assert_eq!(upgrade.started_at, at(5));
        let ids = [
            (ChangeKind::SavepointOnly, 2, "manual-3-5-2"),
            (ChangeKind::PeriodicSavepoint, 1, "periodic-3-5-1"),
            (ChangeKind::Suspend, 1, "suspend-3-5-1"),
            (ChangeKind::Upgrade, 1, "upgrade-3-5-1"),
            (ChangeKind::Delete, 2, "final-3-5-2"),
        ];
        for (kind, attempt, id) in ids {
            assert_eq!(savepoint_id(kind, 3, attempt, &at(5)), id);
        }
        // A job created again under its name starts again at generation 1: its changes
        // differ by their start.
        assert_ne!(
            savepoint_id(ChangeKind::Delete, 1, 1, &at(5)),
            savepoint_id(ChangeKind::Delete, 1, 1, &at(900))
        );
        // Rescales of one generation (the autoscaler's) differ by their start.
        assert_ne!(
            savepoint_id(ChangeKind::Rescale, 3, 1, &at(5)),
            savepoint_id(ChangeKind::Rescale, 3, 1, &at(900))
        );
    }

    #[test]
    fn every_step_on_every_finding() {
        use ChangeKind::{Delete, PeriodicSavepoint, Rescale, SavepointOnly, Upgrade};
        use UpgradeState::{
            Aborting, Failed, Resuming, Rolling, RollingBack, StoppingForRollback, TakingSavepoint,
        };
        let timing = Timing {
            savepoint_timeout: Duration::from_secs(100),
            retry_backoff: Duration::from_secs(30),
        };
        let completed = Found::SavepointCompleted {
            location: "s3://b/ns/job/x".into(),
        };
        let failed = Found::SavepointFailed {
            reason: "disk full".into(),
        };
        // Each case is in its state since second 10; `expect`: None stays, Some(None)
        // completes, Some(Some(state)) enters that state.
        struct Case {
            name: &'static str,
            kind: ChangeKind,
            state: UpgradeState,
            attempt: i32,
            found: Found,
            now: i64,
            expect: Option<Option<UpgradeState>>,
        }
        let stay = None;
        let done = Some(None);
        let to = |state| Some(Some(state));
        let cases = [
            Case {
                name: "savepoint pending",
                kind: Upgrade,
                state: TakingSavepoint,
                attempt: 1,
                found: Found::Waiting,
                now: 50,
                expect: stay,
            },
            Case {
                name: "savepoint complete: roll",
                kind: Upgrade,
                state: TakingSavepoint,
                attempt: 1,
                found: completed.clone(),
                now: 50,
                expect: to(Rolling),
            },
            Case {
                name: "rescale's savepoint complete: roll",
                kind: Rescale,
                state: TakingSavepoint,
                attempt: 1,
                found: completed.clone(),
                now: 50,
                expect: to(Rolling),
            },
            Case {
                name: "a savepoint on request: resume",
                kind: SavepointOnly,
                state: TakingSavepoint,
                attempt: 1,
                found: completed.clone(),
                now: 50,
                expect: to(Resuming),
            },
            Case {
                name: "a periodic savepoint: resume",
                kind: PeriodicSavepoint,
                state: TakingSavepoint,
                attempt: 1,
                found: completed.clone(),
                now: 50,
                expect: to(Resuming),
            },
            Case {
                name: "the final savepoint: done, the workers stay stopped",
                kind: Delete,
                state: TakingSavepoint,
                attempt: 1,
                found: completed.clone(),
                now: 50,
                expect: done,
            },
            Case {
                name: "the final savepoint failed: abort, the workers go on",
                kind: Delete,
                state: TakingSavepoint,
                attempt: 1,
                found: failed.clone(),
                now: 50,
                expect: to(Aborting),
            },
            Case {
                name: "the final savepoint failed: retried after the backoff",
                kind: Delete,
                state: Failed,
                attempt: 1,
                found: Found::Waiting,
                now: 40,
                expect: to(TakingSavepoint),
            },
            Case {
                name: "savepoint failed: abort",
                kind: Upgrade,
                state: TakingSavepoint,
                attempt: 1,
                found: failed.clone(),
                now: 50,
                expect: to(Aborting),
            },
            Case {
                name: "savepoint timed out: abort",
                kind: Upgrade,
                state: TakingSavepoint,
                attempt: 1,
                found: Found::Waiting,
                now: 110,
                expect: to(Aborting),
            },
            Case {
                name: "completed just at the timeout: roll",
                kind: Upgrade,
                state: TakingSavepoint,
                attempt: 1,
                found: completed.clone(),
                now: 110,
                expect: to(Rolling),
            },
            Case {
                name: "aborting, not every worker resumed yet",
                kind: Upgrade,
                state: Aborting,
                attempt: 1,
                found: Found::Waiting,
                now: 50,
                expect: stay,
            },
            Case {
                name: "aborted: failed, the old spec runs",
                kind: Upgrade,
                state: Aborting,
                attempt: 1,
                found: Found::Resumed,
                now: 50,
                expect: to(Failed),
            },
            Case {
                name: "resuming after a savepoint on request",
                kind: SavepointOnly,
                state: Resuming,
                attempt: 1,
                found: Found::Resumed,
                now: 50,
                expect: done,
            },
            Case {
                name: "rolling, pods not Ready yet",
                kind: Upgrade,
                state: Rolling,
                attempt: 1,
                found: Found::Waiting,
                now: 500,
                expect: stay,
            },
            Case {
                name: "rolled out",
                kind: Upgrade,
                state: Rolling,
                attempt: 1,
                found: Found::RolledOut,
                now: 50,
                expect: done,
            },
            Case {
                name: "rolling, overdue: stop the new workers",
                kind: Upgrade,
                state: Rolling,
                attempt: 1,
                found: Found::RollbackDue,
                now: 500,
                expect: to(StoppingForRollback),
            },
            Case {
                name: "a rescale overdue: stop the new workers",
                kind: Rescale,
                state: Rolling,
                attempt: 1,
                found: Found::RollbackDue,
                now: 500,
                expect: to(StoppingForRollback),
            },
            Case {
                name: "stopping, a worker still there",
                kind: Upgrade,
                state: StoppingForRollback,
                attempt: 1,
                found: Found::Waiting,
                now: 50,
                expect: stay,
            },
            Case {
                name: "stopped, fenced, nothing committed: roll back",
                kind: Upgrade,
                state: StoppingForRollback,
                attempt: 1,
                found: Found::RollbackSafe,
                now: 50,
                expect: to(RollingBack),
            },
            Case {
                name: "stopped, a new worker committed: back to the new spec",
                kind: Upgrade,
                state: StoppingForRollback,
                attempt: 1,
                found: Found::RollbackRefused {
                    reason: "moved".into(),
                },
                now: 50,
                expect: to(Rolling),
            },
            Case {
                name: "overdue, nothing to compare with: refused while rolling",
                kind: Upgrade,
                state: Rolling,
                attempt: 1,
                found: Found::RollbackRefused {
                    reason: "no positions".into(),
                },
                now: 500,
                expect: to(Rolling),
            },
            Case {
                name: "not stopped within the timeout: back to the new spec",
                kind: Upgrade,
                state: StoppingForRollback,
                attempt: 1,
                found: Found::Waiting,
                now: 110,
                expect: to(Rolling),
            },
            Case {
                name: "a rollback finding while taking the savepoint changes nothing",
                kind: Upgrade,
                state: TakingSavepoint,
                attempt: 1,
                found: Found::RollbackSafe,
                now: 50,
                expect: stay,
            },
            Case {
                name: "rolling back, not Ready yet: no timeout",
                kind: Upgrade,
                state: RollingBack,
                attempt: 1,
                found: Found::Waiting,
                now: 5000,
                expect: stay,
            },
            Case {
                name: "rolled back",
                kind: Upgrade,
                state: RollingBack,
                attempt: 1,
                found: Found::RolledOut,
                now: 50,
                expect: done,
            },
            Case {
                name: "a second rollback finding while rolling back changes nothing",
                kind: Upgrade,
                state: RollingBack,
                attempt: 1,
                found: Found::RollbackSafe,
                now: 50,
                expect: stay,
            },
            Case {
                name: "an overdue finding while rolling back changes nothing",
                kind: Upgrade,
                state: RollingBack,
                attempt: 1,
                found: Found::RollbackDue,
                now: 5000,
                expect: stay,
            },
            Case {
                name: "a late savepoint finding while rolling changes nothing",
                kind: Upgrade,
                state: Rolling,
                attempt: 1,
                found: failed.clone(),
                now: 50,
                expect: stay,
            },
            Case {
                name: "failed, within the first backoff",
                kind: Upgrade,
                state: Failed,
                attempt: 1,
                found: Found::Waiting,
                now: 39,
                expect: stay,
            },
            Case {
                name: "failed, after the first backoff: retry",
                kind: Upgrade,
                state: Failed,
                attempt: 1,
                found: Found::Waiting,
                now: 40,
                expect: to(TakingSavepoint),
            },
            Case {
                name: "failed twice: the backoff doubled",
                kind: Upgrade,
                state: Failed,
                attempt: 2,
                found: Found::Waiting,
                now: 69,
                expect: stay,
            },
        ];
        for case in cases {
            let upgrade = in_state(case.kind, case.state, 10, case.attempt);
            let next = next(&upgrade, &case.found, &at(case.now), &timing);
            match (&next, case.expect) {
                (Next::Stay, None) | (Next::Done { .. }, Some(None)) => {}
                (Next::Enter(entered), Some(Some(state))) => {
                    assert_eq!(entered.state, state, "{}", case.name);
                    assert_eq!(entered.state_since, at(case.now), "{}", case.name);
                    assert_eq!(entered.started_at, upgrade.started_at, "{}", case.name);
                }
                (next, expect) => panic!("{}: {next:?}, expected {expect:?}", case.name),
            }
        }
    }

    #[test]
    fn the_savepoint_is_carried_to_the_roll_and_a_retry_takes_a_new_one() {
        let timing = Timing::default();
        let taking = in_state(ChangeKind::Upgrade, UpgradeState::TakingSavepoint, 0, 1);
        let Next::Enter(rolling) = next(
            &taking,
            &Found::SavepointCompleted {
                location: "s3://b/ns/job/upgrade-7-1".into(),
            },
            &at(5),
            &timing,
        ) else {
            panic!("no roll");
        };
        assert_eq!(
            rolling.savepoint.as_deref(),
            Some("s3://b/ns/job/upgrade-7-1")
        );
        assert_eq!(
            next(&rolling, &Found::RolledOut, &at(9), &timing),
            Next::Done {
                savepoint: Some("s3://b/ns/job/upgrade-7-1".into())
            }
        );
        let failed = in_state(ChangeKind::Upgrade, UpgradeState::Failed, 0, 1);
        let Next::Enter(retry) = next(&failed, &Found::Waiting, &at(3600), &timing) else {
            panic!("no retry");
        };
        assert_eq!(retry.attempt, 2);
        assert_eq!(retry.savepoint_id.as_deref(), Some("upgrade-7-0-2"));
        assert_eq!(retry.savepoint, None);
    }

    #[test]
    fn a_periodic_savepoint_is_due_an_interval_after_the_last_one() {
        let interval = Duration::from_secs(600);
        let cases = [
            (
                "no savepoint, not running",
                None,
                None,
                100,
                Periodic::In(interval),
            ),
            (
                "no savepoint, running since 100",
                None,
                Some(100),
                400,
                Periodic::In(Duration::from_secs(300)),
            ),
            (
                "no savepoint, running an interval",
                None,
                Some(100),
                700,
                Periodic::Due,
            ),
            (
                "the last savepoint counts, not when the workers started",
                Some(500),
                Some(100),
                900,
                Periodic::In(Duration::from_secs(200)),
            ),
            ("just due", Some(500), Some(100), 1100, Periodic::Due),
            (
                "overdue (a controller that was down)",
                Some(500),
                None,
                9000,
                Periodic::Due,
            ),
            (
                "a clock behind the last savepoint waits the whole interval",
                Some(500),
                None,
                400,
                Periodic::In(interval),
            ),
        ];
        for (name, last, running, now, expect) in cases {
            let last = last.map(at);
            let running = running.map(at);
            assert_eq!(
                periodic_savepoint(interval, last.as_ref(), running.as_ref(), &at(now)),
                expect,
                "{name}"
            );
        }
    }

    #[test]
    fn a_roll_is_overdue_after_the_ready_timeout_without_every_worker_ready() {
        let rolling = in_state(ChangeKind::Upgrade, UpgradeState::Rolling, 10, 1);
        let minute = Some(Duration::from_secs(60));
        let no_last_good_spec = UpgradeStatus {
            from_spec: None,
            ..rolling.clone()
        };
        let taking = in_state(ChangeKind::Upgrade, UpgradeState::TakingSavepoint, 10, 1);
        let rolling_back = in_state(ChangeKind::Upgrade, UpgradeState::RollingBack, 10, 1);
        let refused = UpgradeStatus {
            rollback_refused: Some("a new worker committed".to_string()),
            ..rolling.clone()
        };
        let cases = [
            (
                "a rollback already refused",
                &refused,
                minute,
                false,
                700,
                false,
            ),
            ("within the timeout", &rolling, minute, false, 69, false),
            ("at the timeout", &rolling, minute, false, 70, true),
            ("every worker Ready", &rolling, minute, true, 700, false),
            ("rollback disabled", &rolling, None, false, 700, false),
            (
                "no spec to return to",
                &no_last_good_spec,
                minute,
                false,
                700,
                false,
            ),
            (
                "still taking the savepoint",
                &taking,
                minute,
                false,
                700,
                false,
            ),
            (
                "already rolling back",
                &rolling_back,
                minute,
                false,
                700,
                false,
            ),
        ];
        for (name, upgrade, timeout, all_ready, now, expect) in cases {
            assert_eq!(
                rollback_due(upgrade, timeout, all_ready, &at(now)),
                expect,
                "{name}"
            );
        }
    }

    #[test]
    fn a_rollback_is_safe_only_while_the_committed_positions_stand_still() {
        let cases = [
            ("nothing committed since", Some(100), Ok(100), true),
            ("a new worker committed", Some(100), Ok(130), false),
            (
                "positions moved back (another writer)",
                Some(100),
                Ok(90),
                false,
            ),
            ("not recorded at the savepoint", None, Ok(100), false),
            (
                "cannot read them now",
                Some(100),
                Err("broker down".to_string()),
                false,
            ),
        ];
        for (name, then, now, safe) in cases {
            let verdict = rollback_verdict(then, now);
            assert_eq!(verdict.is_ok(), safe, "{name}: {verdict:?}");
        }
    }

    #[test]
    fn a_refused_rollback_is_recorded_once_and_never_tried_again() {
        let timing = Timing::default();
        let stopping = in_state(
            ChangeKind::Upgrade,
            UpgradeState::StoppingForRollback,
            10,
            1,
        );
        let refused = Found::RollbackRefused {
            reason: "worker 1 committed".into(),
        };
        let Next::Enter(rolling) = next(&stopping, &refused, &at(20), &timing) else {
            panic!("not back to the new spec");
        };
        assert_eq!(rolling.state, UpgradeState::Rolling);
        assert_eq!(
            rolling.rollback_refused.as_deref(),
            Some("worker 1 committed")
        );
        assert_eq!(rolling.savepoint, stopping.savepoint, "the same savepoint");
        let minute = Some(Duration::from_secs(60));
        assert!(!rollback_due(&rolling, minute, false, &at(9000)));
        assert_eq!(
            next(&rolling, &Found::RollbackDue, &at(9000), &timing),
            Next::Stay
        );
        // The new spec, fixed, still completes the change.
        assert!(matches!(
            next(&rolling, &Found::RolledOut, &at(9000), &timing),
            Next::Done { .. }
        ));
    }

    #[test]
    fn the_backoff_doubles_up_to_ten_minutes() {
        let timing = Timing::default();
        let waits: Vec<u64> = (1..=7)
            .map(|attempt| backoff(&timing, attempt).as_secs())
            .collect();
        assert_eq!(waits, [30, 60, 120, 240, 480, 600, 600]);
    }

    #[test]
    fn only_the_roll_runs_the_target() {
        assert!(runs_target(UpgradeState::Rolling));
        for state in [
            UpgradeState::TakingSavepoint,
            UpgradeState::Resuming,
            UpgradeState::Aborting,
            UpgradeState::Failed,
            UpgradeState::StoppingForRollback,
            UpgradeState::RollingBack,
        ] {
            assert!(!runs_target(state), "{state:?}");
        }
    }
}
