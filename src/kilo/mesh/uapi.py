"""The UAPI text of a WireGuard device: a ``get=1`` reply read into its state.

Pure. No I/O: the adapter (``kilo.adapters.wireguard``) talks to the device; what the
state should become is planned in :mod:`kilo.mesh.wgdevice`. Keys never appear in a
``repr`` or an error message (:func:`redact`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from kilo.errors import KiloError
from kilo.mesh import ip as ipmod
from kilo.mesh.endpoint import UDPAddr, parse_port, split_host_port
from kilo.mesh.ip import IPNetwork
from kilo.mesh.keys import KEY_LENGTH, Key
from kilo.mesh.text import shorten
from kilo.mesh.wgdevice import HIDDEN, DeviceState, PeerState

_SECRET_KEYS = frozenset({"private_key", "preshared_key"})


class UAPIParseError(KiloError, ValueError):
    """A UAPI ``get=1`` reply that cannot be read; the message names the line."""


def _parse_hex_key(value: str) -> Key | None:
    if len(value) != 2 * KEY_LENGTH:
        return None
    try:
        return Key(bytes.fromhex(value))
    except ValueError:
        return None


def _parse_int(value: str, maximum: int) -> int | None:
    if not value.isascii() or not value.isdigit():
        return None
    number = int(value)
    return number if number <= maximum else None


def parse_udp_addr(text: str) -> UDPAddr | None:
    """``ip:port`` or ``[ip%zone]:port`` as WireGuard prints an endpoint."""
    parts = split_host_port(text)
    if parts is None:
        return None
    host, port_text = parts
    host, _, zone = host.partition("%")
    address = ipmod.parse_ip(host)
    port = parse_port(port_text)
    if address is None or port is None:
        return None
    return UDPAddr(address, port, zone)


@dataclass(slots=True)
class _PeerBuilder:
    public_key: Key
    preshared_key: Key | None = None
    endpoint: UDPAddr | None = None
    persistent_keepalive: int = 0
    allowed_ips: list[IPNetwork] = field(default_factory=list)
    allowed_ips_text: list[str] = field(default_factory=list)
    handshake_sec: int = 0
    handshake_nsec: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0

    def build(self) -> PeerState:
        handshake = None
        if self.handshake_sec or self.handshake_nsec:
            handshake = self.handshake_sec + self.handshake_nsec / 1e9
        psk = (
            None if self.preshared_key is None or self.preshared_key.is_zero else self.preshared_key
        )
        state = PeerState(
            public_key=self.public_key,
            preshared_key=psk,
            endpoint=self.endpoint,
            persistent_keepalive=self.persistent_keepalive,
            allowed_ips=tuple(self.allowed_ips),
            last_handshake=handshake,
            rx_bytes=self.rx_bytes,
            tx_bytes=self.tx_bytes,
        )
        object.__setattr__(state, "_allowed_ips_text", tuple(self.allowed_ips_text))
        return state


_U64 = 2**64 - 1
# UAPI peer keys holding integers: the builder attribute and the largest value.
_PEER_INTEGERS = {
    "persistent_keepalive_interval": ("persistent_keepalive", 65535),
    "last_handshake_time_sec": ("handshake_sec", _U64),
    "last_handshake_time_nsec": ("handshake_nsec", 999_999_999),
    "rx_bytes": ("rx_bytes", _U64),
    "tx_bytes": ("tx_bytes", _U64),
}
_DEVICE_KEYS = frozenset({"private_key", "listen_port", "fwmark"})


def _bad_line(number: int, key: str, value: str, problem: str) -> UAPIParseError:
    shown = HIDDEN if key in _SECRET_KEYS else value
    return UAPIParseError(f"UAPI line {number}: {key}={shown!r} {problem}")


def parse_uapi(text: str) -> DeviceState:
    """The state in a UAPI ``get=1`` reply (with or without its ``errno=0`` line).

    Keys this version does not know are skipped, since newer implementations add keys.

    Each peer's lines (from its ``public_key=`` to the next) are parsed once: a peer whose
    lines are the same as in the previous reply is the same :class:`PeerState` (values
    are immutable), as most peers of a large device are from one read to the next
    (the agent reads the device on every apply). Anything unreadable is parsed again in
    one go, for the error message with its line number.
    """
    parts = ("\n" + text).split("\npublic_key=")
    previous = _PEER_BLOCKS.previous
    current: dict[str, PeerState] = {}
    try:
        header = _parse_uapi(parts[0])
        peers: list[PeerState] = []
        for block in parts[1:]:
            peer = previous.get(block)
            if peer is None:
                parsed = _parse_uapi("public_key=" + block)
                if len(parsed.peers) != 1:  # a stray key: leave the message to the parse below
                    raise UAPIParseError("")
                peer = parsed.peers[0]
            current[block] = peer
            peers.append(peer)
    except UAPIParseError:
        _parse_uapi(text)
        raise
    _PEER_BLOCKS.previous = current
    return DeviceState(
        private_key=header.private_key, listen_port=header.listen_port, peers=tuple(peers)
    )


class _PeerBlocks:
    """The previous reply's peers by the text of their lines (see :func:`parse_uapi`)."""

    def __init__(self) -> None:
        self.previous: dict[str, PeerState] = {}


_PEER_BLOCKS = _PeerBlocks()


def _parse_uapi(text: str) -> DeviceState:
    private_key: Key | None = None
    listen_port = 0
    peers: list[_PeerBuilder] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line:
            continue
        key, equals, value = line.partition("=")
        if not equals:
            raise UAPIParseError(f"UAPI line {number}: {shorten(line)!r} is not key=value")
        if key == "errno":
            if value != "0":
                raise _bad_line(number, key, value, "reports an error")
        elif key == "public_key":
            public = _parse_hex_key(value)
            if public is None:
                raise _bad_line(number, key, value, "is not a 64-digit hex key")
            peers.append(_PeerBuilder(public))
        elif not peers:
            if key == "private_key":
                private_key = _parse_hex_key(value)
                if private_key is None:
                    raise _bad_line(number, key, value, "is not a 64-digit hex key")
                if private_key.is_zero:
                    private_key = None
            elif key == "listen_port":
                port = _parse_int(value, 65535)
                if port is None:
                    raise _bad_line(number, key, value, "is not a port")
                listen_port = port
        elif key in _DEVICE_KEYS:
            raise _bad_line(number, key, value, "is a device key after the first peer")
        else:
            _parse_peer_line(peers[-1], number, key, value)
    return DeviceState(
        private_key=private_key,
        listen_port=listen_port,
        peers=tuple(p.build() for p in peers),
    )


def _parse_peer_line(peer: _PeerBuilder, number: int, key: str, value: str) -> None:
    if key == "preshared_key":
        peer.preshared_key = _parse_hex_key(value)
        if peer.preshared_key is None:
            raise _bad_line(number, key, value, "is not a 64-digit hex key")
    elif key == "endpoint":
        peer.endpoint = parse_udp_addr(value)
        if peer.endpoint is None:
            raise _bad_line(number, key, value, "is not ip:port")
    elif key == "allowed_ip":
        network = ipmod.interned_network(value)
        if network is None:
            raise _bad_line(number, key, value, "is not a CIDR")
        peer.allowed_ips.append(network)
        peer.allowed_ips_text.append(_network_text(value))
    elif key in _PEER_INTEGERS:
        attribute, maximum = _PEER_INTEGERS[key]
        parsed = _parse_int(value, maximum)
        if parsed is None:
            raise _bad_line(number, key, value, f"is not an integer in 0..{maximum}")
        setattr(peer, attribute, parsed)


@functools.lru_cache(maxsize=1 << 15)
def _network_text(value: str) -> str:
    """``str(interned_network(value))`` of a valid allowed IP as a device prints it."""
    network = ipmod.interned_network(value)
    assert network is not None
    text = ipmod.text(network)
    return value if text == value else text  # as printed, mostly: one string, not two


def redact(uapi: str) -> str:
    """UAPI text with private and preshared keys hidden, for logs and error messages."""
    lines = []
    for line in uapi.split("\n"):
        key, equals, _ = line.partition("=")
        lines.append(f"{key}={HIDDEN}" if equals and key in _SECRET_KEYS else line)
    return "\n".join(lines)
