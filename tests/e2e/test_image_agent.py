"""The image's ``kg`` joins a mesh: podman containers in testbed nodes' namespaces.

Three clouds, one node each: ``aws-1`` runs the image as Kilo's own DaemonSets run theirs
(the image's user, ``privileged: true``), ``gcp-1`` as our chart runs it (uid 0, every
capability dropped but NET_ADMIN and NET_RAW, no privilege escalation), and ``azure-1``
runs this checkout's ``kg`` directly. Each container shares only the node's network
namespace and the paths a DaemonSet mounts (see ``Testbed.start_agent``); pods in the
three clouds must reach each other, and SIGTERM must make the containers clean up.
"""

from __future__ import annotations

import functools
import itertools
import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kilo.sandbox import podman, runs, testbed
from kilo.sandbox.testbed import Location, Testbed
from tests import testbed_harness
from tests.manifests import MANIFESTS, containers, load_file

# The first test may build the image (docker/build.sh): mmdebstrap takes about 2 minutes cold.
pytestmark = pytest.mark.timeout(900)
LOCATIONS = [Location("aws", nodes=1), Location("gcp", nodes=1), Location("azure", nodes=1)]
CONVERGE = 60.0
KILO = yaml.safe_load(
    (Path(__file__).resolve().parents[1] / "image" / "kilo_manifests.yaml").read_text()
)
CAP_NET_ADMIN, CAP_NET_RAW = 12, 13


def chart_security() -> podman.Security:
    kilo = next(
        c
        for c in containers(load_file(MANIFESTS / "kilo-kubeadm-userspace.yaml"))
        if c.name == "kilo"
    )
    return podman.Security.from_kubernetes(kilo.spec, kilo.pod)


IMAGE_NODES = {
    "aws-1": podman.Security.from_kubernetes(KILO["agent"]),  # Kilo's DaemonSet
    "gcp-1": chart_security(),  # ours
}


@pytest.fixture(scope="module")
def bed(controlplane_binaries: Path, kilo_image: str) -> Iterator[Testbed]:
    def start(built: Testbed, node: str) -> None:
        security = IMAGE_NODES.get(node)
        image = None if security is None else podman.Image(ref=kilo_image, security=security)
        built.start_agent(node, image=image)

    with testbed_harness.bed_with_pods(
        LOCATIONS, binaries=controlplane_binaries, start_agent=start, timeout=CONVERGE
    ) as built:
        yield built


def container_pid(name: str) -> int:
    out = subprocess.run(
        ["podman", "inspect", "--format={{.State.Pid}}", name],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout)


def effective_capabilities(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(
        next(line for line in status.splitlines() if line.startswith("CapEff")).split()[1], 16
    )


def test_the_image_nodes_run_kg_from_the_image_with_their_security_context(bed: Testbed) -> None:
    for node in IMAGE_NODES:
        name = f"{bed.prefix}-{node}-kg"
        pid = container_pid(name)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[:2] == [b"/opt/kilo/bin/python3", b"/opt/bin/kg"], cmdline
        assert Path(f"/proc/{pid}/root/opt/cni/bin/bridge").exists()  # the image's root
        status = Path(f"/proc/{pid}/status").read_text()
        assert "\nUid:\t0\t0\t0\t0\n" in status
        # Its network namespace is the node's: the container made none of its own.
        node_netns = Path(f"/proc/{bed.machine(node).pid}/ns/net").stat().st_ino
        assert Path(f"/proc/{pid}/ns/net").stat().st_ino == node_netns
    assert effective_capabilities(container_pid(f"{bed.prefix}-gcp-1-kg")) == (
        1 << CAP_NET_ADMIN | 1 << CAP_NET_RAW
    )
    assert effective_capabilities(container_pid(f"{bed.prefix}-aws-1-kg")) & (1 << CAP_NET_ADMIN)


def test_pods_in_the_three_clouds_reach_each_other(bed: Testbed) -> None:
    for src, dst in itertools.permutations(bed.pods.values(), 2):
        runs.wait_for(
            functools.partial(bed.ping, src.netns, dst.ip, count=1, timeout=1),
            timeout=CONVERGE,
            message=f"{src.name} does not reach {dst.name} ({dst.ip})",
            interval=0.5,
        )
    for node in IMAGE_NODES:
        annotations = bed.node_annotations(node)
        assert annotations["kilo.squat.ai/wireguard-ip"]
        log = bed.agent_log(node)
        assert '"the mesh is applied; the agent is healthy"' in log
        # The image's kg wrote the node's conflist through the mounted /etc/cni/net.d.
        assert json.loads(bed.path(node, testbed.CNI_CONFLIST).read_text())["name"] == "kilo"


def test_sigterm_through_podman_makes_the_image_kg_clean_up(bed: Testbed) -> None:
    for node in IMAGE_NODES:
        name = f"{bed.prefix}-{node}-kg"
        assert bed.stop_agent(node, signal.SIGTERM) == 0, bed.agent_log(node)
        routes = bed.run(node, "ip", "-4", "route", "show", "table", "all", "dev", "kilo0")
        assert routes.strip() == ""
        assert "KILO-" not in bed.run(node, "iptables-save")
        exists = subprocess.run(["podman", "container", "exists", name], check=False)
        assert exists.returncode == 1  # removed (--rm)


def test_a_killed_image_kg_leaves_no_container(bed: Testbed, kilo_image: str) -> None:
    image = podman.Image(ref=kilo_image, security=IMAGE_NODES["aws-1"])
    process = bed.start_agent("aws-1", image=image)
    name = f"{bed.prefix}-aws-1-kg"
    runs.wait_for(
        lambda: (
            '"the mesh is applied; the agent is healthy"'
            in bed.agent_log("aws-1").split("--- nsenter")[-1]
        ),
        timeout=CONVERGE,
        message="the restarted image kg did not become healthy",
    )
    assert process.poll() is None
    bed.kill_agent("aws-1")
    exists = subprocess.run(["podman", "container", "exists", name], check=False)
    assert exists.returncode == 1
