"""The testbed's values: its fixed addresses and paths, the clusters, and what it is made of.

Locations (what a test asks for), machines (a node or a laptop: a network namespace and its
holder process), pods and TCP exchanges (what the probes return). No namespaces, no
processes: :class:`kilo.sandbox.testbed.Testbed` creates those.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kilo.sandbox.controlplane import SERVICE_CIDR
from kilo.sandbox.runs import TestbedError

# Package data (kilo/sandbox/manifests, beside this package): links to manifests/crds.yaml
# and manifests/rbac.yaml, resolved when the package is built, so that an installed package
# has them too.
MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"
PREFIX = re.compile(r"[a-z]{3}[0-9a-f]{6}")
CNI_BIN = Path("/usr/lib/cni")
CNI_CONFLIST = "/etc/cni/net.d/10-kilo.conflist"
# Where an image's kg finds the node's kubeconfig, as in Kilo's DaemonSets.
IMAGE_KUBECONFIG = "/etc/kubernetes/kubeconfig"
WG_INTERFACE = "kilo0"
TOPOLOGY_LABEL = "topology.kubernetes.io/region"
PRIVATE_DIRS = ("/var/run/wireguard", "/var/lib/kilo", "/var/lib/cni", "/etc/cni/net.d")
INTERNET = ipaddress.IPv4Network("203.0.113.0/24")
ROUTER = "203.0.113.1"
CP_WAN = "203.0.113.2"
POD_CIDRS = ipaddress.IPv4Network("10.42.0.0/16")
IPTABLES_TABLES = ("filter", "nat", "mangle", "raw")

# Kilo's kubeadm template: no IPAM ranges, the agent fills them in from the pod CIDR.
KILO_CNI_TEMPLATE: dict[str, Any] = {
    "cniVersion": "0.4.0",
    "name": "kilo",
    "plugins": [
        {
            "name": "kubernetes",
            "type": "bridge",
            "bridge": "kube-bridge",
            "isDefaultGateway": True,
            "forceAddress": True,
            "mtu": 1420,
            "ipam": {"type": "host-local"},
        },
        {"type": "portmap", "snat": True, "capabilities": {"portMappings": True}},
    ],
}


@dataclass(frozen=True)
class Cluster:
    """One Kubernetes cluster of the testbed: its own etcd + kube-apiserver (both in ``cp``,
    on their own ports) and ranges that overlap no other cluster's, as Kilo's multi-cluster
    recipe requires: the pod CIDRs the nodes' /24s are cut from, the Services' range and the
    WireGuard subnet its agents get (``kg --subnet``)."""

    name: str
    pod_cidrs: ipaddress.IPv4Network
    service_cidr: ipaddress.IPv4Network
    wireguard_cidr: ipaddress.IPv4Network


# The first is what a one-cluster testbed always was (Kilo's default WireGuard subnet); the
# second follows upstream's e2e/multi-cluster.sh in moving every range aside.
CLUSTERS = (
    Cluster(
        name="cluster1",
        pod_cidrs=POD_CIDRS,
        service_cidr=ipaddress.IPv4Network(SERVICE_CIDR),
        wireguard_cidr=ipaddress.IPv4Network("10.4.0.0/16"),
    ),
    Cluster(
        name="cluster2",
        pod_cidrs=ipaddress.IPv4Network("10.44.0.0/16"),
        service_cidr=ipaddress.IPv4Network("10.112.0.0/12"),
        wireguard_cidr=ipaddress.IPv4Network("10.5.0.0/16"),
    ),
)

NAME = re.compile(r"[a-z][a-z0-9-]{0,30}")


@dataclass(frozen=True)
class Location:
    """A site: ``nodes`` nodes on one LAN, either each with a public address or (``nat``)
    all behind one masquerading gateway. ``annotations`` go on each of its Node objects.

    ``wireguard`` is ``userspace`` (each node's holder runs ``wireguard-go kilo0`` and
    ``kg`` gets ``--create-interface=false``) or ``kernel`` (``kg`` creates kernel
    WireGuard itself, as by default: only on a kernel with the module). With ``subnets``
    above 1 the LAN's /24 is cut into that many equal subnets, node ``i`` in subnet
    ``(i - 1) % subnets``, all on the one link (a route for the whole /24 on it stands for
    the cloud's router), for ``--encapsulate=crosssubnet``. ``cluster`` is the index in
    :data:`CLUSTERS` of the cluster its nodes join."""

    name: str
    nodes: int = 2
    nat: bool = False
    annotations: Mapping[str, str] = field(default_factory=dict)
    wireguard: str = "userspace"
    subnets: int = 1
    cluster: int = 0


@dataclass(eq=False)
class Machine:
    """A node or a laptop: a network namespace plus its holder process (wireguard-go)."""

    name: str
    netns: str
    process: subprocess.Popen[bytes] | None = None  # None until the holder is started
    location: str | None = None
    lan_ip: str | None = None
    wan_ip: str | None = None
    pod_cidr: str | None = None
    userspace: bool = True  # the holder runs wireguard-go (else kg creates kernel WireGuard)
    cluster: int = 0  # index in CLUSTERS

    @property
    def pid(self) -> int:
        if self.process is None:
            raise TestbedError(f"{self.name}: its holder process is not started")
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass(frozen=True)
class Pod:
    name: str
    node: str
    netns: str
    container_id: str
    ip: str
    gateway: str
    result: Mapping[str, Any]


@dataclass(frozen=True)
class Echo:
    """One TCP exchange: what the client got back, and the client address the server saw."""

    reply: str
    peer: str


def from_dict(resource: Any, data: dict[str, Any]) -> Any:
    return resource.from_dict(data)
