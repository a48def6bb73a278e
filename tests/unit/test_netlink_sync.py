"""Route and rule reconciliation keys and diffs (kilo.mesh.route_sync), without a kernel."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kilo.mesh import ip, route_state, route_sync
from kilo.mesh.route_sync import RouteKey, RuleKey
from kilo.mesh.routes import Device, Route, Rule

DEVICES = {Device.KILO: "kilo0", Device.PRIVATE: "ens4", Device.TUNNEL: "tunl0"}


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def addr(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


TUNNEL_ROUTE = Route(
    dst=ipaddress.IPv4Network("10.128.0.3/32"),
    gw=ipaddress.IPv4Address("10.128.0.3"),
    dev=Device.TUNNEL,
    onlink=True,
    src=ipaddress.IPv4Address("10.128.0.2"),
)


def test_route_key_defaults_to_the_main_table_and_names_the_device() -> None:
    assert route_sync.route_key(TUNNEL_ROUTE, DEVICES) == RouteKey(
        dst=net("10.128.0.3/32"),
        gw=addr("10.128.0.3"),
        src=addr("10.128.0.2"),
        dev="tunl0",
        table=254,
    )


def test_route_key_includes_the_table_deviation() -> None:
    # Kilo's key leaves the table out, so these two collide there.
    main = route_sync.route_key(TUNNEL_ROUTE, DEVICES)
    local = route_sync.route_key(
        Route(
            dst=TUNNEL_ROUTE.dst,
            gw=TUNNEL_ROUTE.gw,
            dev=Device.TUNNEL,
            onlink=True,
            src=TUNNEL_ROUTE.src,
            table=1107,
        ),
        DEVICES,
    )
    assert main is not None
    assert local is not None
    assert main != local
    assert local.table == 1107


def test_route_key_masks_host_bits() -> None:
    route = Route(dst=ipaddress.IPv4Interface("10.5.0.1/24"), dev=Device.KILO)
    key = route_sync.route_key(route, DEVICES)
    assert key is not None
    assert key.dst == net("10.5.0.0/24")
    assert key == route_sync.kernel_route_key(
        version=4, table=254, dst="10.5.0.0", dst_len=24, dev="kilo0"
    )


def test_a_kernel_route_key_shares_the_plans_network_and_its_gateway_with_other_keys() -> None:
    # A full apply at 5000 nodes lists 10 000 routes and keeps their keys until the next
    # one: with networks and gateways of their own, megabytes of copies of the plan's.
    pod_cidr = ip.parse_network("10.5.0.0/24")  # as translate reads a Node's
    assert pod_cidr is not None
    planned = route_sync.route_key(
        Route(dst=pod_cidr, gw=addr("10.4.0.1"), dev=Device.KILO), DEVICES
    )
    listed = [
        route_sync.kernel_route_key(
            version=4, table=254, dst=dst, dst_len=24, dev="kilo0", gw="10.4.0.1"
        )
        for dst in ("10.5.0.0", "10.6.0.0")
    ]
    assert planned is not None and listed[0] == planned and listed[0] is not None
    assert listed[0].dst is planned.dst
    assert listed[1] is not None and listed[1].gw is listed[0].gw


def test_route_key_without_an_interface_for_the_role() -> None:
    assert route_sync.route_key(TUNNEL_ROUTE, {Device.KILO: "kilo0"}) is None


def test_flags_and_protocol_are_not_part_of_the_identity() -> None:
    onlink = route_sync.route_key(TUNNEL_ROUTE, DEVICES)
    plain = route_sync.route_key(
        Route(dst=TUNNEL_ROUTE.dst, gw=TUNNEL_ROUTE.gw, dev=Device.TUNNEL, src=TUNNEL_ROUTE.src),
        DEVICES,
    )
    assert onlink == plain


def test_kernel_route_key_only_for_the_default_metric() -> None:
    def v4(metric: int | None) -> RouteKey | None:
        return route_sync.kernel_route_key(
            version=4, table=254, dst="10.2.0.0", dst_len=24, dev="kilo0", metric=metric
        )

    def v6(metric: int | None) -> RouteKey | None:
        return route_sync.kernel_route_key(
            version=6, table=254, dst="fd02::", dst_len=64, dev="kilo0", metric=metric
        )

    assert v4(None) is not None
    assert v4(0) is not None
    assert v4(100) is None  # someone else's route, never touched
    assert v6(1024) is not None
    assert v6(256) is None


def test_kernel_default_route_has_no_dst() -> None:
    key = route_sync.kernel_route_key(
        version=6, table=254, dst=None, dst_len=0, dev="ens4", gw="fd00::1", metric=1024
    )
    assert key == RouteKey(dst=net("::/0"), gw=addr("fd00::1"), dev="ens4")


def test_rule_key_canonical_form() -> None:
    rule = Rule(
        src=ipaddress.IPv4Interface("10.2.0.1/24"),
        dst=ipaddress.IPv4Network("10.128.0.3/32"),
        iif="kilo0",
        table=1107,
    )
    key = route_sync.rule_key(rule)
    assert key == RuleKey(
        table=1107, version=4, src=net("10.2.0.0/24"), dst=net("10.128.0.3/32"), iif="kilo0"
    )
    assert key == route_sync.kernel_rule_key(
        version=4,
        table=1107,
        src="10.2.0.0",
        src_len=24,
        dst="10.128.0.3",
        dst_len=32,
        iif="kilo0",
    )
    assert str(key) == "from 10.2.0.0/24 to 10.128.0.3/32 iif kilo0 lookup 1107"


def test_rule_key_family_and_all() -> None:
    # A /0 selector is the kernel's "from all"; the family stays.
    v6 = route_sync.rule_key(Rule(src=ipaddress.IPv6Network("::/0"), table=7))
    assert v6 == RuleKey(table=7, version=6)
    assert v6 == route_sync.kernel_rule_key(version=6, table=7)
    assert str(v6) == "-6 from all lookup 7"
    # Kilo adds a rule without selectors as IPv4.
    assert route_sync.rule_key(Rule(table=7)) == RuleKey(table=7, version=4)
    assert route_sync.rule_key(Rule(table=7)) != v6
    assert route_sync.kernel_rule_key(version=4, table=7, iif="") == RuleKey(table=7)


def test_desired_routes_collapse_duplicates_and_report_the_rest() -> None:
    kilo = Route(dst=ipaddress.IPv4Network("10.2.1.0/24"), dev=Device.KILO)
    same_slot = Route(
        dst=ipaddress.IPv4Network("10.2.1.0/24"), gw=addr("10.4.0.1"), dev=Device.KILO
    )
    other_table = Route(dst=ipaddress.IPv4Network("10.2.1.0/24"), dev=Device.KILO, table=1107)
    desired = route_sync.desired_routes([kilo, TUNNEL_ROUTE, kilo, same_slot, other_table], DEVICES)
    assert [r for _, r in desired.routes] == [kilo, TUNNEL_ROUTE, other_table]
    assert desired.shadowed == (same_slot,)
    assert desired.unresolved == ()
    missing = route_sync.desired_routes([TUNNEL_ROUTE, kilo], {Device.KILO: "kilo0"})
    assert missing.unresolved == (TUNNEL_ROUTE,)
    assert [r for _, r in missing.routes] == [kilo]


def test_desired_rules_keep_plan_order_and_collapse_equal_canonical_forms() -> None:
    a = Rule(src=ipaddress.IPv4Interface("10.2.0.1/24"), table=1107)
    b = Rule(src=ipaddress.IPv4Network("10.2.0.0/24"), table=1107)
    c = Rule(dst=ipaddress.IPv4Network("10.128.0.3/32"), iif="kilo0", table=1107)
    assert [r for _, r in route_sync.desired_rules([c, a, b])] == [c, a]


def key(dst: str, table: int = 254, dev: str = "kilo0") -> RouteKey:
    return RouteKey(dst=net(dst), dev=dev, table=table)


def test_diff_fixes_kilos_leaks() -> None:
    main = key("10.128.0.3/32")
    local = key("10.128.0.3/32", table=1107)
    gone = key("10.2.9.0/24")
    present = key("10.2.2.0/24")
    new = key("10.2.3.0/24")
    changes = route_sync.diff(
        desired=[present, new],
        kernel={main, local, present, key("192.0.2.0/24")},
        tracked={main, local, gone},
    )
    # A tracked table-1107 route is found and deleted (Kilo lists only the main table).
    assert changes.delete == (main, local)
    assert changes.forget == (gone,)
    assert changes.add == (new,)
    # A planned route already in the kernel is tracked (Kilo never cleans it up).
    assert changes.adopt == (present,)
    assert not changes.empty
    assert route_sync.diff([present], {present}, {present}).empty


def test_diff_with_nothing_desired_is_the_clean_up() -> None:
    tracked = {key("10.2.2.0/24"), key("10.2.3.0/24")}
    changes = route_sync.diff((), {key("10.2.2.0/24")}, tracked)
    assert changes.delete == (key("10.2.2.0/24"),)
    assert changes.forget == (key("10.2.3.0/24"),)
    assert changes.add == changes.adopt == ()


ROUTE_KEYS = st.sampled_from(
    [key(f"10.2.{i}.0/24", table=t) for i in range(4) for t in (254, 1107)]
    + [RouteKey(dst=net("fd02::/64"), gw=addr("fd00::1"), src=addr("fd00::2"), dev="ens4")]
)


@given(
    desired=st.lists(ROUTE_KEYS),
    kernel=st.frozensets(ROUTE_KEYS),
    tracked=st.frozensets(ROUTE_KEYS),
)
def test_diff_applied_leaves_exactly_the_plan_tracked(
    desired: list[RouteKey], kernel: frozenset[RouteKey], tracked: frozenset[RouteKey]
) -> None:
    changes = route_sync.diff(desired, kernel, tracked)
    after = (kernel - set(changes.delete)) | set(changes.add)
    now_tracked = (tracked - set(changes.delete) - set(changes.forget)) | set(
        changes.adopt + changes.add
    )
    assert now_tracked == set(desired)
    assert set(desired) <= after
    # Nothing that was tracked and is no longer planned is left in the kernel,
    # and nothing foreign (never tracked) is touched.
    assert not (after & (tracked - set(desired)))
    assert (kernel - tracked) <= after
    assert set(changes.delete) <= tracked


def test_state_round_trip() -> None:
    routes = frozenset(
        {
            key("10.2.2.0/24"),
            RouteKey(
                dst=net("10.128.0.3/32"),
                gw=addr("10.128.0.3"),
                src=addr("10.128.0.2"),
                dev="tunl0",
                table=1107,
            ),
            RouteKey(dst=net("fd02::/64"), dev="ens4"),
        }
    )
    rules = frozenset(
        {
            RuleKey(table=1107, src=net("10.2.0.0/24"), dst=net("10.128.0.3/32")),
            RuleKey(table=1107, dst=net("10.128.0.3/32"), iif="kilo0"),
            RuleKey(table=7, version=6),
        }
    )
    text = route_state.encode_state(routes, rules)
    assert route_state.decode_state(text) == (routes, rules)
    # Equal sets give equal files, whatever the order they were tracked in.
    assert route_state.encode_state(sorted(routes, key=str, reverse=True), rules) == text
    document = json.loads(text)
    assert document["version"] == 1
    assert document["routes"][1] == {
        "table": 254,
        "dst": "10.2.2.0/24",
        "gw": None,
        "src": None,
        "dev": "kilo0",
    }


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"version": 2, "routes": [], "rules": []}', "unknown version 2"),
        ('{"version": 1, "rules": []}', "'routes' must be a list of objects"),
        ('{"version": 1, "routes": [1], "rules": []}', "'routes' must be a list of objects"),
        (
            '{"version": 1, "routes": [{"dst": "10.2.0.0/24", "dev": "kilo0"}], "rules": []}',
            "'table' must be a positive integer",
        ),
        (
            '{"version": 1, "routes": [{"dst": "10.2.0.1/24", "dev": "kilo0", "table": 254}],'
            ' "rules": []}',
            "has host bits set",
        ),
        (
            '{"version": 1, "routes": [{"dst": "10.2.0.0/24", "dev": "", "table": 254}],'
            ' "rules": []}',
            "'dev' must be a non-empty string",
        ),
        (
            '{"version": 1, "routes": [], "rules": [{"family": 5, "table": 1107}]}',
            "'family' must be 4 or 6",
        ),
        (
            '{"version": 1, "routes": [], "rules": [{"family": 4, "table": true}]}',
            "'table' must be a positive integer",
        ),
        (
            '{"version": 1, "routes": [], "rules": [{"family": 4, "table": 1, "iif": 3}]}',
            "'iif' must be a string or null",
        ),
    ],
)
def test_corrupt_state_is_refused_with_a_reason(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        route_state.decode_state(text)


def test_key_text_reads_like_ip_route() -> None:
    assert str(key("10.2.2.0/24")) == "10.2.2.0/24 dev kilo0"
    assert (
        str(
            RouteKey(
                dst=net("10.128.0.3/32"),
                gw=addr("10.128.0.3"),
                src=addr("10.128.0.2"),
                dev="tunl0",
                table=1107,
            )
        )
        == "10.128.0.3/32 via 10.128.0.3 dev tunl0 src 10.128.0.2 table 1107"
    )
