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
    from kilo.adapters.netlink import Links
    from kilo.agent.metrics import AgentMetrics

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


async def _run(settings: AgentSettings) -> int:
    # Imported here so that flag errors and --version never pay for (or fail on) the
    # netlink, Kubernetes and Prometheus libraries.
    import msgspec
    from lightkube import AsyncClient, Client

    from kilo.adapters import cni, keyfile, kubeconfig, kubernetes, netlink, tunnel, wireguard
    from kilo.adapters.iptables import IPTables
    from kilo.agent.http import HTTPServer
    from kilo.agent.metrics import AgentMetrics, new_registry
    from kilo.agent.reconcile import Agent, DataPlane, HostFacts
    from kilo.mesh.discovery import discover_ips, external_ip
    from kilo.mesh.model import Encapsulation

    log = logs.get("kilo")
    # Kilo's two lines of its main logger: no level, no component.
    logs.get("").log(jsonlog.UNLEVELED, f"Starting Kilo network mesh '{__version__}'.")

    try:
        config = kubeconfig.load(settings.backend.kubeconfig or None)
        if settings.backend.master:
            config = config._replace(
                cluster=msgspec.structs.replace(config.cluster, server=settings.backend.master)
            )
    except KiloError as exc:
        raise _Fatal(f"failed to create Kubernetes config: {exc}") from exc
    server = str(config.cluster.server)

    registry = new_registry()
    device_holder: list[wireguard.WireGuardDevice] = []
    agent_holder: list[Agent] = []

    def wireguard_peers() -> list[tuple[str, str, float | None, int, int]]:
        if not device_holder:
            return []
        names = agent_holder[0].peer_names if agent_holder else {}
        try:
            state = device_holder[0].get()
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

    metrics = AgentMetrics(registry, peers=wireguard_peers)

    def healthy() -> bool:
        return bool(agent_holder) and agent_holder[0].healthy

    def graph() -> str:
        if not agent_holder:
            raise KiloError("the agent is still starting; no graph to show")
        return agent_holder[0].graph()

    # Bound before anything is created on the node, so that an address that cannot be
    # bound (in use, a host name that does not resolve) changes nothing; Kilo binds after
    # its mesh construction. Served once the agent exists.
    try:
        http = HTTPServer(settings.http.listen, registry=registry, healthy=healthy, graph=graph)
    except KiloError as exc:
        raise _Fatal(str(exc)) from exc

    # Whatever start-up created is undone if a later step of it fails (LIFO); on success
    # the agent owns it and its clean-up rules apply.
    with contextlib.ExitStack() as undo:
        undo.callback(http.stop)
        # Construction (kilo-mesh.md §6.1): key, interface, IP discovery, encapsulator.
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
            interfaces = links.interfaces()
            ignore = {links.index(interface) or 0, links.index(CNI_BRIDGE) or 0}
            hostname = settings.mesh.hostname
            from kilo.agent.reconcile import resolve

            resolved = [] if resolve(hostname) is None else [resolve(hostname)]
            found = discover_ips(
                hostname=hostname,
                resolved=[a for a in resolved if a is not None],
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
            encapsulator = None
            if (
                found.private is not None
                and private_interface is not None
                and (settings.mesh.encapsulation != Encapsulation.NEVER)
            ):
                encapsulator = tunnel.Tunnel(links, settings.mesh.compatibility, private_interface)
                undo.callback(_undo, "the tunnel interface", encapsulator.clean_up)
            device = wireguard.open_device(interface)
            device_holder.append(device)
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

        api = Client(config, trust_env=False)
        undo.callback(api.close)

        class Writer:
            async def patch(self, name: str, annotations: Mapping[str, str | None]) -> None:
                await asyncio.to_thread(kubernetes.patch_node_annotations, api, name, annotations)

        agent = Agent(settings, host, plane, Writer(), _MetricsAdapter(metrics))
        agent_holder.append(agent)

        loop = asyncio.get_running_loop()

        def route_deleted() -> None:
            loop.call_soon_threadsafe(agent.trigger)

        try:
            stop_watch = routes.watch_deletions(route_deleted)
        except KiloError as exc:
            raise _Fatal(f"failed to create Kilo mesh: {exc}") from exc
        undo.pop_all()

    http.start()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    status = 0
    try:
        async with AsyncClient(config, trust_env=False) as client:

            def backend_error(message: str) -> None:
                log.error("the Kubernetes watch failed; retrying", fields={"error": message})

            nodes, peers = (
                kubernetes.Informer(
                    client, resource, server=server, retry_refusals=True, on_error=backend_error
                )
                for resource in ("nodes", "peers")
            )
            try:
                await agent.run(nodes, peers, stop)
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
    finally:
        stop_watch()
        if settings.mesh.clean_up:
            await agent.clean_up()
        http.stop()
        routes.close()
        api.close()
        links.close()
    return status


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
