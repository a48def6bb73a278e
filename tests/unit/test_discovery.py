"""IP discovery: Kilo's choice of a node's private and public address (kilo-mesh.md §6.2)."""

from __future__ import annotations

from ipaddress import ip_address, ip_interface, ip_network

import pytest

from kilo.errors import ConfigError
from kilo.mesh.discovery import DiscoveredIPs, Interface, discover_ips, external_ip


def iface(index: int, name: str, *addresses: str) -> Interface:
    return Interface(index=index, name=name, addresses=tuple(ip_interface(a) for a in addresses))


LO = iface(1, "lo", "127.0.0.1/8", "::1/128")
ENS4 = iface(2, "ens4", "10.0.0.2/24", "10.0.0.10/24", "fe80::1/64")
PUBLIC = iface(3, "ens5", "203.0.113.7/24", "2001:db8::7/64")
KILO0 = iface(4, "kilo0", "10.4.0.1/16")


def discover(**kwargs: object) -> DiscoveredIPs:
    args: dict[str, object] = {
        "hostname": "node-1",
        "resolved": [],
        "interfaces": [LO, ENS4, PUBLIC, KILO0],
        "default_interface": 2,
    }
    args.update(kwargs)
    return discover_ips(**args)  # type: ignore[arg-type]


def test_addresses_sort_by_text_within_a_group_ipv4_first() -> None:
    # 10.0.0.10/24 sorts before 10.0.0.2/24 as text, as in Kilo.
    assert discover() == DiscoveredIPs(ip_interface("10.0.0.10/24"), ip_interface("203.0.113.7/24"))


def test_the_hostname_group_comes_first_and_takes_the_interface_mask() -> None:
    found = discover(resolved=[ip_address("10.0.0.2")])
    assert found.private == ip_interface("10.0.0.2/24")
    assert discover(hostname="10.0.0.2").private == ip_interface("10.0.0.2/24")
    # A resolved address that no interface holds is ignored.
    assert discover(resolved=[ip_address("10.9.9.9")]).private == ip_interface("10.0.0.10/24")


def test_internal_cidrs_filter_only_private_addresses() -> None:
    found = discover(internal_cidrs=[ip_network("10.4.0.0/16")])
    assert found == DiscoveredIPs(ip_interface("10.4.0.1/16"), ip_interface("203.0.113.7/24"))
    assert discover(internal_cidrs=[ip_network("10.0.0.2/32")]).private == ip_interface(
        "10.0.0.2/24"
    )


def test_ignored_interfaces_do_not_count() -> None:
    found = discover(internal_cidrs=[ip_network("10.4.0.0/16")], ignore={4})
    assert found.private is None
    assert found.public == ip_interface("203.0.113.7/24")


def test_without_public_addresses_the_private_one_is_also_the_public_one() -> None:
    found = discover(interfaces=[LO, ENS4], default_interface=2)
    assert found == DiscoveredIPs(ip_interface("10.0.0.10/24"), ip_interface("10.0.0.10/24"))


def test_errors() -> None:
    with pytest.raises(ConfigError, match="default route"):
        discover(default_interface=None)
    with pytest.raises(ConfigError, match="no valid IP was found"):
        discover(interfaces=[LO, iface(2, "eth0", "fe80::2/64")], default_interface=2)


def test_prioritise_private_addresses() -> None:
    found = discover()
    assert external_ip(found, prioritise_private=False) == ip_interface("203.0.113.7/24")
    assert external_ip(found, prioritise_private=True) == ip_interface("10.0.0.10/24")
    only_public = DiscoveredIPs(None, ip_interface("203.0.113.7/24"))
    assert external_ip(only_public, prioritise_private=True) == ip_interface("203.0.113.7/24")
