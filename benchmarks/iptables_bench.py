"""CPU and wall time of the leader's iptables step, with real iptables in a namespace.

    python -m benchmarks.iptables_bench [--sizes 1000,5000] [--events 20]   (root)

The cluster is ``agent_bench``'s (``full_apply_bench``'s translation of it): N simulated
Nodes, 10 to a location, and the leader ``lead-1`` alone in its location, location
granularity, Kilo's default flags (``--cni``, IPIP encapsulation rules). The leader's plan
is applied by the real :class:`~kilo.adapters.iptables.IPTables` in a network namespace
this benchmark creates (and removes): first the start-up apply (every rule), then, per
event, one change to the cluster, the leader's topology and plan, and the iptables step
of ``TopologyApplier`` for an incremental apply: the plan comparison and, when the plan
changed, ``IPTables.apply(planned, full=False)``. Events:

* ``alip``: a simulated Node's ``allowed-location-ips`` become a fresh /32
  (``agent_bench``'s change): the leader's iptables plan does not change;
* ``join``: a new Node joins an existing location (its pod CIDR and internal /32 become
  two more KILO-NAT RETURN rules);
* ``leave``: a Node that does not lead its location is deleted (two RETURN rules fewer;
  with iptables-nft a deletion makes iptables-restore fetch the whole chain);
* ``resync``: nothing changes and the step runs as on a full apply (``full=True``: the
  tables are read).

Per event: ``topology_rules`` (CPU), the comparison of the plan with the last applied
one (CPU), and the controller's apply: CPU of this process (all threads) plus its
children (iptables-save and -restore), from ``getrusage``, and wall time. Median and p95
over the events. Numbers only, no target.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import resource
import statistics
import sys
import time
from collections.abc import Sequence

from benchmarks.agent_bench import sim_name, sim_object
from benchmarks.full_apply_bench import cluster
from kilo.adapters.iptables import IPTables
from kilo.adapters.keyfile import generate_private_key
from kilo.mesh import iptables, translate
from kilo.mesh.ip import parse_interface
from kilo.mesh.model import Granularity, ready_nodes
from kilo.mesh.plan import PlanSettings, plan_node
from kilo.mesh.topology import Topology, build_topology
from kilo.sandbox import runs
from kilo.sandbox.testbed.values import TOPOLOGY_LABEL

EVENTS = ("alip", "join", "leave", "resync")
SETTINGS = PlanSettings(interface="kilo0", private_interface="lan0")
SUBNET = ipaddress.ip_network("10.4.0.0/16")


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Leader:
    """The leader's Nodes and what its applier keeps between applies."""

    def __init__(self, size: int) -> None:
        self.now = int(time.time())
        key = generate_private_key()
        self.key = key
        nodes, local = cluster(size, str(key.public_key()), self.now)
        self.nodes = {n.name: n for n in nodes}
        self.local = local
        self.size = size
        self.serial = 0

    def topology(self) -> Topology:
        ready = ready_nodes([*self.nodes.values(), self.local], self.now)
        return build_topology(
            ready,
            (),
            granularity=Granularity.LOCATION,
            hostname=self.local.name,
            subnet=SUBNET,
            port=51820,
            key=self.key,
            service_cidrs=(),
            persistent_keepalive=0,
        )

    def change(self, event: str) -> None:
        self.serial += 1
        if event == "alip":
            names = sorted(self.nodes)
            name = names[(self.serial * 37) % len(names)]
            alip = parse_interface(f"100.64.{self.serial // 250}.{self.serial % 250 + 1}/32")
            assert alip is not None
            self.nodes[name] = dataclasses.replace(self.nodes[name], allowed_location_ips=(alip,))
        elif event == "leave":
            self.nodes.pop(sim_name((self.serial * 10 + 5) % self.size), None)
        elif event == "join":
            # Index i + size of a 10-a-location cluster would open a new location: reuse
            # one (sim_object's location label), so the segments and WireGuard IPs stay.
            i = self.size + self.serial
            obj = sim_object(i, 10, self.now)
            obj["metadata"]["labels"][TOPOLOGY_LABEL] = f"sim{self.serial % (self.size // 10):04d}"
            node = translate.translate_node(obj, topology_label=TOPOLOGY_LABEL).value
            assert node is not None
            self.nodes[node.name] = node


def _p95(samples: Sequence[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def _cell(samples: Sequence[float]) -> str:
    return f"{statistics.median(samples) * 1000:.1f}/{_p95(samples) * 1000:.1f}"


def bench(size: int, events: int, cases: Sequence[str]) -> None:
    leader = Leader(size)
    with runs.scratch_namespace("kib") as netns:
        controller = IPTables(netns=netns, ipv6=False)
        t = leader.topology()
        plan = plan_node(t, leader.local, SETTINGS)
        cpu, wall = _cpu(), time.perf_counter()
        controller.apply(plan.iptables)
        cpu, wall = _cpu() - cpu, time.perf_counter() - wall
        rules = len(plan.iptables.append) + len(plan.iptables.prepend)
        print(
            f"{size} nodes, {len(t.segments)} segments, {rules} rules: start-up apply "
            f"CPU {cpu * 1000:.0f} ms, wall {wall * 1000:.0f} ms",
            flush=True,
        )
        applied = plan.iptables
        for case in cases:
            rules_cpu: list[float] = []
            compare_cpu: list[float] = []
            apply_cpu: list[float] = []
            apply_wall: list[float] = []
            writes = 0
            for _ in range(events):
                leader.change(case)
                t = leader.topology()
                plan = plan_node(t, leader.local, SETTINGS)
                start = time.process_time()
                iptables.topology_rules(t, cni=True, forward=False)
                rules_cpu.append(time.process_time() - start)
                full = case == "resync"
                start = time.process_time()
                changed = full or plan.iptables != applied
                compare_cpu.append(time.process_time() - start)
                cpu, wall = _cpu(), time.perf_counter()
                if changed:
                    writes += controller.apply(plan.iptables, full=full) > 0
                apply_cpu.append(_cpu() - cpu)
                apply_wall.append(time.perf_counter() - wall)
                applied = plan.iptables
            print(
                f"  {case:<7} topology_rules CPU {_cell(rules_cpu)} ms, compare CPU "
                f"{_cell(compare_cpu)} ms, IPTables.apply CPU {_cell(apply_cpu)} ms wall "
                f"{_cell(apply_wall)} ms ({writes} of {events} wrote)",
                flush=True,
            )
        controller.clean_up()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,5000")
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--cases", default=",".join(EVENTS))
    opts = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces)")
    cases = [c for c in opts.cases.split(",") if c]
    for case in cases:
        if case not in EVENTS:
            parser.error(f"unknown case {case!r}: one of {', '.join(EVENTS)}")
    print("median/p95; load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    for size in (int(s) for s in opts.sizes.split(",")):
        bench(size, opts.events, cases)
    print("load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
