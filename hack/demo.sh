#!/usr/bin/env bash
# The page-views example in local mode: no cluster, no broker. `make demo-local` builds the
# worker first; to run it by hand: cargo build --release -p sluice-worker && bash hack/demo.sh
set -euo pipefail

repository="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${SLUICE_CACHE:-/var/cache/sluice}"
worker="${CARGO_TARGET_DIR:-$cache/target}/release/sluice-worker"
example="$repository/examples/page-views"
[[ -x "$worker" ]] || { echo "missing $worker: run 'make demo-local'" >&2; exit 1; }

output="$(mktemp -d)"
trap 'rm -rf "$output"' EXIT

bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }

bold "The job: $example/streamjob.yaml"
sed -n '/^  pipeline:/,/^  sink:/p' "$example/streamjob.yaml" | sed '$d'

bold "Checking it the way the controller does"
"$worker" validate --job "$example/streamjob.yaml"

bold "Running it on $(wc -l < "$example/input.jsonl") events from $example/input.jsonl"
"$worker" local --job "$example/streamjob.yaml" --input "$example/input.jsonl" \
  --output "$output/results.jsonl" --dead-letter "$output/dead-letters.jsonl" --late "$output/late.jsonl" \
  --log warn 2>&1

if ! command -v jq > /dev/null || ! command -v column > /dev/null; then
  # Without jq and column (Debian packages jq, bsdextrautils), show the files as they are.
  for file in results dead-letters late; do
    bold "$file.jsonl"
    cat "$output/$file.jsonl"
  done
  exit 0
fi

bold "Results: page views per page per minute (an update replaces the result above it)"
{
  printf 'WINDOW\tPAGE\tVIEWS\tAVG LATENCY\t\n'
  jq -r '[(.windowStart[11:16] + "-" + .windowEnd[11:16]), .key, .views, ((.avgLatencyMs * 10 | round) / 10 | tostring) + " ms", (if .isUpdate then "(update: a straggler arrived)" else "" end)] | @tsv' "$output/results.jsonl"
} | column -t -s "$(printf '\t')"

bold "Dead letters: events the pipeline could not use (the worker keeps going)"
jq -r '"line \(.line)\t\(.reason)\t\(.detail)"' "$output/dead-letters.jsonl" | column -t -s "$(printf '\t')"

bold "Late events: arrived after their window's allowed lateness"
jq -r '"line \(.line)\t\(.original)"' "$output/late.jsonl" | column -t -s "$(printf '\t')"

bold "The raw files"
echo "results:      one JSON object per line, for example:"
head -1 "$output/results.jsonl"
echo "dead letters: the original line with a reason, for example:"
head -1 "$output/dead-letters.jsonl"
