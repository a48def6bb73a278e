#!/usr/bin/env bash
# Build the Kilo image without a container engine, from the Dockerfile's own parts: Debian
# bookworm's minbase (what debian:bookworm-slim is made of) with the packages of
# docker/packages.txt, made by mmdebstrap; then docker/install-kilo.sh in a chroot without
# network, from wheels of this checkout; then the Dockerfile's ENV, USER and ENTRYPOINT lines.
# Root and mmdebstrap are needed (apt-get install mmdebstrap), and PyPI for the wheels.
#
#   build.sh               builds (or reuses) the image; prints the directory that holds
#                          rootfs.tar (the image's one layer) and config (its ENV, USER and
#                          ENTRYPOINT lines, as `podman import --change` takes them)
#   build.sh import NAME   builds (or reuses) it, then imports it into podman as NAME
#
# The cache is outside the clone, in ${KILO_IMAGE_CACHE:-~/.cache/kilo-image}: base-<key>
# (mmdebstrap's output, keyed by the package list and this recipe; about 2 minutes on 2
# cores, most of it downloading) and image-<key> (keyed by that and every input of the wheels
# and of docker/: about 1 minute). The three images and two bases used last are kept.
# Progress goes to stderr, one line per step.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache_root="${KILO_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kilo-image}"
suite=bookworm
step() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

mode="${1:-build}"
case "$mode" in
  build) ;;
  import)
    name="${2:?usage: build.sh import NAME}"
    command -v podman >/dev/null || { echo "build.sh: podman is not installed" >&2; exit 1; }
    ;;
  *) echo "build.sh: unknown mode '$mode' (build, import NAME)" >&2; exit 2 ;;
esac

packages="$(sed -e 's/#.*//' "$root/docker/packages.txt" | tr -s ' \t' '\n' | grep -v '^$' | paste -sd, -)"
# Debian's images are the minbase variant with merged /usr made by directory links; like the
# slim images, no documentation, manual pages or translations.
mmdebstrap_args=(
  --variant=minbase
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --aptopt='APT::Install-Recommends "false"'
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/groff/*'
  --dpkgopt='path-exclude=/usr/share/lintian/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --include="$packages"
)
base_key="$(printf '%s\n' "$suite" "${mmdebstrap_args[@]}" | sha256sum | cut -c1-16)"
# The wheels' inputs are those the Dockerfile's builder stage copies.
inputs=(pyproject.toml README.md src manifests/crds.yaml manifests/rbac.yaml Dockerfile docker)
key="$(
  cd "$root"
  {
    echo "$base_key"
    find "${inputs[@]}" \( -name __pycache__ -o -name '*.egg-info' \) -prune -o \
      \( -type f -o -type l \) -print | LC_ALL=C sort | xargs -d '\n' sha256sum
  } | sha256sum | cut -c1-16
)"
base="$cache_root/base-$base_key"
out="$cache_root/image-$key"

import() {
  local changes=()
  while IFS= read -r line; do
    changes+=(--change "$line")
  done <"$out/config"
  step "importing $out/rootfs.tar into podman as $name"
  podman import --quiet "${changes[@]}" "$out/rootfs.tar" "$name" >/dev/null
  echo "$name"
}

if [ -f "$out/rootfs.tar" ]; then
  touch "$out"
  if [ "$mode" = import ]; then import; else echo "$out"; fi
  exit 0
fi

[ "$(id -u)" -eq 0 ] || { echo "build.sh: building the image needs root (mmdebstrap, chroot)" >&2; exit 1; }
command -v mmdebstrap >/dev/null || {
  echo "build.sh: mmdebstrap is not installed (apt-get install --no-install-recommends mmdebstrap)" >&2
  exit 1
}
mkdir -p "$cache_root"
# One build at a time; a build that waited here may find its image made by the other one.
exec 9>"$cache_root/lock"
flock 9
# Work directories of builds that were killed (builds take turns, so none is in use).
rm -rf "$cache_root"/.work-*
work="$(mktemp -d "$cache_root/.work-XXXXXX")"
trap 'rm -rf "$work"' EXIT

if [ ! -f "$base/base.tar" ]; then
  step "mmdebstrap $suite minbase + $packages (about 2 minutes the first time)"
  mmdebstrap --quiet "${mmdebstrap_args[@]}" "$suite" "$work/base.tar" >"$work/mmdebstrap.log" 2>&1 || {
    tail -n 40 "$work/mmdebstrap.log" >&2
    echo "build.sh: mmdebstrap failed (its log's end above)" >&2
    exit 1
  }
  mkdir -p "$base"
  mv "$work/base.tar" "$base/base.tar"
fi
touch "$base"

if [ ! -f "$out/rootfs.tar" ]; then
  step "building wheels of kilo and its dependencies"
  mkdir -p "$work/src" "$work/rootfs"
  # A copy, as the Dockerfile's builder has: setuptools builds in the source tree.
  tar -C "$root" --exclude=__pycache__ --exclude='*.egg-info' -cf - \
    pyproject.toml README.md src manifests/crds.yaml manifests/rbac.yaml | tar -C "$work/src" -xf -
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" wheel --quiet --disable-pip-version-check --wheel-dir "$work/wheels" "$work/src"
  step "installing kilo into the image (docker/install-kilo.sh, in a chroot without network)"
  tar -C "$work/rootfs" --numeric-owner --xattrs --xattrs-include='*' -xpf "$base/base.tar"
  mkdir "$work/rootfs/tmp/kilo-image"
  cp "$root/docker/packages.txt" "$root/docker/install-kilo.sh" "$root/docker/iptables-wrapper" \
    "$work/rootfs/tmp/kilo-image/"
  cp -r "$work/wheels" "$work/rootfs/tmp/kilo-image/wheels"
  unshare --mount --net --pid --fork --mount-proc="$work/rootfs/proc" \
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    chroot "$work/rootfs" sh /tmp/kilo-image/install-kilo.sh /tmp/kilo-image/wheels
  rm -rf "$work/rootfs/tmp/kilo-image"
  # The final stage's ENV, USER and ENTRYPOINT (and any WORKDIR, CMD, LABEL, STOPSIGNAL).
  awk '/^FROM /{n = 0; next} /^(ENV|USER|ENTRYPOINT|WORKDIR|CMD|LABEL|STOPSIGNAL) /{line[++n] = $0}
       END{for (i = 1; i <= n; i++) print line[i]}' "$root/Dockerfile" >"$work/config"
  step "writing rootfs.tar"
  tar -C "$work/rootfs" --numeric-owner --xattrs --xattrs-include='*' --sort=name \
    -cf "$work/rootfs.tar" .
  mkdir -p "$work/image"
  mv "$work/rootfs.tar" "$work/config" "$work/image/"
  mv -T "$work/image" "$out"
fi

# Keep the three images and the two bases used last (a directory's time is its last use).
prune() {
  local kept=$1 dir
  shift
  for dir in $(ls -1dt "$@" 2>/dev/null | tail -n +$((kept + 1))); do
    rm -rf "$dir"
  done
}
prune 3 "$cache_root"/image-*
prune 2 "$cache_root"/base-*
step "image ready in $out"
if [ "$mode" = import ]; then import; else echo "$out"; fi
