"""Shared example clusters from the Kilo reference, as mesh values.

``reference_cluster()`` is the worked example of kilo-mesh.md §2.3: four nodes in two
clouds and one VPN peer. Keys are fixed so that rendered text can be compared verbatim.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import yaml

from kilo.mesh import translate
from kilo.mesh.endpoint import Endpoint
from kilo.mesh.keys import Key
from kilo.mesh.model import Granularity, Node, Peer
from kilo.mesh.routes import EncapsulationPolicy, Route, Rule, plan_routes
from kilo.mesh.topology import build_topology

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_DUMP = ROOT / "examples" / "cluster.yaml"
KILO_SUBNET = ipaddress.ip_network("10.4.0.0/16")
# alpha's pod CIDR, that of the CNI example of kilo-mesh.md §6.10: with it, the conflist of
# Kilo's kubeadm manifest (tests/golden/cni-template.conflist) becomes cni-rewritten.conflist.
CNI_POD_CIDR = ipaddress.ip_network("10.2.0.0/24")

PRIVATE_KEYS = {
    "alpha": Key.parse("aCeI7O4eTJTwlJ4IHe5grdXfvJRai3Ng4Ms9ZCAR1F8="),
    "beta": Key.parse("kAvgpDDL6KYNUJAUTMqai18xmQaI2VNoAaoT5NITukc="),
    "gamma": Key.parse("CIqvDUsbwGngRA7PyeolHb2bIPuh5TY+UK7MfBL8/V0="),
    "delta": Key.parse("wPChOqUUolMmTCupSTudjEVx+a+xqWmps1HrathBCUg="),
    "laptop": Key.parse("UKpUhdazuvOjQ02l9gPiN2oMK+sDjT4y6032IJYN3GQ="),
}
PUBLIC_KEYS = {name: key.public_key() for name, key in PRIVATE_KEYS.items()}


def reference_objects() -> list[dict[str, Any]]:
    """The Kubernetes objects of examples/cluster.yaml."""
    items: list[dict[str, Any]] = yaml.safe_load(EXAMPLE_DUMP.read_text())["items"]
    return items


def reference_cluster() -> tuple[list[Node], list[Peer]]:
    """The translated nodes and peers of the §2.3 worked example."""
    nodes: list[Node] = []
    peers: list[Peer] = []
    for obj in reference_objects():
        if obj["kind"] == "Node":
            node = translate.translate_node(obj).value
            assert node is not None
            nodes.append(node)
        else:
            peer = translate.translate_peer(obj).value
            assert peer is not None
            peers.append(peer)
    return nodes, peers


def alpha_plan() -> tuple[tuple[Route, ...], tuple[Rule, ...]]:
    """The routes and rules of the leader alpha (location granularity): the §4.5 example."""
    nodes, peers = reference_cluster()
    t = build_topology(
        nodes,
        peers,
        granularity=Granularity.LOCATION,
        hostname="alpha",
        subnet=KILO_SUBNET,
        key=PRIVATE_KEYS["alpha"],
    )
    return plan_routes(t, policy=EncapsulationPolicy())


def location_member(name: str, *, leader: bool = False, public: bool = False) -> Node:
    """A ready-to-be node of location ``aws`` (internal IP, pod CIDR, a key of its own),
    with a public or a private endpoint: what Kilo's leader rule looks at."""
    endpoint = "1.1.1.1:51820" if public else "10.1.1.1:51820"
    return Node(
        name=name,
        endpoint=Endpoint.parse(endpoint),
        key=Key(name.encode().ljust(32, b"k")[:32]),
        internal_ip=ipaddress.ip_interface("10.0.0.1/24"),
        location="aws",
        leader=leader,
        subnet=ipaddress.ip_network("10.42.0.0/24"),
    )


# --- kubelet-registered Nodes, for the dump readers -----------------------------------------


def kubelet_node(i: int) -> dict[str, Any]:
    """Node ``i`` as a kubelet registers it (a status with 32 images), a location leader."""
    from kilo.sandbox import kubelet

    return kubelet.node(
        f"node-{i}",
        internal_ip=f"172.16.0.{i + 1}",
        pod_cidr=f"10.64.{i}.0/24",
        annotations={"kilo.squat.ai/location": f"loc-{i % 2}", "kilo.squat.ai/leader": "true"},
        now=1_767_225_600,
    )


DUMP_PEER: dict[str, Any] = {
    "apiVersion": "kilo.squat.ai/v1alpha1",
    "kind": "Peer",
    "metadata": {"name": "p"},
}
