"""Two clusters joined as Kilo documents it (docs/multi-cluster-services.md): real packets.

One testbed, two control planes (``cluster1``: aws and a NATed office; ``cluster2``: gcp and
a NATed home; pod, Service and WireGuard ranges all apart), one ``kg`` per node. Kilo's
recipe registers every node of each cluster as a Peer of the other with ``kgctl showconf node
N --as-peer -o yaml --allowed-ips <the cluster's Service CIDR>``; here the Peers are written
by lightkube's server-side apply (what ``kubectl apply --server-side`` does; there is no
kubectl here). The tests share the testbed and run in file order.
"""

from __future__ import annotations

import ipaddress
import itertools
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube.codecs import from_dict
from lightkube.resources.core_v1 import Endpoints, Node, Service

from kilo.adapters.kubernetes import RESOURCES
from kilo.mesh import multicluster, translate
from kilo.sandbox import runs
from kilo.sandbox.testbed import Location, Testbed

KEEPALIVE = translate.PERSISTENT_KEEPALIVE
LOCATIONS = [
    Location("aws", nodes=2),
    Location("office", nodes=1, nat=True, annotations={KEEPALIVE: "5"}),
    Location("gcp", nodes=3, cluster=1),
    Location("home", nodes=1, nat=True, annotations={KEEPALIVE: "5"}, cluster=1),
]
CONVERGE = 60.0
Peer = RESOURCES["peers"]
# Each NATed site reaches the other cluster through its public leaders; two NATed sites
# have no endpoint either can reach (the same holds for two NATed locations of one Kilo
# cluster), so that pair is the one the recipe cannot join.
NAT_PAIR = {"pod-office-1", "pod-home-1"}
BYSTANDER_KEY = "GY5aT1N9dTR/nJnT1N2f4ClZWVj0jOAld0r8ysWLyjg="
# Registered (as by its kubelet) but without Kilo until the link's tests start its agent.
LATE = "gcp-3"


def kgctl(bed: Testbed, cluster: int, *args: str) -> subprocess.CompletedProcess[str]:
    kubeconfig = bed.admin_kubeconfig_of(cluster)
    return subprocess.run(
        [sys.executable, "-m", "kilo.cli.kgctl", f"--kubeconfig={kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def wait_for(predicate: Any, message: str, timeout: float = CONVERGE) -> Any:
    return runs.wait_for(predicate, timeout=timeout, message=message, interval=0.5)


def cluster_pods(bed: Testbed, cluster: int) -> dict[str, str]:
    return {
        name: pod.ip for name, pod in bed.pods.items() if bed.nodes[pod.node].cluster == cluster
    }


def run_recipe(bed: Testbed, source: int, target: int) -> list[str]:
    """Kilo's loop: every node of ``source`` as a Peer of ``target``; the Peers applied.
    Non-leaders print nothing (kgctl says on stderr that they lead no segment)."""
    service_cidr = str(bed.clusters[source].service_cidr)
    applied = []
    for name, node in bed.nodes.items():
        if node.cluster != source or bed.agent(name) is None:
            continue  # not a Kilo node (yet): kgctl would not find it
        out = kgctl(
            bed, source, "showconf", "node", name, "--as-peer", "-o", "yaml",
            "--allowed-ips", service_cidr,
        ).stdout  # fmt: skip
        if not out.strip():
            continue
        peer = from_dict(yaml.safe_load(out))
        bed.api(target).apply(peer, field_manager="kilo-e2e-recipe", force=True)
        applied.append(name)
    return applied


def restart_agents(bed: Testbed, granularity: str) -> None:
    for node in bed.nodes:
        if node == LATE:
            continue
        if bed.agent(node) is not None:
            bed.stop_agent(node)
        bed.start_agent(node, granularity=granularity)


@pytest.fixture(scope="module")
def bed(controlplane_binaries: Path) -> Iterator[Testbed]:
    runs.cleanup_stale()
    with Testbed(LOCATIONS, binaries=controlplane_binaries) as built:
        with built.agent_logs_on_failure():
            started = [node for node in built.nodes if node != LATE]
            for node in started:
                built.start_agent(node)
            for node in started:
                built.add_pod(node, f"pod-{node}", timeout=CONVERGE)
        yield built


def assert_clusters_joined(bed: Testbed) -> None:
    one, two = cluster_pods(bed, 0), cluster_pods(bed, 1)
    for (a, a_ip), (b, b_ip) in itertools.product(one.items(), two.items()):
        if {a, b} == NAT_PAIR:
            continue
        for src, dst, ip in ((a, b, b_ip), (b, a, a_ip)):
            wait_for(
                lambda src=src, ip=ip: bed.ping(bed.pods[src].netns, ip, count=1, timeout=1),
                f"{src} does not reach {dst} ({ip})",
            )


def test_the_two_clusters_are_apart(bed: Testbed) -> None:
    one, two = bed.clusters
    for a, b in itertools.product(
        (one.pod_cidrs, one.service_cidr, one.wireguard_cidr),
        (two.pod_cidrs, two.service_cidr, two.wireguard_cidr),
    ):
        assert not a.overlaps(b), (a, b)
    wireguard_ip = bed.node_annotations("aws-1")[translate.WIREGUARD_IP]
    assert wireguard_ip.startswith("10.4.")
    gcp = bed.api(1).get(Node, "gcp-1")
    assert gcp.metadata is not None and gcp.metadata.annotations is not None
    assert gcp.metadata.annotations[translate.WIREGUARD_IP].startswith("10.5.")


def test_kilo_recipe_joins_every_pod_location_granularity(bed: Testbed) -> None:
    wait_for(
        lambda: bed.node_annotations("office-1").get(translate.WIREGUARD_IP),
        "cluster1's leaders did not publish their WireGuard IPs",
    )
    assert sorted(run_recipe(bed, 0, 1)) == ["aws-1", "office-1"]
    assert sorted(run_recipe(bed, 1, 0)) == ["gcp-1", "home-1"]
    assert_clusters_joined(bed)


def test_a_mirrored_service_reaches_a_backend_in_the_other_cluster(bed: Testbed) -> None:
    """Kilo's multi-cluster Services: in cluster1 a Service without a selector and
    hand-written Endpoints naming a pod of cluster2. No kube-proxy runs here, so the test
    writes on the client's node the DNAT a kube-proxy in iptables mode would write for that
    Service IP (KUBE-SERVICES -> KUBE-SEP -> DNAT, collapsed to the one rule)."""
    backend = bed.pods["pod-gcp-2"]
    port = 8080
    service = bed.api(0).create(
        from_dict(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "mirrored", "namespace": "default"},
                "spec": {"ports": [{"port": port, "protocol": "TCP"}]},
            }
        )
    )
    assert isinstance(service, Service)
    bed.api(0).create(
        from_dict(
            {
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": {"name": "mirrored", "namespace": "default"},
                "subsets": [{"addresses": [{"ip": backend.ip}], "ports": [{"port": port}]}],
            }
        )
    )
    # What a controller would write today besides the Endpoints (kube-proxy reads these).
    bed.api(0).create(
        from_dict(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": "mirrored-remote",
                    "namespace": "default",
                    "labels": {"kubernetes.io/service-name": "mirrored"},
                },
                "addressType": "IPv4",
                "endpoints": [{"addresses": [backend.ip]}],
                "ports": [{"port": port, "protocol": "TCP"}],
            }
        )
    )
    endpoints = bed.api(0).get(Endpoints, "mirrored", namespace="default")
    assert endpoints.subsets[0].addresses[0].ip == backend.ip
    cluster_ip = service.spec.clusterIP
    assert ipaddress.ip_address(cluster_ip) in bed.clusters[0].service_cidr
    client = "aws-2"  # a non-leader: the packets also cross the location to its leader
    bed.run(
        client, "iptables", "-t", "nat", "-A", "PREROUTING", "-d", f"{cluster_ip}/32",
        "-p", "tcp", "--dport", str(port), "-j", "DNAT",
        "--to-destination", f"{endpoints.subsets[0].addresses[0].ip}:{port}",
    )  # fmt: skip
    echo = bed.tcp_exchange(f"pod-{client}", "pod-gcp-2", cluster_ip, port, payload="mirrored")
    assert echo.reply == "mirrored"
    # The backend sees the client pod itself: nothing masqueraded between the clusters.
    assert echo.peer == bed.pods[f"pod-{client}"].ip


def test_kilo_recipe_joins_every_pod_full_granularity(bed: Testbed) -> None:
    restart_agents(bed, "full")
    wait_for(
        lambda: bed.node_annotations("aws-2").get(translate.WIREGUARD_IP),
        "aws-2 did not become a segment of its own",
    )
    # In a full mesh every node leads its own segment, so the loop now writes every node.
    assert len(run_recipe(bed, 0, 1)) == 3
    assert len(run_recipe(bed, 1, 0)) == 3
    assert_clusters_joined(bed)


# --- kgctl multicluster link: the same peering, kept current ----------------------------------


def peers_of(bed: Testbed, cluster: int) -> dict[str, dict[str, Any]]:
    found: list[Any] = list(bed.api(cluster).list(Peer))
    return {p.metadata.name: p.to_dict() for p in found}


def test_link_replaces_the_recipe_and_keeps_both_clusters_joined(bed: Testbed) -> None:
    for cluster in (0, 1):  # what the recipe wrote goes, as a user moving to the link would
        for name in peers_of(bed, cluster):
            bed.api(cluster).delete(Peer, name)
    restart_agents(bed, "location")
    wait_for(
        lambda: bed.node_annotations("aws-2").get(translate.WIREGUARD_IP) == "",
        "aws-2 did not go back to being a follower",
    )
    with open(bed.logs / "link.log", "ab") as log:
        bed.link = subprocess.Popen(  # type: ignore[attr-defined]
            [
                sys.executable, "-m", "kilo.cli.kgctl",
                f"--kubeconfig={bed.admin_kubeconfig_of(0)}", "multicluster", "link",
                f"--remote-kubeconfig={bed.admin_kubeconfig_of(1)}", "--name=e2e", "--watch",
                f"--service-cidr={bed.clusters[0].service_cidr}",
                f"--remote-service-cidr={bed.clusters[1].service_cidr}",
                "--resync-period=2",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    bed._processes.append(bed.link)  # type: ignore[attr-defined]  # stopped by close()
    wait_for(
        lambda: (
            set(peers_of(bed, 1)) == {"e2e-aws-1", "e2e-office-1"}
            and set(peers_of(bed, 0)) == {"e2e-gcp-1", "e2e-home-1"}
        ),
        "the link did not write one Peer per leader into each cluster: "
        + (bed.logs / "link.log").read_text()[-2000:],
    )
    peer = peers_of(bed, 1)["e2e-aws-1"]
    assert peer["metadata"]["labels"] == {multicluster.LINK_LABEL: "e2e"}
    assert str(bed.clusters[0].service_cidr) in peer["spec"]["allowedIPs"]
    assert_clusters_joined(bed)


def test_link_follows_a_leader_failover_in_cluster1(bed: Testbed) -> None:
    dead = "aws-1"
    bed.kill_agent(dead)
    bed.run(dead, "ip", "link", "set", "lan0", "down")  # the whole node goes away
    started = time.monotonic()
    wait_for(
        lambda: "e2e-aws-2" in peers_of(bed, 1) and "e2e-aws-1" not in peers_of(bed, 1),
        "the link did not move cluster1's aws Peer in cluster2 to its new leader",
        timeout=150,
    )
    moved = time.monotonic() - started
    src, ip = bed.pods["pod-gcp-1"].netns, bed.pods["pod-aws-2"].ip
    wait_for(lambda: bed.ping(src, ip, count=1, timeout=1), "gcp-1 does not reach aws-2")
    back = bed.pods["pod-aws-2"].netns
    wait_for(
        lambda: bed.ping(back, bed.pods["pod-gcp-2"].ip, count=1, timeout=1),
        "aws-2 does not reach gcp-2",
    )
    recovered = time.monotonic() - started
    sys.stderr.write(
        f"leader failover: Peer moved after {moved:.1f} s, traffic {recovered:.1f} s\n"
    )
    (bed.logs / "failover.txt").write_text(f"{moved:.1f} {recovered:.1f}\n")


def test_link_follows_a_node_joining_cluster2(bed: Testbed) -> None:
    started = time.monotonic()
    bed.start_agent(LATE)
    pod = bed.add_pod(LATE, f"pod-{LATE}", timeout=CONVERGE)
    wait_for(
        lambda: (
            str(bed.nodes[LATE].pod_cidr) in peers_of(bed, 0)["e2e-gcp-1"]["spec"]["allowedIPs"]
        ),
        "the link did not add the new node's pod CIDR to gcp's Peer in cluster1",
    )
    wait_for(
        lambda: bed.ping(bed.pods["pod-aws-2"].netns, pod.ip, count=1, timeout=1),
        "cluster1 does not reach the new node's pod",
    )
    joined = time.monotonic() - started
    sys.stderr.write(f"node added: reached from cluster1 {joined:.1f} s after its agent started\n")


def test_unlink_removes_exactly_what_the_link_wrote(bed: Testbed) -> None:
    link = bed.link  # type: ignore[attr-defined]
    link.send_signal(signal.SIGTERM)
    assert link.wait(15) == 0
    bed._processes.remove(link)
    bystander = {
        "apiVersion": "kilo.squat.ai/v1alpha1",
        "kind": "Peer",
        "metadata": {"name": "e2e-bystander", "labels": {multicluster.LINK_LABEL: "other"}},
        "spec": {"allowedIPs": ["10.99.0.1/32"], "publicKey": BYSTANDER_KEY},
    }
    bed.api(1).create(from_dict(bystander))
    result = kgctl(
        bed, 0, "multicluster", "unlink", f"--remote-kubeconfig={bed.admin_kubeconfig_of(1)}",
        "--name=e2e",
    )  # fmt: skip
    assert "deleted Peer e2e-gcp-1" in result.stdout
    assert set(peers_of(bed, 0)) == set()
    assert set(peers_of(bed, 1)) == {"e2e-bystander"}
