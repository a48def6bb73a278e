"""``kgctl connect``'s connection: start-up, the watch-driven sync, and clean-up.

Composition: the decisions are the core's (``kilo.mesh.connect``: the Peer to create or
refuse, the WireGuard config and routes); the watch events are turned into Nodes and Peers
by the same :class:`~kilo.mesh.events.ClusterView` as the agent's; the adapters are reached
through the ports of ``ports.py``, so unit tests drive a connection with stand-ins.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from kilo.adapters import dns
from kilo.adapters.dns import resolve
from kilo.cli import logs
from kilo.cli.connect.flags import DEFAULT_KEY_DIRECTORY
from kilo.cli.connect.ports import DevicePort, LinksPort, PeerStorePort, RoutesPort
from kilo.cli.connect.wireguard_go import SOCKET_DIR, WireGuardGo
from kilo.errors import ConfigError, DataPlaneError, KiloError
from kilo.mesh import connect as plan_mod
from kilo.mesh import ip
from kilo.mesh.endpoint import Endpoint
from kilo.mesh.events import (
    DEBOUNCE,
    MIN_RESYNC_PERIOD,
    ClusterView,
    Event,
    resync_period,
    warning_line,
)
from kilo.mesh.ip import IPInterface
from kilo.mesh.keys import Key
from kilo.mesh.localnode import mesh_changed, peer_changed
from kilo.mesh.model import Diagnostic, Node, Peer, ready_nodes, ready_peers
from kilo.mesh.routes import Device
from kilo.mesh.text import shorten
from kilo.mesh.wireguard import WireGuardConfig

if TYPE_CHECKING:
    # Imported at run time only when needed: --help and flag errors never pay for them.
    from lightkube.config.kubeconfig import SingleConfig

    from kilo.adapters.kubernetes import Informer


class Connection:
    def __init__(self, args: argparse.Namespace, name: str, log: logs.Logger, err: TextIO) -> None:
        self.args = args
        self.name = name
        self.log = log
        self.err = err
        self.interface: str = args.interface
        self.allowed_ip: IPInterface = args.allowed_ip
        self.subnet = None if args.subnet is None else ip.parse_network(args.subnet)
        requested = float(args.resync_period)
        self.resync_period = resync_period(requested)
        if self.resync_period != requested:
            log.warning(
                "resync period raised to the minimum",
                fields={"requested": f"{requested:g}s", "used": f"{MIN_RESYNC_PERIOD:g}s"},
            )
        if args.private_key:
            self.key_path = Path(args.private_key)
        else:
            self.key_path = DEFAULT_KEY_DIRECTORY / f"{name}.key"
        self.state_path = self.key_path.with_name(self.key_path.stem + ".routes.json")
        self.private_key: Key | None = None
        # What this run created or changed, so that clean-up removes exactly that.
        self.store: PeerStorePort | None = None
        self.config: SingleConfig | None = None
        self.peer_created = False
        self.interface_created = False
        self.interface_touched = False
        self.child: WireGuardGo | None = None
        self.links: LinksPort | None = None
        self.routes: RoutesPort | None = None
        self.device: DevicePort | None = None
        self.view = ClusterView(topology_label=args.topology_label, port=args.port)
        self._warned: set[str] = set()
        self._wake: asyncio.Event | None = None
        self._lock = threading.Lock()

    # -- start-up ----------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        self._wake = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            await asyncio.to_thread(self._start)
            if not stop.is_set():
                await self._loop(stop)
            self.log.info("caught interrupt; gracefully cleaning up; see you next time!")
        finally:
            await asyncio.to_thread(self._finish)
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
        return 0

    def _start(self) -> None:
        from kilo.adapters import keyfile, kubeconfig, kubernetes, netlink, wireguard

        # First, so that a bad kubeconfig stops the command before any key, Peer, interface
        # or route exists (and before the key directory is even read).
        self.config = kubeconfig.load(self.args.kubeconfig)
        generated = False
        private = keyfile.read_key_file(self.key_path)
        if private is None:
            private = keyfile.generate_private_key()
            generated = True
        self.private_key = private
        public = private.public_key()
        # Kilo's line, whether the key is new or read.
        self.log.info(
            "generated public key",
            fields={
                "key": str(public),
                "path": str(self.key_path),
                "private key": "generated" if generated else "read",
            },
        )

        self.store = kubernetes.PeerStore(self.config, timeout=self.args.timeout)
        decision = self._decide(self.store.get(self.name), public)
        # Written before the Peer exists, so that a Peer this creates always has its key kept.
        if generated:
            keyfile.write_key_file(self.key_path, private)
            self.log.info("wrote the private key", fields={"path": str(self.key_path)})
        if decision.action == plan_mod.PeerAction.CREATE:
            obj = plan_mod.peer_object(
                self.name,
                allowed_ip=self.allowed_ip,
                public_key=public,
                persistent_keepalive=self.args.persistent_keepalive,
            )
            if self.store.create(obj) is None:
                # Created by someone else since the GET: judge that one instead.
                decision = self._decide(self.store.get(self.name), public)
                if decision.action == plan_mod.PeerAction.CREATE:
                    raise KiloError(f'Peer "{self.name}" keeps appearing and disappearing')
            else:
                self.peer_created = True
                self.log.info("created peer", fields={"peer": self.name})
        if decision.action == plan_mod.PeerAction.REUSE:
            self.log.info("using the existing peer", fields={"peer": self.name})
            for warning in decision.warnings:
                self.log.warning(warning, fields={"peer": self.name})

        self.links = netlink.Links()
        index = self.links.index(self.interface)
        if index is None:
            if not self.args.create_interface:
                raise DataPlaneError(
                    f"interface {self.interface} does not exist and --create-interface=false"
                )
            self._create_interface()
        else:
            self.log.info(
                "using the existing interface", fields={"interface": self.interface, "index": index}
            )
        self.interface_touched = True
        self.links.set_address(self.interface, self.allowed_ip)
        self.log.info("set IP address of WireGuard interface", fields={"IP": str(self.allowed_ip)})
        self.links.set_up(self.interface, True)
        self.device = wireguard.open_device(self.interface, socket_dir=SOCKET_DIR)
        self.routes = netlink.RouteTable(state_file=self.state_path)
        if self.routes.state_error:
            self.log.warning(
                "ignoring the route state file; routes of an earlier run may be left behind",
                fields={"error": self.routes.state_error},
            )

    def _decide(self, existing: dict[str, Any] | None, public: Key) -> plan_mod.PeerDecision:
        decision = plan_mod.decide_peer(
            existing,
            name=self.name,
            public_key=public,
            allowed_ip=self.allowed_ip,
            key_file=str(self.key_path),
        )
        if decision.action == plan_mod.PeerAction.REFUSE:
            raise ConfigError(decision.message)
        return decision

    def _create_interface(self) -> None:
        links = self.links
        assert links is not None
        try:
            links.create_wireguard(self.interface, self.args.mtu)
        except DataPlaneError as kernel_error:
            program = shutil.which("wireguard-go")
            if program is None:
                raise DataPlaneError(
                    f"{kernel_error}; and wireguard-go (the userspace fallback) is not installed"
                ) from kernel_error
            self._start_wireguard_go(program)
            kind = "wireguard-go"
        else:
            kind = "kernel"
        self.interface_created = True
        links.set_mtu(self.interface, self.args.mtu)
        self.log.info(
            "created WireGuard interface",
            fields={
                "name": self.interface,
                "interface": self.interface,
                "index": links.index(self.interface),
                "implementation": kind,
            },
        )

    def _start_wireguard_go(self, program: str) -> None:
        links = self.links
        assert links is not None
        self.child = WireGuardGo.start(program, self.interface, err=self.err)
        self.child.wait_ready(links, self.log)

    # -- the loop ----------------------------------------------------------------------------

    async def _loop(self, stop: asyncio.Event) -> None:
        from lightkube import AsyncClient

        from kilo.adapters import kubernetes

        config, routes = self.config, self.routes
        assert config is not None and routes is not None
        loop = asyncio.get_running_loop()
        server = str(config.cluster.server)

        def backend_error(message: str) -> None:
            self.log.error("the Kubernetes watch failed; retrying", fields={"error": message})

        def route_deleted() -> None:
            loop.call_soon_threadsafe(self._trigger)

        stop_watch = routes.watch_deletions(route_deleted)
        try:
            async with AsyncClient(config, trust_env=False) as client:
                nodes, peers = (
                    kubernetes.Informer(
                        client, r, server=server, retry_refusals=True, on_error=backend_error
                    )
                    for r in ("nodes", "peers")
                )
                tasks = [
                    asyncio.create_task(self._consume(nodes, self._on_node), name="nodes"),
                    asyncio.create_task(self._consume(peers, self._on_peer), name="peers"),
                    asyncio.create_task(self._worker(nodes, peers), name="sync"),
                ]
                stopper = asyncio.create_task(stop.wait(), name="stop")
                try:
                    done, _ = await asyncio.wait(
                        [*tasks, stopper], return_when=asyncio.FIRST_COMPLETED
                    )
                    for task in done:
                        if task is not stopper and task.exception() is not None:
                            raise task.exception()  # type: ignore[misc]
                finally:
                    for task in [*tasks, stopper]:
                        task.cancel()
                    await asyncio.gather(*tasks, stopper, return_exceptions=True)
        finally:
            stop_watch()

    def _trigger(self) -> None:
        assert self._wake is not None
        self._wake.set()

    async def _consume(self, informer: Informer, handle: Callable[[Event], bool]) -> None:
        async for event in informer.events():
            try:
                changed = handle(event)
            except Exception as exc:  # a bug: one object must never end the connection
                self.log.error(
                    "could not handle a watch event; the object keeps its last known state",
                    fields={
                        "name": shorten(str(event.name), 253),
                        "error": shorten(f"{type(exc).__name__}: {exc}", 200),
                    },
                )
                continue
            if changed:
                self._trigger()

    def _report(self, diagnostics: tuple[Diagnostic, ...]) -> None:
        for d in diagnostics:
            message, fields = warning_line(d)
            self.log.warning(message, fields=fields)

    def _on_node(self, event: Event) -> bool:
        change = self.view.node_event(event)
        self._report(change.report)
        return mesh_changed(change.old, change.new, int(time.time()))

    def _on_peer(self, event: Event) -> bool:
        change = self.view.peer_event(event)
        self._report(change.report)
        return peer_changed(change.old, change.new)

    async def _worker(self, nodes: Informer, peers: Informer) -> None:
        assert self._wake is not None
        self.log.info("starting syncer")
        loop = asyncio.get_running_loop()
        # The first sync waits for both initial lists (an empty list yields no event).
        await asyncio.gather(nodes.listed(), peers.listed())
        next_resync = loop.time()
        while True:
            timeout = max(0.0, next_resync - loop.time())
            # asyncio.timeout, not wait_for, which can swallow a cancellation on 3.11.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            await asyncio.sleep(DEBOUNCE)
            self._wake.clear()
            if loop.time() >= next_resync:
                next_resync = loop.time() + self.resync_period
            snapshot = list(self.view.nodes.values()), list(self.view.peers.values())
            await asyncio.to_thread(self.sync, *snapshot)

    def _resolved(self, endpoint: Endpoint | None, what: str) -> Endpoint | None:
        resolved, ok = dns.resolve_endpoint(endpoint, resolve)
        if not ok and endpoint is not None:
            self._warn_once(
                f"failed to resolve the endpoint of {what}; its WireGuard peer gets no endpoint "
                f"until it resolves ({endpoint.addr})"
            )
        return resolved

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            self.log.warning(message)

    def sync(self, nodes: Sequence[Node], peers: Sequence[Peer]) -> bool:
        """Bring the interface and routes to the cluster; ``True`` when all of it worked."""
        with self._lock:
            return self._sync(nodes, peers)

    def _sync(self, nodes: Sequence[Node], peers: Sequence[Peer]) -> bool:
        assert self.private_key is not None
        ready = [
            replace(n, endpoint=self._resolved(n.endpoint, f"node {n.name}"))
            for n in ready_nodes(nodes, int(time.time()))
        ]
        ready_peer_list = [
            replace(p, endpoint=self._resolved(p.endpoint, f"peer {p.name}"))
            for p in ready_peers(peers)
        ]
        try:
            plan = plan_mod.plan_connection(
                ready,
                ready_peer_list,
                name=self.name,
                private_key=self.private_key,
                port=self.args.port,
                granularity=self.args.mesh_granularity,
                subnet=self.subnet,
                extra_allowed_ips=self.args.allowed_ips,
            )
        except KiloError as exc:
            self.log.error("failed to sync", fields={"err": str(exc), "error": str(exc)})
            return False
        for warning in plan.warnings:
            self._warn_once(warning)
        device, routes = self.device, self.routes
        assert device is not None and routes is not None
        ok = True
        try:
            config = plan_mod.keep_live_endpoints(plan.config, device.get(), now=time.time())
            if device.apply(config):
                self.log.info(
                    "WireGuard configurations are different",
                    fields={"peers": [p.name for p in config.peers]},
                )
        except KiloError as exc:
            ok = False
            self.log.error("failed to sync WireGuard", fields={"error": str(exc)})
        try:
            added, removed = routes.set(plan.routes, (), {Device.KILO: self.interface})
            if added or removed:
                self.log.info("routes updated", fields={"added": added, "removed": removed})
        except KiloError as exc:
            ok = False
            self.log.error("failed to sync routes", fields={"error": str(exc)})
        return ok

    # -- clean-up ----------------------------------------------------------------------------

    def _finish(self) -> None:
        with self._lock:
            try:
                if self.args.clean_up:
                    self._clean_up()
            finally:
                self._stop_child()
                for resource in (self.routes, self.links, self.store):
                    if resource is not None:
                        with contextlib.suppress(KiloError):
                            resource.close()

    def _step(self, what: str, step: Callable[[], object]) -> None:
        try:
            step()
        except KiloError as exc:
            # "err" as Kilo writes it, for the steps Kilo has.
            kilo = _KILO_CLEAN_UP_ERRORS.get(what, f"failed to clean up {what}")
            self.log.error(
                f"failed to clean up {what}", fields={"err": f"{kilo}: {exc}", "error": str(exc)}
            )

    def _clean_up(self) -> None:
        links, device = self.links, self.device
        if self.routes is not None:
            self._step("the routes", self.routes.clean_up)
        if links is None:  # the interface was never touched
            pass
        elif self.interface_created:
            self._stop_child()
            self._step("the interface", lambda: links.delete(self.interface))
        elif self.interface_touched:
            if device is not None:
                self._step(
                    "the WireGuard peers",
                    lambda: device.apply(WireGuardConfig(private_key=None, peers=())),
                )
            self._step("the address", lambda: links.delete_addresses(self.interface))
        if self.peer_created:
            self._step("the peer", self._delete_peer)

    def _delete_peer(self) -> None:
        store = self.store
        assert self.private_key is not None and store is not None
        current = store.get(self.name)
        if current is None:
            self.log.info("the peer is already gone", fields={"peer": self.name})
            return
        decision = plan_mod.decide_peer(
            current,
            name=self.name,
            public_key=self.private_key.public_key(),
            allowed_ip=self.allowed_ip,
            key_file=str(self.key_path),
        )
        if decision.action != plan_mod.PeerAction.REUSE:
            self.log.warning(
                "not deleting the peer: it now holds another public key", fields={"peer": self.name}
            )
            return
        store.delete(self.name)
        self.log.info("deleted peer", fields={"peer": self.name})

    def _stop_child(self) -> None:
        child = self.child
        if child is None:
            return
        self.child = None
        child.stop(self.log)


_KILO_CLEAN_UP_ERRORS = {
    "the routes": "failed to clean up routes",
    "the interface": "failed to remove WireGuard interface",
    "the peer": "failed to delete peer",
}
