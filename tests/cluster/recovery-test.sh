#!/usr/bin/env bash
# What README.md promises about recovery, checked: `kill -9` of kube-apiserver, then `up`,
# gives a ready API server with etcd's data intact; `kill -9` of the Kafka broker, then
# `up`, gives a broker that answers and still has its data; the same for SeaweedFS (an
# object written before the kill reads back through S3); `down` removes everything
# (node.sh down fails on leftovers; this script also checks for listeners, processes and
# the bridge) and `up` afterwards brings back a Ready node.
#
#   bash tests/cluster/recovery-test.sh      (make cluster-recovery-test)
#
# Starts with `cluster.sh up` (so it runs whether or not the cluster is up) and leaves the
# cluster up. It kills things: never run it beside the e2e tests. Needs root, like cluster.sh.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.sh
source "${HERE}/versions.sh"
# shellcheck source=lib.sh
source "${HERE}/lib.sh"

CLUSTER_SCRIPT="${HERE}/cluster.sh"
RUN_DIR="${SLUICE_STATE}/run"
ADMIN_KUBECONFIG="${SLUICE_STATE}/kubeconfig/admin.kubeconfig"
NODE_NAME="${SLUICE_NODE_NAME:-sluice-node}"
KAFKA_BOOTSTRAP="127.0.0.1:${SLUICE_KAFKA_HOST_PORT}"
MARKER="recovery-$(date +%s)-$$"
TOPIC="sluice-recovery-test"
CONFIGMAP="sluice-recovery-test"
# Ports the cluster listens on (README.md, NODE.md); none may be held after `down`.
OUR_PORTS=(2379 2380 6443 9092 9093 9094 10248 10249 10250 10256 10257 10259
  "${SLUICE_S3_PORT}" "${SLUICE_SEAWEEDFS_MASTER_PORT}" "${SLUICE_SEAWEEDFS_VOLUME_PORT}"
  "${SLUICE_SEAWEEDFS_FILER_PORT}" "$((SLUICE_S3_PORT + 10000))" "$((SLUICE_SEAWEEDFS_MASTER_PORT + 10000))"
  "$((SLUICE_SEAWEEDFS_VOLUME_PORT + 10000))" "$((SLUICE_SEAWEEDFS_FILER_PORT + 10000))")
S3_KEY="${SLUICE_S3_BUCKET}/sluice-recovery-test/${MARKER}"

TIMINGS=()
CURRENT_STEP="start"

on_exit() {
  local status=$?
  if ((status != 0)); then
    log "recovery test FAILED during: ${CURRENT_STEP} (after $(($(date +%s) - SLUICE_T0))s)"
    log "state: ${SLUICE_STATE}; logs: ${SLUICE_STATE}/logs, ${SLUICE_STATE}/node/logs"
  fi
}
trap on_exit EXIT

step() {
  CURRENT_STEP="$*"
  log "== ${CURRENT_STEP}"
}

kube() { "${K8S_BIN_DIR}/kubectl" --kubeconfig "${ADMIN_KUBECONFIG}" --request-timeout=10s "$@"; }

kafka_tool() {
  timeout 60 java -Xmx128m -cp "${KAFKA_HOME}/libs/*" \
    -Dlog4j2.configurationFile="file:${SLUICE_STATE}/kafka/log4j2.properties" "$@"
}

# cluster COMMAND: runs cluster.sh, records how long it took, fails the test if it fails.
cluster() {
  local command="$1" start
  start=$(date +%s)
  SLUICE_T0="${SLUICE_T0}" bash "${CLUSTER_SCRIPT}" "${command}" ||
    die "cluster.sh ${command} failed after $(($(date +%s) - start))s (output above)"
  TIMINGS+=("$(printf '%-36s %-17s %4ss' "${CURRENT_STEP}" "cluster.sh ${command}" "$(($(date +%s) - start))")")
  log "cluster.sh ${command} took $(($(date +%s) - start))s"
}

expect_readyz() {
  local answer
  answer="$(kube get --raw /readyz 2>&1)" || die "kubectl get --raw /readyz failed: ${answer}"
  [[ "${answer}" == ok ]] || die "kubectl get --raw /readyz printed '${answer}', not 'ok'"
  log "kubectl get --raw /readyz: ok"
}

node_ready_status() {
  kube get node "${NODE_NAME}" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null
}

expect_node_ready() {
  local status
  status="$(node_ready_status || true)"
  [[ "${status}" == True ]] || die "node ${NODE_NAME} is not Ready (Ready=${status:-unknown})"
  log "node ${NODE_NAME} is Ready"
}

# process_gone PID: no such process, or a zombie none of whose threads still runs (a killed
# multi-threaded process shows its leader as a zombie while the other threads are still
# exiting, and its sockets stay open until the last one has).
process_gone() {
  local pid="$1"
  [[ -d "/proc/${pid}" ]] || return 0
  [[ "$(awk '{print $3}' "/proc/${pid}/stat" 2>/dev/null)" == Z ]] || return 1
  (($(find "/proc/${pid}/task" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l || true) <= 1))
}

# kill_component NAME: SIGKILL to the pid cluster.sh recorded (after checking it still runs
# that command line), then waits until it is gone; prints the pid.
kill_component() {
  local name="$1" pidfile="${RUN_DIR}/$1.pid" pid
  pid_alive "${pidfile}" || die "${name} is not running before the kill (${pidfile})"
  pid=$(<"${pidfile}")
  kill -KILL "${pid}"
  wait_until "${name} (pid ${pid}) gone after SIGKILL" "${SLUICE_STATE}/logs/${name}.log" 10 \
    process_gone "${pid}"
  printf '%s' "${pid}"
}

# produce VALUE: one record to the test topic (created on first use), acknowledged by the
# broker.
produce() {
  printf '%s\n' "$1" | kafka_tool org.apache.kafka.tools.ConsoleProducer \
    --bootstrap-server "${KAFKA_BOOTSTRAP}" --topic "${TOPIC}" \
    --command-property acks=all --command-property delivery.timeout.ms=30000 \
    --command-property request.timeout.ms=20000 >/dev/null 2>&1 ||
    die "failed to produce '$1' to ${TOPIC} at ${KAFKA_BOOTSTRAP}"
}

# expect_consumed VALUE...: reads the test topic from its first to its last offset (asked
# from the broker) and fails unless every VALUE is in it.
expect_consumed() {
  local end records value
  end="$(kafka_tool org.apache.kafka.tools.GetOffsetShell --bootstrap-server "${KAFKA_BOOTSTRAP}" \
    --topic "${TOPIC}" --partitions 0 --time -1 2>/dev/null | awk -F: -v t="${TOPIC}" '$1 == t {print $3}' || true)"
  [[ "${end}" =~ ^[0-9]+$ && "${end}" -gt 0 ]] ||
    die "the broker at ${KAFKA_BOOTSTRAP} gave no end offset for ${TOPIC} (got '${end}')"
  records="$(kafka_tool org.apache.kafka.tools.consumer.ConsoleConsumer \
    --bootstrap-server "${KAFKA_BOOTSTRAP}" --topic "${TOPIC}" --partition 0 --offset earliest \
    --max-messages "${end}" --timeout-ms 30000 2>/dev/null || true)"
  for value in "$@"; do
    grep -Fx -- "${value}" <<<"${records}" >/dev/null ||
      die "'${value}' is not in topic ${TOPIC} (${end} records: $(tr '\n' ' ' <<<"${records}"))"
  done
  log "topic ${TOPIC}: read ${end} records, including: $*"
}

# After `down`: nothing of ours listens, runs or is left on the network.
expect_nothing_left() {
  local port held=() dir pid cmdline processes=() socket
  for port in "${OUR_PORTS[@]}"; do
    if [[ -n "$(ss -Hltn "sport = :${port}" 2>/dev/null)" ]]; then
      held+=("$(ss -Hltnp "sport = :${port}" 2>/dev/null | tr -s ' ')")
    fi
  done
  ((${#held[@]} == 0)) || die "after down, ports of the cluster are still held: ${held[*]}"
  for dir in /proc/[0-9]*; do
    pid="${dir#/proc/}"
    [[ "${pid}" != "$$" && "${pid}" != "${BASHPID}" ]] || continue
    cmdline="$({ tr '\0' ' ' <"${dir}/cmdline"; } 2>/dev/null || true)"
    [[ "${cmdline}" == *"${SLUICE_STATE}/"* || "${cmdline}" == *"${SLUICE_CACHE}/bin/"* ||
      "${cmdline}" == *"${KAFKA_HOME}/"* ]] || continue
    [[ "${cmdline}" != *"/logs/"* ]] || continue
    processes+=("${pid}: ${cmdline:0:120}")
  done
  ((${#processes[@]} == 0)) || die "after down, processes of the cluster still run: ${processes[*]}"
  ! ip link show "${SLUICE_BRIDGE}" >/dev/null 2>&1 || die "after down, bridge ${SLUICE_BRIDGE} still exists"
  local sockets=()
  for port in "${OUR_PORTS[@]}"; do
    for socket in /tmp/seaweedfs-*-grpc-"${port}".sock; do
      [[ ! -e "${socket}" ]] || sockets+=("${socket}")
    done
  done
  ((${#sockets[@]} == 0)) || die "after down, SeaweedFS's sockets are still there: ${sockets[*]}"
  [[ ! -e "${SLUICE_STATE}/run" && ! -e "${SLUICE_STATE}/node/pids" ]] ||
    die "after down, pid files are still in ${SLUICE_STATE}"
  log "after down: no listener on ports ${OUR_PORTS[*]}, no process of the cluster, no bridge"
}

main() {
  log "recovery test: state ${SLUICE_STATE}, marker ${MARKER}"

  step "bring the cluster up (or reuse it)"
  cluster up
  expect_readyz
  kube create configmap "${CONFIGMAP}" -n default --from-literal="marker=${MARKER}" \
    --dry-run=client -o yaml | kube apply -f - >/dev/null
  log "wrote ConfigMap default/${CONFIGMAP} marker=${MARKER}"

  step "kill -9 kube-apiserver, then up"
  local old_pid new_pid
  old_pid="$(kill_component kube-apiserver)"
  if kube get --raw /readyz >/dev/null 2>&1; then
    die "the API server still answers /readyz after kube-apiserver (pid ${old_pid}) was killed"
  fi
  log "the API server is unreachable, as it should be"
  cluster up
  new_pid=$(<"${RUN_DIR}/kube-apiserver.pid")
  [[ "${new_pid}" != "${old_pid}" ]] || die "up did not start a new kube-apiserver (pid ${old_pid})"
  expect_readyz
  local marker
  marker="$(kube get configmap "${CONFIGMAP}" -n default -o jsonpath='{.data.marker}')"
  [[ "${marker}" == "${MARKER}" ]] ||
    die "ConfigMap default/${CONFIGMAP} has marker '${marker}', not '${MARKER}': etcd lost data"
  log "kube-apiserver restarted (pid ${old_pid} -> ${new_pid}); ConfigMap written before the kill is intact"

  step "kill -9 the Kafka broker, then up"
  produce "before-${MARKER}"
  expect_consumed "before-${MARKER}"
  old_pid="$(kill_component kafka)"
  if tcp_open 127.0.0.1 "${SLUICE_KAFKA_HOST_PORT}"; then
    die "something still listens on ${KAFKA_BOOTSTRAP} after the broker (pid ${old_pid}) was killed"
  fi
  log "nothing listens on ${KAFKA_BOOTSTRAP}, as it should be"
  cluster up
  new_pid=$(<"${RUN_DIR}/kafka.pid")
  [[ "${new_pid}" != "${old_pid}" ]] || die "up did not start a new broker (pid ${old_pid})"
  produce "after-${MARKER}"
  expect_consumed "before-${MARKER}" "after-${MARKER}"
  log "broker restarted (pid ${old_pid} -> ${new_pid}); it answers and kept the record produced before the kill"
  expect_readyz

  step "kill -9 SeaweedFS, then up"
  s3_request PUT "/${S3_KEY}" --data-binary "${MARKER}" -o /dev/null ||
    die "failed to put s3://${S3_KEY} at ${S3_URL}"
  old_pid="$(kill_component seaweedfs)"
  if tcp_open 127.0.0.1 "${SLUICE_S3_PORT}"; then
    die "something still listens on ${S3_URL} after SeaweedFS (pid ${old_pid}) was killed"
  fi
  cluster up
  new_pid=$(<"${RUN_DIR}/seaweedfs.pid")
  [[ "${new_pid}" != "${old_pid}" ]] || die "up did not start a new SeaweedFS (pid ${old_pid})"
  local object
  object="$(s3_request GET "/${S3_KEY}")" || die "s3://${S3_KEY} is gone after SeaweedFS restarted"
  [[ "${object}" == "${MARKER}" ]] || die "s3://${S3_KEY} holds '${object}', not '${MARKER}'"
  s3_request DELETE "/${S3_KEY}" -o /dev/null || die "failed to delete s3://${S3_KEY}"
  log "SeaweedFS restarted (pid ${old_pid} -> ${new_pid}); the object put before the kill reads back"

  step "down (fails on leftovers), then up"
  cluster down
  expect_nothing_left
  cluster up
  expect_readyz
  expect_node_ready

  CURRENT_STEP="done"
  log "recovery test passed in $(($(date +%s) - SLUICE_T0))s; the cluster is up"
  printf '  %s\n' "${TIMINGS[@]}" >&2
}

main "$@"
