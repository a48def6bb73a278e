"""The agent's reconcile loop: cluster events in, a programmed node out.

Composition only. Node and Peer events (from the watch caches) are translated one by one
into mesh values; a single worker then publishes the local node's annotations and applies
the topology through the data-plane ports. Every sub-system applies diffs, so an apply that
changes nothing touches nothing (Kilo's order and triggers: reference kilo-mesh.md §6.3-6.7).

Where Kilo is fragile this loop is not (each difference is in docs/compatibility.md):
* an endpoint that does not resolve leaves that one WireGuard peer without an endpoint
  instead of aborting the whole apply;
* a failing step (iptables, routes, WireGuard, CNI) is counted and logged, and the others
  still run;
* a demoted leader removes its WireGuard peers and address instead of keeping them;
* ``--resync-period`` below one second is raised to one second (Kilo busy-loops on 0).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from kilo.adapters.kubernetes import Event, EventType, Informer
from kilo.agent import logs
from kilo.agent.settings import AgentSettings
from kilo.errors import KiloError
from kilo.mesh import graph, samenat, translate
from kilo.mesh.discovery import DiscoveredIPs, Interface
from kilo.mesh.endpoint import Endpoint, endpoint_ready
from kilo.mesh.ip import IPAddress, IPInterface
from kilo.mesh.iptables import RuleSet
from kilo.mesh.keys import ZERO_KEY, Key
from kilo.mesh.localnode import local_node, mesh_changed, peer_changed
from kilo.mesh.model import (
    DEFAULT_MTU,
    WIREGUARD_OVERHEAD,
    Diagnostic,
    Node,
    Peer,
    ready_nodes,
    ready_peers,
)
from kilo.mesh.plan import TUNNEL_NAMES, PlanSettings, plan_node
from kilo.mesh.routes import Device, Route, Rule
from kilo.mesh.text import shorten
from kilo.mesh.topology import Topology, build_topology
from kilo.mesh.wgdevice import DeviceState, discovered_endpoints
from kilo.mesh.wireguard import WireGuardConfig

CHECK_IN_PERIOD = 30.0
MIN_RESYNC_PERIOD = 1.0
# Events that arrive together (a relist, a burst of check-ins) are applied together.
DEBOUNCE = 0.05
RESOLVE_TIMEOUT = 5.0
API_TIMEOUT = 10.0

log = logs.get("kilo")
iptables_log = logs.get("iptables")
# Kilo's names of watch events, in its "event" log field.
KILO_EVENTS = {EventType.ADDED: "add", EventType.MODIFIED: "update", EventType.DELETED: "delete"}


# --- the ports the loop drives --------------------------------------------------------------


class LinksPort(Protocol):
    def index(self, name: str) -> int | None: ...
    def interfaces(self) -> list[Interface]: ...
    def default_route_interface(self) -> int | None: ...
    def mtu(self, name: str) -> int: ...
    def set_mtu(self, name: str, mtu: int) -> bool: ...
    def set_up(self, name: str, up: bool) -> bool: ...
    def set_address(self, name: str, cidr: IPInterface) -> bool: ...
    def delete_addresses(self, name: str) -> None: ...
    def delete(self, name: str) -> bool: ...


class RoutesPort(Protocol):
    def set(
        self, routes: Sequence[Route], rules: Sequence[Rule], devices: Mapping[Device, str]
    ) -> tuple[int, int]: ...
    def clean_up(self) -> None: ...


class IPTablesPort(Protocol):
    def apply(self, planned: RuleSet) -> int: ...
    def clean_up(self) -> None: ...


class DevicePort(Protocol):
    def get(self) -> DeviceState: ...
    def apply(self, desired: WireGuardConfig) -> bool: ...


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


@dataclass(frozen=True, slots=True)
class _Applied:
    topology: Topology
    wireguard_ip: IPInterface | None
    discovered: dict[str, Any]
    errors: int


# --- helpers ---------------------------------------------------------------------------------


def resolve(host: str, timeout: float = RESOLVE_TIMEOUT) -> IPAddress | None:
    """An IP for ``host`` (IPv4 preferred, as Go's ResolveUDPAddr), ``None`` on any failure."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        future = pool.submit(socket.getaddrinfo, host, None, 0, socket.SOCK_DGRAM)
        infos = future.result(timeout=timeout)
    except (OSError, concurrent.futures.TimeoutError, UnicodeError):
        return None
    finally:
        pool.shutdown(wait=False)
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    for address in addresses:
        if address.version == 4:
            return address
    return addresses[0] if addresses else None


Resolver = Callable[[str], IPAddress | None]


def _resolve_endpoint(endpoint: Endpoint | None, what: str, resolver: Resolver) -> Endpoint | None:
    if endpoint is None or endpoint.resolved or not endpoint.addr:
        return endpoint
    address = resolver(endpoint.host)
    if address is None:
        log.warning(
            "failed to resolve endpoint; its WireGuard peer gets no endpoint until it resolves",
            fields={"object": what, "endpoint": endpoint.addr},
        )
        return endpoint
    return endpoint.resolved_to(address)


# --- the agent -------------------------------------------------------------------------------


class Agent:
    def __init__(
        self,
        settings: AgentSettings,
        host: HostFacts,
        plane: DataPlane,
        writer: NodeWriter,
        metrics: MetricsPort,
        *,
        clock: Callable[[], float] = time.time,
        resolver: Resolver = resolve,
    ) -> None:
        self.settings = settings
        self.host = host
        self.plane = plane
        self.writer = writer
        self.metrics = metrics
        self.clock = clock
        self.resolver = resolver
        self.hostname = settings.mesh.hostname
        self.interface = settings.wireguard.interface
        self.nodes: dict[str, Node] = {}
        self.peers: dict[str, Peer] = {}
        self.local_observed: Node | None = None
        self.local_annotations: dict[str, str] | None = None
        self.local_known = False
        self.last_written = 0
        self.wireguard_ip: IPInterface | None = None
        self.discovered: dict[str, Any] | None = None
        self.applied_local: Node | None = None
        self.peer_names: dict[str, str] = {}
        self.healthy = False
        self.applied = False  # whether this run has applied a topology yet
        self.graph_input: tuple[tuple[Node, ...], tuple[Peer, ...]] | None = None
        self._apply_needed = True
        # A full apply re-reads everything from the kernel (resync, a deleted route, an
        # earlier failure); in between, sub-systems whose plan did not change are skipped.
        self._full_needed = True
        self._applied_iptables: RuleSet | None = None
        self._applied_routes: tuple[object, ...] | None = None
        self._auto_mtu: int | None = None
        self._mtu_lines: list[tuple[int, str, dict[str, str]]] = []
        self._local_was_ready = False
        self._wake = asyncio.Event()
        self._apply_lock = threading.Lock()
        self._logged: dict[tuple[str, str], object] = {}
        self._fatal: BaseException | None = None
        period = settings.mesh.resync_period
        if period < MIN_RESYNC_PERIOD:
            log.warning(
                "resync period raised to the minimum",
                fields={"requested": f"{period:g}s", "used": f"{MIN_RESYNC_PERIOD:g}s"},
            )
            period = MIN_RESYNC_PERIOD
        self.resync_period = period

    # -- events -----------------------------------------------------------------------------

    def _report(self, kind: str, event: Event, diagnostics: Sequence[Diagnostic]) -> None:
        """Warn once per object version about what could not be used."""
        version = event.obj.get("metadata", {}).get("resourceVersion")
        key = (kind, event.name)
        if not diagnostics:
            self._logged.pop(key, None)
            return
        if self._logged.get(key) == version:
            return
        self._logged[key] = version
        for d in diagnostics:
            log.warning(
                f"{d.kind} {d.name}: {d.field} {d.problem}",
                fields={"kind": d.kind, "name": d.name, "field": d.field, "value": d.value},
            )

    def _warn_other_granularity(self, node: Node) -> None:
        """Warn once per value about a node that runs another granularity: the two compute
        different segments and WireGuard IPs, so traffic between them breaks (a Go node
        cannot run ``cross``; docs/compatibility.md). Kilo says nothing."""
        key = ("granularity", node.name)
        own = self.settings.mesh.granularity.value
        if not node.granularity or node.granularity == own:
            self._logged.pop(key, None)
            return
        if self._logged.get(key) == node.granularity:
            return
        self._logged[key] = node.granularity
        log.warning(
            "a node runs another mesh granularity; traffic between the two breaks",
            fields={"node": node.name, "granularity": node.granularity, "local": own},
        )

    def on_node_event(self, event: Event) -> None:
        new: Node | None = None
        if event.type == EventType.DELETED:
            self._report("node", event, ())
        else:
            result = translate.translate_node(
                event.obj,
                topology_label=self.settings.backend.topology_label,
                port=self.settings.mesh.port,
            )
            self._report("node", event, result.diagnostics)
            new = result.value
        if event.name == self.hostname:
            self.local_observed = new
            self.local_known = new is not None
            annotations = event.obj.get("metadata", {}).get("annotations")
            self.local_annotations = (
                dict(annotations) if isinstance(annotations, dict) and new is not None else None
            )
            if event.type == EventType.DELETED:
                log.warning(
                    "the local node was deleted from the cluster", fields={"node": event.name}
                )
            self._wake.set()
            return
        if new is not None:
            self._warn_other_granularity(new)
        old = self.nodes.get(event.name)
        if new is None:
            self.nodes.pop(event.name, None)
        else:
            self.nodes[event.name] = new
        if mesh_changed(old, new, int(self.clock())):
            # Kilo's line for a node that changes the mesh (its "node" is the whole node).
            log.info("node changed", fields={"event": KILO_EVENTS[event.type], "node": event.name})
            self._apply_needed = True
            self._wake.set()

    def on_peer_event(self, event: Event) -> None:
        new: Peer | None = None
        if event.type == EventType.DELETED:
            self._report("peer", event, ())
        else:
            result = translate.translate_peer(event.obj)
            self._report("peer", event, result.diagnostics)
            new = result.value
        old = self.peers.get(event.name)
        if new is None:
            self.peers.pop(event.name, None)
        else:
            self.peers[event.name] = new
        if peer_changed(old, new):
            log.info("peer changed", fields={"event": KILO_EVENTS[event.type], "peer": event.name})
            self._apply_needed = True
            self._wake.set()

    def trigger(self) -> None:
        """Ask for a full apply soon (e.g. someone deleted one of our routes)."""
        self._apply_needed = True
        self._full_needed = True
        self._wake.set()

    # -- the local node -----------------------------------------------------------------------

    def desired_local(self, last_seen: int) -> Node | None:
        if self.local_observed is None:
            return None
        cni_ip = None
        if self.plane.tunnel is not None:
            try:
                cni_ip = self.plane.tunnel.cni_compatibility_ip()
            except KiloError as exc:
                log.warning("failed to read the CNI compatibility IP", exc_info=exc)
        return local_node(
            self.local_observed,
            public_key=self.host.public_key,
            external_ip=self.host.external_ip,
            private_ip=self.host.discovered.private,
            port=self.settings.mesh.port,
            granularity=self.settings.mesh.granularity.value,
            # Until this run has applied once, what the node says is the best knowledge:
            # publishing "none" first would make every other node re-apply twice.
            wireguard_ip=self.wireguard_ip if self.applied else self.local_observed.wireguard_ip,
            discovered_endpoints=(
                self.discovered if self.applied else self.local_observed.discovered_endpoints
            ),
            cni_compatibility_ip=cni_ip,
            last_seen=last_seen,
        )

    async def sync_local(self, *, check_in: bool) -> None:
        """Publish the local node's annotations when they changed, or on check-in."""
        now = int(self.clock())
        desired = self.desired_local(now)
        if desired is None:
            if check_in:
                log.debug("no local node found in backend", fields={"node": self.hostname})
            return
        changes = translate.annotation_changes(self.local_annotations, desired)
        material = {k: v for k, v in changes.items() if k != translate.LAST_SEEN}
        if not material and not check_in:
            return
        try:
            async with asyncio.timeout(API_TIMEOUT):
                await self.writer.patch(self.hostname, changes)
        except (KiloError, TimeoutError) as exc:
            event = "local" if material else "checkin"
            self.metrics.error(event)
            log.error(
                "failed to update the local node's annotations",
                fields={
                    "node": self.hostname,
                    "error": f"failed to set local node: {str(exc) or type(exc).__name__}",
                },
            )
            return
        self.last_written = now
        if self.local_annotations is not None:
            self.local_annotations.update(changes)
        if material:
            observed = self.local_observed
            if (
                translate.ENDPOINT in material
                and observed is not None
                and not endpoint_ready(observed.endpoint)
            ):
                # Kilo's line when it puts the detected address in a node without one.
                log.info(
                    "overriding endpoint",
                    fields={
                        "node": self.hostname,
                        "old endpoint": str(observed.endpoint or ""),
                        "new endpoint": material[translate.ENDPOINT] or "",
                    },
                )
            log.info(
                "updated the local node's annotations",
                fields={"node": self.hostname, "annotations": sorted(material)},
            )

    # -- apply --------------------------------------------------------------------------------

    def _mtu(self, full: bool) -> int | None:
        configured = self.settings.wireguard.mtu
        if configured is not None:
            return configured
        # Finding the default route dumps the routing table: only on full applies.
        if full or self._auto_mtu is None:
            self._auto_mtu = self._detect_mtu()
        return self._auto_mtu

    def _detect_mtu(self) -> int:
        """Kilo's auto MTU: the default route's interface's MTU less WireGuard's 80 bytes,
        else 1420. Kilo's lines about it are logged when the result changes (Kilo logs
        them on every apply)."""
        links = self.plane.links
        lines: list[tuple[int, str, dict[str, str]]] = []
        mtu = DEFAULT_MTU
        try:
            index = links.default_route_interface()
            interface = next((i for i in links.interfaces() if i.index == index), None)
            if interface is None:
                raise KiloError("no interface has the default route")
            base = links.mtu(interface.name)
        except KiloError as exc:
            message = "failed to get default interface for MTU detection, using default MTU"
            lines.append((logging.WARNING, message, {"error": str(exc)}))
        else:
            mtu = base - WIREGUARD_OVERHEAD
            lines += [
                (
                    logging.INFO,
                    f"detected underlay MTU {base} on default interface {interface.name}",
                    {},
                ),
                (
                    logging.INFO,
                    f"auto-detected WireGuard MTU: {mtu} (underlay {base} - overhead "
                    f"{WIREGUARD_OVERHEAD})",
                    {},
                ),
            ]
        if lines != self._mtu_lines:
            self._mtu_lines = lines
            for level, message, fields in lines:
                log.log(level, message, fields=fields)
        return mtu

    def apply(
        self, nodes: Sequence[Node], peers: Sequence[Peer], local: Node, *, full: bool = True
    ) -> _Applied | None:
        """Kilo's apply_topology (§6.7) on a snapshot; runs in a worker thread."""
        with self._apply_lock:
            return self._apply(nodes, peers, local, full)

    def _apply(
        self, nodes: Sequence[Node], peers: Sequence[Peer], local: Node, full: bool
    ) -> _Applied | None:
        self.metrics.reconciled()
        now = int(self.clock())
        ready = [
            replace(n, endpoint=_resolve_endpoint(n.endpoint, f"node {n.name}", self.resolver))
            for n in ready_nodes([*nodes, local], now)
        ]
        ready_peer_list = [
            replace(p, endpoint=_resolve_endpoint(p.endpoint, f"peer {p.name}", self.resolver))
            for p in ready_peers(peers)
        ]
        self.metrics.set_counts(len(ready), len(ready_peer_list))
        if not any(n.name == self.hostname for n in ready):
            log.debug("the local node is not ready yet", fields={"node": self.hostname})
            return None
        plane = self.plane
        errors = 0

        def failed(step: str, exc: BaseException, kilo: str = "") -> None:
            nonlocal errors
            errors += 1
            self.metrics.error("apply")
            error = f"{kilo}: {exc}" if kilo else str(exc)
            log.error(f"failed to apply {step}", fields={"error": error})

        mtu = self._mtu(full)
        if mtu is not None:
            try:
                plane.links.set_mtu(self.interface, mtu)
            except KiloError as exc:
                failed("the MTU", exc, "failed to set MTU on WireGuard interface")
        try:
            state: DeviceState | None = plane.device.get()
        except KiloError as exc:
            failed("WireGuard (reading the device)", exc)
            state = None
        discovered = (
            discovered_endpoints(state, ready, ready_peer_list) if state is not None else {}
        )
        mesh = self.settings.mesh
        internal = (
            samenat.internal_endpoints(ready, self.hostname)
            if mesh.same_nat_internal_endpoints
            else {}
        )
        # Not published: the other nodes keep Kilo's view of the nodes behind this NAT.
        discovered = {k: v for k, v in discovered.items() if k not in internal}
        ready = [
            replace(n, discovered_endpoints=discovered) if n.name == self.hostname else n
            for n in ready
        ]
        local_ready = next(n for n in ready if n.name == self.hostname)
        try:
            t = build_topology(
                ready,
                ready_peer_list,
                granularity=mesh.granularity,
                hostname=self.hostname,
                subnet=mesh.subnet,
                port=local_ready.endpoint.port if local_ready.endpoint else mesh.port,
                key=self.host.key,
                service_cidrs=mesh.service_cidrs,
                persistent_keepalive=local_ready.persistent_keepalive,
            )
        except KiloError as exc:
            failed("the topology", exc)
            return None
        tunnel_name = plane.tunnel.name if plane.tunnel is not None else None
        plan = plan_node(
            t,
            local_ready,
            PlanSettings(
                interface=self.interface,
                private_interface=self.host.private_interface or "",
                encapsulation=mesh.encapsulation,
                compatibility=mesh.compatibility,
                local=mesh.local,
                cni=self.settings.cni.enabled,
                iptables_forward_rules=mesh.iptables_forward_rules,
                cni_path=self.settings.cni.path,
            ),
        )
        if internal and plan.wireguard is not None:
            plan = replace(plan, wireguard=samenat.dial_internal(plan.wireguard, internal))
        if full or plan.iptables != self._applied_iptables:
            self._applied_iptables = None
            try:
                if plane.iptables.apply(plan.iptables):
                    count = len(plan.iptables.append) + len(plan.iptables.prepend)
                    iptables_log.info(f"applying {count} iptables rules")
                self._applied_iptables = plan.iptables
            except KiloError as exc:
                failed("iptables rules", exc)
        if plan.tunnel_address is not None and plane.tunnel is not None:
            try:
                plane.tunnel.set(plan.tunnel_address)
            except KiloError as exc:
                failed("the tunnel address", exc)
        self.metrics.set_node(self.hostname, local_ready.location)
        self.metrics.set_leader(plan.leader)
        try:
            if plan.leader and plan.address is not None and plan.wireguard is not None:
                plane.links.set_address(self.interface, plan.address)
                if plane.device.apply(plan.wireguard):
                    log.info(
                        "WireGuard configurations are different",
                        fields={"peers": [p.name for p in plan.wireguard.peers]},
                    )
                plane.links.set_up(self.interface, True)
            else:
                # A non-leader carries no traffic on WireGuard: no peers, no address, down
                # (Kilo leaves a demoted leader's peers and address behind).
                plane.device.apply(
                    WireGuardConfig(private_key=self.host.key, listen_port=t.port, peers=())
                )
                plane.links.delete_addresses(self.interface)
                plane.links.set_up(self.interface, False)
        except KiloError as exc:
            failed("the WireGuard interface", exc)
        devices = {Device.KILO: self.interface}
        if self.host.private_interface:
            devices[Device.PRIVATE] = self.host.private_interface
        if tunnel_name:
            devices[Device.TUNNEL] = tunnel_name
        wanted = (plan.routes, plan.rules, tuple(sorted(devices.items())))
        if full or wanted != self._applied_routes:
            self._applied_routes = None
            try:
                added, removed = plane.routes.set(plan.routes, plan.rules, devices)
                self._applied_routes = wanted
                if added or removed:
                    log.info(
                        "routes and rules updated", fields={"added": added, "removed": removed}
                    )
            except KiloError as exc:
                failed("routes and rules", exc)
        if self.settings.cni.enabled and local_ready.subnet is not None:
            try:
                if plane.update_cni(local_ready.subnet):
                    log.info(
                        "setting CIDR in CNI file",
                        fields={"CIDR": str(local_ready.subnet), "path": self.settings.cni.path},
                    )
            except KiloError as exc:
                log.warning(
                    "failed to set CIDR in CNI file", fields={"err": str(exc), "error": str(exc)}
                )
        self.peer_names = {
            str(p.public_key): p.name for p in (plan.wireguard.peers if plan.wireguard else ())
        }
        self.graph_input = (tuple(ready), tuple(ready_peer_list))
        return _Applied(
            topology=t,
            wireguard_ip=t.wireguard_cidr if t.leader else None,
            discovered=dict(discovered),
            errors=errors,
        )

    # -- the loop -----------------------------------------------------------------------------

    async def _round(self, *, check_in: bool, resync: bool) -> None:
        await self.sync_local(check_in=check_in)
        local = self.desired_local(self.last_written)
        if local is None:
            return
        now = int(self.clock())
        local_changed = (
            self.applied_local is None
            or replace(self.applied_local, last_seen=0) != replace(local, last_seen=0)
            or local.is_ready(now) != self._local_was_ready
        )
        if not (resync or self._apply_needed or local_changed):
            return
        full = resync or self._full_needed
        self._apply_needed = False
        self._full_needed = False
        nodes = [n for name, n in self.nodes.items() if name != self.hostname]
        peers = list(self.peers.values())
        applied = await asyncio.to_thread(self.apply, nodes, peers, local, full=full)
        self.applied_local = local
        self._local_was_ready = local.is_ready(now)
        if applied is None:
            return
        if applied.errors:
            self._full_needed = True
        if applied.errors == 0 and not self.healthy:
            self.healthy = True
            log.info("the mesh is applied; the agent is healthy", fields={"node": self.hostname})
        self.wireguard_ip = applied.wireguard_ip
        self.discovered = applied.discovered
        self.applied = True
        # Publish the apply's results (WireGuard IP, NAT endpoints) if they changed.
        await self.sync_local(check_in=False)
        self.applied_local = self.desired_local(self.last_written)
        if self.applied_local is not None:
            self._local_was_ready = self.applied_local.is_ready(int(self.clock()))

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        next_resync = loop.time() + self.resync_period
        next_check_in = loop.time()
        while True:
            timeout = max(0.0, min(next_resync, next_check_in) - loop.time())
            # asyncio.timeout, not wait_for, which can swallow a cancellation on 3.11.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            await asyncio.sleep(DEBOUNCE)
            self._wake.clear()
            check_in = loop.time() >= next_check_in
            resync = loop.time() >= next_resync
            if check_in:
                next_check_in = loop.time() + CHECK_IN_PERIOD
            if resync:
                next_resync = loop.time() + self.resync_period
            try:
                await self._round(check_in=check_in, resync=resync)
            except Exception as exc:  # a bug or an unexpected OS error: log, count, go on
                self.metrics.error("apply")
                self._full_needed = True
                log.error(
                    "reconcile failed unexpectedly; retrying at the next event or resync",
                    exc_info=exc,
                    fields={"error": f"{type(exc).__name__}: {exc}"},
                )

    async def _consume(
        self, informer: Informer, handle: Callable[[Event], None], kind: str
    ) -> None:
        async for event in informer.events():
            try:
                handle(event)
            except Exception as exc:  # a bug: one object must never stop every agent
                self.metrics.error("run")
                log.error(
                    "could not handle a watch event; the object keeps its last known state",
                    exc_info=exc,
                    fields={
                        "kind": kind,
                        "name": shorten(event.name, 253),
                        "error": shorten(f"{type(exc).__name__}: {exc}", 200),
                    },
                )

    async def run(self, nodes: Informer, peers: Informer, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; a fatal backend error propagates."""
        tasks = [
            asyncio.create_task(self._consume(nodes, self.on_node_event, "node"), name="nodes"),
            asyncio.create_task(self._consume(peers, self.on_peer_event, "peer"), name="peers"),
            asyncio.create_task(self._worker(), name="reconcile"),
        ]
        stopper = asyncio.create_task(stop.wait(), name="stop")
        try:
            done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                failure = None if task is stopper else task.exception()
                if failure is not None:
                    raise failure
        finally:
            for task in [*tasks, stopper]:
                task.cancel()
            await asyncio.gather(*tasks, stopper, return_exceptions=True)

    # -- HTTP views ---------------------------------------------------------------------------

    def graph(self) -> str:
        """The mesh as DOT from this agent's perspective (``/graph``)."""
        snapshot = self.graph_input
        if snapshot is None:
            raise KiloError(f"the local node {self.hostname} is not ready yet; no graph to show")
        nodes, peers = snapshot
        local = next((n for n in nodes if n.name == self.hostname), None)
        t = build_topology(
            nodes,
            peers,
            granularity=self.settings.mesh.granularity,
            hostname=self.hostname,
            subnet=self.settings.mesh.subnet,
            port=0,
            key=ZERO_KEY,
            service_cidrs=self.settings.mesh.service_cidrs,
            persistent_keepalive=local.persistent_keepalive if local else 0,
        )
        return graph.dot(t)

    # -- clean-up -----------------------------------------------------------------------------

    async def clean_up(self) -> None:
        """Remove what the agent added (§6.8), each step independent of the others."""
        await asyncio.to_thread(self._clean_up_data_plane)
        try:
            async with asyncio.timeout(API_TIMEOUT):
                await self.writer.patch(self.hostname, dict.fromkeys(translate.AGENT_ANNOTATIONS))
        except (KiloError, TimeoutError) as exc:
            self.metrics.error("cleanUp")
            log.error(
                "failed to remove the local node's annotations",
                fields={
                    "node": self.hostname,
                    "error": f"failed to clean up node backend: {str(exc) or type(exc).__name__}",
                },
            )

    def _clean_up_data_plane(self) -> None:
        with self._apply_lock:
            plane = self.plane
            steps: list[tuple[str, Callable[[], object]]] = [
                ("iptables rules", plane.iptables.clean_up),
                ("routes and rules", plane.routes.clean_up),
            ]
            if self.settings.wireguard.clean_up_interface:
                steps.append(
                    ("the WireGuard interface", lambda: plane.links.delete(self.interface))
                )
            else:
                steps.append(
                    (
                        "the WireGuard configuration",
                        lambda: plane.device.apply(WireGuardConfig(private_key=None, peers=())),
                    )
                )
                steps.append(
                    ("the WireGuard address", lambda: plane.links.delete_addresses(self.interface))
                )
                steps.append(
                    ("the WireGuard link state", lambda: plane.links.set_up(self.interface, False))
                )
            if plane.tunnel is not None:
                steps.append(("the tunnel", plane.tunnel.clean_up))
            for what, step in steps:
                try:
                    step()
                except KiloError as exc:
                    self.metrics.error("cleanUp")
                    kilo = _KILO_CLEAN_UP_ERRORS.get(what)
                    error = f"{kilo}: {exc}" if kilo else str(exc)
                    log.error(f"failed to clean up {what}", fields={"error": error})


# Kilo's error texts for the clean-up steps it has, so that queries on them keep matching.
_KILO_CLEAN_UP_ERRORS = {
    "iptables rules": "failed to clean up IP tables",
    "routes and rules": "failed to clean up routes",
    "the WireGuard interface": "failed to remove WireGuard interface",
    "the tunnel": "failed to clean up encapsulator",
}


def tunnel_device_name(settings: AgentSettings) -> str:
    return TUNNEL_NAMES[settings.mesh.compatibility]
