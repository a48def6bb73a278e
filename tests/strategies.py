"""Hypothesis strategies for random Kilo clusters.

Addresses are drawn so that the cluster is plausible: pod CIDRs and internal IPs are
unique, peers live in their own range (a peer claiming a pod CIDR is a separate, known
Kilo quirk), and endpoints mix public and private addresses so that leader election has
real choices to make.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

from hypothesis import strategies as st

from kilo.mesh.endpoint import Endpoint, UDPAddr
from kilo.mesh.keys import Key, clamp
from kilo.mesh.model import Node, Peer

LOCATIONS = ("aws", "gcp", "azure", "onprem", "")


def key_for(index: int, salt: int = 0) -> Key:
    raw = (index * 7919 + salt * 104729 + 1).to_bytes(8, "big") * 4
    return Key(clamp(raw)).public_key()


@dataclass(frozen=True)
class NodeSpec:
    location: str
    has_internal_ip: bool
    leader: bool
    public_endpoint: bool
    keepalive: int
    alip: int | None  # index into a small pool of allowed-location IPs
    dns_endpoint: bool = False
    # NAT endpoints this node observed: (node index or -1 - peer index, port); None = null entry
    discovered: tuple[tuple[int, int | None], ...] = ()


node_specs = st.builds(
    NodeSpec,
    location=st.sampled_from(LOCATIONS),
    has_internal_ip=st.sampled_from((True, True, True, False)),
    leader=st.booleans(),
    public_endpoint=st.booleans(),
    keepalive=st.sampled_from((0, 0, 25)),
    alip=st.none() | st.integers(min_value=0, max_value=5),
    dns_endpoint=st.sampled_from((False, False, False, True)),
    discovered=st.lists(
        st.tuples(
            st.integers(min_value=-3, max_value=11),
            st.none() | st.integers(min_value=1024, max_value=1030),
        ),
        max_size=3,
    ).map(tuple),
)

# A small pool so that overlaps (and the order-dependent filter) actually happen.
ALIP_POOL = (
    "192.168.100.0/24",
    "192.168.100.128/25",
    "172.20.0.0/16",
    "10.0.0.0/8",
    "10.2.3.0/24",
    "192.168.200.1/32",
)


def build_node(index: int, spec: NodeSpec) -> Node:
    third, fourth = divmod(index, 250)
    internal = ipaddress.ip_interface(f"10.{100 + third}.{fourth}.{10}/16")
    if spec.dns_endpoint:
        endpoint = Endpoint.parse(f"node-{index}.example.com:51820")
    elif spec.public_endpoint:
        endpoint = Endpoint.parse(f"203.0.{third}.{fourth + 1}:51820")
    else:
        endpoint = Endpoint.parse(f"192.168.{third}.{fourth + 1}:51820")
    discovered: dict[str, UDPAddr | None] = {}
    for target, port in spec.discovered:
        key = key_for(target) if target >= 0 else key_for(-1 - target, salt=1)
        discovered[str(key)] = (
            None
            if port is None
            else UDPAddr(ipaddress.ip_address(f"198.51.100.{index % 250 + 1}"), port)
        )
    return Node(
        name=f"node-{index:04d}",
        endpoint=endpoint,
        key=key_for(index),
        internal_ip=internal if spec.has_internal_ip else None,
        leader=spec.leader,
        location=spec.location,
        persistent_keepalive=spec.keepalive,
        subnet=ipaddress.ip_network(f"10.{(index // 256) + 2}.{index % 256}.0/24"),
        discovered_endpoints=discovered or None,
        allowed_location_ips=()
        if spec.alip is None
        else (ipaddress.ip_interface(ALIP_POOL[spec.alip]),),
    )


@dataclass(frozen=True)
class PeerSpec:
    addresses: tuple[int, ...]
    keepalive: int


peer_specs = st.builds(
    PeerSpec,
    addresses=st.lists(st.integers(min_value=0, max_value=20), min_size=1, max_size=3).map(tuple),
    keepalive=st.sampled_from((0, 10)),
)


def build_peer(index: int, spec: PeerSpec) -> Peer:
    return Peer(
        name=f"peer-{index:03d}",
        allowed_ips=tuple(ipaddress.ip_interface(f"10.5.0.{a}/32") for a in spec.addresses),
        public_key=key_for(index, salt=1),
        persistent_keepalive=spec.keepalive,
    )


@st.composite
def clusters(
    draw: st.DrawFn, max_nodes: int = 12, max_peers: int = 4
) -> tuple[list[Node], list[Peer]]:
    specs = draw(st.lists(node_specs, min_size=1, max_size=max_nodes))
    nodes = [build_node(i, s) for i, s in enumerate(specs)]
    peers = [build_peer(i, s) for i, s in enumerate(draw(st.lists(peer_specs, max_size=max_peers)))]
    return nodes, peers


# --- Clusters with many overlapping allowed-location IPs -----------------------------
#
# For the allowed-location-IP filter: IPv4 and IPv6 allowed-location IPs with host bits
# set and prefixes from /8 (/16 for IPv6) up to a single address, drawn near the pod
# CIDRs, internal IPs, WireGuard IPs and peers' allowed IPs so that they overlap those and
# each other. Some nodes also have an IPv6 pod CIDR and some peers IPv6 allowed IPs.

V4_ANCHORS = ("10.2.0.0", "10.100.0.10", "10.4.0.0", "10.5.0.0", "192.168.100.0", "172.20.0.0")
V6_ANCHORS = ("fd00::", "fd00:0:0:1::", "2001:db8::")


def _near(
    anchor: str, offset: int, prefix: int
) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    return ipaddress.ip_interface(f"{ipaddress.ip_address(anchor) + offset}/{prefix}")


# Offsets reach the pod CIDRs (10.2.<i>.0/24) and internal IPs (10.100.<i>.10) of the
# first nodes and the first WireGuard IPs, and 0, 1 and 255 hit edges.
_offsets = st.builds(
    lambda base, low: base + low,
    st.integers(min_value=0, max_value=3).map(lambda i: i * 256),
    st.sampled_from((0, 1, 2, 3, 10, 128, 255)),
)

v4_cidrs = st.builds(
    _near, st.sampled_from(V4_ANCHORS), _offsets, st.integers(min_value=8, max_value=32)
)
v6_cidrs = st.builds(
    _near, st.sampled_from(V6_ANCHORS), _offsets, st.integers(min_value=16, max_value=128)
)
overlapping_cidrs = st.one_of(v4_cidrs, v4_cidrs, v4_cidrs, v6_cidrs)


@st.composite
def alip_clusters(
    draw: st.DrawFn, max_nodes: int = 12, max_peers: int = 4
) -> tuple[list[Node], list[Peer]]:
    # A small pool per cluster, so that the same CIDRs recur across nodes and segments.
    pool = draw(st.lists(overlapping_cidrs, min_size=1, max_size=10))
    pick = st.lists(st.sampled_from(pool), max_size=4).map(tuple)
    specs = draw(st.lists(node_specs, min_size=1, max_size=max_nodes))
    nodes = []
    for i, node_spec in enumerate(specs):
        node = build_node(i, node_spec)
        v6_subnet = draw(st.booleans())
        nodes.append(
            replace(
                node,
                subnet=ipaddress.ip_network(f"fd00:0:0:{i}::/64") if v6_subnet else node.subnet,
                allowed_location_ips=draw(pick),
            )
        )
    peers = []
    for i, peer_spec in enumerate(draw(st.lists(peer_specs, max_size=max_peers))):
        peer = build_peer(i, peer_spec)
        extra = draw(st.lists(st.sampled_from(pool) | overlapping_cidrs, max_size=2))
        peers.append(replace(peer, allowed_ips=peer.allowed_ips + tuple(extra)))
    return nodes, peers
