"""What the suites on the sandbox's testbed share (tests/e2e, and tests/kernel/guest in the VM).

A testbed with an agent and a pod on every node, and the data-plane questions their tests
ask of it: the pods' IPs, whether a namespace reaches an IP, a node's WireGuard peers.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from kilo.sandbox import runs
from kilo.sandbox.testbed import Location, Testbed


@contextlib.contextmanager
def bed_with_pods(
    locations: Sequence[Location],
    *,
    binaries: Path,
    start_agent: Callable[[Testbed, str], object],
    timeout: float,
) -> Iterator[Testbed]:
    """A started testbed (stale runs removed first) with an agent on every node, started by
    ``start_agent(bed, node)``, and a pod ``pod-<node>`` on each, added once its agent has
    written the CNI ranges (within ``timeout`` seconds). If that fails, every agent's log
    tail goes to stderr before the testbed is removed."""
    runs.cleanup_stale()
    with Testbed(locations, binaries=binaries) as built:
        for node in built.nodes:
            start_agent(built, node)
        with built.agent_logs_on_failure():
            for node in built.nodes:
                built.add_pod(node, f"pod-{node}", timeout=timeout)
            yield built


def pod_ips(bed: Testbed) -> dict[str, str]:
    """Pod name -> its IP."""
    return {name: pod.ip for name, pod in bed.pods.items()}


def reachable(bed: Testbed, src: str, ip: str, *, timeout: float = 1) -> bool:
    """Whether one ping from namespace ``src`` to ``ip`` is answered within ``timeout``."""
    return bed.ping(src, ip, count=1, timeout=timeout)


def wg_peers(bed: Testbed, node: str) -> dict[str, list[str]]:
    """Public key -> the `wg show dump` fields of each peer of ``node``."""
    lines = bed.wg_dump(node).splitlines()[1:]
    return {line.split("\t")[0]: line.split("\t") for line in lines}


def agent_healthy(bed: Testbed, node: str) -> bool:
    """Whether the ``kg`` running on ``node`` answers 200 on ``/health``: it has applied the
    mesh since it started (a restarted agent's log still holds its predecessor's lines)."""
    url = f"http://{bed.nodes[node].lan_ip}:1107/health"
    code = f"import urllib.request\nprint(urllib.request.urlopen({url!r}, timeout=2).status)\n"
    return bed.run(node, sys.executable, "-c", code, check=False, timeout=10).strip() == "200"
