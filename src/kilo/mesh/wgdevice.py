"""A live WireGuard device: its state, the diff that brings it to a config, its UAPI text.

Pure. No I/O: the adapters read the device (``get=1``, read by :mod:`kilo.mesh.uapi`, or
netlink) and write the changes this module plans. Keys never appear in a ``repr`` or an
error message.

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

Between full applies the leader plans on the state its own last write left
(:func:`state_after`), with a config most of whose WireGuardPeer objects are the last
one's. Such a state carries what the plan derived (hidden, not part of its value: see
``_Basis``), and the next plan compares only the peer objects that are new: the same
change as comparing them all, at the cost of what changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from kilo.mesh import ip as ipmod
from kilo.mesh.endpoint import Endpoint, UDPAddr
from kilo.mesh.ip import IPNetwork
from kilo.mesh.keys import ZERO_KEY, Key, clamp
from kilo.mesh.model import Node, Peer, wireguard_keepalive
from kilo.mesh.wireguard import AllowedIP, WireGuardConfig, WireGuardPeer

HIDDEN = "(hidden)"  # a key in a repr, a log line or an error message


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
class DeviceState:
    """A device as it reports itself; ``private_key is None`` when it has none."""

    private_key: Key | None = field(default=None, repr=False)
    listen_port: int = 0
    peers: tuple[PeerState, ...] = ()
    # What plan_changes derived from a config this state is in sync with (_Basis), so that
    # the next plan against this state costs what changed. Not part of the value; dropped
    # by replace().
    _basis: _Basis | None = field(default=None, init=False, repr=False, compare=False)

    def peer(self, public_key: Key) -> PeerState | None:
        for p in self.peers:
            if p.public_key == public_key:
                return p
        return None

    def __repr__(self) -> str:
        key = "None" if self.private_key is None else HIDDEN
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
    # The state it was planned against, and how the basis of the state after it follows
    # (state_after). Not part of the value.
    _after: tuple[DeviceState, _Basis | _Delta] | None = field(
        default=None, init=False, repr=False, compare=False
    )


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


def _configure(want: _Want, peer: WireGuardPeer) -> None:
    """``want`` once ``peer``'s entry is applied, but for its allowed IPs."""
    if peer.preshared_key is not None:
        want.preshared_key = peer.preshared_key
    want.persistent_keepalive = wireguard_keepalive(peer.persistent_keepalive)
    endpoint = desired_endpoint(peer.endpoint)
    if endpoint is not None:
        want.endpoint = endpoint
    want.peer = peer


def _masked_texts(peer: WireGuardPeer) -> tuple[tuple[str, ...], bool]:
    """``peer``'s masked allowed IPs as texts, and whether no text is there twice."""
    texts = tuple([ipmod.text(_masked(cidr)) for cidr in peer.allowed_ips])
    return texts, len(set(texts)) == len(texts)


def _wanted(config: WireGuardConfig) -> tuple[dict[Key, _Want], dict[str, Key], bool]:
    """What a device configured from scratch with ``config`` holds (Kilo's ReplacePeers),
    the peer holding each allowed IP (text) there, and whether ``config`` is *plain*: no
    public key twice, no allowed IP listed twice (by one peer or two). In a plain config
    each peer's want is its entry's alone (what :func:`_plan_from` relies on)."""
    wants: dict[Key, _Want] = {}
    owner: dict[str, Key] = {}
    plain = True
    previous = _MASKED.previous
    current: dict[int, tuple[WireGuardPeer, tuple[str, ...], bool]] = {}
    for peer in config.peers:
        public_key = peer.public_key
        want = wants.get(public_key)
        if want is None:
            want = wants[public_key] = _Want()
        else:
            plain = False
            for cidr in want.allowed_ips:  # ReplaceAllowedIPs
                del owner[cidr]
            want.allowed_ips = []
        _configure(want, peer)
        entry = previous.get(id(peer))
        if entry is None or entry[0] is not peer:
            entry = (peer, *_masked_texts(peer))
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


def _peer_change(public_key: Key, want: _Want, peer: PeerState | None) -> PeerChange | None:
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
        return None  # nothing differs
    return PeerChange(
        public_key=public_key,
        preshared_key=psk,
        endpoint=endpoint,
        persistent_keepalive=keepalive,
        allowed_ips=allowed,
    )


def plan_changes(desired: WireGuardConfig, current: DeviceState) -> DeviceChange | None:
    """The changes that bring ``current`` to ``desired``; ``None`` when nothing differs.

    When ``current`` is the state an earlier plan's change left (:func:`state_after`) or
    one an earlier plan found nothing to change on, and ``desired`` shares most of its
    WireGuardPeer objects with that plan's config (the leader's plan hands out the same
    object for a segment that did not change), only the peers that are not the same
    objects are compared (:func:`_plan_from`): the same result, at the cost of what
    changed (issue 17).
    """
    basis = current._basis
    planned = None if basis is None else _plan_from(basis, desired)
    after: _Basis | _Delta | None
    if planned is None:
        changes, after = _plan_all(desired, current)
    else:
        changes, after = planned
    private_key = desired.private_key
    if private_key is not None and _same_key(stored_private_key(private_key), current.private_key):
        private_key = None
    listen_port: int | None = desired.listen_port
    if not listen_port or listen_port == current.listen_port:
        listen_port = None
    if private_key is None and listen_port is None and not changes:
        if after is not None:  # current is in sync with desired: plan the next from that
            object.__setattr__(current, "_basis", _settled(current, after))
        return None
    change = DeviceChange(private_key=private_key, listen_port=listen_port, peers=tuple(changes))
    if after is not None:
        object.__setattr__(change, "_after", (current, after))
    return change


def _plan_all(
    desired: WireGuardConfig, current: DeviceState
) -> tuple[list[PeerChange], _Basis | None]:
    """Every wanted peer compared with the live one; with the basis of the state once
    the changes are written when ``desired`` is plain (its ``live`` is ``current``'s)."""
    wants, owner, plain = _wanted(desired)
    changes = [
        PeerChange(public_key=p.public_key, remove=True)
        for p in current.peers
        if p.public_key not in wants
    ]
    live = {p.public_key: p for p in current.peers}
    for public_key, want in wants.items():
        change = _peer_change(public_key, want, live.get(public_key))
        if change is not None:
            changes.append(change)
    if not plain:
        return changes, None
    peers = desired.peers  # in a plain config, one object a key
    return changes, _Basis(dict(zip(map(id, peers), peers, strict=True)), wants, owner, live)


# --- Planning what changed --------------------------------------------------------------


class _Basis:
    """A plain config (:func:`_wanted`) that a device state is in sync with: planning that
    config against the state changes no peer (the state holds exactly its peers, each as
    wanted). What the next plan against the state needs from it:

    * ``entries``: the config's peer objects by ``id`` (kept alive here, so an ``id`` is
      theirs); ``wants``: what each public key wants (:func:`_wanted`: its config peer,
      and its masked allowed IPs as texts);
    * ``owner``: the peer holding each allowed IP (text), the config's and the state's
      alike (in sync: each live peer holds its wanted set, and no text is wanted twice);
    * ``live``: the state's peers by public key, in the state's order.

    A basis belongs to one state (``DeviceState._basis``). :func:`state_after` moves its
    dicts to the state after the change (the old state loses it: its next plan compares
    every peer); nothing else changes them once the basis is attached. ``taken``: a
    basis carried by a change (fresh from :func:`_plan_all`) was given to a state.
    """

    __slots__ = ("entries", "live", "owner", "taken", "wants")

    def __init__(
        self,
        entries: dict[int, WireGuardPeer],
        wants: dict[Key, _Want],
        owner: dict[str, Key],
        live: dict[Key, PeerState],
    ) -> None:
        self.entries = entries
        self.wants = wants
        self.owner = owner
        self.live = live
        self.taken = False


@dataclass(slots=True)
class _Delta:
    """A plain config as the differences from ``base``'s: what its peer objects that are
    not ``base``'s want, in config order, and ``base``'s peer objects that it lacks."""

    base: _Basis
    fresh: list[_Want]
    dropped: list[WireGuardPeer]

    def advance(self) -> _Basis:
        """A new basis of the new config from ``base``'s dicts (moved, not copied). Its
        ``live`` and ``owner`` are ``base``'s: the caller keeps them (state_after updates
        them with each write; a plan that changes nothing leaves the state, and so the
        holders of its allowed IPs, as they are)."""
        base = self.base
        entries, wants = base.entries, base.wants
        for peer in self.dropped:
            del entries[id(peer)]
            del wants[peer.public_key]
        for want in self.fresh:
            fresh = want.peer
            assert fresh is not None
            entries[id(fresh)] = fresh
            wants[fresh.public_key] = want
        return _Basis(entries, wants, base.owner, base.live)


def _plan_from(basis: _Basis, desired: WireGuardConfig) -> tuple[list[PeerChange], _Delta] | None:
    """:func:`_plan_all`'s changes, comparing only the peers of ``desired`` that are not
    ``basis``'s objects; ``None`` when ``desired`` is not plain (then every peer's want
    may depend on the others': plan them all).

    A peer object of the basis's config wants what it wanted there (in a plain config a
    peer's want is its own entry's), and the state holds that: nothing to change. The
    other peers are compared with the live ones as :func:`_plan_all` does; the basis's
    peers that ``desired`` lacks are removed unless a new object has their key. The
    order is :func:`_plan_all`'s: removals in the state's order, then config order.
    """
    entries = basis.entries
    peers = desired.peers
    ids = set(map(id, peers))
    if len(ids) != len(peers):
        return None  # a peer object twice: its key twice
    fresh = [p for p in peers if id(p) not in entries]
    dropped = (
        []
        if len(peers) - len(fresh) == len(entries)
        else [entries[i] for i in entries.keys() - ids]
    )
    held, owner = basis.wants, basis.owner
    gone = {p.public_key for p in dropped}
    released: set[str] = set()
    for p in dropped:
        released.update(held[p.public_key].allowed_ips)
    added: dict[Key, _Want] = {}
    claimed: set[str] = set()
    for p in fresh:
        public_key = p.public_key
        if public_key in added or (public_key in held and public_key not in gone):
            return None  # the key twice
        texts, unique = _masked_texts(p)
        if not unique or not claimed.isdisjoint(texts):
            return None
        for text in texts:
            if text in owner and text not in released:
                return None  # held by a peer object that stays
        claimed.update(texts)
        want = added[public_key] = _Want()
        _configure(want, p)
        want.allowed_ips = list(texts)
    live = basis.live
    removed = gone - added.keys()
    changes = (
        [PeerChange(public_key=k, remove=True) for k in live if k in removed] if removed else []
    )
    for public_key, want in added.items():
        change = _peer_change(public_key, want, live.get(public_key))
        if change is not None:
            changes.append(change)
    return changes, _Delta(basis, list(added.values()), dropped)


def _settled(state: DeviceState, after: _Basis | _Delta) -> _Basis:
    """The basis of ``state`` when the plan that gave ``after`` changed nothing on it."""
    if isinstance(after, _Delta):
        return after.advance()  # a new object: changes planned on the old one fail
    after.taken = True
    return after


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


# --- The device after a write ----------------------------------------------------------


def state_after(state: DeviceState, change: DeviceChange) -> DeviceState:
    """``state`` after ``change`` was written (``render_uapi`` / netlink), by WireGuard's
    rules: the leader diffs its next incremental apply against this instead of reading the
    whole device again (issue 17).

    In the order of the UAPI text: the private key (stored clamped; zero is none; a peer
    holding the device's own public key goes), the listen port, then each peer: removed,
    or created when new (appended, with no handshake and no traffic), and its preshared key
    (zero clears it), endpoint, keepalive and allowed IPs (replaced; an allowed IP has one
    owner, so another peer that held it loses it) set where the change says so. A peer
    line with the device's own public key is ignored. Handshakes and traffic counters of
    existing peers are kept as they were read.

    When ``change`` was planned against ``state`` (:func:`plan_changes`), the result is in
    sync with that plan's config, and carries what the next plan needs to compare only
    what changes next; when ``state`` had that already (an earlier plan's), it is moved
    here rather than rebuilt: the cost is the change's. Then ``state`` loses it (its next
    plan, if any, compares every peer).
    """
    private_key = state.private_key
    if change.private_key is not None:
        raw = change.private_key
        private_key = None if raw.is_zero else stored_private_key(raw)
    # The basis of the state after the change (_Basis), or the delta that makes it of
    # state's (_Delta), whose dicts of the live peers and their allowed IPs are used here.
    after = change._after
    pending: _Basis | _Delta | None = None
    peers: dict[Key, PeerState] | None = None
    # Allowed IP (as text: equal texts are equal networks) -> the peer holding it, built
    # when an allowed IP is first set: texts hash fast, and the parser's are at hand.
    owner: dict[str, Key] | None = None
    if after is not None and after[0] is state:
        pending = after[1]
        if isinstance(pending, _Delta):
            if state._basis is pending.base:
                object.__setattr__(state, "_basis", None)  # its dicts are the result's
                peers, owner = pending.base.live, pending.base.owner
            else:
                pending = None  # planned on a basis that state has no more
        elif pending.taken:
            pending = None  # given to the state after an earlier call
        else:
            pending.taken = True
    if peers is None:
        peers = {p.public_key: p for p in state.peers}
    own = (
        None
        if private_key is None or not (change.peers or change.private_key is not None)
        else private_key.public_key()
    )
    if change.private_key is not None and own is not None:
        mine = peers.pop(own, None)  # a peer cannot be the device itself
        if mine is not None and owner is not None:
            for text in mine.allowed_ips_text:
                if owner.get(text) == own:
                    del owner[text]
    for pc in change.peers:
        key = pc.public_key
        if key == own:
            continue
        if pc.remove:
            removed = peers.pop(key, None)
            if removed is not None and owner is not None:
                for text in removed.allowed_ips_text:
                    if owner.get(text) == key:
                        del owner[text]
            continue
        peer = peers.get(key)
        if peer is None:
            peer = PeerState(public_key=key)
        fields: dict[str, object] = {}
        if pc.preshared_key is not None:
            fields["preshared_key"] = None if pc.preshared_key.is_zero else pc.preshared_key
        if pc.endpoint is not None:
            fields["endpoint"] = pc.endpoint
        if pc.persistent_keepalive is not None:
            fields["persistent_keepalive"] = pc.persistent_keepalive
        texts: tuple[str, ...] | None = None
        if pc.allowed_ips is not None:
            if owner is None:
                owner = {t: p.public_key for p in peers.values() for t in p.allowed_ips_text}
            for text in peer.allowed_ips_text:  # replace_allowed_ips
                if owner.get(text) == key:
                    del owner[text]
            allowed: dict[str, IPNetwork] = {}
            for network in pc.allowed_ips:
                text = ipmod.text(network)
                previous = owner.get(text)
                if previous is not None and previous != key:
                    peers[previous] = _without(peers[previous], text)
                allowed.pop(text, None)  # listed twice: the later place
                allowed[text] = network
                owner[text] = key
            fields["allowed_ips"] = tuple(allowed.values())
            texts = tuple(allowed)
        if fields or key not in peers:
            known = peer._allowed_ips_text if texts is None else texts
            peer = replace(peer, **fields)  # type: ignore[arg-type]
            object.__setattr__(peer, "_allowed_ips_text", known)  # replace() drops it
        peers[key] = peer
    listen_port = state.listen_port if change.listen_port is None else change.listen_port
    result = DeviceState(
        private_key=private_key, listen_port=listen_port, peers=tuple(peers.values())
    )
    if pending is not None:
        # A delta's owner (the holders of the allowed IPs) followed the writes above.
        basis = pending.advance() if isinstance(pending, _Delta) else pending
        basis.live = peers
        # A peer with the device's own key is never written (skipped above): the result
        # is not in sync with a config that has one.
        if own is None or own not in basis.wants:
            object.__setattr__(result, "_basis", basis)
    return result


def _without(peer: PeerState, text: str) -> PeerState:
    """``peer`` without the allowed IP whose text is ``text`` (another peer took it)."""
    texts = peer.allowed_ips_text
    keep = [i for i, t in enumerate(texts) if t != text]
    after = replace(peer, allowed_ips=tuple([peer.allowed_ips[i] for i in keep]))
    object.__setattr__(after, "_allowed_ips_text", tuple([texts[i] for i in keep]))
    return after


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
