//! The headless Service that gives each worker a stable DNS name and exposes the admin
//! port, and the PodDisruptionBudget that lets voluntary disruptions (drains) take one
//! worker at a time.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{BuildInputs, child_meta, job_name};
use crate::names::{ADMIN_PORT, ChildNames, selector_labels};

pub(super) fn service(inputs: &BuildInputs<'_>, names: &ChildNames) -> Service {
    Service {
        metadata: child_meta(inputs.job, &names.workers),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            selector: Some(selector_labels(&job_name(inputs.job))),
            // Workers are peers: a starting worker is addressable before it is ready.
            publish_not_ready_addresses: Some(true),
            ports: Some(vec![ServicePort {
                name: Some("admin".to_string()),
                port: ADMIN_PORT,
                target_port: Some(IntOrString::String("admin".to_string())),
                protocol: Some("TCP".to_string()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

pub(super) fn disruption_budget(
    inputs: &BuildInputs<'_>,
    names: &ChildNames,
) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: child_meta(inputs.job, &names.workers),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&job_name(inputs.job))),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn service_is_headless_and_selects_the_workers() {
        let children = fixtures::children(&fixtures::job());
        let spec = children.service.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.selector.unwrap(), selector_labels("page-views"));
        let budget = children.disruption_budget.spec.unwrap();
        assert_eq!(budget.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(
            budget.selector.unwrap().match_labels.unwrap(),
            selector_labels("page-views")
        );
    }
}
