"""The agent's reconcile loop against fake data-plane ports (fast; the real ports are
exercised in tests/e2e)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from kilo.adapters.kubernetes import Event, EventType
from kilo.agent.mesh import Agent, DataPlane, HostFacts
from kilo.agent.settings import parse_args
from kilo.errors import BackendError, DataPlaneError
from kilo.mesh import translate
from kilo.mesh.discovery import DiscoveredIPs, Interface
from kilo.mesh.ip import IPInterface
from kilo.mesh.iptables import RuleSet
from kilo.mesh.keys import Key
from kilo.mesh.routes import Device, Route, Rule
from kilo.mesh.wgdevice import DeviceState, PeerState
from kilo.mesh.wireguard import WireGuardConfig

NOW = 1_700_000_000
PRIVATE_KEY = Key(bytes([7] * 32))
OTHER_KEYS = {name: Key(bytes([i + 1] * 32)).public_key() for i, name in enumerate("bcdef")}


class FakeLinks:
    def __init__(self) -> None:
        self.up: dict[str, bool] = {}
        self.addresses: dict[str, list[IPInterface]] = {}
        self.mtus: dict[str, int] = {"kilo0": 1420, "eth0": 1500}

    def index(self, name: str) -> int | None:
        return {"eth0": 2, "kilo0": 3}.get(name)

    def interfaces(self) -> list[Interface]:
        return [Interface(index=2, name="eth0", addresses=(ipaddress.ip_interface("10.0.0.1/24"),))]

    def default_route_interface(self) -> int | None:
        return 2

    def mtu(self, name: str) -> int:
        return self.mtus[name]

    def set_mtu(self, name: str, mtu: int) -> bool:
        changed = self.mtus.get(name) != mtu
        self.mtus[name] = mtu
        return changed

    def set_up(self, name: str, up: bool) -> bool:
        changed = self.up.get(name) != up
        self.up[name] = up
        return changed

    def set_address(self, name: str, cidr: IPInterface) -> bool:
        changed = self.addresses.get(name) != [cidr]
        self.addresses[name] = [cidr]
        return changed

    def delete_addresses(self, name: str) -> None:
        self.addresses[name] = []

    def delete(self, name: str) -> bool:
        return self.addresses.pop(name, None) is not None


class FakeRoutes:
    def __init__(self) -> None:
        self.routes: tuple[Route, ...] = ()
        self.rules: tuple[Rule, ...] = ()
        self.devices: Mapping[Device, str] = {}
        self.cleaned = False
        self.calls = 0

    def set(
        self, routes: Sequence[Route], rules: Sequence[Rule], devices: Mapping[Device, str]
    ) -> tuple[int, int]:
        self.calls += 1
        self.routes, self.rules, self.devices = tuple(routes), tuple(rules), dict(devices)
        return len(routes), 0

    def clean_up(self) -> None:
        self.cleaned = True


class FakeIPTables:
    def __init__(self, fail: bool = False) -> None:
        self.planned: RuleSet | None = None
        self.fail = fail
        self.calls = 0
        self.cleaned = False

    def apply(self, planned: RuleSet) -> int:
        self.calls += 1
        if self.fail:
            raise DataPlaneError("iptables-restore failed for table nat (IPv4): boom")
        self.planned = planned
        return 1

    def clean_up(self) -> None:
        self.cleaned = True


class FakeDevice:
    def __init__(self) -> None:
        self.config = WireGuardConfig()
        self.applies = 0

    def get(self) -> DeviceState:
        return DeviceState(
            private_key=self.config.private_key,
            listen_port=self.config.listen_port,
            peers=tuple(PeerState(public_key=p.public_key) for p in self.config.peers),
        )

    def apply(self, desired: WireGuardConfig) -> bool:
        changed = desired != self.config
        self.config = desired
        self.applies += 1
        return changed


class FakeWriter:
    def __init__(self) -> None:
        self.patches: list[dict[str, str | None]] = []
        self.fail = False

    async def patch(self, name: str, annotations: Mapping[str, str | None]) -> None:
        if self.fail:
            raise BackendError("https://192.0.2.1:6443 is unreachable")
        self.patches.append(dict(annotations))


class FakeMetrics:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.reconciles = 0
        self.counts = (0, 0)
        self.leader: bool | None = None

    def error(self, event: str) -> None:
        self.errors.append(event)

    def reconciled(self) -> None:
        self.reconciles += 1

    def set_counts(self, nodes: int, peers: int) -> None:
        self.counts = (nodes, peers)

    def set_leader(self, leader: bool) -> None:
        self.leader = leader


class Harness:
    def __init__(self, *args: str, iptables_fail: bool = False) -> None:
        settings = parse_args(
            ["--hostname=a", "--encapsulate=never", *args], hostname_fallback=lambda: None
        )
        self.links = FakeLinks()
        self.routes = FakeRoutes()
        self.iptables = FakeIPTables(iptables_fail)
        self.device = FakeDevice()
        self.writer = FakeWriter()
        self.metrics = FakeMetrics()
        self.cni: list[object] = []

        def update_cni(subnet: object) -> bool:
            self.cni.append(subnet)
            return True

        plane = DataPlane(
            links=self.links,
            routes=self.routes,
            iptables=self.iptables,
            device=self.device,
            tunnel=None,
            update_cni=update_cni,
        )
        host = HostFacts(
            key=PRIVATE_KEY,
            public_key=PRIVATE_KEY.public_key(),
            discovered=DiscoveredIPs(
                ipaddress.ip_interface("10.0.0.1/24"), ipaddress.ip_interface("203.0.113.1/24")
            ),
            external_ip=ipaddress.ip_interface("203.0.113.1/24"),
            private_interface="eth0",
        )
        self.now = float(NOW)
        # Names resolve from this table only: a unit test never asks a real DNS server.
        self.dns: dict[str, str] = {"b.example.com": "203.0.113.50"}
        self.agent = Agent(
            settings,
            host,
            plane,
            self.writer,
            self.metrics,
            clock=lambda: self.now,
            resolver=self.resolve,
        )
        self.version = 0

    def resolve(self, host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        address = self.dns.get(host)
        return None if address is None else ipaddress.ip_address(address)

    def node(
        self,
        name: str,
        *,
        location: str = "aws",
        pod: int = 0,
        annotations: dict[str, str] | None = None,
    ) -> None:
        self.version += 1
        obj: dict[str, Any] = {
            "metadata": {
                "name": name,
                "uid": f"uid-{name}",
                "resourceVersion": str(self.version),
                "labels": {"topology.kubernetes.io/region": location},
                "annotations": dict(annotations or {}),
            },
            "spec": {"podCIDR": f"10.42.{pod}.0/24"},
        }
        self.agent.on_node_event(Event(EventType.MODIFIED, name, obj))

    def remote(
        self, name: str, *, location: str = "aws", pod: int = 1, extra: dict[str, str] | None = None
    ) -> None:
        annotations = {
            translate.KEY: str(OTHER_KEYS[name]),
            translate.ENDPOINT: f"203.0.113.{pod + 10}:51820",
            translate.INTERNAL_IP: f"10.0.0.{pod + 10}/24",
            translate.LAST_SEEN: str(int(self.now)),
            **(extra or {}),
        }
        self.node(name, location=location, pod=pod, annotations=annotations)

    def written(self) -> dict[str, str | None]:
        merged: dict[str, str | None] = {}
        for patch in self.writer.patches:
            merged.update(patch)
        return merged

    def round(self, *, check_in: bool = False, resync: bool = False) -> None:
        asyncio.run(self.agent._round(check_in=check_in, resync=resync))


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
        def set(self, *args: Any) -> tuple[int, int]:
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
