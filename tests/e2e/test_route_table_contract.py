"""The route table's contract, held by the real table (in a network namespace this test
creates and removes) and by its in-memory fake, which the loops' unit tests drive.

Each test runs twice: ``netlink`` (``RouteTable`` against a kernel) and ``memory``
(``InMemoryRouteTable``). What they must agree on is what the loops see: the counts
``set`` returns, the failures it raises, what is tracked, what the kernel holds afterwards
(``kernel()``), and the callback of ``watch_deletions``.
"""

from __future__ import annotations

import ipaddress
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from kilo.adapters.netlink import InMemoryRouteTable, RouteTable
from kilo.errors import DataPlaneError
from kilo.mesh import route_sync
from kilo.mesh.route_sync import RouteKey
from kilo.mesh.routes import Device, Route
from tests.examples import alpha_plan

INTERFACES = ("ens4", "kilo0", "tunl0")
ADDRESSES = {"ens4": "10.128.0.2/20", "kilo0": "10.4.0.2/16"}  # alpha's
DEVICES = {Device.KILO: "kilo0", Device.PRIVATE: "ens4", Device.TUNNEL: "tunl0"}
EVENT_TIMEOUT = 10.0


def ip(netns: str, *argv: str) -> None:
    result = subprocess.run(["ip", "-n", netns, *argv], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"ip {' '.join(argv)}: {result.stderr}"


@dataclass
class Subject:
    """A route table and what someone else may do to its kernel behind its back."""

    table: RouteTable | InMemoryRouteTable
    add_route: Callable[[RouteKey], None]
    delete_route: Callable[[RouteKey], None]


def _netlink(netns: str) -> Iterator[Subject]:
    # alpha's interfaces (veths) and addresses: the planned routes' sources must be local.
    for name in INTERFACES:
        ip(netns, "link", "add", name, "type", "veth", "peer", "name", f"{name}p")
        ip(netns, "link", "set", name, "up")
        ip(netns, "link", "set", f"{name}p", "up")
    for name, address in ADDRESSES.items():
        ip(netns, "addr", "add", address, "dev", name)

    def add_route(key: RouteKey) -> None:
        ip(netns, "route", "add", *str(key).split(), *(["onlink"] if key.gw else []))

    def delete_route(key: RouteKey) -> None:
        ip(netns, "route", "del", *str(key).split())

    with RouteTable(netns=netns) as table:
        yield Subject(table, add_route, delete_route)


def _memory() -> Iterator[Subject]:
    addresses = [ipaddress.ip_interface(a).ip for a in ADDRESSES.values()]
    table = InMemoryRouteTable(interfaces=INTERFACES, addresses=addresses)
    yield Subject(table, table.kernel_routes.add, table.delete_route)


@pytest.fixture(params=["netlink", "memory"])
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    if request.param == "netlink":
        yield from _netlink(request.getfixturevalue("netns"))
    else:
        yield from _memory()


def test_set_adds_then_changes_nothing_then_removes_what_is_no_longer_planned(
    subject: Subject,
) -> None:
    table = subject.table
    before = table.kernel()
    planned_routes, planned_rules = alpha_plan()
    assert table.set(planned_routes, planned_rules, DEVICES) == (9, 0)
    tracked_routes, tracked_rules = table.tracked
    assert (len(tracked_routes), len(tracked_rules)) == (7, 2)
    kernel_routes, kernel_rules = table.kernel()
    assert tracked_routes <= kernel_routes and tracked_rules <= kernel_rules
    assert table.set(planned_routes, planned_rules, DEVICES) == (0, 0)
    # beta leaves the location: its table-1107 route and both rules are no longer planned.
    kept = tuple(r for r in planned_routes if r.table is None)
    assert table.set(kept, (), DEVICES) == (0, 3)
    assert table.tracked[1] == frozenset()
    table.clean_up()
    assert table.tracked == (frozenset(), frozenset())
    assert table.kernel() == before


def test_a_route_without_its_interface_fails_and_the_others_are_applied(
    subject: Subject,
) -> None:
    table = subject.table
    planned_routes, planned_rules = alpha_plan()
    devices = {**DEVICES, Device.TUNNEL: "tunl9"}
    with pytest.raises(DataPlaneError, match="interface tunl9 does not exist"):
        table.set(planned_routes, planned_rules, devices)
    tracked_routes, tracked_rules = table.tracked
    assert (len(tracked_routes), len(tracked_rules)) == (5, 2)
    assert all(key.dev != "tunl9" for key in tracked_routes)
    # A device role with no interface at all is named too.
    with pytest.raises(DataPlaneError, match="no interface for device role 'tunnel'"):
        table.set(planned_routes, planned_rules, {Device.KILO: "kilo0", Device.PRIVATE: "ens4"})


def delete_one_watched(subject: Subject) -> RouteKey:
    """Delete one tracked route behind the table's back while it watches: the route."""
    table = subject.table
    fired = threading.Event()
    stop = table.watch_deletions(fired.set)
    try:
        victim = min(table.tracked[0], key=str)
        subject.delete_route(victim)
        assert fired.wait(EVENT_TIMEOUT)
    finally:
        stop()
    return victim


def test_a_tracked_route_deleted_by_someone_else_is_reported_and_comes_back(
    subject: Subject,
) -> None:
    table = subject.table
    planned_routes, planned_rules = alpha_plan()
    table.set(planned_routes, planned_rules, DEVICES)
    victim = delete_one_watched(subject)
    assert victim not in table.kernel()[0]
    assert table.set(planned_routes, planned_rules, DEVICES) == (1, 0)
    assert victim in table.kernel()[0]


def test_a_planned_route_already_in_the_kernel_is_adopted_and_cleaned_up(
    subject: Subject,
) -> None:
    table = subject.table
    before = table.kernel()
    planned_routes, planned_rules = alpha_plan()
    table.set(planned_routes, planned_rules, DEVICES)
    present = min(table.tracked[0], key=str)
    table.clean_up()
    # Left over by an earlier run (or typed by hand): the next set adopts it.
    subject.add_route(present)
    assert table.set(planned_routes, planned_rules, DEVICES) == (8, 0)
    assert present in table.tracked[0]
    table.clean_up()
    assert table.kernel() == before


def test_a_foreign_route_is_never_touched(subject: Subject) -> None:
    table = subject.table
    foreign = RouteKey(dst=ipaddress.ip_network("192.0.2.0/24"), dev="ens4")
    subject.add_route(foreign)
    planned_routes, planned_rules = alpha_plan()
    table.set(planned_routes, planned_rules, DEVICES)
    table.set((), (), DEVICES)
    table.clean_up()
    assert foreign in table.kernel()[0]
    assert foreign not in table.tracked[0]


# --- set(full=False): the diff against the table's own last write, without a listing --------

ALIP = "172.31.5.5/32"  # alpha's route to an allowed location IP of beta's location


def _without_alip() -> tuple[tuple[Route, ...], tuple[Route, ...], RouteKey]:
    """alpha's routes without the one to ``ALIP``, all of them, and that route's key."""
    planned_routes, _ = alpha_plan()
    alip = next(r for r in planned_routes if str(r.dst) == ALIP)
    key = route_sync.route_key(alip, DEVICES)
    assert key is not None
    return tuple(r for r in planned_routes if r is not alip), planned_routes, key


def test_an_incremental_set_writes_the_difference_with_the_counts_of_a_full_one(
    subject: Subject,
) -> None:
    table = subject.table
    before = table.kernel()
    fewer, planned_routes, alip = _without_alip()
    _, planned_rules = alpha_plan()
    assert table.set(planned_routes, planned_rules, DEVICES) == (9, 0)
    assert table.set(planned_routes, planned_rules, DEVICES, full=False) == (0, 0)
    assert table.set(fewer, planned_rules, DEVICES, full=False) == (0, 1)
    assert alip not in table.kernel()[0] and alip not in table.tracked[0]
    assert table.set(planned_routes, planned_rules, DEVICES, full=False) == (1, 0)
    assert alip in table.kernel()[0] and alip in table.tracked[0]
    # The rules change too: the same counts as a full set (which this one becomes).
    kept = tuple(r for r in planned_routes if r.table is None)
    assert table.set(kept, (), DEVICES, full=False) == (0, 3)
    assert table.tracked[1] == frozenset()
    table.clean_up()
    assert table.kernel() == before


def test_an_incremental_set_trusts_the_table_and_a_full_set_repairs_the_kernel(
    subject: Subject,
) -> None:
    table = subject.table
    planned_routes, planned_rules = alpha_plan()
    table.set(planned_routes, planned_rules, DEVICES)
    victim = min(table.tracked[0], key=str)
    subject.delete_route(victim)  # no watcher: the table cannot know
    assert table.set(planned_routes, planned_rules, DEVICES, full=False) == (0, 0)
    assert victim not in table.kernel()[0]
    assert table.set(planned_routes, planned_rules, DEVICES) == (1, 0)
    assert victim in table.kernel()[0]


def test_a_reported_deletion_makes_the_next_incremental_set_list_the_kernel(
    subject: Subject,
) -> None:
    table = subject.table
    planned_routes, planned_rules = alpha_plan()
    table.set(planned_routes, planned_rules, DEVICES)
    victim = delete_one_watched(subject)
    assert table.set(planned_routes, planned_rules, DEVICES, full=False) == (1, 0)
    assert victim in table.kernel()[0]


def test_an_incremental_set_adopts_a_new_route_already_in_the_kernel(subject: Subject) -> None:
    table = subject.table
    before = table.kernel()
    fewer, planned_routes, alip = _without_alip()
    _, planned_rules = alpha_plan()
    table.set(fewer, planned_rules, DEVICES)
    subject.add_route(alip)  # typed by hand while it was not planned
    assert table.set(planned_routes, planned_rules, DEVICES, full=False) == (0, 0)
    assert alip in table.tracked[0]
    table.clean_up()
    assert table.kernel() == before


def test_an_incremental_set_replaces_another_route_in_the_new_route_s_slot(
    subject: Subject,
) -> None:
    table = subject.table
    fewer, planned_routes, alip = _without_alip()
    _, planned_rules = alpha_plan()
    table.set(fewer, planned_rules, DEVICES)
    other = RouteKey(dst=alip.dst, dev="ens4")  # the same table and destination
    subject.add_route(other)
    assert table.set(planned_routes, planned_rules, DEVICES, full=False) == (1, 0)
    kernel_routes = table.kernel()[0]
    assert alip in kernel_routes and other not in kernel_routes


def test_a_failed_incremental_set_is_followed_by_one_that_lists_the_kernel(
    subject: Subject,
) -> None:
    table = subject.table
    fewer, planned_routes, alip = _without_alip()
    _, planned_rules = alpha_plan()
    table.set(fewer, planned_rules, DEVICES)
    devices = {**DEVICES, Device.KILO: "kilo9"}  # kilo0 renamed: every kilo0 route moves
    with pytest.raises(DataPlaneError, match="interface kilo9 does not exist"):
        table.set(planned_routes, planned_rules, devices, full=False)
    victim = min(table.tracked[0], key=str)
    subject.delete_route(victim)  # unseen, but the failure makes the next set list
    assert table.set(planned_routes, planned_rules, DEVICES, full=False)[0] >= 1
    assert victim in table.kernel()[0] and alip in table.kernel()[0]


# --- batches: routes are written many to a netlink send, each with its own outcome ----------

MANY = 300  # more than one send's worth (wire.BATCH): failures land inside and across sends
NOT_LOCAL = ipaddress.ip_address("192.0.2.77")  # a source no interface has: EINVAL


def _many(first_octet: int = 100, bad: frozenset[int] = frozenset()) -> tuple[Route, ...]:
    """``MANY`` routes over kilo0 to 10.<first_octet>.x.0/24 and 10.<first_octet+1>..., the
    ``bad`` ones (by position) with a source address the node does not have."""
    return tuple(
        Route(
            dst=ipaddress.ip_network(f"10.{first_octet + i // 256}.{i % 256}.0/24"),
            dev=Device.KILO,
            src=NOT_LOCAL if i in bad else None,
        )
        for i in range(MANY)
    )


def _keys(routes: tuple[Route, ...]) -> set[RouteKey]:
    return {k for r in routes if (k := route_sync.route_key(r, DEVICES)) is not None}


def test_a_batch_adds_every_route_and_a_full_set_then_changes_nothing(subject: Subject) -> None:
    table = subject.table
    before = table.kernel()
    routes = _many()
    assert table.set(routes, (), DEVICES) == (MANY, 0)
    assert _keys(routes) <= table.kernel()[0]
    assert table.tracked[0] == frozenset(_keys(routes))
    assert table.set(routes, (), DEVICES) == (0, 0)
    assert table.set(routes, (), DEVICES, full=False) == (0, 0)
    assert table.set(routes[:10], (), DEVICES, full=False) == (0, MANY - 10)
    table.clean_up()
    assert table.kernel() == before


def test_a_route_the_kernel_refuses_in_a_batch_is_named_and_the_rest_applied(
    subject: Subject,
) -> None:
    table = subject.table
    before = table.kernel()
    bad = frozenset({0, 150, MANY - 1})  # first, mid-batch in the second send, last
    routes = _many(bad=bad)
    with pytest.raises(DataPlaneError) as failure:
        table.set(routes, (), DEVICES)
    message = str(failure.value)
    assert message.startswith("3 route/rule changes failed: ")
    for i in sorted(bad):
        assert f"cannot add route {routes[i].dst} dev kilo0 proto static src {NOT_LOCAL}: " in (
            message
        )
    assert message.count("Invalid argument") == 3
    good = _keys(tuple(r for i, r in enumerate(routes) if i not in bad))
    assert good <= table.kernel()[0]
    assert table.tracked[0] == frozenset(good)  # the refused routes are not tracked
    # The same failures again on the next set, incremental or not (after a failure, the
    # table lists the kernel), and nothing else is written.
    with pytest.raises(DataPlaneError, match="3 route/rule changes failed"):
        table.set(routes, (), DEVICES, full=False)
    fixed = _many()
    assert table.set(fixed, (), DEVICES, full=False) == (3, 0)
    assert table.tracked[0] == frozenset(_keys(fixed))
    table.clean_up()
    assert table.kernel() == before


def test_an_incremental_batch_with_a_taken_slot_adds_the_rest_then_lists_the_kernel(
    subject: Subject,
) -> None:
    table = subject.table
    before = table.kernel()
    first = _many(100)
    table.set(first, (), DEVICES)
    second = _many(110)
    taken = route_sync.route_key(second[150], DEVICES)
    assert taken is not None
    foreign = RouteKey(dst=taken.dst, dev="ens4")  # someone else's, in a new slot
    subject.add_route(foreign)
    # Every new route is added: 299 by the batch, the taken one replaced after the listing.
    assert table.set(second, (), DEVICES, full=False) == (MANY, MANY)
    kernel_routes = table.kernel()[0]
    assert _keys(second) <= kernel_routes and foreign not in kernel_routes
    assert not _keys(first) & kernel_routes
    assert table.tracked[0] == frozenset(_keys(second))
    table.clean_up()
    assert table.kernel() == before


def test_a_refused_route_in_an_incremental_batch_with_a_taken_slot_is_reported_once(
    subject: Subject,
) -> None:
    table = subject.table
    before = table.kernel()
    table.set(_many(100), (), DEVICES)
    second = _many(110, bad=frozenset({7}))
    taken = route_sync.route_key(second[150], DEVICES)
    assert taken is not None
    subject.add_route(RouteKey(dst=taken.dst, dev="ens4"))
    # The batch is refused route 7 and finds 150's slot taken; the listing that follows
    # tries 7 again, and its one failure is the one reported.
    with pytest.raises(DataPlaneError) as failure:
        table.set(second, (), DEVICES, full=False)
    message = str(failure.value)
    assert message.startswith("1 route/rule change failed: "), message
    assert message.count(f"cannot add route {second[7].dst} ") == 1
    assert _keys(tuple(r for i, r in enumerate(second) if i != 7)) <= table.kernel()[0]
    table.clean_up()
    assert table.kernel() == before


def test_a_batch_deletion_of_a_route_already_gone_is_no_failure(subject: Subject) -> None:
    table = subject.table
    before = table.kernel()
    routes = _many()
    table.set(routes, (), DEVICES)
    gone = route_sync.route_key(routes[200], DEVICES)
    assert gone is not None
    subject.delete_route(gone)  # no watcher: the table still believes it holds it
    assert table.set((), (), DEVICES, full=False) == (0, MANY - 1)
    assert table.tracked == (frozenset(), frozenset())
    assert table.kernel() == before
