"""kgctl's inferences about a cluster: granularity and Kilo subnet, deterministically."""

from __future__ import annotations

import ipaddress
import itertools

import pytest

from kilo.errors import ConfigError, TopologyError
from kilo.mesh.cluster import infer_subnet, resolve_granularity, translate_cluster
from kilo.mesh.model import Granularity, Node
from tests.examples import reference_objects


def node(name: str, *, granularity: str = "", wireguard_ip: str | None = None) -> Node:
    return Node(
        name=name,
        granularity=granularity,
        wireguard_ip=None if wireguard_ip is None else ipaddress.ip_interface(wireguard_ip),
    )


@pytest.mark.parametrize("requested", ["location", "full"])
def test_explicit_granularity_ignores_annotations(requested: str) -> None:
    assert resolve_granularity(requested, [node("a", granularity="full")]) == (
        Granularity(requested),
        [],
    )


def test_auto_granularity_uses_first_annotated_node_by_name_in_any_order() -> None:
    nodes = [node("c", granularity="location"), node("a"), node("b", granularity="location")]
    for order in itertools.permutations(nodes):
        assert resolve_granularity("auto", order) == (Granularity.LOCATION, [])


def test_auto_granularity_warns_when_nodes_disagree() -> None:
    nodes = [node("b", granularity="full"), node("a", granularity="location")]
    chosen, warnings = resolve_granularity("auto", nodes)
    assert chosen == Granularity.LOCATION
    assert warnings == [
        "nodes disagree on kilo.squat.ai/granularity: using 'location' from node 'a', "
        "others have 'full'"
    ]


def test_auto_granularity_errors() -> None:
    with pytest.raises(TopologyError, match="could not get any nodes"):
        resolve_granularity("auto", [])
    with pytest.raises(TopologyError, match=r"no node has a valid kilo\.squat\.ai/granularity"):
        resolve_granularity("auto", [node("a")])
    with pytest.raises(ConfigError, match="mesh granularity star unknown"):
        resolve_granularity("star", [node("a")])


def test_infer_subnet_default_and_masking() -> None:
    assert infer_subnet([node("a")]) == (ipaddress.ip_network("10.4.0.0/16"), [])
    assert infer_subnet([node("a", wireguard_ip="10.6.0.3/16")]) == (
        ipaddress.ip_network("10.6.0.0/16"),
        [],
    )


def test_infer_subnet_is_order_independent_and_reports_disagreement() -> None:
    nodes = [
        node("b", wireguard_ip="10.7.0.1/24"),
        node("a", wireguard_ip="10.6.0.1/16"),
        node("c"),
    ]
    results = {str(infer_subnet(order)) for order in itertools.permutations(nodes)}
    assert len(results) == 1
    subnet, warnings = infer_subnet(nodes)
    assert subnet == ipaddress.ip_network("10.6.0.0/16")
    assert warnings == [
        "nodes disagree on the Kilo subnet: using 10.6.0.0/16 from node 'a', others have "
        "10.7.0.0/24; pass --subnet to choose"
    ]


def test_translate_cluster_sorts_and_collects_diagnostics() -> None:
    objects = reference_objects()
    objects[0]["metadata"]["annotations"]["kilo.squat.ai/granularity"] = "mesh"
    cluster = translate_cluster(
        reversed([o for o in objects if o["kind"] == "Node"]), [objects[-1]]
    )
    assert [n.name for n in cluster.nodes] == ["alpha", "beta", "delta", "gamma"]
    assert [p.name for p in cluster.peers] == ["laptop"]
    assert [str(d) for d in cluster.diagnostics] == [
        "node 'alpha': kilo.squat.ai/granularity='mesh' is not location, full or cross; ignored"
    ]
    assert cluster.node("beta") is not None and cluster.node("omega") is None
    assert cluster.peer("laptop") is not None
