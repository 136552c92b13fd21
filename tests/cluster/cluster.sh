#!/usr/bin/env bash
# The local Sluice cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# a single-node KRaft Kafka broker and SeaweedFS's S3 gateway, built from the package
# registries and run as plain processes (no Docker). The node (kubelet, containerd, kube-proxy) is tests/cluster/node.sh.
#
#   cluster.sh up       build or reuse binaries, start what is not running, wait until ready
#   cluster.sh down     stop what `up` started (by pid), remove runtime state and the bridge
#   cluster.sh status   one line per component; exit status 1 when something is not healthy
#   cluster.sh env      print the shell environment (`eval "$(tests/cluster/cluster.sh env)"`)
#
# Environment: SLUICE_CACHE (default /var/cache/sluice), SLUICE_STATE (default
# /var/tmp/sluice-cluster), SLUICE_NODE=0 to skip the node. See tests/cluster/README.md.
set -euo pipefail

CLUSTER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.sh
source "${CLUSTER_DIR}/versions.sh"
# shellcheck source=lib.sh
source "${CLUSTER_DIR}/lib.sh"
# shellcheck source=pki.sh
source "${CLUSTER_DIR}/pki.sh"
# shellcheck source=build.sh
source "${CLUSTER_DIR}/build.sh"

RUN_DIR="${SLUICE_STATE}/run"
LOG_DIR="${SLUICE_STATE}/logs"
KUBECONFIG_DIR="${SLUICE_STATE}/kubeconfig"
ADMIN_KUBECONFIG="${KUBECONFIG_DIR}/admin.kubeconfig"
ENV_FILE="${SLUICE_STATE}/env"
NODE_SCRIPT="${CLUSTER_DIR}/node.sh"
APISERVER_BRIDGE_URL="https://${SLUICE_BRIDGE_IP}:${SLUICE_APISERVER_PORT}"
APISERVER_LOOPBACK_URL="https://127.0.0.1:${SLUICE_APISERVER_PORT}"

# Deadlines (seconds) for each component to become ready once started.
ETCD_DEADLINE=60
APISERVER_DEADLINE=120
CONTROLLERS_DEADLINE=60
KAFKA_DEADLINE=120

pidfile_of() { printf '%s/%s.pid' "${RUN_DIR}" "$1"; }
logfile_of() { printf '%s/%s.log' "${LOG_DIR}" "$1"; }

require_root_tools() {
  [[ ${EUID} -eq 0 ]] || die "cluster.sh must run as root (it creates the ${SLUICE_BRIDGE} bridge)"
  local tool
  for tool in ip openssl curl java flock setsid; do
    command -v "${tool}" >/dev/null || die "${tool} is not installed"
  done
}

# When a port we need is held by a process we did not start, say so instead of failing later.
ensure_port_free() {
  local name="$1" address="$2" port="$3"
  if tcp_open "${address}" "${port}"; then
    log "FAILED: ${name}: ${address}:${port} is already in use by a process this script did not start:"
    ss -ltnpH "sport = :${port}" >&2 || true
    die "free ${address}:${port} (or run cluster.sh down) and retry"
  fi
}

# --- network -------------------------------------------------------------------------------

ensure_bridge() {
  if ! ip link show "${SLUICE_BRIDGE}" >/dev/null 2>&1; then
    ip link add "${SLUICE_BRIDGE}" type bridge
    log "created bridge ${SLUICE_BRIDGE}"
  fi
  if ! ip -4 addr show dev "${SLUICE_BRIDGE}" | grep -q "inet ${SLUICE_BRIDGE_IP}/"; then
    ip addr add "${SLUICE_BRIDGE_IP}/24" dev "${SLUICE_BRIDGE}"
  fi
  ip link set "${SLUICE_BRIDGE}" up
}

remove_bridge() {
  if ip link show "${SLUICE_BRIDGE}" >/dev/null 2>&1; then
    ip link delete "${SLUICE_BRIDGE}"
    log "removed bridge ${SLUICE_BRIDGE}"
  fi
}

# --- etcd ----------------------------------------------------------------------------------

etcd_healthy() {
  curl -sf --max-time 3 --cacert "${PKI_DIR}/ca.crt" --cert "${PKI_DIR}/apiserver-etcd-client.crt" \
    --key "${PKI_DIR}/apiserver-etcd-client.key" \
    "https://127.0.0.1:${SLUICE_ETCD_CLIENT_PORT}/health" | grep -q '"health":"true"'
}

ensure_etcd() {
  local pidfile logfile
  pidfile=$(pidfile_of etcd)
  logfile=$(logfile_of etcd)
  if ! pid_alive "${pidfile}"; then
    ensure_port_free etcd 127.0.0.1 "${SLUICE_ETCD_CLIENT_PORT}"
    # --unsafe-no-fsync: a throwaway test cluster; fsync latency dominates API writes on CI disks.
    start_daemon etcd "${pidfile}" "${logfile}" "${ETCD_BIN_DIR}/etcd" \
      --name=sluice --data-dir="${SLUICE_STATE}/etcd" \
      --listen-client-urls="https://127.0.0.1:${SLUICE_ETCD_CLIENT_PORT}" \
      --advertise-client-urls="https://127.0.0.1:${SLUICE_ETCD_CLIENT_PORT}" \
      --listen-peer-urls="http://127.0.0.1:${SLUICE_ETCD_PEER_PORT}" \
      --initial-advertise-peer-urls="http://127.0.0.1:${SLUICE_ETCD_PEER_PORT}" \
      --initial-cluster="sluice=http://127.0.0.1:${SLUICE_ETCD_PEER_PORT}" \
      --cert-file="${PKI_DIR}/etcd-server.crt" --key-file="${PKI_DIR}/etcd-server.key" \
      --trusted-ca-file="${PKI_DIR}/ca.crt" --client-cert-auth=true \
      --unsafe-no-fsync=true --log-level=warn
  else
    log "etcd already running (pid $(<"${pidfile}"))"
  fi
  WAIT_PIDFILE="${pidfile}" wait_until etcd "${logfile}" "${ETCD_DEADLINE}" etcd_healthy
}

# --- kube-apiserver and its loopback relay -------------------------------------------------

apiserver_ready() {
  local url="$1"
  curl -sf --max-time 3 --cacert "${PKI_DIR}/ca.crt" --cert "${PKI_DIR}/admin.crt" \
    --key "${PKI_DIR}/admin.key" "${url}/readyz" | grep -qx ok
}

# The API server binds the bridge address and advertises it, so pods reach it directly and
# through the `kubernetes` Service (the default lease endpoint reconciler keeps its endpoints
# at 10.244.0.1:6443). The loopback address is served by the relay below.
ensure_apiserver() {
  local pidfile logfile
  pidfile=$(pidfile_of kube-apiserver)
  logfile=$(logfile_of kube-apiserver)
  if ! pid_alive "${pidfile}"; then
    ensure_port_free kube-apiserver "${SLUICE_BRIDGE_IP}" "${SLUICE_APISERVER_PORT}"
    start_daemon kube-apiserver "${pidfile}" "${logfile}" "${K8S_BIN_DIR}/kube-apiserver" \
      --advertise-address="${SLUICE_BRIDGE_IP}" --bind-address="${SLUICE_BRIDGE_IP}" \
      --secure-port="${SLUICE_APISERVER_PORT}" \
      --etcd-servers="https://127.0.0.1:${SLUICE_ETCD_CLIENT_PORT}" \
      --etcd-cafile="${PKI_DIR}/ca.crt" --etcd-certfile="${PKI_DIR}/apiserver-etcd-client.crt" \
      --etcd-keyfile="${PKI_DIR}/apiserver-etcd-client.key" \
      --tls-cert-file="${PKI_DIR}/apiserver.crt" --tls-private-key-file="${PKI_DIR}/apiserver.key" \
      --client-ca-file="${PKI_DIR}/ca.crt" \
      --kubelet-preferred-address-types=InternalIP \
      --kubelet-client-certificate="${PKI_DIR}/apiserver-kubelet-client.crt" \
      --kubelet-client-key="${PKI_DIR}/apiserver-kubelet-client.key" \
      --service-cluster-ip-range="${SLUICE_SERVICE_CIDR}" \
      --service-account-issuer="https://kubernetes.default.svc.${SLUICE_CLUSTER_DOMAIN}" \
      --service-account-key-file="${PKI_DIR}/sa.pub" \
      --service-account-signing-key-file="${PKI_DIR}/sa.key" \
      --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
      --enable-bootstrap-token-auth=true --allow-privileged=true \
      --endpoint-reconciler-type=lease --profiling=false
  else
    log "kube-apiserver already running (pid $(<"${pidfile}"))"
  fi
  WAIT_PIDFILE="${pidfile}" wait_until kube-apiserver "${logfile}" "${APISERVER_DEADLINE}" \
    apiserver_ready "${APISERVER_BRIDGE_URL}"
}

ensure_apiserver_relay() {
  local pidfile logfile
  pidfile=$(pidfile_of apiserver-relay)
  logfile=$(logfile_of apiserver-relay)
  if ! pid_alive "${pidfile}"; then
    ensure_port_free apiserver-relay 127.0.0.1 "${SLUICE_APISERVER_PORT}"
    start_daemon apiserver-relay "${pidfile}" "${logfile}" "$(forwarder_path)" \
      --listen="127.0.0.1:${SLUICE_APISERVER_PORT}" \
      --target="${SLUICE_BRIDGE_IP}:${SLUICE_APISERVER_PORT}"
  else
    log "apiserver-relay already running (pid $(<"${pidfile}"))"
  fi
  WAIT_PIDFILE="${pidfile}" wait_until "kube-apiserver on 127.0.0.1" "${logfile}" 20 \
    apiserver_ready "${APISERVER_LOOPBACK_URL}"
}

# --- controller-manager and scheduler ------------------------------------------------------

component_healthy() {
  curl -skf --max-time 3 "https://127.0.0.1:$1/healthz" | grep -qx ok
}

write_component_kubeconfigs() {
  write_kubeconfig "${ADMIN_KUBECONFIG}" "${APISERVER_LOOPBACK_URL}" admin sluice-admin
  write_kubeconfig "${KUBECONFIG_DIR}/kube-controller-manager.kubeconfig" "${APISERVER_BRIDGE_URL}" \
    kube-controller-manager system:kube-controller-manager
  write_kubeconfig "${KUBECONFIG_DIR}/kube-scheduler.kubeconfig" "${APISERVER_BRIDGE_URL}" \
    kube-scheduler system:kube-scheduler
}

ensure_controller_manager() {
  local pidfile logfile kubeconfig="${KUBECONFIG_DIR}/kube-controller-manager.kubeconfig"
  pidfile=$(pidfile_of kube-controller-manager)
  logfile=$(logfile_of kube-controller-manager)
  if ! pid_alive "${pidfile}"; then
    ensure_port_free kube-controller-manager 127.0.0.1 10257
    start_daemon kube-controller-manager "${pidfile}" "${logfile}" \
      "${K8S_BIN_DIR}/kube-controller-manager" \
      --kubeconfig="${kubeconfig}" --authentication-kubeconfig="${kubeconfig}" \
      --authorization-kubeconfig="${kubeconfig}" \
      --bind-address=127.0.0.1 --secure-port=10257 --leader-elect=false \
      --controllers='*,bootstrapsigner,tokencleaner' --use-service-account-credentials=true \
      --service-account-private-key-file="${PKI_DIR}/sa.key" --root-ca-file="${PKI_DIR}/ca.crt" \
      --cluster-signing-cert-file="${PKI_DIR}/ca.crt" --cluster-signing-key-file="${PKI_DIR}/ca.key" \
      --service-cluster-ip-range="${SLUICE_SERVICE_CIDR}" --cluster-name=sluice --profiling=false
  else
    log "kube-controller-manager already running (pid $(<"${pidfile}"))"
  fi
  WAIT_PIDFILE="${pidfile}" wait_until kube-controller-manager "${logfile}" \
    "${CONTROLLERS_DEADLINE}" component_healthy 10257
}

ensure_scheduler() {
  local pidfile logfile kubeconfig="${KUBECONFIG_DIR}/kube-scheduler.kubeconfig"
  pidfile=$(pidfile_of kube-scheduler)
  logfile=$(logfile_of kube-scheduler)
  if ! pid_alive "${pidfile}"; then
    ensure_port_free kube-scheduler 127.0.0.1 10259
    start_daemon kube-scheduler "${pidfile}" "${logfile}" "${K8S_BIN_DIR}/kube-scheduler" \
      --kubeconfig="${kubeconfig}" --authentication-kubeconfig="${kubeconfig}" \
      --authorization-kubeconfig="${kubeconfig}" \
      --bind-address=127.0.0.1 --secure-port=10259 --leader-elect=false --profiling=false
  else
    log "kube-scheduler already running (pid $(<"${pidfile}"))"
  fi
  WAIT_PIDFILE="${pidfile}" wait_until kube-scheduler "${logfile}" "${CONTROLLERS_DEADLINE}" \
    component_healthy 10259
}

# --- Kafka ---------------------------------------------------------------------------------

KAFKA_DIR="${SLUICE_STATE}/kafka"

write_kafka_config() {
  mkdir -p "${KAFKA_DIR}/data"
  if [[ ! -s "${KAFKA_DIR}/cluster-id" ]]; then
    # A KRaft cluster id is 16 random bytes, URL-safe base64 without padding. One in 64
    # starts with '-', which the storage tool would take for an option (Kafka's own
    # Uuid.randomUuid() never makes such ids): draw again.
    local cluster_id="-"
    while [[ "${cluster_id}" == -* ]]; do
      cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
    done
    printf '%s\n' "${cluster_id}" >"${KAFKA_DIR}/cluster-id"
  fi
  cat >"${KAFKA_DIR}/server.properties" <<PROPERTIES
# Written by tests/cluster/cluster.sh: single-node KRaft broker+controller.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:${SLUICE_KAFKA_CONTROLLER_PORT}
controller.listener.names=CONTROLLER
# HOST for clients on this machine, POD for pods on the ${SLUICE_BRIDGE} bridge; each
# advertises its own address.
listeners=HOST://127.0.0.1:${SLUICE_KAFKA_HOST_PORT},POD://${SLUICE_BRIDGE_IP}:${SLUICE_KAFKA_POD_PORT},CONTROLLER://127.0.0.1:${SLUICE_KAFKA_CONTROLLER_PORT}
advertised.listeners=HOST://127.0.0.1:${SLUICE_KAFKA_HOST_PORT},POD://${SLUICE_BRIDGE_IP}:${SLUICE_KAFKA_POD_PORT}
listener.security.protocol.map=HOST:PLAINTEXT,POD:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=HOST
log.dirs=${KAFKA_DIR}/data
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
PROPERTIES
  cat >"${KAFKA_DIR}/log4j2.properties" <<'PROPERTIES'
status = warn
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
PROPERTIES
}

kafka_java() {
  java -Xmx512m -Xms512m -XX:+UseG1GC -Djava.awt.headless=true -Djava.net.preferIPv4Stack=true \
    -Dlog4j2.configurationFile="file:${KAFKA_DIR}/log4j2.properties" \
    -cp "${KAFKA_HOME}/libs/*" "$@"
}

kafka_answers() {
  tcp_open "$1" "$2" || return 1
  timeout 30 java -Xmx128m -cp "${KAFKA_HOME}/libs/*" \
    -Dlog4j2.configurationFile="file:${KAFKA_DIR}/log4j2.properties" -Dlog4j2.level=WARN \
    org.apache.kafka.tools.TopicCommand --bootstrap-server "$1:$2" --list >/dev/null 2>&1
}

ensure_kafka() {
  local pidfile logfile
  pidfile=$(pidfile_of kafka)
  logfile=$(logfile_of kafka)
  if ! pid_alive "${pidfile}"; then
    ensure_port_free kafka 127.0.0.1 "${SLUICE_KAFKA_HOST_PORT}"
    ensure_port_free kafka 127.0.0.1 "${SLUICE_KAFKA_CONTROLLER_PORT}"
    ensure_port_free kafka "${SLUICE_BRIDGE_IP}" "${SLUICE_KAFKA_POD_PORT}"
    write_kafka_config
    log "kafka: formatting storage (idempotent)"
    kafka_java kafka.tools.StorageTool format --ignore-formatted \
      --cluster-id="$(<"${KAFKA_DIR}/cluster-id")" -c "${KAFKA_DIR}/server.properties" >>"${logfile}" 2>&1 ||
      fail_component "kafka storage format" "${logfile}" "StorageTool format failed"
    start_daemon kafka "${pidfile}" "${logfile}" java -Xmx512m -Xms512m -XX:+UseG1GC \
      -Djava.awt.headless=true -Djava.net.preferIPv4Stack=true -Dlog4j2.configurationFile="file:${KAFKA_DIR}/log4j2.properties" \
      -cp "${KAFKA_HOME}/libs/*" kafka.Kafka "${KAFKA_DIR}/server.properties"
  else
    log "kafka already running (pid $(<"${pidfile}"))"
  fi
  WAIT_PIDFILE="${pidfile}" wait_until "kafka on 127.0.0.1:${SLUICE_KAFKA_HOST_PORT}" "${logfile}" \
    "${KAFKA_DEADLINE}" kafka_answers 127.0.0.1 "${SLUICE_KAFKA_HOST_PORT}"
  WAIT_PIDFILE="${pidfile}" wait_until "kafka on ${SLUICE_BRIDGE_IP}:${SLUICE_KAFKA_POD_PORT}" \
    "${logfile}" 30 kafka_answers "${SLUICE_BRIDGE_IP}" "${SLUICE_KAFKA_POD_PORT}"
}

# --- SeaweedFS (the S3-compatible server) --------------------------------------------------

SEAWEEDFS_DIR="${SLUICE_STATE}/seaweedfs"
SEAWEEDFS_DEADLINE=90

# The identities of the S3 gateway: one, with the static test credentials, allowed everything.
write_seaweedfs_config() {
  mkdir -p "${SEAWEEDFS_DIR}/data"
  cat >"${SEAWEEDFS_DIR}/s3.json.tmp" <<JSON
{
  "identities": [
    {
      "name": "sluice-e2e",
      "credentials": [
        {"accessKey": "${SLUICE_S3_ACCESS_KEY_ID}", "secretKey": "${SLUICE_S3_SECRET_ACCESS_KEY}"}
      ],
      "actions": ["Admin", "Read", "List", "Tagging", "Write"]
    }
  ]
}
JSON
  chmod 600 "${SEAWEEDFS_DIR}/s3.json.tmp"
  mv "${SEAWEEDFS_DIR}/s3.json.tmp" "${SEAWEEDFS_DIR}/s3.json"
}

# Ready: ListBuckets answers with our credentials (the filer behind the gateway is up).
s3_ready() { s3_request GET / -o /dev/null; }

s3_bucket_exists() { s3_request HEAD "/${SLUICE_S3_BUCKET}" -o /dev/null; }

# Writes, reads back and deletes an object: the master has writable volumes (none are made
# until the first write; a full disk makes them read-only) and the whole path works.
s3_probe() {
  local key="${SLUICE_S3_BUCKET}/.sluice-cluster-probe" body got
  body="probe $(date +%s%N)"
  s3_request PUT "/${key}" --data-binary "${body}" -o /dev/null || return 1
  got=$(s3_request GET "/${key}") || return 1
  s3_request DELETE "/${key}" -o /dev/null || return 1
  [[ "${got}" == "${body}" ]]
}

ensure_seaweedfs() {
  local pidfile logfile
  pidfile=$(pidfile_of seaweedfs)
  logfile=$(logfile_of seaweedfs)
  if ! pid_alive "${pidfile}"; then
    local port
    for port in "${SLUICE_S3_PORT}" "${SLUICE_SEAWEEDFS_MASTER_PORT}" "${SLUICE_SEAWEEDFS_VOLUME_PORT}" \
      "${SLUICE_SEAWEEDFS_FILER_PORT}"; do
      ensure_port_free seaweedfs 127.0.0.1 "${port}"
      ensure_port_free seaweedfs 127.0.0.1 "$((port + 10000))"
    done
    write_seaweedfs_config
    # One process: master, volume server, filer and S3 gateway, every listener on 127.0.0.1
    # (gRPC on each port + 10000). It writes under ${SEAWEEDFS_DIR} (data, the filer's
    # LevelDB, the HTTP unix sockets, default /tmp) and to its log (-logtostderr: glog would
    # write files to /tmp), except the gRPC unix sockets, fixed at /tmp/seaweedfs-*-grpc-PORT.sock
    # (removed by down). Off: the master's telemetry (it would report to seaweedfs.com), the
    # Iceberg and Lance catalog ports. minFreeSpace: volumes turn read-only below it (default
    # 1% of the disk, 2.5 GB here). Started from its own directory: weed reads
    # master.toml/filer.toml/security.toml from ".". The election timeout (default 10s) is
    # what a restart waits before the lone master leads again: 17s instead of 5s.
    (cd "${SEAWEEDFS_DIR}" && start_daemon seaweedfs "${pidfile}" "${logfile}" "${SEAWEEDFS_BIN_DIR}/weed" \
      -logtostderr server -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="${SEAWEEDFS_DIR}/data" \
      -master.port="${SLUICE_SEAWEEDFS_MASTER_PORT}" -master.telemetry=false -master.electionTimeout=2s \
      -master.volumeSizeLimitMB=512 -volume.max=32 -volume.minFreeSpace=256MiB \
      -volume.port="${SLUICE_SEAWEEDFS_VOLUME_PORT}" -volume.preStopSeconds=0 \
      -filer -filer.port="${SLUICE_SEAWEEDFS_FILER_PORT}" -filer.localSocket="${SEAWEEDFS_DIR}/filer.sock" \
      -s3 -s3.port="${SLUICE_S3_PORT}" -s3.config="${SEAWEEDFS_DIR}/s3.json" \
      -s3.localSocket="${SEAWEEDFS_DIR}/s3.sock" -s3.port.iceberg=0 -s3.port.lance=0)
  else
    log "seaweedfs already running (pid $(<"${pidfile}"))"
  fi
  WAIT_PIDFILE="${pidfile}" wait_until "seaweedfs S3 on ${S3_URL}" "${logfile}" "${SEAWEEDFS_DEADLINE}" s3_ready
  if ! s3_bucket_exists; then
    s3_request PUT "/${SLUICE_S3_BUCKET}" -o /dev/null ||
      fail_component seaweedfs "${logfile}" "creating bucket ${SLUICE_S3_BUCKET} failed"
    log "seaweedfs: created bucket ${SLUICE_S3_BUCKET}"
  fi
  WAIT_PIDFILE="${pidfile}" wait_until "seaweedfs: put/get/delete in ${SLUICE_S3_BUCKET}" "${logfile}" 60 s3_probe
}

# Worker pods reach SeaweedFS's S3 gateway on the bridge (as they reach Kafka on 9094), for
# savepoints written from pods: a relay from the bridge address to the loopback gateway.
ensure_s3_relay() {
  local pidfile logfile
  pidfile=$(pidfile_of s3-relay)
  logfile=$(logfile_of s3-relay)
  if ! pid_alive "${pidfile}"; then
    ensure_port_free s3-relay "${SLUICE_BRIDGE_IP}" "${SLUICE_S3_PORT}"
    start_daemon s3-relay "${pidfile}" "${logfile}" "$(forwarder_path)" \
      --listen="${SLUICE_BRIDGE_IP}:${SLUICE_S3_PORT}" \
      --target="127.0.0.1:${SLUICE_S3_PORT}"
  else
    log "s3-relay already running (pid $(<"${pidfile}"))"
  fi
  WAIT_PIDFILE="${pidfile}" wait_until "s3 on ${SLUICE_BRIDGE_IP}" "${logfile}" 20 \
    tcp_open "${SLUICE_BRIDGE_IP}" "${SLUICE_S3_PORT}"
}

# weed's gRPC unix sockets have fixed paths in /tmp, named after our gRPC ports; it removes
# them when it stops cleanly, not when killed. Each is removed once nothing listens on its
# port (a weed of someone else's on the same port, which `up` would have refused to run
# beside, keeps its socket).
remove_seaweedfs_sockets() {
  local service port socket
  for service in master:"${SLUICE_SEAWEEDFS_MASTER_PORT}" volume:"${SLUICE_SEAWEEDFS_VOLUME_PORT}" \
    filer:"${SLUICE_SEAWEEDFS_FILER_PORT}" s3:"${SLUICE_S3_PORT}"; do
    port=$((${service#*:} + 10000))
    socket="/tmp/seaweedfs-${service%%:*}-grpc-${port}.sock"
    if [[ -S "${socket}" ]] && ! tcp_open 127.0.0.1 "${port}"; then
      rm -f "${socket}"
      log "removed ${socket} (left by a killed weed)"
    fi
  done
}

# --- environment file ----------------------------------------------------------------------

write_env_file() {
  cat >"${ENV_FILE}.tmp" <<ENV
# Written by tests/cluster/cluster.sh up; source it: . ${ENV_FILE}
export SLUICE_STATE="${SLUICE_STATE}"
export KUBECONFIG="${ADMIN_KUBECONFIG}"
export SLUICE_KAFKA_BOOTSTRAP="127.0.0.1:${SLUICE_KAFKA_HOST_PORT}"
export SLUICE_KAFKA_BOOTSTRAP_POD="${SLUICE_BRIDGE_IP}:${SLUICE_KAFKA_POD_PORT}"
export SLUICE_K8S_VERSION="${K8S_VERSION}"
export SLUICE_KUBECTL="${K8S_BIN_DIR}/kubectl"
export SLUICE_HELM="${HELM_BIN_DIR}/helm"
export SLUICE_S3_ENDPOINT="${S3_URL}"
export SLUICE_S3_POD_ENDPOINT="http://${SLUICE_BRIDGE_IP}:${SLUICE_S3_PORT}"
export SLUICE_S3_REGION="${SLUICE_S3_REGION}"
export SLUICE_S3_BUCKET="${SLUICE_S3_BUCKET}"
export SLUICE_S3_ACCESS_KEY_ID="${SLUICE_S3_ACCESS_KEY_ID}"
export SLUICE_S3_SECRET_ACCESS_KEY="${SLUICE_S3_SECRET_ACCESS_KEY}"
export PATH="${K8S_BIN_DIR}:${HELM_BIN_DIR}:\${PATH}"
ENV
  mv "${ENV_FILE}.tmp" "${ENV_FILE}"
}

# --- node ----------------------------------------------------------------------------------

node_up() {
  if [[ "${SLUICE_NODE:-1}" == "0" ]]; then
    log "node: skipped (SLUICE_NODE=0)"
  elif [[ -f "${NODE_SCRIPT}" ]]; then
    log "node: running ${NODE_SCRIPT} up"
    SLUICE_T0="${SLUICE_T0}" bash "${NODE_SCRIPT}" up || die "node.sh up failed (see its output above)"
  else
    log "node: ${NODE_SCRIPT} does not exist yet; control plane and Kafka only"
  fi
}

# --- commands ------------------------------------------------------------------------------

cmd_up() {
  require_root_tools
  # Before anything starts: the node refuses to run beside another kubelet or kube-proxy.
  if [[ "${SLUICE_NODE:-1}" != "0" && -f "${NODE_SCRIPT}" ]]; then
    SLUICE_T0="${SLUICE_T0}" bash "${NODE_SCRIPT}" preflight || die "cluster up: stopped before starting anything (node preflight, above)"
  fi
  log "sluice cluster up: kubernetes ${K8S_VERSION}, etcd ${ETCD_VERSION}, helm ${HELM_VERSION}, kafka ${KAFKA_VERSION}, seaweedfs ${SEAWEEDFS_VERSION}"
  log "state in ${SLUICE_STATE}, caches in ${SLUICE_CACHE}"
  mkdir -p "${RUN_DIR}" "${LOG_DIR}" "${KUBECONFIG_DIR}"
  build_all
  ensure_bridge
  ensure_pki
  write_component_kubeconfigs
  ensure_etcd
  ensure_apiserver
  ensure_apiserver_relay
  ensure_controller_manager
  ensure_scheduler
  ensure_kafka
  ensure_seaweedfs
  ensure_s3_relay
  write_env_file
  node_up
  log "cluster is up in $(($(date +%s) - SLUICE_T0))s"
  cat >&2 <<USAGE

  source ${ENV_FILE}      # KUBECONFIG, SLUICE_KAFKA_BOOTSTRAP, SLUICE_S3_*, kubectl and helm on PATH
  kubectl get --raw /readyz
  s3: ${S3_URL} bucket ${SLUICE_S3_BUCKET} (access key ${SLUICE_S3_ACCESS_KEY_ID}, secret ${SLUICE_S3_SECRET_ACCESS_KEY})
  logs: ${LOG_DIR}/<component>.log

USAGE
}

cmd_down() {
  local node_failed=0
  if [[ -f "${NODE_SCRIPT}" ]]; then
    log "node: running ${NODE_SCRIPT} down"
    # The control plane goes down either way; the exit status says the node did not.
    SLUICE_T0="${SLUICE_T0}" bash "${NODE_SCRIPT}" down || {
      node_failed=1
      log "node.sh down failed; continuing with the control plane"
    }
  fi
  local component
  for component in s3-relay seaweedfs kafka kube-scheduler kube-controller-manager apiserver-relay kube-apiserver etcd; do
    stop_daemon "${component}" "$(pidfile_of "${component}")"
  done
  remove_seaweedfs_sockets
  remove_bridge
  # Keep the logs for post-mortems; everything else is runtime state. After a failed node
  # down, node/ stays too: it may still hold mounts (never rm -rf through them), and the
  # next `down` retries with what it records.
  local keep_node=()
  ((node_failed == 0)) || keep_node=(! -name node)
  if [[ -d "${SLUICE_STATE}" ]]; then
    find "${SLUICE_STATE}" -mindepth 1 -maxdepth 1 ! -name logs "${keep_node[@]}" -exec rm -rf {} +
  fi
  if ((node_failed)); then
    die "cluster down: the control plane is down, but node.sh down failed or left things behind (listed above)"
  fi
  log "cluster is down (logs kept in ${LOG_DIR})"
}

status_line() {
  local name="$1" check="$2"
  shift 2
  local pidfile state
  pidfile=$(pidfile_of "${name}")
  if ! pid_alive "${pidfile}"; then
    printf '%-24s %s\n' "${name}" "not running"
    return 1
  fi
  if "${check}" "$@" >/dev/null 2>&1; then state=ready; else state="running, NOT ready"; fi
  printf '%-24s %-20s pid %-8s %s\n' "${name}" "${state}" "$(<"${pidfile}")" "$(logfile_of "${name}")"
  [[ "${state}" == ready ]]
}

cmd_status() {
  local healthy=0
  status_line etcd etcd_healthy || healthy=1
  status_line kube-apiserver apiserver_ready "${APISERVER_BRIDGE_URL}" || healthy=1
  status_line apiserver-relay apiserver_ready "${APISERVER_LOOPBACK_URL}" || healthy=1
  status_line kube-controller-manager component_healthy 10257 || healthy=1
  status_line kube-scheduler component_healthy 10259 || healthy=1
  status_line kafka tcp_open 127.0.0.1 "${SLUICE_KAFKA_HOST_PORT}" || healthy=1
  status_line seaweedfs s3_bucket_exists || healthy=1
  status_line s3-relay tcp_open "${SLUICE_BRIDGE_IP}" "${SLUICE_S3_PORT}" || healthy=1
  if pid_alive "$(pidfile_of seaweedfs)"; then
    printf '  s3: %s bucket %s, access key %s (credentials in %s/s3.json)\n' "${S3_URL}" \
      "${SLUICE_S3_BUCKET}" "${SLUICE_S3_ACCESS_KEY_ID}" "${SEAWEEDFS_DIR}"
  fi
  if [[ -f "${NODE_SCRIPT}" ]]; then
    bash "${NODE_SCRIPT}" status || healthy=1
  fi
  [[ -f "${ENV_FILE}" ]] && printf 'environment: source %s\n' "${ENV_FILE}"
  return "${healthy}"
}

cmd_env() {
  [[ -f "${ENV_FILE}" ]] || die "no ${ENV_FILE}: run 'make cluster-up' (tests/cluster/cluster.sh up) first"
  cat "${ENV_FILE}"
}

main() {
  case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *)
      printf 'usage: %s up|down|status|env\n' "$0" >&2
      exit 2
      ;;
  esac
}

if [[ "${BASH_SOURCE[0]}" == "${0}" ]]; then
  main "$@"
fi
