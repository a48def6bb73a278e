"""Bring a table's rules to the planned rule set with one ``iptables-restore --noflush`` call.

Pure. Input: the planned :class:`~kilo.mesh.iptables.RuleSet` and the table as
``iptables-save -t TABLE`` prints it; output: the restore script (or ``None`` when the table
is already right). Kilo instead runs one ``iptables`` process per rule and matches rules
by their text, which never matches what iptables prints for some of its own rules (the
FORWARD rules, CIDRs with host bits), so they are re-inserted on every resync. Here rules
are compared in iptables' canonical form, so a correct table needs no change at all.

* Chains Kilo owns (``KILO-*``) are rewritten whole when their content differs: declaring a
  chain in a ``--noflush`` script creates or flushes it, atomically with its new rules.
* In built-in chains (INPUT, FORWARD, POSTROUTING) only rules carrying a ``Kilo:`` comment
  are Kilo's: missing "prepend" rules are inserted at the top, missing "append" rules are
  appended (all of them again, in order, when their order is wrong), and Kilo rules no
  longer planned are deleted. Everybody else's rules are left alone.
* Kilo chains that are no longer planned are flushed and deleted, after the rules that
  jump to them.
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from kilo.mesh import ip as ipmod
from kilo.mesh.iptables import Chain, Protocol, Rule, RuleSet

KILO_CHAIN_PREFIX = "KILO-"
KILO_COMMENT_PREFIX = "Kilo:"
# iptables prints these options first, in this order, before any "-m" match.
_BASE_OPTIONS = ("-s", "-d", "-i", "-o", "-p")
_ADDRESS_OPTIONS = ("-s", "-d")


def canonical_spec(spec: Sequence[str]) -> tuple[str, ...]:
    """A rule's arguments as ``iptables-save`` prints them (base options first, CIDRs masked)."""
    base: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(spec):
        token = spec[i]
        if token in _BASE_OPTIONS and i + 1 < len(spec):
            value = spec[i + 1]
            if token in _ADDRESS_OPTIONS:
                network = ipmod.parse_network(value) if "/" in value else None
                if network is not None:
                    value = str(network)
                else:
                    address = ipmod.parse_ip(value)
                    if address is not None:
                        value = str(ipmod.host_network(address))
            base[token] = value
            i += 2
            continue
        rest.append(token)
        i += 1
    ordered = [
        part for option in _BASE_OPTIONS if option in base for part in (option, base[option])
    ]
    return (*ordered, *rest)


# The planned rules' specs are tuples that come back on every apply (thousands on a
# leader): their canonical forms are computed once.
_canonical = functools.lru_cache(maxsize=1 << 15)(canonical_spec)


def render_spec(spec: Sequence[str]) -> str:
    """Arguments as one restore-script line: quoted the way iptables-save quotes them."""
    return " ".join(f'"{token}"' if (" " in token or not token) else token for token in spec)


@dataclass(slots=True)
class TableState:
    """One table of ``iptables-save`` output: chains and their rules, in order."""

    chains: list[str] = field(default_factory=list)
    rules: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)


# A word of a line without backslashes or single quotes, as shlex (POSIX) reads it:
# characters other than its whitespace, and double-quoted runs (quotes dropped after).
_WORD = re.compile(r'(?:[^ \t\r\n"]+|"[^"]*")+')


def split_line(line: str) -> list[str]:
    """``shlex.split(line)``, fast for what iptables-save prints: a leader's table holds
    thousands of rules, and shlex reads a character at a time in Python. Lines with a
    backslash, a single quote or an unmatched double quote go to shlex itself (the
    same words, or its ValueError)."""
    if "\\" in line or "'" in line or line.count('"') % 2:
        return shlex.split(line)
    return [word.replace('"', "") for word in _WORD.findall(line)]


def parse_save(text: str) -> dict[str, TableState]:
    """Parse ``iptables-save`` output into tables."""
    tables: dict[str, TableState] = {}
    current: TableState | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:], TableState())
        elif current is None or line == "COMMIT":
            continue
        elif line.startswith(":"):
            name = line[1:].split()[0]
            current.chains.append(name)
            current.rules.setdefault(name, [])
        elif line.startswith("-A "):
            tokens = split_line(line)
            current.rules.setdefault(tokens[1], []).append(tuple(tokens[2:]))
    return tables


def _is_kilo_rule(spec: Sequence[str]) -> bool:
    for i, token in enumerate(spec[:-1]):
        if token == "--comment" and spec[i + 1].startswith(KILO_COMMENT_PREFIX):
            return True
    return False


def restore_script(
    planned: RuleSet, table: str, protocol: Protocol, current: TableState
) -> str | None:
    """The ``iptables-restore --noflush`` script for ``table``; ``None`` if nothing changes."""
    owned = [e.name for e in planned.append if isinstance(e, Chain) and _mine(e, table, protocol)]
    owned = list(dict.fromkeys(owned))
    appended = [r for r in planned.append if isinstance(r, Rule) and _mine(r, table, protocol)]
    prepended = [r for r in planned.prepend if _mine(r, table, protocol)]

    lines: list[str] = []
    # Kilo's own chains: declared (created or flushed) and refilled when their content differs.
    for chain in owned:
        # As Kilo leaves it: prepended rules on top (last inserted first), then appended ones.
        wanted = [_canonical(r.spec) for r in reversed(prepended) if r.chain == chain] + [
            _canonical(r.spec) for r in appended if r.chain == chain
        ]
        if chain in current.chains and current.rules.get(chain, []) == wanted:
            continue
        lines.append(f":{chain} - [0:0]")
        lines.extend(f"-A {chain} {render_spec(spec)}" for spec in wanted)

    # Built-in chains: only Kilo's commented rules are ours.
    builtin = sorted({r.chain for r in appended + prepended if r.chain not in owned})
    for chain in sorted(
        set(builtin) | {c for c in current.rules if not c.startswith(KILO_CHAIN_PREFIX)}
    ):
        present = [s for s in current.rules.get(chain, []) if _is_kilo_rule(s)]
        top = [_canonical(r.spec) for r in prepended if r.chain == chain]
        bottom = [_canonical(r.spec) for r in appended if r.chain == chain]
        wanted_set = set(top) | set(bottom)
        for spec in present:
            if spec not in wanted_set:
                lines.append(f"-D {chain} {render_spec(spec)}")
        for spec in top:
            if spec not in present:
                lines.append(f"-I {chain} 1 {render_spec(spec)}")
        present_bottom = [s for s in present if s in set(bottom)]
        if present_bottom != bottom:
            # Append rules must keep their order (a jump before the DROP): redo them all.
            lines.extend(f"-D {chain} {render_spec(spec)}" for spec in present_bottom)
            lines.extend(f"-A {chain} {render_spec(spec)}" for spec in bottom)

    # Kilo chains no longer planned: emptied and removed, after what jumps to them is gone.
    for chain in current.chains:
        if chain.startswith(KILO_CHAIN_PREFIX) and chain not in owned:
            lines.append(f"-F {chain}")
            lines.append(f"-X {chain}")

    if not lines:
        return None
    return "\n".join([f"*{table}", *lines, "COMMIT", ""])


def _mine(entry: Chain | Rule, table: str, protocol: Protocol) -> bool:
    return entry.table == table and entry.protocol == protocol


def tables_of(planned: RuleSet, protocol: Protocol) -> list[str]:
    names: Iterable[str] = (
        e.table for e in (*planned.append, *planned.prepend) if e.protocol == protocol
    )
    return sorted(set(names))
