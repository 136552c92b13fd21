//! The workers' identity: a ServiceAccount with no API rights (no Role is bound to it and
//! its token is not mounted), and the Secret holding the admin-API token.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};

use super::{BuildInputs, child_meta};
use crate::names::{ChildNames, TOKEN_FILE};

/// The workers' ServiceAccount, unless the pod template names another.
pub(super) fn service_account(
    inputs: &BuildInputs<'_>,
    names: &ChildNames,
) -> Option<ServiceAccount> {
    let custom = inputs
        .job
        .spec
        .pod_template
        .as_ref()
        .and_then(|template| template.service_account_name.as_ref());
    match custom {
        Some(_) => None,
        None => Some(ServiceAccount {
            metadata: child_meta(inputs.job, &names.service_account),
            automount_service_account_token: Some(false),
            ..ServiceAccount::default()
        }),
    }
}

/// The Secret with the admin-API token the workers will require on their savepoint
/// endpoints (mounted at `/etc/sluice/admin/token`).
pub(super) fn admin_token(inputs: &BuildInputs<'_>, names: &ChildNames) -> Secret {
    Secret {
        metadata: child_meta(inputs.job, &names.admin_token),
        type_: Some("Opaque".to_string()),
        data: Some(BTreeMap::from([(
            TOKEN_FILE.to_string(),
            ByteString(inputs.admin_token.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}
