#!/usr/bin/env bash
# The Kafka Streams peer of Sluice's page-views benchmark (see README.md beside this file).
#
#   run.sh [bench] [options]   load the input topic (once) and run the peer on it; prints
#                              the peer's report line (events/s, CPU seconds, ...)
#   run.sh check               correctness: examples/page-views through the peer on the
#                              broker, both variants, against expected-output.jsonl
#   run.sh build               build only (Maven, output in the cache, never the checkout)
#   run.sh clean               delete every bench-peer-* topic and consumer group
#
# bench options (or the environment variable in brackets):
#   --events N               events to generate and load [BENCH_EVENTS] (default 1000000)
#   --input FILE             JSON lines to load instead of the generated input
#   --input-topic TOPIC      read this existing topic instead (no generating, no loading,
#                            never deleted); for --variant keyed it must be keyed by url
#   --partitions P           input topic partitions [BENCH_PARTITIONS] (default 2)
#   --variant repartition|keyed
#                            repartition: no key, selectKey(url) makes a repartition hop
#                            (Sluice's partitioning: Any); keyed: the producer keys by url,
#                            no hop (partitioning: ByKey) [BENCH_VARIANT] (default repartition)
#   --threads N              num.stream.threads [BENCH_THREADS] (default 1)
#   --commit-interval-ms MS  commit.interval.ms = Sluice's checkpointInterval
#                            [BENCH_COMMIT_INTERVAL_MS] (default 10000)
#   --compression none|lz4   of the loaded input [BENCH_COMPRESSION] (default lz4)
#   --cpus LIST              run the peer under `taskset -c LIST` [BENCH_CPUS] (default: no pinning)
#   --delete-input           delete the input topic afterwards (default: keep it for the next run)
#   --dump-output FILE       write the results (the output topic's values) to FILE
#   --config KEY=VALUE       passed to the peer (any Kafka Streams property; repeatable)
#
# Environment: SLUICE_CACHE (/var/cache/sluice), SLUICE_KAFKA_BOOTSTRAP (else read from
# ${SLUICE_STATE:-/var/tmp/sluice-cluster}/env, else 127.0.0.1:9092), PEER_JAVA_OPTS
# (-Xmx1g), PEER_KAFKA_LOG (Kafka's own log level: warn for the peer, error for the helpers).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repository="$(cd "$here/../../.." && pwd)"
cache="${SLUICE_CACHE:-/var/cache/sluice}"
peers="$cache/bench/peers"
build="$peers/kafka-streams/target"
results="$peers/results"
state="${SLUICE_STATE:-/var/tmp/sluice-cluster}"

say() { printf '[peer %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# fail <step> <problem> <fix>
fail() { printf '[peer] %s failed: %s\n[peer] fix: %s\n' "$1" "$2" "$3" >&2; exit 1; }

# ---- build ----------------------------------------------------------------------------

build_peer() {
  command -v java >/dev/null || fail build "java is not installed" "install a JDK 17 or later (apt-get install openjdk-17-jdk-headless)"
  command -v mvn >/dev/null || fail build "mvn is not installed" "apt-get install maven"
  local version
  version="$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')"
  [[ "${version%%.*}" -ge 17 ]] 2>/dev/null || fail build "java is version $version" "put a JDK 17 or later first on PATH"
  mkdir -p "$peers"
  # Rebuild only when the sources changed: the stamp is a hash of the pom and src/.
  local stamp
  stamp="$(cd "$here" && find pom.xml src -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)"
  if [[ -f "$build/peer.jar" && -f "$build/stamp" && "$(cat "$build/stamp")" == "$stamp" ]]; then
    say "build: up to date ($build/peer.jar)"
    return
  fi
  say "build: mvn package (sources changed or first build; log $peers/build.log)"
  if ! mvn -B -f "$here/pom.xml" -Dmaven.repo.local="$peers/m2" -Dpeer.build.directory="$build" \
      package > "$peers/build.log" 2>&1; then
    grep -E 'ERROR|FAIL' "$peers/build.log" | head -20 >&2 || true
    fail build "mvn package failed (log $peers/build.log)" \
      "read the errors above; a download failure needs Maven Central reachable (it is cached in $peers/m2 after one success)"
  fi
  echo "$stamp" > "$build/stamp"
  say "build: done ($(grep -E 'Tests run:.*Fail' "$peers/build.log" | tail -1 | sed 's/^\[[A-Z]*\] //'))"
}

# java_command <class> <kafka log level>: the command line that runs a main class of the
# peer, in JAVA_COMMAND.
java_command() {
  # shellcheck disable=SC2206 # PEER_JAVA_OPTS is a list of options
  JAVA_COMMAND=(java ${PEER_JAVA_OPTS:--Xmx1g} -Dorg.slf4j.simpleLogger.log.org.apache.kafka="${PEER_KAFKA_LOG:-$2}"
    -cp "$build/peer.jar:$build/lib/*" "dev.sluice.bench.peer.$1")
}
# The helpers' clients stay quiet (a missing broker is reported once, by ping).
tool() {
  java_command Tool error
  "${JAVA_COMMAND[@]}" "$@"
}

# ---- broker ---------------------------------------------------------------------------

bootstrap() {
  if [[ -z "${SLUICE_KAFKA_BOOTSTRAP:-}" && -f "$state/env" ]]; then
    # shellcheck source=/dev/null
    SLUICE_KAFKA_BOOTSTRAP="$(set +u; source "$state/env" >/dev/null 2>&1; echo "${SLUICE_KAFKA_BOOTSTRAP:-}")"
  fi
  export SLUICE_KAFKA_BOOTSTRAP="${SLUICE_KAFKA_BOOTSTRAP:-127.0.0.1:9092}"
  say "broker: $SLUICE_KAFKA_BOOTSTRAP"
  tool ping --bootstrap "$SLUICE_KAFKA_BOOTSTRAP" --timeout-s 15 >&2 ||
    fail broker "no Kafka broker answers at $SLUICE_KAFKA_BOOTSTRAP" \
      "start the project's cluster (make cluster-up) or set SLUICE_KAFKA_BOOTSTRAP to a running broker"
}

# ---- input ----------------------------------------------------------------------------

generated_input() {
  local count="$1" file="$cache/bench/page-views-$1.jsonl"
  local generator="${CARGO_TARGET_DIR:-$cache/target}/release/sluice-bench-generate"
  if [[ ! -s "$file" || ! -s "$file.info" ]]; then
    [[ -x "$generator" ]] || fail "generate input" "missing $generator" \
      "cd $repository && CARGO_TARGET_DIR=$cache/target flock /var/tmp/sluice-build.lock cargo build --release -p sluice-worker --bin sluice-bench-generate"
    mkdir -p "$cache/bench"
    say "input: generating $count events into $file"
    # The same file, seed and naming as bench/local-throughput.sh, so both read the same bytes.
    "$generator" --events "$count" --seed 42 --output "$file.tmp" 2>&1 | sed "s|$file.tmp|$file|" > "$file.info.tmp"
    mv "$file.tmp" "$file"
    mv "$file.info.tmp" "$file.info"
  fi
  say "input: $(cat "$file.info")"
  echo "$file"
}

# load_topic <topic> <file> <partitions> <keyed 0|1> <compression> [extra load options]:
# loads unless the topic already holds exactly the file's records.
load_topic() {
  local topic="$1" file="$2" partitions="$3" keyed="$4" compression="$5"; shift 5
  local lines existing
  lines="$(grep -c . "$file" || true)"
  if existing="$(tool count --bootstrap "$SLUICE_KAFKA_BOOTSTRAP" --topic "$topic")"; then
    if [[ "$existing" == "$partitions $lines" ]]; then
      say "input: topic $topic already holds the $lines records on $partitions partitions: reusing it"
      return
    fi
    say "input: topic $topic holds '$existing' (partitions records), not '$partitions $lines': reloading"
    tool delete --bootstrap "$SLUICE_KAFKA_BOOTSTRAP" --prefix "$topic" >&2 ||
      fail "load input" "could not delete $topic" "run '$0 clean' and try again"
    sleep 2
  fi
  local options=(--bootstrap "$SLUICE_KAFKA_BOOTSTRAP" --topic "$topic" --input "$file"
    --partitions "$partitions" --compression "$compression")
  [[ "$keyed" == 1 ]] && options+=(--keyed)
  say "input: loading $lines records into $topic"
  tool load "${options[@]}" "$@" >&2 ||
    fail "load input" "the producer failed (see above)" "check the broker's log and free disk, then run again"
}

# ---- the peer -------------------------------------------------------------------------

# run_peer <log> <app options...>: runs the application, its log to <log> and stderr;
# prints its report line on stdout.
run_peer() {
  local log="$1"; shift
  local pin=()
  [[ -n "${cpus:-}" ]] && pin=(taskset -c "$cpus")
  local report
  java_command PageViewsApp warn
  if ! report="$("${pin[@]}" "${JAVA_COMMAND[@]}" --bootstrap "$SLUICE_KAFKA_BOOTSTRAP" "$@" 2> >(tee "$log" >&2))"; then
    fail "run the peer" "the application failed (log $log)" "read the log; '$0 clean' removes what a failed run left on the broker"
  fi
  [[ -n "$report" ]] || fail "run the peer" "no report line (log $log)" "read the log"
  echo "$report"
}

bench() {
  local events="${BENCH_EVENTS:-1000000}" input="" partitions="${BENCH_PARTITIONS:-2}"
  local variant="${BENCH_VARIANT:-repartition}" threads="${BENCH_THREADS:-1}"
  local commit="${BENCH_COMMIT_INTERVAL_MS:-10000}" compression="${BENCH_COMPRESSION:-lz4}"
  local delete_input=0 dump_output="" extra=() topic="" topic_given=""
  cpus="${BENCH_CPUS:-}"
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --events) events="$2"; shift 2 ;;
      --input) input="$2"; shift 2 ;;
      --input-topic) topic="$2"; shift 2 ;;
      --partitions) partitions="$2"; shift 2 ;;
      --variant) variant="$2"; shift 2 ;;
      --threads) threads="$2"; shift 2 ;;
      --commit-interval-ms) commit="$2"; shift 2 ;;
      --compression) compression="$2"; shift 2 ;;
      --cpus) cpus="$2"; shift 2 ;;
      --delete-input) delete_input=1; shift ;;
      --dump-output) dump_output="$2"; shift 2 ;;
      --config) extra+=(--config "$2"); shift 2 ;;
      *) fail "read the options" "unknown option $1" "see the top of $0" ;;
    esac
  done
  [[ "$variant" == repartition || "$variant" == keyed ]] ||
    fail "read the options" "--variant $variant" "use repartition or keyed"
  build_peer
  bootstrap
  if [[ -z "$topic" ]]; then
    local name
    if [[ -n "$input" ]]; then
      [[ -r "$input" ]] || fail "read the input" "cannot read $input" "give a JSON-lines file"
      name="file-$(basename "$input" .jsonl | tr -c 'a-zA-Z0-9\n-' '-')"
    else
      input="$(generated_input "$events")"
      name="$events"
    fi
    local keyed=0 key_name=any
    [[ "$variant" == keyed ]] && keyed=1 key_name=url
    topic="bench-peer-input-$name-p$partitions-key-$key_name-$compression"
    load_topic "$topic" "$input" "$partitions" "$keyed" "$compression"
  else
    say "input: the existing topic $topic"
    delete_input=0
    topic_given=1
  fi

  local run
  run="bench-peer-run-$(date +%Y%m%d-%H%M%S)"
  mkdir -p "$results"
  say "run: $run: variant $variant, $partitions partitions, $threads thread(s), commit.interval.ms $commit${cpus:+, taskset -c $cpus}"
  say "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
  local report
  report="$(run_peer "$results/$run.log" --input-topic "$topic" --output-topic "$run-out" \
    --dead-letter-topic "$run-dead-letters" --application-id "$run-app" --variant "$variant" \
    --threads "$threads" --commit-interval-ms "$commit" "${extra[@]}")"
  echo "$report" > "$results/$run.json"
  if [[ -n "$dump_output" ]]; then
    say "run: writing the results to $dump_output"
    tool dump --bootstrap "$SLUICE_KAFKA_BOOTSTRAP" --topic "$run-out" > "$dump_output" ||
      fail "dump the results" "could not read $run-out" "run again; '$0 clean' removes what is left"
  fi
  tool delete --bootstrap "$SLUICE_KAFKA_BOOTSTRAP" --prefix "$run-" >&2 || say "could not delete the run's topics: '$0 clean' will"
  if [[ "$delete_input" == 1 ]]; then
    tool delete --bootstrap "$SLUICE_KAFKA_BOOTSTRAP" --prefix "$topic" >&2
  elif [[ -z "$topic_given" ]]; then
    say "input topic $topic kept for the next run ('$0 clean' deletes it)"
  fi
  say "report (also in $results/$run.json):"
  echo "$report"
}

# ---- correctness ----------------------------------------------------------------------

check() {
  [[ $# -eq 0 ]] || fail "read the options" "check takes no options" "run '$0 check'"
  build_peer
  bootstrap
  local example="$repository/examples/page-views" work status=0
  work="$(mktemp -d)"
  for variant in repartition keyed; do
    local run keyed=0
    run="bench-peer-check-$variant-$(date +%Y%m%d-%H%M%S)"
    [[ "$variant" == keyed ]] && keyed=1
    say "check $variant: loading $example/input.jsonl with a flush sentinel (1 partition)"
    load_topic "$run-in" "$example/input.jsonl" 1 "$keyed" none --flush-sentinel
    # The emit interval 0 lets the sentinel close the windows at once (the default throttles
    # onWindowClose emission to once a wall-clock second, and the input is 17 records).
    run_peer "$work/$variant.log" --input-topic "$run-in" --output-topic "$run-out" \
      --dead-letter-topic "$run-dead-letters" --application-id "$run-app" --variant "$variant" \
      --commit-interval-ms 1000 --quiet-ms 3000 \
      --config __emit.interval.ms.kstreams.windowed.aggregation__=0 > "$work/$variant.json"
    tool dump --bootstrap "$SLUICE_KAFKA_BOOTSTRAP" --topic "$run-out" > "$work/$variant-output.jsonl"
    tool dump --bootstrap "$SLUICE_KAFKA_BOOTSTRAP" --topic "$run-dead-letters" --reasons > "$work/$variant-dead-letters.txt"
    tool delete --bootstrap "$SLUICE_KAFKA_BOOTSTRAP" --prefix "$run-" >&2
    say "check $variant: report $(cat "$work/$variant.json")"
    say "check $variant: comparing with $example/expected-output.jsonl"
    if ! tool compare --input "$example/input.jsonl" --expected "$example/expected-output.jsonl" \
        --actual "$work/$variant-output.jsonl" --expected-dead-letters "$example/expected-dead-letters.txt" \
        --actual-dead-letters "$work/$variant-dead-letters.txt" --expected-late "$example/expected-late.txt" \
        --report "$work/$variant.json"; then
      status=1
    fi
  done
  if [[ "$status" == 0 ]]; then
    say "check: both variants match Sluice's final results (outputs in $work)"
  else
    fail check "the peer's output differs from Sluice's (outputs in $work)" "see the differences above"
  fi
}

clean() {
  build_peer
  bootstrap
  tool delete --bootstrap "$SLUICE_KAFKA_BOOTSTRAP" --prefix bench-peer-
}

command="bench"
if [[ $# -gt 0 && "$1" != --* ]]; then
  command="$1"
  shift
fi
case "$command" in
  bench) bench "$@" ;;
  check) check "$@" ;;
  build) build_peer ;;
  clean) clean ;;
  *) fail "read the command" "unknown command $command" "use bench, check, build or clean" ;;
esac
