#!/usr/bin/env python3
"""Offline checks of the Kubernetes manifests in deploy/kubernetes.

Run by deploy/check-kubernetes.sh, which installs what this needs. It
renders every kustomization (and every optional component on top of the
full one) with `kubectl kustomize`, validates each rendered object against
the Kubernetes OpenAPI schemas bundled in kubernetes-validate (strict:
unknown fields are errors), and then checks what a schema cannot see:

  security   every container non-root, read-only root filesystem, no
             privilege escalation, ALL capabilities dropped, RuntimeDefault
             seccomp, requests and limits; no service account token; only
             the volume types of the "restricted" pod security profile
  probes     every control-plane container has readiness and liveness
             probes; Meridian's use /ready and /healthy on the API port
  listen     the API / KDS / xDS addresses bind every address (the API's
             default is loopback) on a declared container port
  refs       every Secret and ConfigMap a pod uses exists in the render or
             is operator-created and documented in README.md; every file
             path a container is given lies in a mount that holds it
  selectors  workloads, Services, PDBs, spread constraints, anti-affinity
             and NetworkPolicies select pods that exist, on declared ports
  writable   the data dir and the admin token file are on writable volumes
  global     3 replicas on etcd, a PodDisruptionBudget of minAvailable 2,
             topology spread; etcd endpoints over https that are exactly the
             StatefulSet's pod DNS names, with the etcd client TLS settings
  etcd       3 members, PDB minAvailable 2, anti-affinity, client and peer
             TLS with client-certificate auth, --initial-cluster matching
             the pod names, a headless Service publishing unready pods,
             certificates (cert-manager) naming every member
  zone       a StatefulSet of 1 with a volume claim for its store, a zone
             name, grpcs:// global address(es) whose name the global's KDS
             certificate is issued for when both are rendered together, xDS
             certificate names that include the xDS Services' names
  namespace  every namespaced object is in meridian-system
  image      each Meridian container runs a binary that
             deploy/container/Containerfile puts in the image

`--self-test` breaks rendered manifests in memory, one way per check, and
fails unless each break is caught: every check is shown to be able to fail.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "kubernetes"
README = K8S / "README.md"
NAMESPACE = "meridian-system"
# Schema versions: the oldest Kubernetes these manifests claim to support
# (matchLabelKeys in topology spread constraints is on by default from
# 1.27) and the newest kubernetes-validate bundles, to catch removed APIs.
SCHEMA_VERSIONS = ["1.29", "latest"]

# Secrets the operator creates (README.md says how), with the keys pods use.
OPERATOR_SECRETS = {
    "meridian-etcd-tls": {"ca.crt", "tls.crt", "tls.key"},
    "meridian-etcd-client-tls": {"ca.crt", "tls.crt", "tls.key"},
    "meridian-zone-join": {"token", "ca.crt"},
    "meridian-global-kds-tls": {"tls.crt", "tls.key"},
    "meridian-global-api-tls": {"tls.crt", "tls.key"},
    "meridian-zone-api-tls": {"tls.crt", "tls.key"},
}
# Kinds from CRDs that kubernetes-validate has no schema for; checked here.
CRD_GROUPS = {"cert-manager.io"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
RESTRICTED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
    "persistentVolumeClaim", "projected", "secret",
}
# Meridian binaries, by the command their container runs.
MERIDIAN_BINARIES = {"meridian-global", "meridian-zone"}
REQUIRED_LISTEN = {
    "meridian-global": ["MERIDIAN_API_ADDR", "MERIDIAN_KDS_ADDR"],
    "meridian-zone": ["MERIDIAN_API_ADDR", "MERIDIAN_XDS_ADDR"],
}
# Environment variables and flags that name files (checked against mounts).
PATH_ENV = re.compile(r"(_FILE|_CERT|_KEY|_CACERT|_DIR)$")
PATH_FLAGS = re.compile(r"^--[a-z-]*(file|cert|key|cacert|dir)=(/.*)$")


# ---------------------------------------------------------------- rendering


@dataclass
class Render:
    name: str
    docs: list[dict]


def kustomize_cmd() -> list[str]:
    cmd = os.environ.get("KUSTOMIZE", "kubectl kustomize")
    return cmd.split()


def render_dir(path: Path) -> list[dict]:
    out = subprocess.run(kustomize_cmd() + [str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(kustomize_cmd())} {path} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def kustomizations() -> tuple[list[Path], list[Path]]:
    """Every kustomization and every component under deploy/kubernetes."""
    roots, components = [], []
    for f in sorted(K8S.rglob("kustomization.yaml")):
        kind = (yaml.safe_load(f.read_text()) or {}).get("kind", "Kustomization")
        (components if kind == "Component" else roots).append(f.parent)
    return roots, components


def render_all(workdir: Path) -> list[Render]:
    roots, components = kustomizations()
    renders = []
    for d in roots:
        if d.is_relative_to(K8S / "tests"):
            continue
        name = str(d.relative_to(K8S)) or "."
        renders.append(Render(name, render_dir(d)))
    # Each component, and all of them, on top of the full kustomization: a
    # kustomization of our own that enables them the way README.md says.
    combos = [[c] for c in components] + ([components] if len(components) > 1 else [])
    for combo in combos:
        name = "+".join(c.name for c in combo)
        d = workdir / name
        d.mkdir(parents=True, exist_ok=True)
        rel = lambda p: os.path.relpath(p, d)  # noqa: E731
        (d / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "namespace": NAMESPACE,
            "resources": [rel(K8S)],
            "components": [rel(c) for c in combo],
        }))
        renders.append(Render(f". + components/{name}", render_dir(d)))
    return renders


# ------------------------------------------------------------------ helpers


def key(doc: dict) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def find(docs: list[dict], kind: str, name: str) -> dict | None:
    for d in by_kind(docs, kind):
        if d["metadata"]["name"] == name:
            return d
    return None


def pod_templates(docs: list[dict]):
    """(workload, pod spec, pod labels) of every workload."""
    for d in docs:
        if d.get("kind") in WORKLOAD_KINDS:
            tpl = d.get("spec", {}).get("template", {})
            yield d, tpl.get("spec", {}), tpl.get("metadata", {}).get("labels", {}) or {}


def all_containers(spec: dict):
    for c in spec.get("initContainers", []) or []:
        yield c
    for c in spec.get("containers", []) or []:
        yield c


def main_container(spec: dict, name: str) -> dict:
    """The container running `name`, else the one called so, else the first."""
    cs = spec.get("containers", []) or [{}]
    return next((c for c in cs if binary(c) == name), next((c for c in cs if c.get("name") == name), cs[0]))


def binary(c: dict) -> str:
    cmd = (c.get("command") or [""])[0]
    return os.path.basename(cmd)


def matches(selector: dict | None, labels: dict) -> bool:
    """A LabelSelector, or a Service's plain selector map, against labels."""
    if not selector:
        return False
    if "matchLabels" in selector or "matchExpressions" in selector:
        required = selector.get("matchLabels") or {}
    else:
        required = selector
    if any(labels.get(k) != v for k, v in required.items()):
        return False
    for e in selector.get("matchExpressions", []) or []:
        v, op = labels.get(e["key"]), e["operator"]
        if (op == "In" and v not in e["values"]) or (op == "NotIn" and v in e["values"]) \
                or (op == "Exists" and v is None) or (op == "DoesNotExist" and v is not None):
            return False
    return True


def env_of(c: dict, docs: list[dict]) -> dict[str, str]:
    """The container's environment, with envFrom ConfigMaps resolved."""
    env: dict[str, str] = {}
    for ef in c.get("envFrom", []) or []:
        ref = ef.get("configMapRef")
        if ref:
            cm = find(docs, "ConfigMap", ref["name"])
            if cm:
                prefix = ef.get("prefix", "")
                env.update({prefix + k: str(v) for k, v in (cm.get("data") or {}).items()})
    for e in c.get("env", []) or []:
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif "valueFrom" in e and "configMapKeyRef" in e["valueFrom"]:
            ref = e["valueFrom"]["configMapKeyRef"]
            cm = find(docs, "ConfigMap", ref["name"])
            if cm and ref["key"] in (cm.get("data") or {}):
                env[e["name"]] = str(cm["data"][ref["key"]])
    return env


def mount_for(path: str, c: dict) -> dict | None:
    best = None
    for m in c.get("volumeMounts", []) or []:
        mp = m["mountPath"].rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best["mountPath"].rstrip("/")):
                best = m
    return best


def volume(spec: dict, workload: dict, name: str) -> dict | None:
    for v in spec.get("volumes", []) or []:
        if v["name"] == name:
            return v
    for t in workload.get("spec", {}).get("volumeClaimTemplates", []) or []:
        if t["metadata"]["name"] == name:
            return {"name": name, "persistentVolumeClaim": {"claimName": f"<template {name}>"}}
    return None


def secret_keys(docs: list[dict], name: str) -> set[str] | None:
    """Keys of a Secret the render makes, or None when it makes none."""
    s = find(docs, "Secret", name)
    if s:
        return set((s.get("data") or {}).keys()) | set((s.get("stringData") or {}).keys())
    for cert in by_kind(docs, "Certificate"):
        if cert.get("spec", {}).get("secretName") == name:
            return {"ca.crt", "tls.crt", "tls.key"}
    return None


def wildcard_covers(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


# ------------------------------------------------------------------- checks


@dataclass
class Report:
    errors: list[tuple[str, str, str]] = field(default_factory=list)  # (check, render, message)

    def fail(self, check: str, render: str, msg: str) -> None:
        self.errors.append((check, render, msg))


def check_schema(r: Render, rep: Report, versions: list[str]) -> None:
    from kubernetes_validate import utils as kv

    for d in r.docs:
        group = d.get("apiVersion", "").split("/")[0] if "/" in d.get("apiVersion", "") else ""
        if group in CRD_GROUPS:
            continue
        for v in versions:
            try:
                schema_validate(json.dumps(d, sort_keys=True), v)
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                rep.fail("schema", r.name, f"{key(d)} against {v}: {path}: {e.message}")
            except kv.SchemaNotFoundError as e:
                rep.fail("schema", r.name, f"{key(d)}: {e.message}")


@functools.lru_cache(maxsize=None)
def schema_validate(doc_json: str, version: str) -> None:
    from kubernetes_validate import utils as kv

    kv.validate(json.loads(doc_json), version, strict=True)


def check_namespace(r: Render, rep: Report) -> None:
    for d in r.docs:
        if d.get("kind") in CLUSTER_SCOPED:
            continue
        ns = d.get("metadata", {}).get("namespace")
        if ns != NAMESPACE:
            rep.fail("namespace", r.name, f"{key(d)} is in namespace {ns!r}, not {NAMESPACE}")


def check_security(r: Render, rep: Report) -> None:
    for sa in by_kind(r.docs, "ServiceAccount"):
        if sa.get("automountServiceAccountToken") is not False:
            rep.fail("security", r.name, f"{key(sa)} does not set automountServiceAccountToken: false")
    for w, spec, _ in pod_templates(r.docs):
        where = key(w)
        psc = spec.get("securityContext", {}) or {}
        if spec.get("automountServiceAccountToken") is not False:
            rep.fail("security", r.name, f"{where}: pod mounts a service account token")
        san = spec.get("serviceAccountName")
        if not san or not find(r.docs, "ServiceAccount", san):
            rep.fail("security", r.name, f"{where}: service account {san!r} is not in the render")
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(flag):
                rep.fail("security", r.name, f"{where}: {flag}")
        for v in spec.get("volumes", []) or []:
            kinds = set(v) - {"name"}
            if not kinds <= RESTRICTED_VOLUME_TYPES:
                rep.fail("security", r.name, f"{where}: volume {v['name']} of type {sorted(kinds)}")
        for c in all_containers(spec):
            at = f"{where} container {c['name']}"
            sc = c.get("securityContext", {}) or {}
            image = c.get("image", "")
            if "@sha256:" not in image and (":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")):
                rep.fail("security", r.name, f"{at}: image {image!r} is not pinned to a tag")
            if not (sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True):
                rep.fail("security", r.name, f"{at}: runAsNonRoot is not true")
            if sc.get("runAsUser", psc.get("runAsUser")) == 0:
                rep.fail("security", r.name, f"{at}: runAsUser 0")
            if sc.get("readOnlyRootFilesystem") is not True:
                rep.fail("security", r.name, f"{at}: readOnlyRootFilesystem is not true")
            if sc.get("allowPrivilegeEscalation") is not False:
                rep.fail("security", r.name, f"{at}: allowPrivilegeEscalation is not false")
            if sc.get("privileged"):
                rep.fail("security", r.name, f"{at}: privileged")
            caps = sc.get("capabilities", {}) or {}
            if "ALL" not in (caps.get("drop") or []):
                rep.fail("security", r.name, f"{at}: capabilities do not drop ALL")
            if caps.get("add"):
                rep.fail("security", r.name, f"{at}: adds capabilities {caps['add']}")
            seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                rep.fail("security", r.name, f"{at}: seccomp profile {seccomp!r}")
            res = c.get("resources", {}) or {}
            for part in ("requests", "limits"):
                for what in ("cpu", "memory"):
                    if what not in (res.get(part) or {}):
                        rep.fail("security", r.name, f"{at}: no resources.{part}.{what}")


def probe_port(c: dict, probe: dict) -> int | None:
    port = (probe.get("httpGet") or probe.get("tcpSocket") or probe.get("grpc") or {}).get("port")
    for p in c.get("ports", []) or []:
        if port in (p.get("name"), p.get("containerPort")):
            return p["containerPort"]
    return None


def check_probes(r: Render, rep: Report) -> None:
    for w, spec, _ in pod_templates(r.docs):
        for c in spec.get("containers", []) or []:
            at = f"{key(w)} container {c['name']}"
            for kind in ("readinessProbe", "livenessProbe"):
                p = c.get(kind)
                if not p:
                    rep.fail("probes", r.name, f"{at}: no {kind}")
                    continue
                if probe_port(c, p) is None and "exec" not in p:
                    rep.fail("probes", r.name, f"{at}: {kind} port is not a container port")
            if binary(c) in MERIDIAN_BINARIES:
                env = env_of(c, r.docs)
                api_port = env.get("MERIDIAN_API_ADDR", "127.0.0.1:5681").rsplit(":", 1)[-1]
                want = {"readinessProbe": "/ready", "livenessProbe": "/healthy", "startupProbe": None}
                for kind, path in want.items():
                    p = c.get(kind)
                    if not p:
                        continue
                    http = p.get("httpGet") or {}
                    if path and http.get("path") != path:
                        rep.fail("probes", r.name, f"{at}: {kind} path {http.get('path')!r}, want {path}")
                    if str(probe_port(c, p)) != api_port:
                        rep.fail("probes", r.name, f"{at}: {kind} is not on the API port {api_port}")
                    tls = "MERIDIAN_API_TLS_CERT" in env
                    if (http.get("scheme", "HTTP") == "HTTPS") != tls:
                        rep.fail("probes", r.name, f"{at}: {kind} scheme {http.get('scheme', 'HTTP')} "
                                 f"but API TLS is {'on' if tls else 'off'}")


def check_listen(r: Render, rep: Report) -> None:
    for w, spec, _ in pod_templates(r.docs):
        for c in spec.get("containers", []) or []:
            b = binary(c)
            if b not in REQUIRED_LISTEN:
                continue
            env = env_of(c, r.docs)
            ports = {p["containerPort"] for p in c.get("ports", []) or []}
            for var in REQUIRED_LISTEN[b]:
                at = f"{key(w)} container {c['name']}"
                addr = env.get(var)
                if not addr:
                    rep.fail("listen", r.name, f"{at}: {var} not set (its default is not reachable in a pod)")
                    continue
                host, _, port = addr.rpartition(":")
                if host not in ("0.0.0.0", "[::]", "::"):
                    rep.fail("listen", r.name, f"{at}: {var}={addr} does not bind every address")
                if not port.isdigit() or int(port) not in ports:
                    rep.fail("listen", r.name, f"{at}: {var}={addr} is not a declared container port")


def check_refs(r: Render, rep: Report) -> None:
    readme = README.read_text() if README.exists() else ""
    for w, spec, _ in pod_templates(r.docs):
        where = key(w)
        secrets: dict[str, set[str] | None] = {}

        def need_secret(name: str, at: str) -> None:
            keys = secret_keys(r.docs, name)
            if keys is None:
                if name not in OPERATOR_SECRETS:
                    rep.fail("refs", r.name, f"{at}: Secret {name} is neither rendered nor operator-created")
                    return
                if f"`{name}`" not in readme:
                    rep.fail("refs", r.name, f"{at}: operator-created Secret {name} is not in README.md")
                keys = OPERATOR_SECRETS[name]
            secrets[name] = keys

        def need_configmap(name: str, at: str) -> set[str]:
            cm = find(r.docs, "ConfigMap", name)
            if cm is None:
                rep.fail("refs", r.name, f"{at}: ConfigMap {name} is not in the render")
                return set()
            return set((cm.get("data") or {}).keys())

        for v in spec.get("volumes", []) or []:
            at = f"{where} volume {v['name']}"
            if "secret" in v:
                need_secret(v["secret"]["secretName"], at)
            if "configMap" in v:
                need_configmap(v["configMap"]["name"], at)
            for src in (v.get("projected") or {}).get("sources", []) or []:
                if "secret" in src:
                    need_secret(src["secret"]["name"], at)
                if "configMap" in src:
                    need_configmap(src["configMap"]["name"], at)
        for ps in spec.get("imagePullSecrets", []) or []:
            need_secret(ps["name"], f"{where} imagePullSecrets")
        for c in all_containers(spec):
            at = f"{where} container {c['name']}"
            for ef in c.get("envFrom", []) or []:
                if "configMapRef" in ef:
                    need_configmap(ef["configMapRef"]["name"], at)
                if "secretRef" in ef:
                    need_secret(ef["secretRef"]["name"], at)
            for e in c.get("env", []) or []:
                vf = e.get("valueFrom") or {}
                if "secretKeyRef" in vf:
                    need_secret(vf["secretKeyRef"]["name"], at)
                    keys = secrets.get(vf["secretKeyRef"]["name"]) or set()
                    if vf["secretKeyRef"]["key"] not in keys:
                        rep.fail("refs", r.name, f"{at}: env {e['name']}: Secret key {vf['secretKeyRef']['key']} unknown")
                if "configMapKeyRef" in vf:
                    keys = need_configmap(vf["configMapKeyRef"]["name"], at)
                    if vf["configMapKeyRef"]["key"] not in keys:
                        rep.fail("refs", r.name, f"{at}: env {e['name']}: ConfigMap key {vf['configMapKeyRef']['key']} unknown")
            for m in c.get("volumeMounts", []) or []:
                if volume(spec, w, m["name"]) is None:
                    rep.fail("refs", r.name, f"{at}: mounts {m['name']}, which is no volume")
            # Every file path the container is given lies in a mount holding it.
            paths = [(n, v) for n, v in env_of(c, r.docs).items() if PATH_ENV.search(n) and v.startswith("/")]
            for a in (c.get("args", []) or []) + (c.get("command", []) or [])[1:]:
                m = PATH_FLAGS.match(a)
                if m:
                    paths.append((a.split("=")[0], m.group(2)))
            for name, path in paths:
                m = mount_for(path, c)
                if m is None:
                    rep.fail("refs", r.name, f"{at}: {name}={path} is in no volume (the root filesystem is read-only)")
                    continue
                vol = volume(spec, w, m["name"]) or {}
                rel = path[len(m["mountPath"].rstrip("/")) + 1:]
                if "secret" in vol and not m.get("subPath"):
                    keys = secrets.get(vol["secret"]["secretName"]) or set()
                    items = vol["secret"].get("items")
                    files = {i["path"] for i in items} if items else keys
                    if rel not in files:
                        rep.fail("refs", r.name, f"{at}: {name}={path}: Secret {vol['secret']['secretName']} "
                                 f"has no key {rel!r} (has {sorted(files)})")
                if "configMap" in vol and not m.get("subPath"):
                    keys = need_configmap(vol["configMap"]["name"], at)
                    if rel not in keys:
                        rep.fail("refs", r.name, f"{at}: {name}={path}: ConfigMap has no key {rel!r}")


def check_selectors(r: Render, rep: Report) -> None:
    pods = list(pod_templates(r.docs))
    has_global = find(r.docs, "Deployment", "meridian-global") is not None
    has_etcd = find(r.docs, "StatefulSet", "meridian-etcd") is not None
    for w, spec, labels in pods:
        sel = w.get("spec", {}).get("selector")
        if not matches(sel, labels):
            rep.fail("selectors", r.name, f"{key(w)}: selector does not match its pod template labels")
        for t in spec.get("topologySpreadConstraints", []) or []:
            if not matches(t.get("labelSelector"), labels):
                rep.fail("selectors", r.name, f"{key(w)}: topology spread selector does not match its own pods")
        aff = (spec.get("affinity") or {}).get("podAntiAffinity") or {}
        terms = [t.get("podAffinityTerm", {}) for t in aff.get("preferredDuringSchedulingIgnoredDuringExecution", []) or []]
        terms += aff.get("requiredDuringSchedulingIgnoredDuringExecution", []) or []
        for t in terms:
            if not matches(t.get("labelSelector"), labels):
                rep.fail("selectors", r.name, f"{key(w)}: anti-affinity selector does not match its own pods")
    for svc in by_kind(r.docs, "Service"):
        chosen = [(w, spec) for w, spec, labels in pods if matches(svc["spec"].get("selector"), labels)]
        if not chosen:
            rep.fail("selectors", r.name, f"{key(svc)}: selects no pod")
            continue
        for p in svc["spec"].get("ports", []) or []:
            tp = p.get("targetPort", p["port"])
            for w, spec in chosen:
                declared = {x for c in spec.get("containers", []) for q in c.get("ports", []) or []
                            for x in (q.get("name"), q["containerPort"])}
                if tp not in declared:
                    rep.fail("selectors", r.name, f"{key(svc)} port {p.get('name')}: target {tp!r} is no port of {key(w)}")
    for pdb in by_kind(r.docs, "PodDisruptionBudget"):
        if not any(matches(pdb["spec"].get("selector"), labels) for _, _, labels in pods):
            rep.fail("selectors", r.name, f"{key(pdb)}: selects no pod")
    for np in by_kind(r.docs, "NetworkPolicy"):
        if not any(matches(np["spec"].get("podSelector"), labels) for _, _, labels in pods):
            rep.fail("selectors", r.name, f"{key(np)}: selects no pod")
        # Peers are other components' pods: judged where both are rendered.
        if has_global and has_etcd:
            for rule in np["spec"].get("ingress", []) or []:
                for peer in rule.get("from", []) or []:
                    if "podSelector" in peer and not any(matches(peer["podSelector"], l) for _, _, l in pods):
                        rep.fail("selectors", r.name, f"{key(np)}: a peer selector selects no pod")


def check_writable(r: Render, rep: Report) -> None:
    for w, spec, _ in pod_templates(r.docs):
        for c in spec.get("containers", []) or []:
            at = f"{key(w)} container {c['name']}"
            env = env_of(c, r.docs)
            wanted = []
            if binary(c) in MERIDIAN_BINARIES:
                data = env.get("MERIDIAN_DATA_DIR")
                if not data or not data.startswith("/"):
                    rep.fail("writable", r.name, f"{at}: MERIDIAN_DATA_DIR not an absolute path")
                    continue
                token = env.get("MERIDIAN_ADMIN_TOKEN_FILE", data + "/admin-token")
                wanted += [("MERIDIAN_DATA_DIR", data), (f"the admin token file {token}: its directory", os.path.dirname(token))]
            for a in c.get("args", []) or []:
                if a.startswith("--data-dir="):
                    wanted.append(("--data-dir", a.split("=", 1)[1]))
            for what, path in wanted:
                m = mount_for(path, c)
                vol = volume(spec, w, m["name"]) if m else None
                if not m or m.get("readOnly") or not vol or not ({"emptyDir", "persistentVolumeClaim", "ephemeral"} & set(vol)):
                    rep.fail("writable", r.name, f"{at}: {what} {path} is not on a writable volume")


def check_global(r: Render, rep: Report) -> None:
    g = find(r.docs, "Deployment", "meridian-global")
    if not g:
        return
    if g["spec"].get("replicas") != 3:
        rep.fail("global", r.name, f"{key(g)} has {g['spec'].get('replicas')} replicas, want 3")
    labels = g["spec"]["template"]["metadata"].get("labels", {})
    pdbs = [p for p in by_kind(r.docs, "PodDisruptionBudget") if matches(p["spec"].get("selector"), labels)]
    if not pdbs:
        rep.fail("global", r.name, "no PodDisruptionBudget covers the global's pods")
    for p in pdbs:
        if p["spec"].get("minAvailable") != 2:
            rep.fail("global", r.name, f"{key(p)}: minAvailable {p['spec'].get('minAvailable')}, want 2")
    spec = g["spec"]["template"]["spec"]
    keys = {t.get("topologyKey") for t in spec.get("topologySpreadConstraints", []) or []}
    if "kubernetes.io/hostname" not in keys:
        rep.fail("global", r.name, f"{key(g)}: no topology spread over nodes")
    c = main_container(spec, "meridian-global")
    env = env_of(c, r.docs)
    if env.get("MERIDIAN_STORE") != "etcd":
        rep.fail("global", r.name, f"{key(g)}: MERIDIAN_STORE={env.get('MERIDIAN_STORE')!r}, want etcd")
    endpoints = [e.strip() for e in env.get("MERIDIAN_ETCD_ENDPOINTS", "").split(",") if e.strip()]
    if not endpoints:
        rep.fail("global", r.name, f"{key(g)}: no MERIDIAN_ETCD_ENDPOINTS")
    for e in endpoints:
        if not e.startswith("https://"):
            rep.fail("global", r.name, f"{key(g)}: etcd endpoint {e} is not https")
    for var in ("MERIDIAN_ETCD_CACERT", "MERIDIAN_ETCD_CERT", "MERIDIAN_ETCD_KEY"):
        if not env.get(var):
            rep.fail("global", r.name, f"{key(g)}: {var} not set (etcd requires client certificates)")
    etcd = find(r.docs, "StatefulSet", "meridian-etcd")
    if etcd:
        want = set(etcd_client_urls(etcd))
        if set(endpoints) != want:
            rep.fail("global", r.name, f"etcd endpoints {sorted(endpoints)} are not the StatefulSet's members {sorted(want)}")


def etcd_members(sts: dict) -> list[str]:
    return [f"{sts['metadata']['name']}-{i}" for i in range(sts["spec"].get("replicas", 1))]


def etcd_host(sts: dict, pod: str) -> str:
    return f"{pod}.{sts['spec']['serviceName']}.{sts['metadata'].get('namespace', NAMESPACE)}.svc"


def etcd_client_urls(sts: dict) -> list[str]:
    c = sts["spec"]["template"]["spec"]["containers"][0]
    port = next(p["containerPort"] for p in c["ports"] if p["name"] == "client")
    return [f"https://{etcd_host(sts, m)}:{port}" for m in etcd_members(sts)]


def check_etcd(r: Render, rep: Report) -> None:
    sts = find(r.docs, "StatefulSet", "meridian-etcd")
    if not sts:
        return
    spec = sts["spec"]
    if spec.get("replicas") != 3:
        rep.fail("etcd", r.name, f"{key(sts)} has {spec.get('replicas')} members, want 3")
    if spec.get("podManagementPolicy") != "Parallel":
        rep.fail("etcd", r.name, f"{key(sts)}: members must start in parallel (quorum needs them together)")
    labels = spec["template"]["metadata"].get("labels", {})
    pdbs = [p for p in by_kind(r.docs, "PodDisruptionBudget") if matches(p["spec"].get("selector"), labels)]
    if not pdbs:
        rep.fail("etcd", r.name, "no PodDisruptionBudget covers the etcd pods")
    for p in pdbs:
        if p["spec"].get("minAvailable") != 2:
            rep.fail("etcd", r.name, f"{key(p)}: minAvailable {p['spec'].get('minAvailable')}, want 2")
    if not ((spec["template"]["spec"].get("affinity") or {}).get("podAntiAffinity")):
        rep.fail("etcd", r.name, f"{key(sts)}: no podAntiAffinity")
    svc = find(r.docs, "Service", spec.get("serviceName", ""))
    if not svc or svc["spec"].get("clusterIP") != "None" or not svc["spec"].get("publishNotReadyAddresses"):
        rep.fail("etcd", r.name, f"{key(sts)}: serviceName must be a headless Service publishing unready pods")
    c = spec["template"]["spec"]["containers"][0]
    ns = sts["metadata"].get("namespace", NAMESPACE)
    args = {}
    for a in c.get("args", []) or []:
        k, _, v = a.partition("=")
        args[k] = v.replace("$(POD_NAMESPACE)", ns)
    for flag, want in {
        "--client-cert-auth": "true",
        "--peer-client-cert-auth": "true",
    }.items():
        if args.get(flag) != want:
            rep.fail("etcd", r.name, f"{key(sts)}: {flag} is not {want}")
    for flag in ("--trusted-ca-file", "--cert-file", "--key-file", "--peer-trusted-ca-file",
                 "--peer-cert-file", "--peer-key-file"):
        if not args.get(flag):
            rep.fail("etcd", r.name, f"{key(sts)}: {flag} not set")
    for flag in ("--listen-client-urls", "--listen-peer-urls", "--advertise-client-urls",
                 "--initial-advertise-peer-urls"):
        if not args.get(flag, "").startswith("https://"):
            rep.fail("etcd", r.name, f"{key(sts)}: {flag} is not https")
    for cert in by_kind(r.docs, "Certificate"):
        ref = cert["spec"].get("issuerRef", {})
        issuer = find(r.docs, ref.get("kind", "Issuer"), ref.get("name", ""))
        if not issuer:
            rep.fail("etcd", r.name, f"{key(cert)}: issuer {ref.get('kind')}/{ref.get('name')} is not in the render")
        elif "ca" in issuer["spec"] and secret_keys(r.docs, issuer["spec"]["ca"]["secretName"]) is None:
            rep.fail("etcd", r.name, f"{key(issuer)}: its CA Secret is made by no Certificate")
        if cert["spec"].get("secretName") == "meridian-etcd-tls":
            for m in etcd_members(sts):
                host = etcd_host(sts, m)
                if not any(wildcard_covers(n, host) for n in cert["spec"].get("dnsNames", [])):
                    rep.fail("etcd", r.name, f"{key(cert)} does not name the member {host}")
        usages = set(cert["spec"].get("usages", []))
        if cert["spec"].get("secretName") == "meridian-etcd-tls" and not {"server auth", "client auth"} <= usages:
            rep.fail("etcd", r.name, f"{key(cert)}: members need server auth and client auth, has {sorted(usages)}")
        if cert["spec"].get("secretName") == "meridian-etcd-client-tls" and "client auth" not in usages:
            rep.fail("etcd", r.name, f"{key(cert)}: the globals' certificate lacks client auth")
    peer_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "peer")
    want = {f"{m}=https://{etcd_host(sts, m)}:{peer_port}" for m in etcd_members(sts)}
    got = set(args.get("--initial-cluster", "").split(","))
    if got != want:
        rep.fail("etcd", r.name, f"{key(sts)}: --initial-cluster {sorted(got)} is not the pods {sorted(want)}")


def check_zone(r: Render, rep: Report) -> None:
    sts = find(r.docs, "StatefulSet", "meridian-zone")
    if not sts:
        return
    if sts["spec"].get("replicas") != 1:
        rep.fail("zone", r.name, f"{key(sts)}: a zone is a single writer of its store: replicas must be 1")
    spec = sts["spec"]["template"]["spec"]
    c = main_container(spec, "meridian-zone")
    env = env_of(c, r.docs)
    data = env.get("MERIDIAN_DATA_DIR", "")
    m = mount_for(data, c)
    claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", []) or []}
    if env.get("MERIDIAN_STORE", "embedded") != "embedded" or not m or m["name"] not in claims:
        rep.fail("zone", r.name, f"{key(sts)}: the embedded store ({data!r}) is not on a volume claim")
    if not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", env.get("MERIDIAN_ZONE", "")):
        rep.fail("zone", r.name, f"{key(sts)}: MERIDIAN_ZONE={env.get('MERIDIAN_ZONE')!r} is not an RFC 1035 label")
    addrs = [a.strip() for a in env.get("MERIDIAN_GLOBAL_ADDRESS", "").split(",") if a.strip()]
    if not addrs:
        rep.fail("zone", r.name, f"{key(sts)}: no MERIDIAN_GLOBAL_ADDRESS (the zone would run standalone)")
    for a in addrs:
        if not a.startswith("grpcs://"):
            rep.fail("zone", r.name, f"{key(sts)}: global address {a} is not grpcs://")
    for var in ("MERIDIAN_TOKEN_FILE", "MERIDIAN_CA_FILE"):
        if not env.get(var):
            rep.fail("zone", r.name, f"{key(sts)}: {var} not set")
    # Proxies dial the xDS Services by name: the generated certificate must
    # carry those names.
    if "MERIDIAN_XDS_TLS_CERT" not in env:
        names = {n.strip() for n in env.get("MERIDIAN_XDS_TLS_NAMES", "").split(",")}
        labels = sts["spec"]["template"]["metadata"].get("labels", {})
        xds_ports = {"xds"} | {p["containerPort"] for p in c.get("ports", []) if p.get("name") == "xds"}
        for svc in by_kind(r.docs, "Service"):
            if svc["spec"].get("clusterIP") == "None" or not matches(svc["spec"].get("selector"), labels):
                continue
            if any(p.get("targetPort") in xds_ports for p in svc["spec"].get("ports", [])):
                dns = f"{svc['metadata']['name']}.{svc['metadata'].get('namespace', NAMESPACE)}.svc"
                if dns not in names:
                    rep.fail("zone", r.name, f"{key(svc)}: {dns} is not in MERIDIAN_XDS_TLS_NAMES "
                             "(proxies dialing it would not verify the xDS certificate)")
    # With the global in the same render, the zone dials the name the
    # global's generated KDS certificate is issued for.
    g = find(r.docs, "Deployment", "meridian-global")
    if g:
        gc = main_container(g["spec"]["template"]["spec"], "meridian-global")
        genv = env_of(gc, r.docs)
        adv = genv.get("MERIDIAN_KDS_ADVERTISED_ADDRESS", "")
        if "MERIDIAN_KDS_TLS_CERT" not in genv and adv not in addrs:
            rep.fail("zone", r.name, f"zone dials {addrs}, the global's KDS certificate names {adv!r}")
        kds = [p["containerPort"] for p in gc.get("ports", []) if p.get("name") == "kds"]
        for a in addrs:
            hostport = a.split("://", 1)[1]
            host, _, port = hostport.rpartition(":")
            svc_name, _, rest = host.partition(".")
            if rest.startswith(NAMESPACE):
                svc = find(r.docs, "Service", svc_name)
                ok = svc and any(str(p["port"]) == port and p.get("targetPort") in ("kds", *kds)
                                 for p in svc["spec"].get("ports", []))
                if not ok:
                    rep.fail("zone", r.name, f"global address {a}: no Service {svc_name} port {port} to the global's KDS")


def containerfile_binaries() -> set[str] | None:
    """The binaries deploy/container/Containerfile puts on the PATH."""
    f = ROOT / "deploy" / "container" / "Containerfile"
    if not f.exists():
        return None
    text = re.sub(r"\\\n", " ", f.read_text())
    found = set()
    for line in text.splitlines():
        if line.strip().startswith("COPY") and "/usr/local/bin" in line:
            found |= {os.path.basename(w) for w in line.split() if w.startswith("/") and "/release/" in w}
    return found


def check_image(r: Render, rep: Report) -> None:
    bins = containerfile_binaries()
    if bins is None:
        return
    for w, spec, _ in pod_templates(r.docs):
        for c in all_containers(spec):
            if "meridian" in c.get("image", "") and binary(c) not in bins:
                rep.fail("image", r.name, f"{key(w)} container {c['name']}: command {c.get('command')} "
                         f"is none of the image's binaries {sorted(bins)}")


CHECKS = [check_image, check_namespace, check_security, check_probes, check_listen, check_refs,
          check_selectors, check_writable, check_global, check_etcd, check_zone]


def run_checks(renders: list[Render], versions: list[str], schema: bool = True) -> Report:
    rep = Report()
    for r in renders:
        if schema:
            check_schema(r, rep, versions)
        for chk in CHECKS:
            try:
                chk(r, rep)
            except Exception as e:  # a manifest too broken to check is a failure
                rep.fail(chk.__name__.removeprefix("check_"), r.name, f"could not check: {type(e).__name__}: {e}")
    return rep


# ---------------------------------------------------------------- self-test


def container(docs, kind, name):
    return find(docs, kind, name)["spec"]["template"]["spec"]["containers"][0]


def set_env(c, name, value):
    for e in c.setdefault("env", []):
        if e["name"] == name:
            e["value"] = value
            return
    c["env"].append({"name": name, "value": value})


def set_cm(docs, prefix, k, v):
    for cm in by_kind(docs, "ConfigMap"):
        if cm["metadata"]["name"].startswith(prefix):
            cm["data"][k] = v


def drop(docs, kind, name):
    docs[:] = [d for d in docs if key(d) != f"{kind}/{name}"]


G, Z, E = ("Deployment", "meridian-global"), ("StatefulSet", "meridian-zone"), ("StatefulSet", "meridian-etcd")

# (check that must fail, what is broken, how)
MUTATIONS = [
    ("schema", "an unknown field in a container",
     lambda d: container(d, *G).__setitem__("imagePulPolicy", "Always")),
    ("schema", "a string where a number belongs",
     lambda d: find(d, *G)["spec"].__setitem__("replicas", "three")),
    ("namespace", "an object without a namespace",
     lambda d: find(d, "Service", "meridian-zone")["metadata"].pop("namespace")),
    ("security", "runAsNonRoot removed from a container and its pod",
     lambda d: (container(d, *G)["securityContext"].pop("runAsNonRoot"),
                find(d, *G)["spec"]["template"]["spec"]["securityContext"].pop("runAsNonRoot"))),
    ("security", "a writable root filesystem",
     lambda d: container(d, *Z)["securityContext"].__setitem__("readOnlyRootFilesystem", False)),
    ("security", "no resource limits",
     lambda d: container(d, *E)["resources"].pop("limits")),
    ("security", "capabilities not dropped",
     lambda d: container(d, *E)["securityContext"].pop("capabilities")),
    ("security", "a mounted service account token",
     lambda d: find(d, *Z)["spec"]["template"]["spec"].__setitem__("automountServiceAccountToken", True)),
    ("security", "an unpinned image",
     lambda d: container(d, *G).__setitem__("image", "ghcr.io/meridian/meridian:latest")),
    ("security", "a hostPath volume",
     lambda d: find(d, *G)["spec"]["template"]["spec"]["volumes"].append({"name": "h", "hostPath": {"path": "/"}})),
    ("probes", "no readiness probe on the zone",
     lambda d: container(d, *Z).pop("readinessProbe")),
    ("probes", "no liveness probe on etcd",
     lambda d: container(d, *E).pop("livenessProbe")),
    ("probes", "readiness on /healthy instead of /ready",
     lambda d: container(d, *G)["readinessProbe"]["httpGet"].__setitem__("path", "/healthy")),
    ("probes", "API TLS on with HTTP probes",
     lambda d: set_env(container(d, *G), "MERIDIAN_API_TLS_CERT", "/var/lib/meridian/x")),
    ("listen", "the API on loopback",
     lambda d: set_env(container(d, *G), "MERIDIAN_API_ADDR", "127.0.0.1:5681")),
    ("listen", "the zone's xDS address unset",
     lambda d: container(d, *Z).__setitem__("env", [e for e in container(d, *Z)["env"] if e["name"] != "MERIDIAN_XDS_ADDR"])),
    ("refs", "an unknown Secret",
     lambda d: find(d, *G)["spec"]["template"]["spec"]["volumes"][1]["secret"].__setitem__("secretName", "nope")),
    ("refs", "a missing ConfigMap",
     lambda d: container(d, *Z)["envFrom"][0]["configMapRef"].__setitem__("name", "meridian-zone-config-missing")),
    ("refs", "a file the Secret does not hold",
     lambda d: set_env(container(d, *Z), "MERIDIAN_TOKEN_FILE", "/etc/meridian/zone-join/zone-token")),
    ("refs", "an etcd flag pointing outside any mount",
     lambda d: container(d, *E)["args"].__setitem__(
         container(d, *E)["args"].index("--cert-file=/etc/etcd/tls/tls.crt"), "--cert-file=/etc/etcd/server.crt")),
    ("selectors", "a Service targeting an undeclared port",
     lambda d: find(d, "Service", "meridian-zone-xds")["spec"]["ports"][0].__setitem__("targetPort", "grpc")),
    ("selectors", "a PodDisruptionBudget selecting nothing",
     lambda d: find(d, "PodDisruptionBudget", "meridian-etcd")["spec"]["selector"]["matchLabels"].__setitem__(
         "app.kubernetes.io/name", "etc")),
    ("selectors", "a NetworkPolicy peer selecting nothing",
     lambda d: find(d, "NetworkPolicy", "meridian-etcd")["spec"]["ingress"][0]["from"][0]["podSelector"]
     ["matchLabels"].__setitem__("app.kubernetes.io/name", "meridian-globl")),
    ("refs", "an operator Secret missing from README.md",
     lambda d: OPERATOR_SECRETS.__setitem__("meridian-undocumented", {"x"}) or
     find(d, *G)["spec"]["template"]["spec"]["volumes"][1]["secret"].__setitem__("secretName", "meridian-undocumented")),
    ("writable", "the data dir read-only",
     lambda d: container(d, *G)["volumeMounts"][0].__setitem__("readOnly", True)),
    ("writable", "the admin token on the root filesystem",
     lambda d: set_env(container(d, *Z), "MERIDIAN_ADMIN_TOKEN_FILE", "/admin-token")),
    ("global", "2 replicas",
     lambda d: find(d, *G)["spec"].__setitem__("replicas", 2)),
    ("global", "no PodDisruptionBudget for the global",
     lambda d: drop(d, "PodDisruptionBudget", "meridian-global")),
    ("global", "an etcd endpoint left out",
     lambda d: set_cm(d, "meridian-global-config", "MERIDIAN_ETCD_ENDPOINTS",
                      "https://meridian-etcd-0.meridian-etcd.meridian-system.svc:2379,"
                      "https://meridian-etcd-1.meridian-etcd.meridian-system.svc:2379")),
    ("global", "etcd endpoints over http",
     lambda d: set_cm(d, "meridian-global-config", "MERIDIAN_ETCD_ENDPOINTS",
                      find(d, "ConfigMap", next(c["metadata"]["name"] for c in by_kind(d, "ConfigMap")
                                                if c["metadata"]["name"].startswith("meridian-global-config")))
                      ["data"]["MERIDIAN_ETCD_ENDPOINTS"].replace("https://", "http://"))),
    ("global", "no etcd client certificate",
     lambda d: container(d, *G).__setitem__("env", [e for e in container(d, *G)["env"] if e["name"] != "MERIDIAN_ETCD_CERT"])),
    ("etcd", "no PodDisruptionBudget for etcd",
     lambda d: drop(d, "PodDisruptionBudget", "meridian-etcd")),
    ("etcd", "client certificate auth off",
     lambda d: container(d, *E)["args"].remove("--client-cert-auth=true")),
    ("etcd", "a member missing from --initial-cluster",
     lambda d: container(d, *E).__setitem__("args", [
         a.split(",meridian-etcd-2=")[0] if a.startswith("--initial-cluster=") else a for a in container(d, *E)["args"]])),
    ("selectors", "a spread constraint that matches other pods",
     lambda d: find(d, *G)["spec"]["template"]["spec"]["topologySpreadConstraints"][0]["labelSelector"]
     ["matchLabels"].__setitem__("app.kubernetes.io/name", "meridian-zone")),
    ("selectors", "a Service selecting no pod",
     lambda d: find(d, "Service", "meridian-global-kds")["spec"]["selector"].__setitem__("app.kubernetes.io/instance", "x")),
    ("etcd", "a member certificate without the member names",
     lambda d: find(d, "Certificate", "meridian-etcd-tls")["spec"].__setitem__("dnsNames", ["meridian-etcd.meridian-system.svc"]),
     ". + components/etcd-cert-manager"),
    ("etcd", "a member certificate without client auth (peers)",
     lambda d: find(d, "Certificate", "meridian-etcd-tls")["spec"]["usages"].remove("client auth"),
     ". + components/etcd-cert-manager"),
    ("etcd", "a Certificate whose issuer is missing",
     lambda d: drop(d, "Issuer", "meridian-etcd-ca"), ". + components/etcd-cert-manager"),
    ("etcd", "ordered start (deadlocks quorum)",
     lambda d: find(d, *E)["spec"].pop("podManagementPolicy")),
    ("zone", "an xDS certificate without the xDS Service's name",
     lambda d: set_cm(d, "meridian-zone-config", "MERIDIAN_XDS_TLS_NAMES", "zone.example.com")),
    ("image", "a command the image does not have",
     lambda d: container(d, *Z).__setitem__("command", ["/usr/local/bin/meridian-zonee"])),
    ("zone", "two zone replicas",
     lambda d: find(d, *Z)["spec"].__setitem__("replicas", 2)),
    ("zone", "a zone dialing a name the KDS certificate lacks",
     lambda d: set_cm(d, "meridian-zone-config", "MERIDIAN_GLOBAL_ADDRESS", "grpcs://meridian-global-kds.meridian-system.svc:5685")),
    ("zone", "a plain-text global address",
     lambda d: set_cm(d, "meridian-zone-config", "MERIDIAN_GLOBAL_ADDRESS", "http://meridian-global.meridian-system.svc:5685")),
]


def self_test(renders: list[Render], versions: list[str]) -> int:
    """Breaks clean renders (the full one unless a mutation names another)."""
    failed = 0
    for check, what, mutate, *where in MUTATIONS:
        if check == "image" and containerfile_binaries() is None:
            print(f"  skip  {check:9} {what}: no deploy/container/Containerfile")
            continue
        target = next(r for r in renders if r.name == (where[0] if where else "."))
        docs = copy.deepcopy(target.docs)
        saved = dict(OPERATOR_SECRETS)
        try:
            mutate(docs)
            rep = run_checks([Render(f"{target.name} ({what})", docs)], versions, schema=(check == "schema"))
        finally:
            OPERATOR_SECRETS.clear()
            OPERATOR_SECRETS.update(saved)
        # A check that crashed on the break does not count as catching it.
        caught = [e for e in rep.errors if e[0] == check and not e[2].startswith("could not check")]
        if caught:
            print(f"  ok    {check:9} catches {what}: {caught[0][2][:110]}")
        else:
            failed += 1
            print(f"  MISSED {check:9} did not catch {what} (saw {rep.errors[:2]})")
    checks = {c.__name__.removeprefix("check_") for c in CHECKS} | {"schema"}
    untested = checks - {m[0] for m in MUTATIONS}
    if untested:
        print(f"  no mutation for the checks {sorted(untested)}")
        failed += 1
    print(f"self-test: {len(MUTATIONS) - failed} of {len(MUTATIONS)} breaks caught")
    return 1 if failed else 0


# --------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--self-test", action="store_true", help="also prove every check can fail")
    ap.add_argument("--out", type=Path, help="write each render here")
    args = ap.parse_args()

    from kubernetes_validate import utils as kv
    from kubernetes_validate.version import __version__ as kv_version

    # The schemas are big: parse each file once, not once per object.
    kv.schema_contents = functools.lru_cache(maxsize=None)(kv.schema_contents)
    versions = [kv.major_minor(kv.latest_version()) if v == "latest" else v for v in SCHEMA_VERSIONS]
    with tempfile.TemporaryDirectory(prefix="k8s-check-", dir=os.environ.get("K8S_CHECK_TMP")) as tmp:
        try:
            renders = render_all(Path(tmp))
        except RuntimeError as e:
            print(f"ERROR [render] {e}")
            print("kubernetes manifests: FAILED")
            return 1
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for r in renders:
            fname = re.sub(r"[^A-Za-z0-9+-]+", "_", r.name.replace(".", "all", 1)).strip("_")
            (args.out / f"{fname}.yaml").write_text(yaml.safe_dump_all(r.docs, sort_keys=False))
    print(f"kubernetes-validate {kv_version}, strict schemas of Kubernetes {', '.join(versions)}")
    rep = run_checks(renders, versions)
    for r in renders:
        n = sum(1 for e in rep.errors if e[1] == r.name)
        kinds = sorted({d["kind"] for d in r.docs})
        print(f"  {'ok  ' if not n else 'FAIL'} {r.name}: {len(r.docs)} objects ({', '.join(kinds)})")
    crd = sorted({f"{d['kind']} ({d['apiVersion']})" for r in renders for d in r.docs
                  if d.get("apiVersion", "").split("/")[0] in CRD_GROUPS})
    if crd:
        print(f"  no bundled schema, checked by rules only: {', '.join(crd)}")
    for check, render, msg in rep.errors:
        print(f"ERROR [{check}] {render}: {msg}")
    status = 1 if rep.errors else 0
    if args.self_test and status == 0:
        status |= self_test(renders, versions)
    elif args.self_test:
        print("self-test skipped: it breaks clean manifests, and these are not")
    print("kubernetes manifests:", "ok" if status == 0 else "FAILED")
    return status


if __name__ == "__main__":
    sys.exit(main())
