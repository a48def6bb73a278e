"""``--mesh-granularity=cross`` (squat/kilo#328 and #490, not merged upstream).

Every node is its own segment towards the nodes of other locations; nodes of one location
are not WireGuard peers and reach each other over the underlay. The worked example is
examples/cluster.yaml: alpha and beta in gcp, gamma and delta in aws, delta without an
internal IP, and the VPN peer laptop. The golden files were checked by hand against
#328's code (cozystack/cozystack#2604 carries it as a patch).
"""

from __future__ import annotations

import io
import itertools
from collections import Counter
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from kilo.agent import command_line
from kilo.agent.settings import AgentSettings
from kilo.cli import kgctl
from kilo.mesh import graph, iptables, routes, translate, wireguard
from kilo.mesh.ip import host_interface
from kilo.mesh.model import Compatibility, Encapsulation, Granularity, Node, Peer
from kilo.mesh.plan import PlanSettings, plan_node
from kilo.mesh.routes import Device, EncapsulationPolicy
from kilo.mesh.topology import Topology, build_topology, cross_location
from tests import golden
from tests.examples import EXAMPLE_DUMP, KILO_SUBNET, reference_cluster, reference_objects
from tests.strategies import clusters

FILE = ["--backend", "file", "--file", str(EXAMPLE_DUMP)]
CROSS = [*FILE, "--mesh-granularity", "cross"]
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None)


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = kgctl.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def topology(nodes: list[Node], peers: list[Peer], hostname: str) -> Topology:
    return build_topology(
        nodes, peers, granularity=Granularity.CROSS, hostname=hostname, subnet=KILO_SUBNET
    )


def reference(hostname: str) -> Topology:
    nodes, peers = reference_cluster()
    return topology(nodes, peers, hostname)


def peer_names(conf: wireguard.WireGuardConfig) -> list[str]:
    return [p.name for p in conf.peers]


# --- the worked example ----------------------------------------------------------------------


def test_segments_leaders_and_wireguard_ips_are_the_full_meshs() -> None:
    # #328 keys every node "node:<name>", so allocation is the full mesh's: one WireGuard IP
    # per node in name order, and every node leads its own segment.
    nodes, peers = reference_cluster()
    for node in nodes:
        t = topology(nodes, peers, node.name)
        full = build_topology(
            nodes, peers, granularity=Granularity.FULL, hostname=node.name, subnet=KILO_SUBNET
        )
        assert t.segments == full.segments
        assert t.leader and t.wireguard_cidr == full.wireguard_cidr
        assert [(s.location, str(s.wireguard_ip)) for s in t.segments] == [
            ("node:alpha", "10.4.0.1"),
            ("node:beta", "10.4.0.2"),
            ("node:delta", "10.4.0.3"),
            ("node:gamma", "10.4.0.4"),
        ]
        assert t.node_locations == {
            "node:alpha": "location:gcp",
            "node:beta": "location:gcp",
            "node:delta": "node:delta",  # no internal IP: a location of its own (see below)
            "node:gamma": "location:aws",
        }
    assert reference("alpha").node_location == "location:gcp"


def test_other_granularities_have_no_cross_locations() -> None:
    nodes, peers = reference_cluster()
    for granularity in (Granularity.LOCATION, Granularity.FULL):
        t = build_topology(
            nodes, peers, granularity=granularity, hostname="alpha", subnet=KILO_SUBNET
        )
        assert t.node_locations == {} and t.node_location == ""
        assert [s.location for s in t.segments if t.in_own_location(s)] == [t.location]


def test_graph_draws_locations_with_plain_edges_and_wireguard_across() -> None:
    assert run(*CROSS, "graph") == (0, golden.text("cross.dot") + "\n", "")
    # Every perspective draws the same graph.
    assert {graph.dot(reference(n)) for n in ("alpha", "beta", "gamma", "delta")} == {
        golden.text("cross.dot")
    }


def test_auto_granularity_reads_cross_from_the_annotations(tmp_path: Path) -> None:
    # #490's test_mesh_granularity_auto_detect: kgctl graph == kgctl graph --mesh-granularity cross.
    objects = reference_objects()
    for obj in objects:
        if obj["kind"] == "Node":
            obj["metadata"]["annotations"][translate.GRANULARITY] = "cross"
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": objects}))
    dump = ["--backend", "file", "--file", str(path)]
    assert run(*dump, "graph") == run(*dump, "graph", "--mesh-granularity", "cross")
    assert run(*dump, "graph")[1] == golden.text("cross.dot") + "\n"


def test_showconf_node_lists_only_the_nodes_of_other_locations() -> None:
    # #490's test_cross_peer_topology: beta (same location) is no peer of alpha.
    assert run(*CROSS, "showconf", "node", "alpha") == (0, golden.text("cross-alpha.conf"), "")
    assert peer_names(wireguard.node_config(reference("alpha"))) == [
        "node:delta",
        "node:gamma",
        "laptop",
    ]
    assert peer_names(wireguard.node_config(reference("gamma"))) == [
        "node:alpha",
        "node:beta",
        "node:delta",
        "laptop",
    ]


def test_a_node_without_an_internal_ip_peers_with_every_other_node() -> None:
    # Deliberate difference from #328 (docs/compatibility.md): delta has no underlay address,
    # so it stays a WireGuard peer of gamma, the other node of its location, both ways.
    assert run(*CROSS, "showconf", "node", "delta") == (0, golden.text("cross-delta.conf"), "")
    assert "node:delta" in peer_names(wireguard.node_config(reference("gamma")))
    nodes, _ = reference_cluster()
    delta = next(n for n in nodes if n.name == "delta")
    assert cross_location(delta) == "node:delta"


def test_showconf_as_peer_is_the_nodes_own_segment() -> None:
    code, out, _ = run(*CROSS, "showconf", "node", "alpha", "--as-peer")
    assert code == 0
    assert out == (
        "[Peer]\n"
        "AllowedIPs = 10.2.0.0/24, 10.128.0.2/32, 10.4.0.1/32\n"
        "Endpoint = 34.1.1.1:51820\n"
        "PersistentKeepalive = 0\n"
        "PublicKey = KiPuWyUHI4XEGa4TZDwK2txpogj3ImzUC6eD+tJPZ18=\n"
    )


def test_a_vpn_peer_connects_to_every_node() -> None:
    code, out, _ = run(*CROSS, "showconf", "peer", "laptop")
    assert code == 0
    assert out.count("[Peer]") == 4
    conf = wireguard.peer_config(reference("alpha"), "laptop")
    assert peer_names(conf) == ["node:alpha", "node:beta", "node:delta", "node:gamma"]


def test_plan_of_a_node_routes_its_location_over_the_underlay() -> None:
    assert run(*CROSS, "plan", "node", "alpha") == (0, golden.text("cross-alpha.plan"), "")


@pytest.mark.parametrize(
    ("encapsulation", "compatibility", "expected"),
    [
        # IPIP: through tunl0, with the table-1107 detour of a leader for its location.
        (
            Encapsulation.ALWAYS,
            Compatibility.NONE,
            [
                "10.2.1.0/24 via 10.128.0.3 dev tunnel proto static onlink src 10.128.0.2",
                "10.128.0.3/32 via 10.128.0.3 dev tunnel proto static onlink src 10.128.0.2 "
                "table 1107",
            ],
        ),
        (
            Encapsulation.NEVER,
            Compatibility.NONE,
            ["10.2.1.0/24 via 10.128.0.3 dev private proto static onlink"],
        ),
        # Both are in 10.128.0.0/20: crosssubnet does not encapsulate.
        (
            Encapsulation.CROSSSUBNET,
            Compatibility.NONE,
            ["10.2.1.0/24 via 10.128.0.3 dev private proto static onlink"],
        ),
        # Flannel and Cilium reach a node through its pod CIDR's network address.
        (
            Encapsulation.ALWAYS,
            Compatibility.FLANNEL,
            [
                "10.2.1.0/24 via 10.2.1.0 dev tunnel proto static onlink src 10.128.0.2",
                "10.128.0.3/32 via 10.2.1.0 dev tunnel proto static onlink src 10.128.0.2 "
                "table 1107",
            ],
        ),
        (
            Encapsulation.NEVER,
            Compatibility.CILIUM,
            ["10.2.1.0/24 via 10.2.1.0 dev private proto static onlink"],
        ),
    ],
)
def test_routes_to_the_other_node_of_the_location_follow_the_encapsulation(
    encapsulation: Encapsulation, compatibility: Compatibility, expected: list[str]
) -> None:
    t = reference("alpha")
    policy = EncapsulationPolicy(strategy=encapsulation, compatibility=compatibility)
    planned, _ = routes.plan_routes(t, policy=policy)
    names = {d: d.value for d in Device}
    beta = [
        routes.format_route(r, names)
        for r in planned
        if str(r.dst) in ("10.2.1.0/24", "10.128.0.3/32")
    ]
    assert beta == expected
    # Everything of the other location goes through WireGuard to its own node.
    kilo = {str(r.dst): str(r.gw) for r in planned if r.dev == Device.KILO and r.gw is not None}
    assert kilo == {
        "10.2.3.0/24": "10.4.0.3",
        "10.2.2.0/24": "10.4.0.4",
        "172.31.5.5/32": "10.4.0.4",
        "172.31.100.0/24": "10.4.0.4",
    }


def test_ipip_is_accepted_from_the_nodes_of_the_location() -> None:
    # #328 keeps Kilo's lookup of a "location:<name>" segment, finds none, and drops the
    # IPIP traffic of the other nodes of the location (deliberate fix).
    sources = iptables.ipip_allowed_sources(reference("alpha"), "gcp")
    assert [str(s) for s in sources] == ["10.128.0.2/32", "10.128.0.3/32"]
    # delta, gamma's neighbour without an internal IP, is a WireGuard peer instead.
    assert [str(s) for s in iptables.ipip_allowed_sources(reference("gamma"), "aws")] == [
        "172.31.5.5/32"
    ]


# --- a cluster that mixes Go and Python nodes (docs/compatibility.md) ------------------------


def test_kg_takes_cross_and_its_help_lists_it_in_328s_words() -> None:
    settings = command_line.read(
        ["--hostname=a", "--mesh-granularity=cross"], hostname_fallback=lambda: None
    )
    assert isinstance(settings, AgentSettings)
    assert settings.mesh.granularity == Granularity.CROSS
    assert (
        "The granularity of the network mesh to create. Possible values: location, full, cross"
        in command_line.help_text()
    )


def test_a_cross_annotation_is_read_as_328_reads_it() -> None:
    # Kilo's own backend drops the value (it reads as no granularity); #328's keeps it.
    obj = reference_objects()[0]
    obj["metadata"]["annotations"][translate.GRANULARITY] = "cross"
    result = translate.translate_node(obj)
    assert result.value is not None and result.value.granularity == "cross"
    assert result.diagnostics == ()


def test_nodes_that_disagree_on_the_granularity_disagree_on_the_mesh() -> None:
    nodes, peers = reference_cluster()

    def wireguard_ips(t: Topology) -> dict[str, str]:
        return {s.leader_name: str(s.wireguard_ip) for s in t.segments}

    location = {
        n.name: build_topology(
            nodes, peers, granularity=Granularity.LOCATION, hostname=n.name, subnet=KILO_SUBNET
        )
        for n in nodes
    }
    cross = reference("gamma")
    # 10.4.0.2 is alpha's (the gcp leader) for location nodes and beta's for cross nodes.
    assert wireguard_ips(location["gamma"])["alpha"] == "10.4.0.2"
    assert wireguard_ips(cross)["beta"] == "10.4.0.2"
    # A cross node peers with beta, which as a location non-leader has no WireGuard peers.
    assert "node:beta" in peer_names(wireguard.node_config(cross))
    assert not location["beta"].leader


# --- properties over random clusters ---------------------------------------------------------


def cross_pairs(nodes: list[Node]) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(pairs in different cross locations, pairs in the same one), ordered both ways."""
    across: set[tuple[str, str]] = set()
    within: set[tuple[str, str]] = set()
    for a, b in itertools.permutations(nodes, 2):
        same = cross_location(a) == cross_location(b)
        (within if same else across).add((a.name, b.name))
    return across, within


@PROPERTY_SETTINGS
@given(cluster=clusters())
def test_every_cross_location_pair_are_peers_and_no_same_location_pair_is(cluster) -> None:
    nodes, peers = cluster
    keys = {n.name: n.key for n in nodes}
    across, within = cross_pairs(nodes)
    peered = set()
    for node in nodes:
        conf = wireguard.node_config(topology(nodes, peers, node.name))
        for other in nodes:
            if conf.peer(keys[other.name]) is not None:
                peered.add((node.name, other.name))
    assert peered == across
    assert not peered & within
    # Peering is symmetric: both ends agree, or no tunnel could carry traffic.
    assert peered == {(b, a) for a, b in peered}


@PROPERTY_SETTINGS
@given(cluster=clusters())
def test_allowed_ips_partition_the_other_locations(cluster) -> None:
    nodes, peers = cluster
    by_name = {n.name: n for n in nodes}
    for node in nodes:
        t = topology(nodes, peers, node.name)
        conf = wireguard.node_config(t)
        node_peers = [p for p in conf.peers if p.name.startswith("node:")]
        claimed = Counter(str(a) for p in node_peers for a in p.allowed_ips)
        assert all(count == 1 for count in claimed.values()), claimed
        expected = set()
        for segment in t.segments:
            other = by_name[segment.hostnames[0]]
            if cross_location(other) == cross_location(node):
                continue
            expected |= {str(a) for a in segment.allowed_ips + segment.allowed_location_ips}
            # What a segment claims is that node's own: pod CIDR, internal IP, WireGuard IP.
            assert str(other.subnet) in claimed
            assert str(host_interface(segment.wireguard_ip)) in claimed
        assert set(claimed) == expected


@PROPERTY_SETTINGS
@given(
    cluster=clusters(),
    local=st.booleans(),
    encapsulation=st.sampled_from(list(Encapsulation)),
    compatibility=st.sampled_from(list(Compatibility)),
)
def test_routes_agree_with_the_wireguard_peers(
    cluster, local, encapsulation, compatibility
) -> None:
    nodes, peers = cluster
    settings_ = PlanSettings(local=local, encapsulation=encapsulation, compatibility=compatibility)
    for node in nodes:
        t = topology(nodes, peers, node.name)
        plan = plan_node(t, node, settings_)
        assert plan.leader and plan.wireguard is not None
        owner = {}  # WireGuard IP -> what its peer carries
        for peer in plan.wireguard.peers:
            for segment in t.segments:
                if segment.key == peer.public_key and peer.name == segment.location:
                    owner[segment.wireguard_ip] = {str(a) for a in peer.allowed_ips}
        for route in plan.routes:
            if route.dev == Device.KILO and route.gw is not None:
                # Through WireGuard only to a peer, which then accepts the destination.
                assert str(route.dst) in owner[route.gw], (node.name, route)
        main = Counter(str(r.dst) for r in plan.routes if r.table is None)
        for other in nodes:
            if other.name == node.name:
                continue
            same = cross_location(other) == cross_location(node)
            via_kilo = [
                r for r in plan.routes if str(r.dst) == str(other.subnet) and r.dev == Device.KILO
            ]
            if same:
                assert via_kilo == [] and main[str(other.subnet)] == (1 if local else 0)
            else:
                assert len(via_kilo) == 1 and main[str(other.subnet)] == 1


@PROPERTY_SETTINGS
@given(cluster=clusters(), data=st.data())
def test_every_node_agrees_on_segments_and_locations(cluster, data) -> None:
    nodes, peers = cluster
    a, b = data.draw(st.sampled_from(nodes)), data.draw(st.sampled_from(nodes))
    ta, tb = topology(nodes, peers, a.name), topology(nodes, peers, b.name)
    assert ta.segments == tb.segments
    assert ta.node_locations == tb.node_locations
    full = build_topology(
        nodes, peers, granularity=Granularity.FULL, hostname=a.name, subnet=KILO_SUBNET
    )
    assert ta.segments == full.segments
