# syntax=docker/dockerfile:1
# The Kilo (Python) image: kg (the agent; the entrypoint), kg webhook, kgctl, and what the
# manifests run in it: wireguard-go (the userspace sidecar), the CNI plugins that install-cni
# copies to the host, /bin/sh for the init scripts and python3 for the webhook's cert-gen Job.
#
#   docker build -t ghcr.io/kilo-py/kilo:0.1.0 .
#
# Without a container engine, docker/build.sh builds the same image from the same parts
# (docker/packages.txt, docker/install-kilo.sh and this file's ENV, USER and ENTRYPOINT) with
# mmdebstrap; the tests run it with podman (README, "The image").
#
# A drop-in for Kilo's image (squat/kilo): Kilo's own manifests run unchanged with it. Their
# DaemonSets set no runAsUser and run kg privileged, and their install-cni copies
# /opt/cni/bin/* and writes a temporary file in its working directory (/), so the image's
# user is root, as in Kilo's image, and the four CNI plugins are in /opt/cni/bin. The image
# also has the user kilo (uid 1000), which is all kgctl, kg webhook and cert-gen need (Kilo's
# webhook Deployment and our chart run those as uid 1000).
#
# Our chart (charts/kilo) does not rely on the image's user: every container names its
# runAsUser, and the agent's run as uid 0 with every capability dropped except:
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
# Debian bookworm (Python 3.11): tests/unit/test_dockerfile.py checks the package contents
# against the same Debian release.
ARG DEBIAN_IMAGE=debian:bookworm-slim

FROM ${DEBIAN_IMAGE} AS builder
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# kilo.sandbox's package data links to these two (the wheel holds copies).
COPY manifests/crds.yaml manifests/rbac.yaml ./manifests/
# Wheels of kilo and of every pinned dependency, built with the image's own Python, so that
# the final stage installs offline and carries no compiler or build cache.
RUN python3 -m venv /venv \
 && /venv/bin/pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${DEBIAN_IMAGE}
# One layer: the packages of docker/packages.txt, then docker/install-kilo.sh (the venv, the
# links in /opt/bin, /usr/local/bin and /opt/cni/bin, the iptables wrapper, the user kilo).
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    --mount=type=bind,source=docker,target=/tmp/kilo-image \
    apt-get update \
 && sed -e 's/#.*//' /tmp/kilo-image/packages.txt \
    | DEBIAN_FRONTEND=noninteractive xargs apt-get install -y --no-install-recommends \
 && rm -rf /var/lib/apt/lists/* \
 && sh /tmp/kilo-image/install-kilo.sh /wheels
# docker/build.sh gives its image these lines as they are (ENV, USER, ENTRYPOINT).
ENV PATH=/opt/kilo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Log lines reach the container log as they are written (stdout is a pipe there).
ENV PYTHONUNBUFFERED=1
# root, as Kilo's image: see above.
USER 0
ENTRYPOINT ["/opt/bin/kg"]
