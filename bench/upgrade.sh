#!/usr/bin/env bash
# Upgrade and rescale on the local cluster (issue 13; bench/README.md, "Upgrade and
# rescale"): runs the ignored end-to-end test `upgrade_and_rescale_benchmark`
# (tests/tests/controller.rs), which rescales a running job 1 -> 2 and then upgrades it at
# parallelism 2, each through a savepoint on S3, with input arriving throughout, and
# prints for each change when every step was seen, the breakdown (savepoint, pod stop,
# pod start, restore, catch-up) and the longest time without a new committed result.
#
#   make cluster-up, then:
#   bash bench/upgrade.sh
#
# Settings (environment): BENCH_RUNS (1), the runs one after the other;
# SLUICE_WORKER_BIN and SLUICE_CONTROLLER_BIN (default: the release binaries beside the
# test; the worker image on the node must be the same build, see tests/cluster/images.sh);
# BUILD_LOCK (/var/tmp/sluice-build.lock) and E2E_LOCK (/var/tmp/sluice-e2e.lock), as in
# the Makefile: the test is built under the first and run under the second, so the
# cluster is not held while compiling. Each run's whole output is kept in a log.
set -euo pipefail

repository="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${SLUICE_CACHE:-/var/cache/sluice}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
state="${SLUICE_STATE:-/var/tmp/sluice-cluster}"
runs="${BENCH_RUNS:-1}"
build_lock="${BUILD_LOCK:-/var/tmp/sluice-build.lock}"
e2e_lock="${E2E_LOCK:-/var/tmp/sluice-e2e.lock}"
work="$(mktemp -d /tmp/sluice-bench-upgrade.XXXXXX)"

[[ -r "$state/env" ]] || { echo "no local cluster: run 'make cluster-up' first" >&2; exit 1; }
set -a
# shellcheck source=/dev/null
source "$state/env"
set +a

# The test executable, copied out of the shared target directory: another checkout's
# build may replace the file of the same name while the benchmark runs.
cd "$repository"
executable="$(flock "$build_lock" cargo test --release --workspace --test controller --no-run \
  --message-format=json 2>"$work/build.log" \
  | python3 -c 'import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("reason") == "compiler-artifact" and message.get("executable") and message["target"]["name"] == "controller":
        print(message["executable"])')" || { cat "$work/build.log" >&2; exit 1; }
[[ -x "$executable" ]] || { cat "$work/build.log" >&2; echo "failed to build the controller tests" >&2; exit 1; }
cp "$executable" "$work/controller-tests"
# The copy is not beside the binaries any more: name them.
export SLUICE_CONTROLLER_BIN="${SLUICE_CONTROLLER_BIN:-$CARGO_TARGET_DIR/release/sluice-controller}"
export SLUICE_WORKER_BIN="${SLUICE_WORKER_BIN:-$CARGO_TARGET_DIR/release/sluice-worker}"
for binary in "$SLUICE_CONTROLLER_BIN" "$SLUICE_WORKER_BIN"; do
  [[ -x "$binary" ]] || { echo "missing $binary: run 'make build'" >&2; exit 1; }
done

for run in $(seq 1 "$runs"); do
  output="$work/run-$run.out" log="$work/run-$run.log"
  echo "== run $run of $runs: date=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    "commit=$(git -C "$repository" rev-parse --short HEAD)$(git -C "$repository" diff --quiet HEAD -- tests || echo '+changes')" \
    "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); API server $SLUICE_K8S_VERSION"
  # CARGO_MANIFEST_DIR: the checkout whose CRD and fixtures the test reads. The report is
  # the test's standard output; its progress and the exactly-once check go to the log.
  status=0
  CARGO_MANIFEST_DIR="$repository/tests" flock "$e2e_lock" \
    "$work/controller-tests" --ignored --nocapture --exact upgrade_benchmark::upgrade_and_rescale_benchmark \
    > "$output" 2> "$log" || status=$?
  cat "$output"
  grep -E 'results, each exactly once|exactly-once violated' "$log" || true
  if ((status != 0)); then
    tail -n 40 "$log" >&2
    echo "run $run failed ($status); its log: $log" >&2
    exit "$status"
  fi
  echo "log: $log"
done
