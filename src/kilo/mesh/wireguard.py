"""WireGuard configurations derived from a topology, and their INI text.

Pure. The three generators are Kilo's ``Conf`` (a node's own device), ``AsPeer`` (the local
location as a peer of some other interface) and ``PeerConf`` (what a Kilo Peer should run).
The text is byte-exact with Kilo's renderer, so ``wg setconf`` and existing scripts accept it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from kilo.mesh import ip as ipmod
from kilo.mesh.endpoint import Endpoint
from kilo.mesh.ip import IPInterface, IPNetwork
from kilo.mesh.ip import text as ip_text
from kilo.mesh.keys import Key
from kilo.mesh.model import wireguard_keepalive
from kilo.mesh.topology import Segment, Topology

AllowedIP = IPInterface | IPNetwork


@dataclass(frozen=True, slots=True, kw_only=True)
class WireGuardPeer:
    public_key: Key
    allowed_ips: tuple[AllowedIP, ...] = ()
    endpoint: Endpoint | None = None
    persistent_keepalive: int = 0
    preshared_key: Key | None = None
    name: str = ""  # what this peer stands for (a segment key or a Peer name); not rendered
    # The text of each allowed IP when node_config had it at hand (a segment's); rendering
    # prints every one. Not part of the value.
    _allowed_ips_text: tuple[str, ...] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def allowed_ips_text(self) -> tuple[str, ...]:
        """``str()`` of each of :attr:`allowed_ips`."""
        return ipmod.texts(self._allowed_ips_text, self.allowed_ips)


@dataclass(frozen=True, slots=True, kw_only=True)
class WireGuardConfig:
    """A device configuration; ``private_key is None`` means no ``[Interface]`` section."""

    private_key: Key | None = None
    listen_port: int = 0
    peers: tuple[WireGuardPeer, ...] = ()

    def peer(self, public_key: Key) -> WireGuardPeer | None:
        for p in self.peers:
            if p.public_key == public_key:
                return p
        return None


# One peer a segment: 5000 in a 5000-node full mesh. The dataclass's __init__ costs 1.5 us
# a peer (keyword arguments, then one object.__setattr__ a field of a frozen class); filling
# the slots directly costs a third of that and gives the same value (every field is set;
# tests/unit/test_fast_values.py compares it with the constructor's).
_new = object.__new__
_PEER_FIELDS = (
    "public_key",
    "allowed_ips",
    "endpoint",
    "persistent_keepalive",
    "preshared_key",
    "name",
    "_allowed_ips_text",
)
(
    _SET_PUBLIC_KEY,
    _SET_ALLOWED_IPS,
    _SET_ENDPOINT,
    _SET_KEEPALIVE,
    _SET_PSK,
    _SET_NAME,
    _SET_ALLOWED_IPS_TEXT,
) = (WireGuardPeer.__dict__[name].__set__ for name in _PEER_FIELDS)


def _make_peer(
    name: str,
    public_key: Key,
    allowed_ips: tuple[AllowedIP, ...],
    endpoint: Endpoint | None,
    persistent_keepalive: int,
    *,
    allowed_ips_text: tuple[str, ...] | None,
) -> WireGuardPeer:
    """``WireGuardPeer(...)`` without a preshared key, faster; ``allowed_ips_text``, if
    given, is the text of each of ``allowed_ips``."""
    peer = _new(WireGuardPeer)
    _SET_PUBLIC_KEY(peer, public_key)
    _SET_ALLOWED_IPS(peer, allowed_ips)
    _SET_ENDPOINT(peer, endpoint)
    _SET_KEEPALIVE(peer, persistent_keepalive)
    _SET_PSK(peer, None)
    _SET_NAME(peer, name)
    _SET_ALLOWED_IPS_TEXT(peer, allowed_ips_text)
    return peer


def node_config(t: Topology) -> WireGuardConfig:
    """Kilo's ``Conf``: the config of the local (leader) node's own device."""
    keepalive = t.persistent_keepalive
    update = t.update_endpoint
    previous = _SEGMENT_PEERS.previous
    current: dict[str, tuple[Segment, Endpoint | None, int, WireGuardPeer]] = {}
    peers: list[WireGuardPeer] = []
    for s in t.segments:
        # In a cross mesh the nodes of the own location are reached over the underlay.
        if t.in_own_location(s):
            continue
        endpoint = update(s.endpoint, s.key, s.persistent_keepalive)
        entry = previous.get(s.location)
        if (
            entry is not None
            and entry[0] is s
            and entry[2] == keepalive
            and (entry[1] is endpoint or entry[1] == endpoint)
        ):
            peer = entry[3]
        else:
            peer = _make_peer(
                s.location,
                s.key,
                s.allowed_ips + s.allowed_location_ips,
                endpoint,
                keepalive,
                allowed_ips_text=s.allowed_ips_text
                + tuple([ip_text(a) for a in s.allowed_location_ips]),
            )
        current[s.location] = (s, endpoint, keepalive, peer)
        peers.append(peer)
    _SEGMENT_PEERS.previous = current
    peers.extend(
        WireGuardPeer(
            name=p.name,
            allowed_ips=p.allowed_ips,
            persistent_keepalive=t.persistent_keepalive,
            preshared_key=p.preshared_key,
            public_key=p.public_key,
            endpoint=t.update_endpoint(p.endpoint, p.public_key, p.persistent_keepalive),
        )
        for p in t.peers
    )
    return WireGuardConfig(private_key=t.key, listen_port=t.port, peers=tuple(peers))


class _PeerMemo:
    """The previous node config's peer of each segment, reused while the segment is the
    same object (``topology._SegmentMemo`` hands out unchanged segments again) and the
    endpoint and keepalive are equal: the same WireGuardPeer lets the device diff reuse
    what it derived from it (``wgpeers._MaskedTexts``). Only the last config is kept."""

    def __init__(self) -> None:
        # segment key -> (segment, endpoint, keepalive, peer)
        self.previous: dict[str, tuple[Segment, Endpoint | None, int, WireGuardPeer]] = {}


_SEGMENT_PEERS = _PeerMemo()


def location_as_peer(t: Topology) -> WireGuardPeer | None:
    """Kilo's ``AsPeer``: the local location as one peer (no allowed-location IPs, no NAT)."""
    segment = t.local_segment
    if segment is None:
        return None
    return WireGuardPeer(
        name=segment.location,
        allowed_ips=segment.allowed_ips,
        public_key=segment.key,
        endpoint=segment.endpoint,
    )


def peer_config(t: Topology, name: str) -> WireGuardConfig:
    """Kilo's ``PeerConf``: the config the Kilo Peer ``name`` should run (no interface)."""
    own = next((p for p in t.peers if p.name == name), None)
    keepalive = 0 if own is None else own.persistent_keepalive
    psk = None if own is None else own.preshared_key
    peers = [
        WireGuardPeer(
            name=s.location,
            allowed_ips=s.allowed_ips + s.allowed_location_ips,
            persistent_keepalive=keepalive,
            preshared_key=psk,
            public_key=s.key,
            endpoint=t.update_endpoint(s.endpoint, s.key, s.persistent_keepalive),
        )
        for s in t.segments
    ]
    peers.extend(
        WireGuardPeer(
            name=p.name,
            allowed_ips=p.allowed_ips,
            persistent_keepalive=keepalive,
            public_key=p.public_key,
            endpoint=t.update_endpoint(p.endpoint, p.public_key, p.persistent_keepalive),
        )
        for p in t.peers
        if p.name != name
    )
    return WireGuardConfig(peers=tuple(peers))


def with_extra_allowed_ips(peer: WireGuardPeer, extra: Iterable[AllowedIP]) -> WireGuardPeer:
    """``peer`` with ``extra`` allowed IPs appended; repeats (by CIDR text) are dropped."""
    seen: set[str] = set()
    allowed: list[AllowedIP] = []
    for cidr in (*peer.allowed_ips, *extra):
        if str(cidr) not in seen:
            seen.add(str(cidr))
            allowed.append(cidr)
    return WireGuardPeer(
        name=peer.name,
        public_key=peer.public_key,
        allowed_ips=tuple(allowed),
        endpoint=peer.endpoint,
        persistent_keepalive=peer.persistent_keepalive,
        preshared_key=peer.preshared_key,
    )


def render(config: WireGuardConfig) -> str:
    """The INI text of ``config``, byte-exact with Kilo's ``Conf.Bytes``.

    Sections are separated by an empty line: each section's lines end with a newline, and
    the sections are joined with one more.
    """
    sections = [_render_peer(peer) for peer in config.peers]
    if config.private_key is not None:
        interface = "[Interface]\n"
        if not config.private_key.is_zero:
            interface += f"PrivateKey = {config.private_key}\n"
        sections.insert(0, interface + f"ListenPort = {config.listen_port}\n")
    return "\n".join(sections)


def render_peers(peers: Sequence[WireGuardPeer]) -> str:
    return render(WireGuardConfig(peers=tuple(peers)))


def _render_peer(peer: WireGuardPeer) -> str:
    text = "[Peer]\n"
    if peer.allowed_ips:
        text += "AllowedIPs = " + ", ".join(peer.allowed_ips_text) + "\n"
    endpoint = "" if peer.endpoint is None else str(peer.endpoint)
    if endpoint:
        text += f"Endpoint = {endpoint}\n"
    text += f"PersistentKeepalive = {wireguard_keepalive(peer.persistent_keepalive)}\n"
    if peer.preshared_key is not None and not peer.preshared_key.is_zero:
        text += f"PresharedKey = {peer.preshared_key}\n"
    if not peer.public_key.is_zero:
        text += f"PublicKey = {peer.public_key}\n"
    return text
