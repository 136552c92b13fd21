#!/usr/bin/env bash
# Fails when a crate of the workspace declares a dependency its code never uses
# (cargo-machete: it reads the sources, so it needs no build and takes a second). The tool
# is built once per machine into the cache, at a pinned version, under the build lock.
# A dependency used only through a macro or a feature is named in that crate's
# [package.metadata.cargo-machete] ignored list, with the reason beside it.
set -euo pipefail
cd "$(dirname "$0")/.."

version=0.9.2
cache="${SLUICE_CACHE:-/var/cache/sluice}"
root="$cache/tools/cargo-machete-$version"
tool="$root/bin/cargo-machete"
if [[ ! -x "$tool" ]]; then
  echo "unused-deps: building cargo-machete $version into $root (once)"
  mkdir -p "$root"
  # Its own target directory: the workspace's is locked to the workspace's features.
  CARGO_TARGET_DIR="$cache/tools/build" flock "${BUILD_LOCK:-/var/tmp/sluice-build.lock}" \
    cargo install --quiet --locked --version "$version" --root "$root" cargo-machete
fi
"$tool" --with-metadata .
