"""``kgctl``'s commands: each reads the cluster through a backend, hands plain values to
the pure core and prints what it returns (``kilo.cli.kgctl`` parses the command line and
calls them)."""

from __future__ import annotations

import argparse
import functools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from kilo import __version__, completion
from kilo.adapters import file as file_backend
from kilo.adapters import yamlinput
from kilo.cli import multicluster
from kilo.cli.arguments import quote
from kilo.errors import BackendError, KiloError
from kilo.mesh import cluster as cluster_mod
from kilo.mesh import graph, ip, leadership, listing, peerspec, plan, topology, wireguard
from kilo.mesh import multicluster as multicluster_core
from kilo.mesh.cluster import Cluster
from kilo.mesh.ip import IPNetwork
from kilo.mesh.model import (
    Compatibility,
    Encapsulation,
    Granularity,
    Node,
    ready_nodes,
    ready_peers,
)

PROG = "kgctl"
# Where kgctl reads kg's Leases: the namespace the shipped manifests run kg in.
LEASE_NAMESPACE = "kube-system"


class UsageError(Exception):
    """A command-line mistake: exit status 2."""


def view(run: Callable[[Context], int]) -> Callable[[Context], int]:
    """A command that reads the cluster once, prints what the core makes of it and exits
    (``list``, ``graph``, ``showconf``, ``plan``): it runs without the cyclic garbage
    collector.

    Everything it builds (the dump, 5000 Nodes, a 5000-peer topology and plan) lives until
    it prints, and reference counting frees what it drops: the collector found next to
    nothing to free (the same peak RSS without it), yet walked the growing heap hundreds
    of times, a tenth to a fifth of such a command's CPU time (0.08 s of ``list``, 0.25 s of
    a full mesh's ``plan`` on a 5000-node dump). The work, and any cycle it leaves, is
    bounded by the input, itself bounded (``yamlinput.CLUSTER_DUMP``); the commands that
    keep running (``connect``, ``multicluster link --watch``) keep the collector.
    """

    @functools.wraps(run)
    def paused(ctx: Context) -> int:
        with yamlinput.cycle_collector_paused():
            return run(ctx)

    return paused


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


# --- running ------------------------------------------------------------------------------


class Context:
    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.args = args
        self.out = out
        self.err = err
        self.leases: list[Any] | None = None  # read from a live cluster that uses them
        self.annotations: dict[str, str | None] = {}

    def warn(self, message: str) -> None:
        print(f"{PROG}: warning: {message}", file=self.err)

    def load(self) -> Cluster:
        args = self.args
        if args.backend == "file":
            if not args.file:
                raise UsageError(
                    "--backend file needs --file PATH (a dump from "
                    "'kubectl get nodes,peers.kilo.squat.ai -o yaml')"
                )
            dump = file_backend.read_dump(args.file)
            for warning in dump.warnings:
                self.warn(f"{args.file}: {warning}")
            nodes, peers = dump.nodes, dump.peers
        else:
            nodes, peers, leases = _read_live(args.kubeconfig, args.timeout, warn=self.warn)
            self.leases = leases
            self.annotations = leadership.participants(nodes)
        cluster = cluster_mod.translate_cluster(
            nodes, peers, topology_label=args.topology_label, port=args.port
        )
        for diagnostic in cluster.diagnostics:
            self.warn(str(diagnostic))
        return cluster

    def leaders(self, nodes: Sequence[Node]) -> dict[str, str] | None:
        """The lease leaders of a live cluster that uses ``kg --leader-election=lease``
        (None: Kilo's rule; dumps hold no Leases, so offline views show Kilo's rule)."""
        if self.leases is None:
            return None
        return leadership.snapshot_leaders(nodes, self.annotations, self.leases, time.time())

    def now(self) -> int | None:
        if self.args.backend == "file" and not self.args.respect_last_seen:
            return None
        return int(time.time())

    def granularity(self, cluster: Cluster) -> Granularity:
        chosen, warnings = cluster_mod.resolve_granularity(
            self.args.mesh_granularity, cluster.nodes
        )
        for warning in warnings:
            self.warn(warning)
        return chosen

    def subnet(self, cluster: Cluster) -> IPNetwork:
        if self.args.subnet:
            parsed = ip.parse_network(self.args.subnet)
            assert parsed is not None
            return parsed
        chosen, warnings = cluster_mod.infer_subnet(cluster.nodes)
        for warning in warnings:
            self.warn(warning)
        return chosen


def _read_live(
    path: str | None, timeout: float, *, warn: Callable[[str], None] = lambda _: None
) -> tuple[list[Any], list[Any], list[Any] | None]:
    """Nodes, Peers and, when a node takes part in lease leader election, the Leases in
    ``LEASE_NAMESPACE`` (None otherwise, or unreadable: a warning), from the API server,
    all within ``timeout`` seconds.

    Socket timeouts alone do not bound the whole exchange (a server can drip bytes, a
    credential plugin can hang), so the work runs in a thread that is abandoned on time.
    """
    result: list[tuple[list[Any], list[Any], list[Any] | None]] = []
    warnings: list[str] = []
    failure: list[BaseException] = []
    server: list[str] = ["the Kubernetes API server"]

    def work() -> None:
        # Imported here: the HTTP client and the kubeconfig reader take a quarter of a
        # second to import, which every offline (--backend file) command would pay.
        from kilo.adapters import kubeconfig, kubernetes

        try:
            config = kubeconfig.load(path)
            server[0] = str(config.cluster.server)
            with kubernetes.ClusterReader(config, timeout=timeout) as reader:
                nodes, peers = reader.nodes(), reader.peers()
                leases = None
                if leadership.MODE in leadership.participants(nodes).values():
                    try:
                        leases = reader.leases(LEASE_NAMESPACE)
                    except BackendError as exc:
                        warnings.append(f"{exc}; leaders shown by Kilo's rule")
                result.append((nodes, peers, leases))
        except BaseException as exc:  # handed to the caller below
            failure.append(exc)

    thread = threading.Thread(target=work, name="kgctl-read", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise BackendError(f"{server[0]} did not answer within --timeout {timeout:g} s")
    if failure:
        raise failure[0]
    for warning in warnings:
        warn(warning)
    return result[0]


class Mesh:
    """The ready part of a cluster and the settings every view is built with."""

    def __init__(self, ctx: Context) -> None:
        cluster = ctx.load()
        self.cluster = cluster
        self.granularity = ctx.granularity(cluster)
        self.subnet = ctx.subnet(cluster)
        self.nodes = ready_nodes(cluster.nodes, ctx.now())
        self.peers = ready_peers(cluster.peers)
        if not self.nodes:
            raise KiloError("did not find any valid Kilo nodes in the cluster")
        self.leaders = ctx.leaders(self.nodes)

    def topology(
        self, hostname: str, *, port: int, keepalive: int, service_cidrs: Sequence[IPNetwork] = ()
    ) -> topology.Topology:
        return topology.build_topology(
            self.nodes,
            self.peers,
            granularity=self.granularity,
            hostname=hostname,
            subnet=self.subnet,
            port=port,
            persistent_keepalive=keepalive,
            service_cidrs=service_cidrs,
            leaders=self.leaders,
        )


def run_completion(ctx: Context) -> int:
    descriptions = not ctx.args.no_descriptions
    ctx.out.write(completion.script(ctx.args.shell, PROG, descriptions=descriptions))
    return 0


def run_help(ctx: Context) -> int:
    topics = ctx.args.topics
    parser: argparse.ArgumentParser = ctx.args.root_parser
    for index, topic in enumerate(topics):
        sub = subparsers(parser).get(topic)
        if sub is None:
            if index == 0:
                commands = ", ".join(subparsers(parser))
                raise UsageError(f"unknown help topic {quote(topic)}; the commands are: {commands}")
            break  # as cobra: "help showconf x" is the help of showconf
        parser = sub
    parser.print_help(ctx.out)
    return 0


def run_version(ctx: Context) -> int:
    print(f"{PROG} version {__version__}", file=ctx.out)
    return 0


def run_connect(ctx: Context) -> int:
    from kilo.cli import connect  # the Kubernetes client: only for the command that runs it

    return connect.run(ctx.args, ctx.out, ctx.err)


def run_link(ctx: Context) -> int:
    return multicluster.run_link(ctx.args, ctx.out, ctx.err)


def run_unlink(ctx: Context) -> int:
    return multicluster.run_unlink(ctx.args, ctx.out, ctx.err)


@view
def run_list(ctx: Context) -> int:
    cluster = ctx.load()
    now = int(time.time())
    judge = ctx.now() is not None
    ready = ready_nodes(cluster.nodes, now if judge else None)
    t = None
    if ready:
        granularity = ctx.granularity(cluster)
        t = topology.build_topology(
            ready,
            ready_peers(cluster.peers),
            granularity=granularity,
            hostname=ready[0].name,
            subnet=ctx.subnet(cluster),
            leaders=ctx.leaders(ready),
        )
    nodes, peers = listing.rows(cluster, t, now=now, judge_liveness=judge)
    if ctx.args.output == "json":
        ctx.out.write(listing.to_json(nodes, peers) + "\n")
    else:
        ctx.out.write(listing.to_text(nodes, peers, now=now, wide=ctx.args.output == "wide"))
    return 0


def check_graph(args: argparse.Namespace) -> str | None:
    """What is wrong with ``graph``'s flags, before anything is read."""
    if args.link is not None and args.remote_kubeconfig is None:
        return "--link names the link between two clusters: give --remote-kubeconfig too"
    if args.remote_kubeconfig is None:
        return None
    if args.backend != "kubernetes":
        return "--remote-kubeconfig reads a live cluster: --backend must be kubernetes"
    problem = multicluster_core.check_link_name(args.link or multicluster.DEFAULT_LINK)
    return None if problem is None else f"--link: {problem}"


@view
def run_graph(ctx: Context) -> int:
    if ctx.args.remote_kubeconfig is not None:
        return _run_linked_graph(ctx)
    mesh = Mesh(ctx)
    # Any perspective gives the same graph; the first node by name keeps it deterministic.
    t = mesh.topology(mesh.nodes[0].name, port=ctx.args.port, keepalive=0)
    # Written as it is generated: a 5000-node full mesh is 500 MB of DOT.
    for chunk in graph.dot_chunks(t):
        ctx.out.write(chunk)
    ctx.out.write("\n")
    return 0


def _run_linked_graph(ctx: Context) -> int:
    """Both clusters and the link between them: each read as ``graph`` reads one."""
    from kilo.adapters import kubeconfig

    args = ctx.args
    servers = [
        str(kubeconfig.load(path).cluster.server)
        for path in (args.kubeconfig, args.remote_kubeconfig)
    ]
    if servers[0] == servers[1]:
        raise KiloError(
            f"--kubeconfig and --remote-kubeconfig both name {servers[0]}: "
            "one cluster, nothing to link"
        )
    remote = Context(
        argparse.Namespace(**{**vars(args), "kubeconfig": args.remote_kubeconfig}),
        ctx.out,
        ctx.err,
    )
    topologies = []
    for side in (ctx, remote):
        mesh = Mesh(side)
        topologies.append(mesh.topology(mesh.nodes[0].name, port=args.port, keepalive=0))
    text = graph.linked_dot(
        topologies[0],
        topologies[1],
        link=args.link or multicluster.DEFAULT_LINK,
        titles=(f"cluster 1: {servers[0]}", f"cluster 2: {servers[1]}"),
    )
    print(text, file=ctx.out)
    return 0


@view
def run_showconf(ctx: Context) -> int:
    args = ctx.args
    if args.output != "wireguard" and not args.as_peer:
        ctx.warn(f"--output {args.output} has no effect without --as-peer")
    mesh = Mesh(ctx)
    extra = [ip.parse_network(c) for c in args.allowed_ips]
    extra_ips = [c for c in extra if c is not None]
    if args.kind == "node":
        node = next((n for n in mesh.nodes if n.name == args.name), None)
        if node is None:
            raise KiloError(f"did not find any node named {quote(args.name)} in the cluster")
        t = mesh.topology(node.name, port=args.port, keepalive=node.persistent_keepalive)
        if all(s.key != node.key for s in t.segments) and all(
            p.public_key != node.key for p in t.peers
        ):
            print(f"Node {quote(args.name)} is not a leader node", file=ctx.err)
            return 0
        if not args.as_peer:
            ctx.out.write(wireguard.render(wireguard.node_config(t)))
            return 0
        as_peer = wireguard.location_as_peer(t)
        assert as_peer is not None
        return _print_as_peer(ctx, args.name, wireguard.with_extra_allowed_ips(as_peer, extra_ips))

    peer = next((p for p in mesh.peers if p.name == args.name), None)
    if peer is None:
        raise KiloError(f"did not find any peer named {quote(args.name)} in the cluster")
    t = mesh.topology(mesh.nodes[0].name, port=args.port, keepalive=peer.persistent_keepalive)
    if not args.as_peer:
        ctx.out.write(wireguard.render(wireguard.peer_config(t, peer.name)))
        return 0
    own = wireguard.WireGuardPeer(
        name=peer.name,
        public_key=peer.public_key,
        allowed_ips=peer.allowed_ips,
        endpoint=peer.endpoint,
        persistent_keepalive=peer.persistent_keepalive,
        preshared_key=peer.preshared_key,
    )
    return _print_as_peer(ctx, args.name, wireguard.with_extra_allowed_ips(own, extra_ips))


def _print_as_peer(ctx: Context, name: str, peer: wireguard.WireGuardPeer) -> int:
    output = ctx.args.output
    if output == "wireguard":
        ctx.out.write(wireguard.render_peers([peer]))
    elif output == "yaml":
        ctx.out.write(peerspec.to_yaml(peerspec.peer_object(peer, name)))
    else:
        ctx.out.write(peerspec.to_json(peerspec.peer_object(peer, name)))
    return 0


@view
def run_plan(ctx: Context) -> int:
    args = ctx.args
    mesh = Mesh(ctx)
    node = next((n for n in mesh.nodes if n.name == args.name), None)
    if node is None:
        known = mesh.cluster.node(args.name)
        why = " (it is not ready: it needs an endpoint, a key and a pod CIDR)" if known else ""
        raise KiloError(f"did not find any ready node named {quote(args.name)} in the cluster{why}")
    port = node.endpoint.port if node.endpoint is not None and node.endpoint.port else args.port
    service_cidrs = [c for c in (ip.parse_network(s) for s in args.service_cidr) if c is not None]
    t = mesh.topology(
        node.name, port=port, keepalive=node.persistent_keepalive, service_cidrs=service_cidrs
    )
    settings = plan.PlanSettings(
        interface=args.interface,
        private_interface=args.private_interface,
        encapsulation=Encapsulation(args.encapsulate),
        compatibility=Compatibility(args.compatibility),
        local=args.local,
        cni=args.cni,
        iptables_forward_rules=args.iptables_forward_rules,
        cni_path=args.cni_path,
    )
    node_plan = plan.plan_node(t, node, settings)
    if args.output == "json":
        ctx.out.write(plan.to_json(node_plan) + "\n")
    else:
        ctx.out.write(plan.to_text(node_plan))
    return 0
