"""Lease-based leader failover: the pure decision (kilo.mesh.leadership) and its override."""

from __future__ import annotations

import dataclasses
import datetime
import string
from collections.abc import Callable, Mapping
from ipaddress import IPv4Network, ip_address, ip_interface
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kilo.mesh import leadership, topology
from kilo.mesh.endpoint import is_dns1123_subdomain
from kilo.mesh.leadership import GRACE, LEASE_DURATION, RENEW_PERIOD, STAGGER, LeaseRecord, Step
from kilo.mesh.model import Granularity, Node
from tests.examples import location_member as member


def held(
    holder: str, *, at: float = 0.0, since: float = 0.0, duration: float = LEASE_DURATION
) -> LeaseRecord:
    return LeaseRecord(holder=holder, duration=duration, observed=at, held_since=since)


ABC = [member("a"), member("b"), member("c")]


# --- names ---------------------------------------------------------------------------------------


@given(st.text(max_size=300))
def test_a_lease_name_is_a_bounded_valid_object_name_for_any_location(location):
    name = leadership.lease_name(location)
    assert is_dns1123_subdomain(name)
    assert len(name) <= 70


def test_lease_names_are_readable_and_keep_look_alike_locations_apart():
    assert leadership.lease_name("aws").startswith("kilo-leader-aws-")
    assert leadership.lease_name("AWS") != leadership.lease_name("aws")
    assert leadership.lease_name("a b") != leadership.lease_name("a-b")
    assert leadership.lease_name("") != leadership.lease_name("-")


# --- Kilo's order --------------------------------------------------------------------------------

members_strategy = st.lists(
    st.tuples(st.sampled_from(string.ascii_lowercase), st.booleans(), st.booleans()),
    min_size=1,
    max_size=8,
    unique_by=lambda t: t[0],
).map(lambda specs: [member(n, leader=lead, public=pub) for n, lead, pub in specs])


@given(members_strategy)
def test_the_first_candidate_is_kilos_leader(members):
    ordered = sorted(members, key=lambda n: n.name)
    assert leadership.candidates(members)[0] == ordered[topology.find_leader(ordered)].name


@given(members_strategy, st.data())
def test_a_lapsed_holder_goes_last_and_the_rest_keep_kilos_order(members, data):
    lapsed = data.draw(st.sampled_from([n.name for n in members]))
    order = leadership.candidates(members, lapsed)
    assert order[-1] == lapsed
    assert order[:-1] == [n for n in leadership.candidates(members) if n != lapsed]


# --- who leads -----------------------------------------------------------------------------------


def test_without_a_lease_kilos_rule_leads():
    assert leadership.leader(ABC, None, now=100.0) == "a"
    assert leadership.leader([*ABC, member("z", leader=True)], None, now=100.0) == "z"


def test_a_valid_lease_of_a_member_leads_even_against_kilos_rule():
    assert leadership.leader(ABC, held("c", at=99.0), now=100.0) == "c"


def test_a_lapsed_holder_is_passed_over_until_someone_else_holds():
    assert leadership.leader(ABC, held("a", at=0.0), now=LEASE_DURATION) == "b"


def test_a_holder_that_is_not_a_ready_member_leads_nobody():
    assert leadership.leader(ABC, held("gone", at=99.0), now=100.0) == "a"


def test_overrides_name_each_location_segment():
    nodes = [
        *ABC,
        dataclasses.replace(member("x"), location="gcp"),
        dataclasses.replace(member("lonely"), internal_ip=None),  # a segment of its own
    ]
    leases = {leadership.lease_name("aws"): held("b", at=99.0)}
    assert leadership.overrides(nodes, leases, now=100.0) == {
        "location:aws": "b",
        "location:gcp": "x",
    }


# --- the decision --------------------------------------------------------------------------------


def decide(
    hostname: str,
    lease: LeaseRecord | None,
    *,
    now: float,
    renewed: float | None = None,
    healthy: bool = True,
    members: list[Node] = ABC,
) -> leadership.Decision:
    return leadership.decide(
        hostname=hostname,
        members=members,
        lease=lease,
        renewed=renewed,
        healthy=healthy,
        now=now,
    )


def test_kilos_leader_takes_a_lease_nobody_holds_at_once_and_the_others_wait():
    assert decide("a", None, now=10.0).step == Step.ACQUIRE
    assert decide("b", None, now=10.0) == leadership.Decision(Step.WAIT, 10.0 + STAGGER)


def test_the_healthy_holder_renews_every_period():
    lease = held("a", at=10.0, since=0.0)
    assert decide("a", lease, now=11.0, renewed=10.0) == leadership.Decision(
        Step.WAIT, 10.0 + RENEW_PERIOD
    )
    assert decide("a", lease, now=12.0, renewed=10.0).step == Step.RENEW


def test_an_unhealthy_holder_releases_but_not_during_its_grace():
    lease = held("a", at=10.0, since=10.0)
    assert decide("a", lease, now=11.0, renewed=10.0, healthy=False).step == Step.WAIT
    later = held("a", at=10.0 + GRACE, since=10.0)
    assert decide("a", later, now=10.0 + GRACE, renewed=9.0, healthy=False).step == Step.RELEASE


def test_a_released_lease_is_not_released_again():
    released = held("a", at=20.0, since=0.0, duration=leadership.RELEASED_DURATION)
    decision = decide("a", released, now=20.5, renewed=20.0, healthy=False)
    assert decision == leadership.Decision(Step.WAIT, 21.0)


def test_others_wait_for_a_valid_lease_to_lapse():
    assert decide("b", held("a", at=10.0), now=11.0) == leadership.Decision(
        Step.WAIT, 10.0 + LEASE_DURATION
    )


def test_candidates_take_a_lapsed_lease_in_order_the_lapsed_holder_last():
    lapsed_at = 10.0 + LEASE_DURATION
    lease = held("a", at=10.0)
    assert decide("b", lease, now=lapsed_at).step == Step.ACQUIRE
    assert decide("c", lease, now=lapsed_at) == leadership.Decision(Step.WAIT, lapsed_at + STAGGER)
    assert decide("a", lease, now=lapsed_at) == leadership.Decision(
        Step.WAIT, lapsed_at + 2 * STAGGER
    )


def test_a_node_that_is_not_a_ready_member_never_takes_the_lease():
    assert decide("stranger", None, now=10.0).step == Step.WAIT


# --- a location over time ------------------------------------------------------------------------


def simulate(
    members: list[Node],
    *,
    until: float,
    step: float,
    alive: Callable[[str, float], bool],
    healthy: Callable[[str, float], bool],
    start: LeaseRecord | None = None,
) -> list[tuple[float, str]]:
    """Every node decides every ``step`` seconds on one shared Lease; writes are atomic.
    ``alive(name, now)`` and ``healthy(name, now)`` script the faults. Returns the holder at
    each step."""
    lease: LeaseRecord | None = start
    renewed: dict[str, float] = {}
    holders = []
    now = 0.0
    while now < until:
        for node in members:
            if not alive(node.name, now):
                continue
            own = lease is not None and lease.holder == node.name
            decision = leadership.decide(
                hostname=node.name,
                members=members,
                lease=lease,
                renewed=renewed.get(node.name) if own else None,
                healthy=healthy(node.name, now),
                now=now,
            )
            if decision.step in (Step.ACQUIRE, Step.RENEW, Step.RELEASE):
                duration = (
                    leadership.RELEASED_DURATION
                    if decision.step == Step.RELEASE
                    else LEASE_DURATION
                )
                since = lease.held_since if own and lease is not None else now
                lease = LeaseRecord(
                    holder=node.name, duration=duration, observed=now, held_since=since
                )
                renewed[node.name] = now
        holders.append((now, leadership.leader(members, lease, now)))
        now += step
    return holders


@settings(max_examples=50, deadline=None)
@given(
    st.floats(min_value=0.05, max_value=0.5),
    st.floats(min_value=10, max_value=60),
    st.floats(min_value=LEASE_DURATION + 1, max_value=30),
)
def test_no_flapping_when_the_old_leader_comes_back(step, died, away):
    """a dies at ``died`` and is back, healthy, ``away`` seconds later (after its Lease
    lapsed): b took the lead within a Lease's duration and keeps it."""
    holders = simulate(
        ABC,
        until=died + away + 60,
        step=step,
        alive=lambda name, now: name != "a" or not died <= now < died + away,
        healthy=lambda name, now: True,
    )
    after = [leader for now, leader in holders if now >= died + LEASE_DURATION + STAGGER + step]
    assert set(after) == {"b"}
    before = [leader for now, leader in holders if now < died]
    assert set(before) == {"a"}


@settings(max_examples=50, deadline=None)
@given(st.floats(min_value=0.05, max_value=0.5), st.floats(min_value=10, max_value=60))
def test_an_unhealthy_holder_hands_over_to_the_standby_and_gets_no_lead_back(step, broke):
    holders = simulate(
        ABC,
        until=broke + 60,
        step=step,
        alive=lambda name, now: True,
        healthy=lambda name, now: name != "a" or now < broke,
    )
    bound = broke + 2 * step + leadership.RELEASED_DURATION + step
    assert {leader for now, leader in holders if now >= bound} == {"b"}


# --- malformed Leases ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=400),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=20), inner),
    max_leaves=10,
)


@given(
    st.dictionaries(
        st.sampled_from(["holderIdentity", "leaseDurationSeconds", "renewTime", "x"]), json_values
    )
    | json_values
)
def test_a_malformed_lease_costs_only_itself_with_a_bounded_warning(spec):
    parsed, problems = leadership.parse_lease({"metadata": {"name": "n" * 400}, "spec": spec})
    assert (parsed is None) == bool(problems)
    for problem in problems:
        assert len(str(problem)) < 400
        assert problem.kind == "lease"


def test_a_well_formed_lease_parses():
    obj: dict[str, Any] = {
        "metadata": {"name": "kilo-leader-aws"},
        "spec": {
            "holderIdentity": "a",
            "leaseDurationSeconds": 6,
            "renewTime": "2026-01-01T00:00:00.000000Z",
        },
    }
    spec, problems = leadership.parse_lease(obj)
    assert problems == ()
    assert spec == leadership.LeaseSpec(
        holder="a", duration=6.0, renewed="2026-01-01T00:00:00.000000Z"
    )
    _, problems = leadership.parse_lease(
        {**obj, "spec": {**obj["spec"], "leaseDurationSeconds": 0}}
    )
    assert [p.field for p in problems] == ["spec.leaseDurationSeconds"]


def test_observing_restarts_the_clock_only_on_a_change():
    spec = leadership.LeaseSpec(holder="a", duration=6.0, renewed="t1")
    first = leadership.observe(None, None, spec, now=10.0)
    assert first == held("a", at=10.0, since=10.0)
    assert leadership.observe(first, spec, spec, now=12.0) is first
    renewed = dataclasses.replace(spec, renewed="t2")
    assert leadership.observe(first, spec, renewed, now=13.0) == held("a", at=13.0, since=10.0)
    other = dataclasses.replace(spec, holder="b")
    assert leadership.observe(first, spec, other, now=14.0) == held("b", at=14.0, since=14.0)


# --- the topology override -----------------------------------------------------------------------


def test_build_topology_takes_the_leader_override_of_a_member_only():
    nodes = [member("a"), member("b")]

    def leader_of(leaders: Mapping[str, str] | None) -> tuple[str, bool]:
        t = topology.build_topology(
            nodes,
            (),
            granularity=Granularity.LOCATION,
            hostname="b",
            subnet=IPv4Network("10.4.0.0/16"),
            leaders=leaders,
        )
        return t.segments[0].leader_name, t.leader

    assert leader_of(None) == ("a", False)
    assert leader_of({"location:aws": "b"}) == ("b", True)
    assert leader_of({"location:aws": "stranger"}) == ("a", False)


# --- the forwarding probe's pure half ----------------------------------------------------------


def test_only_a_reply_that_arrived_and_did_not_leave_blames_the_leader() -> None:
    verdict = leadership.forwarding_verdict
    assert verdict(arrived=True, left=True) is leadership.Forwarded.FORWARDED
    assert verdict(arrived=False, left=True) is leadership.Forwarded.FORWARDED
    assert verdict(arrived=True, left=False) is leadership.Forwarded.DROPPED
    assert verdict(arrived=False, left=False) is leadership.Forwarded.UNANSWERED


def test_the_forward_probe_asks_the_other_members_in_turn_to_answer_another_leader() -> None:
    members = [
        dataclasses.replace(member(name), internal_ip=ip_interface(f"10.0.0.{i}/24"))
        for i, name in enumerate(("c", "a", "b"), start=1)
    ]
    remotes = [ip_address("fd00::1"), ip_address("10.4.0.1"), ip_address("10.4.0.2")]

    def pair(round: int, **changes: Any) -> tuple[str, str] | None:
        arguments: dict[str, Any] = {
            "hostname": "a",
            "members": members,
            "remotes": remotes,
            "round": round,
        }
        probe = leadership.forward_probe(**(arguments | changes))
        return None if probe is None else (str(probe.member), str(probe.remote))

    assert [pair(r) for r in range(3)] == [
        ("10.0.0.1", "10.4.0.1"),  # c, by address; IPv6 remotes are skipped
        ("10.0.0.3", "10.4.0.1"),
        ("10.0.0.1", "10.4.0.1"),
    ]
    assert pair(0, members=members[1:2]) is None  # alone: nobody forwards through it
    assert pair(0, remotes=[]) is None  # one location: nothing to forward to
    assert pair(0, remotes=remotes[:1]) is None  # IPv6 only
    v6 = [dataclasses.replace(m, internal_ip=ip_interface("fd00::9/64")) for m in members]
    assert pair(0, members=v6) is None


# --- stale Leases ------------------------------------------------------------------------------


def test_only_the_first_locations_holder_deletes_lapsed_leases_of_locations_without_nodes() -> None:
    gcp = [dataclasses.replace(member(n), location="gcp") for n in ("g", "h")]
    nodes = [*ABC, *gcp]
    aws, gcp_name = leadership.lease_name("aws"), leadership.lease_name("gcp")
    gone, fresh = leadership.lease_name("gone"), leadership.lease_name("back-soon")
    old = {
        gone: held("x", at=0.0),  # lapsed at 6
        fresh: held("y", at=50.0),  # lapsed at 56
    }
    ours = [aws, gcp_name, gone, fresh]
    now = 6 + leadership.STALE_AFTER

    def stale(hostname: str, **changes: Any) -> list[str]:
        at = changes.get("now", now) - 1  # aws's and gcp's holders renew
        leases = old | {aws: held("b", at=at), gcp_name: held("g", at=at)}
        arguments: dict[str, Any] = {
            "hostname": hostname,
            "nodes": nodes,
            "leases": leases,
            "ours": ours,
            "now": now,
        }
        return leadership.stale_leases(**(arguments | changes))

    assert stale("b") == [gone]  # aws < gcp: aws's holder; "back-soon" lapsed too recently
    assert stale("b", now=56 + leadership.STALE_AFTER) == [fresh, gone]
    assert stale("a") == []  # aws's leader by Kilo's rule, not its holder
    assert stale("g") == []  # gcp's holder: not the first location
    assert stale("b", ours=[aws, gcp_name]) == []  # not kg's Lease: never
    # A lapsed own Lease (an unhealthy or dead holder) deletes nothing.
    lapsed = old | {aws: held("b", at=0.0), gcp_name: held("g", at=now - 1)}
    assert stale("b", leases=lapsed) == []
    assert stale("b", nodes=[]) == []
    # A location of ready nodes keeps its Lease however old.
    assert stale("b", nodes=[*nodes, dataclasses.replace(member("z"), location="gone")]) == []


# --- renewals seen late --------------------------------------------------------------------------


def _renewals(delays: list[float], *, skew: float = 0.0, holder: str = "a") -> LeaseRecord:
    """The record after the holder renewed every RENEW_PERIOD s (its clock ``skew`` s off
    this node's), each renewal seen ``delays[i]`` s after it was written."""
    record: LeaseRecord | None = None
    spec: leadership.LeaseSpec | None = None
    for i, delay in enumerate(delays):
        written = 1_700_000_000.0 + i * RENEW_PERIOD
        text = datetime.datetime.fromtimestamp(written + skew, datetime.UTC).isoformat()
        new = leadership.LeaseSpec(holder=holder, duration=LEASE_DURATION, renewed=text)
        record = leadership.observe(record, spec, new, now=written + delay)
        spec = new
    assert record is not None
    return record


def test_a_renewal_seen_late_counts_from_when_it_would_have_been_seen_on_time() -> None:
    last = 1_700_000_000.0 + 2 * RENEW_PERIOD
    on_time = _renewals([0.1, 0.2, 0.1])
    assert on_time.observed == pytest.approx(last + 0.1)
    # Published 1.1 s late (a slow API server): counted 1.0 s earlier.
    late = _renewals([0.1, 0.2, 1.1])
    assert late.observed == pytest.approx(last + 0.1)
    assert late.expires == pytest.approx(last + 0.1 + LEASE_DURATION)
    # Never by more than LATE_CAP: a Lease stays valid LEASE_DURATION - LATE_CAP after it
    # is seen, more than one RENEW_PERIOD.
    very_late = _renewals([0.1, 0.2, 9.1])
    assert very_late.observed == pytest.approx(last + 9.1 - leadership.LATE_CAP)
    assert LEASE_DURATION - leadership.LATE_CAP > RENEW_PERIOD


def test_the_correction_compares_no_clocks_and_forgets_old_delays() -> None:
    # Another clock, an hour off: the same correction (only delays' differences count).
    assert _renewals([0.1, 0.2, 1.1], skew=3600.0).observed == pytest.approx(
        _renewals([0.1, 0.2, 1.1]).observed
    )
    # A steadily slow API server is "on time": no correction.
    steady = _renewals([3.0] * 5)
    assert steady.observed == pytest.approx(1_700_000_000.0 + 4 * RENEW_PERIOD + 3.0)
    # Only the last LATE_WINDOW delays count: a fast moment long ago is forgotten.
    window = leadership.LATE_WINDOW
    forgotten = _renewals([0.0] + [1.0] * window)
    assert forgotten.observed == pytest.approx(1_700_000_000.0 + window * RENEW_PERIOD + 1.0)
    # A first renewal, or an unparsable renewTime: seen when seen.
    assert _renewals([5.0]).observed == pytest.approx(1_700_000_000.0 + 5.0)
    spec = leadership.LeaseSpec(holder="a", duration=LEASE_DURATION, renewed="not a time")
    assert leadership.observe(late_record(), None, spec, now=50.0).observed == 50.0


def late_record() -> LeaseRecord:
    return _renewals([0.1, 0.2])


def test_with_one_other_location_a_broken_tunnel_moves_neither_lead() -> None:
    """Two locations whose tunnel breaks at one end: both leaders see the same thing (the
    other does not answer), so the verdict cannot name the broken end; judging it would
    rotate the healthy location's lead too. With a second other location that answers,
    the verdict names this end only when nobody answers."""
    aws, gcp, azure = ("10.4.0.1", "aws-1"), ("10.4.0.2", "gcp-1"), ("10.4.0.3", "az-1")
    now = leadership.SETTLE
    healthy = leadership.wireguard_healthy
    seen_from_aws = {gcp: False}
    seen_from_gcp = {aws: False}
    assert healthy(seen_from_aws, {gcp: 0.0}, answered_before=True, now=now)
    assert healthy(seen_from_gcp, {aws: 0.0}, answered_before=True, now=now)
    # Three locations, gcp's end broken: aws still hears azure (healthy), gcp hears nobody.
    assert healthy({gcp: False, azure: True}, {gcp: 0.0, azure: 0.0}, answered_before=True, now=now)
    assert not healthy(
        {aws: False, azure: False}, {aws: 0.0, azure: 0.0}, answered_before=True, now=now
    )
