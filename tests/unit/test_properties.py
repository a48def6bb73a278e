"""Property tests over random clusters (Hypothesis)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from kilo.mesh import graph, iptables, wireguard
from kilo.mesh.model import Compatibility, Encapsulation, Granularity, Node, Peer
from kilo.mesh.plan import PlanSettings, plan_node
from kilo.mesh.routes import Device
from kilo.mesh.topology import Topology, build_topology
from tests.examples import KILO_SUBNET
from tests.strategies import clusters

granularities = st.sampled_from(list(Granularity))
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None)


def topology_of(
    nodes: list[Node], peers: list[Peer], granularity: Granularity, hostname: str
) -> Topology:
    return build_topology(
        nodes, peers, granularity=granularity, hostname=hostname, subnet=KILO_SUBNET
    )


def everything(t: Topology, node: Node) -> tuple[object, ...]:
    plan = plan_node(t, node, PlanSettings(iptables_forward_rules=True))
    return (
        t,
        wireguard.render(wireguard.node_config(t)),
        graph.dot(t),
        plan.routes,
        plan.rules,
        plan.iptables,
        iptables.plan_rules(
            t,
            cni=True,
            forward=True,
            local=True,
            encapsulation=plan.settings.encapsulation,
            compatibility=plan.settings.compatibility,
            local_location=node.location,
        ),
    )


@PROPERTY_SETTINGS
@given(cluster=clusters(), granularity=granularities, data=st.data())
def test_output_does_not_depend_on_input_order(cluster, granularity, data) -> None:
    nodes, peers = cluster
    node = data.draw(st.sampled_from(nodes))
    shuffled_nodes = data.draw(st.permutations(nodes))
    shuffled_peers = data.draw(st.permutations(peers))
    first = everything(topology_of(nodes, peers, granularity, node.name), node)
    second = everything(topology_of(shuffled_nodes, shuffled_peers, granularity, node.name), node)
    assert first == second


@PROPERTY_SETTINGS
@given(cluster=clusters(), granularity=granularities, data=st.data())
def test_wireguard_ips_are_unique_and_inside_the_subnet(cluster, granularity, data) -> None:
    nodes, peers = cluster
    node = data.draw(st.sampled_from(nodes))
    t = topology_of(nodes, peers, granularity, node.name)
    ips = [s.wireguard_ip for s in t.segments]
    assert len(set(ips)) == len(ips)
    assert all(ip in KILO_SUBNET and ip != KILO_SUBNET.network_address for ip in ips)
    # Every perspective agrees on each segment's WireGuard IP: other nodes depend on it.
    other = topology_of(nodes, peers, granularity, data.draw(st.sampled_from(nodes)).name)
    assert [(s.location, s.wireguard_ip) for s in other.segments] == [
        (s.location, s.wireguard_ip) for s in t.segments
    ]


@PROPERTY_SETTINGS
@given(cluster=clusters(), granularity=granularities)
def test_each_remote_pod_cidr_is_in_exactly_one_peer_on_every_leader(cluster, granularity) -> None:
    nodes, peers = cluster
    for node in nodes:
        t = topology_of(nodes, peers, granularity, node.name)
        if not t.leader:
            continue
        # The own segment, and in a cross mesh the other nodes of the own location.
        own = [s for s in t.segments if t.in_own_location(s)]
        conf = wireguard.node_config(t)
        counts = Counter(str(a) for p in conf.peers for a in p.allowed_ips)
        remote = [n for n in nodes if not any(n.name in s.hostnames for s in own)]
        assert all(counts[str(n.subnet)] == 1 for n in remote), (node.name, counts)
        assert all(counts[str(c)] == 0 for s in own for c in s.cidrs)


@PROPERTY_SETTINGS
@given(
    cluster=clusters(),
    granularity=granularities,
    local=st.booleans(),
    encapsulation=st.sampled_from(list(Encapsulation)),
    compatibility=st.sampled_from(list(Compatibility)),
)
def test_plan_routes_cover_every_remote_pod_cidr_exactly_once(
    cluster, granularity, local, encapsulation, compatibility
) -> None:
    nodes, peers = cluster
    settings = PlanSettings(local=local, encapsulation=encapsulation, compatibility=compatibility)
    for node in nodes:
        t = topology_of(nodes, peers, granularity, node.name)
        plan = plan_node(t, node, settings)
        main = Counter(str(r.dst) for r in plan.routes if r.table is None)
        own = {h for s in t.segments if t.in_own_location(s) for h in s.hostnames}
        for other in nodes:
            if other.name == node.name:
                assert main[str(other.subnet)] == 0
            elif other.name in own:
                # Inside the location, pod CIDRs are routed only with --local.
                assert main[str(other.subnet)] == (1 if local else 0)
            else:
                assert main[str(other.subnet)] == 1, (node.name, other.name)
        if t.leader:
            remote = [r for r in plan.routes if r.dev == Device.KILO and r.gw is not None]
            assert all(r.gw in {s.wireguard_ip for s in t.segments} for r in remote)
