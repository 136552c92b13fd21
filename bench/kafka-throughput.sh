#!/usr/bin/env bash
# Kafka throughput: Sluice's worker against the limit (a bare consume → transactional
# produce pass-through) and the peer (the same job in Kafka Streams), on the same broker,
# the same machine and the same input: BENCH_EVENTS page views (default 10 million) in a
# topic of BENCH_PARTITIONS partitions (default 2), each read from the earliest offset.
# Prints one JSON line per run: events, seconds, events/s, CPU seconds of the processing
# process and events per CPU second. See bench/README.md.
#
#   bash bench/kafka-throughput.sh [sluice|sluice-keyed|passthrough|peer|peer-keyed|all]
#   BENCH_LATENCY_RATE=40000 bash bench/kafka-throughput.sh latency
#
# Every run reads the same input topic, bench-input-<events>-p<partitions>-<any|url>
# (keyed by url for sluice-keyed and peer-keyed), loaded once and kept for the next run
# (BENCH_DELETE_INPUT=1 deletes it after the run); each run deletes its own topics.
# BENCH_ROUND_ROBIN=1 loads the unkeyed input record by record over the partitions in turn
# (topic bench-input-<events>-p<partitions>-rr), so the partitions advance in event time
# together, as the peer's own loader writes them.
# BENCH_PERF=<file> records a 40 s perf profile of the worker (sluice, sluice-keyed).
# BENCH_WORKERS=<n> (default 1) runs the job at parallelism n: n worker processes
# (ordinals 0 to n-1), their CPU seconds summed.
# `latency` runs one worker on a fresh topic and `sluice-bench-kafka latency` against it.
#
# Needs the local broker (`make cluster-up`) and the release binaries (`make build`), or
# copies of them in SLUICE_BENCH_BIN (a directory holding sluice-worker,
# sluice-bench-kafka and sluice-bench-generate: other checkouts sharing the target
# directory overwrite target/release).
set -euo pipefail

repository="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${SLUICE_CACHE:-/var/cache/sluice}"
target="${CARGO_TARGET_DIR:-$cache/target}"
bin="${SLUICE_BENCH_BIN:-$target/release}"
worker="${SLUICE_WORKER_BIN:-$bin/sluice-worker}"
tool="$bin/sluice-bench-kafka"
generator="$bin/sluice-bench-generate"
data="$cache/bench"
events="${BENCH_EVENTS:-10000000}"
partitions="${BENCH_PARTITIONS:-2}"
interval="${BENCH_CHECKPOINT_INTERVAL:-2s}"
workers="${BENCH_WORKERS:-1}"
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

# input_topic <keyed>: the shared input topic (loaded unless it already holds the input),
# its name in INPUT_TOPIC.
input_topic() {
  local keyed="$1" lines existing key=any
  local round_robin="${BENCH_ROUND_ROBIN:-0}"
  [[ -n "$keyed" ]] && key=url
  [[ -z "$keyed" && "$round_robin" == 1 ]] && key=rr
  INPUT_TOPIC="bench-input-$events-p$partitions-$key"
  lines="$(grep -c . "$input" || true)"
  existing="$("$tool" --bootstrap "$bootstrap" count --topic "$INPUT_TOPIC" 2>/dev/null || true)"
  if [[ "$existing" == "$partitions $lines" ]]; then
    log "input: $INPUT_TOPIC already holds the $lines records: reusing it"
    return
  fi
  log "loading $events events into $INPUT_TOPIC ($partitions partitions${keyed:+, keyed by url})"
  "$tool" --bootstrap "$bootstrap" create-topic --topic "$INPUT_TOPIC" --partitions "$partitions"
  local order=()
  [[ "$key" == rr ]] && order=(--round-robin "$partitions")
  "$tool" --bootstrap "$bootstrap" load --topic "$INPUT_TOPIC" --input "$input" ${keyed:+--keyed} "${order[@]}" >&2
}

done_with_input() {
  if [[ "${BENCH_DELETE_INPUT:-0}" == 1 ]]; then
    "$tool" --bootstrap "$bootstrap" delete-topics --prefix "$INPUT_TOPIC" >&2
  fi
}

# The commit interval in milliseconds.
interval_ms() {
  echo "$interval" | sed -e 's/ms$//' -e 's/^\([0-9]*\)s$/\1000/'
}

machine() {
  log "commit $(git -C "$repository" rev-parse --short HEAD), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
}

# The page-views example, reading <topic> with <partitioning>.
write_job() {
  local file="$1" name="$2" topic="$3" partitioning="$4"
  sed -e "s/^  name: page-views$/  name: $name/" \
      -e "s/^  parallelism: 2$/  parallelism: $workers/" \
      -e "s|bootstrapServers: kafka:9092|bootstrapServers: $bootstrap|" \
      -e "s/topics: \[page-views\]/topics: [$topic]\n    partitioning: $partitioning/" \
      -e "s/topic: page-views-per-minute/topic: $name-out/" \
      -e "s/deadLetterTopic: page-views-dead-letters/deadLetterTopic: $name-dead/" \
      -e "s/lateDataTopic: page-views-late/lateDataTopic: $name-late/" \
      -e "s/checkpointInterval: 10s/checkpointInterval: $interval/" \
      "$repository/examples/page-views/streamjob.yaml" > "$file"
  # BENCH_KAFKA_PROPERTIES="name=value ...": librdkafka properties for the job (an A/B of
  # client settings), under spec.kafka.properties.
  if [[ -n "${BENCH_KAFKA_PROPERTIES:-}" ]]; then
    local property properties="    properties:"
    for property in $BENCH_KAFKA_PROPERTIES; do
      properties+="\n      \"${property%%=*}\": \"${property#*=}\""
    done
    sed -i "s|^    bootstrapServers: .*|&\n$properties|" "$file"
  fi
}

# cpu_of <pid>...: user + system seconds of processes, summed.
cpu_of() {
  local pid
  for pid in "$@"; do cat "/proc/$pid/stat"; done | awk '{cpu += $14 + $15} END {print cpu / 100}'
}

# start_worker <name> <topic> <partitioning>: creates the job's topics and starts its
# BENCH_WORKERS workers on <topic>; their pids in WORKER_PIDS.
start_worker() {
  local name="$1" topic="$2" partitioning="$3" ordinal
  for suffix in out dead late; do
    "$tool" --bootstrap "$bootstrap" create-topic --topic "$name-$suffix" --partitions "$partitions"
  done
  local job="$state_root/$name.yaml"
  write_job "$job" "$name" "$topic" "$partitioning"
  WORKER_PIDS=()
  for ((ordinal = 0; ordinal < workers; ordinal++)); do
    "$worker" --log-format json run --job "$job" --namespace bench --ordinal "$ordinal" \
      --parallelism "$workers" --state-dir "$state_root/$name/$ordinal" \
      --admin-address 127.0.0.1:0 2> "$state_root/$name-$ordinal.log" &
    WORKER_PIDS+=($!)
  done
  # shellcheck disable=SC2064 # the pids now
  trap "kill ${WORKER_PIDS[*]} 2>/dev/null || true" EXIT
}

# wait_for <group> <topic>: until the group's committed offsets reach the topic's end,
# again after an error (a broker that just restarted answers NotCoordinator for a while).
wait_for() {
  until "$tool" --bootstrap "$bootstrap" wait --group "$1" --topic "$2" >&2; do
    log "wait failed; again in 1s"
    sleep 1
  done
}

# stop_worker <name>: stops the worker and deletes the job's topics and state.
stop_worker() {
  local name="$1"
  kill -TERM "${WORKER_PIDS[@]}"; wait "${WORKER_PIDS[@]}" || true
  "$tool" --bootstrap "$bootstrap" delete-topics --prefix "$name-" >&2
  "$tool" --bootstrap "$bootstrap" delete-topics --prefix "sluice.bench.$name." >&2
  rm -rf "${state_root:?}/$name"
}

run_sluice() {
  local partitioning="$1" keyed="$2" name
  name="bench-sluice-$(date +%s)"
  input_topic "$keyed"
  local topic="$INPUT_TOPIC"
  machine
  log "sluice ($partitioning): running the worker until it has committed the whole topic"
  local started
  started=$(date +%s.%N)
  start_worker "$name" "$topic" "$partitioning"
  if [[ -n "${BENCH_PERF:-}" ]]; then
    # A sample of the worker mid-run (99 Hz, DWARF stacks): 20 s in, for 40 s.
    (sleep 20 && perf record -F 99 --call-graph dwarf,16384 -p "$(IFS=,; echo "${WORKER_PIDS[*]}")" -o "$BENCH_PERF" -- sleep 40 \
      > "$BENCH_PERF.log" 2>&1) &
  fi
  wait_for "sluice.bench.$name" "$topic"
  if [[ "$partitioning" == Any ]]; then
    # The source offsets commit with the repartition records they made: once they are at
    # the end, the repartition topic holds every event; wait until those are committed
    # too (aggregated, and their results visible), as the peer waits for its own.
    wait_for "sluice.bench.$name" "sluice.bench.$name.repartition"
  fi
  local finished cpu
  finished=$(date +%s.%N)
  cpu=$(cpu_of "${WORKER_PIDS[@]}")
  awk -v events="$events" -v started="$started" -v finished="$finished" -v cpu="$cpu" \
      -v mode="sluice-$partitioning" -v interval="$interval" -v workers="$workers" 'BEGIN {
    seconds = finished - started
    printf "{\"mode\":\"%s\",\"workers\":%d,\"checkpoint_interval\":\"%s\",\"events\":%d,\"seconds\":%.2f,\"events_per_second\":%.0f,\"cpu_seconds\":%.2f,\"events_per_cpu_second\":%.0f}\n",
      mode, workers, interval, events, seconds, events / seconds, cpu, events / cpu }'
  stop_worker "$name"
  machine
  done_with_input
}

run_passthrough() {
  local name
  name="bench-passthrough-$(date +%s)"
  input_topic ""
  "$tool" --bootstrap "$bootstrap" create-topic --topic "$name-out" --partitions "$partitions"
  machine
  log "passthrough: consume → transactional produce, no processing"
  "$tool" --bootstrap "$bootstrap" passthrough --input "$INPUT_TOPIC" --output "$name-out" \
    --commit-interval "$(interval_ms)"
  machine
  "$tool" --bootstrap "$bootstrap" delete-topics --prefix "$name-" >&2
  done_with_input
}

run_peer() {
  local variant="$1" keyed=""
  [[ "$variant" == keyed ]] && keyed=keyed
  input_topic "$keyed"
  machine
  log "peer: Kafka Streams ($variant) on $INPUT_TOPIC"
  bash "$repository/bench/peers/kafka-streams/run.sh" --input-topic "$INPUT_TOPIC" --variant "$variant" \
    --commit-interval-ms "$(interval_ms)"
  machine
  done_with_input
}

# One worker (partitioning BENCH_LATENCY_PARTITIONING, default Any) on a fresh topic, fed
# BENCH_LATENCY_RATE events/s for BENCH_LATENCY_SECONDS (150) with the wall clock as event
# time; prints p50/p99 of (visible − window end − out-of-orderness).
run_latency() {
  local rate="${BENCH_LATENCY_RATE:?set BENCH_LATENCY_RATE (half the maximum events/s)}"
  local seconds="${BENCH_LATENCY_SECONDS:-150}" partitioning="${BENCH_LATENCY_PARTITIONING:-Any}"
  local name
  name="bench-latency-$(date +%s)"
  "$tool" --bootstrap "$bootstrap" create-topic --topic "$name-in" --partitions "$partitions"
  machine
  start_worker "$name" "$name-in" "$partitioning"
  sleep 5
  log "latency: $rate events/s for ${seconds}s, checkpoint interval $interval, $partitioning"
  local report
  report="$("$tool" --bootstrap "$bootstrap" latency --input "$name-in" --output "$name-out" \
    --rate "$rate" --seconds "$seconds" --drain "$(( $(interval_ms) * 2 / 1000 + 15 ))")"
  local cpu
  cpu=$(cpu_of "${WORKER_PIDS[@]}")
  echo "${report%\}},\"checkpoint_interval\":\"$interval\",\"partitioning\":\"$partitioning\",\"worker_cpu_seconds\":$cpu}"
  stop_worker "$name"
  machine
}

case "$what" in
  sluice) run_sluice Any "" ;;
  sluice-keyed) run_sluice ByKey keyed ;;
  passthrough) run_passthrough ;;
  peer) run_peer repartition ;;
  peer-keyed) run_peer keyed ;;
  latency) run_latency ;;
  all)
    run_passthrough
    run_sluice Any ""
    run_peer repartition
    run_sluice ByKey keyed
    run_peer keyed
    ;;
  *) echo "usage: $0 [sluice|sluice-keyed|passthrough|peer|peer-keyed|latency|all]" >&2; exit 2 ;;
esac
