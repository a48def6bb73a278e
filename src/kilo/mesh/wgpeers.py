"""The peers of a WireGuard device: one peer's live state, the change to it, and what a
config wants of each peer, compared with the device's.

Pure. No I/O. The two plans of :mod:`kilo.mesh.wgdevice` share this comparison: the full
one (every peer of the config) and the one on the state the last write left
(:mod:`kilo.mesh.wgincremental`: only the peer objects that are new). It is a module of its
own so that both can import it without importing each other; it imports neither.

What a config wants is what Kilo's ``ReplacePeers`` would leave on the device
(:func:`wanted`); a live peer is touched only where it differs from that
(:func:`peer_change`): its allowed IPs compared masked and as a set (pitfall 6), its
preshared key (``None`` is the zero key), its keepalive, and its endpoint only when the
config has a resolved one (pitfall 5). Keys never appear in a ``repr``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kilo.mesh import ip as ipmod
from kilo.mesh.endpoint import Endpoint, UDPAddr
from kilo.mesh.ip import IPNetwork
from kilo.mesh.keys import ZERO_KEY, Key
from kilo.mesh.model import wireguard_keepalive
from kilo.mesh.wireguard import AllowedIP, WireGuardConfig, WireGuardPeer


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
        return ipmod.texts(self._allowed_ips_text, self.allowed_ips)


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerChange:
    """What to change on one peer; ``None`` fields are left as they are on the device."""

    public_key: Key
    remove: bool = False
    preshared_key: Key | None = field(default=None, repr=False)  # ZERO_KEY clears it
    endpoint: UDPAddr | None = None
    persistent_keepalive: int | None = None
    allowed_ips: tuple[IPNetwork, ...] | None = None  # replaces the peer's allowed IPs


def desired_endpoint(endpoint: Endpoint | None) -> UDPAddr | None:
    """The address WireGuard should use: the resolved IP (even when a DNS name exists)."""
    udp = None if endpoint is None else endpoint.udp
    if udp is None or udp.ip is None or udp.port <= 0:
        return None
    return UDPAddr(ipmod.normalise(udp.ip), udp.port, udp.zone)


def _masked(cidr: AllowedIP) -> IPNetwork:
    return cidr if isinstance(cidr, IPNetwork) else cidr.network


@dataclass(slots=True)
class Want:
    """What the device should hold for one public key."""

    preshared_key: Key = ZERO_KEY
    persistent_keepalive: int = 0
    endpoint: UDPAddr | None = None
    # The masked allowed IPs as texts (str() of the network: equal texts, equal networks),
    # and the config peer they come from, whose networks they are (see _networks).
    allowed_ips: list[str] = field(default_factory=list)
    peer: WireGuardPeer | None = None


def configure(want: Want, peer: WireGuardPeer) -> None:
    """``want`` once ``peer``'s entry is applied, but for its allowed IPs."""
    if peer.preshared_key is not None:
        want.preshared_key = peer.preshared_key
    want.persistent_keepalive = wireguard_keepalive(peer.persistent_keepalive)
    endpoint = desired_endpoint(peer.endpoint)
    if endpoint is not None:
        want.endpoint = endpoint
    want.peer = peer


def masked_texts(peer: WireGuardPeer) -> tuple[tuple[str, ...], bool]:
    """``peer``'s masked allowed IPs as texts, and whether no text is there twice."""
    texts = tuple([ipmod.text(_masked(cidr)) for cidr in peer.allowed_ips])
    return texts, len(set(texts)) == len(texts)


def wanted(config: WireGuardConfig) -> tuple[dict[Key, Want], dict[str, Key], bool]:
    """What a device configured from scratch with ``config`` holds (Kilo's ReplacePeers),
    the peer holding each allowed IP (text) there, and whether ``config`` is *plain*: no
    public key twice, no allowed IP listed twice (by one peer or two). In a plain config
    each peer's want is its entry's alone (what :func:`kilo.mesh.wgincremental.plan_from`
    relies on)."""
    wants: dict[Key, Want] = {}
    owner: dict[str, Key] = {}
    plain = True
    previous = _MASKED.previous
    current: dict[int, tuple[WireGuardPeer, tuple[str, ...], bool]] = {}
    for peer in config.peers:
        public_key = peer.public_key
        want = wants.get(public_key)
        if want is None:
            want = wants[public_key] = Want()
        else:
            plain = False
            for cidr in want.allowed_ips:  # ReplaceAllowedIPs
                del owner[cidr]
            want.allowed_ips = []
        configure(want, peer)
        entry = previous.get(id(peer))
        if entry is None or entry[0] is not peer:
            entry = (peer, *masked_texts(peer))
        current[id(peer)] = entry
        _, texts, unique = entry
        if unique and owner.keys().isdisjoint(texts):
            # The usual case: no allowed IP repeated here or claimed by another peer.
            owner.update(dict.fromkeys(texts, public_key))
            want.allowed_ips = list(texts)
            continue
        plain = False
        for cidr in texts:
            previous_owner = owner.get(cidr)
            if previous_owner is not None:
                if previous_owner == public_key:
                    continue
                wants[previous_owner].allowed_ips.remove(cidr)  # WireGuard moves it here
            owner[cidr] = public_key
            want.allowed_ips.append(cidr)
    _MASKED.previous = current
    return wants, owner, plain


class _MaskedTexts:
    """The previous config's peers' masked allowed IPs as texts, by peer object (``id``,
    checked with ``is``): the leader's plan hands out the same WireGuardPeer for a segment
    that did not change (``wireguard._PeerMemo``), and masking and printing an
    ``ipaddress`` value costs microseconds in Python. With each: whether its texts are
    unique. Only the last config is kept."""

    def __init__(self) -> None:
        self.previous: dict[int, tuple[WireGuardPeer, tuple[str, ...], bool]] = {}


_MASKED = _MaskedTexts()


def _networks(want: Want) -> tuple[IPNetwork, ...]:
    """The networks of ``want.allowed_ips``, from the config peer they come from."""
    assert want.peer is not None
    by_text = {ipmod.text(n): n for n in map(_masked, want.peer.allowed_ips)}
    return tuple([by_text[text] for text in want.allowed_ips])


def same_key(a: Key | None, b: Key | None) -> bool:
    """Whether two keys are equal, ``None`` being the zero key."""
    return (a or ZERO_KEY) == (b or ZERO_KEY)


def peer_change(public_key: Key, want: Want, peer: PeerState | None) -> PeerChange | None:
    """What brings the live ``peer`` (``None``: absent) to ``want``; ``None``: nothing."""
    if peer is None:
        return PeerChange(
            public_key=public_key,
            preshared_key=None if want.preshared_key.is_zero else want.preshared_key,
            endpoint=want.endpoint,
            persistent_keepalive=want.persistent_keepalive,
            allowed_ips=_networks(want),
        )
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
        or same_key(wanted_psk, peer.preshared_key)
        else wanted_psk
    )
    keepalive: int | None = want.persistent_keepalive
    if keepalive == peer.persistent_keepalive:
        keepalive = None
    endpoint = want.endpoint
    if endpoint is not None and endpoint == peer.endpoint:
        endpoint = None
    if allowed is None and psk is None and endpoint is None and keepalive is None:
        return None  # nothing differs
    return PeerChange(
        public_key=public_key,
        preshared_key=psk,
        endpoint=endpoint,
        persistent_keepalive=keepalive,
        allowed_ips=allowed,
    )
