"""What ``kg --leader-election=lease`` costs and gives: Lease renewals at N locations, and
the recovery time over repeated failovers.

    python -m benchmarks.failover_bench [--locations 50] [--seconds 20]
    python -m benchmarks.failover_bench --recovery 10     # root: a testbed
    python -m benchmarks.failover_bench --recovery 4 --cases c   # one fault only

The rate follows from the constants (``kilo.mesh.leadership``): each location's holder
writes its Lease once per ``RENEW_PERIOD``, so N locations make N / RENEW_PERIOD writes per
second, whatever the number of nodes, and every node of the cluster receives each of them on
its watch of the Leases (the reads are watch events, not requests). This script prints that
figure, then measures it: it starts the test control plane (etcd + kube-apiserver;
``kilo.sandbox.controlplane``), runs N holders renewing through the agent's own
``LeaseWriter`` on the agent's schedule (``decide``), and reports the writes per second the
API server accepted, the write latency, and whether any renewal was lost (a holder whose
conditional write failed). Each holder here also GETs its Lease after writing it, to make
the next write conditional; an agent reads its watch instead.

``--recovery N`` builds the failover test's testbed instead (``tests/e2e/test_failover.py``:
aws with 2 nodes, gcp with 3, every kg with the option, pings every 0.1 s from a pod in aws
to a pod on gcp-3) and fails gcp's leader N times, taking ``--cases`` in turn (default: (b)
its forwarding broken and (c) its uplink cut; (b') its FORWARD chain dropping), each
repaired before the next round, once the new holder is past its grace, and prints the
time from each fault to the first reply after the gap, and their distribution. Nothing
here is a target: the numbers are context for the README.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

from lightkube import AsyncClient
from lightkube.resources.coordination_v1 import Lease

from kilo.adapters import kubeconfig
from kilo.adapters.leases import LeaseWriter
from kilo.errors import BackendError
from kilo.mesh import leadership
from kilo.sandbox.controlplane import ControlPlane, ControlPlaneError, build_binaries

NAMESPACE = "kube-system"


async def holder(
    client: AsyncClient, location: str, until: float, latencies: list[float]
) -> tuple[int, int]:
    """One location's holder: acquire, then renew every RENEW_PERIOD until ``until``."""
    writer = LeaseWriter(client, NAMESPACE)
    name = leadership.lease_name(location)
    observed: dict[str, Any] | None = None
    writes = lost = 0
    while time.monotonic() < until:
        start = time.monotonic()
        won = await writer.write(name, holder=f"{location}-1", duration=6, observed=observed)
        latencies.append(time.monotonic() - start)
        writes += 1
        if not won:
            lost += 1
        lease = await client.get(Lease, name, namespace=NAMESPACE)
        observed = lease.to_dict()
        await asyncio.sleep(max(0.0, start + leadership.RENEW_PERIOD - time.monotonic()))
    return writes, lost


async def measure(config: Any, locations: int, seconds: float) -> None:
    latencies: list[float] = []
    async with AsyncClient(config, trust_env=False) as client:
        start = time.monotonic()
        until = start + seconds
        results = await asyncio.gather(
            *(holder(client, f"location-{i}", until, latencies) for i in range(locations))
        )
        elapsed = time.monotonic() - start
    writes = sum(w for w, _ in results)
    lost = sum(lost for _, lost in results)
    latencies.sort()
    print(f"measured: {writes} writes in {elapsed:.1f} s = {writes / elapsed:.1f} writes/s")
    print(
        f"write latency: median {statistics.median(latencies) * 1000:.1f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms, "
        f"max {latencies[-1] * 1000:.1f} ms; lost renewals: {lost}"
    )


CASES = ("b", "b'", "c")  # the faults --cases takes


def recovery(rounds: int, cases: tuple[str, ...] = ("b", "c")) -> list[tuple[str, float]]:
    from lightkube import Client

    from kilo.sandbox import runs, testbed
    from kilo.sandbox.pinger import Pinger

    # The faults on the leader, by case: the commands that inject one, and those that undo it.
    faults: dict[str, tuple[tuple[tuple[str, ...], ...], tuple[tuple[str, ...], ...]]] = {
        "b": (
            (("sysctl", "-qw", "net.ipv4.ip_forward=0"),),
            (("sysctl", "-qw", "net.ipv4.ip_forward=1"),),
        ),
        "b'": (
            (("iptables", "-I", "FORWARD", "-j", "DROP"),),
            (("iptables", "-D", "FORWARD", "-j", "DROP"),),
        ),
        "c": (
            (("ip", "link", "set", "wan0", "down"),),
            (
                ("ip", "link", "set", "wan0", "up"),
                ("ip", "route", "replace", "default", "via", testbed.ROUTER),
            ),
        ),
    }

    lease_name = leadership.lease_name("gcp")

    def lease(bed: testbed.Testbed) -> Any:
        try:
            return bed.api().get(Lease, lease_name, namespace=NAMESPACE)
        except Exception:  # not there yet, or the API is unreachable for a moment
            return None

    def holder(bed: testbed.Testbed) -> str | None:
        found = lease(bed)
        return found.spec.holderIdentity if found is not None and found.spec else None

    def past_grace(bed: testbed.Testbed) -> bool:
        found = lease(bed)
        if found is None or found.spec is None or found.spec.acquireTime is None:
            return False
        acquired: float = found.spec.acquireTime.timestamp()
        return time.time() - acquired > leadership.GRACE + 1

    def wait(predicate: Any, message: str, timeout: float = 90) -> None:
        runs.wait_for(predicate, timeout=timeout, message=message, interval=0.2)

    runs.cleanup_stale()
    results: list[tuple[str, float]] = []
    locations = [testbed.Location("aws", nodes=2), testbed.Location("gcp", nodes=3)]
    with testbed.Testbed(locations, binaries=build_binaries()) as bed:
        assert isinstance(bed.api(), Client)
        for node in bed.nodes:
            bed.run(node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for node in ("aws-1", "aws-2", "gcp-1"):
            bed.start_agent(node, "--leader-election=lease")
        wait(lambda: holder(bed) == "gcp-1", "gcp-1 took no lease")
        for node in ("gcp-2", "gcp-3"):
            bed.start_agent(node, "--leader-election=lease")
        bed.add_pod("aws-1", "pod-source", timeout=90)
        bed.add_pod("gcp-3", "pod-target", timeout=90)
        pinger = Pinger(bed.enter("pod-source"), bed.pods["pod-target"].ip)
        try:
            for index in range(rounds):
                case = cases[index % len(cases)]
                wait(lambda: pinger.flowing(time.time()), "no pings before the fault")
                wait(lambda: past_grace(bed), "the holder is still in its grace")
                leader = holder(bed)
                assert leader is not None and leader != "gcp-3", leader
                started = time.time()
                inject, restore = faults[case]
                for command in inject:
                    bed.run(leader, *command)
                wait(
                    lambda since=started: pinger.resumed_after(since) is not None,
                    f"round {index}: no ping",
                )
                resumed = pinger.resumed_after(started)
                assert resumed is not None
                results.append((case, resumed))
                print(f"round {index}: ({case}) on {leader}: resumed after {resumed:.2f} s")
                wait(
                    lambda old=leader: holder(bed) not in (None, old),
                    f"round {index}: no new holder",
                )
                for command in restore:
                    bed.run(leader, *command)
        finally:
            pinger.close()
    return results


def report_recovery(results: list[tuple[str, float]]) -> None:
    for case in sorted({case for case, _ in results}):
        times = sorted(t for c, t in results if c == case)
        print(
            f"({case}) {len(times)} failovers: min {times[0]:.2f} s, "
            f"median {statistics.median(times):.2f} s, max {times[-1]:.2f} s"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--locations", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--recovery", type=int, default=0, metavar="ROUNDS")
    parser.add_argument(
        "--cases",
        default="b,c",
        help="the faults of --recovery, in turn: b (ip_forward=0), b' (FORWARD DROP), c (uplink)",
    )
    args = parser.parse_args(argv)
    if args.recovery:
        cases = tuple(case.strip() for case in args.cases.split(","))
        if not set(cases) <= set(CASES):
            parser.error(f"--cases {args.cases!r}: possible values are b, b', c")
        report_recovery(recovery(args.recovery, cases))
        return 0
    rate = args.locations / leadership.RENEW_PERIOD
    print(
        f"computed: {args.locations} locations / {leadership.RENEW_PERIOD:g} s renew period "
        f"= {rate:g} Lease writes/s (Lease duration {leadership.LEASE_DURATION} s)"
    )
    plane = ControlPlane(build_binaries())
    try:
        plane.start()
        config = kubeconfig.load(str(plane.admin_kubeconfig))
        asyncio.run(measure(config, args.locations, args.seconds))
    except (ControlPlaneError, BackendError) as exc:
        print(f"failover_bench: {exc}", file=sys.stderr)
        return 1
    finally:
        plane.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
