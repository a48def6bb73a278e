"""CPU and wall time of the agent's full apply on a leader, with the real data-plane adapters.

    python -m benchmarks.full_apply_bench [--sizes 1000,5000] [--repeat 3]   (root)

What ``kg`` does at start-up and on every resync (``TopologyApplier.apply(full=True)``),
without the API server, etcd and the check-in writer that share the machine in
``benchmarks.agent_bench``: a network namespace this benchmark creates (and removes) with
a ``lan0`` holding the leader's private IP and the default route, a wireguard-go device in
it, and the real netlink route table, iptables (``iptables-save``/``-restore`` in the
namespace) and UAPI adapters. The cluster is ``agent_bench``'s: N simulated Nodes as a
kubelet and a Kilo agent write them, 10 to a location (so the leader has N/10 peers),
translated once, plus the leader ``lead-1``, location granularity.

For each size: the first apply into the empty namespace (what start-up writes: every peer,
route and rule), then ``--repeat`` full applies with nothing changed (a resync), then a
clean-up. CPU is this process's (every thread: the apply's, the netlink worker's) plus its
children's (iptables-save and -restore), from ``getrusage``; wall time as measured.
Numbers only, no target: the README says what they mean.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from benchmarks.agent_bench import sim_object
from kilo.adapters.iptables import IPTables
from kilo.adapters.keyfile import generate_private_key
from kilo.adapters.netlink import Links, RouteTable
from kilo.adapters.wireguard import UAPIDevice
from kilo.agent import command_line
from kilo.agent.apply import TopologyApplier
from kilo.agent.ports import DataPlane, HostFacts
from kilo.agent.settings import AgentSettings
from kilo.mesh import translate
from kilo.mesh.discovery import DiscoveredIPs
from kilo.mesh.ip import parse_interface
from kilo.mesh.model import Node
from kilo.sandbox import kubelet, runs
from kilo.sandbox.testbed.values import TOPOLOGY_LABEL

LEADER = "lead-1"
PRIVATE_IP = "172.16.0.10/24"
PUBLIC_IP = "203.0.113.10/24"  # TEST-NET-3: nothing is ever sent
SOCKET_DIR = Path("/var/run/wireguard")


class _Metrics:
    def error(self, event: str) -> None:
        print(f"  apply error ({event})", file=sys.stderr)

    def reconciled(self) -> None:
        pass

    def set_counts(self, nodes: int, peers: int) -> None:
        pass

    def set_leader(self, leader: bool) -> None:
        pass

    def set_node(self, node: str, location: str) -> None:
        pass


def _ip(netns: str, *argv: str) -> None:
    subprocess.run(["ip", "-n", netns, *argv], check=True, capture_output=True)


@contextlib.contextmanager
def _namespace() -> Iterator[tuple[str, str]]:
    """A namespace with ``lan0`` (the private IP, the default route) and a wireguard-go
    device; its name and the device's."""
    with runs.scratch_namespace("kfa") as netns, _wireguard(netns) as interface:
        _ip(netns, "link", "add", "lan0", "type", "veth", "peer", "name", "lan0p")
        for name in ("lo", "lan0", "lan0p"):
            _ip(netns, "link", "set", name, "up")
        _ip(netns, "addr", "add", PRIVATE_IP, "dev", "lan0")
        _ip(netns, "route", "add", "default", "via", "172.16.0.1", "dev", "lan0")
        yield netns, interface


@contextlib.contextmanager
def _wireguard(netns: str) -> Iterator[str]:
    """A wireguard-go device in ``netns``, named after it; stopped on the way out."""
    interface = netns.replace("-", "")
    wireguard: subprocess.Popen[bytes] | None = None
    try:
        wireguard = subprocess.Popen(
            ["ip", "netns", "exec", netns, "wireguard-go", "-f", interface],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        sock = SOCKET_DIR / f"{interface}.sock"
        deadline = time.monotonic() + 10
        while not sock.exists():
            if time.monotonic() > deadline or wireguard.poll() is not None:
                raise RuntimeError("wireguard-go did not start")
            time.sleep(0.01)
        yield interface
    finally:
        if wireguard is not None:
            wireguard.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                wireguard.wait(5)
            if wireguard.poll() is None:
                wireguard.kill()


def cluster(size: int, leader_key: str, now: int) -> tuple[list[Node], Node]:
    nodes = []
    for i in range(size):
        node = translate.translate_node(sim_object(i, 10, now), topology_label=TOPOLOGY_LABEL).value
        assert node is not None
        nodes.append(node)
    obj = kubelet.node(
        LEADER,
        internal_ip=PRIVATE_IP.split("/", maxsplit=1)[0],
        pod_cidr="10.42.0.0/24",
        labels={TOPOLOGY_LABEL: "lead"},
        annotations={
            translate.KEY: leader_key,
            translate.ENDPOINT: f"{PUBLIC_IP.split('/', maxsplit=1)[0]}:51820",
            translate.INTERNAL_IP: PRIVATE_IP,
            translate.LAST_SEEN: str(now),
        },
        now=now,
    )
    local = translate.translate_node(obj, topology_label=TOPOLOGY_LABEL).value
    assert local is not None
    return nodes, local


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timed(what: str, run: object) -> tuple[float, float]:
    assert callable(run)
    cpu, wall = _cpu(), time.perf_counter()
    run()
    cpu, wall = _cpu() - cpu, time.perf_counter() - wall
    print(f"  {what:<28} CPU {cpu:6.2f} s   wall {wall:6.2f} s", flush=True)
    return cpu, wall


def bench(size: int, repeat: int) -> None:
    key = generate_private_key()
    now = int(time.time())
    nodes, local = cluster(size, str(key.public_key()), now)
    with _namespace() as (netns, interface):
        settings = command_line.read(
            [
                f"--hostname={LEADER}",
                f"--interface={interface}",
                "--create-interface=false",
                "--encapsulate=never",
                "--mesh-granularity=location",
                f"--topology-label={TOPOLOGY_LABEL}",
                "--cni=false",
            ],
            hostname_fallback=lambda: None,
        )
        assert isinstance(settings, AgentSettings), settings
        links = Links(netns)
        routes = RouteTable(netns=netns)
        try:
            plane = DataPlane(
                links=links,
                routes=routes,
                iptables=IPTables(netns=netns, ipv6=False),
                device=UAPIDevice(interface, SOCKET_DIR),
                tunnel=None,
                update_cni=lambda subnet: False,
            )
            private = parse_interface(PRIVATE_IP)
            public = parse_interface(PUBLIC_IP)
            assert private is not None and public is not None
            host = HostFacts(
                key=key,
                public_key=key.public_key(),
                discovered=DiscoveredIPs(private=private, public=public),
                external_ip=public,
                private_interface="lan0",
            )
            applier = TopologyApplier(
                settings, host, plane, _Metrics(), clock=time.time, resolver=lambda name: None
            )

            def apply() -> None:
                applied = applier.apply(nodes, [], local, full=True)
                assert applied is not None and applied.errors == 0, applied

            print(f"{size} nodes, {size // 10} peers:", flush=True)
            _timed("first apply (start-up)", apply)
            peers = len(plane.device.get().peers)
            kernel_routes = len(routes.tracked[0])
            print(f"  ({peers} WireGuard peers, {kernel_routes} routes)")
            for i in range(repeat):
                _timed(f"full apply {i + 1} (resync)", apply)
            _timed("clean-up", applier.clean_up)
        finally:
            routes.close()
            links.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,5000")
    parser.add_argument("--repeat", type=int, default=3)
    opts = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces)")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    for size in (int(s) for s in opts.sizes.split(",")):
        bench(size, opts.repeat)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
