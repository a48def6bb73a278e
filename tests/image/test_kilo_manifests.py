"""Kilo's own manifests, unchanged, with our image in place of squat/kilo.

kilo_manifests.yaml (beside this file) lists what those manifests ask of their image,
derived from squat/kilo: the entrypoint and kgctl paths, the agent's arguments with no
runAsUser (so the image's user) and privileged: true, the install-cni and
generate-kubeconfig init scripts as Kilo ships them, and the webhook as uid 1000. Each is
run here in the built image as Kubernetes would run it; the agent itself joins a mesh in
tests/e2e/test_image_agent.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kilo.sandbox import podman
from kilo.sandbox.controlplane import CertificateAuthority, pem_cert
from tests import image_harness
from tests.image import webhook_check

KILO = yaml.safe_load((Path(__file__).parent / "kilo_manifests.yaml").read_text())
PLUGINS = ["bridge", "host-local", "loopback", "portmap"]
SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


def security(spec: dict[str, Any], pod: dict[str, Any] | None = None) -> podman.Security:
    return podman.Security.from_kubernetes(spec, pod)


def test_kilos_entrypoint_and_kgctl_are_where_kilos_image_has_them(kilo_image: str) -> None:
    assert image_harness.config(kilo_image)["Entrypoint"] == [KILO["entrypoint"]]
    result = image_harness.shell(kilo_image, f"{KILO['kgctl']} --help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: kgctl")


def test_kilos_agent_runs_as_the_images_user_root_with_every_capability(
    kilo_image: str,
) -> None:
    """No runAsUser in Kilo's DaemonSets: kg is whoever the image says, privileged."""
    result = image_harness.shell(
        kilo_image,
        "id -u && grep CapEff /proc/self/status",
        security=security(KILO["agent"]),
    )
    assert result.returncode == 0, result.stderr
    uid, caps = result.stdout.splitlines()
    assert uid == "0"
    assert int(caps.split()[1], 16) & (1 << 12)  # CAP_NET_ADMIN


def test_the_images_kg_accepts_every_argument_list_of_kilos_agents(kilo_image: str) -> None:
    arguments = {
        manifests: [
            a.replace("$(NODE_NAME)", "node-a").replace("$(NODE_IP)", "192.0.2.7") for a in args
        ]
        for manifests, args in KILO["agent"]["args"].items()
    }
    script = (
        "import json, sys\n"
        "from kilo.agent import command_line\n"
        "for name, args in json.loads(sys.argv[1]).items():\n"
        "    parsed = command_line.read(args, hostname_fallback=lambda: None)\n"
        "    print(name, '=>', parsed.mesh.hostname, parsed.backend.kubeconfig)\n"
    )
    result = image_harness.run(
        podman.Container(
            image=kilo_image,
            name=image_harness.name(),
            command=("python3", "-c", script, json.dumps(arguments)),
        )
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{name} => node-a /etc/kubernetes/kubeconfig" for name in arguments
    ]


@pytest.fixture
def host(tmp_path: Path) -> dict[str, Path]:
    dirs = {"bin": tmp_path / "opt-cni-bin", "conf": tmp_path / "etc-cni-net.d"}
    for d in dirs.values():
        d.mkdir()
    return dirs


def test_kilos_install_cni_runs_unchanged(kilo_image: str, host: dict[str, Path]) -> None:
    install = KILO["install-cni"]
    conflist = {"cniVersion": "0.4.0", "name": "kilo", "plugins": [{"type": "bridge"}]}
    # What the host has already: a plugin of its own stays; Kilo's script empties the
    # config directory (our chart's does not, see README).
    (host["bin"] / "flannel").write_text("#!/bin/sh\n")
    (host["conf"] / "05-other.conflist").write_text("{}")
    result = image_harness.run(
        podman.Container(
            image=kilo_image,
            name=image_harness.name(),
            command=tuple(install["command"]),
            env={**install["env"], "CNI_NETWORK_CONFIG": json.dumps(conflist)},
            mounts=(
                podman.Mount(source=str(host["bin"]), target="/host/opt/cni/bin"),
                podman.Mount(source=str(host["conf"]), target="/host/etc/cni/net.d"),
            ),
            security=security(install),
        )
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in host["bin"].iterdir()) == sorted([*PLUGINS, "flannel"])
    assert [p.name for p in host["conf"].iterdir()] == ["10-kilo.conflist"]
    assert json.loads((host["conf"] / "10-kilo.conflist").read_text()) == conflist
    for plugin in PLUGINS:
        answer = subprocess.run(
            [str(host["bin"] / plugin)],
            env={"CNI_COMMAND": "VERSION"},
            capture_output=True,
            text=True,
            check=False,
        )
        assert answer.returncode == 0, f"{plugin}: {answer.stderr}"
        assert "0.4.0" in json.loads(answer.stdout)["supportedVersions"]


@pytest.fixture
def k3s(tmp_path: Path) -> dict[str, Path]:
    """The k3s agent's files, the pod's service account, the emptyDir and the ConfigMap."""
    dirs = {
        "agent": tmp_path / "var-lib-rancher-k3s-agent",
        "account": tmp_path / "serviceaccount",
        "kubernetes": tmp_path / "etc-kubernetes",
        "scripts": tmp_path / "scripts",
    }
    for d in dirs.values():
        d.mkdir()
    dirs["kubernetes"].chmod(0o777)  # an emptyDir
    authority = CertificateAuthority.create("k3s-server-ca")
    (dirs["agent"] / "server-ca.crt").write_bytes(pem_cert(authority.cert))
    (dirs["agent"] / "kubelet.kubeconfig").write_text(
        "apiVersion: v1\nclusters:\n- cluster:\n"
        "    certificate-authority: /var/lib/rancher/k3s/agent/server-ca.crt\n"
        "    server: https://127.0.0.1:6444\n  name: local\n"
        "contexts:\n- context:\n    cluster: local\n    user: user\n  name: Default\n"
        "current-context: Default\nkind: Config\n"
    )
    (dirs["account"] / "token").write_text("the-pods-token")
    (dirs["account"] / "namespace").write_text("kube-system")
    (dirs["account"] / "ca.crt").write_bytes(pem_cert(authority.cert))
    (dirs["scripts"] / "init.sh").write_text(KILO["generate-kubeconfig"]["script"])
    return dirs


def test_kilos_generate_kubeconfig_runs_unchanged_and_kg_can_use_what_it_wrote(
    kilo_image: str, k3s: dict[str, Path]
) -> None:
    init = KILO["generate-kubeconfig"]
    account = podman.Mount(source=str(k3s["account"]), target=SERVICE_ACCOUNT, read_only=True)
    written = podman.Mount(source=str(k3s["kubernetes"]), target="/etc/kubernetes")
    result = image_harness.run(
        podman.Container(
            image=kilo_image,
            name=image_harness.name(),
            command=tuple(init["command"]),
            args=tuple(init["args"]),
            env={"NAMESPACE": "kube-system"},
            mounts=(
                written,
                podman.Mount(source=str(k3s["scripts"]), target="/scripts/", read_only=True),
                podman.Mount(
                    source=str(k3s["agent"]),
                    target="/var/lib/rancher/k3s/agent/",
                    read_only=True,
                ),
                account,
            ),
            security=security(init),
        )
    )
    assert result.returncode == 0, result.stderr
    kubeconfig = yaml.safe_load((k3s["kubernetes"] / "kubeconfig").read_text())
    assert kubeconfig["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6444"
    assert kubeconfig["users"][0]["user"]["token"] == "the-pods-token"
    # The file names a cluster "kilo" it never defines; client-go then uses the pod's
    # in-cluster config, and so does the image's kg (the agent mounts only the kubeconfig).
    load = (
        "from kilo.adapters import kubeconfig\n"
        "config = kubeconfig.load('/etc/kubernetes/kubeconfig')\n"
        "print(config.cluster.server, config.user.token)\n"
    )
    result = image_harness.run(
        podman.Container(
            image=kilo_image,
            name=image_harness.name(),
            command=("python3", "-c", load),
            env={"KUBERNETES_SERVICE_HOST": "10.43.0.1", "KUBERNETES_SERVICE_PORT": "443"},
            mounts=(
                podman.Mount(
                    source=str(k3s["kubernetes"]), target="/etc/kubernetes", read_only=True
                ),
                account,
            ),
            security=security(KILO["agent"]),
        )
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["https://10.43.0.1:443", "the-pods-token"]


def test_kilos_webhook_deployment_serves_as_uid_1000(kilo_image: str, tmp_path: Path) -> None:
    webhook = KILO["webhook"]
    context = security({}, {"securityContext": webhook["podSecurityContext"]})
    assert context.user == 1000  # runAsNonRoot: true holds
    webhook_check.serves(kilo_image, tuple(webhook["args"]), context, tmp_path)
