"""What to add, delete and adopt so that the kernel's routes and IP rules match the plan.

Pure. No I/O, no clock, no logging: the netlink adapter lists the kernel, turns what it
finds into keys with the functions here, applies the :class:`Changes` and persists the
tracked keys with :mod:`kilo.mesh.route_state`.

Identity (reference §4.7, with Kilo's leaks fixed, §8 pitfall 7):

* a route is ``(table, dst, gw, src, dev)``. Kilo leaves the table out, so a main-table
  route and a table-1107 route with the same destination collide; here they do not.
  Flags, protocol and scope are not part of it (as in Kilo), so a route someone else
  installed with the same destination, gateway, source and device counts as present.
* a rule is ``(family, src, dst, table, iif)``; no priority (the kernel numbers rules).
* CIDRs are compared masked, as the kernel stores them: a planned ``10.5.0.1/24`` is the
  kernel's ``10.5.0.0/24``, and a ``/0`` selector of a rule is the kernel's "from all".
* devices are named, not indexed, so that keys written to the state file still mean the
  same routes after the agent restarts (indexes change when an interface is recreated).

Only kernel routes that Kilo could have installed become keys: unicast, the default
metric (0 for IPv4, 1024 for IPv6), no TOS; others are invisible here and never touched.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import Generic, TypeVar, cast

from kilo.mesh import ip as ipmod
from kilo.mesh.ip import IPAddress, IPInterface, IPNetwork
from kilo.mesh.routes import Device, Route, Rule

__all__ = [
    "DEFAULT_METRIC",
    "MAIN_TABLE",
    "Changes",
    "DesiredRoutes",
    "RouteDelta",
    "RouteKey",
    "RuleKey",
    "changed_since",
    "desired_routes",
    "desired_rules",
    "diff",
    "kernel_route_key",
    "kernel_rule_key",
    "route_key",
    "rule_key",
]

MAIN_TABLE = 254
# The metric the kernel gives a route added without one (IPv6's IP6_RT_PRIO_USER).
DEFAULT_METRIC = {4: 0, 6: 1024}


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteKey:
    """A route as the kernel stores it, with its device by name."""

    dst: IPNetwork
    dev: str
    gw: IPAddress | None = None
    src: IPAddress | None = None
    table: int = MAIN_TABLE
    # The hashes of the key and of its slot, computed once: ``ipaddress`` hashes in Python,
    # and every apply looks thousands of keys up in sets (the plan against what the table
    # knows). Only the destination's is computed (the gateway and source rarely differ
    # between keys of one slot, and equality still compares them). Not part of the value.
    _hash: int = field(default=0, init=False, repr=False, compare=False)
    slot_hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        dst_hash = hash(self.dst)
        object.__setattr__(self, "_hash", hash((dst_hash, self.dev, self.table)))
        object.__setattr__(self, "slot_hash", hash((self.table, dst_hash)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def version(self) -> int:
        return self.dst.version

    @property
    def slot(self) -> tuple[int, IPNetwork]:
        """What ``ip route replace`` overwrites: one route per table and destination."""
        return self.table, self.dst

    def __str__(self) -> str:
        parts = [str(self.dst)]
        if self.gw is not None:
            parts += ["via", str(self.gw)]
        parts += ["dev", self.dev]
        if self.src is not None:
            parts += ["src", str(self.src)]
        if self.table != MAIN_TABLE:
            parts += ["table", str(self.table)]
        return " ".join(parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleKey:
    """An IP rule in the kernel's canonical form; ``None`` selectors mean "all"."""

    table: int
    version: int = 4
    src: IPNetwork | None = None
    dst: IPNetwork | None = None
    iif: str | None = None
    _hash: int = field(default=0, init=False, repr=False, compare=False)  # as RouteKey's

    def __post_init__(self) -> None:
        identity = (self.table, self.version, self.src, self.dst, self.iif)
        object.__setattr__(self, "_hash", hash(identity))

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        parts = [] if self.version == 4 else ["-6"]
        parts += ["from", "all" if self.src is None else str(self.src)]
        if self.dst is not None:
            parts += ["to", str(self.dst)]
        if self.iif is not None:
            parts += ["iif", self.iif]
        parts += ["lookup", str(self.table)]
        return " ".join(parts)


def _network(cidr: IPInterface | IPNetwork) -> IPNetwork:
    if isinstance(cidr, IPv4Network | IPv6Network):
        return cidr
    return cidr.network


def route_key(route: Route, devices: Mapping[Device, str]) -> RouteKey | None:
    """The key of a planned route; ``None`` when its device role has no interface name."""
    dev = devices.get(route.dev)
    if dev is None:
        return None
    return RouteKey(
        dst=_network(route.dst),
        dev=dev,
        gw=route.gw,
        src=route.src,
        table=MAIN_TABLE if route.table is None else route.table,
    )


def _selector(cidr: IPInterface | IPNetwork | None) -> IPNetwork | None:
    if cidr is None:
        return None
    network = _network(cidr)
    # The kernel keeps no address for a zero-length selector: it prints "from all".
    return None if network.prefixlen == 0 else network


def rule_key(rule: Rule) -> RuleKey:
    """The key of a planned rule; a rule with neither src nor dst is IPv4, as in Kilo."""
    family_of = rule.src if rule.src is not None else rule.dst
    return RuleKey(
        table=rule.table,
        version=4 if family_of is None else family_of.version,
        src=_selector(rule.src),
        dst=_selector(rule.dst),
        iif=rule.iif,
    )


def _kernel_network(version: int, address: str | None, prefixlen: int) -> IPNetwork:
    if address is None:
        address = "0.0.0.0" if version == 4 else "::"
    # Interned: the same object as the plan's and the WireGuard device's for one value.
    return ipmod.masked_network(address, prefixlen)


def kernel_route_key(
    *,
    version: int,
    table: int,
    dst: str | None,
    dst_len: int,
    dev: str,
    gw: str | None = None,
    src: str | None = None,
    metric: int | None = None,
) -> RouteKey | None:
    """The key of a route listed by the kernel; ``None`` if Kilo could not have added it."""
    if (metric or 0) != DEFAULT_METRIC[version]:
        return None
    return RouteKey(
        dst=_kernel_network(version, dst, dst_len),
        dev=dev,
        gw=None if gw is None else ipmod.interned_address(gw),
        src=None if src is None else ipmod.interned_address(src),
        table=table,
    )


def kernel_rule_key(
    *,
    version: int,
    table: int,
    src: str | None = None,
    src_len: int = 0,
    dst: str | None = None,
    dst_len: int = 0,
    iif: str | None = None,
) -> RuleKey:
    """The key of a rule listed by the kernel (``src_len``/``dst_len`` 0 mean "all")."""
    return RuleKey(
        table=table,
        version=version,
        src=_kernel_network(version, src, src_len) if src_len else None,
        dst=_kernel_network(version, dst, dst_len) if dst_len else None,
        iif=iif or None,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteDelta:
    """How a :class:`DesiredRoutes` differs from an earlier one, numbered ``base``: the
    keys only the earlier one has, and the (key, route) pairs only this one has, in plan
    order. What lets the route table diff a leader's plan against its last write in
    O(change) instead of looking ten thousand keys up at 5000 nodes."""

    base: int
    added: tuple[tuple[RouteKey, Route], ...]
    removed: tuple[RouteKey, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class DesiredRoutes:
    routes: tuple[tuple[RouteKey, Route], ...]  # in plan order, one per key and slot
    unresolved: tuple[Route, ...]  # their device role has no interface name
    shadowed: tuple[Route, ...]  # the kernel keeps one route per slot: an earlier one won
    # Not part of the value (equal plans give equal results, memo or not): this result's
    # number, unique in the process, and, when :func:`desired_routes` could tell, how it
    # differs from the result of the call before.
    serial: int = field(default=0, compare=False, repr=False)
    delta: RouteDelta | None = field(default=None, compare=False, repr=False)

    @property
    def keys(self) -> tuple[RouteKey, ...]:
        return tuple(map(_FIRST, self.routes))


_FIRST = operator.itemgetter(0)
_SERIALS = itertools.count(1)


def desired_routes(routes: Iterable[Route], devices: Mapping[Device, str]) -> DesiredRoutes:
    """The planned routes as keys, in plan order.

    Two planned routes with the same table and destination but different gateways, sources
    or devices fight over one kernel route: each ``replace`` overwrites the other. Kilo then
    re-adds one of them on every update; here the first planned one wins and the others
    are reported as shadowed.

    When the previous call's routes were all resolved and each in a slot of its own, and
    most of these are the very same Route objects (a leader between two events), only the
    Route objects that came or went are looked at (:func:`_patched`), and the result
    carries its :class:`RouteDelta`.
    """
    routes = tuple(routes)
    memo = _ROUTE_KEYS
    last = memo.last  # one read: another thread swaps the whole value
    done = _patched(routes, devices, last) if last.pairs is not None else None
    result, memo.last = done or _computed(routes, devices, last)
    return result


def _computed(
    routes: tuple[Route, ...], devices: Mapping[Device, str], last: _LastRoutes
) -> tuple[DesiredRoutes, _LastRoutes]:
    """:func:`desired_routes` route by route (reusing the last call's keys by Route)."""
    pairs: list[tuple[RouteKey, Route]] = []
    chosen: set[RouteKey] = set()
    # slot hash -> the first key chosen in a slot of that hash, and the later ones: a set
    # of slots would hash each destination again, in Python.
    slots: dict[int, RouteKey] = {}
    collided: dict[int, list[RouteKey]] = {}
    unresolved: list[Route] = []
    shadowed: list[Route] = []
    previous = last.keyed() if last.devices == devices else {}
    current: dict[int, tuple[RouteKey | None, Route]] = {}
    for route in routes:
        pair = previous.get(id(route))
        if pair is None or pair[1] is not route:
            pair = (route_key(route, devices), route)
        current[id(route)] = pair
        key = pair[0]
        if key is None:
            unresolved.append(route)
            continue
        if key in chosen:
            continue
        slot_hash = key.slot_hash
        first = slots.get(slot_hash)
        if first is None:
            slots[slot_hash] = key
        elif first.slot == key.slot or any(
            other.slot == key.slot for other in collided.get(slot_hash, ())
        ):
            shadowed.append(route)
            continue
        else:
            collided.setdefault(slot_hash, []).append(key)
        chosen.add(key)
        pairs.append(cast(tuple[RouteKey, Route], pair))
    serial = next(_SERIALS)
    result = DesiredRoutes(
        routes=tuple(pairs),
        unresolved=tuple(unresolved),
        shadowed=tuple(shadowed),
        serial=serial,
    )
    # The next call may patch this one only if every route is resolved and in a slot (and
    # a slot hash) of its own: then no route's fate depends on the order of the others.
    if not unresolved and not shadowed and not collided and len(pairs) == len(routes):
        return result, _LastRoutes(
            devices=dict(devices), routes=routes, pairs=result.routes, slots=slots, serial=serial
        )
    return result, _LastRoutes(devices=dict(devices), routes=routes, by_id=current, serial=serial)


# More Route objects than this changed (of a plan's routes, at least 64): route by route.
_PATCH_SHARE = 8


def _patched(
    routes: tuple[Route, ...], devices: Mapping[Device, str], last: _LastRoutes
) -> tuple[DesiredRoutes, _LastRoutes] | None:
    """:func:`desired_routes` from the last call's result, which was simple (every route
    resolved, in a slot hash of its own); ``None`` when this one is not, or too much
    changed. Then the routes that stayed keep their keys and their slots, so the result is
    every route's pair in plan order as long as the new routes are resolved and find their
    slots free once the gone routes left theirs.

    Only the middle of the plan that differs is looked at: the routes before and after it
    are the last call's Route objects at the same place from either end (compared by
    identity in C), and their pairs are the last result's, sliced."""
    old, old_pairs, old_slots = last.routes, last.pairs, last.slots
    if last.devices != devices or old_pairs is None or old_slots is None:
        return None
    shortest = min(len(old), len(routes))
    head = _same_run(old, routes, shortest)
    tail = _same_run(old[::-1], routes[::-1], shortest - head)
    old_middle = old[head : len(old) - tail]
    middle = routes[head : len(routes) - tail]
    # Route objects in the middle by id: the last call's hold their objects (in ``old``),
    # so their ids are not reused.
    ids = list(map(id, middle))
    now = set(ids)
    before = dict(zip(map(id, old_middle), old_pairs[head : len(old) - tail], strict=True))
    if len(now) != len(ids):
        return None  # a Route object twice
    new = now.difference(before)
    gone = before.keys() - now
    if len(new) + len(gone) > max(64, len(routes) // _PATCH_SHARE):
        return None
    slots = dict(old_slots)
    gone_keys: dict[RouteKey, None] = {}
    for i in gone:
        key = before.pop(i)[0]
        del slots[key.slot_hash]
        gone_keys[key] = None
    added: list[tuple[RouteKey, Route]] = []
    for route in itertools.compress(middle, map(new.__contains__, ids)):
        new_key = route_key(route, devices)
        # Unresolved, or perhaps shadowed (by a route anywhere: a Route object kept at
        # either end and repeated in the middle too has its key): route by route decides.
        if new_key is None or new_key.slot_hash in slots:
            return None
        slots[new_key.slot_hash] = new_key
        pair = (new_key, route)
        before[id(route)] = pair
        added.append(pair)
    new_keys = {key for key, _ in added}
    pairs = (*old_pairs[:head], *map(before.__getitem__, ids), *old_pairs[len(old) - tail :])
    serial = next(_SERIALS)
    result = DesiredRoutes(
        routes=pairs,
        unresolved=(),
        shadowed=(),
        serial=serial,
        delta=RouteDelta(
            base=last.serial,
            # A route rebuilt as a new object with the same values has the same key.
            added=tuple(pair for pair in added if pair[0] not in gone_keys),
            removed=tuple(key for key in gone_keys if key not in new_keys),
        ),
    )
    return result, _LastRoutes(
        devices=last.devices, routes=routes, pairs=pairs, slots=slots, serial=serial
    )


def _same_run(a: Sequence[Route], b: Sequence[Route], most: int) -> int:
    """How many Route objects ``a`` and ``b`` share from their start, by identity, up to
    ``most``."""
    same = list(itertools.islice(map(operator.is_, a, b), most))
    return same.index(False) if False in same else len(same)


@dataclass(frozen=True, slots=True, kw_only=True)
class _LastRoutes:
    """What :func:`desired_routes` keeps of its last call, written as one value."""

    devices: dict[Device, str]
    routes: tuple[Route, ...]
    # When every route was resolved and in a slot hash of its own: the result's pairs,
    # one a route, and slot hash -> key. Otherwise the (key, route) pairs by Route id.
    pairs: tuple[tuple[RouteKey, Route], ...] | None = None
    slots: dict[int, RouteKey] | None = None
    by_id: dict[int, tuple[RouteKey | None, Route]] | None = None
    serial: int = 0  # of the result

    def keyed(self) -> dict[int, tuple[RouteKey | None, Route]]:
        """Each route's (key, route) pair by the Route's id."""
        if self.by_id is not None:
            return self.by_id
        return dict(zip(map(id, self.routes), self.pairs or (), strict=True))


class _RouteKeyMemo:
    """The (key, route) pairs of the previous call's routes, by Route object (``id``,
    checked with ``is``). A leader's plan hands out the same Route objects for unchanged
    segments (``routes._LeaderRoutesMemo``), and a key hashes its destination in Python
    when it is built; the same key object also makes the route table's set lookups
    identity hits, and the same pair object saves ten thousand allocations (and the
    collections of the garbage collector they trigger) on a 5000-node leader. Only the
    last call's routes and device names are kept; keys are immutable."""

    def __init__(self) -> None:
        self.last = _LastRoutes(devices={}, routes=(), by_id={})


_ROUTE_KEYS = _RouteKeyMemo()


def changed_since(
    desired: DesiredRoutes, serial: int | None, keys: Collection[RouteKey]
) -> tuple[list[RouteKey], list[tuple[RouteKey, Route]]]:
    """What a route table that holds ``keys`` deletes and adds for ``desired``: the keys
    no longer desired (sorted by text, the deletion order of :func:`diff`) and the desired
    pairs it lacks (in plan order). ``serial``: the number of the result whose keys
    ``keys`` are, if known; when ``desired`` carries its difference from that one, only
    the difference is looked at."""
    delta = desired.delta
    if delta is not None and serial is not None and delta.base == serial:
        return sorted(delta.removed, key=str), list(delta.added)
    route_of = dict(desired.routes)
    stale = sorted((key for key in keys if key not in route_of), key=str)
    return stale, [pair for pair in desired.routes if pair[0] not in keys]


def desired_rules(rules: Iterable[Rule]) -> tuple[tuple[RuleKey, Rule], ...]:
    """The planned rules as keys, in plan order (the order decides kernel priorities)."""
    chosen: dict[RuleKey, Rule] = {}
    for rule in rules:
        chosen.setdefault(rule_key(rule), rule)
    return tuple(chosen.items())


K = TypeVar("K", RouteKey, RuleKey)


@dataclass(frozen=True, slots=True, kw_only=True)
class Changes(Generic[K]):
    """What to do to the kernel and to the tracked set."""

    delete: tuple[K, ...]  # tracked, no longer planned, still in the kernel
    forget: tuple[K, ...]  # tracked, no longer planned, already gone from the kernel
    add: tuple[K, ...]  # planned and missing from the kernel, in plan order
    adopt: tuple[K, ...]  # planned, already in the kernel and not yet tracked

    @property
    def empty(self) -> bool:
        return not (self.delete or self.forget or self.add or self.adopt)


def diff(desired: Sequence[K], kernel: Collection[K], tracked: Collection[K]) -> Changes[K]:
    """Kilo's ``Set`` over every table, and tracking what was already there (§8 pitfall 7).

    Duplicates in ``desired`` collapse. Deletions come in a stable order (by text).
    """
    wanted = dict.fromkeys(desired)
    stale = sorted((key for key in tracked if key not in wanted), key=str)
    return Changes(
        delete=tuple(key for key in stale if key in kernel),
        forget=tuple(key for key in stale if key not in kernel),
        add=tuple(key for key in wanted if key not in kernel),
        adopt=tuple(key for key in wanted if key in kernel and key not in tracked),
    )
