"""kg runs the mesh with only the capabilities the manifests grant (NET_ADMIN, NET_RAW).

charts/kilo drops every capability of the agent container but these two instead of Kilo's
``privileged: true``. Here each node's kg runs under setpriv with that bounding set (see
restricted_kg.py): it must still program WireGuard (through wireguard-go's UAPI socket),
routes, rules, iptables and the CNI conflist so that pods in two clouds reach each other,
and clean up on SIGTERM. The wireguard-go sidecar gets NET_ADMIN alone. (A container also
limits devices and mounts; that part is the runtime's and is not reproduced here.)
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kilo.sandbox import runs
from kilo.sandbox.testbed import Location, Testbed
from tests import testbed_harness

LOCATIONS = [Location("aws", nodes=1), Location("gcp", nodes=1)]
CONVERGE = 60.0
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
ROOT = Path(__file__).resolve().parents[2]
# What a missing capability looks like in kg's log (EPERM, EACCES, from netlink or iptables).
DENIED = ("not permitted", "permission denied", "eperm", "eacces")


def capabilities(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {
        line.split(":")[0]: int(line.split()[1], 16)
        for line in status.splitlines()
        if line.startswith("Cap")
    }


def start_restricted_kg(bed: Testbed, node: str) -> None:
    # nsenter -m starts in the node's root directory: name the checkout.
    bed.start_agent(node, module="tests.e2e.restricted_kg", env={"PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def bed(controlplane_binaries: Path) -> Iterator[Testbed]:
    with testbed_harness.bed_with_pods(
        LOCATIONS, binaries=controlplane_binaries, start_agent=start_restricted_kg, timeout=CONVERGE
    ) as built:
        yield built


def test_kg_has_only_net_admin_and_net_raw(bed: Testbed) -> None:
    wanted = (1 << CAP_NET_ADMIN) | (1 << CAP_NET_RAW)
    for node in bed.nodes:
        process = bed.agent(node)
        assert process is not None and process.poll() is None, bed.agent_log(node)
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
        assert b"kilo.agent" in cmdline  # setpriv has exec'd kg itself
        caps = capabilities(process.pid)
        assert (caps["CapEff"], caps["CapPrm"], caps["CapBnd"]) == (wanted, wanted, wanted)
        assert caps["CapInh"] == caps["CapAmb"] == 0


def test_pods_in_two_clouds_reach_each_other(bed: Testbed) -> None:
    aws, gcp = bed.pods["pod-aws-1"], bed.pods["pod-gcp-1"]

    for src, dst in ((aws, gcp), (gcp, aws)):
        runs.wait_for(
            functools.partial(bed.ping, src.netns, dst.ip, count=1, timeout=1),
            timeout=CONVERGE,
            message=f"{src.name} does not reach {dst.ip}",
            interval=0.5,
        )
    for node in bed.nodes:
        denied = [
            line
            for line in bed.agent_log(node).splitlines()
            if any(word in line.lower() for word in DENIED)
        ]
        assert denied == []


def test_kg_cleans_up_with_these_capabilities(bed: Testbed) -> None:
    for node in list(bed.nodes):
        assert bed.stop_agent(node, signal.SIGTERM) == 0, bed.agent_log(node)
        routes = bed.run(node, "ip", "-4", "route", "show", "table", "all", "dev", "kilo0")
        assert routes.strip() == ""
        assert "KILO-" not in bed.run(node, "iptables-save")


def test_the_wireguard_go_sidecar_needs_only_net_admin(netns: str, tmp_path: Path) -> None:
    """The userspace sidecar's grant: NET_ADMIN (and the TUN device), nothing else."""
    pidfile = tmp_path / "pid"
    script = (
        f"mount -t tmpfs none /var/run/wireguard && echo $$ > {pidfile} && "
        "exec setpriv --bounding-set=-all,+net_admin --inh-caps=-all --no-new-privs "
        "wireguard-go --foreground kilo0"
    )
    unshare = ["unshare", "-m", "--propagation", "private", "sh", "-c", script]
    process = subprocess.Popen(
        ["ip", "netns", "exec", netns, *unshare],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        pid = runs.wait_for(
            lambda: pidfile.exists() and pidfile.read_text().strip(),
            timeout=10,
            message="wireguard-go did not start",
        )
        assert isinstance(pid, str)

        def wg(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["nsenter", "-t", pid, "-m", "-n", "wg", *args],
                capture_output=True,
                text=True,
                check=False,
            )

        runs.wait_for(
            lambda: wg("show", "kilo0").returncode == 0,
            timeout=10,
            message="wireguard-go serves no UAPI socket for kilo0",
        )
        assert capabilities(int(pid))["CapEff"] == 1 << CAP_NET_ADMIN
        # kg's side of the UAPI: a private key and a listen port are accepted.
        key = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True)
        (tmp_path / "key").write_text(key.stdout)
        configured = wg(
            "set", "kilo0", "private-key", str(tmp_path / "key"), "listen-port", "51820"
        )
        assert configured.returncode == 0, configured.stderr
        assert wg("show", "kilo0", "listen-port").stdout.strip() == "51820"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
