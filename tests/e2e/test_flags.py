"""``kg`` refuses every bad flag before it creates anything, as installed (``.venv/bin/kg``).

Each run is in a network namespace of its own (the interfaces ``kg`` could create land
there) and a private mount namespace with a tmpfs over ``/var/lib`` (where ``kg`` keeps its
key, ``/var/lib/kilo/key``); afterwards the test looks at both. ``kg`` is given a kubeconfig
for an API server that does not exist, so that without its flag checks it would go on to
create the key and the interface (``test_the_harness_sees_what_kg_creates`` shows that it
does), then fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
# Mount a tmpfs over /var/lib in a private mount namespace, run the command, record what
# is under /var/lib afterwards.
SCRIPT = (
    'mount -t tmpfs kilo-flags-test /var/lib || exit 99; "$@"; status=$?; '
    'find /var/lib -mindepth 1 > "$KILO_TEST_LISTING"; exit $status'
)
KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: nowhere
  cluster:
    server: https://127.0.0.1:1
contexts:
- name: nowhere
  context: {cluster: nowhere, user: nobody}
current-context: nowhere
users:
- name: nobody
  user: {token: not-a-token}
"""


class Outcome:
    def __init__(self, done: subprocess.CompletedProcess[str], var_lib: str, links: str):
        self.status = done.returncode
        self.stdout = done.stdout
        self.stderr = done.stderr
        self.var_lib = var_lib.split()
        self.links = sorted(line.split(":")[1].strip().split("@")[0] for line in links.splitlines())


def run_kg(netns: str, tmp_path: Path, *args: str, program: tuple[str, ...] = ()) -> Outcome:
    """``kg ARGS`` (or ``program ARGS``) in ``netns`` with a private, empty ``/var/lib``."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    listing = tmp_path / "var-lib"
    argv = [
        *("ip", "netns", "exec", netns),
        *("unshare", "--mount", "--propagation", "private"),
        *("sh", "-c", SCRIPT, "sh"),
        *(program or (str(BIN / "kg"),)),
        f"--kubeconfig={kubeconfig}",
        *args,
    ]
    env = {**os.environ, "KILO_TEST_LISTING": str(listing)}
    env.pop("KUBECONFIG", None)
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT, check=False
    )
    assert done.returncode != 99, done.stderr
    links = subprocess.run(
        ["ip", "-n", netns, "-o", "link", "show"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return Outcome(done, listing.read_text(), links)


BAD_FLAGS = [
    (
        ["--listen=::bad"],
        "failed to listen on ::bad: listen tcp: address ::bad: too many colons in address",
    ),
    (["--listen=:99999"], "failed to listen on :99999: listen tcp: address 99999: invalid port"),
    (["--interface="], 'invalid interface name "": it is empty'),
    (
        ["--interface=" + "k" * 40],
        f'invalid interface name "{"k" * 40}": it is 40 bytes long; Linux allows at most 15',
    ),
    (
        ["--interface=a/b"],
        'invalid interface name "a/b": it contains "/"; interface names cannot contain "/", '
        '":", "%" or white space',
    ),
    (["--mtu=0"], "invalid MTU: MTU must be in range [68:65535], but got 0"),
    (["--mtu=67"], "invalid MTU: MTU must be in range [68:65535], but got 67"),
    (["--mtu=70000"], "invalid MTU: MTU must be in range [68:65535], but got 70000"),
    (
        ["--master=::not a url"],
        'failed to create Kubernetes config: invalid --master "::not a url": it contains '
        "white space or control characters",
    ),
    (
        ["--hostname=Node_1"],
        'invalid hostname "Node_1": --hostname must be this node\'s Kubernetes name, a '
        "lower-case RFC 1123 subdomain (lower-case letters, digits, '-' and '.', at most 253 "
        "characters)",
    ),
    (
        ["--topology-label=a b"],
        'invalid topology label "a b": its name "a b" must consist of alphanumeric '
        "characters, '-', '_' or '.', and must start and end with an alphanumeric character",
    ),
    (
        ["--cni-path="],
        'invalid CNI path "": give the CNI configuration file to manage, or --cni=false',
    ),
    # Kilo's own checks keep Kilo's messages.
    (["--port=0"], "invalid port: port must be in range [1:65535], but got 0"),
    (
        ["--mtu=x"],
        'failed to parse MTU "x": strconv.ParseUint: parsing "x": invalid syntax',
    ),
]


@pytest.mark.parametrize(("argv", "message"), BAD_FLAGS, ids=[a[0] for a, _ in BAD_FLAGS])
def test_a_bad_flag_is_one_line_and_creates_nothing(
    netns: str, tmp_path: Path, argv: list[str], message: str
) -> None:
    outcome = run_kg(netns, tmp_path, "--hostname=node-1", *argv)
    assert (outcome.status, outcome.stdout, outcome.stderr) == (1, "", message + "\n")
    assert outcome.var_lib == []
    assert outcome.links == ["lo"]


def test_an_address_that_cannot_be_bound_creates_nothing(netns: str, tmp_path: Path) -> None:
    # Well-formed, but the name does not resolve: found when binding, which kg does before
    # it creates its key and interface (Kilo binds after).
    outcome = run_kg(netns, tmp_path, "--hostname=node-1", "--listen=no-such-host.invalid:1107")
    assert outcome.status == 1
    assert outcome.stderr.startswith(
        "failed to listen on no-such-host.invalid:1107: lookup no-such-host.invalid: "
    )
    assert outcome.stderr.count("\n") == 1
    assert "Traceback" not in outcome.stderr
    assert outcome.var_lib == []
    assert outcome.links == ["lo"]


def test_webhook_flags_are_one_line(netns: str, tmp_path: Path) -> None:
    outcome = run_kg(netns, tmp_path, "webhook", "--listen-metrics=:99999")
    assert (outcome.status, outcome.stdout, outcome.stderr) == (
        1,
        "",
        "failed to listen on :99999: listen tcp: address 99999: invalid port\n",
    )


def test_the_harness_sees_what_kg_creates(netns: str, tmp_path: Path) -> None:
    # Good flags: kg creates its key, then fails (no WireGuard in this kernel, no default
    # route in this namespace). The harness sees the key: the tests above can fail.
    outcome = run_kg(netns, tmp_path, "--hostname=node-1", "--listen=127.0.0.1:0")
    assert outcome.status == 1
    assert outcome.stderr.startswith("failed to create Kilo mesh: ")
    assert "/var/lib/kilo/key" in outcome.var_lib


def test_a_start_up_failure_removes_the_interface_kg_created(netns: str, tmp_path: Path) -> None:
    # A veth stands in for the kernel WireGuard interface kg creates (tests/e2e/veth_kg.py).
    # The next step, finding the default route's interface, fails in this empty namespace.
    outcome = run_kg(
        netns,
        tmp_path,
        "--hostname=node-1",
        "--listen=127.0.0.1:0",
        "--interface=kflags0",
        program=(sys.executable, "-m", "tests.e2e.veth_kg"),
    )
    assert (outcome.status, outcome.stderr) == (
        1,
        "failed to create Kilo mesh: failed to find the interface of the default route\n",
    )
    assert outcome.links == ["lo"]
    # The key stays: it is this node's identity, as in Kilo, and the next run uses it.
    assert "/var/lib/kilo/key" in outcome.var_lib
