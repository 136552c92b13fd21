//! The build phase: every Kubernetes object of a StreamJob, from the checked job and what
//! the reconciler read. Pure and infallible, so each builder is tested as a table of cases
//! with no cluster; the reconciler applies what comes out, the StatefulSet last.

mod access;
mod job_config;
mod network;
mod workers;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, ResourceRequirements, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use sluice_crds::{CheckedJob, StreamJob};

pub use workers::termination_grace_seconds;

use crate::lifecycle::Restore;
use crate::names::{ChildNames, STATE_VOLUME, child_labels};

/// What the build phase needs besides the job: the outputs of the dereference phase and
/// the controller's settings.
#[derive(Clone, Debug)]
pub struct BuildInputs<'a> {
    /// The StreamJob (name, namespace, uid, spec).
    pub job: &'a StreamJob,
    /// Its checked form.
    pub checked: &'a CheckedJob,
    /// What the controller fills in where the spec leaves a worker setting unset.
    pub defaults: &'a WorkerDefaults,
    /// The storage class of the workers' volumes (see [`storage_class`]).
    pub storage_class_name: Option<&'a str>,
    /// The workers' admin-API token (kept from the existing Secret, else new).
    pub admin_token: &'a str,
    /// The spec hash (see `spec_hash`).
    pub spec_hash: &'a str,
    /// The savepoint the workers start from (decided by the lifecycle).
    pub restore: &'a Restore,
}

/// Worker settings the controller fills in where a StreamJob leaves them unset (its
/// `--worker-*` flags, which the chart sets from its values).
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerDefaults {
    /// The image of jobs without `spec.image`.
    pub image: String,
    /// The resources of jobs without `spec.resources`.
    pub resources: Option<ResourceRequirements>,
    /// The storage class of new jobs' volumes without `spec.state.storageClassName`.
    pub storage_class_name: Option<String>,
}

/// The storage class of a job's volumes: the spec's; else, once the workers exist, the
/// one their volumes were made with (`existing`: the StatefulSet's claim template, whose
/// class is immutable, so a default changed since must not touch it); else the
/// controller's default. `None`: the cluster's default class.
pub fn storage_class<'a>(
    spec: Option<&'a str>,
    existing: Option<Option<&'a str>>,
    default: Option<&'a str>,
) -> Option<&'a str> {
    match (spec, existing) {
        (Some(spec), _) => Some(spec),
        (None, Some(existing)) => existing,
        (None, None) => default,
    }
}

/// The storage class of the state volumes of existing workers (`None`: the cluster's
/// default class).
pub fn claim_storage_class(workers: &StatefulSet) -> Option<&str> {
    workers
        .spec
        .volume_claim_templates
        .as_ref()?
        .iter()
        .find(|claim| claim.metadata.name.as_deref() == Some(STATE_VOLUME))?
        .spec
        .as_ref()?
        .storage_class_name
        .as_deref()
}

/// Every object the controller owns for one StreamJob, in the order they are applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    /// The workers' ServiceAccount; `None` when `podTemplate.serviceAccountName` names
    /// another one (then ours is an orphan and is deleted).
    pub service_account: Option<ServiceAccount>,
    /// The admin-API token.
    pub admin_token: Secret,
    /// The manifest the workers run.
    pub job_config: ConfigMap,
    /// The headless Service of the workers (stable DNS names, admin port).
    pub service: Service,
    /// At most one worker down at a time for voluntary disruptions.
    pub disruption_budget: PodDisruptionBudget,
    /// The workers. Applied last, so pods start once, with everything they mount present.
    pub workers: StatefulSet,
}

/// A child the build did not produce this time: the orphans phase deletes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Orphan {
    /// The controller's ServiceAccount, replaced by `podTemplate.serviceAccountName`.
    ServiceAccount(String),
}

impl Children {
    /// The children that exist only in some configurations and are absent now.
    pub fn orphans(&self, names: &ChildNames) -> Vec<Orphan> {
        match self.service_account {
            Some(_) => Vec::new(),
            None => vec![Orphan::ServiceAccount(names.service_account.clone())],
        }
    }
}

/// Builds every child of the job.
pub fn build(inputs: &BuildInputs<'_>) -> Children {
    let names = ChildNames::of(&job_name(inputs.job));
    Children {
        service_account: access::service_account(inputs, &names),
        admin_token: access::admin_token(inputs, &names),
        job_config: job_config::job_config(inputs, &names),
        service: network::service(inputs, &names),
        disruption_budget: network::disruption_budget(inputs, &names),
        workers: workers::stateful_set(inputs, &names),
    }
}

/// The job's name (the API server guarantees one).
pub(crate) fn job_name(job: &StreamJob) -> String {
    job.metadata.name.clone().unwrap_or_default()
}

/// The metadata of a child: its name, the job's namespace, the controller's labels, and
/// the job as controlling owner, so deleting the job deletes it (garbage collection).
pub(crate) fn child_meta(job: &StreamJob, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: job.metadata.namespace.clone(),
        labels: Some(child_labels(&job_name(job))),
        owner_references: Some(vec![owner_reference(job)]),
        ..ObjectMeta::default()
    }
}

fn owner_reference(job: &StreamJob) -> OwnerReference {
    OwnerReference {
        api_version: StreamJob::api_version(&()).into_owned(),
        kind: StreamJob::kind(&()).into_owned(),
        name: job_name(job),
        uid: job.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn every_child_is_owned_by_the_job_and_labelled() {
        let job = fixtures::job();
        let children = fixtures::children(&job);
        let metas = [
            &children.service_account.as_ref().unwrap().metadata,
            &children.admin_token.metadata,
            &children.job_config.metadata,
            &children.service.metadata,
            &children.disruption_budget.metadata,
            &children.workers.metadata,
        ];
        for meta in metas {
            let owner = &meta.owner_references.as_ref().unwrap()[0];
            assert_eq!(owner.kind, "StreamJob");
            assert_eq!(owner.uid, fixtures::UID);
            assert_eq!(owner.controller, Some(true));
            assert_eq!(meta.namespace.as_deref(), Some(fixtures::NAMESPACE));
            let labels = meta.labels.as_ref().unwrap();
            assert_eq!(labels["sluice.dev/job"], "page-views");
            assert_eq!(labels["app.kubernetes.io/managed-by"], "sluice-controller");
        }
    }

    #[test]
    fn our_service_account_is_an_orphan_when_the_pod_template_names_another() {
        struct Case {
            name: &'static str,
            service_account_name: Option<&'static str>,
            expect_ours: bool,
        }
        let cases = [
            Case {
                name: "unset: the controller's own",
                service_account_name: None,
                expect_ours: true,
            },
            Case {
                name: "set: the user's, ours deleted",
                service_account_name: Some("custom"),
                expect_ours: false,
            },
        ];
        for case in cases {
            let mut job = fixtures::job();
            job.spec.pod_template = Some(sluice_crds::streamjob::PodTemplate {
                service_account_name: case.service_account_name.map(String::from),
                ..Default::default()
            });
            let children = fixtures::children(&job);
            let names = ChildNames::of("page-views");
            assert_eq!(
                children.service_account.is_some(),
                case.expect_ours,
                "{}",
                case.name
            );
            let pod = children.workers.spec.template.spec.clone().unwrap();
            assert_eq!(
                pod.service_account_name.as_deref(),
                Some(case.service_account_name.unwrap_or("page-views-worker")),
                "{}",
                case.name
            );
            assert_eq!(
                children.orphans(&names).is_empty(),
                case.expect_ours,
                "{}",
                case.name
            );
        }
    }
}
