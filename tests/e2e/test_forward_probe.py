"""The leader's forwarding probe (kilo.adapters.forwardprobe) against real kernels.

Two namespaces: ``leader`` (ip_forward on, a ``kilo0`` routing the remote location's
addresses: packets routed into it are seen leaving and then dropped, which is all the
probe looks at) and ``member``, a node of its location routing the remote
location through the leader, as Kilo's non-leaders do. The member's echo reply to the
remote leader's WireGuard IP must cross the leader's forward path.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from kilo.sandbox import runs

LEADER_IP, MEMBER_IP, REMOTE_IP = "10.77.0.1", "10.77.0.2", "10.78.0.1"


def sh(ns: str, *command: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, *command], check=True)


@pytest.fixture
def pair(netns: str) -> Iterator[tuple[str, str]]:
    leader = netns
    with runs.scratch_namespace("kilo-test") as member:
        sh(leader, "ip", "link", "add", "lan0", "type", "veth", "peer", "lan1", "netns", member)
        sh(leader, "ip", "address", "add", f"{LEADER_IP}/24", "dev", "lan0")
        sh(member, "ip", "address", "add", f"{MEMBER_IP}/24", "dev", "lan1")
        for ns, dev in ((leader, "lan0"), (member, "lan1")):
            sh(ns, "ip", "link", "set", dev, "up")
            sh(ns, "ip", "link", "set", "lo", "up")
        # No dummy module on every kernel: a veth whose far end, in the member's namespace,
        # drops what it receives (that namespace does not forward).
        sh(leader, "ip", "link", "add", "kilo0", "type", "veth", "peer", "sink0", "netns", member)
        # No ARP: like WireGuard, a packet routed into it is sent at once.
        sh(leader, "ip", "link", "set", "kilo0", "up", "arp", "off")
        sh(member, "ip", "link", "set", "sink0", "up")
        sh(leader, "ip", "route", "add", "10.78.0.0/16", "dev", "kilo0")
        sh(leader, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh(member, "ip", "route", "add", "10.78.0.0/16", "via", LEADER_IP)
        yield leader, member


def probe(leader: str, interface: str = "kilo0") -> tuple[bool, bool]:
    code = (
        "from ipaddress import IPv4Address as A; from kilo.adapters import forwardprobe as f; "
        f"print(*f.send_and_watch(A({MEMBER_IP!r}), A({REMOTE_IP!r}), "
        f"interface={interface!r}, timeout=1.0))"
    )
    out = subprocess.run(
        ["ip", "netns", "exec", leader, sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return out[0] == "True", out[1] == "True"


def test_a_forwarding_leader_sees_the_reply_arrive_and_leave_on_kilo0(
    pair: tuple[str, str],
) -> None:
    leader, _ = pair
    assert probe(leader) == (True, True)
    # Leaving on another interface is not leaving on the WireGuard interface.
    assert probe(leader, interface="lan0") == (True, False)


def test_a_forward_chain_that_drops_is_seen(pair: tuple[str, str]) -> None:
    leader, _ = pair
    sh(leader, "iptables", "-I", "FORWARD", "-j", "DROP")
    assert probe(leader) == (True, False)
    sh(leader, "iptables", "-D", "FORWARD", "-j", "DROP")
    assert probe(leader) == (True, True)


def test_forwarding_switched_off_is_seen(pair: tuple[str, str]) -> None:
    leader, _ = pair
    sh(leader, "sysctl", "-qw", "net.ipv4.ip_forward=0")
    assert probe(leader) == (True, False)


def test_a_member_that_does_not_answer_gives_no_verdict(pair: tuple[str, str]) -> None:
    leader, member = pair
    sh(member, "iptables", "-I", "INPUT", "-p", "icmp", "-j", "DROP")
    assert probe(leader) == (False, False)
