#!/usr/bin/env python3
"""Holds Envoy v3 resources against Envoy's own validation annotations.

No Envoy binary can run in Meridian's tests, so sidecar output is checked with
the `(validate.rules)` annotations of Envoy's protos, evaluated by
protoc-gen-validate's Python validator, with the protos of `xds-protos`
(protoc-gen-validate 1.1, protobuf<5, xds-protos<1.60; see scripts/test-all.sh).

Input (a file, or `-` for stdin): a JSON list of resources as they go on the
wire,

    [{"typeUrl": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
      "value": "<base64 protobuf>"}, ...]

Each resource is decoded, validated, and so is every `google.protobuf.Any`
found anywhere inside it (filters' `typed_config`, the `api_listener`, ...):
the Any is unpacked by its type URL and the inner message validated the same
way, recursively. protoc-gen-validate itself stops at an Any.

Output, one JSON object on stdout:

    {"ok": true, "checked": 4, "messages": 9}
    {"ok": false, "violations": [{"resource": 0, "type": "envoy.config.cluster.v3.Cluster",
      "name": "backend", "path": "connect_timeout", "error": "... is not greater than 0.0"}],
      "warnings": [...]}

Exit status: 0 valid, 1 violations, 2 bad input or setup error.
`--self-test` checks that this program catches what it must (exit 0 if so).
Fields unknown to these protos (an Envoy newer than xds-protos) are reported
as warnings, not violations: Envoy ignores unknown fields by default.

`--config-dump` takes Envoy's admin ConfigDump in proto3 JSON (what
`/config_dump` answers, and what Meridian's inspection writes) and checks it
as a bootstrap is checked below, without the reference checks.

`--bootstrap` takes a whole Envoy bootstrap instead (the JSON of
`envoy.config.bootstrap.v3.Bootstrap`, as `envoy -c FILE` reads it) and
checks, as resource 0 of the same report:
- that it parses with protobuf's json_format, strictly: an unknown field, a
  value of the wrong type or out of range (a negative port), an `@type` no
  Envoy proto defines are violations (Envoy rejects unknown fields in its
  static configuration by default);
- the `(validate.rules)` of the Bootstrap and of every message inside it,
  and of every `Any` inside it (`typed_config`s, the values of
  `typed_extension_protocol_options`, ...), unpacked as above;
- that every `envoy_grpc` service (the ADS stream) names a cluster of
  `static_resources` and that the cluster speaks HTTP/2, without which no
  gRPC stream can start.
A bootstrap that is not JSON is a violation too; exit 2 is left for an
unreadable file or a setup error.
"""

import argparse
import base64
import collections
import importlib
import json
import os
import re
import sys

try:
    from google.protobuf import any_pb2, descriptor_pool, json_format, message_factory
    from google.protobuf.message import DecodeError
    from protoc_gen_validate.validator import _validate_all
except ImportError as e:  # pragma: no cover - setup error
    sys.stderr.write(
        f"validate_envoy.py: {e}; run scripts/test-all.sh to install the venv target/pgv-venv "
        "(protoc-gen-validate==1.1.*, protobuf<5, xds-protos<1.60)\n"
    )
    sys.exit(2)

TYPE_PREFIX = "type.googleapis.com/"
ANY = "google.protobuf.Any"
POOL = descriptor_pool.Default()
_loaded_dirs = set()


class BadInput(Exception):
    pass


def _import_package_dir(parts):
    """Imports every *_pb2 module of the proto package `parts` (e.g.
    ["envoy", "config", "cluster", "v3"]) so its messages are in the pool."""
    rel = os.path.join(*parts)
    if rel in _loaded_dirs:
        return False
    found = False
    for root in sys.path:
        d = os.path.join(root or ".", rel)
        if not os.path.isdir(d):
            continue
        found = True
        for f in sorted(os.listdir(d)):
            if f.endswith("_pb2.py"):
                try:
                    importlib.import_module(".".join(parts + [f[:-3]]))
                except Exception:  # a module that does not import is not ours to fix
                    pass
    _loaded_dirs.add(rel)
    return found


def message_class(full_name):
    """The generated class of a message type, importing its package on demand."""
    try:
        desc = POOL.FindMessageTypeByName(full_name)
    except KeyError:
        parts = full_name.split(".")
        desc = None
        # The longest prefix that is a directory of *_pb2 modules is the package
        # (nested types add components that are not directories).
        for k in range(len(parts) - 1, 0, -1):
            if _import_package_dir(parts[:k]):
                try:
                    desc = POOL.FindMessageTypeByName(full_name)
                except KeyError:
                    pass
                break
        if desc is None:
            return None
    return message_factory.GetMessageClass(desc)


def children(msg):
    """(relative path, sub-message) for every set message field, in order."""
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if value_field.message_type is None:
                continue
            for key in sorted(value):
                yield f"{field.name}[{key!r}]", value[key]
        elif field.label == field.LABEL_REPEATED:
            for i, item in enumerate(value):
                yield f"{field.name}[{i}]", item
        else:
            yield field.name, value


def join(path, rel):
    return f"{path}.{rel}" if path else rel


def pgv_errors(msg):
    """protoc-gen-validate's violations for `msg` and the messages in it, as
    strings like "p.connect_timeout is not greater than 0.0"."""
    try:
        return list(_validate_all(msg))
    except Exception as e:  # the validator's generated code failed: say so, loudly
        # protoc-gen-validate 1.1's Python code breaks on OpenTelemetry's
        # KeyValueList (TypeError: list indices must be integers), a message
        # without any validation rules (opentelemetry.proto.* carries no PGV
        # annotations). Validate the rest with those fields cleared: nothing
        # with a rule is skipped.
        if msg.DESCRIPTOR.full_name.startswith(OTEL_PREFIX):
            return []
        otel = [f for f, _ in msg.ListFields()
                if f.message_type is not None and f.message_type.full_name.startswith(OTEL_PREFIX)]
        if otel:
            copy = type(msg)()
            copy.CopyFrom(msg)
            for f in otel:
                copy.ClearField(f.name)
            try:
                return list(_validate_all(copy))
            except Exception:
                pass
        return [f"protoc-gen-validate could not validate {msg.DESCRIPTOR.full_name}: {type(e).__name__}: {e}"]


OTEL_PREFIX = "opentelemetry.proto."


def attribute(msg, path, budget, out):
    """Spreads the violations `budget` (a Counter of PGV strings that the
    validation of `msg` produced) over the deepest sub-message that produces
    each of them too, so every violation gets a field path."""
    remaining = collections.Counter(budget)
    for rel, child in children(msg):
        if not remaining:
            break
        if child.DESCRIPTOR.full_name == ANY:
            continue  # PGV does not look inside; unpacked separately
        share = remaining & collections.Counter(pgv_errors(child))
        if share:
            attribute(child, join(path, rel), share, out)
            remaining -= share
    for err, n in remaining.items():
        for _ in range(n):
            out.append((path, err))


def field_path(path, err):
    """"p.connect_timeout is ..." at path "a.b" -> ("a.b.connect_timeout", "connect_timeout is ...")."""
    if err.startswith("p."):
        field = err[2:].split(" ", 1)[0]
        return join(path, field), err[2:]
    return path or "(message)", err


def unknown_fields(msg):
    try:
        from google.protobuf import unknown_fields as uf

        return len(uf.UnknownFieldSet(msg))
    except Exception:
        try:
            return len(msg.UnknownFields())
        except Exception:
            return 0


class Checker:
    def __init__(self):
        self.violations = []
        self.warnings = []
        self.messages = 0

    def check_any(self, resource, type_url, value, path):
        """Decodes an Any's payload and validates it, then every Any inside it."""
        if not type_url.startswith(TYPE_PREFIX) and "/" not in type_url:
            self.violate(resource, path, f"type URL {type_url!r} has no '/': not a packed message")
            return
        full_name = type_url.rsplit("/", 1)[1]
        cls = message_class(full_name)
        if cls is None:
            self.violate(resource, path, f"unknown type {full_name!r} (not in Envoy's protos)")
            return
        msg = cls()
        try:
            msg.ParseFromString(value)
        except DecodeError as e:
            self.violate(resource, path, f"cannot decode {full_name}: {e}")
            return
        self.check_message(resource, msg, path)

    def check_message(self, resource, msg, path):
        self.messages += 1
        found = []
        attribute(msg, "", collections.Counter(pgv_errors(msg)), found)
        for rel, err in found:
            p, text = field_path(rel, err)
            self.violate(resource, join(path, p), text)
        self.walk(resource, msg, path)

    def walk(self, resource, msg, path):
        """Finds the Any fields under `msg` (at any depth) and checks their contents."""
        if unknown_fields(msg):
            self.warnings.append({
                **resource,
                "path": path or "(resource)",
                "warning": f"{msg.DESCRIPTOR.full_name} has fields these protos do not know",
            })
        for rel, child in children(msg):
            p = join(path, rel)
            if child.DESCRIPTOR.full_name == ANY:
                if not child.type_url:
                    continue  # an empty Any; required-ness is PGV's business
                inner = child.type_url.rsplit("/", 1)[-1]
                self.check_any(resource, child.type_url, child.value, f"{p}<{inner}>")
            else:
                self.walk(resource, child, p)

    def violate(self, resource, path, error):
        self.violations.append({**resource, "path": path or "(resource)", "error": error})


def resource_name(type_url, value):
    """The resource's name, for the report (Listener/Cluster/Route: name;
    ClusterLoadAssignment: cluster_name)."""
    cls = message_class(type_url.rsplit("/", 1)[-1])
    if cls is None:
        return None
    msg = cls()
    try:
        msg.ParseFromString(value)
    except DecodeError:
        return None
    for field in ("name", "cluster_name"):
        if field in msg.DESCRIPTOR.fields_by_name:
            return getattr(msg, field)
    return None


def check_resources(resources):
    """resources: a list of {"typeUrl", "value" (base64)}; returns the report."""
    if not isinstance(resources, list):
        raise BadInput("the input must be a JSON list of {\"typeUrl\", \"value\"}")
    checker = Checker()
    for i, r in enumerate(resources):
        if not isinstance(r, dict) or not isinstance(r.get("typeUrl"), str) or not isinstance(r.get("value"), str):
            raise BadInput(f"resource {i}: needs string fields \"typeUrl\" and \"value\" (base64)")
        try:
            value = base64.b64decode(r["value"], validate=True)
        except ValueError as e:
            raise BadInput(f"resource {i}: value is not base64: {e}")
        type_url = r["typeUrl"]
        resource = {"resource": i, "type": type_url.rsplit("/", 1)[-1], "name": resource_name(type_url, value)}
        checker.check_any(resource, type_url, value, "")
    report = {"ok": not checker.violations, "checked": len(resources), "messages": checker.messages}
    if checker.violations:
        report["violations"] = checker.violations
    if checker.warnings:
        report["warnings"] = checker.warnings
    return report


# --- bootstrap ---------------------------------------------------------------

BOOTSTRAP = "envoy.config.bootstrap.v3.Bootstrap"
GRPC_SERVICE = "envoy.config.core.v3.GrpcService"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def type_urls(doc):
    """Every `@type` in a JSON document, at any depth."""
    if isinstance(doc, dict):
        t = doc.get("@type")
        if isinstance(t, str):
            yield t
        for v in doc.values():
            yield from type_urls(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from type_urls(v)


def parse_error_path(err):
    """json_format's "Failed to parse a field: Failed to parse b field: what"
    -> ("a.b", "what"), without the list of available fields it appends; the
    path it gives with `at "Bootstrap.a[0].b"` when it gives one (the chain
    leaves out indices and some oneofs)."""
    text = str(err).split("\n Available Fields", 1)[0].rstrip(".") + "."
    fields = []
    while True:
        m = re.match(r"Failed to parse (\w+) field: ", text)
        if not m:
            break
        fields.append(m.group(1))
        text = text[m.end():]
    text = text.rstrip(".")
    at = re.search(r' at "?Bootstrap\.([^"\s]+)"?$', text)
    if at:
        return at.group(1), text[: at.start()]
    return ".".join(fields), text


def grpc_services(msg, path=""):
    """(path, GrpcService) for every GrpcService in `msg` outside Anys."""
    for rel, child in children(msg):
        p = join(path, rel)
        if child.DESCRIPTOR.full_name == GRPC_SERVICE:
            yield p, child
        elif child.DESCRIPTOR.full_name != ANY:
            yield from grpc_services(child, p)


def speaks_http2(cluster):
    """Whether a Cluster sends HTTP/2 (or may, by ALPN), as a gRPC stream needs."""
    if cluster.HasField("http2_protocol_options"):  # the deprecated field
        return True
    packed = cluster.typed_extension_protocol_options.get(HTTP_PROTOCOL_OPTIONS)
    cls = message_class(HTTP_PROTOCOL_OPTIONS)
    if packed is None or cls is None:
        return False
    opts = cls()
    if not packed.Unpack(opts):
        return False
    return opts.HasField("auto_config") or opts.explicit_http_config.HasField("http2_protocol_options")


def check_bootstrap_references(checker, resource, bootstrap):
    clusters = {c.name: (i, c) for i, c in enumerate(bootstrap.static_resources.clusters)}
    for path, service in grpc_services(bootstrap):
        if service.WhichOneof("target_specifier") != "envoy_grpc":
            continue
        name = service.envoy_grpc.cluster_name
        p = join(path, "envoy_grpc.cluster_name")
        if not name:
            continue  # PGV's violation already
        if name not in clusters:
            checker.violate(resource, p, f"{name!r} is not a cluster of static_resources")
            continue
        i, cluster = clusters[name]
        if not speaks_http2(cluster):
            checker.violate(
                resource,
                f"static_resources.clusters[{i}]",
                f"the gRPC cluster {name!r} does not speak HTTP/2 "
                f"({HTTP_PROTOCOL_OPTIONS} explicit_http_config.http2_protocol_options)",
            )


def check_bootstrap(text):
    """text: an Envoy bootstrap as JSON; returns the report."""
    return check_document(text, BOOTSTRAP, check_bootstrap_references)


def check_document(text, type_name, references=None):
    """text: one Envoy message of type_name as proto3 JSON (a bootstrap, an
    admin ConfigDump); parsed strictly, then its rules and every Any inside
    checked; `references(checker, resource, message)` checks more."""
    cls = message_class(type_name)
    if cls is None:
        raise BadInput(f"{type_name} is not in these protos: is xds-protos installed?")
    checker = Checker()
    resource = {"resource": 0, "type": type_name, "name": None}
    bootstrap = None
    try:
        doc = json.loads(text)
    except ValueError as e:
        checker.violate(resource, "", f"not JSON: {e}")
        doc = None
    if doc is not None and not isinstance(doc, dict):
        checker.violate(resource, "", f"a {type_name} is a JSON object")
    elif doc is not None:
        if isinstance(doc.get("node"), dict) and isinstance(doc["node"].get("id"), str):
            resource["name"] = doc["node"]["id"]
        # json_format resolves an Any's @type in the pool: load the packages first.
        for url in sorted(set(type_urls(doc))):
            message_class(url.rsplit("/", 1)[-1])
        bootstrap = cls()
        try:
            json_format.Parse(text, bootstrap, ignore_unknown_fields=False)
        except json_format.ParseError as e:
            path, error = parse_error_path(e)
            checker.violate(resource, path, error)
            bootstrap = None
    if bootstrap is not None:
        checker.check_message(resource, bootstrap, "")
        if references is not None:
            references(checker, resource, bootstrap)
    report = {"ok": not checker.violations, "checked": 1, "messages": checker.messages}
    if checker.violations:
        report["violations"] = checker.violations
    if checker.warnings:
        report["warnings"] = checker.warnings
    return report


# --- self-test ---------------------------------------------------------------


def _packed(msg):
    return {"typeUrl": TYPE_PREFIX + msg.DESCRIPTOR.full_name, "value": base64.b64encode(msg.SerializeToString()).decode()}


def _valid_set():
    """A proxyless-gRPC-style set: api_listener Listener, route, EDS cluster, endpoints;
    plus a sidecar-style inbound Listener with a TCP proxy filter."""
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.endpoint.v3 import endpoint_pb2
    from envoy.config.listener.v3 import listener_pb2
    from envoy.config.route.v3 import route_pb2
    from envoy.extensions.filters.http.router.v3 import router_pb2
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
    from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

    hcm = hcm_pb2.HttpConnectionManager(stat_prefix="backend")
    hcm.rds.route_config_name = "backend"
    hcm.rds.config_source.ads.SetInParent()
    hcm.rds.config_source.resource_api_version = 2  # V3
    hcm.http_filters.add(name="envoy.filters.http.router").typed_config.Pack(router_pb2.Router())
    api = listener_pb2.Listener(name="backend")
    api.api_listener.api_listener.Pack(hcm)

    route = route_pb2.RouteConfiguration(name="backend")
    vh = route.virtual_hosts.add(name="backend", domains=["backend"])
    r = vh.routes.add()
    r.match.prefix = ""
    r.route.cluster = "backend"
    r.route.timeout.seconds = 2

    cluster = cluster_pb2.Cluster(name="backend", type=cluster_pb2.Cluster.EDS)
    cluster.connect_timeout.seconds = 5
    cluster.eds_cluster_config.eds_config.ads.SetInParent()
    cluster.eds_cluster_config.eds_config.resource_api_version = 2

    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name="backend")
    le = cla.endpoints.add()
    le.locality.zone = "zone-1"
    lb = le.lb_endpoints.add()
    lb.endpoint.address.socket_address.address = "127.0.0.1"
    lb.endpoint.address.socket_address.port_value = 8080

    inbound = listener_pb2.Listener(name="inbound:127.0.0.1:8080")
    inbound.address.socket_address.address = "127.0.0.1"
    inbound.address.socket_address.port_value = 8080
    f = inbound.filter_chains.add().filters.add(name="envoy.filters.network.tcp_proxy")
    f.typed_config.Pack(tcp_proxy_pb2.TcpProxy(stat_prefix="inbound", cluster="localhost:8080"))
    return [api, route, cluster, cla, inbound], hcm


def _valid_bootstrap():
    """A bootstrap in the shape meridian-dp writes: ADS over TLS to a static
    cluster of the zone, the token as initial metadata."""
    tls = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
    return {
        "node": {"id": "default.web-1", "cluster": "web", "metadata": {"dataplane": {"networking": {}}}},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9901}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{
                    "envoy_grpc": {"cluster_name": "xds"},
                    "initial_metadata": [{"key": "authorization", "value": "Bearer TOKEN"}],
                }],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [{
            "name": "xds",
            "type": "STATIC",
            "connect_timeout": "5s",
            "typed_extension_protocol_options": {HTTP_PROTOCOL_OPTIONS: {
                "@type": TYPE_PREFIX + HTTP_PROTOCOL_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }},
            "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 5678}}}}]}]},
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": tls,
                "sni": "zone-1.example",
                "common_tls_context": {"validation_context": {
                    "trusted_ca": {"filename": "/etc/ca.pem"},
                    "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": "zone-1.example"}}],
                }},
            }},
        }]},
    }


def _bootstrap_self_test(expect):
    valid = _valid_bootstrap()
    expect("valid bootstrap", check_bootstrap(json.dumps(valid)), True)
    cluster = "static_resources.clusters[0]"
    tls = f"{cluster}.transport_socket.typed_config<envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext>"
    opts = f"{cluster}.typed_extension_protocol_options[{HTTP_PROTOCOL_OPTIONS!r}]<{HTTP_PROTOCOL_OPTIONS}>"
    socket = "load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address"

    def mutated(f):
        doc = json.loads(json.dumps(valid))
        f(doc)
        return check_bootstrap(json.dumps(doc))

    def c(doc):
        return doc["static_resources"]["clusters"][0]

    def tls_of(doc):
        return c(doc)["transport_socket"]["typed_config"]

    # Parsing is strict: unknown fields, values out of range, unknown @types.
    expect("unknown field", mutated(lambda d: c(d).update(bogus=1)), False, [(0, cluster)])
    expect(
        "unknown field in an Any",
        mutated(lambda d: tls_of(d).update(bogus=1)),
        False,
        [(0, f"{cluster}.transport_socket.typed_config")],
    )
    expect(
        "negative port",
        mutated(lambda d: d["admin"]["address"]["socket_address"].update(port_value=-1)),
        False,
    )
    expect("unknown @type", mutated(lambda d: tls_of(d).update({"@type": TYPE_PREFIX + "meridian.NoSuchType"})), False)
    expect("not JSON", check_bootstrap("{\"node\": "), False, [(0, "(resource)")])
    # PGV rules, in the Bootstrap and inside its Anys.
    expect(
        "port above 65535",
        mutated(lambda d: c(d)["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"].update(port_value=70000)),
        False,
        [(0, f"{cluster}.{socket}.port_value")],
    )
    expect(
        "unspecified SAN type inside the transport socket's Any",
        mutated(lambda d: tls_of(d)["common_tls_context"]["validation_context"]
                ["match_typed_subject_alt_names"][0].update(san_type="SAN_TYPE_UNSPECIFIED")),
        False,
        [(0, f"{tls}.common_tls_context.validation_context.match_typed_subject_alt_names[0].san_type")],
    )
    expect(
        "max_headers_count 0 inside a protocol options Any",
        mutated(lambda d: c(d)["typed_extension_protocol_options"][HTTP_PROTOCOL_OPTIONS].update(
            common_http_protocol_options={"max_headers_count": 0})),
        False,
        [(0, f"{opts}.common_http_protocol_options.max_headers_count.value")],
    )
    # References: the ADS cluster exists and speaks HTTP/2.
    ads = "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name"
    expect(
        "ADS names no static cluster",
        mutated(lambda d: d["dynamic_resources"]["ads_config"]["grpc_services"][0]["envoy_grpc"]
                .update(cluster_name="elsewhere")),
        False,
        [(0, ads)],
    )
    expect(
        "ADS cluster without HTTP/2",
        mutated(lambda d: c(d).pop("typed_extension_protocol_options")),
        False,
        [(0, cluster)],
    )


def self_test():
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.listener.v3 import listener_pb2
    from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

    failures = []

    def expect(what, report, want_ok, wanted=()):
        got = {(v["resource"], v["path"]) for v in report.get("violations", [])}
        if report["ok"] != want_ok:
            failures.append(f"{what}: expected ok={want_ok}, got {json.dumps(report)}")
            return
        for w in wanted:
            if w not in got:
                failures.append(f"{what}: expected a violation at {w}, got {sorted(got)}")

    valid, hcm = _valid_set()
    expect("valid set", check_resources([_packed(m) for m in valid]), True)

    # A Cluster with an empty name and a zero connect_timeout (PGV: name min_len 1,
    # connect_timeout gt 0s), and a negative one.
    bad_cluster = cluster_pb2.Cluster(name="", type=cluster_pb2.Cluster.EDS)
    bad_cluster.connect_timeout.SetInParent()
    bad_cluster.eds_cluster_config.eds_config.ads.SetInParent()
    negative = cluster_pb2.Cluster(name="neg")
    negative.connect_timeout.seconds = -1
    expect(
        "invalid clusters",
        check_resources([_packed(valid[2]), _packed(bad_cluster), _packed(negative)]),
        False,
        [(1, "name"), (1, "connect_timeout"), (2, "connect_timeout")],
    )

    # Violations inside Anys: an api_listener whose HttpConnectionManager has an
    # empty stat_prefix, and a filter chain whose TcpProxy has no stat_prefix.
    bad_hcm = type(hcm)()
    bad_hcm.CopyFrom(hcm)
    bad_hcm.stat_prefix = ""
    api = listener_pb2.Listener(name="backend")
    api.api_listener.api_listener.Pack(bad_hcm)
    inbound = listener_pb2.Listener()
    inbound.CopyFrom(valid[4])
    inbound.filter_chains[0].filters[0].typed_config.Pack(tcp_proxy_pb2.TcpProxy(cluster="x"))
    hcm_name = hcm.DESCRIPTOR.full_name
    tcp_name = tcp_proxy_pb2.TcpProxy.DESCRIPTOR.full_name
    expect(
        "invalid messages inside Any",
        check_resources([_packed(api), _packed(inbound)]),
        False,
        [
            (0, f"api_listener.api_listener<{hcm_name}>.stat_prefix"),
            (1, f"filter_chains[0].filters[0].typed_config<{tcp_name}>.stat_prefix"),
        ],
    )

    # Invalid nested messages get their own path (the repeated endpoint, port > 65535).
    bad_cla = type(valid[3])()
    bad_cla.CopyFrom(valid[3])
    bad_cla.endpoints[0].lb_endpoints.add().endpoint.address.socket_address.port_value = 70000
    bad_cla.endpoints[0].lb_endpoints[1].endpoint.address.socket_address.address = "127.0.0.1"
    expect(
        "nested violation path",
        check_resources([_packed(bad_cla)]),
        False,
        [(0, "endpoints[0].lb_endpoints[1].endpoint.address.socket_address.port_value")],
    )

    # An Any of a type that no Envoy proto defines, and garbage bytes.
    unknown = listener_pb2.Listener(name="x")
    unknown.api_listener.api_listener.type_url = TYPE_PREFIX + "meridian.NoSuchType"
    garbage = {"typeUrl": TYPE_PREFIX + "envoy.config.cluster.v3.Cluster", "value": base64.b64encode(b"\xff\xff\xff").decode()}
    expect(
        "unknown type and garbage",
        check_resources([_packed(unknown), garbage]),
        False,
        [(0, "api_listener.api_listener<meridian.NoSuchType>"), (1, "(resource)")],
    )

    _bootstrap_self_test(expect)

    if failures:
        print(json.dumps({"ok": False, "self_test": "failed", "failures": failures}))
        return 1
    print(json.dumps({"ok": True, "self_test": "passed"}))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", nargs="?", help="JSON list of resources (a bootstrap with --bootstrap), or - for stdin")
    ap.add_argument("--bootstrap", action="store_true", help="the input is a whole Envoy bootstrap (JSON)")
    ap.add_argument(
        "--config-dump", action="store_true", help="the input is Envoy's admin ConfigDump (JSON, as /config_dump)"
    )
    ap.add_argument("--self-test", action="store_true", help="check that violations are caught")
    args = ap.parse_args()
    if args.self_test:
        return self_test()
    if not args.file:
        ap.error("a file (or -) is required unless --self-test")
    try:
        if args.file == "-":
            text = sys.stdin.read()
        else:
            with open(args.file, encoding="utf-8") as f:
                text = f.read()
        if args.bootstrap:
            report = check_bootstrap(text)
        elif args.config_dump:
            report = check_document(text, "envoy.admin.v3.ConfigDump")
        else:
            report = check_resources(json.loads(text))
    except (OSError, ValueError, BadInput) as e:
        print(json.dumps({"ok": False, "input_error": str(e)}))
        sys.stderr.write(f"validate_envoy.py: {e}\n")
        return 2
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
