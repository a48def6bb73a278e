"""Time the leader's light apply (an annotation change between full applies), stage by stage.

    python -m benchmarks.apply_bench [--sizes 1000,5000] [--events 50] [--check-ins 0]
                                     [--cases alip,endpoint,checkin] [--profile]

Pure and in-process (no root, no kernel, no API server): the CPU time of what
``TopologyApplier`` computes for one event, without its writes. The cluster is the one
``agent_bench`` builds: a leader, ``lead``, alone in its location, and N other Nodes, 10
to a location (so the leader has N/10 WireGuard peers), translated from the annotations
``benchmarks.synthetic`` gives them, with location granularity. Before the first event a
warm-up apply runs every stage once (the agent's full apply at start-up), and the device
state (read once, as a full apply does) and the route table's last write (``Known``)
are what that apply left; after each event they are what the event's apply left, as if
its writes succeeded.

Cases (each event changes one Node, the next one each time):

* ``alip``: the Node's ``allowed-location-ips`` become a fresh /32 (agent_bench's change:
  one more allowed IP and one more route on the leader);
* ``endpoint``: the Node's endpoint port changes (the leader's WireGuard peer of a location
  led by that node changes, or nothing if it does not lead);
* ``checkin``: only ``last-seen`` changes (a new Node object with the same mesh values):
  the agent does not apply for a check-in; this is the cost if it did, or of an apply after
  check-ins only.

``--check-ins K`` also gives K other Nodes (spread over the mesh) a new ``last-seen``
before each event, as real agents check in between changes (1000 nodes: about 33 a
second).

Stages (CPU time, ``time.process_time``; median and p95 over the events):

* ``ready``: the ready Nodes (``model.ready_nodes``);
* ``topology``: ``topology.build_topology``;
* ``plan``: ``plan.plan_node`` (WireGuard config, routes and rules, iptables rules);
* ``compare``: the applier's "did this sub-system's plan change" checks (iptables, routes);
* ``dev diff``: ``wgdevice.plan_changes`` against the device as the last apply's write
  left it (``wgdevice.state_after``; the applier reads the device only on full applies);
* ``dev after``: ``wgdevice.state_after`` of the change (the state the next event's
  diff is against);
* ``routes``: ``route_sync.desired_routes`` and the route table's incremental diff
  against its last write (``RouteTable._set_known``'s set arithmetic, without netlink),
  and the text of its state file before and after the change (``route_state.StateText``,
  not written);
* ``total``: their sum; ``applier``: the whole ``TopologyApplier.apply(full=False)`` for
  the same events (a run of its own), with a device that plans the diff (against the
  state the applier keeps from its writes), the route table's diff above, and links,
  iptables and metrics that do nothing: the stages plus the applier's own work
  (endpoints, NAT discovery, metrics' names, ``state_after``).

``--profile`` runs the events of the first size and case under cProfile and prints the
top functions.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import ipaddress
import os
import pstats
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv6Interface
from typing import Any

from benchmarks import synthetic
from kilo.adapters.netlink.route_table import Known
from kilo.agent import command_line
from kilo.agent.apply import TopologyApplier
from kilo.agent.ports import DataPlane, HostFacts
from kilo.agent.settings import AgentSettings
from kilo.mesh import route_state, route_sync, translate
from kilo.mesh.discovery import DiscoveredIPs
from kilo.mesh.endpoint import Endpoint
from kilo.mesh.iptables import RuleSet
from kilo.mesh.keys import Key
from kilo.mesh.model import Granularity, Node, ready_nodes
from kilo.mesh.plan import PlanSettings, plan_node
from kilo.mesh.routes import Device, Route
from kilo.mesh.routes import Rule as IPRule
from kilo.mesh.topology import build_topology
from kilo.mesh.uapi import parse_uapi
from kilo.mesh.wgdevice import DeviceChange, DeviceState, plan_changes, state_after
from kilo.mesh.wireguard import WireGuardConfig

PER_LOCATION = 10
HOSTNAME = "lead"
SUBNET = ipaddress.ip_network("10.4.0.0/16")
SERVICE_CIDRS = (ipaddress.ip_network("10.96.0.0/12"),)
NOW = 1_800_000_000
PRIVATE_KEY = Key(bytes(range(1, 33)))
SETTINGS = PlanSettings(interface="kilo0", private_interface="eth0")
DEVICES = {Device.KILO: "kilo0", Device.PRIVATE: "eth0", Device.TUNNEL: "tunl0"}
STAGES = ("ready", "topology", "plan", "compare", "dev diff", "dev after", "routes")
CASES = ("alip", "endpoint", "checkin")


def cluster(size: int) -> dict[str, Node]:
    """The leader and ``size`` other Nodes, 10 to a location, by name."""
    nodes: dict[str, Node] = {}
    for i in range(size):
        obj = synthetic.kilo_node(
            i, key=synthetic.public_key(b"apply-bench-%d" % i), last_seen=NOW, kubelet_like=False
        )
        location = f"sim{i // PER_LOCATION:04d}"
        obj["metadata"]["annotations"][translate.LOCATION] = location
        obj["metadata"]["annotations"].pop(translate.LEADER, None)
        node = translate.translate_node(obj).value
        assert node is not None
        nodes[node.name] = node
    lead = synthetic.kilo_node(
        size, key=synthetic.public_key(b"apply-bench-lead"), last_seen=NOW, kubelet_like=False
    )
    lead["metadata"]["name"] = HOSTNAME
    lead["metadata"]["annotations"][translate.LOCATION] = "lead"
    local = translate.translate_node(lead).value
    assert local is not None
    nodes[HOSTNAME] = local
    return nodes


def uapi_reply(config: WireGuardConfig) -> str:
    """The ``get=1`` reply of a device configured with ``config`` (masked allowed IPs, in
    config order, no handshakes), as wireguard-go writes it."""
    lines = [f"private_key={PRIVATE_KEY.raw.hex()}", f"listen_port={config.listen_port}"]
    for peer in config.peers:
        lines.append(f"public_key={peer.public_key.raw.hex()}")
        udp = None if peer.endpoint is None else peer.endpoint.udp
        if udp is not None and udp.ip is not None:
            lines.append(f"endpoint={udp}")
        lines.append("last_handshake_time_sec=0")
        lines.append("last_handshake_time_nsec=0")
        lines.append("tx_bytes=0")
        lines.append("rx_bytes=0")
        lines.append(f"persistent_keepalive_interval={peer.persistent_keepalive}")
        for cidr in peer.allowed_ips:
            network = cidr.network if isinstance(cidr, IPv4Interface | IPv6Interface) else cidr
            lines.append(f"allowed_ip={network}")
        lines.append("protocol_version=1")
    lines.append("errno=0")
    return "".join(line + "\n" for line in lines)


@dataclass
class Leader:
    """What the leader's applier keeps between events."""

    nodes: dict[str, Node]
    device: DeviceState | None = None
    known: Known | None = None
    applied_iptables: RuleSet | None = None
    applied_routes: tuple[object, ...] | None = None
    state: route_state.StateText = field(default_factory=route_state.StateText)
    samples: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})

    def apply(self, record: bool = True) -> None:
        clock = time.process_time
        times: list[float] = [clock()]
        ready = ready_nodes(self.nodes.values(), NOW)
        times.append(clock())
        local = self.nodes[HOSTNAME]
        t = build_topology(
            ready,
            (),
            granularity=Granularity.LOCATION,
            hostname=HOSTNAME,
            subnet=SUBNET,
            port=51820,
            key=PRIVATE_KEY,
            service_cidrs=SERVICE_CIDRS,
            persistent_keepalive=local.persistent_keepalive,
        )
        times.append(clock())
        plan = plan_node(t, local, SETTINGS)
        times.append(clock())
        iptables_changed = plan.iptables != self.applied_iptables
        wanted = (plan.routes, plan.rules, tuple(sorted(DEVICES.items())))
        routes_changed = wanted != self.applied_routes
        times.append(clock())
        assert plan.wireguard is not None
        state = self.device
        change = None if state is None else plan_changes(plan.wireguard, state)
        times.append(clock())
        if state is not None and change is not None:
            state = state_after(state, change)
        times.append(clock())
        if routes_changed:
            self.known = route_diff(plan.routes, plan.rules, DEVICES, self.known, self.state)
        times.append(clock())
        if iptables_changed:
            self.applied_iptables = plan.iptables
        self.applied_routes = wanted
        if state is None:  # the first apply (full): its write succeeded, and is read
            state = parse_uapi(uapi_reply(plan.wireguard))
        self.device = state
        if record:
            for stage, start, end in zip(STAGES, times, times[1:], strict=False):
                self.samples[stage].append(end - start)


def route_diff(
    routes: Sequence[Route],
    rules: Sequence[IPRule],
    devices: Mapping[Device, str],
    known: Known | None,
    state: route_state.StateText,
) -> Known:
    """``RouteTable.set(full=False)`` without netlink: the plan's keys against the last
    write (``RouteTable._set_known``), and the text of its state file, written before and
    after the change."""
    desired = route_sync.desired_routes(routes, devices)
    rule_keys = [key for key, _ in route_sync.desired_rules(rules)]
    rule_set = frozenset(rule_keys)
    before = None
    if known is not None:
        stale, adds = route_sync.changed_since(desired, known.serial, known.routes)
        if stale or adds:
            before = known.routes.union(key for key, _ in adds)
            state.encode(before, rule_set)
    after = Known.after(desired, rule_keys, known)
    if after.routes != before:  # RouteTable._save writes only a changed state
        state.encode(after.routes, rule_set)
    return after


class _Device:
    """The leader's WireGuard device: its ``get=1`` reply, parsed as UAPIDevice does; a
    write succeeds (the reply is rewritten between events, outside the clock)."""

    def __init__(self) -> None:
        self.text = ""
        self.config: WireGuardConfig | None = None

    def get(self) -> DeviceState:
        return parse_uapi(self.text)

    def apply(
        self, desired: WireGuardConfig, current: DeviceState | None = None
    ) -> DeviceChange | None:
        change = plan_changes(desired, self.get() if current is None else current)
        self.config = desired
        return change


class _Routes:
    """``RouteTable.set`` without netlink (:func:`route_diff`)."""

    def __init__(self) -> None:
        self.known: Known | None = None
        self.state = route_state.StateText()

    def set(
        self,
        routes: Sequence[Route],
        rules: Sequence[IPRule],
        devices: Mapping[Device, str],
        *,
        full: bool = True,
    ) -> tuple[int, int]:
        self.known = route_diff(routes, rules, devices, None if full else self.known, self.state)
        return 0, 0

    def clean_up(self) -> None:
        self.known = None


class _Nothing:
    """Links, iptables, tunnel and metrics that take every call and do nothing."""

    def __getattr__(self, name: str) -> Callable[..., Any]:
        return lambda *args, **kwargs: 0 if name == "apply" else None


def applier_run(size: int, case: str, events: int, check_ins: int) -> list[float]:
    """The CPU time of ``TopologyApplier.apply(..., full=False)`` for each event."""
    settings = command_line.read(
        [
            f"--hostname={HOSTNAME}",
            "--mesh-granularity=location",
            f"--subnet={SUBNET}",
            f"--service-cidr={SERVICE_CIDRS[0]}",
            "--mtu=1420",
        ],
        hostname_fallback=lambda: None,
    )
    assert isinstance(settings, AgentSettings)
    device = _Device()
    nothing: Any = _Nothing()
    plane = DataPlane(
        links=nothing,
        routes=_Routes(),
        iptables=nothing,
        device=device,
        tunnel=None,
        update_cni=lambda subnet: False,
    )
    host = HostFacts(
        key=PRIVATE_KEY,
        public_key=PRIVATE_KEY.public_key(),
        discovered=DiscoveredIPs(None, ipaddress.ip_interface("198.51.100.1/24")),
        external_ip=ipaddress.ip_interface("198.51.100.1/24"),
        private_interface="eth0",
    )
    applier = TopologyApplier(
        settings, host, plane, nothing, clock=lambda: NOW, resolver=lambda name: None
    )
    nodes = cluster(size)
    local = nodes.pop(HOSTNAME)
    samples: list[float] = []
    for serial in range(-2, events):  # two applies first: start-up's (full) and one more
        if serial >= 0:
            _edit(nodes, case, serial, check_ins)
        start = time.process_time()
        applied = applier.apply(list(nodes.values()), [], local, full=serial == -2)
        elapsed = time.process_time() - start
        assert applied is not None and applied.errors == 0
        if device.config is not None:
            device.text = uapi_reply(device.config)
        if serial >= 0:
            samples.append(elapsed)
    return samples


def _edit(nodes: dict[str, Node], case: str, serial: int, check_ins: int) -> None:
    """Event ``serial``: ``check_ins`` Nodes check in, then one Node changes (``case``)."""
    names = [n for n in nodes if n != HOSTNAME]
    step = max(1, len(names) // check_ins) if check_ins else 0
    for k in range(check_ins):
        name = names[(serial * 7 + k * step + 1) % len(names)]
        nodes[name] = change("checkin", nodes[name], serial)
    # A node that leads its location (the first of ten) and one that does not, in turn.
    name = names[(serial * 37 + (0 if serial % 2 else 3)) % len(names)]
    nodes[name] = change(case, nodes[name], serial + 1)


def change(case: str, node: Node, serial: int) -> Node:
    if case == "alip":
        alip = ipaddress.ip_interface(f"{ipaddress.ip_address('100.64.0.1') + serial}/32")
        return dataclasses.replace(node, allowed_location_ips=(alip,))
    if case == "endpoint":
        assert node.endpoint is not None and node.endpoint.udp is not None
        udp = node.endpoint.udp
        port = 40000 + serial % 20000
        return dataclasses.replace(node, endpoint=Endpoint.parse(f"{udp.ip}:{port}"))
    return dataclasses.replace(node, last_seen=node.last_seen + 1)


def run(
    size: int, case: str, events: int, check_ins: int, profile: cProfile.Profile | None
) -> dict[str, list[float]]:
    leader = Leader(cluster(size))
    leader.apply(record=False)  # start-up's full apply
    leader.apply(record=False)  # and one more, so that every memo holds the mesh
    for serial in range(events):
        _edit(leader.nodes, case, serial, check_ins)
        if profile is not None:
            profile.enable()
        leader.apply()
        if profile is not None:
            profile.disable()
    return leader.samples


def p95(samples: Sequence[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,5000")
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--check-ins", type=int, default=0)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    for case in cases:
        if case not in CASES:
            parser.error(f"unknown case {case!r}: one of {', '.join(CASES)}")
    print(
        f"light apply of the leader, location granularity, {PER_LOCATION} nodes a location, "
        f"{args.events} events, {args.check_ins} check-ins between events; "
        f"CPU ms median/p95; load average {os.getloadavg()[0]:.2f}"
    )
    header = f"{'nodes':>6} {'case':<9}" + "".join(
        f"{s:>14}" for s in (*STAGES, "total", "applier")
    )
    print(header)
    profile = cProfile.Profile() if args.profile else None
    for size in (int(s) for s in args.sizes.split(",")):
        for case in cases:
            samples = run(size, case, args.events, args.check_ins, profile)
            totals = [sum(parts) for parts in zip(*samples.values(), strict=True)]
            applier = applier_run(size, case, args.events, args.check_ins)
            cells = [_cell(samples[s]) for s in STAGES] + [_cell(totals), _cell(applier)]
            print(f"{size:>6} {case:<9}" + "".join(f"{c:>14}" for c in cells), flush=True)
            if profile is not None:
                out = io.StringIO()
                pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(25)
                print(out.getvalue())
                profile = None


def _cell(samples: Sequence[float]) -> str:
    return f"{statistics.median(samples) * 1000:.2f}/{p95(samples) * 1000:.2f}"


if __name__ == "__main__":
    main()
