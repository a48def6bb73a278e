"""A Kilo testbed in network namespaces: clouds, a NATed office, a laptop, a control plane.

The end-to-end tests, the agent benchmark and ``kilo-sandbox`` all build on
:class:`Testbed`. Everything it creates carries one short run prefix (three letters + 6 hex
digits: ``ktb…`` for the tests' runs, random; the sandbox's is derived from its directory) so
that a crashed run can be recognised and removed (:func:`cleanup_stale` for the tests' runs,
whose owner process is recorded in ``/run/kilo-e2e``; :func:`remove_run` for any prefix)
without touching anyone else's namespaces. A testbed outlives the process that built it
unless :meth:`Testbed.close` is called: every process it starts is in a session of its own.

Topology (addresses are documentation and private ranges that exist only inside our
namespaces)::

    this process ── <run>h 198.51.100.x/30 ── cp (etcd + kube-apiserver, 203.0.113.2)
                                                │
    internet: bridge br0, router 203.0.113.1 ───┼── public nodes  wan0 203.0.113.10+
                                                ├── NAT gateways  wan0 203.0.113.100+
                                                └── laptops       wan0 203.0.113.200+
    location i: bridge br0 in <run>-<loc>-lan, 172.16.i.0/24, nodes lan0 172.16.i.10+,
                NAT gateway 172.16.i.1 (MASQUERADE to its wan0, inside its namespace only)

Network safety: the only link in the host namespace is the veth to ``cp`` (one /30 that
overlaps no host route or address); ``cp`` forwards nothing and has no route beyond that
/30, so no packet of the testbed can reach the host's uplink, and the host reaches only the
API server.

Every node and laptop is one long-lived process, the holder: ``unshare -m --propagation
private`` in the node's network namespace, tmpfs on the node's private state directories
and its own ``/etc/hosts``, then ``exec wireguard-go kilo0`` in the foreground. Everything
else for that machine runs through ``nsenter -t <holder> -m -n`` and its files are reached
through ``/proc/<holder>/root``.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from lightkube import ApiError, Client, KubeConfig
from lightkube.codecs import load_all_yaml
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.core_v1 import Node, ServiceAccount

from kilo.errors import SandboxError
from kilo.sandbox import kubelet, podman, prerequisites
from kilo.sandbox.controlplane import (
    AttachedControlPlane,
    Attachment,
    ControlPlane,
    build_binaries,
)

# Package data: links to manifests/crds.yaml and manifests/rbac.yaml, resolved when the
# package is built, so that an installed package has them too.
MANIFESTS = Path(__file__).resolve().parent / "manifests"
FAMILY = "ktb"
PREFIX = re.compile(r"[a-z]{3}[0-9a-f]{6}")
KEEP_ENV = "KILO_E2E_KEEP"
# Who owns which run (pid and start time): /run is a tmpfs, like /run/netns.
OWNERS = Path("/run/kilo-e2e")
CNI_BIN = Path("/usr/lib/cni")
CNI_CONFLIST = "/etc/cni/net.d/10-kilo.conflist"
# Where an image's kg finds the node's kubeconfig, as in Kilo's DaemonSets.
IMAGE_KUBECONFIG = "/etc/kubernetes/kubeconfig"
WG_INTERFACE = "kilo0"
TOPOLOGY_LABEL = "topology.kubernetes.io/region"
PRIVATE_DIRS = ("/var/run/wireguard", "/var/lib/kilo", "/var/lib/cni", "/etc/cni/net.d")
INTERNET = ipaddress.IPv4Network("203.0.113.0/24")
ROUTER = "203.0.113.1"
CP_WAN = "203.0.113.2"
POD_CIDRS = ipaddress.IPv4Network("10.42.0.0/16")
# The host<->cp link. The host may itself live in 192.0.2.0/24 (this one does), so any /30
# that overlaps a host route or address is skipped.
HOST_LINK_RANGES = (
    ipaddress.IPv4Network("198.51.100.0/24"),
    ipaddress.IPv4Network("192.0.2.0/24"),
)
IPTABLES_TABLES = ("filter", "nat", "mangle", "raw")

# Kilo's kubeadm template: no IPAM ranges, the agent fills them in from the pod CIDR.
KILO_CNI_TEMPLATE: dict[str, Any] = {
    "cniVersion": "0.4.0",
    "name": "kilo",
    "plugins": [
        {
            "name": "kubernetes",
            "type": "bridge",
            "bridge": "kube-bridge",
            "isDefaultGateway": True,
            "forceAddress": True,
            "mtu": 1420,
            "ipam": {"type": "host-local"},
        },
        {"type": "portmap", "snat": True, "capabilities": {"portMappings": True}},
    ],
}

T = TypeVar("T")
_SIGTERM = signal.SIGTERM
_SIGKILL = signal.SIGKILL
NAME = re.compile(r"[a-z][a-z0-9-]{0,30}")


class TestbedError(SandboxError):
    """The testbed could not be built, used or removed as asked."""

    __test__ = False  # not a pytest test class despite the name


class CommandError(TestbedError):
    def __init__(self, argv: Sequence[str], returncode: int | None, stdout: str, stderr: str):
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        status = "timed out" if returncode is None else f"exited with {returncode}"
        super().__init__(
            f"{' '.join(self.argv)} {status}: {stderr.strip() or stdout.strip() or '(no output)'}"
        )


@dataclass(frozen=True)
class Location:
    """A site: ``nodes`` nodes on one LAN, either each with a public address or (``nat``)
    all behind one masquerading gateway. ``annotations`` go on each of its Node objects.

    ``wireguard`` is ``userspace`` (each node's holder runs ``wireguard-go kilo0`` and
    ``kg`` gets ``--create-interface=false``) or ``kernel`` (``kg`` creates kernel
    WireGuard itself, as by default: only on a kernel with the module). With ``subnets``
    above 1 the LAN's /24 is cut into that many equal subnets, node ``i`` in subnet
    ``(i - 1) % subnets``, all on the one link (a route for the whole /24 on it stands for
    the cloud's router), for ``--encapsulate=crosssubnet``."""

    name: str
    nodes: int = 2
    nat: bool = False
    annotations: Mapping[str, str] = field(default_factory=dict)
    wireguard: str = "userspace"
    subnets: int = 1


@dataclass(eq=False)
class Machine:
    """A node or a laptop: a network namespace plus its holder process (wireguard-go)."""

    name: str
    netns: str
    process: subprocess.Popen[bytes] | None = None  # None until the holder is started
    location: str | None = None
    lan_ip: str | None = None
    wan_ip: str | None = None
    pod_cidr: str | None = None
    userspace: bool = True  # the holder runs wireguard-go (else kg creates kernel WireGuard)

    @property
    def pid(self) -> int:
        if self.process is None:
            raise TestbedError(f"{self.name}: its holder process is not started")
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass(frozen=True)
class Pod:
    name: str
    node: str
    netns: str
    container_id: str
    ip: str
    gateway: str
    result: Mapping[str, Any]


@dataclass(frozen=True)
class Echo:
    """One TCP exchange: what the client got back, and the client address the server saw."""

    reply: str
    peer: str


def wait_for(
    predicate: Callable[[], T],
    *,
    timeout: float,
    message: str,
    interval: float = 0.05,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll until ``predicate()`` is truthy and return it; AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
        except ignoring as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (after {timeout:g} s; last value: {last!r})")
        time.sleep(interval)


# --- small process helpers ---------------------------------------------------------------------


def _run(
    argv: Sequence[str], *, check: bool = True, timeout: float = 30, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError(argv, None, _text(exc.stdout), _text(exc.stderr)) from exc
    if check and result.returncode != 0:
        raise CommandError(argv, result.returncode, result.stdout, result.stderr)
    return result


def _text(data: str | bytes | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks: with the pid, it names one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def alive(pid: int) -> bool:
    return process_start(pid) is not None


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM (whole group), then SIGKILL after ``timeout``; the exit code."""
    if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()
    # The group may still hold children of an exited leader.
    _signal_group(process, signal.SIGKILL)
    return process.returncode


def list_namespaces() -> list[str]:
    out = _run(["ip", "-j", "netns", "list"]).stdout.strip()
    return [entry["name"] for entry in json.loads(out)] if out else []


def _kill_namespace_processes(netns: str, timeout: float = 10) -> None:
    result = _run(["ip", "netns", "pids", netns], check=False)
    pids = [int(p) for p in result.stdout.split()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: not any(alive(p) for p in pids),
        timeout=timeout,
        message=f"processes {pids} in namespace {netns} survive SIGKILL",
    )


def link_exists(name: str) -> bool:
    return _run(["ip", "link", "show", "dev", name], check=False).returncode == 0


def remove_namespaces(namespaces: Iterable[str], host_link: str | None) -> list[str]:
    """Kill what runs in them and delete them; the names still there afterwards."""
    namespaces = list(namespaces)
    existing = set(list_namespaces())
    for netns in namespaces:
        if netns in existing:
            with contextlib.suppress(AssertionError):
                _kill_namespace_processes(netns)
    if host_link and link_exists(host_link):
        _run(["ip", "link", "del", "dev", host_link], check=False)
    for netns in namespaces:
        if netns in existing:
            _run(["ip", "netns", "del", netns], check=False)
    left = set(list_namespaces())
    return [n for n in namespaces if n in left]


def run_namespaces(prefix: str) -> list[str]:
    """The namespaces of run ``prefix`` (``<prefix>-<role>``)."""
    return [n for n in list_namespaces() if n.startswith(f"{prefix}-")]


def _read_owner(run: str) -> dict[str, Any]:
    try:
        data = json.loads((OWNERS / f"{run}.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _owner_alive(owner: Mapping[str, Any]) -> bool:
    pid = owner.get("pid")
    return isinstance(pid, int) and process_start(pid) == owner.get("start")


def cleanup_stale(prefix: str = FAMILY) -> list[str]:
    """Remove what crashed runs left (namespaces named ``<prefix>…``, their processes, the
    host veth, the workdir unless KILO_E2E_KEEP is set); runs whose owner still lives are
    left alone. Returns the runs removed."""
    runs: dict[str, list[str]] = {}
    for netns in list_namespaces():
        if netns.startswith(prefix) and re.fullmatch(rf"{FAMILY}[0-9a-f]{{6}}-.+", netns):
            runs.setdefault(netns.split("-", 1)[0], []).append(netns)
    if OWNERS.is_dir():
        for record in OWNERS.glob(f"{FAMILY}*.json"):
            if record.stem.startswith(prefix):
                runs.setdefault(record.stem, [])
    removed = []
    for run, namespaces in sorted(runs.items()):
        owner = _read_owner(run)
        if _owner_alive(owner):
            continue
        remove_namespaces(namespaces, f"{run}h")
        workdir = owner.get("workdir")
        if isinstance(workdir, str) and not os.environ.get(KEEP_ENV):
            shutil.rmtree(workdir, ignore_errors=True)
        with contextlib.suppress(OSError):
            (OWNERS / f"{run}.json").unlink()
        removed.append(run)
    return removed


def _host_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the host namespace routes or has an address in (not default)."""
    networks = []
    for route in json.loads(_run(["ip", "-4", "-j", "route", "show", "table", "all"]).stdout):
        dst = route.get("dst", "default")
        if dst != "default":
            with contextlib.suppress(ValueError):
                networks.append(ipaddress.IPv4Network(dst, strict=False))
    for link in json.loads(_run(["ip", "-4", "-j", "addr"]).stdout):
        for addr in link.get("addr_info", []):
            networks.append(
                ipaddress.IPv4Network(f"{addr['local']}/{addr['prefixlen']}", strict=False)
            )
    return networks


def _free_host_link_subnet() -> ipaddress.IPv4Network:
    used = _host_networks()
    for block in HOST_LINK_RANGES:
        for subnet in block.subnets(new_prefix=30):
            if not any(subnet.overlaps(n) for n in used):
                return subnet
    raise TestbedError(
        "no free /30 for the host<->cp link in "
        + ", ".join(str(b) for b in HOST_LINK_RANGES)
        + " (every one overlaps a host route or address)"
    )


def _resolve_in(root: Path, path: str) -> Path:
    """``path`` under ``root`` (a /proc/<pid>/root), with absolute symbolic links such as
    /var/run -> /run kept under ``root``: the kernel would resolve them in our own root."""
    parts = [p for p in path.split("/") if p]
    current = root
    for _ in range(40):
        for i, part in enumerate(parts):
            candidate = current / part
            if part != ".." and candidate.is_symlink():
                target = os.readlink(candidate)
                rest = parts[i + 1 :]
                if target.startswith("/"):
                    current, parts = root, [p for p in target.split("/") if p] + rest
                else:
                    parts = [p for p in target.split("/") if p] + rest
                break
            current = candidate
        else:
            return current
    raise TestbedError(f"too many symbolic links in {path} under {root}")


def from_dict(resource: Any, data: dict[str, Any]) -> Any:
    return resource.from_dict(data)


# --- the testbed -------------------------------------------------------------------------------


class Testbed:
    """Build with :meth:`start` (or ``with Testbed(...) as bed``), remove with :meth:`close`."""

    __test__ = False

    def __init__(
        self,
        locations: Sequence[Location],
        *,
        binaries: Path | None = None,
        prefix: str | None = None,
        workdir: Path | None = None,
        owned: bool = True,
        attached_plane: Path | None = None,
        encapsulate: str | None = "never",
    ) -> None:
        """``prefix`` (default: a fresh ``ktb…``) names every namespace and the host link;
        ``workdir`` (default ``$TMPDIR/kilo-e2e-<prefix>``, removed by :meth:`close`) holds
        logs, kubeconfigs and the control plane's files. An ``owned`` testbed records this
        process as its owner, so that :func:`cleanup_stale` removes it once this process is
        gone; a testbed meant to outlive its builder (the sandbox) is not owned.

        ``attached_plane`` is the directory of a control plane that runs elsewhere (see
        :class:`AttachedControlPlane`; the host of a virtual machine): instead of starting
        one, ``cp`` forwards the API server's port, on its own addresses, to it through the
        attachment's NIC, and forwards nothing else. ``encapsulate`` is the agents'
        ``--encapsulate`` (None: Kilo's default, ``always``; IPIP needs a kernel with it)."""
        names = [loc.name for loc in locations]
        if len(set(names)) != len(names):
            raise TestbedError(f"location names must be unique: {names}")
        for loc in locations:
            if not re.fullmatch(r"[a-z][a-z0-9]{0,11}", loc.name):
                raise TestbedError(f"location name {loc.name!r}: want [a-z][a-z0-9]{{0,11}}")
            if not 1 <= loc.nodes <= 90:
                raise TestbedError(f"location {loc.name}: 1 to 90 nodes, not {loc.nodes}")
            if loc.wireguard not in ("userspace", "kernel"):
                raise TestbedError(
                    f"location {loc.name}: wireguard is userspace or kernel, not {loc.wireguard!r}"
                )
            if loc.subnets not in (1, 2, 4) or (loc.subnets > 1 and loc.nat):
                raise TestbedError(
                    f"location {loc.name}: 1, 2 or 4 subnets (a NATed site has one), "
                    f"not {loc.subnets}"
                )
        self.locations = list(locations)
        self.binaries = binaries
        self.attached_plane = attached_plane
        self.encapsulate = encapsulate
        if prefix is not None and not PREFIX.fullmatch(prefix):
            raise TestbedError(f"prefix {prefix!r}: want {PREFIX.pattern}")
        self.prefix = prefix or self._new_prefix()
        self.owned = owned
        self.host_link = f"{self.prefix}h"
        self.workdir = workdir or Path(tempfile.gettempdir()) / f"kilo-e2e-{self.prefix}"
        self.logs = self.workdir / "logs"
        self.nodes: dict[str, Machine] = {}
        self.laptops: dict[str, Machine] = {}
        self.pods: dict[str, Pod] = {}
        self.gateways: dict[str, str] = {}  # NAT location -> gateway wan IP
        self.plane: ControlPlane | None = None
        self._attachment: Attachment | None = (
            None if attached_plane is None else Attachment.load(attached_plane)
        )
        self.host_ip = ""
        self.cp_ip = ""
        self.node_kubeconfig = self.workdir / "node.kubeconfig"
        self._namespaces: list[str] = []  # in creation order
        self._roles: dict[str, str] = {}  # short role name -> namespace
        self._agents: dict[str, subprocess.Popen[bytes]] = {}
        self._containers: dict[str, str] = {}  # node -> the podman container of its kg
        self._processes: list[subprocess.Popen[bytes]] = []  # servers and the like
        self._client: Client | None = None
        self._conflists: dict[str, Mapping[str, Any]] = {}  # pod -> the conflist of its ADD
        self._plane_error: BaseException | None = None
        self._veths = 0
        self._wan_hosts = {"node": 10, "gateway": 100, "laptop": 200}
        self._started = False
        self._claimed = False  # from here on, close() has something to remove
        self._plane_thread: threading.Thread | None = None

    @staticmethod
    def _new_prefix() -> str:
        taken = {n.split("-", 1)[0] for n in list_namespaces()}
        while True:
            prefix = f"{FAMILY}{uuid.uuid4().hex[:6]}"
            if prefix not in taken and not _read_owner(prefix):
                return prefix

    # --- lifecycle ---

    def __enter__(self) -> Testbed:
        return self.start()

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            self.close()
        except TestbedError as error:
            if exc is None:
                raise
            exc.add_note(f"and the testbed teardown failed: {error}")

    def start(self) -> Testbed:
        if self._started:
            raise TestbedError(f"testbed {self.prefix} was already started")
        self._started = True
        try:
            self._check_host()
            self._claim()
            self._build_internet()
            self._plane_thread = self._start_control_plane()
            for index, location in enumerate(self.locations):
                self._build_location(index, location)
            self._write_hosts_file()
            for node in self.nodes.values():
                self._start_holder(node)
            for node in self.nodes.values():
                self._await_holder(node)
                self.write_cni_config(node.name, KILO_CNI_TEMPLATE)
            self._plane_thread.join()
            if self._plane_error is not None:
                raise TestbedError(
                    f"testbed {self.prefix}: the control plane did not start: {self._plane_error}"
                ) from self._plane_error
            self._populate_api()
        except BaseException as exc:
            try:
                self.close()
            except TestbedError as error:
                exc.add_note(f"and the testbed teardown failed: {error}")
            raise
        return self

    def close(self) -> None:
        """Remove everything; safe after a partial start and when called twice."""
        if not self._claimed:
            return
        problems: list[str] = []
        self.close_client()
        for name in list(self._agents):
            with contextlib.suppress(TestbedError):
                self.stop_agent(name, timeout=10)
        for node in list(self._containers):
            try:
                self._remove_container(node)
            except TestbedError as exc:
                problems.append(f"node {node}: the agent's container was not removed: {exc}")
        for process in self._processes:
            _terminate(process, 5)
        self._processes.clear()
        for pod in list(self.pods.values()):
            try:
                self.remove_pod(pod.name)
            except TestbedError as exc:
                problems.append(f"pod {pod.name}: CNI DEL failed: {exc}")
                self.pods.pop(pod.name, None)
        for machine in [*self.laptops.values(), *self.nodes.values()]:
            if machine.process is not None:
                _terminate(machine.process, 5)
        if self.plane is not None:
            self.plane.stop()
            if self._plane_thread is not None:
                # A start still under way ends once its processes are gone; then nothing
                # it started late can survive.
                self._plane_thread.join(150)
                self.plane.stop()
        ours = run_namespaces(self.prefix)
        namespaces = list(dict.fromkeys([*reversed(self._namespaces), *ours]))
        left = remove_namespaces(namespaces, self.host_link)
        if left:
            problems.append(f"namespaces not removed: {left}")
        if link_exists(self.host_link):
            problems.append(f"host link {self.host_link} not removed")
        self._namespaces = left
        with contextlib.suppress(OSError):
            (OWNERS / f"{self.prefix}.json").unlink()
        if not os.environ.get(KEEP_ENV):
            shutil.rmtree(self.workdir, ignore_errors=True)
        if problems:
            raise TestbedError(f"testbed {self.prefix}: " + "; ".join(problems))

    def _check_host(self) -> None:
        problem = prerequisites.missing(
            prerequisites.observe(cni_dir=str(CNI_BIN)), subject="the testbed"
        )
        if problem is not None:
            raise TestbedError(problem)

    def _claim(self) -> None:
        """Record our ownership, then pick and create the host link under a lock (parallel
        runs must not choose the same /30)."""
        if run_namespaces(self.prefix) or link_exists(self.host_link):
            raise TestbedError(f"testbed {self.prefix} exists already (its namespaces or link)")
        self._claimed = True
        self.logs.mkdir(parents=True)
        OWNERS.mkdir(mode=0o755, exist_ok=True)
        if self.owned:
            start = process_start(os.getpid())
            record = {"pid": os.getpid(), "start": start, "workdir": str(self.workdir)}
            (OWNERS / f"{self.prefix}.json").write_text(json.dumps(record))
        cp = self._add_namespace("cp")
        with open(OWNERS / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            subnet = self._host_link_subnet()
            host, cp_ip = (str(a) for a in subnet.hosts())
            _run(
                ["ip", "link", "add", self.host_link, "type", "veth", "peer", "host0", "netns", cp]
            )
            _run(["ip", "addr", "add", f"{host}/30", "dev", self.host_link])
        self.host_ip, self.cp_ip = host, cp_ip
        _run(["ip", "link", "set", self.host_link, "up"])
        self._ip(cp, "addr", "add", f"{cp_ip}/30", "dev", "host0")
        self._ip(cp, "link", "set", "host0", "up")

    def _host_link_subnet(self) -> ipaddress.IPv4Network:
        if self._attachment is None:
            return _free_host_link_subnet()
        # The attached API server's certificate names this link's cp side.
        subnet = ipaddress.IPv4Network(self._attachment.host_link)
        if any(subnet.overlaps(n) for n in _host_networks()):
            raise TestbedError(f"the attached control plane's host link {subnet} is taken here")
        return subnet

    # --- network plumbing ---

    @staticmethod
    def _check_name(name: str) -> None:
        if not NAME.fullmatch(name):
            raise TestbedError(f"name {name!r}: want {NAME.pattern}")

    def _add_namespace(self, role: str) -> str:
        if role in self._roles:
            raise TestbedError(f"testbed {self.prefix}: {role!r} exists already")
        netns = f"{self.prefix}-{role}"
        _run(["ip", "netns", "add", netns])
        self._namespaces.append(netns)
        self._roles[role] = netns
        self._ip(netns, "link", "set", "lo", "up")
        self._sysctl(netns, "net.ipv4.ip_forward", "0")
        return netns

    @staticmethod
    def _ip(netns: str, *args: str) -> str:
        return _run(["ip", "-n", netns, *args]).stdout

    @staticmethod
    def _sysctl(netns: str, key: str, value: str) -> None:
        _run(["ip", "netns", "exec", netns, "sysctl", "-qw", f"{key}={value}"])

    def _plug(self, netns: str, ifname: str, bridge_ns: str, alias: str) -> None:
        """A veth from ``netns`` (named ``ifname``) into br0 of ``bridge_ns``."""
        self._veths += 1
        port = f"v{self._veths}"
        self._ip(netns, "link", "add", ifname, "type", "veth", "peer", port, "netns", bridge_ns)
        self._ip(bridge_ns, "link", "set", port, "alias", alias)
        self._ip(bridge_ns, "link", "set", port, "master", "br0", "up")
        self._ip(netns, "link", "set", ifname, "up")

    def _bridge(self, netns: str) -> None:
        self._ip(netns, "link", "add", "br0", "type", "bridge")
        self._ip(netns, "link", "set", "br0", "up")

    def _wan_ip(self, kind: str) -> str:
        host = self._wan_hosts[kind]
        limit = {"node": 100, "gateway": 200, "laptop": 255}[kind]
        if host >= limit:
            raise TestbedError(f"testbed {self.prefix}: too many {kind}s on {INTERNET}")
        self._wan_hosts[kind] = host + 1
        return str(INTERNET[host])

    def _attach_wan(self, netns: str, alias: str, ip: str) -> None:
        self._plug(netns, "wan0", self._roles["internet"], alias)
        self._ip(netns, "addr", "add", f"{ip}/{INTERNET.prefixlen}", "dev", "wan0")

    def _build_internet(self) -> None:
        inet = self._add_namespace("internet")
        self._bridge(inet)
        self._ip(inet, "addr", "add", f"{ROUTER}/{INTERNET.prefixlen}", "dev", "br0")
        self._sysctl(inet, "net.ipv4.ip_forward", "1")
        self._attach_wan(self._roles["cp"], "cp", CP_WAN)

    def _start_control_plane(self) -> threading.Thread:
        """etcd + kube-apiserver in ``cp``, started while the rest of the network is built
        (or, attached, the forwarding to them and a wait until they answer)."""
        if self.attached_plane is not None:
            self.plane = AttachedControlPlane(
                self.attached_plane, workdir=self.workdir / "controlplane", server_host=self.cp_ip
            )
            self._forward_to_attached_plane(self.plane.attachment)
        else:
            self.plane = ControlPlane(
                self.binaries or build_binaries(),
                workdir=self.workdir / "controlplane",
                netns=self._roles["cp"],
                bind_address="0.0.0.0",
                advertise_address=CP_WAN,
                server_host=self.cp_ip,
                extra_sans=(self.cp_ip,),
            )
        plane = self.plane

        def start() -> None:
            try:
                plane.start()
            except BaseException as exc:
                self._plane_error = exc

        thread = threading.Thread(target=start, name=f"{self.prefix}-controlplane", daemon=True)
        thread.start()
        return thread

    def _forward_to_attached_plane(self, attachment: Attachment) -> None:
        """Move the attachment's NIC into ``cp`` and forward the API server's port on
        ``cp``'s own addresses (CP_WAN, the host link) to it; cp forwards nothing else.
        (Deleting ``cp`` gives the NIC back to the initial namespace.)"""
        cp = self._roles["cp"]
        nic = attachment.nic
        prefix = ipaddress.IPv4Network(attachment.link).prefixlen
        _run(["ip", "link", "set", nic, "netns", cp])
        self._ip(cp, "addr", "add", f"{attachment.guest_ip}/{prefix}", "dev", nic)
        self._ip(cp, "link", "set", nic, "up")
        self._sysctl(cp, "net.ipv4.ip_forward", "1")
        port = str(attachment.port)
        to = f"{attachment.address}:{port}"
        rules = [
            "*nat",
            *(
                f"-A PREROUTING -d {ip}/32 -p tcp --dport {port} -j DNAT --to-destination {to}"
                for ip in (CP_WAN, self.cp_ip)
            ),
            f"-A POSTROUTING -o {nic} -j MASQUERADE",
            "COMMIT",
            "*filter",
            ":FORWARD DROP [0:0]",
            f"-A FORWARD -o {nic} -d {attachment.address}/32 -p tcp --dport {port} -j ACCEPT",
            f"-A FORWARD -i {nic} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
            "COMMIT",
        ]
        _run(["ip", "netns", "exec", cp, "iptables-restore"], stdin="\n".join(rules) + "\n")

    def _build_location(self, index: int, location: Location) -> None:
        lan = ipaddress.IPv4Network(f"172.16.{index}.0/24")
        lan_ns = self._add_namespace(f"{location.name}-lan")
        self._bridge(lan_ns)
        gateway = None
        if location.nat:
            gateway = str(lan[1])
            gw = self._add_namespace(f"{location.name}-gw")
            self._plug(gw, "lan0", lan_ns, f"{location.name}-gw")
            self._ip(gw, "addr", "add", f"{gateway}/24", "dev", "lan0")
            wan = self._wan_ip("gateway")
            self._attach_wan(gw, f"{location.name}-gw", wan)
            self._ip(gw, "route", "add", "default", "via", ROUTER)
            self._sysctl(gw, "net.ipv4.ip_forward", "1")
            _run(
                [
                    *("ip", "netns", "exec", gw, "iptables", "-t", "nat", "-A", "POSTROUTING"),
                    *("-s", str(lan), "-o", "wan0", "-j", "MASQUERADE"),
                ]
            )
            self.gateways[location.name] = wan
        subnets = list(lan.subnets(new_prefix=lan.prefixlen + location.subnets.bit_length() - 1))
        for i in range(1, location.nodes + 1):
            name = f"{location.name}-{i}"
            netns = self._add_namespace(name)
            subnet = subnets[(i - 1) % len(subnets)]
            lan_ip = (
                str(lan[9 + i])
                if len(subnets) == 1
                else str(subnet[9 + (i - 1) // len(subnets) + 1])
            )
            self._plug(netns, "lan0", lan_ns, name)
            self._ip(netns, "addr", "add", f"{lan_ip}/{subnet.prefixlen}", "dev", "lan0")
            if len(subnets) > 1:
                self._ip(netns, "route", "add", str(lan), "dev", "lan0")
            wan_ip = None
            if gateway is None:
                wan_ip = self._wan_ip("node")
                self._attach_wan(netns, name, wan_ip)
                self._ip(netns, "route", "add", "default", "via", ROUTER)
            else:
                self._ip(netns, "route", "add", "default", "via", gateway)
            pod_cidr = list(POD_CIDRS.subnets(new_prefix=24))[len(self.nodes)]
            self.nodes[name] = Machine(
                name=name,
                netns=netns,
                location=location.name,
                lan_ip=lan_ip,
                wan_ip=wan_ip,
                pod_cidr=str(pod_cidr),
                userspace=location.wireguard == "userspace",
            )

    def _write_hosts_file(self) -> None:
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        lines += [f"{n.lan_ip}\t{n.name}" for n in self.nodes.values()]
        (self.workdir / "hosts").write_text("\n".join(lines) + "\n")

    def _start_holder(self, machine: Machine) -> None:
        steps = [f"mkdir -p {d} && mount -t tmpfs -o mode=0755 kilo-e2e {d}" for d in PRIVATE_DIRS]
        steps.append(f"mount --bind {self.workdir / 'hosts'} /etc/hosts")
        if machine.userspace:
            steps.append(f"exec env WG_PROCESS_FOREGROUND=1 wireguard-go {WG_INTERFACE}")
        else:
            steps.append("exec sleep infinity")
        log = open(self.logs / f"{machine.name}.wireguard-go.log", "ab")  # noqa: SIM115
        with log:
            machine.process = subprocess.Popen(
                [
                    *("ip", "netns", "exec", machine.netns, "unshare", "-m", "--propagation"),
                    *("private", "sh", "-c", " && ".join(steps)),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _await_holder(self, machine: Machine, timeout: float = 60) -> None:
        socket_path = self.path(machine.name, f"/var/run/wireguard/{WG_INTERFACE}.sock")
        comm = Path(f"/proc/{machine.pid}/comm")

        def ready() -> bool:
            if not machine.running:
                log = (self.logs / f"{machine.name}.wireguard-go.log").read_text(errors="replace")
                raise TestbedError(f"{machine.name}: its holder is not running: {log}")
            if not machine.userspace:  # the holder has mounted everything once it is sleep
                with contextlib.suppress(OSError):
                    return comm.read_text().strip() == "sleep"
                return False
            return socket_path.is_socket()

        wait_for(
            ready,
            timeout=timeout,
            message=f"{machine.name}: no WireGuard UAPI socket"
            if machine.userspace
            else f"{machine.name}: its holder did not set up its mounts",
        )

    def add_laptop(self, name: str) -> Machine:
        """A machine on the internet with its own wireguard-go (``kilo0``), for Peer tests."""
        if name in self.nodes or name in self.laptops:
            raise TestbedError(f"testbed {self.prefix}: {name!r} exists already")
        self._check_name(name)
        netns = self._add_namespace(name)
        wan_ip = self._wan_ip("laptop")
        self._attach_wan(netns, name, wan_ip)
        self._ip(netns, "route", "add", "default", "via", ROUTER)
        laptop = Machine(name=name, netns=netns, wan_ip=wan_ip)
        self.laptops[name] = laptop
        self._start_holder(laptop)
        self._await_holder(laptop)
        return laptop

    # --- Kubernetes ---

    def _populate_api(self) -> None:
        assert self.plane is not None
        client = self.api()
        self._apply(MANIFESTS / "crds.yaml")

        def established() -> bool:
            crd = client.get(CustomResourceDefinition, "peers.kilo.squat.ai")
            conditions = (crd.status.conditions if crd.status else None) or []
            return any(c.type == "Established" and c.status == "True" for c in conditions)

        wait_for(established, timeout=30, message="the Peer CRD is not established")
        self._apply(MANIFESTS / "rbac.yaml")
        # The nodes use the shipped role through its service account, as a DaemonSet would.
        request = from_dict(
            ServiceAccount.Token,
            {
                "metadata": {"name": "kilo", "namespace": "kube-system"},
                "spec": {"expirationSeconds": 24 * 3600},
            },
        )
        token = client.create(request, "kilo", namespace="kube-system")
        self.plane.write_kubeconfig(
            self.node_kubeconfig,
            "kilo",
            token=token.status.token,
            server=f"https://{CP_WAN}:{self.plane.port}",
        )
        self.node_kubeconfig.chmod(0o644)
        by_name = {loc.name: loc for loc in self.locations}
        for node in self.nodes.values():
            assert node.location is not None and node.lan_ip is not None
            # As a kubelet registers it (and the controllers fill it in): labels,
            # annotations and a status besides Kilo's, as Kilo meets Nodes in a cluster.
            obj = kubelet.node(
                node.name,
                internal_ip=node.lan_ip,
                external_ip=node.wan_ip,
                pod_cidr=node.pod_cidr,
                labels={TOPOLOGY_LABEL: node.location},
                annotations=by_name[node.location].annotations,
            )
            client.create(from_dict(Node, obj), field_manager=kubelet.FIELD_MANAGER)

    def _apply(self, path: Path) -> None:
        for obj in load_all_yaml(path.read_text()):
            try:
                self.api().create(obj)
            except ApiError as exc:
                if exc.status.code != 409:
                    raise

    @property
    def admin_kubeconfig(self) -> Path:
        if self.plane is None:
            raise TestbedError(f"testbed {self.prefix} has no control plane yet")
        return self.plane.admin_kubeconfig

    @property
    def api_port(self) -> int:
        if self.plane is None:
            raise TestbedError(f"testbed {self.prefix} has no control plane yet")
        return self.plane.port

    def close_client(self) -> None:
        """Close the admin client (and its connections) and nothing else."""
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None

    def api(self) -> Client:
        """An admin client for the test process (through the host<->cp link)."""
        if self._client is None:
            self._client = Client(KubeConfig.from_file(str(self.admin_kubeconfig)), trust_env=False)
        return self._client

    def node_annotations(self, name: str) -> dict[str, str]:
        node = self.api().get(Node, name)
        return dict((node.metadata.annotations if node.metadata else None) or {})

    # --- running things ---

    wait_for = staticmethod(wait_for)

    def machine(self, name: str) -> Machine:
        machine = self.nodes.get(name) or self.laptops.get(name)
        if machine is None:
            raise TestbedError(
                f"testbed {self.prefix}: no node or laptop {name!r} "
                f"(nodes: {sorted(self.nodes)}, laptops: {sorted(self.laptops)})"
            )
        return machine

    def netns(self, role: str) -> str:
        """The namespace of a node, laptop, pod, ``internet``, ``cp``, ``<loc>-lan`` or
        ``<loc>-gw``."""
        if role in self.pods:
            return self.pods[role].netns
        if role in self._roles:
            return self._roles[role]
        if role in self._roles.values():
            return role
        raise TestbedError(f"testbed {self.prefix}: no namespace {role!r}")

    def enter(self, target: str) -> list[str]:
        """The command prefix that runs a program in ``target``: the mount and network
        namespaces of a node or laptop, else the network namespace."""
        if target in self.nodes or target in self.laptops:
            return ["nsenter", "-t", str(self.machine(target).pid), "-m", "-n"]
        return ["ip", "netns", "exec", self.netns(target)]

    def run(
        self,
        target: str,
        *argv: str,
        check: bool = True,
        timeout: float = 30,
        stdin: str | None = None,
    ) -> str:
        """Run ``argv`` in ``target`` (see :meth:`enter`); its stdout."""
        return _run([*self.enter(target), *argv], check=check, timeout=timeout, stdin=stdin).stdout

    def path(self, name: str, path: str) -> Path:
        """``path`` as seen in the mount namespace of node or laptop ``name``."""
        return _resolve_in(Path(f"/proc/{self.machine(name).pid}/root"), path)

    def ping(self, src: str, ip: str, *, count: int = 1, timeout: float = 2) -> bool:
        wait = str(max(1, round(timeout)))
        result = _run(
            [*self.enter(src), "ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", wait, ip],
            check=False,
            timeout=timeout * count + 5,
        )
        return result.returncode == 0

    def can_connect(self, src: str, ip: str, port: int, *, timeout: float = 3) -> bool:
        """Whether a TCP connection from ``src`` to ``ip:port`` is accepted."""
        code = (
            "import socket, sys\n"
            "try:\n"
            f"    socket.create_connection(({ip!r}, {port}), timeout={timeout}).close()\n"
            "except OSError as e:\n"
            "    sys.exit(str(e))\n"
        )
        return (
            _run(
                [*self.enter(src), sys.executable, "-c", code], check=False, timeout=timeout + 10
            ).returncode
            == 0
        )

    def tcp_exchange(
        self, src: str, dst: str, ip: str, port: int, *, payload: str = "hello", timeout: float = 5
    ) -> Echo:
        """A one-shot TCP echo: a server in ``dst`` (all addresses, ``port``), a client in
        ``src`` connecting to ``ip``. CommandError when the client cannot get through."""
        server_code = (
            "import socket, sys\n"
            "s = socket.socket()\n"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('0.0.0.0', {port}))\n"
            "s.listen(1)\n"
            f"s.settimeout({timeout})\n"
            "print('ready', flush=True)\n"
            "c, addr = s.accept()\n"
            f"c.settimeout({timeout})\n"
            "data = b''\n"
            "while chunk := c.recv(65536):\n"
            "    data += chunk\n"
            "c.sendall(data)\n"
            "c.close()\n"
            "print(addr[0], flush=True)\n"
        )
        client_code = (
            "import socket, sys\n"
            f"c = socket.create_connection(({ip!r}, {port}), timeout={timeout})\n"
            "c.sendall(sys.stdin.buffer.read())\n"
            "c.shutdown(socket.SHUT_WR)\n"
            "data = b''\n"
            "while chunk := c.recv(65536):\n"
            "    data += chunk\n"
            "sys.stdout.write(data.decode())\n"
        )
        server_argv = [*self.enter(dst), sys.executable, "-c", server_code]
        server = subprocess.Popen(
            server_argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._processes.append(server)
        try:
            assert server.stdout is not None and server.stderr is not None
            readable, _, _ = select.select([server.stdout], [], [], timeout + 5)
            line = server.stdout.readline().decode().strip() if readable else ""
            if line != "ready":
                _terminate(server, 1)
                raise CommandError(
                    server_argv, server.returncode, line, server.stderr.read().decode()
                )
            reply = _run(
                [*self.enter(src), sys.executable, "-c", client_code],
                stdin=payload,
                timeout=timeout + 10,
            ).stdout
            try:
                out, err = server.communicate(timeout=timeout + 5)
            except subprocess.TimeoutExpired as exc:
                raise CommandError(server_argv, None, "", "the echo server did not finish") from exc
            if server.returncode != 0:
                raise CommandError(server_argv, server.returncode, out.decode(), err.decode())
            return Echo(reply=reply, peer=out.decode().strip())
        finally:
            _terminate(server, 1)
            for pipe in (server.stdout, server.stderr):
                if pipe is not None:
                    pipe.close()
            self._processes.remove(server)

    def wg_dump(self, name: str, interface: str = WG_INTERFACE) -> str:
        return self.run(name, "wg", "show", interface, "dump")

    def snapshot(self, target: str) -> dict[str, Any]:
        """Routes (all tables), rules, links, addresses and iptables (counters and comments
        dropped), for before/after comparisons."""

        def ip_json(*args: str) -> Any:
            return json.loads(self.run(target, "ip", "-j", *args) or "[]")

        iptables = {}
        for table in IPTABLES_TABLES:
            text = self.run(target, "iptables-save", "-t", table)
            iptables[table] = [
                re.sub(r"\[\d+:\d+\]", "[0:0]", line)
                for line in text.splitlines()
                if line and not line.startswith("#")
            ]
        return {
            "routes": ip_json("route", "show", "table", "all"),
            "rules": ip_json("rule"),
            "links": ip_json("link"),
            "addrs": ip_json("addr"),
            "iptables": iptables,
        }

    # --- CNI ---

    def cni_config(self, node: str) -> dict[str, Any]:
        config: dict[str, Any] = json.loads(self.path(node, CNI_CONFLIST).read_text())
        return config

    def write_cni_config(self, node: str, config: Mapping[str, Any]) -> None:
        path = self.path(node, CNI_CONFLIST)
        path.write_text(json.dumps(config))
        path.chmod(0o644)

    def cni_ranges(self, node: str) -> list[Any]:
        """The IPAM ranges of the node's conflist (empty while the agent has not set them)."""
        try:
            plugins = self.cni_config(node).get("plugins", [])
        except (OSError, ValueError):
            return []
        return [r for p in plugins for r in (p.get("ipam") or {}).get("ranges") or []]

    def _cni(
        self, node: str, command: str, pod_ns: str, container_id: str, config: Mapping[str, Any]
    ) -> str:
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            # Our mount namespace holds the bind mount of the pod's namespace; the node's
            # private mount namespace only sees an empty file at /run/netns/<name>.
            "CNI_NETNS": f"/proc/{os.getpid()}/root/run/netns/{pod_ns}",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(CNI_BIN),
        }
        argv = [*self.enter(node), str(CNI_BIN / config["type"])]
        try:
            result = subprocess.run(
                argv,
                input=json.dumps(config),
                capture_output=True,
                text=True,
                env=env,
                timeout=30,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise CommandError(argv, None, _text(exc.stdout), _text(exc.stderr)) from exc
        if result.returncode != 0:
            # Plugins report errors as JSON on stdout; CommandError falls back to it.
            raise CommandError(
                [f"CNI_COMMAND={command}", *argv], result.returncode, result.stdout, result.stderr
            )
        return result.stdout

    @staticmethod
    def _plugin_config(
        conflist: Mapping[str, Any], plugin: Mapping[str, Any], prev: Any
    ) -> dict[str, Any]:
        config = dict(plugin)
        config["cniVersion"] = conflist["cniVersion"]
        config["name"] = conflist["name"]
        if prev is not None:
            config["prevResult"] = prev
        return config

    def add_pod(self, node: str, name: str, *, timeout: float = 30) -> Pod:
        """A pod network namespace on ``node``, plumbed by the real CNI plugins with the
        node's current conflist once it has IPAM ranges (the agent writes them)."""
        self.machine(node)
        if name in self.pods or name in self._roles:
            raise TestbedError(f"testbed {self.prefix}: {name!r} exists already")
        self._check_name(name)
        wait_for(
            lambda: self.cni_ranges(node),
            timeout=timeout,
            message=f"node {node}: {CNI_CONFLIST} has no IPAM ranges (the agent fills them in "
            "from the pod CIDR)",
        )
        conflist = self.cni_config(node)
        netns = self._add_namespace(name)
        container_id = f"{self.prefix}-{name}"
        prev: Any = None
        done: list[Mapping[str, Any]] = []
        try:
            for plugin in conflist["plugins"]:
                config = self._plugin_config(conflist, plugin, prev)
                prev = json.loads(self._cni(node, "ADD", netns, container_id, config))
                done.append(plugin)
        except BaseException:
            for plugin in reversed(done):
                with contextlib.suppress(TestbedError):
                    self._cni(
                        node,
                        "DEL",
                        netns,
                        container_id,
                        self._plugin_config(conflist, plugin, prev),
                    )
            raise
        ips = prev.get("ips") or []
        if not ips:
            raise TestbedError(f"pod {name} on {node}: the CNI result has no IP: {prev}")
        pod = Pod(
            name=name,
            node=node,
            netns=netns,
            container_id=container_id,
            ip=ips[0]["address"].split("/")[0],
            gateway=ips[0].get("gateway", ""),
            result=prev,
        )
        self.pods[name] = pod
        self._conflists[name] = conflist
        return pod

    def remove_pod(self, name: str) -> None:
        """CNI DEL (plugins in reverse, with the ADD result), then the namespace."""
        pod = self.pods[name]
        conflist = self._conflists.get(name)
        try:
            if conflist is not None and self.machine(pod.node).running:
                for plugin in reversed(conflist["plugins"]):
                    config = self._plugin_config(conflist, plugin, pod.result)
                    self._cni(pod.node, "DEL", pod.netns, pod.container_id, config)
        finally:
            del self.pods[name]
            self._conflists.pop(name, None)
            remove_namespaces([pod.netns], None)
            self._roles.pop(name, None)
            self._namespaces.remove(pod.netns)

    # --- the agent ---

    def start_agent(
        self,
        node: str,
        *extra_args: str,
        granularity: str = "location",
        env: Mapping[str, str] | None = None,
        module: str = "kilo.agent",
        image: podman.Image | None = None,
    ) -> subprocess.Popen[bytes]:
        """``kg`` (``python -m module``) for ``node`` in its mount and network namespaces,
        logging to ``logs/<node>.kg.log``; extra arguments come last (and so win).

        With ``image``, the image's ``kg`` (its entrypoint) runs instead, in a podman
        container in the node's network namespace, with the node's ``/var/lib/kilo``,
        ``/etc/cni/net.d`` and ``/var/run/wireguard`` (wireguard-go's UAPI socket), the
        kubeconfig at ``/etc/kubernetes/kubeconfig`` and a ``/run/xtables.lock`` of its own
        mounted as a Kilo DaemonSet mounts them, with the image's security settings."""
        machine = self.nodes.get(node)
        if machine is None:
            raise TestbedError(f"testbed {self.prefix}: no node {node!r}")
        running = self._agents.get(node)
        if running is not None and running.poll() is None:
            raise TestbedError(f"node {node}: the agent is already running (pid {running.pid})")
        kubeconfig = str(self.node_kubeconfig) if image is None else IMAGE_KUBECONFIG
        args = [
            f"--hostname={node}",
            f"--kubeconfig={kubeconfig}",
            *(["--create-interface=false"] if machine.userspace else []),
            *([f"--encapsulate={self.encapsulate}"] if self.encapsulate is not None else []),
            f"--mesh-granularity={granularity}",
            f"--listen={machine.lan_ip}:1107",
            "--resync-period=5s",
            "--log-level=debug",
            *extra_args,
        ]
        environ = {
            k: v
            for k, v in os.environ.items()
            if k != "KUBECONFIG" and not k.lower().endswith("_proxy")
        }
        if image is None:
            argv = [*self.enter(node), sys.executable, "-m", module, *args]
            environ["PYTHONUNBUFFERED"] = "1"
            environ.update(env or {})
        else:
            argv = [*self.enter(node), *self._agent_container(machine, image, args, env).argv()]
        log = open(self.agent_log_path(node), "ab")  # noqa: SIM115
        with log:
            log.write(f"--- {' '.join(argv)}\n".encode())
            log.flush()
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environ,
                start_new_session=True,
            )
        self._agents[node] = process
        return process

    def _agent_container(
        self,
        machine: Machine,
        image: podman.Image,
        args: Sequence[str],
        env: Mapping[str, str] | None,
    ) -> podman.Container:
        lock = self.workdir / f"{machine.name}.xtables.lock"
        lock.touch()
        name = f"{self.prefix}-{machine.name}-kg"
        self._containers[machine.name] = name
        # Paths resolve in the node's mount namespace, where podman runs.
        mounts = [podman.Mount(source=d, target=d) for d in ("/var/lib/kilo", "/etc/cni/net.d")]
        mounts += [
            podman.Mount(source="/var/run/wireguard", target="/var/run/wireguard"),
            podman.Mount(source=str(self.node_kubeconfig), target=IMAGE_KUBECONFIG, read_only=True),
            podman.Mount(source=str(lock), target="/run/xtables.lock"),
        ]
        return podman.Container(
            image=image.ref,
            name=name,
            args=tuple(args),
            env=dict(env or {}),
            mounts=tuple(mounts),
            network=f"ns:/proc/{machine.pid}/ns/net",
            security=image.security,
        )

    def _remove_container(self, node: str) -> None:
        """The agent's container, if it outlived its podman client (SIGKILL)."""
        name = self._containers.pop(node, None)
        if name is None:
            return
        machine = self.nodes[node]
        enter = self.enter(node) if machine.running else []
        _run([*enter, *podman.remove(name)], timeout=60)

    def agent_log_path(self, node: str) -> Path:
        return self.logs / f"{node}.kg.log"

    def agent_log(self, node: str) -> str:
        path = self.agent_log_path(node)
        return path.read_text(errors="replace") if path.exists() else ""

    def agent(self, node: str) -> subprocess.Popen[bytes] | None:
        return self._agents.get(node)

    def stop_agent(self, node: str, signal: int = _SIGTERM, *, timeout: float = 15) -> int:
        """Signal the agent (only its own process, as a container runtime would) and
        return its exit code; TestbedError (after a SIGKILL) if it outlives ``timeout``."""
        process = self._agents.pop(node, None)
        if process is None:
            raise TestbedError(f"node {node}: no agent was started")
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired as exc:
                _terminate(process, 0)
                self._remove_container(node)
                raise TestbedError(
                    f"node {node}: the agent ignored signal {signal} for {timeout:g} s; "
                    f"killed. Log tail:\n{self._tail(self.agent_log(node))}"
                ) from exc
        _signal_group(process, _SIGKILL)
        self._remove_container(node)
        return process.returncode

    def kill_agent(self, node: str) -> int:
        process = self._agents.pop(node, None)
        if process is None:
            raise TestbedError(f"node {node}: no agent was started")
        _signal_group(process, _SIGKILL)
        returncode = process.wait()
        # podman's container outlives its client; SIGKILL it the same way.
        self._remove_container(node)
        return returncode

    @staticmethod
    def _tail(text: str, lines: int = 30) -> str:
        return "\n".join(text.splitlines()[-lines:])
