#!/usr/bin/env bash
# The controller at scale: BENCH_JOBS (1,000) StreamJobs reconciled by one
# `sluice-controller run` on the local cluster, their worker pods placed on a fake node
# that kwok keeps (kwok marks them Running and Ready; nothing runs). Reports the time until
# every job has a status and is Ready, p50/p99 from apply to first status, API requests per
# reconcile, and the controller's peak RSS and CPU time. See bench/README.md.
#
#   make cluster-up, then build (cargo build --release --workspace --bins), then:
#   bash bench/controller-scale.sh
#
# Settings (environment): BENCH_JOBS (1000), BENCH_NAMESPACE (sluice-bench),
# BENCH_CONCURRENCY (the controller's --concurrency, 16), BENCH_DEBOUNCE (its --debounce,
# 0s), BENCH_APPLY_RATE (jobs per second, 0: a burst), SLUICE_CONTROLLER_BIN and
# SLUICE_BENCH_CONTROLLER_BIN (default: the release binaries of CARGO_TARGET_DIR),
# KWOK_VERSION (v0.8.0). kwok is built once with `go install` into the cache.
#
# Everything it creates is in its namespace, plus the fake node, the StorageClass and the
# PersistentVolumes named sluice-bench-*, all deleted at the end.
set -euo pipefail

repository="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${SLUICE_CACHE:-/var/cache/sluice}"
target="${CARGO_TARGET_DIR:-$cache/target}"
state="${SLUICE_STATE:-/var/tmp/sluice-cluster}"
jobs="${BENCH_JOBS:-1000}"
namespace="${BENCH_NAMESPACE:-sluice-bench}"
concurrency="${BENCH_CONCURRENCY:-16}"
debounce="${BENCH_DEBOUNCE:-0s}"
controller="${SLUICE_CONTROLLER_BIN:-$target/release/sluice-controller}"
driver="${SLUICE_BENCH_CONTROLLER_BIN:-$target/release/sluice-bench-controller}"
kwok_version="${KWOK_VERSION:-v0.8.0}"
kwok_dir="$cache/bin/kwok-$kwok_version"
work="$(mktemp -d /tmp/sluice-bench-controller.XXXXXX)"
node="sluice-bench-kwok-0"

[[ -r "$state/env" ]] || { echo "no local cluster: run 'make cluster-up' first" >&2; exit 1; }
# shellcheck source=/dev/null
source "$state/env"
for binary in "$controller" "$driver"; do
  [[ -x "$binary" ]] || { echo "missing $binary: run 'cargo build --release --workspace --bins'" >&2; exit 1; }
done

# kwok, built once per version from the Go module proxy.
if [[ ! -x "$kwok_dir/kwok" ]]; then
  echo "building kwok $kwok_version into $kwok_dir" >&2
  mkdir -p "$kwok_dir"
  GOBIN="$kwok_dir" go install "sigs.k8s.io/kwok/cmd/kwok@$kwok_version"
fi
kwok_module="$(go env GOMODCACHE)/sigs.k8s.io/kwok@$kwok_version"
[[ -d "$kwok_module/kustomize/stage/fast" ]] || go mod download "sigs.k8s.io/kwok@$kwok_version"

pids=()
controller_pid=""
cleanup() {
  local status=$?
  # The controller first (it would put children back); kwok last, once the namespace is
  # gone: a pod on the fake node is deleted only when kwok confirms it, as a kubelet would.
  if [[ -n "$controller_pid" ]]; then
    kill "$controller_pid" 2>/dev/null || true
    wait "$controller_pid" 2>/dev/null || true
  fi
  kubectl delete namespace "$namespace" --ignore-not-found --wait=true --timeout=300s >/dev/null 2>&1 || true
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  kubectl delete persistentvolume -l sluice.dev/bench=controller-scale --ignore-not-found --wait=false >/dev/null 2>&1 || true
  kubectl delete node "$node" --ignore-not-found >/dev/null 2>&1 || true
  kubectl delete storageclass sluice-bench-fake --ignore-not-found >/dev/null 2>&1 || true
  echo "logs in $work" >&2
  exit "$status"
}
trap cleanup EXIT

# wait_for_condition OBJECT TYPE SECONDS: until OBJECT's condition TYPE is True, or fails.
# (kubectl wait fails at once on an object whose status has no conditions yet, such as a
# CRD or a node just created.)
wait_for_condition() {
  local object="$1" type="$2" deadline=$((SECONDS + $3))
  until [[ "$(kubectl get "$object" -o jsonpath="{.status.conditions[?(@.type==\"$type\")].status}" 2>/dev/null)" == True ]]; do
    ((SECONDS < deadline)) || { echo "$object: no condition $type=True after $3 s" >&2; exit 1; }
    sleep 0.5
  done
}

echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB, $(uname -sr); load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "build: commit $(git -C "$repository" rev-parse --short HEAD)$(git -C "$repository" diff --quiet || echo '+changes'), $("$controller" --version), kwok $kwok_version, API server $SLUICE_K8S_VERSION"

# This checkout's CRD (other checkouts' tests may have applied theirs).
kubectl apply --server-side --force-conflicts --field-manager=sluice-bench -f "$repository/crds/streamjobs.sluice.dev.yaml" >/dev/null
wait_for_condition crd/streamjobs.sluice.dev Established 60
kubectl delete namespace "$namespace" --ignore-not-found --wait=true --timeout=300s >/dev/null
kubectl create namespace "$namespace" >/dev/null

# The fake node: kwok manages only nodes with its annotation, so the real node is untouched;
# the taint keeps every other pod off it.
kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $node
  annotations: {kwok.x-k8s.io/node: fake}
  labels: {type: kwok, kubernetes.io/hostname: $node, kubernetes.io/os: linux}
spec:
  taints: [{key: kwok.x-k8s.io/node, value: fake, effect: NoSchedule}]
status:
  allocatable: {cpu: "1000", memory: 4Ti, pods: "5000"}
  capacity: {cpu: "1000", memory: 4Ti, pods: "5000"}
EOF

# Volumes: one PersistentVolume per worker, bound in advance to the claim its StatefulSet
# will make (state-<job>-0), of a class no provisioner serves. Never mounted: kwok runs
# nothing.
kubectl apply -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: sluice-bench-fake}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: Immediate
EOF
for index in $(seq 0 $((jobs - 1))); do
  job="$(printf 'bench-%04d' "$index")"
  cat <<EOF
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: sluice-bench-$job
  labels: {sluice.dev/bench: controller-scale}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  storageClassName: sluice-bench-fake
  persistentVolumeReclaimPolicy: Delete
  hostPath: {path: /nonexistent/sluice-bench/$job}
  claimRef: {namespace: $namespace, name: state-$job-0}
EOF
done > "$work/volumes.yaml"
# A previous run's volumes are released once its claims are gone; wait for them to go, or
# a new claim could bind to a volume being deleted.
kubectl delete persistentvolume -l sluice.dev/bench=controller-scale --ignore-not-found --wait=true --timeout=300s >/dev/null
kubectl apply --server-side --field-manager=sluice-bench -f "$work/volumes.yaml" >/dev/null

# kwok: on loopback only, its "fast" stages (pods Running and Ready at once).
"$kwok_dir/kwok" --kubeconfig="$KUBECONFIG" \
  --config="$kwok_module/kustomize/stage/fast" \
  --manage-all-nodes=false \
  --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
  --node-lease-duration-seconds=40 \
  --cidr=10.246.0.1/16 --node-ip=10.246.255.254 \
  --server-address=127.0.0.1:0 \
  > "$work/kwok.log" 2>&1 &
pids+=($!)
wait_for_condition "node/$node" Ready 60

# The controller, watching only the benchmark's namespace.
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$controller" --log-format json --log info run \
  --namespace="$namespace" --leader-election=false \
  --concurrency="$concurrency" --debounce="$debounce" \
  --http-address="127.0.0.1:$port" \
  --identity=sluice-bench \
  2> "$work/controller.log" &
controller_pid=$!
pids+=("$controller_pid")
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done

BENCH_JOBS="$jobs" BENCH_NAMESPACE="$namespace" \
  BENCH_CONTROLLER_ADDRESS="127.0.0.1:$port" BENCH_CONTROLLER_PID="$controller_pid" \
  "$driver"
echo "controller concurrency $concurrency, debounce $debounce; $(grep -c '"level":"WARN"' "$work/controller.log" || true) warnings in its log"
# Where the controller's resident memory is at the end: anonymous (heap, stacks) and each
# mapped file (its own code, the shared libraries), from /proc/PID/smaps.
awk '
  /^[0-9a-f]+-[0-9a-f]+ / { file = (NF >= 6 ? $6 : "[anonymous]") }
  /^Rss:/ { rss[file] += $2 }
  END { for (file in rss) if (rss[file] >= 512) printf "%8.1f MiB  %s\n", rss[file] / 1024, file }
' "/proc/$controller_pid/smaps" | sort -rn > "$work/controller-memory.txt" || true
echo "controller resident memory at the end, by mapping (MiB, 0.5 MiB and more):"
sed 's/^/  /' "$work/controller-memory.txt"
