"""What ``kilo-sandbox`` prints, and the mesh facts it checks, as pure functions.

Pure: text and values in, text and values out; no I/O, no clock (``now`` is passed in).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

REACHED = "ok"
NOT_REACHED = "FAIL"
SELF = "-"
UNKNOWN = "?"

Path = tuple[str, str]  # (source, destination)


def tally(reached: Mapping[Path, bool]) -> tuple[int, int]:
    """(paths reached, paths measured)."""
    return sum(1 for ok in reached.values() if ok), len(reached)


def matrix(
    sources: Sequence[str], destinations: Sequence[str], reached: Mapping[Path, bool]
) -> str:
    """A table: one row per source, one column per destination, ``ok`` or ``FAIL`` in each
    measured cell, ``-`` where source and destination are the same, ``?`` where a path was
    not measured; a summary line first."""
    good, total = tally(reached)
    head = f"reachability, ping from each row to each column: {good} of {total} paths reachable"
    header = ["FROM \\ TO", *destinations]
    body = []
    for source in sources:
        row = [source]
        for destination in destinations:
            if source == destination:
                row.append(SELF)
            elif (source, destination) not in reached:
                row.append(UNKNOWN)
            else:
                row.append(REACHED if reached[(source, destination)] else NOT_REACHED)
        body.append(row)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *body]
    ]
    return "\n".join([head, *lines]) + "\n"


def failures(reached: Mapping[Path, bool]) -> list[Path]:
    return sorted(path for path, ok in reached.items() if not ok)


# --- WireGuard -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerState:
    """One peer line of ``wg show INTERFACE dump``."""

    public_key: str
    endpoint: str  # "(none)" when unknown
    latest_handshake: int  # seconds since the epoch; 0: never


def parse_dump(text: str) -> list[PeerState]:
    """The peers of ``wg show INTERFACE dump`` (its first line is the interface's own)."""
    peers = []
    for line in text.splitlines()[1:]:
        fields = line.split("\t")
        if len(fields) < 5:
            continue
        peers.append(
            PeerState(
                public_key=fields[0],
                endpoint=fields[2],
                latest_handshake=int(fields[4]) if fields[4].isdigit() else 0,
            )
        )
    return peers


def age(seconds: int) -> str:
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 2 * 3600:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def handshakes(rows: Iterable[tuple[str, PeerState]], names: Mapping[str, str], *, now: int) -> str:
    """A table of (machine, its peer) with the peer's name (``names``: public key -> name),
    endpoint and the age of the latest handshake."""
    header = ["MACHINE", "PEER", "ENDPOINT", "LATEST HANDSHAKE"]
    body = [
        [
            machine,
            names.get(peer.public_key, peer.public_key[:10] + "…"),
            peer.endpoint,
            age(now - peer.latest_handshake) if peer.latest_handshake else "never",
        ]
        for machine, peer in rows
    ]
    if not body:
        return "no WireGuard peers\n"
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    return (
        "\n".join(
            "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
            for r in [header, *body]
        )
        + "\n"
    )


# --- the mesh as kgctl lists it ---------------------------------------------------------------


def key_names(listing: Mapping[str, Any]) -> dict[str, str]:
    """Public key -> node or peer name, from ``kgctl list -o json``."""
    names = {}
    for kind in ("nodes", "peers"):
        for item in listing.get(kind, []):
            if item.get("publicKey"):
                names[str(item["publicKey"])] = str(item["name"])
    return names


def leaders(listing: Mapping[str, Any]) -> list[str]:
    return sorted(str(n["name"]) for n in listing.get("nodes", []) if n.get("leader"))


def expected_peers(listing: Mapping[str, Any]) -> dict[str, int]:
    """How many WireGuard peers each node has once the mesh has converged: a leader has one
    per other segment plus one per Peer, any other node none. In a cross mesh (every node
    annotated ``cross``) every node leads its own segment and peers only with the nodes of
    other locations. None of this holds until every node is ready and in a segment, so an
    incomplete listing expects nothing."""
    nodes = list(listing.get("nodes", []))
    peers = len(listing.get("peers", []))
    if nodes and all(n.get("granularity") == "cross" for n in nodes):
        # topology.cross_location: a node without an internal IP is a location of its own.
        where = {
            str(n["name"]): (
                f"location:{n.get('location', '')}" if n.get("internalIP") else f"node:{n['name']}"
            )
            for n in nodes
        }
        return {
            name: sum(1 for other in where.values() if other != own) + peers
            for name, own in where.items()
        }
    segments = {str(n.get("segment", "")) for n in nodes}
    return {str(n["name"]): (len(segments) - 1 + peers if n.get("leader") else 0) for n in nodes}


def linked(listings: Sequence[Mapping[str, Any]], link: str) -> bool:
    """Whether each cluster (``kgctl list -o json`` of each) has a Peer of ``link`` for every
    leader of every other cluster: what ``kgctl multicluster link`` writes (named
    ``<link>-<leader>``)."""
    for index, listing in enumerate(listings):
        peers = {str(p.get("name", "")) for p in listing.get("peers", [])}
        for other, theirs in enumerate(listings):
            if other != index and not {f"{link}-{name}" for name in leaders(theirs)} <= peers:
                return False
    return True


def converged(listing: Mapping[str, Any], actual: Mapping[str, int]) -> bool:
    """Every node is ready and in a segment, each segment has one leader, and every node has
    the WireGuard peers :func:`expected_peers` says."""
    nodes = list(listing.get("nodes", []))
    if not nodes or not all(n.get("ready") and n.get("segment") for n in nodes):
        return False
    segments = {str(n["segment"]) for n in nodes}
    if len(leaders(listing)) != len(segments):
        return False
    return dict(actual) == expected_peers(listing)
