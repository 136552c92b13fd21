//! The reconciler against a mocked API server (`tower_test`, as controller-rs does): each
//! test lists the exact calls one reconcile makes, in order, with their method, path and
//! the parts of the body that matter, and answers them. A missing or extra call fails.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use sluice_crds::StreamJob;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use sluice_crds::StreamJobStatus;

use crate::build::{BuildInputs, Children, build};
use crate::cache::ChildCache;
use crate::context::{Context, Settings};
use crate::fixtures;
use crate::metrics::Metrics;
use crate::reconcile::reconcile;
use crate::status::WorkerCounts;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const CORE: &str = "/api/v1/namespaces/shop";

fn context() -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, fixtures::NAMESPACE);
    let settings = Settings {
        workers: fixtures::worker_defaults(),
        resync_interval: Duration::from_secs(600),
        lifecycle: crate::lifecycle::machine::Timing::default(),
        autoscaler: crate::autoscaler::Timing::default(),
        requests_in_flight: 16,
        crash_point: None,
    };
    let context = Context::new(
        client,
        Some("test".into()),
        Arc::new(Metrics::default()),
        settings,
    );
    (Arc::new(context), handle)
}

/// An answer of the mocked API server.
enum Answer {
    /// The request body, sent back (server-side apply returns the object).
    Echo,
    /// This body, 200.
    Json(Value),
    /// 404 Not Found.
    NotFound,
}

/// One expected call: method, path, and a check of the body it sent.
struct Call {
    method: Method,
    path: String,
    answer: Answer,
    check: fn(&Value),
}

fn call(method: Method, path: &str, answer: Answer) -> Call {
    Call {
        method,
        path: path.to_string(),
        answer,
        check: |_| {},
    }
}

impl Call {
    fn checking(self, check: fn(&Value)) -> Self {
        Self { check, ..self }
    }
}

/// One step of a reconcile: a call, or calls sent at once, answered in any order.
enum Step {
    One(Call),
    AtOnce(Vec<Call>),
}

impl From<Call> for Step {
    fn from(call: Call) -> Self {
        Self::One(call)
    }
}

async fn next(
    handle: &mut Handle,
    what: &str,
) -> (
    Request<Body>,
    tower_test::mock::SendResponse<Response<Body>>,
) {
    tokio::time::timeout(Duration::from_secs(2), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("no call to {what}"))
        .unwrap_or_else(|| panic!("client gone before {what}"))
}

async fn answer(
    expected: Call,
    request: Request<Body>,
    respond: tower_test::mock::SendResponse<Response<Body>>,
) {
    assert_eq!(
        (request.method().clone(), request.uri().path().to_string()),
        (expected.method.clone(), expected.path.clone()),
    );
    if request.method() == Method::PATCH && !expected.path.contains("/events") {
        let query = request.uri().query().unwrap_or_default().to_string();
        assert!(
            query.contains("fieldManager=sluice-controller") && query.contains("force=true"),
            "{} {query}",
            expected.path
        );
    }
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (expected.check)(&body);
    let (status, answer) = match expected.answer {
        Answer::Echo => (StatusCode::OK, body),
        Answer::Json(value) => (StatusCode::OK, value),
        Answer::NotFound => (
            StatusCode::NOT_FOUND,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "reason": "NotFound", "code": 404, "message": "not found"}),
        ),
    };
    respond.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&answer).unwrap()))
            .unwrap(),
    );
}

/// Answers `steps` in order, then checks that no other call comes.
async fn serve(mut handle: Handle, steps: Vec<Step>) {
    for step in steps {
        match step {
            Step::One(expected) => {
                let what = format!("{} {}", expected.method, expected.path);
                let (request, respond) = next(&mut handle, &what).await;
                answer(expected, request, respond).await;
            }
            Step::AtOnce(mut expected) => {
                // Every call of the group arrives before any is answered: they are concurrent.
                let mut requests = Vec::new();
                for _ in 0..expected.len() {
                    requests.push(next(&mut handle, "a call sent at once with others").await);
                }
                for (request, respond) in requests {
                    let path = request.uri().path().to_string();
                    let index = expected
                        .iter()
                        .position(|call| call.method == request.method() && call.path == path)
                        .unwrap_or_else(|| panic!("unexpected call {} {path}", request.method()));
                    answer(expected.remove(index), request, respond).await;
                }
            }
        }
    }
    let extra = tokio::time::timeout(Duration::from_millis(300), handle.next_request()).await;
    if let Ok(Some((request, _))) = extra {
        panic!("unexpected call {} {}", request.method(), request.uri());
    }
}

fn job_json(job: &StreamJob) -> Value {
    serde_json::to_value(job).unwrap()
}

/// The applies of the independent children, sent at once.
fn independent_applies() -> Step {
    Step::AtOnce(vec![
        call(
            Method::PATCH,
            &format!("{CORE}/serviceaccounts/page-views-worker"),
            Answer::Echo,
        ),
        call(
            Method::PATCH,
            &format!("{CORE}/secrets/page-views-admin-token"),
            Answer::Echo,
        )
        .checking(|body| assert!(body["data"]["token"].is_string(), "{body}")),
        call(
            Method::PATCH,
            &format!("{CORE}/configmaps/page-views-job"),
            Answer::Echo,
        )
        .checking(|body| {
            assert!(
                body["data"]["streamjob.yaml"]
                    .as_str()
                    .unwrap()
                    .contains("\"kind\": \"StreamJob\"")
            );
            assert!(
                body["metadata"]["annotations"]["sluice.dev/applied-hash"].is_string(),
                "{body}"
            );
        }),
        call(
            Method::PATCH,
            &format!("{CORE}/services/page-views"),
            Answer::Echo,
        ),
        call(
            Method::PATCH,
            "/apis/policy/v1/namespaces/shop/poddisruptionbudgets/page-views",
            Answer::Echo,
        ),
    ])
}

/// The apply of the StatefulSet, answered with `workers_status`.
fn workers_apply(workers_status: Value) -> Step {
    Step::One(Call {
        method: Method::PATCH,
        path: "/apis/apps/v1/namespaces/shop/statefulsets/page-views".to_string(),
        answer: Answer::Json({
            let mut workers =
                serde_json::to_value(fixtures::children(&fixtures::job()).workers).unwrap();
            workers["metadata"]["generation"] = json!(1);
            workers["status"] = workers_status;
            workers
        }),
        check: |body| assert_eq!(body["spec"]["replicas"], 2, "{body}"),
    })
}

const STATUS_PATH: &str = "/apis/sluice.dev/v1alpha1/namespaces/shop/streamjobs/page-views/status";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";

/// Our apply at second `at`, as `managedFields` records it.
fn applied_at(at: i64) -> ManagedFieldsEntry {
    ManagedFieldsEntry {
        manager: Some("sluice-controller".into()),
        operation: Some("Apply".into()),
        time: Some(Time(Timestamp::from_second(at).unwrap())),
        ..ManagedFieldsEntry::default()
    }
}

/// A cache holding every child of `job` as the controller applied it (token
/// [`fixtures::TOKEN`]), the StatefulSet with `workers_status`; `edit` changes the
/// children's cached copies first.
fn cache_of(job: &StreamJob, workers_status: Value, edit: fn(&mut Children)) -> ChildCache {
    let mut children = build(&BuildInputs {
        job,
        checked: &fixtures::checked(job),
        defaults: &fixtures::worker_defaults(),
        storage_class_name: job.spec.state.storage_class_name.as_deref(),
        admin_token: fixtures::TOKEN,
        spec_hash: &crate::spec_hash::spec_hash(&job.spec),
        restore: &crate::lifecycle::Restore::default(),
    });
    crate::reconcile::plan(&mut children, &ChildCache::default(), fixtures::NAMESPACE);
    for meta in [
        &mut children.service_account.as_mut().unwrap().metadata,
        &mut children.admin_token.metadata,
        &mut children.job_config.metadata,
        &mut children.service.metadata,
        &mut children.disruption_budget.metadata,
        &mut children.workers.metadata,
    ] {
        meta.managed_fields = Some(vec![applied_at(100)]);
    }
    children.workers.metadata.generation = Some(1);
    children.workers.status = Some(serde_json::from_value(workers_status).unwrap());
    edit(&mut children);
    // As the watches cache them: the reconcile decides from the copies the cache keeps.
    fn filled<K>(object: K) -> Store<K>
    where
        K: kube::Resource<DynamicType = ()> + crate::cache::Cached + Clone + 'static,
    {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(object.cached_copy()));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        store
    }
    fn metadata<K>(meta: &ObjectMeta) -> PartialObjectMeta<K> {
        PartialObjectMeta {
            types: None,
            metadata: meta.clone(),
            _phantom: std::marker::PhantomData,
        }
    }
    ChildCache::new(
        filled(children.workers.clone()),
        filled(children.admin_token.clone()),
        filled(metadata(&children.job_config.metadata)),
        filled(metadata(&children.service.metadata)),
        filled(metadata(&children.disruption_budget.metadata)),
        filled(metadata(
            &children.service_account.as_ref().unwrap().metadata,
        )),
    )
}

/// The status a previous reconcile wrote for these worker counts.
fn status_for(job: &StreamJob, workers: WorkerCounts) -> StreamJobStatus {
    let (status, _) = crate::status::next_status(
        job,
        &crate::status::Observation::Applied {
            spec_hash: crate::spec_hash::spec_hash(&job.spec),
            workers,
        },
        &Time(Timestamp::from_second(1).unwrap()),
    );
    status
}

const RUNNING: WorkerCounts = WorkerCounts {
    desired: 2,
    replicas: 2,
    ready: 2,
    updated: 2,
    rolled_out: true,
};

fn running_status() -> Value {
    json!({"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2,
           "observedGeneration": 1, "currentRevision": "a", "updateRevision": "a"})
}

#[tokio::test]
async fn a_new_job_gets_its_status_first_then_every_child() {
    let (context, handle) = context();
    let job = fixtures::job();
    let steps = vec![
        call(Method::PATCH, STATUS_PATH, Answer::Json(job_json(&job)))
            .checking(|body| {
                assert_eq!(body["status"]["phase"], "Pending", "{body}");
                assert_eq!(body["status"]["observedGeneration"], 1);
                assert_eq!(
                    body["status"]["selector"],
                    "app.kubernetes.io/instance=page-views,app.kubernetes.io/name=sluice-worker,sluice.dev/job=page-views"
                );
                let conditions: Vec<(&str, &str)> = body["status"]["conditions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|condition| {
                        (
                            condition["type"].as_str().unwrap(),
                            condition["status"].as_str().unwrap(),
                        )
                    })
                    .collect();
                assert_eq!(
                    conditions,
                    [("Ready", "False"), ("Reconciling", "True"), ("Stalled", "False")]
                );
            })
            .into(),
        call(Method::POST, EVENTS_PATH, Answer::Echo)
            .checking(|body| {
                assert_eq!(body["reason"], "Pending", "{body}");
                assert_eq!(body["type"], "Normal");
            })
            .into(),
        call(
            Method::GET,
            &format!("{CORE}/secrets/page-views-admin-token"),
            Answer::NotFound,
        )
        .into(),
        independent_applies(),
        // The StatefulSet as created: no pod yet, the status already says so.
        workers_apply(json!({"replicas": 0})),
    ];
    let server = tokio::spawn(serve(handle, steps));
    let action = reconcile(Arc::new(job), context).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(600)));
    server.await.unwrap();
}

#[tokio::test]
async fn an_idle_running_job_sends_nothing() {
    let (context, handle) = context();
    let mut job = fixtures::job();
    job.status = Some(status_for(&job, RUNNING));
    let context = Arc::new(context.with_children(cache_of(&job, running_status(), |_| {})));
    let server = tokio::spawn(serve(handle, Vec::new()));
    reconcile(Arc::new(job), context).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn a_worker_becoming_ready_only_writes_the_status() {
    let (context, handle) = context();
    let mut job = fixtures::job();
    job.status = Some(status_for(
        &job,
        WorkerCounts {
            ready: 1,
            ..RUNNING
        },
    ));
    let context = Arc::new(context.with_children(cache_of(&job, running_status(), |_| {})));
    let steps = vec![
        call(Method::PATCH, STATUS_PATH, Answer::Json(job_json(&job)))
            .checking(|body| {
                assert_eq!(body["status"]["phase"], "Running", "{body}");
                assert_eq!(body["status"]["readyReplicas"], 2, "{body}");
            })
            .into(),
        call(Method::POST, EVENTS_PATH, Answer::Echo)
            .checking(|body| assert_eq!(body["reason"], "Running", "{body}"))
            .into(),
    ];
    let server = tokio::spawn(serve(handle, steps));
    reconcile(Arc::new(job), context).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn a_child_edited_by_hand_is_applied_again_alone() {
    let (context, handle) = context();
    let mut job = fixtures::job();
    job.status = Some(status_for(&job, RUNNING));
    let context = Arc::new(
        context.with_children(cache_of(&job, running_status(), |children| {
            children
                .job_config
                .metadata
                .managed_fields
                .as_mut()
                .unwrap()
                .push(ManagedFieldsEntry {
                    manager: Some("kubectl-edit".into()),
                    operation: Some("Update".into()),
                    time: Some(Time(Timestamp::from_second(200).unwrap())),
                    ..ManagedFieldsEntry::default()
                });
        })),
    );
    let steps = vec![Step::AtOnce(vec![call(
        Method::PATCH,
        &format!("{CORE}/configmaps/page-views-job"),
        Answer::Echo,
    )])];
    let server = tokio::spawn(serve(handle, steps));
    reconcile(Arc::new(job), context).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn a_new_spec_is_recorded_before_the_children_change() {
    let (context, handle) = context();
    let mut job = fixtures::job();
    job.status = Some(status_for(&job, RUNNING));
    // Cached as applied for generation 1; generation 2 changes the filter.
    let context = Arc::new(context.with_children(cache_of(&job, running_status(), |_| {})));
    let running = serde_json::to_value(fixtures::children(&job).job_config).unwrap();
    job.metadata.generation = Some(2);
    job.spec.pipeline[0] =
        serde_json::from_value(json!({"filter": "event.status == 404"})).unwrap();
    // Without a savepoint location an upgrade restarts the workers from their volumes.
    job.spec.upgrade_mode = sluice_crds::streamjob::UpgradeMode::LastState;
    let steps = vec![
        // The lifecycle reads the manifest the workers run, to classify the change.
        call(
            Method::GET,
            &format!("{CORE}/configmaps/page-views-job"),
            Answer::Json(running),
        )
        .into(),
        call(Method::PATCH, STATUS_PATH, Answer::Json(job_json(&job)))
            .checking(|body| {
                assert_eq!(body["status"]["phase"], "Upgrading", "{body}");
                assert_eq!(body["status"]["observedGeneration"], 2);
            })
            .into(),
        call(Method::POST, EVENTS_PATH, Answer::Echo)
            .checking(|body| assert_eq!(body["reason"], "Upgrading", "{body}"))
            .into(),
        // The manifest changes; the others are as built before.
        Step::AtOnce(vec![call(
            Method::PATCH,
            &format!("{CORE}/configmaps/page-views-job"),
            Answer::Echo,
        )]),
        Step::One(
            call(
                Method::PATCH,
                "/apis/apps/v1/namespaces/shop/statefulsets/page-views",
                Answer::Echo,
            )
            .checking(|body| {
                assert_eq!(body["spec"]["replicas"], 2, "{body}");
            }),
        ),
        // The StatefulSet as applied, status not yet updated (Echo: no status): the same
        // Upgrading status, with other counts.
        call(Method::PATCH, STATUS_PATH, Answer::Json(job_json(&job)))
            .checking(|body| assert_eq!(body["status"]["phase"], "Upgrading", "{body}"))
            .into(),
    ];
    let server = tokio::spawn(serve(handle, steps));
    reconcile(Arc::new(job), context).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn a_missing_secret_stalls_the_job_and_is_retried() {
    let (context, handle) = context();
    let mut job = fixtures::job();
    job.spec.kafka.secret_ref = Some(sluice_crds::streamjob::SecretReference {
        name: "kafka-credentials".into(),
    });
    let steps = vec![
        call(
            Method::GET,
            &format!("{CORE}/secrets/kafka-credentials"),
            Answer::NotFound,
        )
        .into(),
        call(Method::PATCH, STATUS_PATH, Answer::Json(job_json(&job)))
            .checking(|body| {
                assert_eq!(body["status"]["phase"], "Failed", "{body}");
                let stalled = body["status"]["conditions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|condition| condition["type"] == "Stalled")
                    .unwrap();
                assert_eq!(stalled["status"], "True");
                assert_eq!(stalled["reason"], "MissingReference");
                assert!(
                    stalled["message"]
                        .as_str()
                        .unwrap()
                        .contains("spec.kafka.secretRef"),
                    "{stalled}"
                );
            })
            .into(),
        call(Method::POST, EVENTS_PATH, Answer::Echo)
            .checking(|body| {
                assert_eq!(body["reason"], "MissingReference", "{body}");
                assert_eq!(body["type"], "Warning");
            })
            .into(),
    ];
    let server = tokio::spawn(serve(handle, steps));
    let error = reconcile(Arc::new(job), context.clone()).await.unwrap_err();
    assert_eq!(error.kind(), crate::ErrorKind::MissingReference);
    server.await.unwrap();
}

#[tokio::test]
async fn an_invalid_spec_applies_nothing_and_waits_for_an_edit() {
    let (context, handle) = context();
    let mut job = fixtures::job();
    job.spec.pipeline[0] = serde_json::from_value(json!({"filter": "size(1) > 0"})).unwrap();
    let steps = vec![
        call(Method::PATCH, STATUS_PATH, Answer::Json(job_json(&job)))
            .checking(|body| {
                assert_eq!(body["status"]["phase"], "Failed", "{body}");
                assert!(
                    body["status"]["lastError"]
                        .as_str()
                        .unwrap()
                        .starts_with("spec.pipeline[0].filter: "),
                    "{body}"
                );
            })
            .into(),
        call(Method::POST, EVENTS_PATH, Answer::Echo)
            .checking(|body| assert_eq!(body["reason"], "InvalidSpec", "{body}"))
            .into(),
    ];
    let server = tokio::spawn(serve(handle, steps));
    let action = reconcile(Arc::new(job), context).await.unwrap();
    assert_eq!(action, Action::await_change());
    server.await.unwrap();
}
