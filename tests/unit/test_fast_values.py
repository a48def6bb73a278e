"""The core's fast paths build the same values as the straightforward code they replace.

At 5000 nodes a plan holds tens of thousands of rules and routes, so the core builds its
bulk values by filling their slots (skipping the dataclass's ``__init__``), formats IPv4
values without ``ipaddress``'s general formatter and interns one-address CIDRs. Each is
checked here against the plain construction: equal values, every field set, same text.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kilo.mesh import ip as ipmod
from kilo.mesh import iptables, routes, topology, wireguard
from kilo.mesh.endpoint import Endpoint
from kilo.mesh.keys import Key
from kilo.mesh.model import Granularity, Node


def same_value(fast: object, plain: object) -> None:
    """Equal, equally printed, and every field present (a slot left unset would raise).

    Fields that are not part of the value (texts kept for rendering) are only read here;
    their contents are checked by the tests of each kind.
    """
    assert type(fast) is type(plain)
    assert dataclasses.is_dataclass(fast)
    for f in dataclasses.fields(fast):
        if f.compare:
            assert getattr(fast, f.name) == getattr(plain, f.name), f.name
        else:
            getattr(fast, f.name)
    assert fast == plain
    assert repr(fast) == repr(plain)
    assert hash(fast) == hash(plain)


def test_a_fast_rule_is_the_constructors_rule() -> None:
    spec = ("-d", "10.0.0.1/32", "-j", "RETURN")
    same_value(
        iptables._make_rule(iptables.Protocol.IPV6, "nat", "KILO-NAT", spec),
        iptables.Rule(protocol=iptables.Protocol.IPV6, table="nat", chain="KILO-NAT", spec=spec),
    )


def test_a_fast_route_is_the_constructors_route() -> None:
    dst = ipaddress.ip_network("10.2.0.0/24")
    gw, src = IPv4Address("10.4.0.1"), IPv4Address("172.16.0.1")
    same_value(
        routes._make_route(dst, routes.Device.KILO, gw, src, True),
        routes.Route(dst=dst, dev=routes.Device.KILO, gw=gw, src=src, onlink=True),
    )
    same_value(
        routes._make_route(dst, routes.Device.PRIVATE, None, None, False),
        routes.Route(dst=dst, dev=routes.Device.PRIVATE),
    )


def test_a_fast_wireguard_peer_is_the_constructors_peer() -> None:
    key = Key(bytes(range(32)))
    allowed = (ipaddress.ip_network("10.2.0.0/24"), ipaddress.ip_interface("10.4.0.1/32"))
    endpoint = Endpoint.parse("192.0.2.1:51820")
    same_value(
        wireguard._make_peer("location:a", key, allowed, endpoint, 25, allowed_ips_text=None),
        wireguard.WireGuardPeer(
            name="location:a",
            public_key=key,
            allowed_ips=allowed,
            endpoint=endpoint,
            persistent_keepalive=25,
        ),
    )


def test_every_field_of_a_fast_segment_is_set_as_the_constructor_would() -> None:
    assert tuple(f.name for f in dataclasses.fields(topology.Segment)) == topology._SEGMENT_FIELDS
    node = Node(
        name="a",
        endpoint=Endpoint.parse("192.0.2.1:51820"),
        key=Key(bytes(range(32))),
        internal_ip=ipaddress.ip_interface("172.16.0.1/24"),
        cni_compatibility_ip=ipaddress.ip_interface("10.10.0.1/24"),
        location="x",
        persistent_keepalive=7,
        subnet=ipaddress.ip_network("10.2.0.0/24"),
        allowed_location_ips=(ipaddress.ip_interface("192.168.5.0/24"),),
    )
    t = topology.build_topology(
        [node],
        [],
        granularity=Granularity.LOCATION,
        hostname="a",
        subnet=ipaddress.ip_network("10.4.0.0/16"),
    )
    (segment,) = t.segments
    plain = topology.Segment(
        **{f.name: getattr(segment, f.name) for f in dataclasses.fields(topology.Segment) if f.init}
    )
    same_value(segment, plain)
    assert (
        segment.allowed_ips_text
        == plain.allowed_ips_text
        == ("10.2.0.0/24", "172.16.0.1/32", "10.4.0.1/32")
    )
    assert segment.allowed_ips == (
        ipaddress.ip_network("10.2.0.0/24"),
        ipaddress.ip_interface("172.16.0.1/32"),
        ipaddress.ip_interface("10.4.0.1/32"),
    )
    assert segment.cni_compat_ips == (ipaddress.ip_interface("10.10.0.1/24"),)
    assert segment.persistent_keepalive == 7


v4 = st.integers(0, 2**32 - 1).map(IPv4Address)
v6 = st.integers(0, 2**128 - 1).map(IPv6Address)


@given(st.one_of(v4, v6), st.integers(0, 128))
def test_ip_text_is_str(address: IPv4Address | IPv6Address, prefix: int) -> None:
    prefix = min(prefix, address.max_prefixlen)
    interface = ipaddress.ip_interface((address, prefix))
    network = ipaddress.ip_network((address, prefix), strict=False)
    for value in (address, interface, network):
        assert ipmod.text(value) == str(value)


@given(st.one_of(v4, v6))
def test_interned_host_cidrs_equal_fresh_ones(address: IPv4Address | IPv6Address) -> None:
    bits = address.max_prefixlen
    interface = ipmod.host_interface(address)
    network = ipmod.host_network(address)
    assert type(interface) is type(ipaddress.ip_interface((address, bits)))
    assert interface == ipaddress.ip_interface((address, bits))
    assert str(interface) == str(ipaddress.ip_interface((address, bits)))
    assert type(network) is type(ipaddress.ip_network((address, bits)))
    assert network == ipaddress.ip_network((address, bits))
    assert ipmod.host_interface(address) is interface
    assert ipmod.host_network(address) is network


def _is_public_from_bytes(ip: IPv4Address | IPv6Address) -> bool:
    """The definition from Kilo's bytes (the old implementation)."""
    ip = ipmod.normalise(ip)
    if isinstance(ip, IPv4Address):
        b0, b1 = ip.packed[0], ip.packed[1]
        return not (b0 == 10 or (b0 == 172 and b1 & 0xF0 == 0x10) or (b0 == 192 and b1 == 168))
    return not (ip.packed[0] == 0xFD and ip.packed[1] == 0x00)


@given(
    st.one_of(
        v4,
        v6,
        st.sampled_from(
            ["10.0.0.1", "172.16.0.1", "172.31.255.255", "172.32.0.1", "192.168.1.1"]
        ).map(IPv4Address),
        st.integers(0, 2**112 - 1).map(lambda low: IPv6Address(0xFD00 << 112 | low)),
        v4.map(lambda a: IPv6Address(0xFFFF << 32 | int(a))),
    )
)
def test_is_public_reads_the_first_two_bytes(ip: IPv4Address | IPv6Address) -> None:
    assert ipmod.is_public(ip) == _is_public_from_bytes(ip)


@given(st.one_of(v4, v6), st.integers(0, 128), st.one_of(v4, v6))
def test_a_nodes_derived_values_are_computed_from_its_fields(
    address: IPv4Address | IPv6Address, prefix: int, endpoint_ip: IPv4Address | IPv6Address
) -> None:
    internal = ipaddress.ip_interface((address, min(prefix, address.max_prefixlen)))
    subnet = ipaddress.ip_network((address, min(prefix, address.max_prefixlen)), strict=False)
    node = Node(
        name="a", internal_ip=internal, subnet=subnet, endpoint=Endpoint.new(endpoint_ip, 51820)
    )
    assert node.private_ip == internal.ip
    assert node.private_host == ipaddress.ip_interface((internal.ip, address.max_prefixlen))
    assert node.private_host_text == str(node.private_host)
    assert node.subnet_text == str(subnet)
    assert node.public_endpoint == ipmod.is_public(endpoint_ip)
    bare = Node(name="b")
    assert (bare.private_ip, bare.private_host, bare.private_host_text) == (None, None, "")
    assert (bare.subnet_text, bare.public_endpoint) == ("", False)


def test_texts_kept_on_keys_and_endpoints_are_their_str() -> None:
    key = Key(bytes(range(32)))
    assert str(key) == base64.b64encode(key.raw).decode()
    for text in ("192.0.2.1:51820", "[2001:db8::1]:51820", "kilo.example.com:51820"):
        endpoint = Endpoint.parse(text)
        assert endpoint is not None
        assert str(endpoint) == endpoint.string(dns_first=True) == text
    resolved = Endpoint.parse("kilo.example.com:51820")
    assert resolved is not None
    assert str(resolved.resolved_to(IPv4Address("192.0.2.9"))) == "kilo.example.com:51820"


def test_interned_return_rules_are_the_rules_the_constructor_builds() -> None:
    for text, protocol in (
        ("10.2.0.0/24", iptables.Protocol.IPV4),
        ("2001:db8::/64", iptables.Protocol.IPV6),
        ("::ffff:102:304/128", iptables.Protocol.IPV4),
    ):
        comment = ("-m", "comment", "--comment")
        same_value(
            iptables._return_known(text),
            iptables.Rule(
                protocol=protocol,
                table="nat",
                chain="KILO-NAT",
                spec=("-d", text, *comment, KNOWN, "-j", "RETURN"),
            ),
        )
        assert iptables._return_known(text) is iptables._return_known(text)


KNOWN = "Kilo: do not NAT packets destined for known IPs"


def _mesh(count: int) -> list[Node]:
    return [
        Node(
            name=f"n{i}",
            endpoint=Endpoint.parse(f"192.0.2.{i + 1}:51820"),
            key=Key(bytes([i + 1]) * 32),
            internal_ip=ipaddress.ip_interface(f"172.16.0.{i + 1}/24"),
            location=f"l{i % 2}",
            subnet=ipaddress.ip_network(f"10.2.{i}.0/24"),
        )
        for i in range(count)
    ]


@pytest.mark.parametrize("granularity", list(Granularity))
def test_segments_of_the_previous_topology_are_reused_only_for_the_same_nodes(
    granularity: Granularity, monkeypatch: pytest.MonkeyPatch
) -> None:
    def build(nodes: list[Node]) -> topology.Topology:
        return topology.build_topology(
            nodes,
            [],
            granularity=granularity,
            hostname="n0",
            subnet=ipaddress.ip_network("10.4.0.0/16"),
        )

    def fresh(nodes: list[Node]) -> topology.Topology:
        with monkeypatch.context() as patch:
            patch.setattr(topology, "_SEGMENTS", topology._SegmentMemo())
            return build(nodes)

    nodes = _mesh(6)
    first = build(nodes)
    again = build(nodes)
    assert again == first == fresh(nodes)
    assert all(a is b for a, b in zip(again.segments, first.segments, strict=True))
    # One node changes (a new object, as a new translation gives): its segment is rebuilt,
    # and the result is the one a build without a memo gives.
    changed = [*nodes]
    changed[3] = dataclasses.replace(nodes[3], subnet=ipaddress.ip_network("10.3.3.0/24"))
    after = build(changed)
    assert after == fresh(changed)
    assert after != first
    # A node removed shifts the WireGuard IPs of later segments: those are rebuilt too.
    removed = build(nodes[:2] + nodes[3:])
    assert removed == fresh(nodes[:2] + nodes[3:])


def test_a_segment_is_not_reused_when_its_leader_changes() -> None:
    """The same members with another leader (as a leader override would give) make a new
    segment: the leader decides the endpoint, the key and the keepalive."""
    memo = topology._SegmentMemo()
    subnet = ipaddress.ip_network("10.4.0.0/16")
    members = [n for n in _mesh(4) if n.location == "l0"]
    first = memo.segments([("location:l0", members, 0)], subnet)[0]
    other = memo.segments([("location:l0", members, 1)], subnet)[0]
    assert (first.leader, other.leader) == (0, 1)
    assert other.key == members[1].key != first.key
    assert memo.segments([("location:l0", members, 1)], subnet)[0] is other
