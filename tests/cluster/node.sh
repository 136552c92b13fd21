#!/usr/bin/env bash
# A node that really runs pods, for the local Sluice cluster: containerd 1.6 + runc (Debian),
# CNI bridge on sluice0, kubelet and kube-proxy (same Kubernetes build as the control plane),
# rancher local-path-provisioner as the default StorageClass, and images imported from
# archives built by tests/cluster/images.sh (nothing is ever pulled).
#
#   node.sh up       start (or repair) the node; idempotent; needs cluster.sh's control plane
#   node.sh down     stop everything started here and remove every trace of it, and only of
#                    it (pods' mounts and network namespaces, veths on sluice0, the chains of
#                    kube-proxy/kubelet and SLUICE-NODE-*, the cgroup subtree /sluice-node, state)
#   node.sh status   what runs, the node's conditions, the pods on it
#   node.sh preflight  fail, naming it, when a kubelet or kube-proxy not started here runs
#
# Called by cluster.sh after the control plane and Kafka are ready (SLUICE_NODE=0 skips it).
# Everything lives in ${SLUICE_STATE}/node; caches (binaries, images) in ${SLUICE_CACHE}.
# How it works, pitfalls and timings: tests/cluster/NODE.md.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/cluster/versions.sh
source "${HERE}/versions.sh"
# shellcheck source=tests/cluster/lib.sh
source "${HERE}/lib.sh"
# shellcheck source=tests/cluster/pki.sh
source "${HERE}/pki.sh"

NODE_NAME="${SLUICE_NODE_NAME:-sluice-node}"
NODE_DIR="${SLUICE_STATE}/node"
LOG_DIR="${NODE_DIR}/logs"
PID_DIR="${NODE_DIR}/pids"
NODE_PKI="${NODE_DIR}/pki"
CONTAINERD_DIR="${NODE_DIR}/containerd"
CONTAINERD_SOCK="${CONTAINERD_DIR}/containerd.sock"
CNI_CONF_DIR="${NODE_DIR}/cni/net.d"
CNI_IPAM_DIR="${NODE_DIR}/cni/ipam"
CNI_BIN_DIR="${SLUICE_CNI_BIN_DIR:-/usr/lib/cni}"
CNI_NETWORK=sluice
KUBELET_DIR="${NODE_DIR}/kubelet"
POD_LOGS_DIR="${NODE_DIR}/pod-logs"
VOLUMES_DIR="${NODE_DIR}/volumes"
# The node's cgroup subtree in every hierarchy (kubelet cgroupRoot), and the record, written
# before the kubelet starts, of the root the running kubelet was given (a node started by an
# older node.sh, without it, kept its pods in the host-wide /kubepods).
CGROUP_ROOT="${SLUICE_NODE_CGROUP_ROOT}"
CGROUP_ROOT_RECORD="${NODE_DIR}/cgroup-root"
# containerd mounts pods' network namespaces here (netns_mounts_under_state_dir).
CRI_NETNS_DIR="${CONTAINERD_DIR}/state/io.containerd.grpc.v1.cri/netns"
# Names of the KUBE-*/CNI-* chains that existed before the node's kubelet and kube-proxy
# first started (down reports chains that appeared since and are left in place).
CHAINS_BEFORE="${NODE_DIR}/iptables-chains-before"
# Present when /run/containerd did not exist before our containerd made it.
RUN_CONTAINERD_RECORD="${NODE_DIR}/run-containerd-created"
RUNC="$(command -v runc || echo /usr/sbin/runc)"

LOCAL_PATH_VERSION="${LOCAL_PATH_VERSION:-v0.0.30}"
LOCAL_PATH_BIN="${SLUICE_CACHE}/bin/local-path-provisioner-${LOCAL_PATH_VERSION}/local-path-provisioner"
CRICTL_VERSION="${CRICTL_VERSION:-v1.34.0}"
CRICTL_BIN="${SLUICE_CACHE}/bin/crictl-${CRICTL_VERSION}/crictl"

PAUSE_VERSION="${PAUSE_VERSION:-3.10.1}"
PAUSE_IMAGE="localhost/sluice-pause:${PAUSE_VERSION}"
HELPER_IMAGE="localhost/sluice-base:bookworm"

# Deadlines (seconds) for each readiness wait.
DEADLINE_CONTAINERD=60
DEADLINE_KUBELET=120
DEADLINE_NODE_READY=180
DEADLINE_PROXY=90

kube() { "${K8S_BIN_DIR}/kubectl" --kubeconfig "${ADMIN_KUBECONFIG}" --request-timeout=20s "$@"; }
node_ctr() { ctr --address "${CONTAINERD_SOCK}" --namespace k8s.io "$@"; }
crictl_node() { "${CRICTL_BIN}" --config /dev/null --runtime-endpoint "unix://${CONTAINERD_SOCK}" --image-endpoint "unix://${CONTAINERD_SOCK}" --timeout 20s "$@"; }

# render TEMPLATE OUT: replaces @VARS@ with the values below; fails on any left unreplaced.
render() {
  local template="$1" out="$2"
  sed -e "s|@BRIDGE@|${SLUICE_BRIDGE}|g" \
    -e "s|@BRIDGE_IP@|${SLUICE_BRIDGE_IP}|g" \
    -e "s|@POD_CIDR@|${SLUICE_POD_CIDR}|g" \
    -e "s|@POD_RANGE_START@|${POD_RANGE_START}|g" \
    -e "s|@POD_RANGE_END@|${POD_RANGE_END}|g" \
    -e "s|@CNI_IPAM_DIR@|${CNI_IPAM_DIR}|g" \
    -e "s|@CNI_BIN_DIR@|${CNI_BIN_DIR}|g" \
    -e "s|@CNI_CONF_DIR@|${CNI_CONF_DIR}|g" \
    -e "s|@CONTAINERD_ROOT@|${CONTAINERD_DIR}/root|g" \
    -e "s|@CONTAINERD_STATE@|${CONTAINERD_DIR}/state|g" \
    -e "s|@CONTAINERD_SOCK@|${CONTAINERD_SOCK}|g" \
    -e "s|@PAUSE_IMAGE@|${PAUSE_IMAGE}|g" \
    -e "s|@RUNC@|${RUNC}|g" \
    -e "s|@PKI_DIR@|${NODE_PKI}|g" \
    -e "s|@CLUSTER_CA@|${PKI_DIR}/ca.crt|g" \
    -e "s|@CLUSTER_DOMAIN@|${SLUICE_CLUSTER_DOMAIN}|g" \
    -e "s|@NODE_DIR@|${NODE_DIR}|g" \
    -e "s|@POD_LOGS_DIR@|${POD_LOGS_DIR}|g" \
    -e "s|@NODE_NAME@|${NODE_NAME}|g" \
    -e "s|@VOLUMES_DIR@|${VOLUMES_DIR}|g" \
    -e "s|@HELPER_IMAGE@|${HELPER_IMAGE}|g" \
    -e "s|@CGROUP_ROOT@|${CGROUP_ROOT}|g" \
    "${template}" >"${out}.tmp"
  if grep -q '@[A-Z_]*@' "${out}.tmp"; then
    die "unreplaced placeholder in ${out}: $(grep -o '@[A-Z_]*@' "${out}.tmp" | sort -u | tr '\n' ' ')"
  fi
  mv -f "${out}.tmp" "${out}"
}

POD_RANGE_START="${SLUICE_POD_CIDR%.*}.2"
POD_RANGE_END="${SLUICE_POD_CIDR%.*}.254"

# Note: with pipefail, `cmd | grep -q` fails when grep exits at the first match and cmd
# then dies of SIGPIPE; pipelines here use `grep ... >/dev/null`, which reads everything.

# ---------------------------------------------------------------------------------------
# Prerequisites

ensure_packages() {
  local missing=() cmd pkg pair
  for pair in containerd:containerd runc:runc iptables:iptables conntrack:conntrack \
    buildah:buildah mmdebstrap:mmdebstrap ip:iproute2 nsenter:util-linux gcc:gcc \
    openssl:openssl curl:curl; do
    cmd="${pair%%:*}" pkg="${pair#*:}"
    command -v "${cmd}" >/dev/null || missing+=("${pkg}")
  done
  [[ -x "${CNI_BIN_DIR}/bridge" ]] || missing+=(containernetworking-plugins)
  [[ -e /usr/lib/x86_64-linux-gnu/libc.a ]] || missing+=(libc6-dev)
  if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  RUNC="$(command -v runc)"
}

ensure_control_plane() {
  [[ -s "${SLUICE_STATE}/env" ]] ||
    die "${SLUICE_STATE}/env is missing: start the control plane first (bash tests/cluster/cluster.sh up)"
  ADMIN_KUBECONFIG="$(
    # shellcheck disable=SC1091
    source "${SLUICE_STATE}/env"
    echo "${KUBECONFIG}"
  )"
  [[ -s "${ADMIN_KUBECONFIG}" ]] || die "admin kubeconfig ${ADMIN_KUBECONFIG} (from ${SLUICE_STATE}/env) is missing"
  local bin
  for bin in kubelet kube-proxy kubectl; do
    [[ -x "${K8S_BIN_DIR}/${bin}" ]] || die "${K8S_BIN_DIR}/${bin} is missing: cluster.sh builds it (tests/cluster/build.sh)"
  done
  [[ -s "${PKI_DIR}/ca.crt" && -s "${PKI_DIR}/ca.key" ]] || die "cluster CA not found in ${PKI_DIR}"
  kube get --raw /readyz >/dev/null 2>&1 || die "the API server does not answer /readyz (kubeconfig ${ADMIN_KUBECONFIG})"
}

# Only the Go module proxy: never fall back to fetching from the modules' own hosts.
GOPROXY_ONLY="$(go env GOPROXY 2>/dev/null | sed -E 's/(^|,|\|)direct($|,|\|)/\1/g; s/[,|]+$//')"
export GOPROXY="${GOPROXY_ONLY:-https://proxy.golang.org}"

# go_install_cached NAME BIN MODULE@VERSION PACKAGE@VERSION [GO FLAGS...]: a Go build from
# the module proxy, cached by version under ${SLUICE_CACHE}/bin. The download runs first,
# outside the build lock; the compile under it.
go_install_cached() {
  local name="$1" bin="$2" module="$3" package="$4"
  shift 4
  [[ -x "${bin}" ]] && return 0
  local logfile="${LOG_DIR}/build-${name}.log" tmp
  tmp="$(mktemp -d)"
  log "building ${name} (${package}) into $(dirname "${bin}")"
  (cd "${tmp}" && GOFLAGS=-mod=mod go mod download "${module}" >>"${logfile}" 2>&1) ||
    fail_component "download ${name}" "${logfile}" "go mod download ${module} failed (GOPROXY=${GOPROXY})"
  (cd "${tmp}" && GOBIN="${tmp}" CGO_ENABLED=0 GOFLAGS=-mod=mod run_with_progress "build ${name}" "${logfile}" 1800 \
    flock -w 3600 "${SLUICE_BUILD_LOCK}" go install "$@" "${package}")
  mkdir -p "$(dirname "${bin}")"
  mv -f "${tmp}/$(basename "${bin}")" "${bin}"
  rm -rf "${tmp}"
}

ensure_tools_built() {
  go_install_cached local-path-provisioner "${LOCAL_PATH_BIN}" \
    "github.com/rancher/local-path-provisioner@${LOCAL_PATH_VERSION}" \
    "github.com/rancher/local-path-provisioner@${LOCAL_PATH_VERSION}"
  go_install_cached crictl "${CRICTL_BIN}" "sigs.k8s.io/cri-tools@${CRICTL_VERSION}" \
    "sigs.k8s.io/cri-tools/cmd/crictl@${CRICTL_VERSION}" \
    -ldflags "-X sigs.k8s.io/cri-tools/pkg/version.Version=${CRICTL_VERSION}"
}

ensure_network() {
  if ! ip link show "${SLUICE_BRIDGE}" >/dev/null 2>&1; then
    log "bridge ${SLUICE_BRIDGE} is missing (cluster.sh normally creates it): creating it"
    ip link add "${SLUICE_BRIDGE}" type bridge
  fi
  if ! ip -4 addr show dev "${SLUICE_BRIDGE}" | grep "inet ${SLUICE_BRIDGE_IP}/" >/dev/null; then
    ip addr add "${SLUICE_BRIDGE_IP}/${SLUICE_POD_CIDR#*/}" dev "${SLUICE_BRIDGE}"
  fi
  ip link set "${SLUICE_BRIDGE}" up
  # Pods on the bridge reach Services (DNAT by kube-proxy) only if bridged traffic passes
  # iptables; routing between the bridge and the host needs forwarding.
  [[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] || modprobe br_netfilter 2>/dev/null ||
    die "br_netfilter is not available: pods could not reach ClusterIP Services"
  sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.ipv4.ip_forward=1
}

# The API server reaches the kubelet (logs, exec) by the node's InternalIP
# (cluster.sh passes --kubelet-preferred-address-types=InternalIP), so the node name needs
# no DNS. Earlier versions added the name to /etc/hosts; down still removes that line.
HOSTS_MARKER="# sluice test node (tests/cluster/node.sh)"
remove_hosts_entry() {
  if grep -qF "${HOSTS_MARKER}" /etc/hosts 2>/dev/null; then
    # In place (not a rename): /etc/hosts may be a bind mount.
    local kept
    kept="$(grep -vF "${HOSTS_MARKER}" /etc/hosts)"
    printf '%s\n' "${kept}" >/etc/hosts
  fi
}

# Safety net for the machine's network rule: pods may talk to each other and to this host
# (the API server, Kafka), never be routed anywhere else. Forwarded packets from the pod
# subnet to outside it are rejected. (Pods have no DNS server either, see resolv.conf.)
EGRESS_CHAIN=SLUICE-NODE-EGRESS
ensure_egress_guard() {
  iptables -N "${EGRESS_CHAIN}" 2>/dev/null || true
  iptables -F "${EGRESS_CHAIN}"
  iptables -A "${EGRESS_CHAIN}" -d "${SLUICE_POD_CIDR}" -j RETURN
  iptables -A "${EGRESS_CHAIN}" -j REJECT --reject-with icmp-net-prohibited
  iptables -C FORWARD -s "${SLUICE_POD_CIDR}" -j "${EGRESS_CHAIN}" 2>/dev/null ||
    iptables -I FORWARD 1 -s "${SLUICE_POD_CIDR}" -j "${EGRESS_CHAIN}"
}

ensure_node_pki() {
  mkdir -p "${NODE_PKI}"
  # Client identities (signed by the cluster CA, kept in its PKI dir by pki.sh).
  pki_client_cert "kubelet-${NODE_NAME}" "system:node:${NODE_NAME}" system:nodes
  pki_client_cert kube-proxy system:kube-proxy
  pki_server_cert "kubelet-serving-${NODE_NAME}" "${NODE_NAME}" \
    "DNS:${NODE_NAME},DNS:localhost,IP:${SLUICE_BRIDGE_IP},IP:127.0.0.1"
  cp -f "${PKI_DIR}/kubelet-serving-${NODE_NAME}.crt" "${NODE_PKI}/kubelet-serving.crt"
  cp -f "${PKI_DIR}/kubelet-serving-${NODE_NAME}.key" "${NODE_PKI}/kubelet-serving.key"
  local server="https://${SLUICE_BRIDGE_IP}:${SLUICE_APISERVER_PORT}"
  write_kubeconfig "${NODE_PKI}/kubelet.kubeconfig" "${server}" "kubelet-${NODE_NAME}" "system:node:${NODE_NAME}"
  write_kubeconfig "${NODE_PKI}/kube-proxy.kubeconfig" "${server}" kube-proxy system:kube-proxy
}

# With --authorization-mode=Node the kubelet's identity is authorized by the Node authorizer;
# with RBAC alone it needs the system:node role (kubeadm did this before the Node authorizer).
ensure_node_rbac() {
  if kube auth can-i get "nodes/${NODE_NAME}" --as="system:node:${NODE_NAME}" --as-group=system:nodes >/dev/null 2>&1; then
    return 0
  fi
  log "the API server does not authorize system:nodes by itself: binding ClusterRole system:node"
  kube apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: sluice:nodes
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:node
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: Group
  name: system:nodes
EOF
}

render_configs() {
  mkdir -p "${CONTAINERD_DIR}/root" "${CONTAINERD_DIR}/state" "${CNI_CONF_DIR}" "${CNI_IPAM_DIR}" \
    "${KUBELET_DIR}" "${POD_LOGS_DIR}" "${VOLUMES_DIR}" "${LOG_DIR}" "${PID_DIR}"
  render "${HERE}/node/containerd.toml.in" "${CONTAINERD_DIR}/config.toml"
  render "${HERE}/node/10-sluice.conflist.in" "${CNI_CONF_DIR}/10-sluice.conflist"
  render "${HERE}/node/kubelet-config.yaml.in" "${NODE_DIR}/kubelet-config.yaml"
  render "${HERE}/node/kube-proxy-config.yaml.in" "${NODE_DIR}/kube-proxy-config.yaml"
  render "${HERE}/node/local-path.yaml.in" "${NODE_DIR}/local-path.yaml"
  # No cluster DNS: pods get an empty resolver config and reach the API server (10.96.0.1)
  # and Kafka (10.244.0.1:9094) by address. Nothing leaves the machine through a pod.
  printf '# Sluice test node: no cluster DNS; use addresses.\noptions ndots:1\n' >"${NODE_DIR}/resolv.conf"
}

# ---------------------------------------------------------------------------------------
# What is the node's, and what is not. This host may run other software that uses the same
# kinds of resources (another kubelet's /kubepods cgroups, another CNI's cni-* network
# namespaces, other KUBE-*/CNI-* iptables chains); `down` removes only what is recognized as
# the node's by the rules below (NODE.md, "What is ours").

# Node agents that cannot share a host with ours: a second kubelet competes for ports
# 10248/10250 and the pods' cgroups; a second kube-proxy owns the same iptables chain names
# (each deletes the KUBE-SVC-* chains it does not know). k3s, k0s and microk8s run a kubelet
# inside their own binary.
NODE_AGENT_NAMES='^(kubelet|kube-proxy|hyperkube|k3s|k3s-server|k3s-agent|k0s|kubelite)$'

# foreign_node_agents: "pid|name|command line" for each live node agent not started by this
# node.sh (pid files in ${PID_DIR}), by its comm, executable or argv[0] name. Zombies do not
# count: PID 1 here does not reap, so our own stopped daemons linger as zombies.
foreign_node_agents() {
  local dir pid comm exe argv0 cmdline name ours=" "
  for name in kubelet kube-proxy; do
    if pid_alive "${PID_DIR}/${name}.pid"; then ours+="$(<"${PID_DIR}/${name}.pid") "; fi
  done
  for dir in /proc/[0-9]*; do
    pid="${dir#/proc/}"
    [[ "${ours}" != *" ${pid} "* ]] || continue
    comm="$(cat "${dir}/comm" 2>/dev/null)" || continue
    exe="$(readlink "${dir}/exe" 2>/dev/null || true)"
    exe="${exe% (deleted)}"
    cmdline="$({ tr '\0' ' ' <"${dir}/cmdline"; } 2>/dev/null || true)"
    argv0="${cmdline%% *}"
    [[ "${comm}" =~ ${NODE_AGENT_NAMES} || "${exe##*/}" =~ ${NODE_AGENT_NAMES} ||
      "${argv0##*/}" =~ ${NODE_AGENT_NAMES} ]] || continue
    [[ "$(awk '{print $3}' "${dir}/stat" 2>/dev/null)" != Z ]] || continue
    printf '%s|%s|%s\n' "${pid}" "${comm}" "${cmdline% }"
  done
}

# preflight: refuse to start the node beside another kubelet or kube-proxy.
preflight() {
  local agents pid name cmdline hint
  agents="$(foreign_node_agents)"
  [[ -n "${agents}" ]] || return 0
  log "FAILED: node preflight: a kubelet or kube-proxy that this node.sh did not start runs on this host:"
  while IFS='|' read -r pid name cmdline; do
    hint=""
    if [[ "${cmdline}" =~ --root-dir=([^ ]+)/node/kubelet || "${cmdline}" =~ --config=([^ ]+)/node/kube-proxy-config.yaml ]]; then
      hint="  <- the node of another Sluice state dir: SLUICE_STATE=${BASH_REMATCH[1]} bash ${HERE}/cluster.sh down"
    fi
    printf '    pid %s (%s): %s%s\n' "${pid}" "${name}" "${cmdline:0:200}" "${hint}" >&2
  done <<<"${agents}"
  log "the Sluice node would share ports 10248/10250, pods' cgroups and kube-proxy's iptables chains with it, so it does not start beside it"
  die "node preflight: stop that process first (its service manager, e.g. 'systemctl stop kubelet', or 'kill <pid>' for a leftover), then rerun; or run the control plane and Kafka without the node: SLUICE_NODE=0 bash ${HERE}/cluster.sh up"
}

# --- cgroups: the subtree ${CGROUP_ROOT} in every hierarchy -------------------------------

# The cgroup hierarchies of this host (v1 controllers, named ones, the cgroup2 of hybrid mode).
cgroup_hierarchies() { awk '$3 == "cgroup" || $3 == "cgroup2" {print $2}' /proc/self/mounts | sort -u || true; }

# our_cgroups: the node's root cgroup in each hierarchy that has one.
our_cgroups() {
  local hierarchy
  while read -r hierarchy; do
    [[ -n "${hierarchy}" && -d "${hierarchy}${CGROUP_ROOT}" ]] && printf '%s\n' "${hierarchy}${CGROUP_ROOT}"
  done < <(cgroup_hierarchies)
  return 0
}

# The kubelet checks that its cgroupRoot exists in every hierarchy it uses; runc and the kubelet
# create everything below it.
ensure_cgroup_root() {
  [[ "${CGROUP_ROOT}" =~ ^/[a-z0-9][a-z0-9-]*$ && "${CGROUP_ROOT}" != /kubepods ]] ||
    die "SLUICE_NODE_CGROUP_ROOT=${CGROUP_ROOT} must be one path component like /sluice-node (and not /kubepods)"
  local hierarchy dir made=()
  while read -r hierarchy; do
    [[ -n "${hierarchy}" ]] || continue
    dir="${hierarchy}${CGROUP_ROOT}"
    [[ -d "${dir}" ]] && continue
    mkdir "${dir}" || die "cannot create cgroup ${dir} (the kubelet's cgroupRoot): is ${hierarchy} mounted read-only?"
    # A cpuset (v1) child has no CPUs or memory nodes until it is given its parent's.
    if [[ -f "${dir}/cpuset.cpus" ]]; then
      cat "${hierarchy}/cpuset.cpus" >"${dir}/cpuset.cpus"
      cat "${hierarchy}/cpuset.mems" >"${dir}/cpuset.mems"
    fi
    made+=("${hierarchy##*/}")
  done < <(cgroup_hierarchies)
  ((${#made[@]} == 0)) || log "created cgroup ${CGROUP_ROOT} in: ${made[*]}"
}

# --- iptables: chains by name -------------------------------------------------------------
# kube-proxy (iptables mode) and the kubelet create chains whose names are fixed in their code
# and cannot be configured; kube-proxy adds one chain per Service/endpoint with a hashed
# suffix. The node's chains are exactly those names, plus this script's SLUICE-NODE-*;
# the node's rules are the rules in those chains and the jumps (-j/-g) into them from the
# built-in chains (INPUT, FORWARD, PREROUTING, ...), where kube-proxy and the kubelet put
# theirs. Other chains, KUBE-*/CNI-* or not, and every rule in them (even one jumping to a
# chain of the node's: then that chain stays, and down says so) are not the node's and are
# never touched. The CNI bridge plugin adds no chains here (ipMasq is off, no portmap).
# Since only one kube-proxy can own these names on a host, preflight refuses to start beside
# another kubelet or kube-proxy.
OUR_CHAINS_ERE='^(KUBE-(SERVICES|EXTERNAL-SERVICES|NODEPORTS|POSTROUTING|MARK-MASQ|MARK-DROP|FORWARD|PROXY-FIREWALL|FIREWALL|PROXY-CANARY|KUBELET-CANARY|IPTABLES-HINT|LOAD-BALANCER|NODE-PORT|(SVC|SVL|SEP|FW|EXT|XLB)-[A-Z0-9]+)|SLUICE-NODE-[A-Z0-9-]+)$'
IPTABLES_TABLES=(filter nat mangle raw)

# our_iptables_lines TOOL TABLE: the node's lines of `TOOL -t TABLE -S` (chains and rules).
# Built-in chains are the ones with a policy (-P); -S lists those first.
our_iptables_lines() {
  { "$1" -t "$2" -S 2>/dev/null || true; } | awk -v re="${OUR_CHAINS_ERE}" '
    $1 == "-P" { builtin[$2] = 1; next }
    $1 == "-N" && $2 ~ re { print; next }
    $1 == "-A" {
      if ($2 ~ re) { print; next }
      if (!($2 in builtin)) next
      for (i = 3; i < NF; i++) if (($i == "-j" || $i == "-g") && $(i + 1) ~ re) { print; next }
    }'
}

# count_our_iptables TOOL: how many lines of all tables are the node's.
count_our_iptables() {
  local table n=0
  command -v "$1" >/dev/null || { echo 0; return 0; }
  for table in "${IPTABLES_TABLES[@]}"; do
    n=$((n + $(our_iptables_lines "$1" "${table}" | wc -l)))
  done
  echo "${n}"
}

# kube_chain_names: "tool table chain" for every KUBE-*/CNI-* chain on the host.
kube_chain_names() {
  local tool table
  for tool in iptables ip6tables; do
    command -v "${tool}" >/dev/null || continue
    for table in "${IPTABLES_TABLES[@]}"; do
      { "${tool}" -t "${table}" -S 2>/dev/null || true; } |
        awk -v p="${tool} ${table}" '$1 == "-N" && $2 ~ /^(KUBE|CNI)-/ {print p, $2}'
    done
  done
}

# Before the node's kubelet and kube-proxy first start: note the KUBE-*/CNI-* chains that
# already exist, and warn about any that kube-proxy or the kubelet will take over.
record_chains_before() {
  [[ ! -e "${CHAINS_BEFORE}" ]] || return 0
  if pid_alive "${PID_DIR}/kubelet.pid" || pid_alive "${PID_DIR}/kube-proxy.pid"; then
    return 0 # started by an earlier node.sh: too late to tell
  fi
  kube_chain_names >"${CHAINS_BEFORE}.tmp"
  mv -f "${CHAINS_BEFORE}.tmp" "${CHAINS_BEFORE}"
  local taken
  taken="$(awk -v re="${OUR_CHAINS_ERE}" '$3 ~ re {printf "%s/%s/%s ", $1, $2, $3}' "${CHAINS_BEFORE}")"
  [[ -z "${taken}" ]] ||
    log "WARNING: chains with kube-proxy's/kubelet's names exist before the node starts (left by another Kubernetes, or by a node.sh that crashed); the node's kube-proxy and kubelet take them over and down removes them: ${taken}"
}

# After down: chains that appeared while the node ran but are not the node's, left in place.
report_chains_left() {
  [[ -e "${CHAINS_BEFORE}" ]] || return 0
  local left
  left="$(kube_chain_names | grep -vxF -f "${CHAINS_BEFORE}" | awk '{printf "%s/%s/%s ", $1, $2, $3}' || true)"
  [[ -z "${left}" ]] ||
    log "left in place: KUBE-*/CNI-* chains that appeared while the node ran, with names that are not kube-proxy's or the kubelet's (another program's; if kube-proxy made one, add its name to OUR_CHAINS_ERE in node.sh): ${left}"
}

# --- network namespaces -------------------------------------------------------------------
# The node's containerd mounts pods' namespaces under its own state dir (CRI_NETNS_DIR), so
# they are never in /run/netns; after CNI DEL they go with the unmounts under node/. A node
# started by an older node.sh used /run/netns/cni-<uuid>: such a namespace is the node's
# only when the peer of its eth0 is a veth on our bridge. Other cni-* namespaces stay, even
# with an address in 10.244.0.0/24 (flannel's default range).
legacy_netns() {
  local ns peer ports
  ports=" $(ip -o link show master "${SLUICE_BRIDGE}" 2>/dev/null | awk -F': ' '{printf "%s ", $1}' || true)"
  for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^cni-/ {print $1}' || true); do
    peer="$(ip -n "${ns}" -o link show 2>/dev/null | sed -n 's/^[0-9]*: eth0@if\([0-9]*\):.*/\1/p' || true)"
    [[ -n "${peer}" && "${ports}" == *" ${peer} "* ]] && printf '%s\n' "${ns}"
  done
  return 0
}

# ---------------------------------------------------------------------------------------
# Daemons

start_containerd() {
  local pidfile="${PID_DIR}/containerd.pid" logfile="${LOG_DIR}/containerd.log"
  if pid_alive "${pidfile}" && node_ctr version >/dev/null 2>&1; then
    log "containerd already running (pid $(<"${pidfile}"))"
    return 0
  fi
  stop_daemon containerd "${pidfile}"
  rm -f "${CONTAINERD_SOCK}"
  # containerd 1.6 keeps shim sockets and fifos in /run/containerd whatever `state` says: down
  # removes that directory (when empty) only if it was not there before.
  [[ -e /run/containerd || -e "${RUN_CONTAINERD_RECORD}" ]] || date -u +%FT%TZ >"${RUN_CONTAINERD_RECORD}"
  start_daemon containerd "${pidfile}" "${logfile}" \
    "$(command -v containerd)" --config "${CONTAINERD_DIR}/config.toml"
  WAIT_PIDFILE="${pidfile}" wait_until containerd "${logfile}" "${DEADLINE_CONTAINERD}" \
    node_ctr version
  WAIT_PIDFILE="${pidfile}" wait_until "containerd CRI plugin" "${logfile}" "${DEADLINE_CONTAINERD}" \
    cri_plugin_ok
}

cri_plugin_ok() { node_ctr plugins ls 2>/dev/null | grep -E 'io\.containerd\.grpc\.v1 +cri +[^ ]+ +ok' >/dev/null; }

import_images() {
  log "building/fetching the node's images from ${SLUICE_CACHE}/images"
  bash "${HERE}/images.sh" infra
  # The worker and controller images too, when cargo has built the release binaries (cached
  # by the binaries' hash: seconds when nothing changed).
  bash "${HERE}/images.sh" sluice-if-built
  bash "${HERE}/images.sh" import
  node_ctr images ls -q | grep -x "${PAUSE_IMAGE}" >/dev/null ||
    die "pause image ${PAUSE_IMAGE} is not in the node's containerd after import"
}

start_kubelet() {
  local pidfile="${PID_DIR}/kubelet.pid" logfile="${LOG_DIR}/kubelet.log"
  if pid_alive "${pidfile}"; then
    [[ "$(cat "${CGROUP_ROOT_RECORD}" 2>/dev/null)" == "${CGROUP_ROOT}" ]] ||
      die "the running kubelet (pid $(<"${pidfile}")) was started by an older node.sh, with pods in the host-wide /kubepods cgroup (record ${CGROUP_ROOT_RECORD}: '$(cat "${CGROUP_ROOT_RECORD}" 2>/dev/null)'); run 'bash ${HERE}/cluster.sh down' once (it removes that node's pods by uid) and then up"
    log "kubelet already running (pid $(<"${pidfile}"))"
  else
    ensure_cgroup_root
    printf '%s\n' "${CGROUP_ROOT}" >"${CGROUP_ROOT_RECORD}"
    start_daemon kubelet "${pidfile}" "${logfile}" \
      "${K8S_BIN_DIR}/kubelet" \
      --config="${NODE_DIR}/kubelet-config.yaml" \
      --kubeconfig="${NODE_PKI}/kubelet.kubeconfig" \
      --root-dir="${KUBELET_DIR}" \
      --cert-dir="${NODE_PKI}" \
      --hostname-override="${NODE_NAME}" \
      --node-ip="${SLUICE_BRIDGE_IP}" \
      --node-labels="sluice.dev/test-node=true" \
      --v=1
  fi
  WAIT_PIDFILE="${pidfile}" wait_until "kubelet healthz" "${logfile}" "${DEADLINE_KUBELET}" \
    curl -fsS --max-time 2 http://127.0.0.1:10248/healthz
  WAIT_PIDFILE="${pidfile}" wait_until "node ${NODE_NAME} Ready" "${logfile}" "${DEADLINE_NODE_READY}" \
    node_is_ready
}

node_is_ready() {
  [[ "$(kube get node "${NODE_NAME}" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == "True" ]]
}

start_kube_proxy() {
  local pidfile="${PID_DIR}/kube-proxy.pid" logfile="${LOG_DIR}/kube-proxy.log"
  if pid_alive "${pidfile}"; then
    log "kube-proxy already running (pid $(<"${pidfile}"))"
  else
    start_daemon kube-proxy "${pidfile}" "${logfile}" \
      "${K8S_BIN_DIR}/kube-proxy" --config="${NODE_DIR}/kube-proxy-config.yaml" --v=1
  fi
  WAIT_PIDFILE="${pidfile}" wait_until "kube-proxy healthz" "${logfile}" "${DEADLINE_PROXY}" \
    curl -fsS --max-time 2 http://127.0.0.1:10256/healthz
  WAIT_PIDFILE="${pidfile}" wait_until "kube-proxy rule for Service kubernetes (${SLUICE_KUBERNETES_SERVICE_IP}:443)" \
    "${logfile}" "${DEADLINE_PROXY}" kubernetes_service_routed
}

kubernetes_service_routed() {
  iptables -t nat -S KUBE-SERVICES 2>/dev/null |
    grep -- "-d ${SLUICE_KUBERNETES_SERVICE_IP}/32 .*--dport 443" >/dev/null
}

start_provisioner() {
  kube apply -f "${NODE_DIR}/local-path.yaml" >/dev/null
  local pidfile="${PID_DIR}/local-path-provisioner.pid" logfile="${LOG_DIR}/local-path-provisioner.log"
  if pid_alive "${pidfile}"; then
    log "local-path-provisioner already running (pid $(<"${pidfile}"))"
    return 0
  fi
  start_daemon local-path-provisioner "${pidfile}" "${logfile}" \
    "${LOCAL_PATH_BIN}" --debug start \
    --kubeconfig "${ADMIN_KUBECONFIG}" \
    --namespace local-path-storage \
    --configmap-name local-path-config \
    --service-account-name local-path-provisioner-service-account \
    --helper-image "${HELPER_IMAGE}" \
    --provisioner-name rancher.io/local-path
  WAIT_PIDFILE="${pidfile}" wait_until local-path-provisioner "${logfile}" 30 \
    grep -q 'Provisioner started\|Started provisioner controller' "${logfile}"
}

up() {
  local t0
  t0=$(date +%s)
  log "node ${NODE_NAME}: up (state ${NODE_DIR})"
  preflight
  ensure_packages
  ensure_control_plane
  mkdir -p "${LOG_DIR}" "${PID_DIR}"
  record_chains_before
  ensure_network
  ensure_egress_guard
  ensure_tools_built
  ensure_node_pki
  ensure_node_rbac
  render_configs
  start_containerd
  import_images
  start_kubelet
  start_kube_proxy
  start_provisioner
  log "node ${NODE_NAME} is Ready; pods reach the API at ${SLUICE_KUBERNETES_SERVICE_IP}:443 and Kafka at ${SLUICE_BRIDGE_IP}:${SLUICE_KAFKA_POD_PORT} ($(($(date +%s) - t0))s)"
}

# ---------------------------------------------------------------------------------------
# down: everything the node created, and nothing else (see "What is ours" in NODE.md).

# leftovers_report LABEL: logs what of the node is on this machine (one line, the counts
# NODE.md shows) and fills LEFTOVERS with a description of each kind that is not gone.
# Everything counted is the node's by the rules above; other software's is not counted.
LEFTOVERS=()
leftovers_report() {
  local label="$1" netns mounts ipt4 ipt6 veths processes cgroups files links results
  netns="$(legacy_netns | tr '\n' ' ')"
  netns="${netns% }"
  mounts="$(awk -v d="${SLUICE_STATE}" 'index($2, d) == 1' /proc/self/mounts | wc -l || true)"
  ipt4="$(count_our_iptables iptables)"
  ipt6="$(count_our_iptables ip6tables)"
  veths="$(ip -o link show master "${SLUICE_BRIDGE}" 2>/dev/null | grep -c veth || true)"
  processes="$(node_processes)"
  cgroups="$(our_cgroups | wc -l || true)"
  files="$(find "${NODE_DIR}" -mindepth 1 -maxdepth 1 ! -name logs 2>/dev/null | wc -l || true)"
  links="$(find /var/log/containers -maxdepth 1 -type l -lname "${POD_LOGS_DIR}/*" 2>/dev/null | wc -l || true)"
  results="$(find /var/lib/cni/results -maxdepth 1 -name "${CNI_NETWORK}-*" 2>/dev/null | wc -l || true)"
  log "${label}: mounts(state dir, incl. pods' netns)=${mounts} netns(/run/netns, on ${SLUICE_BRIDGE})=[${netns}]" \
    "iptables(ours)=${ipt4} ip6tables(ours)=${ipt6} veths on ${SLUICE_BRIDGE}=${veths}" \
    "processes=[${processes}] cgroups ${CGROUP_ROOT}=${cgroups} files in node/=${files}"
  # (Each count ends in `|| true`: with pipefail, find on a missing directory would end
  # the script.)
  LEFTOVERS=()
  [[ -z "${netns}" ]] || LEFTOVERS+=("network namespaces in /run/netns on ${SLUICE_BRIDGE}: ${netns}")
  ((mounts == 0)) || LEFTOVERS+=("${mounts} mounts under ${SLUICE_STATE}: $(awk -v d="${SLUICE_STATE}" 'index($2, d) == 1 {printf "%s ", $2}' /proc/self/mounts)")
  ((ipt4 == 0)) || LEFTOVERS+=("${ipt4} iptables lines of the node's chains (iptables -S | grep -E 'KUBE-|SLUICE-NODE-')")
  ((ipt6 == 0)) || LEFTOVERS+=("${ipt6} ip6tables lines of the node's chains")
  ((veths == 0)) || LEFTOVERS+=("${veths} veths on ${SLUICE_BRIDGE}")
  [[ -z "${processes}" ]] || LEFTOVERS+=("processes: ${processes}")
  ((cgroups == 0)) || LEFTOVERS+=("cgroups: $(our_cgroups | tr '\n' ' ')")
  ((files == 0)) || LEFTOVERS+=("${files} entries in ${NODE_DIR} besides logs/")
  ((links == 0)) || LEFTOVERS+=("${links} pod log links in /var/log/containers")
  ((results == 0)) || LEFTOVERS+=("${results} CNI result files in /var/lib/cni/results")
  return 0
}

# Live processes of the node (our daemons, shims and the provisioner name the node's
# directory or binary on their command line; pods' processes are in the node's cgroups),
# as "pid:program" words.
node_processes() {
  local dir pid cmdline found=() pods
  for dir in /proc/[0-9]*; do
    pid="${dir#/proc/}"
    [[ "${pid}" != "$$" && "${pid}" != "${BASHPID}" ]] || continue
    cmdline="$({ tr '\0' ' ' <"${dir}/cmdline"; } 2>/dev/null || true)"
    [[ "${cmdline}" == *"${NODE_DIR}/"* || "${cmdline}" == *"${LOCAL_PATH_BIN}"* ]] || continue
    # Readers of the kept logs (tail -f ...) are not the node.
    [[ "${cmdline}" != *"${LOG_DIR}/"* ]] || continue
    found+=("${pid}:$(basename "${cmdline%% *}")")
  done
  pods="$(pod_pids | tr '\n' ' ')"
  for pid in ${pods}; do
    [[ " ${found[*]} " == *" ${pid}:"* ]] || found+=("${pid}:pod")
  done
  printf '%s' "${found[*]}"
}

# Processes in the node's cgroups (pods' containers), one pid a line.
pod_pids() {
  local roots
  mapfile -t roots < <(our_cgroups)
  ((${#roots[@]})) || return 0
  find "${roots[@]}" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -un || true
}

remove_pods_via_cri() {
  [[ -S "${CONTAINERD_SOCK}" && -x "${CRICTL_BIN}" ]] || return 0
  crictl_node version >/dev/null 2>&1 || return 0
  local pods
  pods="$(crictl_node pods -q 2>/dev/null || true)"
  [[ -n "${pods}" ]] || return 0
  log "removing $(wc -w <<<"${pods}") pod sandboxes through CRI (runs CNI DEL for each)"
  # shellcheck disable=SC2086
  crictl_node stopp ${pods} >/dev/null 2>&1 || true
  # shellcheck disable=SC2086
  crictl_node rmp -f ${pods} >/dev/null 2>&1 || true
}

# Shims started by our containerd carry our socket in their command line.
kill_our_shims() {
  local dir pid cmdline
  for dir in /proc/[0-9]*; do
    pid="${dir#/proc/}"
    cmdline="$({ tr '\0' ' ' <"${dir}/cmdline"; } 2>/dev/null || true)"
    [[ "${cmdline}" == *containerd-shim*"${CONTAINERD_SOCK}"* ]] || continue
    log "killing leftover shim pid ${pid}"
    kill -KILL "${pid}" 2>/dev/null || true
  done
}

# The node's network namespaces left after CNI DEL: those under CRI_NETNS_DIR go with the
# unmounts under node/ (unmount_under); those of an older node.sh in /run/netns are
# recognized by their eth0's peer on our bridge (legacy_netns). Then any veth still on our
# bridge (ours by the bridge) goes.
remove_our_netns() {
  local ns veth
  for ns in $(legacy_netns); do
    log "removing network namespace /run/netns/${ns} (its eth0 is on ${SLUICE_BRIDGE}: made by an older node.sh)"
    ip netns delete "${ns}" 2>/dev/null || umount "/run/netns/${ns}" 2>/dev/null || true
    rm -f "/run/netns/${ns}"
  done
  for veth in $(ip -o link show master "${SLUICE_BRIDGE}" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    if [[ "${veth}" == veth* ]]; then ip link delete "${veth}" 2>/dev/null || true; fi
  done
  local mounted
  mounted="$(awk -v d="${CRI_NETNS_DIR}/" 'index($2, d) == 1' /proc/self/mounts | wc -l || true)"
  if ((mounted)); then
    log "unmounting ${mounted} pod network namespaces left in ${CRI_NETNS_DIR}"
    unmount_under "${CRI_NETNS_DIR}"
  fi
}

unmount_under() {
  local dir="$1" m
  # Deepest first; lazy unmount as a last resort for busy mounts.
  while read -r m; do
    [[ -n "${m}" ]] || continue
    umount "${m}" 2>/dev/null || umount -l "${m}" 2>/dev/null || log "could not unmount ${m}"
  done < <(awk -v d="${dir}" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/self/mounts | sort -r)
}

# The node's iptables and ip6tables chains and rules (our_iptables_lines): first the jumps
# into them from chains that are not the node's, then the chains (flushed, then deleted, as
# they refer to each other). Replaces `kube-proxy --cleanup`, which deletes every chain with
# kube-proxy's names and also flushes IPVS and nftables state, whoever made it.
remove_our_iptables() {
  local tool table rule chain chains
  for tool in iptables ip6tables; do
    command -v "${tool}" >/dev/null || continue
    for table in "${IPTABLES_TABLES[@]}"; do
      "${tool}" -t "${table}" -S >/dev/null 2>&1 || continue
      while read -r rule; do
        [[ -n "${rule}" ]] || continue
        # -S prints rules as shell words (comments quoted): eval gives them back as arguments.
        eval "${tool} -t ${table} -D ${rule#-A }" 2>/dev/null ||
          log "could not delete ${tool} -t ${table} rule: ${rule}"
      done < <(our_iptables_lines "${tool}" "${table}" | awk -v re="${OUR_CHAINS_ERE}" '$1 == "-A" && $2 !~ re')
      chains="$(our_iptables_lines "${tool}" "${table}" | awk '$1 == "-N" {print $2}')"
      for chain in ${chains}; do
        "${tool}" -t "${table}" -F "${chain}" 2>/dev/null || true
      done
      for chain in ${chains}; do
        "${tool}" -t "${table}" -X "${chain}" 2>/dev/null ||
          log "could not delete ${tool} -t ${table} chain ${chain}; rules of other programs that refer to it (left alone): $(
            { "${tool}" -t "${table}" -S 2>/dev/null || true; } | grep -E -- "-[jg] ${chain}( |$)" | tr '\n' ';' || true)"
      done
    done
  done
}

# Pods' processes left behind (a crashed containerd or shim leaves them running) are the
# processes in the node's cgroups; then the node's cgroup subtree goes, deepest first.
remove_cgroups() {
  local pids roots
  remove_legacy_pod_cgroups
  mapfile -t roots < <(our_cgroups)
  ((${#roots[@]})) || return 0
  for _ in 1 2 3 4 5; do
    pids="$(pod_pids | tr '\n' ' ')"
    [[ -n "${pids// /}" ]] || break
    log "killing leftover pod processes (in ${CGROUP_ROOT}): ${pids}"
    # shellcheck disable=SC2086
    kill -KILL ${pids} 2>/dev/null || true
    sleep 1
  done
  find "${roots[@]}" -depth -type d -exec rmdir {} \; 2>/dev/null || true
}

# A node started by an older node.sh (no ${CGROUP_ROOT_RECORD}) kept its pods in the
# host-wide /kubepods, shared with any other kubelet. Its pods are the ones its kubelet
# knows (${KUBELET_DIR}/pods/<uid>): their kubepods[/burstable|/besteffort]/pod<uid> cgroups
# go; the QoS cgroups are only rmdir'ed, which fails while anything (another kubelet's
# pods, processes) is in them.
remove_legacy_pod_cgroups() {
  [[ ! -s "${CGROUP_ROOT_RECORD}" && -d "${KUBELET_DIR}/pods" ]] || return 0
  local uid uids=() hierarchy qos dirs=() pids
  for uid in "${KUBELET_DIR}"/pods/*/; do
    [[ -d "${uid}" ]] || continue
    uid="${uid%/}"
    uids+=("${uid##*/}")
  done
  for uid in "${uids[@]}"; do
    while read -r hierarchy; do
      for qos in "" burstable/ besteffort/; do
        [[ -d "${hierarchy}/kubepods/${qos}pod${uid}" ]] && dirs+=("${hierarchy}/kubepods/${qos}pod${uid}")
      done
    done < <(cgroup_hierarchies)
  done
  log "node started by an older node.sh (pods in /kubepods): removing the cgroups of its ${#uids[@]} pods by uid"
  if ((${#dirs[@]})); then
    for _ in 1 2 3 4 5; do
      pids="$(find "${dirs[@]}" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -un | tr '\n' ' ' || true)"
      [[ -n "${pids// /}" ]] || break
      log "killing leftover pod processes: ${pids}"
      # shellcheck disable=SC2086
      kill -KILL ${pids} 2>/dev/null || true
      sleep 1
    done
    find "${dirs[@]}" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  fi
  while read -r hierarchy; do
    rmdir "${hierarchy}/kubepods/burstable" "${hierarchy}/kubepods/besteffort" "${hierarchy}/kubepods" 2>/dev/null || true
  done < <(cgroup_hierarchies)
}

down() {
  log "node ${NODE_NAME}: down"
  local t0
  t0=$(date +%s)
  leftovers_report "before"
  stop_daemon local-path-provisioner "${PID_DIR}/local-path-provisioner.pid"
  # The kubelet would restart what we tear down: stop it first, then remove the pods
  # through CRI while containerd still runs (CNI DEL frees IPs, veths and netns).
  stop_daemon kubelet "${PID_DIR}/kubelet.pid"
  remove_pods_via_cri
  stop_daemon kube-proxy "${PID_DIR}/kube-proxy.pid"
  stop_daemon containerd "${PID_DIR}/containerd.pid"
  kill_our_shims
  remove_our_netns
  unmount_under "${NODE_DIR}"
  remove_our_iptables
  report_chains_left
  remove_cgroups
  # Files outside the state dir that kubelet/libcni write at fixed paths: ours by target and
  # by our CNI network's name.
  find /var/log/containers -maxdepth 1 -type l -lname "${POD_LOGS_DIR}/*" -delete 2>/dev/null || true
  rm -f /var/lib/cni/results/"${CNI_NETWORK}"-* 2>/dev/null || true
  # containerd 1.6 and ctr keep shim sockets and fifos under /run/containerd whatever the
  # configured state dir is; drop the directories if our containerd made them and they are
  # empty.
  if [[ -e "${RUN_CONTAINERD_RECORD}" ]]; then
    rmdir /run/containerd/s /run/containerd/fifo /run/containerd/runc/k8s.io /run/containerd/runc \
      /run/containerd 2>/dev/null || true
  fi
  remove_hosts_entry
  # Keep the logs (for post-mortems); everything else of the node goes.
  if [[ -d "${NODE_DIR}" ]]; then
    find "${NODE_DIR}" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} +
  fi
  # Forget the Node object so that its pods are garbage-collected (best effort: the API
  # server may already be gone when the whole cluster is going down).
  if [[ -s "${SLUICE_STATE}/env" && -x "${K8S_BIN_DIR}/kubectl" ]]; then
    ADMIN_KUBECONFIG="$(
      # shellcheck disable=SC1091
      source "${SLUICE_STATE}/env"
      echo "${KUBECONFIG}"
    )"
    kube delete node "${NODE_NAME}" --wait=false --ignore-not-found >/dev/null 2>&1 || true
  fi
  leftovers_report "after"
  if ((${#LEFTOVERS[@]})); then
    log "FAILED: node down left these behind:"
    printf '    - %s\n' "${LEFTOVERS[@]}" >&2
    die "node ${NODE_NAME} is not fully removed (leftovers listed above); logs in ${LOG_DIR}"
  fi
  log "node ${NODE_NAME} is down, nothing of it left behind ($(($(date +%s) - t0))s)"
}

status() {
  local name pidfile rc=0
  for name in containerd kubelet kube-proxy local-path-provisioner; do
    pidfile="${PID_DIR}/${name}.pid"
    if pid_alive "${pidfile}"; then
      printf '  %-24s running (pid %s)\n' "${name}" "$(<"${pidfile}")"
    else
      printf '  %-24s NOT running (log %s)\n' "${name}" "${LOG_DIR}/${name}.log"
      rc=1
    fi
  done
  if [[ -s "${SLUICE_STATE}/env" && -x "${K8S_BIN_DIR}/kubectl" ]]; then
    ADMIN_KUBECONFIG="$(
      # shellcheck disable=SC1091
      source "${SLUICE_STATE}/env"
      echo "${KUBECONFIG}"
    )"
    if node_is_ready; then
      printf '  %-24s Ready\n' "node ${NODE_NAME}"
    else
      printf '  %-24s NOT Ready\n' "node ${NODE_NAME}"
      rc=1
    fi
    kube get pods -A --field-selector "spec.nodeName=${NODE_NAME}" -o wide 2>/dev/null | sed 's/^/    /' || true
  fi
  return "${rc}"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  preflight) preflight ;;
  *)
    echo "usage: $0 up|down|status|preflight" >&2
    exit 2
    ;;
esac
