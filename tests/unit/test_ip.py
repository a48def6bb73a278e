"""IP parsing and comparison with Go's semantics (kilo-mesh.md conventions, §2 isPublic)."""

from __future__ import annotations

from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
    ip_interface,
    ip_network,
)
from itertools import islice

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kilo.mesh import ip

# --- parse_ip (Go's net.ParseIP) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4", IPv4Address("1.2.3.4")),
        ("0.0.0.0", IPv4Address("0.0.0.0")),
        ("255.255.255.255", IPv4Address("255.255.255.255")),
        ("::1", IPv6Address("::1")),
        ("2001:db8::1", IPv6Address("2001:db8::1")),
        ("FF10::10", IPv6Address("ff10::10")),
        # IPv4-mapped IPv6 is normalised to IPv4, as Go's To4() does.
        ("::ffff:1.2.3.4", IPv4Address("1.2.3.4")),
        ("::ffff:102:304", IPv4Address("1.2.3.4")),
        # IPv4-compatible (not mapped) stays IPv6.
        ("::1.2.3.4", IPv6Address("::102:304")),
    ],
)
def test_parse_ip_valid(text: str, expected: ip.IPAddress) -> None:
    assert ip.parse_ip(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1.2.3",
        "1.2.3.256",
        "1.2.3.4.5",
        "01.2.3.4",  # leading zeros are rejected (Go >= 1.17)
        "1.2.3.04",
        "::ffff:010.2.3.4",
        " 1.2.3.4",
        "1.2.3.4 ",
        "1.2.3.4\n",
        "1.2.3.4/32",  # CIDR, not an IP
        "fe80::1%eth0",  # zones are rejected
        "localhost",
        "1:2:3:4:5:6:7:8:9",
        "١.٢.٣.٤",  # non-ASCII digits
    ],
)
def test_parse_ip_invalid(text: str) -> None:
    assert ip.parse_ip(text) is None


# --- parse_interface (Kilo's normalizeIP: host bits kept) -------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.1.0.1/24", "10.1.0.1/24"),  # host bits kept
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("1.2.3.4/0", "1.2.3.4/0"),
        ("1.2.3.4/32", "1.2.3.4/32"),
        ("2001:db8::1/64", "2001:db8::1/64"),
        ("::/0", "::/0"),
        ("::1/128", "::1/128"),
        # Go's prefix parser accepts leading zeros.
        ("10.0.0.0/024", "10.0.0.0/24"),
        ("10.0.0.0/0000000000024", "10.0.0.0/24"),
        ("10.0.0.0/000", "10.0.0.0/0"),
        # IPv4-mapped: Go reads the last 32 bits of a 16-byte mask.
        ("::ffff:1.2.3.4/120", "1.2.3.4/24"),
        ("::ffff:1.2.3.4/128", "1.2.3.4/32"),
        ("::ffff:1.2.3.4/96", "1.2.3.4/0"),
        ("::ffff:1.2.3.4/64", "1.2.3.4/0"),
    ],
)
def test_parse_interface_valid(text: str, expected: str) -> None:
    parsed = ip.parse_interface(text)
    assert parsed is not None
    assert str(parsed) == expected
    assert parsed == ip_interface(expected)


INVALID_CIDRS = [
    "",
    "1.2.3.4",  # missing prefix
    "1.2.3.4/",
    "/24",
    "1.2.3.4/255.255.255.0",  # netmask notation
    "1.2.3.4/0.0.0.255",  # host-mask notation
    "1.2.3.4/33",
    "1.2.3.4/0033",
    "::1/129",
    "::ffff:1.2.3.4/129",
    "1.2.3.4/+8",
    "1.2.3.4/-1",
    "1.2.3.4/ 8",
    "1.2.3.4/8 ",
    " 1.2.3.4/8",
    "1.2.3.4/8/8",
    "1.2.3.4/٨",  # non-ASCII digit
    "01.2.3.4/8",  # leading zeros in the address
    "fe80::1%eth0/64",  # zone
    "fe80::1/64%eth0",
    "example.com/24",
]


@pytest.mark.parametrize("text", INVALID_CIDRS)
def test_parse_interface_invalid(text: str) -> None:
    assert ip.parse_interface(text) is None


# --- parse_network (masked, Go's ParseCIDR network) -------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.2.0.1/24", "10.2.0.0/24"),
        ("10.2.0.0/24", "10.2.0.0/24"),
        ("10.4.0.0/16", "10.4.0.0/16"),
        ("2001:db8::1/32", "2001:db8::/32"),
        ("10.0.0.0/024", "10.0.0.0/24"),
        ("::ffff:1.2.3.4/120", "1.2.3.0/24"),
        ("::ffff:1.2.3.4/96", "0.0.0.0/0"),
        # Below /96 the mapped prefix is masked away and Go prints an IPv6 network.
        ("::ffff:1.2.3.4/64", "::/64"),
        ("::ffff:1.2.3.4/90", "::ffc0:0:0/90"),
    ],
)
def test_parse_network_valid(text: str, expected: str) -> None:
    parsed = ip.parse_network(text)
    assert parsed is not None
    assert str(parsed) == expected
    assert parsed == ip_network(expected)


@pytest.mark.parametrize("text", INVALID_CIDRS)
def test_parse_network_invalid(text: str) -> None:
    assert ip.parse_network(text) is None


def test_normalise() -> None:
    assert ip.normalise(IPv6Address("::ffff:1.2.3.4")) == IPv4Address("1.2.3.4")
    assert ip.normalise(IPv6Address("2001:db8::1")) == IPv6Address("2001:db8::1")
    assert ip.normalise(IPv4Address("1.2.3.4")) == IPv4Address("1.2.3.4")


def test_one_address_cidrs() -> None:
    assert str(ip.host_interface(IPv4Address("10.128.0.2"))) == "10.128.0.2/32"
    assert str(ip.host_interface(IPv6Address("2001:db8::1"))) == "2001:db8::1/128"
    assert str(ip.host_network(IPv4Address("10.4.0.1"))) == "10.4.0.1/32"
    assert str(ip.host_network(IPv6Address("fd00::1"))) == "fd00::1/128"


def test_address_of() -> None:
    assert ip.address_of(IPv4Interface("10.1.0.1/24")) == IPv4Address("10.1.0.1")
    assert ip.address_of(IPv4Network("10.1.0.0/24")) == IPv4Address("10.1.0.0")
    assert ip.address_of(IPv6Interface("2001:db8::5/64")) == IPv6Address("2001:db8::5")


def test_sort_key_is_the_cidr_text() -> None:
    cidrs = [IPv4Interface("192.168.9.0/24"), IPv4Interface("192.168.10.0/24")]
    assert sorted(cidrs, key=ip.sort_key) == [cidrs[1], cidrs[0]]  # string order, not numeric


# --- contains / intersect ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cidr", "address", "expected"),
    [
        (IPv4Network("10.1.0.0/24"), "10.1.0.200", True),
        (IPv4Network("10.1.0.0/24"), "10.1.1.0", False),
        (IPv4Interface("10.1.0.1/24"), "10.1.0.200", True),  # both sides masked
        (IPv4Interface("10.1.0.1/24"), "10.1.0.0", True),
        (IPv4Interface("10.1.0.1/32"), "10.1.0.1", True),
        (IPv4Interface("10.1.0.1/32"), "10.1.0.2", False),
        (IPv4Network("0.0.0.0/0"), "8.8.8.8", True),
        (IPv4Network("0.0.0.0/0"), "::1", False),  # families never mix
        (IPv6Network("::/0"), "1.2.3.4", False),
        (IPv6Network("::/0"), "2001:db8::1", True),
        (IPv6Interface("2001:db8::1/64"), "2001:db8::ffff", True),
        (IPv6Interface("2001:db8::1/64"), "2001:db9::1", False),
    ],
)
def test_contains(cidr: ip.IPInterface | ip.IPNetwork, address: str, expected: bool) -> None:
    assert ip.contains(cidr, ip_address(address)) is expected


def test_contains_none_is_false() -> None:
    assert ip.contains(IPv4Network("0.0.0.0/0"), None) is False


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("10.0.0.0/8", "10.1.0.0/16", True),
        ("10.1.0.0/16", "10.1.0.0/16", True),
        ("10.1.0.1/16", "10.1.5.0/24", True),
        ("10.1.0.0/16", "10.2.0.0/16", False),
        ("192.168.0.0/24", "192.168.1.0/24", False),
        ("192.168.0.0/23", "192.168.1.128/25", True),
        ("0.0.0.0/0", "::/0", False),
        ("10.0.0.0/8", "::ffff:10.0.0.0/104", True),  # mapped parses as IPv4
        ("2001:db8::/32", "2001:db8:1::/48", True),
        ("2001:db8::/32", "2001:db9::/32", False),
    ],
)
def test_intersect_is_symmetric(a: str, b: str, expected: bool) -> None:
    left, right = ip.parse_interface(a), ip.parse_interface(b)
    assert left is not None
    assert right is not None
    assert ip.intersect(left, right) is expected
    assert ip.intersect(right, left) is expected


def test_intersect_mixes_interfaces_and_networks() -> None:
    assert ip.intersect(IPv4Network("10.2.0.0/24"), IPv4Interface("10.2.0.7/32"))
    assert not ip.intersect(IPv4Network("10.2.0.0/24"), IPv6Interface("::a02:7/128"))


# --- is_public -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "public"),
    [
        # 10/8
        ("10.0.0.0", False),
        ("10.255.255.255", False),
        ("9.255.255.255", True),
        ("11.0.0.0", True),
        # 172.16/12 and its boundaries
        ("172.15.255.255", True),
        ("172.16.0.0", False),
        ("172.20.1.1", False),
        ("172.31.255.255", False),
        ("172.32.0.0", True),
        # 192.168/16
        ("192.168.0.1", False),
        ("192.168.255.255", False),
        ("192.167.255.255", True),
        ("192.169.0.0", True),
        # Kilo's crude test: everything else counts as public.
        ("127.0.0.1", True),
        ("100.64.0.1", True),
        ("100.127.255.255", True),
        ("169.254.1.1", True),
        ("0.0.0.0", True),
        ("8.8.8.8", True),
        ("34.1.1.1", True),
        # IPv6: only fd00::/16 is private.
        ("fd00::", False),
        ("fd00::1", False),
        ("fd00:ffff::1", False),
        ("fd01::1", True),
        ("fd12:3456::1", True),
        ("fc00::1", True),
        ("fdff::1", True),
        ("2001:db8::1", True),
        ("::1", True),
        ("fe80::1", True),
        # IPv4-mapped addresses are judged as IPv4.
        ("::ffff:10.0.0.1", False),
        ("::ffff:8.8.8.8", True),
    ],
)
def test_is_public(address: str, public: bool) -> None:
    assert ip.is_public(ip_address(address)) is public


def test_is_public_none_is_false() -> None:
    assert ip.is_public(None) is False


@settings(max_examples=500, derandomize=True)
@given(
    st.text(alphabet="0123456789.", max_size=16)
    | st.ip_addresses(v=4).map(str)
    | st.tuples(*[st.integers(0, 300)] * 4).map(lambda t: ".".join(map(str, t)))
)
def test_the_dotted_quad_fast_path_accepts_and_reads_what_ipaddress_does(text: str) -> None:
    try:
        expected: object = ip_address(text)
    except ValueError:
        expected = ValueError
    try:
        got: object = ip._address(text)
    except ValueError:
        got = ValueError
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize(
    "text", ["01.2.3.4", "1.2.3.256", "1.2.3", "1.2.3.4.5", "١.2.3.4", " 1.2.3.4"]
)
def test_near_miss_dotted_quads_are_refused_as_ipaddress_refuses_them(text: str) -> None:
    with pytest.raises(ValueError):
        ip_address(text)
    assert ip.parse_ip(text) is None
    assert ip.parse_interface(text + "/24") is None


def test_ipv4_interfaces_are_filled_in_directly_on_this_python() -> None:
    # The check at import found ipaddress's layout as expected: the fast path is in use.
    assert ip._interface4 is ip._filled_interface4


@settings(max_examples=500, derandomize=True)
@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_an_ipv4_interface_filled_in_is_the_one_ipaddress_constructs(
    value: int, prefix: int
) -> None:
    built, filled = IPv4Interface((value, prefix)), ip._filled_interface4(value, prefix)
    assert type(filled) is IPv4Interface
    assert filled == built and hash(filled) == hash(built)
    assert vars(filled) == vars(built)
    assert (filled.ip, filled.network, filled.netmask, filled.hostmask) == (
        built.ip,
        built.network,
        built.netmask,
        built.hostmask,
    )
    assert (str(filled), repr(filled), filled.with_netmask, int(filled)) == (
        str(built),
        repr(built),
        built.with_netmask,
        int(built),
    )
    assert ip.text(filled) == str(built)
    assert (filled.is_private, filled.packed) == (built.is_private, built.packed)
    assert list(islice(filled.network.hosts(), 2)) == list(islice(built.network.hosts(), 2))


@settings(max_examples=500, derandomize=True)
@given(st.ip_addresses(), st.integers(0, 128))
def test_a_masked_network_is_the_one_ipaddress_builds_and_ipv4_ones_are_one_object(
    address: IPv4Address | IPv6Address, prefix: int
) -> None:
    text = str(address)
    try:
        expected: object = ip_network((text, prefix), strict=False)
    except ValueError:
        expected = ValueError
    try:
        got: object = ip.masked_network(text, prefix)
    except ValueError:
        got = ValueError
    assert got == expected
    assert type(got) is type(expected)
    if isinstance(got, IPv4Network):
        # The memory a leader saves: the kernel's routes, the WireGuard device's allowed
        # IPs, the Nodes' pod CIDRs and the plan's one-address networks share one object.
        assert ip.masked_network(text, prefix) is got
        assert ip.parse_network(f"{text}/{prefix}") is got
        assert ip.parse_interface(f"{text}/{prefix}").network is got  # type: ignore[union-attr]
        if prefix == 32:
            assert ip.host_network(address) is got


def test_interned_addresses_are_ipaddress_addresses_one_object_each() -> None:
    gateway = ip.interned_address("10.4.0.1")
    assert gateway == ip_address("10.4.0.1") and type(gateway) is IPv4Address
    assert ip.interned_address("10.4.0.1") is gateway
    assert ip.interned_address("fd00::1") == ip_address("fd00::1")
    with pytest.raises(ValueError):
        ip.interned_address("10.4.0.256")
