"""What can be checked of the image without building it.

Every command a manifest runs exists in the image at the path the manifest uses, the host
paths the containers share agree with the code's constants, the users and capabilities are
the documented ones, and one image (the chart's) is named everywhere. Which Debian package
ships which file is checked with dpkg on this machine, which runs the image's Debian release
(bookworm), for the packages installed here. tests/image builds the image for real
(docker/build.sh) and runs it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from kilo.adapters import iptables as iptables_adapter
from kilo.adapters import wireguard as wireguard_adapter
from kilo.agent import __main__ as kg_main
from kilo.agent import command_line, settings
from tests.manifests import (
    CHART,
    DOCKERFILE,
    MANIFESTS,
    ROOT,
    Container,
    agent_files,
    apt_packages,
    containers,
    dockerfile_instructions,
    find,
    load_file,
    package_list,
    pod_specs,
    rendered_files,
)

INSTRUCTIONS = dockerfile_instructions()
DEBIAN_IMAGE = "debian:bookworm-slim"
DOCKER = ROOT / "docker"
PACKAGES = {
    "containernetworking-plugins",
    "fonts-dejavu-core",
    "graphviz",
    "iproute2",
    "iptables",
    "netbase",
    "python3",
    "python3-venv",
    "wireguard-go",
    "wireguard-tools",
}
ENTRYPOINT = "/opt/bin/kg"
VENV = "/opt/kilo/bin"
# What the image provides, and where from: kg, kgctl and python3 are the venv's (first on
# PATH); /opt/bin and /usr/local/bin link to kg and kgctl. Debian images are merged-/usr:
# /bin/x is /usr/bin/x.
IMAGE_COMMANDS = {
    "kg": f"{VENV}/kg",
    "/opt/bin/kg": f"{VENV}/kg",
    "/usr/local/bin/kg": f"{VENV}/kg",
    "kgctl": f"{VENV}/kgctl",
    "python3": f"{VENV}/python3",
    "/bin/sh": "/bin/sh",
    "wireguard-go": "/usr/bin/wireguard-go",
}
DEBIAN_FILES = {
    "wireguard-go": ["/usr/bin/wireguard-go"],
    "wireguard-tools": ["/usr/bin/wg"],
    "iproute2": ["/bin/ip"],
    "graphviz": ["/usr/bin/dot"],
    "containernetworking-plugins": [
        "/usr/lib/cni/bridge",
        "/usr/lib/cni/host-local",
        "/usr/lib/cni/loopback",
        "/usr/lib/cni/portmap",
    ],
    # The commands docker/iptables-wrapper runs for each backend.
    "iptables": [
        f"/usr/sbin/{family}-{mode}{suffix}"
        for family in ("iptables", "ip6tables")
        for mode in ("legacy", "nft")
        for suffix in ("", "-save", "-restore")
    ],
}
WRAPPED = {
    "iptables",
    "iptables-save",
    "iptables-restore",
    "ip6tables",
    "ip6tables-save",
    "ip6tables-restore",
}
CHART_SCRIPTS = {
    "install-cni": CHART / "files" / "install-cni.sh",
    "generate-kubeconfig": CHART / "files" / "k3s-kubeconfig.sh",
    "wireguard-probe": CHART / "files" / "wireguard-probe.sh",
}
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
IMAGE = f"{VALUES['image']['repository']}:{VALUES['image']['tag']}"
# Containers of other projects' images (as in Kilo's manifests), each named once in the values.
THIRD_PARTY = {"nkml": VALUES["nkml"]["image"], "kube-router": VALUES["kubeRouter"]["image"]}
AGENTS = ("DaemonSet/kilo", "DaemonSet/kilo-userspace")


def instructions(keyword: str) -> list[str]:
    return [rest for k, rest in INSTRUCTIONS if k == keyword]


def all_containers() -> list[tuple[str, Container]]:
    return [(p.name, c) for p in rendered_files() for c in containers(load_file(p))]


def container_id(item: tuple[str, Container]) -> str:
    file, c = item
    return f"{file}:{c.owner}:{c.name}"


ALL_CONTAINERS = all_containers()
OUR_CONTAINERS = [(f, c) for f, c in ALL_CONTAINERS if c.name not in THIRD_PARTY]


def final_stage() -> list[tuple[str, str]]:
    froms = [i for i, (keyword, _) in enumerate(INSTRUCTIONS) if keyword == "FROM"]
    return INSTRUCTIONS[froms[-1] :]


def install_script() -> str:
    return (DOCKER / "install-kilo.sh").read_text()


def test_the_base_is_debian_bookworm_slim() -> None:
    assert instructions("ARG")[0] == f"DEBIAN_IMAGE={DEBIAN_IMAGE}"
    assert instructions("FROM") == ["${DEBIAN_IMAGE} AS builder", "${DEBIAN_IMAGE}"]


def test_the_packages_come_from_the_one_package_list() -> None:
    assert package_list() == PACKAGES
    assert set(DEBIAN_FILES) <= PACKAGES
    # The builder installs only what builds the wheels; the final stage reads the list.
    builder = INSTRUCTIONS[: len(INSTRUCTIONS) - len(final_stage())]
    assert apt_packages(builder) == {"python3-venv"}
    run = one_run(final_stage())
    assert "--mount=type=bind,source=docker,target=/tmp/kilo-image" in run
    assert (
        "sed -e 's/#.*//' /tmp/kilo-image/packages.txt "
        "| DEBIAN_FRONTEND=noninteractive xargs apt-get install -y --no-install-recommends"
    ) in run
    # docker/build.sh gives mmdebstrap the same list, without recommends.
    build = (DOCKER / "build.sh").read_text()
    assert '"$root/docker/packages.txt"' in build
    assert "--aptopt='APT::Install-Recommends \"false\"'" in build


def one_run(stage: list[tuple[str, str]]) -> str:
    runs = [rest for keyword, rest in stage if keyword == "RUN"]
    assert len(runs) == 1
    return " ".join(runs[0].split())


def test_the_package_is_built_as_a_wheel_and_installed_offline_into_a_venv() -> None:
    runs = instructions("RUN")
    assert any(r.endswith("/venv/bin/pip wheel --no-cache-dir --wheel-dir /wheels .") for r in runs)
    run = one_run(final_stage())
    assert "--mount=type=bind,from=builder,source=/wheels,target=/wheels" in run
    assert run.endswith("sh /tmp/kilo-image/install-kilo.sh /wheels")
    script = install_script()
    assert "python3 -m venv /opt/kilo" in script
    assert '--no-index --find-links "$wheels" kilo' in script
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    # kilo-sandbox comes along in the wheel; it runs on a host (root, network namespaces), not
    # in the image.
    assert set(scripts) == {"kg", "kgctl", "kilo-sandbox"}


def test_the_entrypoint_is_kilos_and_the_user_root_as_in_kilos_image() -> None:
    """Kilo's DaemonSets set no runAsUser and run kg privileged; its image has no USER."""
    assert [json.loads(e) for e in instructions("ENTRYPOINT")] == [[ENTRYPOINT]]
    assert instructions("USER") == ["0"]
    assert "useradd --uid 1000 --user-group" in install_script()
    env = instructions("ENV")
    assert env[0].startswith(f"PATH={VENV}:")
    assert "PYTHONUNBUFFERED=1" in env
    # docker/build.sh copies these lines: they must be one line each.
    config = [f"{k} {rest}" for k, rest in final_stage() if k in ("ENV", "USER", "ENTRYPOINT")]
    raw = [
        line
        for line in DOCKERFILE.read_text().splitlines()
        if line.split(" ")[0] in ("ENV", "USER", "ENTRYPOINT")
    ]
    assert raw == config


def test_kg_kgctl_and_the_cni_plugins_are_where_kilos_image_has_them() -> None:
    script = install_script()
    assert "for command in kg kgctl; do" in script
    assert "ln -sf /opt/kilo/bin/$command /opt/bin/$command" in script
    assert "ln -sf /opt/kilo/bin/$command /usr/local/bin/$command" in script
    assert "for plugin in bridge host-local loopback portmap; do" in script
    assert "ln -f /usr/lib/cni/$plugin /opt/cni/bin/$plugin" in script


def test_the_iptables_wrapper_stands_in_for_every_command_the_adapter_runs() -> None:
    script = install_script()
    assert 'install -m 0755 "$here/iptables-wrapper" /usr/sbin/kilo-iptables-wrapper' in script
    names = set(script.split("for name in ")[1].split(";")[0].split())
    assert names == WRAPPED
    used = {name for pair in iptables_adapter._COMMANDS.values() for name in pair}
    assert used <= names


@pytest.mark.parametrize("package", sorted(DEBIAN_FILES))
def test_the_debian_package_ships_the_files_the_image_uses(package: str) -> None:
    # A test that cannot run fails: CI installs these (scripts/debian-packages.sh).
    assert shutil.which("dpkg") is not None, "no dpkg here: the image's Debian is needed"
    listed = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=False)
    assert listed.returncode == 0, f"{package} is not installed on this machine"
    files = set(listed.stdout.split())
    for path in DEBIAN_FILES[package]:
        usr = path if path.startswith("/usr/") else "/usr" + path
        assert path in files or usr in files, f"{package} does not ship {path}"


@pytest.mark.parametrize("item", OUR_CONTAINERS, ids=container_id)
def test_every_container_runs_a_command_the_image_has(item: tuple[str, Container]) -> None:
    _, c = item
    command = c.spec.get("command") or [ENTRYPOINT]
    assert command[0] in IMAGE_COMMANDS, f"{command[0]} is not in the image"
    if command[0] == "/bin/sh":
        # The script is one of the chart's files (tests/unit/test_image_scripts.py runs them).
        assert command[1] == "-c"
        assert command[2].strip() == CHART_SCRIPTS[c.name].read_text().strip()
    if command[0] == "wireguard-go":
        assert c.spec["args"] == ["--foreground", "kilo0"]


def _substitute(args: list[str]) -> list[str]:
    return [a.replace("$(NODE_NAME)", "node-a").replace("$(NODE_IP)", "192.0.2.7") for a in args]


@pytest.mark.parametrize("item", OUR_CONTAINERS, ids=container_id)
def test_kg_containers_pass_flags_kg_accepts(item: tuple[str, Container]) -> None:
    _, c = item
    if c.spec.get("command"):
        return
    args = _substitute(c.spec["args"])
    parsed = command_line.read(args, hostname_fallback=lambda: None)
    if isinstance(parsed, settings.WebhookSettings):
        mounts = c.mounts()
        for path in (parsed.cert_file, parsed.key_file):
            directory, key = path.rsplit("/", 1)
            assert mounts[directory]["secret"]["secretName"] == "peer-validation-webhook-tls"
            assert key in ("tls.crt", "tls.key")
        return
    assert isinstance(parsed, settings.AgentSettings), parsed
    assert parsed.mesh.hostname == "node-a"
    mounts = c.mounts()
    # The state directory, the iptables lock and, with --cni, the conflist's directory.
    assert mounts[str(kg_main.STATE_DIRECTORY)]["hostPath"]["path"] == "/var/lib/kilo"
    assert mounts["/run/xtables.lock"]["hostPath"] == {
        "path": "/run/xtables.lock",
        "type": "FileOrCreate",
    }
    cni_dir, cni_name = parsed.cni.path.rsplit("/", 1)
    if parsed.cni.enabled:
        assert "hostPath" in mounts[cni_dir]
        install = next(x for x in c.siblings() if x.name == "install-cni")
        assert install.env()["CNI_CONF_NAME"] == cni_name
    else:
        assert cni_dir not in mounts
    if parsed.backend.kubeconfig:
        directory, file = parsed.backend.kubeconfig.rsplit("/", 1)
        volume = mounts[directory]
        if "configMap" in volume:
            items = volume["configMap"].get("items")
            assert file in ([i["path"] for i in items] if items else ["kubeconfig"])
        else:  # written by the generate-kubeconfig init container
            assert volume["emptyDir"] == {}
    if not parsed.wireguard.create_interface:
        sidecar = next(x for x in c.siblings() if x.name == "wireguard")
        assert sidecar.spec["command"] == ["wireguard-go"]
        socket_dir = str(wireguard_adapter.DEFAULT_SOCKET_DIR)
        assert sidecar.mounts()[socket_dir] == mounts[socket_dir]
        assert sidecar.spec["args"][-1] == parsed.wireguard.interface


@pytest.mark.parametrize("path", rendered_files(), ids=lambda p: p.name)
def test_every_volume_is_mounted_and_every_mount_has_a_volume(path: Path) -> None:
    for owner, pod in pod_specs(load_file(path)):
        volumes = {v["name"] for v in pod.get("volumes", [])}
        mounted = {
            m["name"]
            for c in [*pod.get("initContainers", []), *pod["containers"]]
            for m in c.get("volumeMounts", [])
        }
        assert mounted == volumes, f"{path.name} {owner}"


@pytest.mark.parametrize("item", ALL_CONTAINERS, ids=container_id)
def test_users_and_capabilities(item: tuple[str, Container]) -> None:
    _, c = item
    context = c.spec.get("securityContext", {})
    if c.owner == "DaemonSet/kube-router":
        # kube-router's firewall, privileged as in Kilo's manifest and kube-router's own (it
        # loads ipset and iptables modules): the one privileged container, not ours.
        assert context == {"privileged": True}
        return
    assert "privileged" not in context
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    added = context["capabilities"].get("add", [])
    if c.owner in AGENTS:
        assert context["runAsUser"] == 0
        expected = {"kilo": ["NET_ADMIN", "NET_RAW"], "wireguard": ["NET_ADMIN"]}
        assert added == expected.get(c.name, [])
    elif c.owner == "DaemonSet/nkml":
        # uid 0 reads root-owned files (the k3s agent's, the kubeconfig); only the probe that
        # creates a WireGuard link has a capability.
        assert context["runAsUser"] == 0
        assert added == (["NET_ADMIN"] if c.name == "wireguard-probe" else [])
        if c.name == "nkml":
            assert context["readOnlyRootFilesystem"] is True
    else:  # the webhook and its cert-gen Job: the image's own user
        pod = c.pod["securityContext"]
        assert (pod["runAsNonRoot"], pod["runAsUser"], pod["runAsGroup"]) == (True, 1000, 1000)
        assert added == []
        assert context["readOnlyRootFilesystem"] is True


def test_one_image_named_in_the_chart_and_versioned_with_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert VALUES["image"]["tag"] == chart["appVersion"] == chart["version"] == version
    image = IMAGE
    assert {c.spec["image"] for _, c in OUR_CONTAINERS} == {image}
    for _, c in ALL_CONTAINERS:
        if c.name in THIRD_PARTY:
            assert c.spec["image"] == THIRD_PARTY[c.name]
    # The Dockerfile's header shows the same tag for `docker build -t`.
    assert f"docker build -t {image} ." in DOCKERFILE.read_text()


def test_the_chart_ships_the_same_crds() -> None:
    assert (CHART / "crds" / "crds.yaml").read_text() == (MANIFESTS / "crds.yaml").read_text()


@pytest.mark.parametrize("path", agent_files(), ids=lambda p: p.name)
def test_every_agent_manifest_has_exactly_the_rbac_of_rbac_yaml(path: Path) -> None:
    objects = load_file(path)
    reference = load_file(MANIFESTS / "rbac.yaml")
    for kind in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding"):
        assert find(objects, kind, "kilo") == find(reference, kind), f"{path.name}: {kind}"
    agents = [
        d for d in find(objects, "DaemonSet") if f"DaemonSet/{d['metadata']['name']}" in AGENTS
    ]
    assert [d["metadata"]["name"] for d in agents] in (["kilo"], ["kilo", "kilo-userspace"])
    for agent in agents:
        assert agent["spec"]["template"]["spec"]["serviceAccountName"] == "kilo"
    # Nothing else in an agent manifest is bound to the kilo account.
    for binding in find(objects, "ClusterRoleBinding"):
        if binding["metadata"]["name"] != "kilo":
            assert all(s["name"] != "kilo" for s in binding["subjects"])
