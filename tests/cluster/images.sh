#!/usr/bin/env bash
# Builds the container images the local test node runs, without a daemon or a registry, and
# imports them into the node's containerd (k8s.io namespace) when the node is up.
#
#   images.sh [all]     infra + sluice, then import (what `make images` runs)
#   images.sh infra     pause, Debian base, test-tools image (kcat, netcat) (no Rust needed; node.sh up runs it)
#   images.sh sluice    localhost/sluice-worker:dev and localhost/sluice-controller:dev from
#                       worker/Containerfile and controller/Containerfile, with the release
#                       binaries from ${CARGO_TARGET_DIR:-/var/cache/sluice/target}/release
#   images.sh sluice-if-built   the same, but only a note when the binaries are missing
#   images.sh import    imports every cached image archive into the running node
#   images.sh list      shows the cached archives and what the node's containerd has
#
# Image archives (OCI) are cached in ${SLUICE_CACHE}/images and keyed by their inputs, so a
# second run takes seconds. Base images cannot be pulled here: the base is a Debian bookworm
# minbase made with mmdebstrap and committed with buildah (FROM scratch + the rootfs tarball).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "${HERE}/../.." && pwd)"
# shellcheck source=tests/cluster/versions.sh
source "${HERE}/versions.sh"
# shellcheck source=tests/cluster/lib.sh
source "${HERE}/lib.sh"

IMAGES_DIR="${SLUICE_CACHE}/images"
BUILDAH_ROOT="${SLUICE_CACHE}/buildah/storage"
BUILDAH_RUNROOT="${SLUICE_STATE}/buildah-run"
IMAGES_LOG_DIR="${SLUICE_CACHE}/images/logs"
NODE_DIR="${SLUICE_STATE}/node"
CONTAINERD_SOCK="${NODE_DIR}/containerd/containerd.sock"
TARGET_DIR="${CARGO_TARGET_DIR:-${SLUICE_CACHE}/target}"

DEBIAN_SUITE=bookworm
DEBIAN_MIRROR="${SLUICE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_SECURITY_MIRROR="${SLUICE_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
# What the runtime base carries beyond minbase (glibc, libstdc++, libgcc come with minbase):
# libssl3 for rdkafka's TLS, ca-certificates for brokers behind TLS.
BASE_PACKAGES="libssl3,ca-certificates"
TOOLS_PACKAGES="${BASE_PACKAGES},kcat,netcat-openbsd"

export PAUSE_VERSION="${PAUSE_VERSION:-3.10.1}"
export PAUSE_IMAGE="localhost/sluice-pause:${PAUSE_VERSION}"
export BASE_IMAGE_REF="localhost/sluice-base:${DEBIAN_SUITE}"
export TOOLS_IMAGE="localhost/sluice-testtools:dev"
export WORKER_IMAGE="localhost/sluice-worker:dev"
export CONTROLLER_IMAGE="localhost/sluice-controller:dev"

# Only the Go module proxy (for the pause sources): no fallback to the modules' own hosts.
GOPROXY_ONLY="$(go env GOPROXY 2>/dev/null | sed -E 's/(^|,|\|)direct($|,|\|)/\1/g; s/[,|]+$//')"
export GOPROXY="${GOPROXY_ONLY:-https://proxy.golang.org}"

bh() {
  buildah --root "${BUILDAH_ROOT}" --runroot "${BUILDAH_RUNROOT}" --storage-driver vfs "$@"
}

ensure_tools() {
  local missing=()
  command -v buildah >/dev/null || missing+=(buildah)
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  command -v gcc >/dev/null || missing+=(gcc)
  [[ -e /usr/lib/x86_64-linux-gnu/libc.a ]] || missing+=(libc6-dev)
  command -v ctr >/dev/null || missing+=(containerd)
  if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  mkdir -p "${IMAGES_DIR}" "${IMAGES_LOG_DIR}" "${BUILDAH_ROOT}" "${BUILDAH_RUNROOT}"
}

# Heavy steps run one at a time on the machine (cargo, go and image builds share the lock).
locked() {
  if ! flock -n "${SLUICE_BUILD_LOCK}" true; then
    log "  waiting for the build lock ${SLUICE_BUILD_LOCK} (another heavy build is running)"
  fi
  flock -w 3600 "${SLUICE_BUILD_LOCK}" "$@"
}

# archive_for NAME KEY: the cached OCI archive path of an image built from inputs hashed as KEY.
archive_for() { printf '%s/%s-%s.oci.tar' "${IMAGES_DIR}" "$1" "$2"; }

# push_archive REF ARCHIVE: writes the image to an OCI archive atomically.
push_archive() {
  local ref="$1" archive="$2"
  rm -f "${archive}.tmp"
  bh push --quiet "${ref}" "oci-archive:${archive}.tmp:${ref}" >/dev/null
  mv -f "${archive}.tmp" "${archive}"
  # Older archives of the same image are stale once a new key is written.
  local name
  name="$(basename "${archive}" | sed -E 's/-[0-9a-f]{12}\.oci\.tar$//')"
  find "${IMAGES_DIR}" -maxdepth 1 -name "${name}-*.oci.tar" ! -path "${archive}" -delete
}

have_image() { bh inspect --type image "$1" >/dev/null 2>&1; }

# ---------------------------------------------------------------------------------------
# pause: built from the Kubernetes sources (build/pause/linux/pause.c in the module zip).
build_pause() {
  local dir src key archive logfile="${IMAGES_LOG_DIR}/pause.log"
  dir="$(go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')"
  src="${dir}/build/pause/linux/pause.c"
  [[ -f "${src}" ]] || die "pause source not found at ${src}"
  key="$(cat "${src}" "${HERE}/node/pause.Containerfile" | sha256sum | cut -c1-12)"
  archive="$(archive_for sluice-pause "${key}")"
  if [[ -s "${archive}" ]]; then
    log "pause image: cached ${archive}"
    return 0
  fi
  log "pause image: compiling ${src} (gcc -Os -static)"
  local ctx
  ctx="$(mktemp -d)"
  gcc -Os -Wall -Werror -static -DVERSION="v${PAUSE_VERSION}-sluice" -o "${ctx}/pause" "${src}" >>"${logfile}" 2>&1 ||
    fail_component "pause build" "${logfile}" "gcc failed"
  strip "${ctx}/pause"
  cp "${HERE}/node/pause.Containerfile" "${ctx}/Containerfile"
  run_with_progress "pause image" "${logfile}" 600 locked \
    buildah --root "${BUILDAH_ROOT}" --runroot "${BUILDAH_RUNROOT}" --storage-driver vfs \
    bud --isolation chroot --layers=false -t "${PAUSE_IMAGE}" -f "${ctx}/Containerfile" "${ctx}"
  push_archive "${PAUSE_IMAGE}" "${archive}"
  rm -rf "${ctx}"
  log "pause image: ${PAUSE_IMAGE} -> ${archive}"
}

# ---------------------------------------------------------------------------------------
# Debian rootfs images: mmdebstrap (minbase) -> tarball -> buildah FROM scratch + ADD.
mmdebstrap_rootfs() {
  local packages="$1" out="$2" logfile="$3"
  # Docs, man pages and locales are dead weight in an image; apt lists are dropped too.
  # shellcheck disable=SC2016 # "$1" in the hook is expanded by mmdebstrap's hook shell
  locked mmdebstrap --variant=minbase --mode=root --format=tar \
    --include="${packages}" \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*.log' \
    "${DEBIAN_SUITE}" "${out}.tmp" \
    "deb ${DEBIAN_MIRROR} ${DEBIAN_SUITE} main" \
    "deb ${DEBIAN_MIRROR} ${DEBIAN_SUITE}-updates main" \
    "deb ${DEBIAN_SECURITY_MIRROR} ${DEBIAN_SUITE}-security main" >>"${logfile}" 2>&1
  mv -f "${out}.tmp" "${out}"
}

# build_rootfs_image NAME REF PACKAGES: cached by the package list; the rootfs is rebuilt
# only when the archive is missing (delete ${IMAGES_DIR}/NAME-* to refresh packages).
build_rootfs_image() {
  local name="$1" ref="$2" packages="$3"
  local key archive rootfs logfile="${IMAGES_LOG_DIR}/${name}.log"
  key="$(printf '%s %s %s' "${DEBIAN_SUITE}" "${packages}" "v1" | sha256sum | cut -c1-12)"
  archive="$(archive_for "${name}" "${key}")"
  if [[ -s "${archive}" ]]; then
    log "${name} image: cached ${archive}"
    if ! have_image "${ref}"; then
      local id
      id="$(bh pull --quiet "oci-archive:${archive}" | tail -n 1)"
      bh tag "${id}" "${ref}"
    fi
    return 0
  fi
  rootfs="${IMAGES_DIR}/${name}-${key}.rootfs.tar"
  if [[ ! -s "${rootfs}" ]]; then
    log "${name} image: mmdebstrap ${DEBIAN_SUITE} minbase + ${packages} (1-3 min)"
    : >"${logfile}"
    local start
    start=$(date +%s)
    mmdebstrap_rootfs "${packages}" "${rootfs}" "${logfile}" ||
      fail_component "${name} rootfs" "${logfile}" "mmdebstrap failed"
    log "${name} image: rootfs done in $(($(date +%s) - start))s ($(du -h "${rootfs}" | cut -f1))"
  fi
  local ctr
  ctr="$(bh from --quiet scratch)"
  bh add --quiet "${ctr}" "${rootfs}" / >/dev/null
  bh config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd /bin/sh \
    --label "org.opencontainers.image.description=Debian ${DEBIAN_SUITE} minbase + ${packages} (mmdebstrap)" \
    "${ctr}"
  bh commit --quiet --rm "${ctr}" "${ref}" >/dev/null
  push_archive "${ref}" "${archive}"
  rm -f "${rootfs}"
  log "${name} image: ${ref} -> ${archive} ($(du -h "${archive}" | cut -f1))"
}

build_infra() {
  ensure_tools
  build_pause
  build_rootfs_image sluice-base "${BASE_IMAGE_REF}" "${BASE_PACKAGES}"
  build_rootfs_image sluice-testtools "${TOOLS_IMAGE}" "${TOOLS_PACKAGES}"
}

# ---------------------------------------------------------------------------------------
# Sluice images from the project's own Containerfiles, with BINARIES=prebuilt.
build_sluice_image() {
  local comp="$1" ref="$2"
  local bin="${TARGET_DIR}/release/sluice-${comp}"
  local containerfile="${REPO}/${comp}/Containerfile"
  local logfile="${IMAGES_LOG_DIR}/sluice-${comp}.log"
  [[ -x "${bin}" ]] || die "missing ${bin}: build it first with
    flock ${SLUICE_BUILD_LOCK} env CARGO_TARGET_DIR=${TARGET_DIR} cargo build --release -p sluice-worker -p sluice-controller"
  local key archive
  key="$(cat "${bin}" "${containerfile}" <(bh inspect --type image --format '{{.FromImageID}}' "${BASE_IMAGE_REF}") |
    sha256sum | cut -c1-12)"
  archive="$(archive_for "sluice-${comp}" "${key}")"
  if [[ -s "${archive}" ]]; then
    log "sluice-${comp} image: cached ${archive}"
    return 0
  fi
  local ctx
  ctx="$(mktemp -d)"
  install -D -m 0755 "${bin}" "${ctx}/prebuilt/sluice-${comp}"
  # The release profile keeps line tables (hundreds of MB with RocksDB); the image keeps
  # the symbols (backtraces name functions) but not the debug info, as the cargo stage does.
  strip --strip-debug "${ctx}/prebuilt/sluice-${comp}"
  log "sluice-${comp} image: buildah bud -f ${comp}/Containerfile (BINARIES=prebuilt, BASE_IMAGE=${BASE_IMAGE_REF})"
  : >"${logfile}"
  # The lock is taken before the 900 s start: waiting behind another build (a developer's
  # cargo in another checkout) is not this build being slow.
  local lock_fd
  exec {lock_fd}>"${SLUICE_BUILD_LOCK}"
  if ! flock -n "${lock_fd}"; then
    log "  waiting for the build lock ${SLUICE_BUILD_LOCK} (another heavy build is running)"
    flock -w 3600 "${lock_fd}" || die "the build lock ${SLUICE_BUILD_LOCK} stayed taken for an hour"
  fi
  run_with_progress "sluice-${comp} image" "${logfile}" 900 \
    buildah --root "${BUILDAH_ROOT}" --runroot "${BUILDAH_RUNROOT}" --storage-driver vfs \
    bud --isolation chroot --layers=false --pull=never \
    --build-arg BINARIES=prebuilt --build-arg "BASE_IMAGE=${BASE_IMAGE_REF}" \
    -t "${ref}" -f "${containerfile}" "${ctx}"
  exec {lock_fd}>&-
  push_archive "${ref}" "${archive}"
  rm -rf "${ctx}"
  log "sluice-${comp} image: ${ref} -> ${archive} ($(du -h "${archive}" | cut -f1))"
}

build_sluice() {
  ensure_tools
  build_rootfs_image sluice-base "${BASE_IMAGE_REF}" "${BASE_PACKAGES}"
  build_sluice_image worker "${WORKER_IMAGE}"
  build_sluice_image controller "${CONTROLLER_IMAGE}"
  prune_storage
}

# ---------------------------------------------------------------------------------------
node_ctr() { ctr --address "${CONTAINERD_SOCK}" --namespace k8s.io "$@"; }

import_all() {
  if [[ ! -S "${CONTAINERD_SOCK}" ]] || ! node_ctr version >/dev/null 2>&1; then
    log "node containerd is not running (${CONTAINERD_SOCK}); images stay cached in ${IMAGES_DIR}"
    log "  they are imported by 'bash tests/cluster/node.sh up' or 'images.sh import'"
    return 0
  fi
  local archive index name digest present n=0 skipped=0
  present="$(node_ctr images ls 2>/dev/null || true)"
  for archive in "${IMAGES_DIR}"/*.oci.tar; do
    [[ -s "${archive}" ]] || continue
    # The image name and manifest digest in the archive's index: when containerd has that
    # name at that digest already, there is nothing to do.
    index="$(tar -xOf "${archive}" index.json 2>/dev/null || true)"
    name="$(grep -o '"org.opencontainers.image.ref.name":"[^"]*"' <<<"${index}" | head -n 1 | cut -d'"' -f4 || true)"
    digest="$(grep -o 'sha256:[0-9a-f]\{64\}' <<<"${index}" | head -n 1 || true)"
    if [[ -n "${name}" && -n "${digest}" ]] &&
      awk -v n="${name}" -v d="${digest}" '$1 == n && $3 == d {found = 1} END {exit !found}' <<<"${present}"; then
      skipped=$((skipped + 1))
      continue
    fi
    node_ctr images import "${archive}" >/dev/null || die "ctr images import ${archive} failed"
    n=$((n + 1))
  done
  log "imported ${n} image archives into the node's containerd (namespace k8s.io), ${skipped} already there"
}

list_images() {
  ls -la "${IMAGES_DIR}"/*.oci.tar 2>/dev/null || true
  if [[ -S "${CONTAINERD_SOCK}" ]]; then
    node_ctr images ls -q | grep -v '^sha256:' || true
  fi
}

# vfs keeps a full copy of the rootfs per layer: once the OCI archives (the cache that
# matters) are written, keep only the base image (the FROM of the sluice images).
prune_storage() {
  local base_id id
  base_id="$(bh images --noheading --no-trunc --format '{{.ID}}' "${BASE_IMAGE_REF}" 2>/dev/null | head -n 1 || true)"
  for id in $(bh images --all --noheading --no-trunc --format '{{.ID}}' 2>/dev/null | sort -u); do
    [[ "${id}" == "${base_id}" ]] || bh rmi --force "${id}" >/dev/null 2>&1 || true
  done
}

main() {
  local cmd="${1:-all}"
  case "${cmd}" in
    all)
      build_infra
      build_sluice
      import_all
      ;;
    infra)
      build_infra
      prune_storage
      ;;
    sluice) build_sluice ;;
    sluice-if-built)
      # For node.sh up: each sluice image whose release binary exists, else a note.
      ensure_tools
      build_rootfs_image sluice-base "${BASE_IMAGE_REF}" "${BASE_PACKAGES}"
      local comp ref
      for comp in worker controller; do
        ref="localhost/sluice-${comp}:dev"
        if [[ -x "${TARGET_DIR}/release/sluice-${comp}" ]]; then
          build_sluice_image "${comp}" "${ref}"
        else
          log "no ${TARGET_DIR}/release/sluice-${comp}: image ${ref} not built; after"
          log "  'cargo build --release -p sluice-${comp}' run 'bash tests/cluster/images.sh' (make images)"
        fi
      done
      prune_storage
      ;;
    import) import_all ;;
    list) list_images ;;
    *)
      echo "usage: $0 [all|infra|sluice|sluice-if-built|import|list]" >&2
      exit 2
      ;;
  esac
}

main "$@"
