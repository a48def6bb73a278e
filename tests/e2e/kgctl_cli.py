"""``kgctl`` against a testbed's API server, as an operator runs it (a process of its own)."""

from __future__ import annotations

import subprocess
import sys

from kilo.sandbox.testbed import Testbed


def kgctl(bed: Testbed, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "kilo.cli.kgctl", f"--kubeconfig={bed.admin_kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # What kgctl said, in the failure: CalledProcessError's message leaves it out.
    assert not check or done.returncode == 0, (
        f"kgctl {' '.join(args)} exited with {done.returncode}: {done.stderr.strip()[-2000:]}"
    )
    return done
