"""Time and size the ``kg`` agent on a leader, in the end-to-end testbed.

    python -m benchmarks.agent_bench [--sizes 100,300,1000] [--window 60] [--changes 50]
                                     [--quick] [--profile DIR]

Builds the network-namespace testbed of ``kilo.sandbox.testbed``: a control plane (etcd +
kube-apiserver) and one location, ``lead``, of one node that runs the real ``kg`` against
its own wireguard-go. Every other Node exists only as an API object written by this
process: simulated nodes, ``--per-location`` (10) to a location, each with a real random
WireGuard public key, an endpoint in 198.51.100.128-253 (TEST-NET-2), an internal IP in
172.24.0.0/16 and a /24 pod CIDR from 10.128.0.0/9, and everything else a
kubelet-registered Node holds (labels, annotations, a status with conditions, addresses and
32 images: about 9 KB a Node, from ``kilo.sandbox.kubelet``), as the testbed's own nodes.
Threads patch the ``last-seen`` of every simulated node once per ``--check-in`` period
(30 s, spread evenly over it), as real agents check in, over ``--writers`` (4) API
connections (plain HTTPS requests whose answers are dropped unread: since 2026-12-04;
lightkube's client before, which decoded each 10 KB answer on the cores kg is measured
on); ``--liveness-margin`` writes a last-seen that many seconds ahead, so that
Nodes stay ready when the writer falls behind on a loaded machine (at 5000 nodes) while kg
handles the same events. With location granularity every
location is one segment, so the leader has one WireGuard peer per simulated location: N/10
peers for N nodes. Nothing is ever sent to those endpoints: WireGuard only sends to a peer
when there is traffic for it or a persistent keepalive, and there is neither.

For each size N (ascending; the nodes are added to the same cluster), kg is started twice:

1. with Kilo's default ``--resync-period=30s``: start-up (from just before the process is
   started to the log line "the mesh is applied; the agent is healthy", by that line's own
   timestamp; to the WireGuard device listing all N/10 peers, read from its UAPI socket;
   ``/health`` is then checked to answer 200), then a steady-state window of ``--window``
   seconds: CPU of kg (utime + stime in /proc/<pid>/stat, as % of one core; its children,
   iptables-restore and friends, separately) and RSS (VmRSS, sampled every second), and
   beside them this process's CPU (the writers) and the machine's (/proc/stat);
2. with ``--resync-period=300s``, so that no resync lands in the measurements: start-up
   again, a steady window with only check-ins, then ``--changes`` annotation changes: each
   patches one simulated node's ``kilo.squat.ai/allowed-location-ips`` to a fresh /32 in
   100.64.0.0/10, timed from just before the patch to the moment the leader's WireGuard
   device lists that /32 as an allowed IP (its UAPI socket polled every 2 ms).

``--profile DIR`` runs every kg under cProfile (all threads; the hook is this module, run
as the agent with ``KILO_BENCH_PROFILE`` set) and prints its top functions; such runs are
slower, so their numbers are not for the README. Every wait is bounded; the testbed (its
namespaces and processes) is removed in every case. Nothing here is a target: the numbers
are context for the README, and they include the noise of a machine that also runs the
API server, etcd and the check-in writer.
"""

from __future__ import annotations

import argparse
import calendar
import concurrent.futures
import contextlib
import http.client
import io
import itertools
import json
import math
import os
import platform
import pstats
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, cast
from urllib.parse import urlsplit

from lightkube import Client, KubeConfig
from lightkube.resources.core_v1 import Node
from lightkube.types import PatchType

from kilo.adapters import watchstream
from kilo.adapters.keyfile import generate_private_key
from kilo.mesh import translate
from kilo.sandbox import kubelet, runs, testbed
from kilo.sandbox.controlplane import build_binaries
from kilo.sandbox.testbed import Location, Testbed

# kg under cProfile runs this module (python -m benchmarks.agent_bench) from the checkout.
ROOT = Path(__file__).resolve().parents[1]
PROFILE_ENV = "KILO_BENCH_PROFILE"
LEADER_LOCATION = "lead"
LEADER = f"{LEADER_LOCATION}-1"
HEALTHY = "the mesh is applied; the agent is healthy"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024
# The UAPI poll interval while waiting for a change (--poll). Each poll makes wireguard-go
# print every peer (about 125 KB at 500 peers) on the cores kg shares.
POLL = 0.002
CHANGE_GAP = 0.25  # between two changes, so that each is applied on its own
CHANGE_TIMEOUT = 30.0
CREATE_WORKERS = 8


class BenchError(RuntimeError):
    """A phase failed or did not finish in time; the message says which."""


# --- simulated nodes ---------------------------------------------------------------------------


def sim_name(i: int) -> str:
    return f"sim-{i:05d}"


def sim_object(i: int, per_location: int, last_seen: int) -> dict[str, Any]:
    """A simulated node as a cluster holds it (kubelet labels, annotations and status, see
    kilo.sandbox.kubelet) with the annotations its Kilo agent would have written."""
    # 198.51.100.128-253 stays clear of the /30s the testbeds take for the host link
    # (from 198.51.100.0 up); the port keeps endpoints distinct.
    host, port = 128 + i % 126, 51820 + i // 126
    internal = f"172.24.{i // 250}.{i % 250 + 1}"
    return kubelet.node(
        sim_name(i),
        internal_ip=internal,
        pod_cidr=f"10.{128 + i // 256}.{i % 256}.0/24",
        labels={testbed.TOPOLOGY_LABEL: f"sim{i // per_location:04d}"},
        annotations={
            translate.KEY: str(generate_private_key().public_key()),
            translate.ENDPOINT: f"198.51.100.{host}:{port}",
            translate.INTERNAL_IP: f"{internal}/16",
            translate.LAST_SEEN: str(last_seen),
        },
        now=last_seen,
    )


class Clients:
    """Admin clients for worker threads (one each), closed together."""

    def __init__(self, kubeconfig: Path) -> None:
        self._kubeconfig = kubeconfig
        self._local = threading.local()
        self._all: list[Client] = []
        self._lock = threading.Lock()

    def get(self) -> Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = Client(KubeConfig.from_file(str(self._kubeconfig)), trust_env=False)
            self._local.client = client
            with self._lock:
                self._all.append(client)
        return cast(Client, client)

    def close(self) -> None:
        with self._lock:
            for client in self._all:
                with contextlib.suppress(Exception):
                    client.close()
            self._all.clear()


def create_nodes(clients: Clients, indexes: Iterable[int], per_location: int) -> float:
    """Create the simulated nodes; the seconds it took."""
    now = int(time.time())

    def create(i: int) -> None:
        clients.get().create(
            cast(Node, Node.from_dict(sim_object(i, per_location, now))),
            field_manager=kubelet.FIELD_MANAGER,
        )

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(CREATE_WORKERS) as pool:
        for future in [pool.submit(create, i) for i in indexes]:
            future.result(timeout=120)
    return time.perf_counter() - start


class Patcher:
    """Merge patches of Nodes over one kept-alive HTTPS connection, each answer read and
    dropped: a check-in writer that costs this machine about what a remote agent's costs
    the API server's host. lightkube's client decodes every answer (a 10 KB Node) into its
    models, which at 167 patches a second took a share of the two cores kg is measured on.
    The TLS context and credentials are lightkube's (:class:`watchstream.Connection`)."""

    def __init__(self, kubeconfig: Path) -> None:
        config = KubeConfig.from_file(str(kubeconfig)).get()
        if config is None:
            raise BenchError(f"{kubeconfig} has no current context")
        server, self._context, auth = watchstream.Connection(config).params()
        if auth is not None:
            raise BenchError("the check-in writer takes a kubeconfig with a client certificate")
        parts = urlsplit(server)
        self._host, self._port = parts.hostname or "", parts.port or 443
        self._conn: http.client.HTTPSConnection | None = None

    def patch(self, name: str, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        for attempt in range(2):  # once more on a new connection if the kept one was closed
            if self._conn is None:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, context=self._context, timeout=30
                )
            try:
                self._conn.request(
                    "PATCH",
                    f"/api/v1/nodes/{name}",
                    body=payload,
                    headers={"Content-Type": "application/merge-patch+json"},
                )
                response = self._conn.getresponse()
                answer = response.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
                continue
            if response.status != 200:
                raise BenchError(f"patching {name}: HTTP {response.status}: {answer[:200]!r}")
            return

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class CheckIns:
    """Patch every simulated node's last-seen once per period, spread evenly over it; a new
    list of names starts a new period at once (so new nodes are refreshed in time).

    ``writers`` threads share the schedule, each with its own API connection: writer ``j``
    patches names ``j``, ``j + writers``, ... at their times. One connection cannot keep up
    at 5000 nodes (167 patches a second on this 2-core machine, while the API server, etcd
    and kg share it, and a patch takes 20-50 ms there): check-ins then lapse past the 60 s
    liveness window, Nodes flap between ready and not ready, and the leader re-applies
    instead of measuring a steady state. Four connections reached about 110 a second, 16
    about 70 (at load 9: the API server is the limit).

    ``margin`` seconds are added to the last-seen written (``--liveness-margin``): a node
    then stays alive up to ``margin`` seconds longer when the writer falls behind, while
    the check-ins (their number and size, the events kg handles) are the same."""

    def __init__(
        self, kubeconfig: Path, period: float, writers: int = 4, margin: float = 0.0
    ) -> None:
        self._kubeconfig = kubeconfig
        self.period = period
        self.margin = margin
        self._names: list[str] = []
        self._wake = [threading.Event() for _ in range(writers)]
        self._threads = [
            threading.Thread(target=self._run, args=(j,), name=f"check-ins-{j}", daemon=True)
            for j in range(writers)
        ]
        self._stopping = False
        self._lock = threading.Lock()
        self.patches = 0
        self.failures = 0
        self.last_error = ""
        self.max_lag = 0.0

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def set_names(self, names: Sequence[str]) -> None:
        with self._lock:
            self._names = list(names)
        for wake in self._wake:
            wake.set()

    def stop(self) -> None:
        self._stopping = True
        for wake in self._wake:
            wake.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, j: int) -> None:
        patcher = Patcher(self._kubeconfig)
        try:
            self._schedule(j, patcher)
        finally:
            patcher.close()

    def _schedule(self, j: int, patcher: Patcher) -> None:
        wake, writers = self._wake[j], len(self._threads)
        while not self._stopping:
            wake.clear()
            with self._lock:
                names = list(self._names)
            start = time.monotonic()
            interrupted = False
            for k in range(j, len(names), writers):
                delay = start + k * self.period / len(names) - time.monotonic()
                if delay > 0 and wake.wait(delay):
                    interrupted = True
                    break
                with self._lock:
                    self.max_lag = max(self.max_lag, -delay)
                self._check_in(patcher, names[k])
            if not interrupted:
                wake.wait(max(0.0, start + self.period - time.monotonic()))

    def _check_in(self, patcher: Patcher, name: str) -> None:
        last_seen = str(int(time.time() + self.margin))
        body = {"metadata": {"annotations": {translate.LAST_SEEN: last_seen}}}
        try:
            patcher.patch(name, body)
            with self._lock:
                self.patches += 1
        except Exception as exc:  # counted and reported; the writer keeps going
            with self._lock:
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"


# --- reading the agent and its WireGuard device ------------------------------------------------


def uapi_get(path: Path) -> bytes:
    """The raw reply to ``get=1``: a substring test on it is cheap enough to poll often."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(5)
        connection.connect(str(path))
        connection.sendall(b"get=1\n\n")
        reply = b""
        while not reply.endswith(b"\n\n"):
            chunk = connection.recv(65536)
            if not chunk:
                break
            reply += chunk
    return reply


def peer_count(path: Path) -> int:
    return uapi_get(path).count(b"\npublic_key=")


@dataclass
class ProcSample:
    at: float
    ticks: int  # utime + stime
    child_ticks: int  # cutime + cstime (children the agent has waited for)
    rss: int
    hwm: int
    threads: int


def proc_sample(pid: int) -> ProcSample:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError as exc:
        raise BenchError(f"kg (pid {pid}) is gone: {exc}") from exc
    fields = stat.rsplit(")", 1)[1].split()  # fields[0] is the state (field 3)
    values = {}
    for line in status.splitlines():
        key, _, rest = line.partition(":")
        values[key] = rest.split()
    return ProcSample(
        at=time.monotonic(),
        ticks=int(fields[11]) + int(fields[12]),
        child_ticks=int(fields[13]) + int(fields[14]),
        rss=int(values["VmRSS"][0]) * 1024,
        hwm=int(values["VmHWM"][0]) * 1024,
        threads=int(values["Threads"][0]),
    )


def machine_ticks() -> int:
    """Busy clock ticks of all CPUs since boot (/proc/stat: user, nice, system, irq and
    softirq; not idle, iowait or the hypervisor's steal)."""
    ticks = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6]


def agent_pid(process: subprocess.Popen[bytes], module: str) -> int:
    """The Popen's pid once nsenter has exec'd into kg (checked in its command line)."""

    def cmdline() -> list[str]:
        try:
            raw = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        except OSError:
            return []
        return raw.decode(errors="replace").split("\0")

    def is_kg() -> bool:
        if process.poll() is not None:
            raise BenchError(f"kg exited with {process.returncode} at start-up")
        args = cmdline()
        return "-m" in args and module in args and Path(args[0]).name.startswith("python")

    runs.wait_for(is_kg, timeout=10, interval=0.01, message="kg did not exec")
    return process.pid


def log_time(ts: str) -> float:
    """Unix seconds of a log ``ts`` (RFC 3339 UTC with nanoseconds)."""
    head, _, fraction = ts.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{fraction or 0}")


# kg's start-up by its log: the first Node's event (the list is in), the last one before
# the first apply, the iptables rules applied, the WireGuard peers written.
STARTUP_STEPS = {
    "first node": "node changed",
    "last node": "node changed",
    "iptables": "iptables rules",
    "WireGuard": "WireGuard configurations are different",
}

SPLIT_STEPS = {
    "seen": "node changed",
    "iptables": "iptables rules",  # "applying N iptables rules", after the restore
    "WireGuard": "WireGuard configurations are different",  # after the write
}


def log_split(
    path: Path, offset: int, patched: Sequence[tuple[str, float]]
) -> dict[str, tuple[float, float, int]]:
    """Where the time of each change went, by kg's own log lines (see ``Latency.split``):
    for each step, (median ms, p95 ms, how many changes had the line). A change's lines
    are the first of each kind after its patch began and before the next patch began
    (changes are ``CHANGE_GAP`` apart and each is read off the device before the next)."""
    entries: list[tuple[float, str, str]] = []
    with open(path, "rb") as log:
        log.seek(offset)
        for line in log:
            with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                entry = json.loads(line)
                entries.append((log_time(entry["ts"]), entry["msg"], str(entry.get("node", ""))))
    times: dict[str, list[float]] = {step: [] for step in SPLIT_STEPS}
    for i, (name, start) in enumerate(patched):
        end = patched[i + 1][1] if i + 1 < len(patched) else math.inf
        window = [e for e in entries if start <= e[0] < end]
        seen = next(
            (t for t, msg, node in window if msg == SPLIT_STEPS["seen"] and node == name), None
        )
        if seen is None:
            continue
        times["seen"].append(seen - start)
        for step in ("iptables", "WireGuard"):
            found = next(
                (t for t, msg, _ in window if t >= seen and msg.endswith(SPLIT_STEPS[step])), None
            )
            if found is not None:
                times[step].append(found - start)
    return {
        step: (1000 * statistics.median(ts), 1000 * percentile(ts, 95), len(ts))
        for step, ts in times.items()
        if ts
    }


def scrape(bed: Testbed) -> dict[str, float]:
    """The agent's ``kilo_*`` metrics, fetched from inside the leader's namespace."""
    lan_ip = bed.nodes[LEADER].lan_ip
    code = (
        "import urllib.request, sys\n"
        f"sys.stdout.write(urllib.request.urlopen('http://{lan_ip}:1107/metrics').read().decode())"
    )
    out = bed.run(LEADER, sys.executable, "-c", code)
    metrics: dict[str, float] = {}
    for line in out.splitlines():
        if line.startswith("kilo_") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            metrics[name] = float(value)
        elif line.startswith("kilo_iptables_operations_total{"):
            metrics["kilo_iptables_operations_total"] = metrics.get(
                "kilo_iptables_operations_total", 0.0
            ) + float(line.rsplit(" ", 1)[1])
    return metrics


def health_status(bed: Testbed) -> int:
    lan_ip = bed.nodes[LEADER].lan_ip
    code = (
        "import urllib.request, urllib.error\n"
        "try:\n"
        f"    print(urllib.request.urlopen('http://{lan_ip}:1107/health').status)\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code)\n"
    )
    return int(bed.run(LEADER, sys.executable, "-c", code).strip())


# --- phases ------------------------------------------------------------------------------------


@dataclass
class Startup:
    to_first_log_s: float  # interpreter start-up and imports
    to_healthy_s: float
    to_all_peers_s: float
    health: int
    peak_rss_mib: float  # VmHWM once converged
    # Seconds after the start, by kg's own log lines (STARTUP_STEPS): where start-up went.
    split: dict[str, float] = field(default_factory=dict)


@dataclass
class Steady:
    resync: str
    window_s: float
    cpu_pct: float  # of one core, kg's own threads
    cpu_peak_1s_pct: float
    children_cpu_pct: float
    rss_mib: float  # mean
    rss_max_mib: float
    threads: int
    reconciles: float
    iptables_operations: float
    check_ins: int
    # This process (the check-in writers, the sampling) and the whole machine (both cores:
    # 200 % is all of them), over the window: what kg shared the cores with.
    bench_cpu_pct: float = 0.0
    machine_cpu_pct: float = 0.0


@dataclass
class Latency:
    changes: int
    median_ms: float
    p95_ms: float
    max_ms: float
    patch_median_ms: float  # the API write alone
    # From kg's own log, ms after the patch began, (median, p95) over the changes found
    # there: its "node changed" line, its "applying N iptables rules" line (only changes
    # whose apply rewrote iptables), its "WireGuard configurations are different" line.
    split: dict[str, tuple[float, float, int]] = field(default_factory=dict)


@dataclass
class SizeResult:
    nodes: int
    peers: int
    create_s: float
    startups: dict[str, Startup] = field(default_factory=dict)
    steady: list[Steady] = field(default_factory=list)
    latency: Latency | None = None
    profiles: list[str] = field(default_factory=list)


@dataclass
class Options:
    sizes: list[int]
    per_location: int
    window: float
    changes: int
    check_in: float
    writers: int
    liveness_margin: float
    settle: float
    profile: Path | None
    poll: float = POLL


class Agent:
    """One kg on the leader: started, measured, stopped."""

    def __init__(self, bed: Testbed, opts: Options, resync: str, tag: str) -> None:
        self.bed = bed
        self.resync = resync
        self.profile = opts.profile / f"kg-{tag}.prof" if opts.profile else None
        self.module = "benchmarks.agent_bench" if self.profile else "kilo.agent"
        self.poll = opts.poll
        self.uapi = bed.path(LEADER, f"/var/run/wireguard/{testbed.WG_INTERFACE}.sock")
        self.process: subprocess.Popen[bytes] | None = None
        self.pid = 0

    def start(self, expected_peers: int, timeout: float) -> Startup:
        if peer_count(self.uapi):
            raise BenchError("the leader's WireGuard device has peers before kg starts")
        log_path = self.bed.agent_log_path(LEADER)
        offset = log_path.stat().st_size if log_path.exists() else 0
        env = {}
        if self.profile is not None:
            # This checkout's benchmarks and kilo (not the one a venv may have installed).
            path = os.pathsep.join([str(ROOT), str(ROOT / "src")])
            env = {PROFILE_ENV: str(self.profile), "PYTHONPATH": path}
        started = time.time()
        self.process = self.bed.start_agent(
            LEADER,
            f"--resync-period={self.resync}",
            "--log-level=info",
            env=env,
            module=self.module,
        )
        self.pid = agent_pid(self.process, self.module)
        first_log = healthy = all_peers = None
        split: dict[str, float] = {}
        deadline = started + timeout
        with open(log_path, "rb") as log:
            log.seek(offset)
            pending = b""
            while healthy is None or all_peers is None:
                if self.process.poll() is not None:
                    raise BenchError(f"kg exited with {self.process.returncode}: {self.tail()}")
                if time.time() > deadline:
                    raise BenchError(
                        f"kg: not healthy with {expected_peers} peers within {timeout:.0f} s "
                        f"(healthy: {healthy is not None}; peers: {peer_count(self.uapi)}): "
                        f"{self.tail()}"
                    )
                pending += log.read()
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    with contextlib.suppress(ValueError):
                        entry = json.loads(line)
                        if first_log is None:
                            first_log = log_time(entry["ts"])
                        if healthy is None and entry.get("msg") == HEALTHY:
                            healthy = log_time(entry["ts"])
                        msg, at = str(entry.get("msg", "")), log_time(entry["ts"]) - started
                        for step, text in STARTUP_STEPS.items():
                            if not msg.endswith(text) or (step != "last node" and step in split):
                                continue
                            if step == "last node" and "iptables" in split:
                                continue
                            split[step] = at
                if all_peers is None and peer_count(self.uapi) == expected_peers:
                    all_peers = time.time()
                time.sleep(0.01)
        sample = proc_sample(self.pid)
        return Startup(
            to_first_log_s=(first_log or healthy) - started,
            to_healthy_s=healthy - started,
            to_all_peers_s=all_peers - started,
            health=health_status(self.bed),
            peak_rss_mib=sample.hwm / MIB,
            split=split,
        )

    def steady(self, window: float, check_ins: CheckIns) -> Steady:
        before = scrape(self.bed)
        patches = check_ins.patches
        bench_before, machine_before = time.process_time(), machine_ticks()
        samples = [proc_sample(self.pid)]
        end = samples[0].at + window
        while samples[-1].at < end:
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
            samples.append(proc_sample(self.pid))
        bench_cpu, machine_after = time.process_time() - bench_before, machine_ticks()
        after = scrape(self.bed)
        first, last = samples[0], samples[-1]
        elapsed = last.at - first.at
        peaks = [
            (b.ticks - a.ticks) / CLK_TCK / (b.at - a.at)
            for a, b in itertools.pairwise(samples)
            if b.at > a.at
        ]
        return Steady(
            resync=self.resync,
            window_s=elapsed,
            cpu_pct=100 * (last.ticks - first.ticks) / CLK_TCK / elapsed,
            cpu_peak_1s_pct=100 * max(peaks, default=0.0),
            children_cpu_pct=100 * (last.child_ticks - first.child_ticks) / CLK_TCK / elapsed,
            rss_mib=statistics.fmean(s.rss for s in samples) / MIB,
            rss_max_mib=max(s.rss for s in samples) / MIB,
            threads=last.threads,
            reconciles=after.get("kilo_reconciles_total", 0)
            - before.get("kilo_reconciles_total", 0),
            iptables_operations=after.get("kilo_iptables_operations_total", 0)
            - before.get("kilo_iptables_operations_total", 0),
            check_ins=check_ins.patches - patches,
            bench_cpu_pct=100 * bench_cpu / elapsed,
            machine_cpu_pct=100 * (machine_after - machine_before) / CLK_TCK / elapsed,
        )

    def latency(self, client: Client, names: Sequence[str], changes: int, first: int) -> Latency:
        rng = random.Random(len(names))
        samples, writes = [], []
        patched: list[tuple[str, float]] = []  # (node, wall clock at the patch's start)
        log_path = self.bed.agent_log_path(LEADER)
        offset = log_path.stat().st_size if log_path.exists() else 0
        cidr = ""
        for j in range(first, first + changes):
            name = names[rng.randrange(len(names))]
            cidr = f"100.{64 + j // 65536}.{j // 256 % 256}.{j % 256}/32"
            needle = f"\nallowed_ip={cidr}\n".encode()
            time.sleep(CHANGE_GAP)
            body = {"metadata": {"annotations": {translate.ALLOWED_LOCATION_IPS: cidr}}}
            patched.append((name, time.time()))
            start = time.perf_counter()
            client.patch(Node, name, body, patch_type=PatchType.MERGE)
            writes.append(time.perf_counter() - start)
            while needle not in uapi_get(self.uapi):
                if time.perf_counter() - start > CHANGE_TIMEOUT:
                    raise BenchError(
                        f"{name}: allowed-location IP {cidr} not on the leader's WireGuard "
                        f"device after {CHANGE_TIMEOUT:.0f} s: {self.tail()}"
                    )
                time.sleep(self.poll)
            samples.append(time.perf_counter() - start)
        # The same answer through the harness, as the e2e tests read it.
        if cidr not in self.bed.run(LEADER, "wg", "show", testbed.WG_INTERFACE, "allowed-ips"):
            raise BenchError(f"wg show does not list {cidr}")
        return Latency(
            changes=changes,
            median_ms=1000 * statistics.median(samples),
            p95_ms=1000 * percentile(samples, 95),
            max_ms=1000 * max(samples),
            patch_median_ms=1000 * statistics.median(writes),
            split=log_split(log_path, offset, patched),
        )

    def stop(self) -> list[str]:
        """Stop kg (SIGTERM; it cleans up); the top of its profile, if it was profiled."""
        if self.process is None:
            return []
        # Clean-up removes every route (some 9000 at 5000 nodes, batched since the
        # route table writes in batches; one request each, it took over 30 s under load).
        code = self.bed.stop_agent(LEADER, timeout=120)
        self.process = None
        if code != 0:
            raise BenchError(f"kg exited with {code} on SIGTERM: {self.tail()}")
        # Clean-up empties the device; the next start counts peers from zero.
        runs.wait_for(lambda: peer_count(self.uapi) == 0, timeout=10, message="peers left after kg")
        if self.profile is None:
            return []
        return profile_summary(self.profile)

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.bed.agent_log(LEADER).splitlines()[-lines:])


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def profile_summary(path: Path, top: int = 20) -> list[str]:
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    # Blocking waits (poll, queue gets) lead the unrestricted lists; Kilo's own functions
    # by cumulative time show where the work goes.
    stats.sort_stats(pstats.SortKey.CUMULATIVE).print_stats("src/kilo/", top)
    stats.sort_stats(pstats.SortKey.TIME).print_stats(top)
    return [f"--- profile {path}", *out.getvalue().splitlines()]


def measure_size(
    bed: Testbed, opts: Options, names: list[str], check_ins: CheckIns, *, create_s: float
) -> SizeResult:
    size = len(names)
    peers = math.ceil(size / opts.per_location)
    result = SizeResult(nodes=size, peers=peers, create_s=create_s)
    timeout = 60 + 0.2 * size
    for resync in ("30s", "300s"):
        agent = Agent(bed, opts, resync, f"{size}-{resync}")
        try:
            result.startups[resync] = agent.start(peers, timeout)
            print(f"  kg --resync-period={resync}: {result.startups[resync]}", flush=True)
            time.sleep(opts.settle)  # the start-up's own writes and their echoes
            result.steady.append(agent.steady(opts.window, check_ins))
            print(f"  steady: {result.steady[-1]}", flush=True)
            if resync == "300s":
                result.latency = agent.latency(
                    bed.api(), names, opts.changes, first=opts.sizes.index(size) * opts.changes
                )
                print(f"  latency: {result.latency}", flush=True)
        except BaseException:
            with contextlib.suppress(Exception):  # the first failure is the one to report
                agent.stop()
            raise
        result.profiles += agent.stop()
    return result


def run(opts: Options) -> list[SizeResult]:
    runs.cleanup_stale()
    results = []
    binaries = build_binaries()
    with Testbed([Location(LEADER_LOCATION, nodes=1)], binaries=binaries) as bed:
        clients = Clients(bed.admin_kubeconfig)
        check_ins = CheckIns(
            bed.admin_kubeconfig, opts.check_in, opts.writers, opts.liveness_margin
        )
        check_ins.start()
        names: list[str] = []
        try:
            for size in opts.sizes:
                create_s = create_nodes(clients, range(len(names), size), opts.per_location)
                names = [sim_name(i) for i in range(size)]
                check_ins.set_names(names)
                print(f"{size} simulated nodes created in {create_s:.1f} s", flush=True)
                results.append(measure_size(bed, opts, names, check_ins, create_s=create_s))
        except BaseException:
            sys.stderr.write(f"--- kg log tail\n{bed.agent_log(LEADER)[-4000:]}\n")
            raise
        finally:
            check_ins.stop()
            clients.close()
        if check_ins.failures:
            print(f"note: {check_ins.failures} check-in patches failed: {check_ins.last_error}")
        if check_ins.max_lag > 1:
            print(f"note: the check-in writer fell up to {check_ins.max_lag:.1f} s behind")
    return results


# --- output ------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }


def report(results: list[SizeResult], opts: Options, info: dict[str, Any]) -> None:
    info["loadavg_after"] = machine()["loadavg"]
    print()
    print(
        f"kg on a leader, location granularity, {opts.per_location} simulated nodes per "
        f"location (N/{opts.per_location} WireGuard peers), check-ins every {opts.check_in:g} s; "
        f"{info['nproc']} x {info['cpu']}, Python {info['python']}; load average "
        f"{' '.join(info['loadavg'])} before, {' '.join(info['loadavg_after'])} after"
    )
    print()
    print(
        " nodes peers  start->healthy  start->all peers  CPU % resync 30s  CPU % resync 300s"
        "  RSS MiB  max RSS MiB"
    )
    for r in results:
        start, steady30, steady300 = r.startups["30s"], r.steady[0], r.steady[1]
        print(
            f"{r.nodes:6d} {r.peers:5d}  {start.to_healthy_s:12.2f} s"
            f"  {start.to_all_peers_s:14.2f} s"
            f"  {steady30.cpu_pct:16.2f}  {steady300.cpu_pct:17.2f}"
            f"  {steady30.rss_mib:7.1f}  {steady30.rss_max_mib:11.1f}"
        )
    for r in results:
        for resync, start in r.startups.items():
            steps = ", ".join(f"{step} {at:.2f}" for step, at in start.split.items())
            print(
                f"{'':8}start-up with resync {resync}, s after the start by kg's log: first "
                f"line {start.to_first_log_s:.2f}, {steps}; all peers {start.to_all_peers_s:.2f}"
            )
    print()
    print(" nodes  change->WireGuard median ms  p95 ms  max ms  (API write median ms)")
    for r in results:
        if r.latency is not None:
            lat = r.latency
            print(
                f"{r.nodes:6d}  {lat.median_ms:26.1f}  {lat.p95_ms:6.1f}  {lat.max_ms:6.1f}"
                f"  ({lat.patch_median_ms:.1f}, {lat.changes} changes)"
            )
            if lat.split:
                steps = ", ".join(
                    f"{step} {median:.0f} / {p95:.0f} ms ({count})"
                    for step, (median, p95, count) in lat.split.items()
                )
                print(f"{'':8}kg's log, median / p95 after the patch began (changes): {steps}")
    print()
    for r in results:
        for s in r.steady:
            print(
                f"{r.nodes} nodes, resync {s.resync}: {s.window_s:.0f} s window, "
                f"{s.reconciles:.0f} applies, {s.iptables_operations:.0f} iptables operations, "
                f"{s.check_ins} check-ins seen by the API ({s.check_ins / s.window_s:.0f}/s, "
                f"{10 * s.cpu_pct * s.window_s / max(s.check_ins, 1):.2f} ms of kg's CPU each); "
                f"peak 1 s CPU {s.cpu_peak_1s_pct:.0f} %, "
                f"children {s.children_cpu_pct:.2f} %, {s.threads} threads; "
                f"the check-in writers {s.bench_cpu_pct:.1f} %, the machine "
                f"{s.machine_cpu_pct:.0f} % (of {100 * (os.cpu_count() or 1)})"
            )
    if len(results) >= 2:
        a, b = results[0], results[-1]
        print(
            f"from {a.nodes} to {b.nodes} nodes: CPU (resync 30s) x"
            f"{b.steady[0].cpu_pct / max(a.steady[0].cpu_pct, 1e-9):.1f}, "
            f"CPU (resync 300s) x{b.steady[1].cpu_pct / max(a.steady[1].cpu_pct, 1e-9):.1f}, "
            f"RSS +{b.steady[0].rss_mib - a.steady[0].rss_mib:.1f} MiB "
            f"({(b.steady[0].rss_mib - a.steady[0].rss_mib) * 1024 / (b.nodes - a.nodes):.1f} "
            "KiB per extra node)"
        )
    for r in results:
        for line in r.profiles:
            print(line)
    print()
    print(
        json.dumps(
            {
                "benchmark": "agent",
                "machine": info,
                "options": {
                    k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()
                },
                "results": [
                    {k: v for k, v in asdict(r).items() if k != "profiles"} for r in results
                ],
            },
            sort_keys=True,
        )
    )


# --- the profiled agent (run as kg with KILO_BENCH_PROFILE set) ---------------------------------


def profiled_agent(out: str) -> int:
    """Run kg's main under cProfile in every thread (the reconcile's applies run in worker
    threads); write the merged stats to ``out`` on exit."""
    import cProfile

    from kilo.agent.__main__ import main as kg_main

    profiles: list[cProfile.Profile] = []

    def start_thread_profile(frame: FrameType, event: str, arg: object) -> None:
        profile = cProfile.Profile()
        profiles.append(profile)
        profile.enable()  # replaces this hook in this thread

    threading.setprofile(start_thread_profile)
    main_profile = cProfile.Profile()
    main_profile.enable()
    try:
        return kg_main(sys.argv[1:])
    finally:
        main_profile.disable()
        stats = pstats.Stats(main_profile)
        for profile in profiles:
            with contextlib.suppress(Exception):  # a thread that never ran profiled code
                stats.add(profile)
        stats.dump_stats(out)


def parse_sizes(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=parse_sizes, default=None, help="default 100,300,1000")
    parser.add_argument("--per-location", type=int, default=10)
    parser.add_argument("--window", type=float, default=None, help="seconds; default 60")
    parser.add_argument("--changes", type=int, default=None, help="default 50")
    parser.add_argument("--check-in", type=float, default=30.0, help="seconds")
    parser.add_argument(
        "--writers", type=int, default=4, help="check-in writers (API connections); default 4"
    )
    parser.add_argument(
        "--liveness-margin",
        type=float,
        default=0.0,
        help="seconds added to the last-seen written (default 0); see README",
    )
    parser.add_argument(
        "--poll",
        type=float,
        default=POLL,
        help=f"seconds between reads of the leader's device during a change (default {POLL})",
    )
    parser.add_argument("--quick", action="store_true", help="20,50 nodes, 10 s windows")
    parser.add_argument("--profile", type=Path, default=None, help="a directory for .prof files")
    args = parser.parse_args(argv)
    opts = Options(
        sizes=args.sizes or ([20, 50] if args.quick else [100, 300, 1000]),
        per_location=args.per_location,
        window=args.window or (10.0 if args.quick else 60.0),
        changes=args.changes or (10 if args.quick else 50),
        check_in=args.check_in,
        writers=args.writers,
        liveness_margin=args.liveness_margin,
        settle=2.0 if args.quick else 5.0,
        profile=args.profile.resolve() if args.profile else None,
        poll=args.poll,
    )
    if opts.sizes != sorted(set(opts.sizes)) or opts.sizes[0] < 1:
        parser.error("--sizes: distinct positive numbers, ascending (nodes are only added)")
    if (
        opts.per_location < 1
        or opts.window <= 0
        or opts.changes < 1
        or opts.check_in <= 0
        or opts.writers < 1
        or opts.liveness_margin < 0
        or not 0 < opts.poll <= 1
    ):
        parser.error(
            "--per-location, --window, --changes, --check-in and --writers must be positive,"
            " --poll in (0, 1]"
        )
    if opts.profile is not None:
        opts.profile.mkdir(parents=True, exist_ok=True)
    info = machine()
    try:
        results = run(opts)
    except (BenchError, runs.TestbedError, AssertionError) as exc:
        print(f"agent_bench: {exc}", file=sys.stderr)
        return 1
    report(results, opts, info)
    return 0


if __name__ == "__main__":
    profile_out = os.environ.get(PROFILE_ENV)
    sys.exit(profiled_agent(profile_out) if profile_out else main())
