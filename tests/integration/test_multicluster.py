"""``kgctl multicluster`` (and ``kgctl graph`` of both clusters) against two real API
servers, as the chart's accounts.

The first cluster is the session's API server, the second one of this module's own. Each gets
the accounts the chart ships: manifests/multicluster.yaml's (the Deployment's, in the cluster
it runs in) and manifests/multicluster-remote.yaml's (applied in the other). Every command
runs with service-account tokens of exactly those roles, so that a pass, a resync after a
change, ``--watch`` and ``unlink`` all working proves the roles are enough, and the rules
review proves they are no more. The tokens come from the TokenRequest API: the remote
manifest's token Secret needs kube-controller-manager, which these API servers lack.
Error paths: an unreachable remote, two kubeconfigs naming one server, a Peer of the link's
name without its label. Everything created in the shared API server is removed again.
"""

from __future__ import annotations

import base64
import hashlib
import io
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import ApiError, Client, KubeConfig
from lightkube.codecs import load_all_yaml
from lightkube.resources.core_v1 import Node, ServiceAccount

from kilo.adapters import kubeconfig, kubernetes
from kilo.cli import kgctl
from kilo.mesh import translate
from kilo.mesh.multicluster import LINK_LABEL
from kilo.sandbox.controlplane import ControlPlane, build_binaries, free_port
from tests.apiserver import rules_of, wait_served
from tests.manifests import MANIFESTS, load_file

LINK = "it"
NAMESPACE = "kube-system"
ROLE_RULES = {
    ("", "nodes"): {"list", "watch"},
    ("kilo.squat.ai", "peers"): {"list", "watch", "create", "patch", "delete"},
}
ACCOUNT_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")
# One node per location in each cluster: the first cluster's two leaders, the second's one.
NODES = (
    ("mc-aws-1", "aws", "10.2.1.0/24", "10.4.0.1/16"),
    ("mc-gcp-1", "gcp", "10.2.2.0/24", "10.4.0.2/16"),
)
REMOTE_NODES = (("mc-azure-1", "azure", "10.44.1.0/24", "10.5.0.1/16"),)


def key(seed: str) -> str:
    return base64.b64encode(hashlib.sha256(seed.encode()).digest()).decode()


def node_object(name: str, location: str, pod_cidr: str, wireguard_ip: str) -> dict[str, Any]:
    """A Kilo node that has just checked in, as its agent leaves it."""
    octet = pod_cidr.split(".")[2]
    return {
        "metadata": {
            "name": name,
            "labels": {"topology.kubernetes.io/region": location},
            "annotations": {
                translate.ENDPOINT: f"203.0.113.{octet}:51820",
                translate.GRANULARITY: "location",
                translate.INTERNAL_IP: f"192.168.{octet}.1/24",
                translate.KEY: key(name),
                translate.LAST_SEEN: str(int(time.time())),
                translate.WIREGUARD_IP: wireguard_ip,
            },
        },
        "spec": {"podCIDR": pod_cidr},
    }


def create_crd(client: Client) -> None:
    for obj in load_all_yaml((MANIFESTS / "crds.yaml").read_text()):
        try:
            client.create(obj)
        except ApiError as exc:
            if exc.status.code != 409:
                raise
    wait_served(client, "peers.kilo.squat.ai", kubernetes.Peer)


class Side:
    """One cluster: its admin client, and the objects this module created there."""

    def __init__(self, plane: ControlPlane, client: Client, workdir: Path) -> None:
        self.plane = plane
        self.admin = client
        self.workdir = workdir
        self.created: list[tuple[Any, str, str | None]] = []

    def create(self, resource: Any, obj: dict[str, Any]) -> None:
        self.admin.create(resource.from_dict(obj))
        metadata = obj["metadata"]
        self.created.append((resource, metadata["name"], metadata.get("namespace")))

    def accounts(self, manifest: str) -> None:
        for obj in load_file(MANIFESTS / manifest):
            if obj["kind"] in ACCOUNT_KINDS:
                made: Any = load_all_yaml(yaml.safe_dump(obj))[0]
                self.admin.create(made)
                metadata = obj["metadata"]
                self.created.append((type(made), metadata["name"], metadata.get("namespace")))

    def token_kubeconfig(self, account: str) -> Path:
        request: Any = ServiceAccount.Token.from_dict(
            {"metadata": {"name": account, "namespace": NAMESPACE}, "spec": {}}
        )
        token = self.admin.create(request, account, namespace=NAMESPACE)
        path = self.workdir / f"{account}.kubeconfig"
        return self.plane.write_kubeconfig(path, account, token=token.status.token)

    def peers(self) -> dict[str, Any]:
        peers: list[Any] = list(self.admin.list(kubernetes.Peer))
        return {p.metadata.name: p for p in peers}

    def remove(self) -> None:
        for peer in self.peers().values():
            labels = peer.metadata.labels or {}
            if labels.get(LINK_LABEL) == LINK:
                self.admin.delete(kubernetes.Peer, peer.metadata.name)
        for resource, name, namespace in reversed(self.created):
            try:
                if namespace is None:
                    self.admin.delete(resource, name)
                else:
                    self.admin.delete(resource, name, namespace=namespace)
            except ApiError as exc:
                if exc.status.code != 404:
                    raise


@pytest.fixture(scope="module")
def remote_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    workdir = tmp_path_factory.mktemp("remote-plane")
    with ControlPlane(build_binaries(), workdir=workdir, service_cidr="10.112.0.0/12") as plane:
        yield plane


@pytest.fixture(scope="module")
def sides(
    control_plane: ControlPlane,
    remote_plane: ControlPlane,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Side, Side]]:
    """Both clusters with Kilo's nodes and the link's accounts: the Deployment's in the first,
    the remote one in the second."""
    workdir = tmp_path_factory.mktemp("multicluster")
    with (
        Client(KubeConfig.from_file(str(control_plane.admin_kubeconfig)), trust_env=False) as one,
        Client(KubeConfig.from_file(str(remote_plane.admin_kubeconfig)), trust_env=False) as two,
    ):
        local, remote = Side(control_plane, one, workdir), Side(remote_plane, two, workdir)
        try:
            for side, nodes, manifest in (
                (local, NODES, "multicluster.yaml"),
                (remote, REMOTE_NODES, "multicluster-remote.yaml"),
            ):
                create_crd(side.admin)
                side.accounts(manifest)
                for node in nodes:
                    side.create(Node, node_object(*node))
            yield local, remote
        finally:
            local.remove()
            remote.remove()


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = kgctl.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def link_argv(local: Path, remote: Path, command: str = "link") -> list[str]:
    return [f"--kubeconfig={local}", "multicluster", command, f"--remote-kubeconfig={remote}"]


@pytest.fixture(scope="module")
def accounts(sides: tuple[Side, Side]) -> tuple[Path, Path]:
    """Kubeconfigs of the Deployment's account (first cluster) and the remote one (second)."""
    local, remote = sides
    return local.token_kubeconfig("kilo-multicluster"), remote.token_kubeconfig(
        "kilo-multicluster-remote"
    )


def mirrored(side: Side) -> dict[str, Any]:
    return {
        name: peer
        for name, peer in side.peers().items()
        if (peer.metadata.labels or {}).get(LINK_LABEL) == LINK
    }


def test_the_accounts_may_do_what_the_link_does_and_nothing_else(
    accounts: tuple[Path, Path],
) -> None:
    for config in accounts:
        with Client(kubeconfig.load(str(config)), trust_env=False) as client:
            assert rules_of(client, NAMESPACE) == ROLE_RULES


def test_link_resync_watch_and_unlink_work_with_exactly_those_roles(
    sides: tuple[Side, Side], accounts: tuple[Path, Path]
) -> None:
    local, remote = sides
    argv = [*link_argv(*accounts), f"--name={LINK}"]
    code, out, err = run(*argv, "--service-cidr=10.43.0.0/16")
    assert (code, err) == (0, ""), err
    assert "remote cluster: applied Peer it-mc-aws-1\n" in out
    # Server-side apply creates the Peers (patch, and create: the API server checks both).
    assert sorted(mirrored(remote)) == ["it-mc-aws-1", "it-mc-gcp-1"]
    assert sorted(mirrored(local)) == ["it-mc-azure-1"]
    assert "10.43.0.0/16" in mirrored(remote)["it-mc-aws-1"].spec["allowedIPs"]

    # kgctl graph draws both clusters and the link, read with the same accounts.
    code, out, err = run(
        f"--kubeconfig={accounts[0]}", "graph", f"--remote-kubeconfig={accounts[1]}", "--link=it"
    )
    assert (code, err) == (0, "")
    for leader in ("mc-aws-1", "mc-gcp-1"):
        assert f'"1/{leader}"->"2/mc-azure-1"[ color=blue, dir=both, style=bold ];' in out

    # A new key in the first cluster: the next pass patches the Peer in the second.
    node = local.admin.get(Node, "mc-gcp-1")
    assert node.metadata is not None and node.metadata.annotations is not None
    local.admin.patch(Node, "mc-gcp-1", {"metadata": {"annotations": {translate.KEY: key("new")}}})
    assert run(*argv)[0] == 0
    assert mirrored(remote)["it-mc-gcp-1"].spec["publicKey"] == key("new")

    # --watch lists and watches with the same accounts; it mirrors a node that joins.
    watch = subprocess.Popen(
        [sys.executable, "-m", "kilo.cli.kgctl", *argv, "--watch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watch.stdout is not None
        assert watch.stdout.readline() == f"watching link {LINK}\n"
        remote.create(Node, node_object("mc-ovh-1", "ovh", "10.44.2.0/24", "10.5.0.2/16"))
        assert watch.stdout.readline() == "local cluster: applied Peer it-mc-ovh-1\n"
    finally:
        watch.send_signal(signal.SIGTERM)
        _, errors = watch.communicate(timeout=30)
    assert watch.returncode == 0, errors
    assert sorted(mirrored(local)) == ["it-mc-azure-1", "it-mc-ovh-1"]

    code, _, err = run(*link_argv(*accounts, command="unlink"), f"--name={LINK}")
    assert (code, err) == (0, "")
    assert mirrored(local) == mirrored(remote) == {}


def test_an_unreachable_remote_fails_before_anything_is_written(
    sides: tuple[Side, Side], accounts: tuple[Path, Path], tmp_path: Path
) -> None:
    local, _ = sides
    config = yaml.safe_load(accounts[1].read_text())
    # Nothing listens there: the port was free a moment ago.
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"
    unreachable = tmp_path / "unreachable.kubeconfig"
    unreachable.write_text(yaml.safe_dump(config))
    code, out, err = run("--timeout=5s", *link_argv(accounts[0], unreachable), f"--name={LINK}")
    assert code == 1
    assert out == ""
    assert err.startswith("kgctl: ") and err.count("\n") == 1, err
    assert "127.0.0.1" in err
    assert mirrored(local) == {}


def test_two_kubeconfigs_naming_one_server_are_refused(accounts: tuple[Path, Path]) -> None:
    """Even as two files (two accounts of one cluster): a cluster linked to itself would
    mirror its leaders as Peers of themselves."""
    code, out, err = run(*link_argv(accounts[0], accounts[0]))
    assert (code, out) == (1, "")
    assert "a cluster cannot be linked to itself" in err and err.count("\n") == 1
    code, out, err = run(
        f"--kubeconfig={accounts[0]}", "graph", f"--remote-kubeconfig={accounts[0]}"
    )
    assert (code, out) == (1, "")
    assert "one cluster, nothing to link" in err and err.count("\n") == 1


def test_a_peer_of_the_links_name_without_its_label_is_left_alone(
    sides: tuple[Side, Side], accounts: tuple[Path, Path]
) -> None:
    local, remote = sides
    squatter = {
        "metadata": {"name": "it-mc-aws-1"},
        "spec": {"allowedIPs": ["10.99.0.0/24"], "publicKey": key("squatter")},
    }
    remote.create(kubernetes.Peer, squatter)
    argv = [*link_argv(*accounts), f"--name={LINK}"]
    code, _, err = run(*argv)
    assert code == 0
    assert (
        "kgctl: warning: remote cluster: Peer 'it-mc-aws-1' exists and is not the link's "
        f"(no label {LINK_LABEL}={LINK}); left alone"
    ) in err
    assert sorted(mirrored(remote)) == ["it-mc-gcp-1"]
    peer = remote.peers()["it-mc-aws-1"]
    assert peer.spec == squatter["spec"] and not peer.metadata.labels
    assert run(*link_argv(*accounts, command="unlink"), f"--name={LINK}")[0] == 0
    assert "it-mc-aws-1" in remote.peers()
    assert mirrored(local) == mirrored(remote) == {}
