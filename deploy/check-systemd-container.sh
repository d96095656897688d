#!/usr/bin/env bash
# Checks the production deployment kit: the systemd units and example
# configs in deploy/systemd/ and the container image in deploy/container/.
# Needs the binaries built (target/debug, or MERIDIAN_BIN=DIR); installs
# systemd (for systemd-analyze) and python3 when they are missing. Takes a
# few seconds; exits non-zero at the first failure.
#
#  1. units: the hardening and layout they promise, their ExecStart flags and
#     the example configs' keys exist (deploy/systemd/check_units.py);
#  2. systemd-analyze verify on each unit, any complaint fails (on a copy
#     whose ExecStart points at the built binaries: verify insists that the
#     binary exists, and the committed units name /usr/local/bin);
#  3. systemd-analyze security --offline: exposure at most 1.5 ("OK");
#  4. sysusers.d and tmpfiles.d files applied to a scratch root;
#  5. the units' command lines with the example configs, started for real
#     in a scratch root: the global, a zone joined with the files
#     `meridianctl generate zone-join` writes where zone.yaml names them, a
#     meridian-dp@web-1 whose dataplane registers; SIGTERM stops each with
#     status 0, the dataplane is deregistered, and nothing was written
#     outside the units' StateDirectory=/RuntimeDirectory=;
#  6. the Containerfile, statically (deploy/container/check_containerfile.py:
#     no engine or base image is reachable where this runs);
#  7. each checker above fails on broken input (mutated copies).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
BIN=${MERIDIAN_BIN:-$REPO/target/debug}
SYSTEMD_DIR=$REPO/deploy/systemd
CONTAINER_DIR=$REPO/deploy/container
# Exposure score x10 that systemd-analyze security may not exceed.
SECURITY_THRESHOLD=15

need=()
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
for b in meridian-global meridian-zone meridian-dp meridianctl; do
  [ -x "$BIN/$b" ] || { echo "FAIL: $BIN/$b is not built (cargo build --bins)"; exit 1; }
done

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
# Fails the check (to stderr: also from inside $(…)), with the processes' logs.
fail() {
  local log
  for log in "$tmp"/*.log; do
    [ -e "$log" ] && { echo "--- $(basename "$log")"; tail -n 15 "$log"; } >&2
  done
  echo "FAIL: $*" >&2; exit 1
}
step() { echo "== $*"; }
# Nothing of the caller's environment reaches the processes (flags > env > file).
while read -r v; do unset "$v"; done < <(compgen -e | grep '^MERIDIAN_' || true)
export RUST_BACKTRACE=0 NO_COLOR=1

UNITS=(meridian-global.service meridian-zone.service meridian-dp@.service)

# A copy of unit $1 in directory $2 whose ExecStart runs the built binary.
runnable_copy() {
  mkdir -p "$2"
  grep -q '^ExecStart=/usr/local/bin/meridian-' "$SYSTEMD_DIR/$1" || fail "$1: ExecStart is not /usr/local/bin/meridian-*"
  sed "s#^ExecStart=/usr/local/bin/#ExecStart=$BIN/#" "$SYSTEMD_DIR/$1" >"$2/$1"
}

# systemd-analyze verify: status 0 and not a word of complaint.
verify_unit() { # dir unit
  local out
  out=$(cd "$1" && systemd-analyze verify "./$2" 2>&1) || { echo "$out"; return 1; }
  [ -z "$out" ] || { echo "$out"; return 1; }
}

# systemd-analyze security --offline: prints the score, fails over the threshold.
security_unit() { # dir unit
  local out rc=0
  out=$(systemd-analyze security --offline=yes --threshold="$SECURITY_THRESHOLD" "$1/$2" 2>&1) || rc=$?
  echo "$out" | grep 'Overall exposure level' | sed 's/^→ *//'
  return "$rc"
}

# ---------------------------------------------------------------------------
step "1. units and example configs (check_units.py)"
python3 "$SYSTEMD_DIR/check_units.py" --bin "$BIN" --dir "$SYSTEMD_DIR" --repo "$REPO"

step "2. systemd-analyze verify ($(systemd-analyze --version | head -n1))"
for u in "${UNITS[@]}"; do
  runnable_copy "$u" "$tmp/units"
  verify_unit "$tmp/units" "$u" || fail "systemd-analyze verify $u"
  echo "$u: verified"
done

step "3. systemd-analyze security --offline (threshold $SECURITY_THRESHOLD/10)"
if systemd-analyze security --help 2>&1 | grep -q -- '--offline'; then
  for u in "${UNITS[@]}"; do
    security_unit "$tmp/units" "$u" || fail "$u: exposure over $SECURITY_THRESHOLD/10"
  done
else
  echo "this systemd-analyze has no security --offline (systemd < 250): skipped"
fi

step "4. sysusers.d and tmpfiles.d on a scratch root"
sys_root=$tmp/sysroot
mkdir -p "$sys_root/etc"
systemd-sysusers --root="$sys_root" "$SYSTEMD_DIR/meridian.sysusers.conf" >/dev/null 2>&1 \
  || fail "systemd-sysusers meridian.sysusers.conf"
grep -q '^meridian:x:[0-9]*:[0-9]*:.*:/var/lib/meridian:/usr/sbin/nologin$' "$sys_root/etc/passwd" \
  || fail "sysusers made no meridian system user: $(cat "$sys_root/etc/passwd")"
grep -q '^meridian:x:' "$sys_root/etc/group" || fail "sysusers made no meridian group"
uid=$(awk -F: '$1 == "meridian" {print $3}' "$sys_root/etc/passwd")
[ "$uid" -lt 1000 ] || fail "meridian has uid $uid, not a system uid"
# Not root: the directories are made, but chown to root is refused; that and
# nothing else is allowed then.
tmpfiles_rc=0
tmpfiles_out=$(systemd-tmpfiles --root="$sys_root" --create "$SYSTEMD_DIR/meridian.tmpfiles.conf" 2>&1) || tmpfiles_rc=$?
if [ "$tmpfiles_rc" -ne 0 ]; then
  if [ "$(id -u)" -eq 0 ] || grep -qv 'fchownat() of .* failed: Operation not permitted' <<<"$tmpfiles_out"; then
    echo "$tmpfiles_out"; fail "systemd-tmpfiles meridian.tmpfiles.conf"
  fi
fi
for d in etc/meridian etc/meridian/dp; do
  [ "$(stat -c %a "$sys_root/$d")" = 755 ] || fail "tmpfiles: /$d is not 0755"
done
echo "meridian system user (uid $uid) and group; /etc/meridian and /etc/meridian/dp created"

# ---------------------------------------------------------------------------
step "5. the units' command lines with the example configs, in a scratch root"
root=$tmp/root
mkdir -p "$root/etc/meridian/dp"
# Absolute paths of the deployment, moved into the scratch root.
sandbox() {
  sed -e "s#/etc/meridian/#$root/etc/meridian/#g" -e "s#/var/lib/meridian/#$root/var/lib/meridian/#g" \
    -e "s#/run/meridian-dp/#$root/run/meridian-dp/#g"
}
unit_value() { sed -n "s/^$2=//p" "$SYSTEMD_DIR/$1" | tail -n1; }
# The directories systemd makes for unit $1 (instance $2), with their modes.
make_unit_dirs() {
  local d
  d=$(unit_value "$1" StateDirectory)
  [ -z "$d" ] || install -d -m "$(unit_value "$1" StateDirectoryMode)" "$root/var/lib/$d"
  d=$(unit_value "$1" RuntimeDirectory)
  [ -z "$d" ] || install -d -m "$(unit_value "$1" RuntimeDirectoryMode)" "$root/run/${d//%i/$2}"
}
# Starts unit $1 (instance $2) as systemd would run its ExecStart (cwd /,
# its UMask), with extra environment $3…, logging to $tmp/$1.log.
start_unit() {
  local unit=$1 inst=$2 line; shift 2
  line=$(unit_value "$unit" ExecStart)
  line=${line//%i/$inst}
  line=${line//\/usr\/local\/bin\//$BIN/}
  line=$(printf '%s\n' "$line" | sandbox)
  local -a cmd
  read -ra cmd <<<"$line"
  make_unit_dirs "$unit" "$inst"
  (umask "$(unit_value "$unit" UMask)"; cd "$root"; exec env "$@" "${cmd[@]}") >"$tmp/$unit.log" 2>&1 &
  pids+=($!)
}
# Waits (20 s at most) for regex $2 in the log of unit $1, whose process is
# $3; prints the last match's port.
wait_port() {
  local m
  for _ in $(seq 1 200); do
    m=$(grep -oE "$2" "$tmp/$1.log" | tail -n1 || true)
    if [ -n "$m" ]; then echo "${m##*:}"; return 0; fi
    kill -0 "$3" 2>/dev/null || fail "$1 exited"
    sleep 0.1
  done
  fail "$1: no '$2' in its log within 20 s"
}
# Waits (20 s at most) until the command succeeds while process $2 runs.
wait_for() { # what pid command…
  local what=$1 pid=$2; shift 2
  for _ in $(seq 1 200); do
    "$@" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || fail "$what: the process exited"
    sleep 0.1
  done
  fail "$what: not within 20 s"
}
# Stops process $2 of unit $1 with SIGTERM, within its TimeoutStopSec=; it
# must exit with status 0.
stop_unit() {
  local limit rc=0
  limit=$(unit_value "$1" TimeoutStopSec); limit=${limit%s}
  kill -TERM "$2"
  for _ in $(seq 1 $((limit * 10))); do kill -0 "$2" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$2" 2>/dev/null && fail "$1 still running ${limit}s after SIGTERM"
  wait "$2" || rc=$?
  [ "$rc" -eq 0 ] || fail "$1 exited with status $rc on SIGTERM"
  echo "$1: SIGTERM, exited 0"
}
yaml_value() { sed -n "s/^$2: *//p" "$SYSTEMD_DIR/$1" | head -n1; }

sandbox <"$SYSTEMD_DIR/global.yaml" >"$root/etc/meridian/global.yaml"
sandbox <"$SYSTEMD_DIR/zone.yaml" >"$root/etc/meridian/zone.yaml"
sandbox <"$SYSTEMD_DIR/dp-example.yaml" >"$root/etc/meridian/dp/web-1.yaml"

# The global: the memory store instead of etcd, ephemeral ports (the rest as configured).
start_unit meridian-global.service "" MERIDIAN_STORE=memory MERIDIAN_API_ADDR=127.0.0.1:0 MERIDIAN_KDS_ADDR=127.0.0.1:0
global_pid=${pids[-1]}
gapi=$(wait_port meridian-global.service 'API listening api_addr=[0-9.]+:[0-9]+' "$global_pid")
gkds=$(wait_port meridian-global.service 'KDS listening addr=[0-9.]+:[0-9]+' "$global_pid")
gtoken=$root/var/lib/meridian/global/admin-token
wait_for "the global's admin token" "$global_pid" test -s "$gtoken"
[ "$(stat -c %a "$gtoken")" = 600 ] || fail "$gtoken has mode $(stat -c %a "$gtoken"), not 0600"
echo "global: API :$gapi, KDS :$gkds, admin token in its StateDirectory (0600)"
ctl_global() { "$BIN/meridianctl" --api "http://127.0.0.1:$gapi" --token-file "$gtoken" "$@"; }

# The zone joins with the files zone-join writes into /etc/meridian.
zone=$(yaml_value zone.yaml zone)
join=$(ctl_global generate zone-join --zone "$zone" --output-dir "$root/etc/meridian" 2>>"$tmp/meridianctl.log")
advertised=$(yaml_value global.yaml kds-advertised-address)
grep -q -- "--global-address $advertised " <<<"$join" \
  || fail "zone-join hands out '$join', not global.yaml's kds-advertised-address $advertised"
grep -qx -- "  - $advertised" "$SYSTEMD_DIR/zone.yaml" || fail "zone.yaml's global-address is not $advertised"
start_unit meridian-zone.service "" MERIDIAN_GLOBAL_ADDRESS="grpcs://127.0.0.1:$gkds" \
  MERIDIAN_API_ADDR=127.0.0.1:0 MERIDIAN_XDS_ADDR=127.0.0.1:0
zone_pid=${pids[-1]}
zapi=$(wait_port meridian-zone.service 'API listening api_addr=[0-9.]+:[0-9]+' "$zone_pid")
zxds=$(wait_port meridian-zone.service 'xDS \(ADS, TLS\) listening bound=[0-9.]+:[0-9]+' "$zone_pid")
ztoken=$root/var/lib/meridian/zone/admin-token
zone_online() { ctl_global inspect zones | awk -v z="$zone" '$1 == z && $2 == "true"' | grep -q .; }
wait_for "zone $zone online at the global" "$zone_pid" zone_online
echo "zone $zone: API :$zapi, xDS :$zxds, joined the global with /etc/meridian/$(basename "$(yaml_value zone.yaml token-file)")"

# meridian-dp@web-1 with the zone's xDS CA and a token, where web-1.yaml names them.
python3 - "http://127.0.0.1:$zapi/xds-ca" "$ztoken" >"$root/etc/meridian/xds-ca.pem" <<'PY'
import sys, urllib.request
req = urllib.request.Request(sys.argv[1], headers={"Authorization": "Bearer " + open(sys.argv[2]).read().strip()})
sys.stdout.write(urllib.request.urlopen(req, timeout=10).read().decode())
PY
[ "$(yaml_value dp-example.yaml ca-cert-file)" = /etc/meridian/xds-ca.pem ] || fail "dp-example.yaml: ca-cert-file moved; update this check"
cmp -s "$root/etc/meridian/xds-ca.pem" "$root/var/lib/meridian/zone/xds-ca.pem" \
  || fail "GET /xds-ca differs from the zone's /var/lib/meridian/zone/xds-ca.pem"
dp_token=$(yaml_value dp-example.yaml dataplane-token-file | sandbox)
(umask 027; ctl_global generate dataplane-token --mesh default --tag kuma.io/service=web --valid-for 1h \
  >"$dp_token" 2>>"$tmp/meridianctl.log")
start_unit 'meridian-dp@.service' web-1 MERIDIAN_CP_ADDRESS="https://127.0.0.1:$zxds"
dp_pid=${pids[-1]}
ctl_zone() { "$BIN/meridianctl" --api "http://127.0.0.1:$zapi" --token-file "$ztoken" "$@"; }
registered() { ctl_zone inspect dataplanes -m default | awk '$1 == "default" {print $2}' | grep -qx web-1; }
wait_for "dataplane web-1 registered at the zone" "$dp_pid" registered
wait_for "the gRPC bootstrap in the RuntimeDirectory" "$dp_pid" test -s "$root/run/meridian-dp/web-1/grpc-bootstrap.json"
echo "meridian-dp@web-1: registered web-1; bootstrap in /run/meridian-dp/web-1"

stop_unit 'meridian-dp@.service' "$dp_pid"
registered && fail "web-1 is still registered after its agent stopped"
stop_unit meridian-zone.service "$zone_pid"
stop_unit meridian-global.service "$global_pid"
pids=()

# ProtectSystem=strict: only the StateDirectory/RuntimeDirectory are writable.
stray=$(cd "$root" && find . -mindepth 1 \
  -not -path ./etc -not -path './etc/meridian*' -not -path ./var -not -path ./var/lib \
  -not -path ./var/lib/meridian -not -path './var/lib/meridian/global*' -not -path './var/lib/meridian/zone*' \
  -not -path ./run -not -path ./run/meridian-dp -not -path './run/meridian-dp/web-1*')
[ -z "$stray" ] || fail "written outside the units' directories (read-only under ProtectSystem=strict): $stray"
echo "nothing written outside /var/lib/meridian/{global,zone} and /run/meridian-dp/web-1"
rm -f "$tmp"/*.log

# ---------------------------------------------------------------------------
step "6. Containerfile (static: no container engine or base image here)"
python3 "$CONTAINER_DIR/check_containerfile.py" --repo "$REPO" "$CONTAINER_DIR/Containerfile"

# ---------------------------------------------------------------------------
step "7. the checks fail on broken input"
# Expects checker command "$@" to fail on a mutated file, saying $1.
expect_fail() { # what expected-message command…
  local what=$1 msg=$2 out rc=0; shift 2
  out=$("$@" 2>&1) || rc=$?
  [ "$rc" -ne 0 ] || fail "mutation '$what' passed the check"
  grep -qF -- "$msg" <<<"$out" || { echo "$out"; fail "mutation '$what' failed, but not saying '$msg'"; }
  echo "caught: $what"
}
mut=$tmp/mut
# Containerfile mutations: sed expression, the message expected.
cf_mutation() { # what sed-expr message
  mkdir -p "$mut/cf"
  cp "$CONTAINER_DIR/containerignore" "$CONTAINER_DIR/Containerfile.dockerignore" "$mut/cf/"
  sed -e "$2" "$CONTAINER_DIR/Containerfile" >"$mut/cf/Containerfile"
  cmp -s "$mut/cf/Containerfile" "$CONTAINER_DIR/Containerfile" && fail "mutation '$1' changed nothing"
  expect_fail "Containerfile: $1" "$3" python3 "$CONTAINER_DIR/check_containerfile.py" --repo "$REPO" "$mut/cf/Containerfile"
}
cf_mutation "USER root" 's/^USER .*/USER root/' "not numeric"
cf_mutation "USER 0" 's/^USER .*/USER 0:0/' "root"
cf_mutation "no USER" '/^USER /d' "sets no USER"
cf_mutation "single stage" '/^FROM docker.io/,/^RUN cargo/{/^FROM/d}' "names no earlier stage"
cf_mutation "unnamed stage" 's/^\(FROM gcr.io[^ ]*\) AS runtime/\1/' "a stage without a name"
cf_mutation "base :latest" 's#^FROM gcr.io/distroless/cc-debian12:nonroot#FROM gcr.io/distroless/cc-debian12:latest#' ":latest"
cf_mutation "base untagged" 's#^FROM docker.io/library/rust:1-bookworm#FROM docker.io/library/rust#' "not pinned"
cf_mutation "ADD of a URL" 's#^WORKDIR /src#ADD https://example.com/x.tar.gz /x\nWORKDIR /src#' "ADD of a URL"
cf_mutation "shell-form ENTRYPOINT" 's#^ENTRYPOINT .*#ENTRYPOINT /usr/local/bin/meridian-global run#' "not exec form"
cf_mutation "a binary missing" 's# /src/target/release/meridianctl##' "missing ['meridianctl']"
cf_mutation "an extra binary" 's#/src/target/release/meridianctl #/src/target/release/meridianctl /src/target/release/meridian-bench #' "unexpected ['meridian-bench']"
cf_mutation "debug build copied" 's#/src/target/release/meridian-dp #/src/target/debug/meridian-dp #' "not a release build"
cf_mutation "EXPOSE short of xDS" 's/^EXPOSE .*/EXPOSE 5681 5685/' "expected the default ports"
cf_mutation "no --locked" 's/--release --locked/--release/' "without --locked"
cf_mutation "RUN in distroless" 's#^WORKDIR /var/lib/meridian#RUN mkdir -p /var/lib/meridian\nWORKDIR /var/lib/meridian#' "no shell"
printf 'fuzz/\n' >"$mut/ignore"
expect_fail "ignore file keeps target/" "target is not left out" \
  python3 "$CONTAINER_DIR/check_containerfile.py" --repo "$REPO" --ignorefile "$mut/ignore" "$CONTAINER_DIR/Containerfile"

# Unit and config mutations, through check_units.py, verify and security.
unit_mutation() { # what file sed-expr message
  rm -rf "$mut/sd"; cp -r "$SYSTEMD_DIR" "$mut/sd"
  sed -i -e "$3" "$mut/sd/$2"
  cmp -s "$mut/sd/$2" "$SYSTEMD_DIR/$2" && fail "mutation '$1' changed nothing"
  expect_fail "$2: $1" "$4" python3 "$mut/sd/check_units.py" --bin "$BIN" --dir "$mut/sd" --repo "$REPO"
}
unit_mutation "no ProtectSystem" meridian-zone.service '/^ProtectSystem=/d' "missing ProtectSystem=strict"
unit_mutation "capabilities kept" meridian-global.service 's/^CapabilityBoundingSet=$/CapabilityBoundingSet=CAP_NET_ADMIN/' "missing CapabilityBoundingSet="
unit_mutation "no etcd ordering" meridian-global.service 's/ etcd.service//' "After= does not name etcd.service"
unit_mutation "data dir elsewhere" meridian-global.service 's#--data-dir /var/lib/meridian/global#--data-dir /srv/meridian#' "does not pass --data-dir"
unit_mutation "unknown flag" 'meridian-dp@.service' 's#^ExecStart=.*#& --no-such-flag#' "--no-such-flag, not a flag"
unit_mutation "unknown config key" zone.yaml 's/^dp-auth: token/dp-authentication: token/' "dp-authentication is not a flag"
unit_mutation "commented unknown key" global.yaml 's/^# kds-tls-key:/# kds-tls-private-key:/' "kds-tls-private-key is not a flag"
mkdir -p "$mut/verify"
sed 's/^ProtectSystem=strict/ProtectSytem=strict/' "$tmp/units/meridian-global.service" >"$mut/verify/meridian-global.service"
expect_fail "verify: a misspelt directive" "Unknown key" verify_unit "$mut/verify" meridian-global.service
sed "s#^ExecStart=$BIN/#ExecStart=/usr/local/bin/#" "$tmp/units/meridian-zone.service" >"$mut/verify/meridian-zone.service"
if [ ! -e /usr/local/bin/meridian-zone ]; then
  expect_fail "verify: the binary missing" "is not executable" verify_unit "$mut/verify" meridian-zone.service
fi
grep -v -E '^(Protect|Private|Restrict|SystemCall|Capability|NoNewPrivileges|MemoryDeny|LockPersonality|User=|Group=)' \
  "$tmp/units/meridian-zone.service" >"$mut/verify/meridian-zone.service"
if systemd-analyze security --help 2>&1 | grep -q -- '--offline'; then
  expect_fail "security: the sandbox removed" "Overall exposure level" security_unit "$mut/verify" meridian-zone.service
fi

echo "deploy/check-systemd-container.sh: all checks passed"
