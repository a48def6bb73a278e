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
one's. Such a state carries what the plan derived (hidden, not part of its value), and the
next plan compares only the peer objects that are new: the same change as comparing them
all, at the cost of what changed.

This is the public home of all of it; two parts live in modules of their own, which import
nothing from here: :mod:`kilo.mesh.wgpeers` (one peer's state and change, and the per-peer
comparison both plans share; :class:`PeerState` and :class:`PeerChange` are imported from
here) and :mod:`kilo.mesh.wgincremental` (the plan on the state the last write left).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from kilo.mesh import ip as ipmod
from kilo.mesh import wgincremental, wgpeers
from kilo.mesh.endpoint import UDPAddr
from kilo.mesh.ip import IPNetwork
from kilo.mesh.keys import Key, clamp
from kilo.mesh.model import Node, Peer
from kilo.mesh.wgincremental import Basis, Delta
from kilo.mesh.wgpeers import PeerChange, PeerState, desired_endpoint
from kilo.mesh.wireguard import WireGuardConfig

__all__ = [
    "HIDDEN",
    "DeviceChange",
    "DeviceState",
    "PeerChange",
    "PeerState",
    "desired_endpoint",
    "discovered_endpoints",
    "plan_changes",
    "plan_update",
    "render_uapi",
    "state_after",
    "stored_private_key",
]

HIDDEN = "(hidden)"  # a key in a repr, a log line or an error message


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceState:
    """A device as it reports itself; ``private_key is None`` when it has none."""

    private_key: Key | None = field(default=None, repr=False)
    listen_port: int = 0
    peers: tuple[PeerState, ...] = ()
    # What plan_changes derived from a config this state is in sync with (Basis), so that
    # the next plan against this state costs what changed. Not part of the value; dropped
    # by replace().
    _basis: Basis | None = field(default=None, init=False, repr=False, compare=False)

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
class DeviceChange:
    """The changes that bring a device to a config: removals first, then config order."""

    private_key: Key | None = field(default=None, repr=False)
    listen_port: int | None = None
    peers: tuple[PeerChange, ...] = ()
    # The state it was planned against, and how the basis of the state after it follows
    # (state_after). Not part of the value.
    _after: tuple[DeviceState, Basis | Delta] | None = field(
        default=None, init=False, repr=False, compare=False
    )


# --- Planning ----------------------------------------------------------------------------


def stored_private_key(key: Key) -> Key:
    """The private key as WireGuard stores it: clamped, except that zero stays zero."""
    return key if key.is_zero else Key(clamp(key.raw))


def plan_changes(desired: WireGuardConfig, current: DeviceState) -> DeviceChange | None:
    """The changes that bring ``current`` to ``desired``; ``None`` when nothing differs.

    When ``current`` is the state an earlier plan's change left (:func:`state_after`) or
    one an earlier plan found nothing to change on, and ``desired`` shares most of its
    WireGuardPeer objects with that plan's config (the leader's plan hands out the same
    object for a segment that did not change), only the peers that are not the same
    objects are compared (:func:`kilo.mesh.wgincremental.plan_from`): the same result, at
    the cost of what changed (issue 17).
    """
    basis = current._basis
    planned = None if basis is None else wgincremental.plan_from(basis, desired)
    after: Basis | Delta | None
    if planned is None:
        changes, after = _plan_all(desired, current)
    else:
        changes, after = planned
    private_key = desired.private_key
    if private_key is not None and wgpeers.same_key(
        stored_private_key(private_key), current.private_key
    ):
        private_key = None
    listen_port: int | None = desired.listen_port
    if not listen_port or listen_port == current.listen_port:
        listen_port = None
    if private_key is None and listen_port is None and not changes:
        if after is not None:  # current is in sync with desired: plan the next from that
            object.__setattr__(current, "_basis", wgincremental.settled(after))
        return None
    change = DeviceChange(private_key=private_key, listen_port=listen_port, peers=tuple(changes))
    if after is not None:
        object.__setattr__(change, "_after", (current, after))
    return change


def _plan_all(
    desired: WireGuardConfig, current: DeviceState
) -> tuple[list[PeerChange], Basis | None]:
    """Every wanted peer compared with the live one; with the basis of the state once
    the changes are written when ``desired`` is plain (its ``live`` is ``current``'s)."""
    wants, owner, plain = wgpeers.wanted(desired)
    changes = [
        PeerChange(public_key=p.public_key, remove=True)
        for p in current.peers
        if p.public_key not in wants
    ]
    live = {p.public_key: p for p in current.peers}
    for public_key, want in wants.items():
        change = wgpeers.peer_change(public_key, want, live.get(public_key))
        if change is not None:
            changes.append(change)
    if not plain:
        return changes, None
    peers = desired.peers  # in a plain config, one object a key
    return changes, Basis(dict(zip(map(id, peers), peers, strict=True)), wants, owner, live)


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
    # The basis of the state after the change (Basis), or the delta that makes it of
    # state's (Delta), whose dicts of the live peers and their allowed IPs are used here.
    after = change._after
    pending: Basis | Delta | None = None
    peers: dict[Key, PeerState] | None = None
    # Allowed IP (as text: equal texts are equal networks) -> the peer holding it, built
    # when an allowed IP is first set: texts hash fast, and the parser's are at hand.
    owner: dict[str, Key] | None = None
    if after is not None and after[0] is state:
        pending = after[1]
        if isinstance(pending, Delta):
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
        basis = pending.advance() if isinstance(pending, Delta) else pending
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
