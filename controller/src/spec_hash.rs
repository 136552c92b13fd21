//! The spec hash: which spec the workers run. It covers the parts of the spec that need
//! new workers, and leaves out what changes without them: `parallelism` (a rescale),
//! `autoscaler` (the controller's own policy), `suspend` (whether workers run at all),
//! the nonces (one-shot requests), and the settings only the controller reads:
//! `upgradeMode`, `rollback`, `allowNonRestoredState` (which the workers read only when
//! they restore, so it applies to the next restart), and `savepoints` but for its
//! `location` and `secretRef` (retention, interval, onDelete, initialSavepoint). `status.deployed.specHash` and the pod
//! annotation `sluice.dev/spec-hash` carry it.

use sluice_crds::StreamJobSpec;
use sluice_crds::streamjob::{SavepointRetention, UpgradeMode};
use xxhash_rust::xxh3::xxh3_64;

/// A stable hash of the parts of `spec` that need new workers, as 16 hex digits.
///
/// Stable: the spec's JSON form has a fixed field order (struct order, and maps are
/// `BTreeMap`s), and XXH3-64 with seed 0 does not change between versions or machines.
pub fn spec_hash(spec: &StreamJobSpec) -> String {
    let mut workers = spec.clone();
    workers.parallelism = 0;
    workers.autoscaler = None;
    workers.suspend = false;
    workers.restart_nonce = None;
    workers.savepoint_trigger_nonce = None;
    workers.upgrade_mode = UpgradeMode::default();
    workers.rollback = None;
    workers.allow_non_restored_state = false;
    if let Some(savepoints) = workers.savepoints.as_mut() {
        savepoints.retention = SavepointRetention::default();
        savepoints.interval = None;
        savepoints.on_delete = true;
        savepoints.initial_savepoint = None;
    }
    let bytes = serde_json::to_vec(&workers).expect("a StreamJobSpec always serializes");
    format!("{:016x}", xxh3_64(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn only_changes_that_need_new_workers_change_the_hash() {
        let mut base = fixtures::spec();
        base.savepoints =
            Some(serde_json::from_value(serde_json::json!({"location": "s3://b/p"})).unwrap());
        struct Case {
            name: &'static str,
            change: fn(&mut StreamJobSpec),
            changes_hash: bool,
        }
        let cases = [
            Case {
                name: "parallelism",
                change: |spec| spec.parallelism = 7,
                changes_hash: false,
            },
            Case {
                name: "restart nonce",
                change: |spec| spec.restart_nonce = Some(3),
                changes_hash: false,
            },
            Case {
                name: "savepoint nonce",
                change: |spec| spec.savepoint_trigger_nonce = Some(3),
                changes_hash: false,
            },
            Case {
                name: "suspend",
                change: |spec| spec.suspend = true,
                changes_hash: false,
            },
            Case {
                name: "upgrade mode",
                change: |spec| spec.upgrade_mode = UpgradeMode::LastState,
                changes_hash: false,
            },
            Case {
                name: "allowNonRestoredState",
                change: |spec| spec.allow_non_restored_state = true,
                changes_hash: false,
            },
            Case {
                name: "rollback settings",
                change: |spec| {
                    spec.rollback = Some(sluice_crds::streamjob::RollbackSpec {
                        enabled: false,
                        ready_timeout: "1m".parse().unwrap(),
                    })
                },
                changes_hash: false,
            },
            Case {
                name: "savepoint settings the controller alone reads",
                change: |spec| {
                    let savepoints = spec.savepoints.as_mut().unwrap();
                    savepoints.retention.max_count = 2;
                    savepoints.interval = Some("10m".parse().unwrap());
                    savepoints.on_delete = false;
                    savepoints.initial_savepoint = Some("s3://b/ns/job/delete-3-1".into());
                },
                changes_hash: false,
            },
            Case {
                name: "savepoint location",
                change: |spec| spec.savepoints.as_mut().unwrap().location = "s3://other".into(),
                changes_hash: true,
            },
            Case {
                name: "filter",
                change: |spec| {
                    spec.pipeline[0] =
                        serde_json::from_value(serde_json::json!({"filter": "event.status == 404"}))
                            .unwrap()
                },
                changes_hash: true,
            },
            Case {
                name: "image",
                change: |spec| spec.image = Some("example/worker:2".into()),
                changes_hash: true,
            },
            Case {
                name: "kafka property",
                change: |spec| {
                    spec.kafka.properties.insert("client.id".into(), "x".into());
                },
                changes_hash: true,
            },
        ];
        for case in cases {
            let mut changed = base.clone();
            (case.change)(&mut changed);
            assert_eq!(
                spec_hash(&changed) != spec_hash(&base),
                case.changes_hash,
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn the_hash_is_pinned() {
        // A change here means every running job would look like it needs new workers
        // after a controller upgrade: only accept it with a reason.
        assert_eq!(spec_hash(&fixtures::spec()), "a83fe712d3445319");
    }
}
