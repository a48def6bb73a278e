"""The iptables adapter's pure helpers: IPv6 detection and the operation names of a script."""

from __future__ import annotations

from pathlib import Path

import pytest

from kilo.adapters import iptables as iptables_adapter
from kilo.adapters.iptables import IPTables, kernel_has_ipv6, script_operations
from kilo.errors import DataPlaneError
from kilo.mesh.iptables import Chain, Protocol, Rule, RuleSet


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


def _fake_iptables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """iptables-save printing the file ``table`` and iptables-restore logging its scripts,
    alone on PATH: the host's tables are never touched."""
    table, scripts = tmp_path / "table", tmp_path / "scripts"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (
        ("iptables-save", f'cat "{table}"'),
        ("iptables-restore", f'cat >> "{scripts}"'),
    ):
        tool = bin_dir / name
        tool.write_text(f"#!/bin/sh\n{body}\n")
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return table, scripts


def test_a_table_read_unchanged_is_not_parsed_again_and_a_changed_one_is_repaired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table, scripts = _fake_iptables(tmp_path, monkeypatch)
    rule = Rule(
        protocol=Protocol.IPV4,
        table="nat",
        chain="KILO-NAT",
        spec=("-d", "10.4.0.0/16", "-j", "RETURN"),
    )
    planned = RuleSet(append=(Chain(protocol=Protocol.IPV4, table="nat", name="KILO-NAT"), rule))
    empty = "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"
    right = empty.replace(
        "COMMIT\n*nat\n:POSTROUTING ACCEPT [0:0]\n",
        "COMMIT\n*nat\n:POSTROUTING ACCEPT [0:0]\n:KILO-NAT - [0:0]\n"
        "-A KILO-NAT -d 10.4.0.0/16 -j RETURN\n",
    )
    parsed: list[str] = []
    real_parse = iptables_adapter.parse_save
    monkeypatch.setattr(
        iptables_adapter, "parse_save", lambda text: parsed.append(text) or real_parse(text)
    )
    controller = IPTables(ipv6=False)
    table.write_text(empty)
    assert controller.apply(planned) == 1
    assert "-A KILO-NAT -d 10.4.0.0/16 -j RETURN" in scripts.read_text()
    table.write_text(right)
    assert controller.apply(planned) == 0
    reads = len(parsed)
    assert controller.apply(planned) == 0  # the same output, the same plan
    assert controller.apply(RuleSet(append=planned.append)) == 0  # an equal plan
    assert len(parsed) == reads
    # Someone else flushed the chain: the table is read, parsed and repaired.
    scripts.write_text("")
    table.write_text(
        empty.replace(
            ":POSTROUTING ACCEPT [0:0]\n", ":POSTROUTING ACCEPT [0:0]\n:KILO-NAT - [0:0]\n"
        )
    )
    assert controller.apply(planned) == 1
    assert len(parsed) > reads
    assert "-A KILO-NAT -d 10.4.0.0/16 -j RETURN" in scripts.read_text()
    # A different plan for the same output is not taken for the settled one.
    table.write_text(right)
    assert controller.apply(planned) == 0
    assert controller.apply(RuleSet()) == 1
