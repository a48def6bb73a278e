"""No kubeconfig can crash ``kgctl``, ``kg`` or ``kg webhook`` (issue 11).

Each bad kubeconfig of ``tests.bad_kubeconfigs`` is given to the installed console
scripts, run as real subprocesses: stderr must be exactly one line, the documented message
naming the file, with the documented exit status (``kgctl``: 1; ``kg``, ``kg webhook``:
1), and no traceback anywhere. ``kg`` and ``kgctl connect`` must stop before they create anything:
they run with ``/var/lib`` (where their keys go) bound to an empty directory in their own
mount and network namespaces (when root), which must still be empty afterwards.

A failing API server (HTTP 500) and a failing credential plugin need a server: a local
one on 127.0.0.1 (``tests.bad_kubeconfigs.ErrorServer``).
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from kilo.cli import kgctl
from kilo.sandbox.controlplane import CertificateAuthority, pem_cert
from tests import bad_kubeconfigs

BIN = Path(sys.executable).parent
KGCTL_COMMANDS = {
    "list": ["list"],
    "graph": ["graph"],
    "showconf-node": ["showconf", "node", "x"],
    "showconf-peer": ["showconf", "peer", "x"],
    "plan-node": ["plan", "node", "x"],
}
WEBHOOK_LISTEN = ["--listen", "127.0.0.1:0", "--listen-metrics", "127.0.0.1:0"]


def environment(home: Path) -> dict[str, str]:
    """No KUBECONFIG and an empty home: only the --kubeconfig given is read."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["HOME"] = str(home)
    return env


def isolated(state: Path, *, network: bool) -> list[str]:
    """A prefix that runs a command with ``/var/lib`` replaced by ``state``.

    With ``network``, also in a network namespace of its own, so that an interface a
    regression would create never reaches the host. Without root, nothing: such a process
    can neither write ``/var/lib`` nor create interfaces.
    """
    if os.geteuid() != 0:
        return []
    if shutil.which("unshare") is None:
        pytest.skip("util-linux's unshare is needed to run kg safely as root")
    state.mkdir(exist_ok=True)
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        *(["--net"] if network else []),
        "--",
        "sh",
        "-c",
        'mount --bind "$0" /var/lib && exec "$@"',
        str(state),
    ]


def run(argv: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env=environment(home),
        cwd=home,
        timeout=120,
        check=False,
    )


def assert_one_line(done: subprocess.CompletedProcess[str], status: int, line: str) -> None:
    assert "Traceback" not in done.stderr + done.stdout
    assert (done.returncode, done.stderr) == (status, line + "\n")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    directory = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.create("entry-points-ca")
    cert, key = ca.issue("webhook", server_ips=("127.0.0.1",), client=False)
    (directory / "ca.pem").write_bytes(pem_cert(ca.cert))
    (directory / "cert.pem").write_bytes(cert)
    (directory / "key.pem").write_bytes(key)
    return ["--cert-file", str(directory / "cert.pem"), "--key-file", str(directory / "key.pem")]


# --- bad kubeconfig files ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    done: subprocess.CompletedProcess[str]
    message: str  # what kubeconfig.load says about the file
    state: Path  # /var/lib as the process saw it


ENTRY_POINTS = ("kgctl list", "kgctl connect", "kg", "kg webhook")


@pytest.fixture(scope="module")
def outcomes(
    tmp_path_factory: pytest.TempPathFactory, certificate: list[str]
) -> dict[tuple[str, str], Outcome]:
    """Every entry point run on every case, a few processes at a time (each takes ~1 s)."""
    jobs: dict[tuple[str, str], tuple[list[str], Path, str]] = {}
    for case in bad_kubeconfigs.ENTRY_POINT_CASES:
        for entry in ENTRY_POINTS:
            directory = tmp_path_factory.mktemp(f"{entry.replace(' ', '-')}-{case}")
            path, message = bad_kubeconfigs.write(case, directory)
            state = directory / "var-lib"
            argv = {
                "kgctl list": [str(BIN / "kgctl"), "--kubeconfig", str(path), "list"],
                "kgctl connect": [
                    *isolated(state, network=True),
                    *[str(BIN / "kgctl"), "--kubeconfig", str(path), "connect", "laptop"],
                ],
                "kg": [
                    *isolated(state, network=True),
                    *[str(BIN / "kg"), "--hostname", "n1", "--kubeconfig", str(path)],
                ],
                "kg webhook": [
                    *[str(BIN / "kg"), "webhook", "--kubeconfig", str(path)],
                    *certificate,
                    *WEBHOOK_LISTEN,
                ],
            }[entry]
            jobs[(entry, case)] = (argv, directory, message)
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = {
            key: pool.submit(run, argv, directory) for key, (argv, directory, _) in jobs.items()
        }
        return {
            key: Outcome(futures[key].result(), message, directory / "var-lib")
            for key, (_, directory, message) in jobs.items()
        }


def nothing_in(state: Path) -> bool:
    return not state.exists() or not any(state.iterdir())


@pytest.mark.parametrize("case", bad_kubeconfigs.ENTRY_POINT_CASES)
def test_kgctl_list_says_what_is_wrong_with_the_kubeconfig(
    case: str, outcomes: dict[tuple[str, str], Outcome]
) -> None:
    outcome = outcomes[("kgctl list", case)]
    assert_one_line(outcome.done, 1, f"kgctl: {outcome.message}")
    assert outcome.done.stdout == ""


@pytest.mark.parametrize("command", KGCTL_COMMANDS)
@pytest.mark.parametrize("case", sorted(bad_kubeconfigs.CASES))
def test_every_kgctl_command_says_what_is_wrong_with_the_kubeconfig(
    case: str, command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process, for every case and command (the subprocess test above covers ``list``)."""
    monkeypatch.delenv("KUBECONFIG", raising=False)
    path, message = bad_kubeconfigs.write(case, tmp_path)
    out, err = io.StringIO(), io.StringIO()
    code = kgctl.main(["--kubeconfig", str(path), *KGCTL_COMMANDS[command]], out=out, err=err)
    assert (code, out.getvalue()) == (1, "")
    if case == "garbage-certificate-authority-data":  # ssl's own words follow
        assert err.getvalue().startswith(f"kgctl: {message}")
        assert err.getvalue().count("\n") == 1
    else:
        assert err.getvalue() == f"kgctl: {message}\n"


@pytest.mark.parametrize("case", bad_kubeconfigs.ENTRY_POINT_CASES)
def test_kgctl_connect_stops_on_the_kubeconfig_before_creating_anything(
    case: str, outcomes: dict[tuple[str, str], Outcome]
) -> None:
    outcome = outcomes[("kgctl connect", case)]
    assert_one_line(outcome.done, 1, f"kgctl: {outcome.message}")
    assert outcome.done.stdout == ""  # not even "generated public key"
    assert nothing_in(outcome.state)


@pytest.mark.parametrize("case", bad_kubeconfigs.ENTRY_POINT_CASES)
def test_kg_stops_on_the_kubeconfig_before_its_key_or_interface(
    case: str, outcomes: dict[tuple[str, str], Outcome]
) -> None:
    outcome = outcomes[("kg", case)]
    assert_one_line(outcome.done, 1, f"failed to create Kubernetes config: {outcome.message}")
    # Only Kilo's first log line: no key was generated, no interface created.
    (line,) = outcome.done.stdout.splitlines()
    assert "Starting Kilo network mesh" in line
    assert nothing_in(outcome.state)


@pytest.mark.parametrize("case", bad_kubeconfigs.ENTRY_POINT_CASES)
def test_kg_webhook_stops_on_the_kubeconfig(
    case: str, outcomes: dict[tuple[str, str], Outcome]
) -> None:
    outcome = outcomes[("kg webhook", case)]
    assert_one_line(outcome.done, 1, f"failed to create Kubernetes config: {outcome.message}")
    assert outcome.done.stdout == ""


# --- a failing API server or credential plugin -------------------------------------------------


@pytest.mark.parametrize("command", [*KGCTL_COMMANDS, "connect"])
def test_kgctl_reports_an_http_500_with_its_status_and_message(
    command: str, tmp_path: Path
) -> None:
    body = bad_kubeconfigs.status_body(500, "etcdserver: request timed out")
    with bad_kubeconfigs.ErrorServer(500, body) as server:
        path = bad_kubeconfigs.server_kubeconfig(tmp_path, server.url)
        done = run(kgctl_argv(path, command, tmp_path), tmp_path)
    if command == "connect":
        expected = (
            f"cannot get peers on {server.url}: etcdserver: request timed out (HTTP 500) "
            "(Peer 'laptop')"
        )
    else:
        expected = f"cannot list nodes on {server.url}: etcdserver: request timed out (HTTP 500)"
    assert_one_line(done, 1, f"kgctl: {expected}")
    assert_nothing_created(done, command, tmp_path)


@pytest.mark.parametrize("command", [*KGCTL_COMMANDS, "connect"])
def test_kgctl_names_a_failing_credential_plugin(command: str, tmp_path: Path) -> None:
    with bad_kubeconfigs.ErrorServer(200, b"{}") as server:
        path = bad_kubeconfigs.plugin_kubeconfig(
            tmp_path, server.url, bad_kubeconfigs.FAILING_PLUGIN
        )
        done = run(kgctl_argv(path, command, tmp_path), tmp_path)
        assert server.requests == 0
    plugin = tmp_path / "credential-plugin"
    said = f'"{plugin}"' if len(str(plugin)) <= 80 else f'"{str(plugin)[:79]}…"'
    expected = (
        f'kubeconfig {path}: the credential plugin {said} of user "u" exited with status 3: '
        'error: could not get a token: the session of "alice" expired'
    )
    if command == "connect":
        expected += " (Peer 'laptop')"
    assert_one_line(done, 1, f"kgctl: {expected}")
    assert_nothing_created(done, command, tmp_path)


def assert_nothing_created(
    done: subprocess.CompletedProcess[str], command: str, tmp_path: Path
) -> None:
    if command != "connect":
        assert done.stdout == ""
        return
    # connect generates its key in memory first, and writes it only once the Peer is known.
    assert [line for line in done.stdout.splitlines() if "generated public key" not in line] == []
    assert not (tmp_path / "laptop.key").exists()


def kgctl_argv(kubeconfig: Path, command: str, tmp_path: Path) -> list[str]:
    if command != "connect":
        return [str(BIN / "kgctl"), "--kubeconfig", str(kubeconfig), *KGCTL_COMMANDS[command]]
    # The server is on the host's loopback: a mount namespace only, and no interface may be
    # created (--create-interface=false) even if the order of connect's steps regressed.
    return [
        *isolated(tmp_path / "var-lib", network=False),
        str(BIN / "kgctl"),
        "--kubeconfig",
        str(kubeconfig),
        "connect",
        "laptop",
        "--private-key",
        str(tmp_path / "laptop.key"),
        "--create-interface=false",
        "--interface",
        "kbad0",
    ]
