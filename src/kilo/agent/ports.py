"""The ports the agent's reconcile loop drives, and what start-up hands it.

Composition: each port is the part of an adapter (``kilo.adapters.netlink``, ``wireguard``,
``iptables``, ``tunnel``, the Kubernetes writer, the Prometheus metrics) that the loop
calls, so that unit tests drive it with fakes (``kilo.adapters.fakes`` and tests'
stand-ins) and ``kg`` with the real adapters (``kilo.agent.__main__``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kilo.adapters import tunnel
from kilo.mesh.discovery import DiscoveredIPs
from kilo.mesh.ip import IPInterface
from kilo.mesh.iptables import RuleSet
from kilo.mesh.keys import Key
from kilo.mesh.routes import Device, Route, Rule
from kilo.mesh.wgdevice import DeviceChange, DeviceState
from kilo.mesh.wireguard import WireGuardConfig


# The links the encapsulators need (the tunnel adapter's port), and the default route's
# interface, whose MTU gives WireGuard's.
class LinksPort(tunnel.Links, Protocol):
    def default_route_interface(self) -> int | None: ...


class RoutesPort(Protocol):
    # full=False: diff against the table's own last write, without listing the kernel.
    def set(
        self,
        routes: Sequence[Route],
        rules: Sequence[Rule],
        devices: Mapping[Device, str],
        *,
        full: bool = True,
    ) -> tuple[int, int]: ...
    def clean_up(self) -> None: ...


class IPTablesPort(Protocol):
    def apply(self, planned: RuleSet, *, full: bool = True) -> int: ...
    def clean_up(self) -> None: ...


class DevicePort(Protocol):
    def get(self) -> DeviceState: ...
    # ``current``: the device as get() just read it, or as the last write left it
    # (wgdevice.state_after); None: apply reads it itself. Returns the change it wrote.
    def apply(
        self, desired: WireGuardConfig, current: DeviceState | None = None
    ) -> DeviceChange | None: ...


class TunnelPort(Protocol):
    """The encapsulator's device side (IPIP ``tunl0``, ``flannel.1``, ``cilium_tunl``)."""

    @property
    def name(self) -> str | None: ...  # the tunnel interface, None while it does not exist
    def set(self, cidr: IPInterface) -> None: ...
    def cni_compatibility_ip(self) -> IPInterface | None: ...
    def clean_up(self) -> None: ...


class NodeWriter(Protocol):
    async def patch(self, name: str, annotations: Mapping[str, str | None]) -> None: ...


class MetricsPort(Protocol):
    def error(self, event: str) -> None: ...
    def reconciled(self) -> None: ...
    def set_counts(self, nodes: int, peers: int) -> None: ...
    def set_leader(self, leader: bool) -> None: ...
    def set_node(self, node: str, location: str) -> None: ...


@dataclass(frozen=True, slots=True)
class DataPlane:
    links: LinksPort
    routes: RoutesPort
    iptables: IPTablesPort
    device: DevicePort
    tunnel: TunnelPort | None  # None: no encapsulation (--encapsulate=never, no private IP)
    update_cni: Callable[[Any], bool]  # (pod CIDR) -> rewritten?


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What start-up learnt about the host (kilo-mesh.md §6.1)."""

    key: Key  # the private key
    public_key: Key
    discovered: DiscoveredIPs
    external_ip: IPInterface
    private_interface: str | None  # the interface that holds the private IP
