#!/usr/bin/env bash
# Runs every test of Meridian on a fresh Debian machine: installs what the
# tests need (etcd for the store and end-to-end tests, protoc for the gRPC
# code), checks formatting and lints, builds the binaries the end-to-end
# tests start, then runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# etcd-server on Debian starts a system etcd on 2379; the tests never use it
# (they start their own on free ports), so its state does not matter.

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins
cargo test --workspace -- --test-threads=2
