#!/usr/bin/env bash
# Build the control plane (etcd and kube-apiserver) and helm from the Go module proxy, once.
#
# The binaries go to a cache outside the clone, keyed by the pinned go.mod/go.sum, so a
# rerun (or another clone, or the installed package) reuses them; a missing or partial cache
# rebuilds itself. helm and Prometheus have keys of their own (helm/go.mod, helm/go.sum, ...),
# so pinning another helm never rebuilds kube-apiserver.
#
#   build.sh               builds all; prints the directory that holds bin/etcd and bin/kube-apiserver
#   build.sh controlplane  etcd and kube-apiserver only (the sandbox and the tests' testbeds)
#   build.sh helm          builds helm only; prints the path of the helm binary
#   build.sh prometheus    builds Prometheus only (the e2e test of the Grafana dashboard's
#                          queries); prints the path of the prometheus binary
#   build.sh check         prints the control plane's directory if it is built, else exits 1
#
# Progress goes to stderr, one line per step ("HH:MM:SS building etcd ..."). Cold build on a
# 2-core machine: about 12 minutes (kube-apiserver 10, etcd 2) plus helm (about 3 minutes
# when the Kubernetes libraries are already in the Go build cache) plus Prometheus (about
# 6 minutes, 1 of them downloading modules); with a warm Go build cache (~/.cache/go-build) a
# rebuild only relinks (about 1 minute).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache_root="${KILO_CONTROLPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kilo-controlplane}"
step() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# Go may be installed without being on a non-interactive shell's PATH.
command -v go >/dev/null || export PATH="$PATH:/usr/local/go/bin"

build_helm() {
  local key out work
  key="$(cat "$here"/helm/go.mod "$here"/helm/go.sum | sha256sum | cut -c1-16)"
  out="$cache_root/helm-$key"
  if [ -x "$out/bin/helm" ] && [ -f "$out/complete" ]; then
    echo "$out/bin/helm"
    return 0
  fi
  command -v go >/dev/null || { echo "build.sh: Go is needed to build helm" >&2; return 1; }
  mkdir -p "$out/bin"
  rm -f "$out/complete"
  work="$(mktemp -d)"
  cp -r "$here/helm" "$work/"
  step "building helm (about 3 minutes the first time)"
  # helm's own build stamps its version the same way; without it `helm version` says v3.22.
  (cd "$work/helm" && go build -trimpath \
    -ldflags "-X helm.sh/helm/v3/internal/version.version=$(go list -m -f '{{.Version}}' helm.sh/helm/v3)" \
    -o "$out/bin/helm" helm.sh/helm/v3/cmd/helm) || { rm -rf "$work"; return 1; }
  rm -rf "$work"
  touch "$out/complete"
  step "helm ready in $out"
  echo "$out/bin/helm"
}

# Prometheus without its cloud service discoveries (tag remove_all_sd: static, file and HTTP
# targets remain), which halves the build; the web UI's assets are not built in (the HTTP API
# is all the tests use).
build_prometheus() {
  local key out work version
  key="$(cat "$here"/prometheus/go.mod "$here"/prometheus/go.sum | sha256sum | cut -c1-16)"
  out="$cache_root/prometheus-$key"
  if [ -x "$out/bin/prometheus" ] && [ -f "$out/complete" ]; then
    echo "$out/bin/prometheus"
    return 0
  fi
  command -v go >/dev/null || { echo "build.sh: Go is needed to build Prometheus" >&2; return 1; }
  mkdir -p "$out/bin"
  rm -f "$out/complete"
  work="$(mktemp -d)"
  cp -r "$here/prometheus" "$work/"
  step "building Prometheus (about 6 minutes the first time)"
  # The module v0.X.Y is Prometheus 3.X.Y; stamped as its own release build does.
  version="$(cd "$work/prometheus" && go list -m -f '{{.Version}}' github.com/prometheus/prometheus)"
  version="$(echo "$version" | sed -E 's/^v0\.([0-9]+)([0-9]{2})\.([0-9]+)$/\1.\2.\3/')"
  (cd "$work/prometheus" && go build -trimpath -tags remove_all_sd \
    -ldflags "-X github.com/prometheus/common/version.Version=$version" \
    -o "$out/bin/prometheus" github.com/prometheus/prometheus/cmd/prometheus) ||
    { rm -rf "$work"; return 1; }
  rm -rf "$work"
  touch "$out/complete"
  step "Prometheus ready in $out"
  echo "$out/bin/prometheus"
}

mode="${1:-all}"
case "$mode" in
  all | controlplane | helm | prometheus | check) ;;
  *) echo "build.sh: unknown mode '$mode' (all, controlplane, helm, prometheus, check)" >&2; exit 2 ;;
esac
if [ "$mode" = helm ]; then
  build_helm
  exit 0
fi
if [ "$mode" = prometheus ]; then
  build_prometheus
  exit 0
fi
# The manifest tests need helm and the dashboard's e2e test Prometheus; build them first so that
# their paths never end this script's output.
if [ "$mode" = all ]; then
  build_helm >/dev/null
  build_prometheus >/dev/null
fi
key="$(cat "$here"/apiserver/go.mod "$here"/apiserver/go.sum "$here"/etcd/go.mod "$here"/etcd/go.sum | sha256sum | cut -c1-16)"
out="$cache_root/$key"

if [ -x "$out/bin/etcd" ] && [ -x "$out/bin/kube-apiserver" ] && [ -f "$out/complete" ]; then
  echo "$out"
  exit 0
fi
[ "$mode" = check ] && exit 1

command -v go >/dev/null || { echo "build.sh: Go is needed to build the control plane" >&2; exit 1; }
mkdir -p "$out/bin"
rm -f "$out/complete"
# Go may not build from a read-only source tree (the module cache, an installed package);
# build from a copy.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r "$here/apiserver" "$here/etcd" "$work/"
step "building etcd (about 2 minutes the first time)"
(cd "$work/etcd" && go build -trimpath -o "$out/bin/etcd" go.etcd.io/etcd/server/v3)
step "building kube-apiserver (about 10 minutes the first time)"
(cd "$work/apiserver" && go build -trimpath -o "$out/bin/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver)
touch "$out/complete"
step "control plane ready in $out"
echo "$out"
