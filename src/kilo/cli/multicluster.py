"""``kgctl multicluster link|unlink``: Kilo's multi-cluster peering, done once or kept current.

Kilo documents joining two clusters by hand: every node of each cluster, printed by ``kgctl
showconf node N --as-peer``, applied as a Peer of the other. Those Peers go stale when a
leader changes, a node comes or goes or a key changes. ``link`` writes the same Peers
(:mod:`kilo.mesh.multicluster` says how they differ: a name prefix, an ownership label)
both ways; with ``--watch`` it follows both clusters' Nodes and Peers and rewrites them as
soon as either changes (and every ``--resync-period`` besides, for the nodes whose
heartbeat stops: no event says a node died). ``unlink`` deletes exactly the Peers the link
labelled. The core decides; this module reads, writes and reports.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from kilo.cli import arguments
from kilo.errors import KiloError
from kilo.mesh import cluster as cluster_mod
from kilo.mesh import ip, multicluster
from kilo.mesh.ip import IPNetwork
from kilo.mesh.text import one_line, short_repr

if TYPE_CHECKING:
    import asyncio

    from lightkube.config.kubeconfig import SingleConfig

    from kilo.adapters import kubernetes

# The Kubernetes client (and asyncio, 30 ms) is imported where a link is run, not here: kgctl
# imports this module for its flags, and every other command (offline ones too) would pay a
# quarter of a second.

FIELD_MANAGER = "kgctl-multicluster"
DEFAULT_LINK = "kilo"
# At most this many problems are reported per pass: a hostile cluster costs a bounded log.
MAX_WARNINGS = 20
WARNING_LIMIT = 400


def add_arguments(link: argparse.ArgumentParser, unlink: argparse.ArgumentParser) -> None:
    for parser in (link, unlink):
        parser.add_argument(
            "--remote-kubeconfig",
            type=arguments.FILE,
            required=True,
            metavar="PATH",
            help="kubeconfig of the other cluster (this one is --kubeconfig)",
        )
        parser.add_argument(
            "--name",
            default=DEFAULT_LINK,
            help="the link's name: it labels the Peers it writes and starts their names "
            f"(default: {DEFAULT_LINK})",
        )
    for flag, whose, other in (
        ("--service-cidr", "this", "the other"),
        ("--remote-service-cidr", "the other", "this"),
    ):
        link.add_argument(
            flag,
            type=_cidrs(flag),
            action="extend",
            default=[],
            metavar="CIDR[,CIDR...]",
            help=f"{whose} cluster's Service range, routed to it from {other} "
            "(the recipe's --allowed-ips; repeatable)",
        )
    arguments.add_go_bool(
        link, "--watch", default=False, help="keep the Peers current until SIGINT/SIGTERM"
    )
    link.add_argument(
        "--resync-period",
        type=_period,
        default=30.0,
        metavar="SECONDS",
        help="with --watch, also recompute this often (default: 30)",
    )


def _cidrs(flag: str) -> Callable[[str], list[IPNetwork]]:
    def parse(text: str) -> list[IPNetwork]:
        networks = []
        for part in text.split(","):
            network = ip.parse_network(part.strip())
            if network is None:
                raise argparse.ArgumentTypeError(f"{flag} {arguments.quote(part)} is not a CIDR")
            networks.append(network)  # masked, as the recipe's --allowed-ips
        return networks

    return parse


def _period(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 1 <= value <= 3600:
        raise argparse.ArgumentTypeError(
            f"--resync-period {arguments.quote(text)} is not a number of seconds from 1 to 3600"
        )
    return value


def check_arguments(args: argparse.Namespace) -> str | None:
    """Everything wrong with the command line, before anything is read or written."""
    if args.backend != "kubernetes":
        return "multicluster reads and writes live clusters: --backend must be kubernetes"
    problem = multicluster.check_link_name(args.name)
    if problem is not None:
        return f"--name: {problem}"
    return None


@dataclass
class Side:
    """One cluster of the link: where it is, the Service ranges that go with its Peers,
    what its informers hold (in ``--watch``)."""

    label: str  # "local" or "remote", for messages
    config: SingleConfig
    service_cidrs: Sequence[IPNetwork]
    store: kubernetes.PeerStore
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    peers: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def server(self) -> str:
        return str(self.config.cluster.server)


class Link:
    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.name: str = args.name
        self.out = out
        self.err = err
        from kilo.adapters import kubeconfig, kubernetes

        local = kubeconfig.load(args.kubeconfig)
        remote = kubeconfig.load(args.remote_kubeconfig)
        if local.cluster.server == remote.cluster.server:
            raise KiloError(
                f"--kubeconfig and --remote-kubeconfig both name {local.cluster.server}: "
                "a cluster cannot be linked to itself"
            )
        timeout = args.timeout
        self.sides = (
            Side(
                "local",
                local,
                getattr(args, "service_cidr", []),
                kubernetes.PeerStore(local, timeout=timeout),
            ),
            Side(
                "remote",
                remote,
                getattr(args, "remote_service_cidr", []),
                kubernetes.PeerStore(remote, timeout=timeout),
            ),
        )
        self.timeout = timeout

    def close(self) -> None:
        for side in self.sides:
            side.store.close()

    def say(self, message: str) -> None:
        print(message, file=self.out, flush=True)

    def warn(self, message: str) -> None:
        # The names in a message are short_repr'd already; the default limit would cut the
        # conflict warning before the label it names.
        print(f"kgctl: warning: {one_line(message, WARNING_LIMIT)}", file=self.err, flush=True)

    def read(self) -> None:
        """Both clusters' Nodes and Peers, listed once."""
        from kilo.adapters import kubernetes

        for side in self.sides:
            with kubernetes.ClusterReader(side.config, timeout=self.timeout) as reader:
                side.nodes = {_name(o): o for o in reader.nodes()}
                side.peers = {_name(o): o for o in reader.peers()}

    def sync(self, *, remove: bool = False) -> int:
        """Bring each cluster's owned Peers to the other's mirror (to none with ``remove``);
        the number of Peers written or deleted."""
        done = 0
        now = int(time.time())
        for source, target in (self.sides, tuple(reversed(self.sides))):
            if remove:
                desired: tuple[dict[str, Any], ...] = ()
            else:
                translated = cluster_mod.translate_cluster(
                    source.nodes.values(), source.peers.values()
                )
                mirror = multicluster.mirror(
                    translated, link=self.name, allowed_ips=source.service_cidrs, now=now
                )
                problems = [str(d) for d in translated.diagnostics] + list(mirror.diagnostics)
                for problem in problems[:MAX_WARNINGS]:
                    self.warn(f"{source.label} cluster: {problem}")
                if len(problems) > MAX_WARNINGS:
                    self.warn(f"{source.label} cluster: {len(problems) - MAX_WARNINGS} more")
                desired = mirror.peers
            changes = multicluster.changes(desired, target.peers.values(), link=self.name)
            for name in changes.conflicts:
                self.warn(
                    f"{target.label} cluster: Peer {short_repr(name)} exists and is not the "
                    f"link's (no label {multicluster.LINK_LABEL}={self.name}); left alone"
                )
            for obj in changes.apply:
                target.store.apply(obj, field_manager=FIELD_MANAGER)
                self.say(f"{target.label} cluster: applied Peer {_name(obj)}")
            for name in changes.delete:
                target.store.delete(name)
                self.say(f"{target.label} cluster: deleted Peer {name}")
            done += len(changes.apply) + len(changes.delete)
        return done

    def _watch_failed(self, side: Side) -> Callable[[str], None]:
        def report(message: str) -> None:
            self.warn(f"{side.label} cluster: the watch failed; retrying: {message}")

        return report

    async def watch(self, resync: float) -> None:
        """Follow both clusters until SIGINT/SIGTERM, syncing after every change."""
        import asyncio

        from lightkube import AsyncClient

        from kilo.adapters import kubernetes

        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        wake = asyncio.Event()
        async with contextlib.AsyncExitStack() as stack:
            tasks = []
            listed = []
            informers: list[tuple[Side, str, kubernetes.Informer]] = []
            for side in self.sides:
                client = await stack.enter_async_context(AsyncClient(side.config, trust_env=False))
                for resource in ("nodes", "peers"):
                    informer = kubernetes.Informer(
                        client,
                        resource,
                        server=side.server,
                        retry_refusals=True,
                        on_error=self._watch_failed(side),
                    )
                    informers.append((side, resource, informer))
                    listed.append(informer.listed())
                    tasks.append(asyncio.create_task(_consume(informer, wake)))
            stopper = asyncio.create_task(stop.wait())
            try:
                await asyncio.gather(*listed)
                self.say(f"watching link {self.name}")
                while not stop.is_set():
                    wake.clear()
                    # A copy taken here, in the loop that changes the caches (an informer
                    # also replaces its cache on a relist), for the sync in its thread.
                    for side, resource, informer in informers:
                        setattr(side, resource, dict(informer.cache))
                    await asyncio.to_thread(self.sync)
                    waiter = asyncio.create_task(wake.wait())
                    failed = [t for t in tasks if t.done()]
                    done, _ = await asyncio.wait(
                        [waiter, stopper, *tasks], timeout=resync, return_when="FIRST_COMPLETED"
                    )
                    waiter.cancel()
                    for task in failed + [t for t in done if t in tasks]:
                        task.result()  # an informer that ended: its error ends the watch
            finally:
                for task in [*tasks, stopper]:
                    task.cancel()
                await asyncio.gather(*tasks, stopper, return_exceptions=True)


async def _consume(informer: kubernetes.Informer, wake: asyncio.Event) -> None:
    async for _ in informer.events():
        wake.set()


def _name(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return name if isinstance(name, str) else ""


def run_link(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    link = Link(args, out, err)
    try:
        if args.watch:
            import asyncio

            asyncio.run(link.watch(args.resync_period))
        else:
            link.read()
            if link.sync() == 0:
                link.say(f"link {link.name}: nothing to change")
    finally:
        link.close()
    return 0


def run_unlink(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    link = Link(args, out, err)
    try:
        link.read()
        if link.sync(remove=True) == 0:
            link.say(f"link {link.name}: no Peer of it in either cluster")
    finally:
        link.close()
    return 0
