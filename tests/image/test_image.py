"""The built image (docker/build.sh), run with podman: what it holds and what our manifests run.

Every container of the committed manifests starts its command in the image with its own
security context (user, capabilities, no-new-privileges, read-only root); our install-cni
puts the image's plugins on a host; the webhook serves TLS as uid 1000 on a read-only root;
the iptables wrapper works against a real (empty) network namespace.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kilo import __version__
from kilo.sandbox import podman
from tests import image_harness
from tests.image import webhook_check
from tests.manifests import (
    CHART,
    MANIFESTS,
    Container,
    containers,
    dockerfile_instructions,
    load_file,
    one,
    package_list,
    rendered_files,
)

PLUGINS = ("bridge", "host-local", "loopback", "portmap")


def test_the_images_config_is_the_dockerfiles(kilo_image: str) -> None:
    config = image_harness.config(kilo_image)
    instructions = dockerfile_instructions()
    final = instructions[max(i for i, (k, _) in enumerate(instructions) if k == "FROM") :]
    env = [rest for keyword, rest in final if keyword == "ENV"]
    assert config["Env"] == env
    assert config["Entrypoint"] == ["/opt/bin/kg"]
    assert config["User"] == "0"
    assert not config.get("Cmd")
    assert not config.get("WorkingDir")  # "/": Kilo's install-cni writes its temporary file there


def test_every_package_of_the_list_is_installed(kilo_image: str) -> None:
    packages = sorted(package_list())
    result = image_harness.shell(
        kilo_image, "dpkg-query -W -f '${Package} ${db:Status-Status}\\n' " + " ".join(packages)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{p} installed" for p in packages]


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("kg --version", __version__),
        ("/opt/bin/kg --version", __version__),
        ("/usr/local/bin/kg --version", __version__),
        ("kgctl --help | head -n 1", "usage: kgctl"),
        ("/opt/bin/kgctl --help | head -n 1", "usage: kgctl"),
        ("command -v python3", "/opt/kilo/bin/python3"),
        ("python3 -c 'import kilo.agent.webhook, lightkube, cryptography; print(\"ok\")'", "ok"),
        ("wireguard-go --version", "wireguard-go v"),
        ("wg --version", "wireguard-tools v"),
        ("ip -V", "ip utility, iproute2"),
        ("dot -V 2>&1", "dot - graphviz version"),
        ("readlink /usr/sbin/iptables-restore", "kilo-iptables-wrapper"),
        ("ls /opt/cni/bin | tr '\\n' ' '", "bridge host-local loopback portmap "),
        ("id kilo", "uid=1000(kilo) gid=1000(kilo) groups=1000(kilo)"),
    ],
)
def test_the_tools_run(kilo_image: str, script: str, expected: str) -> None:
    result = image_harness.shell(kilo_image, script)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout


def test_the_cni_plugins_in_opt_cni_bin_are_debians_and_answer(kilo_image: str) -> None:
    script = "; ".join(
        f"cmp /opt/cni/bin/{p} /usr/lib/cni/{p} && CNI_COMMAND=VERSION /opt/cni/bin/{p} </dev/null"
        for p in PLUGINS
    )
    result = image_harness.shell(kilo_image, script + "; echo")
    assert result.returncode == 0, result.stderr
    answers = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert len(answers) == len(PLUGINS)
    assert all("0.4.0" in a["supportedVersions"] for a in answers)


# --- the committed manifests ----------------------------------------------------------------


def our_containers() -> dict[str, Container]:
    """One of each distinct container (command and security context) of our manifests that
    runs our image (nkml and kube-router keep their own)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    image = f"{values['image']['repository']}:{values['image']['tag']}"
    distinct: dict[str, Container] = {}
    for path in rendered_files():
        for c in containers(load_file(path)):
            if c.spec["image"] != image:
                continue
            security = podman.Security.from_kubernetes(c.spec, c.pod)
            command = (c.spec.get("command") or ["(entrypoint)"])[0]
            distinct.setdefault(f"{c.name}:{command}:{' '.join(security.flags())}", c)
    return distinct


OURS = our_containers()
# A harmless run of each command the manifests use.
PROBES = {
    "(entrypoint)": ("--version",),
    "/bin/sh": ("-c", "cd / && ls /opt/cni/bin >/dev/null && sed --version >/dev/null"),
    "python3": ("-c", "import kilo.adapters.kubeconfig, lightkube, cryptography"),
    "wireguard-go": ("--version",),
    "kgctl": ("--version",),  # the multi-cluster link's Deployment
}


@pytest.mark.parametrize("key", sorted(OURS))
def test_every_container_of_our_manifests_starts_in_the_image_as_its_user(
    kilo_image: str, key: str
) -> None:
    c = OURS[key]
    security = podman.Security.from_kubernetes(c.spec, c.pod)
    if (c.pod.get("securityContext") or {}).get("runAsNonRoot"):
        assert security.user not in (None, 0)
    command = c.spec.get("command")
    probe = PROBES[command[0] if command else "(entrypoint)"]
    result = image_harness.run(
        podman.Container(
            image=kilo_image,
            name=image_harness.name(),
            command=(command[0],) if command else None,
            args=probe,
            security=security,
        )
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture
def host_cni(tmp_path: Path) -> dict[str, Path]:
    dirs = {"bin": tmp_path / "opt-cni-bin", "conf": tmp_path / "etc-cni-net.d"}
    for d in dirs.values():
        d.mkdir()
    return dirs


def test_our_install_cni_puts_the_images_plugins_on_the_host(
    kilo_image: str, host_cni: dict[str, Path]
) -> None:
    objects = load_file(MANIFESTS / "kilo-kubeadm.yaml")
    install = next(c for c in containers(objects) if c.name == "install-cni")
    config = one(objects, "ConfigMap", "kilo")["data"]["cni-conf.json"]
    (host_cni["conf"] / "05-other.conflist").write_text("{}")
    mounts = install.mounts()
    result = image_harness.run(
        podman.Container(
            image=kilo_image,
            name=image_harness.name(),
            command=tuple(install.spec["command"]),
            env={"CNI_CONF_NAME": install.env()["CNI_CONF_NAME"], "CNI_NETWORK_CONFIG": config},
            mounts=(
                podman.Mount(source=str(host_cni["bin"]), target="/host/opt/cni/bin"),
                podman.Mount(source=str(host_cni["conf"]), target="/host/etc/cni/net.d"),
            ),
            security=podman.Security.from_kubernetes(install.spec, install.pod),
        )
    )
    assert result.returncode == 0, result.stderr
    assert mounts["/host/opt/cni/bin"]["hostPath"]["path"] == "/opt/cni/bin"
    assert sorted(p.name for p in host_cni["bin"].iterdir()) == list(PLUGINS)
    assert sorted(p.name for p in host_cni["conf"].iterdir()) == [
        "05-other.conflist",
        "10-kilo.conflist",
    ]
    assert json.loads((host_cni["conf"] / "10-kilo.conflist").read_text())["name"] == "kilo"
    assert "05-other.conflist sorts before 10-kilo.conflist" in result.stderr
    answer = subprocess.run(
        [str(host_cni["bin"] / "bridge")],
        env={"CNI_COMMAND": "VERSION"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "supportedVersions" in answer.stdout


def webhook_container(objects: list[dict[str, Any]]) -> Container:
    return next(c for c in containers(objects) if c.owner == "Deployment/peer-validation-server")


def test_our_webhook_serves_as_uid_1000_on_a_read_only_root(
    kilo_image: str, tmp_path: Path
) -> None:
    server = webhook_container(load_file(MANIFESTS / "peer-validation.yaml"))
    security = podman.Security.from_kubernetes(server.spec, server.pod)
    assert (security.user, security.group, security.read_only_root) == (1000, 1000, True)
    webhook_check.serves(kilo_image, tuple(server.spec["args"]), security, tmp_path)


def test_the_iptables_wrapper_runs_the_backend_of_a_real_namespace(kilo_image: str) -> None:
    """kg's capabilities, in an empty namespace: no rules anywhere, so nft (the tie-break)."""
    with image_harness.network_namespace() as netns:
        result = image_harness.shell(
            kilo_image,
            "iptables -N KILO-TEST && iptables-save -t filter && cat /run/kilo-iptables-mode",
            security=podman.Security(user=0, drop=("ALL",), add=("NET_ADMIN", "NET_RAW")),
            network=f"ns:/run/netns/{netns}",
        )
    assert result.returncode == 0, result.stderr
    assert ":KILO-TEST - [0:0]" in result.stdout
    assert result.stdout.splitlines()[-1] == "nft"


def test_our_wireguard_probe_runs_in_the_image_with_its_capability(kilo_image: str) -> None:
    """nkml's init container: a WireGuard link in a (here: the test's) network namespace."""
    probe = next(
        c
        for c in containers(load_file(MANIFESTS / "kilo-k3s-userspace-heterogeneous.yaml"))
        if c.name == "wireguard-probe"
    )
    with image_harness.network_namespace() as netns:
        result = image_harness.run(
            podman.Container(
                image=kilo_image,
                name=image_harness.name(),
                command=tuple(probe.spec["command"]),
                network=f"ns:/run/netns/{netns}",
                security=podman.Security.from_kubernetes(probe.spec, probe.pod),
            )
        )
        links = subprocess.run(
            ["ip", "-n", netns, "-o", "link", "show"], capture_output=True, text=True, check=True
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("wireguard-probe: the kernel c"), result.stdout
    assert "kilo-wg-probe" not in links.stdout
