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

# --- real gRPC xDS clients (tests/xds-clients): begin ---------------------
# The proxyless gRPC clients (Python grpcio, Node @grpc/grpc-js-xds), the gRPC
# test server and the Envoy validator, where tests/src/xds_clients.rs looks for
# them: target/xds-venv, target/pgv-venv (apart: xds-protos<1.60 needs
# protobuf<5) and tests/xds-clients/node/node_modules. Each is installed only
# when missing or when its requirements / lock file changed since.
xds_apt() {
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}
xds_venv() { # DIR REQUIREMENTS
  local dir=$1 req=$2
  if [ -x "$dir/bin/python" ] && cmp -s "$req" "$dir/.requirements"; then return 0; fi
  echo "installing $dir from $req"
  rm -rf "$dir"
  if ! python3 -m venv "$dir" >/dev/null 2>&1; then
    rm -rf "$dir"
    xds_apt python3-venv
    python3 -m venv "$dir"
  fi
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$dir/.requirements"
}
xds_venv target/xds-venv tests/xds-clients/requirements.txt
xds_venv target/pgv-venv tests/xds-clients/requirements-pgv.txt
command -v npm >/dev/null 2>&1 || xds_apt nodejs npm
xds_node=tests/xds-clients/node
if ! cmp -s "$xds_node/package-lock.json" "$xds_node/node_modules/.meridian-installed"; then
  echo "installing $xds_node/node_modules"
  (cd "$xds_node" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$xds_node/package-lock.json" "$xds_node/node_modules/.meridian-installed"
fi
# --- real gRPC xDS clients: end --------------------------------------------

# etcd-server on Debian starts a system etcd on 2379; the tests never use it
# (they start their own on free ports), so its state does not matter.

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins
cargo test --workspace -- --test-threads=2

# The README's run command: a global and two zones joined on loopback, both
# online at the global within 60 s, then stopped with SIGTERM (as Ctrl-C).
smoke_data=$(mktemp -d)
MERIDIAN_LOCAL_DATA="$smoke_data" deploy/local/run.sh >"$smoke_data/run.out" 2>&1 &
smoke_pid=$!
smoke_ok=""
for _ in $(seq 1 300); do
  online=$({ target/debug/meridianctl inspect zones 2>/dev/null || true; } | awk '$2 == "true"' | wc -l)
  if [ "$online" -eq 2 ]; then smoke_ok=1; break; fi
  kill -0 "$smoke_pid" 2>/dev/null || break
  sleep 0.2
done
kill -TERM "$smoke_pid" 2>/dev/null || true
wait "$smoke_pid" 2>/dev/null || true
if [ -z "$smoke_ok" ]; then
  echo "deploy/local/run.sh: the two zones did not come online"
  tail -n 30 "$smoke_data"/*.log "$smoke_data/run.out"
  exit 1
fi
echo "deploy/local/run.sh: global and two zones online"
rm -rf "$smoke_data"
