"""The route table's O(change) path against a from-scratch computation.

Between two plans of a leader most Route objects are the very same ones: ``desired_routes``
then patches its last result instead of looking at every route, and hands the route table
the difference (``RouteDelta``), from which the table takes what to delete and add
(``changed_since``), what it now holds (``Known.after``) and its state file's text
(``StateText``). Each must be what the same inputs give from scratch, over random
sequences of plans: routes that stay, go, come back as equal copies, collide in a slot,
repeat, lose their interface.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator

from hypothesis import given, settings
from hypothesis import strategies as st

from kilo.adapters.netlink.route_table import Known
from kilo.mesh import route_state, route_sync
from kilo.mesh.route_sync import DesiredRoutes, RouteKey, RuleKey
from kilo.mesh.routes import Device, Route

DEVICES = {Device.KILO: "kilo0", Device.PRIVATE: "eth0", Device.TUNNEL: "tunl0"}
NO_TUNNEL = {Device.KILO: "kilo0", Device.PRIVATE: "eth0"}


@contextlib.contextmanager
def own_memo() -> Iterator[None]:
    """An empty memo for this example (as an agent's first plan), the agent's one after."""
    saved = route_sync._ROUTE_KEYS
    route_sync._ROUTE_KEYS = route_sync._RouteKeyMemo()
    try:
        yield
    finally:
        route_sync._ROUTE_KEYS = saved


def from_scratch(routes: list[Route], devices: dict[Device, str]) -> DesiredRoutes:
    with own_memo():
        return route_sync.desired_routes(routes, devices)


# A route's values from a few of each: equal copies, shared slots (same table and
# destination, another gateway or device), other tables.
route_values = st.builds(
    lambda dst, gw, dev, table: Route(
        dst=ipaddress.ip_network(f"10.{dst}.0.0/16"),
        gw=None if gw is None else ipaddress.ip_address(f"10.4.0.{gw}"),
        dev=dev,
        table=table,
    ),
    st.integers(min_value=0, max_value=30),
    st.one_of(st.none(), st.integers(min_value=1, max_value=2)),
    st.sampled_from((Device.KILO, Device.KILO, Device.PRIVATE, Device.TUNNEL)),
    st.sampled_from((None, None, None, 1107)),
)

# One change of the plan: (what, where, a new route's values).
steps = st.tuples(
    st.sampled_from(("same", "add", "add", "remove", "remove", "copy", "twice", "swap")),
    st.integers(min_value=0, max_value=1000),
    route_values,
)


def change(routes: list[Route], step: tuple[str, int, Route]) -> list[Route]:
    what, where, route = step
    routes = list(routes)
    i = where % (len(routes) + 1)
    if what == "add":
        routes.insert(i, route)  # a new object, perhaps with the values of another
    elif routes and what in ("remove", "copy", "twice", "swap"):
        i %= len(routes)
        if what == "remove":
            del routes[i]
        elif what == "copy":  # an equal Route, another object (a segment rebuilt)
            old = routes[i]
            routes[i] = Route(dst=old.dst, gw=old.gw, dev=old.dev, table=old.table)
        elif what == "twice":  # the same object twice in a plan
            routes.insert(where % (len(routes) + 1), routes[i])
        else:
            j = where // 7 % len(routes)
            routes[i], routes[j] = routes[j], routes[i]
    return routes


@settings(max_examples=300, deadline=None)
@given(
    st.lists(route_values, max_size=12, unique_by=lambda r: (r.table, r.dst)),
    st.lists(st.tuples(st.lists(steps, max_size=3), st.booleans()), min_size=1, max_size=10),
)
def test_patched_desired_routes_and_their_delta_are_the_ones_from_scratch(
    start: list[Route], plans: list[tuple[list[tuple[str, int, Route]], bool]]
) -> None:
    routes = start
    with own_memo():
        last = route_sync.desired_routes(routes, DEVICES)
        assert last == from_scratch(routes, DEVICES)
        for plan_steps, tunnel in plans:
            for step in plan_steps:
                routes = change(routes, step)
            devices = DEVICES if tunnel else NO_TUNNEL
            got = route_sync.desired_routes(routes, devices)
            want = from_scratch(routes, devices)
            assert got == want
            assert got.serial != last.serial
            delta = got.delta
            if delta is not None:
                assert delta.base == last.serial
                before = set(last.keys)
                assert set(delta.removed) == before - set(got.keys)
                assert len(delta.removed) == len(set(delta.removed))
                assert list(delta.added) == [p for p in got.routes if p[0] not in before]
            last = got


def test_a_leader_change_is_patched() -> None:
    """The common case takes the O(change) path: one route more, one gone, one rebuilt."""
    routes = [
        Route(dst=ipaddress.ip_network(f"10.{i // 250}.{i % 250}.0/24"), dev=Device.KILO)
        for i in range(1000)
    ]
    extra = Route(dst=ipaddress.ip_network("100.64.0.1/32"), dev=Device.KILO)
    rebuilt = Route(dst=routes[7].dst, dev=Device.KILO)
    with own_memo():
        first = route_sync.desired_routes(routes, DEVICES)
        assert first.delta is None
        routes = [*routes[:5], extra, *routes[5:7], rebuilt, *routes[8:-1]]
        second = route_sync.desired_routes(routes, DEVICES)
    assert second == from_scratch(routes, DEVICES)
    assert second.delta is not None and second.delta.base == first.serial
    assert [route for _, route in second.delta.added] == [extra]
    assert second.delta.removed == (first.keys[-1],)


def test_a_new_route_in_a_taken_slot_is_shadowed_not_patched() -> None:
    """A new route whose table and destination an earlier route holds loses to it, wherever
    it comes in the plan; and an earlier new one wins over a later kept one."""
    a = Route(dst=ipaddress.ip_network("10.1.0.0/16"), dev=Device.KILO)
    b = Route(dst=ipaddress.ip_network("10.2.0.0/16"), dev=Device.KILO)
    rival = Route(dst=a.dst, gw=ipaddress.ip_address("10.4.0.1"), dev=Device.KILO)
    with own_memo():
        route_sync.desired_routes([a, b], DEVICES)
        later = route_sync.desired_routes([a, b, rival], DEVICES)
        assert later.shadowed == (rival,) and [r for _, r in later.routes] == [a, b]
        earlier = route_sync.desired_routes([rival, a, b], DEVICES)
        assert earlier.shadowed == (a,) and [r for _, r in earlier.routes] == [rival, b]


def test_a_route_object_twice_counts_once() -> None:
    """The same Route object twice in the part of the plan that changed (a swap, a repeat
    and one gone) is one route, as from scratch, not two pairs."""
    a, b, c, d = (
        Route(dst=ipaddress.ip_network(f"10.{i}.0.0/16"), dev=Device.KILO) for i in range(4)
    )
    with own_memo():
        route_sync.desired_routes([a, b, c, d], DEVICES)
        got = route_sync.desired_routes([b, a, b, d], DEVICES)
    assert got == from_scratch([b, a, b, d], DEVICES)
    assert [route for _, route in got.routes] == [b, a, d]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(route_values, max_size=12),
    st.lists(st.lists(steps, max_size=3), min_size=1, max_size=8),
)
def test_changed_since_and_known_after_by_delta_are_the_full_diff(
    start: list[Route], plans: list[list[tuple[str, int, Route]]]
) -> None:
    routes = start
    rules = [RuleKey(table=1107)]
    with own_memo():
        known = Known.after(route_sync.desired_routes(routes, DEVICES), rules)
        for plan_steps in plans:
            for step in plan_steps:
                routes = change(routes, step)
            desired = route_sync.desired_routes(routes, DEVICES)
            got = route_sync.changed_since(desired, known.serial, known.routes)
            assert got == route_sync.changed_since(desired, None, known.routes)
            stale = sorted(set(known.routes) - set(desired.keys), key=str)
            assert got == (stale, [p for p in desired.routes if p[0] not in known.routes])
            after = Known.after(desired, rules, known)
            assert after.routes == frozenset(desired.keys)
            assert after.rules == tuple(rules)
            known = after


route_keys = st.builds(
    lambda dst, dev, gw: RouteKey(
        dst=ipaddress.ip_network(f"10.{dst // 256}.{dst % 256}.0/24"),
        dev=dev,
        gw=None if gw is None else ipaddress.ip_address(f"10.4.0.{gw}"),
    ),
    st.integers(min_value=0, max_value=2000),
    st.sampled_from(("kilo0", "eth0")),
    st.one_of(st.none(), st.integers(min_value=1, max_value=3)),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(route_keys, max_size=40),
    st.lists(
        st.tuples(st.lists(route_keys, max_size=4), st.integers(min_value=0, max_value=6)),
        max_size=10,
    ),
)
def test_state_text_is_encode_state(
    start: list[RouteKey], steps: list[tuple[list[RouteKey], int]]
) -> None:
    state = route_state.StateText()
    keys = frozenset(start)
    rules = frozenset({RuleKey(table=1107)})
    assert state.encode(keys, rules) == route_state.encode_state(keys, rules)
    for came, going in steps:
        keys = (keys - set(sorted(keys, key=str)[:going])) | set(came)
        assert state.encode(keys, rules) == route_state.encode_state(keys, rules)
