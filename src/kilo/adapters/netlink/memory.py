"""The route table's fake: :class:`RouteTable`'s contract over a kernel held in memory.

For the unit tests of the loops (the agent's, ``kgctl connect``'s). The decisions are the
core's, as the real table's (:mod:`kilo.mesh.route_sync`); what this models is the kernel:
routes exist only on interfaces that exist, one to a table and
destination (a replace overwrites the other), a rule can be held more than once, and someone
else may delete what the table added (:meth:`InMemoryRouteTable.delete_route`), unseen
by a ``set(full=False)`` unless a watcher reports it. The same
contract tests run against this and against :class:`RouteTable` in a network namespace
(tests/e2e/test_route_table_contract.py), so that the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from kilo.adapters.netlink.route_table import Known, State, summary
from kilo.errors import DataPlaneError
from kilo.mesh import route_sync
from kilo.mesh.ip import IPAddress
from kilo.mesh.route_sync import RouteKey, RuleKey
from kilo.mesh.routes import Device, Route, Rule, format_route


class InMemoryRouteTable:
    """Kilo's routes and rules in a kernel that has the interfaces ``interfaces`` and, when
    given, the local addresses ``addresses`` (a route's source must be one of them, as the
    kernel checks; ``None``: any source is accepted)."""

    def __init__(
        self, interfaces: Iterable[str] = (), addresses: Iterable[IPAddress] | None = None
    ) -> None:
        self.interfaces = set(interfaces)
        self.addresses = None if addresses is None else set(addresses)
        # The kernel: every route and rule in it (Kilo's or not), by identity.
        self.kernel_routes: set[RouteKey] = set()
        self.kernel_rules: set[RuleKey] = set()
        self.state_error: str | None = None
        self._routes: set[RouteKey] = set()
        self._rules: set[RuleKey] = set()
        self._watchers: list[Callable[[], None]] = []
        self._known: Known | None = None  # as RouteTable's: what an incremental set trusts
        # What the loop asked for, for the tests' assertions.
        self.calls = 0
        self.listings = 0  # how many sets listed the kernel (the full path)
        self.planned: tuple[Route, ...] = ()
        self.cleaned = False

    @property
    def routes(self) -> tuple[Route, ...]:
        """The routes of the last :meth:`set` (what the loop asked for)."""
        return self.planned

    def set(
        self,
        routes: Sequence[Route],
        rules: Sequence[Rule],
        devices: Mapping[Device, str],
        *,
        full: bool = True,
    ) -> tuple[int, int]:
        self.calls += 1
        self.planned = tuple(routes)
        known, self._known = self._known, None
        desired = route_sync.desired_routes(routes, devices)
        failures = [
            f"route {format_route(route, devices)}: "
            f"no interface for device role {route.dev.value!r}"
            for route in desired.unresolved
        ]
        planned_rules = [key for key, _ in route_sync.desired_rules(rules)]
        route_of = dict(desired.routes)
        if full or known is None or tuple(planned_rules) != known.rules:
            to_add, removed = self._listed(desired.keys, planned_rules)
            added = 0
        else:
            # RouteTable's incremental path: the diff against what it knows, without
            # looking at the kernel; every new route whose slot is free is added (one
            # batch), and if any found its slot taken (EEXIST), the kernel is listed.
            stale, adds = route_sync.changed_since(desired, known.serial, known.routes)
            new = [key for key, _ in adds]
            removed = 0
            for key in stale:
                self._routes.discard(key)
                if key in self.kernel_routes and key.dev in self.interfaces:
                    self.kernel_routes.discard(key)
                    removed += 1
            slots = {key.slot for key in self.kernel_routes} if new else set()
            free = [key for key in new if key.slot not in slots]
            incremental: list[str] = []
            added = self._add(free, route_of, devices, incremental)
            to_add = ()
            if len(free) < len(new):
                # The listing tries again whatever failed here (reported once).
                to_add, more_removed = self._listed(desired.keys, planned_rules)
                removed += more_removed
            else:
                failures.extend(incremental)
        added += self._add(to_add, route_of, devices, failures)
        rule_changes = route_sync.diff(planned_rules, self.kernel_rules, self._rules)
        self.kernel_rules.update(rule_changes.add)
        self._rules.update(rule_changes.add)
        added += len(rule_changes.add)
        if failures:
            raise DataPlaneError(summary(failures))
        self._known = Known.after(desired, planned_rules, known)
        return added, removed

    def _add(
        self,
        keys: Sequence[RouteKey],
        route_of: Mapping[RouteKey, Route],
        devices: Mapping[Device, str],
        failures: list[str],
    ) -> int:
        added = 0
        for key in keys:
            if key.dev not in self.interfaces:
                failures.append(
                    f"route {format_route(route_of[key], devices)}: "
                    f"interface {key.dev} does not exist"
                )
                continue
            if self.addresses is not None and key.src is not None and key.src not in self.addresses:
                # The kernel refuses that route alone (EINVAL); the others are still added.
                failures.append(
                    f"cannot add route {format_route(route_of[key], devices)}: Invalid argument"
                )
                continue
            # ``ip route replace``: one route per table and destination.
            self.kernel_routes.difference_update(
                [k for k in self.kernel_routes if k.slot == key.slot]
            )
            self.kernel_routes.add(key)
            self._routes.add(key)
            added += 1
        return added

    def _listed(
        self, routes: Sequence[RouteKey], rules: Sequence[RuleKey]
    ) -> tuple[tuple[RouteKey, ...], int]:
        self.listings += 1
        return self._sync(routes, rules)

    def _sync(
        self, routes: Sequence[RouteKey], rules: Sequence[RuleKey]
    ) -> tuple[tuple[RouteKey, ...], int]:
        """Adopt what the kernel already holds, forget what is gone, delete what is no
        longer planned; return the routes to add and how many items were deleted."""
        route_changes = route_sync.diff(routes, self.kernel_routes, self._routes)
        rule_changes = route_sync.diff(rules, self.kernel_rules, self._rules)
        self._routes.update(route_changes.adopt)
        self._rules.update(rule_changes.adopt)
        self._routes.difference_update(route_changes.forget, route_changes.delete)
        self._rules.difference_update(rule_changes.forget, rule_changes.delete)
        self.kernel_routes.difference_update(route_changes.delete)
        self.kernel_rules.difference_update(rule_changes.delete)
        return route_changes.add, len(route_changes.delete) + len(rule_changes.delete)

    def clean_up(self) -> None:
        self._known = None
        self._sync((), ())
        self.cleaned = True

    @property
    def tracked(self) -> State:
        return frozenset(self._routes), frozenset(self._rules)

    def kernel(self) -> State:
        return frozenset(self.kernel_routes), frozenset(self.kernel_rules)

    def delete_route(self, key: RouteKey) -> None:
        """Someone else deletes a route from the kernel (``ip route del``)."""
        self.kernel_routes.discard(key)
        if key in self._routes and self._watchers:
            self._known = None  # as RouteTable's watchers do
            for callback in list(self._watchers):
                callback()

    def watch_deletions(self, callback: Callable[[], None]) -> Callable[[], None]:
        self._watchers.append(callback)

        def stop() -> None:
            if callback in self._watchers:
                self._watchers.remove(callback)

        return stop

    def close(self) -> None:
        self._watchers.clear()
