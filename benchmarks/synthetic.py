"""Synthetic Kilo nodes, shared by the benchmarks: node ``i`` of a large cluster.

Node ``i`` is in location ``loc-<i % 50>`` and carries the annotations a Kilo agent
writes: an endpoint in TEST-NET-2 or TEST-NET-3, an internal IP, its key, its last
check-in, its location and granularity; a WireGuard IP on every fourth node and the leader
annotation on one node a location. ``kgctl_bench`` writes such nodes into cluster dumps,
``backend_bench`` creates them in a real API server. Only the key's seed differs between
them (a name, or the index), so each passes its own key.

The benchmarks import this module, so they run as modules: ``python -m benchmarks.X``.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from typing import Any

from kilo.mesh import translate
from kilo.sandbox import kubelet

LOCATIONS = 50
ENDPOINT_RANGES = ("198.51.100", "203.0.113")  # TEST-NET-2 and TEST-NET-3
INTERNAL_BASE = ipaddress.ip_address("172.16.0.1")
WIREGUARD_BASE = ipaddress.ip_address("10.4.0.1")
POD_BASE = ipaddress.ip_address("10.64.0.0")


def node_name(i: int) -> str:
    return f"node-{i:05d}"


def public_key(seed: bytes) -> str:
    """A distinct, valid (32-byte, base64) WireGuard public key, derived cheaply."""
    return base64.b64encode(hashlib.blake2b(seed, digest_size=32).digest()).decode()


def kilo_node(i: int, *, key: str, last_seen: int, kubelet_like: bool = True) -> dict[str, Any]:
    """Node ``i`` with public key ``key``, checked in at ``last_seen`` (Unix seconds). As a
    kubelet registers it (``kilo.sandbox.kubelet``: labels, annotations and a status with
    32 images, about 9 KB of JSON) unless ``kubelet_like`` is false: then only what Kilo
    reads (name, topology label, Kilo's annotations, pod CIDR)."""
    name = node_name(i)
    location = f"loc-{i % LOCATIONS:02d}"
    rest = i // len(ENDPOINT_RANGES)
    endpoint = f"{ENDPOINT_RANGES[i % len(ENDPOINT_RANGES)]}.{rest % 254 + 1}:{51820 + rest // 254}"
    annotations = {
        translate.ENDPOINT: endpoint,
        translate.INTERNAL_IP: f"{INTERNAL_BASE + i}/12",
        translate.KEY: key,
        translate.LAST_SEEN: str(last_seen),
        translate.LOCATION: location,
        translate.GRANULARITY: "location",
    }
    if i % 4 == 0:
        annotations[translate.WIREGUARD_IP] = f"{WIREGUARD_BASE + i}/16"
    if i < LOCATIONS:
        annotations[translate.LEADER] = "true"
    pod_cidr = f"{POD_BASE + 256 * i}/24"
    labels = {"topology.kubernetes.io/region": location}
    if kubelet_like:
        return kubelet.node(
            name,
            internal_ip=str(INTERNAL_BASE + i),
            pod_cidr=pod_cidr,
            labels=labels,
            annotations=annotations,
            now=last_seen,
        )
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
    }
