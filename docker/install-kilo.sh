#!/bin/sh
# Put Kilo into the image: run once, as root, inside the image's root file system, after the
# Debian packages of docker/packages.txt. The Dockerfile runs it (RUN) and so does
# docker/build.sh (in a chroot without network), so both images get the same layout.
#
#   install-kilo.sh WHEELS   WHEELS: a directory with the kilo wheel and a wheel of every
#                            dependency (installed offline, nothing else is fetched)
#
# Layout (what Kilo's manifests and ours rely on; tests/image checks every path):
#   /opt/kilo                   a venv of Debian's python3 with kilo; /opt/kilo/bin leads PATH
#                               (the Dockerfile's ENV), so python3 there imports kilo (cert-gen)
#   /opt/bin/kg, /opt/bin/kgctl Kilo's image's paths; /opt/bin/kg is the entrypoint
#   /usr/local/bin/kg, kgctl    the paths of this image's first builds (entrypoint /usr/local/bin/kg)
#   /opt/cni/bin/{bridge,host-local,loopback,portmap}
#                               the CNI plugins Kilo's install-cni copies (`cp /opt/cni/bin/*`),
#                               hard links to Debian's /usr/lib/cni (our chart reads those)
#   /usr/sbin/iptables* ...     docker/iptables-wrapper under the six names
#   user kilo (uid/gid 1000)    for kgctl, kg webhook and cert-gen (the manifests ask for it)
set -eu
wheels=${1:?usage: install-kilo.sh WHEELS}
here=$(dirname "$0")

python3 -m venv /opt/kilo
/opt/kilo/bin/pip install --quiet --no-cache-dir --no-index --find-links "$wheels" kilo
# kg and kgctl are console scripts of the venv (#!/opt/kilo/bin/python3).
mkdir -p /opt/bin /opt/cni/bin
for command in kg kgctl; do
  ln -sf /opt/kilo/bin/$command /opt/bin/$command
  ln -sf /opt/kilo/bin/$command /usr/local/bin/$command
done

# Only these four, as in Kilo's image: `cp /opt/cni/bin/*` must not put Debian's other plugins
# over the host's own.
for plugin in bridge host-local loopback portmap; do
  ln -f /usr/lib/cni/$plugin /opt/cni/bin/$plugin
done

# iptables, iptables-save, iptables-restore and the ip6tables ones run the backend the host
# uses; the -legacy and -nft commands stay reachable under their own names.
install -m 0755 "$here/iptables-wrapper" /usr/sbin/kilo-iptables-wrapper
for name in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
  ln -sf kilo-iptables-wrapper "/usr/sbin/$name"
done

useradd --uid 1000 --user-group --no-create-home --home-dir /nonexistent \
  --shell /usr/sbin/nologin kilo
