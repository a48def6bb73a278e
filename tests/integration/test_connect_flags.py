"""``kgctl connect`` refuses every bad flag before it touches the cluster, as installed.

The installed ``kgctl`` (``.venv/bin/kgctl``) runs against a real kube-apiserver with an
admin kubeconfig, ``--clean-up=false`` (so that a Peer it created would stay) and a key file
in the test's directory. For each bad flag: exit status 2, one line on stderr, nothing on
stdout, no Peer, no key file. ``--create-interface=false`` with an interface that does not
exist keeps the host's network untouched even if a check were missing:
``test_the_harness_sees_a_peer_connect_creates`` shows that such a run gets as far as
creating the Peer.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from lightkube import ApiError, Client, KubeConfig
from lightkube.codecs import load_all_yaml
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition

from kilo.adapters import kubernetes
from kilo.sandbox.controlplane import ControlPlane

ROOT = Path(__file__).resolve().parents[2]
KGCTL = Path(sys.executable).parent / "kgctl"
PEER = "flags-laptop"
# An interface no one has: without --create-interface connect must stop before netlink
# changes anything, whatever the flags.
ABSENT = "kfl" + uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def admin(control_plane: ControlPlane) -> Iterator[Client]:
    with Client(
        KubeConfig.from_file(str(control_plane.admin_kubeconfig)), trust_env=False
    ) as client:
        for obj in load_all_yaml((ROOT / "manifests" / "crds.yaml").read_text()):
            try:
                client.create(obj)
            except ApiError as exc:
                if exc.status.code != 409:
                    raise
        client.wait(CustomResourceDefinition, "peers.kilo.squat.ai", for_conditions=["Established"])
        # The first lists after that can still get 429 "storage is (re)initializing" while
        # the watch cache fills; the server says so only by answering again.
        deadline = time.monotonic() + 30
        while True:
            try:
                peers(client)
                break
            except ApiError as exc:
                if exc.status.code != 429 or time.monotonic() > deadline:
                    raise
            time.sleep(0.1)
        yield client


@pytest.fixture(autouse=True)
def no_peer_left(admin: Client) -> Iterator[None]:
    """A Peer a test made (when a check is missing) does not leak into the next test."""
    yield
    for name in peers(admin):
        if name.startswith("flags-"):
            admin.delete(kubernetes.Peer, name)


def peers(client: Client) -> list[str]:
    return sorted(str(p.metadata.name) for p in client.list(kubernetes.Peer) if p.metadata)


def connect(
    control_plane: ControlPlane, key: Path, *args: str, name: str = PEER
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    return subprocess.run(
        [
            str(KGCTL),
            "connect",
            name,
            f"--kubeconfig={control_plane.admin_kubeconfig}",
            "--clean-up=false",
            "--create-interface=false",
            f"--private-key={key}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


BAD_FLAGS = [
    (["--interface="], 'argument --interface/-i: invalid --interface "": it is empty'),
    (["--interface=a/b"], 'invalid --interface "a/b": it contains "/"'),
    (["--interface=" + "k" * 40], "it is 40 bytes long; Linux allows at most 15"),
    (["--interface=wg%d"], 'invalid --interface "wg%d": it contains "%"'),
    (["-i", ABSENT, "--mtu=67"], "MTU must be in range [68:65535], but got 67"),
    (["-i", ABSENT, "--mtu=70000"], "MTU must be in range [68:65535], but got 70000"),
    (
        ["-i", ABSENT, "--mtu=1000", "--allowed-ip=fd00::7/128"],
        "MTU must be in range [1280:65535] for IPv6, but got 1000",
    ),
    (["-i", ABSENT, "--allowed-ip=nope"], 'invalid --allowed-ip "nope": not a CIDR'),
    (["-i", ABSENT, "--allowed-ip=::1/128"], "a loopback address cannot be"),
    (["-i", ABSENT, "--allowed-ips=10.0.0.0/8,x"], 'invalid --allowed-ips "x": not a CIDR'),
    (["-i", ABSENT, "--persistent-keepalive=65536"], "must be in range [0:65535] seconds"),
    (["-i", ABSENT, "--persistent-keepalive=-1"], "must be in range [0:65535] seconds"),
    (["-i", ABSENT, "--resync-period=30"], 'time: missing unit in duration "30"'),
    (["-i", ABSENT, "--topology-label=a b"], 'invalid --topology-label "a b"'),
    (["-i", ABSENT, "--port=0"], "invalid port: port must be in range [1:65535], but got 0"),
    (["-i", ABSENT, "--log-level=loud"], "log level loud unknown"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_a_bad_flag_is_one_line_exit_2_and_creates_no_peer(
    admin: Client, control_plane: ControlPlane, tmp_path: Path, argv: list[str], message: str
) -> None:
    key = tmp_path / "laptop.key"
    done = connect(control_plane, key, *argv)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("kgctl: ") and message in done.stderr
    assert done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr
    assert PEER not in peers(admin)
    assert not key.exists()


def test_a_bad_peer_name_is_one_line_exit_2_and_creates_no_peer(
    admin: Client, control_plane: ControlPlane, tmp_path: Path
) -> None:
    before = peers(admin)
    key = tmp_path / "laptop.key"
    done = connect(control_plane, key, "-i", ABSENT, name="Laptop_1")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith('kgctl: argument NAME: invalid peer name "Laptop_1": ')
    assert done.stderr.count("\n") == 1
    assert peers(admin) == before
    assert not key.exists()


def test_the_harness_sees_a_peer_connect_creates(
    admin: Client, control_plane: ControlPlane, tmp_path: Path
) -> None:
    # Good flags: connect writes its key and creates the Peer, then stops at the interface
    # that does not exist (exit 1). The checks above are what keeps both from happening.
    key = tmp_path / "laptop.key"
    done = connect(control_plane, key, "-i", ABSENT)
    assert done.returncode == 1
    assert f"interface {ABSENT} does not exist" in done.stderr
    assert PEER in peers(admin)
    assert key.exists()
