"""``kgctl list``: the nodes and peers of a mesh as tables or JSON.

Pure. ``now`` is passed in (for readiness and last-seen ages); ``judge_liveness=False`` is
for dumps, which are read long after they were taken.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kilo.mesh.cluster import Cluster
from kilo.mesh.text import printable, shorten
from kilo.mesh.topology import Topology


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeRow:
    name: str
    location: str
    segment: str
    leader: bool
    endpoint: str
    wireguard_ip: str
    internal_ip: str
    pod_cidr: str
    ready: bool
    last_seen: int
    keepalive: int
    granularity: str
    public_key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerRow:
    name: str
    allowed_ips: tuple[str, ...]
    endpoint: str
    keepalive: int
    public_key: str


def rows(
    cluster: Cluster, topology: Topology | None, *, now: int, judge_liveness: bool
) -> tuple[list[NodeRow], list[PeerRow]]:
    segment_of: dict[str, tuple[str, bool, str]] = {}
    if topology is not None:
        for segment in topology.segments:
            for name in segment.hostnames:
                leads = name == segment.leader_name
                segment_of[name] = (
                    segment.location,
                    leads,
                    str(segment.wireguard_ip) if leads else "",
                )
    nodes = []
    for node in cluster.nodes:
        segment_key, leader, wireguard_ip = segment_of.get(node.name, ("", False, ""))
        nodes.append(
            NodeRow(
                name=node.name,
                location=node.location,
                segment=segment_key,
                leader=leader,
                endpoint="" if node.endpoint is None else str(node.endpoint),
                wireguard_ip=wireguard_ip,
                internal_ip="" if node.internal_ip is None else str(node.internal_ip),
                pod_cidr="" if node.subnet is None else str(node.subnet),
                ready=node.is_ready(now if judge_liveness else None),
                last_seen=node.last_seen,
                keepalive=node.persistent_keepalive,
                granularity=node.granularity,
                public_key="" if node.key.is_zero else str(node.key),
            )
        )
    peers = [
        PeerRow(
            name=peer.name,
            allowed_ips=tuple(str(a) for a in peer.allowed_ips),
            endpoint="" if peer.endpoint is None else str(peer.endpoint),
            keepalive=peer.persistent_keepalive,
            public_key=str(peer.public_key),
        )
        for peer in cluster.peers
    ]
    return nodes, peers


def age(seconds: int) -> str:
    """A kubectl-style age: 45s, 12m, 3h, 5d."""
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 2 * 3600:
        return f"{seconds // 60}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


# A cell is cut at the longest Kubernetes name: a location can be any annotation value.
_CELL_LIMIT = 253


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    body = [[printable(shorten(cell, _CELL_LIMIT)) for cell in row] for row in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [
        "   ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *body]
    ]
    return "\n".join(lines) + "\n"


def to_text(nodes: Sequence[NodeRow], peers: Sequence[PeerRow], *, now: int, wide: bool) -> str:
    header = ["NODE", "LOCATION", "LEADER", "ENDPOINT", "WIREGUARD-IP", "READY", "LAST-SEEN"]
    if wide:
        header += ["SEGMENT", "INTERNAL-IP", "POD-CIDR", "KEEPALIVE", "GRANULARITY", "PUBLIC-KEY"]
    body = []
    for n in nodes:
        row = [
            n.name,
            n.location or "-",
            "yes" if n.leader else "-",
            n.endpoint or "-",
            n.wireguard_ip or "-",
            "yes" if n.ready else "no",
            age(now - n.last_seen) if n.last_seen else "never",
        ]
        if wide:
            row += [
                n.segment or "-",
                n.internal_ip or "-",
                n.pod_cidr or "-",
                str(n.keepalive),
                n.granularity or "-",
                n.public_key or "-",
            ]
        body.append(row)
    out = _table(header, body)
    peer_header = ["PEER", "ALLOWED-IPS", "ENDPOINT", "KEEPALIVE"] + (
        ["PUBLIC-KEY"] if wide else []
    )
    peer_body = []
    for p in peers:
        row = [p.name, ",".join(p.allowed_ips) or "-", p.endpoint or "-", str(p.keepalive)]
        if wide:
            row.append(p.public_key)
        peer_body.append(row)
    return out + "\n" + _table(peer_header, peer_body)


def to_json(nodes: Sequence[NodeRow], peers: Sequence[PeerRow]) -> str:
    def node(n: NodeRow) -> dict[str, Any]:
        return {
            "name": n.name,
            "location": n.location,
            "segment": n.segment,
            "leader": n.leader,
            "endpoint": n.endpoint,
            "wireguardIP": n.wireguard_ip,
            "internalIP": n.internal_ip,
            "podCIDR": n.pod_cidr,
            "ready": n.ready,
            "lastSeen": n.last_seen,
            "persistentKeepalive": n.keepalive,
            "granularity": n.granularity,
            "publicKey": n.public_key,
        }

    def peer(p: PeerRow) -> dict[str, Any]:
        return {
            "name": p.name,
            "allowedIPs": list(p.allowed_ips),
            "endpoint": p.endpoint,
            "persistentKeepalive": p.keepalive,
            "publicKey": p.public_key,
        }

    return json.dumps(
        {"nodes": [node(n) for n in nodes], "peers": [peer(p) for p in peers]}, indent=2
    )
