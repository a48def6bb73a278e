"""The WireGuard device planned on the state the last write left: only the peer objects
that are new are compared (issue 17).

Pure. No I/O. Between full applies the leader plans (:func:`kilo.mesh.wgdevice.plan_changes`)
on the state its own last write left (:func:`kilo.mesh.wgdevice.state_after`), with a
config most of whose WireGuardPeer objects are the last one's (the leader's plan hands out
the same object for a segment that did not change). Such a state carries what the last
plan derived (a :class:`Basis`, hidden: not part of its value), and :func:`plan_from`
compares only the peer objects that are not the basis's: the same change as comparing
them all, at the cost of what changed. A plan's :class:`Delta` (or a fresh basis) rides
on its change, and ``state_after`` makes the basis of the state after the change of it.

Apart from :mod:`kilo.mesh.wgdevice` because it is a concept of its own (the memo and its
upkeep); it shares the per-peer comparison (:mod:`kilo.mesh.wgpeers`) with the full plan,
and imports nothing of ``wgdevice``.
"""

from __future__ import annotations

from dataclasses import dataclass

from kilo.mesh import wgpeers
from kilo.mesh.keys import Key
from kilo.mesh.wgpeers import PeerChange, PeerState, Want
from kilo.mesh.wireguard import WireGuardConfig, WireGuardPeer


class Basis:
    """A plain config (:func:`kilo.mesh.wgpeers.wanted`) that a device state is in sync
    with: planning that config against the state changes no peer (the state holds exactly
    its peers, each as wanted). What the next plan against the state needs from it:

    * ``entries``: the config's peer objects by ``id`` (kept alive here, so an ``id`` is
      theirs); ``wants``: what each public key wants (``wgpeers.wanted``: its config peer,
      and its masked allowed IPs as texts);
    * ``owner``: the peer holding each allowed IP (text), the config's and the state's
      alike (in sync: each live peer holds its wanted set, and no text is wanted twice);
    * ``live``: the state's peers by public key, in the state's order.

    A basis belongs to one state (``DeviceState._basis``). ``wgdevice.state_after`` moves
    its dicts to the state after the change (the old state loses it: its next plan
    compares every peer); nothing else changes them once the basis is attached. ``taken``:
    a basis carried by a change (fresh from the full plan) was given to a state.
    """

    __slots__ = ("entries", "live", "owner", "taken", "wants")

    def __init__(
        self,
        entries: dict[int, WireGuardPeer],
        wants: dict[Key, Want],
        owner: dict[str, Key],
        live: dict[Key, PeerState],
    ) -> None:
        self.entries = entries
        self.wants = wants
        self.owner = owner
        self.live = live
        self.taken = False


@dataclass(slots=True)
class Delta:
    """A plain config as the differences from ``base``'s: what its peer objects that are
    not ``base``'s want, in config order, and ``base``'s peer objects that it lacks."""

    base: Basis
    fresh: list[Want]
    dropped: list[WireGuardPeer]

    def advance(self) -> Basis:
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
        return Basis(entries, wants, base.owner, base.live)


def plan_from(basis: Basis, desired: WireGuardConfig) -> tuple[list[PeerChange], Delta] | None:
    """The full plan's changes, comparing only the peers of ``desired`` that are not
    ``basis``'s objects; ``None`` when ``desired`` is not plain (then every peer's want
    may depend on the others': plan them all).

    A peer object of the basis's config wants what it wanted there (in a plain config a
    peer's want is its own entry's), and the state holds that: nothing to change. The
    other peers are compared with the live ones as the full plan does; the basis's peers
    that ``desired`` lacks are removed unless a new object has their key. The order is
    the full plan's: removals in the state's order, then config order.
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
    added: dict[Key, Want] = {}
    claimed: set[str] = set()
    for p in fresh:
        public_key = p.public_key
        if public_key in added or (public_key in held and public_key not in gone):
            return None  # the key twice
        texts, unique = wgpeers.masked_texts(p)
        if not unique or not claimed.isdisjoint(texts):
            return None
        for text in texts:
            if text in owner and text not in released:
                return None  # held by a peer object that stays
        claimed.update(texts)
        want = added[public_key] = Want()
        wgpeers.configure(want, p)
        want.allowed_ips = list(texts)
    live = basis.live
    removed = gone - added.keys()
    changes = (
        [PeerChange(public_key=k, remove=True) for k in live if k in removed] if removed else []
    )
    for public_key, want in added.items():
        change = wgpeers.peer_change(public_key, want, live.get(public_key))
        if change is not None:
            changes.append(change)
    return changes, Delta(basis, list(added.values()), dropped)


def settled(after: Basis | Delta) -> Basis:
    """The basis of a state when the plan that gave ``after`` changed nothing on it."""
    if isinstance(after, Delta):
        return after.advance()  # a new object: changes planned on the old one fail
    after.taken = True
    return after
