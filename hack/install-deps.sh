#!/usr/bin/env bash
# Installs the Debian packages a Sluice build needs, once: RocksDB's bindings need clang,
# librdkafka's bundled build needs cmake and OpenSSL headers; jq and column (bsdextrautils)
# format the demo, kcat produces its events and reads its results, time measures the
# benchmark. Idempotent and quiet when everything is present.
set -euo pipefail

packages=(cmake clang libclang-dev pkg-config libssl-dev make python3 jq bsdextrautils kcat time)
missing=()
for package in "${packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if ((${#missing[@]} == 0)); then
  echo "install-deps: all build packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
echo "install-deps: done"
