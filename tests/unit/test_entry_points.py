"""The installed console scripts with bad flags, as real processes: one line, the documented
exit status, no traceback, nothing created.

``kg`` (which needs network and mount namespaces to show that it creates nothing) is in
tests/e2e/test_flags.py and ``kgctl connect`` (which needs an API server) in
tests/integration/test_connect_flags.py; here are ``kgctl``'s other commands, which read a
cluster dump, and ``kilo-sandbox``. As root, ``kilo-sandbox`` runs as ``nobody``: should a
check be missing, it then stops at its root check instead of building a sandbox.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
DUMP = ROOT / "examples" / "cluster.yaml"


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KILO_SANDBOX_DIR")}
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=False)


def assert_one_line(done: subprocess.CompletedProcess[str], status: int, message: str) -> None:
    assert (done.returncode, done.stdout) == (status, "")
    assert done.stderr.count("\n") == 1 and done.stderr.endswith("\n")
    assert "Traceback" not in done.stderr
    assert message in done.stderr


KGCTL_BAD = [
    (["graph", "--topology-label=a b"], 'invalid --topology-label "a b"'),
    (["showconf", "node", "Alpha"], 'argument NAME: invalid node name "Alpha"'),
    (["plan", "node", "beta", "--interface="], 'invalid --interface "": it is empty'),
    (["plan", "node", "beta", "--cni-path="], 'invalid --cni-path ""'),
]


@pytest.mark.parametrize(("argv", "message"), KGCTL_BAD, ids=[" ".join(a) for a, _ in KGCTL_BAD])
def test_kgctl_bad_flags(argv: list[str], message: str) -> None:
    done = run([str(BIN / "kgctl"), "--backend=file", f"--file={DUMP}", *argv])
    assert_one_line(done, 2, message)
    assert done.stderr.startswith("kgctl: ")


SANDBOX_BAD = [
    (["up", "--locations", "0"], "argument --locations: 0 is not in 1..8"),
    (["up", "--nodes", "-1"], "argument --nodes: -1 is not in 1..10"),
    (["up", "--nodes", "9" * 30], "is not in 1..10"),
    (["up", "--granularity", "bad"], "argument --granularity: invalid choice: 'bad'"),
    (["up", "--dir="], "argument --dir: '' names no directory"),
    (["down", "--dir= "], "argument --dir: ' ' names no directory"),
]


@pytest.mark.parametrize(
    ("argv", "message"), SANDBOX_BAD, ids=[" ".join(a) for a, _ in SANDBOX_BAD]
)
def test_kilo_sandbox_bad_flags(tmp_path: Path, argv: list[str], message: str) -> None:
    box = tmp_path / "box"
    args = argv if any(a.startswith("--dir") for a in argv) else [*argv, f"--dir={box}"]
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv is not None, "util-linux's setpriv is needed to drop root"
        prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    done = run([*prefix, str(BIN / "kilo-sandbox"), *args])
    assert_one_line(done, 2, message)
    assert done.stderr.startswith("kilo-sandbox")
    assert not box.exists()
