#!/usr/bin/env bash
# Build the test control plane (etcd and kube-apiserver) from the Go module proxy, once.
#
# The binaries go to a cache outside the clone, keyed by the pinned go.mod/go.sum, so a
# rerun (or another clone) reuses them; a missing or partial cache rebuilds itself.
# Prints the directory that holds bin/etcd and bin/kube-apiserver.
#
# Cold build on a 2-core machine: about 12 minutes (kube-apiserver 10, etcd 2); with a warm
# Go build cache (~/.cache/go-build) a rebuild only relinks (about 1 minute).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache_root="${KILO_CONTROLPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kilo-controlplane}"
key="$(cat "$here"/apiserver/go.mod "$here"/apiserver/go.sum "$here"/etcd/go.mod "$here"/etcd/go.sum | sha256sum | cut -c1-16)"
out="$cache_root/$key"

if [ -x "$out/bin/etcd" ] && [ -x "$out/bin/kube-apiserver" ] && [ -f "$out/complete" ]; then
  echo "$out"
  exit 0
fi

# Go may be installed without being on a non-interactive shell's PATH.
command -v go >/dev/null || export PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || { echo "build.sh: Go is needed to build the test control plane" >&2; exit 1; }
mkdir -p "$out/bin"
rm -f "$out/complete"
step() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# Go may not build from a read-only source tree in the module cache; build from a copy.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r "$here/apiserver" "$here/etcd" "$work/"
step "building etcd (about 2 minutes the first time)"
(cd "$work/etcd" && go build -trimpath -o "$out/bin/etcd" go.etcd.io/etcd/server/v3)
step "building kube-apiserver (about 10 minutes the first time)"
(cd "$work/apiserver" && go build -trimpath -o "$out/bin/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver)
touch "$out/complete"
step "test control plane ready in $out"
echo "$out"
