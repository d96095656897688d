#!/usr/bin/env bash
# Runs Meridian locally on loopback: a global control plane on the embedded
# store and two zones joined to it with the command `meridianctl generate
# zone-join` prints. Data lives in ./meridian-data (override with
# MERIDIAN_LOCAL_DATA). Ctrl-C stops everything cleanly.
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
cargo build --bins -q
BIN=$PWD/target/debug
DATA=$(mkdir -p "${MERIDIAN_LOCAL_DATA:-./meridian-data}" && cd "${MERIDIAN_LOCAL_DATA:-./meridian-data}" && pwd)
GLOBAL_API=127.0.0.1:5681
KDS=127.0.0.1:5685

pids=()
cleanup() {
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
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

"$BIN/meridian-global" run --store embedded --data-dir "$DATA/global" \
  --api-addr "$GLOBAL_API" --kds-addr "$KDS" >"$DATA/global.log" 2>&1 &
pids+=($!)
wait_ready global "$GLOBAL_API" "${pids[-1]}"

port=5682
xds=5678
for zone in zone-1 zone-2; do
  # The join command a new operator would paste, plus where this zone keeps
  # its data and serves its API on this machine.
  join=$("$BIN/meridianctl" --api "http://$GLOBAL_API" generate zone-join --zone "$zone" \
    --output-dir "$DATA" 2>/dev/null)
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

cat <<MSG

Meridian is running on loopback (logs in $DATA/*.log).
  global API:  http://$GLOBAL_API     KDS: grpcs://$KDS
  zone-1 API:  http://127.0.0.1:5682     xDS (ADS): 127.0.0.1:5678
  zone-2 API:  http://127.0.0.1:5683     xDS (ADS): 127.0.0.1:5679
  try:         $BIN/meridianctl --api http://$GLOBAL_API inspect zones
               $BIN/meridianctl --api http://$GLOBAL_API get meshtimeouts -m default
               $BIN/meridianctl --api http://127.0.0.1:5682 get meshtimeouts -m default
  stop:        Ctrl-C

MSG
wait "${pids[0]}"
