//! The controller's errors. Messages are lowercase and say what failed ("failed to …" when
//! the reconcile cannot go on, "unable to …" when it will retry); each error has a kind
//! that labels the failure metric and becomes the reason of the Kubernetes Event.

/// What kind of failure an error is: a metric label and an event reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// The StreamJob is invalid in a way the API server could not see.
    InvalidSpec,
    /// A call to the Kubernetes API failed.
    KubernetesApi,
    /// A referenced object (a Secret) does not exist.
    MissingReference,
    /// The new spec cannot take over the running job's state (docs/lifecycle.md).
    IncompatibleState,
    /// The change needs a savepoint and the job has no `spec.savepoints.location`.
    NoSavepointLocation,
    /// The spec was rolled back automatically (its workers were not Ready in time); it
    /// is not tried again until it changes.
    RolledBack,
}

impl ErrorKind {
    /// The label value, as in metrics and event reasons.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidSpec => "InvalidSpec",
            Self::KubernetesApi => "KubernetesApi",
            Self::MissingReference => "MissingReference",
            Self::IncompatibleState => "IncompatibleState",
            Self::NoSavepointLocation => "NoSavepointLocation",
            Self::RolledBack => "RolledBack",
        }
    }

    /// Whether only a change by the user can fix it (kstatus `Stalled`), as opposed to a
    /// failure that a retry may get past.
    pub fn stalls(self) -> bool {
        match self {
            Self::InvalidSpec
            | Self::MissingReference
            | Self::IncompatibleState
            | Self::NoSavepointLocation
            | Self::RolledBack => true,
            Self::KubernetesApi => false,
        }
    }
}

/// A failure of the controller, with its context.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec failed `sluice_crds::validate` (or a rule of the controller's own, such as
    /// the length of the name).
    #[error("failed to validate StreamJob {name}: {source}")]
    InvalidSpec {
        /// The StreamJob.
        name: String,
        /// What is wrong.
        source: sluice_crds::ValidationErrors,
    },
    /// A Kubernetes API call failed.
    #[error("unable to {action}: {source}")]
    KubernetesApi {
        /// What was attempted, for example "apply StatefulSet page-views".
        action: String,
        /// The client's error.
        source: kube::Error,
    },
    /// A referenced object is missing.
    #[error("unable to find {kind} {name} that {field} refers to: create it, or fix {field}")]
    MissingReference {
        /// The kind of object.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The field that names it.
        field: &'static str,
    },
    /// A change the controller will not carry out as the spec asks; the workers keep
    /// running the spec they run.
    #[error("refused the change to StreamJob {name}: {message}")]
    ChangeRefused {
        /// The StreamJob.
        name: String,
        /// `IncompatibleState` or `NoSavepointLocation`.
        kind: ErrorKind,
        /// Why, and the fix.
        message: String,
    },
}

impl Error {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidSpec { .. } => ErrorKind::InvalidSpec,
            Self::KubernetesApi { .. } => ErrorKind::KubernetesApi,
            Self::MissingReference { .. } => ErrorKind::MissingReference,
            Self::ChangeRefused { kind, .. } => *kind,
        }
    }

    /// What the user reads in the `Stalled` condition: each field and its fix, one per
    /// line, without the job's name (the condition is on the job).
    pub fn user_message(&self) -> String {
        match self {
            Self::InvalidSpec { source, .. } => source
                .errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
            Self::ChangeRefused { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }

    /// Wraps a client error with what was attempted.
    pub fn api(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let action = action.into();
        move |source| Self::KubernetesApi { action, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_object_and_the_fix() {
        let error = Error::MissingReference {
            kind: "Secret",
            name: "kafka-credentials".into(),
            field: "spec.kafka.secretRef",
        };
        assert_eq!(
            error.to_string(),
            "unable to find Secret kafka-credentials that spec.kafka.secretRef refers to: create it, or fix spec.kafka.secretRef"
        );
        assert_eq!(error.kind().as_str(), "MissingReference");
        assert!(error.kind().stalls());
    }

    #[test]
    fn invalid_spec_lists_each_field_and_its_fix() {
        let error = Error::InvalidSpec {
            name: "x".into(),
            source: sluice_crds::ValidationErrors {
                errors: vec![
                    sluice_crds::validate::FieldError {
                        field: "spec.pipeline[0].filter".into(),
                        message: "must give a bool".into(),
                    },
                    sluice_crds::validate::FieldError {
                        field: "metadata.name".into(),
                        message: "too long".into(),
                    },
                ],
            },
        };
        assert_eq!(
            error.user_message(),
            "spec.pipeline[0].filter: must give a bool; metadata.name: too long"
        );
        assert!(!ErrorKind::KubernetesApi.stalls());
    }
}
