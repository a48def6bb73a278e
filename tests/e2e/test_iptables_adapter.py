"""The iptables adapter against real iptables in a test network namespace."""

from __future__ import annotations

import subprocess

import pytest

from kilo.adapters.iptables import IPTables
from kilo.errors import DataPlaneError
from kilo.mesh.iptables import FILTER_TABLE, Protocol, Rule, RuleSet
from kilo.mesh.iptables_restore import parse_save, table_change
from tests.reference_iptables import alpha_rule_set

JUMP = (
    "-s",
    "10.2.0.0/24",
    "-m",
    "comment",
    "--comment",
    "Kilo: jump to KILO-NAT chain",
    "-j",
    "KILO-NAT",
)
JUMP_LINE = (
    '-A POSTROUTING -s 10.2.0.0/24 -m comment --comment "Kilo: jump to KILO-NAT chain" -j KILO-NAT'
)


def ns(netns: str, *argv: str) -> str:
    result = subprocess.run(
        ["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{argv}: {result.stderr}"
    return result.stdout


def snapshot(netns: str, save: str = "iptables-save") -> dict[str, list[str]]:
    """Both tables as iptables-save prints them, without the timestamped comments."""
    return {
        table: [
            line for line in ns(netns, save, "-t", table).splitlines() if not line.startswith("#")
        ]
        for table in ("nat", "filter")
    }


def add_foreign_rules(netns: str, tool: str = "iptables") -> None:
    """Rules and a chain of somebody else, in both tables, next to where Kilo writes."""
    ns(netns, tool, "-t", "nat", "-A", "POSTROUTING", "-o", "eth9", "-j", "MASQUERADE")
    ns(netns, tool, "-t", "nat", "-N", "OTHER-NAT")
    ns(netns, tool, "-t", "nat", "-A", "OTHER-NAT", "-j", "RETURN")
    ns(netns, tool, "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
    ns(netns, tool, "-A", "FORWARD", "-m", "comment", "--comment", "not kilo", "-j", "ACCEPT")


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, str]] = []

    def __call__(self, protocol: str, operation: str, table: str, chain: str) -> None:
        self.calls.append((protocol, operation, table, chain))

    def changes(self) -> list[tuple[str, str, str, str]]:
        return [call for call in self.calls if call[1] != "List"]


@pytest.fixture(autouse=True)
def _needs_iptables() -> None:
    if subprocess.run(["which", "iptables-restore"], capture_output=True, check=False).returncode:
        pytest.fail("iptables is not installed (.ci/run installs it)")


def test_apply_programs_the_plan_once(netns: str) -> None:
    recorder = Recorder()
    controller = IPTables(netns=netns, ipv6=False, on_operation=recorder)
    assert controller.apply(alpha_rule_set()) == 2
    nat = ns(netns, "iptables-save", "-t", "nat")
    assert JUMP_LINE in nat
    assert ":KILO-NAT - [0:0]" in nat
    assert ":KILO-IPIP - [0:0]" in ns(netns, "iptables-save", "-t", "filter")
    assert ("IPv4", "ClearChain", "nat", "KILO-NAT") in recorder.calls
    assert ("IPv4", "InsertUnique", "nat", "POSTROUTING") in recorder.calls
    assert ("IPv4", "AppendUnique", "filter", "INPUT") in recorder.calls
    assert all(call[0] == "IPv4" for call in recorder.calls)

    recorder.calls.clear()
    assert controller.apply(alpha_rule_set()) == 0
    # Reading each table is all a second apply does.
    assert recorder.calls == [("IPv4", "List", "filter", "*"), ("IPv4", "List", "nat", "*")]


def test_a_rule_deleted_by_hand_is_restored(netns: str) -> None:
    recorder = Recorder()
    controller = IPTables(netns=netns, ipv6=False, on_operation=recorder)
    controller.apply(alpha_rule_set())
    before = snapshot(netns)
    ns(netns, "iptables", "-t", "nat", "-D", "POSTROUTING", *JUMP)
    assert JUMP_LINE not in ns(netns, "iptables-save", "-t", "nat")
    recorder.calls.clear()
    assert controller.apply(alpha_rule_set()) == 1
    assert recorder.changes() == [("IPv4", "InsertUnique", "nat", "POSTROUTING")]
    # Back at the top of POSTROUTING: the order among Kilo's inserted rules does not matter.
    assert {t: sorted(lines) for t, lines in snapshot(netns).items()} == {
        t: sorted(lines) for t, lines in before.items()
    }


def test_foreign_rules_survive_apply_and_clean_up_restores_the_snapshot(netns: str) -> None:
    add_foreign_rules(netns)
    before = snapshot(netns)
    recorder = Recorder()
    controller = IPTables(netns=netns, ipv6=False, on_operation=recorder)
    controller.apply(alpha_rule_set())
    during = snapshot(netns)
    for table, lines in before.items():
        foreign = [line for line in lines if line.startswith(("-A", ":OTHER"))]
        assert all(line in during[table] for line in foreign), table

    recorder.calls.clear()
    controller.clean_up()
    assert snapshot(netns) == before
    assert ("IPv4", "DeleteChain", "nat", "KILO-NAT") in recorder.calls
    assert ("IPv4", "DeleteChain", "filter", "KILO-IPIP") in recorder.calls
    assert ("IPv4", "Delete", "nat", "POSTROUTING") in recorder.calls
    assert controller.apply(RuleSet()) == 0  # nothing of Kilo's is left


def test_a_new_controller_removes_what_an_earlier_run_left(netns: str) -> None:
    IPTables(netns=netns, ipv6=False).apply(alpha_rule_set())
    # A restarted agent with a smaller plan: the IPIP rules and chain must go.
    full = alpha_rule_set()
    reduced = RuleSet(
        append=tuple(e for e in full.append if e.table != FILTER_TABLE),
        prepend=tuple(r for r in full.prepend if r.table != FILTER_TABLE),
    )
    assert IPTables(netns=netns, ipv6=False).apply(reduced) == 1
    assert "KILO" not in ns(netns, "iptables-save", "-t", "filter")


def test_a_rejected_script_names_the_table_protocol_and_reason(netns: str) -> None:
    bad = Rule(
        protocol=Protocol.IPV4,
        table=FILTER_TABLE,
        chain="INPUT",
        spec=("-m", "comment", "--comment", "Kilo: bad", "-j", "NO-SUCH-TARGET"),
    )
    with pytest.raises(DataPlaneError) as caught:
        IPTables(netns=netns, ipv6=False).apply(RuleSet(prepend=(bad,)))
    message = str(caught.value)
    assert "iptables-restore failed for table filter (IPv4): " in message
    assert "NO-SUCH-TARGET" in message  # iptables-restore's own first line of stderr
    assert "\n" not in message


def test_a_missing_namespace_is_a_data_plane_error() -> None:
    with pytest.raises(DataPlaneError, match=r"iptables-save failed for table filter \(IPv4\)"):
        IPTables(netns="kilo-test-does-not-exist", ipv6=False).apply(alpha_rule_set())


def ip6tables_works(netns: str) -> bool:
    result = subprocess.run(
        ["ip", "netns", "exec", netns, "ip6tables-save", "-t", "filter"],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


def test_ipv6_rules_go_to_ip6tables(netns: str) -> None:
    if not ip6tables_works(netns):
        pytest.skip("ip6tables does not work in a network namespace on this host")
    add_foreign_rules(netns, "ip6tables")
    before = {"IPv4": snapshot(netns), "IPv6": snapshot(netns, "ip6tables-save")}
    recorder = Recorder()
    controller = IPTables(netns=netns, ipv6=True, on_operation=recorder)
    assert controller.protocols == (Protocol.IPV4, Protocol.IPV6)
    assert controller.apply(alpha_rule_set()) == 4
    nat6 = ns(netns, "ip6tables-save", "-t", "nat")
    assert '-A KILO-NAT -m comment --comment "Kilo: NAT remaining packets" -j MASQUERADE' in nat6
    assert "10.2.0.0/24" not in nat6  # IPv4 rules stay in iptables
    assert ("IPv6", "ClearChain", "nat", "KILO-NAT") in recorder.calls
    assert controller.apply(alpha_rule_set()) == 0
    controller.clean_up()
    assert {"IPv4": snapshot(netns), "IPv6": snapshot(netns, "ip6tables-save")} == before


def _returns(*octets: int) -> RuleSet:
    """alpha's rules and KILO-NAT RETURNs for ``10.<octet>.0.0/24``, as a mesh's known IPs."""
    alpha = alpha_rule_set()
    extra = tuple(
        Rule(
            protocol=Protocol.IPV4,
            table="nat",
            chain="KILO-NAT",
            spec=(
                "-d",
                f"10.{o}.0.0/24",
                "-m",
                "comment",
                "--comment",
                "Kilo: do not NAT packets destined for known IPs",
                "-j",
                "RETURN",
            ),
        )
        for o in octets
    )
    return RuleSet(append=alpha.append, prepend=(*alpha.prepend, *extra))


def test_incremental_applies_leave_the_tables_they_compute_without_reading_them(
    netns: str,
) -> None:
    """Each incremental apply's script, computed against the state the previous one left
    (no iptables-save), leaves exactly that state in the kernel; a full apply after them
    finds nothing to change."""
    add_foreign_rules(netns)
    recorder = Recorder()
    controller = IPTables(netns=netns, ipv6=False, on_operation=recorder)
    controller.apply(_returns(*range(20, 40)))
    for octets in (range(20, 42), range(21, 42), range(21, 43), (*range(23, 43), 7)):
        planned = _returns(*octets)
        state = parse_save(ns(netns, "iptables-save", "-t", "nat"))["nat"]
        change = table_change(planned, "nat", Protocol.IPV4, state)
        assert change is not None
        recorder.calls.clear()
        assert controller.apply(planned, full=False) == 1
        assert not [call for call in recorder.calls if call[1] == "List"]  # nothing read
        assert ("IPv4", "ClearChain", "nat", "KILO-NAT") not in recorder.calls  # no rewrite
        assert parse_save(ns(netns, "iptables-save", "-t", "nat"))["nat"] == change.after
    assert controller.apply(planned) == 0


def test_a_rule_deleted_by_hand_comes_back_at_the_next_full_apply_deviation(netns: str) -> None:
    """Deliberate: between full applies (the resync period) the tables are not read, so a
    rule someone else removed is restored by the next full apply, as Kilo's reconciler
    restores it once a resync period."""
    controller = IPTables(netns=netns, ipv6=False)
    controller.apply(_returns(1, 2))
    ns(netns, "iptables", "-t", "nat", "-D", "POSTROUTING", *JUMP)
    assert controller.apply(_returns(1, 2, 3), full=False) == 1
    assert JUMP_LINE not in ns(netns, "iptables-save", "-t", "nat")
    assert controller.apply(_returns(1, 2, 3)) == 1
    assert JUMP_LINE in ns(netns, "iptables-save", "-t", "nat")


def test_a_kilo_rule_deleted_by_hand_that_the_plan_drops_does_not_fail_the_apply(
    netns: str,
) -> None:
    """The script from the known state deletes a rule that is already gone, and
    iptables-restore fails it: the table is read and the plan applied in the same call."""
    controller = IPTables(netns=netns, ipv6=False)
    controller.apply(_returns(*range(1, 20)))
    gone = _returns(1).prepend[-1]
    ns(netns, "iptables", "-t", "nat", "-D", "KILO-NAT", *gone.spec)
    assert controller.apply(_returns(*range(2, 21)), full=False) == 1
    nat = parse_save(ns(netns, "iptables-save", "-t", "nat"))["nat"]
    assert table_change(_returns(*range(2, 21)), "nat", Protocol.IPV4, nat) is None
    assert controller.apply(_returns(*range(2, 21))) == 0
