"""A live WireGuard device: its state, its UAPI text, and the diff that brings it to a config.

Pure. No I/O: the adapters read the device (``get=1``, or netlink) and write the changes this
module plans. Keys never appear in a ``repr`` or an error message.

Kilo applies every change with ``ReplacePeers``, which removes every peer and adds them
again: every session is reset and every roamed endpoint is lost, on any change (quirk 23).
Here only the differences are applied:

* the private key and the listen port only when they differ (a desired port of 0 and a
  desired key of ``None`` mean "leave it");
* peers no longer wanted are removed; new peers are added with their full config;
* a peer that exists is touched only when its allowed IPs (compared masked and as a set, the
  way WireGuard stores them: pitfall 6), its preshared key (``None`` is the zero key), its
  keepalive or its endpoint differ, and then only the differing fields are sent;
* a desired endpoint of ``None`` (or a DNS name that has not been resolved) never touches
  the live endpoint, so a roaming peer keeps the endpoint WireGuard learned (pitfall 5).

What the device should hold is what Kilo's ``ReplacePeers`` would leave in it: peers are
applied in config order, an allowed IP listed by two peers belongs to the later one (the
kernel moves it), and a public key listed twice is one peer whose later entry wins. Planning
against that state keeps the diff idempotent even for such configs.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kilo.errors import KiloError
from kilo.mesh import ip as ipmod
from kilo.mesh.endpoint import Endpoint, UDPAddr, parse_port, split_host_port
from kilo.mesh.ip import IPNetwork
from kilo.mesh.keys import KEY_LENGTH, ZERO_KEY, Key, clamp
from kilo.mesh.model import Node, Peer, wireguard_keepalive
from kilo.mesh.text import shorten
from kilo.mesh.wireguard import AllowedIP, WireGuardConfig, WireGuardPeer

_HIDDEN = "(hidden)"
_SECRET_KEYS = frozenset({"private_key", "preshared_key"})


class UAPIParseError(KiloError, ValueError):
    """A UAPI ``get=1`` reply that cannot be read; the message names the line."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerState:
    """One peer as the device reports it."""

    public_key: Key
    preshared_key: Key | None = field(default=None, repr=False)
    endpoint: UDPAddr | None = None
    persistent_keepalive: int = 0
    allowed_ips: tuple[IPNetwork, ...] = ()
    last_handshake: float | None = None  # unix seconds with a nanosecond fraction; None = never
    rx_bytes: int = 0
    tx_bytes: int = 0
    # str() of each of allowed_ips, when the parser had them at hand (plan_changes compares
    # allowed IPs as these texts: equal texts are equal networks). Not part of the value.
    _allowed_ips_text: tuple[str, ...] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def allowed_ips_text(self) -> tuple[str, ...]:
        """``str()`` of each of :attr:`allowed_ips`."""
        texts = self._allowed_ips_text
        if texts is None:
            texts = tuple([ipmod.text(a) for a in self.allowed_ips])
        return texts


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceState:
    """A device as it reports itself; ``private_key is None`` when it has none."""

    private_key: Key | None = field(default=None, repr=False)
    listen_port: int = 0
    peers: tuple[PeerState, ...] = ()

    def peer(self, public_key: Key) -> PeerState | None:
        for p in self.peers:
            if p.public_key == public_key:
                return p
        return None

    def __repr__(self) -> str:
        key = "None" if self.private_key is None else _HIDDEN
        return (
            f"DeviceState(private_key={key}, listen_port={self.listen_port}, peers={self.peers!r})"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerChange:
    """What to change on one peer; ``None`` fields are left as they are on the device."""

    public_key: Key
    remove: bool = False
    preshared_key: Key | None = field(default=None, repr=False)  # ZERO_KEY clears it
    endpoint: UDPAddr | None = None
    persistent_keepalive: int | None = None
    allowed_ips: tuple[IPNetwork, ...] | None = None  # replaces the peer's allowed IPs


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceChange:
    """The changes that bring a device to a config: removals first, then config order."""

    private_key: Key | None = field(default=None, repr=False)
    listen_port: int | None = None
    peers: tuple[PeerChange, ...] = ()


# --- Reading -----------------------------------------------------------------------------


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
    shown = _HIDDEN if key in _SECRET_KEYS else value
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
    return ipmod.text(network)


# --- Planning ----------------------------------------------------------------------------


def desired_endpoint(endpoint: Endpoint | None) -> UDPAddr | None:
    """The address WireGuard should use: the resolved IP (even when a DNS name exists)."""
    udp = None if endpoint is None else endpoint.udp
    if udp is None or udp.ip is None or udp.port <= 0:
        return None
    return UDPAddr(ipmod.normalise(udp.ip), udp.port, udp.zone)


def _masked(cidr: AllowedIP) -> IPNetwork:
    return cidr if isinstance(cidr, IPNetwork) else cidr.network


@dataclass(slots=True)
class _Want:
    preshared_key: Key = ZERO_KEY
    persistent_keepalive: int = 0
    endpoint: UDPAddr | None = None
    # The masked allowed IPs as texts (str() of the network: equal texts, equal networks),
    # and the config peer they come from, whose networks they are (see _networks).
    allowed_ips: list[str] = field(default_factory=list)
    peer: WireGuardPeer | None = None


def _wanted(config: WireGuardConfig) -> dict[Key, _Want]:
    """What a device configured from scratch with ``config`` holds (Kilo's ReplacePeers)."""
    wants: dict[Key, _Want] = {}
    owner: dict[str, Key] = {}
    previous = _MASKED.previous
    current: dict[int, tuple[WireGuardPeer, tuple[str, ...], bool]] = {}
    for peer in config.peers:
        want = wants.setdefault(peer.public_key, _Want())
        if peer.preshared_key is not None:
            want.preshared_key = peer.preshared_key
        want.persistent_keepalive = wireguard_keepalive(peer.persistent_keepalive)
        endpoint = desired_endpoint(peer.endpoint)
        if endpoint is not None:
            want.endpoint = endpoint
        for cidr in want.allowed_ips:  # ReplaceAllowedIPs
            del owner[cidr]
        want.allowed_ips = []
        want.peer = peer
        entry = previous.get(id(peer))
        if entry is None or entry[0] is not peer:
            masked = tuple([ipmod.text(_masked(cidr)) for cidr in peer.allowed_ips])
            entry = (peer, masked, len(set(masked)) == len(masked))
        current[id(peer)] = entry
        _, texts, unique = entry
        public_key = peer.public_key
        if unique and owner.keys().isdisjoint(texts):
            # The usual case: no allowed IP repeated here or claimed by another peer.
            owner.update(dict.fromkeys(texts, public_key))
            want.allowed_ips = list(texts)
            continue
        for cidr in texts:
            previous_owner = owner.get(cidr)
            if previous_owner is not None:
                if previous_owner == public_key:
                    continue
                wants[previous_owner].allowed_ips.remove(cidr)  # WireGuard moves it here
            owner[cidr] = public_key
            want.allowed_ips.append(cidr)
    _MASKED.previous = current
    return wants


class _MaskedTexts:
    """The previous config's peers' masked allowed IPs as texts, by peer object (``id``,
    checked with ``is``): the leader's plan hands out the same WireGuardPeer for a segment
    that did not change (``wireguard._PeerMemo``), and masking and printing an
    ``ipaddress`` value costs microseconds in Python. With each: whether its texts are
    unique. Only the last config is kept."""

    def __init__(self) -> None:
        self.previous: dict[int, tuple[WireGuardPeer, tuple[str, ...], bool]] = {}


_MASKED = _MaskedTexts()


def _networks(want: _Want) -> tuple[IPNetwork, ...]:
    """The networks of ``want.allowed_ips``, from the config peer they come from."""
    assert want.peer is not None
    by_text = {ipmod.text(n): n for n in map(_masked, want.peer.allowed_ips)}
    return tuple([by_text[text] for text in want.allowed_ips])


def stored_private_key(key: Key) -> Key:
    """The private key as WireGuard stores it: clamped, except that zero stays zero."""
    return key if key.is_zero else Key(clamp(key.raw))


def _same_key(a: Key | None, b: Key | None) -> bool:
    return (a or ZERO_KEY) == (b or ZERO_KEY)


def plan_changes(desired: WireGuardConfig, current: DeviceState) -> DeviceChange | None:
    """The changes that bring ``current`` to ``desired``; ``None`` when nothing differs."""
    wants = _wanted(desired)
    changes = [
        PeerChange(public_key=p.public_key, remove=True)
        for p in current.peers
        if p.public_key not in wants
    ]
    live = {p.public_key: p for p in current.peers}
    for public_key, want in wants.items():
        peer = live.get(public_key)
        if peer is None:
            changes.append(
                PeerChange(
                    public_key=public_key,
                    preshared_key=None if want.preshared_key.is_zero else want.preshared_key,
                    endpoint=want.endpoint,
                    persistent_keepalive=want.persistent_keepalive,
                    allowed_ips=_networks(want),
                )
            )
            continue
        texts = peer.allowed_ips_text
        allowed = (
            None
            if (len(texts) == len(want.allowed_ips) and list(texts) == want.allowed_ips)
            or set(want.allowed_ips) == set(texts)
            else _networks(want)
        )
        wanted_psk = want.preshared_key
        psk = (
            None
            if (wanted_psk is ZERO_KEY and peer.preshared_key is None)
            or _same_key(wanted_psk, peer.preshared_key)
            else wanted_psk
        )
        keepalive: int | None = want.persistent_keepalive
        if keepalive == peer.persistent_keepalive:
            keepalive = None
        endpoint = want.endpoint
        if endpoint is not None and endpoint == peer.endpoint:
            endpoint = None
        if allowed is None and psk is None and endpoint is None and keepalive is None:
            continue  # nothing differs
        changes.append(
            PeerChange(
                public_key=public_key,
                preshared_key=psk,
                endpoint=endpoint,
                persistent_keepalive=keepalive,
                allowed_ips=allowed,
            )
        )
    private_key = desired.private_key
    if private_key is not None and _same_key(stored_private_key(private_key), current.private_key):
        private_key = None
    listen_port: int | None = desired.listen_port
    if not listen_port or listen_port == current.listen_port:
        listen_port = None
    if private_key is None and listen_port is None and not changes:
        return None
    return DeviceChange(private_key=private_key, listen_port=listen_port, peers=tuple(changes))


def render_uapi(change: DeviceChange) -> str:
    """The lines of a UAPI ``set=1`` request, without ``set=1`` and the closing blank line."""
    lines: list[str] = []
    if change.private_key is not None:
        lines.append(f"private_key={change.private_key.raw.hex()}")
    if change.listen_port is not None:
        lines.append(f"listen_port={change.listen_port}")
    for peer in change.peers:
        lines.append(f"public_key={peer.public_key.raw.hex()}")
        if peer.remove:
            lines.append("remove=true")
            continue
        if peer.preshared_key is not None:
            lines.append(f"preshared_key={peer.preshared_key.raw.hex()}")
        if peer.endpoint is not None:
            lines.append(f"endpoint={peer.endpoint}")
        if peer.persistent_keepalive is not None:
            lines.append(f"persistent_keepalive_interval={peer.persistent_keepalive}")
        if peer.allowed_ips is not None:
            lines.append("replace_allowed_ips=true")
            lines.extend(f"allowed_ip={cidr}" for cidr in peer.allowed_ips)
    return "".join(line + "\n" for line in lines)


def plan_update(desired: WireGuardConfig, current: DeviceState) -> str | None:
    """A UAPI ``set=1`` body (its lines) that brings ``current`` to ``desired``, or ``None``."""
    change = plan_changes(desired, current)
    return None if change is None else render_uapi(change)


def redact(uapi: str) -> str:
    """UAPI text with private and preshared keys hidden, for logs and error messages."""
    lines = []
    for line in uapi.split("\n"):
        key, equals, _ = line.partition("=")
        lines.append(f"{key}={_HIDDEN}" if equals and key in _SECRET_KEYS else line)
    return "\n".join(lines)


# --- NAT discovery -----------------------------------------------------------------------


def discovered_endpoints(
    current: DeviceState, nodes: Sequence[Node], peers: Sequence[Peer]
) -> dict[str, UDPAddr | None]:
    """Kilo's ``discoverNATEndpoints`` (pass the ready nodes and peers).

    For every node with a non-zero keepalive and every Kilo Peer that the device has as a
    peer and has completed a handshake with: base64 key -> the endpoint the device holds.
    Like Kilo, an endpoint the device lacks is reported as ``None`` (a device that completed
    a handshake always has one).
    """
    live: Mapping[str, PeerState] = {str(p.public_key): p for p in current.peers}
    result: dict[str, UDPAddr | None] = {}
    for node in nodes:
        if node.persistent_keepalive == 0:
            continue
        state = live.get(str(node.key))
        # Kilo skips a node without a handshake: its annotated endpoint is better than none.
        if state is not None and state.last_handshake is not None:
            result[str(node.key)] = state.endpoint
    for peer in peers:
        state = live.get(str(peer.public_key))
        if state is not None and state.last_handshake is not None:
            result[str(peer.public_key)] = state.endpoint
    return result
