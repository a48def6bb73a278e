"""``kilo-sandbox up``, ``status`` and ``down``: a Kilo mesh across simulated clouds.

``up`` builds (or reuses) etcd and kube-apiserver, builds the testbed of
:mod:`kilo.sandbox.testbed` (public clouds, a NATed office, a control plane), starts ``kg``
on every node, adds one pod per node and a VPN peer (a laptop configured from ``kgctl
showconf peer`` with ``wg setconf``), waits until the mesh has converged and measures
reachability with real packets. Every process it starts is in a session of its own, so the
sandbox keeps running after ``up`` returns; ``<dir>/state.json`` records its namespaces,
processes, machines and pods for ``status`` and ``down``.

``up --kernel`` runs the same inside a virtual machine with Debian's kernel
(:mod:`kilo.sandbox.vm`), so that every node gets Kilo's default data plane, kernel
WireGuard that ``kg`` creates and IPIP inside each location, which this host's kernel
cannot run: the host keeps etcd and kube-apiserver (and the kubeconfig works from here),
the guest runs ``kilo-sandbox guest`` (``up`` against that control plane, then it answers
``status`` through the directory it shares with the host), and ``down`` kills QEMU with
everything else.

``down`` never depends on the state file alone: every namespace and the host link carry the
prefix derived from the directory (:func:`kilo.sandbox.state.prefix_for`), so it also
removes what a crashed ``up`` left. It only ever deletes the files a sandbox writes in its
directory (:data:`kilo.sandbox.state.FILES` and ``run/``), never a path read from the state.

Why one module of about 950 lines: ``up``, ``status``, ``down`` and ``up --kernel`` (with
its guest side) read and write one state file under one prefix, print through one
progress display and one report, and ``--kernel`` runs ``up`` itself inside the guest;
apart they would pass that state across modules. The testbed, the VM, the state file, the
report and the prerequisites already live in modules of their own.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from kilo.adapters.kubernetes import RESOURCES
from kilo.errors import KiloError, SandboxError
from kilo.mesh import translate
from kilo.mesh.model import DEFAULT_SUBNET
from kilo.sandbox import prerequisites, report, runs, state, testbed, vm
from kilo.sandbox.controlplane import build_binaries, cached_binaries
from kilo.sandbox.guest import GuestCommand, Kernel, fetch_kernel
from kilo.sandbox.guest import missing as guest_missing
from kilo.sandbox.progress import Progress
from kilo.sandbox.testbed import Location, Testbed

DEFAULT_DIR = Path("/var/lib/kilo-sandbox")
CLOUDS = ("aws", "gcp", "azure", "hetzner", "ovh", "linode", "vultr", "scaleway")
NAT_SITE = "office"
PEER = "laptop"
PEER_IP = "10.5.0.1"
KEEPALIVE = 5
GRANULARITIES = ("location", "full", "cross")
MAX_NODES = 10
HEALTHY = "the mesh is applied; the agent is healthy"
AGENTS_TIMEOUT = 120.0
CONVERGE_TIMEOUT = 180.0
REACH_TIMEOUT = 60.0
STATUS_REACH_TIMEOUT = 10.0
PING_WORKERS = 8
# up --clusters 2: the link kgctl multicluster link keeps between the clusters.
LINK = "sandbox"
LINK_ROLE = "kgctl multicluster link"
LINK_LOG = "multicluster-link.log"


# Under emulation everything takes longer (the guest of up --kernel).
VM_SLOWDOWN = 5.0
VM_UP_TIMEOUT = 1800.0
VM_STATUS_TIMEOUT = 300.0
UP_RESULT = "up.json"
UP_LOG = "up.log"


@dataclass(frozen=True, slots=True, kw_only=True)
class UpOptions:
    directory: Path
    locations: int = 2
    nodes: int = 2
    granularity: str = "location"
    kernel: bool = False  # the nodes in a virtual machine with Debian's kernel
    clusters: int = 1  # with 2, a second cluster joined by kgctl multicluster link --watch
    attached_plane: Path | None = None  # inside that VM: the host's control plane

    @property
    def slowdown(self) -> float:
        return VM_SLOWDOWN if self.attached_plane is not None else 1.0


class Sandbox:
    """The files and names of the sandbox in one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory.resolve()
        self.prefix = state.prefix_for(str(self.directory))
        self.host_link = f"{self.prefix}h"
        self.state_path = self.directory / state.STATE_FILE
        self.kubeconfig = self.directory / state.KUBECONFIG_FILE
        self.workdir = self.directory / state.RUN_DIR

    def kubeconfig_of(self, cluster: int) -> Path:
        """The admin kubeconfig of ``cluster`` (0-based; the first is :attr:`kubeconfig`)."""
        return self.directory / state.kubeconfig_file(cluster)

    def load(self) -> state.State:
        """The recorded state; SandboxError when there is none or it cannot be read."""
        try:
            text = self.state_path.read_text()
        except FileNotFoundError:
            raise SandboxError(f"no sandbox in {self.directory}") from None
        except OSError as exc:
            raise SandboxError(f"cannot read {self.state_path}: {exc.strerror}") from exc
        try:
            return state.loads(text)
        except state.StateError as exc:
            raise SandboxError(f"{self.state_path}: {exc}") from exc

    def save(self, current: state.State) -> None:
        temporary = self.state_path.with_name(f".{state.STATE_FILE}.new")
        temporary.write_text(state.dumps(current))
        temporary.replace(self.state_path)

    def leftovers(self) -> list[str]:
        """What of a sandbox exists here: state file, namespaces, host link."""
        found = [str(self.state_path)] if self.state_path.exists() else []
        found += runs.run_namespaces(self.prefix)
        if runs.link_exists(self.host_link):
            found.append(f"link {self.host_link}")
        return found


# --- helpers that run things ---------------------------------------------------------------------


def _environment() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if k != "KUBECONFIG" and not k.lower().endswith("_proxy")
    }


def kgctl(kubeconfig: Path, *args: str, timeout: float = 60) -> str:
    """``kgctl ARGS`` against the sandbox (this installation's kgctl); its stdout."""
    argv = [sys.executable, "-m", "kilo.cli.kgctl", f"--kubeconfig={kubeconfig}", *args]
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_environment(),
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise SandboxError(f"kgctl {' '.join(args)} timed out after {timeout:g} s") from exc
    if result.returncode != 0:
        raise SandboxError(
            f"kgctl {' '.join(args)} exited with {result.returncode}: {result.stderr.strip()}"
        )
    return result.stdout


def _listing(kubeconfig: Path) -> dict[str, Any]:
    data = json.loads(kgctl(kubeconfig, "list", "-o", "json"))
    if not isinstance(data, dict):
        raise SandboxError(f"kgctl list -o json printed {type(data).__name__}, not an object")
    return data


def _quiet(argv: Sequence[str], timeout: float = 15) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(list(argv), -1, "", "timed out")


def wg_dump(holder: int) -> str | None:
    """``wg show kilo0 dump`` in the mount namespace of ``holder`` (where the UAPI socket
    is); None when it cannot be read."""
    result = _quiet(
        ["nsenter", "-t", str(holder), "-m", "-n", "wg", "show", testbed.WG_INTERFACE, "dump"]
    )
    return result.stdout if result.returncode == 0 else None


def ping(netns: str, ip: str) -> bool:
    argv = ["ip", "netns", "exec", netns, "ping", "-n", "-q", "-c", "1", "-W", "1", ip]
    return _quiet(argv).returncode == 0


@dataclass(frozen=True, slots=True)
class Target:
    """A row or column of the reachability matrix."""

    label: str
    netns: str
    ip: str


def targets(current: state.State) -> list[Target]:
    pods = [Target(p.name, p.netns, p.ip) for p in current.pods]
    peers = [Target(f"{m.name} (peer)", m.netns, m.mesh_ip) for m in current.peers if m.mesh_ip]
    return pods + peers


def measure(
    everyone: Sequence[Target],
    *,
    timeout: float,
    probe: Callable[[str, str], bool] = ping,
) -> dict[report.Path, bool]:
    """Ping every target from every other one; failed paths are retried until they all get
    through or ``timeout`` passes (a path through a NATed site can need one more keepalive
    round, and a new peer its first handshake)."""
    paths = [(a, b) for a in everyone for b in everyone if a != b]
    reached: dict[report.Path, bool] = {}
    deadline = time.monotonic() + timeout
    with concurrent.futures.ThreadPoolExecutor(PING_WORKERS) as pool:
        while True:
            todo = [(a, b) for a, b in paths if not reached.get((a.label, b.label))]
            results = pool.map(lambda path: probe(path[0].netns, path[1].ip), todo)
            for (a, b), ok in zip(todo, results, strict=True):
                reached[(a.label, b.label)] = ok
            if all(reached.values()) or time.monotonic() >= deadline:
                return reached
            time.sleep(0.5)


def _record(pid: int, role: str) -> state.Process | None:
    start = runs.process_start(pid)
    return None if start is None else state.Process(role=role, pid=pid, start=start)


def _snapshot(
    box: Sandbox,
    bed: Testbed,
    granularity: str,
    *,
    link: subprocess.Popen[bytes] | None = None,
    **extra: Any,
) -> state.State:
    """The state of ``bed`` (and of the ``link`` joining its clusters) as far as it is built."""
    processes: list[state.Process | None] = []
    if link is not None:
        processes.append(_record(link.pid, LINK_ROLE))
    for index, plane in enumerate(bed.planes or ([bed.plane] if bed.plane else [])):
        # The first cluster's keep the roles a one-cluster sandbox always had.
        suffix = f" {bed.clusters[index].name}" if index else ""
        for role, popen in (("etcd", plane.etcd), ("kube-apiserver", plane.apiserver)):
            if popen is not None:
                processes.append(_record(popen.pid, role + suffix))
    for machine in [*bed.nodes.values(), *bed.laptops.values()]:
        if machine.process is not None:
            processes.append(_record(machine.process.pid, f"wireguard-go {machine.name}"))
        agent = bed.agent(machine.name)
        if agent is not None:
            processes.append(_record(agent.pid, f"kg {machine.name}"))

    def recorded(m: testbed.Machine, mesh_ip: str = "") -> state.Machine:
        return state.Machine(
            name=m.name,
            netns=m.netns,
            holder=m.pid,
            location=m.location or "",
            lan_ip=m.lan_ip or "",
            wan_ip=m.wan_ip or "",
            pod_cidr=m.pod_cidr or "",
            mesh_ip=mesh_ip,
            cluster=m.cluster,
        )

    return state.State(
        directory=str(box.directory),
        prefix=box.prefix,
        granularity=granularity,
        host_link=box.host_link,
        workdir=str(box.workdir),
        api_server=bed.plane.server if bed.plane is not None else "",
        kubeconfig=str(box.kubeconfig),
        nat_locations=tuple(sorted(bed.gateways)),
        namespaces=tuple(runs.run_namespaces(box.prefix)),
        processes=tuple(p for p in processes if p is not None),
        nodes=tuple(recorded(m) for m in bed.nodes.values() if m.process is not None),
        peers=tuple(recorded(m, PEER_IP) for m in bed.laptops.values() if m.process is not None),
        pods=tuple(
            state.Pod(name=p.name, node=p.node, netns=p.netns, ip=p.ip) for p in bed.pods.values()
        ),
        clusters=len(bed.clusters),
        **extra,
    )


def _wait(
    predicate: Callable[[], object], *, timeout: float, what: str, interval: float = 0.5
) -> None:
    try:
        runs.wait_for(predicate, timeout=timeout, message=what, interval=interval)
    except AssertionError as exc:
        raise SandboxError(str(exc)) from None


# --- up -------------------------------------------------------------------------------------------


def _check_prerequisites(subject: str, *, binaries_built: bool = True) -> str | None:
    return prerequisites.missing(
        prerequisites.observe(binaries_built=binaries_built), subject=subject
    )


def _locations(options: UpOptions) -> list[Location]:
    # On a kernel with WireGuard (the VM of up --kernel), kg creates it, as by default.
    wireguard = "kernel" if options.attached_plane is not None else "userspace"
    clouds = [
        Location(name, nodes=options.nodes, wireguard=wireguard)
        for name in CLOUDS[: options.locations]
    ]
    office = Location(
        NAT_SITE,
        nodes=options.nodes,
        nat=True,
        # Behind NAT only the office can open the tunnels; keepalives keep them open.
        annotations={translate.PERSISTENT_KEEPALIVE: str(KEEPALIVE)},
        wireguard=wireguard,
    )
    # The second cluster: the next clouds, all public. Two NATed sites in different clusters
    # have no endpoint either can reach (as two NATed locations of one cluster), so a second
    # office would leave a pair the link cannot join.
    others = [
        Location(name, nodes=options.nodes, wireguard=wireguard, cluster=cluster)
        for cluster in range(1, options.clusters)
        for name in CLOUDS[cluster * options.locations : (cluster + 1) * options.locations]
    ]
    return [*clouds, office, *others]


def _agents_healthy(bed: Testbed) -> bool:
    for node in bed.nodes:
        process = bed.agent(node)
        if process is None or process.poll() is not None:
            tail = "\n".join(bed.agent_log(node).splitlines()[-15:])
            raise SandboxError(f"kg on {node} exited:\n{tail}")
    return all(HEALTHY in bed.agent_log(node) for node in bed.nodes)


def _connect_peer(bed: Testbed, kubeconfig: Path, *, timeout: float = 60) -> None:
    """The laptop joins as a Peer the way a user's machine would: a key pair, the Peer
    object, then ``kgctl showconf peer`` into ``wg setconf`` and routes to the mesh."""
    bed.add_laptop(PEER)
    private = bed.run(PEER, "wg", "genkey").strip()
    public = bed.run(PEER, "wg", "pubkey", stdin=private).strip()
    bed.api().create(
        testbed.from_dict(
            RESOURCES["peers"],
            {
                "apiVersion": "kilo.squat.ai/v1alpha1",
                "kind": "Peer",
                "metadata": {"name": PEER},
                "spec": {
                    "allowedIPs": [f"{PEER_IP}/32"],
                    "publicKey": public,
                    "persistentKeepalive": KEEPALIVE,
                },
            },
        )
    )
    leaders = report.leaders(_listing(kubeconfig))
    holders = {name: m.pid for name, m in bed.nodes.items()}

    def leaders_know_the_peer() -> bool:
        return all(public in (wg_dump(holders[leader]) or "") for leader in leaders)

    _wait(leaders_know_the_peer, timeout=timeout, what="the leaders did not add the VPN peer")
    config = kgctl(kubeconfig, "showconf", "peer", PEER)
    bed.path(PEER, f"/var/run/wireguard/{PEER}.conf").write_text(config)
    key = bed.path(PEER, f"/var/run/wireguard/{PEER}.key")
    key.write_text(private + "\n")
    key.chmod(0o600)
    bed.run(PEER, "wg", "setconf", testbed.WG_INTERFACE, f"/var/run/wireguard/{PEER}.conf")
    bed.run(
        PEER, "wg", "set", testbed.WG_INTERFACE, "private-key", f"/var/run/wireguard/{PEER}.key"
    )
    bed.run(PEER, "ip", "address", "add", f"{PEER_IP}/32", "dev", testbed.WG_INTERFACE)
    bed.run(PEER, "ip", "link", "set", testbed.WG_INTERFACE, "up")
    for network in (str(testbed.POD_CIDRS), DEFAULT_SUBNET):
        bed.run(PEER, "ip", "route", "add", network, "dev", testbed.WG_INTERFACE)


def _peer_counts(current: state.State, cluster: int = 0) -> dict[str, int]:
    """The WireGuard peers of each node of ``cluster``."""
    counts = {}
    for node in current.nodes:
        if node.cluster != cluster:
            continue
        dump = wg_dump(node.holder)
        counts[node.name] = -1 if dump is None else len(report.parse_dump(dump))
    return counts


def _listings(box: Sandbox, current: state.State) -> list[dict[str, Any]]:
    """``kgctl list -o json`` of each cluster."""
    return [_listing(box.kubeconfig_of(c)) for c in range(current.clusters)]


def _converged(box: Sandbox, current: state.State) -> bool:
    """Every cluster converged, and (with two) each holds the link's Peers for the other's
    leaders, which its leaders count among their WireGuard peers."""
    listings = _listings(box, current)
    return all(
        report.converged(listing, _peer_counts(current, c)) for c, listing in enumerate(listings)
    ) and report.linked(listings, LINK)


def link_argv(box: Sandbox, bed: Testbed) -> list[str]:
    """The README's ``kgctl multicluster link --watch`` between the sandbox's two clusters."""
    one, two = bed.clusters[:2]
    return [
        *(sys.executable, "-m", "kilo.cli.kgctl", f"--kubeconfig={box.kubeconfig_of(0)}"),
        *("multicluster", "link", f"--remote-kubeconfig={box.kubeconfig_of(1)}"),
        *(f"--name={LINK}", f"--service-cidr={one.service_cidr}"),
        *(f"--remote-service-cidr={two.service_cidr}", "--watch"),
    ]


def _start_link(box: Sandbox, bed: Testbed) -> subprocess.Popen[bytes]:
    """The link in a session of its own (it outlives ``up``, as the agents do), logging to
    ``logs/multicluster-link.log``."""
    with open(bed.logs / LINK_LOG, "ab") as log:
        return subprocess.Popen(
            link_argv(box, bed),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_environment(),
            start_new_session=True,
        )


def _link_running(bed: Testbed, link: subprocess.Popen[bytes]) -> None:
    if link.poll() is not None:
        tail = "\n".join((bed.logs / LINK_LOG).read_text(errors="replace").splitlines()[-15:])
        raise SandboxError(f"kgctl multicluster link exited with {link.returncode}:\n{tail}")


def _write_graph(box: Sandbox, clusters: int = 1) -> Path:
    # Two clusters: both, and the link between them.
    linked = [f"--remote-kubeconfig={box.kubeconfig_of(1)}", f"--link={LINK}"]
    dot = kgctl(box.kubeconfig, "graph", *(linked if clusters > 1 else []))
    for name in state.GRAPH_FILES:
        with contextlib.suppress(FileNotFoundError):
            (box.directory / name).unlink()
    if shutil.which("dot") is not None:
        svg = box.directory / "mesh.svg"
        result = subprocess.run(
            ["dot", "-Tsvg", "-o", str(svg)],
            input=dot,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode == 0:
            return svg
    path = box.directory / "mesh.dot"
    path.write_text(dot)
    return path


def _command(name: str, module: str) -> str:
    """How to call this installation's console script ``name``."""
    script = Path(sys.executable).parent / name
    if not script.exists():
        return f"{sys.executable} -m {module}"
    found = shutil.which(name)
    return name if found is not None and Path(found).resolve() == script.resolve() else str(script)


def _tables(box: Sandbox, current: state.State) -> str:
    """``kgctl list`` of each cluster, each under the command that prints it."""
    text = ""
    for cluster in range(current.clusters):
        flag = f" --kubeconfig {box.kubeconfig_of(cluster)}" if current.clusters > 1 else ""
        text += f"$ kgctl{flag} list\n" + kgctl(box.kubeconfig_of(cluster), "list") + "\n"
    return text


def _commented(pairs: Sequence[tuple[str, str]]) -> list[str]:
    width = max(len(command) for command, _ in pairs)
    return [f"  {command.ljust(width)}   # {comment}" for command, comment in pairs]


def _summary(box: Sandbox, current: state.State, listings: Sequence[Mapping[str, Any]]) -> str:
    listing = listings[0]
    clouds = list(dict.fromkeys(m.location for m in current.nodes if m.cluster == 0))
    public = [c for c in clouds if c not in current.nat_locations]
    a, b = current.pods[0], current.pods[-1]
    first = current.nodes[0]
    kgctl_cmd = _command("kgctl", "kilo.cli.kgctl")
    sandbox_cmd = _command("kilo-sandbox", "kilo.sandbox")
    dir_flag = "" if box.directory == DEFAULT_DIR.resolve() else f" --dir {box.directory}"
    rendered = (
        "rendered by Graphviz" if current.graph.endswith(".svg") else "install Graphviz for SVG"
    )
    nodes = sum(1 for m in current.nodes if m.cluster == 0)
    lines = [
        f"Kilo sandbox {box.prefix} in {box.directory}: {nodes} nodes in "
        f"{', '.join(public)} and {', '.join(current.nat_locations)} (behind NAT), "
        f"{current.granularity} granularity"
        + (f", VPN peer {PEER} ({PEER_IP})." if current.peers else "."),
        f"Leaders: {', '.join(report.leaders(listing))}.",
        *_second_cluster(box, current, listings, kgctl_cmd),
        f"Graph: {current.graph} (kgctl graph, {rendered}).",
        "",
        f"kgctl against the sandbox (API server {current.api_server}, reachable from this "
        "machine only):",
        f"  export KUBECONFIG={box.kubeconfig}",
        *_commented(
            [
                (f"{kgctl_cmd} list -o wide", "segments, pod CIDRs, keys"),
                (f"{kgctl_cmd} graph | dot -Tsvg > mesh.svg", "the mesh as a picture"),
                (
                    f"{kgctl_cmd} showconf node {report.leaders(listing)[0]}",
                    "a leader's WireGuard config",
                ),
            ]
        ),
        "Inside the mesh (root):",
        *_commented(
            [
                (f"ip netns exec {a.netns} ping {b.ip}", f"pod on {a.node} to pod on {b.node}"),
                (f"nsenter -t {first.holder} -m -n wg show", f"WireGuard on {first.name}"),
                (f"tail -f {box.workdir}/logs/{first.name}.kg.log", f"kg on {first.name}"),
            ]
        ),
        "Then:",
        *_commented(
            [
                (f"{sandbox_cmd} status{dir_flag}", "reachability again, leaders, handshakes"),
                (f"{sandbox_cmd} down{dir_flag}", "removes everything"),
            ]
        ),
    ]
    return "\n".join(lines) + "\n"


def _second_cluster(
    box: Sandbox, current: state.State, listings: Sequence[Mapping[str, Any]], kgctl_cmd: str
) -> list[str]:
    """The summary's lines on the second cluster and the link, with two clusters."""
    if current.clusters < 2:
        return []
    second = list(dict.fromkeys(m.location for m in current.nodes if m.cluster == 1))
    count = sum(1 for m in current.nodes if m.cluster == 1)
    link = next((p for p in current.processes if p.role == LINK_ROLE), None)
    return [
        f"A second cluster (its own etcd and kube-apiserver, ranges apart): {count} nodes in "
        f"{', '.join(second)}; leaders: {', '.join(report.leaders(listings[1]))}; "
        f"kubeconfig {box.kubeconfig_of(1)}.",
        f"Linked by {kgctl_cmd} multicluster link --name={LINK} --watch"
        + (f" (pid {link.pid})" if link else "")
        + f", log {Path(current.workdir) / 'logs' / LINK_LOG}:",
        *_commented(
            [
                (
                    f"{kgctl_cmd} --kubeconfig {box.kubeconfig_of(1)} list",
                    f"the second cluster, with the Peers {LINK}-<leader> the link wrote",
                ),
            ]
        ),
    ]


def up(options: UpOptions, out: TextIO, err: TextIO) -> int:
    if options.kernel:
        return _up_in_vm(options, out, err)
    box = Sandbox(options.directory)
    # Inside the VM of up --kernel the control plane runs on the host.
    attached = options.attached_plane is not None
    cached = None if attached else cached_binaries()
    problem = _check_prerequisites("kilo-sandbox up", binaries_built=attached or cached is not None)
    if not _ready_to_build(box, problem, err):
        return 1
    progress = Progress(err)
    binaries: Path | None
    if attached:
        binaries = None
    elif cached is not None:
        binaries = cached
        err.write(f"etcd and kube-apiserver: {binaries}/bin (built already)\n")
    else:
        with progress.step(
            "building etcd and kube-apiserver from the Go module proxy "
            "(about 12 minutes on 2 cores, once)"
        ) as step:
            binaries = build_binaries(on_progress=step.note)
    locations = _locations(options)
    slow = options.slowdown
    bed = Testbed(
        locations,
        binaries=binaries,
        prefix=box.prefix,
        workdir=box.workdir,
        owned=False,
        attached_plane=options.attached_plane,
        # IPIP (Kilo's default) needs the ipip module: only in the VM.
        encapsulate=None if options.attached_plane is not None else "never",
    )
    count = sum(loc.nodes for loc in locations)
    granularity = options.granularity
    planes = "etcd and kube-apiserver" + (
        f" for each of {options.clusters} clusters" if options.clusters > 1 else ""
    )
    link: subprocess.Popen[bytes] | None = None
    try:
        with progress.step(
            f"creating {len(locations)} sites with {count} nodes in network namespaces, "
            f"starting {planes}"
        ):
            bed.start()
        box.save(_snapshot(box, bed, granularity))
        for cluster in range(options.clusters):
            shutil.copyfile(bed.admin_kubeconfig_of(cluster), box.kubeconfig_of(cluster))
            box.kubeconfig_of(cluster).chmod(0o600)
        with progress.step(f"starting kg on {count} nodes ({granularity} granularity)"):
            for node in bed.nodes:
                # Kilo's defaults: the testbed's faster resync is for tests.
                bed.start_agent(
                    node, "--log-level=info", "--resync-period=30s", granularity=granularity
                )
            box.save(_snapshot(box, bed, granularity))
            _wait(
                lambda: _agents_healthy(bed),
                timeout=AGENTS_TIMEOUT * slow,
                what="not every kg became healthy",
            )
        with progress.step("adding a pod to each node (the bridge and host-local CNI plugins)"):
            for node in bed.nodes:
                bed.add_pod(node, f"pod-{node}", timeout=AGENTS_TIMEOUT * slow)
            box.save(_snapshot(box, bed, granularity))
        if options.clusters == 1:
            # The laptop is a Peer of one cluster: it would reach no pod of a second one.
            with progress.step(f"connecting the VPN peer {PEER} (kgctl showconf peer, wg setconf)"):
                _connect_peer(bed, box.kubeconfig, timeout=60 * slow)
        else:
            with progress.step(
                f"linking the clusters: kgctl multicluster link --name={LINK} --watch, in the "
                f"background (log: {bed.logs / LINK_LOG})"
            ):
                link = _start_link(box, bed)
                box.save(_snapshot(box, bed, granularity, link=link))
        current = _snapshot(box, bed, granularity, link=link)
        box.save(current)
        with progress.step("waiting for the mesh to converge"):

            def converged() -> bool:
                if link is not None:
                    _link_running(bed, link)
                return _converged(box, current)

            _wait(
                converged,
                timeout=CONVERGE_TIMEOUT * slow,
                what="the mesh did not converge (nodes, leaders, WireGuard peers or the "
                "link's Peers)",
                interval=1.0,
            )
        # Neither the office (behind NAT) nor the laptop (no endpoint) can dial the other:
        # the office's leader learns the laptop's address from the endpoints the other
        # leaders discovered and publish when they check in (every resync period).
        with progress.step(
            "measuring reachability with real packets (the NATed office learns the VPN "
            "peer's address at the next check-in: up to 30 s)"
        ):
            reached = measure(targets(current), timeout=REACH_TIMEOUT * slow)
        graph = _write_graph(box, current.clusters)
        listings = _listings(box, current)
        table = _tables(box, current)
        current = replace(current, graph=str(graph), complete=True)
        box.save(current)
    except KeyboardInterrupt:
        err.write("interrupted: removing the sandbox\n")
        _remove(box)
        return 130
    except (KiloError, OSError, subprocess.SubprocessError) as exc:
        # A testbed that failed to start has removed itself, logs included.
        logs = box.workdir / "logs"
        where = f"logs in {logs}; " if logs.is_dir() else ""
        err.write(
            f"kilo-sandbox up failed: {exc}\n{where}`kilo-sandbox down` removes what is left.\n"
        )
        return 1
    finally:
        bed.close_client()
    labels = [t.label for t in targets(current)]
    out.write(table)
    out.write(report.matrix(labels, labels, reached))
    if options.attached_plane is None:  # the host of up --kernel writes its own
        out.write("\n")
        out.write(_summary(box, current, listings))
    good, total = report.tally(reached)
    if good != total:
        missed = ", ".join(f"{a} -> {b}" for a, b in report.failures(reached))
        err.write(f"not every path is reachable ({missed}); the sandbox keeps running.\n")
        return 1
    return 0


# --- up --kernel ---------------------------------------------------------------------------------


def _vm_summary(box: Sandbox, current: state.State, kernel: Kernel) -> str:
    guest = Path(current.share) / "sandbox"
    kgctl_cmd = _command("kgctl", "kilo.cli.kgctl")
    sandbox_cmd = _command("kilo-sandbox", "kilo.sandbox")
    dir_flag = "" if box.directory == DEFAULT_DIR.resolve() else f" --dir {box.directory}"
    lines = [
        f"Kilo sandbox {box.prefix} in {box.directory}, inside a virtual machine with "
        f"{kernel.package} {kernel.version} (QEMU, emulated): kernel WireGuard created by kg "
        "and IPIP inside each location, Kilo's defaults.",
        f"Graph: {current.graph or '(none)'}.",
        "",
        f"kgctl against the sandbox (API server {current.api_server}, beside the VM, "
        "reachable from this machine only):",
        f"  export KUBECONFIG={box.kubeconfig}",
        *_commented(
            [
                (f"{kgctl_cmd} list -o wide", "segments, pod CIDRs, keys"),
                (f"{kgctl_cmd} graph | dot -Tsvg > mesh.svg", "the mesh as a picture"),
            ]
        ),
        f"The guest's files: {guest} (logs of every kg in {guest / state.RUN_DIR / 'logs'}).",
        "Then:",
        *_commented(
            [
                (f"{sandbox_cmd} status{dir_flag}", "asks the guest: handshakes, reachability"),
                (f"{sandbox_cmd} down{dir_flag}", "stops the VM, removes everything"),
            ]
        ),
    ]
    return "\n".join(lines) + "\n"


def _vm_processes(host: vm.VMHost, machine: vm.VirtualMachine) -> tuple[state.Process, ...]:
    processes: list[state.Process | None] = []
    if machine.process is not None:
        processes.append(_record(machine.process.pid, "qemu"))
    if host.plane is not None:
        for role, popen in (("etcd", host.plane.etcd), ("kube-apiserver", host.plane.apiserver)):
            if popen is not None:
                processes.append(_record(popen.pid, role))
    return tuple(p for p in processes if p is not None)


def _ready_to_build(box: Sandbox, problem: str | None, err: TextIO) -> bool:
    """Whether ``up`` may build in ``box``: no missing prerequisite (``problem``), nothing
    left of another sandbox, a directory it can create; else why not, on ``err``."""
    if problem is not None:
        err.write(problem + "\n")
        return False
    if box.leftovers():
        err.write(
            f"a sandbox is already up in {box.directory} ({', '.join(box.leftovers()[:3])}): "
            "`kilo-sandbox status` shows it, `kilo-sandbox down` removes it.\n"
        )
        return False
    # Children (ip, iptables, wg...) are looked up on this PATH; sudo's may lack sbin.
    os.environ["PATH"] = ":".join(prerequisites.search_path())
    try:
        box.directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        err.write(f"cannot create the sandbox's directory {box.directory}: {exc.strerror}\n")
        return False
    return True


def _up_in_vm(options: UpOptions, out: TextIO, err: TextIO) -> int:
    box = Sandbox(options.directory)
    cached = cached_binaries()
    problem = (
        _check_prerequisites("kilo-sandbox up --kernel", binaries_built=cached is not None)
        or guest_missing()
    )
    if not _ready_to_build(box, problem, err):
        return 1
    progress = Progress(err)
    host: vm.VMHost | None = None
    try:
        if cached is not None:
            binaries = cached
        else:
            with progress.step("building etcd and kube-apiserver (about 12 minutes, once)") as step:
                binaries = build_binaries(on_progress=step.note)
        with progress.step("fetching Debian's kernel (apt-get download, once)") as step:
            kernel = fetch_kernel(on_progress=step.note)
        host = vm.VMHost(binaries=binaries, prefix=box.prefix, workdir=box.workdir, owned=False)
        with progress.step("starting etcd and kube-apiserver beside the virtual machine"):
            host.start()
            plane = host.wait_plane()
        shutil.copyfile(plane.admin_kubeconfig, box.kubeconfig)
        box.kubeconfig.chmod(0o600)
        guest_dir = host.share / "sandbox"
        command = GuestCommand(
            argv=[
                sys.executable,
                *("-m", "kilo.sandbox", "guest", "--dir", str(guest_dir)),
                *("--attached-plane", str(host.share / vm.PLANE_DIR)),
                *("--locations", str(options.locations), "--nodes", str(options.nodes)),
                *("--granularity", options.granularity),
            ],
            cwd=Path("/"),
            share=host.share,
            timeout=None,
            env=[("PYTHONDONTWRITEBYTECODE", "1")],
        )
        machine = vm.VirtualMachine(kernel, command, workdir=box.workdir / "vm", netns=host.netns)
        machine.start()
        current = state.State(
            directory=str(box.directory),
            prefix=box.prefix,
            granularity=options.granularity,
            host_link=box.host_link,
            workdir=str(box.workdir),
            api_server=plane.server,
            kubeconfig=str(box.kubeconfig),
            namespaces=tuple(runs.run_namespaces(box.prefix)),
            processes=_vm_processes(host, machine),
            kernel=f"{kernel.package} {kernel.version}",
            share=str(host.share),
        )
        box.save(current)
        result_path = host.share / UP_RESULT
        log_path = host.share / UP_LOG
        with progress.step(
            f"booting {kernel.release} under emulation; inside it, the sandbox with kg's "
            "defaults (several minutes)"
        ) as step:
            seen = 0

            def finished() -> bool:
                nonlocal seen
                with contextlib.suppress(OSError):
                    lines = log_path.read_text(errors="replace").splitlines()
                    for line in lines[seen:]:
                        step.note(line)
                    seen = len(lines)
                if not machine.running():
                    raise SandboxError(
                        f"the virtual machine stopped: {machine.diagnostics(lines=30)}"
                    )
                return result_path.exists()

            _wait(finished, timeout=VM_UP_TIMEOUT, what="the guest's sandbox did not come up")
        result = json.loads(result_path.read_text())
        guest_graph = next(
            (guest_dir / n for n in state.GRAPH_FILES if (guest_dir / n).exists()), None
        )
        graph = ""
        if guest_graph is not None:
            shutil.copyfile(guest_graph, box.directory / guest_graph.name)
            graph = str(box.directory / guest_graph.name)
        current = replace(current, graph=graph, complete=True)
        box.save(current)
    except KeyboardInterrupt:
        err.write("interrupted: removing the sandbox\n")
        _remove(box)
        return 130
    except (KiloError, OSError, ValueError, subprocess.SubprocessError) as exc:
        err.write(
            f"kilo-sandbox up --kernel failed: {exc}\n"
            f"files in {box.workdir}; `kilo-sandbox down` removes what is left.\n"
        )
        return 1
    out.write(str(result.get("out", "")))
    out.write("\n")
    out.write(_vm_summary(box, current, kernel))
    if result.get("status") != 0:
        err.write(str(result.get("err", "")) or "the guest's sandbox is not healthy\n")
        return 1
    return 0


def guest(options: UpOptions, share: Path) -> int:
    """Inside the VM of ``up --kernel``: ``up`` (its progress in ``<share>/up.log``, its
    result in ``<share>/up.json``), then answer the host's ``status`` requests until the
    VM is stopped."""
    out = io.StringIO()
    with open(share / UP_LOG, "w", buffering=1) as log:
        code = up(options, out, log)
    _write_json(share / UP_RESULT, {"status": code, "out": out.getvalue(), "err": ""})
    requests, responses = share / "requests", share / "responses"
    requests.mkdir(exist_ok=True)
    responses.mkdir(exist_ok=True)
    while True:
        for request in sorted(requests.glob("*.request")):
            answer, problems = io.StringIO(), io.StringIO()
            try:
                code = status(options.directory, answer, problems, slowdown=options.slowdown)
            except KiloError as exc:
                problems.write(f"{exc}\n")
                code = 1
            _write_json(
                responses / f"{request.stem}.json",
                {"status": code, "out": answer.getvalue(), "err": problems.getvalue()},
            )
            request.unlink()
        time.sleep(1)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.new")
    temporary.write_text(json.dumps(data))
    temporary.replace(path)


def _status_in_vm(current: state.State, out: TextIO) -> int:
    """Ask the guest of ``up --kernel`` for its ``status`` and print it."""
    share = Path(current.share)
    name = uuid.uuid4().hex
    (share / "requests").mkdir(exist_ok=True)
    (share / "requests" / f"{name}.request").write_text("status\n")
    response = share / "responses" / f"{name}.json"
    qemu = next((p for p in current.processes if p.role == "qemu"), None)

    def answered() -> bool:
        if qemu is None or runs.process_start(qemu.pid) != qemu.start:
            raise SandboxError("the virtual machine is not running")
        return response.exists()

    _wait(answered, timeout=VM_STATUS_TIMEOUT, what="the guest did not answer", interval=1.0)
    result = json.loads(response.read_text())
    response.unlink()
    out.write(f"inside the virtual machine ({current.kernel}):\n")
    out.write(str(result.get("out", "")))
    out.write(str(result.get("err", "")))
    return 0 if result.get("status") == 0 else 1


# --- status -------------------------------------------------------------------------------------


def status(directory: Path, out: TextIO, err: TextIO, *, slowdown: float = 1.0) -> int:
    box = Sandbox(directory)
    if os.geteuid() != 0:
        err.write("kilo-sandbox status needs root (it enters the sandbox's namespaces).\n")
        return 1
    os.environ["PATH"] = ":".join(prerequisites.search_path())
    try:
        current = box.load()
    except SandboxError as exc:
        left = runs.run_namespaces(box.prefix)
        hint = (
            f"; namespaces of a sandbox exist ({', '.join(left[:3])}...): "
            "`kilo-sandbox down` removes them"
            if left
            else "; `kilo-sandbox up` creates one"
        )
        err.write(f"{exc}{hint}.\n")
        return 1
    healthy = True
    rows = []
    for process in current.processes:
        running = runs.process_start(process.pid) == process.start
        healthy &= running
        rows.append(f"  {process.role:<28} {process.pid:>8}  {'running' if running else 'GONE'}")
    out.write(f"Kilo sandbox {current.prefix} in {current.directory}")
    out.write("" if current.complete else " (up did not finish)")
    out.write("\nprocesses:\n" + "\n".join(rows) + "\n\n")
    if current.kernel:
        try:
            guest_status = _status_in_vm(current, out)
        except (SandboxError, OSError, ValueError) as exc:
            out.write(f"the virtual machine does not answer: {exc}\n")
            return 1
        return 0 if healthy and guest_status == 0 else 1
    try:
        listings = _listings(box, current)
        out.write(_tables(box, current))
        names = {}
        for listing in listings:
            out.write(f"Leaders: {', '.join(report.leaders(listing)) or 'none'}\n")
            names.update(report.key_names(listing))
        out.write("\n")
        if current.clusters > 1 and not report.linked(listings, LINK):
            out.write(f"the link {LINK} has not written a Peer for every leader (yet)\n\n")
            healthy = False
    except SandboxError as exc:
        out.write(f"the API server does not answer: {exc}\n\n")
        healthy = False
        names = {}
    handshakes: list[tuple[str, report.PeerState]] = []
    for machine in [*current.nodes, *current.peers]:
        dump = wg_dump(machine.holder)
        if dump is None:
            healthy = False
            out.write(f"{machine.name}: WireGuard cannot be read (wireguard-go gone?)\n")
            continue
        handshakes += [(machine.name, peer) for peer in report.parse_dump(dump)]
    out.write(report.handshakes(handshakes, names, now=int(time.time())) + "\n")
    everyone = targets(current)
    reached = measure(everyone, timeout=STATUS_REACH_TIMEOUT * slowdown)
    labels = [t.label for t in everyone]
    out.write(report.matrix(labels, labels, reached))
    good, total = report.tally(reached)
    return 0 if healthy and good == total and total > 0 else 1


# --- down ---------------------------------------------------------------------------------------


def _kill(processes: Sequence[state.Process]) -> list[int]:
    """SIGKILL each recorded process (and its group) that is still the same process."""
    killed = []
    for process in processes:
        if runs.process_start(process.pid) != process.start:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        killed.append(process.pid)
    return killed


def _remove(box: Sandbox) -> tuple[list[str], list[str]]:
    """Remove everything; (what was removed, what is left)."""
    removed: list[str] = []
    recorded: state.State | None = None
    with contextlib.suppress(SandboxError):
        recorded = box.load()
    prefixes = [box.prefix]
    if recorded is not None and recorded.prefix not in prefixes:
        prefixes.append(recorded.prefix)
    processes = list(recorded.processes) if recorded is not None else []
    killed = _kill(processes)
    if killed:
        removed.append(f"{len(killed)} processes")
    left: list[str] = []
    for prefix in prefixes:
        namespaces = runs.run_namespaces(prefix)
        link = f"{prefix}h"
        had_link = runs.link_exists(link)
        still = runs.remove_namespaces(namespaces, link)
        left += still
        if namespaces:
            removed.append(f"{len(namespaces) - len(still)} namespaces {prefix}-*")
        if had_link:
            removed.append(f"link {link}")
        if runs.link_exists(link):
            left.append(f"link {link}")
    try:
        runs.wait_for(
            lambda: not any(runs.alive(p) for p in killed),
            timeout=10,
            message="processes survive SIGKILL",
        )
    except AssertionError:
        left += [f"process {p}" for p in killed if runs.alive(p)]
    if box.workdir.exists():
        shutil.rmtree(box.workdir, ignore_errors=True)
        removed.append(str(box.workdir))
        if box.workdir.exists():
            left.append(str(box.workdir))
    for name in (*state.FILES, f".{state.STATE_FILE}.new"):
        path = box.directory / name
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(str(path))
    with contextlib.suppress(OSError):
        box.directory.rmdir()  # only when empty: the directory may hold the user's files
    return removed, left


def down(directory: Path, out: TextIO, err: TextIO) -> int:
    box = Sandbox(directory)
    if os.geteuid() != 0:
        err.write("kilo-sandbox down needs root (it deletes network namespaces).\n")
        return 1
    os.environ["PATH"] = ":".join(prerequisites.search_path())
    removed, left = _remove(box)
    if left:
        err.write(f"could not remove: {', '.join(left)}\n")
        return 1
    if removed:
        out.write("removed " + ", ".join(removed) + "\n")
    else:
        out.write(f"nothing to remove: no sandbox in {box.directory}\n")
    return 0
