//! The worker StatefulSet: stable identities (`<job>-<ordinal>`, the worker's ordinal),
//! one RocksDB volume per worker, probes on the admin API, a grace period long enough for
//! the last commit, and a locked-down pod.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvFromSource, EnvVar, HTTPGetAction, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecretEnvSource,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sluice_crds::streamjob::ImagePullPolicy;

use super::{BuildInputs, child_meta, job_name};
use crate::names::{
    ADMIN_PORT, ADMIN_TOKEN_DIRECTORY, ChildNames, JOB_DIRECTORY, JOB_FILE,
    KAFKA_PROPERTIES_DIRECTORY, RESTART_NONCE_ANNOTATION, SPEC_HASH_ANNOTATION, STATE_DIRECTORY,
    STATE_VOLUME, TOKEN_FILE, WORKER_CONTAINER, child_labels, selector_labels,
};

/// The user (and group) the worker image runs as.
const WORKER_USER: i64 = 65532;

/// How long a stopping worker has between SIGTERM and SIGKILL: it finishes its open
/// transaction with a last checkpoint (flush, commit), which can take up to a checkpoint
/// interval of buffered work plus a Kafka commit (the worker's Kafka timeout is 30 s).
pub fn termination_grace_seconds(checkpoint_interval: std::time::Duration) -> i64 {
    const KAFKA_COMMIT: u64 = 30;
    const MINIMUM: u64 = 60;
    let seconds = checkpoint_interval
        .as_secs()
        .saturating_add(u64::from(checkpoint_interval.subsec_nanos() > 0))
        .saturating_add(KAFKA_COMMIT)
        .max(MINIMUM);
    i64::try_from(seconds).unwrap_or(i64::MAX)
}

pub(super) fn stateful_set(inputs: &BuildInputs<'_>, names: &ChildNames) -> StatefulSet {
    let job = inputs.job;
    let spec = &job.spec;
    let replicas = if spec.suspend { 0 } else { spec.parallelism };
    StatefulSet {
        metadata: child_meta(job, &names.workers),
        spec: StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(names.workers.clone()),
            // Workers are peers that own disjoint key groups: start them all at once.
            pod_management_policy: Some("Parallel".to_string()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&job_name(job))),
                ..LabelSelector::default()
            },
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    // A deleted job's state goes with it; a scaled-down worker's volume
                    // stays for when the job scales back up.
                    when_deleted: Some("Delete".to_string()),
                    when_scaled: Some("Retain".to_string()),
                },
            ),
            template: pod_template(inputs, names),
            volume_claim_templates: Some(vec![state_claim(inputs)]),
            ..StatefulSetSpec::default()
        },
        status: None,
    }
}

/// The pod template: the user's `podTemplate` merged under the controller's own labels and
/// annotations (ours win).
fn pod_template(inputs: &BuildInputs<'_>, names: &ChildNames) -> PodTemplateSpec {
    let job = inputs.job;
    let user = job.spec.pod_template.clone().unwrap_or_default();
    let mut labels = user.labels;
    labels.extend(child_labels(&job_name(job)));
    let mut annotations = user.annotations;
    annotations.extend([
        (
            SPEC_HASH_ANNOTATION.to_string(),
            inputs.spec_hash.to_string(),
        ),
        (
            "kubectl.kubernetes.io/default-container".to_string(),
            WORKER_CONTAINER.to_string(),
        ),
    ]);
    if let Some(nonce) = job.spec.restart_nonce {
        // A new value rolls the workers: they restart from their volumes.
        annotations.insert(RESTART_NONCE_ANNOTATION.to_string(), nonce.to_string());
    }
    let checkpoint_interval = job.spec.state.checkpoint_interval.get();
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(
                user.service_account_name
                    .unwrap_or_else(|| names.service_account.clone()),
            ),
            // The workers never call the Kubernetes API.
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(termination_grace_seconds(checkpoint_interval)),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(WORKER_USER),
                run_as_group: Some(WORKER_USER),
                fs_group: Some(WORKER_USER),
                fs_group_change_policy: Some("OnRootMismatch".to_string()),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_string(),
                    localhost_profile: None,
                }),
                ..PodSecurityContext::default()
            }),
            node_selector: (!user.node_selector.is_empty()).then_some(user.node_selector),
            tolerations: (!user.tolerations.is_empty()).then_some(user.tolerations),
            affinity: user.affinity,
            priority_class_name: user.priority_class_name,
            containers: vec![container(inputs)],
            volumes: Some(volumes(inputs, names)),
            ..PodSpec::default()
        }),
    }
}

fn container(inputs: &BuildInputs<'_>) -> Container {
    let job = inputs.job;
    let spec = &job.spec;
    let mut variables = vec![
        env("SLUICE_JOB", format!("{JOB_DIRECTORY}/{JOB_FILE}")),
        env(
            "SLUICE_NAMESPACE",
            job.metadata.namespace.clone().unwrap_or_default(),
        ),
        env("SLUICE_PARALLELISM", spec.parallelism.to_string()),
        env("SLUICE_STATE_DIR", STATE_DIRECTORY.to_string()),
        env("SLUICE_ADMIN_ADDRESS", format!("0.0.0.0:{ADMIN_PORT}")),
        env(
            "SLUICE_ADMIN_TOKEN_FILE",
            format!("{ADMIN_TOKEN_DIRECTORY}/{TOKEN_FILE}"),
        ),
        env("SLUICE_LOG_FORMAT", "json".to_string()),
        env("SLUICE_SPEC_HASH", inputs.spec_hash.to_string()),
    ];
    if let Some(savepoint) = &inputs.restore.savepoint {
        variables.push(env("SLUICE_RESTORE_FROM", savepoint.clone()));
    }
    if let Some(previous) = inputs.restore.previous_parallelism {
        variables.push(env("SLUICE_PREVIOUS_PARALLELISM", previous.to_string()));
    }
    if inputs.restore.savepoint.is_some() && inputs.restore.offsets_only {
        variables.push(env("SLUICE_RESTORE_OFFSETS_ONLY", "true".to_string()));
    }
    if let (Some(_), Some(epoch)) = (&inputs.restore.savepoint, inputs.restore.epoch) {
        variables.push(env("SLUICE_RESTORE_EPOCH", epoch.to_string()));
    }
    if spec.kafka.secret_ref.is_some() {
        variables.push(env_var_kafka());
    }
    let mut mounts = vec![
        mount("job", JOB_DIRECTORY, true),
        mount("admin-token", ADMIN_TOKEN_DIRECTORY, true),
        mount(STATE_VOLUME, STATE_DIRECTORY, false),
        // The root filesystem is read-only; libraries that want a scratch directory get one.
        mount("tmp", "/tmp", false),
    ];
    if spec.kafka.secret_ref.is_some() {
        mounts.push(mount("kafka-properties", KAFKA_PROPERTIES_DIRECTORY, true));
    }
    Container {
        name: WORKER_CONTAINER.to_string(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| inputs.defaults.image.clone()),
        ),
        image_pull_policy: spec.image_pull_policy.map(|policy| {
            match policy {
                ImagePullPolicy::Always => "Always",
                ImagePullPolicy::IfNotPresent => "IfNotPresent",
                ImagePullPolicy::Never => "Never",
            }
            .to_string()
        }),
        args: Some(vec!["run".to_string()]),
        env: Some(variables),
        ports: Some(vec![ContainerPort {
            name: Some("admin".to_string()),
            container_port: ADMIN_PORT,
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        }]),
        // Ready once state is restored and partitions are assigned (the worker's /readyz).
        readiness_probe: Some(probe("/readyz", 1, 3)),
        // Alive while the process serves its admin API; restarts a wedged worker.
        liveness_probe: Some(Probe {
            initial_delay_seconds: Some(10),
            ..probe("/healthz", 10, 6)
        }),
        resources: spec
            .resources
            .clone()
            .or_else(|| inputs.defaults.resources.clone()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        // The savepoint location's credentials (AWS_* for s3://), as environment variables.
        env_from: spec
            .savepoints
            .as_ref()
            .and_then(|savepoints| savepoints.secret_ref.as_ref())
            .map(|secret| {
                vec![EnvFromSource {
                    secret_ref: Some(SecretEnvSource {
                        name: secret.name.clone(),
                        optional: Some(false),
                    }),
                    ..EnvFromSource::default()
                }]
            }),
        ..Container::default()
    }
}

fn env_var_kafka() -> EnvVar {
    env(
        "SLUICE_KAFKA_PROPERTIES",
        KAFKA_PROPERTIES_DIRECTORY.to_string(),
    )
}

fn volumes(inputs: &BuildInputs<'_>, names: &ChildNames) -> Vec<Volume> {
    // Owner and group read only: the pod's fsGroup makes the worker's group own them.
    const READ_ONLY_MODE: i32 = 0o440;
    let mut volumes = vec![
        Volume {
            name: "job".to_string(),
            config_map: Some(ConfigMapVolumeSource {
                name: names.job_config.clone(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "admin-token".to_string(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(names.admin_token.clone()),
                default_mode: Some(READ_ONLY_MODE),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "tmp".to_string(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    if let Some(secret) = &inputs.job.spec.kafka.secret_ref {
        volumes.push(Volume {
            name: "kafka-properties".to_string(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.name.clone()),
                default_mode: Some(READ_ONLY_MODE),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    volumes
}

/// The RocksDB volume of each worker. Its labels are the selector labels only: claim
/// templates are immutable, so a version label would block upgrades or orphan volumes.
fn state_claim(inputs: &BuildInputs<'_>) -> PersistentVolumeClaim {
    let state = &inputs.job.spec.state;
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(STATE_VOLUME.to_string()),
            labels: Some(selector_labels(&job_name(inputs.job))),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_string()]),
            storage_class_name: inputs.storage_class_name.map(str::to_string),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    state.volume_size.clone(),
                )])),
                limits: None,
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

fn env(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value),
        value_from: None,
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

fn probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String("admin".to_string()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::api::core::v1::ResourceRequirements;
    use sluice_crds::StreamJob;

    use super::*;
    use crate::build::WorkerDefaults;
    use crate::fixtures;

    fn pod(job: &StreamJob) -> PodSpec {
        fixtures::children(job).workers.spec.template.spec.unwrap()
    }

    fn env_of(job: &StreamJob) -> BTreeMap<String, String> {
        pod(job).containers[0]
            .env
            .clone()
            .unwrap()
            .into_iter()
            .map(|var| (var.name, var.value.unwrap_or_default()))
            .collect()
    }

    #[test]
    fn replicas_follow_parallelism_and_suspend() {
        struct Case {
            name: &'static str,
            parallelism: i32,
            suspend: bool,
            expect_replicas: i32,
        }
        let cases = [
            Case {
                name: "running",
                parallelism: 3,
                suspend: false,
                expect_replicas: 3,
            },
            Case {
                name: "suspended keeps the volumes, runs nothing",
                parallelism: 3,
                suspend: true,
                expect_replicas: 0,
            },
        ];
        for case in cases {
            let mut job = fixtures::job();
            job.spec.parallelism = case.parallelism;
            job.spec.suspend = case.suspend;
            let set = fixtures::children(&job).workers.spec;
            assert_eq!(set.replicas, Some(case.expect_replicas), "{}", case.name);
            assert_eq!(
                env_of(&job)["SLUICE_PARALLELISM"],
                case.parallelism.to_string(),
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn the_restore_settings_become_the_workers_restore_variables() {
        use crate::lifecycle::Restore;
        let savepoint = Some("s3://b/shop/page-views/upgrade-3-9-1".to_string());
        let cases = [
            ("no restore", Restore::default(), [None, None, None, None]),
            (
                "an upgrade's",
                Restore {
                    savepoint: savepoint.clone(),
                    previous_parallelism: Some(2),
                    ..Restore::default()
                },
                [
                    Some("s3://b/shop/page-views/upgrade-3-9-1"),
                    Some("2"),
                    None,
                    None,
                ],
            ),
            (
                "a Stateless upgrade's",
                Restore {
                    savepoint: savepoint.clone(),
                    previous_parallelism: Some(2),
                    offsets_only: true,
                    epoch: None,
                },
                [
                    Some("s3://b/shop/page-views/upgrade-3-9-1"),
                    Some("2"),
                    Some("true"),
                    None,
                ],
            ),
            (
                "a rollback's: a new epoch",
                Restore {
                    savepoint: savepoint.clone(),
                    previous_parallelism: Some(2),
                    offsets_only: false,
                    epoch: Some(3),
                },
                [
                    Some("s3://b/shop/page-views/upgrade-3-9-1"),
                    Some("2"),
                    None,
                    Some("3"),
                ],
            ),
            (
                "no epoch without a savepoint",
                Restore {
                    epoch: Some(3),
                    ..Restore::default()
                },
                [None, None, None, None],
            ),
        ];
        let names = [
            "SLUICE_RESTORE_FROM",
            "SLUICE_PREVIOUS_PARALLELISM",
            "SLUICE_RESTORE_OFFSETS_ONLY",
            "SLUICE_RESTORE_EPOCH",
        ];
        for (name, restore, expect) in cases {
            let job = fixtures::job();
            let checked = fixtures::checked(&job);
            let children = crate::build::build(&crate::build::BuildInputs {
                job: &job,
                checked: &checked,
                defaults: &fixtures::worker_defaults(),
                storage_class_name: None,
                admin_token: fixtures::TOKEN,
                spec_hash: fixtures::SPEC_HASH,
                restore: &restore,
            });
            let env: BTreeMap<String, String> =
                children.workers.spec.template.spec.unwrap().containers[0]
                    .env
                    .clone()
                    .unwrap()
                    .into_iter()
                    .map(|var| (var.name, var.value.unwrap_or_default()))
                    .collect();
            for (variable, expected) in names.iter().zip(expect) {
                assert_eq!(
                    env.get(*variable).map(String::as_str),
                    expected,
                    "{name}: {variable}"
                );
            }
        }
    }

    #[test]
    fn worker_environment_is_what_sluice_worker_run_reads() {
        struct Case {
            name: &'static str,
            secret: Option<&'static str>,
            expect: &'static [(&'static str, Option<&'static str>)],
        }
        let cases = [
            Case {
                name: "no Kafka secret",
                secret: None,
                expect: &[
                    ("SLUICE_JOB", Some("/etc/sluice/job/streamjob.yaml")),
                    ("SLUICE_NAMESPACE", Some(fixtures::NAMESPACE)),
                    ("SLUICE_STATE_DIR", Some("/var/lib/sluice")),
                    ("SLUICE_ADMIN_ADDRESS", Some("0.0.0.0:8080")),
                    ("SLUICE_ADMIN_TOKEN_FILE", Some("/etc/sluice/admin/token")),
                    ("SLUICE_KAFKA_PROPERTIES", None),
                    ("SLUICE_ORDINAL", None),
                ],
            },
            Case {
                name: "Kafka secret mounted as properties",
                secret: Some("kafka-credentials"),
                expect: &[("SLUICE_KAFKA_PROPERTIES", Some("/etc/sluice/kafka"))],
            },
        ];
        for case in cases {
            let mut job = fixtures::job();
            job.spec.kafka.secret_ref =
                case.secret
                    .map(|name| sluice_crds::streamjob::SecretReference {
                        name: name.to_string(),
                    });
            let env = env_of(&job);
            for (name, value) in case.expect {
                assert_eq!(
                    env.get(*name).map(String::as_str),
                    *value,
                    "{}: {name}",
                    case.name
                );
            }
            let volumes = pod(&job).volumes.unwrap();
            let kafka = volumes
                .iter()
                .find(|volume| volume.name == "kafka-properties");
            assert_eq!(
                kafka.and_then(|volume| volume.secret.clone()?.secret_name),
                case.secret.map(String::from),
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn pods_are_locked_down() {
        let pod = pod(&fixtures::job());
        let security = pod.security_context.unwrap();
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(security.seccomp_profile.unwrap().type_, "RuntimeDefault");
        assert_eq!(pod.automount_service_account_token, Some(false));
        let container = &pod.containers[0];
        let security = container.security_context.clone().unwrap();
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.capabilities.unwrap().drop.unwrap(), ["ALL"]);
        let readiness = container.readiness_probe.clone().unwrap().http_get.unwrap();
        assert_eq!(readiness.path.as_deref(), Some("/readyz"));
        let liveness = container.liveness_probe.clone().unwrap().http_get.unwrap();
        assert_eq!(liveness.path.as_deref(), Some("/healthz"));
    }

    #[test]
    fn image_comes_from_the_spec_else_the_controller() {
        struct Case {
            name: &'static str,
            image: Option<&'static str>,
            expect: &'static str,
        }
        let cases = [
            Case {
                name: "default: the controller's version's image",
                image: None,
                expect: fixtures::DEFAULT_IMAGE,
            },
            Case {
                name: "spec.image wins",
                image: Some("example/worker:2"),
                expect: "example/worker:2",
            },
        ];
        for case in cases {
            let mut job = fixtures::job();
            job.spec.image = case.image.map(String::from);
            assert_eq!(
                pod(&job).containers[0].image.as_deref(),
                Some(case.expect),
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn pod_template_is_merged_with_the_controllers_labels_winning() {
        let mut job = fixtures::job();
        job.spec.pod_template = Some(sluice_crds::streamjob::PodTemplate {
            labels: BTreeMap::from([
                ("team".to_string(), "web".to_string()),
                ("sluice.dev/job".to_string(), "spoofed".to_string()),
            ]),
            annotations: BTreeMap::from([
                ("prometheus.io/scrape".to_string(), "true".to_string()),
                (SPEC_HASH_ANNOTATION.to_string(), "spoofed".to_string()),
            ]),
            node_selector: BTreeMap::from([("disk".to_string(), "ssd".to_string())]),
            priority_class_name: Some("streaming".to_string()),
            ..Default::default()
        });
        let template = fixtures::children(&job).workers.spec.template;
        let meta = template.metadata.unwrap();
        let labels = meta.labels.unwrap();
        assert_eq!(labels["team"], "web");
        assert_eq!(labels["sluice.dev/job"], "page-views");
        let annotations = meta.annotations.unwrap();
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        assert_eq!(annotations[SPEC_HASH_ANNOTATION], fixtures::SPEC_HASH);
        let pod = template.spec.unwrap();
        assert_eq!(pod.node_selector.unwrap()["disk"], "ssd");
        assert_eq!(pod.priority_class_name.as_deref(), Some("streaming"));
    }

    /// The controller's worker defaults fill in what the spec leaves unset, never more.
    #[test]
    fn worker_defaults_fill_in_what_the_spec_leaves_unset() {
        let resources = |cpu: &str| -> ResourceRequirements {
            serde_json::from_value(serde_json::json!({"requests": {"cpu": cpu}})).unwrap()
        };
        let defaults = WorkerDefaults {
            image: "registry/sluice-worker:default".to_string(),
            resources: Some(resources("250m")),
            storage_class_name: Some("standard".to_string()),
        };
        let build_with = |job: &StreamJob, storage_class_name: Option<&str>| {
            let checked = fixtures::checked(job);
            crate::build::build(&BuildInputs {
                job,
                checked: &checked,
                defaults: &defaults,
                storage_class_name,
                admin_token: fixtures::TOKEN,
                spec_hash: fixtures::SPEC_HASH,
                restore: &crate::lifecycle::Restore::default(),
            })
            .workers
            .spec
        };
        // (case, spec.image, spec.resources cpu, expected image, expected cpu)
        let cases = [
            (
                "all defaults",
                None,
                None,
                "registry/sluice-worker:default",
                "250m",
            ),
            ("the spec's image", Some("mine:1"), None, "mine:1", "250m"),
            (
                "the spec's resources",
                None,
                Some("2"),
                "registry/sluice-worker:default",
                "2",
            ),
        ];
        for (case, image, cpu, expected_image, expected_cpu) in cases {
            let mut job = fixtures::job();
            job.spec.image = image.map(str::to_string);
            job.spec.resources = cpu.map(resources);
            let set = build_with(&job, Some("standard"));
            let container = &set.template.spec.unwrap().containers[0];
            assert_eq!(container.image.as_deref(), Some(expected_image), "{case}");
            let requests = container.resources.clone().unwrap().requests.unwrap();
            assert_eq!(requests["cpu"].0, expected_cpu, "{case}");
        }
        let job = fixtures::job();
        let claim = &build_with(&job, Some("standard"))
            .volume_claim_templates
            .unwrap()[0];
        assert_eq!(
            claim.spec.as_ref().unwrap().storage_class_name.as_deref(),
            Some("standard")
        );
    }

    /// (spec, the existing workers' class, the controller's default) → the class.
    #[test]
    fn the_storage_class_is_the_specs_else_the_existing_volumes_else_the_default() {
        use crate::build::storage_class;
        let cases = [
            (
                "the spec's wins",
                Some("fast"),
                Some(Some("slow")),
                Some("standard"),
                Some("fast"),
            ),
            (
                "a new job takes the default",
                None,
                None,
                Some("standard"),
                Some("standard"),
            ),
            ("no default: the cluster's", None, None, None, None),
            (
                "existing volumes keep theirs",
                None,
                Some(Some("slow")),
                Some("standard"),
                Some("slow"),
            ),
            (
                "existing volumes made with the cluster's default keep it",
                None,
                Some(None),
                Some("standard"),
                None,
            ),
        ];
        for (case, spec, existing, default, expected) in cases {
            assert_eq!(storage_class(spec, existing, default), expected, "{case}");
        }
        // What the cache keeps of a StatefulSet is enough to tell.
        let mut job = fixtures::job();
        job.spec.state.storage_class_name = Some("slow".to_string());
        let workers = crate::cache::Cached::cached_copy(&fixtures::children(&job).workers);
        assert_eq!(crate::build::claim_storage_class(&workers), Some("slow"));
    }

    #[test]
    fn state_volumes_carry_no_version_and_follow_the_spec() {
        let mut job = fixtures::job();
        job.spec.state.storage_class_name = Some("fast".to_string());
        let set = fixtures::children(&job).workers.spec;
        let claim = &set.volume_claim_templates.unwrap()[0];
        let labels = claim.metadata.labels.clone().unwrap();
        assert!(!labels.contains_key("app.kubernetes.io/version"));
        assert_eq!(labels, selector_labels("page-views"));
        let claim_spec = claim.spec.clone().unwrap();
        assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            claim_spec.resources.unwrap().requests.unwrap()["storage"].0,
            "1Gi"
        );
        let retention = set.persistent_volume_claim_retention_policy.unwrap();
        assert_eq!(retention.when_scaled.as_deref(), Some("Retain"));
    }

    #[test]
    fn grace_period_covers_a_checkpoint_and_a_commit() {
        let cases = [
            (Duration::from_millis(200), 60),
            (Duration::from_secs(10), 60),
            (Duration::from_secs(45), 75),
            (Duration::from_millis(45_500), 76),
        ];
        for (interval, expect) in cases {
            assert_eq!(termination_grace_seconds(interval), expect, "{interval:?}");
        }
    }
}
