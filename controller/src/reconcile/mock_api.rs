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
use sluice_crds::status::Phase;

use crate::context::{Context, Settings};
use crate::fixtures;
use crate::metrics::Metrics;
use crate::reconcile::reconcile;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const CORE: &str = "/api/v1/namespaces/shop";

fn context() -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, fixtures::NAMESPACE);
    let settings = Settings {
        worker_image: fixtures::DEFAULT_IMAGE.to_string(),
        resync_interval: Duration::from_secs(600),
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

/// Answers `calls` in order, then checks that no other call comes.
async fn serve(mut handle: Handle, calls: Vec<Call>) {
    for expected in calls {
        let next = tokio::time::timeout(Duration::from_secs(2), handle.next_request()).await;
        let (request, respond) = next
            .unwrap_or_else(|_| panic!("no call to {} {}", expected.method, expected.path))
            .unwrap_or_else(|| panic!("client gone before {} {}", expected.method, expected.path));
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
    let extra = tokio::time::timeout(Duration::from_millis(300), handle.next_request()).await;
    if let Ok(Some((request, _))) = extra {
        panic!("unexpected call {} {}", request.method(), request.uri());
    }
}

fn job_json(job: &StreamJob) -> Value {
    serde_json::to_value(job).unwrap()
}

/// The applies of every child, in order, the StatefulSet answered with `workers_status`.
fn applies(workers_status: Value) -> Vec<Call> {
    vec![
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
                    .contains("kind: StreamJob")
            )
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
        Call {
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
        },
    ]
}

const STATUS_PATH: &str = "/apis/sluice.dev/v1alpha1/namespaces/shop/streamjobs/page-views/status";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";

#[tokio::test]
async fn a_new_job_gets_every_child_then_a_pending_status_and_an_event() {
    let (context, handle) = context();
    let job = fixtures::job();
    let mut calls = vec![call(
        Method::GET,
        &format!("{CORE}/secrets/page-views-admin-token"),
        Answer::NotFound,
    )];
    calls.extend(applies(json!({"replicas": 0, "observedGeneration": 1})));
    calls.push(
        call(Method::PATCH, STATUS_PATH, Answer::Json(job_json(&job))).checking(|body| {
            assert_eq!(body["status"]["phase"], "Pending", "{body}");
            assert_eq!(body["status"]["observedGeneration"], 1);
            assert_eq!(
                body["status"]["selector"],
                "app.kubernetes.io/instance=page-views,app.kubernetes.io/name=sluice-worker,sluice.dev/job=page-views"
            );
            let types: Vec<&str> = body["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|condition| condition["type"].as_str().unwrap())
                .collect();
            assert_eq!(types, ["Ready", "Reconciling", "Stalled"]);
        }),
    );
    calls.push(
        call(Method::POST, EVENTS_PATH, Answer::Echo).checking(|body| {
            assert_eq!(body["reason"], "Pending", "{body}");
            assert_eq!(body["type"], "Normal");
        }),
    );
    let server = tokio::spawn(serve(handle, calls));
    let action = reconcile(Arc::new(job), context).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(600)));
    server.await.unwrap();
}

#[tokio::test]
async fn an_idle_running_job_only_reapplies_and_writes_nothing() {
    let (context, handle) = context();
    let mut job = fixtures::job();
    let running = json!({"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2,
                         "observedGeneration": 1, "currentRevision": "a", "updateRevision": "a"});
    // The status a previous reconcile wrote for the same observation.
    let (status, _) = crate::status::next_status(
        &job,
        &crate::status::Observation::Applied {
            spec_hash: crate::spec_hash::spec_hash(&job.spec),
            workers: crate::status::WorkerCounts {
                desired: 2,
                replicas: 2,
                ready: 2,
                updated: 2,
                rolled_out: true,
            },
        },
        &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(1).unwrap(),
        ),
    );
    assert_eq!(status.phase, Some(Phase::Running));
    job.status = Some(status);
    let token = json!({"apiVersion": "v1", "kind": "Secret",
                       "metadata": {"name": "page-views-admin-token", "namespace": "shop"},
                       "data": {"token": "MDEyMw=="}});
    let mut calls = vec![call(
        Method::GET,
        &format!("{CORE}/secrets/page-views-admin-token"),
        Answer::Json(token),
    )];
    let mut applied = applies(running);
    applied[1] = call(
        Method::PATCH,
        &format!("{CORE}/secrets/page-views-admin-token"),
        Answer::Echo,
    )
    .checking(|body| assert_eq!(body["data"]["token"], "MDEyMw==", "kept: {body}"));
    calls.extend(applied);
    let server = tokio::spawn(serve(handle, calls));
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
    let calls = vec![
        call(
            Method::GET,
            &format!("{CORE}/secrets/kafka-credentials"),
            Answer::NotFound,
        ),
        call(Method::PATCH, STATUS_PATH, Answer::Json(job_json(&job))).checking(|body| {
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
        }),
        call(Method::POST, EVENTS_PATH, Answer::Echo).checking(|body| {
            assert_eq!(body["reason"], "MissingReference", "{body}");
            assert_eq!(body["type"], "Warning");
        }),
    ];
    let server = tokio::spawn(serve(handle, calls));
    let error = reconcile(Arc::new(job), context.clone()).await.unwrap_err();
    assert_eq!(error.kind(), crate::ErrorKind::MissingReference);
    server.await.unwrap();
}

#[tokio::test]
async fn an_invalid_spec_applies_nothing_and_waits_for_an_edit() {
    let (context, handle) = context();
    let mut job = fixtures::job();
    job.spec.pipeline[0] = serde_json::from_value(json!({"filter": "size(1) > 0"})).unwrap();
    let calls = vec![
        call(
            Method::GET,
            &format!("{CORE}/secrets/page-views-admin-token"),
            Answer::NotFound,
        ),
        call(Method::PATCH, STATUS_PATH, Answer::Json(job_json(&job))).checking(|body| {
            assert_eq!(body["status"]["phase"], "Failed", "{body}");
            assert!(
                body["status"]["lastError"]
                    .as_str()
                    .unwrap()
                    .starts_with("spec.pipeline[0].filter: "),
                "{body}"
            );
        }),
        call(Method::POST, EVENTS_PATH, Answer::Echo)
            .checking(|body| assert_eq!(body["reason"], "InvalidSpec", "{body}")),
    ];
    let server = tokio::spawn(serve(handle, calls));
    let action = reconcile(Arc::new(job), context).await.unwrap();
    assert_eq!(action, Action::await_change());
    server.await.unwrap();
}
