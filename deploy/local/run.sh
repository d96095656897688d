#!/usr/bin/env bash
# Runs Meridian locally on loopback: a global control plane on the embedded
# store, two zones joined to it with the command `meridianctl generate
# zone-join` prints, and a first workload in zone-1 — a gRPC backend and a
# proxyless gRPC client (Python grpcio, `xds:///backend`), each started
# through meridian-dp with a dataplane token, as an operator would, talking
# over the mesh's mTLS. Every API call presents the control plane's admin
# token (written to <data-dir>/admin-token at first start). Data and logs
# live in ./meridian-data (override with MERIDIAN_LOCAL_DATA). Ctrl-C stops
# everything cleanly.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required (a Rust toolchain)"; exit 1
fi
if ! command -v protoc >/dev/null 2>&1; then
  echo "installing protobuf-compiler (needed to build the KDS protocol)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq protobuf-compiler >/dev/null
fi
# The workload's gRPC programs (tests/xds-clients) and their Python packages.
# shellcheck source=scripts/xds-clients.sh
. scripts/xds-clients.sh
xds_python
cargo build --bins -q
BIN=$PWD/target/debug
PY=$PWD/target/xds-venv/bin/python
APPS=$PWD/tests/xds-clients
DATA=$(mkdir -p "${MERIDIAN_LOCAL_DATA:-./meridian-data}" && cd "${MERIDIAN_LOCAL_DATA:-./meridian-data}" && pwd)
GLOBAL_API=127.0.0.1:5681
KDS=127.0.0.1:5685
BACKEND_PORT=${MERIDIAN_LOCAL_BACKEND_PORT:-18080}
# The global's admin token goes to ./meridian-data/admin-token, where
# meridianctl looks on this host: `meridianctl get meshes` just works here.
GLOBAL_TOKEN=$DATA/admin-token
ctl() { "$BIN/meridianctl" --api "http://$GLOBAL_API" --token-file "$GLOBAL_TOKEN" "$@"; }

pids=()
cleanup() {
  trap - EXIT INT TERM
  # Workloads first (their agents deregister), then zones, then the global.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
  echo "stopped"
}
trap cleanup EXIT INT TERM

wait_ready() { # name api pid
  for _ in $(seq 1 300); do
    if curl -fsS "http://$2/ready" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$3" 2>/dev/null; then echo "$1 exited; see $DATA/$1.log"; exit 1; fi
    sleep 0.1
  done
  echo "$1 did not become ready; see $DATA/$1.log"; exit 1
}

wait_file() { # what file pid
  for _ in $(seq 1 300); do
    if [ -s "$2" ]; then return 0; fi
    if ! kill -0 "$3" 2>/dev/null; then echo "$1 exited; see $DATA/$1.log"; exit 1; fi
    sleep 0.1
  done
  echo "$1 did not start; see $DATA/$1.log"; exit 1
}

"$BIN/meridian-global" run --store embedded --data-dir "$DATA/global" --admin-token-file "$GLOBAL_TOKEN" \
  --api-addr "$GLOBAL_API" --kds-addr "$KDS" >"$DATA/global.log" 2>&1 &
pids+=($!)
wait_ready global "$GLOBAL_API" "${pids[-1]}"
# Mesh mTLS on the default mesh: the global keeps a builtin root, each zone
# an intermediate, and every proxy gets a certificate with its identity.
ctl apply -f - >/dev/null <<EOF
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
    mode: STRICT
EOF

port=5682
xds=5678
for zone in zone-1 zone-2; do
  # The join command a new operator would paste, plus where this zone keeps
  # its data and serves its API and xDS on this machine.
  join=$(ctl generate zone-join --zone "$zone" --output-dir "$DATA" 2>/dev/null)
  api=127.0.0.1:$port
  # shellcheck disable=SC2086
  "$BIN/"$join --api-addr "$api" --xds-addr "127.0.0.1:$xds" --data-dir "$DATA/$zone" \
    --ingress-address "127.0.0.1:$((port + 10000))" >"$DATA/$zone.log" 2>&1 &
  pids+=($!)
  wait_ready "$zone" "$api" "${pids[-1]}"
  echo "$zone joined with: $join"
  port=$((port + 1))
  xds=$((xds + 1))
done

# The first workload, in zone-1. Its proxies verify the zone's xDS server
# with the zone's CA, and present a dataplane token the global issued: the
# backend's may register only the service backend, the client's only the
# dataplane client-1.
curl -fsS -H "Authorization: Bearer $(cat "$DATA/zone-1/admin-token")" \
  "http://127.0.0.1:5682/xds-ca" >"$DATA/zone-1-xds-ca.pem"
(umask 077
 ctl generate dataplane-token --mesh default --tag kuma.io/service=backend --valid-for 720h \
   >"$DATA/backend.token" 2>/dev/null
 ctl generate dataplane-token --mesh default --name client-1 --valid-for 720h \
   >"$DATA/client-1.token" 2>/dev/null)
cat >"$DATA/backend.yaml" <<EOF
type: Dataplane
mesh: default
name: backend-1
networking:
  address: 127.0.0.1
  inbound:
    - port: {{ port }}
      tags:
        kuma.io/service: backend
        kuma.io/protocol: grpc
EOF
cat >"$DATA/client-1.yaml" <<EOF
type: Dataplane
mesh: default
name: client-1
networking:
  address: 127.0.0.1
  inbound:
    - port: 1
      tags:
        kuma.io/service: client
EOF
dp() { # name extra-args…
  local name=$1; shift
  "$BIN/meridian-dp" run --cp-address https://127.0.0.1:5678 --ca-cert-file "$DATA/zone-1-xds-ca.pem" \
    --dataplane-token-file "$DATA/$name.token" --proxy grpc \
    --grpc-bootstrap-file "$DATA/$name-bootstrap.json" --certificates-dir "$DATA/$name-certs" "$@" >"$DATA/dp-$name.log" 2>&1 &
  pids+=($!)
  wait_file "dp-$name" "$DATA/$name-bootstrap.json" "${pids[-1]}"
}
rm -f "$DATA/backend-bootstrap.json" "$DATA/client-1-bootstrap.json"
dp backend --dataplane-file "$DATA/backend.yaml" --dataplane-var "port=$BACKEND_PORT"
dp client-1 --dataplane-file "$DATA/client-1.yaml"
# The backend is an xDS-enabled gRPC server: its TLS (the mesh certificate
# its agent keeps in backend-certs/) and its traffic permissions come from
# the zone.
GRPC_XDS_BOOTSTRAP="$DATA/backend-bootstrap.json" "$PY" "$APPS/server.py" --xds --name zone-1/backend \
  --port "$BACKEND_PORT" >"$DATA/backend.log" 2>&1 &
pids+=($!)
GRPC_XDS_BOOTSTRAP="$DATA/client-1-bootstrap.json" "$PY" "$APPS/client.py" --target xds:///backend \
  --watch 86400 --interval-ms 500 >"$DATA/client.log" 2>&1 &
pids+=($!)

cat <<MSG

Meridian is running on loopback (logs in $DATA/*.log).
  global API:  http://$GLOBAL_API     KDS: grpcs://$KDS
  zone-1 API:  http://127.0.0.1:5682     xDS (ADS, TLS): 127.0.0.1:5678
  zone-2 API:  http://127.0.0.1:5683     xDS (ADS, TLS): 127.0.0.1:5679
    workload:    backend-1 (an xDS-enabled gRPC server on 127.0.0.1:$BACKEND_PORT)
               and client-1, a proxyless client calling xds:///backend once
               every 500 ms, each beside its meridian-dp (dp-*.log), over
               the mesh's mTLS (certificates in *-certs/)
  API tokens:  the admin token of each control plane is in its data dir:
               $GLOBAL_TOKEN, $DATA/zone-1/admin-token, …
  see:         tail -f $DATA/client.log                       (one JSON line a second)
               Z1="$BIN/meridianctl --api http://127.0.0.1:5682 --token-file $DATA/zone-1/admin-token"
               \$Z1 inspect dataplanes
               \$Z1 inspect dataplane client-1 --type policies
               $BIN/meridianctl --api http://$GLOBAL_API --token-file $GLOBAL_TOKEN inspect zones
               $BIN/meridianctl --api http://$GLOBAL_API --token-file $GLOBAL_TOKEN get audit
  stop:        Ctrl-C

MSG
wait "${pids[0]}"
