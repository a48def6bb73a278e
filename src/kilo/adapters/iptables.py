"""Applies planned iptables rules with ``iptables-save`` and ``iptables-restore --noflush``.

The shell around :mod:`kilo.mesh.iptables_restore`: per protocol and table it reads the
table (``iptables-save -t TABLE``), lets the pure core compute the restore script, and
runs it (``iptables-restore --wait=N --noflush``, script on stdin). A table already in
the planned state costs one ``iptables-save`` and nothing else. Kilo instead runs one
``iptables`` process per rule and per check.

Full and incremental applies: ``apply(planned, full=True)`` reads every table (start-up,
every resync, clean-up). ``full=False`` (the agent's applies between resyncs) reads only
the tables whose state this controller does not know, and computes the script of the
others against the state its own last successful write or read left
(:func:`~kilo.mesh.iptables_restore.table_change`): at 5000 nodes each ``iptables-save``
lists the whole ruleset (11 000 rules, some 0.1 s of CPU each) and parsing it took 40 ms
more, on the way from an annotation change to the WireGuard write. So a rule someone else
removed comes back at the next full apply (Kilo's own reconciler checks its rules once
a resync period, too). A script computed from the known state that fails (say, it
deletes a Kilo rule someone else already deleted) is computed again from a read of the
table and run once more, in the same apply; any failure that remains forgets every known
state: the next apply reads.

Which tables are read: every table the plan uses, plus ``filter`` and ``nat``, the only
tables Kilo ever writes, so that rules and ``KILO-*`` chains a previous plan left there are
removed. Each table is read by a process of its own (not with a bare ``iptables-save``) so
that a table another tool made incompatible with ``iptables-nft`` cannot stop Kilo's own
tables from being reconciled; the reads run side by side, then the tables are changed one
at a time, in order.

IPv6: with ``ipv6=None`` the IPv6 client is used when ``ip6tables-save`` and
``ip6tables-restore`` are installed and the kernel has IPv6 (``/sys/module/ipv6/
parameters/disable`` reads 0; when that file cannot be read, ``/proc/net/if_inet6``
exists). Kilo fails to start when the file cannot be read; here a missing file only
falls back to the second test. Without IPv6, IPv6 rules in the plan are ignored, as
Kilo's no-op IPv6 client ignores them.

Metrics: ``on_operation(protocol, operation, table, chain)`` is called once per operation,
before the process that performs it runs (Kilo's wrapper also counts attempts). Kilo's
operation names are mapped as follows:

* reading a table (``iptables-save -t T``): ``List`` with chain ``*``;
* declaring a Kilo chain (``:KILO-NAT - [0:0]``, which creates or flushes it) and
  flushing one before removal (``-F``): ``ClearChain``;
* removing a chain (``-X``): ``DeleteChain``;
* ``-A`` (append): ``AppendUnique``; ``-I CHAIN 1`` (insert at the top):
  ``InsertUnique``; ``-D``: ``Delete``.

Errors (a non-zero exit status, a missing binary, a timeout) raise
:class:`~kilo.errors.DataPlaneError` naming the table, the protocol and the first line of
the command's stderr.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kilo.errors import DataPlaneError
from kilo.mesh.iptables import FILTER_TABLE, NAT_TABLE, Protocol, RuleSet
from kilo.mesh.iptables_restore import (
    KILO_CHAIN_PREFIX,
    KILO_COMMENT_PREFIX,
    TableState,
    parse_save,
    table_change,
    tables_of,
)

OperationCallback = Callable[[str, str, str, str], None]

# The tables Kilo's rule sets ever use; read on every apply so that leftovers are removed.
KILO_TABLES = (FILTER_TABLE, NAT_TABLE)
# Seconds iptables-restore waits for the xtables lock; the process gets a little longer.
LOCK_WAIT_SECONDS = 10
COMMAND_TIMEOUT_SECONDS = 30.0

IPV6_DISABLE_PARAMETER = Path("/sys/module/ipv6/parameters/disable")
IF_INET6 = Path("/proc/net/if_inet6")

_COMMANDS = {
    Protocol.IPV4: ("iptables-save", "iptables-restore"),
    Protocol.IPV6: ("ip6tables-save", "ip6tables-restore"),
}
_SCRIPT_OPERATIONS = {
    "-A": "AppendUnique",
    "-I": "InsertUnique",
    "-D": "Delete",
    "-F": "ClearChain",
    "-X": "DeleteChain",
}


def kernel_has_ipv6(
    *, disable_parameter: Path = IPV6_DISABLE_PARAMETER, if_inet6: Path = IF_INET6
) -> bool:
    """Whether IPv6 is enabled: the ``disable`` module parameter reads 0, else ``if_inet6`` exists.

    Never raises: an unreadable parameter (IPv6 built into the kernel, or a restricted
    ``/sys``) falls back to ``/proc/net/if_inet6``, which exists only with IPv6.
    """
    try:
        return disable_parameter.read_text(encoding="ascii").strip() == "0"
    except (OSError, UnicodeDecodeError):
        return if_inet6.exists()


def detect_ipv6() -> bool:
    """Whether the IPv6 client can be used: ``ip6tables-save``/``-restore`` and kernel IPv6."""
    tools = all(shutil.which(name) is not None for name in _COMMANDS[Protocol.IPV6])
    return tools and kernel_has_ipv6()


def script_operations(script: str) -> list[tuple[str, str, str]]:
    """``(operation, table, chain)`` for every change in a restore script, in order."""
    operations: list[tuple[str, str, str]] = []
    table = ""
    for line in script.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":"):
            operations.append(("ClearChain", table, line[1:].split()[0]))
        else:
            parts = line.split(maxsplit=2)
            if len(parts) >= 2 and parts[0] in _SCRIPT_OPERATIONS:
                operations.append((_SCRIPT_OPERATIONS[parts[0]], table, parts[1]))
    return operations


def _holds_kilo_state(state: TableState) -> bool:
    if any(chain.startswith(KILO_CHAIN_PREFIX) for chain in state.chains):
        return True
    return any(
        spec[i] == "--comment" and spec[i + 1].startswith(KILO_COMMENT_PREFIX)
        for rules in state.rules.values()
        for spec in rules
        for i in range(len(spec) - 1)
    )


def _rules_of(output: str) -> str:
    """What :func:`parse_save` reads of ``iptables-save`` output: without its comments
    (they carry the time) and the built-in chains' packet counters (traffic moves them)."""
    return "\n".join(
        line.rsplit(" ", 1)[0] if line.startswith(":") else line
        for line in output.split("\n")
        if not line.startswith("#")
    )


class IPTables:
    """Kilo's iptables controller: brings the Kilo rules of every table to a plan."""

    def __init__(
        self,
        *,
        netns: str | None = None,
        ipv6: bool | None = None,
        on_operation: OperationCallback | None = None,
    ) -> None:
        self._prefix: tuple[str, ...] = ("ip", "netns", "exec", netns) if netns else ()
        self._protocols = (
            (Protocol.IPV4, Protocol.IPV6)
            if (detect_ipv6() if ipv6 is None else ipv6)
            else (Protocol.IPV4,)
        )
        self._on_operation = on_operation
        # The agent applies from its resync loop and cleans up on shutdown; never both at once.
        self._lock = threading.Lock()
        # Per protocol and table: the iptables-save output, the plan it was last found to
        # need no change for, and the table it parsed to. The script is a function of the
        # first two, so the same pair again needs no parse (thousands of rules on a
        # leader) and no script; a full apply still reads the table, which is what finds
        # rules someone else removed.
        self._settled: dict[tuple[Protocol, str], tuple[str, RuleSet, TableState]] = {}
        # Per protocol and table: the table as this controller's last successful read or
        # write left it, for incremental applies. Emptied by a failure.
        self._known: dict[tuple[Protocol, str], TableState] = {}

    @property
    def protocols(self) -> tuple[Protocol, ...]:
        """The protocols this controller programs (IPv6 only when enabled)."""
        return self._protocols

    def apply(self, planned: RuleSet, *, full: bool = True) -> int:
        """Bring every table to ``planned``; return how many tables had to change.

        ``full``: read every table first; otherwise only the tables whose state is not
        known from this controller's last successful read or write."""
        with self._lock:
            if full:
                self._known.clear()
            try:
                return self._apply(planned)
            except DataPlaneError:
                self._known.clear()  # a failed restore may have changed anything, or nothing
                raise

    def _apply(self, planned: RuleSet) -> int:
        changed = 0
        for protocol in self._protocols:
            in_plan = tables_of(planned, protocol)
            tables = sorted({*in_plan, *KILO_TABLES})
            unknown = [table for table in tables if (protocol, table) not in self._known]
            outputs = dict(zip(unknown, self._save(protocol, unknown), strict=True))
            for table in tables:
                key = (protocol, table)
                output = outputs.get(table)
                if isinstance(output, DataPlaneError):
                    raise output
                if output is not None:
                    changed += self._apply_read(planned, key, in_plan, output)
                    continue
                try:
                    changed += self._apply_state(planned, key, in_plan, self._known[key], None)
                except DataPlaneError:
                    # Computed against the known state, which someone else may have made
                    # wrong (a Kilo rule to delete that was deleted by hand makes the
                    # whole script fail): read the table and try once more.
                    (output,) = self._save(protocol, [table])
                    if isinstance(output, DataPlaneError):
                        raise output from None
                    changed += self._apply_read(planned, key, in_plan, output)
        return changed

    def _apply_read(
        self, planned: RuleSet, key: tuple[Protocol, str], in_plan: list[str], output: str
    ) -> int:
        """Bring the table ``output`` lists to ``planned``; 1 if it had to change."""
        held = _rules_of(output)
        settled = self._settled.pop(key, None)
        if (
            settled is not None
            and settled[0] == held
            and (settled[1] is planned or settled[1] == planned)
        ):
            # The output last found to need no change, for an equal plan.
            self._settled[key] = (held, planned, settled[2])
            self._known[key] = settled[2]
            return 0
        current = parse_save(output).get(key[1], TableState())
        self._known[key] = current
        return self._apply_state(planned, key, in_plan, current, held)

    def _apply_state(
        self,
        planned: RuleSet,
        key: tuple[Protocol, str],
        in_plan: list[str],
        current: TableState,
        held: str | None,
    ) -> int:
        """Bring the table, known to be ``current`` (read as ``held``, or known from the
        last write), to ``planned``; 1 if it had to change."""
        protocol, table = key
        change = (
            table_change(planned, table, protocol, current)
            if table in in_plan or _holds_kilo_state(current)
            else None
        )
        if change is None:
            if held is not None:
                self._settled[key] = (held, planned, current)
            return 0
        for operation, op_table, chain in script_operations(change.script):
            self._count(protocol, operation, op_table, chain)
        del self._known[key]  # until the restore succeeds
        self._run(
            protocol,
            table,
            [_COMMANDS[protocol][1], f"--wait={LOCK_WAIT_SECONDS}", "--noflush"],
            stdin=change.script,
        )
        self._known[key] = change.after
        return 1

    def _save(self, protocol: Protocol, tables: Sequence[str]) -> list[str | DataPlaneError]:
        """Every table's ``iptables-save -t TABLE`` output (or its failure), the processes
        run side by side: with iptables-nft each one lists the whole ruleset, thousands
        of rules on a leader (about 0.4 s each at 5000 nodes), and a table's changes never
        touch another's."""
        if not tables:
            return []
        save = _COMMANDS[protocol][0]
        for table in tables:
            self._count(protocol, "List", table, "*")
        with ThreadPoolExecutor(
            max_workers=len(tables), thread_name_prefix="kilo-iptables"
        ) as pool:
            reads = [
                pool.submit(self._run, protocol, table, [save, "-t", table]) for table in tables
            ]
        outputs: list[str | DataPlaneError] = []
        for read in reads:
            try:
                outputs.append(read.result())
            except DataPlaneError as exc:
                outputs.append(exc)
        return outputs

    def clean_up(self) -> None:
        """Remove every Kilo rule (comment ``Kilo:``) and every ``KILO-*`` chain, nothing else."""
        self.apply(RuleSet(), full=True)

    def _count(self, protocol: Protocol, operation: str, table: str, chain: str) -> None:
        if self._on_operation is not None:
            self._on_operation(str(protocol), operation, table, chain)

    def _run(
        self, protocol: Protocol, table: str, argv: Sequence[str], *, stdin: str | None = None
    ) -> str:
        command = argv[0]
        try:
            result = subprocess.run(
                [*self._prefix, *argv],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_SECONDS,
                check=False,
            )
        except FileNotFoundError as exc:
            raise DataPlaneError(
                f"{command} for table {table} ({protocol}): {exc.filename or command} "
                "is not installed"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise DataPlaneError(
                f"{command} for table {table} ({protocol}): "
                f"no answer within {COMMAND_TIMEOUT_SECONDS:g} s"
            ) from exc
        except OSError as exc:
            raise DataPlaneError(
                f"{command} for table {table} ({protocol}): {exc.strerror or exc}"
            ) from exc
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines()
            reason = lines[0] if lines else f"exit status {result.returncode}"
            raise DataPlaneError(f"{command} failed for table {table} ({protocol}): {reason}")
        return result.stdout


__all__ = [
    "COMMAND_TIMEOUT_SECONDS",
    "KILO_TABLES",
    "LOCK_WAIT_SECONDS",
    "IPTables",
    "OperationCallback",
    "detect_ipv6",
    "kernel_has_ipv6",
    "script_operations",
]
