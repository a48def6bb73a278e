"""``kgctl connect``'s pure decisions: the Peer it creates, reuse or refusal, config and routes."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from kilo.errors import TopologyError
from kilo.mesh import wireguard
from kilo.mesh.connect import (
    PeerAction,
    PeerDecision,
    decide_peer,
    keep_live_endpoints,
    peer_object,
    plan_connection,
)
from kilo.mesh.endpoint import UDPAddr
from kilo.mesh.keys import Key
from kilo.mesh.routes import Device, format_route, peer_routes
from kilo.mesh.topology import build_topology
from kilo.mesh.wgdevice import DeviceState, PeerState
from tests import golden
from tests.examples import KILO_SUBNET, PRIVATE_KEYS, PUBLIC_KEYS, reference_cluster

LAPTOP = PRIVATE_KEYS["laptop"]
OTHER = PRIVATE_KEYS["alpha"]
ADDRESS = ipaddress.ip_interface("10.5.0.1/32")


def iface(text: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    return ipaddress.ip_interface(text)


def peer(key: Key | str, allowed: list[str] | None = None) -> dict[str, object]:
    return {
        "apiVersion": "kilo.squat.ai/v1alpha1",
        "kind": "Peer",
        "metadata": {"name": "laptop", "uid": "u1"},
        "spec": {"allowedIPs": allowed or ["10.5.0.1/32"], "publicKey": str(key)},
    }


# --- the Peer object -------------------------------------------------------------------------


def test_peer_object_is_kilos_shape_without_an_endpoint() -> None:
    obj = peer_object(
        "laptop",
        allowed_ip=iface("10.5.0.1/24"),
        public_key=PUBLIC_KEYS["laptop"],
        persistent_keepalive=10,
    )
    assert obj == {
        "apiVersion": "kilo.squat.ai/v1alpha1",
        "kind": "Peer",
        "metadata": {"name": "laptop"},
        "spec": {
            # Kept as given: Kilo masks it to 10.5.0.0/24, the network, not this machine.
            "allowedIPs": ["10.5.0.1/24"],
            "persistentKeepalive": 10,
            "publicKey": str(PUBLIC_KEYS["laptop"]),
        },
    }


# --- create, reuse or refuse -----------------------------------------------------------------


def decide(existing: dict[str, object] | None, allowed_ip: str = "10.5.0.1/32") -> PeerDecision:
    return decide_peer(
        existing,
        name="laptop",
        public_key=PUBLIC_KEYS["laptop"],
        allowed_ip=iface(allowed_ip),
        key_file="/var/lib/kilo/connect/laptop.key",
    )


def test_a_missing_peer_is_created() -> None:
    decision = decide(None)
    assert decision.action == PeerAction.CREATE
    assert decision.message == ""


def test_a_peer_with_the_local_key_is_reused() -> None:
    decision = decide(peer(PUBLIC_KEYS["laptop"]))
    assert decision.action == PeerAction.REUSE
    assert decision.warnings == ()


def test_a_peer_with_another_key_is_refused_naming_both_keys_and_the_ways_out() -> None:
    # Kilo uses such a Peer unchanged: this machine then runs a key the mesh does not know.
    decision = decide(peer(PUBLIC_KEYS["alpha"]))
    assert decision.action == PeerAction.REFUSE
    message = decision.message
    assert message.startswith('Peer "laptop" already exists with public key ')
    assert str(PUBLIC_KEYS["alpha"]) in message
    assert str(PUBLIC_KEYS["laptop"]) in message
    assert "/var/lib/kilo/connect/laptop.key" in message
    assert "--private-key" in message
    assert "another name" in message
    assert "kubectl delete peers.kilo.squat.ai laptop" in message
    assert "\n" not in message
    # Never the private key.
    assert str(LAPTOP) not in message


@pytest.mark.parametrize("key", ["", "not-base64", "AAAA"])
def test_a_peer_without_a_valid_key_is_refused(key: str) -> None:
    decision = decide(peer(key))
    assert decision.action == PeerAction.REFUSE
    assert 'Peer "laptop" already exists with no valid public key' in decision.message


def test_a_peer_without_a_spec_is_refused() -> None:
    decision = decide({"metadata": {"name": "laptop"}})
    assert decision.action == PeerAction.REFUSE


@pytest.mark.parametrize(
    ("allowed", "address", "warned"),
    [
        (["10.5.0.1/32"], "10.5.0.1/32", False),
        (["10.5.0.0/24"], "10.5.0.1/32", False),
        (["10.5.0.1/24"], "10.5.0.7/24", False),  # the same network, host bits aside
        (["10.5.0.2/32"], "10.5.0.1/32", True),
        (["10.5.0.1/32"], "10.5.0.1/24", True),  # the interface claims more than is routed
        (["fd00::1/128"], "10.5.0.1/32", True),
        (["garbage", "10.5.0.0/16"], "10.5.0.1/32", False),
    ],
)
def test_reusing_a_peer_warns_when_its_allowed_ips_miss_the_address(
    allowed: list[str], address: str, warned: bool
) -> None:
    decision = decide(peer(PUBLIC_KEYS["laptop"], allowed), address)
    assert decision.action == PeerAction.REUSE
    assert bool(decision.warnings) == warned
    if warned:
        assert f"--allowed-ip {address}" in decision.warnings[0]


# --- the plan --------------------------------------------------------------------------------


def test_plan_is_showconf_peer_plus_the_key_and_port_and_kilos_peer_routes() -> None:
    nodes, peers = reference_cluster()
    plan = plan_connection(
        nodes, peers, name="laptop", private_key=LAPTOP, port=51821, granularity="auto"
    )
    assert plan.config.private_key == LAPTOP
    assert plan.config.listen_port == 51821
    text = wireguard.render(plan.config)
    interface = f"[Interface]\nPrivateKey = {LAPTOP}\nListenPort = 51821\n\n"
    assert text == interface + golden.text("laptop.conf")
    t = build_topology(
        nodes, peers, granularity=plan.granularity, hostname="alpha", subnet=KILO_SUBNET
    )
    assert plan.routes == peer_routes(t, name="laptop")
    assert [format_route(r, {Device.KILO: "kilo0"}) for r in plan.routes][:4] == [
        "10.2.2.0/24 via 10.4.0.1 dev kilo0 proto static onlink",
        "172.31.5.5/32 via 10.4.0.1 dev kilo0 proto static onlink",
        "172.31.100.0/24 via 10.4.0.1 dev kilo0 proto static onlink",
        "10.4.0.1/32 dev kilo0 proto static",
    ]
    assert plan.granularity == "location"
    assert plan.subnet == KILO_SUBNET
    assert plan.warnings == ()


def test_plan_does_not_depend_on_input_order() -> None:
    nodes, peers = reference_cluster()
    phone = dataclasses.replace(peers[0], name="phone", public_key=PUBLIC_KEYS["beta"])
    phone = dataclasses.replace(phone, allowed_ips=(iface("10.5.0.2/32"),))
    forward = plan_connection(
        nodes, [*peers, phone], name="laptop", private_key=LAPTOP, port=1, granularity="auto"
    )
    backward = plan_connection(
        nodes[::-1], [phone, *peers], name="laptop", private_key=LAPTOP, port=1, granularity="auto"
    )
    assert forward == backward
    # Another peer is reached directly on the interface, and is a WireGuard peer.
    assert (
        format_route(forward.routes[-1], {Device.KILO: "wg0"}) == "10.5.0.2/32 dev wg0 proto static"
    )
    assert forward.config.peers[-1].public_key == PUBLIC_KEYS["beta"]


def test_extra_allowed_ips_go_to_the_first_segment_in_wireguard_and_routes_alike() -> None:
    nodes, peers = reference_cluster()
    plan = plan_connection(
        nodes,
        peers,
        name="laptop",
        private_key=LAPTOP,
        port=51820,
        granularity="location",
        extra_allowed_ips=[ipaddress.ip_network("10.43.0.0/16")],
    )
    # The first segment is location:aws (gamma leads it). Kilo would attach the CIDR to
    # "alpha", the first node by name, in gcp, while routing it via aws's WireGuard IP.
    first = plan.config.peers[0]
    assert first.public_key == PUBLIC_KEYS["gamma"]
    assert "10.43.0.0/16" in [str(a) for a in first.allowed_ips]
    assert all("10.43.0.0/16" not in [str(a) for a in p.allowed_ips] for p in plan.config.peers[1:])
    routes = [format_route(r, {Device.KILO: "kilo0"}) for r in plan.routes]
    assert "10.43.0.0/16 via 10.4.0.1 dev kilo0 proto static onlink" in routes
    assert len([r for r in routes if r.startswith("10.43.0.0/16")]) == 1


def test_an_extra_allowed_ip_inside_a_pod_cidr_is_dropped_from_both() -> None:
    nodes, peers = reference_cluster()
    plan = plan_connection(
        nodes,
        peers,
        name="laptop",
        private_key=LAPTOP,
        port=51820,
        granularity="location",
        extra_allowed_ips=[ipaddress.ip_network("10.2.1.0/24")],  # beta's pod CIDR
    )
    assert [str(a) for a in plan.config.peers[0].allowed_ips].count("10.2.1.0/24") == 0
    routes = [format_route(r, {Device.KILO: "kilo0"}) for r in plan.routes]
    assert [r for r in routes if r.startswith("10.2.1.0/24")] == [
        "10.2.1.0/24 via 10.4.0.2 dev kilo0 proto static onlink"
    ]


def test_full_granularity_gives_one_peer_per_node() -> None:
    nodes, peers = reference_cluster()
    plan = plan_connection(
        nodes, peers, name="laptop", private_key=LAPTOP, port=51820, granularity="full"
    )
    assert len(plan.config.peers) == 4
    assert plan.granularity == "full"


def test_subnet_override_and_disagreement_warning() -> None:
    nodes, peers = reference_cluster()
    subnet = ipaddress.ip_network("10.6.0.0/16")
    plan = plan_connection(
        nodes, peers, name="laptop", private_key=LAPTOP, port=1, granularity="auto", subnet=subnet
    )
    assert plan.subnet == subnet
    assert "10.6.0.1/32 dev kilo0 proto static" in [
        format_route(r, {Device.KILO: "kilo0"}) for r in plan.routes
    ]
    gamma = next(n for n in nodes if n.name == "gamma")
    odd = [
        dataclasses.replace(gamma, wireguard_ip=iface("10.9.0.1/16")) if n is gamma else n
        for n in nodes
    ]
    plan = plan_connection(
        odd, peers, name="laptop", private_key=LAPTOP, port=1, granularity="auto"
    )
    assert plan.subnet == KILO_SUBNET  # alpha's, the first node by name
    assert any("disagree on the Kilo subnet" in w for w in plan.warnings)


def test_no_ready_node_is_an_error() -> None:
    _, peers = reference_cluster()
    with pytest.raises(TopologyError, match="did not find any valid Kilo nodes in the cluster"):
        plan_connection([], peers, name="laptop", private_key=LAPTOP, port=1, granularity="auto")


def test_no_wireguard_ip_anywhere_is_an_error_unless_a_subnet_is_given() -> None:
    nodes, peers = reference_cluster()
    bare = [dataclasses.replace(n, wireguard_ip=None) for n in nodes]
    with pytest.raises(TopologyError, match="did not find a valid Kilo subnet on any node"):
        plan_connection(bare, peers, name="laptop", private_key=LAPTOP, port=1, granularity="auto")
    plan = plan_connection(
        bare,
        peers,
        name="laptop",
        private_key=LAPTOP,
        port=1,
        granularity="auto",
        subnet=KILO_SUBNET,
    )
    assert plan.subnet == KILO_SUBNET


def test_a_missing_peer_is_an_error() -> None:
    nodes, _ = reference_cluster()
    with pytest.raises(TopologyError, match='did not find any peer named "laptop" in the cluster'):
        plan_connection(nodes, [], name="laptop", private_key=LAPTOP, port=1, granularity="auto")


def test_a_peer_whose_key_changed_is_an_error_naming_both_public_keys() -> None:
    nodes, peers = reference_cluster()
    with pytest.raises(TopologyError) as caught:
        plan_connection(nodes, peers, name="laptop", private_key=OTHER, port=1, granularity="auto")
    message = str(caught.value)
    assert str(PUBLIC_KEYS["laptop"]) in message
    assert str(PUBLIC_KEYS["alpha"]) in message
    assert str(OTHER) not in message


def test_unknown_granularity_in_every_node_is_an_error() -> None:
    nodes, peers = reference_cluster()
    bare = [dataclasses.replace(n, granularity="") for n in nodes]
    with pytest.raises(TopologyError, match="failed to determine granularity"):
        plan_connection(bare, peers, name="laptop", private_key=LAPTOP, port=1, granularity="auto")


# --- endpoints of live sessions --------------------------------------------------------------


def test_a_peer_in_a_live_session_keeps_the_endpoint_wireguard_roamed_to() -> None:
    nodes, peers = reference_cluster()
    plan = plan_connection(
        nodes, peers, name="laptop", private_key=LAPTOP, port=1, granularity="auto"
    )
    gamma, alpha, delta = (p.public_key for p in plan.config.peers)
    roamed = UDPAddr(ipaddress.ip_address("198.51.100.7"), 40058)
    device = DeviceState(
        peers=(
            # A handshake 100 s ago: the session is live, its endpoint is proven.
            PeerState(public_key=gamma, endpoint=roamed, last_handshake=900.0),
            # 180 s or more: the session is dead, the planned endpoint is tried again.
            PeerState(public_key=alpha, endpoint=roamed, last_handshake=820.0),
            # Never: nothing learnt.
            PeerState(public_key=delta, endpoint=None, last_handshake=None),
        )
    )
    kept = keep_live_endpoints(plan.config, device, now=1000.0)
    assert [p.endpoint for p in kept.peers] == [None, *(p.endpoint for p in plan.config.peers[1:])]
    assert [dataclasses.replace(p, endpoint=None) for p in kept.peers] == [
        dataclasses.replace(p, endpoint=None) for p in plan.config.peers
    ]
    assert kept.private_key == LAPTOP and kept.listen_port == 1
    assert keep_live_endpoints(plan.config, DeviceState(), now=1000.0) is plan.config
