//! Tests that need a node which really runs pods (tests/cluster/node.sh): worker pods with
//! persistent volumes, the controller image talking to the API server through the
//! `kubernetes` Service, and a pod producing to the Kafka broker.
//!
//! They run against the local cluster (`bash tests/cluster/cluster.sh up`) or any cluster
//! named by `KUBECONFIG` whose node has the images loaded (`SLUICE_*_IMAGE` override the
//! image names, `SLUICE_KAFKA_BOOTSTRAP[_POD]` the broker addresses). Without a Ready node
//! they fail, they never skip. Images are never pulled (`imagePullPolicy: Never`): load them
//! into the node first (`bash tests/cluster/images.sh`, or `kind load` on kind).

mod common_node;

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use common_node::{
    NodeEnv, apply, delete_namespace, describe_pod, fresh_namespace, from_json, node_env,
    pod_is_ready, wait_for, wait_pod_succeeded,
};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, DynamicObject, LogParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Api, Client};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;

const POD_START: Duration = Duration::from_secs(180);
const PVC_BOUND: Duration = Duration::from_secs(120);

/// The StatefulSet's container: checks the worker binary can be loaded (every shared library
/// it needs is in the image), then records an identity on the volume once and a line per
/// boot.
const WORKER_SCRIPT: &str = r#"set -eu
if ! libs=$(/lib64/ld-linux-x86-64.so.2 --list /usr/local/bin/sluice-worker 2>&1) || echo "$libs" | grep -q 'not found'; then
  echo "sluice-worker cannot be loaded in this image: $libs"; exit 1
fi
d=/var/lib/sluice
[ -f "$d/identity" ] || echo "$HOSTNAME-$(cat /proc/sys/kernel/random/uuid)" > "$d/identity"
echo "$HOSTNAME" >> "$d/boots"
echo "identity=$(cat "$d/identity") boots=$(wc -l < "$d/boots") uid=$(id -u)"
touch /tmp/ready
exec sleep infinity
"#;

fn worker_statefulset(env: &NodeEnv) -> Result<StatefulSet> {
    from_json(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": { "name": "state" },
        "spec": {
            "serviceName": "state",
            "replicas": 2,
            "podManagementPolicy": "Parallel",
            "selector": { "matchLabels": { "app": "state" } },
            "template": {
                "metadata": { "labels": { "app": "state" } },
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "worker",
                        "image": env.worker_image,
                        "imagePullPolicy": "Never",
                        "command": ["/bin/sh", "-c", WORKER_SCRIPT],
                        "readinessProbe": {
                            "exec": { "command": ["test", "-f", "/tmp/ready"] },
                            "periodSeconds": 1,
                        },
                        "volumeMounts": [{ "name": "state", "mountPath": "/var/lib/sluice" }],
                    }],
                },
            },
            "volumeClaimTemplates": [{
                "metadata": { "name": "state" },
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": { "requests": { "storage": "64Mi" } },
                },
            }],
        },
    }))
}

/// The line the worker script logs: `identity=<id> boots=<n> uid=<uid>`.
fn parse_worker_line(log: &str) -> Option<(String, u32, String)> {
    let line = log.lines().find(|l| l.starts_with("identity="))?;
    let mut identity = None;
    let mut boots = None;
    let mut uid = None;
    for part in line.split_whitespace() {
        match part.split_once('=') {
            Some(("identity", v)) => identity = Some(v.to_string()),
            Some(("boots", v)) => boots = v.parse().ok(),
            Some(("uid", v)) => uid = Some(v.to_string()),
            _ => {}
        }
    }
    Some((identity?, boots?, uid?))
}

/// Waits for pod `name` to be Ready (and, if given, to have a uid other than `old_uid`),
/// then returns its uid and the worker line of its log.
async fn ready_worker(
    client: &Client,
    ns: &str,
    name: &str,
    old_uid: Option<&str>,
) -> Result<(String, (String, u32, String))> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let waited = wait_for(
        &format!("pod {ns}/{name} to be Ready"),
        POD_START,
        || async {
            let Some(pod) = pods.get_opt(name).await? else {
                bail!("pod {name} not created yet");
            };
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            if old_uid == Some(uid.as_str()) {
                bail!("pod {name} is still the old pod {uid}");
            }
            if let Some(reason) = common_node::stuck_reason(&pod) {
                return Ok(Some(Err(reason)));
            }
            if pod_is_ready(&pod) {
                Ok(Some(Ok(uid)))
            } else {
                bail!(
                    "pod {name} ({uid}) not Ready: phase {}",
                    common_node::pod_phase(&pod)
                )
            }
        },
    )
    .await;
    let uid = match waited {
        Ok(Ok(uid)) => uid,
        Ok(Err(reason)) => bail!(
            "pod {ns}/{name} {reason}\n{}",
            describe_pod(client, ns, name).await
        ),
        Err(err) => bail!("{err:#}\n{}", describe_pod(client, ns, name).await),
    };
    let log = pods
        .logs(name, &LogParams::default())
        .await
        .with_context(|| format!("reading the log of {ns}/{name} (API server -> kubelet)"))?;
    let line = parse_worker_line(&log)
        .with_context(|| format!("no `identity=` line in the log of {ns}/{name}: {log:?}"))?;
    Ok((uid, line))
}

/// Waits until PVC `name` is Bound and returns its volume's name.
async fn bound_volume(client: &Client, ns: &str, name: &str) -> Result<String> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("PVC {ns}/{name} to be Bound"), PVC_BOUND, || async {
        let Some(pvc) = pvcs.get_opt(name).await? else {
            bail!("PVC {name} not created yet");
        };
        let phase = pvc.status.as_ref().and_then(|s| s.phase.clone());
        let volume = pvc.spec.as_ref().and_then(|s| s.volume_name.clone());
        match (phase.as_deref(), volume) {
            (Some("Bound"), Some(volume)) => Ok(Some(volume)),
            (phase, _) => bail!(
                "PVC {name} phase {phase:?} (is the default StorageClass local-path there and \
                 local-path-provisioner running? see ${{SLUICE_STATE}}/node/logs/local-path-provisioner.log)"
            ),
        }
    })
    .await
}

#[tokio::test]
async fn worker_statefulset_keeps_its_volume_across_pod_deletion() -> Result<()> {
    let env = node_env().await?;
    let ns = "e2e-node-statefulset";
    fresh_namespace(&env.client, ns).await?;
    let services: Api<Service> = Api::namespaced(env.client.clone(), ns);
    apply(
        &services,
        &from_json(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": { "name": "state" },
            "spec": { "clusterIP": "None", "selector": { "app": "state" } },
        }))?,
    )
    .await?;
    let statefulsets: Api<StatefulSet> = Api::namespaced(env.client.clone(), ns);
    apply(&statefulsets, &worker_statefulset(&env)?).await?;

    let (uid0, (identity0, boots0, user0)) = ready_worker(&env.client, ns, "state-0", None).await?;
    let (_, (identity1, _, _)) = ready_worker(&env.client, ns, "state-1", None).await?;
    let volume0 = bound_volume(&env.client, ns, "state-state-0").await?;
    let volume1 = bound_volume(&env.client, ns, "state-state-1").await?;
    ensure!(
        volume0 != volume1,
        "both replicas got the same volume {volume0}"
    );
    ensure!(
        identity0 != identity1,
        "both replicas see the same identity {identity0}"
    );
    ensure!(
        boots0 == 1,
        "fresh volume of state-0 already had {boots0} boots"
    );
    ensure!(
        user0 != "0",
        "the worker image runs as root; it must run as a non-root user"
    );

    // Delete the pod: the StatefulSet recreates it, bound to the same claim and volume.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    pods.delete("state-0", &DeleteParams::default())
        .await
        .context("deleting pod state-0")?;
    let (uid0b, (identity0b, boots0b, _)) =
        ready_worker(&env.client, ns, "state-0", Some(&uid0)).await?;
    ensure!(uid0b != uid0, "state-0 was not recreated");
    ensure!(
        identity0b == identity0,
        "the recreated state-0 sees identity {identity0b}, the first one wrote {identity0}: \
         the volume's content did not survive"
    );
    ensure!(
        boots0b == 2,
        "expected 2 boots recorded on state-0's volume, found {boots0b}"
    );
    let volume0b = bound_volume(&env.client, ns, "state-state-0").await?;
    ensure!(
        volume0b == volume0,
        "state-0's claim moved from volume {volume0} to {volume0b}"
    );

    delete_namespace(&env.client, ns).await;
    Ok(())
}

#[tokio::test]
async fn pods_reach_the_api_server_through_the_kubernetes_service() -> Result<()> {
    let env = node_env().await?;
    let ns = "e2e-node-service";
    fresh_namespace(&env.client, ns).await?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    // bash's /dev/tcp: a TCP connection to the Service's ClusterIP, DNAT'ed by kube-proxy.
    let script = "set -eu; exec 3<>/dev/tcp/${KUBERNETES_SERVICE_HOST}/${KUBERNETES_SERVICE_PORT}; \
                  echo connected to ${KUBERNETES_SERVICE_HOST}:${KUBERNETES_SERVICE_PORT}";
    let pod: Pod = from_json(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "tcp-probe" },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "probe",
                "image": env.base_image,
                "imagePullPolicy": "Never",
                "command": ["timeout", "20", "bash", "-c", script],
            }],
        },
    }))?;
    pods.create(&PostParams::default(), &pod)
        .await
        .context("creating pod tcp-probe")?;
    let log = wait_pod_succeeded(&env.client, ns, "tcp-probe", POD_START).await?;
    ensure!(
        log.contains("connected to"),
        "unexpected probe output: {log:?}"
    );
    delete_namespace(&env.client, ns).await;
    Ok(())
}

#[tokio::test]
async fn pods_reach_each_other_through_a_cluster_ip_service() -> Result<()> {
    let env = node_env().await?;
    let ns = "e2e-node-pod-service";
    fresh_namespace(&env.client, ns).await?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    // A one-line TCP server (the way the controller reaches workers: pod -> Service -> pod).
    let server =
        r#"while true; do printf 'pong from %s\n' "$HOSTNAME" | nc -N -l 8080 || sleep 0.2; done"#;
    let pod: Pod = from_json(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "echo", "labels": { "app": "echo" } },
        "spec": {
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 1,
            "securityContext": { "runAsUser": 65532, "runAsGroup": 65532, "runAsNonRoot": true },
            "containers": [{
                "name": "echo",
                "image": env.tools_image,
                "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", server],
                "ports": [{ "containerPort": 8080 }],
                "readinessProbe": { "tcpSocket": { "port": 8080 }, "periodSeconds": 1 },
            }],
        },
    }))?;
    pods.create(&PostParams::default(), &pod)
        .await
        .context("creating pod echo")?;
    let services: Api<Service> = Api::namespaced(env.client.clone(), ns);
    let service = apply(
        &services,
        &from_json(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": { "name": "echo" },
            "spec": {
                "selector": { "app": "echo" },
                "ports": [{ "port": 80, "targetPort": 8080 }],
            },
        }))?,
    )
    .await?;
    let cluster_ip = service
        .spec
        .and_then(|s| s.cluster_ip)
        .context("Service echo has no ClusterIP")?;
    let waited = wait_for("pod echo to be Ready", POD_START, || async {
        let pod = pods.get("echo").await?;
        if let Some(reason) = common_node::stuck_reason(&pod) {
            return Ok(Some(Err(reason)));
        }
        if pod_is_ready(&pod) {
            Ok(Some(Ok(())))
        } else {
            bail!("phase {}", common_node::pod_phase(&pod))
        }
    })
    .await;
    match waited {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => bail!(
            "pod {ns}/echo {reason}\n{}",
            describe_pod(&env.client, ns, "echo").await
        ),
        Err(err) => bail!("{err:#}\n{}", describe_pod(&env.client, ns, "echo").await),
    }

    let client = r#"for i in $(seq 1 30); do
  out=$(nc -N -w 3 "$SERVICE_IP" 80 </dev/null || true)
  case "$out" in "pong from echo") echo "$out"; exit 0;; esac
  sleep 1
done
echo "no answer from $SERVICE_IP:80"; exit 1
"#;
    let pod: Pod = from_json(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "client" },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "securityContext": { "runAsUser": 65532, "runAsGroup": 65532, "runAsNonRoot": true },
            "containers": [{
                "name": "client",
                "image": env.tools_image,
                "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", client],
                "env": [{ "name": "SERVICE_IP", "value": cluster_ip }],
            }],
        },
    }))?;
    pods.create(&PostParams::default(), &pod)
        .await
        .context("creating pod client")?;
    let log = wait_pod_succeeded(&env.client, ns, "client", POD_START).await?;
    ensure!(
        log.contains("pong from echo"),
        "unexpected answer through Service {cluster_ip}:80: {log:?}"
    );
    delete_namespace(&env.client, ns).await;
    Ok(())
}

/// Installs the StreamJob CRD from `crds/streamjobs.sluice.dev.yaml` (idempotently) and
/// waits until it is Established.
async fn install_streamjob_crd(client: &Client) -> Result<()> {
    let path = sluice_e2e::repo_root().join("crds/streamjobs.sluice.dev.yaml");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading the StreamJob CRD {} (generated by the crds crate's crdgen)",
            path.display()
        )
    })?;
    let crd: CustomResourceDefinition =
        serde_yaml_ng::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    apply(&crds, &crd).await?;
    let name = crd.metadata.name.clone().unwrap_or_default();
    wait_for(
        &format!("CRD {name} to be Established"),
        Duration::from_secs(60),
        || async {
            let crd = crds.get(&name).await?;
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            Ok(established.then_some(()))
        },
    )
    .await
}

#[tokio::test]
async fn controller_image_lists_streamjobs_with_in_cluster_config() -> Result<()> {
    let env = node_env().await?;
    install_streamjob_crd(&env.client).await?;
    let ns = "e2e-node-doctor";
    fresh_namespace(&env.client, ns).await?;

    // One StreamJob for the doctor to list (the controller is not running here).
    let gvk = GroupVersionKind::gvk("sluice.dev", "v1alpha1", "StreamJob");
    let streamjobs: Api<DynamicObject> =
        Api::namespaced_with(env.client.clone(), ns, &ApiResource::from_gvk(&gvk));
    let job: DynamicObject = from_json(serde_json::json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "StreamJob",
        "metadata": { "name": "doctor-probe" },
        "spec": {
            "kafka": { "bootstrapServers": env.kafka_bootstrap_pod },
            "source": { "topics": ["doctor-in"], "eventTime": { "field": "ts" } },
            "pipeline": [{ "filter": "true" }],
            "sink": { "topic": "doctor-out" },
        },
    }))?;
    streamjobs
        .create(&PostParams::default(), &job)
        .await
        .context("creating StreamJob doctor-probe")?;

    // The controller's identity: a ServiceAccount allowed to read StreamJobs here.
    let sas: Api<ServiceAccount> = Api::namespaced(env.client.clone(), ns);
    apply(
        &sas,
        &from_json(serde_json::json!({
            "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": "sluice-doctor" },
        }))?,
    )
    .await?;
    let roles: Api<Role> = Api::namespaced(env.client.clone(), ns);
    apply(
        &roles,
        &from_json(serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": { "name": "sluice-doctor" },
            "rules": [{
                "apiGroups": ["sluice.dev"],
                "resources": ["streamjobs", "streamjobs/status"],
                "verbs": ["get", "list", "watch"],
            }],
        }))?,
    )
    .await?;
    let bindings: Api<RoleBinding> = Api::namespaced(env.client.clone(), ns);
    apply(
        &bindings,
        &from_json(serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": { "name": "sluice-doctor" },
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "sluice-doctor",
            },
            "subjects": [{ "kind": "ServiceAccount", "name": "sluice-doctor", "namespace": ns }],
        }))?,
    )
    .await?;

    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let pod: Pod = from_json(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "doctor" },
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": "sluice-doctor",
            "containers": [{
                "name": "controller",
                "image": env.controller_image,
                "imagePullPolicy": "Never",
                "args": ["doctor"],
                "env": [
                    { "name": "RUST_LOG", "value": "info" },
                    { "name": "POD_NAMESPACE",
                      "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } },
                ],
            }],
        },
    }))?;
    pods.create(&PostParams::default(), &pod)
        .await
        .context("creating pod doctor")?;
    let log = wait_pod_succeeded(&env.client, ns, "doctor", POD_START).await?;
    ensure!(
        log.lines().any(|l| l.contains("doctor-probe")),
        "`sluice-controller doctor` exited 0 but did not list StreamJob doctor-probe \
         (expected one line per StreamJob in namespace {ns}); its output was: {log:?}"
    );
    delete_namespace(&env.client, ns).await;
    Ok(())
}

#[tokio::test]
async fn pod_produces_to_kafka_and_the_host_consumes() -> Result<()> {
    let env = node_env().await?;
    let ns = "e2e-node-kafka";
    fresh_namespace(&env.client, ns).await?;
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let topic = format!("e2e-node-kafka-{nonce}");
    let payload = format!("hello from a pod {nonce}");

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .create()
        .context("creating the Kafka admin client")?;
    let created = tokio::time::timeout(
        Duration::from_secs(30),
        admin.create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        ),
    )
    .await
    .with_context(|| {
        format!(
            "creating topic {topic} on {} timed out",
            env.kafka_bootstrap
        )
    })?
    .with_context(|| format!("creating topic {topic} on {}", env.kafka_bootstrap))?;
    for result in created {
        result.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
    }

    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let script = r#"set -eu
printf '%s\n' "$PAYLOAD" | kcat -b "$BOOTSTRAP" -t "$TOPIC" -P -X acks=all -X message.timeout.ms=30000
echo "produced to $TOPIC via $BOOTSTRAP"
"#;
    let pod: Pod = from_json(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "producer" },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "securityContext": { "runAsUser": 65532, "runAsGroup": 65532, "runAsNonRoot": true },
            "containers": [{
                "name": "kcat",
                "image": env.tools_image,
                "imagePullPolicy": "Never",
                "command": ["timeout", "60", "/bin/sh", "-c", script],
                "env": [
                    { "name": "BOOTSTRAP", "value": env.kafka_bootstrap_pod },
                    { "name": "TOPIC", "value": topic },
                    { "name": "PAYLOAD", "value": payload },
                ],
            }],
        },
    }))?;
    pods.create(&PostParams::default(), &pod)
        .await
        .context("creating pod producer")?;
    wait_pod_succeeded(&env.client, ns, "producer", POD_START).await?;

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .set("group.id", format!("e2e-node-{nonce}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .context("creating the Kafka consumer")?;
    consumer
        .subscribe(&[&topic])
        .with_context(|| format!("subscribing to {topic}"))?;
    let received = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let msg = consumer.recv().await.context("consuming")?;
            let body = msg
                .payload()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default();
            if body == payload {
                return anyhow::Ok(body);
            }
        }
    })
    .await
    .with_context(|| {
        format!(
            "the host consumer ({}) did not receive the pod's message on {topic} within 60s",
            env.kafka_bootstrap
        )
    })??;
    assert_eq!(received, payload);
    delete_namespace(&env.client, ns).await;
    Ok(())
}
