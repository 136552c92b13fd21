#!/usr/bin/env bash
# The picture of the chart's Grafana dashboard in docs/dashboard.md, from real data: the
# demo's page-views job (run `make demo` first) fed live page views for a few minutes,
# rescaled, savepointed and upgraded on the way, its workers and the controller scraped by a
# Prometheus server on the host (built once from the Go module proxy into the cache),
# then every panel's queries drawn by hack/render-dashboard.py.
#
#   bash hack/dashboard-picture.sh            # writes docs/images/dashboard.png
#
# SLUICE_PICTURE_SECONDS (default 420) is how long the traffic runs.
set -euo pipefail

repository="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repository"
state="${SLUICE_STATE:-/var/tmp/sluice-cluster}"
cache="${SLUICE_CACHE:-/var/cache/sluice}"
namespace="${SLUICE_DEMO_NAMESPACE:-sluice-demo}"
seconds="${SLUICE_PICTURE_SECONDS:-420}"
prometheus_version=v0.316.0 # Prometheus 3.x's Go module version
prometheus_bin="$cache/bin/prometheus-$prometheus_version"
work="/var/tmp/sluice-dashboard-picture"
output="${1:-docs/images/dashboard.png}"
started=$SECONDS

step() { printf '[%4ds] %s\n' "$((SECONDS - started))" "$*"; }
fail() {
  printf 'dashboard-picture: %s\n' "$1" >&2
  [[ -n "${2:-}" ]] && printf 'fix: %s\n' "$2" >&2
  exit 1
}

[[ -f "$state/env" ]] || fail "the local cluster is not up" "make demo"
# shellcheck disable=SC1091
source "$state/env"
kubectl() { command "${SLUICE_KUBECTL:-kubectl}" "$@"; }
topic=$(kubectl -n "$namespace" get streamjob page-views -o jsonpath='{.spec.source.topics[0]}' 2>/dev/null) \
  || fail "no page-views StreamJob in $namespace" "make demo"

if [[ ! -x "$prometheus_bin" ]]; then
  step "building Prometheus $prometheus_version (once, about 7 minutes)"
  mkdir -p "$cache/bin" "$work/gobin"
  GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/cache" GOBIN="$work/gobin" \
    go install "github.com/prometheus/prometheus/cmd/prometheus@$prometheus_version" \
    || fail "go install of Prometheus failed" "read the message above (the Go module proxy must be reachable)"
  mv "$work/gobin/prometheus" "$prometheus_bin"
fi

python="$work/venv/bin/python"
if ! "$python" -c 'import matplotlib' 2>/dev/null; then
  step "installing matplotlib into $work/venv (from PyPI)"
  python3 -m venv "$work/venv" && "$work/venv/bin/pip" install -q matplotlib \
    || fail "pip could not install matplotlib" "is PyPI reachable? python3 -m venv needs the python3-venv package"
fi

# Prometheus scrapes as the chart's PodMonitor and ServiceMonitor would: every worker pod's
# admin port with its namespace, pod and StreamJob labels, and the controller.
rm -rf "$work/prometheus" && mkdir -p "$work/prometheus"
cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 5s
scrape_configs:
  - job_name: sluice-workers
    kubernetes_sd_configs:
      - role: pod
        kubeconfig_file: $KUBECONFIG
        namespaces: {names: [$namespace]}
    relabel_configs:
      - {source_labels: [__meta_kubernetes_pod_label_app_kubernetes_io_name], regex: sluice-worker, action: keep}
      - {source_labels: [__meta_kubernetes_pod_container_port_name], regex: admin, action: keep}
      - {source_labels: [__meta_kubernetes_namespace], target_label: namespace}
      - {source_labels: [__meta_kubernetes_pod_name], target_label: pod}
      - {source_labels: [__meta_kubernetes_pod_label_sluice_dev_job], target_label: streamjob}
  - job_name: sluice-controller
    kubernetes_sd_configs:
      - role: pod
        kubeconfig_file: $KUBECONFIG
        namespaces: {names: [sluice-system]}
    relabel_configs:
      - {source_labels: [__meta_kubernetes_pod_label_app_kubernetes_io_component], regex: controller, action: keep}
      - {source_labels: [__meta_kubernetes_pod_container_port_name], regex: http, action: keep}
      - {source_labels: [__meta_kubernetes_namespace], target_label: namespace}
      - {source_labels: [__meta_kubernetes_pod_name], target_label: pod}
EOF
"$prometheus_bin" --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/prometheus" \
  --web.listen-address=127.0.0.1:9099 >"$work/prometheus.log" 2>&1 &
prometheus_pid=$!
producer_pid=""
cleanup() {
  kill "$prometheus_pid" 2>/dev/null || true
  [[ -n "$producer_pid" ]] && kill "$producer_pid" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 60); do
  curl -fsS http://127.0.0.1:9099/-/ready >/dev/null 2>&1 && break
  sleep 1
done
curl -fsS http://127.0.0.1:9099/-/ready >/dev/null || fail "Prometheus did not start" "see $work/prometheus.log"
step "Prometheus on 127.0.0.1:9099 scraping $namespace and sluice-system every 5 s"

# Page views at the current time, keyed by page (the job reads its topic as partitioned
# by key): `rate` a second, with 2% failed requests (filtered out), 1% too late for their
# window (to the late topic) and 0.5% that are not JSON (dead letters).
traffic() {
  "$python" - "$@" <<'EOF'
import datetime, random, sys, time
rates = [(float(until), int(rate)) for until, rate in (part.split(":") for part in sys.argv[1:])]
random.seed(7)
begin = time.time()
out = sys.stdout
for until, rate in rates:
    while time.time() - begin < until:
        tick = time.time()
        for _ in range(rate // 10):
            page = f"/page/{min(int(random.paretovariate(1.2)), 400)}"
            now = datetime.datetime.now(datetime.timezone.utc)
            if random.random() < 0.01:
                now -= datetime.timedelta(minutes=3)
            stamp = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
            status = 500 if random.random() < 0.02 else 200
            value = f'{{"timestamp":"{stamp}","url":"{page}","status":{status},"latencyMs":{random.randint(5, 900)}}}'
            if random.random() < 0.005:
                value = "not json: " + value
            out.write(f"{page}\t{value}\n")
        out.flush()
        time.sleep(max(0, 0.1 - (time.time() - tick)))
EOF
}
picture_start=$(date +%s)
# 1,000 a second, a burst of 8,000 a second from a third of the way, then 1,000 again,
# still flowing when the picture is drawn (the stats show the last value).
third=$((seconds / 3))
traffic "$third:1000" "$((third + 40)):8000" "$((seconds + 600)):1000" \
  2>/dev/null | kcat -P -b "$SLUICE_KAFKA_BOOTSTRAP" -t "$topic" -K $'\t' 2>/dev/null &
producer_pid=$!
step "producing page views to $topic for ${seconds}s (a burst at ${third}s)"
until_second() {
  local wait=$(($1 - ($(date +%s) - picture_start)))
  if ((wait > 0)); then sleep "$wait"; fi
}

until_second "$((third / 2))"
step "kubectl scale: parallelism 3 (a rescale through a savepoint)"
kubectl -n "$namespace" scale streamjob page-views --replicas 3 >/dev/null
until_second "$((third + 90))"
step "kubectl patch: spec.savepointTriggerNonce (a savepoint on request; the workers go on)"
kubectl -n "$namespace" patch streamjob page-views --type merge \
  -p "{\"spec\":{\"savepointTriggerNonce\":$(date +%s)}}" >/dev/null
until_second "$((2 * third + 30))"
step "kubectl patch: a new pod template (an upgrade through a savepoint)"
kubectl -n "$namespace" patch streamjob page-views --type merge \
  -p "{\"spec\":{\"podTemplate\":{\"annotations\":{\"demo.sluice.dev/version\":\"$(date +%s)\"}}}}" >/dev/null
until_second "$seconds"
picture_end=$(date +%s)
step "drawing $output"
mkdir -p "$(dirname "$output")"
"$python" hack/render-dashboard.py --prometheus http://127.0.0.1:9099 \
  --start "$picture_start" --end "$picture_end" --namespace "$namespace" --job page-views \
  --output "$output"
kill "$producer_pid" 2>/dev/null || true
producer_pid=""
kubectl -n "$namespace" scale streamjob page-views --replicas 2 >/dev/null
step "done (the job is back at parallelism 2)"
