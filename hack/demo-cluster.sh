#!/usr/bin/env bash
# The real product, on this machine: the local Kubernetes cluster and Kafka broker up
# (tests/cluster/cluster.sh, built from source, cached), the worker and controller images
# built from the release binaries and loaded into the node, the chart installed, the
# page-views example applied as a StreamJob, sample events produced, the windowed
# results printed as they arrive, then an upgrade through a savepoint, live, in the middle
# of windows whose results must come out exactly as if nothing had happened. `make demo`
# runs it after building the binaries; it is
# idempotent (a second run reuses the cluster, upgrades the release and starts the job
# over on fresh topics). `make demo-local` is the engine alone, on files.
set -euo pipefail

repository="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repository"
state="${SLUICE_STATE:-/var/tmp/sluice-cluster}"
namespace="${SLUICE_DEMO_NAMESPACE:-sluice-demo}"
release_namespace=sluice-system
release=sluice
example=examples/page-views
started=$SECONDS

bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }
step() { printf '[%4ds] %s\n' "$((SECONDS - started))" "$*"; }
fail() {
  printf '\033[31mdemo: %s\033[0m\n' "$1" >&2
  [[ -n "${2:-}" ]] && printf 'fix: %s\n' "$2" >&2
  exit 1
}

for tool in kcat jq; do
  command -v "$tool" >/dev/null || fail "$tool is missing" "make deps (it installs the Debian packages the demo needs)"
done

bold "1. The local cluster and broker (first run: about 40 minutes of builds, then cached)"
bash tests/cluster/cluster.sh up || fail "the local cluster did not come up" \
  "read the message above; 'bash tests/cluster/cluster.sh status' shows each component and its log"
# shellcheck disable=SC1091
source "$state/env"
kubectl() { command "${SLUICE_KUBECTL:-kubectl}" "$@"; }
helm_bin="${SLUICE_HELM:-$(command -v helm || true)}"
[[ -x "$helm_bin" ]] || fail "helm is missing" "bash tests/cluster/cluster.sh up installs it, then source $state/env"
step "Kubernetes $(kubectl version -o json | jq -r .serverVersion.gitVersion), Kafka at $SLUICE_KAFKA_BOOTSTRAP (pods: $SLUICE_KAFKA_BOOTSTRAP_POD)"

bold "2. The images, from the release binaries, in the node"
bash tests/cluster/images.sh || fail "the images were not built or loaded" "make build, then rerun"
worker_image="${SLUICE_WORKER_IMAGE:-localhost/sluice-worker:dev}"
controller_image="${SLUICE_CONTROLLER_IMAGE:-localhost/sluice-controller:dev}"
step "worker $worker_image, controller $controller_image"
# The images keep their tag from build to build: the archive's name (keyed by its inputs)
# goes into the controller's pod template, so a new controller build rolls it out.
controller_build=$(find "${SLUICE_CACHE:-/var/cache/sluice}/images" -maxdepth 1 -name 'sluice-controller-*.oci.tar' \
  -printf '%f\n' 2>/dev/null | head -n 1)

bold "3. Sluice, with Helm"
kubectl apply --server-side --force-conflicts -f charts/sluice/crds/ >/dev/null
step "CRD streamjobs.sluice.dev applied (Helm never upgrades a CRD)"
kubectl create namespace "$namespace" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
"$helm_bin" upgrade --install "$release" charts/sluice -n "$release_namespace" --create-namespace \
  --set image.repository="${controller_image%:*}" --set image.tag="${controller_image##*:}" \
  --set image.pullPolicy=Never --set workerImage="$worker_image" \
  --set-string "podAnnotations.sluice\.dev/controller-build=${controller_build%.oci.tar}" \
  --set replicas=1 --set "watchNamespaces={$namespace}" \
  --wait --timeout 5m >/dev/null || fail "helm install did not finish" \
  "kubectl -n $release_namespace describe pods; kubectl -n $release_namespace logs deploy/$release-controller"
step "$(kubectl -n "$release_namespace" get deploy "$release-controller" -o jsonpath='{.metadata.name}: {.status.readyReplicas}/{.spec.replicas} ready')"

bold "4. Fresh topics and the StreamJob"
if kubectl -n "$namespace" get streamjob page-views >/dev/null 2>&1; then
  kubectl -n "$namespace" delete streamjob page-views --wait=true >/dev/null
  kubectl -n "$namespace" delete pvc -l sluice.dev/job=page-views --wait=true >/dev/null 2>&1 || true
  step "deleted the previous run's job and volumes"
fi
topics=(page-views page-views-per-minute page-views-late page-views-dead-letters)
kafka_tool() {
  java -Xmx128m -cp "${KAFKA_HOME:-/var/cache/sluice/kafka/4.4.0}/libs/*" \
    -Dlog4j2.level=warn "$@" 2>/dev/null
}
suffix="$(date +%H%M%S)"
for topic in "${topics[@]}"; do
  partitions=1
  [[ "$topic" == page-views ]] && partitions=3
  kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$SLUICE_KAFKA_BOOTSTRAP" \
    --create --topic "$topic-$suffix" --partitions "$partitions" --replication-factor 1 >/dev/null \
    || fail "could not create topic $topic-$suffix" "is the broker up? bash tests/cluster/cluster.sh status"
done
step "topics ${topics[*]/%/-$suffix}"
# Savepoints go to the local S3 server (SeaweedFS, started by cluster.sh), with its
# credentials in a Secret the workers read.
kubectl -n "$namespace" create secret generic page-views-savepoints \
  --from-literal=AWS_ACCESS_KEY_ID="$SLUICE_S3_ACCESS_KEY_ID" \
  --from-literal=AWS_SECRET_ACCESS_KEY="$SLUICE_S3_SECRET_ACCESS_KEY" \
  --from-literal=AWS_REGION="$SLUICE_S3_REGION" \
  --from-literal=AWS_ENDPOINT="$SLUICE_S3_POD_ENDPOINT" --from-literal=AWS_ALLOW_HTTP=true \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
savepoints="s3://$SLUICE_S3_BUCKET/demo-$suffix"
# The example as written, pointed at this broker and these topics: the input is read by
# key (one partition per page, as the expected output assumes), the images are local.
sed -e "s|bootstrapServers: kafka:9092|bootstrapServers: $SLUICE_KAFKA_BOOTSTRAP_POD|" \
  -e "s|topics: \[page-views\]|topics: [page-views-$suffix]\n    partitioning: ByKey|" \
  -e "s|topic: page-views-per-minute|topic: page-views-per-minute-$suffix|" \
  -e "s|deadLetterTopic: page-views-dead-letters|deadLetterTopic: page-views-dead-letters-$suffix|" \
  -e "s|lateDataTopic: page-views-late|lateDataTopic: page-views-late-$suffix|" \
  -e "s|volumeSize: 1Gi|volumeSize: 64Mi|" -e "s|checkpointInterval: 10s|checkpointInterval: 1s|" \
  -e "s|^spec:|spec:\n  imagePullPolicy: Never|" \
  -e "s|^  upgradeMode: Savepoint|  upgradeMode: Savepoint\n  savepoints:\n    location: $savepoints\n    secretRef:\n      name: page-views-savepoints|" \
  "$example/streamjob.yaml" | kubectl -n "$namespace" apply -f - \
  || fail "kubectl apply refused the StreamJob" "the message above names the field"
applied=$SECONDS
kubectl -n "$namespace" wait --for=condition=Ready streamjob/page-views --timeout=5m >/dev/null \
  || fail "the job did not become Ready" "kubectl -n $namespace describe streamjob page-views"
step "Ready $((SECONDS - applied))s after kubectl apply"
kubectl -n "$namespace" get streamjob page-views

bold "5. $(wc -l < "$example/input.jsonl") page views from $example/input.jsonl"
# An event (filtered out by the job: status 0) at noon on the partitions the input leaves
# empty, so they do not hold the watermark back, then the input, then one more at noon to
# close every window of the morning.
produce() { kcat -P -b "$SLUICE_KAFKA_BOOTSTRAP" -t "page-views-$suffix" -p "$1"; }
noon() { printf '{"timestamp":"%sT12:00:00Z","status":0,"url":"/","latencyMs":0}\n' "$1"; }
for partition in 1 2; do noon 2026-11-26 | produce "$partition"; done
sleep 3
{ cat "$example/input.jsonl"; noon 2026-11-26; } | produce 0
step "produced"

# Prints `count` results of the sink topic from offset `from` on, as they arrive
# (read_committed: only what the job committed).
results_topic="page-views-per-minute-$suffix"
show_results() {
  local from=$1 count=$2
  printf '%-18s %-7s %6s %12s\n' WINDOW PAGE VIEWS "AVG LATENCY"
  timeout 180 kcat -C -b "$SLUICE_KAFKA_BOOTSTRAP" -t "$results_topic" \
    -X isolation.level=read_committed -o "$from" -c "$count" -q -f '%s\n' 2>/dev/null \
    | jq -r --unbuffered '"\(.windowStart[5:10]) \(.windowStart[11:16])-\(.windowEnd[11:16])  \(.key)\t\(.views)\t\(.avgLatencyMs) ms\(if .isUpdate then "  (update: a straggler arrived)" else "" end)"' \
    || true
}
committed() {
  kcat -C -b "$SLUICE_KAFKA_BOOTSTRAP" -t "$1" -X isolation.level=read_committed -o beginning -e -q 2>/dev/null || true
}

bold "6. Results as they arrive (read_committed: only what the job committed, exactly once)"
expected=$(grep -cv '^\s*$' "$example/expected-output.jsonl")
show_results beginning "$expected"
results=$(committed "$results_topic" | grep -c . || true)
late=$(committed "page-views-late-$suffix" | grep -c . || true)
dead=$(committed "page-views-dead-letters-$suffix" | grep -c . || true)
step "$results results ($expected expected), $late late events, $dead dead letters"
((results == expected)) || fail "expected $expected results, read $results" \
  "kubectl -n $namespace logs page-views-0; kubectl -n $namespace describe streamjob page-views"

bold "7. An upgrade through a savepoint, live, in the middle of a window"
# Where the next results will start: transactions' commit markers take offsets too.
results_end=$(kcat -Q -b "$SLUICE_KAFKA_BOOTSTRAP" -t "$results_topic:0:-1" 2>/dev/null | awk '{print $NF}')
# The same page views a day later: the first half now, the rest after the upgrade. The
# windows open at the upgrade are in the savepoint, so the day's results must be exactly
# the expected ones a day later: nothing counted twice, nothing lost.
next_day() { sed 's/2026-11-26T/2026-11-27T/g'; }
events=$(wc -l < "$example/input.jsonl")
half=$((events / 2))
for partition in 1 2; do noon 2026-11-27 | produce "$partition"; done
head -n "$half" "$example/input.jsonl" | next_day | produce 0
# Wait until the job has committed them: they are then in its windows, and the savepoint.
caught_up() {
  kafka_tool org.apache.kafka.tools.consumer.group.ConsumerGroupCommand \
    --bootstrap-server "$SLUICE_KAFKA_BOOTSTRAP" --describe --group "sluice.$namespace.page-views" \
    | awk -v topic="page-views-$suffix" '$2 == topic { seen = 1; if ($6 != "0") behind = 1 }
        END { exit !(seen && !behind) }'
}
waiting_since=$SECONDS
until caught_up; do
  ((SECONDS - waiting_since < 300)) || fail "the job did not consume the page views" \
    "kubectl -n $namespace logs page-views-0; kubectl -n $namespace describe streamjob page-views"
  sleep 1
done
step "produced the first $half page views of 27 November; the job committed them"
generation=$(kubectl -n "$namespace" get streamjob page-views -o jsonpath='{.metadata.generation}')
target=$((generation + 1))
# A new version of the pod template, as a new image or pipeline would be: an Upgrade.
kubectl -n "$namespace" patch streamjob page-views --type merge \
  -p '{"spec":{"podTemplate":{"annotations":{"demo.sluice.dev/version":"2"}}}}' >/dev/null \
  || fail "kubectl patch refused the change" "the message above names the field"
upgrade_started=$SECONDS
step "kubectl patch streamjob page-views: a new spec.podTemplate (generation $target)"
last=""
while true; do
  now=$(kubectl -n "$namespace" get streamjob page-views -o json | jq -r \
    '[.status.phase, (.status.upgrade.state // "-"), "\(.status.readyReplicas // 0)/\(.status.replicas // 0) ready", "deployed generation \(.status.deployed.generation // "-")"] | join("  ")') \
    || now="$last"
  if [[ "$now" != "$last" ]]; then
    step "$now"
    last=$now
  fi
  [[ "$now" == "Running  -  "*"generation $target" ]] && break
  ((SECONDS - upgrade_started < 300)) || fail "the upgrade did not finish in 5 minutes" \
    "kubectl -n $namespace describe streamjob page-views (status.upgrade and the Events say which step waits)"
  sleep 0.5
done
savepoint=$(kubectl -n "$namespace" get streamjob page-views -o jsonpath='{.status.deployed.savepoint}')
step "upgraded in $((SECONDS - upgrade_started))s; the workers restored ${savepoint:-the savepoint}"
tail -n "+$((half + 1))" "$example/input.jsonl" | next_day | produce 0
noon 2026-11-27 | produce 0
step "produced the other $((events - half)) page views"
show_results "${results_end:-beginning}" "$expected"
day_two=$(committed "$results_topic" | tail -n "+$((expected + 1))" | jq -cS . | sort)
wanted=$(next_day < "$example/expected-output.jsonl" | grep -v '^\s*$' | jq -cS . | sort)
results=$(committed "$results_topic" | grep -c . || true)
step "$results results in all ($((2 * expected)) expected)"
if ((results != 2 * expected)) || [[ "$day_two" != "$wanted" ]]; then
  fail "the results after the upgrade are not the expected ones ($results results)" \
    "kubectl -n $namespace describe streamjob page-views; kubectl -n $namespace logs page-views-0"
fi
step "27 November's results are exactly the expected ones: the windows open at the upgrade came back from the savepoint"

bold "Next"
cat <<EOF
  kubectl -n $namespace get streamjob page-views -o yaml      # status, conditions, savepoints
  kubectl -n $namespace get events --field-selector involvedObject.name=page-views
  kubectl -n $namespace get pods,pvc -l sluice.dev/job=page-views
  kcat -C -b $SLUICE_KAFKA_BOOTSTRAP -t $results_topic -X isolation.level=read_committed -e
  helm -n $release_namespace uninstall $release                # the job and its volumes stay
Done in $((SECONDS - started))s.
EOF
