"""A testbed run's processes and network namespaces on the host: naming, ownership, removal.

Everything a run creates carries its prefix (three letters + 6 hex digits); the tests' runs
(``ktb...``) record their owner process in ``/run/kilo-e2e`` so that :func:`cleanup_stale`
removes what crashed runs left, never a live run's. The small process helpers (commands
with a deadline, process groups, start times) live here too: the testbed, the sandbox and
the kernel VM's host side use them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from kilo.errors import SandboxError

T = TypeVar("T")
FAMILY = "ktb"
KEEP_ENV = "KILO_E2E_KEEP"
# Who owns which run (pid and start time): /run is a tmpfs, like /run/netns.
OWNERS = Path("/run/kilo-e2e")
# The host<->cp link. The host may itself live in 192.0.2.0/24 (this one does), so any /30
# that overlaps a host route or address is skipped.
HOST_LINK_RANGES = (
    ipaddress.IPv4Network("198.51.100.0/24"),
    ipaddress.IPv4Network("192.0.2.0/24"),
)


class TestbedError(SandboxError):
    """The testbed could not be built, used or removed as asked."""

    __test__ = False  # not a pytest test class despite the name


class CommandError(TestbedError):
    def __init__(self, argv: Sequence[str], returncode: int | None, stdout: str, stderr: str):
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        status = "timed out" if returncode is None else f"exited with {returncode}"
        super().__init__(
            f"{' '.join(self.argv)} {status}: {stderr.strip() or stdout.strip() or '(no output)'}"
        )


def wait_for(
    predicate: Callable[[], T],
    *,
    timeout: float,
    message: str,
    interval: float = 0.05,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll until ``predicate()`` is truthy and return it; AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
        except ignoring as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (after {timeout:g} s; last value: {last!r})")
        time.sleep(interval)


def run(
    argv: Sequence[str], *, check: bool = True, timeout: float = 30, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError(argv, None, text(exc.stdout), text(exc.stderr)) from exc
    if check and result.returncode != 0:
        raise CommandError(argv, result.returncode, result.stdout, result.stderr)
    return result


def text(data: str | bytes | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks: with the pid, it names one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def alive(pid: int) -> bool:
    return process_start(pid) is not None


def signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def terminate(process: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM (whole group), then SIGKILL after ``timeout``; the exit code."""
    if process.poll() is None:
        signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            signal_group(process, signal.SIGKILL)
            process.wait()
    # The group may still hold children of an exited leader.
    signal_group(process, signal.SIGKILL)
    return process.returncode


def list_namespaces() -> list[str]:
    out = run(["ip", "-j", "netns", "list"]).stdout.strip()
    return [entry["name"] for entry in json.loads(out)] if out else []


def _kill_namespace_processes(netns: str, timeout: float = 10) -> None:
    result = run(["ip", "netns", "pids", netns], check=False)
    pids = [int(p) for p in result.stdout.split()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: not any(alive(p) for p in pids),
        timeout=timeout,
        message=f"processes {pids} in namespace {netns} survive SIGKILL",
    )


def link_exists(name: str) -> bool:
    return run(["ip", "link", "show", "dev", name], check=False).returncode == 0


def remove_namespaces(namespaces: Iterable[str], host_link: str | None) -> list[str]:
    """Kill what runs in them and delete them; the names still there afterwards."""
    namespaces = list(namespaces)
    existing = set(list_namespaces())
    for netns in namespaces:
        if netns in existing:
            with contextlib.suppress(AssertionError):
                _kill_namespace_processes(netns)
    if host_link and link_exists(host_link):
        run(["ip", "link", "del", "dev", host_link], check=False)
    for netns in namespaces:
        if netns in existing:
            run(["ip", "netns", "del", netns], check=False)
    left = set(list_namespaces())
    return [n for n in namespaces if n in left]


@contextlib.contextmanager
def scratch_namespace(prefix: str, *, loopback: bool = False) -> Iterator[str]:
    """A fresh network namespace, ``<prefix>-<8 hex digits>`` (its loopback up if asked),
    for a test or a benchmark; removed on the way out, also when the body fails, with
    whatever still runs in it killed first (``ip netns del`` alone leaves such processes
    running in a namespace that no longer has a name)."""
    netns = f"{prefix}-{uuid.uuid4().hex[:8]}"
    run(["ip", "netns", "add", netns])
    try:
        if loopback:
            run(["ip", "-n", netns, "link", "set", "lo", "up"])
        yield netns
    finally:
        remove_namespaces([netns], None)


def run_namespaces(prefix: str) -> list[str]:
    """The namespaces of run ``prefix`` (``<prefix>-<role>``)."""
    return [n for n in list_namespaces() if n.startswith(f"{prefix}-")]


def read_owner(run: str) -> dict[str, Any]:
    try:
        data = json.loads((OWNERS / f"{run}.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def owner_alive(owner: Mapping[str, Any]) -> bool:
    pid = owner.get("pid")
    return isinstance(pid, int) and process_start(pid) == owner.get("start")


def cleanup_stale(prefix: str = FAMILY) -> list[str]:
    """Remove what crashed runs left (namespaces named ``<prefix>…``, their processes, the
    host veth, the workdir unless KILO_E2E_KEEP is set); runs whose owner still lives are
    left alone. Returns the runs removed."""
    runs: dict[str, list[str]] = {}
    for netns in list_namespaces():
        if netns.startswith(prefix) and re.fullmatch(rf"{FAMILY}[0-9a-f]{{6}}-.+", netns):
            runs.setdefault(netns.split("-", 1)[0], []).append(netns)
    if OWNERS.is_dir():
        for record in OWNERS.glob(f"{FAMILY}*.json"):
            if record.stem.startswith(prefix):
                runs.setdefault(record.stem, [])
    removed = []
    for run, namespaces in sorted(runs.items()):
        owner = read_owner(run)
        if owner_alive(owner):
            continue
        remove_namespaces(namespaces, f"{run}h")
        workdir = owner.get("workdir")
        if isinstance(workdir, str) and not os.environ.get(KEEP_ENV):
            shutil.rmtree(workdir, ignore_errors=True)
        with contextlib.suppress(OSError):
            (OWNERS / f"{run}.json").unlink()
        removed.append(run)
    return removed


def host_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the host namespace routes or has an address in (not default)."""
    networks = []
    for route in json.loads(run(["ip", "-4", "-j", "route", "show", "table", "all"]).stdout):
        dst = route.get("dst", "default")
        if dst != "default":
            with contextlib.suppress(ValueError):
                networks.append(ipaddress.IPv4Network(dst, strict=False))
    for link in json.loads(run(["ip", "-4", "-j", "addr"]).stdout):
        for addr in link.get("addr_info", []):
            networks.append(
                ipaddress.IPv4Network(f"{addr['local']}/{addr['prefixlen']}", strict=False)
            )
    return networks


def free_host_link_subnet() -> ipaddress.IPv4Network:
    used = host_networks()
    for block in HOST_LINK_RANGES:
        for subnet in block.subnets(new_prefix=30):
            if not any(subnet.overlaps(n) for n in used):
                return subnet
    raise TestbedError(
        "no free /30 for the host<->cp link in "
        + ", ".join(str(b) for b in HOST_LINK_RANGES)
        + " (every one overlaps a host route or address)"
    )
