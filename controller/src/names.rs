//! The names and labels of a StreamJob's children: one place, so the builders, the
//! reconciler, the docs and `kubectl get -l` agree.

use std::collections::BTreeMap;

/// The field manager of every server-side apply the controller makes.
pub const FIELD_MANAGER: &str = "sluice-controller";
/// The finalizer that holds a deleted StreamJob until its final savepoint is taken
/// (`spec.savepoints.onDelete`).
pub const FINAL_SAVEPOINT_FINALIZER: &str = "sluice.dev/final-savepoint";

/// Label: the StreamJob a child belongs to.
pub const JOB_LABEL: &str = "sluice.dev/job";
/// Annotation on the worker pods: the spec hash they run (a change restarts them).
pub const SPEC_HASH_ANNOTATION: &str = "sluice.dev/spec-hash";
/// The worker pods' annotation with `spec.restartNonce`: a new value rolls them.
pub const RESTART_NONCE_ANNOTATION: &str = "sluice.dev/restart-nonce";

/// Annotation on every child: the hash of the object as the controller built it, so a
/// reconcile skips the apply of a child the watches show is already that (see `cache`).
pub const APPLIED_HASH_ANNOTATION: &str = "sluice.dev/applied-hash";

/// The key of the manifest in the job ConfigMap, and its file name in the pod.
pub const JOB_FILE: &str = "streamjob.yaml";
/// The key of the token in the admin-token Secret, and its file name in the pod.
pub const TOKEN_FILE: &str = "token";
/// Where the pod mounts the job ConfigMap.
pub const JOB_DIRECTORY: &str = "/etc/sluice/job";
/// Where the pod mounts the Secret of `spec.kafka.secretRef`.
pub const KAFKA_PROPERTIES_DIRECTORY: &str = "/etc/sluice/kafka";
/// Where the pod mounts the admin-token Secret.
pub const ADMIN_TOKEN_DIRECTORY: &str = "/etc/sluice/admin";
/// Where the state volume is mounted (the worker's `--state-dir` default).
pub const STATE_DIRECTORY: &str = "/var/lib/sluice";
/// The port of the worker's admin API (health, readiness, metrics).
pub const ADMIN_PORT: i32 = 8080;
/// The name of the state volume claim template: PVCs are `state-<job>-<ordinal>`.
pub const STATE_VOLUME: &str = "state";
/// The worker container's name.
pub const WORKER_CONTAINER: &str = "worker";

/// The names of one StreamJob's children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildNames {
    /// The StatefulSet, its headless Service and its PodDisruptionBudget: the job's name,
    /// so pods are `<job>-<ordinal>` and the worker reads its ordinal from its host name.
    pub workers: String,
    /// The ConfigMap holding the manifest the workers run.
    pub job_config: String,
    /// The Secret holding the workers' admin-API token.
    pub admin_token: String,
    /// The ServiceAccount the workers run as (no API rights).
    pub service_account: String,
}

impl ChildNames {
    /// The names for the StreamJob `job`.
    pub fn of(job: &str) -> Self {
        Self {
            workers: job.to_string(),
            job_config: format!("{job}-job"),
            admin_token: format!("{job}-admin-token"),
            service_account: format!("{job}-worker"),
        }
    }
}

/// The labels that select a job's worker pods: stable for the job's life (a StatefulSet's
/// selector is immutable), so they carry no version.
pub fn selector_labels(job: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "sluice-worker".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), job.to_string()),
        (JOB_LABEL.to_string(), job.to_string()),
    ])
}

/// The labels of every child, and of the worker pods. PVC templates get
/// [`selector_labels`] only: volumeClaimTemplates are immutable, so a label with the
/// version would make an upgrade impossible or orphan the volumes.
pub fn child_labels(job: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(job);
    labels.extend([
        (
            "app.kubernetes.io/component".to_string(),
            "worker".to_string(),
        ),
        (
            "app.kubernetes.io/part-of".to_string(),
            "sluice".to_string(),
        ),
        (
            "app.kubernetes.io/managed-by".to_string(),
            FIELD_MANAGER.to_string(),
        ),
        (
            "app.kubernetes.io/version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
    ]);
    labels
}

/// The label selector of every child the controller manages (its watches use it).
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=sluice-controller";

/// `selector_labels` as a label selector string (`status.selector`, for the scale
/// subresource and HPAs).
pub fn selector_string(job: &str) -> String {
    selector_labels(job)
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_are_named_after_the_job() {
        let names = ChildNames::of("page-views");
        assert_eq!(names.workers, "page-views");
        assert_eq!(names.job_config, "page-views-job");
        assert_eq!(names.admin_token, "page-views-admin-token");
        assert_eq!(names.service_account, "page-views-worker");
    }

    #[test]
    fn selector_has_no_version_and_children_do() {
        assert!(!selector_labels("x").contains_key("app.kubernetes.io/version"));
        assert!(child_labels("x").contains_key("app.kubernetes.io/version"));
        assert_eq!(
            selector_string("x"),
            "app.kubernetes.io/instance=x,app.kubernetes.io/name=sluice-worker,sluice.dev/job=x"
        );
    }
}
