"""``kgctl connect [NAME]``: join this (Linux) machine to the mesh as the Kilo Peer ``NAME``.

Composition root. Kilo's sequence (reference kilo-k8s-cli.md §4.6), with its fragile parts
fixed (each in docs/compatibility.md):

1. the private key: ``--private-key PATH``, else ``/var/lib/kilo/connect/NAME.key``; read
   if it exists (an unusable file is an error, never overwritten), else generated and
   *kept* (0600, directory 0700) so that a re-run has the key the Peer holds. Never logged.
2. the Peer: created (``allowedIPs: [--allowed-ip]``, ``persistentKeepalive``,
   ``publicKey``, no endpoint) when missing; used when it holds this machine's public key;
   otherwise refused, changing nothing (Kilo reuses it silently and nothing works).
3. the interface: an existing one is used as it is (a running wireguard-go, say) and never
   deleted; a missing one is created (kernel WireGuard, else ``wireguard-go`` as a child
   process) unless ``--create-interface=false``. Its address becomes ``--allowed-ip`` (as
   given: Kilo masks it, ``10.5.0.1/24`` would become the network address) and it is up.
4. the loop: Nodes and Peers are watched; the WireGuard config (only differences, never
   replace-peers) and routes (tracked in a state file next to the key) follow every change
   and every ``--resync-period``. A node whose DNS endpoint does not resolve gets no endpoint
   (WireGuard keeps what it learnt) instead of failing the whole sync as in Kilo.
5. SIGINT/SIGTERM: with ``--clean-up`` (the default) remove the routes, the interface if
   created here (else its peers and address), and the Peer if created here; exit 0. A
   wireguard-go started here always stops with the command.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from kilo.cli import arguments, logs
from kilo.errors import ConfigError, DataPlaneError, KiloError
from kilo.mesh import connect as plan_mod
from kilo.mesh import flags, gosyntax, ip, translate
from kilo.mesh.endpoint import Endpoint, is_dns1123_subdomain
from kilo.mesh.ip import IPAddress, IPInterface, IPNetwork
from kilo.mesh.keys import Key
from kilo.mesh.localnode import mesh_changed, peer_changed
from kilo.mesh.model import DEFAULT_MTU, Diagnostic, Node, Peer, ready_nodes, ready_peers
from kilo.mesh.routes import Device, Route, Rule
from kilo.mesh.text import shorten
from kilo.mesh.wgdevice import DeviceState
from kilo.mesh.wireguard import WireGuardConfig

if TYPE_CHECKING:
    # Imported at run time only when needed: --help and flag errors never pay for them.
    from lightkube.config.kubeconfig import SingleConfig

    from kilo.adapters.kubernetes import Event, Informer

DEFAULT_KEY_DIRECTORY = Path("/var/lib/kilo/connect")
DEFAULT_ALLOWED_IP = "10.10.10.10/32"
DEFAULT_INTERFACE = "kilo0"
DEFAULT_KEEPALIVE = 10
DEFAULT_RESYNC = "30s"
LOG_LEVELS = tuple(logs.LEVELS)
SOCKET_DIR = Path("/var/run/wireguard")
MIN_RESYNC_PERIOD = 1.0
MAX_KEEPALIVE = 65535
DEBOUNCE = 0.05
RESOLVE_TIMEOUT = 5.0
WIREGUARD_GO_START = 10.0
WIREGUARD_GO_STOP = 5.0


# --- the ports the connection drives (kilo.adapters' PeerStore, Links, RouteTable and
# WireGuard device; unit tests drive stand-ins) ------------------------------------------------


class PeerStorePort(Protocol):
    def get(self, name: str) -> dict[str, Any] | None: ...
    def create(self, obj: Mapping[str, Any]) -> dict[str, Any] | None: ...
    def delete(self, name: str) -> bool: ...
    def close(self) -> None: ...


class LinksPort(Protocol):
    def index(self, name: str) -> int | None: ...
    def create_wireguard(self, name: str, mtu: int) -> bool: ...
    def set_mtu(self, name: str, mtu: int) -> bool: ...
    def set_up(self, name: str, up: bool) -> bool: ...
    def set_address(self, name: str, cidr: IPInterface) -> bool: ...
    def delete_addresses(self, name: str) -> None: ...
    def delete(self, name: str) -> bool: ...
    def close(self) -> None: ...


class RoutesPort(Protocol):
    @property
    def state_error(self) -> str | None: ...
    def set(
        self, routes: Sequence[Route], rules: Sequence[Rule], devices: Mapping[Device, str]
    ) -> tuple[int, int]: ...
    def watch_deletions(self, callback: Callable[[], None]) -> Callable[[], None]: ...
    def clean_up(self) -> None: ...
    def close(self) -> None: ...


class DevicePort(Protocol):
    def get(self) -> DeviceState: ...
    def apply(self, desired: WireGuardConfig) -> bool: ...


# --- flags ---------------------------------------------------------------------------------


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _allowed_ip(text: str) -> IPInterface:
    parsed = ip.parse_interface(text)
    if parsed is None:
        raise argparse.ArgumentTypeError(f"invalid --allowed-ip {_q(text)}: not a CIDR")
    # This machine's address: it goes on the interface (the kernel refuses these for IPv6,
    # after the Peer exists) and into the Peer, whose allowed IPs every node routes here.
    kind = (
        "an unspecified"
        if parsed.ip.is_unspecified
        else "a loopback"
        if parsed.ip.is_loopback
        else "a multicast"
        if parsed.ip.is_multicast
        else ""
    )
    if kind:
        raise argparse.ArgumentTypeError(
            f"invalid --allowed-ip {_q(text)}: {kind} address cannot be this machine's "
            "address in the mesh"
        )
    if parsed.network.prefixlen == 0:
        raise argparse.ArgumentTypeError(
            f"invalid --allowed-ip {_q(text)}: a /0 would route every address to this machine"
        )
    return parsed


def _cidrs(text: str) -> list[IPNetwork]:
    result = []
    for item in text.split(","):
        parsed = ip.parse_network(item.strip())
        if parsed is None:
            raise argparse.ArgumentTypeError(f"invalid --allowed-ips {_q(item)}: not a CIDR")
        result.append(parsed)
    return result


def _duration(text: str) -> float:
    """A Go duration (``30s``, ``1m30s``, ``500ms``, ``0``, ``-1s``), in seconds."""
    return gosyntax.parse_duration(text) / 1e9


def _keepalive(text: str) -> int:
    """pflag's int syntax; 0..65535, what the Peer's webhook and WireGuard take."""
    value = gosyntax.parse_int(text)
    if not 0 <= value <= MAX_KEEPALIVE:
        raise ValueError(
            f"persistent keepalive must be in range [0:{MAX_KEEPALIVE}] seconds, but got {value}"
        )
    return value


def _log_level(text: str) -> str:
    if text not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"log level {text} unknown; possible values are: {', '.join(LOG_LEVELS)}"
        )
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``connect``'s own flags (kgctl adds the global ones: --port, --kubeconfig...)."""
    parser.add_argument(
        "name",
        nargs="?",
        type=arguments.object_name("peer"),
        default=None,
        metavar="NAME",
        help="the Peer to connect as (default: this machine's host name)",
    )
    parser.add_argument(
        "--allowed-ip",
        "-a",
        type=_allowed_ip,
        default=_allowed_ip(DEFAULT_ALLOWED_IP),
        metavar="CIDR",
        help="this machine's address in the mesh, kept as given (Kilo masks it); it becomes "
        f"the interface's address and the Peer's allowed IP (default: {DEFAULT_ALLOWED_IP})",
    )
    parser.add_argument(
        "--allowed-ips",
        type=_cidrs,
        action="extend",
        default=[],
        metavar="CIDR[,CIDR...]",
        help="more cluster CIDRs to route here, e.g. the service CIDR (repeatable)",
    )
    parser.add_argument(
        "--private-key",
        type=arguments.FILE,
        default="",
        metavar="PATH",
        help="the private key: read if it exists, else generated and written there (0600) "
        f"(default: {DEFAULT_KEY_DIRECTORY}/NAME.key)",
    )
    for flag, default, text in (
        (
            "--clean-up",
            True,
            "on SIGINT/SIGTERM remove the routes, the interface (or its peers and address) "
            "and the Peer this command created; --clean-up=false leaves them",
        ),
        (
            "--create-interface",
            True,
            "create the interface when it does not exist (kernel WireGuard, else wireguard-go); "
            "with false it must exist already",
        ),
    ):
        parser.add_argument(
            flag,
            type=arguments.go_bool(flag),
            nargs="?",
            const=True,
            default=default,
            metavar="BOOL",
            help=f"{text} (default: {str(default).lower()})",
        )
    parser.add_argument(
        "--mtu",
        type=arguments.mtu("--mtu", default=DEFAULT_MTU),
        default=DEFAULT_MTU,
        help=f"MTU of an interface this command creates; 0 is the default (default: {DEFAULT_MTU})",
    )
    parser.add_argument(
        "--resync-period",
        type=arguments.go_value("--resync-period", _duration),
        default=_duration(DEFAULT_RESYNC),
        metavar="DURATION",
        help="how often to re-apply everything besides on changes; at least every "
        f"{MIN_RESYNC_PERIOD:g} s (default: {DEFAULT_RESYNC})",
    )
    parser.add_argument(
        "--interface",
        "-i",
        type=arguments.interface_name("--interface"),
        default=DEFAULT_INTERFACE,
        help=f"the WireGuard interface (default: {DEFAULT_INTERFACE})",
    )
    parser.add_argument(
        "--persistent-keepalive",
        type=arguments.go_value("--persistent-keepalive", _keepalive),
        default=DEFAULT_KEEPALIVE,
        metavar="SECONDS",
        help="keepalive of a Peer this command creates, and towards the nodes "
        f"(default: {DEFAULT_KEEPALIVE})",
    )
    parser.add_argument(
        "--log-level",
        type=arguments.Value(_log_level, choices=LOG_LEVELS),
        default="info",
        metavar="LEVEL",
        help=f"one of {', '.join(LOG_LEVELS)} (default: info); logs are JSON lines on stdout",
    )


def check_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with a combination of ``connect``'s flags, or ``None``."""
    if args.allowed_ip.version == 6:
        problem = flags.mtu_problem(args.mtu, ipv6=True, minimum=flags.MIN_IPV4_MTU)
        if problem:
            return (
                f"invalid --mtu {args.mtu} with the IPv6 --allowed-ip {args.allowed_ip}: {problem}"
            )
    return None


# --- helpers ---------------------------------------------------------------------------------


def resolve(host: str, timeout: float = RESOLVE_TIMEOUT) -> IPAddress | None:
    """An IP for ``host`` (IPv4 preferred, as Go), ``None`` on any failure or after timeout."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        infos = pool.submit(socket.getaddrinfo, host, None, 0, socket.SOCK_DGRAM).result(timeout)
    except (OSError, concurrent.futures.TimeoutError, UnicodeError):
        return None
    finally:
        pool.shutdown(wait=False)
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    return next((a for a in addresses if a.version == 4), addresses[0] if addresses else None)


def _hostname() -> str:
    try:
        name = socket.gethostname()
    except OSError as exc:
        raise ConfigError(f"could not determine hostname: {exc.strerror or exc}") from exc
    if not name:
        raise ConfigError("could not determine hostname: it is empty; give NAME")
    return name


# --- the command -----------------------------------------------------------------------------


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if not sys.platform.startswith("linux"):
        raise KiloError("this command is not supported on this OS")
    if args.backend != "kubernetes":
        raise ConfigError("connect needs --backend kubernetes: it creates a Peer")
    name = args.name or _hostname()
    if not is_dns1123_subdomain(name):
        raise ConfigError(
            f"peer name {_q(name)} is not a valid Kubernetes object name (lower-case letters, "
            "digits, '-' and '.'); give NAME"
        )
    log = logs.configure(args.log_level, out)
    return asyncio.run(Connection(args, name, log, err).run())


class Connection:
    def __init__(self, args: argparse.Namespace, name: str, log: logs.Logger, err: TextIO) -> None:
        self.args = args
        self.name = name
        self.log = log
        self.err = err
        self.interface: str = args.interface
        self.allowed_ip: IPInterface = args.allowed_ip
        self.subnet = None if args.subnet is None else ip.parse_network(args.subnet)
        period = float(args.resync_period)
        if period < MIN_RESYNC_PERIOD:
            # Kilo's loop re-syncs without pause for 0 or less; changes are watched anyway.
            log.warning(
                "resync period raised to the minimum",
                fields={"requested": f"{period:g}s", "used": f"{MIN_RESYNC_PERIOD:g}s"},
            )
            period = MIN_RESYNC_PERIOD
        self.resync_period = period
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
        self.child: subprocess.Popen[bytes] | None = None
        self.links: LinksPort | None = None
        self.routes: RoutesPort | None = None
        self.device: DevicePort | None = None
        self.nodes: dict[str, Node] = {}
        self.peers: dict[str, Peer] = {}
        self._versions: dict[tuple[str, str], object] = {}
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
        env = {**os.environ, "WG_PROCESS_FOREGROUND": "1"}
        # Its own messages go to stderr: stdout carries only our JSON lines.
        self.child = subprocess.Popen(
            [program, self.interface],
            stdin=subprocess.DEVNULL,
            stdout=self.err.fileno() if _has_fileno(self.err) else subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # a terminal's Ctrl-C reaches us; we stop it in order
        )
        sock = SOCKET_DIR / f"{self.interface}.sock"
        deadline = time.monotonic() + WIREGUARD_GO_START
        while not (sock.exists() and links.index(self.interface) is not None):
            code = self.child.poll()
            if code is not None:
                raise DataPlaneError(
                    f"wireguard-go {self.interface} exited with status {code} before creating "
                    "the interface (its messages are above, on stderr)"
                )
            if time.monotonic() > deadline:
                raise DataPlaneError(
                    f"wireguard-go {self.interface} did not create the interface and {sock} "
                    f"within {WIREGUARD_GO_START:g} s"
                )
            time.sleep(0.05)
        self.log.info(
            "started wireguard-go", fields={"interface": self.interface, "pid": self.child.pid}
        )

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

    def _report(self, kind: str, event: Event, diagnostics: Sequence[Diagnostic]) -> None:
        """Warn once per object version about what could not be used."""
        key = (kind, event.name)
        version = event.obj.get("metadata", {}).get("resourceVersion")
        if not diagnostics:
            self._versions.pop(key, None)
            return
        if self._versions.get(key) == version:
            return
        self._versions[key] = version
        for d in diagnostics:
            self.log.warning(
                f"{d.kind} {d.name}: {d.field} {d.problem}",
                fields={"kind": d.kind, "name": d.name, "field": d.field, "value": d.value},
            )

    def _on_node(self, event: Event) -> bool:
        new = None
        if event.type != "DELETED":
            result = translate.translate_node(
                event.obj, topology_label=self.args.topology_label, port=self.args.port
            )
            self._report("node", event, result.diagnostics)
            new = result.value
        else:
            self._report("node", event, ())
        old = self.nodes.pop(event.name, None)
        if new is not None:
            self.nodes[event.name] = new
        return mesh_changed(old, new, int(time.time()))

    def _on_peer(self, event: Event) -> bool:
        new = None
        if event.type != "DELETED":
            result = translate.translate_peer(event.obj)
            self._report("peer", event, result.diagnostics)
            new = result.value
        else:
            self._report("peer", event, ())
        old = self.peers.pop(event.name, None)
        if new is not None:
            self.peers[event.name] = new
        return peer_changed(old, new)

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
            await asyncio.to_thread(self.sync, list(self.nodes.values()), list(self.peers.values()))

    def _resolved(self, endpoint: Endpoint | None, what: str) -> Endpoint | None:
        if endpoint is None or endpoint.resolved or not endpoint.addr:
            return endpoint
        address = resolve(endpoint.host)
        if address is None:
            self._warn_once(
                f"failed to resolve the endpoint of {what}; its WireGuard peer gets no endpoint "
                f"until it resolves ({endpoint.addr})"
            )
            return endpoint
        return endpoint.resolved_to(address)

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
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(WIREGUARD_GO_STOP)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self.log.info("stopped wireguard-go", fields={"pid": child.pid})


_KILO_CLEAN_UP_ERRORS = {
    "the routes": "failed to clean up routes",
    "the interface": "failed to remove WireGuard interface",
    "the peer": "failed to delete peer",
}


def _has_fileno(stream: TextIO) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True
