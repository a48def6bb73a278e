"""The agent's reconcile loop with fake data-plane ports, for unit tests and the fuzz suite.

The fakes keep what the loop asked for (the route table's is the adapter's own, which
tests/e2e/test_route_table_contract.py holds to the real table's contract); the real ports
(netlink, UAPI, iptables-restore) are exercised against real kernels and processes in
tests/e2e.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Mapping
from typing import Any

from kilo.adapters.netlink import InMemoryRouteTable
from kilo.agent import command_line
from kilo.agent.ports import DataPlane, HostFacts
from kilo.agent.reconcile import Agent
from kilo.agent.settings import AgentSettings
from kilo.errors import BackendError, DataPlaneError
from kilo.mesh import translate
from kilo.mesh.discovery import DiscoveredIPs, Interface
from kilo.mesh.events import Event, EventType
from kilo.mesh.ip import IPInterface
from kilo.mesh.iptables import RuleSet
from kilo.mesh.keys import Key
from kilo.mesh.wgdevice import DeviceChange, DeviceState, PeerState, plan_changes
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


class FakeIPTables:
    def __init__(self, fail: bool = False) -> None:
        self.planned: RuleSet | None = None
        self.fail = fail
        self.calls = 0
        self.fulls: list[bool] = []  # each apply's ``full``
        self.cleaned = False

    def apply(self, planned: RuleSet, *, full: bool = True) -> int:
        self.calls += 1
        self.fulls.append(full)
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
        self.reads = 0  # get(), and apply() without the state its caller read
        self.currents: list[DeviceState | None] = []  # what each apply() was handed
        self.applied: list[WireGuardConfig] = []  # what each apply() was asked for
        self.fail_reads = False
        self.fail_writes = False

    def get(self) -> DeviceState:
        if self.fail_reads:
            raise DataPlaneError("WireGuard device kilo0: no socket")
        self.reads += 1
        return DeviceState(
            private_key=self.config.private_key,
            listen_port=self.config.listen_port,
            peers=tuple(PeerState(public_key=p.public_key) for p in self.config.peers),
        )

    def apply(
        self, desired: WireGuardConfig, current: DeviceState | None = None
    ) -> DeviceChange | None:
        self.currents.append(current)
        self.applied.append(desired)
        if current is None:
            current = self.get()
        if self.fail_writes:
            raise DataPlaneError("WireGuard device kilo0 rejected the configuration: errno=-22")
        change = plan_changes(desired, current)
        self.config = desired
        self.applies += 1
        return change


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
        self.node: tuple[str, str] | None = None

    def error(self, event: str) -> None:
        self.errors.append(event)

    def reconciled(self) -> None:
        self.reconciles += 1

    def set_counts(self, nodes: int, peers: int) -> None:
        self.counts = (nodes, peers)

    def set_leader(self, leader: bool) -> None:
        self.leader = leader

    def set_node(self, node: str, location: str) -> None:
        self.node = (node, location)


class Harness:
    def __init__(self, *args: str, iptables_fail: bool = False) -> None:
        settings = command_line.read(
            ["--hostname=a", "--encapsulate=never", *args], hostname_fallback=lambda: None
        )
        assert isinstance(settings, AgentSettings), settings
        self.links = FakeLinks()
        # The route table adapter's own fake, held to its contract (kilo.adapters.netlink).
        self.routes = InMemoryRouteTable(interfaces=FakeLinks().mtus)
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
