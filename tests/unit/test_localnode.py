"""The local node the agent publishes, and which node changes trigger an apply."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from kilo.mesh.endpoint import Endpoint, UDPAddr
from kilo.mesh.keys import Key
from kilo.mesh.localnode import local_node, mesh_changed, peer_changed
from kilo.mesh.model import Node, Peer

KEY = Key(bytes(range(32)))
PRIVATE = ipaddress.ip_interface("10.0.0.5/24")
PUBLIC = ipaddress.ip_interface("203.0.113.5/24")
NOW = 1_700_000_000


def observed(**kwargs: object) -> Node:
    base = Node(name="a", subnet=ipaddress.ip_network("10.42.0.0/24"), location="aws")
    return replace(base, **kwargs)  # type: ignore[arg-type]


def publish(node: Node, **kwargs: object) -> Node:
    args: dict[str, object] = {
        "public_key": KEY,
        "external_ip": PUBLIC,
        "private_ip": PRIVATE,
        "port": 51820,
        "granularity": "location",
        "wireguard_ip": None,
        "discovered_endpoints": None,
        "cni_compatibility_ip": None,
        "last_seen": NOW,
    }
    args.update(kwargs)
    return local_node(node, **args)  # type: ignore[arg-type]


def test_fills_in_endpoint_and_internal_ip_from_discovery() -> None:
    node = publish(observed())
    assert node.endpoint == Endpoint.new(PUBLIC.ip, 51820)
    assert node.internal_ip == PRIVATE
    assert node.key == KEY
    assert node.last_seen == NOW
    assert node.granularity == "location"
    assert node.is_ready(NOW)


def test_keeps_an_endpoint_and_internal_ip_already_on_the_node() -> None:
    endpoint = Endpoint.parse("198.51.100.7:51821")
    internal = ipaddress.ip_interface("172.16.0.9/16")
    node = publish(observed(endpoint=endpoint, internal_ip=internal))
    assert node.endpoint == endpoint
    assert node.internal_ip == internal


def test_no_internal_ip_is_respected() -> None:
    assert publish(observed(no_internal_ip=True)).internal_ip is None


def test_carries_apply_results() -> None:
    wg = ipaddress.ip_interface("10.4.0.1/16")
    found = {str(KEY): UDPAddr(ipaddress.ip_address("192.0.2.9"), 4000)}
    node = publish(observed(), wireguard_ip=wg, discovered_endpoints=found)
    assert node.wireguard_ip == wg
    assert node.discovered_endpoints == found


def test_last_seen_alone_is_not_a_change() -> None:
    node = publish(observed())
    assert not mesh_changed(node, replace(node, last_seen=NOW + 20), NOW + 20)


def test_crossing_the_liveness_window_is_a_change() -> None:
    node = publish(observed())
    # At NOW + 60 the old check-in is stale (60 s is outside the window), the new one is not.
    assert mesh_changed(node, replace(node, last_seen=NOW + 1), NOW + 60)
    assert not mesh_changed(node, replace(node, last_seen=NOW + 1), NOW + 59)


def test_any_other_field_is_a_change() -> None:
    node = publish(observed())
    assert mesh_changed(node, replace(node, location="gcp"), NOW)
    assert mesh_changed(node, replace(node, persistent_keepalive=10), NOW)
    assert mesh_changed(None, node, NOW)
    assert mesh_changed(node, None, NOW)
    assert not mesh_changed(None, None, NOW)


def test_peer_changes() -> None:
    peer = Peer(name="laptop", public_key=KEY)
    assert not peer_changed(peer, replace(peer))
    assert peer_changed(peer, replace(peer, persistent_keepalive=5))
    assert peer_changed(None, peer)
    assert not peer_changed(None, None)
