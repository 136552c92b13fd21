#!/usr/bin/env bash
# What savepoints cost (bench/README.md, "Savepoints"): for each number of keys given,
# sluice-bench-savepoint fills a RocksDB state of one window per key, takes a savepoint to
# file:// and to the local cluster's S3 server (SeaweedFS on loopback), updates 1% of the
# keys, takes an incremental one, and restores it. After filling, it also times a start
# from the last periodic checkpoint on the same state directory (a crash's restart).
#
#   bench/savepoint.sh [KEYS...]        default: 1000000 (about 100 MiB of state)
#
# Needs `make build` (or the binary in SLUICE_BENCH_SAVEPOINT) and, for s3://, `make
# cluster-up`. Without the cluster's env file only file:// is measured.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-/var/cache/sluice/target}"
BIN="${SLUICE_BENCH_SAVEPOINT:-${TARGET}/release/sluice-bench-savepoint}"
WORK="${SLUICE_BENCH_DIR:-/var/tmp/sluice-bench-savepoint}"
ENV_FILE="${SLUICE_STATE:-/var/tmp/sluice-cluster}/env"

[[ -x "${BIN}" ]] || { echo "no ${BIN}: run make build first" >&2; exit 1; }
mkdir -p "${WORK}/state" "${WORK}/savepoints"
locations=(--location "file://${WORK}/savepoints")
if [[ -f "${ENV_FILE}" ]] && grep -q SLUICE_S3_ENDPOINT "${ENV_FILE}"; then
  # shellcheck disable=SC1090
  source "${ENV_FILE}"
  export AWS_ENDPOINT="${SLUICE_S3_ENDPOINT}" AWS_ALLOW_HTTP=true AWS_REGION="${SLUICE_S3_REGION}" \
    AWS_ACCESS_KEY_ID="${SLUICE_S3_ACCESS_KEY_ID}" AWS_SECRET_ACCESS_KEY="${SLUICE_S3_SECRET_ACCESS_KEY}"
  locations+=(--location "s3://${SLUICE_S3_BUCKET}/bench")
else
  echo "no S3 server (${ENV_FILE} has no SLUICE_S3_ENDPOINT): file:// only" >&2
fi

(($# > 0)) || set -- 1000000
for keys in "$@"; do
  echo "== keys=${keys} date=$(date -u +%Y-%m-%dT%H:%M:%SZ) commit=$(git -C "${ROOT}" rev-parse --short HEAD)" \
    "load=$(cut -d' ' -f1-3 /proc/loadavg) cores=$(nproc)"
  "${BIN}" --job "${ROOT}/bench/savepoint-job.yaml" --keys "${keys}" "${locations[@]}" --state "${WORK}/state"
done
