//! The intake: a new StreamJob's first status, ahead of the reconcile queue.
//!
//! A new job's first reconcile applies its children (about nine requests). In a burst of
//! new jobs each waits for the reconciles of the jobs before it, so without the intake the
//! last of 1,000 jobs created at once had no status for over a minute (bench/README.md, "The
//! controller at scale"): `kubectl get sj` showed nothing and a GitOps tool could not tell
//! whether anything had seen it. The intake writes a new job's first status as soon as the
//! watch shows the job, in a lane of requests of its own, and leaves the rest to the
//! reconcile:
//!
//! - only for a job with no status at all, whose spec passes `validate` (an invalid spec's
//!   first status is the reconcile's `Stalled`, with the field and the fix);
//! - the status is exactly the one the reconcile's own first write would be (phase
//!   `Pending`, `Reconciling` with "no worker pod yet", the observed generation; `status::
//!   next_status` decides both), so the reconcile that follows finds it current and writes
//!   nothing;
//! - written with server-side apply under the controller's field manager and the job's
//!   `resourceVersion` as a precondition: if anything changed the job since the watch saw
//!   it (a reconcile's status, a finalizer, an edit), the API server refuses the write
//!   (409) and the intake drops it, so it never overwrites a newer status;
//! - its Event (`Pending`) is published in the reconciles' lane, after the status.
//!
//! Nothing else depends on it: a write it drops, or a job it never sees, gets its first
//! status from the reconcile as before.

use std::sync::Arc;

use futures::StreamExt;
use futures::channel::mpsc;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use sluice_crds::{StreamJob, StreamJobStatus};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::context::Context;
use crate::names::FIELD_MANAGER;
use crate::reconcile::{publish, validate};
use crate::spec_hash::spec_hash;
use crate::status::{Observation, Transition, WorkerCounts, next_status};

/// Where the watch hands the intake the jobs it sees without a status.
pub type Sender = mpsc::UnboundedSender<ObjectRef<StreamJob>>;

/// The intake's end of the channel.
pub type Receiver = mpsc::UnboundedReceiver<ObjectRef<StreamJob>>;

/// A channel from the watch to the intake (unbounded: it carries names, at most one per
/// watch event of a job without a status).
pub fn channel() -> (Sender, Receiver) {
    mpsc::unbounded()
}

/// Whether the intake writes the first status of `job`: it has none, and it is not being
/// deleted.
pub fn wants_first_status(job: &StreamJob) -> bool {
    job.status.is_none() && job.metadata.deletion_timestamp.is_none()
}

/// The first status of `job` and its Event, as the reconcile's first write would make
/// them; `None` when the job has a status already, is being deleted, or its spec is
/// invalid (the reconcile reports that).
pub fn first_status(job: &StreamJob, now: &Time) -> Option<(StreamJobStatus, Transition)> {
    if !wants_first_status(job) {
        return None;
    }
    let mut job = job.clone();
    job.spec.parallelism = crate::autoscaler::effective_parallelism(&job);
    validate(&job).ok()?;
    let workers = WorkerCounts {
        desired: if job.spec.suspend {
            0
        } else {
            job.spec.parallelism
        },
        ..WorkerCounts::default()
    };
    let observation = Observation::Applied {
        spec_hash: spec_hash(&job.spec),
        workers,
    };
    let (status, transition) = next_status(&job, &observation, now);
    Some((status, transition?))
}

/// Writes the first status of each job `jobs` names, at most `in_flight` at once (requests
/// of their own, not counted in the reconciles' `requests_in_flight`), until the channel
/// closes.
pub async fn run(jobs: Receiver, store: Store<StreamJob>, ctx: Arc<Context>, in_flight: usize) {
    let permits = Arc::new(Semaphore::new(in_flight.max(1)));
    jobs.for_each_concurrent(None, |reference| {
        let (store, ctx, permits) = (store.clone(), ctx.clone(), permits.clone());
        async move {
            let Ok(_permit) = permits.acquire().await else {
                return;
            };
            // The job as the watch has it now: a reconcile may have written its status
            // while it waited here.
            let Some(job) = store.get(&reference) else {
                return;
            };
            let now = Time(k8s_openapi::jiff::Timestamp::now());
            let Some((status, transition)) = first_status(&job, &now) else {
                return;
            };
            if write(&job, &ctx, &status).await {
                let mut job = StreamJob::clone(&job);
                job.status = Some(status);
                tokio::spawn(async move { publish(&job, &ctx, &transition).await });
            }
        }
    })
    .await;
}

/// Writes `status` as the first status of `job`, on the condition that the job is still
/// at the `resourceVersion` it was read at; whether it was written.
async fn write(job: &StreamJob, ctx: &Context, status: &StreamJobStatus) -> bool {
    let name = job.name_any();
    let namespace = job.namespace().unwrap_or_default();
    let api: Api<StreamJob> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = serde_json::json!({
        "apiVersion": StreamJob::api_version(&()),
        "kind": StreamJob::kind(&()),
        "metadata": {"resourceVersion": job.resource_version()},
        "status": status,
    });
    match api
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => {
            debug!(%namespace, job = %name, "wrote the first status");
            true
        }
        Err(kube::Error::Api(response)) if response.code == 409 => {
            debug!(%namespace, job = %name, "the job changed before its first status: left to the reconcile");
            false
        }
        Err(error) => {
            // The reconcile writes it.
            warn!(%namespace, job = %name, "failed to write the first status of StreamJob {name}: {error}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use k8s_openapi::jiff::Timestamp;

    #[test]
    fn the_first_status_is_the_one_the_reconcile_would_write_first() {
        struct Case {
            name: &'static str,
            change: fn(&mut StreamJob),
            expect_phase: Option<&'static str>,
        }
        let cases = [
            Case {
                name: "a new job",
                change: |_| {},
                expect_phase: Some("Pending"),
            },
            Case {
                name: "a new suspended job",
                change: |job| job.spec.suspend = true,
                expect_phase: Some("Deploying"),
            },
            Case {
                name: "a job with a status",
                change: |job| job.status = Some(StreamJobStatus::default()),
                expect_phase: None,
            },
            Case {
                name: "a job being deleted",
                change: |job| {
                    job.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
                },
                expect_phase: None,
            },
            Case {
                name: "an invalid spec: the reconcile says Stalled",
                change: |job| {
                    job.spec.pipeline[0] =
                        serde_json::from_value(serde_json::json!({"filter": "event.status =="}))
                            .unwrap();
                },
                expect_phase: None,
            },
        ];
        let now = Time(Timestamp::from_second(1_800_000_000).unwrap());
        for case in cases {
            let mut job = fixtures::job();
            (case.change)(&mut job);
            let first = first_status(&job, &now);
            assert_eq!(
                first
                    .as_ref()
                    .and_then(|(status, _)| status.phase)
                    .map(|phase| format!("{phase:?}")),
                case.expect_phase.map(str::to_string),
                "{}",
                case.name
            );
            let Some((status, transition)) = first else {
                continue;
            };
            assert_eq!(
                transition.reason,
                case.expect_phase.unwrap(),
                "{}",
                case.name
            );
            // The reconcile's write-ahead on the same job, with the counts it reads off the
            // StatefulSet it builds (none is cached yet): the same status, so it writes
            // nothing after the intake; and no second Event.
            let mut reconciled = job.clone();
            let mut workers = WorkerCounts::of(&fixtures::children(&job).workers);
            workers.rolled_out = false;
            let observation = Observation::Applied {
                spec_hash: spec_hash(&job.spec),
                workers,
            };
            let (expected, _) = next_status(&reconciled, &observation, &now);
            assert_eq!(status, expected, "{}", case.name);
            reconciled.status = Some(status);
            let later = Time(Timestamp::from_second(1_800_000_060).unwrap());
            let (again, transition) = next_status(&reconciled, &observation, &later);
            assert_eq!(Some(&again), reconciled.status.as_ref(), "{}", case.name);
            assert!(transition.is_none(), "{}", case.name);
        }
    }
}
