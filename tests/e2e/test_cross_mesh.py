"""``--mesh-granularity=cross`` end to end: real packets, no leader.

Two public clouds and a NATed office (two nodes each), every ``kg`` in ``cross``
granularity with its own ``wireguard-go`` (``--encapsulate=never``: this kernel has no
IPIP). Every node has a WireGuard tunnel to every node of the other locations and none to
the node of its own location, which it reaches over the location's LAN. The tests share
one testbed and run in file order.
"""

from __future__ import annotations

import functools
import itertools
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from lightkube.resources.core_v1 import Node

from kilo.mesh import translate
from kilo.sandbox import runs, testbed
from kilo.sandbox.testbed import Location, Testbed
from tests.e2e import kgctl_cli
from tests.testbed_harness import agent_healthy, reachable

LOCATIONS = [
    Location("aws", nodes=2),
    Location("gcp", nodes=2),
    Location("office", nodes=2, nat=True, annotations={translate.PERSISTENT_KEEPALIVE: "5"}),
]
CONVERGE = 60.0


def kgctl(bed: Testbed, *args: str) -> str:
    return kgctl_cli.kgctl(bed, *args).stdout


def wg_peer_keys(bed: Testbed, node: str) -> set[str]:
    return {line.split("\t")[0] for line in bed.wg_dump(node).splitlines()[1:]}


def peers_are(bed: Testbed, node: str, keys: set[str]) -> bool:
    return wg_peer_keys(bed, node) == keys


def wait_for(predicate: Callable[[], object], message: str, timeout: float = CONVERGE) -> object:
    return runs.wait_for(predicate, timeout=timeout, message=message, interval=0.5)


def location_of(bed: Testbed, node: str) -> str | None:
    return bed.nodes[node].location


def pod_of(node: str) -> str:
    return f"pod-{node}"


def route_device(bed: Testbed, node: str, ip: str) -> str:
    """The interface ``node`` sends packets for ``ip`` out of."""
    return str(json.loads(bed.run(node, "ip", "-j", "route", "get", ip))[0]["dev"])


def unreachable_pairs(bed: Testbed, pairs: Iterable[tuple[str, str]]) -> list[str]:
    """The pairs of nodes whose pods do not reach each other, each pair waited for a
    little: NAT endpoints are learnt from handshakes, so a path through the office can need
    one more keepalive round before it carries traffic."""
    failures = []
    for src, dst in pairs:
        netns, ip = bed.pods[pod_of(src)].netns, bed.pods[pod_of(dst)].ip
        try:
            wait_for(functools.partial(reachable, bed, netns, ip), "", timeout=15)
        except AssertionError:
            failures.append(f"{src} -> {dst}")
    return failures


@pytest.fixture(scope="module")
def bed(controlplane_binaries: Path) -> Iterator[Testbed]:
    runs.cleanup_stale()
    with Testbed(LOCATIONS, binaries=controlplane_binaries) as built:
        for node in built.nodes:
            built.start_agent(node, granularity="cross")
        try:
            for node in built.nodes:
                built.add_pod(node, pod_of(node), timeout=CONVERGE)
            yield built
        except BaseException:
            for node in built.nodes:
                sys.stderr.write(f"--- {node}\n{built.agent_log(node)[-4000:]}\n")
            raise


def test_every_node_peers_only_with_the_nodes_of_other_locations(bed: Testbed) -> None:
    keys = {node: bed.node_annotations(node)[translate.KEY] for node in bed.nodes}
    for node in bed.nodes:
        others = {keys[o] for o in bed.nodes if location_of(bed, o) != location_of(bed, node)}
        wait_for(
            functools.partial(peers_are, bed, node, others),
            f"{node} does not peer with exactly the nodes of the other locations",
        )
        # Every node leads its own segment, so every node has a WireGuard IP.
        assert bed.node_annotations(node)[translate.WIREGUARD_IP], node


def test_pods_in_three_locations_reach_each_other_and_every_node(bed: Testbed) -> None:
    nodes = list(bed.nodes)
    assert unreachable_pairs(bed, itertools.permutations(nodes, 2)) == []
    failures = []
    for src, node in itertools.product(nodes, bed.nodes.values()):
        # Waited for as the pods are: one lost ping is not a missing path.
        check = functools.partial(reachable, bed, bed.pods[pod_of(src)].netns, str(node.lan_ip))
        try:
            wait_for(check, "", timeout=15)
        except AssertionError:
            failures.append(f"{src} -> node {node.name} ({node.lan_ip})")
    assert failures == []
    # TCP across clouds, both ways through the NAT, without masquerading pod IPs.
    ips = {name: pod.ip for name, pod in bed.pods.items()}
    echo = bed.tcp_exchange(
        bed.pods["pod-aws-2"].netns, bed.pods["pod-office-2"].netns, ips["pod-office-2"], 7101
    )
    assert echo.reply == "hello" and echo.peer == ips["pod-aws-2"]


def test_kgctl_reads_cross_from_the_annotations(bed: Testbed) -> None:
    # #490's test_mesh_granularity_auto_detect, against the live API server.
    auto = kgctl(bed, "graph")
    assert auto == kgctl(bed, "graph", "--mesh-granularity", "cross")
    assert 'subgraph "cluster_location_location:office"' in auto
    # office-1 is no WireGuard peer of office-2: one [Peer] per node of aws and gcp.
    assert kgctl(bed, "showconf", "node", "office-1").count("[Peer]") == 4


def test_killing_any_nodes_kg_breaks_only_that_nodes_own_traffic(bed: Testbed) -> None:
    nodes = list(bed.nodes)
    for dead in nodes:
        bed.kill_agent(dead)
        # The node's WireGuard device goes away with it (it stays in the API as it was).
        bed.run(dead, "ip", "link", "set", testbed.WG_INTERFACE, "down")
        try:
            others = [n for n in nodes if n != dead]
            broken = unreachable_pairs(bed, itertools.permutations(others, 2))
            assert broken == [], f"after killing {dead}'s kg"
            # Its own traffic across locations is what broke; inside its location the LAN
            # still carries it.
            src = bed.pods[pod_of(dead)].netns
            for other in others:
                same = location_of(bed, other) == location_of(bed, dead)
                assert reachable(bed, src, bed.pods[pod_of(other)].ip) == same, (dead, other)
        finally:
            bed.run(dead, "ip", "link", "set", testbed.WG_INTERFACE, "up")
            bed.start_agent(dead, granularity="cross")
        # Back: the restarted kg brings the node's own traffic back before the next kill.
        both_ways = [(dead, o) for o in others] + [(o, dead) for o in others]
        assert unreachable_pairs(bed, both_ways) == [], f"{dead} did not recover"


def test_two_locations_behind_one_nat_reach_each_other_on_their_lan(bed: Testbed) -> None:
    # office-2 becomes a location of its own behind the same gateway: the two office nodes
    # are WireGuard peers now, and Kilo would have them dial each other at the gateway's
    # public address, which needs hairpin NAT (the test gateway has none).
    office_1 = bed.node_annotations("office-1")[translate.KEY]
    office_2 = bed.node_annotations("office-2")[translate.KEY]  # kept in /var/lib/kilo/key
    # The clouds have published where they see the office nodes: the gateway's address,
    # which Kilo's agents then dial.
    gateway = bed.gateways["office"]
    wait_for(
        lambda: all(
            f'"{key}":{{"IP":"{gateway}"'
            in bed.node_annotations("aws-1").get(translate.DISCOVERED_ENDPOINTS, "")
            for key in (office_1, office_2)
        ),
        "aws-1 did not publish the office nodes' NAT addresses",
    )
    patch = {"metadata": {"annotations": {translate.LOCATION: "office-b"}}}
    bed.api().patch(Node, "office-2", patch)
    # Killed, not stopped: a clean-up would take the nodes out of the mesh, and the clouds'
    # published NAT addresses with them, so that the restarted agents would first dial the
    # annotated (LAN) endpoints and keep them (Kilo's own discovery would then hold).
    for node in ("office-1", "office-2"):
        bed.kill_agent(node)
        bed.start_agent(node, "--same-nat-internal-endpoints=true", granularity="cross")
    # What follows is the restarted agents' doing, not what the killed ones left behind
    # (which already carries traffic once office-1 dials office-2 on the LAN).
    for node in ("office-1", "office-2"):
        wait_for(functools.partial(agent_healthy, bed, node), f"{node}'s kg did not apply")
    wait_for(
        lambda: office_2 in wg_peer_keys(bed, "office-1"),
        "office-1 did not add office-2, now in another location, as a WireGuard peer",
    )
    pairs = [("office-1", "office-2"), ("office-2", "office-1")]
    assert unreachable_pairs(bed, pairs) == []
    dump = {line.split("\t")[0]: line.split("\t") for line in bed.wg_dump("office-1").splitlines()}
    assert dump[office_2][2] == f"{bed.nodes['office-2'].lan_ip}:51820"
    # ... and their handshakes go there over the LAN: were the LAN IP routed through
    # WireGuard, as Kilo routes a node's private IP it does not dial, they would enter the
    # tunnel they are to set up (and the pair meet only if a first handshake beat that
    # route).
    for src, dst in pairs:
        assert route_device(bed, src, str(bed.nodes[dst].lan_ip)) != testbed.WG_INTERFACE, src
    # Every other node's mesh is unchanged: the rest still reach both.
    others = [n for n in bed.nodes if not n.startswith("office")]
    both = [(o, n) for o in others for n in ("office-1", "office-2")]
    assert unreachable_pairs(bed, both + [(b, a) for a, b in both]) == []
