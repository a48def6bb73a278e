"""The netlink adapter against a real kernel, inside a fresh network namespace.

The adapter opens its sockets inside the namespace (pyroute2 ``netns=``), so this process
stays in the root namespace. Links are veth pairs (this kernel has no dummy module); the
planned routes are the §4.5 worked example of the leader ``alpha``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kilo.adapters.netlink import Links, RouteTable, wire
from kilo.errors import DataPlaneError
from kilo.mesh.routes import Device, Route, Rule
from tests.examples import alpha_plan

DEVICES = {Device.KILO: "kilo0", Device.PRIVATE: "ens4", Device.TUNNEL: "tunl0"}
EVENT_TIMEOUT = 10.0


def ip(netns: str, *argv: str) -> str:
    result = subprocess.run(["ip", "-n", netns, *argv], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"ip {' '.join(argv)}: {result.stderr}"
    return result.stdout


def snapshot(netns: str) -> dict[str, str]:
    return {
        "routes": ip(netns, "route", "show", "table", "all"),
        "routes6": ip(netns, "-6", "route", "show", "table", "all"),
        "rules": ip(netns, "rule"),
        "rules6": ip(netns, "-6", "rule"),
    }


def lines(text: str) -> list[str]:
    return [" ".join(line.split()) for line in text.splitlines()]


def table(netns: str, name: str = "main", *, family: str = "-4") -> list[str]:
    """The static routes of a table (``ip`` leaves "proto static" out when filtering on it)."""
    return lines(ip(netns, family, "route", "show", "table", name, "proto", "static"))


def rules(netns: str, *, family: str = "-4") -> list[str]:
    return lines(ip(netns, family, "rule"))


ALPHA_MAIN = [
    "10.2.1.0/24 via 10.128.0.3 dev tunl0 src 10.128.0.2 onlink",
    "10.2.2.0/24 via 10.4.0.1 dev kilo0 src 10.128.0.2 onlink",
    "10.2.3.0/24 via 10.4.0.3 dev kilo0 src 10.128.0.2 onlink",
    "10.5.0.1 dev kilo0 src 10.128.0.2",
    "172.31.5.5 via 10.4.0.1 dev kilo0 src 10.128.0.2 onlink",
    "172.31.100.0/24 via 10.4.0.1 dev kilo0 src 10.128.0.2 onlink",
]
ALPHA_1107 = ["10.128.0.3 via 10.128.0.3 dev tunl0 src 10.128.0.2 onlink"]
ALPHA_RULES = [
    "32764: from all to 10.128.0.3 iif kilo0 lookup 1107",
    "32765: from 10.2.0.0/24 to 10.128.0.3 lookup 1107",
]


def main_routes(netns: str) -> list[str]:
    return table(netns)


def table_1107(netns: str) -> list[str]:
    return table(netns, "1107")


def kilo_rules(netns: str) -> list[str]:
    return [line for line in rules(netns) if "lookup 1107" in line]


@pytest.fixture
def host(netns: str) -> str:
    """The namespace with alpha's interfaces: ens4 (private IP), kilo0 and tunl0 (veths)."""
    for name in ("ens4", "kilo0", "tunl0"):
        ip(netns, "link", "add", name, "type", "veth", "peer", "name", f"{name}p")
        ip(netns, "link", "set", name, "up")
        ip(netns, "link", "set", f"{name}p", "up")
    ip(netns, "link", "set", "lo", "up")
    ip(netns, "addr", "add", "10.128.0.2/20", "dev", "ens4")
    ip(netns, "addr", "add", "fd00:128::2/64", "dev", "ens4", "nodad")
    ip(netns, "addr", "add", "10.4.0.2/16", "dev", "kilo0")
    return netns


@pytest.fixture
def routes(host: str) -> Iterator[RouteTable]:
    with RouteTable(netns=host) as table_:
        yield table_


def test_routes_in_main_and_table_1107_are_added_removed_and_cleaned_up(
    host: str, routes: RouteTable
) -> None:
    before = snapshot(host)
    planned_routes, planned_rules = alpha_plan()
    assert routes.set(planned_routes, planned_rules, DEVICES) == (9, 0)
    assert main_routes(host) == ALPHA_MAIN
    assert table_1107(host) == ALPHA_1107
    # No priorities: the kernel numbers the rules in the order they were added.
    assert kilo_rules(host) == ALPHA_RULES
    assert routes.set(planned_routes, planned_rules, DEVICES) == (0, 0)

    # beta leaves the location: its table-1107 route and both rules are no longer planned.
    kept = tuple(r for r in planned_routes if r.table is None)
    assert routes.set(kept, (), DEVICES) == (0, 3)
    assert table_1107(host) == []
    assert kilo_rules(host) == []
    assert main_routes(host) == ALPHA_MAIN

    routes.clean_up()
    assert snapshot(host) == before
    assert routes.tracked == (frozenset(), frozenset())


def test_a_route_or_rule_deleted_by_hand_comes_back_on_the_next_set(
    host: str, routes: RouteTable
) -> None:
    planned_routes, planned_rules = alpha_plan()
    routes.set(planned_routes, planned_rules, DEVICES)
    ip(host, "route", "del", "10.128.0.3/32", "table", "1107")
    ip(host, "route", "del", "10.2.2.0/24")
    ip(host, "rule", "del", "from", "10.2.0.0/24", "to", "10.128.0.3", "lookup", "1107")
    assert routes.set(planned_routes, planned_rules, DEVICES) == (3, 0)
    assert main_routes(host) == ALPHA_MAIN
    assert table_1107(host) == ALPHA_1107
    assert len(kilo_rules(host)) == 2


def test_main_and_1107_routes_with_the_same_destination_are_distinct(
    host: str, routes: RouteTable
) -> None:
    src = ipaddress.IPv4Address("10.128.0.2")
    gw = ipaddress.IPv4Address("10.128.0.3")
    dst = ipaddress.IPv4Network("10.128.0.3/32")
    main = Route(dst=dst, gw=gw, dev=Device.TUNNEL, onlink=True, src=src)
    local = Route(dst=dst, gw=gw, dev=Device.TUNNEL, onlink=True, src=src, table=1107)
    assert routes.set([main, local], [], DEVICES) == (2, 0)
    assert table_1107(host) == ALPHA_1107
    assert main_routes(host) == ALPHA_1107
    assert routes.set([local], [], DEVICES) == (0, 1)
    assert main_routes(host) == []
    assert table_1107(host) == ALPHA_1107


def test_items_already_present_before_the_first_set_are_tracked_and_cleaned_up(
    host: str, routes: RouteTable
) -> None:
    before = snapshot(host)
    # Left over by an earlier run (or typed by hand): not "proto static", same identity.
    ip(host, "route", "add", "10.2.2.0/24", "via", "10.4.0.1", "dev", "kilo0", "onlink",
       "src", "10.128.0.2")  # fmt: skip
    ip(host, "route", "add", "10.128.0.3/32", "via", "10.128.0.3", "dev", "tunl0", "onlink",
       "src", "10.128.0.2", "table", "1107")  # fmt: skip
    ip(host, "rule", "add", "to", "10.128.0.3/32", "iif", "kilo0", "lookup", "1107")
    planned_routes, planned_rules = alpha_plan()
    assert routes.set(planned_routes, planned_rules, DEVICES) == (6, 0)
    tracked_routes, tracked_rules = routes.tracked
    assert len(tracked_routes) == 7
    assert len(tracked_rules) == 2
    routes.clean_up()
    assert snapshot(host) == before


def test_foreign_routes_and_rules_are_never_touched(host: str, routes: RouteTable) -> None:
    ip(host, "route", "add", "192.0.2.0/24", "via", "10.128.0.1", "dev", "ens4")
    ip(host, "route", "add", "198.51.100.0/24", "dev", "kilo0", "table", "1107")
    ip(host, "rule", "add", "to", "203.0.113.0/24", "lookup", "1107")
    # Like planned items, but with a metric or a selector Kilo never sets: not Kilo's.
    ip(host, "route", "add", "10.2.2.0/24", "via", "10.4.0.1", "dev", "kilo0", "onlink",
       "src", "10.128.0.2", "metric", "100")  # fmt: skip
    ip(host, "rule", "add", "to", "10.128.0.3/32", "iif", "kilo0", "fwmark", "5", "lookup",
       "1107")  # fmt: skip
    before = snapshot(host)
    planned_routes, planned_rules = alpha_plan()
    assert routes.set(planned_routes, planned_rules, DEVICES) == (9, 0)
    assert "10.2.2.0/24 via 10.4.0.1 dev kilo0 src 10.128.0.2 onlink" in main_routes(host)
    assert routes.set((), (), DEVICES) == (0, 9)
    routes.clean_up()
    assert snapshot(host) == before


def test_host_bits_are_masked_before_comparing_and_installing(
    host: str, routes: RouteTable
) -> None:
    route = Route(dst=ipaddress.IPv4Interface("10.5.0.1/24"), dev=Device.KILO)
    rule = Rule(
        src=ipaddress.IPv4Interface("10.2.0.1/24"),
        dst=ipaddress.IPv4Interface("10.128.0.3/32"),
        table=1107,
    )
    assert routes.set([route], [rule], DEVICES) == (2, 0)
    assert table(host) == ["10.5.0.0/24 dev kilo0"]
    assert kilo_rules(host) == ["32765: from 10.2.0.0/24 to 10.128.0.3 lookup 1107"]
    assert routes.set([route], [rule], DEVICES) == (0, 0)


def test_ipv6_routes_and_rules(host: str, routes: RouteTable) -> None:
    before = snapshot(host)
    route = Route(
        dst=ipaddress.IPv6Network("fd02::/64"),
        gw=ipaddress.IPv6Address("fd00:128::3"),
        dev=Device.PRIVATE,
        onlink=True,
        src=ipaddress.IPv6Address("fd00:128::2"),
    )
    local = Route(dst=ipaddress.IPv6Network("fd03::/64"), dev=Device.KILO, table=1107)
    rule = Rule(dst=ipaddress.IPv6Network("fd03::/64"), iif="kilo0", table=1107)
    assert routes.set([route, local], [rule], DEVICES) == (3, 0)
    assert table(host, family="-6") == [
        "fd02::/64 via fd00:128::3 dev ens4 src fd00:128::2 metric 1024 onlink pref medium"
    ]
    assert table(host, "1107", family="-6") == ["fd03::/64 dev kilo0 metric 1024 pref medium"]
    assert [r for r in rules(host, family="-6") if "1107" in r] == [
        "32765: from all to fd03::/64 iif kilo0 lookup 1107"
    ]
    assert routes.set([route, local], [rule], DEVICES) == (0, 0)
    routes.clean_up()
    assert snapshot(host) == before


def test_one_failing_route_does_not_stop_the_others(host: str, routes: RouteTable) -> None:
    planned_routes, planned_rules = alpha_plan()
    no_role = {Device.KILO: "kilo0", Device.PRIVATE: "ens4"}  # no tunnel device
    missing = Route(dst=ipaddress.IPv4Network("192.0.2.0/24"), dev=Device.PRIVATE)
    # A source address that is not on this host: the kernel refuses it.
    bad_src = Route(
        dst=ipaddress.IPv4Network("198.51.100.0/24"),
        dev=Device.KILO,
        src=ipaddress.IPv4Address("203.0.113.9"),
    )
    with pytest.raises(DataPlaneError) as caught:
        routes.set(
            (*planned_routes, bad_src, missing),
            planned_rules,
            {**no_role, Device.PRIVATE: "eth9"},
        )
    message = str(caught.value)
    assert "4 route/rule changes failed" in message
    assert (
        "route 10.2.1.0/24 via 10.128.0.3 dev <tunnel> proto static onlink src 10.128.0.2: "
        "no interface for device role 'tunnel'"
    ) in message
    assert "route 192.0.2.0/24 dev eth9 proto static: interface eth9 does not exist" in message
    assert (
        "cannot add route 198.51.100.0/24 dev kilo0 proto static src 203.0.113.9: Invalid argument"
    ) in message
    # Everything else went in.
    assert main_routes(host) == [r for r in ALPHA_MAIN if "tunl0" not in r]
    assert kilo_rules(host) == ALPHA_RULES


def test_watch_deletions_fires_when_someone_else_deletes_a_tracked_route_or_rule(
    host: str, routes: RouteTable
) -> None:
    planned_routes, planned_rules = alpha_plan()
    routes.set(planned_routes, planned_rules, DEVICES)
    fired = threading.Semaphore(0)
    calls: list[int] = []

    def callback() -> None:
        calls.append(1)
        fired.release()

    stop = routes.watch_deletions(callback)
    try:
        ip(host, "route", "del", "10.128.0.3/32", "table", "1107")
        assert fired.acquire(timeout=EVENT_TIMEOUT)
        # Our own deletions do not count: events arrive in order on the watcher's socket,
        # so by the time the manual deletion below is seen, these were seen and ignored.
        routes.set([r for r in planned_routes if r.table is None], planned_rules, DEVICES)
        routes.set((), planned_rules, DEVICES)
        # A foreign route going away does not count either.
        ip(host, "route", "add", "192.0.2.0/24", "dev", "ens4")
        ip(host, "route", "del", "192.0.2.0/24", "dev", "ens4")
        ip(host, "rule", "del", "to", "10.128.0.3/32", "iif", "kilo0", "lookup", "1107")
        assert fired.acquire(timeout=EVENT_TIMEOUT)
        assert len(calls) == 2
    finally:
        stop()
    stop()  # idempotent
    threads = [t for t in threading.enumerate() if t.name == "kilo-route-watch"]
    assert threads == []


def test_the_watch_socket_queues_only_deletions_so_thousands_of_additions_cannot_overflow_it(
    host: str,
) -> None:
    # What made kg run a second full apply right after its first at 5000 nodes: the
    # notifications of its own 10 000 additions overflowed the watcher's receive buffer
    # while it waited for the interpreter, and lost events (ENOBUFS) must be assumed to
    # hide a deletion. Nobody reads the socket here until the end, the worst case.
    with contextlib.closing(wire.open_watch_socket(host)) as sock:
        additions = [f"route add 10.{128 + i // 256}.{i % 256}.0/24 dev kilo0" for i in range(5000)]
        additions += ["rule add to 10.128.0.0/24 lookup 1107", "route add fd00:5::/64 dev kilo0"]
        result = subprocess.run(
            ["ip", "-n", host, "-batch", "-"], input="\n".join(additions), text=True, check=False
        )
        assert result.returncode == 0
        ip(host, "route", "del", "10.128.5.0/24", "dev", "kilo0")
        ip(host, "rule", "del", "to", "10.128.0.0/24", "lookup", "1107")
        ip(host, "-6", "route", "del", "fd00:5::/64", "dev", "kilo0")
        # The kernel queues (or drops) a notification before `ip` gets its answer: this
        # addition, after the deletions, is decided by the time the reads below begin.
        ip(host, "route", "add", "192.0.2.0/24", "dev", "kilo0")
        sock.settimeout(EVENT_TIMEOUT)
        received = [sock.recv(65536) for _ in range(3)]  # unfiltered: ENOBUFS, or additions
        sock.settimeout(0)
        with pytest.raises(BlockingIOError):
            sock.recv(65536)
    kinds = [[kind for kind, *_ in wire.messages(data, len(data))] for data in received]
    assert kinds == [[wire.RTM_DELROUTE], [wire.RTM_DELRULE], [wire.RTM_DELROUTE]]


def test_closing_the_table_stops_its_watchers(host: str) -> None:
    table_ = RouteTable(netns=host)
    table_.watch_deletions(lambda: None)
    table_.close()
    assert not [t for t in threading.enumerate() if t.name == "kilo-route-watch"]


def test_the_state_file_lets_a_restarted_agent_remove_what_the_previous_run_added(
    host: str, tmp_path: Path
) -> None:
    before = snapshot(host)
    state = tmp_path / "kilo" / "routes.json"
    planned_routes, planned_rules = alpha_plan()
    with RouteTable(netns=host, state_file=state) as first:
        first.set(planned_routes, planned_rules, DEVICES)
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    saved = json.loads(state.read_text())
    assert len(saved["routes"]) == 7
    assert len(saved["rules"]) == 2
    assert not list(tmp_path.joinpath("kilo").glob(".*"))  # no temporary file left behind

    # The agent died without cleaning up; the new run plans less (beta left).
    with RouteTable(netns=host, state_file=state) as second:
        assert second.state_error is None
        kept = tuple(r for r in planned_routes if r.table is None and r.dev != Device.TUNNEL)
        assert second.set(kept, (), DEVICES) == (0, 4)
        assert table_1107(host) == []
        assert kilo_rules(host) == []
    with RouteTable(netns=host, state_file=state) as third:
        third.clean_up()
    assert snapshot(host) == before
    assert json.loads(state.read_text())["routes"] == []


def test_a_corrupt_state_file_is_ignored_and_nothing_is_deleted(host: str, tmp_path: Path) -> None:
    state = tmp_path / "routes.json"
    planned_routes, planned_rules = alpha_plan()
    with RouteTable(netns=host, state_file=state) as first:
        first.set(planned_routes, planned_rules, DEVICES)
    installed = snapshot(host)
    state.write_text('{"version": 1, "routes": [{"dst": "10.2.2.0/24"')
    with RouteTable(netns=host, state_file=state) as second:
        assert second.state_error is not None
        assert str(state) in second.state_error
        assert "not JSON" in second.state_error
        second.clean_up()
        assert snapshot(host) == installed
        # The next change rewrites the file with what this run tracks.
        second.set(planned_routes[:1], (), DEVICES)
    assert len(json.loads(state.read_text())["routes"]) == 1


# -- Links ---------------------------------------------------------------------------------


@pytest.fixture
def links(host: str) -> Iterator[Links]:
    with Links(netns=host) as links_:
        yield links_


def addresses(netns: str, name: str) -> list[str]:
    data = json.loads(ip(netns, "-j", "addr", "show", "dev", name))
    return [f"{a['local']}/{a['prefixlen']}" for a in data[0]["addr_info"]]


def test_index_and_interfaces(host: str, links: Links) -> None:
    index = links.index("ens4")
    assert index is not None
    assert links.index("eth9") is None
    by_name = {i.name: i for i in links.interfaces()}
    assert {"lo", "ens4", "ens4p", "kilo0", "kilo0p", "tunl0", "tunl0p"} == set(by_name)
    ens4 = by_name["ens4"]
    assert ens4.index == index
    assert ipaddress.IPv4Interface("10.128.0.2/20") in ens4.addresses
    assert ipaddress.IPv6Interface("fd00:128::2/64") in ens4.addresses
    assert ipaddress.IPv4Interface("127.0.0.1/8") in by_name["lo"].addresses
    indexes = [i.index for i in links.interfaces()]
    assert indexes == sorted(indexes)


def test_set_address_keeps_exactly_the_one_address(host: str, links: Links) -> None:
    ip(host, "addr", "add", "10.4.0.9/16", "dev", "kilo0")
    ip(host, "addr", "add", "fd00:4::1/64", "dev", "kilo0", "nodad")
    wanted = ipaddress.IPv4Interface("10.4.0.1/16")
    assert links.set_address("kilo0", wanted) is True
    assert addresses(host, "kilo0") == ["10.4.0.1/16"]
    assert links.set_address("kilo0", wanted) is False
    # The same IP with another mask is another address.
    assert links.set_address("kilo0", ipaddress.IPv4Interface("10.4.0.1/24")) is True
    assert addresses(host, "kilo0") == ["10.4.0.1/24"]
    links.delete_addresses("kilo0")
    assert addresses(host, "kilo0") == []
    links.delete_addresses("eth9")  # nothing to do
    with pytest.raises(DataPlaneError, match="eth9"):
        links.set_address("eth9", wanted)


def test_set_up_and_set_mtu_change_only_what_differs(host: str, links: Links) -> None:
    assert links.set_up("kilo0", True) is False
    assert links.set_up("kilo0", False) is True
    assert "UP" not in ip(host, "link", "show", "kilo0").split(">")[0]
    assert links.set_up("kilo0", False) is False
    assert links.set_up("kilo0", True) is True
    assert links.mtu("kilo0") == 1500
    assert links.set_mtu("kilo0", 1420) is True
    assert links.set_mtu("kilo0", 1420) is False
    assert links.mtu("kilo0") == 1420
    with pytest.raises(DataPlaneError, match="cannot set the MTU of kilo0 to 9999999: "):
        links.set_mtu("kilo0", 9999999)
    with pytest.raises(DataPlaneError, match="interface eth9 does not exist"):
        links.mtu("eth9")


def test_default_route_interface_prefers_ipv4(host: str, links: Links) -> None:
    assert links.default_route_interface() is None
    ip(host, "-6", "route", "add", "default", "via", "fd00:128::1", "dev", "ens4")
    assert links.default_route_interface() == links.index("ens4")
    ip(host, "route", "add", "default", "via", "10.4.0.1", "dev", "kilo0")
    assert links.default_route_interface() == links.index("kilo0")
    # A default route in another table does not count.
    ip(host, "route", "del", "default", "dev", "kilo0")
    ip(host, "route", "add", "default", "via", "10.4.0.1", "dev", "kilo0", "table", "1107")
    assert links.default_route_interface() == links.index("ens4")


def test_create_wireguard_without_kernel_support_names_the_interface(
    host: str, links: Links
) -> None:
    if os.path.exists("/sys/module/wireguard"):
        pytest.skip("this kernel has WireGuard: the error path cannot be shown")
    with pytest.raises(DataPlaneError, match=r"cannot create WireGuard interface kilo9: .*"):
        links.create_wireguard("kilo9", 1420)
    assert links.index("kilo9") is None
    # An existing link of that name is used as it is (Kilo's --create-interface).
    assert links.create_wireguard("kilo0", 1420) is False


def test_delete(host: str, links: Links) -> None:
    assert links.delete("tunl0") is True
    assert links.index("tunl0") is None
    assert links.delete("tunl0") is False
