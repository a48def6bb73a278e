# syntax=docker/dockerfile:1
# The Kilo (Python) image: kg (the agent; the entrypoint), kg webhook, kgctl, and what the
# manifests run in it: wireguard-go (the userspace sidecar), the CNI plugins that install-cni
# copies to the host, /bin/sh for the init scripts and python3 for the webhook's cert-gen Job.
#
#   docker build -t ghcr.io/kilo-py/kilo:0.1.0 .
#
# The image's user is kilo (uid 1000), which is all kgctl, kg webhook and cert-gen need. The
# agent's pods run as uid 0 with exactly these capabilities (charts/kilo sets them):
#   kg           NET_ADMIN (WireGuard, links, addresses, routes, IP rules, iptables) and
#                NET_RAW (iptables-legacy's raw socket), on the host network; host paths:
#                /var/lib/kilo (private key, routes it added), /etc/cni/net.d (its conflist;
#                CNI mode), /run/xtables.lock (shared with kube-proxy), /var/run/wireguard
#                (the userspace device's UAPI socket), the kubeconfig
#   wireguard-go NET_ADMIN and the host's /dev/net/tun, /var/run/wireguard (userspace only)
#   install-cni  none; uid 0 for the host's /opt/cni/bin and /etc/cni/net.d
# Nothing needs privileged: true, SYS_MODULE or /lib/modules: the kernel loads wireguard and
# ipip by itself when kg creates such a link.
#
# Debian bookworm, as python:3.11-slim-bookworm: tests/unit/test_dockerfile.py checks the
# package contents against the same Debian release.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# kilo.sandbox's package data links to these two (the wheel holds copies).
COPY manifests/crds.yaml manifests/rbac.yaml ./manifests/
# Wheels of kilo and of every pinned dependency, so that the final stage installs offline
# and carries no compiler or build cache.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
# wireguard-tools: wg, for debugging on the node (kg itself speaks netlink and UAPI).
# iptables: both backends (see docker/iptables-wrapper). iproute2: ip (kg's IPIP tunnel).
# graphviz + a font: dot for /graph and kgctl graph renderings.
# containernetworking-plugins: bridge, host-local, loopback, portmap in /usr/lib/cni.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      containernetworking-plugins \
      fonts-dejavu-core \
      graphviz \
      iproute2 \
      iptables \
      wireguard-go \
      wireguard-tools \
 && rm -rf /var/lib/apt/lists/*
# kg and kgctl become /usr/local/bin/kg and /usr/local/bin/kgctl (console scripts).
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels kilo
# iptables, iptables-save, iptables-restore and the ip6tables ones run the backend the host
# uses; the -legacy and -nft commands stay reachable under their own names.
COPY docker/iptables-wrapper /usr/sbin/kilo-iptables-wrapper
RUN chmod 0755 /usr/sbin/kilo-iptables-wrapper \
 && for name in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do \
      ln -sf kilo-iptables-wrapper "/usr/sbin/$name"; \
    done \
 && useradd --uid 1000 --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin kilo
# Log lines reach the container log as they are written (stdout is a pipe there).
ENV PYTHONUNBUFFERED=1
USER 1000
ENTRYPOINT ["/usr/local/bin/kg"]
