"""A whole cluster as ``kgctl`` sees it: translated nodes and peers, plus the settings
``kgctl`` must infer because it does not run on a node (granularity, Kilo subnet).

Pure. Kilo's ``kgctl`` infers these from whichever node its cache lists first or last, so
two runs against the same cluster can disagree; here the choice depends only on the
objects (nodes sorted by name), and disagreement between nodes is reported.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from kilo.errors import ConfigError, TopologyError
from kilo.mesh import translate
from kilo.mesh.ip import IPNetwork
from kilo.mesh.model import (
    DEFAULT_PORT,
    DEFAULT_SUBNET,
    DEFAULT_TOPOLOGY_LABEL,
    Diagnostic,
    Granularity,
    Node,
    Peer,
)

AUTO = "auto"
T = TypeVar("T", Node, Peer)
# In #328's order: cross before auto.
GRANULARITY_CHOICES = (
    Granularity.LOCATION.value,
    Granularity.FULL.value,
    Granularity.CROSS.value,
    AUTO,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Cluster:
    nodes: tuple[Node, ...]  # every translatable node, ready or not, sorted by name
    peers: tuple[Peer, ...]  # every valid peer, sorted by name
    diagnostics: tuple[Diagnostic, ...] = ()

    def node(self, name: str) -> Node | None:
        return next((n for n in self.nodes if n.name == name), None)

    def peer(self, name: str) -> Peer | None:
        return next((p for p in self.peers if p.name == name), None)


def translate_cluster(
    node_objects: Iterable[Mapping[str, Any]],
    peer_objects: Iterable[Mapping[str, Any]],
    *,
    topology_label: str = DEFAULT_TOPOLOGY_LABEL,
    port: int = DEFAULT_PORT,
) -> Cluster:
    diagnostics: list[Diagnostic] = []
    nodes: list[Node] = []
    for obj in node_objects:
        result = translate.translate_node(obj, topology_label=topology_label, port=port)
        diagnostics.extend(result.diagnostics)
        if result.value is not None:
            nodes.append(result.value)
    peers: list[Peer] = []
    for obj in peer_objects:
        peer_result = translate.translate_peer(obj)
        diagnostics.extend(peer_result.diagnostics)
        if peer_result.value is not None:
            peers.append(peer_result.value)
    unique_nodes = _last_by_name(nodes, "node", diagnostics)
    unique_peers = _last_by_name(peers, "peer", diagnostics)
    return Cluster(
        nodes=tuple(sorted(unique_nodes, key=lambda n: n.name)),
        peers=tuple(sorted(unique_peers, key=lambda p: p.name)),
        diagnostics=tuple(diagnostics),
    )


def _last_by_name(items: list[T], kind: str, diagnostics: list[Diagnostic]) -> list[T]:
    """One object per name: the last one, as when the objects are applied in order.

    The API server cannot hold two objects with one name, but concatenated dumps can.
    """
    by_name: dict[str, T] = {}
    counts: dict[str, int] = {}
    for item in items:
        name = item.name
        by_name[name] = item
        counts[name] = counts.get(name, 0) + 1
    for name, count in sorted(counts.items()):
        if count > 1:
            diagnostics.append(
                Diagnostic(
                    kind=kind,
                    name=name,
                    field="metadata.name",
                    value=name,
                    problem=f"appears {count} times in the input; only the last one is used",
                )
            )
    return list(by_name.values())


def resolve_granularity(requested: str, nodes: Iterable[Node]) -> tuple[Granularity, list[str]]:
    """The granularity to use and any warnings; ``auto`` reads the nodes' annotations."""
    if requested in (Granularity.LOCATION, Granularity.FULL, Granularity.CROSS):
        return Granularity(requested), []
    if requested != AUTO:
        choices = ", ".join(GRANULARITY_CHOICES)
        raise ConfigError(f"mesh granularity {requested} unknown; possible values are: {choices}")
    ordered = sorted(nodes, key=lambda n: n.name)
    if not ordered:
        raise TopologyError("failed to determine granularity: could not get any nodes")
    annotated = [(n.name, n.granularity) for n in ordered if n.granularity]
    if not annotated:
        raise TopologyError(
            "failed to determine granularity: no node has a valid "
            f"{translate.GRANULARITY} annotation; use --mesh-granularity location, full or cross"
        )
    chosen = annotated[0][1]
    warnings = []
    others = sorted({g for _, g in annotated if g != chosen})
    if others:
        warnings.append(
            f"nodes disagree on {translate.GRANULARITY}: using {chosen!r} from node "
            f"{annotated[0][0]!r}, others have {', '.join(repr(o) for o in others)}"
        )
    return Granularity(chosen), warnings


def infer_subnet(nodes: Iterable[Node]) -> tuple[IPNetwork, list[str]]:
    """The Kilo subnet from the nodes' ``wireguard-ip`` annotations, else the default."""
    found = [
        (n.name, n.wireguard_ip.network)
        for n in sorted(nodes, key=lambda n: n.name)
        if n.wireguard_ip
    ]
    if not found:
        return ipaddress.ip_network(DEFAULT_SUBNET), []
    chosen_name, chosen = found[0]
    others = sorted({str(net) for _, net in found if net != chosen})
    warnings = []
    if others:
        warnings.append(
            f"nodes disagree on the Kilo subnet: using {chosen} from node {chosen_name!r}, "
            f"others have {', '.join(others)}; pass --subnet to choose"
        )
    return chosen, warnings
