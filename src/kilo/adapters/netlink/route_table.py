"""Kilo's routes and IP rules through rtnetlink, tracked in every table they use.

Thin: the decisions (which routes and rules to add, delete or adopt, and their identity)
are in :mod:`kilo.mesh.route_sync`; this module only lists the kernel, applies changes and
keeps the tracked set on disk. A route or rule that could not be changed does not stop the
others, and one :class:`~kilo.errors.DataPlaneError` at the end lists them. Its fake for
unit tests, held to the same contract, is :class:`~kilo.adapters.netlink.memory.InMemoryRouteTable`.

Listing the kernel costs a dump of every route in every table (thousands at a thousand
nodes): :meth:`RouteTable.set` with ``full=False`` skips it when the table can trust its
own last write (see there). Routes are listed and written through :mod:`.wire` (by hand,
many requests to a send, each acknowledged on its own: a start-up adds thousands, and
through pyroute2 each cost a round trip and about 0.6 ms of CPU); links and rules, a
few each, through pyroute2.

Over 500 lines on purpose: the full and incremental paths, the deletion watcher and the
state file all read and write one tracked set under one lock, and whether the table may
trust its last write depends on all of them; split, that invariant would span modules.
"""

from __future__ import annotations

import errno
import functools
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from kilo.adapters.netlink import wire
from kilo.adapters.netlink.rtnetlink import (
    FAMILY,
    VERSION,
    Closing,
    Netlink,
    failing,
    reason,
    where,
)
from kilo.adapters.netlink.watcher import Watcher
from kilo.errors import DataPlaneError
from kilo.mesh import route_state, route_sync
from kilo.mesh.route_sync import RouteKey, RuleKey
from kilo.mesh.routes import Device, Route, Rule, format_route, format_rule

K = TypeVar("K", RouteKey, RuleKey)

_RTN_UNICAST = 1
_VERSION: dict[int, int] = {int(family): version for family, version in VERSION.items()}
_RTM_F_CLONED = 0x200
_FR_ACT_TO_TBL = 1
_FIB_RULE_INVERT = 0x2
_NLMSG_HEADER = 16


def _route_key_of(m: wire.RouteMessage, names: Mapping[int, str]) -> RouteKey | None:
    version = _VERSION.get(m.family)
    if version is None or m.type != _RTN_UNICAST or m.flags & _RTM_F_CLONED or m.tos:
        return None
    dev = names.get(m.oif or 0)
    if dev is None:
        return None  # multipath, or an interface we do not know
    return route_sync.kernel_route_key(
        version=version,
        table=m.table,
        dst=m.dst,
        dst_len=m.dst_len,
        dev=dev,
        gw=m.gateway,
        src=m.prefsrc,
        metric=m.priority,
    )


def _rule_key_of(m: Any) -> RuleKey | None:
    version = VERSION.get(m["family"])
    if (
        version is None
        or m.get("action") != _FR_ACT_TO_TBL
        or m["flags"] & _FIB_RULE_INVERT
        or m["tos"]
        or m.get("fwmark")
        or m.get("oifname")
    ):
        return None  # a rule with selectors Kilo never sets is not one of Kilo's
    return route_sync.kernel_rule_key(
        version=version,
        table=int(m.get("table") or m["table"]),
        src=m.get("src"),
        src_len=m["src_len"],
        dst=m.get("dst"),
        dst_len=m["dst_len"],
        iif=m.get("iifname"),
    )


class _Kernel:
    """One listing of the kernel: links, and Kilo-shaped routes and rules in every table."""

    def __init__(self, ipr: Netlink, routes: wire.RouteSocket, last: _Kernel | None) -> None:
        with failing("cannot list interfaces"):
            self.names = {int(m["index"]): str(m.get("ifname")) for m in ipr.link("dump")}
        self.indexes = {name: index for index, name in self.names.items()}
        # A route's key by its message (past the netlink header), from this listing; the
        # last listing's, while the interfaces have the same names and indexes: a resync
        # finds nearly every route as it was, and a key costs ``ipaddress`` parsing.
        self.keys: dict[bytes, RouteKey | None] = {}
        known: Mapping[bytes, RouteKey | None] = (
            last.keys if last is not None and last.names == self.names else {}
        )

        def read(data: wire.Buffer, offset: int, length: int) -> RouteKey | None:
            body = bytes(data[offset + _NLMSG_HEADER : offset + length])
            if body in known:
                key = known[body]
            else:
                m = wire.route_message(data, offset, length)
                key = None if m is None else _route_key_of(m, self.names)
            self.keys[body] = key
            return key

        with failing("cannot list routes"):
            self.routes: set[RouteKey] = set(routes.dump(read))
        # One key can match several kernel rules (same selectors, different priorities).
        self.rules: dict[RuleKey, list[int]] = {}
        with failing("cannot list IP rules"):
            for m in ipr.rule("dump"):
                rule = _rule_key_of(m)
                if rule is not None:
                    self.rules.setdefault(rule, []).append(int(m.get("priority") or 0))


State = tuple[frozenset[RouteKey], frozenset[RuleKey]]


@dataclass(frozen=True, slots=True)
class Known:
    """What the last :meth:`RouteTable.set` that succeeded left in the kernel, and tracks:
    every planned route and rule (added, or adopted). What an incremental ``set`` diffs
    the new plan against instead of listing the kernel."""

    routes: frozenset[RouteKey]
    rules: tuple[RuleKey, ...]  # in plan order: the order decides kernel priorities
    # The number of the desired routes ``routes`` are the keys of, if known: the next
    # plan's routes may carry their difference from those (route_sync.changed_since).
    serial: int | None = None

    @staticmethod
    def after(
        desired: route_sync.DesiredRoutes, rules: Sequence[RuleKey], last: Known | None = None
    ) -> Known:
        """What a ``set`` of ``desired`` leaves; from ``last`` by the routes' difference
        when they carry it (copying a set of ten thousand keys is C, hashing each is not)."""
        delta = desired.delta
        if last is not None and delta is not None and delta.base == last.serial:
            routes = last.routes.difference(delta.removed).union(key for key, _ in delta.added)
        else:
            routes = frozenset(desired.keys)
        return Known(routes, tuple(rules), desired.serial)


class _SlotTaken(Exception):
    """An incremental add found its table and destination taken (``EEXIST``): by the same
    route (to adopt) or another (to replace); only a listing of the kernel can tell.
    Carries what the incremental path added and removed before the listing."""

    def __init__(self, added: int, removed: int) -> None:
        super().__init__(added, removed)
        self.added = added
        self.removed = removed


class RouteTable(Closing):
    """Kilo's routes and IP rules, tracked in every table they use.

    ``state_file`` keeps the tracked keys across restarts, so that an agent that stopped
    without cleaning up still removes, on its next :meth:`set` or :meth:`clean_up`, what
    the previous run added. A state file that cannot be read or parsed is ignored (nothing
    it lists is deleted) and :attr:`state_error` says why; it is overwritten on the next
    change.
    """

    def __init__(self, netns: str | None = None, state_file: Path | None = None) -> None:
        self._netns = netns
        self._state_file = state_file
        self.state_error: str | None = None
        # Guards what the watcher threads read: the tracked keys and the interface names.
        self._lock = threading.Lock()
        # One set() or clean_up() at a time: each lists the kernel, then acts on the listing.
        self._apply_lock = threading.Lock()
        self._routes: set[RouteKey] = set()
        self._rules: set[RuleKey] = set()
        self._names: dict[int, str] = {}
        self._saved: State | None = (frozenset(), frozenset())
        self._state_text = route_state.StateText()  # what _save writes, kept sorted
        # None until a set() succeeds, and again after any failure, a clean-up, or a
        # deletion (or lost events) reported by a watcher: the next set() lists the kernel.
        self._known: Known | None = None
        self._invalidations = 0  # counts the watchers' reports, under _lock
        self._watchers: list[Watcher] = []
        self._last_listing: _Kernel | None = None  # its route keys are reused by the next
        if state_file is not None:
            self._load(state_file)
        self._ipr = Netlink(netns)
        try:
            with failing(f"cannot open a netlink socket{where(netns)}"):
                # Routes are listed and written here, many to a send (see wire).
                self._wire = wire.RouteSocket(netns)
        except BaseException:
            self._ipr.close()
            raise

    # -- state file ----------------------------------------------------------------------

    def _load(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            self._saved = None
            self.state_error = (
                f"cannot read route state {path}: {reason(exc)}; "
                "routes and rules of an earlier run are not removed"
            )
            return
        try:
            routes, rules = route_state.decode_state(text)
        except ValueError as exc:
            self._saved = None
            self.state_error = (
                f"ignoring corrupt route state {path}: {exc}; "
                "routes and rules of an earlier run are not removed"
            )
            return
        self._routes, self._rules = set(routes), set(rules)
        self._saved = (routes, rules)

    def _save(self, routes: Iterable[RouteKey], rules: Iterable[RuleKey]) -> None:
        path = self._state_file
        state = (frozenset(routes), frozenset(rules))
        if path is None or state == self._saved:
            return
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # 0600 from the start, renamed into place: a crash never leaves half a file.
            # No fsync: the file only has to outlive the process (the page cache does), as
            # the routes and rules it lists do not outlive a reboot; a file a power loss
            # damaged is ignored (state_error). It is written before and after every
            # change of the routes, and an fsync can take tens of ms on a busy disk.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self._state_text.encode(*state))
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except OSError as exc:
            raise DataPlaneError(f"cannot write route state {path}: {reason(exc)}") from exc
        self._saved = state

    # -- kernel changes ------------------------------------------------------------------

    def _add_routes(
        self,
        adds: Sequence[tuple[RouteKey, Route]],
        indexes: Mapping[str, int],
        devices: Mapping[Device, str],
        failures: list[str],
        *,
        exclusive: bool,
    ) -> tuple[int, bool]:
        """Add ``adds`` (in plan order), many to a send, and track each one the kernel took;
        return how many were added and whether a slot was taken.

        ``exclusive`` adds a route the table has not seen in the kernel without
        overwriting a route already in its slot (``ip route add``): ``EEXIST`` then means
        the slot is taken, by the same route (to adopt) or another (to replace), which only
        a listing can tell. Otherwise ``ip route replace``, as after a listing."""
        flags = wire.ADD if exclusive else wire.REPLACE
        entries: list[tuple[RouteKey, Route, int | None]] = []
        requests: list[bytes] = []
        for key, route in adds:
            index = indexes.get(key.dev)
            entries.append((key, route, index))
            if index is not None:
                requests.append(wire.add_request(key, index, flags, onlink=route.onlink))
        outcomes = iter(self._wire.batch(requests))
        added, taken = 0, False
        done: list[RouteKey] = []
        for key, route, index in entries:
            what = f"route {format_route(route, devices)}"
            if index is None:
                failures.append(f"{what}: interface {key.dev} does not exist")
                continue
            outcome = next(outcomes)
            if outcome is None:
                added += 1
                done.append(key)
            elif exclusive and isinstance(outcome, NetlinkError) and outcome.code == errno.EEXIST:
                taken = True
            else:
                if isinstance(outcome, wire.LostAck):
                    done.append(key)  # perhaps added: tracked, so that it is never left behind
                failures.append(f"cannot add {what}: {reason(outcome)}")
        with self._lock:
            self._routes.update(done)
        return added, taken

    def _delete_routes(
        self, keys: Sequence[RouteKey], indexes: Mapping[str, int], failures: list[str]
    ) -> int:
        """Delete tracked routes, many to a send; return how many went. Each is untracked
        first, so that watchers ignore our own deletions, and tracked again if its
        deletion failed, unless it is gone already. A route whose interface is gone went
        with it."""
        with self._lock:
            self._routes.difference_update(keys)
        listed = [(key, indexes[key.dev]) for key in keys if key.dev in indexes]
        outcomes = self._wire.batch([wire.delete_request(key, index) for key, index in listed])
        removed = 0
        kept: list[RouteKey] = []
        for (key, _), outcome in zip(listed, outcomes, strict=True):
            if outcome is None:
                removed += 1
            elif not _gone(outcome):
                kept.append(key)
                failures.append(f"cannot delete route {key}: {reason(outcome)}")
        if kept:
            with self._lock:
                self._routes.update(kept)
        return removed

    def _add_rule(self, key: RuleKey) -> None:
        # No priority: the kernel numbers rules in the order they are added, as for Kilo.
        self._ipr.rule("add", priority=None, **_rule_request(key))

    def _delete_rule(self, key: RuleKey, priority: int) -> None:
        self._ipr.rule("del", priority=priority, **_rule_request(key))

    def _delete(
        self,
        routes: Sequence[RouteKey],
        rules: Sequence[RuleKey],
        kernel: _Kernel,
        failures: list[str],
    ) -> int:
        """Delete tracked items; untrack each first so that watchers ignore our own deletions."""
        removed = 0
        for rule in rules:
            delete_rule = functools.partial(self._delete_rules, rule, kernel)
            removed += self._untrack(self._rules, rule, delete_rule, failures, "rule")
        return removed + self._delete_routes(routes, kernel.indexes, failures)

    def _delete_rules(self, key: RuleKey, kernel: _Kernel) -> int:
        """Delete every kernel rule of ``key`` (one per priority it holds)."""
        priorities = kernel.rules.get(key, ())
        for priority in priorities:
            self._delete_rule(key, priority)
        return len(priorities)

    def _track_added(
        self,
        tracked: set[K],
        key: K,
        add: Callable[[], None],
        failures: list[str],
        what: str,
    ) -> int:
        """``add`` the item ``key`` to the kernel, then track it; 1 if it was added."""
        try:
            add()
        except (NetlinkError, OSError) as exc:
            failures.append(f"cannot add {what}: {reason(exc)}")
            return 0
        with self._lock:
            tracked.add(key)
        return 1

    def _untrack(
        self,
        tracked: set[K],
        key: K,
        delete: Callable[[], int],
        failures: list[str],
        what: str,
    ) -> int:
        """Untrack ``key``, then ``delete`` it (returning how many kernel items went); on
        failure track it again, unless it is gone already."""
        with self._lock:
            tracked.discard(key)
        try:
            return delete()
        except (NetlinkError, OSError) as exc:
            if not _gone(exc):
                with self._lock:
                    tracked.add(key)
                failures.append(f"cannot delete {what} {key}: {reason(exc)}")
            return 0

    def _listing(self) -> _Kernel:
        kernel = _Kernel(self._ipr, self._wire, self._last_listing)
        self._last_listing = kernel
        with self._lock:
            self._names = dict(kernel.names)
        return kernel

    def _tracked(self) -> State:
        with self._lock:
            return frozenset(self._routes), frozenset(self._rules)

    def _save_collecting(
        self, routes: Iterable[RouteKey], rules: Iterable[RuleKey], failures: list[str]
    ) -> None:
        try:
            self._save(routes, rules)
        except DataPlaneError as exc:
            failures.append(str(exc))

    def set(
        self,
        routes: Sequence[Route],
        rules: Sequence[Rule],
        devices: Mapping[Device, str],
        *,
        full: bool = True,
    ) -> tuple[int, int]:
        """Bring the kernel to ``routes`` and ``rules``; return (added, removed).

        ``devices`` names the interface of each device role. Planned items missing from
        the kernel are added, tracked items no longer planned are deleted from their own
        table, and planned items already in the kernel are tracked too. Every failure
        (including a route whose device has no interface) is collected; the rest is still
        applied, then one :class:`DataPlaneError` lists them all.

        ``full=False`` (the agent between resyncs) diffs the plan against what the last
        successful ``set`` left (:class:`Known`) instead of listing the kernel, and writes
        only the difference: O(change), not O(routes in the kernel). It lists the kernel
        anyway when there is nothing to trust (no earlier success, a failure since, a
        clean-up, a deletion or lost events reported by a watcher), when the rules
        changed (their kernel priorities need a listing), or when a new route's slot
        turns out to be taken. What others change without a watcher seeing it is only
        seen by a full ``set``, which the agent runs on every resync.
        """
        with self._apply_lock:
            return self._set(routes, rules, devices, full)

    def _set(
        self,
        routes: Sequence[Route],
        rules: Sequence[Rule],
        devices: Mapping[Device, str],
        full: bool,
    ) -> tuple[int, int]:
        with self._lock:
            known, self._known = self._known, None
            invalidations = self._invalidations
        failures: list[str] = []
        desired = route_sync.desired_routes(routes, devices)
        for route in desired.unresolved:
            failures.append(
                f"route {format_route(route, devices)}: "
                f"no interface for device role {route.dev.value!r}"
            )
        planned_rules = route_sync.desired_rules(rules)
        rule_keys = [key for key, _ in planned_rules]
        added = removed = 0
        listed = True
        if not full and known is not None and tuple(rule_keys) == known.rules:
            incremental: list[str] = []
            try:
                added, removed = self._set_known(desired, known, devices, incremental)
                listed = False
                failures.extend(incremental)
            except _SlotTaken as taken:
                # What was done so far is tracked and counted; the listing does the rest,
                # and tries again whatever failed here (reported once, if it fails again).
                added, removed = taken.added, taken.removed
        if listed:
            more_added, more_removed = self._set_listed(desired, planned_rules, devices, failures)
            added += more_added
            removed += more_removed
        self._save_collecting(*self._tracked(), failures)
        if failures:
            raise DataPlaneError(summary(failures))
        with self._lock:
            if self._invalidations == invalidations:
                self._known = Known.after(desired, rule_keys, known)
        return added, removed

    def _set_listed(
        self,
        desired: route_sync.DesiredRoutes,
        planned_rules: Sequence[tuple[RuleKey, Rule]],
        devices: Mapping[Device, str],
        failures: list[str],
    ) -> tuple[int, int]:
        """The full path: list the kernel, diff, apply."""
        kernel = self._listing()
        tracked_routes, tracked_rules = self._tracked()
        route_changes = route_sync.diff(desired.keys, kernel.routes, tracked_routes)
        rule_changes = route_sync.diff(
            [key for key, _ in planned_rules], kernel.rules.keys(), tracked_rules
        )
        with self._lock:
            self._routes.update(route_changes.adopt)
            self._rules.update(rule_changes.adopt)
        # Before touching the kernel, record everything that may be ours once this is done:
        # if the agent dies half-way, the next run still removes what it added.
        self._save_collecting(
            tracked_routes | set(route_changes.adopt) | set(route_changes.add),
            tracked_rules | set(rule_changes.adopt) | set(rule_changes.add),
            failures,
        )
        with self._lock:
            self._routes.difference_update(route_changes.forget)
            self._rules.difference_update(rule_changes.forget)
        removed = self._delete(route_changes.delete, rule_changes.delete, kernel, failures)

        route_of = dict(desired.routes)
        adds = [(key, route_of[key]) for key in route_changes.add]
        added, _ = self._add_routes(adds, kernel.indexes, devices, failures, exclusive=False)
        rule_of = dict(planned_rules)
        for rule_key in rule_changes.add:
            add_rule = functools.partial(self._add_rule, rule_key)
            what = f"rule {format_rule(rule_of[rule_key])}"
            added += self._track_added(self._rules, rule_key, add_rule, failures, what)
        return added, removed

    def _set_known(
        self,
        desired: route_sync.DesiredRoutes,
        known: Known,
        devices: Mapping[Device, str],
        failures: list[str],
    ) -> tuple[int, int]:
        """The incremental path: the kernel holds ``known`` (and the table tracks exactly
        it), so the diff is between the plan and ``known``; the same deletions and
        additions as the full path, in the same order, and the same counts. Raises
        :class:`_SlotTaken` (having tracked what it did, and with its counts) when a new
        route's slot is taken; every other new route was added all the same."""
        stale, adds = route_sync.changed_since(desired, known.serial, known.routes)
        if not stale and not adds:
            return 0, 0
        indexes = self._indexes({key.dev for key in (*stale, *(key for key, _ in adds))})
        tracked_routes, tracked_rules = self._tracked()
        self._save_collecting(tracked_routes.union(key for key, _ in adds), tracked_rules, failures)
        removed = self._delete_routes(stale, indexes, failures)
        added, taken = self._add_routes(adds, indexes, devices, failures, exclusive=True)
        if taken:
            raise _SlotTaken(added, removed)
        return added, removed

    def _indexes(self, names: Iterable[str]) -> dict[str, int]:
        """The indexes of the interfaces ``names`` that exist, one request each (a listing
        of every link costs more on a node with a veth per pod)."""
        indexes: dict[str, int] = {}
        for name in sorted(names):
            links: tuple[Any, ...] = ()
            with failing(f"cannot read interface {name}", tolerate=frozenset({errno.ENODEV})):
                links = self._ipr.link("get", ifname=name)
            if links:
                indexes[name] = int(links[0]["index"])
        with self._lock:
            for name, index in indexes.items():
                self._names[index] = name
        return indexes

    def clean_up(self) -> None:
        """Delete exactly the tracked routes and rules, in every table."""
        with self._apply_lock:
            self._clean_up()

    def _clean_up(self) -> None:
        with self._lock:
            self._known = None
        failures: list[str] = []
        kernel = self._listing()
        tracked_routes, tracked_rules = self._tracked()
        route_changes = route_sync.diff((), kernel.routes, tracked_routes)
        rule_changes = route_sync.diff((), kernel.rules.keys(), tracked_rules)
        with self._lock:
            self._routes.difference_update(route_changes.forget)
            self._rules.difference_update(rule_changes.forget)
        self._delete(route_changes.delete, rule_changes.delete, kernel, failures)
        self._save_collecting(*self._tracked(), failures)
        if failures:
            raise DataPlaneError(summary(failures))

    @property
    def tracked(self) -> State:
        """The routes and rules this table would delete on clean-up."""
        return self._tracked()

    def kernel(self) -> State:
        """The Kilo-shaped routes and rules the kernel holds now, in every table, whoever
        added them (what :meth:`set` compares the plan with)."""
        with self._apply_lock:
            kernel = self._listing()
        return frozenset(kernel.routes), frozenset(kernel.rules)

    # -- watching ------------------------------------------------------------------------

    def _tracked_deletion(self, data: bytes) -> bool:
        """Whether the events in ``data`` delete a tracked route or rule. Only deletions
        are decoded: the others, such as the thousands of additions of a start-up, are
        skipped by their header."""
        with self._lock:
            for kind, _flags, _seq, offset, length in wire.messages(data, len(data)):
                if kind == wire.RTM_DELROUTE:
                    m = wire.route_message(data, offset, length)
                    if m is not None and _route_key_of(m, self._names) in self._routes:
                        return True
                elif kind == wire.RTM_DELRULE:
                    for rule in MarshalRtnl().parse(data[offset : offset + length]):
                        if _rule_key_of(rule) in self._rules:
                            return True
        return False

    def watch_deletions(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (on a background thread) when someone else deletes a tracked
        route or rule, or when events were lost; return a function that stops watching.

        The subscription is active when this returns. The callback should only signal the
        agent (for example set an event) and must not raise: an exception ends the watcher.
        The agent then calls :meth:`set` again. The stop function wakes the thread and joins
        it (for at most a few seconds); calling it twice is harmless.
        """
        with failing(f"cannot subscribe to route and rule events{where(self._netns)}"):
            sock = wire.open_watch_socket(self._netns)

        def reported() -> None:
            # What the table knows may be wrong now: the next set() lists the kernel.
            with self._lock:
                self._known = None
                self._invalidations += 1
            callback()

        watcher = Watcher(sock, self._tracked_deletion, reported)
        self._watchers.append(watcher)
        watcher.start()
        return watcher.stop

    def close(self) -> None:
        for watcher in self._watchers:
            watcher.stop()
        self._watchers.clear()
        self._ipr.close()
        self._wire.close()


def _rule_request(key: RuleKey) -> dict[str, Any]:
    request: dict[str, Any] = {
        "family": FAMILY[key.version],
        "table": key.table,
        "action": "to_tbl",
    }
    if key.src is not None:
        request["src"] = str(key.src.network_address)
        request["src_len"] = key.src.prefixlen
    if key.dst is not None:
        request["dst"] = str(key.dst.network_address)
        request["dst_len"] = key.dst.prefixlen
    if key.iif is not None:
        request["iifname"] = key.iif
    return request


def _gone(exc: BaseException) -> bool:
    """The item is already gone: nothing left to delete."""
    return isinstance(exc, NetlinkError) and exc.code in (errno.ESRCH, errno.ENOENT)


def summary(failures: Sequence[str]) -> str:
    what = "change" if len(failures) == 1 else "changes"
    return f"{len(failures)} route/rule {what} failed: " + "; ".join(failures)
