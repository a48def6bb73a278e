"""One test per deliberate difference from Kilo listed in docs/compatibility.md.

Most differences are also covered where the behaviour lives; these tests state each one
plainly so the document can point at them.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from kilo.errors import AddressPoolExhausted
from kilo.mesh import translate, wireguard
from kilo.mesh.endpoint import Endpoint
from kilo.mesh.keys import Key
from kilo.mesh.model import Granularity, Node
from kilo.mesh.topology import build_topology
from tests.examples import PUBLIC_KEYS


def node_object(
    annotations: dict[str, str], labels: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "n1", "annotations": annotations, "labels": labels or {}},
        "spec": {"podCIDR": "10.2.0.0/24"},
    }


def test_legacy_force_external_ip_becomes_the_forced_endpoint_with_the_mesh_port() -> None:
    obj = node_object(
        {translate.FORCE_EXTERNAL_IP: "203.0.113.7/32", translate.ENDPOINT: "10.0.0.1:51820"}
    )
    result = translate.translate_node(obj, port=51821)
    assert result.value is not None
    assert result.value.endpoint == Endpoint.parse("203.0.113.7:51821")
    assert result.diagnostics == ()


def test_legacy_force_external_ip_loses_to_force_endpoint() -> None:
    obj = node_object(
        {
            translate.FORCE_EXTERNAL_IP: "203.0.113.7/32",
            translate.FORCE_ENDPOINT: "198.51.100.1:4000",
        }
    )
    node = translate.translate_node(obj).value
    assert node is not None and node.endpoint == Endpoint.parse("198.51.100.1:4000")


def test_legacy_region_label_is_the_location_when_the_topology_label_is_absent() -> None:
    legacy = {"failure-domain.beta.kubernetes.io/region": "eu-west"}
    node = translate.translate_node(node_object({}, legacy)).value
    assert node is not None and node.location == "eu-west"
    both = {**legacy, "topology.kubernetes.io/region": "us-east"}
    node = translate.translate_node(node_object({}, both)).value
    assert node is not None and node.location == "us-east"


SEEN_AT_NAT = '{"IP":"198.51.100.9","Port":41000,"Zone":""}'


def keepalive_mesh(keepalive: str, seen: str = SEEN_AT_NAT) -> str:
    """The WireGuard config of leader a, whose peer b has ``keepalive`` and was ``seen`` by a."""
    a = node_object(
        {
            translate.ENDPOINT: "203.0.113.1:51820",
            translate.KEY: str(PUBLIC_KEYS["alpha"]),
            translate.PERSISTENT_KEEPALIVE: keepalive,
            translate.DISCOVERED_ENDPOINTS: f'{{"{PUBLIC_KEYS["beta"]}":{seen}}}',
        }
    )
    b = node_object(
        {
            translate.ENDPOINT: "203.0.113.2:51820",
            translate.KEY: str(PUBLIC_KEYS["beta"]),
            translate.PERSISTENT_KEEPALIVE: keepalive,
        }
    )
    b["metadata"]["name"] = "n2"
    b["spec"]["podCIDR"] = "10.2.1.0/24"
    nodes = [n for n in (translate.translate_node(o).value for o in (a, b)) if n is not None]
    t = build_topology(
        nodes,
        [],
        granularity=Granularity.FULL,
        hostname="n1",
        subnet=ipaddress.ip_network("10.4.0.0/16"),
        persistent_keepalive=nodes[0].persistent_keepalive,  # the agent passes its own
    )
    return wireguard.render(wireguard.node_config(t))


def test_negative_keepalive_renders_zero_but_keeps_kilos_nat_decision() -> None:
    result = translate.translate_node(node_object({translate.PERSISTENT_KEEPALIVE: "-5"}))
    assert result.value is not None and result.value.persistent_keepalive == -5
    assert [str(d) for d in result.diagnostics] == [
        "node 'n1': kilo.squat.ai/persistent-keepalive='-5' is negative: WireGuard gets 0, "
        "but like Kilo the node still counts as behind NAT"
    ]
    text = keepalive_mesh("-5")
    # Kilo substitutes the NAT-discovered endpoint for any non-zero keepalive...
    assert "Endpoint = 198.51.100.9:41000\n" in text
    # ...but would write a keepalive WireGuard rejects.
    assert "PersistentKeepalive = 0\n" in text


def test_keepalive_above_65535_is_capped_for_wireguard() -> None:
    result = translate.translate_node(node_object({translate.PERSISTENT_KEEPALIVE: "100000"}))
    assert result.value is not None and result.value.persistent_keepalive == 100000
    assert "exceeds WireGuard's maximum; WireGuard gets 65535" in str(result.diagnostics[0])
    assert "PersistentKeepalive = 65535\n" in keepalive_mesh("100000")


def test_negative_peer_keepalive_message_names_the_number() -> None:
    spec = {
        "allowedIPs": ["10.5.0.1/32"],
        "publicKey": str(PUBLIC_KEYS["laptop"]),
        "persistentKeepalive": -3,
    }
    assert translate.validate_peer_spec(spec) == (
        "spec.persistentKeepalive",
        "persistent keepalive must be greater than or equal to zero; got -3",
    )


def test_address_pool_exhausted_is_an_error_before_any_allocation() -> None:
    # A /30 has three usable WireGuard IPs (Kilo also hands out the broadcast address).
    nodes = [
        Node(
            name=f"n{i}",
            endpoint=Endpoint.parse(f"203.0.113.{i + 1}:51820"),
            key=Key(bytes([i + 1]) * 32),
            subnet=ipaddress.ip_network(f"10.2.{i}.0/24"),
        )
        for i in range(4)
    ]
    subnet = ipaddress.ip_network("10.4.0.0/30")
    build_topology(nodes[:3], [], granularity=Granularity.FULL, hostname="n0", subnet=subnet)
    with pytest.raises(AddressPoolExhausted) as caught:
        build_topology(nodes, [], granularity=Granularity.FULL, hostname="n0", subnet=subnet)
    assert str(caught.value) == (
        "Kilo subnet 10.4.0.0/30 has room for 3 WireGuard IPs but the mesh has 4 segments; "
        "use a larger --subnet"
    )


def test_null_discovered_endpoint_hides_the_endpoint_as_in_kilo() -> None:
    """Kept on purpose: it decides the mesh (a Go node renders the same config)."""
    assert "Endpoint = 198.51.100.9:41000\n" in keepalive_mesh("10")
    assert "Endpoint" not in keepalive_mesh("10", seen="null")


def test_duplicate_node_names_are_refused_rather_than_resolved_by_input_order() -> None:
    from kilo.errors import TopologyError

    node = Node(name="a", endpoint=Endpoint.parse("203.0.113.1:51820"), key=Key(bytes([1]) * 32))
    with pytest.raises(TopologyError, match="repeated: a"):
        build_topology(
            [node, node],
            [],
            granularity=Granularity.FULL,
            hostname="a",
            subnet=ipaddress.ip_network("10.4.0.0/16"),
        )
