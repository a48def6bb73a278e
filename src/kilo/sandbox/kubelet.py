"""Node objects as a kubelet and the controllers around it leave them: what a cluster holds.

A real Node carries much besides Kilo's annotations, and Kilo's agents cache, watch and
patch all of it. The testbed, the benchmarks and the tests build their Nodes here, so that
they exercise and measure what production holds rather than bare objects:

* labels, from the kubelet: ``beta.kubernetes.io/arch``, ``beta.kubernetes.io/os``,
  ``kubernetes.io/arch``, ``kubernetes.io/hostname``, ``kubernetes.io/os``;
* annotations: ``volumes.kubernetes.io/controller-managed-attach-detach`` (the kubelet),
  ``node.alpha.kubernetes.io/ttl`` (the controller manager's TTL controller) and
  ``kubeadm.alpha.kubernetes.io/cri-socket`` (kubeadm);
* ``spec.podCIDR`` and ``spec.podCIDRs`` (the controller manager's node IPAM);
* ``status``: ``addresses`` (``InternalIP``, an ``ExternalIP`` where the node has one,
  ``Hostname``), ``capacity`` and ``allocatable``, the kubelet's four ``conditions``
  (``MemoryPressure``, ``DiskPressure``, ``PIDPressure``, ``Ready``), ``daemonEndpoints``,
  ``nodeInfo``, ``runtimeHandlers``, ``features`` and the ``images`` the node holds (32,
  each by digest and by tag, with its size): about 9 KB of JSON a Node.

Create the object with the field manager ``kubelet`` (:data:`FIELD_MANAGER`), as the kubelet
registers its Node: the API server keeps the status of a Node on create (later status
updates go through its ``status`` subresource). No I/O; the same name and time give the
same object.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Mapping
from typing import Any

FIELD_MANAGER = "kubelet"
KUBELET_VERSION = "v1.35.2"

# What the kubelet, the controller manager and kubeadm annotate every Node with.
KUBELET_ANNOTATIONS: Mapping[str, str] = {
    "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///var/run/containerd/containerd.sock",
    "node.alpha.kubernetes.io/ttl": "0",
    "volumes.kubernetes.io/controller-managed-attach-detach": "true",
}

# (repository, tag, size in bytes): a worker running Kilo, a CNI, monitoring and a few apps.
IMAGES: tuple[tuple[str, str, int], ...] = (
    ("docker.io/squat/kilo", "0.7.0", 58_470_219),
    ("ghcr.io/masipcat/wireguard-go-docker", "0.0.20230223", 4_562_131),
    ("registry.k8s.io/kube-proxy", KUBELET_VERSION, 30_855_324),
    ("registry.k8s.io/pause", "3.10", 320_368),
    ("registry.k8s.io/coredns/coredns", "v1.12.0", 20_939_036),
    ("registry.k8s.io/metrics-server/metrics-server", "v0.7.2", 19_494_617),
    ("registry.k8s.io/ingress-nginx/controller", "v1.12.0", 111_832_407),
    ("registry.k8s.io/csi-secrets-store/driver", "v1.4.7", 33_402_876),
    ("registry.k8s.io/sig-storage/csi-node-driver-registrar", "v2.12.0", 10_823_427),
    ("registry.k8s.io/sig-storage/livenessprobe", "v2.14.0", 10_298_362),
    ("quay.io/prometheus/node-exporter", "v1.8.2", 11_658_311),
    ("quay.io/prometheus/prometheus", "v3.1.0", 116_734_051),
    ("quay.io/prometheus-operator/prometheus-config-reloader", "v0.79.2", 15_271_338),
    ("quay.io/jetstack/cert-manager-controller", "v1.16.2", 21_873_112),
    ("quay.io/jetstack/cert-manager-cainjector", "v1.16.2", 13_924_558),
    ("quay.io/jetstack/cert-manager-webhook", "v1.16.2", 16_180_442),
    ("docker.io/fluent/fluent-bit", "3.2.4", 37_522_103),
    ("docker.io/grafana/grafana", "11.4.0", 131_880_945),
    ("docker.io/grafana/promtail", "3.3.2", 79_233_850),
    ("docker.io/library/nginx", "1.27.3", 72_955_450),
    ("docker.io/library/redis", "7.4.1", 45_065_231),
    ("docker.io/library/postgres", "17.2", 155_120_876),
    ("docker.io/library/busybox", "1.37.0", 2_167_087),
    ("docker.io/library/alpine", "3.21.0", 3_648_493),
    ("docker.io/bitnami/kubectl", "1.32.0", 86_342_781),
    ("docker.io/rancher/local-path-provisioner", "v0.0.30", 20_441_092),
    ("ghcr.io/fluxcd/source-controller", "v1.4.1", 44_023_551),
    ("ghcr.io/fluxcd/kustomize-controller", "v1.4.0", 40_887_306),
    ("ghcr.io/external-secrets/external-secrets", "v0.12.1", 43_170_884),
    ("ghcr.io/stakater/reloader", "v1.2.0", 24_511_783),
    ("docker.io/example/shop-frontend", "2024.12.3", 204_310_776),
    ("docker.io/example/shop-backend", "2024.12.3", 311_448_030),
)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _uuid(name: str, what: str) -> str:
    return str(uuid.UUID(bytes=hashlib.sha256(f"{what}/{name}".encode()).digest()[:16], version=4))


def timestamp(seconds: float) -> str:
    """An API timestamp (RFC 3339, UTC, seconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def images() -> list[dict[str, Any]]:
    """``status.images``: every image by digest and by tag, the largest first (the kubelet
    reports them so)."""
    return [
        {"names": [f"{repo}@sha256:{_digest(f'{repo}:{tag}')}", f"{repo}:{tag}"], "sizeBytes": size}
        for repo, tag, size in sorted(IMAGES, key=lambda image: -image[2])
    ]


def _condition(kind: str, status: str, reason: str, message: str, now: str) -> dict[str, str]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    }


def status(
    name: str, *, internal_ip: str, external_ip: str | None = None, now: float
) -> dict[str, Any]:
    """``status`` of a ready Node, as its kubelet reports it."""
    at = timestamp(now)
    addresses = [{"type": "InternalIP", "address": internal_ip}]
    if external_ip is not None:
        addresses.append({"type": "ExternalIP", "address": external_ip})
    addresses.append({"type": "Hostname", "address": name})
    return {
        "addresses": addresses,
        "allocatable": {
            "cpu": "2",
            "ephemeral-storage": "28373752742",
            "hugepages-1Gi": "0",
            "hugepages-2Mi": "0",
            "memory": "3917760Ki",
            "pods": "110",
        },
        "capacity": {
            "cpu": "2",
            "ephemeral-storage": "30787492Ki",
            "hugepages-1Gi": "0",
            "hugepages-2Mi": "0",
            "memory": "4020160Ki",
            "pods": "110",
        },
        "conditions": [
            _condition(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
                at,
            ),
            _condition(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
                at,
            ),
            _condition(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
                at,
            ),
            _condition("Ready", "True", "KubeletReady", "kubelet is posting ready status", at),
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "features": {"supplementalGroupsPolicy": True},
        "images": images(),
        "nodeInfo": {
            "architecture": "amd64",
            "bootID": _uuid(name, "boot"),
            "containerRuntimeVersion": "containerd://2.0.2",
            "kernelVersion": "6.1.0-28-cloud-amd64",
            "kubeProxyVersion": "",
            "kubeletVersion": KUBELET_VERSION,
            "machineID": _digest(f"machine/{name}")[:32],
            "operatingSystem": "linux",
            "osImage": "Debian GNU/Linux 12 (bookworm)",
            "systemUUID": _uuid(name, "system"),
        },
        "runtimeHandlers": [
            {"name": "runc", "features": {"recursiveReadOnlyMounts": True, "userNamespaces": True}},
            {"name": "", "features": {"recursiveReadOnlyMounts": True, "userNamespaces": True}},
        ],
    }


def node(
    name: str,
    *,
    internal_ip: str,
    pod_cidr: str | None = None,
    external_ip: str | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    kubelet_annotations: bool = True,
    now: float | None = None,
) -> dict[str, Any]:
    """A whole Node (``apiVersion``, ``kind``, ``metadata``, ``spec``, ``status``) as a
    cluster holds it, with ``labels`` and ``annotations`` (Kilo's, say) added to the
    kubelet's. ``kubelet_annotations=False`` leaves the annotations out when none are
    given: a Node with no annotations at all (Kilo's Go agent panics on one)."""
    metadata: dict[str, Any] = {
        "name": name,
        "labels": {
            "beta.kubernetes.io/arch": "amd64",
            "beta.kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            **(labels or {}),
        },
    }
    merged = {**(KUBELET_ANNOTATIONS if kubelet_annotations else {}), **(annotations or {})}
    if merged:
        metadata["annotations"] = merged
    spec: dict[str, Any] = {}
    if pod_cidr is not None:
        spec = {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": metadata,
        "spec": spec,
        "status": status(
            name,
            internal_ip=internal_ip,
            external_ip=external_ip,
            now=time.time() if now is None else now,
        ),
    }


__all__ = [
    "FIELD_MANAGER",
    "IMAGES",
    "KUBELET_ANNOTATIONS",
    "KUBELET_VERSION",
    "images",
    "node",
    "status",
    "timestamp",
]
