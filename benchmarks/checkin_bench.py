"""CPU of one check-in in the agent, in-process (no root, no API server).

    python -m benchmarks.checkin_bench [--repeat 20000]

A check-in is a watch event of one Node whose ``kilo.squat.ai/last-seen`` moved: every node
sends one every 30 s, so an agent at 5000 nodes handles 167 a second. The Node is a
kubelet-registered one (``kilo.sandbox.kubelet``: labels, annotations, a status with 32
images) with the ``managedFields`` the API server adds: about 10 KB of JSON. Timed with
``time.process_time`` per step, the median of 5 rounds:

* decoding the event: lightkube's typed ``Node`` and ``to_dict()`` (what the informer did)
  against :class:`kilo.adapters.kubernetes.ReadNode` (metadata and spec only);
* the cluster view: translating the Node against its check-in path (the stored Node with
  the new last-seen), and what the agent then asks (``mesh_changed`` against readiness).

* reading the event off a TLS connection (``--events``, 0 to skip): a server process on
  127.0.0.1 streams the event as the API server does (a chunked body, about 4 KB a chunk,
  ``--rate`` events a second, so that each one is read on its own), and this process
  reads it with lightkube's watch (httpx2, httpcore2, h11, anyio's TLS over a memory BIO)
  against :mod:`kilo.adapters.watchstream` (the informer's: TLS in C, read by the loop),
  each decoding to the informer's dict; CPU of this process per event (the server's is
  its own), the median of 3 rounds. watchstream reads as in kg: at these rates (over 50
  events a second) a busy watch, read every 20 ms after its first second
  (``watchstream.Watch._pace``).

* the floor (with ``--events``): the same writes over a plain socket, woken for by the
  loop and dropped unread. On the project's machine (a nested, paravirtualized VM) a
  wake-up of an idle process costs 70-250 us of CPU by itself, more the longer it slept
  (an asyncio sleep in a loop, ``/proc/self/schedstat``: 71 us a wake every 2 ms, 156 us
  every 6 ms, 247 us every 100 ms), so the per-event numbers depend on ``--rate``: 167 a
  second is an agent's at 5000 nodes, where the floor is most of an event's cost.

The end-to-end benchmark (``benchmarks/agent_bench.py``) measures all of it together in kg
against a real API server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import socket
import ssl
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lightkube import AsyncClient, KubeConfig
from lightkube.config.kubeconfig import SingleConfig
from lightkube.core import decoders
from lightkube.resources.core_v1 import Node as TypedNode

from kilo.adapters import watchstream
from kilo.adapters.kubernetes import ReadNode, _to_dict, watch_decoders
from kilo.mesh import translate
from kilo.mesh.events import Change, ClusterView, Event, EventType
from kilo.mesh.localnode import mesh_changed
from kilo.mesh.model import Node
from kilo.sandbox import kubelet
from kilo.sandbox.controlplane import CertificateAuthority, pem_cert

LABEL = "topology.kubernetes.io/region"
KEY = "vfNnvLWHzmnuP4TvAM/1ZB7DClT1mwyEaFIRkwEvkzw="


def watch_line(now: int, version: int) -> bytes:
    """A MODIFIED event of a kubelet-registered Node, as the API server streams it."""
    obj = kubelet.node(
        "sim-00001",
        internal_ip="172.24.0.2",
        pod_cidr="10.128.1.0/24",
        labels={LABEL: "sim0000"},
        annotations={
            translate.KEY: KEY,
            translate.ENDPOINT: "198.51.100.129:51820",
            translate.INTERNAL_IP: "172.24.0.2/16",
            translate.LAST_SEEN: str(now),
        },
        now=now,
    )
    metadata = obj["metadata"]
    metadata.update(
        uid="0f8f3b1e-7d2a-4c51-9a43-5b1e6f0c2d7a",
        resourceVersion=str(version),
        creationTimestamp=kubelet.timestamp(now),
    )
    # What the API server records for the kubelet's registration and a check-in writer.
    keys: dict[str, Any] = {f"f:{k}": {} for k in metadata["annotations"]}
    metadata["managedFields"] = [
        {
            "manager": kubelet.FIELD_MANAGER,
            "operation": "Update",
            "apiVersion": "v1",
            "time": kubelet.timestamp(now),
            "fieldsType": "FieldsV1",
            "fieldsV1": {
                "f:metadata": {
                    "f:annotations": {".": {}, **keys},
                    "f:labels": {".": {}, **{f"f:{k}": {} for k in metadata["labels"]}},
                },
                "f:spec": {"f:podCIDR": {}, "f:podCIDRs": {".": {}, 'v:"10.128.1.0/24"': {}}},
                "f:status": {
                    f"f:{k}": {} for k in obj["status"] if k not in ("conditions", "addresses")
                },
            },
        },
        {
            "manager": "kilo",
            "operation": "Update",
            "apiVersion": "v1",
            "time": kubelet.timestamp(now),
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:annotations": {f"f:{translate.LAST_SEEN}": {}}}},
        },
    ]
    return json.dumps({"type": "MODIFIED", "object": obj}).encode()


def per_call_us(step: Callable[[], object], repeat: int) -> float:
    rounds = []
    for _ in range(5):
        start = time.process_time()
        for _ in range(repeat):
            step()
        rounds.append((time.process_time() - start) / repeat * 1e6)
    return statistics.median(rounds)


CHUNK = 4096
READ = 256 * 1024  # as watchstream reads


def _serve(listener: socket.socket, pki: Path, line: bytes, events: int, rate: float) -> None:
    """Answer each connection with ``events`` copies of ``line`` as a chunked watch body."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki / "server.crt", pki / "server.key")
    chunks = [
        b"%x\r\n" % len(line[i : i + CHUNK]) + line[i : i + CHUNK] + b"\r\n"
        for i in range(0, len(line), CHUNK)
    ]
    while True:
        conn = context.wrap_socket(listener.accept()[0], server_side=True)
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        start = time.monotonic()
        for n in range(events):
            for chunk in chunks:  # one write (and TLS record) a chunk, as Go's server flushes
                conn.sendall(chunk)
            delay = start + (n + 1) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        conn.sendall(b"0\r\n\r\n")
        conn.close()


def _config(server: str, pki: Path) -> SingleConfig:
    ca = base64.b64encode((pki / "ca.crt").read_bytes()).decode()
    config = KubeConfig.from_dict(
        {
            "clusters": [
                {"name": "c", "cluster": {"server": server, "certificate-authority-data": ca}}
            ],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
    ).get()
    assert config is not None
    return config


async def _read_lightkube(config: SingleConfig, events: int) -> float:
    async with AsyncClient(config, trust_env=False) as client:
        start = time.process_time()
        seen = 0
        async for _, obj in client.watch(ReadNode, resource_version="1"):
            _to_dict(obj)
            seen += 1
            if seen == events:
                break
        return time.process_time() - start


async def _read_watchstream(config: SingleConfig, events: int) -> float:
    decode, decode_event = watch_decoders(ReadNode)  # the informer's
    watch = watchstream.Watch(
        config,
        "/api/v1/nodes",
        {"watch": "true"},
        decode=decode,
        decode_event=decode_event,
        connect_timeout=10,
        read_timeout=60,
    )
    start = time.process_time()
    seen = 0
    async for _ in watch:
        seen += 1
    await watch.aclose()
    assert seen == events, f"{seen} of {events} events"
    return time.process_time() - start


def _write_plain(sock: socket.socket, line: bytes, events: int, rate: float) -> None:
    start = time.monotonic()
    for n in range(events):
        for i in range(0, len(line), CHUNK):
            sock.sendall(line[i : i + CHUNK])
        delay = start + (n + 1) / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    sock.close()


async def _read_floor(sock: socket.socket) -> float:
    """CPU of this process until ``sock`` ends, reading and dropping what arrives."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    sock.setblocking(False)

    def readable() -> None:
        while True:
            try:
                data = sock.recv(READ)
            except BlockingIOError:
                return
            if not data:
                loop.remove_reader(sock.fileno())
                done.set_result(None)
                return

    start = time.process_time()
    loop.add_reader(sock.fileno(), readable)
    await done
    return time.process_time() - start


def floor_row(line: bytes, events: int, rate: float) -> tuple[str, float]:
    rounds = []
    for _ in range(3):
        ours, theirs = socket.socketpair()
        writer = multiprocessing.get_context("fork").Process(
            target=_write_plain, args=(theirs, line + b"\n", events, rate), daemon=True
        )
        writer.start()
        theirs.close()
        try:
            rounds.append(asyncio.run(_read_floor(ours)) / events * 1e6)
        finally:
            writer.join()
            ours.close()
    return ("floor: a plain socket's wake-ups", statistics.median(rounds))


def stream_rows(line: bytes, events: int, rate: float) -> list[tuple[str, float]]:
    with tempfile.TemporaryDirectory(prefix="checkin-bench-") as directory:
        pki = Path(directory)
        ca = CertificateAuthority.create("checkin-bench")
        cert, key = ca.issue("server", server_ips=("127.0.0.1",), client=False)
        (pki / "ca.crt").write_bytes(pem_cert(ca.cert))
        (pki / "server.crt").write_bytes(cert)
        (pki / "server.key").write_bytes(key)
        listener = socket.create_server(("127.0.0.1", 0))
        server = multiprocessing.get_context("fork").Process(
            target=_serve, args=(listener, pki, line + b"\n", events, rate), daemon=True
        )
        server.start()
        try:
            config = _config(f"https://127.0.0.1:{listener.getsockname()[1]}", pki)
            rows = []
            for name, read in (
                ("read event: lightkube watch (anyio TLS)", _read_lightkube),
                ("read event: watchstream (TLS in C)", _read_watchstream),
            ):
                rounds = [asyncio.run(read(config, events)) / events * 1e6 for _ in range(3)]
                rows.append((name, statistics.median(rounds)))
            return rows
        finally:
            server.kill()
            server.join()
            listener.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20000)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=500.0)
    args = parser.parse_args(argv)
    repeat = args.repeat
    now = int(time.time())
    first, line = watch_line(now, 1), watch_line(now + 30, 2)
    raw = decoders.decode_watch_event(line).object

    def typed() -> dict[str, Any]:
        return _to_dict(decoders.decode_object(raw, TypedNode))

    def read() -> dict[str, Any]:
        return _to_dict(decoders.decode_object(raw, ReadNode))

    assert typed() == read(), "ReadNode must give what the typed Node gave"
    old_obj = _to_dict(decoders.decode_object(decoders.decode_watch_event(first).object, ReadNode))
    new_obj = read()
    old_event = Event(EventType.ADDED, "sim-00001", old_obj)
    new_event = Event(EventType.MODIFIED, "sim-00001", new_obj)

    def view_step(check_in: bool) -> Callable[[], Change[Node]]:
        view = ClusterView(topology_label=LABEL, port=51820)
        if not check_in:
            view._check_in = lambda event: None  # type: ignore[method-assign]

        def step() -> Change[Node]:
            view.node_event(old_event)
            return view.node_event(new_event)

        return step

    translated = view_step(False)()
    checked_in = view_step(True)()
    assert checked_in.checked_in and not translated.checked_in
    assert (translated.old, translated.new, translated.report) == (
        checked_in.old,
        checked_in.new,
        checked_in.report,
    ), "the check-in path must give what translating gives"
    old, new = checked_in.old, checked_in.new
    assert old is not None and new is not None

    rows = [
        ("decode event: typed Node + to_dict()", per_call_us(typed, repeat)),
        ("decode event: ReadNode", per_call_us(read, repeat)),
        # Two events per step (the previous version and the check-in): halved.
        ("view: translate the Node", per_call_us(view_step(False), repeat // 2) / 2),
        ("view: check-in path", per_call_us(view_step(True), repeat // 2) / 2),
        ("agent: mesh_changed", per_call_us(lambda: mesh_changed(old, new, now + 31), repeat)),
        (
            "agent: readiness only",
            per_call_us(lambda: old.is_ready(now + 31) != new.is_ready(now + 31), repeat),
        ),
    ]
    if args.events:
        rows += stream_rows(line, args.events, args.rate)
        rows.append(floor_row(line, args.events, args.rate))
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(
        f"one check-in ({len(line)} bytes of watch event, {args.rate:g} a second); "
        f"load average {' '.join(load)}"
    )
    for name, us in rows:
        print(f"  {name:40s} {us:8.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
