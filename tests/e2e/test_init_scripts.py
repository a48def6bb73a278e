"""The init containers' scripts that need the kernel: wireguard-probe (nkml's, in
kilo-k3s-userspace-heterogeneous.yaml) with the real ``ip`` in a fresh network namespace."""

from __future__ import annotations

import subprocess

from tests.manifests import MANIFESTS, containers, load_file

PROBE = "kilo-wg-probe"


def in_netns(netns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_wireguard_probe_loads_what_the_kernel_has_and_leaves_no_link(netns: str) -> None:
    (probe,) = [
        c
        for c in containers(load_file(MANIFESTS / "kilo-k3s-userspace-heterogeneous.yaml"))
        if c.name == "wireguard-probe"
    ]
    result = in_netns(netns, "sh", "-c", probe.spec["command"][2])
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert in_netns(netns, "ip", "-o", "link", "show", PROBE).returncode != 0
    # The kernel's answer, asked again: the probe reported it.
    kernel = in_netns(netns, "ip", "link", "add", PROBE, "type", "wireguard").returncode == 0
    if kernel:
        assert in_netns(netns, "ip", "link", "delete", PROBE).returncode == 0
        assert "so its module is loaded" in result.stdout
    else:
        assert "userspace WireGuard here" in result.stdout
