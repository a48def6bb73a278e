"""Time and size the Kubernetes backend against a real kube-apiserver on loopback.

    python -m benchmarks.backend_bench [--nodes 5000] [--patches 500] [--concurrency 32]

Starts the test control plane (etcd + kube-apiserver, TLS, RBAC; see
``kilo.sandbox.controlplane``), creates N Nodes carrying the annotations a Kilo
agent writes (endpoint, internal IP, key, last-seen, location over 50 locations, a WireGuard
IP on every fourth node, a leader per location), a pod CIDR, and what a kubelet-registered
Node holds besides (labels, annotations, a status with 32 images: ``kilo.sandbox.kubelet``),
then measures:

* the informer's initial list: ``Informer.events()`` until N ADDED events are cached;
* a burst of agent check-ins: concurrent merge patches of ``last-seen`` on distinct nodes,
  until the informer has delivered a MODIFIED event for each of them;
* ``translate_cluster`` over the N cached node dicts (median of a few runs);
* ``ClusterReader.nodes()``, the one-shot list ``kgctl`` does;
* memory: the informer cache and the translated mesh Nodes, with tracemalloc (in a second,
  untimed list, since tracing slows allocation) and with a recursive ``sys.getsizeof``,
  plus the process RSS (``VmRSS``) around the timed list.

Every wait is bounded; a phase that does not finish in time fails with a message naming
it. The control plane is stopped in every case. Nothing here is a target: the numbers are
context for the README.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
import tracemalloc
import types
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import httpx2
from lightkube import ApiError, AsyncClient
from lightkube.config.kubeconfig import SingleConfig
from lightkube.resources.core_v1 import Node
from lightkube.types import PatchType

from benchmarks import synthetic
from kilo.adapters import kubeconfig, kubernetes
from kilo.errors import BackendError
from kilo.mesh import translate
from kilo.mesh.cluster import translate_cluster
from kilo.mesh.events import Event, EventType
from kilo.sandbox import kubelet
from kilo.sandbox.controlplane import ControlPlane, ControlPlaneError, build_binaries

TRANSLATE_REPEAT = 5
MIB = 1024 * 1024

T = TypeVar("T")

Events = AsyncGenerator[Event, None]


class BenchError(RuntimeError):
    """A phase failed or did not finish in time; the message says which."""


# --- synthetic nodes -----------------------------------------------------------------------


def node_object(i: int, last_seen: int) -> dict[str, Any]:
    key = synthetic.public_key(i.to_bytes(4, "big"))
    return synthetic.kilo_node(i, key=key, last_seen=last_seen)


# --- measuring helpers ---------------------------------------------------------------------


def rss_bytes() -> int:
    """This process's resident set size (``VmRSS`` in /proc/self/status)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise BenchError("no VmRSS in /proc/self/status")


_OPAQUE = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)


def deep_size(root: object) -> int:
    """``sys.getsizeof`` summed over everything reachable from ``root``, each object once.

    Classes, modules and functions are not followed: they belong to the program, not to
    the data.
    """
    seen: set[int] = set()
    stack: list[object] = [root]
    total = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _OPAQUE):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return total


def traced_now() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def bounded(what: str, timeout: float, coro: Awaitable[T]) -> T:
    try:
        async with asyncio.timeout(timeout):
            return await coro
    except TimeoutError:
        raise BenchError(f"{what} did not finish within {timeout:.0f} s") from None


async def run_all(
    what: str, jobs: Iterable[Callable[[], Coroutine[Any, Any, object]]], concurrency: int
) -> None:
    """Run the jobs with at most ``concurrency`` in flight; the first failure stops all."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(job: Callable[[], Coroutine[Any, Any, object]]) -> None:
        async with semaphore:
            await job()

    try:
        async with asyncio.TaskGroup() as group:
            for job in jobs:
                group.create_task(one(job))
    except* (ApiError, httpx2.HTTPError, OSError) as failures:
        first = failures.exceptions[0]
        raise BenchError(f"{what}: {type(first).__name__}: {first}") from first


async def until_added(events: Events, count: int) -> None:
    added = 0
    while added < count:
        event = await anext(events)
        if event.type is EventType.ADDED:
            added += 1


async def until_modified(events: Events, names: Iterable[str]) -> None:
    pending = set(names)
    while pending:
        event = await anext(events)
        if event.type is EventType.MODIFIED:
            pending.discard(event.name)


# --- the benchmark -------------------------------------------------------------------------


@dataclass
class Results:
    nodes: int
    concurrency: int
    patches: int = 0
    create_s: float = 0.0
    list_s: float = 0.0
    patch_write_s: float = 0.0
    patch_seen_s: float = 0.0
    translate_s: float = 0.0
    reader_s: float = 0.0
    rss_before: int = 0
    rss_after: int = 0
    cache_traced: int = 0
    list_peak_traced: int = 0
    cache_deep: int = 0
    managed_fields_deep: int = 0
    mesh_traced: int = 0
    mesh_deep: int = 0
    diagnostics: int = 0
    notes: list[str] = field(default_factory=list)


def patch_body(last_seen: int) -> dict[str, Any]:
    return {"metadata": {"annotations": {translate.LAST_SEEN: str(last_seen)}}}


async def create_nodes(client: AsyncClient, r: Results, now: int) -> None:
    def job(i: int) -> Callable[[], Coroutine[Any, Any, object]]:
        return lambda: client.create(
            cast(Node, Node.from_dict(node_object(i, now))), field_manager=kubelet.FIELD_MANAGER
        )

    start = time.perf_counter()
    await bounded(
        f"creating {r.nodes} nodes",
        60 + 0.2 * r.nodes,
        run_all("creating nodes", (job(i) for i in range(r.nodes)), r.concurrency),
    )
    r.create_s = time.perf_counter() - start


async def patch_burst(
    writer: AsyncClient, events: Events, r: Results, targets: list[str], last_seen: int
) -> None:
    """Patch ``last-seen`` on every target at once; time the writes and their delivery."""

    def job(name: str) -> Callable[[], Coroutine[Any, Any, object]]:
        return lambda: writer.patch(Node, name, patch_body(last_seen), patch_type=PatchType.MERGE)

    start = time.perf_counter()
    watcher = asyncio.create_task(until_modified(events, targets))
    try:
        await bounded(
            f"{len(targets)} patches",
            120,
            run_all("patching nodes", map(job, targets), r.concurrency),
        )
        r.patch_write_s = time.perf_counter() - start
        await bounded(f"delivery of {len(targets)} MODIFIED events", 120, watcher)
        r.patch_seen_s = time.perf_counter() - start
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


async def measure(config: SingleConfig, server: str, r: Results) -> None:
    now = int(time.time())
    list_timeout = 60 + 0.05 * r.nodes
    timeout = httpx2.Timeout(60.0)
    async with (
        AsyncClient(config, timeout=timeout, trust_env=False) as writer,
        AsyncClient(config, timeout=timeout, trust_env=False) as reader,
    ):
        await create_nodes(writer, r, now)

        # (a) the initial list, timed, without tracing.
        gc.collect()
        r.rss_before = rss_bytes()
        informer = kubernetes.Informer(reader, "nodes", server=server)
        events = informer.events()
        try:
            start = time.perf_counter()
            await bounded(
                f"the informer's initial list of {r.nodes} nodes",
                list_timeout,
                until_added(events, r.nodes),
            )
            r.list_s = time.perf_counter() - start
            gc.collect()
            r.rss_after = rss_bytes()
            if len(informer.cache) != r.nodes:
                raise BenchError(f"the cache holds {len(informer.cache)} nodes, not {r.nodes}")

            # (b) a burst of check-ins. One patch first, so that the watch is established
            # and the burst measures delivery, not the watch request.
            warm = synthetic.node_name(r.nodes - 1)
            await writer.patch(Node, warm, patch_body(now + 1), patch_type=PatchType.MERGE)
            await bounded("the first MODIFIED event", 60, until_modified(events, [warm]))
            count = min(r.patches, r.nodes - 1)
            targets = [synthetic.node_name(k * (r.nodes - 1) // count) for k in range(count)]
            r.patches = len(targets)
            await patch_burst(writer, events, r, targets, now + 60)
        finally:
            await events.aclose()

        # (c) translation of the cached dicts.
        objects = list(informer.cache.values())
        samples = []
        cluster = None
        for _ in range(TRANSLATE_REPEAT):
            start = time.perf_counter()
            cluster = translate_cluster(objects, [])
            samples.append(time.perf_counter() - start)
        assert cluster is not None
        r.translate_s = statistics.median(samples)
        r.diagnostics = len(cluster.diagnostics)
        if len(cluster.nodes) != r.nodes:
            r.notes.append(f"translation kept {len(cluster.nodes)} of {r.nodes} nodes")
        if cluster.diagnostics:
            r.notes.append(f"first diagnostic: {cluster.diagnostics[0]}")
        del objects, cluster, informer

        # (d) and (e): memory, in a second list with tracing on.
        await measure_memory(reader, server, r, list_timeout)

    # The one-shot list kgctl does (a synchronous client), for comparison with (a).
    start = time.perf_counter()
    with kubernetes.ClusterReader(config, timeout=60.0) as cluster_reader:
        listed = await asyncio.to_thread(cluster_reader.nodes)
    r.reader_s = time.perf_counter() - start
    if len(listed) != r.nodes:
        raise BenchError(f"ClusterReader listed {len(listed)} nodes, not {r.nodes}")


async def measure_memory(reader: AsyncClient, server: str, r: Results, timeout: float) -> None:
    tracemalloc.start()
    try:
        base = traced_now()
        tracemalloc.reset_peak()
        informer = kubernetes.Informer(reader, "nodes", server=server)
        events = informer.events()
        try:
            await bounded("the traced initial list", timeout, until_added(events, r.nodes))
        finally:
            await events.aclose()  # drops the generator's list of initial events
        r.list_peak_traced = tracemalloc.get_traced_memory()[1] - base
        with_cache = traced_now()
        r.cache_traced = with_cache - base

        cluster = translate_cluster(informer.cache.values(), [])
        r.mesh_traced = traced_now() - with_cache
    finally:
        tracemalloc.stop()
    r.cache_deep = deep_size(informer.cache)
    r.managed_fields_deep = sum(
        deep_size(obj["metadata"].get("managedFields")) for obj in informer.cache.values()
    )
    r.mesh_deep = deep_size(cluster.nodes)


# --- output --------------------------------------------------------------------------------


def mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


def per_node(n: int, nodes: int) -> str:
    return f"{n / nodes / 1024:.2f} KiB/node"


def report(r: Results) -> None:
    n = r.nodes
    rss_growth = r.rss_after - r.rss_before
    managed_share = 100 * r.managed_fields_deep / r.cache_deep
    rows = [
        (
            f"create {n} nodes ({r.concurrency} in flight)",
            f"{r.create_s:.2f} s",
            f"{n / r.create_s:.0f} nodes/s",
        ),
        (
            f"informer initial list -> {n} ADDED",
            f"{r.list_s * 1000:.0f} ms",
            f"{n / r.list_s:.0f} nodes/s",
        ),
        (
            f"{r.patches} last-seen patches: writes done",
            f"{r.patch_write_s * 1000:.0f} ms",
            f"{r.patches / r.patch_write_s:.0f} patches/s",
        ),
        (
            f"{r.patches} patches -> {r.patches} MODIFIED seen",
            f"{r.patch_seen_s * 1000:.0f} ms",
            f"last event {(r.patch_seen_s - r.patch_write_s) * 1000:.0f} ms after the last write",
        ),
        (
            f"translate_cluster ({n} dicts, median of {TRANSLATE_REPEAT})",
            f"{r.translate_s * 1000:.0f} ms",
            f"{r.translate_s / n * 1e6:.1f} us/node",
        ),
        (
            f"ClusterReader.nodes() ({n}, kgctl)",
            f"{r.reader_s * 1000:.0f} ms",
            f"{n / r.reader_s:.0f} nodes/s",
        ),
        (
            "informer cache, tracemalloc retained",
            mib(r.cache_traced),
            per_node(r.cache_traced, n),
        ),
        (
            "initial list peak, tracemalloc",
            mib(r.list_peak_traced),
            per_node(r.list_peak_traced, n),
        ),
        ("informer cache, deep getsizeof", mib(r.cache_deep), per_node(r.cache_deep, n)),
        (
            "  of which metadata.managedFields",
            mib(r.managed_fields_deep),
            f"{managed_share:.0f} % of the cache",
        ),
        ("translated mesh Nodes, tracemalloc", mib(r.mesh_traced), per_node(r.mesh_traced, n)),
        ("translated mesh Nodes, deep getsizeof", mib(r.mesh_deep), per_node(r.mesh_deep, n)),
        (
            "process RSS before / after initial list",
            f"{r.rss_before / MIB:.0f} / {r.rss_after / MIB:.0f} MiB",
            f"+{mib(rss_growth)}",
        ),
    ]
    widths = [max(len(row[k]) for row in rows) for k in range(3)]
    print()
    print(f"{'measurement':<{widths[0]}}  {'value':>{widths[1]}}  rate")
    for what, value, rate in rows:
        print(f"{what:<{widths[0]}}  {value:>{widths[1]}}  {rate}")
    for note in r.notes:
        print(f"note: {note}")
    print()
    print(
        f"Backend, {n} nodes on a loopback kube-apiserver: informer initial list "
        f"{r.list_s:.2f} s, {r.patches} check-in patches seen in {r.patch_seen_s:.2f} s, "
        f"translate_cluster {r.translate_s * 1000:.0f} ms; cache {mib(r.cache_traced)} "
        f"({per_node(r.cache_traced, n)}), mesh Nodes {mib(r.mesh_traced)}, "
        f"RSS +{mib(r.rss_after - r.rss_before)}."
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--patches", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    if args.nodes < 2 or args.patches < 1 or args.concurrency < 1:
        parser.error("--nodes must be at least 2, --patches and --concurrency at least 1")

    results = Results(nodes=args.nodes, concurrency=args.concurrency, patches=args.patches)
    binaries = build_binaries()
    plane = ControlPlane(binaries)
    try:
        start = time.perf_counter()
        plane.start()
        print(f"control plane ready at {plane.server} in {time.perf_counter() - start:.1f} s")
        config = kubeconfig.load(str(plane.admin_kubeconfig))
        asyncio.run(measure(config, plane.server, results))
    except (BenchError, ControlPlaneError, BackendError) as exc:
        print(f"backend_bench: {exc}", file=sys.stderr)
        return 1
    finally:
        plane.stop()
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
