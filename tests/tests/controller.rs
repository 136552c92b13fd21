//! `sluice-controller run` against the local cluster, running as a process on this machine
//! (as a developer runs it from a shell), with real worker pods on the node and the real
//! broker: the page-views example from `kubectl apply` to exactly its expected output,
//! `kubectl wait` and `kubectl scale`, a stalled job next to a healthy one, hand edits put
//! back, deletion of every child, no API calls for an idle job, and leader failover.
//!
//! Needs the node and its images (`bash tests/cluster/cluster.sh up`, then
//! `bash tests/cluster/images.sh` after building the worker) and the controller binary
//! beside the tests (`cargo build --release --workspace --bins`).

// Shared with tests/tests/node.rs, which uses the helpers this file does not.
#[allow(dead_code)]
mod common_node;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use common_node::{NodeEnv, delete_namespace, describe_pod, fresh_namespace, node_env, wait_for};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};
use serde_json::{Value, json};
use sluice_crds::StreamJob;
use sluice_e2e::controller::{ControllerProcess, ControllerSpec};
use sluice_e2e::kafka::{TIMEOUT, TestTopic, consumer, poll_messages, producer};
use sluice_e2e::worker::http_get;
use sluice_e2e::{Environment, install_crd, repo_root, unique_name};

/// From `kubectl apply` to every worker ready: two pods, two volumes, on a busy machine.
const READY_TIMEOUT: Duration = Duration::from_secs(300);

fn controller(
    environment: &Environment,
    node: &NodeEnv,
    namespaces: &[&str],
    lease: Option<(&str, &str)>,
    identity: &str,
) -> Result<ControllerProcess> {
    let log = std::env::temp_dir().join(format!("{}.log", unique_name(identity)));
    eprintln!("controller {identity} logs to {}", log.display());
    ControllerProcess::start(
        environment,
        &ControllerSpec {
            namespaces: namespaces.iter().map(ToString::to_string).collect(),
            worker_image: node.worker_image.clone(),
            lease: lease.map(|(namespace, name)| (namespace.to_string(), name.to_string())),
            lease_duration: Duration::from_secs(6),
            identity: identity.to_string(),
            log,
        },
    )
}

/// A job's topics, deleted at the end.
struct Topics {
    source: TestTopic,
    sink: TestTopic,
    dead_letters: TestTopic,
    late: TestTopic,
}

impl Topics {
    fn create(environment: &Environment, source_partitions: i32) -> Result<Self> {
        Ok(Self {
            source: TestTopic::create(environment, "e2e-ctl-in", source_partitions)?,
            sink: TestTopic::create(environment, "e2e-ctl-out", 2)?,
            dead_letters: TestTopic::create(environment, "e2e-ctl-dead", 1)?,
            late: TestTopic::create(environment, "e2e-ctl-late", 1)?,
        })
    }
}

/// The page-views example as `name` in `namespace`, reading `topics` through the broker's
/// address for pods, `ByKey` (the expected output assumes one partition read in order).
fn page_views(node: &NodeEnv, namespace: &str, name: &str, topics: &Topics) -> Result<StreamJob> {
    let text = std::fs::read_to_string(repo_root().join("examples/page-views/streamjob.yaml"))?;
    let mut manifest: Value = serde_yaml_ng::from_str(&text)?;
    manifest["metadata"] = json!({"name": name, "namespace": namespace});
    let spec = &mut manifest["spec"];
    spec["imagePullPolicy"] = json!("Never");
    spec["kafka"]["bootstrapServers"] = json!(node.kafka_bootstrap_pod);
    spec["source"]["topics"] = json!([topics.source.name]);
    spec["source"]["partitioning"] = json!("ByKey");
    spec["sink"]["topic"] = json!(topics.sink.name);
    spec["sink"]["deadLetterTopic"] = json!(topics.dead_letters.name);
    spec["sink"]["lateDataTopic"] = json!(topics.late.name);
    spec["state"]["checkpointInterval"] = json!("1s");
    spec["state"]["volumeSize"] = json!("64Mi");
    Ok(serde_json::from_value(manifest)?)
}

async fn apply_job(client: &Client, job: &StreamJob) -> Result<()> {
    let namespace = job.metadata.namespace.clone().unwrap_or_default();
    let name = job.metadata.name.clone().unwrap_or_default();
    let api: Api<StreamJob> = Api::namespaced(client.clone(), &namespace);
    api.patch(
        &name,
        &PatchParams::apply("sluice-e2e").force(),
        &Patch::Apply(job),
    )
    .await
    .with_context(|| format!("failed to apply StreamJob {namespace}/{name}"))?;
    Ok(())
}

fn condition(job: &StreamJob, type_: &str) -> Option<Condition> {
    job.status
        .as_ref()?
        .conditions
        .iter()
        .find(|condition| condition.type_ == type_)
        .cloned()
}

fn describe_job(job: &StreamJob) -> String {
    serde_json::to_string(&job.status).unwrap_or_default()
}

/// Waits until the job's condition `type_` has `status`, and returns the job.
async fn wait_condition(
    client: &Client,
    namespace: &str,
    name: &str,
    type_: &str,
    status: &str,
    timeout: Duration,
) -> Result<StreamJob> {
    let api: Api<StreamJob> = Api::namespaced(client.clone(), namespace);
    wait_for(
        &format!("StreamJob {namespace}/{name} {type_}={status}"),
        timeout,
        || async {
            let job = api.get(name).await?;
            match condition(&job, type_) {
                Some(found) if found.status == status => Ok(Some(job)),
                _ => bail!("status {}", describe_job(&job)),
            }
        },
    )
    .await
}

/// The reasons of the Events about `name`.
async fn event_reasons(client: &Client, namespace: &str, name: &str) -> Result<BTreeSet<String>> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    Ok(events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|event| {
            event
                .regarding
                .as_ref()
                .and_then(|object| object.name.as_deref())
                == Some(name)
                && event.reporting_controller.as_deref() == Some("sluice-controller")
        })
        .filter_map(|event| event.reason)
        .collect())
}

/// Waits until pod `name` is Ready, with the pod's story on failure.
async fn wait_pod_ready(client: &Client, namespace: &str, name: &str) -> Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let waited = wait_for(
        &format!("pod {namespace}/{name} Ready"),
        READY_TIMEOUT,
        || async {
            let Some(pod) = pods.get_opt(name).await? else {
                bail!("pod {name} not created yet");
            };
            if let Some(reason) = common_node::stuck_reason(&pod) {
                return Ok(Some(Err(reason)));
            }
            if common_node::pod_is_ready(&pod) {
                Ok(Some(Ok(pod)))
            } else {
                bail!("pod {name} phase {}", common_node::pod_phase(&pod))
            }
        },
    )
    .await;
    match waited {
        Ok(Ok(pod)) => Ok(pod),
        Ok(Err(reason)) => bail!(
            "pod {namespace}/{name} {reason}\n{}",
            describe_pod(client, namespace, name).await
        ),
        Err(error) => bail!("{error:#}\n{}", describe_pod(client, namespace, name).await),
    }
}

fn send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    partition: i32,
    payload: &[u8],
) -> Result<()> {
    producer
        .send(
            BaseRecord::<(), [u8]>::to(topic)
                .partition(partition)
                .payload(payload),
        )
        .map_err(|(error, _)| error)
        .with_context(|| format!("failed to produce to {topic}"))
}

fn meaningful_lines(relative: &str) -> Result<Vec<String>> {
    Ok(std::fs::read_to_string(repo_root().join(relative))?
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(String::from)
        .collect())
}

/// A worker pod's metric, summed over its samples, from its admin API (the host reaches
/// pod addresses on the node's bridge).
fn pod_metric(pod: &Pod, name: &str) -> Result<f64> {
    let ip = pod
        .status
        .as_ref()
        .and_then(|status| status.pod_ip.clone())
        .context("pod without an address")?;
    let address: SocketAddr = format!("{ip}:8080").parse()?;
    let (_, text) = http_get(address, "/metrics")?;
    Ok(text
        .lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Requests of the controller other than watches (which stay open).
fn calls(controller: &ControllerProcess) -> Result<f64> {
    let total = controller.metric("sluice_controller_api_requests_total")?;
    let watches = controller
        .metric("sluice_controller_api_requests_total{verb=\"watch\"}")
        .unwrap_or(0.0);
    Ok(total - watches)
}

#[tokio::test]
async fn page_views_from_kubectl_apply_to_exactly_its_output() -> Result<()> {
    let environment = Environment::load()?;
    let node = node_env().await?;
    let client = node.client.clone();
    install_crd(&client).await?;
    let namespace = "e2e-ctl-page-views";
    fresh_namespace(&client, namespace).await?;
    let topics = Topics::create(&environment, 3)?;
    // Far-future events (filtered out by the job) keep partitions 1 and 2 from holding the
    // watermark back, as in tests/tests/worker.rs; the input goes to partition 0.
    let far = serde_json::to_vec(
        &json!({"timestamp": "2099-12-31T00:00:00Z", "status": 0, "url": "/", "latencyMs": 0}),
    )?;
    let producer = producer(&environment, None)?;
    for partition in [1, 2] {
        send(&producer, &topics.source.name, partition, &far)?;
    }
    producer.flush(TIMEOUT)?;

    let mut controller = controller(&environment, &node, &[namespace], None, "e2e-ctl")?;
    controller.wait_ready(Duration::from_secs(30))?;
    let name = "page-views";
    let applied = Instant::now();
    apply_job(&client, &page_views(&node, namespace, name, &topics)?).await?;

    // `kubectl wait` returns once the job is Ready.
    let kubectl = environment.clone();
    let waiting = tokio::task::spawn_blocking(move || {
        kubectl.kubectl(&[
            "wait",
            "--for=condition=Ready",
            "-n",
            namespace,
            "streamjob/page-views",
            "--timeout=300s",
        ])
    });
    let mut pods = Vec::new();
    for ordinal in 0..2 {
        pods.push(wait_pod_ready(&client, namespace, &format!("{name}-{ordinal}")).await?);
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    for ordinal in 0..2 {
        let claim = claims.get(&format!("state-{name}-{ordinal}")).await?;
        let phase = claim.status.and_then(|status| status.phase);
        ensure!(
            phase.as_deref() == Some("Bound"),
            "PVC {ordinal}: {phase:?}"
        );
    }
    let waited = waiting.await??;
    ensure!(
        waited.contains("condition met"),
        "kubectl wait said {waited}"
    );
    eprintln!("Ready {:?} after kubectl apply", applied.elapsed());

    let jobs: Api<StreamJob> = Api::namespaced(client.clone(), namespace);
    let job = jobs.get(name).await?;
    let status = job.status.clone().context("no status")?;
    ensure!(
        status.phase == Some(sluice_crds::status::Phase::Running)
            && status.ready_replicas == Some(2)
            && status.replicas == Some(2)
            && status.observed_generation == job.metadata.generation,
        "status {}",
        describe_job(&job)
    );
    let deployed = status.deployed.context("no status.deployed")?;
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let set = sets.get(name).await?;
    let annotations = set
        .spec
        .template
        .metadata
        .and_then(|meta| meta.annotations)
        .unwrap_or_default();
    ensure!(
        annotations.get("sluice.dev/spec-hash") == Some(&deployed.spec_hash)
            && deployed.parallelism == 2,
        "deployed {deployed:?}, pod annotations {annotations:?}"
    );
    let pod_spec = pods[0].spec.clone().context("pod without spec")?;
    let security = pod_spec
        .security_context
        .context("no pod security context")?;
    ensure!(security.run_as_non_root == Some(true), "{security:?}");
    let table = environment.kubectl(&["get", "sj", "-n", namespace, "-o", "wide"])?;
    ensure!(
        table.contains("Running") && table.contains(&deployed.spec_hash),
        "kubectl get sj:\n{table}"
    );
    let reasons = event_reasons(&client, namespace, name).await?;
    ensure!(reasons.contains("Running"), "events: {reasons:?}");

    // The input once both far-future events are read, then one more to fire every window.
    let deadline = Instant::now() + Duration::from_secs(60);
    while pods
        .iter()
        .map(|pod| pod_metric(pod, "sluice_worker_events_in_total").unwrap_or(0.0))
        .sum::<f64>()
        < 2.0
    {
        ensure!(
            Instant::now() < deadline,
            "the far-future events were not read"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let input = std::fs::read_to_string(repo_root().join("examples/page-views/input.jsonl"))?;
    for line in input.lines() {
        send(&producer, &topics.source.name, 0, line.as_bytes())?;
    }
    send(&producer, &topics.source.name, 0, &far)?;
    producer.flush(TIMEOUT)?;
    let mut expected = meaningful_lines("examples/page-views/expected-output.jsonl")?;
    let reader = consumer(&environment, &topics.sink.name, 2, "read_committed")?;
    let mut actual: Vec<String> = poll_messages(&reader, expected.len(), Duration::from_secs(120))?
        .into_iter()
        .map(|(_, value)| value)
        .collect();
    let extra = poll_messages(&reader, 1, Duration::from_secs(5))?;
    ensure!(
        extra.is_empty(),
        "records beyond the expected ones: {extra:?}"
    );
    actual.sort();
    expected.sort();
    assert_eq!(
        actual, expected,
        "results in the sink topic (read_committed)"
    );

    // Idle: no API request but the open watches over a minute.
    let before = (
        calls(&controller)?,
        controller.metric("sluice_controller_reconciles_total")?,
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    let after = (
        calls(&controller)?,
        controller.metric("sluice_controller_reconciles_total")?,
    );
    eprintln!("idle minute: API requests {before:?} -> {after:?} (calls, reconciles)");
    ensure!(
        after == before,
        "an idle job made API requests: {before:?} -> {after:?}\n{}",
        controller.log_tail()
    );

    // A child deleted by hand is put back.
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let old = config_maps.get("page-views-job").await?.metadata.uid;
    config_maps
        .delete("page-views-job", &Default::default())
        .await?;
    wait_for(
        "the job ConfigMap to be put back",
        Duration::from_secs(30),
        || async {
            match config_maps.get_opt("page-views-job").await? {
                Some(found) if found.metadata.uid != old => Ok(Some(())),
                _ => bail!("not back yet"),
            }
        },
    )
    .await?;

    // kubectl scale: the StatefulSet follows, and the status says how.
    environment.kubectl(&["scale", "-n", namespace, "sj/page-views", "--replicas", "3"])?;
    wait_for(
        "the StatefulSet to follow kubectl scale",
        Duration::from_secs(30),
        || async {
            let set = sets.get(name).await?;
            match set.spec.replicas {
                Some(3) => Ok(Some(())),
                other => bail!("replicas {other:?}"),
            }
        },
    )
    .await?;
    let rescaling = wait_for(
        "the status to say Rescaling",
        Duration::from_secs(30),
        || async {
            let job = jobs.get(name).await?;
            match condition(&job, "Ready") {
                Some(ready) if ready.reason == "Rescaling" => Ok(Some(ready)),
                _ => bail!("status {}", describe_job(&job)),
            }
        },
    )
    .await?;
    ensure!(
        rescaling
            .message
            .contains("restart from the checkpoints on their volumes"),
        "{rescaling:?}"
    );

    // Deleting the job deletes every child, volumes included.
    environment.kubectl(&["delete", "-n", namespace, "streamjob", name, "--wait=true"])?;
    wait_for(
        "every child to be deleted",
        Duration::from_secs(180),
        || async {
            let mut left = Vec::new();
            if sets.get_opt(name).await?.is_some() {
                left.push("StatefulSet");
            }
            if Api::<Service>::namespaced(client.clone(), namespace)
                .get_opt(name)
                .await?
                .is_some()
            {
                left.push("Service");
            }
            if config_maps.get_opt("page-views-job").await?.is_some() {
                left.push("ConfigMap");
            }
            if Api::<Secret>::namespaced(client.clone(), namespace)
                .get_opt("page-views-admin-token")
                .await?
                .is_some()
            {
                left.push("Secret");
            }
            if Api::<ServiceAccount>::namespaced(client.clone(), namespace)
                .get_opt("page-views-worker")
                .await?
                .is_some()
            {
                left.push("ServiceAccount");
            }
            if Api::<PodDisruptionBudget>::namespaced(client.clone(), namespace)
                .get_opt(name)
                .await?
                .is_some()
            {
                left.push("PodDisruptionBudget");
            }
            if !claims.list(&ListParams::default()).await?.items.is_empty() {
                left.push("PersistentVolumeClaims");
            }
            if !Api::<Pod>::namespaced(client.clone(), namespace)
                .list(&ListParams::default())
                .await?
                .items
                .is_empty()
            {
                left.push("Pods");
            }
            if left.is_empty() {
                Ok(Some(()))
            } else {
                bail!("left: {left:?}")
            }
        },
    )
    .await?;
    let status = controller.terminate(Duration::from_secs(20))?;
    ensure!(
        status.success(),
        "the controller exited {status} on SIGTERM"
    );
    delete_namespace(&client, namespace).await;
    Ok(())
}

#[tokio::test]
async fn a_stalled_job_next_to_a_healthy_one() -> Result<()> {
    let environment = Environment::load()?;
    let node = node_env().await?;
    let client = node.client.clone();
    install_crd(&client).await?;
    let namespace = "e2e-ctl-stalled";
    fresh_namespace(&client, namespace).await?;
    let topics = Topics::create(&environment, 1)?;
    let _controller = {
        let mut controller = controller(&environment, &node, &[namespace], None, "e2e-stalled")?;
        controller.wait_ready(Duration::from_secs(30))?;
        controller
    };
    let mut healthy = page_views(&node, namespace, "healthy", &topics)?;
    healthy.spec.parallelism = 1;
    let mut bad_filter = page_views(&node, namespace, "bad-filter", &topics)?;
    bad_filter.spec.pipeline[0] = serde_json::from_value(json!({"filter": "size(1) > 0"}))?;
    let mut no_secret = page_views(&node, namespace, "no-secret", &topics)?;
    no_secret.spec.parallelism = 1;
    no_secret.spec.kafka.secret_ref = Some(sluice_crds::streamjob::SecretReference {
        name: "kafka-credentials".into(),
    });
    for job in [&bad_filter, &no_secret, &healthy] {
        apply_job(&client, job).await?;
    }

    let stalled = wait_condition(
        &client,
        namespace,
        "bad-filter",
        "Stalled",
        "True",
        Duration::from_secs(60),
    )
    .await?;
    let reason = condition(&stalled, "Stalled").context("no Stalled")?;
    ensure!(
        reason.reason == "InvalidSpec" && reason.message.contains("spec.pipeline[0].filter"),
        "{reason:?}"
    );
    let missing = wait_condition(
        &client,
        namespace,
        "no-secret",
        "Stalled",
        "True",
        Duration::from_secs(60),
    )
    .await?;
    let reason = condition(&missing, "Stalled").context("no Stalled")?;
    ensure!(
        reason.reason == "MissingReference" && reason.message.contains("spec.kafka.secretRef"),
        "{reason:?}"
    );
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    ensure!(
        sets.get_opt("bad-filter").await?.is_none(),
        "an invalid job got workers"
    );
    wait_condition(
        &client,
        namespace,
        "healthy",
        "Ready",
        "True",
        READY_TIMEOUT,
    )
    .await?;
    ensure!(
        event_reasons(&client, namespace, "bad-filter")
            .await?
            .contains("InvalidSpec"),
        "no InvalidSpec event"
    );
    ensure!(
        event_reasons(&client, namespace, "no-secret")
            .await?
            .contains("MissingReference"),
        "no MissingReference event"
    );

    // Break the healthy job: it stalls, and its worker keeps running its last good spec.
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let before = pods.get("healthy-0").await?.metadata.uid;
    let hash_before = sets
        .get("healthy")
        .await?
        .spec
        .template
        .metadata
        .and_then(|meta| meta.annotations);
    environment.kubectl(&[
        "patch",
        "-n",
        namespace,
        "streamjob",
        "healthy",
        "--type",
        "json",
        "-p",
        r#"[{"op":"replace","path":"/spec/pipeline/0/filter","value":"event.status +"}]"#,
    ])?;
    let broken = wait_condition(
        &client,
        namespace,
        "healthy",
        "Stalled",
        "True",
        Duration::from_secs(60),
    )
    .await?;
    let ready = condition(&broken, "Ready").context("no Ready")?;
    ensure!(
        ready.status == "False"
            && ready
                .message
                .contains("the workers keep running generation 1"),
        "{ready:?}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pod = pods.get("healthy-0").await?;
    ensure!(
        pod.metadata.uid == before && common_node::pod_is_ready(&pod),
        "the worker was replaced or is not ready"
    );
    let hash_after = sets
        .get("healthy")
        .await?
        .spec
        .template
        .metadata
        .and_then(|meta| meta.annotations);
    ensure!(
        hash_before == hash_after,
        "the StatefulSet changed: {hash_before:?} -> {hash_after:?}"
    );

    // The missing Secret appears: the job proceeds on its next retry (Secrets are not watched).
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "kafka-credentials"}}))?,
        )
        .await?;
    wait_for(
        "no-secret to get workers",
        Duration::from_secs(90),
        || async { Ok(sets.get_opt("no-secret").await?.map(|_| ())) },
    )
    .await?;
    delete_namespace(&client, namespace).await;
    Ok(())
}

#[tokio::test]
async fn the_standby_takes_over_when_the_leader_dies() -> Result<()> {
    let environment = Environment::load()?;
    let node = node_env().await?;
    let client = node.client.clone();
    install_crd(&client).await?;
    let namespace = "e2e-ctl-leader";
    fresh_namespace(&client, namespace).await?;
    let lease = Some((namespace, "sluice-controller"));
    let mut first = controller(&environment, &node, &[namespace], lease, "e2e-leader-a")?;
    first.wait_ready(Duration::from_secs(30))?;
    let mut second = controller(&environment, &node, &[namespace], lease, "e2e-leader-b")?;
    second.wait_ready(Duration::from_secs(30))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !first.leads() && !second.leads() {
        ensure!(Instant::now() < deadline, "no leader within 30s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(!(first.leads() && second.leads()), "two leaders");
    let (mut leader, mut standby) = if first.leads() {
        (first, second)
    } else {
        (second, first)
    };

    // A suspended job runs no worker: this test is about the controllers.
    let text = std::fs::read_to_string(repo_root().join("examples/page-views/streamjob.yaml"))?;
    let mut job: StreamJob = serde_yaml_ng::from_str(&text)?;
    job.metadata.namespace = Some(namespace.into());
    job.spec.suspend = true;
    apply_job(&client, &job).await?;
    wait_condition(
        &client,
        namespace,
        "page-views",
        "Ready",
        "True",
        Duration::from_secs(60),
    )
    .await?;

    leader.kill()?;
    let killed = Instant::now();
    while !standby.leads() {
        ensure!(
            killed.elapsed() < Duration::from_secs(30),
            "the standby did not take over within 30s:\n{}",
            standby.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let takeover = killed.elapsed();
    eprintln!("the standby took over {takeover:?} after the leader was killed (lease 6s)");
    ensure!(
        takeover <= Duration::from_secs(6 + 4),
        "takeover took {takeover:?}, more than the lease time (6s) and a renewal"
    );
    // The new leader reconciles: a scale shows in the status.
    // (The example runs 2 workers: scale to another number, or nothing changes.)
    environment.kubectl(&["scale", "-n", namespace, "sj/page-views", "--replicas", "3"])?;
    let jobs: Api<StreamJob> = Api::namespaced(client.clone(), namespace);
    wait_for(
        "the new leader to reconcile",
        Duration::from_secs(30),
        || async {
            let job = jobs.get("page-views").await?;
            let observed = job
                .status
                .as_ref()
                .and_then(|status| status.observed_generation);
            if observed == job.metadata.generation && observed >= Some(2) {
                Ok(Some(()))
            } else {
                bail!("status {}", describe_job(&job))
            }
        },
    )
    .await?;

    // SIGTERM: a clean exit that gives the Lease back.
    let status = standby.terminate(Duration::from_secs(20))?;
    ensure!(
        status.success(),
        "the controller exited {status} on SIGTERM"
    );
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let holder = leases
        .get("sluice-controller")
        .await?
        .spec
        .and_then(|spec| spec.holder_identity);
    ensure!(holder.is_none(), "the Lease is still held by {holder:?}");
    delete_namespace(&client, namespace).await;
    Ok(())
}
