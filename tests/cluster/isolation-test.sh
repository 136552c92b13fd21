#!/usr/bin/env bash
# Issue 9's acceptance check: `cluster.sh down` removes only what the project created, and
# `up` refuses to start the node beside another kubelet.
#
#   bash tests/cluster/isolation-test.sh      (make cluster-isolation-test)
#
# With the cluster up, it plants what another Kubernetes on this host would have:
#   - a chain KUBE-FOREIGN-TEST in the filter and nat tables of iptables and ip6tables, with
#     a rule, and a jump to it from FORWARD / PREROUTING (all matching only documentation
#     addresses, 192.0.2.0/24 and 2001:db8::/32, so no packet ever takes them);
#   - a cgroup kubepods/pod-foreign-test in every cgroup hierarchy (kubepods made if absent)
#     with a sleeping process in it;
#   - a network namespace cni-foreign-test whose eth0 holds 10.244.0.250/24, an address of
#     our own pod subnet, as a flannel pod's would (eth0 is a veth whose peer is in the same
#     namespace: connected to nothing; this host has no dummy device).
# With a pod of the node's running too (its netns and cgroup must go), `cluster.sh down` must
# succeed (its leftover check must not count the planted things) and leave them exactly as
# they were; `cluster.sh up` must do the same; and `cluster.sh up` beside a
# process named kubelet must refuse, naming it. What it planted is removed at the end, also
# on failure (and a previous run's leftovers at the start).
#
# Starts with `cluster.sh up` and leaves the cluster up (it brings it back up if it fails
# after `down`). Needs root. Never run it beside the e2e tests: it takes the node down. Take
# the cluster lock around it on shared machines:
#   flock /var/tmp/sluice-cluster.lock bash tests/cluster/isolation-test.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.sh
source "${HERE}/versions.sh"
# shellcheck source=lib.sh
source "${HERE}/lib.sh"

CLUSTER_SCRIPT="${HERE}/cluster.sh"
ADMIN_KUBECONFIG="${SLUICE_STATE}/kubeconfig/admin.kubeconfig"
NODE_NAME="${SLUICE_NODE_NAME:-sluice-node}"
NODE_DIR="${SLUICE_STATE}/node"
CRI_NETNS_DIR="${NODE_DIR}/containerd/state/io.containerd.grpc.v1.cri/netns"
POD_NAMESPACE=e2e-isolation
POD_IMAGE="${SLUICE_TESTTOOLS_IMAGE:-localhost/sluice-testtools:dev}"
OUR_POD_CGROUPS=()

CHAIN=KUBE-FOREIGN-TEST
NETNS=cni-foreign-test
NETNS_ADDRESS="${SLUICE_POD_CIDR%.*}.250/24"
POD_CGROUP=kubepods/pod-foreign-test
SLEEPER_MARK=sluice-isolation-test-sleeper
# What this test created (kubepods dirs it made, sleeper pids), so that a later run removes
# a killed run's leftovers and never anything else.
PLANTED="/var/tmp/sluice-isolation-test.planted"
WORK="$(mktemp -d /tmp/sluice-isolation-test.XXXXXX)"
EXPECTED="${WORK}/expected"

CURRENT_STEP="start"
CLUSTER_TAKEN_DOWN=0
SLEEPER_PID=""
FAKE_KUBELET_PID=""

step() {
  CURRENT_STEP="$*"
  log "== ${CURRENT_STEP}"
}

on_exit() {
  local status=$?
  trap - EXIT
  set +e
  if ((status != 0)); then
    log "isolation test FAILED during: ${CURRENT_STEP} (after $(($(date +%s) - SLUICE_T0))s)"
  fi
  if [[ -n "${FAKE_KUBELET_PID}" ]]; then
    kill "${FAKE_KUBELET_PID}" 2>/dev/null
    wait "${FAKE_KUBELET_PID}" 2>/dev/null
  fi
  remove_planted
  if ((CLUSTER_TAKEN_DOWN)); then
    log "the cluster was up before the test: bringing it back up"
    SLUICE_T0="${SLUICE_T0}" bash "${CLUSTER_SCRIPT}" up || log "cluster.sh up failed too (output above)"
  fi
  rm -rf "${WORK}"
  exit "${status}"
}
trap on_exit EXIT

kube() { "${K8S_BIN_DIR}/kubectl" --kubeconfig "${ADMIN_KUBECONFIG}" --request-timeout=10s "$@"; }

cluster() {
  local command="$1" start
  start=$(date +%s)
  SLUICE_T0="${SLUICE_T0}" bash "${CLUSTER_SCRIPT}" "${command}" ||
    die "cluster.sh ${command} failed after $(($(date +%s) - start))s (output above)"
  log "cluster.sh ${command} took $(($(date +%s) - start))s"
}

expect_node_ready() {
  local status
  status="$(kube get node "${NODE_NAME}" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)"
  [[ "${status}" == True ]] || die "node ${NODE_NAME} is not Ready (Ready=${status:-unknown})"
  log "node ${NODE_NAME} is Ready"
}

# "tool table builtin source" for each place a foreign chain is planted.
chain_sites() {
  printf '%s\n' "iptables filter FORWARD 192.0.2.0/24" "iptables nat PREROUTING 192.0.2.0/24"
  if command -v ip6tables >/dev/null && ip6tables -t filter -S >/dev/null 2>&1; then
    echo "ip6tables filter FORWARD 2001:db8::/32"
    ! ip6tables -t nat -S >/dev/null 2>&1 || echo "ip6tables nat PREROUTING 2001:db8::/32"
  fi
}

cgroup_hierarchies() { awk '$3 == "cgroup" || $3 == "cgroup2" {print $2}' /proc/self/mounts | sort -u || true; }

# A cpuset (v1) cgroup takes no process until it has CPUs and memory nodes: its parent's.
cpuset_inherit() {
  local dir="$1"
  [[ -f "${dir}/cpuset.cpus" && -z "$(tr -d '[:space:]' <"${dir}/cpuset.cpus")" ]] || return 0
  cat "$(dirname "${dir}")/cpuset.cpus" >"${dir}/cpuset.cpus"
  cat "$(dirname "${dir}")/cpuset.mems" >"${dir}/cpuset.mems"
}

# --- planting and removing ------------------------------------------------------------------

plant() {
  local tool table builtin source hierarchy
  touch "${PLANTED}"
  while read -r tool table builtin source; do
    "${tool}" -t "${table}" -N "${CHAIN}"
    "${tool}" -t "${table}" -A "${CHAIN}" -s "${source}" -m comment --comment "sluice isolation test: foreign" -j RETURN
    "${tool}" -t "${table}" -A "${builtin}" -s "${source}" -m comment --comment "sluice isolation test: foreign" -j "${CHAIN}"
  done < <(chain_sites)
  log "planted chain ${CHAIN} (filter, nat; iptables and ip6tables) with a jump from FORWARD/PREROUTING"

  # shellcheck disable=SC2016 # $0 belongs to the inner shell.
  bash -c 'exec -a "$0" sleep 86400' "${SLEEPER_MARK}" &
  SLEEPER_PID=$!
  echo "sleeper ${SLEEPER_PID}" >>"${PLANTED}"
  while read -r hierarchy; do
    [[ -n "${hierarchy}" ]] || continue
    if [[ ! -d "${hierarchy}/kubepods" ]]; then
      mkdir "${hierarchy}/kubepods"
      echo "cgroup ${hierarchy}/kubepods" >>"${PLANTED}"
    fi
    cpuset_inherit "${hierarchy}/kubepods"
    mkdir -p "${hierarchy}/${POD_CGROUP}"
    echo "cgroup ${hierarchy}/${POD_CGROUP}" >>"${PLANTED}"
    cpuset_inherit "${hierarchy}/${POD_CGROUP}"
    echo "${SLEEPER_PID}" >"${hierarchy}/${POD_CGROUP}/cgroup.procs" ||
      die "could not move the sleeper (pid ${SLEEPER_PID}) into ${hierarchy}/${POD_CGROUP}"
  done < <(cgroup_hierarchies)
  log "planted cgroup ${POD_CGROUP} in $(cgroup_hierarchies | wc -l) hierarchies, sleeper pid ${SLEEPER_PID} in it"

  ip netns add "${NETNS}" || die "ip netns add ${NETNS} failed"
  if ! { ip -n "${NETNS}" link add eth0 type veth peer name eth1 &&
    ip -n "${NETNS}" addr add "${NETNS_ADDRESS}" dev eth0 &&
    ip -n "${NETNS}" link set eth1 up && ip -n "${NETNS}" link set eth0 up; }; then
    die "could not give ${NETNS} an eth0 (veth pair inside it) with ${NETNS_ADDRESS}"
  fi
  log "planted network namespace ${NETNS} (eth0 ${NETNS_ADDRESS}; its veth peer eth1 is in the same namespace: connected to nothing)"
}

# The planted things as they are now, one line each; compared before and after.
planted_state() {
  local tool table builtin source hierarchy
  while read -r tool table builtin source; do
    { "${tool}" -t "${table}" -S 2>/dev/null || true; } | grep -F -- "${CHAIN}" | sed "s|^|${tool} ${table}: |" || true
  done < <(chain_sites)
  while read -r hierarchy; do
    [[ -n "${hierarchy}" ]] || continue
    if [[ -d "${hierarchy}/${POD_CGROUP}" ]]; then
      echo "cgroup ${hierarchy}/${POD_CGROUP}: processes $(tr '\n' ' ' <"${hierarchy}/${POD_CGROUP}/cgroup.procs")"
    fi
  done < <(cgroup_hierarchies)
  if [[ -n "${SLEEPER_PID}" && -d "/proc/${SLEEPER_PID}" && "$(awk '{print $3}' "/proc/${SLEEPER_PID}/stat")" != Z ]]; then
    echo "sleeper ${SLEEPER_PID}: alive"
  fi
  if ip netns list 2>/dev/null | awk '{print $1}' | grep -x "${NETNS}" >/dev/null; then
    echo "netns ${NETNS}: $(ip -n "${NETNS}" -o -4 addr show dev eth0 2>/dev/null | awk '{print $2, $4}')"
  fi
}

# expect_intact WHEN: the planted things are exactly as recorded right after planting.
expect_intact() {
  local now
  now="$(planted_state)"
  if [[ "${now}" != "$(<"${EXPECTED}")" ]]; then
    log "planted (before):"
    sed 's/^/    /' "${EXPECTED}" >&2
    log "now (after ${1}):"
    printf '%s\n' "${now}" | sed 's/^/    /' >&2
    log "missing or changed:"
    diff <(sort "${EXPECTED}") <(sort <<<"${now}") | sed -n 's/^< /    - /p' >&2 || true
    die "${1} removed or changed what other software owns (the planted foreign chain, cgroup, process or netns above)"
  fi
  log "after ${1}: foreign chain ${CHAIN}, cgroup ${POD_CGROUP} with its sleeper and netns ${NETNS} are intact ($(wc -l <"${EXPECTED}") checks)"
}

# remove_planted: what this test planted (now or in a killed earlier run), by its names and
# the record in ${PLANTED}; nothing else.
remove_planted() {
  local kind what pid tool table builtin source rule
  if [[ -f "${PLANTED}" ]]; then
    while read -r kind what; do
      [[ "${kind}" == sleeper && "${what}" =~ ^[0-9]+$ ]] || continue
      pid="${what}"
      if [[ "$({ tr '\0' ' ' <"/proc/${pid}/cmdline"; } 2>/dev/null || true)" == "${SLEEPER_MARK} "* ]]; then
        kill -KILL "${pid}" 2>/dev/null || true
        [[ "${pid}" != "${SLEEPER_PID}" ]] || wait "${pid}" 2>/dev/null || true
      fi
    done <"${PLANTED}"
    # Deepest first: pod-foreign-test before the kubepods this test made.
    while read -r kind what; do
      [[ "${kind}" == cgroup ]] || continue
      rmdir "${what}" 2>/dev/null || [[ ! -d "${what}" ]] || log "could not remove planted cgroup ${what}"
    done < <(sort -r "${PLANTED}")
  fi
  while read -r tool table builtin source; do
    while read -r rule; do
      [[ -n "${rule}" ]] || continue
      eval "${tool} -t ${table} -D ${rule#-A }" 2>/dev/null || true
    done < <({ "${tool}" -t "${table}" -S 2>/dev/null || true; } | grep -E -- "^-A [^ ]+ .*-j ${CHAIN}( |$)" | grep -v -- "^-A ${CHAIN} " || true)
    "${tool}" -t "${table}" -F "${CHAIN}" 2>/dev/null || true
    "${tool}" -t "${table}" -X "${CHAIN}" 2>/dev/null || true
  done < <(chain_sites)
  ip netns delete "${NETNS}" 2>/dev/null || true
  rm -f "${PLANTED}"
}

# --- a pod of the node's, whose traces down must remove ----------------------------------------

start_our_pod() {
  kube delete namespace "${POD_NAMESPACE}" --ignore-not-found --timeout=90s >/dev/null
  kube create namespace "${POD_NAMESPACE}" >/dev/null
  kube apply -n "${POD_NAMESPACE}" -f - >/dev/null <<POD
apiVersion: v1
kind: Pod
metadata:
  name: ours
spec:
  terminationGracePeriodSeconds: 1
  automountServiceAccountToken: false
  containers:
  - name: sleep
    image: ${POD_IMAGE}
    imagePullPolicy: Never
    command: ["sleep", "3600"]
POD
  kube wait -n "${POD_NAMESPACE}" --for=condition=Ready pod/ours --timeout=120s >/dev/null ||
    die "pod ${POD_NAMESPACE}/ours not Ready in 120s: $(kube describe pod -n "${POD_NAMESPACE}" ours 2>&1 | tail -n 15)"
  local uid hierarchy dir netns
  uid="$(kube get pod -n "${POD_NAMESPACE}" ours -o jsonpath='{.metadata.uid}')"
  OUR_POD_CGROUPS=()
  # Wherever the kubelet put it (under the node's cgroup root; /kubepods for an older node.sh).
  while read -r hierarchy; do
    for dir in "${hierarchy}${SLUICE_NODE_CGROUP_ROOT:-/sluice-node}/kubepods" "${hierarchy}/kubepods"; do
      [[ -d "${dir}" ]] || continue
      while read -r dir; do
        [[ -n "${dir}" ]] && OUR_POD_CGROUPS+=("${dir}")
      done < <(find "${dir}" -maxdepth 2 -type d -name "pod${uid}")
    done
  done < <(cgroup_hierarchies)
  ((${#OUR_POD_CGROUPS[@]})) || die "pod ${POD_NAMESPACE}/ours (uid ${uid}) has no cgroup pod${uid}"
  netns="$(find "${CRI_NETNS_DIR}" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l || true)"
  log "pod ${POD_NAMESPACE}/ours is Ready: its cgroup is ${OUR_POD_CGROUPS[0]} (and in $((${#OUR_POD_CGROUPS[@]} - 1)) other hierarchies); network namespaces in ${CRI_NETNS_DIR}: ${netns}, in /run/netns: [$(ip netns list 2>/dev/null | awk '{printf "%s ", $1}')]"
}

expect_our_pod_gone() {
  local dir
  for dir in "${OUR_POD_CGROUPS[@]}"; do
    [[ ! -d "${dir}" ]] || die "after down, the node's pod cgroup ${dir} is still there"
  done
  [[ ! -e "${CRI_NETNS_DIR}" ]] || die "after down, ${CRI_NETNS_DIR} is still there"
  log "after down: the node's pod cgroups (${#OUR_POD_CGROUPS[@]}) and network namespaces are gone"
}

# --- refusing to start beside another kubelet -------------------------------------------------

expect_up_refuses_beside_a_kubelet() {
  ln -s "$(command -v sleep)" "${WORK}/kubelet"
  "${WORK}/kubelet" 600 &
  FAKE_KUBELET_PID=$!
  log "started a process named kubelet (pid ${FAKE_KUBELET_PID}: ${WORK}/kubelet 600)"
  local output status=0 fake="${FAKE_KUBELET_PID}"
  output="$(SLUICE_T0="${SLUICE_T0}" bash "${CLUSTER_SCRIPT}" up 2>&1)" || status=$?
  printf '%s\n' "${output}" | tail -n 8 | sed 's/^/    | /' >&2
  ((status != 0)) || die "cluster.sh up succeeded beside another kubelet (pid ${FAKE_KUBELET_PID})"
  grep -F "pid ${FAKE_KUBELET_PID} (kubelet)" <<<"${output}" >/dev/null ||
    die "cluster.sh up failed (status ${status}) but did not name the other kubelet (pid ${FAKE_KUBELET_PID})"
  kill "${FAKE_KUBELET_PID}"
  wait "${FAKE_KUBELET_PID}" 2>/dev/null || true
  FAKE_KUBELET_PID=""
  log "cluster.sh up refused (status ${status}) and named the other kubelet, pid ${fake}"
}

main() {
  [[ ${EUID} -eq 0 ]] || die "isolation-test.sh must run as root (like cluster.sh)"
  log "isolation test: state ${SLUICE_STATE}"

  step "bring the cluster up (or reuse it)"
  cluster up
  expect_node_ready

  step "plant another Kubernetes' chain, cgroup and network namespace"
  remove_planted # a killed earlier run's
  [[ ! -e "${PLANTED}" ]] || die "could not clear ${PLANTED}"
  for hierarchy in $(cgroup_hierarchies); do
    [[ ! -d "${hierarchy}/${POD_CGROUP}" ]] || die "${hierarchy}/${POD_CGROUP} exists and was not planted by this test: remove it first"
  done
  ! ip netns list 2>/dev/null | awk '{print $1}' | grep -x "${NETNS}" >/dev/null ||
    die "network namespace ${NETNS} exists and was not planted by this test"
  plant
  planted_state >"${EXPECTED}"
  sed 's/^/    /' "${EXPECTED}" >&2

  step "start a pod of the node's"
  start_our_pod

  step "cluster.sh down with the foreign things present"
  CLUSTER_TAKEN_DOWN=1
  cluster down
  expect_intact "cluster.sh down"
  expect_our_pod_gone

  step "cluster.sh up with the foreign things present"
  cluster up
  CLUSTER_TAKEN_DOWN=0
  expect_node_ready
  expect_intact "cluster.sh up"

  step "cluster.sh up beside another kubelet"
  expect_up_refuses_beside_a_kubelet
  expect_node_ready

  step "remove what the test planted"
  remove_planted
  kube delete namespace "${POD_NAMESPACE}" --ignore-not-found --wait=false >/dev/null || true
  [[ -z "$(planted_state | grep -v '^sleeper' || true)" ]] || die "could not remove what the test planted: $(planted_state)"

  CURRENT_STEP="done"
  log "isolation test passed in $(($(date +%s) - SLUICE_T0))s; the cluster is up"
}

main "$@"
