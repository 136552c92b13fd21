//! The reconciler: one StreamJob, in named phases.
//!
//! dereference (reads: the Secret it names, the admin token) → validate (pure:
//! `sluice_crds::validate` and the controller's own rules) → build (pure, infallible:
//! every child) → apply (server-side apply, one field manager, the StatefulSet last) →
//! delete orphans → status (pure decision, written only when it changed) and an Event
//! per transition or failure.
//!
//! A spec only the user can fix stalls the job (`Stalled`, an Event, no requeue: the next
//! edit reconciles it) and applies nothing, so running workers keep their last good spec.
//! Other failures requeue with per-job exponential backoff.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_crds::validate::FieldError;
use sluice_crds::{CheckedJob, StreamJob, ValidationErrors};
use tracing::{debug, info, instrument, warn};

use crate::build::{BuildInputs, Children, Orphan, build, job_name};
use crate::context::Context;
use crate::error::{Error, ErrorKind};
use crate::names::{ChildNames, FIELD_MANAGER, MAX_JOB_NAME_LENGTH, TOKEN_FILE};
use crate::spec_hash::spec_hash;
use crate::status::{Observation, Transition, WorkerCounts, next_status};

/// Reconciles one StreamJob (the `Controller`'s reconcile function).
#[instrument(skip_all, fields(namespace = %job.namespace().unwrap_or_default(), job = %job.name_any()))]
pub async fn reconcile(job: Arc<StreamJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started();
    let key = object_key(&job);
    if job.metadata.deletion_timestamp.is_some() {
        // Garbage collection deletes the children through their owner references.
        return Ok(Action::await_change());
    }
    match phases(&job, &ctx).await {
        Ok(action) => {
            ctx.backoff.succeeded(&key);
            Ok(action)
        }
        Err(error) => {
            ctx.metrics.failure(error.kind());
            warn!(kind = error.kind().as_str(), "{error}");
            let observation = if error.kind().stalls() {
                Observation::Stalled {
                    reason: error.kind(),
                    message: error.user_message(),
                }
            } else {
                Observation::Failed {
                    message: error.to_string(),
                }
            };
            if let Err(status_error) = report(&job, &ctx, &observation).await {
                warn!("{status_error}");
            }
            match error.kind() {
                // Nothing but an edit can fix the spec, and an edit triggers a reconcile.
                ErrorKind::InvalidSpec => {
                    ctx.backoff.succeeded(&key);
                    Ok(Action::await_change())
                }
                // A missing Secret may be created (Secrets are not watched), the API may
                // come back: retry with backoff.
                ErrorKind::MissingReference | ErrorKind::KubernetesApi => Err(error),
            }
        }
    }
}

/// What the `Controller` does after a failed reconcile: retry this job alone, later each
/// time it fails again.
pub fn error_policy(job: Arc<StreamJob>, error: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.backoff.failed(&object_key(&job));
    debug!(
        namespace = %job.namespace().unwrap_or_default(),
        job = %job.name_any(),
        kind = error.kind().as_str(),
        "retrying in {delay:?}"
    );
    Action::requeue(delay)
}

fn object_key(job: &StreamJob) -> String {
    format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any())
}

async fn phases(job: &StreamJob, ctx: &Context) -> Result<Action, Error> {
    let references = dereference(job, ctx).await?;
    let checked = validate(job)?;
    let spec_hash = spec_hash(&job.spec);
    let children = build(&BuildInputs {
        job,
        checked: &checked,
        default_image: &ctx.settings.worker_image,
        admin_token: &references.admin_token,
        spec_hash: &spec_hash,
    });
    let workers = apply(job, ctx, &children).await?;
    delete_orphans(job, ctx, &children).await?;
    report(
        job,
        ctx,
        &Observation::Applied {
            spec_hash,
            workers: WorkerCounts::of(&workers),
        },
    )
    .await?;
    Ok(Action::requeue(ctx.settings.resync_interval))
}

/// What the dereference phase read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct References {
    /// The admin-API token: the existing Secret's, else a new one.
    pub admin_token: String,
}

/// Reads what the job refers to: the Secret of `spec.kafka.secretRef` must exist (only
/// its metadata is read: the controller never holds Kafka credentials), and the admin
/// token is kept from the existing Secret so the workers' token does not change.
pub async fn dereference(job: &StreamJob, ctx: &Context) -> Result<References, Error> {
    let namespace = job.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    if let Some(reference) = &job.spec.kafka.secret_ref {
        let found = secrets
            .get_metadata_opt(&reference.name)
            .await
            .map_err(Error::api(format!("read Secret {}", reference.name)))?;
        if found.is_none() {
            return Err(Error::MissingReference {
                kind: "Secret",
                name: reference.name.clone(),
                field: "spec.kafka.secretRef",
            });
        }
    }
    let names = ChildNames::of(&job_name(job));
    let existing = secrets
        .get_opt(&names.admin_token)
        .await
        .map_err(Error::api(format!("read Secret {}", names.admin_token)))?;
    let admin_token = existing
        .and_then(|secret| secret.data?.remove(TOKEN_FILE))
        .and_then(|bytes| String::from_utf8(bytes.0).ok())
        .filter(|token| !token.is_empty())
        .unwrap_or_else(new_token);
    Ok(References { admin_token })
}

/// A new admin token: 32 random bytes as hex.
fn new_token() -> String {
    let mut bytes = [0_u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system provides randomness");
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Checks the job: `sluice_crds::validate` (the CRD's rules and the pipeline's CEL), and
/// what the controller needs of the name.
pub fn validate(job: &StreamJob) -> Result<CheckedJob, Error> {
    let name = job_name(job);
    let mut errors = Vec::new();
    if name.len() > MAX_JOB_NAME_LENGTH {
        errors.push(FieldError {
            field: "metadata.name".to_string(),
            message: format!(
                "must be at most {MAX_JOB_NAME_LENGTH} characters (the worker pods' names \
                 and labels are made from it), got {}: choose a shorter name",
                name.len()
            ),
        });
    }
    match sluice_crds::validate(&job.spec) {
        Ok(checked) if errors.is_empty() => Ok(checked),
        Ok(_) => Err(Error::InvalidSpec {
            name,
            source: ValidationErrors { errors },
        }),
        Err(invalid) => {
            errors.extend(invalid.errors);
            Err(Error::InvalidSpec {
                name,
                source: ValidationErrors { errors },
            })
        }
    }
}

/// Applies every child with server-side apply, the StatefulSet last (so its pods start
/// once, with everything they mount present); returns the StatefulSet as the API server
/// answered, status included.
async fn apply(job: &StreamJob, ctx: &Context, children: &Children) -> Result<StatefulSet, Error> {
    let namespace = job.namespace().unwrap_or_default();
    if let Some(account) = &children.service_account {
        apply_one::<ServiceAccount>(ctx, &namespace, account).await?;
    }
    apply_one::<Secret>(ctx, &namespace, &children.admin_token).await?;
    apply_one::<ConfigMap>(ctx, &namespace, &children.job_config).await?;
    apply_one::<Service>(ctx, &namespace, &children.service).await?;
    apply_one::<PodDisruptionBudget>(ctx, &namespace, &children.disruption_budget).await?;
    apply_one::<StatefulSet>(ctx, &namespace, &children.workers).await
}

async fn apply_one<K>(ctx: &Context, namespace: &str, object: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    // force: the controller owns these fields; a hand edit of them is put back.
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&name, &params, &Patch::Apply(object))
        .await
        .map_err(Error::api(format!("apply {} {name}", K::kind(&()))))
}

/// Deletes the children this build no longer produces.
async fn delete_orphans(job: &StreamJob, ctx: &Context, children: &Children) -> Result<(), Error> {
    let namespace = job.namespace().unwrap_or_default();
    for orphan in children.orphans(&ChildNames::of(&job_name(job))) {
        match orphan {
            Orphan::ServiceAccount(name) => {
                let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &namespace);
                match api.delete(&name, &DeleteParams::background()).await {
                    Ok(_) => info!("deleted ServiceAccount {name}: podTemplate names another"),
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(error) => {
                        return Err(Error::api(format!("delete ServiceAccount {name}"))(error));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The status phase: decides the next status, writes it when it changed (server-side
/// apply on the status subresource) and publishes an Event for a transition.
async fn report(job: &StreamJob, ctx: &Context, observation: &Observation) -> Result<(), Error> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let (status, transition) = next_status(job, observation, &now);
    if job.status.as_ref() != Some(&status) {
        let name = job_name(job);
        let api: Api<StreamJob> =
            Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
        let patch = serde_json::json!({
            "apiVersion": StreamJob::api_version(&()),
            "kind": StreamJob::kind(&()),
            "status": status,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::api(format!("write the status of StreamJob {name}")))?;
    }
    if let Some(transition) = transition {
        publish(job, ctx, &transition).await;
    }
    Ok(())
}

async fn publish(job: &StreamJob, ctx: &Context, transition: &Transition) {
    if transition.warning {
        warn!(reason = %transition.reason, "{}", transition.message);
    } else {
        info!(reason = %transition.reason, "{}", transition.message);
    }
    let event = Event {
        type_: if transition.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: transition.reason.clone(),
        note: Some(truncate(&transition.message, 1024)),
        action: "Reconcile".to_string(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &job.object_ref(&())).await {
        warn!("unable to publish event {}: {error}", transition.reason);
    }
}

/// At most `limit` bytes, cut at a character boundary (an Event's note is at most 1 kB).
fn truncate(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    let mut end = limit.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn validation_reports_the_field_and_the_fix() {
        struct Case {
            name: &'static str,
            change: fn(&mut StreamJob),
            expect_fields: &'static [&'static str],
        }
        let cases = [
            Case {
                name: "valid",
                change: |_| {},
                expect_fields: &[],
            },
            Case {
                name: "a filter that does not type-check",
                change: |job| {
                    job.spec.pipeline[0] =
                        serde_json::from_value(serde_json::json!({"filter": "size(1) > 0"}))
                            .unwrap();
                },
                expect_fields: &["spec.pipeline[0].filter"],
            },
            Case {
                name: "a name too long for pod labels",
                change: |job| job.metadata.name = Some("x".repeat(53)),
                expect_fields: &["metadata.name"],
            },
        ];
        for case in cases {
            let mut job = fixtures::job();
            (case.change)(&mut job);
            let fields: Vec<String> = match validate(&job) {
                Ok(_) => Vec::new(),
                Err(Error::InvalidSpec { source, .. }) => {
                    source.errors.into_iter().map(|error| error.field).collect()
                }
                Err(other) => panic!("{}: {other}", case.name),
            };
            assert_eq!(fields, case.expect_fields, "{}", case.name);
        }
    }

    #[test]
    fn event_notes_fit_in_a_kilobyte() {
        assert_eq!(truncate("short", 1024), "short");
        let long = "é".repeat(1000);
        let cut = truncate(&long, 1024);
        assert!(cut.len() <= 1024);
        assert!(cut.ends_with("..."));
    }

    #[test]
    fn tokens_are_random_hex() {
        let (first, second) = (new_token(), new_token());
        assert_eq!(first.len(), 64);
        assert_ne!(first, second);
        assert!(first.chars().all(|c| c.is_ascii_hexdigit()));
    }
}

#[cfg(test)]
mod mock_api;
