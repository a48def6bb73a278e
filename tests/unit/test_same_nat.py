"""Nodes behind one NAT dial each other at their internal IPs (``--same-nat-internal-endpoints``).

o1 and o2 sit behind one NAT (public address 198.51.100.7); a, on the internet, saw both
of them there and published it, as Kilo's agents do.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from kilo.mesh import samenat, translate, wireguard
from kilo.mesh.endpoint import Endpoint, UDPAddr
from kilo.mesh.model import Encapsulation, Granularity, Node
from kilo.mesh.plan import PlanSettings, plan_node
from kilo.mesh.routes import Device
from kilo.mesh.topology import Topology, build_topology
from kilo.mesh.wgdevice import DeviceState, PeerState
from tests.agent_harness import OTHER_KEYS, PRIVATE_KEY, Harness
from tests.examples import KILO_SUBNET
from tests.strategies import key_for

NAT = ipaddress.ip_address("198.51.100.7")


def node(index: int, name: str, internal: str | None, **kwargs: object) -> Node:
    defaults: dict[str, object] = {
        "name": name,
        "key": key_for(index),
        "endpoint": Endpoint.parse(f"{internal or '203.0.113.9'}:51820"),
        "internal_ip": None if internal is None else ipaddress.ip_interface(f"{internal}/24"),
        "persistent_keepalive": 5,
        "subnet": ipaddress.ip_network(f"10.42.{index}.0/24"),
        "location": name,
    }
    defaults.update(kwargs)
    return Node(**defaults)  # type: ignore[arg-type]


def cluster(o2_seen_at: ipaddress.IPv4Address | ipaddress.IPv6Address = NAT) -> list[Node]:
    a = node(
        0,
        "a",
        None,
        endpoint=Endpoint.parse("203.0.113.10:51820"),
        persistent_keepalive=0,
        discovered_endpoints={
            str(key_for(1)): UDPAddr(NAT, 40001),
            str(key_for(2)): UDPAddr(o2_seen_at, 40002),
        },
    )
    # o1 reached o2 on the LAN: what it saw there is not evidence of a shared NAT.
    o1 = node(1, "o1", "172.16.2.10", discovered_endpoints={str(key_for(2)): None})
    o2 = node(2, "o2", "172.16.2.11")
    return [a, o1, o2]


def test_a_node_behind_the_same_nat_is_dialled_at_its_internal_ip() -> None:
    nodes = cluster()
    assert samenat.internal_endpoints(nodes, "o1") == {
        str(key_for(2)): Endpoint.parse("172.16.2.11:51820")
    }
    assert samenat.internal_endpoints(nodes, "o2") == {
        str(key_for(1)): Endpoint.parse("172.16.2.10:51820")
    }
    # Kilo's choice for everyone else: a is not behind that NAT.
    assert samenat.internal_endpoints(nodes, "a") == {}


def test_only_the_same_nat_address_counts() -> None:
    assert samenat.internal_endpoints(cluster(ipaddress.ip_address("198.51.100.8")), "o1") == {}


def test_kilo_substitutes_only_for_nodes_that_keep_alive_and_have_an_internal_ip() -> None:
    nodes = cluster()
    quiet = [replace(n, persistent_keepalive=0) if n.name == "o2" else n for n in nodes]
    assert samenat.internal_endpoints(quiet, "o1") == {}
    no_ip = [replace(n, internal_ip=None) if n.name == "o2" else n for n in nodes]
    assert samenat.internal_endpoints(no_ip, "o1") == {}
    assert samenat.internal_endpoints(nodes, "missing") == {}


def o1_topology() -> tuple[list[Node], Topology]:
    # The agent leaves its own observation of o2 out (it is not published either).
    nodes = [replace(n, discovered_endpoints=None) if n.name == "o1" else n for n in cluster()]
    t = build_topology(nodes, [], granularity=Granularity.FULL, hostname="o1", subnet=KILO_SUBNET)
    return nodes, t


def test_only_the_endpoint_changes_in_the_wireguard_config() -> None:
    nodes, t = o1_topology()
    kilo = wireguard.node_config(t)
    before = kilo.peer(key_for(2))
    assert before is not None
    # Kilo dials o2 at the NAT's public address.
    assert before.endpoint == Endpoint.parse("198.51.100.7:40002")
    direct = wireguard.node_config(
        samenat.dial_internal(t, samenat.internal_endpoints(nodes, "o1"))
    )
    after = direct.peer(key_for(2))
    assert after == replace(before, endpoint=Endpoint.parse("172.16.2.11:51820"))
    assert [p for p in direct.peers if p.public_key != key_for(2)] == [
        p for p in kilo.peers if p.public_key != key_for(2)
    ]
    assert samenat.dial_internal(t, {}) is t


def test_the_internal_ip_dialled_is_routed_over_the_underlay_not_through_wireguard() -> None:
    # Routed through WireGuard, the handshakes sent to o2's internal IP would enter the
    # tunnel they are to set up (the e2e test_cross_mesh's office nodes, after a restart).
    nodes, t = o1_topology()
    o1 = next(n for n in nodes if n.name == "o1")
    settings = PlanSettings(encapsulation=Encapsulation.NEVER, cni=False)
    o2 = ipaddress.ip_network("172.16.2.11/32")

    def through_wireguard(plan_t: Topology) -> set[object]:
        return {r.dst for r in plan_node(plan_t, o1, settings).routes if r.dev == Device.KILO}

    # Kilo reaches o2's private IP through WireGuard, as it dials o2 at the NAT's address.
    kilo = through_wireguard(t)
    assert o2 in kilo
    direct = through_wireguard(samenat.dial_internal(t, samenat.internal_endpoints(nodes, "o1")))
    # As Kilo does for a node whose endpoint is its private IP: that one route goes.
    assert direct == kilo - {o2}


def behind_a_nat(*flags: str) -> Harness:
    """The agent of a, in a full mesh with b (both behind one NAT) and c, which saw both
    of them at the NAT's address."""
    h = Harness("--mesh-granularity=full", *flags)
    keepalive = {translate.PERSISTENT_KEEPALIVE: "5"}
    h.node("a", annotations=keepalive)
    seen = {
        str(PRIVATE_KEY.public_key()): UDPAddr(NAT, 40001),
        str(OTHER_KEYS["b"]): UDPAddr(NAT, 40002),
    }
    h.remote("b", pod=1, extra=keepalive)
    h.remote(
        "c",
        location="gcp",
        pod=2,
        extra={translate.DISCOVERED_ENDPOINTS: translate.format_discovered_endpoints(seen)},
    )
    return h


def test_the_agent_dials_internally_and_does_not_publish_what_it_saw_there() -> None:
    h = behind_a_nat("--same-nat-internal-endpoints=true")
    # No handshake with b yet: Kilo would dial the NAT's address that c published.
    h.round(check_in=True)
    peer = h.device.config.peer(OTHER_KEYS["b"])
    assert peer is not None and peer.endpoint == Endpoint.parse("10.0.0.11:51820")
    # ... and reaches it there over the LAN: no route sends b's internal IP (where its
    # handshakes go) through WireGuard, while b's pods are still reached through it.
    kilo_routes = {r.dst for r in h.routes.routes if r.dev == Device.KILO}
    assert ipaddress.ip_network("10.0.0.11/32") not in kilo_routes
    assert ipaddress.ip_network("10.42.1.0/24") in kilo_routes
    # Once the device completed a handshake with b on the LAN, that is not published.
    lan = UDPAddr(ipaddress.ip_address("10.0.0.11"), 51820)
    h.device.get = lambda: DeviceState(  # type: ignore[method-assign]
        private_key=PRIVATE_KEY,
        peers=(PeerState(public_key=OTHER_KEYS["b"], endpoint=lan, last_handshake=1.0),),
    )
    h.round(check_in=True)
    assert str(OTHER_KEYS["b"]) not in (h.written()[translate.DISCOVERED_ENDPOINTS] or "")


def test_what_the_agent_published_before_it_knew_the_nat_is_withdrawn_at_the_next_event() -> None:
    # c has not seen a or b yet: nothing says that b is behind a's NAT, so a publishes its
    # handshake with b on the LAN, as Kilo does (tests/e2e/test_agent.py awaits the
    # withdrawal that follows).
    h = Harness("--mesh-granularity=full", "--same-nat-internal-endpoints=true")
    keepalive = {translate.PERSISTENT_KEEPALIVE: "5"}
    h.node("a", annotations=keepalive)
    h.remote("b", pod=1, extra=keepalive)
    h.remote("c", location="gcp", pod=2)
    lan = UDPAddr(ipaddress.ip_address("10.0.0.11"), 51820)
    h.device.get = lambda: DeviceState(  # type: ignore[method-assign]
        private_key=PRIVATE_KEY,
        peers=(PeerState(public_key=OTHER_KEYS["b"], endpoint=lan, last_handshake=1.0),),
    )
    h.round(check_in=True)
    assert str(OTHER_KEYS["b"]) in (h.written()[translate.DISCOVERED_ENDPOINTS] or "")
    # c publishes both at the NAT's address: that event alone (no resync) withdraws b.
    seen = {
        str(PRIVATE_KEY.public_key()): UDPAddr(NAT, 40001),
        str(OTHER_KEYS["b"]): UDPAddr(NAT, 40002),
    }
    h.remote(
        "c",
        location="gcp",
        pod=2,
        extra={translate.DISCOVERED_ENDPOINTS: translate.format_discovered_endpoints(seen)},
    )
    h.round()
    assert str(OTHER_KEYS["b"]) not in (h.written()[translate.DISCOVERED_ENDPOINTS] or "")
    peer = h.device.config.peer(OTHER_KEYS["b"])
    assert peer is not None and peer.endpoint == Endpoint.parse("10.0.0.11:51820")


def test_without_the_flag_the_agent_dials_the_nats_address_as_kilo_does() -> None:
    h = behind_a_nat()
    assert h.agent.settings.mesh.same_nat_internal_endpoints is False
    h.round(check_in=True)
    peer = h.device.config.peer(OTHER_KEYS["b"])
    assert peer is not None and peer.endpoint == Endpoint.parse("198.51.100.7:40002")
    assert ipaddress.ip_network("10.0.0.11/32") in {
        r.dst for r in h.routes.routes if r.dev == Device.KILO
    }
