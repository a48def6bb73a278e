"""Endpoints: parsing, readiness and formatting (kilo-mesh.md §1.1, kilo-k8s-cli.md §1.2)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest

from kilo.mesh.endpoint import (
    DNS1123_MAX_LENGTH,
    Endpoint,
    UDPAddr,
    dns1123_subdomain_errors,
    endpoint_ready,
    endpoint_string,
    is_dns1123_subdomain,
    parse_port,
    split_host_port,
)

DNS_REGEX_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
    "'-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', "
    "regex used for validation is "
    r"'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)

# --- parse: IP endpoints ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address", "port", "rendered"),
    [
        ("1.2.3.4:51820", IPv4Address("1.2.3.4"), 51820, "1.2.3.4:51820"),
        ("10.0.0.1:1", IPv4Address("10.0.0.1"), 1, "10.0.0.1:1"),
        ("10.0.0.1:65535", IPv4Address("10.0.0.1"), 65535, "10.0.0.1:65535"),
        ("[ff10::10]:100", IPv6Address("ff10::10"), 100, "[ff10::10]:100"),
        ("[2001:DB8::1]:51820", IPv6Address("2001:db8::1"), 51820, "[2001:db8::1]:51820"),
        ("[::ffff:1.2.3.4]:80", IPv4Address("1.2.3.4"), 80, "1.2.3.4:80"),  # normalised
        ("[1.2.3.4]:80", IPv4Address("1.2.3.4"), 80, "1.2.3.4:80"),  # brackets allowed
        # Go's ParseUint accepts leading zeros.
        ("1.2.3.4:051820", IPv4Address("1.2.3.4"), 51820, "1.2.3.4:51820"),
        ("1.2.3.4:00000000000000051820", IPv4Address("1.2.3.4"), 51820, "1.2.3.4:51820"),
    ],
)
def test_parse_ip_endpoint(
    text: str, address: IPv4Address | IPv6Address, port: int, rendered: str
) -> None:
    endpoint = Endpoint.parse(text)
    assert endpoint is not None
    assert endpoint.addr == ""
    assert endpoint.udp == UDPAddr(address, port)
    assert endpoint.ip == address
    assert endpoint.port == port
    assert endpoint.ready
    assert endpoint.resolved
    assert endpoint.host == ""
    assert str(endpoint) == rendered
    assert endpoint.string(dns_first=False) == rendered


# --- parse: DNS endpoints --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("example.com:51820", "example.com", 51820),
        ("vpn.example.com:1", "vpn.example.com", 1),
        ("a-b.c-d.e:65535", "a-b.c-d.e", 65535),
        ("localhost:80", "localhost", 80),
        ("1.2.3:80", "1.2.3", 80),  # not an IP, but a valid name
        ("010.1.1.1:80", "010.1.1.1", 80),  # leading zeros: not an IP either
        ("[example.com]:80", "example.com", 80),
        ("a" * 253 + ":80", "a" * 253, 80),  # exactly the maximum length
        ("example.com:080", "example.com", 80),
    ],
)
def test_parse_dns_endpoint(text: str, host: str, port: int) -> None:
    endpoint = Endpoint.parse(text)
    assert endpoint is not None
    assert endpoint.udp is None
    assert endpoint.addr == text  # the original text is kept
    assert endpoint.ready
    assert not endpoint.resolved
    assert endpoint.ip is None
    assert endpoint.port == port
    assert endpoint.host == host
    assert str(endpoint) == text
    assert endpoint.string(dns_first=False) == text


# --- parse: failures ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "10.0.0.0",  # bare IP: no port
        "example.com",
        ":1000",  # no host
        "1.2.3.4:",
        "1.2.3.4:0",
        "1.2.3.4:65536",
        "1.2.3.4:4294967296",
        "1.2.3.4:99999999999",
        "1.2.3.4:+1",
        "1.2.3.4:-1",
        "1.2.3.4:a",
        "1.2.3.4:8o",
        "1.2.3.4: 80",
        "1.2.3.4:80 ",
        "1.2.3.4:٨٠",  # non-ASCII digits
        "ff10::10:100",  # IPv6 needs brackets
        "[ff10::10]",
        "[ff10::10]100",
        "[::1]:80:90",
        "[::1]]:80",
        "[[::1]:80",
        "[fe80::1%eth0]:80",  # zones are rejected
        "fe80::1%eth0:80",
        "1.2.3.4%eth0:80",
        "Example.com:80",  # uppercase
        "EXAMPLE.COM:80",
        "-a.com:80",
        "a-.com:80",
        "a..b:80",
        ".a.com:80",
        "a.com.:80",
        "a_b.com:80",
        "exa mple.com:80",
        "a" * 254 + ":80",  # too long
        "exämple.com:80",
    ],
)
def test_parse_invalid(text: str) -> None:
    assert Endpoint.parse(text) is None


# --- readiness and accessors ---------------------------------------------------------------


def test_ready() -> None:
    assert Endpoint.new(IPv4Address("1.2.3.4"), 1).ready
    assert not Endpoint.new(IPv4Address("1.2.3.4"), 0).ready  # new() does not validate
    assert not Endpoint.new(None, 51820).ready
    assert not Endpoint().ready
    assert not Endpoint(udp=None, addr="").ready
    assert Endpoint(addr="example.com:1").ready
    assert endpoint_ready(Endpoint.new(IPv4Address("1.2.3.4"), 1))
    assert not endpoint_ready(None)


def test_port_of_an_endpoint_that_is_not_ready_is_zero() -> None:
    assert Endpoint.new(None, 51820).port == 0
    assert Endpoint.new(IPv4Address("1.2.3.4"), 0).port == 0
    assert Endpoint().port == 0


def test_new_normalises_a_mapped_address() -> None:
    endpoint = Endpoint.new(IPv6Address("::ffff:1.2.3.4"), 51820)
    assert endpoint.ip == IPv4Address("1.2.3.4")
    assert str(endpoint) == "1.2.3.4:51820"


def test_from_udp() -> None:
    endpoint = Endpoint.from_udp(UDPAddr(IPv6Address("::ffff:5.6.7.8"), 41000, "eth0"))
    assert endpoint.udp == UDPAddr(IPv4Address("5.6.7.8"), 41000, "eth0")
    assert Endpoint.from_udp(None) == Endpoint()
    nil_ip = Endpoint.from_udp(UDPAddr(None, 5))
    assert nil_ip.udp == UDPAddr(None, 5)
    assert not nil_ip.ready
    assert nil_ip.resolved
    assert str(nil_ip) == ":5"


def test_resolved_dns_endpoint_prefers_the_name_when_dns_first() -> None:
    endpoint = Endpoint.parse("vpn.example.com:51820")
    assert endpoint is not None
    resolved = endpoint.resolved_to(IPv6Address("::ffff:9.9.9.9"))
    assert resolved.resolved
    assert resolved.ready
    assert resolved.ip == IPv4Address("9.9.9.9")
    assert resolved.port == 51820
    assert resolved.host == "vpn.example.com"
    assert resolved.addr == "vpn.example.com:51820"
    assert str(resolved) == "vpn.example.com:51820"
    assert resolved.string(dns_first=True) == "vpn.example.com:51820"
    assert resolved.string(dns_first=False) == "9.9.9.9:51820"


def test_endpoint_string_of_none_is_empty() -> None:
    assert endpoint_string(None) == ""
    assert endpoint_string(None, dns_first=False) == ""
    assert endpoint_string(Endpoint.new(IPv4Address("1.2.3.4"), 5)) == "1.2.3.4:5"


def test_endpoint_of_nothing_renders_empty() -> None:
    assert str(Endpoint()) == ""


# --- UDPAddr formatting (Go's UDPAddr.String) --------------------------------------------------


@pytest.mark.parametrize(
    ("udp", "text"),
    [
        (UDPAddr(IPv4Address("1.2.3.4"), 80), "1.2.3.4:80"),
        (UDPAddr(IPv6Address("2001:db8::1"), 51820), "[2001:db8::1]:51820"),
        (UDPAddr(IPv6Address("fe80::1"), 51820, "eth0"), "[fe80::1%eth0]:51820"),
        (UDPAddr(IPv4Address("1.2.3.4"), 80, "eth0"), "1.2.3.4%eth0:80"),
        (UDPAddr(None, 80), ":80"),
        (UDPAddr(None, 80, "eth0"), "%eth0:80"),
        (UDPAddr(IPv4Address("1.2.3.4"), 0), "1.2.3.4:0"),
    ],
)
def test_udp_addr_str(udp: UDPAddr, text: str) -> None:
    assert str(udp) == text
    assert str(Endpoint(udp=udp)) == text


# --- helpers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4:80", ("1.2.3.4", "80")),
        ("[::1]:80", ("::1", "80")),
        ("[1.2.3.4]:80", ("1.2.3.4", "80")),
        (":80", ("", "80")),
        ("a:", ("a", "")),
        ("[]:80", ("", "80")),
        ("1.2.3.4", None),
        ("::1:80", None),
        ("[::1]80", None),
        ("[::1]", None),
        ("[::1", None),
        ("a[b:80", None),
        ("a]b:80", None),
    ],
)
def test_split_host_port(text: str, expected: tuple[str, str] | None) -> None:
    assert split_host_port(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", 1),
        ("51820", 51820),
        ("65535", 65535),
        ("080", 80),
        ("0000000000000000000080", 80),
        ("0", None),
        ("65536", None),
        ("", None),
        ("+1", None),
        ("-1", None),
        (" 1", None),
        ("1_0", None),
        ("0x10", None),
        ("٨٠", None),
    ],
)
def test_parse_port(text: str, expected: int | None) -> None:
    assert parse_port(text) == expected


def test_dns1123_subdomain() -> None:
    assert is_dns1123_subdomain("example.com")
    assert is_dns1123_subdomain("a" * DNS1123_MAX_LENGTH)
    assert not is_dns1123_subdomain("a" * (DNS1123_MAX_LENGTH + 1))
    assert not is_dns1123_subdomain("")
    assert not is_dns1123_subdomain("example.com\n")
    assert dns1123_subdomain_errors("example.com") == []
    assert dns1123_subdomain_errors("Example.com") == [DNS_REGEX_MESSAGE]
    assert dns1123_subdomain_errors("a" * 254) == ["must be no more than 253 characters"]
    assert dns1123_subdomain_errors("A" * 254) == [
        "must be no more than 253 characters",
        DNS_REGEX_MESSAGE,
    ]
