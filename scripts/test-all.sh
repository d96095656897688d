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

# The real gRPC xDS clients, the test server and the Envoy validator.
# shellcheck source=scripts/xds-clients.sh
. scripts/xds-clients.sh
xds_all

# etcd-server on Debian starts a system etcd on 2379; the tests never use it
# (they start their own on free ports), so its state does not matter.

# One build from scratch: incremental caches would only cost disk (GBs).
export CARGO_INCREMENTAL=0

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins
# The deployment kit: systemd units (systemd-analyze verify, security, a
# real start of each unit's command line), the container definition
# (static checks: no engine can pull images here) and the Kubernetes
# manifests (kustomize, schemas offline, our own rules).
deploy/check-systemd-container.sh
deploy/check-kubernetes.sh
cargo test --workspace -- --test-threads=2

# The README's run command: a global and two zones joined on loopback, both
# online at the global, and the proxyless client it starts through
# meridian-dp answered by the backend, within 120 s; then stopped with
# SIGTERM (as Ctrl-C), which must leave no process behind.
smoke_data=$(mktemp -d)
MERIDIAN_LOCAL_DATA="$smoke_data" deploy/local/run.sh >"$smoke_data/run.out" 2>&1 &
smoke_pid=$!
smoke_ok=""
for _ in $(seq 1 600); do
  online=$({ target/debug/meridianctl --token-file "$smoke_data/admin-token" inspect zones 2>/dev/null || true; } \
    | awk '$2 == "true"' | wc -l)
  if [ "$online" -eq 2 ] && grep -q '"zone-1/backend": [1-9]' "$smoke_data/client.log" 2>/dev/null; then
    smoke_ok=1; break
  fi
  kill -0 "$smoke_pid" 2>/dev/null || break
  sleep 0.2
done
kill -TERM "$smoke_pid" 2>/dev/null || true
wait "$smoke_pid" 2>/dev/null || true
if [ -z "$smoke_ok" ]; then
  echo "deploy/local/run.sh: the zones did not come online, or the client got no answer"
  tail -n 30 "$smoke_data"/*.log "$smoke_data/run.out"
  exit 1
fi
if pgrep -f "$smoke_data" >/dev/null; then
  echo "deploy/local/run.sh: processes left after Ctrl-C:"; pgrep -af "$smoke_data"; exit 1
fi
echo "deploy/local/run.sh: global and two zones online, the proxyless client answered through meridian-dp"
rm -rf "$smoke_data"
