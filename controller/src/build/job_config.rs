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

/// The manifest as the worker reads it: only what identifies the job, and the spec. As
/// JSON (which is YAML): the worker reads manifests as kubectl does, with YAML 1.1's
/// scalars, where an unquoted key such as `n` (an aggregate's name) is a boolean;
/// JSON quotes every key and string.
pub fn manifest(job: &StreamJob) -> String {
    let mut bare = StreamJob::new(&super::job_name(job), job.spec.clone());
    bare.metadata = ObjectMeta {
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        ..ObjectMeta::default()
    };
    serde_json::to_string_pretty(&bare).expect("a StreamJob always serializes")
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
        assert!(!text.contains("\"status\""), "{text}");
    }

    #[test]
    fn names_yaml_would_read_as_booleans_survive() {
        let mut job = fixtures::job();
        let mut spec = serde_json::to_value(&job.spec).unwrap();
        let aggregate = spec["pipeline"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|step| step.get("aggregate").is_some())
            .unwrap();
        aggregate["aggregate"] =
            serde_json::json!({"n": {"function": "Count"}, "y": {"function": "Count"}});
        job.spec = serde_json::from_value(spec).unwrap();
        let children = fixtures::children(&job);
        let (loaded, _) =
            sluice_crds::load_manifest(&children.job_config.data.unwrap()[JOB_FILE]).unwrap();
        assert_eq!(loaded.spec, job.spec);
    }
}
