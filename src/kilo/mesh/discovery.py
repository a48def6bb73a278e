"""Which of the node's addresses are its private (internal) and public (external) IPs.

Pure: Kilo's ``getIP`` (reference kilo-mesh.md §6.2) over plain data that an adapter reads
from the host (interfaces and their addresses, the default-route interface, what the
hostname resolves to). The chosen addresses keep their interface mask, which later drives
the cross-subnet decisions and is written to the ``internal-ip`` annotation.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from kilo.errors import ConfigError
from kilo.mesh import ip as ipmod
from kilo.mesh.ip import IPAddress, IPInterface, IPNetwork


@dataclass(frozen=True, slots=True, kw_only=True)
class Interface:
    index: int
    name: str
    addresses: tuple[IPInterface, ...]


@dataclass(frozen=True, slots=True)
class DiscoveredIPs:
    private: IPInterface | None
    public: IPInterface  # the first public address, else the first private one


_V4_LINK_LOCAL_MULTICAST = IPv4Network("224.0.0.0/24")


def _is_local(address: IPAddress) -> bool:
    """Go's loopback, link-local unicast and link-local multicast tests."""
    if address.is_loopback or address.is_link_local:
        return True
    if isinstance(address, IPv4Address):
        return address in _V4_LINK_LOCAL_MULTICAST
    return address.packed[0] == 0xFF and address.packed[1] & 0x0F == 0x02


def _sorted(addresses: Iterable[IPInterface]) -> list[IPInterface]:
    """Kilo's order: IPv4 before IPv6, then by CIDR text (so 10.0.0.10 before 10.0.0.2)."""
    return sorted(addresses, key=lambda a: (a.version, str(a)))


def _split(addresses: Iterable[IPInterface]) -> tuple[list[IPInterface], list[IPInterface]]:
    private: list[IPInterface] = []
    public: list[IPInterface] = []
    for address in _sorted(addresses):
        if _is_local(address.ip):
            continue
        (public if ipmod.is_public(address.ip) else private).append(address)
    return private, public


def discover_ips(
    *,
    hostname: str,
    resolved: Sequence[IPAddress],
    interfaces: Sequence[Interface],
    default_interface: int | None,
    internal_cidrs: Sequence[IPNetwork] = (),
    ignore: Collection[int] = (),
) -> DiscoveredIPs:
    """Kilo's choice of private and public IP for this node.

    ``resolved`` is what ``hostname`` resolves to (ignored when the hostname is an IP);
    ``ignore`` holds the indexes of interfaces whose addresses never count (the WireGuard
    interface, the tunnel, the CNI bridge).
    """
    if default_interface is None or not any(i.index == default_interface for i in interfaces):
        raise ConfigError("failed to find the interface of the default route")
    ignored: set[str] = set()
    for interface in interfaces:
        if interface.index and interface.index in ignore:
            for address in interface.addresses:
                ignored.add(str(address))
                ignored.add(str(ipmod.host_interface(address.ip)))

    host_ip = ipmod.parse_ip(hostname)
    host_candidates = [host_ip] if host_ip is not None else list(resolved)
    by_name = sorted(interfaces, key=lambda i: i.name)
    from_hostname: list[IPInterface] = []
    for candidate in host_candidates:
        for interface in by_name:
            match = next(
                (a for a in sorted(interface.addresses, key=str) if a.ip == candidate), None
            )
            if match is not None:
                from_hostname.append(match)  # the interface's mask replaces the lookup's
                break
    default = next(i for i in interfaces if i.index == default_interface)
    every = [a for i in interfaces for a in i.addresses]

    private: list[IPInterface] = []
    public: list[IPInterface] = []
    for group in (from_hostname, list(default.addresses), every):
        group_private, group_public = _split(group)
        private += group_private
        public += group_public
    private = [a for a in private if str(a) not in ignored]
    if internal_cidrs:
        private = [a for a in private if any(ipmod.contains(c, a.ip) for c in internal_cidrs)]
    public = [a for a in public if str(a) not in ignored]
    if not private and not public:
        raise ConfigError("no valid IP was found")
    chosen_private = private[0] if private else None
    return DiscoveredIPs(chosen_private, public[0] if public else private[0])


def external_ip(found: DiscoveredIPs, *, prioritise_private: bool) -> IPInterface:
    """``--prioritise-private-addresses`` makes the private IP the endpoint's address."""
    if prioritise_private and found.private is not None:
        return found.private
    return found.public
