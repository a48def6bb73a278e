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

Not included: reading the event off the API server's TLS connection (httpx2, h11, anyio),
which the end-to-end benchmark (``benchmarks/agent_bench.py``) includes and which costs
more than all of the above on this machine (README, "Agent").
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lightkube.core import decoders
from lightkube.resources.core_v1 import Node as TypedNode

from kilo.adapters.kubernetes import ReadNode, _to_dict
from kilo.mesh import translate
from kilo.mesh.events import Change, ClusterView, Event, EventType
from kilo.mesh.localnode import mesh_changed
from kilo.mesh.model import Node
from kilo.sandbox import kubelet

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20000)
    repeat = parser.parse_args(argv).repeat
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
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"one check-in ({len(line)} bytes of watch event); load average {' '.join(load)}")
    for name, us in rows:
        print(f"  {name:40s} {us:8.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
