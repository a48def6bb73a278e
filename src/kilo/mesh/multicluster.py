"""Kilo's multi-cluster peering as a plan: the Peers a link writes into one cluster to stand
for the other cluster's segments, and the changes that bring a cluster's Peers there.

Pure. No I/O, no clock (the caller passes ``now``), no logging: problems come back as
diagnostics.

Kilo's documented recipe (docs/multi-cluster-services.md) runs, for every node N of cluster
1, ``kgctl showconf node N --as-peer -o yaml --allowed-ips $SERVICECIDR1 | kubectl apply``
against cluster 2, and the other way round. :func:`mirror` computes the same Peers (each
segment's leader as one Peer: the segment's allowed IPs plus the extra ranges, its endpoint
and key, as ``showconf`` prints them) with three differences, so that a link can keep them
current without touching anything else:

* the name is ``<link>-<leader>``, not ``<leader>``: a cluster's own Peers and a second link
  cannot collide with the mirror;
* every Peer carries the label ``kilo.squat.ai/multicluster-link: <link>``, the only thing
  :func:`changes` trusts: Peers without it are never changed or deleted;
* the annotation ``kilo.squat.ai/multicluster-source`` names the leader it stands for.

The spec is exactly what ``showconf --as-peer`` writes, so Go Kilo reads these Peers as it
reads the recipe's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kilo.errors import TopologyError
from kilo.mesh import cluster as cluster_mod
from kilo.mesh import peerspec, topology, wireguard
from kilo.mesh.cluster import Cluster
from kilo.mesh.ip import IPNetwork
from kilo.mesh.model import ready_nodes
from kilo.mesh.text import short_repr

LINK_LABEL = "kilo.squat.ai/multicluster-link"
SOURCE_ANNOTATION = "kilo.squat.ai/multicluster-source"
# A label value (63) leaves room for a node name in the Peer's name (253).
MAX_LINK_NAME = 40
MAX_PEER_NAME = 253
_LINK_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")


def check_link_name(name: str) -> str | None:
    """Why ``name`` cannot name a link (it is a label value and starts Peer names), or None."""
    if len(name) > MAX_LINK_NAME or not _LINK_NAME.fullmatch(name):
        return (
            f"link name {short_repr(name)} is not lower-case letters, digits and '-' "
            f"(starting and ending with a letter or digit, at most {MAX_LINK_NAME})"
        )
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Mirror:
    """The Peers that stand for one cluster in the other, and what stood in the way."""

    peers: tuple[dict[str, Any], ...]
    diagnostics: tuple[str, ...] = ()


def mirror(
    source: Cluster, *, link: str, allowed_ips: Sequence[IPNetwork] = (), now: int | None
) -> Mirror:
    """Every segment of ``source`` as one Peer (``showconf node <leader> --as-peer
    --allowed-ips ...``), labelled as owned by ``link``; sorted by name."""
    diagnostics: list[str] = []
    try:
        granularity, warnings = cluster_mod.resolve_granularity(cluster_mod.AUTO, source.nodes)
    except TopologyError as exc:  # no node has published its granularity yet
        return Mirror(peers=(), diagnostics=(f"nothing to mirror: {exc}",))
    diagnostics.extend(warnings)
    subnet, warnings = cluster_mod.infer_subnet(source.nodes)
    diagnostics.extend(warnings)
    ready = ready_nodes(source.nodes, now)
    if not ready:
        return Mirror(peers=(), diagnostics=(*diagnostics, "no ready Kilo node to mirror"))
    # The other cluster's Peers (among them this link's own mirror) are no part of what a
    # segment is, so the topology is built without them.
    t = topology.build_topology(
        ready, (), granularity=granularity, hostname=ready[0].name, subnet=subnet
    )
    peers = []
    for segment in t.segments:
        leader = segment.leader_name
        name = f"{link}-{leader}"
        if len(name) > MAX_PEER_NAME:
            diagnostics.append(
                f"node {short_repr(leader)}: {short_repr(name)} is too long for a Peer name;"
                " not mirrored"
            )
            continue
        as_peer = wireguard.WireGuardPeer(
            name=segment.location,
            allowed_ips=segment.allowed_ips,
            public_key=segment.key,
            endpoint=segment.endpoint,
        )
        obj = peerspec.peer_object(wireguard.with_extra_allowed_ips(as_peer, allowed_ips), name)
        obj["metadata"] = {
            "name": name,
            "labels": {LINK_LABEL: link},
            "annotations": {SOURCE_ANNOTATION: leader},
        }
        peers.append(obj)
    return Mirror(peers=tuple(sorted(peers, key=_name)), diagnostics=tuple(diagnostics))


@dataclass(frozen=True, slots=True, kw_only=True)
class Changes:
    """What brings a cluster's Peers to a mirror: Peers to write (create or replace) and
    owned Peers to delete; ``conflicts`` are names the mirror wants that a Peer not owned
    by the link already has (left alone)."""

    apply: tuple[dict[str, Any], ...] = ()
    delete: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.apply or self.delete)


def owned_by(obj: Mapping[str, Any], link: str) -> bool:
    """Whether the Peer object ``obj`` (as read: anything) carries ``link``'s label."""
    metadata = obj.get("metadata")
    labels = metadata.get("labels") if isinstance(metadata, Mapping) else None
    return isinstance(labels, Mapping) and labels.get(LINK_LABEL) == link


def changes(
    desired: Iterable[Mapping[str, Any]], existing: Iterable[Mapping[str, Any]], *, link: str
) -> Changes:
    """From the Peers a cluster has (``existing``, as read) to ``desired`` (a mirror), only
    ever touching Peers labelled as ``link``'s."""
    owned: dict[str, Mapping[str, Any]] = {}
    foreign: set[str] = set()
    for obj in existing:
        name = _name(obj)
        if not name:
            continue
        if owned_by(obj, link):
            owned[name] = obj
        else:
            foreign.add(name)
    apply: list[dict[str, Any]] = []
    conflicts: list[str] = []
    wanted: set[str] = set()
    for obj in desired:
        name = _name(obj)
        wanted.add(name)
        if name in foreign:
            conflicts.append(name)
        elif name not in owned or not _same(owned[name], obj):
            apply.append(dict(obj))
    return Changes(
        apply=tuple(apply),
        delete=tuple(sorted(set(owned) - wanted)),
        conflicts=tuple(sorted(conflicts)),
    )


def _name(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return name if isinstance(name, str) else ""


def _same(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """The spec is equal and the link's label and annotation are there (other metadata,
    added by anyone, does not matter)."""
    if current.get("spec") != desired.get("spec"):
        return False
    have, want = current.get("metadata"), desired["metadata"]
    if not isinstance(have, Mapping):
        return False
    for key in ("labels", "annotations"):
        present = have.get(key)
        if not isinstance(present, Mapping):
            return False
        if any(present.get(k) != v for k, v in want[key].items()):
            return False
    return True
