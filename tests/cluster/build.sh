#!/usr/bin/env bash
# Builds (or reuses from the cache) every binary and jar the local cluster runs:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet, kube-proxy
#   (one `go build`, version-stamped), etcd, helm (stamped with the Kubernetes minor),
#   a tiny loopback forwarder, the Kafka classpath from Maven Central, and SeaweedFS's weed
#   (the S3-compatible server).
# Usage: build.sh [all|k8s|etcd|helm|forward|kafka|seaweedfs]...   (default: all)
# Every compile step holds ${SLUICE_BUILD_LOCK} so it never runs beside another heavy build.
set -euo pipefail

CLUSTER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.sh
source "${CLUSTER_DIR}/versions.sh"
# shellcheck source=lib.sh
source "${CLUSTER_DIR}/lib.sh"

BUILD_LOG_DIR="${SLUICE_CACHE}/logs"
WRAP_DIR="${SLUICE_CACHE}/go/wrap"
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--buildvcs=false}"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"

K8S_COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)

# Runs a compile under the shared build lock; waits up to an hour for it. Its messages go to
# the step's log, whose last line the progress heartbeat shows.
with_build_lock() {
  if ! flock -n "${SLUICE_BUILD_LOCK}" true; then
    log "  waiting for the build lock ${SLUICE_BUILD_LOCK} (another heavy build is running)"
  fi
  # shellcheck disable=SC2016 # expanded by the inner shell, once the lock is held.
  flock -w 3600 "${SLUICE_BUILD_LOCK}" bash -c 'echo "got the build lock at $(date -u +%T)"; exec "$@"' with_build_lock "$@"
}

require_go() {
  command -v go >/dev/null || die "go is not installed (needed to build Kubernetes, etcd and helm)"
}

# The k8s.io/kubernetes module replaces every staging module with ./staging/...; a wrapper
# module that requires it and points each staging module at its published v0.x.y makes it
# buildable from the module proxy.
prepare_k8s_module() {
  local dir="$1" gomod staging_version="v0.${K8S_VERSION#v1.}"
  mkdir -p "${dir}"
  cd "${dir}"
  [[ -f go.mod ]] && grep -q "k8s.io/kubernetes ${K8S_VERSION}" go.mod && [[ -f .resolved ]] && return 0
  rm -f go.mod go.sum .resolved
  go mod init sluice.local/k8s-build
  gomod=$(go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
  [[ -f "${gomod}" ]] || die "failed to download the go.mod of k8s.io/kubernetes@${K8S_VERSION}"
  go mod edit -require="k8s.io/kubernetes@${K8S_VERSION}"
  local module
  while read -r module; do
    go mod edit -replace="${module}=${module}@${staging_version}"
  done < <(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "${gomod}")
  local packages=()
  # Each with @version: a bare package path means @upgrade, which would pull the newest
  # Kubernetes against staging modules pinned to this one.
  for module in "${K8S_COMMANDS[@]}"; do packages+=("k8s.io/kubernetes/cmd/${module}@${K8S_VERSION}"); done
  # No `go mod tidy` first: it would drop the requirement before anything imports it.
  go get "${packages[@]}"
  touch .resolved
}

k8s_ldflags() {
  local minor="${K8S_MINOR}" date
  date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local flags="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X ${pkg}.gitVersion=${K8S_VERSION} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
    flags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=${date}"
  done
  printf '%s' "${flags}"
}

resolve_k8s() {
  [[ -f "${K8S_BIN_DIR}/.complete" ]] && return 0
  [[ -f "${WRAP_DIR}/k8s-${K8S_VERSION}/.resolved" ]] && return 0
  require_go
  local logfile="${BUILD_LOG_DIR}/k8s-${K8S_VERSION}.log"
  log "kubernetes ${K8S_VERSION}: resolving modules (log ${logfile})"
  run_with_progress "resolve kubernetes modules" "${logfile}" 1800 \
    prepare_k8s_module "${WRAP_DIR}/k8s-${K8S_VERSION}"
}

build_k8s() {
  local marker="${K8S_BIN_DIR}/.complete"
  if [[ -f "${marker}" ]]; then
    log "kubernetes ${K8S_VERSION}: cached in ${K8S_BIN_DIR}"
    return 0
  fi
  resolve_k8s
  local logfile="${BUILD_LOG_DIR}/k8s-${K8S_VERSION}.log" dir="${WRAP_DIR}/k8s-${K8S_VERSION}"
  log "kubernetes ${K8S_VERSION}: compiling ${K8S_COMMANDS[*]} (10-20 min cold on 2 cores)"
  local packages=() cmd tmp="${K8S_BIN_DIR}.tmp"
  for cmd in "${K8S_COMMANDS[@]}"; do packages+=("k8s.io/kubernetes/cmd/${cmd}"); done
  rm -rf "${tmp}" && mkdir -p "${tmp}"
  (cd "${dir}" && run_with_progress "build kubernetes" "${logfile}" 3600 \
    with_build_lock go build -v -trimpath -ldflags "$(k8s_ldflags)" -o "${tmp}/" "${packages[@]}")
  for cmd in "${K8S_COMMANDS[@]}"; do
    [[ -x "${tmp}/${cmd}" ]] || fail_component "build kubernetes" "${logfile}" "${cmd} missing"
  done
  rm -rf "${K8S_BIN_DIR}" && mv "${tmp}" "${K8S_BIN_DIR}"
  touch "${marker}"
  printf '%s\n' "${K8S_VERSION}" >"${SLUICE_CACHE}/bin/k8s-version"
  log "kubernetes ${K8S_VERSION}: $("${K8S_BIN_DIR}/kube-apiserver" --version)"
}

# etcd's server module has replace directives too; a wrapper that `go get`s it resolves them.
resolve_etcd() {
  [[ -x "${ETCD_BIN_DIR}/etcd" ]] && return 0
  require_go
  local logfile="${BUILD_LOG_DIR}/etcd-${ETCD_VERSION}.log" dir="${WRAP_DIR}/etcd-${ETCD_VERSION}"
  mkdir -p "${dir}"
  [[ -f "${dir}/.resolved" ]] && return 0
  log "etcd ${ETCD_VERSION}: resolving modules (log ${logfile})"
  (
    cd "${dir}"
    rm -f go.mod go.sum
    go mod init sluice.local/etcd-build >>"${logfile}" 2>&1
    run_with_progress "resolve etcd modules" "${logfile}" 900 go get "go.etcd.io/etcd/server/v3@${ETCD_VERSION}"
    touch .resolved
  )
}

build_etcd() {
  local bin="${ETCD_BIN_DIR}/etcd"
  if [[ -x "${bin}" ]]; then
    log "etcd ${ETCD_VERSION}: cached in ${ETCD_BIN_DIR}"
    return 0
  fi
  resolve_etcd
  local logfile="${BUILD_LOG_DIR}/etcd-${ETCD_VERSION}.log" dir="${WRAP_DIR}/etcd-${ETCD_VERSION}"
  mkdir -p "${ETCD_BIN_DIR}"
  log "etcd ${ETCD_VERSION}: compiling (log ${logfile})"
  (cd "${dir}" && run_with_progress "build etcd" "${logfile}" 1800 with_build_lock \
    go build -trimpath -ldflags "-s -w" -o "${bin}.tmp" go.etcd.io/etcd/server/v3)
  mv "${bin}.tmp" "${bin}"
  log "etcd: $("${bin}" --version | head -1)"
}

# `go install pkg@version` downloads everything it needs; doing it first (without the lock)
# keeps network waits out of the locked section.
resolve_helm() {
  [[ -x "${HELM_BIN_DIR}/helm" ]] && return 0
  require_go
  local logfile="${BUILD_LOG_DIR}/helm-${HELM_VERSION}.log" dir="${WRAP_DIR}/helm-${HELM_VERSION}"
  [[ -f "${dir}/.resolved" ]] && return 0
  log "helm ${HELM_VERSION}: resolving modules (log ${logfile})"
  mkdir -p "${dir}"
  (
    cd "${dir}"
    rm -f go.mod go.sum
    go mod init sluice.local/helm-build >>"${logfile}" 2>&1
    run_with_progress "resolve helm modules" "${logfile}" 900 go get "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
    touch .resolved
  )
}

build_helm() {
  local bin="${HELM_BIN_DIR}/helm"
  if [[ -x "${bin}" ]]; then
    log "helm ${HELM_VERSION}: cached in ${HELM_BIN_DIR}"
    return 0
  fi
  require_go
  local logfile="${BUILD_LOG_DIR}/helm-${HELM_VERSION}.log" tmp="${HELM_BIN_DIR}.tmp"
  local flags="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
  flags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  local pkg
  # Without these, client-side `helm template` assumes Kubernetes 1.20.
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    flags+=" -X ${pkg}.k8sVersionMajor=1 -X ${pkg}.k8sVersionMinor=${K8S_MINOR}"
  done
  resolve_helm
  log "helm ${HELM_VERSION}: compiling (log ${logfile})"
  rm -rf "${tmp}" && mkdir -p "${tmp}"
  GOBIN="${tmp}" run_with_progress "build helm" "${logfile}" 1800 with_build_lock \
    go install -trimpath -ldflags "${flags}" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
  rm -rf "${HELM_BIN_DIR}" && mv "${tmp}" "${HELM_BIN_DIR}"
  log "helm: $("${bin}" version --short)"
}

# SeaweedFS's `weed` (master, volume server, filer and the S3 gateway in one binary). Its
# go.mod has a replace directive (go-bip39), which `go install pkg@version` refuses, so a
# wrapper module carries the module's replace lines and `go get`s the weed package.
SEAWEEDFS_MODULE=github.com/seaweedfs/seaweedfs

resolve_seaweedfs() {
  [[ -x "${SEAWEEDFS_BIN_DIR}/weed" ]] && return 0
  require_go
  local logfile="${BUILD_LOG_DIR}/seaweedfs-${SEAWEEDFS_VERSION}.log"
  local dir="${WRAP_DIR}/seaweedfs-${SEAWEEDFS_VERSION}"
  [[ -f "${dir}/.resolved" ]] && return 0
  log "seaweedfs ${SEAWEEDFS_VERSION}: resolving modules (log ${logfile})"
  mkdir -p "${dir}"
  run_with_progress "resolve seaweedfs modules" "${logfile}" 1800 prepare_seaweedfs_module "${dir}"
}

prepare_seaweedfs_module() {
  local dir="$1" gomod line
  cd "${dir}"
  rm -f go.mod go.sum .resolved
  go mod init sluice.local/seaweedfs-build
  gomod=$(go mod download -json "${SEAWEEDFS_MODULE}@${SEAWEEDFS_VERSION}" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
  [[ -f "${gomod}" ]] || die "failed to download the go.mod of ${SEAWEEDFS_MODULE}@${SEAWEEDFS_VERSION}"
  # Single-line `replace A => B vX` directives only (all the module has); a local-path
  # replace could not work outside its tree anyway.
  while read -r line; do
    go mod edit -replace="${line}"
  done < <(sed -n 's#^replace[[:space:]]\{1,\}\([^ ]*\) => \([^ ]*\) \(v[^ ]*\)[[:space:]]*$#\1=\2@\3#p' "${gomod}")
  go get "${SEAWEEDFS_MODULE}/weed@${SEAWEEDFS_VERSION}"
  touch .resolved
}

build_seaweedfs() {
  local bin="${SEAWEEDFS_BIN_DIR}/weed"
  if [[ -x "${bin}" ]]; then
    log "seaweedfs ${SEAWEEDFS_VERSION}: cached in ${SEAWEEDFS_BIN_DIR}"
    return 0
  fi
  resolve_seaweedfs
  local logfile="${BUILD_LOG_DIR}/seaweedfs-${SEAWEEDFS_VERSION}.log"
  local dir="${WRAP_DIR}/seaweedfs-${SEAWEEDFS_VERSION}" tmp="${SEAWEEDFS_BIN_DIR}.tmp"
  local flags="-s -w -X ${SEAWEEDFS_MODULE}/weed/util/version.COMMIT=${SEAWEEDFS_VERSION##*-}"
  log "seaweedfs ${SEAWEEDFS_VERSION}: compiling weed (log ${logfile})"
  rm -rf "${tmp}" && mkdir -p "${tmp}"
  (cd "${dir}" && run_with_progress "build seaweedfs" "${logfile}" 3600 with_build_lock \
    go build -trimpath -ldflags "${flags}" -o "${tmp}/weed" "${SEAWEEDFS_MODULE}/weed")
  rm -rf "${SEAWEEDFS_BIN_DIR}" && mv "${tmp}" "${SEAWEEDFS_BIN_DIR}"
  log "seaweedfs: $("${bin}" version 2>&1 | head -1)"
}

# A std-only TCP forwarder: the API server listens on the bridge address (reachable by pods),
# and this makes it reachable on 127.0.0.1 too. Keyed by the source's hash.
forwarder_path() {
  local sum
  sum=$(sha256sum "${CLUSTER_DIR}/forward/main.go" | cut -c1-12)
  printf '%s/bin/sluice-forward-%s' "${SLUICE_CACHE}" "${sum}"
}

build_forwarder() {
  local bin
  bin=$(forwarder_path)
  [[ -x "${bin}" ]] && return 0
  require_go
  local logfile="${BUILD_LOG_DIR}/forward.log"
  mkdir -p "$(dirname "${bin}")"
  # Std-only and a second to compile: not a heavy build, so no build lock.
  (cd "${CLUSTER_DIR}/forward" && run_with_progress "build forwarder" "${logfile}" 600 \
    go build -trimpath -o "${bin}.tmp" .)
  mv "${bin}.tmp" "${bin}"
}

fetch_kafka() {
  local marker="${KAFKA_HOME}/.complete"
  if [[ -f "${marker}" ]]; then
    log "kafka ${KAFKA_VERSION}: cached in ${KAFKA_HOME}"
    return 0
  fi
  command -v mvn >/dev/null || die "mvn is not installed (needed to fetch Kafka from Maven Central)"
  command -v java >/dev/null || die "java is not installed (needed to run Kafka)"
  local logfile="${BUILD_LOG_DIR}/kafka-${KAFKA_VERSION}.log"
  log "kafka ${KAFKA_VERSION}: fetching jars from Maven Central (log ${logfile})"
  rm -rf "${KAFKA_HOME}/libs"
  mkdir -p "${KAFKA_HOME}"
  run_with_progress "fetch kafka" "${logfile}" 900 mvn -B -f "${CLUSTER_DIR}/kafka/pom.xml" \
    -Dmaven.repo.local="${SLUICE_CACHE}/m2" -Dkafka.version="${KAFKA_VERSION}" \
    dependency:copy-dependencies -DoutputDirectory="${KAFKA_HOME}/libs"
  [[ -f "${KAFKA_HOME}/libs/kafka_2.13-${KAFKA_VERSION}.jar" ]] ||
    fail_component "fetch kafka" "${logfile}" "kafka_2.13-${KAFKA_VERSION}.jar missing"
  compgen -G "${KAFKA_HOME}/libs/log4j-slf4j*-impl-*.jar" >/dev/null ||
    fail_component "fetch kafka" "${logfile}" "no SLF4J binding for log4j2 in the classpath"
  touch "${marker}"
}

build_all() {
  mkdir -p "${BUILD_LOG_DIR}"
  fetch_kafka
  build_forwarder
  # Downloads first (no lock), then the compiles, each under the build lock.
  resolve_etcd
  resolve_helm
  resolve_k8s
  resolve_seaweedfs
  build_etcd
  build_helm
  build_k8s
  build_seaweedfs
}

main() {
  mkdir -p "${BUILD_LOG_DIR}"
  [[ $# -gt 0 ]] || set -- all
  local target
  for target in "$@"; do
    case "${target}" in
      all) build_all ;;
      k8s) build_k8s ;;
      etcd) build_etcd ;;
      helm) build_helm ;;
      forward) build_forwarder ;;
      kafka) fetch_kafka ;;
      seaweedfs) build_seaweedfs ;;
      *) die "unknown build target ${target} (all|k8s|etcd|helm|forward|kafka|seaweedfs)" ;;
    esac
  done
}

if [[ "${BASH_SOURCE[0]}" == "${0}" ]]; then
  main "$@"
fi
