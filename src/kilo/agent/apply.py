"""Applying a topology to the node's data plane: Kilo's ``applyTopology`` and ``cleanUp``.

Composition only: the plan comes from the core (``kilo.mesh.plan``), and each sub-system
(MTU, iptables, tunnel address, WireGuard, routes and rules, CNI) is brought to it through
its port. A failing step is counted and logged, and the others still run; between full
applies (a resync, an earlier failure, a deleted route), a sub-system whose plan did not
change is skipped, the WireGuard interface's MTU, address and link state are set only
when they differ from what the last successful write set, and routes are diffed against
the route table's own last write instead of a listing of the kernel, and the leader's
WireGuard device against the state its own last write left (``wgdevice.state_after``): the
device is read (at most once) on full applies, after a failed read or write, and on a
non-leader. Runs in a worker thread, one apply or clean-up at a time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from kilo.adapters import dns
from kilo.agent import logs
from kilo.agent.ports import DataPlane, HostFacts, MetricsPort
from kilo.agent.settings import AgentSettings
from kilo.errors import KiloError
from kilo.mesh import samenat
from kilo.mesh.endpoint import Endpoint
from kilo.mesh.ip import IPInterface
from kilo.mesh.iptables import RuleSet
from kilo.mesh.model import (
    DEFAULT_MTU,
    WIREGUARD_OVERHEAD,
    Node,
    Peer,
    ready_nodes,
    ready_peers,
)
from kilo.mesh.plan import PlanSettings, plan_node
from kilo.mesh.routes import Device
from kilo.mesh.topology import Topology, build_topology
from kilo.mesh.wgdevice import DeviceChange, DeviceState, discovered_endpoints, state_after
from kilo.mesh.wireguard import WireGuardConfig

# The segments' leaders (segment key -> node) from the ready nodes, or Kilo's rule (None).
Leaders = Callable[[Sequence[Node]], Mapping[str, str]]

log = logs.get("kilo")
iptables_log = logs.get("iptables")


@dataclass(frozen=True, slots=True)
class Applied:
    """What an apply learnt, for the local node's annotations."""

    topology: Topology
    wireguard_ip: IPInterface | None
    discovered: dict[str, Any]
    errors: int


def _resolve_endpoint(
    endpoint: Endpoint | None, what: str, resolver: dns.Resolver
) -> Endpoint | None:
    resolved, ok = dns.resolve_endpoint(endpoint, resolver)
    if not ok and endpoint is not None:
        log.warning(
            "failed to resolve endpoint; its WireGuard peer gets no endpoint until it resolves",
            fields={"object": what, "endpoint": endpoint.addr},
        )
    return resolved


# A Node or a Peer: both carry an endpoint that may be a DNS name.
_Endpointed = TypeVar("_Endpointed", Node, Peer)


def _with_resolved_endpoint(obj: _Endpointed, kind: str, resolver: dns.Resolver) -> _Endpointed:
    """``obj`` itself when resolving changes nothing (an IP endpoint, the common case): the
    topology reuses what it built from the very same Node objects (topology._SegmentMemo),
    so a copy per apply would make every apply a rebuild of the whole mesh. Runs for every
    node on every apply: the common case costs no comparison and no text."""
    endpoint = obj.endpoint
    if endpoint is None or endpoint.resolved or not endpoint.addr:
        return obj  # nothing to resolve (dns.resolve_endpoint would hand it back)
    resolved = _resolve_endpoint(endpoint, f"{kind} {obj.name}", resolver)
    return obj if resolved == endpoint else replace(obj, endpoint=resolved)


class TopologyApplier:
    """The node's data plane, brought to the topology of a snapshot of the cluster."""

    def __init__(
        self,
        settings: AgentSettings,
        host: HostFacts,
        plane: DataPlane,
        metrics: MetricsPort,
        *,
        clock: Callable[[], float],
        resolver: dns.Resolver,
    ) -> None:
        self.settings = settings
        self.host = host
        self.plane = plane
        self.metrics = metrics
        self.clock = clock
        self.resolver = resolver
        self.hostname = settings.mesh.hostname
        self.interface = settings.wireguard.interface
        # For the metrics' peer names and /graph: what the last apply planned.
        self.peer_names: dict[str, str] = {}
        self.graph_input: tuple[tuple[Node, ...], tuple[Peer, ...]] | None = None
        self.leaders: Mapping[str, str] | None = None  # the last apply's leader overrides
        self._lock = threading.Lock()
        self._applied_iptables: RuleSet | None = None
        self._applied_routes: tuple[object, ...] | None = None
        # What the last successful writes set on the WireGuard interface ("mtu", "address",
        # "up"); forgotten on failure and re-asserted by every full apply.
        self._applied_link: dict[str, object] = {}
        self._auto_mtu: int | None = None
        # The WireGuard device after the last successful write (wgdevice.state_after), for
        # the leader's incremental applies; None: the next apply reads the device.
        self._known_device: DeviceState | None = None
        self._mtu_lines: list[tuple[int, str, dict[str, str]]] = []

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
        self,
        nodes: Sequence[Node],
        peers: Sequence[Peer],
        local: Node,
        *,
        full: bool = True,
        leaders: Leaders | None = None,
    ) -> Applied | None:
        """Kilo's apply_topology (§6.7) on a snapshot; runs in a worker thread. ``leaders``
        gives the segments' leaders from the ready nodes (``--leader-election=lease``)."""
        with self._lock:
            return self._apply(nodes, peers, local, full, leaders)

    def _apply(
        self,
        nodes: Sequence[Node],
        peers: Sequence[Peer],
        local: Node,
        full: bool,
        leaders: Leaders | None,
    ) -> Applied | None:
        self.metrics.reconciled()
        now = int(self.clock())
        resolver = self.resolver
        ready = [
            _with_resolved_endpoint(n, "node", resolver) for n in ready_nodes([*nodes, local], now)
        ]
        ready_peer_list = [_with_resolved_endpoint(p, "peer", resolver) for p in ready_peers(peers)]
        self.metrics.set_counts(len(ready), len(ready_peer_list))
        hostname = self.hostname
        # The local node is the last one handed over: look for it from the end.
        local_index = next(
            (i for i in range(len(ready) - 1, -1, -1) if ready[i].name == hostname), None
        )
        if local_index is None:
            log.debug("the local node is not ready yet", fields={"node": self.hostname})
            return None
        plane = self.plane
        errors = 0
        applied_link = self._applied_link
        if full:
            applied_link.clear()

        def link_step(what: str, value: object, write: Callable[[], object]) -> None:
            """``write`` unless the last successful write already set ``value``."""
            if applied_link.get(what, _UNSET) == value:
                return
            applied_link.pop(what, None)
            write()
            applied_link[what] = value

        def failed(step: str, exc: BaseException, kilo: str = "") -> None:
            nonlocal errors
            errors += 1
            self.metrics.error("apply")
            error = f"{kilo}: {exc}" if kilo else str(exc)
            log.error(f"failed to apply {step}", fields={"error": error})

        mtu = self._mtu(full)
        if mtu is not None:
            try:
                link_step("mtu", mtu, lambda: plane.links.set_mtu(self.interface, mtu))
            except KiloError as exc:
                failed("the MTU", exc, "failed to set MTU on WireGuard interface")
        # The WireGuard device as kg's own last write left it, between full applies: reading
        # it (a UAPI dump of every peer) was a quarter of an incremental apply at 5000 nodes
        # (issue 17). A full apply reads it: a change made by hand is undone there, and
        # the NAT endpoints learnt from handshakes since are published there.
        state: DeviceState | None = None if full else self._known_device
        self._known_device = None  # until this apply's write succeeds
        if state is None:
            try:
                state = plane.device.get()
            except KiloError as exc:
                failed("WireGuard (reading the device)", exc)
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
        local_ready = replace(ready[local_index], discovered_endpoints=discovered)
        ready = [*ready]
        ready[local_index] = local_ready
        self.leaders = leaders(ready) if leaders is not None else None
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
                leaders=self.leaders,
            )
        except KiloError as exc:
            failed("the topology", exc)
            return None
        # Dialled at their internal IPs: the WireGuard peers and the routes alike.
        t = samenat.dial_internal(t, internal)
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
        if full or plan.iptables != self._applied_iptables:
            self._applied_iptables = None
            try:
                # Between full applies against the tables as its own last write left them.
                if plane.iptables.apply(plan.iptables, full=full):
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
        # The planned peers' names by public key, for the metrics, /graph and the log.
        peer_names = {
            str(p.public_key): p.name for p in (plan.wireguard.peers if plan.wireguard else ())
        }
        try:
            if plan.leader and plan.address is not None and plan.wireguard is not None:
                address = plan.address
                link_step(
                    "address", address, lambda: plane.links.set_address(self.interface, address)
                )
                change = plane.device.apply(plan.wireguard, current=state)
                if change is not None:
                    log.info(
                        "WireGuard configurations are different",
                        fields={"peers": _changed_peers(change, peer_names, self.peer_names)},
                    )
                if state is not None:  # else apply read a state this apply has not seen
                    self._known_device = state if change is None else state_after(state, change)
                link_step("up", True, lambda: plane.links.set_up(self.interface, True))
            else:
                # A non-leader carries no traffic on WireGuard: no peers, no address, down
                # (Kilo leaves a demoted leader's peers and address behind). Its device is
                # read on every apply (_known_device stays None): it holds no peers.
                plane.device.apply(
                    WireGuardConfig(private_key=self.host.key, listen_port=t.port, peers=()),
                    current=state,
                )
                link_step("address", None, lambda: plane.links.delete_addresses(self.interface))
                link_step("up", False, lambda: plane.links.set_up(self.interface, False))
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
                added, removed = plane.routes.set(plan.routes, plan.rules, devices, full=full)
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
        self.peer_names = peer_names
        self.graph_input = (tuple(ready), tuple(ready_peer_list))
        return Applied(
            topology=t,
            wireguard_ip=t.wireguard_cidr if t.leader else None,
            discovered=dict(discovered),
            errors=errors,
        )

    def clean_up(self) -> None:
        """Remove what the agent added to the data plane (§6.8), each step independent."""
        with self._lock:
            self._applied_link.clear()  # the next apply, if any, re-asserts the interface
            self._known_device = None  # and reads the WireGuard device
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


_UNSET = object()  # no successful write remembered


def _changed_peers(
    change: DeviceChange, names: Mapping[str, str], before: Mapping[str, str]
) -> list[str]:
    """The names of the peers ``change`` adds, changes or removes, in its order: a removed
    one by the name the previous apply gave it (``before``), one kg did not name (put on
    the device by hand) by its public key. Kilo's line has its text of the whole diff; all
    the peers' names were 500 names on each change at 5000 nodes (issue 17)."""
    return [
        (before if pc.remove else names).get(key := str(pc.public_key)) or key
        for pc in change.peers
    ]


# Kilo's error texts for the clean-up steps it has, so that queries on them keep matching.
_KILO_CLEAN_UP_ERRORS = {
    "iptables rules": "failed to clean up IP tables",
    "routes and rules": "failed to clean up routes",
    "the WireGuard interface": "failed to remove WireGuard interface",
    "the tunnel": "failed to clean up encapsulator",
}
