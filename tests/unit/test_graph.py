"""The DOT graph (kilo-mesh.md §7, kilo-k8s-cli.md §4.4), compared as whole texts.

The expected texts are the ``.dot`` files of tests/golden/, verbatim as Kilo writes them: real
tab characters, ``\n`` inside labels is a literal backslash-n, and a peer's label really ends
with a newline (Kilo's quirk).
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess

import pytest

from kilo.mesh import ip as ipmod
from kilo.mesh.endpoint import Endpoint
from kilo.mesh.graph import dot, linked_dot
from kilo.mesh.keys import Key
from kilo.mesh.model import Granularity, Node, Peer
from kilo.mesh.topology import Topology, build_topology
from tests import golden
from tests.examples import KILO_SUBNET, reference_cluster


def _node(name: str, index: int, *, endpoint: str, location: str = "") -> Node:
    """A ready node with internal IP 172.18.0.<index+2>/16 and pod CIDR 10.42.<index>.0/24."""
    return Node(
        name=name,
        endpoint=Endpoint.parse(endpoint),
        key=Key(bytes([index + 1]) * 32),
        internal_ip=ipmod.parse_interface(f"172.18.0.{index + 2}/16"),
        subnet=ipaddress.ip_network(f"10.42.{index}.0/24"),
        location=location,
    )


def _peer(name: str, *, endpoint: str = "") -> Peer:
    return Peer(
        name=name,
        allowed_ips=(ipaddress.ip_interface("10.5.0.1/32"),),
        public_key=Key(bytes([0x50]) * 32),
        endpoint=Endpoint.parse(endpoint),
    )


def _reference(hostname: str = "alpha", *, with_peers: bool = True) -> Topology:
    nodes, peers = reference_cluster()
    return build_topology(
        nodes,
        peers if with_peers else [],
        granularity=Granularity.LOCATION,
        hostname=hostname,
        subnet=KILO_SUBNET,
    )


def test_reference_cluster_matches_the_kilo_example() -> None:
    # reference.dot is kilo-mesh.md §7, verbatim.
    assert dot(_reference()) == golden.text("reference.dot")


def test_ends_with_the_gographviz_closing_and_no_extra_newline() -> None:
    assert dot(_reference()).endswith(";\n\n}\n")


@pytest.mark.parametrize("hostname", ["alpha", "beta", "gamma", "delta"])
def test_output_does_not_depend_on_the_perspective(hostname: str) -> None:
    # From beta (not a leader) the topology's WireGuard CIDR is the bare subnet, from
    # alpha it is 10.4.0.2/16: both print as the subnet.
    assert dot(_reference(hostname)) == golden.text("reference.dot")


def test_output_does_not_depend_on_input_order() -> None:
    nodes, peers = reference_cluster()
    t = build_topology(
        list(reversed(nodes)),
        list(reversed(peers)),
        granularity=Granularity.LOCATION,
        hostname="gamma",
        subnet=KILO_SUBNET,
    )
    assert dot(t) == golden.text("reference.dot")


def test_graph_without_peers_still_has_the_peers_subgraph() -> None:
    # The §2.3 cluster without its peer: the peers subgraph is still there, empty.
    assert dot(_reference(with_peers=False)) == golden.text("reference-without-peers.dot")


def test_full_mesh_matches_the_kgctl_example() -> None:
    # full-mesh.dot is kilo-k8s-cli.md §4.4, verbatim (without the newline kgctl adds when
    # printing).
    nodes = [_node("a", 0, endpoint="172.18.0.2:51820"), _node("b", 1, endpoint="172.18.0.3:51820")]
    t = build_topology(
        nodes, [_peer("p")], granularity=Granularity.FULL, hostname="b", subnet=KILO_SUBNET
    )
    assert dot(t) == golden.text("full-mesh.dot")


def test_peers_with_endpoints_and_a_leader_that_is_not_first() -> None:
    # b has the public endpoint, so it leads location "x" and the edge goes b -> a. The
    # peers are drawn sorted by name with their endpoint (DNS name as written).
    nodes = [
        _node("a", 0, endpoint="172.18.0.2:51820", location="x"),
        _node("b", 1, endpoint="5.6.7.8:51821", location="x"),
    ]
    peers = [_peer("vpn", endpoint="vpn.example.com:51820"), _peer("p", endpoint="1.2.3.4:4000")]
    t = build_topology(
        nodes, peers, granularity=Granularity.LOCATION, hostname="a", subnet=KILO_SUBNET
    )
    assert dot(t) == golden.text("peers-with-endpoints.dot")


def test_node_without_internal_ip_has_no_private_ip_in_its_label() -> None:
    node = Node(
        name="solo",
        endpoint=Endpoint.parse("[2001:db8::1]:51820"),
        key=Key(bytes([1]) * 32),
        subnet=ipaddress.ip_network("10.42.0.0/24"),
    )
    t = build_topology(
        [node], [], granularity=Granularity.LOCATION, hostname="solo", subnet=KILO_SUBNET
    )
    assert dot(t) == golden.text("node-without-internal-ip.dot")


def test_peer_named_like_a_node_merges_with_it_as_in_kilo() -> None:
    # Kilo's pitfall: gographviz merges the two; the node keeps rank=1, takes the peer's
    # label, and is drawn in both subgraphs. Kubernetes allows the two names to clash.
    nodes = [_node("a", 0, endpoint="172.18.0.2:51820"), _node("b", 1, endpoint="172.18.0.3:51820")]
    t = build_topology(
        nodes, [_peer("b")], granularity=Granularity.FULL, hostname="a", subnet=KILO_SUBNET
    )
    assert dot(t) == golden.text("peer-named-like-a-node.dot")


def test_quotes_and_backslashes_in_a_location_are_escaped_deliberately() -> None:
    # Deliberate deviation, only for values with '"' or '\': Kilo writes them unescaped,
    # which breaks the DOT text. Names and endpoints cannot contain them; a location
    # annotation can.
    node = _node("a", 0, endpoint="172.18.0.2:51820", location='dc "1"\\')
    t = build_topology(
        [node], [], granularity=Granularity.LOCATION, hostname="a", subnet=KILO_SUBNET
    )
    assert dot(t) == golden.text("escaped-location.dot")


def test_title_is_the_kilo_subnet_of_the_topology() -> None:
    subnet = ipaddress.ip_network("10.6.0.0/24")
    t = build_topology(
        [_node("a", 0, endpoint="172.18.0.2:51820")],
        [],
        granularity=Granularity.FULL,
        hostname="a",
        subnet=subnet,
    )
    assert dot(t).splitlines()[1] == '\tlabel="10.6.0.0/24";'


# --- two clusters and the link (kgctl graph --remote-kubeconfig) --------------------------------


def _second_cluster(peers: list[Peer]) -> Topology:
    """One location, azure, whose leader is named like a node of the reference cluster."""
    nodes = [
        _node("alpha", 7, endpoint="198.51.100.7:51820", location="azure"),
        _node("zeta", 8, endpoint="198.51.100.8:51820", location="azure"),
    ]
    return build_topology(
        nodes,
        peers,
        granularity=Granularity.LOCATION,
        hostname="alpha",
        subnet=ipaddress.ip_network("10.5.0.0/16"),
    )


def _linked(one_has: list[str], two_has: list[str]) -> str:
    nodes, peers = reference_cluster()
    local = build_topology(
        nodes,
        [*peers, *(_peer(f"kilo-{n}") for n in one_has)],
        granularity=Granularity.LOCATION,
        hostname="alpha",
        subnet=KILO_SUBNET,
    )
    remote = _second_cluster([_peer(f"kilo-{n}") for n in two_has])
    return linked_dot(local, remote, link="kilo", titles=("cluster 1: a", "cluster 2: b"))


def test_two_linked_clusters_are_two_boxes_joined_leader_to_leader() -> None:
    leaders = sorted(s.leader_name for s in _reference().segments)
    text = _linked(["alpha"], leaders)
    assert text.startswith('digraph kilo {\n\tlabel="10.4.0.0/16 + 10.5.0.0/16 (link kilo)";')
    # Node IDs carry the cluster: both clusters have an alpha.
    assert '\t"1/alpha" [ ' in text and '\t"2/alpha" [ ' in text
    for leader in leaders:
        assert f'\t"1/{leader}"->"2/alpha"[ color=blue, dir=both, style=bold ];\n' in text
    assert 'subgraph "cluster_1/" {\n\tlabel="cluster 1: a";' in text
    assert 'subgraph "cluster_2/location_location:azure"' in text  # as dot() names it
    # The link's Peers are the edges; the cluster's own Peer stays in its peers box.
    assert '"1/laptop" [ ' in text and '"1/kilo-alpha"' not in text
    assert '"2/kilo-' not in text and "cluster_2/peers" not in text


def test_a_link_that_holds_in_one_cluster_only_is_a_red_arrow_from_it() -> None:
    leaders = sorted(s.leader_name for s in _reference().segments)
    text = _linked(["alpha"], leaders[:1])
    assert f'\t"1/{leaders[0]}"->"2/alpha"[ color=blue, dir=both, style=bold ];\n' in text
    # Cluster 1 holds alpha's Peer, cluster 2 none for the other leader: an arrow from 1.
    assert f'\t"1/{leaders[1]}"->"2/alpha"[ color=red, dir=forward, style=dashed ];\n' in text
    one_way = _linked([], leaders[:1])
    assert f'\t"2/alpha"->"1/{leaders[0]}"[ color=red, dir=forward, style=dashed ];\n' in one_way
    # A Peer of the link for a node that leads nothing (stale) is drawn as a Peer.
    stale = _linked(["zeta"], [])
    assert '"1/kilo-zeta" [ ' in stale
    assert "color=" not in stale


def test_the_linked_graph_is_valid_dot() -> None:
    if shutil.which("dot") is None:
        pytest.skip("Graphviz is not installed")
    leaders = sorted(s.leader_name for s in _reference().segments)
    result = subprocess.run(
        ["dot", "-Tsvg"],
        input=_linked(["alpha"], leaders[:1]),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_a_linked_cross_mesh_draws_each_location_once_as_dot_does() -> None:
    nodes = [
        _node("alpha", 7, endpoint="198.51.100.7:51820", location="azure"),
        _node("zeta", 8, endpoint="198.51.100.8:51820", location="azure"),
        _node("gcp1", 9, endpoint="198.51.100.9:51820", location="gcp"),
    ]
    remote = build_topology(
        nodes,
        [],
        granularity=Granularity.CROSS,
        hostname="alpha",
        subnet=ipaddress.ip_network("10.5.0.0/16"),
    )
    nodes_one, peers_one = reference_cluster()
    local = build_topology(
        nodes_one, peers_one, granularity=Granularity.LOCATION, hostname="alpha", subnet=KILO_SUBNET
    )
    text = linked_dot(local, remote, link="kilo", titles=("cluster 1: a", "cluster 2: b"))
    # One box per location, holding each of its nodes (each node is a segment of its own).
    assert text.count('subgraph "cluster_2/location_location:azure" {') == 1
    box = text.split('subgraph "cluster_2/location_location:azure" {')[1].split("}")[0]
    assert '"2/alpha" [ ' in box and '"2/zeta" [ ' in box and '"2/gcp1"' not in box
    # Nodes of one location are no WireGuard peers: a plain dotted line, as dot() draws it;
    # nodes of two locations are.
    plain = "[ arrowhead=none, arrowtail=none, dir=both, style=dotted ];"
    assert f'\t"2/alpha"->"2/zeta"{plain}\n' in text
    assert '\t"2/alpha"->"2/gcp1"[ dir=both ];\n' in text
    assert '\t"2/gcp1"->"2/zeta"[ dir=both ];\n' in text
