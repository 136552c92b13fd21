//! What a spec change means for the workers (pure): the kind of change, from the spec the
//! workers run (the job ConfigMap's) and the one the user wants, and whether the wanted
//! pipeline can take over the running one's state.

use sluice_crds::pipeline::WindowKind;
use sluice_crds::status::ChangeKind;
use sluice_crds::streamjob::UpgradeMode;
use sluice_crds::{CheckedJob, StreamJobSpec};

use crate::spec_hash::spec_hash;

/// The kind of change from `running` to `wanted`: the most disruptive one when several
/// parts changed. A rescale together with any other change the workers see is an
/// upgrade at the new parallelism.
pub fn classify(running: &StreamJobSpec, wanted: &StreamJobSpec) -> ChangeKind {
    match (running.suspend, wanted.suspend) {
        (false, true) => return ChangeKind::Suspend,
        (true, false) => return ChangeKind::Resume,
        // While suspended no worker runs: the next resume starts the wanted spec.
        (true, true) => return ChangeKind::None,
        (false, false) => {}
    }
    if spec_hash(running) != spec_hash(wanted) {
        ChangeKind::Upgrade
    } else if running.parallelism != wanted.parallelism {
        ChangeKind::Rescale
    } else if running.restart_nonce != wanted.restart_nonce {
        ChangeKind::Restart
    } else if running.savepoint_trigger_nonce != wanted.savepoint_trigger_nonce {
        ChangeKind::SavepointOnly
    } else {
        ChangeKind::None
    }
}

/// Whether the change takes a savepoint before it touches the workers.
pub fn needs_savepoint(kind: ChangeKind, wanted: &StreamJobSpec) -> bool {
    match kind {
        ChangeKind::SavepointOnly
        | ChangeKind::PeriodicSavepoint
        | ChangeKind::Rescale
        | ChangeKind::Suspend
        | ChangeKind::Delete => true,
        // `Stateless` keeps the Kafka offsets through a savepoint, and only them.
        ChangeKind::Upgrade => wanted.upgrade_mode != UpgradeMode::LastState,
        ChangeKind::None | ChangeKind::Resume | ChangeKind::Restart => false,
    }
}

/// Why `wanted` cannot take over from `running` in upgrade mode `mode`: with `Stateless`
/// no state is kept, but `maxParallelism` still cannot change for a job with a window (its
/// repartition topic has one partition per key group); otherwise [`incompatibility`].
pub fn refusal(mode: UpgradeMode, running: &CheckedJob, wanted: &CheckedJob) -> Option<String> {
    if mode != UpgradeMode::Stateless {
        return incompatibility(running, wanted);
    }
    (running.pipeline.windowed().is_some() && running.key_groups != wanted.key_groups).then(|| {
        format!(
            "spec.maxParallelism changed from {} to {}: the job's repartition topic has one partition per key group, so it cannot change, even with upgradeMode: Stateless; set it back to {}, or start a new job",
            running.key_groups, wanted.key_groups, running.key_groups
        )
    })
}

/// Why `wanted` cannot take over the state of `running`, or `None` when it can: the same
/// rules as `sluice-worker savepoint check` (docs/savepoints.md). Stateless changes
/// (filters, maps before the key, sinks) keep the state; a new aggregate starts empty;
/// with `wanted.spec.allowNonRestoredState`, an aggregate removed or with another function
/// drops its state.
pub fn incompatibility(running: &CheckedJob, wanted: &CheckedJob) -> Option<String> {
    let Some(old) = running.pipeline.windowed() else {
        // No keyed state to keep (offsets are in Kafka).
        return None;
    };
    if running.key_groups != wanted.key_groups {
        return Some(format!(
            "spec.maxParallelism changed from {} to {}: state is split into that many key groups, so it cannot change for a job with state; set it back to {}",
            running.key_groups, wanted.key_groups, running.key_groups
        ));
    }
    let describe = |job: &CheckedJob| {
        job.pipeline
            .key_by()
            .map_or_else(|| "no keyBy".to_string(), |key| format!("{:?}", key.source))
    };
    let (old_key, new_key) = (describe(running), describe(wanted));
    if old_key != new_key {
        return Some(format!(
            "the keyBy expression changed from {old_key} to {new_key}: state is kept per key, so it cannot be reused; keep the old key, or set upgradeMode: Stateless to start without state"
        ));
    }
    let Some(new) = wanted.pipeline.windowed() else {
        return Some(
            "the window step is gone: its open windows cannot be carried over; keep it, or set upgradeMode: Stateless to start without state"
                .to_string(),
        );
    };
    if old.window.kind != new.window.kind {
        return Some(format!(
            "the window changed from {} to {}: open windows cannot be carried over; keep the old window, or set upgradeMode: Stateless to start without state",
            describe_window(old.window.kind),
            describe_window(new.window.kind)
        ));
    }
    if wanted.spec.allow_non_restored_state {
        return None;
    }
    for aggregate in &old.aggregates {
        match new
            .aggregates
            .iter()
            .find(|candidate| candidate.name == aggregate.name)
        {
            None => {
                return Some(format!(
                    "aggregate {:?} ({}) has state and is gone from the job: put it back, or set spec.allowNonRestoredState: true to drop its state",
                    aggregate.name,
                    aggregate.function.name()
                ));
            }
            Some(found) if found.function != aggregate.function => {
                return Some(format!(
                    "aggregate {:?} was {} and is now {}: its state cannot be reused; give the new aggregate another name, or set spec.allowNonRestoredState: true to start it empty",
                    aggregate.name,
                    aggregate.function.name(),
                    found.function.name()
                ));
            }
            Some(_) => {}
        }
    }
    None
}

/// A window as a manifest says it: "tumbling 1m", "sliding 1m every 10s", "session gap 30s".
fn describe_window(kind: WindowKind) -> String {
    let format = humantime::format_duration;
    match kind {
        WindowKind::Tumbling { size } => format!("tumbling {}", format(size)),
        WindowKind::Sliding { size, slide } => {
            format!("sliding {} every {}", format(size), format(slide))
        }
        WindowKind::Session { gap } => format!("session gap {}", format(gap)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn a_change_is_classified_by_its_most_disruptive_part() {
        struct Case {
            name: &'static str,
            change: fn(&mut StreamJobSpec),
            expect: ChangeKind,
        }
        let cases = [
            Case {
                name: "nothing",
                change: |_| {},
                expect: ChangeKind::None,
            },
            Case {
                name: "autoscaler settings",
                change: |spec| {
                    spec.autoscaler = Some(
                        serde_json::from_value(
                            serde_json::json!({"enabled": true, "maxParallelism": 4}),
                        )
                        .unwrap(),
                    );
                },
                expect: ChangeKind::None,
            },
            Case {
                name: "savepoint settings the controller alone reads, and the upgrade mode",
                change: |spec| {
                    spec.savepoints = Some(
                        serde_json::from_value(serde_json::json!({
                            "location": "s3://b/p", "interval": "10m", "onDelete": false,
                            "retention": {"maxCount": 2},
                            "initialSavepoint": "s3://b/p/shop/page-views/delete-3-1"
                        }))
                        .unwrap(),
                    );
                    spec.upgrade_mode = UpgradeMode::LastState;
                },
                expect: ChangeKind::None,
            },
            Case {
                name: "savepoint nonce",
                change: |spec| spec.savepoint_trigger_nonce = Some(1),
                expect: ChangeKind::SavepointOnly,
            },
            Case {
                name: "restart nonce",
                change: |spec| spec.restart_nonce = Some(1),
                expect: ChangeKind::Restart,
            },
            Case {
                name: "restart and savepoint nonces: the restart",
                change: |spec| {
                    spec.restart_nonce = Some(1);
                    spec.savepoint_trigger_nonce = Some(1);
                },
                expect: ChangeKind::Restart,
            },
            Case {
                name: "parallelism",
                change: |spec| spec.parallelism = 3,
                expect: ChangeKind::Rescale,
            },
            Case {
                name: "parallelism and a nonce: the rescale",
                change: |spec| {
                    spec.parallelism = 3;
                    spec.restart_nonce = Some(1);
                },
                expect: ChangeKind::Rescale,
            },
            Case {
                name: "image",
                change: |spec| spec.image = Some("worker:2".into()),
                expect: ChangeKind::Upgrade,
            },
            Case {
                name: "image and parallelism: an upgrade at the new parallelism",
                change: |spec| {
                    spec.image = Some("worker:2".into());
                    spec.parallelism = 1;
                },
                expect: ChangeKind::Upgrade,
            },
            Case {
                name: "the sink topic",
                change: |spec| spec.sink.topic = "other".into(),
                expect: ChangeKind::Upgrade,
            },
            Case {
                name: "suspend",
                change: |spec| spec.suspend = true,
                expect: ChangeKind::Suspend,
            },
            Case {
                name: "suspend with an upgrade: the suspend",
                change: |spec| {
                    spec.suspend = true;
                    spec.image = Some("worker:2".into());
                },
                expect: ChangeKind::Suspend,
            },
        ];
        let mut running = fixtures::spec();
        running.savepoints =
            Some(serde_json::from_value(serde_json::json!({"location": "s3://b/p"})).unwrap());
        for case in cases {
            let mut wanted = running.clone();
            (case.change)(&mut wanted);
            assert_eq!(classify(&running, &wanted), case.expect, "{}", case.name);
        }
    }

    #[test]
    fn resuming_and_changes_while_suspended() {
        let mut suspended = fixtures::spec();
        suspended.suspend = true;
        let mut resumed = suspended.clone();
        resumed.suspend = false;
        resumed.parallelism = 5;
        assert_eq!(classify(&suspended, &resumed), ChangeKind::Resume);
        let mut edited = suspended.clone();
        edited.image = Some("worker:2".into());
        assert_eq!(classify(&suspended, &edited), ChangeKind::None);
    }

    #[test]
    fn which_changes_take_a_savepoint() {
        let mut spec = fixtures::spec();
        let cases = [
            (ChangeKind::None, UpgradeMode::Savepoint, false),
            (ChangeKind::SavepointOnly, UpgradeMode::LastState, true),
            (ChangeKind::Resume, UpgradeMode::Savepoint, false),
            (ChangeKind::Restart, UpgradeMode::Savepoint, false),
            (ChangeKind::Rescale, UpgradeMode::LastState, true),
            (ChangeKind::Upgrade, UpgradeMode::Savepoint, true),
            (ChangeKind::Upgrade, UpgradeMode::LastState, false),
            (ChangeKind::Upgrade, UpgradeMode::Stateless, true),
            (ChangeKind::Suspend, UpgradeMode::LastState, true),
        ];
        for (kind, mode, expect) in cases {
            spec.upgrade_mode = mode;
            assert_eq!(needs_savepoint(kind, &spec), expect, "{kind:?} {mode:?}");
        }
    }

    #[test]
    fn state_is_kept_across_stateless_changes_only() {
        struct Case {
            name: &'static str,
            change: fn(&mut serde_json::Value),
            refused_with: Option<&'static str>,
        }
        let cases = [
            Case {
                name: "a filter before the key",
                change: |spec| {
                    spec["pipeline"]
                        .as_array_mut()
                        .unwrap()
                        .insert(0, serde_json::json!({"filter": "true"}));
                },
                refused_with: None,
            },
            Case {
                name: "the sink topic",
                change: |spec| spec["sink"]["topic"] = "other".into(),
                refused_with: None,
            },
            Case {
                name: "maxParallelism",
                change: |spec| spec["maxParallelism"] = 8.into(),
                refused_with: Some("spec.maxParallelism changed from 16 to 8"),
            },
            Case {
                name: "the key",
                change: |spec| {
                    for step in spec["pipeline"].as_array_mut().unwrap() {
                        if step.get("keyBy").is_some() {
                            step["keyBy"] = "event.page + '/'".into();
                        }
                    }
                },
                refused_with: Some(
                    r#"the keyBy expression changed from "event.page" to "event.page + '/'""#,
                ),
            },
            Case {
                name: "the window size",
                change: |spec| {
                    for step in spec["pipeline"].as_array_mut().unwrap() {
                        if let Some(window) = step.get_mut("window") {
                            window["tumbling"]["size"] = "2m".into();
                        }
                    }
                },
                refused_with: Some("the window changed from tumbling 1m to tumbling 2m"),
            },
            Case {
                name: "an aggregate removed",
                change: |spec| remove_average(spec, false),
                refused_with: Some(r#"aggregate "avgLatencyMs" (Avg) has state and is gone"#),
            },
            Case {
                name: "an aggregate removed, with allowNonRestoredState",
                change: |spec| remove_average(spec, true),
                refused_with: None,
            },
            Case {
                name: "an aggregate's function changed, with allowNonRestoredState",
                change: |spec| {
                    spec["allowNonRestoredState"] = true.into();
                    for step in spec["pipeline"].as_array_mut().unwrap() {
                        if let Some(aggregate) = step.get_mut("aggregate") {
                            aggregate["avgLatencyMs"]["function"] = "Max".into();
                        }
                    }
                },
                refused_with: None,
            },
            Case {
                name: "the key, with allowNonRestoredState",
                change: |spec| {
                    spec["allowNonRestoredState"] = true.into();
                    for step in spec["pipeline"].as_array_mut().unwrap() {
                        if step.get("keyBy").is_some() {
                            step["keyBy"] = "event.page + '/'".into();
                        }
                    }
                },
                refused_with: Some("the keyBy expression changed"),
            },
        ];
        fn remove_average(spec: &mut serde_json::Value, allow: bool) {
            if allow {
                spec["allowNonRestoredState"] = true.into();
            }
            for step in spec["pipeline"].as_array_mut().unwrap() {
                if let Some(aggregate) = step.get_mut("aggregate") {
                    aggregate.as_object_mut().unwrap().remove("avgLatencyMs");
                }
            }
        }
        let running_spec = fixtures::spec();
        let running = sluice_crds::validate(&running_spec).unwrap();
        for case in cases {
            let mut value = serde_json::to_value(&running_spec).unwrap();
            (case.change)(&mut value);
            let wanted_spec: StreamJobSpec = serde_json::from_value(value).unwrap();
            let wanted = sluice_crds::validate(&wanted_spec)
                .unwrap_or_else(|error| panic!("{}: {error}", case.name));
            let found = refusal(UpgradeMode::Savepoint, &running, &wanted);
            assert_eq!(found, incompatibility(&running, &wanted), "{}", case.name);
            match case.refused_with {
                None => assert_eq!(found, None, "{}", case.name),
                Some(text) => assert!(
                    found.as_deref().is_some_and(|found| found.contains(text)),
                    "{}: {found:?}",
                    case.name
                ),
            }
            // Stateless keeps no state: only the key groups must stay.
            let stateless = refusal(UpgradeMode::Stateless, &running, &wanted);
            assert_eq!(
                stateless.is_some(),
                case.name == "maxParallelism",
                "{} with Stateless: {stateless:?}",
                case.name
            );
        }
    }
}
