"""Time the per-node computation on synthetic clusters.

For each cluster size and granularity, and for a few node perspectives (a leader and a
non-leader where one exists), time what an agent does on every apply: build the topology,
render the WireGuard config, plan routes and rules, and plan iptables rules.

    python -m benchmarks.topology_bench [--sizes 100,1000,5000] [--repeat 5] [--alips | --no-alips]

By default every cluster is timed twice: without allowed-location IPs and with them
(``--alips``: one /32 per node inside its location's 100.64.<location>.0/24, plus that /24
on the location's first node). In a location mesh they are all kept; in a full mesh every
node is its own segment, so each /24 overlaps the /32s of its location and the
order-dependent filter has real work to do.

``--fresh-nodes`` gives every run new Node objects (copies made before the clock starts),
as if every node had changed since the previous apply: the topology then reuses none of
the previous segments (``topology._SegmentMemo``). By default the same Nodes are passed
on every run, as an agent that keeps its translated Nodes does between events.

Targets (2-core machine, issue 17): 5000-node full mesh under 100 ms per perspective,
5000-node location mesh under 50 ms.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import statistics
import time
from collections.abc import Callable

from kilo.mesh import iptables, routes, wireguard
from kilo.mesh.endpoint import Endpoint
from kilo.mesh.ip import IPInterface
from kilo.mesh.keys import Key, clamp
from kilo.mesh.model import Compatibility, Encapsulation, Granularity, Node, Peer
from kilo.mesh.topology import build_topology

SUBNET = ipaddress.ip_network("10.4.0.0/16")
LOCATIONS = 50


def synthetic_cluster(
    size: int, *, peers: int = 10, alips: bool = False
) -> tuple[list[Node], list[Peer]]:
    nodes = []
    for i in range(size):
        location = f"loc-{i % LOCATIONS:02d}"
        hi, lo = divmod(i, 250)
        allowed_location_ips: tuple[IPInterface, ...] = ()
        if alips:
            rank, loc = divmod(i, LOCATIONS)  # rank 0 is the location's first node
            own = ipaddress.ip_interface(f"100.64.{loc}.{rank % 254 + 1}/32")
            around = ipaddress.ip_interface(f"100.64.{loc}.0/24")
            allowed_location_ips = (own, around) if rank == 0 else (own,)
        nodes.append(
            Node(
                name=f"node-{i:05d}",
                endpoint=Endpoint.parse(f"198.51.{hi}.{lo + 1}:51820"),
                key=Key(clamp(i.to_bytes(4, "big") * 8)),  # public keys need not be derived here
                internal_ip=ipaddress.ip_interface(f"172.16.{hi}.{lo + 1}/16"),
                location=location,
                subnet=ipaddress.ip_network(f"10.{64 + i // 256}.{i % 256}.0/24"),
                leader=(i < LOCATIONS and i % 7 == 0),
                allowed_location_ips=allowed_location_ips,
            )
        )
    peer_list = [
        Peer(
            name=f"peer-{p:02d}",
            allowed_ips=(ipaddress.ip_interface(f"10.5.0.{p + 1}/32"),),
            public_key=Key(clamp((10**6 + p).to_bytes(4, "big") * 8)),
            persistent_keepalive=25,
        )
        for p in range(peers)
    ]
    return nodes, peer_list


def per_node(nodes: list[Node], peers: list[Peer], granularity: Granularity, hostname: str) -> None:
    t = build_topology(
        nodes,
        peers,
        granularity=granularity,
        hostname=hostname,
        subnet=SUBNET,
        service_cidrs=[ipaddress.ip_network("10.96.0.0/12")],
    )
    if t.leader:
        wireguard.render(wireguard.node_config(t))
    routes.plan_routes(t, policy=routes.EncapsulationPolicy(strategy=Encapsulation.ALWAYS))
    local = next(n for n in nodes if n.name == hostname)
    iptables.plan_rules(
        t,
        cni=True,
        forward=False,
        local=True,
        encapsulation=Encapsulation.ALWAYS,
        compatibility=Compatibility.NONE,
        local_location=local.location,
    )


def timed(fn: Callable[[int], None], repeat: int) -> list[float]:
    samples = []
    for run in range(repeat):
        start = time.perf_counter()
        fn(run)
        samples.append(time.perf_counter() - start)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--fresh-nodes", action="store_true", help="new Node objects on every run (see above)"
    )
    variant = parser.add_mutually_exclusive_group()
    variant.add_argument(
        "--alips", action="store_true", help="only clusters with allowed-location IPs"
    )
    variant.add_argument(
        "--no-alips", action="store_true", help="only clusters without allowed-location IPs"
    )
    args = parser.parse_args()
    variants = [False, True]
    if args.alips:
        variants = [True]
    elif args.no_alips:
        variants = [False]
    print(
        f"{'nodes':>6} {'alips':<5} {'granularity':<11} {'perspective':<12} "
        f"{'median ms':>10} {'max ms':>8}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        for alips in variants:
            bench_cluster(size, alips=alips, repeat=args.repeat, fresh=args.fresh_nodes)


def bench_cluster(size: int, *, alips: bool, repeat: int, fresh: bool) -> None:
    nodes, peers = synthetic_cluster(size, alips=alips)
    runs = [[dataclasses.replace(n) for n in nodes] for _ in range(repeat)] if fresh else []
    for granularity in (Granularity.LOCATION, Granularity.FULL):
        # node-00000 leads loc-00; node-00050 (if any) is a follower in loc-00.
        perspectives = {"leader": "node-00000"}
        if granularity == Granularity.LOCATION and size > LOCATIONS:
            perspectives["non-leader"] = f"node-{LOCATIONS:05d}"
        for role, hostname in perspectives.items():

            def work(
                run: int, hostname: str = hostname, granularity: Granularity = granularity
            ) -> None:
                per_node(runs[run] if fresh else nodes, peers, granularity, hostname)

            samples = timed(work, repeat)
            print(
                f"{size:>6} {'yes' if alips else 'no':<5} {granularity.value:<11} {role:<12} "
                f"{statistics.median(samples) * 1000:>10.1f} {max(samples) * 1000:>8.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
