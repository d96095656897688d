# Sourced by scripts/test-all.sh and deploy/local/run.sh: installs the real
# gRPC xDS clients (Python grpcio, Node @grpc/grpc-js-xds), the gRPC test
# server and the Envoy validator where tests/src/xds_clients.rs and the local
# run look for them: target/xds-venv, target/pgv-venv (apart: xds-protos<1.60
# needs protobuf<5) and tests/xds-clients/node/node_modules. Each is installed
# only when missing or when its requirements / lock file changed since.
# Expects to run from the repository root.

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

# The Python client and server (grpcio): what the local run needs.
xds_python() {
  command -v python3 >/dev/null 2>&1 || xds_apt python3
  xds_venv target/xds-venv tests/xds-clients/requirements.txt
}

# Everything the tests need.
xds_all() {
  xds_python
  xds_venv target/pgv-venv tests/xds-clients/requirements-pgv.txt
  command -v npm >/dev/null 2>&1 || xds_apt nodejs npm
  local node=tests/xds-clients/node
  if ! cmp -s "$node/package-lock.json" "$node/node_modules/.meridian-installed"; then
    echo "installing $node/node_modules"
    (cd "$node" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$node/package-lock.json" "$node/node_modules/.meridian-installed"
  fi
}
