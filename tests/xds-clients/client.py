#!/usr/bin/env python3
"""A gRPC client (grpcio) for Meridian's end-to-end tests.

Calls `/meridian.test.Echo/Call` (served by server.py) on a target, either a
plain `host:port` or `xds:///SERVICE`. For xDS targets the bootstrap comes from
the environment, `GRPC_XDS_BOOTSTRAP_CONFIG` (JSON text) or `GRPC_XDS_BOOTSTRAP`
(a file); grpcio's own xDS client does the rest.

Count mode (default) makes `--count` calls and prints ONE JSON line:

    {"ok": {"zone-1/backend-v1": 812, ...}, "errors": {"DEADLINE_EXCEEDED": 3},
     "total": 1000, "attempts": {"1": 990, "2": 10},
     "error_samples": {"DEADLINE_EXCEEDED": "Deadline Exceeded"}, "elapsed_ms": 1234}

`attempts` counts, over successful replies, the attempt number the answering
server saw for that request id (above 1 only when the client retried).

Watch mode (`--watch SECONDS`) keeps calling for that long and prints one such
line per second for the calls of that second (with `"t": <second>`), then a last
line with `"summary": true` covering the whole run.

An xDS target gets xDS channel credentials (gRFC A29): mesh mTLS where the
zone's clusters ask for it, plaintext elsewhere. A plain target is plaintext.

Every call carries the metadata `meridian-request-id: <prefix><index>` (the
prefix is random unless `--request-id-prefix` is given), the `--metadata`
pairs, and a deadline.

Exit status: 0 when the calls were made (whatever their outcome), 2 on bad
arguments or a missing/invalid bootstrap, 3 when the channel did not become
ready within `--ready-timeout-ms` (the message says why).
"""

import argparse
import collections
import json
import os
import sys
import threading
import time
import uuid
from concurrent import futures

try:
    import grpc
    import grpc.experimental  # insecure_channel_credentials, the xDS fallback
except ImportError as e:  # pragma: no cover - setup error
    sys.stderr.write(f"client.py: {e}; run scripts/test-all.sh to install the Python venv (target/xds-venv)\n")
    sys.exit(2)

METHOD = "/meridian.test.Echo/Call"
REQUEST_ID = "meridian-request-id"


def fail(code, message):
    sys.stderr.write(f"client.py: {message}\n")
    print(json.dumps({"setup_error": message}), flush=True)
    sys.exit(code)


def check_bootstrap(target):
    """An xDS target needs a bootstrap; say clearly what is missing or broken."""
    if not target.startswith("xds:"):
        return None
    text = os.environ.get("GRPC_XDS_BOOTSTRAP_CONFIG")
    source = "GRPC_XDS_BOOTSTRAP_CONFIG"
    if text is None:
        path = os.environ.get("GRPC_XDS_BOOTSTRAP")
        if path is None:
            fail(2, f"target {target} needs an xDS bootstrap: set GRPC_XDS_BOOTSTRAP_CONFIG (JSON) or GRPC_XDS_BOOTSTRAP (file)")
        source = f"GRPC_XDS_BOOTSTRAP={path}"
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            fail(2, f"cannot read the xDS bootstrap {path}: {e}")
    try:
        bootstrap = json.loads(text)
    except ValueError as e:
        fail(2, f"the xDS bootstrap in {source} is not JSON: {e}")
    servers = bootstrap.get("xds_servers") if isinstance(bootstrap, dict) else None
    if not servers or not isinstance(servers, list) or not servers[0].get("server_uri"):
        fail(2, f"the xDS bootstrap in {source} has no xds_servers[0].server_uri")
    node = bootstrap.get("node") or {}
    if not node.get("id"):
        fail(2, f"the xDS bootstrap in {source} has no node.id (Meridian expects <mesh>.<dataplane name>)")
    return bootstrap


def describe(target, bootstrap):
    if bootstrap is None:
        return target
    return f"{target} (xDS server {bootstrap['xds_servers'][0]['server_uri']}, node {bootstrap['node']['id']})"


class Tally:
    def __init__(self):
        self.ok = collections.Counter()
        self.errors = collections.Counter()
        self.attempts = collections.Counter()
        self.samples = {}

    def add_ok(self, server, attempt):
        self.ok[server] += 1
        self.attempts[str(attempt)] += 1

    def add_error(self, code, details):
        self.errors[code] += 1
        self.samples.setdefault(code, details)

    def merge(self, other):
        self.ok.update(other.ok)
        self.errors.update(other.errors)
        self.attempts.update(other.attempts)
        for k, v in other.samples.items():
            self.samples.setdefault(k, v)

    def total(self):
        return sum(self.ok.values()) + sum(self.errors.values())

    def to_json(self, **extra):
        out = {
            "ok": dict(sorted(self.ok.items())),
            "errors": dict(sorted(self.errors.items())),
            "total": self.total(),
            "attempts": dict(sorted(self.attempts.items(), key=lambda kv: int(kv[0]))),
            "error_samples": dict(sorted(self.samples.items())),
        }
        out.update(extra)
        return json.dumps(out)


EXTRA_METADATA = ()


def one_call(call, index, prefix, deadline_s):
    """One call; returns ("ok", server, attempt) or ("error", code, details)."""
    request_id = f"{prefix}{index}"
    try:
        reply = call(
            request_id.encode("utf-8"),
            timeout=deadline_s,
            metadata=((REQUEST_ID, request_id),) + EXTRA_METADATA,
        )
    except grpc.RpcError as e:
        code = e.code().name if e.code() is not None else "UNKNOWN"
        return ("error", code, e.details() or "")
    try:
        body = json.loads(reply.decode("utf-8"))
        return ("ok", str(body["server"]), body.get("attempt", 1))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return ("error", "BAD_REPLY", repr(reply[:200]))


def record(tally, outcome):
    kind, a, b = outcome
    if kind == "ok":
        tally.add_ok(a, b)
    else:
        tally.add_error(a, b)


def wait_ready(channel, target, bootstrap, timeout_s, call, deadline_s):
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
        return
    except grpc.FutureTimeoutError:
        pass
    # Not ready: one call tells what the channel knows (resolver or connection error).
    why = "no error reported"
    try:
        call(b"probe", timeout=min(deadline_s, 2.0))
        return  # ready after all
    except grpc.RpcError as e:
        why = f"{e.code().name if e.code() else 'UNKNOWN'}: {e.details()}"
    fail(3, f"channel to {describe(target, bootstrap)} not ready after {timeout_s:.1f}s; last call: {why}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True, help="host:port or xds:///SERVICE")
    ap.add_argument("-n", "--count", type=int, default=100, help="calls to make (count mode)")
    ap.add_argument("--deadline-ms", type=int, default=5000, help="deadline of each call")
    ap.add_argument("--request-id-prefix", default=None, help="prefix of the meridian-request-id metadata")
    ap.add_argument("--interval-ms", type=int, default=0, help="pause between calls (per worker)")
    ap.add_argument("--concurrency", type=int, default=1, help="calls in flight at once")
    ap.add_argument("--watch", type=float, default=None, metavar="SECONDS", help="call for this long, one JSON line per second")
    ap.add_argument(
        "--service-config", default=None, metavar="JSON",
        help="channel service config (e.g. a client-side retryPolicy), for targets without xDS",
    )
    ap.add_argument(
        "--ready-timeout-ms", type=int, default=15000,
        help="wait this long for the channel to be ready before calling; 0: do not wait",
    )
    ap.add_argument(
        "--metadata", action="append", default=[], metavar="KEY=VALUE",
        help="metadata sent with every call (repeatable), e.g. a key a ring hash hashes",
    )
    args = ap.parse_args()
    global EXTRA_METADATA
    pairs = []
    for item in args.metadata:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(2, f"--metadata {item!r}: expected KEY=VALUE")
        pairs.append((key.lower(), value))
    EXTRA_METADATA = tuple(pairs)
    if args.count < 0 or args.deadline_ms <= 0 or args.concurrency < 1 or args.interval_ms < 0:
        fail(2, "--count, --interval-ms must be >= 0; --deadline-ms, --concurrency must be > 0")

    bootstrap = check_bootstrap(args.target)
    prefix = args.request_id_prefix if args.request_id_prefix is not None else uuid.uuid4().hex[:12] + "-"
    deadline_s = args.deadline_ms / 1000.0
    interval_s = args.interval_ms / 1000.0

    options = []
    if args.service_config is not None:
        try:
            json.loads(args.service_config)
        except ValueError as e:
            fail(2, f"--service-config is not JSON: {e}")
        options.append(("grpc.service_config", args.service_config))
    try:
        if args.target.startswith("xds:"):
            # xDS credentials: the mesh's mTLS when the cluster carries it
            # (gRFC A29), plaintext when it does not.
            creds = grpc.xds_channel_credentials(grpc.experimental.insecure_channel_credentials())
            channel = grpc.secure_channel(args.target, creds, options=options)
        else:
            channel = grpc.insecure_channel(args.target, options=options)
    except Exception as e:  # grpcio raises plain exceptions for bad targets
        fail(2, f"cannot create a channel to {args.target}: {e}")
    call = channel.unary_unary(METHOD)  # no (de)serializers: raw bytes
    if args.ready_timeout_ms > 0:
        wait_ready(channel, args.target, bootstrap, args.ready_timeout_ms / 1000.0, call, deadline_s)

    lock = threading.Lock()
    start = time.monotonic()
    if args.watch is None:
        tally = Tally()
        counter = iter(range(args.count))

        def worker():
            while True:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                outcome = one_call(call, index, prefix, deadline_s)
                with lock:
                    record(tally, outcome)
                if interval_s:
                    time.sleep(interval_s)

        run_workers(worker, args.concurrency)
        print(tally.to_json(elapsed_ms=int((time.monotonic() - start) * 1000)), flush=True)
    else:
        watch(args, call, prefix, deadline_s, interval_s, start)
    channel.close()
    return 0


def run_workers(worker, n):
    if n == 1:
        worker()
        return
    with futures.ThreadPoolExecutor(max_workers=n) as pool:
        for f in [pool.submit(worker) for _ in range(n)]:
            f.result()


def watch(args, call, prefix, deadline_s, interval_s, start):
    """Calls until --watch seconds have passed; one line per elapsed second."""
    lock = threading.Lock()
    window = [Tally()]
    overall = Tally()
    end = start + args.watch
    index = iter(range(1 << 62))
    done = threading.Event()

    def worker():
        while not done.is_set() and time.monotonic() < end:
            with lock:
                i = next(index)
            outcome = one_call(call, i, prefix, deadline_s)
            with lock:  # counted in the second the call ended
                record(window[0], outcome)
            if interval_s:
                time.sleep(interval_s)

    pool = futures.ThreadPoolExecutor(max_workers=args.concurrency)
    running = [pool.submit(worker) for _ in range(args.concurrency)]
    second = 0
    while True:
        second += 1
        next_tick = start + second
        time.sleep(max(0.0, min(next_tick, end) - time.monotonic()))
        with lock:
            finished, window[0] = window[0], Tally()
            overall.merge(finished)
        print(finished.to_json(t=second), flush=True)
        if time.monotonic() >= end:
            break
    done.set()
    for f in running:
        f.result()
    pool.shutdown()
    # Calls that were in flight at the last tick.
    overall.merge(window[0])
    print(overall.to_json(summary=True, elapsed_ms=int((time.monotonic() - start) * 1000)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
