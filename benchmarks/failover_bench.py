"""What ``kg --leader-election=lease`` costs the API server: Lease renewals at N locations.

    python benchmarks/failover_bench.py [--locations 50] [--seconds 20]

The rate follows from the constants (``kilo.mesh.leadership``): each location's holder
writes its Lease once per ``RENEW_PERIOD``, so N locations make N / RENEW_PERIOD writes per
second, whatever the number of nodes, and every node of the cluster receives each of them on
its watch of the Leases (the reads are watch events, not requests). This script prints that
figure, then measures it: it starts the test control plane (etcd + kube-apiserver;
``kilo.sandbox.controlplane``), runs N holders renewing through the agent's own
``LeaseWriter`` on the agent's schedule (``decide``), and reports the writes per second the
API server accepted, the write latency, and whether any renewal was lost (a holder whose
conditional write failed). Each holder here also GETs its Lease after writing it, to make
the next write conditional; an agent reads its watch instead. Nothing here is a target:
the numbers are context for the README.
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--locations", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
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
