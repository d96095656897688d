#!/usr/bin/env bash
# Runs Meridian locally on loopback: a global control plane on the embedded
# store (data in ./meridian-data/global), with its API on 127.0.0.1:5681.
# Ctrl-C stops everything.
#
# Zones joining the global need KDS, which is not built yet; until then a
# standalone zone can be started by hand (see README).
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build --bins -q
BIN=target/debug
DATA=${MERIDIAN_LOCAL_DATA:-./meridian-data}
API_PORT=${MERIDIAN_LOCAL_API_PORT:-5681}
mkdir -p "$DATA"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped"
}
trap cleanup EXIT INT TERM

"$BIN/meridian-global" run --store embedded --data-dir "$DATA/global" \
  --api-addr "127.0.0.1:$API_PORT" --kds-addr "127.0.0.1:5685" &
pids+=($!)

for _ in $(seq 1 300); do
  if curl -fsS "http://127.0.0.1:$API_PORT/ready" >/dev/null 2>&1; then break; fi
  if ! kill -0 "${pids[0]}" 2>/dev/null; then echo "meridian-global exited"; exit 1; fi
  sleep 0.1
done

cat <<MSG

Meridian global is ready.
  API:        http://127.0.0.1:$API_PORT
  try:        $BIN/meridianctl --api http://127.0.0.1:$API_PORT get meshes
              $BIN/meridianctl --api http://127.0.0.1:$API_PORT get meshtimeouts -m default
  stop:       Ctrl-C

MSG
wait "${pids[0]}"
