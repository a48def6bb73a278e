"""The agent's reconcile loop against fake data-plane ports (fast; the real ports are
exercised in tests/e2e)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kilo.adapters.netlink import InMemoryRouteTable as FakeRoutes
from kilo.agent.ports import DataPlane
from kilo.mesh import translate
from kilo.mesh.events import Event, EventType
from kilo.mesh.routes import Device
from kilo.mesh.wgdevice import DeviceChange, DeviceState, plan_changes, state_after
from kilo.sandbox import kubelet
from tests.agent_harness import (
    NOW,
    OTHER_KEYS,
    PRIVATE_KEY,
    Harness,
)


def test_publishes_key_endpoint_and_internal_ip_before_the_first_apply() -> None:
    h = Harness()
    h.node("a")
    h.round(check_in=True)
    written = h.written()
    assert written[translate.KEY] == str(PRIVATE_KEY.public_key())
    assert written[translate.ENDPOINT] == "203.0.113.1:51820"
    assert written[translate.INTERNAL_IP] == "10.0.0.1/24"
    assert written[translate.LAST_SEEN] == str(NOW)
    assert written[translate.GRANULARITY] == "location"
    # Alone in its location: the leader; its WireGuard IP is published after the apply.
    assert written[translate.WIREGUARD_IP] == "10.4.0.1/16"
    assert h.agent.healthy
    assert h.metrics.leader is True
    assert h.links.up["kilo0"] is True
    assert h.links.addresses["kilo0"] == [ipaddress.ip_interface("10.4.0.1/16")]
    assert h.cni == [ipaddress.ip_network("10.42.0.0/24")]


def test_leader_configures_peers_and_non_leader_has_none() -> None:
    h = Harness()
    h.node("a")
    h.remote("b", location="gcp", pod=1)
    h.round(check_in=True)
    assert [p.public_key for p in h.device.config.peers] == [OTHER_KEYS["b"]]
    assert h.device.config.private_key == PRIVATE_KEY
    # "c" joins a's location with the leader annotation: a is demoted.
    h.remote("c", location="aws", pod=2, extra={translate.LEADER: "true"})
    h.round()
    assert h.metrics.leader is False
    assert h.device.config.peers == ()
    assert h.links.up["kilo0"] is False
    assert h.links.addresses["kilo0"] == []
    assert h.written()[translate.WIREGUARD_IP] == ""


def test_each_apply_names_the_node_and_its_location_for_the_metrics() -> None:
    h = Harness()
    h.node("a", location="gcp")
    h.round(check_in=True)
    assert h.metrics.node == ("a", "gcp")
    h.node("a", location="aws")
    h.round()
    assert h.metrics.node == ("a", "aws")


def test_last_seen_alone_does_not_trigger_an_apply() -> None:
    h = Harness()
    h.node("a")
    h.remote("b", location="gcp")
    h.round(check_in=True)
    reconciles = h.metrics.reconciles
    h.now += 10
    h.remote("b", location="gcp")  # a check-in of b: only last-seen moved
    h.round()
    assert h.metrics.reconciles == reconciles
    h.remote("b", location="gcp", extra={translate.PERSISTENT_KEEPALIVE: "10"})
    h.round()
    assert h.metrics.reconciles == reconciles + 1


def test_a_failing_step_does_not_stop_the_others() -> None:
    h = Harness(iptables_fail=True)
    h.node("a")
    h.remote("b", location="gcp")
    h.round(check_in=True)
    assert "apply" in h.metrics.errors
    assert h.routes.routes  # routes still applied
    assert [p.public_key for p in h.device.config.peers] == [OTHER_KEYS["b"]]
    assert not h.agent.healthy  # health waits for an apply without errors


def test_unresolvable_endpoint_keeps_the_rest_of_the_mesh() -> None:
    h = Harness()
    h.node("a")
    h.remote("b", location="gcp", pod=1, extra={translate.ENDPOINT: "b.example.com:51820"})
    h.remote("c", location="azure", pod=2, extra={translate.ENDPOINT: "c.example.com:51820"})
    h.round(check_in=True)
    peers = {p.public_key: p for p in h.device.config.peers}
    assert set(peers) == {OTHER_KEYS["b"], OTHER_KEYS["c"]}
    unresolved = peers[OTHER_KEYS["c"]].endpoint
    assert unresolved is not None and not unresolved.resolved
    resolved = peers[OTHER_KEYS["b"]].endpoint
    assert resolved is not None and str(resolved.ip) == "203.0.113.50"
    assert h.agent.healthy


def test_garbage_annotations_skip_only_that_node(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()
    h.node("a")
    h.remote("b", location="gcp", pod=1)
    h.remote("c", location="azure", pod=2, extra={translate.KEY: "not base64 at all"})
    h.round(check_in=True)
    assert [p.public_key for p in h.device.config.peers] == [OTHER_KEYS["b"]]


def test_api_outage_freezes_instead_of_tearing_down() -> None:
    h = Harness()
    h.node("a")
    h.remote("b", location="gcp")
    h.round(check_in=True)
    peers = h.device.config.peers
    h.writer.fail = True
    h.now += 120  # every check-in is stale now, ours included
    h.round(check_in=True, resync=True)
    assert "checkin" in h.metrics.errors
    assert h.device.config.peers == peers  # nothing torn down
    assert h.routes.routes


def test_unknown_local_node_does_nothing() -> None:
    h = Harness()
    h.remote("b", location="gcp")
    h.round(check_in=True, resync=True)
    assert h.writer.patches == []
    assert h.metrics.reconciles == 0
    assert not h.agent.healthy


def test_graph_before_and_after_the_first_apply() -> None:
    h = Harness()
    with pytest.raises(Exception, match="not ready"):
        h.agent.graph()
    h.node("a")
    h.remote("b", location="gcp")
    h.round(check_in=True)
    dot = h.agent.graph()
    assert dot.startswith("digraph kilo {")
    assert "cluster_location_location:aws" in dot and "cluster_location_location:gcp" in dot


def test_clean_up_removes_what_was_added() -> None:
    h = Harness()
    h.node("a")
    h.remote("b", location="gcp")
    h.round(check_in=True)
    asyncio.run(h.agent.clean_up())
    assert h.iptables.cleaned and h.routes.cleaned
    assert h.device.config.peers == ()
    assert h.links.addresses["kilo0"] == []
    assert h.writer.patches[-1] == dict.fromkeys(translate.AGENT_ANNOTATIONS)


def test_resync_period_below_a_second_is_raised() -> None:
    h = Harness("--resync-period=0s")
    assert h.agent.resync_period == 1.0


def test_a_restarted_agent_does_not_flap_its_published_wireguard_ip() -> None:
    h = Harness()
    h.node("a")
    h.remote("b", location="gcp")
    h.round(check_in=True)
    published = h.written()
    # A new agent process (same key) finds its own annotations on the Node.
    again = Harness()
    again.node("a", annotations={k: v for k, v in published.items() if v is not None})
    again.remote("b", location="gcp")
    again.round(check_in=True)
    for patch in again.writer.patches:
        assert translate.WIREGUARD_IP not in patch, patch
        assert translate.DISCOVERED_ENDPOINTS not in patch, patch
    assert again.agent.wireguard_ip == ipaddress.ip_interface("10.4.0.1/16")


def test_event_applies_skip_unchanged_subsystems_and_resync_rechecks_them() -> None:
    h = Harness()
    h.node("a")
    h.remote("b", location="gcp", pod=1)
    h.round(check_in=True)
    iptables_calls, route_calls = h.iptables.calls, h.routes.calls
    # A change that moves no rule or route: b's keepalive only changes WireGuard.
    h.remote("b", location="gcp", pod=1, extra={translate.PERSISTENT_KEEPALIVE: "10"})
    h.round()
    assert (h.iptables.calls, h.routes.calls) == (iptables_calls, route_calls)
    assert h.device.config.peers[0].persistent_keepalive == 0  # the local node's keepalive
    # A new location changes both.
    h.remote("c", location="azure", pod=2)
    h.round()
    assert (h.iptables.calls, h.routes.calls) == (iptables_calls + 1, route_calls + 1)
    # The resync re-checks everything against the kernel, changed or not.
    h.round(resync=True)
    assert (h.iptables.calls, h.routes.calls) == (iptables_calls + 2, route_calls + 2)
    # iptables reads its tables on the full applies only (start-up's, the resync).
    assert h.iptables.fulls == [True] * iptables_calls + [False, True]


def test_a_deleted_route_forces_a_full_apply() -> None:
    h = Harness()
    h.node("a")
    h.remote("b", location="gcp")
    h.round(check_in=True)
    route_calls = h.routes.calls
    h.agent.trigger()
    h.round()
    assert h.routes.calls == route_calls + 1


def test_check_ins_alone_never_apply_however_long_the_resync_period() -> None:
    h = Harness("--resync-period=300s")
    h.node("a")
    h.remote("b", location="gcp")
    h.round(check_in=True)
    reconciles = h.metrics.reconciles
    for _ in range(6):  # three minutes of check-ins, ours and b's
        h.now += 30
        h.remote("b", location="gcp")
        h.round(check_in=True)
    assert h.metrics.reconciles == reconciles


def test_an_unexpected_exception_in_a_round_is_logged_and_the_loop_goes_on() -> None:
    h = Harness()
    h.node("a")

    class Broken(FakeRoutes):
        def set(self, *args: Any, **kwargs: Any) -> tuple[int, int]:
            raise OSError("netlink socket closed")

    h.agent.plane = DataPlane(
        links=h.links,
        routes=Broken(),
        iptables=h.iptables,
        device=h.device,
        tunnel=None,
        update_cni=lambda subnet: False,
    )

    async def scenario() -> None:
        failed = asyncio.Event()
        record = h.metrics.error

        def error(event: str) -> None:
            record(event)
            failed.set()

        h.metrics.error = error  # type: ignore[method-assign]
        worker = asyncio.create_task(h.agent._worker())
        try:
            await asyncio.wait_for(failed.wait(), 10)
            await asyncio.sleep(0)  # let the worker finish handling the failure
            assert not worker.done()
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    asyncio.run(scenario())
    assert "apply" in h.metrics.errors


class ListInformer:
    """Yields the given events (the first list), then waits as a quiet watch does."""

    def __init__(self, events: list[Event]) -> None:
        self._events = events
        self.done = asyncio.Event()

    async def events(self) -> AsyncIterator[Event]:
        for event in self._events:
            yield event
        self.done.set()
        await asyncio.Event().wait()

    async def listed(self) -> None:
        await self.done.wait()


def test_an_event_that_cannot_be_handled_is_logged_and_the_agent_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness()
    handled: list[str] = []
    original = h.agent.on_node_event

    def on_node_event(event: Event) -> None:
        if event.name == "broken":
            raise RecursionError("maximum recursion depth exceeded " + "x" * 10_000)
        handled.append(event.name)
        original(event)

    h.agent.on_node_event = on_node_event  # type: ignore[method-assign]
    obj = {"metadata": {"name": "b", "resourceVersion": "1"}, "spec": {}}
    nodes = ListInformer(
        [
            Event(EventType.MODIFIED, "broken", {"metadata": {"name": "broken"}}),
            Event(EventType.MODIFIED, "b", obj),
        ]
    )
    peers = ListInformer([])

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(h.agent.run(nodes, peers, stop))
        await nodes.done.wait()
        stop.set()
        await running  # returns: the broken object did not stop the agent

    asyncio.run(scenario())
    assert handled == ["b"]
    assert h.metrics.errors == ["run"]
    [record] = [r for r in caplog.records if "could not handle a watch event" in r.getMessage()]
    assert record.levelname == "ERROR"


# --- Nodes as a kubelet registers them --------------------------------------------------------


@pytest.mark.parametrize(
    "with_kubelet_annotations", [False, True], ids=["no-annotations", "kubelet"]
)
def test_a_local_node_without_kilos_annotations_is_joined_and_cleaned_up(
    with_kubelet_annotations: bool,
) -> None:
    # Kilo's Go agent panics writing into a Node with no annotations map at all; a kubelet
    # registers its Node with its own annotations only.
    h = Harness()
    obj = kubelet.node(
        "a",
        internal_ip="10.0.0.1",
        pod_cidr="10.42.0.0/24",
        labels={"topology.kubernetes.io/region": "aws"},
        kubelet_annotations=with_kubelet_annotations,
        now=NOW,
    )
    obj["metadata"]["resourceVersion"] = "1"
    assert ("annotations" in obj["metadata"]) is with_kubelet_annotations
    h.agent.on_node_event(Event(EventType.ADDED, "a", obj))
    h.remote("b", location="gcp", pod=1)
    h.round(check_in=True)
    written = h.written()
    assert written[translate.KEY] == str(PRIVATE_KEY.public_key())
    assert written[translate.ENDPOINT] == "203.0.113.1:51820"
    assert written[translate.WIREGUARD_IP] == "10.4.0.1/16"
    assert [p.public_key for p in h.device.config.peers] == [OTHER_KEYS["b"]]
    assert h.agent.healthy
    # Only Kilo's annotations are ever written or removed: the kubelet's stay.
    asyncio.run(h.agent.clean_up())
    touched = {key for patch in h.writer.patches for key in patch}
    assert touched and all(key.startswith(translate.PREFIX) for key in touched)
    assert h.writer.patches[-1] == dict.fromkeys(translate.AGENT_ANNOTATIONS)


def test_cross_peers_only_with_other_locations_and_routes_its_own_over_the_lan() -> None:
    h = Harness("--mesh-granularity=cross")
    h.node("a", location="aws")
    h.remote("b", location="aws", pod=1)  # a's location: the LAN, not WireGuard
    h.remote("c", location="gcp", pod=2)
    h.round(check_in=True)
    assert h.written()[translate.GRANULARITY] == "cross"
    assert h.metrics.leader is True  # every node leads its own segment
    assert [p.public_key for p in h.device.config.peers] == [OTHER_KEYS["c"]]
    routes = {str(r.dst): r for r in h.routes.routes}
    assert routes["10.42.1.0/24"].dev == Device.PRIVATE
    assert str(routes["10.42.1.0/24"].gw) == "10.0.0.11"
    assert routes["10.42.2.0/24"].dev == Device.KILO


def test_a_node_of_another_granularity_is_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness("--mesh-granularity=cross")
    h.node("a")
    h.remote("b", location="gcp", pod=1, extra={translate.GRANULARITY: "location"})
    h.remote("b", location="gcp", pod=1, extra={translate.GRANULARITY: "location"})
    h.remote("c", location="gcp", pod=2, extra={translate.GRANULARITY: "cross"})
    warned = [r for r in caplog.records if "another mesh granularity" in r.getMessage()]
    assert [r.__dict__.get("fields") for r in warned] == [
        {"node": "b", "granularity": "location", "local": "cross"}
    ]


def test_nodes_an_event_did_not_change_reach_the_topology_as_the_same_objects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The topology reuses what it built from the very same Node objects (its segment memo):
    an apply that copied every Node would rebuild the whole mesh on every event."""
    from kilo.agent import apply
    from kilo.mesh.topology import build_topology as build

    seen: list[dict[str, Any]] = []

    def spy(nodes: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append({n.name: n for n in nodes})
        return build(nodes, *args, **kwargs)

    monkeypatch.setattr(apply, "build_topology", spy)
    h = Harness()
    h.node("a")
    h.remote("b", location="gcp", pod=1)
    h.remote("c", location="azure", pod=2, extra={translate.ENDPOINT: "b.example.com:51820"})
    h.round(check_in=True)
    h.remote("d", location="gcp", pod=3)
    h.round()
    before, after = seen[-2], seen[-1]
    assert after["b"] is before["b"]  # an IP endpoint: nothing to resolve, no copy
    assert after["c"] == before["c"]  # a DNS name is resolved on every apply
    assert "d" in after and "d" not in before


def test_a_light_apply_does_not_read_the_device_and_writes_only_what_changed() -> None:
    h = Harness("--resync-period=300s")
    h.node("a")
    h.remote("b", location="gcp")
    h.round(check_in=True)  # the first apply is a full one
    writes: list[str] = []
    for name in ("set_mtu", "set_address", "set_up"):
        original = getattr(h.links, name)

        def counted(*args: Any, _name: str = name, _original: Any = original) -> bool:
            writes.append(_name)
            return bool(_original(*args))

        setattr(h.links, name, counted)
    reads, listings = h.device.reads, h.routes.listings
    # b's allowed-location IPs change: a new WireGuard allowed IP and a new route.
    h.remote("b", location="gcp", extra={translate.ALLOWED_LOCATION_IPS: "192.168.7.0/24"})
    h.round()
    # Diffed against the device as the last write left it, not a dump of the device.
    assert h.device.reads == reads
    assert h.device.currents[-1] is not None
    assert writes == []  # MTU, address and link state as the last apply left them
    assert h.routes.listings == listings  # the route table diffed against its last write
    added = ipaddress.ip_network("192.168.7.0/24")
    assert any(key.dst == added for key in h.routes.kernel()[0])
    # A resync re-asserts everything, lists the kernel and reads the device again.
    h.round(resync=True)
    assert sorted(writes) == ["set_address", "set_mtu", "set_up"]
    assert h.routes.listings == listings + 1
    assert h.device.reads == reads + 1


def _allowed_of_b(state: DeviceState | None) -> set[str]:
    assert state is not None
    peer = state.peer(OTHER_KEYS["b"])
    assert peer is not None
    return {str(n) for n in peer.allowed_ips}


def test_the_leader_diffs_against_its_own_last_write_between_full_applies() -> None:
    h = Harness("--resync-period=300s")
    h.node("a")
    h.remote("b", location="gcp")
    h.round(check_in=True)  # full: reads the (empty) device
    assert h.device.reads == 1
    # Two changes: each is planned on what the write before it left, with no read.
    h.remote("b", location="gcp", extra={translate.ALLOWED_LOCATION_IPS: "192.168.7.0/24"})
    h.round()
    h.remote("b", location="gcp", extra={translate.ALLOWED_LOCATION_IPS: "192.168.8.0/24"})
    h.round()
    assert h.device.reads == 1
    known = h.device.currents[0]
    assert known is not None
    for desired, handed in zip(h.device.applied, h.device.currents[1:], strict=False):
        known = state_after(known, plan_changes(desired, known) or DeviceChange())
        assert handed == known
    assert "192.168.7.0/24" not in _allowed_of_b(h.device.currents[1])
    assert "192.168.7.0/24" in _allowed_of_b(h.device.currents[2])  # the first change
    assert len(h.device.currents) == 3
    # A resync reads the device again.
    h.round(resync=True)
    assert h.device.reads == 2


def test_after_a_failed_write_or_read_the_next_apply_reads_the_device() -> None:
    h = Harness("--resync-period=300s")
    h.node("a")
    h.remote("b", location="gcp")
    h.round(check_in=True)
    reads = h.device.reads
    h.device.fail_writes = True
    h.remote("b", location="gcp", extra={translate.ALLOWED_LOCATION_IPS: "192.168.7.0/24"})
    h.round()
    assert "apply" in h.metrics.errors
    assert h.device.reads == reads  # the failed apply planned on the known state
    h.device.fail_writes = False
    h.remote("b", location="gcp", extra={translate.ALLOWED_LOCATION_IPS: "192.168.8.0/24"})
    h.agent._full_needed = False  # even if the agent did not ask for a full apply
    h.round()
    assert h.device.reads == reads + 1  # what the failed write left is unknown: read
    assert h.device.currents[-1] is not None
    # A resync whose read fails: the next apply reads.
    h.device.fail_reads = True
    h.remote("b", location="gcp", extra={translate.ALLOWED_LOCATION_IPS: "192.168.9.0/24"})
    h.round(resync=True)
    h.device.fail_reads = False
    reads = h.device.reads
    h.remote("b", location="gcp", extra={translate.ALLOWED_LOCATION_IPS: "192.168.10.0/24"})
    h.agent._full_needed = False
    h.round()
    assert h.device.reads == reads + 1


def test_a_demoted_leader_reads_the_device_again() -> None:
    h = Harness("--resync-period=300s")
    h.node("a")
    h.remote("b", location="gcp")
    h.round(check_in=True)
    reads = h.device.reads
    h.remote("c", location="aws", pod=2, extra={translate.LEADER: "true"})  # a is demoted
    h.round()
    assert h.metrics.leader is False
    assert h.device.config.peers == ()
    assert h.device.reads == reads  # the demotion's write is planned on the known state
    h.remote("c", location="aws", pod=2)  # a leads again: the device is read
    h.agent._full_needed = False
    h.round()
    assert h.metrics.leader is True
    assert h.device.reads == reads + 1
    assert h.device.currents[-1] is not None


class PagedSource:
    """A first list in pages, each handed over when the test opens its gate."""

    def __init__(self, pages: int) -> None:
        self.gates = [asyncio.Event() for _ in range(pages)]
        self.handed = [asyncio.Event() for _ in range(pages)]
        self.done = asyncio.Event()

    async def events(self) -> AsyncIterator[Event]:
        for gate, handed in zip(self.gates, self.handed, strict=True):
            await gate.wait()
            handed.set()
            if False:  # an empty page: the gate is what matters here
                yield
        self.done.set()
        await asyncio.Event().wait()

    async def listed(self) -> None:
        await self.done.wait()


def test_the_first_round_waits_for_the_whole_first_lists_of_nodes_and_peers() -> None:
    # The first list's events come page by page (kubernetes.Informer): a round on a part
    # of them would apply a part of the mesh. Kilo's agent waits for its caches to sync.
    h = Harness()
    started = asyncio.Event()

    async def worker() -> None:
        started.set()
        await asyncio.Event().wait()

    h.agent._worker = worker  # type: ignore[method-assign]

    async def scenario() -> None:
        nodes, peers = PagedSource(2), PagedSource(1)
        stop = asyncio.Event()
        running = asyncio.create_task(h.agent.run(nodes, peers, stop))
        nodes.gates[0].set()
        await nodes.handed[0].wait()
        assert not started.is_set()  # a part of the Nodes
        nodes.gates[1].set()
        await nodes.done.wait()
        assert not started.is_set()  # every Node, no Peer yet
        peers.gates[0].set()
        await asyncio.wait_for(started.wait(), 10)
        stop.set()
        await running

    asyncio.run(scenario())
