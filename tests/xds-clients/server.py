#!/usr/bin/env python3
"""A gRPC test backend for Meridian's end-to-end tests.

Serves one unary method, `/meridian.test.Echo/Call`, on raw bytes (no generated
code), plus the standard `grpc.health.v1.Health` service. Every reply is a JSON
object naming this server, so a client can count which backend answered:

    {"server": "zone-1/backend-v1", "attempt": 1, "request_id": "ab12-7",
     "request": "<request body as text>", "headers": {"k": "v", ...}}

Failure injection, for retry and timeout tests:

  --fail-first N   calls carrying the metadata `meridian-request-id` fail with
                   --fail-code (UNAVAILABLE by default) while this server has
                   seen fewer than N+1 attempts of that id: attempts 1..N fail,
                   attempt N+1 succeeds. A client that retries the same request
                   (gRPC retries keep the metadata) gets through; one that does
                   not sees the error. Calls without the metadata: the first N
                   calls to this server fail.
  --delay-ms D     sleep D ms before replying (deadline / timeout tests).

xDS-enabled server (gRFC A36):

  --xds            take the server's configuration from xDS: the bootstrap comes
                   from GRPC_XDS_BOOTSTRAP_CONFIG (JSON text) or GRPC_XDS_BOOTSTRAP
                   (a file) and must carry `server_listener_resource_name_template`.
                   The server asks for the Listener named after `--host:--port`
                   and serves only once it has it (until then connections are
                   refused); RBAC filters in it (MeshTrafficPermission) refuse
                   RPCs with PERMISSION_DENIED. Credentials: xDS server
                   credentials with plaintext fallback. Needs a fixed `--port`
                   (gRPC's xDS servers do not take port 0).

Every reply also names the caller as TLS proved it (`"peer": {"transport",
"identities"}`: the client certificate's subject alternative names under
mesh mTLS), and the first call of each identity prints `PEER <SANs>`.

Prints `READY <port>` on stdout once started (with `--port 0` the port is the
one the kernel chose; with `--xds` serving still waits for the Listener), then
runs until killed.
"""

import argparse
import collections
import json
import os
import signal
import sys
import threading
import time
from concurrent import futures

try:
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
except ImportError as e:  # pragma: no cover - setup error
    sys.stderr.write(
        f"server.py: {e}; run scripts/test-all.sh to install the Python venv "
        "(target/xds-venv) with grpcio and grpcio-health-checking\n"
    )
    sys.exit(2)

METHOD = "/meridian.test.Echo/Call"
SERVICE = "meridian.test.Echo"
REQUEST_ID = "meridian-request-id"


class Echo(grpc.GenericRpcHandler):
    def __init__(self, name, fail_first, fail_code, delay_ms):
        self.name = name
        self.fail_first = fail_first
        self.fail_code = fail_code
        self.delay_ms = delay_ms
        self.lock = threading.Lock()
        self.attempts = collections.Counter()  # request id -> attempts seen
        self.anonymous = 0  # calls without a request id
        self.peers = set()  # client identities seen (printed once each)
        self.handler = grpc.unary_unary_rpc_method_handler(self.call)

    def service(self, handler_call_details):
        if handler_call_details.method == METHOD:
            return self.handler
        return None

    def call(self, request, context):
        headers = {}
        for key, value in context.invocation_metadata():
            if not key.endswith("-bin"):
                headers[key] = value
        request_id = headers.get(REQUEST_ID)
        with self.lock:
            if request_id is None:
                self.anonymous += 1
                attempt = self.anonymous
            else:
                self.attempts[request_id] += 1
                attempt = self.attempts[request_id]
        if attempt <= self.fail_first:
            context.abort(
                self.fail_code,
                f"{self.name}: injected failure, attempt {attempt} of request {request_id}",
            )
        if self.delay_ms > 0:
            time.sleep(self.delay_ms / 1000.0)
        peer = peer_of(context)
        with self.lock:
            if peer["identities"] and tuple(peer["identities"]) not in self.peers:
                self.peers.add(tuple(peer["identities"]))
                print("PEER " + " ".join(peer["identities"]), flush=True)
        reply = {
            "server": self.name,
            "attempt": attempt,
            "request_id": request_id,
            "request": request.decode("utf-8", errors="replace"),
            "headers": headers,
            "peer": peer,
        }
        return json.dumps(reply).encode("utf-8")


def peer_of(context):
    """The caller as TLS proved it: the transport's security type and the
    subject alternative names of the client certificate (mesh mTLS: its
    spiffe:// and kuma:// URIs); plaintext callers have none."""
    auth = context.auth_context() or {}
    decode = lambda vs: [v.decode("utf-8", errors="replace") for v in vs]
    return {
        "transport": "".join(decode(auth.get("transport_security_type", []))) or "insecure",
        "identities": sorted(decode(auth.get("x509_subject_alternative_name", []))),
    }


def status_code(name):
    try:
        return grpc.StatusCode[name.upper()]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"unknown gRPC status code {name!r}; one of "
            + ", ".join(c.name for c in grpc.StatusCode)
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0, help="port to listen on (0: any free port)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on")
    ap.add_argument("--name", required=True, help="identity returned in every reply, e.g. zone-1/backend-v1")
    ap.add_argument("--fail-first", type=int, default=0, metavar="N", help="fail attempts 1..N of each request id")
    ap.add_argument("--fail-code", type=status_code, default=grpc.StatusCode.UNAVAILABLE, help="status of injected failures")
    ap.add_argument("--delay-ms", type=int, default=0, help="sleep before replying")
    ap.add_argument("--workers", type=int, default=64, help="handler threads")
    ap.add_argument("--xds", action="store_true", help="an xDS-enabled server (configuration from the bootstrap's server)")
    args = ap.parse_args()

    if args.xds:
        if args.port == 0:
            sys.stderr.write("server.py: --xds needs a fixed --port (xDS servers do not take port 0)\n")
            return 2
        if not (os.environ.get("GRPC_XDS_BOOTSTRAP_CONFIG") or os.environ.get("GRPC_XDS_BOOTSTRAP")):
            sys.stderr.write("server.py: --xds needs GRPC_XDS_BOOTSTRAP_CONFIG or GRPC_XDS_BOOTSTRAP\n")
            return 2

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers), xds=args.xds)
    server.add_generic_rpc_handlers((Echo(args.name, args.fail_first, args.fail_code, args.delay_ms),))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", SERVICE):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)

    address = f"{args.host}:{args.port}"
    try:
        if args.xds:
            creds = grpc.xds_server_credentials(grpc.insecure_server_credentials())
            port = server.add_secure_port(address, creds)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as e:
        sys.stderr.write(f"server.py: cannot listen on {args.host}:{args.port}: {e}\n")
        return 2
    if args.xds:
        # An xDS server binds only once its Listener has come: the call above
        # reports no port (-1) until then; the port is the fixed one asked for.
        port = args.port
    if port == 0:
        sys.stderr.write(f"server.py: cannot listen on {args.host}:{args.port}\n")
        return 2
    server.start()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"READY {port}", flush=True)
    while not stop.wait(1.0):
        pass
    server.stop(grace=1.0).wait(2.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
