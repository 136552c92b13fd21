#!/usr/bin/env bash
# Kafka throughput: Sluice's worker against the limit (a bare consume → transactional
# produce pass-through) and the peer (the same job in Kafka Streams), on the same broker,
# the same machine and the same input: BENCH_EVENTS page views (default 10 million) in a
# topic of BENCH_PARTITIONS partitions (default 2), each read from the earliest offset.
# Prints one JSON line per run: events, seconds, events/s, CPU seconds of the processing
# process and events per CPU second. See bench/README.md.
#
#   bash bench/kafka-throughput.sh [sluice|sluice-keyed|passthrough|peer|peer-keyed|all]
#
# Needs the local broker (`make cluster-up`) and the release binaries (`make build`).
set -euo pipefail

repository="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${SLUICE_CACHE:-/var/cache/sluice}"
target="${CARGO_TARGET_DIR:-$cache/target}"
worker="${SLUICE_WORKER_BIN:-$target/release/sluice-worker}"
tool="$target/release/sluice-bench-kafka"
generator="$target/release/sluice-bench-generate"
data="$cache/bench"
events="${BENCH_EVENTS:-10000000}"
partitions="${BENCH_PARTITIONS:-2}"
interval="${BENCH_CHECKPOINT_INTERVAL:-1s}"
state_root="${BENCH_STATE:-/var/tmp/sluice-bench}"
what="${1:-all}"

env_file="${SLUICE_STATE:-/var/tmp/sluice-cluster}/env"
if [[ -z "${SLUICE_KAFKA_BOOTSTRAP:-}" && -r "$env_file" ]]; then
  # shellcheck disable=SC1090
  source "$env_file"
fi
bootstrap="${SLUICE_KAFKA_BOOTSTRAP:?no broker: run make cluster-up, or set SLUICE_KAFKA_BOOTSTRAP}"
for binary in "$worker" "$tool" "$generator"; do
  [[ -x "$binary" ]] || { echo "missing $binary: run 'make build'" >&2; exit 1; }
done
mkdir -p "$data" "$state_root"

log() { echo "[$(date -u +%T)] $*" >&2; }

input="$data/page-views-$events.jsonl"
if [[ ! -s "$input" ]]; then
  log "generating $events events into $input"
  "$generator" --events "$events" --seed 42 --output "$input.tmp" >&2
  mv "$input.tmp" "$input"
fi

# topic <name> <keyed>: a fresh topic holding the input.
load_topic() {
  local topic="$1" keyed="$2"
  log "loading $events events into $topic ($partitions partitions${keyed:+, keyed by url})"
  "$tool" --bootstrap "$bootstrap" create-topic --topic "$topic" --partitions "$partitions"
  "$tool" --bootstrap "$bootstrap" load --topic "$topic" --input "$input" ${keyed:+--keyed} >&2
}

# The page-views example, reading <topic> with <partitioning>.
write_job() {
  local file="$1" name="$2" topic="$3" partitioning="$4"
  sed -e "s/^  name: page-views$/  name: $name/" \
      -e "s/^  parallelism: 2$/  parallelism: 1/" \
      -e "s|bootstrapServers: kafka:9092|bootstrapServers: $bootstrap|" \
      -e "s/topics: \[page-views\]/topics: [$topic]\n    partitioning: $partitioning/" \
      -e "s/topic: page-views-per-minute/topic: $name-out/" \
      -e "s/deadLetterTopic: page-views-dead-letters/deadLetterTopic: $name-dead/" \
      -e "s/lateDataTopic: page-views-late/lateDataTopic: $name-late/" \
      -e "s/checkpointInterval: 10s/checkpointInterval: $interval/" \
      "$repository/examples/page-views/streamjob.yaml" > "$file"
}

# cpu_of <pid>: user + system seconds of a process.
cpu_of() {
  awk '{print ($14 + $15) / 100}' "/proc/$1/stat"
}

run_sluice() {
  local partitioning="$1" keyed="$2" name
  name="bench-sluice-$(date +%s)"
  local topic="$name-in"
  load_topic "$topic" "$keyed"
  for suffix in out dead late; do
    "$tool" --bootstrap "$bootstrap" create-topic --topic "$name-$suffix" --partitions "$partitions"
  done
  local job="$state_root/$name.yaml" state="$state_root/$name"
  write_job "$job" "$name" "$topic" "$partitioning"
  log "sluice ($partitioning): running the worker until it has committed the whole topic"
  local started pid
  started=$(date +%s.%N)
  "$worker" --log-format json run --job "$job" --namespace bench --ordinal 0 --parallelism 1 \
    --state-dir "$state" --admin-address 127.0.0.1:0 2> "$state_root/$name.log" &
  pid=$!
  "$tool" --bootstrap "$bootstrap" wait --group "sluice.bench.$name" --topic "$topic" >&2
  local finished cpu
  finished=$(date +%s.%N)
  cpu=$(cpu_of "$pid")
  kill -TERM "$pid"; wait "$pid" || true
  awk -v events="$events" -v started="$started" -v finished="$finished" -v cpu="$cpu" \
      -v mode="sluice-$partitioning" -v interval="$interval" 'BEGIN {
    seconds = finished - started
    printf "{\"mode\":\"%s\",\"checkpoint_interval\":\"%s\",\"events\":%d,\"seconds\":%.2f,\"events_per_second\":%.0f,\"cpu_seconds\":%.2f,\"events_per_cpu_second\":%.0f}\n",
      mode, interval, events, seconds, events / seconds, cpu, events / cpu }'
  rm -rf "$state"
}

run_passthrough() {
  local name
  name="bench-passthrough-$(date +%s)"
  load_topic "$name-in" ""
  "$tool" --bootstrap "$bootstrap" create-topic --topic "$name-out" --partitions "$partitions"
  log "passthrough: consume → transactional produce, no processing"
  "$tool" --bootstrap "$bootstrap" passthrough --input "$name-in" --output "$name-out" \
    --commit-interval "$(echo "$interval" | sed -e 's/ms$//' -e 's/^\([0-9]*\)s$/\1000/')"
}

run_peer() {
  local variant="$1"
  log "peer: Kafka Streams ($variant)"
  bash "$repository/bench/peers/kafka-streams/run.sh" --events "$events" --variant "$variant" \
    --partitions "$partitions" --commit-interval-ms "$(echo "$interval" | sed -e 's/ms$//' -e 's/^\([0-9]*\)s$/\1000/')"
}

case "$what" in
  sluice) run_sluice Any "" ;;
  sluice-keyed) run_sluice ByKey keyed ;;
  passthrough) run_passthrough ;;
  peer) run_peer repartition ;;
  peer-keyed) run_peer keyed ;;
  all)
    run_passthrough
    run_sluice Any ""
    run_peer repartition
    run_sluice ByKey keyed
    run_peer keyed
    ;;
  *) echo "usage: $0 [sluice|sluice-keyed|passthrough|peer|peer-keyed|all]" >&2; exit 2 ;;
esac
