"""Bring a table's rules to the planned rule set with one ``iptables-restore --noflush`` call.

Pure. Input: the planned :class:`~kilo.mesh.iptables.RuleSet` and the table as
``iptables-save -t TABLE`` prints it; output: the restore script (or ``None`` when the table
is already right). Kilo instead runs one ``iptables`` process per rule and matches rules
by their text, which never matches what iptables prints for some of its own rules (the
FORWARD rules, CIDRs with host bits), so they are re-inserted on every resync. Here rules
are compared in iptables' canonical form, so a correct table needs no change at all.

* Chains Kilo owns (``KILO-*``) hold the planned prepended rules, in any order, above the
  appended ones, in theirs. A few rules missing or no longer planned are inserted at the
  top or deleted; otherwise the chain is rewritten whole: declaring a chain in a
  ``--noflush`` script creates or flushes it, atomically with its new rules.
* In built-in chains (INPUT, FORWARD, POSTROUTING) only rules carrying a ``Kilo:`` comment
  are Kilo's: missing "prepend" rules are inserted at the top, missing "append" rules are
  appended (all of them again, in order, when their order is wrong), and Kilo rules no
  longer planned are deleted. Everybody else's rules are left alone.
* Kilo chains that are no longer planned are flushed and deleted, after the rules that
  jump to them.
"""

from __future__ import annotations

import functools
import itertools
import operator
import re
import shlex
from collections import Counter
from collections.abc import Sequence
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
                    value = ipmod.text(network)
                else:
                    address = ipmod.parse_ip(value)
                    if address is not None:
                        value = ipmod.text(ipmod.host_network(address))
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
    words: dict[str, str] = {}
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
            # One string per word: a table read is kept until the next full apply, and a
            # leader's 11 000 rules at 5000 nodes repeat a few dozen words ("-m",
            # "comment", each rule kind's comment) besides their addresses: 5 MiB of
            # copies otherwise.
            tokens = [words.setdefault(word, word) for word in split_line(line)]
            current.rules.setdefault(tokens[1], []).append(tuple(tokens[2:]))
    return tables


def _is_kilo_rule(spec: Sequence[str]) -> bool:
    for i, token in enumerate(spec[:-1]):
        if token == "--comment" and spec[i + 1].startswith(KILO_COMMENT_PREFIX):
            return True
    return False


@dataclass(frozen=True, slots=True)
class TableChange:
    """A restore script for one table and the table it leaves, as iptables executes it."""

    script: str
    after: TableState


class _Editor:
    """Lines of a restore script, and the table state they leave (copy on write: the
    state handed in is never changed, and chains not written keep their lists)."""

    def __init__(self, current: TableState) -> None:
        self.lines: list[str] = []
        self.chains = current.chains
        self.rules = current.rules
        self._copied_chains = False
        self._copied: set[str] = set()

    def _own_rules(self, chain: str) -> list[tuple[str, ...]]:
        if chain not in self._copied:
            self.rules = dict(self.rules)
            self.rules[chain] = list(self.rules.get(chain, []))
            self._copied.add(chain)
        return self.rules[chain]

    def _own_chains(self) -> list[str]:
        if not self._copied_chains:
            self.chains = list(self.chains)
            self._copied_chains = True
        return self.chains

    def declare(self, chain: str, specs: list[tuple[str, ...]]) -> None:
        """``:CHAIN`` (create or flush) and ``-A`` every spec."""
        self.lines.append(f":{chain} - [0:0]")
        self.lines.extend(f"-A {chain} {render_spec(spec)}" for spec in specs)
        if chain not in self.chains:
            self._own_chains().append(chain)
        self.rules = dict(self.rules)
        self.rules[chain] = list(specs)
        self._copied.add(chain)

    def delete(self, chain: str, spec: tuple[str, ...]) -> None:
        """``-D CHAIN spec``: iptables deletes the first rule that matches."""
        self.lines.append(f"-D {chain} {render_spec(spec)}")
        rules = self._own_rules(chain)
        if spec in rules:
            rules.remove(spec)

    def insert(self, chain: str, position: int, spec: tuple[str, ...]) -> None:
        """``-I CHAIN position spec`` (1-based)."""
        self.lines.append(f"-I {chain} {position} {render_spec(spec)}")
        self._own_rules(chain).insert(position - 1, spec)

    def append(self, chain: str, spec: tuple[str, ...]) -> None:
        self.lines.append(f"-A {chain} {render_spec(spec)}")
        self._own_rules(chain).append(spec)

    def remove_chain(self, chain: str) -> None:
        """``-F`` and ``-X``."""
        self.lines.append(f"-F {chain}")
        self.lines.append(f"-X {chain}")
        self._own_chains().remove(chain)
        self.rules = {k: v for k, v in self.rules.items() if k != chain}


def _chain_edits(
    present: list[tuple[str, ...]], top: list[tuple[str, ...]], bottom: list[tuple[str, ...]]
) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]] | None:
    """The rules to delete from a Kilo chain holding ``present`` (``-D`` by spec) and to
    insert at its top (``-I CHAIN 1``, in this order) so that it holds the prepended rules
    ``top`` in any order above the appended rules ``bottom`` in theirs; ``None`` when
    rewriting the chain is shorter, or the appended rules are not the chain's last.

    Why not rewrite: a large mesh's KILO-NAT holds a rule per known IP (11 000 at 5000
    nodes); a node that joins adds two, and redeclaring the chain for them made
    iptables-restore replace all 11 000 (0.2 s of CPU). Why at the top, in any order: with
    iptables-nft an insert at position 1 costs what an empty script does, while one at
    another position, like any deletion, makes iptables-restore fetch the whole chain (85
    ms of CPU at 5000 nodes); and the prepended rules of Kilo's chains are all RETURNs
    (KILO-NAT) or all ACCEPTs (KILO-IPIP), whose order decides nothing. Kilo puts a new
    prepended rule at the top the same way and never reorders them."""
    head = len(present) - len(bottom)
    if head < 0 or present[head:] != bottom:
        return None
    limit = len(top) + len(bottom)
    held_set, planned_set = set(present[:head]), set(top)
    if len(held_set) == head and len(planned_set) == len(top):
        # No rule twice (the usual case): set arithmetic, in C; lists only for what moves.
        gone, new = held_set - planned_set, planned_set - held_set
        if 2 * (len(gone) + len(new)) >= limit:
            return None
        removed = [spec for spec in present if spec in gone] if gone else []
        # Kilo's order for the new ones: each inserted at the top, in the plan's order.
        return removed, [spec for spec in reversed(top) if spec in new] if new else []
    held, planned = Counter(present[:head]), Counter(top)
    removed = list((held - planned).elements())
    added = planned - held
    if 2 * (len(removed) + added.total()) >= limit:
        return None
    inserted: list[tuple[str, ...]] = []
    for spec in reversed(top):
        if added[spec] > 0:
            added[spec] -= 1
            inserted.append(spec)
    return removed, inserted


def table_change(
    planned: RuleSet, table: str, protocol: Protocol, current: TableState
) -> TableChange | None:
    """The ``iptables-restore --noflush`` script for ``table`` and the table it leaves;
    ``None`` if nothing changes.

    The table left is ``current`` with the script's lines done as iptables does them, so
    an agent can compute its next script against it without reading the table again (the
    state it holds is iptables-save's canonical form, as :func:`parse_save` reads it)."""
    part = _partition(planned).get((protocol, table), _EMPTY_PART)
    owned = part.owned
    edit = _Editor(current)
    # Kilo's own chains: brought to their content when it differs, by a few deletions and
    # insertions at their places when that is shorter, else declared (created or
    # flushed) and refilled.
    for chain in owned:
        # As Kilo leaves it: prepended rules on top (last inserted first), then appended ones.
        top = part.prepended.get(chain, [])[::-1]
        bottom = part.appended.get(chain, [])
        if chain in current.chains:
            present = current.rules.get(chain, [])
            if present == top + bottom:
                continue
            edits = _chain_edits(present, top, bottom)
            if edits is not None:
                removed, inserted = edits
                for spec in removed:
                    edit.delete(chain, spec)
                for spec in inserted:
                    edit.insert(chain, 1, spec)
                continue
        edit.declare(chain, top + bottom)

    # Built-in chains: only Kilo's commented rules are ours.
    builtin = {c for c in (*part.prepended, *part.appended) if c not in owned}
    for chain in sorted(
        builtin | {c for c in current.rules if not c.startswith(KILO_CHAIN_PREFIX)}
    ):
        present = [s for s in current.rules.get(chain, []) if _is_kilo_rule(s)]
        top = part.prepended.get(chain, [])
        bottom = part.appended.get(chain, [])
        wanted_set = set(top) | set(bottom)
        for spec in present:
            if spec not in wanted_set:
                edit.delete(chain, spec)
        for spec in top:
            if spec not in present:
                edit.insert(chain, 1, spec)
        present_bottom = [s for s in present if s in set(bottom)]
        if present_bottom != bottom:
            # Append rules must keep their order (a jump before the DROP): redo them all.
            for spec in present_bottom:
                edit.delete(chain, spec)
            for spec in bottom:
                edit.append(chain, spec)

    # Kilo chains no longer planned: emptied and removed, after what jumps to them is gone.
    for chain in current.chains:
        if chain.startswith(KILO_CHAIN_PREFIX) and chain not in owned:
            edit.remove_chain(chain)

    if not edit.lines:
        return None
    script = "\n".join([f"*{table}", *edit.lines, "COMMIT", ""])
    return TableChange(script, TableState(chains=edit.chains, rules=edit.rules))


def restore_script(
    planned: RuleSet, table: str, protocol: Protocol, current: TableState
) -> str | None:
    """The ``iptables-restore --noflush`` script for ``table``; ``None`` if nothing changes."""
    change = table_change(planned, table, protocol, current)
    return None if change is None else change.script


@dataclass(frozen=True, slots=True)
class _Part:
    """A plan's entries of one protocol and table: Kilo's chains (in order, once each)
    and the canonical specs of the appended and prepended rules by chain, in plan order."""

    owned: list[str]
    appended: dict[str, list[tuple[str, ...]]]
    prepended: dict[str, list[tuple[str, ...]]]


_EMPTY_PART = _Part([], {}, {})
_WHERE = operator.attrgetter("protocol", "table", "chain")
_SPEC = operator.attrgetter("spec")


class _PartitionMemo:
    """The last plan's partition (:func:`_partition`): an apply asks for it per table,
    and a leader's plan holds 11 000 rules at 5000 nodes. Only the last plan is kept."""

    def __init__(self) -> None:
        self.last: tuple[RuleSet, dict[tuple[Protocol, str], _Part]] | None = None


_PARTITIONS = _PartitionMemo()


def _partition(planned: RuleSet) -> dict[tuple[Protocol, str], _Part]:
    """``planned`` by protocol and table, in one pass: its rules come in runs of one chain
    (a segment's KILO-NAT RETURNs), each run's specs put in canonical form in C."""
    last = _PARTITIONS.last
    if last is not None and last[0] is planned:
        return last[1]
    parts: dict[tuple[Protocol, str], _Part] = {}

    def part(protocol: Protocol, table: str) -> _Part:
        found = parts.get((protocol, table))
        if found is None:
            found = parts[(protocol, table)] = _Part([], {}, {})
        return found

    for entry in planned.append:
        if isinstance(entry, Chain):
            owned = part(entry.protocol, entry.table).owned
            if entry.name not in owned:
                owned.append(entry.name)
    appended = [entry for entry in planned.append if isinstance(entry, Rule)]
    for target, rules in ((True, appended), (False, planned.prepend)):
        for (protocol, table, chain), run in itertools.groupby(rules, _WHERE):
            by_chain = part(protocol, table).appended if target else part(protocol, table).prepended
            by_chain.setdefault(chain, []).extend(map(_canonical, map(_SPEC, run)))
    _PARTITIONS.last = (planned, parts)
    return parts


def tables_of(planned: RuleSet, protocol: Protocol) -> list[str]:
    return sorted(table for p, table in _partition(planned) if p == protocol)
