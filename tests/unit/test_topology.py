"""Topology construction and WireGuard configs (kilo-mesh.md §1.4, §2, §3; kilo-k8s-cli.md §4.5)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Network
from typing import Any, cast

import pytest

from kilo.errors import AddressPoolExhausted, KiloError, LocalNodeMissing, TopologyError
from kilo.mesh import ip as ipmod
from kilo.mesh import topology, wireguard
from kilo.mesh.endpoint import Endpoint, UDPAddr
from kilo.mesh.ip import IPNetwork
from kilo.mesh.keys import ZERO_KEY, Key
from kilo.mesh.model import Granularity, Node, Peer
from tests import golden
from tests.examples import KILO_SUBNET, PRIVATE_KEYS, PUBLIC_KEYS, reference_cluster

LOCATION = Granularity.LOCATION
FULL = Granularity.FULL
PUB = {name: str(key) for name, key in PUBLIC_KEYS.items()}


def key_of(name: str) -> Key:
    """A distinct, deterministic (public) key per name."""
    return Key(name.encode().ljust(32, b"k")[:32])


def make_node(
    name: str,
    *,
    location: str = "",
    internal: str | None = None,
    endpoint: str | None = "1.1.1.1:51820",
    subnet: str | None = None,
    leader: bool = False,
    alips: Sequence[str] = (),
    keepalive: int = 0,
    discovered: dict[str, UDPAddr] | None = None,
) -> Node:
    internal_ip = None if internal is None else ipmod.parse_interface(internal)
    alip_values = tuple(ipmod.parse_interface(a) for a in alips)
    assert all(a is not None for a in alip_values)
    return Node(
        name=name,
        endpoint=None if endpoint is None else Endpoint.parse(endpoint),
        key=key_of(name),
        internal_ip=internal_ip,
        location=location,
        leader=leader,
        subnet=None if subnet is None else ipmod.parse_network(subnet),
        allowed_location_ips=cast(tuple[IPv4Interface, ...], alip_values),
        persistent_keepalive=keepalive,
        discovered_endpoints=discovered,
    )


def make_peer(name: str, *allowed: str, **kwargs: Any) -> Peer:
    cidrs = tuple(ipmod.parse_interface(a) for a in allowed)
    assert all(c is not None for c in cidrs)
    return Peer(
        name=name,
        allowed_ips=cast(tuple[IPv4Interface, ...], cidrs),
        public_key=kwargs.pop("public_key", key_of(name)),
        **kwargs,
    )


def build(
    nodes: Iterable[Node],
    peers: Iterable[Peer] = (),
    *,
    hostname: str,
    granularity: Granularity = LOCATION,
    subnet: IPNetwork = KILO_SUBNET,
    **kwargs: Any,
) -> topology.Topology:
    return topology.build_topology(
        nodes, peers, granularity=granularity, hostname=hostname, subnet=subnet, **kwargs
    )


def summary(
    t: topology.Topology,
) -> list[tuple[str, tuple[str, ...], str, str, list[str], list[str]]]:
    return [
        (
            s.location,
            s.hostnames,
            s.leader_name,
            str(s.wireguard_ip),
            [str(a) for a in s.allowed_ips],
            [str(a) for a in s.allowed_location_ips],
        )
        for s in t.segments
    ]


# --- the worked example of kilo-mesh.md §2.3 ------------------------------------------------------

REFERENCE_SEGMENTS = [
    (
        "location:aws",
        ("gamma",),
        "gamma",
        "10.4.0.1",
        ["10.2.2.0/24", "172.31.5.5/32", "10.4.0.1/32"],
        ["172.31.100.0/24"],
    ),
    (
        "location:gcp",
        ("alpha", "beta"),
        "alpha",
        "10.4.0.2",
        ["10.2.0.0/24", "10.128.0.2/32", "10.2.1.0/24", "10.128.0.3/32", "10.4.0.2/32"],
        [],
    ),
    ("node:delta", ("delta",), "delta", "10.4.0.3", ["10.2.3.0/24", "10.4.0.3/32"], []),
]


def reference(hostname: str, **kwargs: Any) -> topology.Topology:
    nodes, peers = reference_cluster()
    return build(nodes, peers, hostname=hostname, **kwargs)


@pytest.mark.parametrize("hostname", ["alpha", "beta", "gamma", "delta"])
def test_reference_segments_are_the_same_from_every_node(hostname: str) -> None:
    t = reference(hostname)
    assert summary(t) == REFERENCE_SEGMENTS
    assert [p.name for p in t.peers] == ["laptop"]
    assert [str(a) for a in t.peers[0].allowed_ips] == ["10.5.0.1/32"]
    assert t.kilo_subnet == KILO_SUBNET
    assert t.granularity == LOCATION


def test_reference_segment_details() -> None:
    aws, gcp, delta = reference("alpha").segments
    assert (aws.leader, gcp.leader, delta.leader) == (0, 0, 0)
    assert str(aws.endpoint) == "3.3.3.3:51820"
    assert str(gcp.endpoint) == "34.1.1.1:51820"
    assert str(delta.endpoint) == "3.3.3.4:51820"
    assert (aws.key, gcp.key, delta.key) == (
        PUBLIC_KEYS["gamma"],
        PUBLIC_KEYS["alpha"],
        PUBLIC_KEYS["delta"],
    )
    assert gcp.private_ips == (IPv4Address("10.128.0.2"), IPv4Address("10.128.0.3"))
    assert delta.private_ips == ()
    assert gcp.cidrs == (IPv4Network("10.2.0.0/24"), IPv4Network("10.2.1.0/24"))
    assert gcp.cni_compat_ips == (None, None)
    assert aws.persistent_keepalive == 0


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [
        ("alpha", ("location:gcp", True, "10.4.0.2/16", "10.128.0.2/20", "10.2.0.0/24")),
        ("beta", ("location:gcp", False, "10.4.0.0/16", "10.128.0.3/20", "10.2.1.0/24")),
        ("gamma", ("location:aws", True, "10.4.0.1/16", "172.31.5.5/20", "10.2.2.0/24")),
        ("delta", ("node:delta", True, "10.4.0.3/16", None, "10.2.3.0/24")),
    ],
)
def test_reference_perspective(
    hostname: str, expected: tuple[str, bool, str, str | None, str]
) -> None:
    location, leader, wireguard_cidr, private_ip, subnet = expected
    t = reference(hostname, key=PRIVATE_KEYS[hostname], persistent_keepalive=7, port=4000)
    assert t.hostname == hostname
    assert t.location == location
    assert t.leader is leader
    assert str(t.wireguard_cidr) == wireguard_cidr
    assert (None if t.private_ip is None else str(t.private_ip)) == private_ip
    assert str(t.subnet) == subnet
    assert t.key == PRIVATE_KEYS[hostname]
    assert t.persistent_keepalive == 7
    assert t.port == 4000
    assert t.local_segment is not None
    assert t.local_segment.location == location


def test_input_order_does_not_matter() -> None:
    nodes, peers = reference_cluster()
    peers = [*peers, make_peer("aaa", "10.5.0.1/32", "10.9.0.0/24")]
    expected = build(nodes, peers, hostname="beta")
    for permutation in itertools.permutations(nodes):
        assert build(permutation, reversed(peers), hostname="beta") == expected


def test_service_cidrs_are_kept() -> None:
    t = reference("alpha", service_cidrs=[IPv4Network("10.96.0.0/12")])
    assert t.service_cidrs == (IPv4Network("10.96.0.0/12"),)


# --- granularity ----------------------------------------------------------------------------


def test_full_granularity() -> None:
    t = reference("beta", granularity=FULL)
    assert [(s.location, s.hostnames, str(s.wireguard_ip)) for s in t.segments] == [
        ("node:alpha", ("alpha",), "10.4.0.1"),
        ("node:beta", ("beta",), "10.4.0.2"),
        ("node:delta", ("delta",), "10.4.0.3"),
        ("node:gamma", ("gamma",), "10.4.0.4"),
    ]
    assert t.location == "node:beta"
    assert t.leader
    assert str(t.wireguard_cidr) == "10.4.0.2/16"
    beta = t.segments[1]
    assert [str(a) for a in beta.allowed_ips] == ["10.2.1.0/24", "10.128.0.3/32", "10.4.0.2/32"]
    delta = t.segments[2]
    assert delta.private_ips == ()
    gamma = t.segments[3]
    assert [str(a) for a in gamma.allowed_location_ips] == ["172.31.100.0/24"]


@pytest.mark.parametrize("granularity", ["", "auto", "Location"])
def test_unknown_granularity_makes_one_segment(granularity: str) -> None:
    t = reference("beta", granularity=cast(Granularity, granularity))
    assert summary(t) == [
        (
            "",
            ("alpha", "beta", "delta", "gamma"),
            "alpha",
            "10.4.0.1",
            [
                "10.2.0.0/24",
                "10.128.0.2/32",
                "10.2.1.0/24",
                "10.128.0.3/32",
                "10.2.3.0/24",
                "10.2.2.0/24",
                "172.31.5.5/32",
                "10.4.0.1/32",
            ],
            ["172.31.100.0/24"],
        )
    ]
    assert t.location == ""
    assert not t.leader


@pytest.mark.parametrize(
    ("granularity", "internal", "expected"),
    [
        (LOCATION, "10.0.0.1/24", "location:aws"),
        (LOCATION, None, "node:n"),
        (FULL, "10.0.0.1/24", "node:n"),
        (FULL, None, "node:n"),
        ("", "10.0.0.1/24", ""),
        ("auto", None, ""),
    ],
)
def test_location_key(granularity: str, internal: str | None, expected: str) -> None:
    node = make_node("n", location="aws", internal=internal)
    assert topology.location_key(node, granularity) == expected


def test_empty_location_is_a_location() -> None:
    nodes = [
        make_node("a", internal="10.0.0.1/24", subnet="10.2.0.0/24"),
        make_node("b", internal="10.0.0.2/24", subnet="10.2.1.0/24"),
    ]
    t = build(nodes, hostname="b")
    assert [(s.location, s.hostnames) for s in t.segments] == [("location:", ("a", "b"))]


# --- leader election ------------------------------------------------------------------------

PRIVATE_EP = "10.0.0.1:51820"
PUBLIC_EP = "34.1.1.1:51820"
DNS_EP = "vpn.example.com:51820"


@pytest.mark.parametrize(
    ("specs", "expected"),
    [
        pytest.param([(False, PRIVATE_EP)] * 3, 0, id="first-by-name"),
        pytest.param(
            [(False, PRIVATE_EP), (False, PRIVATE_EP), (False, PUBLIC_EP)], 2, id="public"
        ),
        pytest.param(
            [(False, PRIVATE_EP), (False, PUBLIC_EP), (False, PUBLIC_EP)], 1, id="first-public"
        ),
        pytest.param(
            [(False, PRIVATE_EP), (True, PRIVATE_EP), (False, PUBLIC_EP)],
            1,
            id="annotated-beats-public",
        ),
        pytest.param(
            [(True, PRIVATE_EP), (False, PUBLIC_EP), (True, PUBLIC_EP)],
            2,
            id="annotated-public-beats-annotated",
        ),
        pytest.param(
            [(False, PRIVATE_EP), (True, PRIVATE_EP), (True, PRIVATE_EP)],
            1,
            id="first-annotated",
        ),
        pytest.param(
            [(False, PRIVATE_EP), (False, DNS_EP), (False, PRIVATE_EP)], 0, id="dns-not-public"
        ),
        pytest.param(
            [(False, PRIVATE_EP), (False, DNS_EP), (False, PUBLIC_EP)], 2, id="dns-vs-public"
        ),
        pytest.param(
            [(True, DNS_EP), (False, PRIVATE_EP), (True, PUBLIC_EP)], 2, id="annotated-dns"
        ),
        pytest.param([(False, None), (False, None), (False, PUBLIC_EP)], 2, id="no-endpoint"),
        pytest.param(
            [(False, "[fd00::1]:51820"), (False, "[2001:db8::1]:51820")], 1, id="ipv6-public"
        ),
        pytest.param(
            [(False, "127.0.0.1:51820"), (False, PUBLIC_EP)], 0, id="loopback-counts-as-public"
        ),
        pytest.param([(False, "100.64.0.1:1"), (False, PUBLIC_EP)], 0, id="cgnat-counts-as-public"),
        pytest.param([(False, "172.16.0.1:1"), (False, "172.32.0.1:1")], 1, id="172.32-public"),
        pytest.param([(False, "172.31.0.1:1"), (False, "172.15.0.1:1")], 1, id="172.15-public"),
    ],
)
def test_find_leader(specs: list[tuple[bool, str | None]], expected: int) -> None:
    nodes = [
        make_node(f"n{i}", leader=leader, endpoint=endpoint)
        for i, (leader, endpoint) in enumerate(specs)
    ]
    assert topology.find_leader(nodes) == expected


def test_a_resolved_dns_endpoint_is_judged_by_its_ip() -> None:
    dns = Endpoint.parse(DNS_EP)
    assert dns is not None
    nodes = [
        make_node("a", endpoint=PRIVATE_EP),
        dataclasses.replace(make_node("b"), endpoint=dns.resolved_to(IPv4Address("8.8.8.8"))),
    ]
    assert topology.find_leader(nodes) == 1


def test_leader_in_a_topology() -> None:
    nodes = [
        make_node("a", location="x", internal="10.0.0.1/24", subnet="10.2.0.0/24"),
        make_node("b", location="x", internal="10.0.0.2/24", subnet="10.2.1.0/24", leader=True),
        make_node("c", location="x", internal="10.0.0.3/24", subnet="10.2.2.0/24"),
    ]
    for hostname in "abc":
        t = build(nodes, hostname=hostname)
        (segment,) = t.segments
        assert segment.leader == 1
        assert segment.leader_name == "b"
        assert segment.key == key_of("b")
        assert t.leader is (hostname == "b")
        expected = "10.4.0.1/16" if hostname == "b" else "10.4.0.0/16"
        assert str(t.wireguard_cidr) == expected


# --- allowed-location-IP filter (§2.1) ------------------------------------------------------------


def two_locations(
    a_alips: Sequence[str] = (), b_alips: Sequence[str] = (), peers: Sequence[Peer] = ()
) -> list[list[str]]:
    nodes = [
        make_node("a1", location="a", internal="10.0.1.1/24", subnet="10.2.1.0/24", alips=a_alips),
        make_node("b1", location="b", internal="10.0.2.1/24", subnet="10.2.2.0/24", alips=b_alips),
    ]
    t = build(nodes, peers, hostname="a1")
    assert [s.location for s in t.segments] == ["location:a", "location:b"]
    return [[str(a) for a in s.allowed_location_ips] for s in t.segments]


def test_alip_overlapping_another_location_stays_only_in_the_later_one() -> None:
    assert two_locations(["192.168.10.0/24"], ["192.168.10.128/25"]) == [
        [],
        ["192.168.10.128/25"],
    ]
    assert two_locations(["192.168.10.128/25"], ["192.168.10.0/24"]) == [
        [],
        ["192.168.10.0/24"],
    ]
    assert two_locations(["192.168.10.0/24"], ["192.168.10.0/24"]) == [[], ["192.168.10.0/24"]]
    assert two_locations(["192.168.10.0/24"], ["192.168.11.0/24"]) == [
        ["192.168.10.0/24"],
        ["192.168.11.0/24"],
    ]


@pytest.mark.parametrize(
    ("alip", "kept"),
    [
        ("10.2.2.0/25", False),  # inside the other segment's pod CIDR
        ("10.2.1.128/25", False),  # inside the own segment's pod CIDR
        ("10.2.2.0/24", False),  # equal to a pod CIDR
        ("10.0.2.1/32", False),  # an internal IP of the other segment
        ("10.0.2.1/24", False),  # host bits: its address is that internal IP
        ("10.0.2.0/24", True),  # contains an internal IP: only logged
        ("10.0.0.0/8", True),  # strictly contains the pod CIDRs: more specific routes win
        ("10.2.0.0/16", True),
        ("10.2.1.0/16", False),  # host bits: its address is inside a pod CIDR
        ("10.4.0.1/32", False),  # the own WireGuard IP, already allocated
        ("10.4.0.2/32", True),  # the later segment's WireGuard IP is not allocated yet
        ("192.168.1.0/24", True),
    ],
)
def test_alip_against_allowed_ips_of_the_first_segment(alip: str, kept: bool) -> None:
    assert two_locations([alip]) == [[alip] if kept else [], []]


@pytest.mark.parametrize(
    ("alip", "kept"),
    [
        ("10.4.0.1/32", False),  # the earlier segment's WireGuard IP is visible
        ("10.4.0.2/32", False),  # the own one too
        ("10.2.1.0/25", False),
        ("10.0.1.0/24", True),
    ],
)
def test_alip_against_allowed_ips_of_the_second_segment(alip: str, kept: bool) -> None:
    assert two_locations([], [alip]) == [[], [alip] if kept else []]


@pytest.mark.parametrize(
    ("peer_ips", "alip", "kept"),
    [
        (["10.5.0.1/32"], "10.5.0.0/24", False),  # contains the peer's IP
        (["192.168.0.0/16"], "192.168.5.0/24", False),  # inside the peer's range
        (["10.5.0.1/32"], "10.6.0.0/24", True),
        (["10.5.0.1/24"], "10.5.0.128/25", False),  # the peer's range (host bits masked)
    ],
)
def test_alip_overlapping_a_peer_is_dropped(peer_ips: list[str], alip: str, kept: bool) -> None:
    peers = [make_peer("p", *peer_ips)]
    # In the first segment and in the last one: the peer check does not depend on order.
    assert two_locations([alip], [], peers) == [[alip] if kept else [], []]
    assert two_locations([], [alip], peers) == [[], [alip] if kept else []]


def test_alips_of_one_segment_are_deduplicated_and_sorted_as_text() -> None:
    nodes = [
        make_node(
            "a1",
            location="a",
            internal="10.0.1.1/24",
            subnet="10.2.1.0/24",
            alips=["192.168.9.0/24", "192.168.10.0/24", "192.168.1.0/24"],
        ),
        make_node(
            "a2",
            location="a",
            internal="10.0.1.2/24",
            subnet="10.2.2.0/24",
            alips=["192.168.1.0/24", "192.168.1.1/24"],
        ),
    ]
    (segment,) = build(nodes, hostname="a1").segments
    assert [str(a) for a in segment.allowed_location_ips] == [
        "192.168.1.0/24",
        "192.168.1.1/24",  # host bits make it a different CIDR
        "192.168.10.0/24",
        "192.168.9.0/24",
    ]


# --- peers --------------------------------------------------------------------------------------


def test_peers_are_sorted_and_their_allowed_ips_deduplicated() -> None:
    psk = Key(bytes(range(32)))
    b = make_peer(
        "b",
        "10.5.0.1/32",
        "10.6.0.0/24",
        preshared_key=psk,
        persistent_keepalive=25,
        endpoint=Endpoint.parse("9.9.9.9:51820"),
    )
    peers = [
        make_peer("d", "10.6.0.0/24"),
        b,
        make_peer("c", "10.0.0.1/24", "10.0.0.2/24", "10.0.0.1/24"),
        make_peer("a", "10.5.0.1/32"),
        make_peer("e", "10.2.0.0/24"),  # a pod CIDR: nodes are not considered
    ]
    t = build(reference_cluster()[0], peers, hostname="alpha")
    assert [(p.name, [str(a) for a in p.allowed_ips]) for p in t.peers] == [
        ("a", ["10.5.0.1/32"]),
        ("b", ["10.6.0.0/24"]),
        ("c", ["10.0.0.1/24", "10.0.0.2/24"]),  # host bits matter
        ("d", []),  # left without allowed IPs, but kept
        ("e", ["10.2.0.0/24"]),
    ]
    assert t.peers[1] == dataclasses.replace(b, allowed_ips=(IPv4Interface("10.6.0.0/24"),))


# --- discovered endpoints -----------------------------------------------------------------------


def udp(text: str) -> UDPAddr:
    endpoint = Endpoint.parse(text)
    assert endpoint is not None
    assert endpoint.udp is not None
    return endpoint.udp


def discovered_cluster() -> list[Node]:
    nodes = {n.name: n for n in reference_cluster()[0]}
    maps = {
        "beta": {"K1": udp("1.0.0.1:1"), "K5": udp("1.0.0.5:5")},
        "gamma": {"K1": udp("2.0.0.1:1"), "K2": udp("2.0.0.2:2")},
        "alpha": {"K2": udp("3.0.0.2:2"), "K3": udp("3.0.0.3:3"), "K5": udp("3.0.0.5:5")},
        "delta": {"K3": udp("4.0.0.3:3"), "K4": udp("4.0.0.4:4")},
    }
    return [dataclasses.replace(nodes[name], discovered_endpoints=m) for name, m in maps.items()]


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [
        # Local observations first, then segment order (aws, gcp, node:delta), then names.
        ("beta", "K1=1.0.0.1:1 K2=2.0.0.2:2 K3=3.0.0.3:3 K4=4.0.0.4:4 K5=1.0.0.5:5"),
        ("gamma", "K1=2.0.0.1:1 K2=2.0.0.2:2 K3=3.0.0.3:3 K4=4.0.0.4:4 K5=3.0.0.5:5"),
        ("delta", "K1=2.0.0.1:1 K2=2.0.0.2:2 K3=4.0.0.3:3 K4=4.0.0.4:4 K5=3.0.0.5:5"),
    ],
)
def test_discovered_endpoints_merge(hostname: str, expected: str) -> None:
    t = build(discovered_cluster(), hostname=hostname)
    merged = " ".join(f"{k}={v}" for k, v in sorted(t.discovered_endpoints.items()))
    assert merged == expected


def test_discovered_endpoints_without_any() -> None:
    assert reference("beta").discovered_endpoints == {}


def test_update_endpoint() -> None:
    key = key_of("x")
    original = Endpoint.parse("3.3.3.3:51820")
    t = dataclasses.replace(
        reference("alpha"),
        discovered_endpoints={str(key): UDPAddr(IPv6Address("::ffff:5.6.7.8"), 41000)},
    )
    assert t.update_endpoint(original, key, 0) is original
    assert t.update_endpoint(original, key, 25) == Endpoint.new(IPv4Address("5.6.7.8"), 41000)
    assert t.update_endpoint(None, key, 25) == Endpoint.new(IPv4Address("5.6.7.8"), 41000)
    assert t.update_endpoint(original, key_of("y"), 25) is original
    assert t.update_endpoint(None, key_of("y"), 25) is None


# --- WireGuard IP allocation ---------------------------------------------------------------------


def full_mesh(count: int) -> list[Node]:
    return [make_node(f"n{i:03d}", subnet=f"10.{i // 256}.{i % 256}.0/24") for i in range(count)]


def test_segment_k_gets_network_plus_k_plus_1_including_broadcast() -> None:
    t = build(full_mesh(3), hostname="n002", granularity=FULL, subnet=IPv4Network("10.4.0.0/30"))
    assert [str(s.wireguard_ip) for s in t.segments] == ["10.4.0.1", "10.4.0.2", "10.4.0.3"]
    assert str(t.wireguard_cidr) == "10.4.0.3/30"


def test_allocation_carries_into_the_next_byte() -> None:
    t = build(full_mesh(258), hostname="n000", granularity=FULL)
    assert [str(s.wireguard_ip) for s in t.segments[254:258]] == [
        "10.4.0.255",
        "10.4.1.0",
        "10.4.1.1",
        "10.4.1.2",
    ]


def test_allocation_from_another_subnet() -> None:
    t = build(full_mesh(2), hostname="n001", granularity=FULL, subnet=IPv4Network("10.6.0.0/16"))
    assert [str(s.wireguard_ip) for s in t.segments] == ["10.6.0.1", "10.6.0.2"]
    assert str(t.wireguard_cidr) == "10.6.0.2/16"


def test_ipv6_subnet() -> None:
    subnet = IPv6Network("fd00:4::/126")
    t = build(full_mesh(3), hostname="n000", granularity=FULL, subnet=subnet)
    assert [str(s.wireguard_ip) for s in t.segments] == ["fd00:4::1", "fd00:4::2", "fd00:4::3"]
    assert [str(s.allowed_ips[-1]) for s in t.segments] == [
        "fd00:4::1/128",
        "fd00:4::2/128",
        "fd00:4::3/128",
    ]
    assert str(t.wireguard_cidr) == "fd00:4::1/126"


@pytest.mark.parametrize(
    ("subnet", "segments", "capacity"),
    [
        ("10.4.0.0/30", 4, 3),
        ("10.4.0.0/32", 1, 0),
        ("10.4.0.0/31", 2, 1),
        ("fd00::/127", 2, 1),
    ],
)
def test_address_pool_exhausted(subnet: str, segments: int, capacity: int) -> None:
    network = ipmod.parse_network(subnet)
    assert network is not None
    with pytest.raises(AddressPoolExhausted) as caught:
        build(full_mesh(segments), hostname="n000", granularity=FULL, subnet=network)
    error = caught.value
    assert isinstance(error, TopologyError)
    assert isinstance(error, KiloError)
    assert (error.subnet, error.segments, error.capacity) == (subnet, segments, capacity)
    assert subnet in str(error)
    assert f"{segments} segments" in str(error)


def test_a_slash_31_has_room_for_exactly_one_segment() -> None:
    t = build(full_mesh(1), hostname="n000", granularity=FULL, subnet=IPv4Network("10.4.0.0/31"))
    assert [str(s.wireguard_ip) for s in t.segments] == ["10.4.0.1"]


@pytest.mark.parametrize(
    ("subnet", "capacity"),
    [
        ("10.4.0.0/16", 65535),
        ("10.4.0.0/30", 3),
        ("10.4.0.0/31", 1),
        ("10.4.0.0/32", 0),
        ("fd00::/120", 255),
    ],
)
def test_address_capacity(subnet: str, capacity: int) -> None:
    network = ipmod.parse_network(subnet)
    assert network is not None
    assert topology.address_capacity(network) == capacity


def test_local_node_missing() -> None:
    nodes, peers = reference_cluster()
    with pytest.raises(LocalNodeMissing) as caught:
        build(nodes, peers, hostname="epsilon")
    assert caught.value.hostname == "epsilon"
    assert "epsilon" in str(caught.value)
    assert isinstance(caught.value, TopologyError)


# --- WireGuard configurations and their text (kilo-mesh.md §3) ------------------------------------

# alpha.conf is alpha's config as kgctl shows it (the zero key: no PrivateKey line); the agent
# also writes alpha's private key.
ALPHA_CONF = golden.text("alpha.conf").replace(
    "[Interface]\n", f"[Interface]\nPrivateKey = {PRIVATE_KEYS['alpha']}\n", 1
)
LAPTOP_CONF = golden.text("laptop.conf")


def test_node_config_of_alpha() -> None:
    t = reference("alpha", key=PRIVATE_KEYS["alpha"])
    config = wireguard.node_config(t)
    assert wireguard.render(config) == ALPHA_CONF
    assert config.private_key == PRIVATE_KEYS["alpha"]
    assert config.listen_port == 51820
    assert [p.name for p in config.peers] == ["location:aws", "node:delta", "laptop"]
    assert config.peer(PUBLIC_KEYS["delta"]) is config.peers[1]
    assert config.peer(PUBLIC_KEYS["alpha"]) is None


def test_node_config_as_kgctl_shows_it() -> None:
    # kgctl uses the zero key: no PrivateKey line.
    text = wireguard.render(wireguard.node_config(reference("alpha")))
    assert text == golden.text("alpha.conf")
    assert text.startswith("[Interface]\nListenPort = 51820\n\n[Peer]\n")


def test_node_config_uses_the_port_and_the_local_keepalive_for_every_peer() -> None:
    t = reference("alpha", key=PRIVATE_KEYS["alpha"], port=4000, persistent_keepalive=10)
    text = wireguard.render(wireguard.node_config(t))
    assert text == ALPHA_CONF.replace("ListenPort = 51820", "ListenPort = 4000").replace(
        "PersistentKeepalive = 0", "PersistentKeepalive = 10"
    )


def test_node_config_carries_the_preshared_key_of_a_peer() -> None:
    nodes, (laptop,) = reference_cluster()
    psk = Key(bytes(range(32)))
    t = build(nodes, [dataclasses.replace(laptop, preshared_key=psk)], hostname="alpha")
    text = wireguard.render(wireguard.node_config(t))
    assert text.endswith(
        f"AllowedIPs = 10.5.0.1/32\nPersistentKeepalive = 0\nPresharedKey = {psk}\n"
        f"PublicKey = {PUB['laptop']}\n"
    )
    assert text.count("PresharedKey") == 1


def test_nat_discovered_endpoints_replace_keepalive_leaders_endpoints() -> None:
    nodes, peers = reference_cluster()
    by_name = {n.name: n for n in nodes}
    discovered = {
        PUB["gamma"]: udp("5.6.7.8:41000"),
        PUB["delta"]: udp("5.6.7.9:41001"),
        PUB["laptop"]: udp("9.8.7.6:55555"),
    }
    by_name["alpha"] = dataclasses.replace(by_name["alpha"], discovered_endpoints=discovered)
    by_name["gamma"] = dataclasses.replace(by_name["gamma"], persistent_keepalive=25)
    t = build(by_name.values(), peers, hostname="alpha", key=PRIVATE_KEYS["alpha"])
    text = wireguard.render(wireguard.node_config(t))
    # gamma keeps alive (behind NAT): its observed endpoint wins; delta does not.
    expected = ALPHA_CONF.replace("Endpoint = 3.3.3.3:51820", "Endpoint = 5.6.7.8:41000")
    # laptop's keepalive is 25: its observed endpoint is used.
    expected = expected.replace(
        "AllowedIPs = 10.5.0.1/32\n", "AllowedIPs = 10.5.0.1/32\nEndpoint = 9.8.7.6:55555\n"
    )
    assert text == expected
    # The same substitution in a Peer's config; AsPeer never substitutes.
    assert "Endpoint = 5.6.7.8:41000" in wireguard.render(wireguard.peer_config(t, "laptop"))
    gamma_view = build(
        [dataclasses.replace(n, discovered_endpoints=discovered) for n in by_name.values()],
        peers,
        hostname="gamma",
    )
    as_peer = wireguard.location_as_peer(gamma_view)
    assert as_peer is not None
    assert str(as_peer.endpoint) == "3.3.3.3:51820"


def test_location_as_peer() -> None:
    peer = wireguard.location_as_peer(reference("beta"))
    assert peer is not None
    assert wireguard.render_peers([peer]) == (
        "[Peer]\n"
        "AllowedIPs = 10.2.0.0/24, 10.128.0.2/32, 10.2.1.0/24, 10.128.0.3/32, 10.4.0.2/32\n"
        "Endpoint = 34.1.1.1:51820\n"
        "PersistentKeepalive = 0\n"
        f"PublicKey = {PUB['alpha']}\n"
    )
    assert peer.preshared_key is None
    assert peer.persistent_keepalive == 0


def test_location_as_peer_has_no_allowed_location_ips() -> None:
    peer = wireguard.location_as_peer(reference("gamma"))
    assert peer is not None
    assert [str(a) for a in peer.allowed_ips] == ["10.2.2.0/24", "172.31.5.5/32", "10.4.0.1/32"]
    extended = wireguard.with_extra_allowed_ips(
        peer, [IPv4Network("10.4.0.1/32"), IPv4Network("10.43.0.0/16"), IPv4Network("10.43.0.0/16")]
    )
    assert [str(a) for a in extended.allowed_ips] == [
        "10.2.2.0/24",
        "172.31.5.5/32",
        "10.4.0.1/32",
        "10.43.0.0/16",
    ]
    assert dataclasses.replace(extended, allowed_ips=peer.allowed_ips) == peer


def test_location_as_peer_without_a_local_segment() -> None:
    t = dataclasses.replace(reference("alpha"), location="location:nowhere")
    assert wireguard.location_as_peer(t) is None


def test_peer_config_of_laptop() -> None:
    for hostname in ("alpha", "beta", "gamma", "delta"):
        config = wireguard.peer_config(reference(hostname), "laptop")
        assert config.private_key is None
        assert wireguard.render(config) == LAPTOP_CONF


def test_peer_config_psk_only_in_segment_blocks_and_other_peers_follow() -> None:
    nodes, (laptop,) = reference_cluster()
    psk = Key(bytes(range(32)))
    phone = make_peer(
        "phone",
        "10.5.0.2/32",
        endpoint=Endpoint.parse("9.9.9.9:51820"),
        preshared_key=Key(bytes(range(1, 33))),
    )
    t = build(nodes, [dataclasses.replace(laptop, preshared_key=psk), phone], hostname="alpha")
    text = wireguard.render(wireguard.peer_config(t, "laptop"))
    segment_blocks = LAPTOP_CONF.replace(
        "PersistentKeepalive = 25\n", f"PersistentKeepalive = 25\nPresharedKey = {psk}\n"
    )
    assert text == (
        segment_blocks + "\n[Peer]\n"
        "AllowedIPs = 10.5.0.2/32\n"
        "Endpoint = 9.9.9.9:51820\n"
        "PersistentKeepalive = 25\n"
        f"PublicKey = {key_of('phone')}\n"
    )
    assert not text.startswith("[Interface]")
    assert text.count("PresharedKey") == 3

    # From phone's point of view: its keepalive (0) and no PSK; laptop is another peer.
    text = wireguard.render(wireguard.peer_config(t, "phone"))
    assert "PresharedKey = " + str(psk) not in text
    assert text.count(f"PresharedKey = {phone.preshared_key}") == 3
    assert text.endswith(
        f"[Peer]\nAllowedIPs = 10.5.0.1/32\nPersistentKeepalive = 0\nPublicKey = {PUB['laptop']}\n"
    )


def test_peer_config_of_an_unknown_peer() -> None:
    text = wireguard.render(wireguard.peer_config(reference("alpha"), "nobody"))
    laptop_block = (
        f"[Peer]\nAllowedIPs = 10.5.0.1/32\nPersistentKeepalive = 0\nPublicKey = {PUB['laptop']}\n"
    )
    expected = LAPTOP_CONF.replace("PersistentKeepalive = 25", "PersistentKeepalive = 0")
    assert text == expected + "\n" + laptop_block


def test_showconf_node_example_of_kgctl_reference() -> None:
    """kilo-k8s-cli.md §4.5 and the graph example of §4.4: a full mesh of a and b, peer p."""
    a = make_node("a", internal="172.18.0.2/24", subnet="10.42.0.0/24", endpoint="172.18.0.2:51820")
    b = dataclasses.replace(
        make_node(
            "b", internal="172.18.0.3/24", subnet="10.42.1.0/24", endpoint="172.18.0.3:51820"
        ),
        key=Key.parse("IgDTEvasUvxisSAmfBKh8ngFmc2leZBvkRwYBhkybUg="),
    )
    p = make_peer(
        "p", "10.5.0.1/32", public_key=Key.parse("GY5aT1N9dTR/nJnT1N2f4ClZWVj0jOAld0r8ysWLyjg=")
    )
    t = build([a, b], [p], hostname="a", granularity=FULL, key=ZERO_KEY, port=51820)
    assert wireguard.render(wireguard.node_config(t)) == golden.text("full-mesh-a.conf")


# --- rendering details (§3.2) ------------------------------------------------------------------


def test_render_empty() -> None:
    assert wireguard.render(wireguard.WireGuardConfig()) == ""
    assert wireguard.render_peers([]) == ""


def test_render_interface_only() -> None:
    config = wireguard.WireGuardConfig(private_key=ZERO_KEY, listen_port=51820)
    assert wireguard.render(config) == "[Interface]\nListenPort = 51820\n"
    config = wireguard.WireGuardConfig(private_key=PRIVATE_KEYS["beta"], listen_port=1)
    assert wireguard.render(config) == (
        f"[Interface]\nPrivateKey = {PRIVATE_KEYS['beta']}\nListenPort = 1\n"
    )


def test_render_peer_fields() -> None:
    dns = Endpoint.parse("vpn.example.com:51820")
    assert dns is not None
    peers = [
        wireguard.WireGuardPeer(public_key=ZERO_KEY, preshared_key=ZERO_KEY),
        wireguard.WireGuardPeer(
            public_key=PUBLIC_KEYS["beta"],
            allowed_ips=(
                IPv4Interface("10.5.0.1/24"),
                ipmod.host_interface(IPv6Address("fd00::1")),
            ),
            endpoint=Endpoint.new(IPv6Address("2001:db8::1"), 51820),
            persistent_keepalive=25,
        ),
        wireguard.WireGuardPeer(
            public_key=PUBLIC_KEYS["gamma"],
            endpoint=dns.resolved_to(IPv4Address("9.9.9.9")),
            preshared_key=PRIVATE_KEYS["gamma"],
        ),
        wireguard.WireGuardPeer(public_key=PUBLIC_KEYS["delta"], endpoint=Endpoint()),
    ]
    assert wireguard.render_peers(peers) == (
        "[Peer]\n"
        "PersistentKeepalive = 0\n"
        "\n"
        "[Peer]\n"
        "AllowedIPs = 10.5.0.1/24, fd00::1/128\n"
        "Endpoint = [2001:db8::1]:51820\n"
        "PersistentKeepalive = 25\n"
        f"PublicKey = {PUB['beta']}\n"
        "\n"
        "[Peer]\n"
        "Endpoint = vpn.example.com:51820\n"
        "PersistentKeepalive = 0\n"
        f"PresharedKey = {PRIVATE_KEYS['gamma']}\n"
        f"PublicKey = {PUB['gamma']}\n"
        "\n"
        "[Peer]\n"
        "PersistentKeepalive = 0\n"
        f"PublicKey = {PUB['delta']}\n"
    )
