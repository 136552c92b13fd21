//! Test fixtures: the page-views example as a StreamJob the API server would hand over.

use sluice_crds::{CheckedJob, StreamJob, StreamJobSpec};

use crate::build::{BuildInputs, Children, WorkerDefaults, build};

pub const NAMESPACE: &str = "shop";
pub const UID: &str = "7c1f4d3e-0000-4000-8000-000000000001";
pub const DEFAULT_IMAGE: &str = "ghcr.io/sluice-dev/sluice-worker:0.1.0";
pub const TOKEN: &str = "0123456789abcdef";
pub const SPEC_HASH: &str = "feedfacecafebeef";

/// The page-views example, in namespace `shop`, generation 1, no status.
pub fn job() -> StreamJob {
    let text = include_str!("../../examples/page-views/streamjob.yaml");
    let mut job: StreamJob = serde_yaml_ng::from_str(text).unwrap();
    job.metadata.namespace = Some(NAMESPACE.to_string());
    job.metadata.uid = Some(UID.to_string());
    job.metadata.generation = Some(1);
    job.metadata.resource_version = Some("100".to_string());
    job
}

pub fn spec() -> StreamJobSpec {
    job().spec
}

pub fn checked(job: &StreamJob) -> CheckedJob {
    sluice_crds::validate(&job.spec).unwrap()
}

/// The controller's worker defaults in the fixtures: the image above, nothing else.
pub fn worker_defaults() -> WorkerDefaults {
    WorkerDefaults {
        image: DEFAULT_IMAGE.to_string(),
        resources: None,
        storage_class_name: None,
    }
}

/// Every child of `job`, built with the fixed token, image and hash above.
pub fn children(job: &StreamJob) -> Children {
    let checked = checked(job);
    build(&BuildInputs {
        job,
        checked: &checked,
        defaults: &worker_defaults(),
        storage_class_name: job.spec.state.storage_class_name.as_deref(),
        admin_token: TOKEN,
        spec_hash: SPEC_HASH,
        restore: &crate::lifecycle::Restore::default(),
    })
}
