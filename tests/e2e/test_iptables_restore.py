"""Planned iptables rules applied with real iptables-restore in a test network namespace."""

from __future__ import annotations

import subprocess

import pytest

from kilo.mesh import iptables
from kilo.mesh.iptables import Protocol
from kilo.mesh.iptables_restore import parse_save, restore_script
from kilo.mesh.model import Encapsulation
from tests.reference_iptables import alpha_rule_set


def ns(netns: str, *argv: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        ["ip", "netns", "exec", netns, *argv],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"{argv}: {result.stderr}"
    return result.stdout


def apply(netns: str, planned: iptables.RuleSet) -> int:
    """Apply the plan to every table; return how many tables needed a change."""
    changed = 0
    for table in ("filter", "nat"):
        current = parse_save(ns(netns, "iptables-save", "-t", table)).get(table)
        assert current is not None
        script = restore_script(planned, table, Protocol.IPV4, current)
        if script is not None:
            ns(netns, "iptables-restore", "--noflush", stdin=script)
            changed += 1
    return changed


def save(netns: str, table: str) -> list[str]:
    return [
        line
        for line in ns(netns, "iptables-save", "-t", table).splitlines()
        if line.startswith(("-A", ":KILO"))
    ]


@pytest.fixture(autouse=True)
def _needs_iptables() -> None:
    if subprocess.run(["which", "iptables-restore"], capture_output=True, check=False).returncode:
        pytest.fail("iptables is not installed (.ci/run installs it)")


def test_a_plan_applies_once_and_then_is_already_in_place(netns: str) -> None:
    assert apply(netns, alpha_rule_set()) == 2
    assert apply(netns, alpha_rule_set()) == 0  # canonical comparison: nothing is re-inserted
    nat = save(netns, "nat")
    assert ":KILO-NAT - [0:0]" in nat
    assert nat[-1] == '-A KILO-NAT -m comment --comment "Kilo: NAT remaining packets" -j MASQUERADE'
    assert (
        '-A POSTROUTING -s 10.2.0.0/24 -m comment --comment "Kilo: jump to KILO-NAT chain" '
        "-j KILO-NAT" in nat
    )
    filter_rules = save(netns, "filter")
    # Kilo writes the FORWARD rules comment-first; iptables prints them source-first.
    assert (
        '-A FORWARD -s 10.2.0.0/24 -m comment --comment "Kilo: forward packets from the pod '
        'subnet" -j ACCEPT' in filter_rules
    )
    assert [line for line in filter_rules if line.startswith("-A INPUT")][-2:] == [
        '-A INPUT -p ipencap -m comment --comment "Kilo: jump to IPIP chain" -j KILO-IPIP',
        '-A INPUT -p ipencap -m comment --comment "Kilo: reject other IPIP traffic" -j DROP',
    ]


def test_deleted_rules_are_repaired_and_foreign_rules_kept(netns: str) -> None:
    apply(netns, alpha_rule_set())
    ns(
        netns,
        "iptables",
        "-t",
        "nat",
        "-D",
        "POSTROUTING",
        "-s",
        "10.2.0.0/24",
        "-m",
        "comment",
        "--comment",
        "Kilo: jump to KILO-NAT chain",
        "-j",
        "KILO-NAT",
    )
    ns(netns, "iptables", "-t", "nat", "-F", "KILO-NAT")
    ns(
        netns,
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "192.0.2.0/24",
        "-j",
        "MASQUERADE",
    )
    before = save(netns, "nat")
    assert apply(netns, alpha_rule_set()) == 1
    after = save(netns, "nat")
    assert "-A POSTROUTING -s 192.0.2.0/24 -j MASQUERADE" in after
    assert len(after) > len(before)
    assert apply(netns, alpha_rule_set()) == 0


def test_rules_no_longer_planned_are_removed(netns: str) -> None:
    apply(netns, alpha_rule_set())
    apply(netns, alpha_rule_set(with_peers=False, encapsulation=Encapsulation.NEVER))
    nat, filter_rules = save(netns, "nat"), save(netns, "filter")
    assert not any("10.5.0.1" in line for line in nat)  # the peer's rules
    assert not any("KILO-IPIP" in line or "ipencap" in line for line in filter_rules)
    assert apply(netns, alpha_rule_set(with_peers=False, encapsulation=Encapsulation.NEVER)) == 0
