"""``kg``: the Kilo agent that runs on every node.

Composition root: read and validate the command line exactly as Kilo's ``kg`` does
(``kilo.agent.settings``), build the adapters, then run the reconcile loop
(``kilo.agent.reconcile``) next to the HTTP server until SIGINT/SIGTERM. Exit status, as in Kilo:
0 for ``version``, ``--version``, help and a clean shutdown; 1 for every error, printed as
one line on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from kilo import __version__, completion, jsonlog
from kilo.agent import command_line, logs
from kilo.agent.cobra import CommandLineError
from kilo.agent.settings import AgentSettings, WebhookSettings
from kilo.errors import KiloError
from kilo.mesh.model import DEFAULT_MTU
from kilo.mesh.text import printable

if TYPE_CHECKING:
    from lightkube import Client
    from lightkube.config.kubeconfig import SingleConfig

    from kilo.adapters.netlink import Links, RouteTable
    from kilo.adapters.wireguard import WireGuardDevice
    from kilo.agent.metrics import AgentMetrics
    from kilo.agent.ports import DataPlane, HostFacts
    from kilo.agent.reconcile import Agent
    from kilo.mesh.discovery import DiscoveredIPs

STATE_DIRECTORY = Path("/var/lib/kilo")
ROUTE_STATE = "routes.json"
CNI_BRIDGE = "kube-bridge"


def _os_hostname() -> str | None:
    """Go's ``os.Hostname``: the kernel's host name, ``None`` when it cannot be read."""
    try:
        return socket.gethostname() or None
    except OSError:
        return None


def _undo(what: str, step: Callable[[], object]) -> None:
    """One step of undoing a failed start-up; its own failure is logged, not raised, so
    that the start-up error stays the one reported and the other steps still run."""
    try:
        step()
    except KiloError as exc:
        logs.get("kilo").error(f"failed to remove {what}", fields={"error": str(exc)})


def _remove_interface(links: Links, interface: str) -> None:
    _undo(f"the interface {interface}", lambda: links.delete(interface))


class _Fatal(Exception):
    """A start-up failure: its message is Kilo's one-line error."""


def main(
    argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in completion.REQUESTS:
        # cobra's hidden command, which the completion scripts run.
        candidates, directive = command_line.complete(args[1:])
        descriptions = args[0] == completion.REQUEST
        out.write(completion.answer(candidates, directive, descriptions=descriptions))
        print(f"Completion ended with directive: {completion.directive_name(directive)}", file=err)
        return 0
    try:
        outcome = command_line.read(args, hostname_fallback=_os_hostname)
    except CommandLineError as exc:
        print(exc, file=err)
        return 1
    if isinstance(outcome, command_line.Show):
        try:
            out.write(outcome.text)
            out.flush()
        except BrokenPipeError:
            return 1
        return 0
    if isinstance(outcome, WebhookSettings):
        from kilo.agent import webhook

        return webhook.main(outcome, out=out, err=err)
    settings = outcome
    logs.configure(settings.log.level, out)
    try:
        return asyncio.run(_run(settings))
    except _Fatal as exc:
        print(printable(str(exc)), file=err)
        return 1


@dataclass
class _Views:
    """What the HTTP server and the metrics read of the agent and its WireGuard device,
    which exist only once start-up has built them (the server is bound before)."""

    agent: Agent | None = None
    device: WireGuardDevice | None = None

    def wireguard_peers(self) -> list[tuple[str, str, float | None, int, int]]:
        if self.device is None:
            return []
        names = self.agent.peer_names if self.agent is not None else {}
        try:
            state = self.device.get()
        except KiloError:
            return []
        return [
            (
                str(p.public_key),
                names.get(str(p.public_key), ""),
                p.last_handshake,
                p.rx_bytes,
                p.tx_bytes,
            )
            for p in state.peers
        ]

    def healthy(self) -> bool:
        return self.agent is not None and self.agent.healthy

    def graph(self) -> str:
        if self.agent is None:
            raise KiloError("the agent is still starting; no graph to show")
        return self.agent.graph()


@dataclass(frozen=True, slots=True)
class _Mesh:
    """What construction built on the node (kilo-mesh.md §6.1)."""

    links: Links
    routes: RouteTable
    host: HostFacts
    plane: DataPlane


async def _run(settings: AgentSettings) -> int:
    # Imported here so that flag errors and --version never pay for (or fail on) the
    # netlink, Kubernetes and Prometheus libraries.
    from lightkube import Client

    from kilo.adapters import credentials
    from kilo.agent.http import HTTPServer
    from kilo.agent.metrics import AgentMetrics, new_registry
    from kilo.agent.reconcile import Agent

    # Kilo's two lines of its main logger: no level, no component.
    logs.get("").log(jsonlog.UNLEVELED, f"Starting Kilo network mesh '{__version__}'.")
    config = _kubernetes_config(settings)
    registry = new_registry()
    views = _Views()
    metrics = AgentMetrics(registry, peers=views.wireguard_peers)
    # Bound before anything is created on the node, so that an address that cannot be
    # bound (in use, a host name that does not resolve) changes nothing; Kilo binds after
    # its mesh construction. Served once the agent exists.
    try:
        http = HTTPServer(
            settings.http.listen, registry=registry, healthy=views.healthy, graph=views.graph
        )
    except KiloError as exc:
        raise _Fatal(str(exc)) from exc

    # Whatever start-up created is undone if a later step of it fails (LIFO); on success
    # the agent owns it and its clean-up rules apply.
    with contextlib.ExitStack() as undo:
        undo.callback(http.stop)
        mesh = _construct(settings, undo, metrics, views)
        # A credential plugin that hangs must not stop the agent for good (credentials).
        api = credentials.bound_client(Client(config, trust_env=False))
        undo.callback(api.close)
        agent = Agent(settings, mesh.host, mesh.plane, _Writer(api), _MetricsAdapter(metrics))
        views.agent = agent
        loop = asyncio.get_running_loop()

        def route_deleted() -> None:
            loop.call_soon_threadsafe(agent.trigger)

        try:
            stop_watch = mesh.routes.watch_deletions(route_deleted)
        except KiloError as exc:
            raise _Fatal(f"failed to create Kilo mesh: {exc}") from exc
        undo.pop_all()

    http.start()
    try:
        return await _serve(settings, config, agent)
    finally:
        stop_watch()
        if settings.mesh.clean_up:
            await agent.clean_up()
        http.stop()
        mesh.routes.close()
        api.close()
        mesh.links.close()


def _kubernetes_config(settings: AgentSettings) -> SingleConfig:
    """The kubeconfig (or the in-cluster configuration), with ``--master`` applied."""
    import msgspec

    from kilo.adapters import kubeconfig

    try:
        config = kubeconfig.load(settings.backend.kubeconfig or None)
        if settings.backend.master:
            config = config._replace(
                cluster=msgspec.structs.replace(config.cluster, server=settings.backend.master)
            )
    except KiloError as exc:
        raise _Fatal(f"failed to create Kubernetes config: {exc}") from exc
    return config


def _construct(
    settings: AgentSettings,
    undo: contextlib.ExitStack,
    metrics: AgentMetrics,
    views: _Views,
) -> _Mesh:
    """Construction (kilo-mesh.md §6.1): key, interface, IP discovery, encapsulator,
    WireGuard device, iptables, routes; each thing created is registered with ``undo``."""
    from kilo.adapters import cni, keyfile, netlink, tunnel, wireguard
    from kilo.adapters.iptables import IPTables
    from kilo.agent.ports import DataPlane, HostFacts
    from kilo.mesh.discovery import external_ip
    from kilo.mesh.model import Encapsulation

    log = logs.get("kilo")
    try:
        key = keyfile.load_or_create(STATE_DIRECTORY)
        if key.generated:
            log.warning("no private key found on disk; generating one now")
        links = netlink.Links()
        undo.callback(links.close)
        interface = settings.wireguard.interface
        if links.index(interface) is None:
            if not settings.wireguard.create_interface:
                raise KiloError(
                    f"interface {interface} does not exist and --create-interface=false "
                    "(a userspace WireGuard such as wireguard-go must create it first)"
                )
            if links.create_wireguard(interface, settings.wireguard.mtu or DEFAULT_MTU):
                undo.callback(_remove_interface, links, interface)
        found, private_interface = _discover(settings, links)
        encapsulator = None
        if (
            found.private is not None
            and private_interface is not None
            and (settings.mesh.encapsulation != Encapsulation.NEVER)
        ):
            encapsulator = tunnel.Tunnel(links, settings.mesh.compatibility, private_interface)
            undo.callback(_undo, "the tunnel interface", encapsulator.clean_up)
        device = wireguard.open_device(interface)
        views.device = device
        host = HostFacts(
            key=key.private,
            public_key=key.public,
            discovered=found,
            external_ip=external_ip(
                found, prioritise_private=settings.mesh.prioritise_private_addresses
            ),
            private_interface=private_interface,
        )
        iptables = IPTables(on_operation=metrics.iptables_operation)
        routes = netlink.RouteTable(state_file=STATE_DIRECTORY / ROUTE_STATE)
        undo.callback(routes.close)
    except KiloError as exc:
        raise _Fatal(f"failed to create Kilo mesh: {exc}") from exc
    if routes.state_error:
        log.warning(
            "ignoring the route state file; routes of an earlier run may be left behind",
            fields={"error": routes.state_error},
        )
    log.info(
        "discovered the node's addresses",
        fields={
            "private": str(found.private) if found.private else "",
            "public": str(found.public),
            "private_interface": private_interface or "",
        },
    )
    cni_path = Path(settings.cni.path)
    plane = DataPlane(
        links=links,
        routes=routes,
        iptables=iptables,
        device=device,
        tunnel=encapsulator,
        update_cni=lambda subnet: cni.update_cni_config(cni_path, subnet),
    )
    return _Mesh(links=links, routes=routes, host=host, plane=plane)


def _discover(settings: AgentSettings, links: Links) -> tuple[DiscoveredIPs, str | None]:
    """The node's private and public IPs (§6.1.6), and the interface of the private one."""
    from kilo.adapters import dns
    from kilo.mesh.discovery import discover_ips

    interfaces = links.interfaces()
    ignore = {links.index(settings.wireguard.interface) or 0, links.index(CNI_BRIDGE) or 0}
    hostname = settings.mesh.hostname
    address = dns.resolve(hostname)
    found = discover_ips(
        hostname=hostname,
        resolved=[] if address is None else [address],
        interfaces=interfaces,
        default_interface=links.default_route_interface(),
        internal_cidrs=settings.mesh.internal_cidrs,
        ignore=ignore,
    )
    private_interface = None
    if found.private is not None:
        private_interface = next(
            (
                i.name
                for i in sorted(interfaces, key=lambda i: i.index)
                if any(a.ip == found.private.ip for a in i.addresses)
            ),
            None,
        )
    return found, private_interface


async def _serve(settings: AgentSettings, config: SingleConfig, agent: Agent) -> int:
    """Run the agent on the cluster's watches until SIGINT/SIGTERM (0) or a fatal backend
    error (1, Kilo's last words on stderr)."""
    from lightkube import AsyncClient

    from kilo.adapters import credentials, kubernetes

    log = logs.get("kilo")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    status = 0
    async with credentials.bound_client(AsyncClient(config, trust_env=False)) as client:

        def backend_error(message: str) -> None:
            log.error("the Kubernetes watch failed; retrying", fields={"error": message})

        nodes, peers = (
            kubernetes.Informer(
                client,
                resource,
                server=str(config.cluster.server),
                retry_refusals=True,
                on_error=backend_error,
                plugin_timeout=credentials.PLUGIN_TIMEOUT,
            )
            for resource in ("nodes", "peers")
        )
        leases = None
        if settings.mesh.leader_election:
            from kilo.adapters.leases import LeaseWriter, is_ours
            from kilo.agent.leadership import Election

            # The namespace kg runs in: its service account's, or the kubeconfig context's.
            namespace = config.namespace
            agent.use_election(
                Election(
                    hostname=settings.mesh.hostname,
                    writer=LeaseWriter(client, namespace),
                    is_ours=is_ours,
                    interface=settings.wireguard.interface,
                )
            )
            leases = kubernetes.Informer(
                client,
                "leases",
                server=str(config.cluster.server),
                retry_refusals=True,
                on_error=backend_error,
                namespace=namespace,
                plugin_timeout=credentials.PLUGIN_TIMEOUT,
            )
            log.info(
                "lease leader election is on",
                fields={"namespace": namespace, "node": settings.mesh.hostname},
            )
        try:
            await agent.run(nodes, peers, stop, leases)
            if settings.mesh.clean_up and agent.election is not None:
                # Its data plane is about to go: the next leader need not wait out the Lease
                # (while this client is still open).
                await agent.election.release()
        except KiloError as exc:
            # Kilo's last words, on stderr as Kilo prints them; also a log line.
            message = f"error: Kilo exited unexpectedly: {exc}"
            log.error(message)
            print(printable(message), file=sys.stderr)
            status = 1
    if stop.is_set():
        logs.get("").log(
            jsonlog.UNLEVELED, "caught interrupt; gracefully cleaning up; see you next time!"
        )
    return status


class _Writer:
    """The loop's writer of the local node's annotations (one merge patch each)."""

    def __init__(self, api: Client) -> None:
        self._api = api

    async def patch(self, name: str, annotations: Mapping[str, str | None]) -> None:
        from kilo.adapters import kubernetes

        await asyncio.to_thread(kubernetes.patch_node_annotations, self._api, name, annotations)


class _MetricsAdapter:
    """The loop's view of the Prometheus metrics."""

    def __init__(self, metrics: AgentMetrics) -> None:
        self._m = metrics

    def error(self, event: str) -> None:
        self._m.errors.labels(event=event).inc()

    def reconciled(self) -> None:
        self._m.reconciles.inc()

    def set_counts(self, nodes: int, peers: int) -> None:
        self._m.nodes.set(nodes)
        self._m.peers_gauge.set(peers)

    def set_leader(self, leader: bool) -> None:
        self._m.leader.set(1 if leader else 0)

    def set_node(self, node: str, location: str) -> None:
        self._m.set_node(node, location)


if __name__ == "__main__":
    sys.exit(main())
