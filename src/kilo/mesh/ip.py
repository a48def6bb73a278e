"""IP address helpers with Go's parsing and comparison semantics.

Pure. Kilo nodes written in Go and in Python must read the same annotation the same way, so
parsing follows Go's ``net.ParseIP``/``net.ParseCIDR`` rather than Python's more lenient
``ipaddress`` constructors (no netmask notation, no IPv6 zones, no missing prefix), and
IPv4-mapped IPv6 addresses are normalised to IPv4 as Go's ``To4()`` does.

Two kinds of CIDR exist (see the reference, "CIDR as stored"):

* an *interface* keeps its host bits (``10.5.0.1/24`` stays ``10.5.0.1/24``): annotation and
  CRD values;
* a *network* is masked (``10.2.0.0/24``): pod CIDRs, ``--subnet``, service CIDRs.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)

IPAddress = IPv4Address | IPv6Address
IPInterface = IPv4Interface | IPv6Interface
IPNetwork = IPv4Network | IPv6Network

_DIGITS = frozenset("0123456789")

# An IPv4 address as ``ipaddress`` accepts it (four decimal octets, no leading zeros), read
# without its octet-by-octet parser: a 5000-node dump holds tens of thousands of addresses,
# and that parser was half of kgctl's translation time. Anything else takes ipaddress's
# path, so the set of accepted texts and their values are ipaddress's.
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_V4 = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")


def _address(text: str) -> IPAddress:
    """``ipaddress.ip_address(text)`` (``ValueError`` when invalid)."""
    if _CANONICAL_V4.fullmatch(text):
        a, b, c, d = text.split(".")
        return IPv4Address(int(a) << 24 | int(b) << 16 | int(c) << 8 | int(d))
    return ipaddress.ip_address(text)


def normalise(ip: IPAddress) -> IPAddress:
    """Return IPv4 for an IPv4-mapped IPv6 address, else ``ip`` itself."""
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_ip(text: str) -> IPAddress | None:
    """Parse a bare IP address like Go's ``net.ParseIP``; ``None`` when invalid."""
    if not text or "%" in text or "/" in text:
        return None
    try:
        return normalise(_address(text))
    except ValueError:
        return None


def _split_cidr(text: str) -> tuple[IPAddress, int] | None:
    """Go's ``net.ParseCIDR`` syntax; the address is returned as written (not normalised)."""
    ip_text, slash, prefix_text = text.partition("/")
    if not slash or not prefix_text or not set(prefix_text) <= _DIGITS:
        return None
    # Go's prefix parser accepts leading zeros ("/024"); anything longer is out of range.
    if len(prefix_text.lstrip("0")) > 3:
        return None
    if "%" in ip_text:
        return None
    try:
        ip = _address(ip_text)
    except ValueError:
        return None
    prefix = int(prefix_text)
    if prefix > ip.max_prefixlen:
        return None
    return ip, prefix


def parse_interface(text: str) -> IPInterface | None:
    """Parse ``ip/prefix`` keeping the host bits (Kilo's ``normalizeIP``)."""
    parts = _split_cidr(text)
    if parts is None:
        return None
    ip, prefix = parts
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        # Go keeps a 16-byte mask for a mapped address and reads only its last 32 bits,
        # so ``::ffff:1.2.3.4/120`` is ``1.2.3.4/24`` and any prefix up to 96 is ``/0``.
        return ipaddress.ip_interface((ip.ipv4_mapped, max(prefix - 96, 0)))
    if isinstance(ip, IPv4Address):
        return _interface4(int(ip), prefix)
    return ipaddress.ip_interface((ip, prefix))


def parse_network(text: str) -> IPNetwork | None:
    """Parse ``ip/prefix`` and mask it to the network address (Go's ``ParseCIDR`` network)."""
    parts = _split_cidr(text)
    if parts is None:
        return None
    ip, prefix = parts
    if isinstance(ip, IPv4Address):
        return network4(int(ip), prefix)
    network = ipaddress.ip_network((ip, prefix), strict=False)
    if isinstance(network, IPv6Network) and network.network_address.ipv4_mapped is not None:
        # Still IPv4-mapped after masking (prefix >= 96): Go prints it as IPv4.
        return ipaddress.ip_network((network.network_address.ipv4_mapped, prefix - 96))
    return network


@functools.lru_cache(maxsize=1 << 15)
def interned_network(text: str) -> IPNetwork | None:
    """:func:`parse_network`, memoised: a WireGuard device lists the same allowed IPs on
    every read, and ``ipaddress`` parses text in Python (tens of ms for a 100-peer device
    at a thousand nodes). The memo only hands out equal, immutable values; bounded."""
    return parse_network(text)


# Constructors are given integers: from an address object, ipaddress formats it as text
# and parses it again, which dominates planning time in large meshes. One-address CIDRs are
# also interned: a topology needs one per node and per WireGuard IP, the same ones on every
# apply, and building an ``IPv4Interface`` costs several microseconds. The memo only hands
# out equal, immutable values, so it changes no result; it is bounded (``_INTERNED``
# entries per kind and family, a few MiB at most).
_INTERNED = 1 << 15


@functools.lru_cache(maxsize=_INTERNED)
def _host_interface4(value: int) -> IPv4Interface:
    return _interface4(value, 32)


# An IPv4Interface is its address, its network and that network's netmask and prefix
# (``IPv4Interface.__init__``). The constructor takes 4 us: it splits its argument and
# builds the network from scratch, although the nodes of a cluster share a handful of
# networks (a 5000-node dump holds 15 000 interfaces: a tenth of kgctl's translation and
# of a topology of fresh Nodes). Here the network is interned and the interface filled in
# directly, in 0.3 us; the result is the same value (equality, hash, text, every
# property). The check below compares both ways on this Python at import: if ipaddress's
# layout ever differs, the constructor is used.
_V4_ALL = (1 << 32) - 1


@functools.lru_cache(maxsize=_INTERNED)
def _host_network4(value: int) -> IPv4Network:
    return IPv4Network((value, 32))


@functools.lru_cache(maxsize=_INTERNED)
def _network4(masked: int, prefix: int) -> IPv4Network:
    return IPv4Network((masked, prefix))


def network4(value: int, prefix: int) -> IPv4Network:
    """The IPv4 network of address ``value`` and ``prefix`` (host bits cleared), interned:
    the one object of a value that every parser hands out while the memo holds it. A
    leader at 5000 nodes holds each pod CIDR and node IP several times over (its Nodes, its
    plan, the WireGuard device's allowed IPs, the kernel's routes), and an ``IPv4Network``
    with its address is a few hundred bytes: 10 MiB of copies after a full apply."""
    if prefix == 32:
        return _host_network4(value)
    return _network4(value & (_V4_ALL ^ (_V4_ALL >> prefix)), prefix)


def masked_network(address: str, prefix: int) -> IPNetwork:
    """``ipaddress.ip_network((address, prefix), strict=False)`` (no Go rules: for what the
    kernel lists), an IPv4 network interned (:func:`network4`)."""
    value = _address(address)
    if isinstance(value, IPv4Address):
        if not 0 <= prefix <= 32:
            raise ValueError(f"{prefix!r} is not a valid netmask")
        return network4(int(value), prefix)
    return ipaddress.ip_network((value, prefix), strict=False)


@functools.lru_cache(maxsize=_INTERNED)
def interned_address(text: str) -> IPAddress:
    """``ipaddress.ip_address(text)``, memoised: the few gateways of thousands of routes.
    The memo only hands out equal, immutable values; bounded."""
    return _address(text)


def _filled_interface4(value: int, prefix: int) -> IPv4Interface:
    network = network4(value, prefix)
    interface = IPv4Interface.__new__(IPv4Interface)
    setattr(interface, "_ip", value)  # noqa: B010 - IPv4Address's slot, unknown to typeshed
    interface.network = network
    interface.netmask = network.netmask
    setattr(interface, "_prefixlen", prefix)  # noqa: B010 - as above
    return interface


def _constructed_interface4(value: int, prefix: int) -> IPv4Interface:
    return IPv4Interface((value, prefix))


def _same_layout() -> bool:
    for value, prefix in ((0x0A010203, 16), (0xC0A80001, 32), (0xFFFFFFFF, 0), (1, 31)):
        built, filled = IPv4Interface((value, prefix)), _filled_interface4(value, prefix)
        if vars(built) != vars(filled) or (built, hash(built)) != (filled, hash(filled)):
            return False
    return True


_interface4 = _filled_interface4 if _same_layout() else _constructed_interface4


@functools.lru_cache(maxsize=_INTERNED)
def _host_interface6(value: int) -> IPv6Interface:
    return IPv6Interface((value, 128))


@functools.lru_cache(maxsize=_INTERNED)
def _host_network6(value: int) -> IPv6Network:
    return IPv6Network((value, 128))


def host_interface(ip: IPAddress) -> IPInterface:
    """The one-address CIDR of ``ip``: ``/32`` or ``/128``."""
    if isinstance(ip, IPv4Address):
        return _host_interface4(int(ip))
    return _host_interface6(int(ip))


def host_network(ip: IPAddress) -> IPNetwork:
    """The one-address network of ``ip``."""
    if isinstance(ip, IPv4Address):
        return _host_network4(int(ip))
    return _host_network6(int(ip))


# ``str()`` of an IPv4 value, without ipaddress's general formatter (three times faster);
# IPv6 keeps ``str()``, whose zero compression this must not re-implement.
_DOTTED = "%d.%d.%d.%d"
_DOTTED_PREFIX = "%d.%d.%d.%d/%d"


def text(value: IPAddress | IPInterface | IPNetwork) -> str:
    """``str(value)``: an address, or a CIDR as stored (interface or network)."""
    if isinstance(value, IPv4Interface):
        n = int(value)
        return _DOTTED_PREFIX % (
            n >> 24,
            n >> 16 & 255,
            n >> 8 & 255,
            n & 255,
            value.network.prefixlen,
        )
    if isinstance(value, IPv4Network):
        n = int(value.network_address)
        return _DOTTED_PREFIX % (n >> 24, n >> 16 & 255, n >> 8 & 255, n & 255, value.prefixlen)
    if isinstance(value, IPv4Address):
        n = int(value)
        return _DOTTED % (n >> 24, n >> 16 & 255, n >> 8 & 255, n & 255)
    return str(value)


def texts(
    known: tuple[str, ...] | None, values: Iterable[IPAddress | IPInterface | IPNetwork]
) -> tuple[str, ...]:
    """``known`` (the texts of ``values`` when their builder had them at hand), else
    :func:`text` of each: the ``allowed_ips_text`` of segments, peers and device states."""
    return known if known is not None else tuple([text(v) for v in values])


def host_text(ip: IPAddress) -> str:
    """``text(host_interface(ip))``: ``a.b.c.d/32`` or ``.../128``, interned like the CIDR."""
    if isinstance(ip, IPv4Address):
        return _host_text4(int(ip))
    return _host_text6(int(ip))


@functools.lru_cache(maxsize=_INTERNED)
def _host_text4(value: int) -> str:
    return _DOTTED_PREFIX % (value >> 24, value >> 16 & 255, value >> 8 & 255, value & 255, 32)


@functools.lru_cache(maxsize=_INTERNED)
def _host_text6(value: int) -> str:
    return str(_host_interface6(value))


def contains(cidr: IPInterface | IPNetwork, ip: IPAddress | None) -> bool:
    """Go's ``IPNet.Contains``: mask both sides; different families never match."""
    if ip is None:
        return False
    network = cidr.network if isinstance(cidr, IPv4Interface | IPv6Interface) else cidr
    return network.version == ip.version and ip in network


def intersect(a: IPInterface | IPNetwork, b: IPInterface | IPNetwork) -> bool:
    """True if either CIDR contains the (stored) address of the other."""
    return contains(a, address_of(b)) or contains(b, address_of(a))


def address_of(cidr: IPInterface | IPNetwork) -> IPAddress:
    """The address part as stored: the host for an interface, the network address otherwise."""
    if isinstance(cidr, IPv4Interface | IPv6Interface):
        return cidr.ip
    return cidr.network_address


def is_public(ip: IPAddress | None) -> bool:
    """Kilo's crude public-address test used for leader election.

    Only 10/8, 172.16/12 and 192.168/16 (IPv4) and fd00::/16 (IPv6) count as private, so
    loopback, link-local and CGNAT addresses count as public; peers on other Kilo nodes
    make the same choice, so this must not be "improved".
    """
    if ip is None:
        return False
    ip = normalise(ip)
    if isinstance(ip, IPv4Address):
        n = int(ip)
        b0, b1 = n >> 24, n >> 16 & 0xFF
        if b0 == 10:
            return False
        if b0 == 172 and b1 & 0xF0 == 0x10:
            return False
        return not (b0 == 192 and b1 == 168)
    return int(ip) >> 112 != 0xFD00


def sort_key(cidr: IPInterface | IPNetwork) -> str:
    """The string by which Kilo sorts CIDRs."""
    return str(cidr)
