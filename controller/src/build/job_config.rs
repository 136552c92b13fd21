//! The ConfigMap with the manifest the workers run (`sluice-worker run` reads it from
//! `SLUICE_JOB`): the StreamJob's apiVersion, kind, name, namespace and spec.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ObjectMeta;
use sluice_crds::StreamJob;

use super::{BuildInputs, child_meta};
use crate::names::{ChildNames, JOB_FILE};

pub(super) fn job_config(inputs: &BuildInputs<'_>, names: &ChildNames) -> ConfigMap {
    ConfigMap {
        metadata: child_meta(inputs.job, &names.job_config),
        data: Some(BTreeMap::from([(
            JOB_FILE.to_string(),
            manifest(inputs.job),
        )])),
        ..ConfigMap::default()
    }
}

/// The manifest as the worker reads it: only what identifies the job, and the spec.
pub fn manifest(job: &StreamJob) -> String {
    let mut bare = StreamJob::new(&super::job_name(job), job.spec.clone());
    bare.metadata = ObjectMeta {
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        ..ObjectMeta::default()
    };
    serde_yaml_ng::to_string(&bare).expect("a StreamJob always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn the_manifest_is_what_the_worker_loads() {
        let job = fixtures::job();
        let children = fixtures::children(&job);
        let text = &children.job_config.data.unwrap()[JOB_FILE];
        let (loaded, checked) = sluice_crds::load_manifest(text).unwrap();
        assert_eq!(loaded.metadata.name.as_deref(), Some("page-views"));
        assert_eq!(
            loaded.metadata.namespace.as_deref(),
            Some(fixtures::NAMESPACE)
        );
        assert_eq!(loaded.spec, job.spec);
        assert_eq!(checked, fixtures::checked(&job));
        assert!(!text.contains("uid"), "{text}");
        assert!(!text.contains("\nstatus:"), "{text}");
    }
}
