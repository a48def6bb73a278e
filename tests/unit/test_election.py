"""kg's side of --leader-election=lease (kilo.agent.leadership) with a fake Lease writer."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
from collections.abc import Mapping
from typing import Any

import pytest

from kilo.agent.leadership import FAILURES, SWEEP_PERIOD, Election
from kilo.mesh import leadership
from kilo.mesh.events import Event, EventType
from kilo.mesh.model import Node
from tests.examples import location_member as member

WALL = 1_700_000_000.0


class FakeWriter:
    def __init__(self, wins: bool = True) -> None:
        self.writes: list[tuple[str, str, int]] = []
        self.deletes: list[str] = []
        self.wins = wins

    async def write(
        self, name: str, *, holder: str, duration: int, observed: Mapping[str, Any] | None
    ) -> bool:
        self.writes.append((name, holder, duration))
        return self.wins

    async def delete(self, name: str, *, observed: Mapping[str, Any]) -> bool:
        self.deletes.append(name)
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def ready(node: Node) -> Node:
    return dataclasses.replace(node, last_seen=int(WALL))


def election(hostname: str = "a", *, participants: tuple[str, ...] = ("a", "b", "c")) -> Any:
    clock = Clock()
    changes: list[None] = []
    writer = FakeWriter()
    e = Election(
        hostname=hostname,
        writer=writer,
        on_leaders_changed=lambda: changes.append(None),
        clock=clock,
        wall=lambda: WALL,
    )
    e.nodes.update({n: ready(member(n)) for n in ("a", "b", "c")})
    for name in participants:
        e.on_node_event(node_event(name, {leadership.ANNOTATION: leadership.MODE}))
    e.on_listed()
    e.set_topology("aws", ())
    # No packet leaves a unit test: the forwarding probe is the test's.
    e.forward = lambda probe: leadership.Forwarded.UNANSWERED
    return e, clock, writer, changes


def node_event(name: str, annotations: dict[str, str]) -> Event:
    return Event(EventType.MODIFIED, name, {"metadata": {"name": name, "annotations": annotations}})


def lease_event(holder: str, renewed: str, duration: int = 6) -> Event:
    name = leadership.lease_name("aws")
    spec = {"holderIdentity": holder, "leaseDurationSeconds": duration, "renewTime": renewed}
    return Event(EventType.MODIFIED, name, {"metadata": {"name": name}, "spec": spec})


def test_kilos_leader_takes_the_free_lease_and_every_node_follows_the_holder() -> None:
    e, clock, writer, changes = election("a")
    asyncio.run(e._act(clock.now))
    assert writer.writes == [(leadership.lease_name("aws"), "a", leadership.LEASE_DURATION)]
    assert e.holds()
    # Another node holds it (its write won): every node derives that holder.
    e.on_lease_event(lease_event("c", "t1"))
    e._check_derived(clock.now)
    overrides = e.leaders()
    assert overrides is not None
    assert overrides(list(e.nodes.values())) == {"location:aws": "c"}
    assert changes


def test_a_standby_waits_for_the_lease_to_lapse_then_takes_it() -> None:
    e, clock, writer, _ = election("b")
    e.on_lease_event(lease_event("a", "t1"))
    assert asyncio.run(e._act(clock.now)) == clock.now + leadership.LEASE_DURATION
    assert writer.writes == []
    clock.now += leadership.LEASE_DURATION
    asyncio.run(e._act(clock.now))
    assert writer.writes == [(leadership.lease_name("aws"), "b", leadership.LEASE_DURATION)]


def test_a_lost_race_writes_nothing_more_and_decides_again_soon() -> None:
    e, clock, writer, _ = election("a")
    writer.wins = False
    assert asyncio.run(e._act(clock.now)) == clock.now + leadership.STAGGER
    assert not e.holds()


def test_a_node_without_the_annotation_suspends_election_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    e, clock, writer, _ = election("a", participants=("a", "b"))
    assert e.leaders() is None
    assert e.leaders() is None
    asyncio.run(e._act(clock.now))
    assert writer.writes == []
    warnings = [r for r in caplog.records if "lease leader election is suspended" in r.getMessage()]
    assert len(warnings) == 1
    e.on_node_event(node_event("c", {leadership.ANNOTATION: leadership.MODE}))
    assert e.leaders() is not None


def test_a_malformed_lease_costs_only_itself(caplog: pytest.LogCaptureFixture) -> None:
    e, _, _, _ = election("b")
    e.on_lease_event(lease_event("a", "t1"))
    bad = lease_event("x" * 5000, "t2")
    e.on_lease_event(bad)
    assert leadership.lease_name("aws") not in e.records
    [record] = [r for r in caplog.records if "spec.holderIdentity" in r.getMessage()]
    assert len(record.getMessage()) < 300
    overrides = e.leaders()
    assert overrides is not None
    assert overrides(list(e.nodes.values())) == {"location:aws": "a"}  # Kilo's rule


def test_the_holder_releases_after_failed_probes_past_its_grace() -> None:
    e, clock, writer, _ = election("a")
    asyncio.run(e._act(clock.now))
    e.failures = 2
    clock.now += leadership.GRACE
    asyncio.run(e._act(clock.now))
    assert writer.writes[-1] == (leadership.lease_name("aws"), "a", leadership.RELEASED_DURATION)
    # Released once, not again on every decision.
    asyncio.run(e._act(clock.now))
    assert len(writer.writes) == 2


def test_the_wireguard_verdict_needs_two_settled_leaders_and_an_answer_before() -> None:
    one, two = ("10.4.0.1", "x"), ("10.4.0.2", "y")
    since = {one: 0.0, two: 0.0}
    now = leadership.SETTLE
    healthy = leadership.wireguard_healthy
    assert healthy({one: False}, since, answered_before=True, now=now)
    assert not healthy({one: False, two: False}, since, answered_before=True, now=now)
    assert healthy({one: False, two: True}, since, answered_before=True, now=now)
    assert healthy({one: False, two: False}, since, answered_before=False, now=now)
    fresh = {one: 0.0, two: now - 1}
    assert healthy({one: False, two: False}, fresh, answered_before=True, now=now)


def test_the_probe_reaches_the_other_leaders_wireguard_ips() -> None:
    e, clock, _, _ = election("a")
    asyncio.run(e._act(clock.now))
    reached: list[str] = []

    def reach(address: Any) -> bool:
        reached.append(str(address))
        return True

    e.reach = reach
    e.can_forward = lambda: True
    e.set_topology("aws", [(ipaddress.ip_address("10.4.0.2"), "x")])

    async def one_round() -> None:
        task = asyncio.create_task(e.probe())
        while not reached:
            await asyncio.sleep(0)
        task.cancel()

    asyncio.run(one_round())
    assert reached == ["10.4.0.2"]
    assert e.failures == 0


def test_a_holder_hands_the_lead_on_when_it_shuts_down_and_a_non_holder_writes_nothing() -> None:
    e, clock, writer, _ = election("a")
    asyncio.run(e.release())
    assert writer.writes == []
    asyncio.run(e._act(clock.now))
    asyncio.run(e.release())
    assert writer.writes[-1] == (leadership.lease_name("aws"), "a", leadership.RELEASED_DURATION)


def probe_rounds(e: Any, verdicts: list[leadership.Forwarded]) -> list[leadership.ForwardProbe]:
    """Run ``e.probe()`` for one round per verdict (kicked, not timed), once per test (its
    events belong to one event loop): the pairs probed. ``e.seen`` gets the failures count
    before each round."""
    pairs: list[leadership.ForwardProbe] = []
    queue = list(verdicts)
    e.seen = []

    def forward(probe: leadership.ForwardProbe) -> leadership.Forwarded:
        pairs.append(probe)
        e.seen.append(e.failures)
        return queue.pop(0)

    e.forward = forward

    async def rounds() -> None:
        task = asyncio.create_task(e.probe())
        for done in range(1, len(verdicts) + 1):
            e._kick.set()
            while len(pairs) < done:
                await asyncio.sleep(0)
            for _ in range(20):  # the rest of the round: the verdict
                await asyncio.sleep(0)
        task.cancel()

    asyncio.run(rounds())
    return pairs


def holder_with_members(caplog: pytest.LogCaptureFixture | None = None) -> Any:
    e, clock, _, _ = election("a")
    for i, name in enumerate(("a", "b", "c")):
        internal = ipaddress.ip_interface(f"10.0.0.{i + 1}/24")
        e.nodes[name] = dataclasses.replace(e.nodes[name], internal_ip=internal)
    asyncio.run(e._act(clock.now))
    assert e.holds()
    e.reach = lambda address: True
    e.can_forward = lambda: True
    e.set_topology("aws", [(ipaddress.ip_address("10.4.0.2"), "x")])
    return e


def test_a_reply_that_arrives_and_is_not_forwarded_fails_the_holder(
    caplog: pytest.LogCaptureFixture,
) -> None:
    e = holder_with_members()
    ok, dropped = leadership.Forwarded.FORWARDED, leadership.Forwarded.DROPPED
    pairs = probe_rounds(e, [ok, dropped, dropped])
    # The other members in turn, each asked to answer the other location's leader.
    assert [(str(p.member), str(p.remote)) for p in pairs] == [
        ("10.0.0.2", "10.4.0.2"),
        ("10.0.0.3", "10.4.0.2"),
        ("10.0.0.2", "10.4.0.2"),
    ]
    assert e.failures == FAILURES
    [record] = [r for r in caplog.records if "failed its probe" in r.getMessage()]
    assert "did not leave on the WireGuard interface" in record.__dict__["fields"]["forwarded"]


def test_no_reply_blames_nobody_and_a_drop_before_any_forward_is_not_judged() -> None:
    e = holder_with_members()
    dropped, unanswered = leadership.Forwarded.DROPPED, leadership.Forwarded.UNANSWERED
    # A firewall that passes the pods' traffic but not the probe's: every node would fail,
    # and the lead would rotate among them.
    forwarded = leadership.Forwarded.FORWARDED
    probe_rounds(e, [dropped, dropped, dropped, forwarded, unanswered, unanswered])
    assert e.seen == [0] * 6
    assert e.failures == 0


def test_the_first_locations_holder_deletes_a_removed_locations_lease_once_stale(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="kilo")
    e, clock, writer, _ = election("a")
    e.is_ours = lambda obj: obj["metadata"]["name"].startswith(leadership.NAME_PREFIX)
    gone = leadership.lease_name("gone")
    spec = {"holderIdentity": "g-1", "leaseDurationSeconds": 6, "renewTime": "t"}
    e.on_lease_event(Event(EventType.ADDED, gone, {"metadata": {"name": gone}, "spec": spec}))
    other = {"metadata": {"name": "kube-scheduler"}, "spec": dict(spec, holderIdentity="x")}
    e.on_lease_event(Event(EventType.ADDED, "kube-scheduler", other))
    asyncio.run(e._act(clock.now))  # a takes aws's Lease: aws is the first location
    assert e.holds()
    clock.now += 6 + leadership.STALE_AFTER - SWEEP_PERIOD
    e.on_lease_event(lease_event("a", renewed=str(clock.now)))  # a's renewals, as watched
    asyncio.run(e._sweep(clock.now))
    assert writer.deletes == []  # not stale yet
    clock.now += SWEEP_PERIOD
    e.on_lease_event(lease_event("a", renewed=str(clock.now)))
    asyncio.run(e._sweep(clock.now))
    assert writer.deletes == [gone]  # never another controller's Lease
    assert "deleted the lease of a location without ready nodes" in caplog.text
    # At most one look per SWEEP_PERIOD.
    asyncio.run(e._sweep(clock.now + 1))
    assert writer.deletes == [gone]


def test_a_node_that_holds_no_lease_deletes_nothing() -> None:
    e, clock, writer, _ = election("b")  # a leads aws by Kilo's rule
    e.is_ours = lambda obj: True
    gone = leadership.lease_name("gone")
    spec = {"holderIdentity": "g-1", "leaseDurationSeconds": 6, "renewTime": "t"}
    e.on_lease_event(Event(EventType.ADDED, gone, {"metadata": {"name": gone}, "spec": spec}))
    clock.now += 1000
    asyncio.run(e._sweep(clock.now))
    assert writer.deletes == []
