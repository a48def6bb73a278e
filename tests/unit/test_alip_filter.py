"""The indexed allowed-location-IP filter against the straightforward one (an oracle).

``build_topology`` answers Kilo's filter (reference §2 step 8 and §2.1) from indexes. The
oracle below is the direct, quadratic transcription it replaced: for segment ``k``,
earlier segments are already filtered and carry their WireGuard /32, later ones are
unfiltered and have no WireGuard /32 yet; the segment's own allowed IPs count, its own
allowed-location IPs do not, and the peers' (de-duplicated) allowed IPs count.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kilo.mesh import ip as ipmod
from kilo.mesh.ip import IPInterface, IPNetwork
from kilo.mesh.model import Granularity, Node, Peer
from kilo.mesh.topology import Topology, build_topology
from tests.examples import KILO_SUBNET
from tests.strategies import (
    V4_ANCHORS,
    V6_ANCHORS,
    NodeSpec,
    PeerSpec,
    alip_clusters,
    build_node,
    build_peer,
)

GRANULARITIES = (Granularity.LOCATION, Granularity.FULL)


# --- The oracle ------------------------------------------------------------------------


@dataclass
class OracleSegment:
    location: str
    allowed_ips: list[IPInterface | IPNetwork]
    allowed_location_ips: list[IPInterface]


def oracle_filter(
    segment: OracleSegment, segments: Sequence[OracleSegment], peers: Sequence[Peer]
) -> list[IPInterface]:
    return [
        alip
        for alip in segment.allowed_location_ips
        if not oracle_clashes(alip, segment, segments, peers)
    ]


def oracle_clashes(
    alip: IPInterface,
    segment: OracleSegment,
    segments: Sequence[OracleSegment],
    peers: Sequence[Peer],
) -> bool:
    for other in segments:
        if other.location != segment.location and any(
            ipmod.intersect(alip, o) for o in other.allowed_location_ips
        ):
            return True
        if any(ipmod.contains(a, alip.ip) for a in other.allowed_ips):
            return True
    return any(ipmod.intersect(alip, a) for p in peers for a in p.allowed_ips)


def unfiltered_alips(hostnames: Iterable[str], nodes: dict[str, Node]) -> list[IPInterface]:
    """The union of the members' allowed-location IPs, de-duplicated and sorted as text."""
    seen: dict[str, IPInterface] = {}
    for name in hostnames:
        for alip in nodes[name].allowed_location_ips:
            seen.setdefault(str(alip), alip)
    return sorted(seen.values(), key=str)


def oracle_alips(topology: Topology, nodes: Sequence[Node]) -> list[list[IPInterface]]:
    """Replay WireGuard IP allocation and the filter over the topology's segments."""
    by_name = {n.name: n for n in nodes}
    for segment in topology.segments:
        assert segment.allowed_ips[-1] == ipmod.host_interface(segment.wireguard_ip)
    segments = [
        OracleSegment(s.location, list(s.allowed_ips[:-1]), unfiltered_alips(s.hostnames, by_name))
        for s in topology.segments
    ]
    for current, final in zip(segments, topology.segments, strict=True):
        current.allowed_ips.append(final.allowed_ips[-1])  # the WireGuard /32
        current.allowed_location_ips = oracle_filter(current, segments, topology.peers)
    return [s.allowed_location_ips for s in segments]


def assert_matches_oracle(nodes: Sequence[Node], peers: Sequence[Peer]) -> list[list[str]]:
    """Every perspective and granularity; return one result per granularity as text."""
    results = []
    for granularity in GRANULARITIES:
        expected: list[list[IPInterface]] | None = None
        for node in nodes:
            t = build_topology(
                nodes, peers, granularity=granularity, hostname=node.name, subnet=KILO_SUBNET
            )
            if expected is None:
                expected = oracle_alips(t, nodes)
            actual = [list(s.allowed_location_ips) for s in t.segments]
            assert [[str(a) for a in s] for s in actual] == [
                [str(a) for a in s] for s in expected
            ], f"{granularity} from {node.name}"
            assert actual == expected
        assert expected is not None
        results.append([str(a) for s in expected for a in s])
    return results


# --- Tests ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(cluster=alip_clusters())
def test_filter_matches_the_oracle(cluster: tuple[list[Node], list[Peer]]) -> None:
    nodes, peers = cluster
    assert_matches_oracle(nodes, peers)


@settings(max_examples=50, deadline=None)
@given(cluster=alip_clusters(), data=st.data())
def test_filter_does_not_depend_on_input_order(
    cluster: tuple[list[Node], list[Peer]], data: st.DataObject
) -> None:
    nodes, peers = cluster
    shuffled_nodes = data.draw(st.permutations(nodes))
    shuffled_peers = data.draw(st.permutations(peers))
    assert assert_matches_oracle(nodes, peers) == assert_matches_oracle(
        shuffled_nodes, shuffled_peers
    )


def random_cidr(rng: random.Random) -> IPInterface:
    if rng.random() < 0.8:
        anchor, prefix = ipaddress.ip_address(rng.choice(V4_ANCHORS)), rng.randint(8, 32)
    else:
        anchor, prefix = ipaddress.ip_address(rng.choice(V6_ANCHORS)), rng.randint(16, 128)
    return ipaddress.ip_interface(f"{anchor + rng.randrange(64 * 256)}/{prefix}")


def random_cluster(seed: int, size: int) -> tuple[list[Node], list[Peer]]:
    rng = random.Random(seed)
    pool = [random_cidr(rng) for _ in range(size)]
    nodes = []
    for i in range(size):
        spec = NodeSpec(
            location=rng.choice(("aws", "gcp", "azure", "onprem", "")),
            has_internal_ip=rng.random() < 0.8,
            leader=rng.random() < 0.2,
            public_endpoint=rng.random() < 0.5,
            keepalive=0,
            alip=None,
        )
        alips = tuple(rng.choice(pool) for _ in range(rng.randint(0, 3)))
        nodes.append(replace(build_node(i, spec), allowed_location_ips=alips))
    peers = [
        replace(
            build_peer(p, PeerSpec(addresses=(p,), keepalive=0)),
            allowed_ips=(
                ipmod.host_interface(ipaddress.IPv4Address(f"10.5.0.{p}")),
                *(rng.choice(pool) for _ in range(2)),
            ),
        )
        for p in range(5)
    ]
    return nodes, peers


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_larger_random_clusters_match_the_oracle(seed: int) -> None:
    nodes, peers = random_cluster(seed, 150)
    for granularity in GRANULARITIES:
        t = build_topology(
            nodes, peers, granularity=granularity, hostname=nodes[0].name, subnet=KILO_SUBNET
        )
        expected = oracle_alips(t, nodes)
        assert [list(s.allowed_location_ips) for s in t.segments] == expected
        # The case is not trivial: the filter both keeps and drops.
        kept = sum(len(s) for s in expected)
        offered = sum(
            len(unfiltered_alips(s.hostnames, {n.name: n for n in nodes})) for s in t.segments
        )
        assert 0 < kept < offered
