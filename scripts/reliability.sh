#!/usr/bin/env bash
# Runs the reliability scenarios of RELIABILITY.md at their full size (the
# test command runs the same tests CI-sized): 60 s partitions, a rolling
# restart under 10 zones, then the soak (MINUTES, default 60) with 10
# zones and 1,000 churning dataplanes. Prints every RELIABILITY line and
# the soak's table.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes="${MINUTES:-60}"
cargo build --workspace --bins
cargo build --release -p meridian-bench -p meridian-global -p meridian-zone --bins

run() {
  echo "== $*"
  "$@" 2>&1 | grep -E "RELIABILITY|test result|panicked" || true
}

run env MERIDIAN_PARTITION_SECS=60 cargo test -p meridian-e2e --test partition -- --nocapture --test-threads=1
run env MERIDIAN_HA_ZONES=10 cargo test -p meridian-e2e --test ha -- --nocapture --test-threads=1
run cargo test -p meridian-e2e --test zone_identity --test hostile -- --nocapture --test-threads=1

echo "== soak: ${minutes} min, 10 zones, 1,000 dataplanes"
target/release/meridian-bench soak --minutes "$minutes" --zones 10 --dataplanes 1000
