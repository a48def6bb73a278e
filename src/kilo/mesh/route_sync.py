"""What to add, delete and adopt so that the kernel's routes and IP rules match the plan.

Pure. No I/O, no clock, no logging: the netlink adapter lists the kernel, turns what it
finds into keys with the functions here, applies the :class:`Changes` and persists the
tracked keys with :func:`encode_state`.

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

import functools
import ipaddress
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import Generic, TypeVar, cast

from kilo.mesh.ip import IPAddress, IPInterface, IPNetwork
from kilo.mesh.routes import Device, Route, Rule

__all__ = [
    "DEFAULT_METRIC",
    "MAIN_TABLE",
    "STATE_VERSION",
    "Changes",
    "DesiredRoutes",
    "RouteKey",
    "RuleKey",
    "decode_state",
    "desired_routes",
    "desired_rules",
    "diff",
    "encode_state",
    "kernel_route_key",
    "kernel_rule_key",
    "route_key",
    "rule_key",
]

MAIN_TABLE = 254
# The metric the kernel gives a route added without one (IPv6's IP6_RT_PRIO_USER).
DEFAULT_METRIC = {4: 0, 6: 1024}
STATE_VERSION = 1


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
    return ipaddress.ip_network((address, prefixlen), strict=False)


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
        gw=None if gw is None else ipaddress.ip_address(gw),
        src=None if src is None else ipaddress.ip_address(src),
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
class DesiredRoutes:
    routes: tuple[tuple[RouteKey, Route], ...]  # in plan order, one per key and slot
    unresolved: tuple[Route, ...]  # their device role has no interface name
    shadowed: tuple[Route, ...]  # the kernel keeps one route per slot: an earlier one won

    @property
    def keys(self) -> tuple[RouteKey, ...]:
        return tuple(key for key, _ in self.routes)


def desired_routes(routes: Iterable[Route], devices: Mapping[Device, str]) -> DesiredRoutes:
    """The planned routes as keys, in plan order.

    Two planned routes with the same table and destination but different gateways, sources
    or devices fight over one kernel route: each ``replace`` overwrites the other. Kilo then
    re-adds one of them on every update; here the first planned one wins and the others
    are reported as shadowed.
    """
    pairs: list[tuple[RouteKey, Route]] = []
    chosen: set[RouteKey] = set()
    # slot hash -> the first key chosen in a slot of that hash, and the later ones: a set
    # of slots would hash each destination again, in Python.
    slots: dict[int, RouteKey] = {}
    collided: dict[int, list[RouteKey]] = {}
    unresolved: list[Route] = []
    shadowed: list[Route] = []
    memo = _ROUTE_KEYS
    memo_devices, previous = memo.last  # one read: another thread swaps the whole pair
    if memo_devices != devices:
        previous = {}
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
    memo.last = (dict(devices), current)
    return DesiredRoutes(
        routes=tuple(pairs), unresolved=tuple(unresolved), shadowed=tuple(shadowed)
    )


class _RouteKeyMemo:
    """The (key, route) pairs of the previous call's routes, by Route object (``id``,
    checked with ``is``). A leader's plan hands out the same Route objects for unchanged
    segments (``routes._LeaderRoutesMemo``), and a key hashes its destination in Python
    when it is built; the same key object also makes the route table's set lookups
    identity hits, and the same pair object saves ten thousand allocations (and the
    collections of the garbage collector they trigger) on a 5000-node leader. Only the
    last call's routes and device names are kept; keys are immutable."""

    def __init__(self) -> None:
        # (the device names, the pairs by Route id), written as one value
        self.last: tuple[dict[Device, str], dict[int, tuple[RouteKey | None, Route]]] = ({}, {})


_ROUTE_KEYS = _RouteKeyMemo()


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


def _text(value: object | None) -> str | None:
    return None if value is None else str(value)


def encode_state(routes: Iterable[RouteKey], rules: Iterable[RuleKey]) -> str:
    """The tracked keys as JSON text, one key to a line, sorted so that equal sets give
    equal files.

    The agent writes this before and after every change of its routes, so with thousands
    of routes it must cost little more than a join: each key's line is memoised (keys are
    immutable, and the tracked ones live from one change to the next)."""
    route_lines = sorted(map(_route_line, routes))
    rule_lines = sorted(map(_rule_line, rules))
    return (
        f'{{\n "version": {STATE_VERSION},\n'
        f' "routes": [{_lines(route_lines)}],\n'
        f' "rules": [{_lines(rule_lines)}]\n}}\n'
    )


def _lines(lines: Sequence[str]) -> str:
    return "".join(["\n  ", ",\n  ".join(lines), "\n "]) if lines else ""


@functools.lru_cache(maxsize=1 << 16)
def _route_line(key: RouteKey) -> str:
    return json.dumps(
        {
            "table": key.table,
            "dst": str(key.dst),
            "gw": _text(key.gw),
            "src": _text(key.src),
            "dev": key.dev,
        }
    )


@functools.lru_cache(maxsize=1 << 12)
def _rule_line(key: RuleKey) -> str:
    return json.dumps(
        {
            "family": key.version,
            "table": key.table,
            "src": _text(key.src),
            "dst": _text(key.dst),
            "iif": key.iif,
        }
    )


def _int(item: Mapping[str, object], name: str) -> int:
    value = item.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name!r} must be a positive integer, not {value!r}")
    return value


def _str(item: Mapping[str, object], name: str) -> str:
    value = item.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name!r} must be a non-empty string, not {value!r}")
    return value


def _optional(item: Mapping[str, object], name: str) -> str | None:
    value = item.get(name)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name!r} must be a string or null, not {value!r}")
    return value


def _items(document: Mapping[str, object], name: str) -> list[Mapping[str, object]]:
    items = document.get(name)
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ValueError(f"{name!r} must be a list of objects")
    return items


def _decode_route(item: Mapping[str, object]) -> RouteKey:
    gw, src = _optional(item, "gw"), _optional(item, "src")
    return RouteKey(
        dst=ipaddress.ip_network(_str(item, "dst")),
        dev=_str(item, "dev"),
        gw=None if gw is None else ipaddress.ip_address(gw),
        src=None if src is None else ipaddress.ip_address(src),
        table=_int(item, "table"),
    )


def _decode_rule(item: Mapping[str, object]) -> RuleKey:
    version = _int(item, "family")
    if version not in (4, 6):
        raise ValueError(f"'family' must be 4 or 6, not {version!r}")
    src, dst = _optional(item, "src"), _optional(item, "dst")
    return RuleKey(
        table=_int(item, "table"),
        version=version,
        src=None if src is None else ipaddress.ip_network(src),
        dst=None if dst is None else ipaddress.ip_network(dst),
        iif=_optional(item, "iif"),
    )


def decode_state(text: str) -> tuple[frozenset[RouteKey], frozenset[RuleKey]]:
    """Read :func:`encode_state`'s text; :class:`ValueError` says what is wrong with it."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    if document.get("version") != STATE_VERSION:
        raise ValueError(f"unknown version {document.get('version')!r}")
    routes = frozenset(_decode_route(item) for item in _items(document, "routes"))
    rules = frozenset(_decode_rule(item) for item in _items(document, "rules"))
    return routes, rules
