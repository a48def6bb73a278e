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

Just over 500 lines on purpose: the event handlers, the worker's rounds and the local
node's check-in share one set of flags (what is needed, full or light) that decides each
round; the apply itself (``apply.py``) and leadership (``leadership.py``) live apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from kilo.adapters import dns
from kilo.agent import logs
from kilo.agent.apply import TopologyApplier
from kilo.agent.leadership import Election
from kilo.agent.ports import DataPlane, HostFacts, MetricsPort, NodeWriter
from kilo.agent.settings import AgentSettings
from kilo.errors import KiloError
from kilo.mesh import graph, leadership, translate
from kilo.mesh.endpoint import endpoint_ready
from kilo.mesh.events import (
    DEBOUNCE,
    KILO_EVENTS,
    MIN_RESYNC_PERIOD,
    Change,
    ClusterView,
    Event,
    EventType,
    resync_period,
    warning_line,
)
from kilo.mesh.ip import IPInterface
from kilo.mesh.keys import ZERO_KEY
from kilo.mesh.localnode import local_node, mesh_changed, peer_changed
from kilo.mesh.model import CHECK_IN_PERIOD, Diagnostic, Node, Peer
from kilo.mesh.text import shorten
from kilo.mesh.topology import LOCATION_PREFIX, build_topology

API_TIMEOUT = 10.0

log = logs.get("kilo")


class EventSource(Protocol):
    """A watch of one resource (the Kubernetes adapter's ``Informer``): ``listed`` returns
    once the events of the whole first list have been yielded."""

    def events(self) -> AsyncIterator[Event]: ...

    async def listed(self) -> None: ...


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
        resolver: dns.Resolver = dns.resolve,
        election: Election | None = None,
    ) -> None:
        self.settings = settings
        self.writer = writer
        self.metrics = metrics
        self.clock = clock
        self.hostname = settings.mesh.hostname
        self.applier = TopologyApplier(
            settings, host, plane, metrics, clock=clock, resolver=resolver
        )
        self.view = ClusterView(
            topology_label=settings.backend.topology_label, port=settings.mesh.port
        )
        self.local_observed: Node | None = None
        self.local_annotations: dict[str, str] | None = None
        self.last_written = 0
        self.wireguard_ip: IPInterface | None = None
        self.discovered: dict[str, Any] | None = None
        self.applied_local: Node | None = None
        self.healthy = False
        self.applied = False  # whether this run has applied a topology yet
        self._apply_needed = True
        # A full apply re-reads everything from the kernel (resync, a deleted route, an
        # earlier failure); in between, sub-systems whose plan did not change are skipped.
        self._full_needed = True
        self._local_was_ready = False
        # node -> the other granularity it was warned about (once per node and value)
        self._other_granularity: dict[str, str] = {}
        self._wake = asyncio.Event()
        self.election: Election | None = None
        if election is not None:
            self.use_election(election)
        requested = settings.mesh.resync_period
        self.resync_period = resync_period(requested)
        if self.resync_period != requested:
            log.warning(
                "resync period raised to the minimum",
                fields={"requested": f"{requested:g}s", "used": f"{MIN_RESYNC_PERIOD:g}s"},
            )

    def use_election(self, election: Election) -> None:
        """``--leader-election=lease``: the Leases decide the leaders (it reads our nodes)."""
        self.election = election
        election.nodes = self.view.nodes
        election.on_leaders_changed = self._leaders_changed

    @property
    def host(self) -> HostFacts:
        return self.applier.host

    @property
    def plane(self) -> DataPlane:
        """The ports the applier drives (a test may swap them between rounds)."""
        return self.applier.plane

    @plane.setter
    def plane(self, plane: DataPlane) -> None:
        self.applier.plane = plane

    @property
    def peer_names(self) -> dict[str, str]:
        """The names of the WireGuard peers by public key, for the metrics."""
        return self.applier.peer_names

    @property
    def graph_input(self) -> tuple[tuple[Node, ...], tuple[Peer, ...]] | None:
        return self.applier.graph_input

    # -- events -----------------------------------------------------------------------------

    @staticmethod
    def _report(diagnostics: tuple[Diagnostic, ...]) -> None:
        for d in diagnostics:
            message, fields = warning_line(d)
            log.warning(message, fields=fields)

    def on_node_event(self, event: Event) -> None:
        change = self.view.node_event(event)
        self._report(change.report)
        if self.election is not None:
            self.election.on_node_event(event)
        if event.name == self.hostname:
            self.local_observed = change.new
            annotations = event.obj.get("metadata", {}).get("annotations")
            self.local_annotations = (
                dict(annotations)
                if isinstance(annotations, dict) and change.new is not None
                else None
            )
            if event.type == EventType.DELETED:
                log.warning(
                    "the local node was deleted from the cluster", fields={"node": event.name}
                )
            self._wake.set()
            return
        if change.new is not None:
            self._warn_other_granularity(change.new)
        if self._changes_mesh(change):
            # Kilo's line for a node that changes the mesh (its "node" is the whole node).
            log.info("node changed", fields={"event": KILO_EVENTS[event.type], "node": event.name})
            self._apply_needed = True
            self._wake.set()

    def _changes_mesh(self, change: Change[Node]) -> bool:
        now = int(self.clock())
        if change.checked_in and change.old is not None and change.new is not None:
            # A check-in (167 a second at 5000 nodes) changes nothing but last-seen, so
            # only the node's readiness can change: mesh_changed's first test.
            return change.old.is_ready(now) != change.new.is_ready(now)
        return mesh_changed(change.old, change.new, now)

    def _warn_other_granularity(self, node: Node) -> None:
        """Warn once per value about a node that runs another granularity: the two compute
        different segments and WireGuard IPs, so traffic between them breaks (a Go node
        cannot run ``cross``; docs/compatibility.md). Kilo says nothing."""
        own = self.settings.mesh.granularity.value
        if not node.granularity or node.granularity == own:
            self._other_granularity.pop(node.name, None)
            return
        if self._other_granularity.get(node.name) == node.granularity:
            return
        self._other_granularity[node.name] = node.granularity
        log.warning(
            "a node runs another mesh granularity; traffic between the two breaks",
            fields={"node": node.name, "granularity": node.granularity, "local": own},
        )

    def on_peer_event(self, event: Event) -> None:
        change = self.view.peer_event(event)
        self._report(change.report)
        if peer_changed(change.old, change.new):
            log.info("peer changed", fields={"event": KILO_EVENTS[event.type], "peer": event.name})
            self._apply_needed = True
            self._wake.set()

    def _leaders_changed(self) -> None:
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
        changes: dict[str, str | None] = dict(
            translate.annotation_changes(self.local_annotations, desired)
        )
        # Tells every node that this one derives leaders from the Leases (or no longer does).
        taking_part = leadership.MODE if self.election is not None else None
        if (self.local_annotations or {}).get(leadership.ANNOTATION) != taking_part:
            changes[leadership.ANNOTATION] = taking_part
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
            for key, value in changes.items():
                if value is None:
                    self.local_annotations.pop(key, None)
                else:
                    self.local_annotations[key] = value
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

    # -- the loop -----------------------------------------------------------------------------

    async def _round(self, *, check_in: bool, resync: bool) -> None:
        await self.sync_local(check_in=check_in)
        local = self.desired_local(self.last_written)
        if local is None:
            return
        now = int(self.clock())
        local_changed = (
            self.applied_local is None
            or self.applied_local.with_last_seen(0) != local.with_last_seen(0)
            or local.is_ready(now) != self._local_was_ready
        )
        if not (resync or self._apply_needed or local_changed):
            return
        full = resync or self._full_needed
        self._apply_needed = False
        self._full_needed = False
        nodes = [n for name, n in self.view.nodes.items() if name != self.hostname]
        peers = list(self.view.peers.values())
        leaders = self.election.leaders() if self.election is not None else None
        applied = await asyncio.to_thread(
            self.applier.apply, nodes, peers, local, full=full, leaders=leaders
        )
        self.applied_local = local
        self._local_was_ready = local.is_ready(now)
        if applied is None:
            return
        if applied.errors:
            self._full_needed = True
        if self.election is not None:
            t = applied.topology
            own = t.location.startswith(LOCATION_PREFIX)
            self.election.set_topology(
                local.location if own else None,
                [(s.wireguard_ip, s.leader_name) for s in t.segments if s.location != t.location]
                if t.leader
                else (),
            )
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
        # When the last round ended; the first round waits like one that follows another.
        last_round = loop.time()
        while True:
            timeout = max(0.0, min(next_resync, next_check_in) - loop.time())
            # asyncio.timeout, not wait_for, which can swallow a cancellation on 3.11.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            # Events that arrive together (a burst of changes) are applied together: a round
            # that would start within DEBOUNCE of the previous one waits DEBOUNCE for the rest
            # of the burst (events that arrive during an apply wait for the next round
            # anyway). After a quiet spell a change is applied at once: waiting there only
            # added DEBOUNCE to every change's way to the data plane. A relist's events are
            # handed over in one go, so the sleep(0) that lets ready tasks run suffices.
            if loop.time() - last_round < DEBOUNCE:
                await asyncio.sleep(DEBOUNCE)
            else:
                await asyncio.sleep(0)
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
            last_round = loop.time()

    async def _work_once_listed(self, nodes: EventSource, peers: EventSource) -> None:
        # As Kilo's agent waits for its caches to sync: the first list's events come page
        # by page, and a round on a part of them would apply a part of the mesh (and take
        # the peers of the Nodes not listed yet off the device, on a restart).
        await asyncio.gather(nodes.listed(), peers.listed())
        await self._worker()

    async def _consume(
        self, informer: EventSource, handle: Callable[[Event], None], kind: str
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

    async def run(
        self,
        nodes: EventSource,
        peers: EventSource,
        stop: asyncio.Event,
        leases: EventSource | None = None,
    ) -> None:
        """Run until ``stop`` is set; a fatal backend error propagates."""
        tasks = [
            asyncio.create_task(self._consume(nodes, self.on_node_event, "node"), name="nodes"),
            asyncio.create_task(self._consume(peers, self.on_peer_event, "peer"), name="peers"),
            asyncio.create_task(self._work_once_listed(nodes, peers), name="reconcile"),
        ]
        if self.election is not None and leases is not None:
            election = self.election

            async def elect() -> None:
                # Only on the whole list of Leases: on a part, it could take a held one.
                await leases.listed()
                election.on_listed()
                await election.run()

            tasks += [
                asyncio.create_task(
                    self._consume(leases, election.on_lease_event, "lease"), name="leases"
                ),
                asyncio.create_task(elect(), name="election"),
                asyncio.create_task(election.probe(), name="probe"),
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
            leaders=self.applier.leaders,
        )
        return graph.dot(t)

    # -- clean-up -----------------------------------------------------------------------------

    async def clean_up(self) -> None:
        """Remove what the agent added (§6.8), each step independent of the others."""
        await asyncio.to_thread(self.applier.clean_up)
        try:
            async with asyncio.timeout(API_TIMEOUT):
                keys = [*translate.AGENT_ANNOTATIONS]
                if self.election is not None:
                    keys.append(leadership.ANNOTATION)
                await self.writer.patch(self.hostname, dict.fromkeys(keys))
        except (KiloError, TimeoutError) as exc:
            self.metrics.error("cleanUp")
            log.error(
                "failed to remove the local node's annotations",
                fields={
                    "node": self.hostname,
                    "error": f"failed to clean up node backend: {str(exc) or type(exc).__name__}",
                },
            )
