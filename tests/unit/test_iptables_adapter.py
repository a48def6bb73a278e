"""The iptables adapter's pure helpers: IPv6 detection and the operation names of a script."""

from __future__ import annotations

from pathlib import Path

import pytest

from kilo.adapters.iptables import IPTables, kernel_has_ipv6, script_operations
from kilo.errors import DataPlaneError
from kilo.mesh.iptables import Protocol, RuleSet


def test_ipv6_enabled_when_the_module_parameter_reads_zero(tmp_path: Path) -> None:
    parameter = tmp_path / "disable"
    parameter.write_text("0\n")
    assert kernel_has_ipv6(disable_parameter=parameter, if_inet6=tmp_path / "missing")
    parameter.write_text("1\n")
    inet6 = tmp_path / "if_inet6"
    inet6.write_text("")
    assert not kernel_has_ipv6(disable_parameter=parameter, if_inet6=inet6)


def test_a_missing_module_parameter_falls_back_to_if_inet6_without_crashing(
    tmp_path: Path,
) -> None:
    # Kilo refuses to start when the parameter cannot be read (pitfall 24).
    missing = tmp_path / "no-such-parameter"
    inet6 = tmp_path / "if_inet6"
    assert not kernel_has_ipv6(disable_parameter=missing, if_inet6=inet6)
    inet6.write_text("")
    assert kernel_has_ipv6(disable_parameter=missing, if_inet6=inet6)
    unreadable = tmp_path / "a-directory"
    unreadable.mkdir()
    assert kernel_has_ipv6(disable_parameter=unreadable, if_inet6=inet6)


def test_script_lines_map_to_kilos_operation_names() -> None:
    script = "\n".join(
        [
            "*nat",
            ":KILO-NAT - [0:0]",
            '-A KILO-NAT -m comment --comment "Kilo: NAT remaining packets" -j MASQUERADE',
            '-I POSTROUTING 1 -s 10.2.0.0/24 -m comment --comment "Kilo: x" -j KILO-NAT',
            '-D POSTROUTING -s 10.3.0.0/24 -m comment --comment "Kilo: x" -j KILO-NAT',
            "-F KILO-OLD",
            "-X KILO-OLD",
            "COMMIT",
            "",
        ]
    )
    assert script_operations(script) == [
        ("ClearChain", "nat", "KILO-NAT"),
        ("AppendUnique", "nat", "KILO-NAT"),
        ("InsertUnique", "nat", "POSTROUTING"),
        ("Delete", "nat", "POSTROUTING"),
        ("ClearChain", "nat", "KILO-OLD"),
        ("DeleteChain", "nat", "KILO-OLD"),
    ]


def test_a_missing_binary_names_the_command_table_and_protocol(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An empty PATH: nothing can run, so the host's tables are never touched.
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DataPlaneError) as caught:
        IPTables(ipv6=False).apply(RuleSet())
    assert str(caught.value) == (
        "iptables-save for table filter (IPv4): iptables-save is not installed"
    )


def test_ipv6_is_not_used_without_ip6tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert IPTables().protocols == (Protocol.IPV4,)
