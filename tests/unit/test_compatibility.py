"""One test per deliberate difference from Kilo listed in docs/compatibility.md.

Most differences are also covered where the behaviour lives; these tests state each one
plainly so the document can point at them.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from kilo.errors import AddressPoolExhausted
from kilo.mesh import translate
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


def test_negative_keepalive_is_zero_with_a_warning() -> None:
    result = translate.translate_node(node_object({translate.PERSISTENT_KEEPALIVE: "-5"}))
    assert result.value is not None and result.value.persistent_keepalive == 0
    assert [str(d) for d in result.diagnostics] == [
        "node 'n1': kilo.squat.ai/persistent-keepalive='-5' is negative; using 0"
    ]


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
