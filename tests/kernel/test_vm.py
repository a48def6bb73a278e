"""The host's half of the kernel suite: one virtual machine runs every test of ``guest/``.

The session fixture fetches the kernel (cached), starts etcd and kube-apiserver in a
namespace of the host with the VM's tap, boots the VM under emulation and runs pytest on
``tests/kernel/guest`` in it (JUnit XML into the directory shared with the host). Each guest
test (found in the guest modules' source, so that a test that never ran is noticed) is one
test here: it passes only when it passed in the guest; failed, erred, skipped or missing is
a failure with the guest's report. When the VM cannot start or dies, every test fails with
QEMU's, the console's and the guest's output.
"""

from __future__ import annotations

import ast
import contextlib
import os
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kilo.sandbox import guest, testbed, vm

ROOT = Path(__file__).resolve().parents[2]
GUEST = Path(__file__).resolve().parent / "guest"
# The guest's whole run (boot, testbed, agents, every test) must end within this.
GUEST_BUDGET = 1800
# pytest-timeout covers the session fixture's set-up in the first test.
HOST_TIMEOUT = GUEST_BUDGET + 300


def guest_tests() -> list[str]:
    """``module.py::test_name`` of every guest test, in file order."""
    found = []
    for path in sorted(GUEST.glob("test_*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                found.append(f"{path.name}::{node.name}")
    return found


@dataclass
class GuestRun:
    status: int | None  # pytest's exit status in the guest; None if it never finished
    seconds: float
    results: dict[str, tuple[str, str, float]] = field(default_factory=dict)
    diagnostics: str = ""  # the VM's output tails when the run went wrong
    error: str = ""  # why there is no run at all


def _results(junit: Path) -> dict[str, tuple[str, str, float]]:
    """``module.py::name`` -> (outcome, report, seconds) from pytest's JUnit XML."""
    results: dict[str, tuple[str, str, float]] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        key = f"{module}.py::{case.get('name', '')}"
        outcome, report = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = child.tag
                report = f"{child.get('message', '')}\n{child.text or ''}"
                break
        if outcome == "passed" or key not in results:
            results[key] = (outcome, report, float(case.get("time", "0")))
        else:  # a teardown error after a pass: keep both
            results[key] = (outcome, report, results[key][2])
    return results


@pytest.fixture(scope="session")
def guest_run(controlplane_binaries: Path) -> Iterator[GuestRun]:
    testbed.cleanup_stale()
    started = time.monotonic()
    kernel = guest.fetch_kernel(on_progress=lambda line: print(line, file=sys.stderr))
    host = vm.VMHost(binaries=controlplane_binaries).start()
    machine: vm.VirtualMachine | None = None
    run = GuestRun(status=None, seconds=0.0)
    try:
        junit = host.share / "junit.xml"
        command = guest.GuestCommand(
            argv=[
                sys.executable,
                *("-m", "pytest", str(GUEST.relative_to(ROOT)), "-p", "no:cacheprovider"),
                *("-p", "no:hypothesispytest"),
                *(f"--junitxml={junit}", "-o", "junit_family=xunit1", "-v", "--durations=0"),
                *("-o", f"timeout={GUEST_BUDGET}"),
            ],
            cwd=ROOT,
            share=host.share,
            timeout=GUEST_BUDGET,
            env=[("PYTHONDONTWRITEBYTECODE", "1")],
        )
        machine = vm.VirtualMachine(kernel, command, workdir=host.workdir / "vm", netns=host.netns)
        machine.start()
        try:
            host.wait_plane()
            run.status = machine.wait(GUEST_BUDGET + 180)
        except guest.VMError as exc:
            run.error = str(exc)
        finally:
            machine.kill()
        run.seconds = time.monotonic() - started
        if junit.exists():
            run.results = _results(junit)
        if run.status not in (0, 1) or run.error:
            run.diagnostics = machine.diagnostics(lines=200)
        elif run.status == 1:
            run.diagnostics = machine.diagnostics(lines=60)
        if os.environ.get("KILO_VM_LOG"):
            Path(os.environ["KILO_VM_LOG"]).write_text(machine.diagnostics(lines=100000))
        yield run
    finally:
        if machine is not None:
            machine.kill()
        host.close()


@pytest.mark.timeout(HOST_TIMEOUT)
@pytest.mark.parametrize("test", guest_tests())
def test_in_the_vm(guest_run: GuestRun, test: str) -> None:
    if guest_run.error:
        pytest.fail(f"{guest_run.error}\n{guest_run.diagnostics}", pytrace=False)
    result = guest_run.results.get(test)
    if result is None:
        pytest.fail(
            f"{test} did not run in the guest (pytest there ended with {guest_run.status} "
            f"after {guest_run.seconds:.0f} s)\n{guest_run.diagnostics}",
            pytrace=False,
        )
    outcome, report, seconds = result
    if outcome != "passed":
        pytest.fail(f"{test} {outcome} in the guest ({seconds:.1f} s):\n{report}", pytrace=False)


def test_the_guest_suite_is_not_empty() -> None:
    assert len(guest_tests()) >= 5
    with contextlib.suppress(ValueError):
        assert len(set(guest_tests())) == len(guest_tests())
