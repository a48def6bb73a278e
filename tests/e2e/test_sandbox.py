"""``kilo-sandbox`` end to end, through its console script in a subprocess, as a user runs it.

``up`` builds two clouds of two nodes, a NATed office and a VPN peer and must return with
every path of its reachability matrix reachable while everything keeps running; ``status``
measures again; ``down`` must leave nothing (namespaces, the host link, processes, mounts,
files) and may be repeated. Without root, or without /dev/net/tun, ``up`` stops at once with
one sentence.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kilo.sandbox import runs, state

SCRIPT = Path(sys.executable).parent / "kilo-sandbox"
KGCTL = Path(sys.executable).parent / "kgctl"
PODS = ["pod-aws-1", "pod-aws-2", "pod-gcp-1", "pod-gcp-2", "pod-office-1", "pod-office-2"]


def sandbox(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def matrix_rows(text: str) -> dict[str, list[str]]:
    """Row label -> cells, from the printed matrix."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("FROM \\ TO"))
    header = re.split(r"\s{2,}", lines[start])
    rows = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line)
        rows[cells[0]] = cells[1:]
    assert all(len(cells) == len(header) - 1 for cells in rows.values()), rows
    return rows


def leftovers(directory: Path, prefix: str, recorded: list[state.Process]) -> dict[str, object]:
    mounts = Path("/proc/mounts").read_text()
    commandlines = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                commandlines.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
    return {
        "namespaces": runs.run_namespaces(prefix),
        "link": runs.link_exists(f"{prefix}h"),
        "processes": [p for p in recorded if runs.process_start(p.pid) == p.start],
        "commands": [c for c in commandlines if str(directory) in c],
        "mounts": [line for line in mounts.splitlines() if prefix in line],
        "files": sorted(str(p) for p in directory.rglob("*")) if directory.exists() else [],
    }


NOTHING = {
    "namespaces": [],
    "link": False,
    "processes": [],
    "commands": [],
    "mounts": [],
    "files": [],
}


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[Path]:
    """The sandbox's directory; whatever happens, ``down`` runs at the end."""
    path = tmp_path / "sandbox"
    try:
        yield path
    finally:
        sandbox("down", "--dir", str(path), timeout=120)


def test_up_status_down(directory: Path, controlplane_binaries: Path) -> None:
    del controlplane_binaries  # built (or found) before the clock of `up` starts
    up = sandbox("up", "--dir", str(directory), "--locations", "2", "--nodes", "2")
    assert up.returncode == 0, up.stdout + up.stderr
    # Progress on stderr, the report on stdout.
    assert "built already" in up.stderr
    assert "✓ waiting for the mesh to converge" in up.stderr
    assert up.stdout.startswith("$ kgctl list\nNODE ")
    assert "42 of 42 paths reachable" in up.stdout
    rows = matrix_rows(up.stdout)
    assert list(rows) == [*PODS, "laptop (peer)"]
    for label, cells in rows.items():
        assert cells.count("-") == 1 and cells.count("ok") == len(cells) - 1, (label, cells)
    assert "Leaders: aws-1, gcp-1, office-1." in up.stdout

    # The graph, rendered because CI installs Graphviz.
    graph = Path(re.search(r"^Graph: (\S+)", up.stdout, re.M).group(1))  # type: ignore[union-attr]
    assert graph == directory / "mesh.svg"
    assert "<svg" in graph.read_text()

    # kgctl from the host, with the printed kubeconfig.
    kubeconfig = re.search(r"export KUBECONFIG=(\S+)", up.stdout).group(1)  # type: ignore[union-attr]
    listed = subprocess.run(
        [str(KGCTL), "list", "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "KUBECONFIG": kubeconfig},
    )
    nodes = json.loads(listed.stdout)["nodes"]
    assert sorted(n["name"] for n in nodes) == sorted(p.removeprefix("pod-") for p in PODS)
    assert all(n["ready"] for n in nodes)

    # Everything outlives `up`: the recorded processes are the ones running.
    recorded = state.loads((directory / "state.json").read_text())
    assert recorded.complete
    roles = {p.role for p in recorded.processes}
    assert {
        "etcd",
        "kube-apiserver",
        "kg aws-1",
        "wireguard-go office-2",
        "wireguard-go laptop",
    } <= roles
    assert len(recorded.processes) == 2 + 2 * 6 + 1
    assert all(runs.process_start(p.pid) == p.start for p in recorded.processes)

    status = sandbox("status", "--dir", str(directory), timeout=120)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "Leaders: aws-1, gcp-1, office-1" in status.stdout
    assert "GONE" not in status.stdout
    assert "42 of 42 paths reachable" in status.stdout
    table = status.stdout.split("MACHINE ", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    handshakes = [line for line in table if line.startswith("aws-1 ")]
    # aws-1 leads aws: gcp-1, office-1 and the laptop are its peers, each with a handshake.
    assert sorted(line.split()[1] for line in handshakes) == ["gcp-1", "laptop", "office-1"]
    assert not any("never" in line for line in handshakes)

    again = sandbox("up", "--dir", str(directory))
    assert again.returncode == 1
    assert again.stderr.startswith(f"a sandbox is already up in {directory} ")

    down = sandbox("down", "--dir", str(directory), timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert down.stdout.startswith("removed 15 processes, ")
    assert leftovers(directory, recorded.prefix, list(recorded.processes)) == NOTHING
    assert not directory.exists()  # `up` created it, `down` leaves no empty directory behind
    twice = sandbox("down", "--dir", str(directory), timeout=120)
    assert twice.returncode == 0, twice.stderr
    assert twice.stdout == f"nothing to remove: no sandbox in {directory}\n"


def test_down_without_a_readable_state_file(directory: Path, controlplane_binaries: Path) -> None:
    """After a crash the state may be missing or garbage: the prefix still finds everything."""
    del controlplane_binaries
    up = sandbox("up", "--dir", str(directory), "--locations", "1", "--nodes", "1")
    assert up.returncode == 0, up.stdout + up.stderr
    recorded = state.loads((directory / "state.json").read_text())
    (directory / "state.json").write_text("{ garbage")
    (directory / "notes.txt").write_text("the user's own file")
    status = sandbox("status", "--dir", str(directory), timeout=60)
    assert status.returncode == 1
    assert "state.json: not JSON" in status.stderr
    down = sandbox("down", "--dir", str(directory), timeout=120)
    assert down.returncode == 0, down.stderr
    left = leftovers(directory, recorded.prefix, list(recorded.processes))
    assert left == {**NOTHING, "files": [str(directory / "notes.txt")]}


def test_two_linked_clusters_up_status_down(directory: Path, controlplane_binaries: Path) -> None:
    """The README's multi-cluster walkthrough: ``up --clusters 2`` joins the clusters with
    ``kgctl multicluster link --watch``, which outlives ``up`` and ``down`` ends."""
    del controlplane_binaries
    up = sandbox(
        "up", "--dir", str(directory), "--clusters", "2", "--locations", "1", "--nodes", "1"
    )
    assert up.returncode == 0, up.stdout + up.stderr
    assert "✓ linking the clusters" in up.stderr
    # aws and the office in the first cluster, gcp in the second; every pod reaches every pod.
    assert "6 of 6 paths reachable" in up.stdout
    assert list(matrix_rows(up.stdout)) == ["pod-aws-1", "pod-office-1", "pod-gcp-1"]
    assert f"kubeconfig {directory / 'kubeconfig.cluster2'}." in up.stdout
    # The graph shows both clusters and the link between their leaders.
    graph = Path(re.search(r"^Graph: (\S+)", up.stdout, re.M).group(1))  # type: ignore[union-attr]
    assert "10.4.0.0/16 + 10.5.0.0/16 (link sandbox)" in graph.read_text()
    recorded = state.loads((directory / "state.json").read_text())
    assert recorded.clusters == 2
    roles = {p.role for p in recorded.processes}
    assert {"kgctl multicluster link", "etcd cluster2", "kube-apiserver cluster2"} <= roles
    assert all(runs.process_start(p.pid) == p.start for p in recorded.processes)
    second = subprocess.run(
        [str(KGCTL), f"--kubeconfig={directory / 'kubeconfig.cluster2'}", "list", "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert sorted(p["name"] for p in json.loads(second.stdout)["peers"]) == [
        "sandbox-aws-1",
        "sandbox-office-1",
    ]

    status = sandbox("status", "--dir", str(directory), timeout=120)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "Leaders: aws-1, office-1\nLeaders: gcp-1\n" in status.stdout
    assert "6 of 6 paths reachable" in status.stdout

    down = sandbox("down", "--dir", str(directory), timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert leftovers(directory, recorded.prefix, list(recorded.processes)) == NOTHING


def test_up_without_root_says_so_in_one_sentence(tmp_path: Path) -> None:
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    result = subprocess.run(
        [*nobody, str(SCRIPT), "up", "--dir", str(tmp_path / "sandbox")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "kilo-sandbox up needs root (it creates network and mount namespaces: run it with sudo).\n"
    )
    assert not (tmp_path / "sandbox").exists()


def test_up_without_dev_net_tun_says_so_in_one_sentence(tmp_path: Path) -> None:
    # A private mount namespace whose /dev/net is empty: this machine's TUN device is hidden.
    hide = f"mount -t tmpfs none /dev/net && exec {SCRIPT} up --dir {tmp_path / 'sandbox'}"
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", hide],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == (
        "kilo-sandbox up needs /dev/net/tun (wireguard-go's TUN device: modprobe tun).\n"
    )
    assert not (tmp_path / "sandbox").exists()
