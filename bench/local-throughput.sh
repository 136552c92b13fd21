#!/usr/bin/env bash
# Local-mode throughput and memory: events per second on one core and peak RSS, for the
# page-views pipeline and for a decode-only pipeline (the cost floor), on a generated
# input of BENCH_EVENTS events (default 10 million, about 1.2 million distinct pages) and
# a shorter one (BENCH_SHORT_EVENTS, default 2 million) to show that memory does not grow
# with the input. See bench/README.md.
#
# Run through `make bench` (which builds the release binaries first), or directly after
# `cargo build --release -p sluice-worker`.
set -euo pipefail

repository="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${SLUICE_CACHE:-/var/cache/sluice}"
target="${CARGO_TARGET_DIR:-$cache/target}"
worker="$target/release/sluice-worker"
generator="$target/release/sluice-bench-generate"
data="$cache/bench"
events="${BENCH_EVENTS:-10000000}"
short_events="${BENCH_SHORT_EVENTS:-2000000}"
cache_entries="${BENCH_STATE_CACHE_ENTRIES:-500000}"
small_cache_entries="${BENCH_SMALL_STATE_CACHE_ENTRIES:-100000}"
many_keys_events="${BENCH_MANY_KEYS_EVENTS:-5000000}"
many_keys_cache_entries="${BENCH_MANY_KEYS_CACHE_ENTRIES:-50000}"
core="${BENCH_CORE:-0}"

for binary in "$worker" "$generator"; do
  [[ -x "$binary" ]] || { echo "missing $binary: run 'make bench' or 'cargo build --release -p sluice-worker'" >&2; exit 1; }
done
mkdir -p "$data"

# input_for <events>: the generated input's path; its description (events, distinct
# pages) is kept next to it in <file>.info and printed.
input_for() {
  local count="$1" file="$data/page-views-$1.jsonl"
  if [[ ! -s "$file" || ! -s "$file.info" ]]; then
    echo "generating $count events into $file" >&2
    "$generator" --events "$count" --seed 42 --output "$file.tmp" 2>&1 | sed "s|$file.tmp|$file|" > "$file.info.tmp"
    mv "$file.tmp" "$file"
    mv "$file.info.tmp" "$file.info"
  fi
  echo "input: $(cat "$file.info")" >&2
  echo "$file"
}

# The many-keys input: 20,000 events per second of event time, half of them on pages
# drawn from 100 million, so a one-minute window holds about 550,000 keys (11 times the
# many-keys cache) and nearly every one is new.
many_keys_input() {
  local count="$1" file="$data/many-keys-$1.jsonl"
  if [[ ! -s "$file" || ! -s "$file.info" ]]; then
    echo "generating $count events into $file" >&2
    "$generator" --events "$count" --keys 100000000 --events-per-second 20000 --seed 42 --output "$file.tmp" 2>&1 | sed "s|$file.tmp|$file|" > "$file.info.tmp"
    mv "$file.tmp" "$file"
    mv "$file.info.tmp" "$file.info"
  fi
  echo "input: $(cat "$file.info")" >&2
  echo "$file"
}

# run <label> <job> <input> <events> <cache entries>: one line of the table. The worker's
# progress log (every 2s) gives the most open windows seen, and the time the input ended
# (the last progress line at or past the last event), hence the share of the run spent
# after the last event (firing what is still open).
run() {
  local label="$1" job="$2" input="$3" count="$4" entries="$5"
  local report="$data/time-$label.txt"
  taskset -c "$core" /usr/bin/time -v "$worker" local --quiet --progress-interval 2s \
    --job "$job" --input "$input" --output /dev/null --dead-letter /dev/null --late /dev/null \
    --state-cache-entries "$entries" 2> "$report"
  local wall rss seconds rate open
  wall="$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$report")"
  rss="$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$report")"
  seconds="$(awk -F: '{ if (NF == 3) print $1 * 3600 + $2 * 60 + $3; else print $1 * 60 + $2 }' <<< "$wall")"
  rate="$(awk -v n="$count" -v s="$seconds" 'BEGIN { printf "%.0f", n / s }')"
  open="$(grep -o 'open_windows=[0-9]*' "$report" | cut -d= -f2 | sort -n | tail -1)"
  after="$(python3 - "$report" <<'PYTHON'
import re, sys
from datetime import datetime
stamps = {}
for line in open(sys.argv[1], errors="replace"):
    match = re.match(r"(\S+Z)\s+INFO .*(progress events=|local run finished)", line)
    if match:
        stamp = datetime.fromisoformat(match.group(1).replace("Z", "+00:00")[:26] + "+00:00")
        stamps.setdefault("first", stamp)
        if "progress" in line:
            stamps["last_progress"] = stamp
        else:
            stamps["end"] = stamp
if "end" in stamps and "last_progress" in stamps:
    total = (stamps["end"] - stamps["first"]).total_seconds()
    after = (stamps["end"] - stamps["last_progress"]).total_seconds()
    print(f"{100 * after / max(total, 1e-9):.0f}%")
else:
    print("-")
PYTHON
)"
  printf '| %-28s | %11s | %14s | %9s | %11s | %8s | %12s | %10s |\n' "$label" "$count" "$entries" "$seconds" "$rate" "$((rss / 1024))" "${open:--}" "$after"
}

long="$(input_for "$events")"
short="$(input_for "$short_events")"
page_views="$repository/examples/page-views/streamjob.yaml"
decode_only="$repository/bench/decode-only.yaml"

locked() { awk -v name="$1" '$0 == "name = \"" name "\"" { getline; gsub(/version = |"/, ""); print; exit }' "$repository/Cargo.lock"; }
echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), Linux $(uname -r); pinned to core $core; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "build: commit $(git -C "$repository" rev-parse --short HEAD 2>/dev/null || echo unknown), rocksdb crate $(locked rocksdb) (librocksdb-sys $(locked librocksdb-sys)), $("$worker" --version)"
echo
printf '| %-28s | %11s | %14s | %9s | %11s | %8s | %12s | %10s |\n' pipeline events "cache entries" seconds "events/s" "RSS MiB" "open windows" "after end"
printf '|%s|%s|%s|%s|%s|%s|%s|%s|\n' ------------------------------ ------------- ---------------- ----------- ------------- ---------- -------------- ------------
run decode-only "$decode_only" "$long" "$events" "$cache_entries"
run page-views "$page_views" "$long" "$events" "$cache_entries"
run page-views-short "$page_views" "$short" "$short_events" "$cache_entries"
run page-views-small-cache "$page_views" "$long" "$events" "$small_cache_entries"
run page-views-small-cache-short "$page_views" "$short" "$short_events" "$small_cache_entries"
many="$(many_keys_input "$many_keys_events")"
run page-views-many-keys "$page_views" "$many" "$many_keys_events" "$many_keys_cache_entries"
