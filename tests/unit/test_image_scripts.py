"""The shell the image runs: install-cni, generate-kubeconfig (k3s), wireguard-probe and the
iptables wrapper.

The two init scripts are taken from the committed manifests (what ships), and run by dash
with a PATH holding only tools of Debian's Essential packages, which every Debian image
(debian:bookworm-slim, the image's base, included) has; a tool outside them fails the test.
Host paths are temporary directories given through the scripts' KILO_* variables.
tests/image runs the same scripts in the built image.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kilo.adapters import cni as cni_file
from kilo.adapters import kubeconfig
from kilo.mesh import ip
from kilo.sandbox.controlplane import CertificateAuthority, pem_cert
from tests.manifests import MANIFESTS, ROOT, Container, containers, load_file, one

# Essential: yes in Debian, so present in any Debian-based image.
ESSENTIAL = {
    "coreutils": ["base64", "cat", "cp", "head", "ls", "mv", "rm", "sort", "tr"],
    "grep": ["grep"],
    "sed": ["sed"],
    "dash": ["sh"],
}
WRAPPER = ROOT / "docker" / "iptables-wrapper"


@pytest.fixture(scope="module")
def essential_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    if shutil.which("dpkg-query") is not None:
        for package in ESSENTIAL:
            essential = subprocess.run(
                ["dpkg-query", "-W", "-f=${Essential}", package],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            assert essential == "yes", package
    bin_dir = tmp_path_factory.mktemp("essential-bin")
    for tools in ESSENTIAL.values():
        for tool in tools:
            found = shutil.which(tool)
            assert found is not None, tool
            (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def init_container(manifest: str, name: str) -> Container:
    return next(c for c in containers(load_file(MANIFESTS / manifest)) if c.name == name)


def run_script(
    container: Container, env: dict[str, str], path: str
) -> subprocess.CompletedProcess[str]:
    command = container.spec["command"]
    assert command[:2] == ["/bin/sh", "-c"]
    return subprocess.run(
        ["sh", "-c", command[2]],
        env={"PATH": path, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


# --- install-cni ---------------------------------------------------------------------------------

PLUGINS = ("bridge", "host-local", "loopback", "portmap")


@pytest.fixture
def host(tmp_path: Path) -> dict[str, Path]:
    dirs = {
        "plugins": tmp_path / "image-usr-lib-cni",
        "bin": tmp_path / "host-opt-cni-bin",
        "conf": tmp_path / "host-etc-cni-net.d",
    }
    for d in dirs.values():
        d.mkdir()
    for plugin in PLUGINS:
        (dirs["plugins"] / plugin).write_text(f"#!/bin/sh\n# the {plugin} plugin\n")
        (dirs["plugins"] / plugin).chmod(0o755)
    return dirs


def install_cni(host: dict[str, Path], path: str) -> subprocess.CompletedProcess[str]:
    objects = load_file(MANIFESTS / "kilo-kubeadm.yaml")
    container = init_container("kilo-kubeadm.yaml", "install-cni")
    env = container.env()
    config = one(objects, "ConfigMap", "kilo")["data"]["cni-conf.json"]
    return run_script(
        container,
        {
            "KILO_CNI_PLUGINS_DIR": str(host["plugins"]),
            "KILO_HOST_CNI_BIN_DIR": str(host["bin"]),
            "KILO_HOST_CNI_CONF_DIR": str(host["conf"]),
            "CNI_CONF_NAME": env["CNI_CONF_NAME"],
            "CNI_NETWORK_CONFIG": config,
        },
        path,
    )


def test_install_cni_installs_the_plugins_and_a_conflist_kg_can_fill(
    host: dict[str, Path], essential_path: str
) -> None:
    result = install_cni(host, essential_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    for plugin in PLUGINS:
        installed = host["bin"] / plugin
        assert installed.read_bytes() == (host["plugins"] / plugin).read_bytes()
        assert os.access(installed, os.X_OK)
    conflist = host["conf"] / "10-kilo.conflist"
    assert [p.name for p in host["conf"].iterdir()] == ["10-kilo.conflist"]
    assert json.loads(conflist.read_text())["name"] == "kilo"
    # The agent then hands out the node's pod CIDR from it.
    pod_cidr = ip.parse_network("10.244.3.0/24")
    assert cni_file.update_cni_config(conflist, pod_cidr)
    bridge = json.loads(conflist.read_text())["plugins"][0]
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.244.3.0/24"}]]
    assert bridge["mtu"] == 1420


def test_install_cni_keeps_other_configs_and_names_the_ones_that_win(
    host: dict[str, Path], essential_path: str
) -> None:
    others = {
        "05-flannel.conflist": '{"name": "cbr0"}',
        "99-multus.conf": '{"name": "multus"}',
        "README": "not a config",
    }
    for name, text in others.items():
        (host["conf"] / name).write_text(text)
    result = install_cni(host, essential_path)
    assert result.returncode == 0, result.stderr
    for name, text in others.items():
        assert (host["conf"] / name).read_text() == text
    assert "05-flannel.conflist sorts before 10-kilo.conflist" in result.stderr
    (host["conf"] / "05-flannel.conflist").unlink()
    result = install_cni(host, essential_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@pytest.fixture
def busy_plugin(host: dict[str, Path]) -> Iterator[subprocess.Popen[bytes]]:
    """The host's bridge plugin, being executed right now (cp over it: "text file busy")."""
    target = host["bin"] / "bridge"
    sleep = shutil.which("sleep")
    assert sleep is not None
    shutil.copy(sleep, target)
    process = subprocess.Popen([str(target), "60"])
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{process.pid}/exe").resolve() != target.resolve():
            assert time.monotonic() < deadline, "the plugin did not start"
            time.sleep(0.01)
        yield process
    finally:
        process.kill()
        process.wait()


def test_install_cni_replaces_a_plugin_the_runtime_is_running(
    host: dict[str, Path], busy_plugin: subprocess.Popen[bytes], essential_path: str
) -> None:
    result = install_cni(host, essential_path)
    assert result.returncode == 0, result.stderr
    assert busy_plugin.poll() is None  # it ran all along, from the replaced file
    assert (host["bin"] / "bridge").read_bytes() == (host["plugins"] / "bridge").read_bytes()
    assert not [p for p in host["bin"].iterdir() if p.name.startswith(".")]


def test_install_cni_runs_again_without_change(host: dict[str, Path], essential_path: str) -> None:
    assert install_cni(host, essential_path).returncode == 0
    before = {p.name: p.read_bytes() for p in [*host["bin"].iterdir(), *host["conf"].iterdir()]}
    assert install_cni(host, essential_path).returncode == 0
    after = {p.name: p.read_bytes() for p in [*host["bin"].iterdir(), *host["conf"].iterdir()]}
    assert after == before


def test_install_cni_fails_loudly_without_the_plugins(
    host: dict[str, Path], essential_path: str
) -> None:
    (host["plugins"] / "portmap").unlink()
    result = install_cni(host, essential_path)
    assert result.returncode != 0
    assert "portmap" in result.stderr


# --- generate-kubeconfig (k3s) -------------------------------------------------------------------

# A real certificate: kubeconfig.load builds an API client, which reads it.
CA_PEM = pem_cert(CertificateAuthority.create("k3s-test-ca").cert)


@pytest.fixture
def k3s_agent(tmp_path: Path) -> Path:
    agent = tmp_path / "var-lib-rancher-k3s-agent"
    agent.mkdir()
    (agent / "server-ca.crt").write_bytes(CA_PEM)
    return agent


def kubelet_kubeconfig(agent: Path, server: str) -> None:
    """The shape k3s writes for its kubelet."""
    (agent / "kubelet.kubeconfig").write_text(
        "apiVersion: v1\nclusters:\n- cluster:\n"
        "    certificate-authority: /var/lib/rancher/k3s/agent/server-ca.crt\n"
        f"    server: {server}\n  name: local\n"
        "contexts:\n- context:\n    cluster: local\n    user: user\n  name: Default\n"
        "current-context: Default\nkind: Config\n"
    )


def generate_kubeconfig(
    agent: Path, out: Path, token: Path, path: str, manifest: str = "kilo-k3s.yaml"
) -> subprocess.CompletedProcess[str]:
    return run_script(
        init_container(manifest, "generate-kubeconfig"),
        {
            "KILO_K3S_AGENT_DIR": str(agent),
            "KILO_KUBECONFIG_OUT": str(out),
            "KILO_TOKEN_FILE": str(token),
        },
        path,
    )


@pytest.mark.parametrize(
    "written", ["https://127.0.0.1:6444", '"https://127.0.0.1:6444"', "'https://127.0.0.1:6444'"]
)
def test_generate_kubeconfig_names_the_k3s_server_the_ca_and_the_token_file(
    k3s_agent: Path, tmp_path: Path, essential_path: str, written: str
) -> None:
    kubelet_kubeconfig(k3s_agent, written)
    token = tmp_path / "token"
    token.write_text("first-token")
    out = tmp_path / "kubeconfig"
    result = generate_kubeconfig(k3s_agent, out, token, essential_path)
    assert result.returncode == 0, result.stderr
    config = kubeconfig.load(str(out), environ={})
    assert str(config.cluster.server) == "https://127.0.0.1:6444"
    ca = yaml.safe_load(out.read_text())["clusters"][0]["cluster"]["certificate-authority-data"]
    assert base64.b64decode(ca) == CA_PEM
    # A reference to the token file, not a copy: the kubelet's rotations reach kg.
    assert config.user is not None
    assert config.user.token_file == str(token)
    assert "first-token" not in out.read_text()
    assert not (tmp_path / "kubeconfig.new").exists()


def test_generate_kubeconfig_is_the_same_script_in_every_k3s_manifest() -> None:
    scripts = {
        p.name: c.spec["command"][2]
        for p in sorted(MANIFESTS.glob("kilo-k3s*.yaml"))
        for c in containers(load_file(p))
        if c.name == "generate-kubeconfig"
    }
    assert len(scripts) == len(list(MANIFESTS.glob("kilo-k3s*.yaml")))
    assert len(set(scripts.values())) == 1


def test_generate_kubeconfig_fails_without_a_server(
    k3s_agent: Path, tmp_path: Path, essential_path: str
) -> None:
    (k3s_agent / "kubelet.kubeconfig").write_text("apiVersion: v1\nkind: Config\n")
    out = tmp_path / "kubeconfig"
    result = generate_kubeconfig(k3s_agent, out, tmp_path / "token", essential_path)
    assert result.returncode == 1
    assert "no server: line in" in result.stderr
    assert not out.exists()


# --- wireguard-probe (nkml's init container, userspace=heterogeneous) --------------------------


@pytest.mark.parametrize("kernel_has_wireguard", [True, False])
def test_wireguard_probe_creates_and_removes_a_link_and_never_fails(
    essential_path: str, tmp_path: Path, kernel_has_wireguard: bool
) -> None:
    """A stand-in ``ip`` records the calls; the real one runs in tests/e2e/test_init_scripts.py."""
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "ip.log"
    link = tmp_path / "kilo-wg-probe.link"  # the link exists while this file does
    (fake / "ip").write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {log}\n'
        'case "$*" in\n'
        '  "link add kilo-wg-probe type wireguard")\n'
        f"    [ {str(kernel_has_wireguard).lower()} = true ] || exit 2\n"
        f"    [ -e {link} ] && exit 2\n"
        f"    touch {link}; exit 0 ;;\n"
        f'  "link delete kilo-wg-probe") [ -e {link} ] || exit 1; rm {link}; exit 0 ;;\n'
        "esac\n"
        "exit 3\n"
    )
    (fake / "ip").chmod(0o755)
    if kernel_has_wireguard:
        link.write_text("left over by a probe that was killed\n")
    probe = init_container("kilo-k3s-userspace-heterogeneous.yaml", "wireguard-probe")
    result = run_script(probe, {}, f"{fake}:{essential_path}")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert not link.exists()
    calls = log.read_text().splitlines()
    if kernel_has_wireguard:
        assert calls == [
            "link delete kilo-wg-probe",
            "link add kilo-wg-probe type wireguard",
            "link delete kilo-wg-probe",
        ]
        assert "so its module is loaded" in result.stdout
    else:
        assert calls == ["link delete kilo-wg-probe", "link add kilo-wg-probe type wireguard"]
        assert "userspace WireGuard here" in result.stdout


# --- the iptables wrapper ------------------------------------------------------------------------

FAKE_BACKEND = """#!/bin/sh
name=${0##*/}
echo "$name $*" >> "$FAKE_LOG"
case "$name" in
  *-restore) cat >> "$FAKE_LOG" ;;
  *-save) case "$*" in
      *mangle*) cat "$FAKE_DATA/$name.mangle" 2>/dev/null || true ;;
      *) cat "$FAKE_DATA/$name" 2>/dev/null || true ;;
    esac ;;
esac
"""


class Wrapper:
    """docker/iptables-wrapper under its six names, over fake -legacy and -nft commands."""

    def __init__(self, root: Path, path: str) -> None:
        self.bin = root / "bin"
        self.xtables = root / "sbin"
        self.data = root / "data"
        self.log = root / "log"
        self.cache = root / "run" / "kilo-iptables-mode"
        self.path = path
        for d in (self.bin, self.xtables, self.data, self.cache.parent):
            d.mkdir()
        for family in ("iptables", "ip6tables"):
            for mode in ("legacy", "nft"):
                for suffix in ("", "-save", "-restore"):
                    fake = self.xtables / f"{family}-{mode}{suffix}"
                    fake.write_text(FAKE_BACKEND)
                    fake.chmod(0o755)
            for suffix in ("", "-save", "-restore"):
                (self.bin / f"{family}{suffix}").symlink_to(WRAPPER)

    def rules(self, command: str, text: str) -> None:
        (self.data / command).write_text(text)

    def run(
        self, name: str, *args: str, stdin: str = "", **env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / name), *args],
            input=stdin,
            env={
                "PATH": self.path,
                "KILO_XTABLES_DIR": str(self.xtables),
                "KILO_IPTABLES_MODE_FILE": str(self.cache),
                "FAKE_LOG": str(self.log),
                "FAKE_DATA": str(self.data),
                **env,
            },
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )


@pytest.fixture
def wrapper(tmp_path: Path, essential_path: str) -> Wrapper:
    return Wrapper(tmp_path, essential_path)


HINT = ":KUBE-IPTABLES-HINT - [0:0]\n"
CANARY = ":KUBE-KUBELET-CANARY - [0:0]\n"


def rules(n: int) -> str:
    return "*filter\n" + "".join(f"-A INPUT -s 192.0.2.{i}/32 -j ACCEPT\n" for i in range(n))


def test_the_kubelets_marker_chains_decide_first(wrapper: Wrapper) -> None:
    wrapper.rules("iptables-nft-save.mangle", "*mangle\n" + HINT)
    wrapper.rules("iptables-legacy-save", rules(50))  # more rules, but no marker
    result = wrapper.run("iptables-save", "-t", "nat")
    assert result.returncode == 0, result.stderr
    assert wrapper.log.read_text().splitlines()[-1] == "iptables-nft-save -t nat"
    assert wrapper.cache.read_text() == "nft\n"


def test_a_legacy_kubelet_marker_means_legacy(wrapper: Wrapper) -> None:
    wrapper.rules("iptables-legacy-save.mangle", "*mangle\n" + CANARY)
    wrapper.rules("iptables-nft-save", rules(5))
    wrapper.run("ip6tables-restore", "--noflush", stdin="*filter\nCOMMIT\n")
    assert wrapper.log.read_text().splitlines()[-3:] == [
        "ip6tables-legacy-restore --noflush",
        "*filter",
        "COMMIT",
    ]


@pytest.mark.parametrize(
    ("legacy", "nft", "chosen"),
    [(3, 1, "legacy"), (1, 3, "nft"), (2, 2, "nft"), (0, 0, "nft")],
)
def test_without_markers_the_backend_with_more_rules_wins(
    wrapper: Wrapper, legacy: int, nft: int, chosen: str
) -> None:
    # IPv4 and IPv6 rules count together.
    wrapper.rules("iptables-legacy-save", rules(legacy // 2))
    wrapper.rules("ip6tables-legacy-save", rules(legacy - legacy // 2))
    wrapper.rules("iptables-nft-save", rules(nft))
    result = wrapper.run("iptables", "-S", "FORWARD")
    assert result.returncode == 0, result.stderr
    assert wrapper.log.read_text().splitlines()[-1] == f"iptables-{chosen} -S FORWARD"


def test_the_choice_is_kept_for_the_containers_lifetime(wrapper: Wrapper) -> None:
    wrapper.rules("iptables-legacy-save", rules(3))
    wrapper.run("iptables-save")
    wrapper.rules("iptables-nft-save", rules(30))
    wrapper.log.unlink()
    wrapper.run("iptables-save")
    # No detection the second time: the one call is the real one.
    assert wrapper.log.read_text().splitlines() == ["iptables-legacy-save "]


def test_the_mode_can_be_forced(wrapper: Wrapper) -> None:
    wrapper.rules("iptables-nft-save.mangle", "*mangle\n" + HINT)
    wrapper.run("iptables-save", KILO_IPTABLES_MODE="legacy")
    assert wrapper.log.read_text().splitlines() == ["iptables-legacy-save "]
    assert not wrapper.cache.exists()
    bad = wrapper.run("iptables-save", KILO_IPTABLES_MODE="both")
    assert bad.returncode == 2
    assert "must be legacy or nft, not 'both'" in bad.stderr


def test_an_unwritable_cache_only_costs_a_detection_per_call(wrapper: Wrapper) -> None:
    result = wrapper.run("iptables-save", KILO_IPTABLES_MODE_FILE="/nonexistent/dir/mode")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert wrapper.log.read_text().splitlines()[-1] == "iptables-nft-save "


def test_the_wrapper_refuses_other_names(wrapper: Wrapper, tmp_path: Path) -> None:
    other = wrapper.bin / "ebtables"
    other.symlink_to(WRAPPER)
    result = wrapper.run("ebtables", "-L")
    assert result.returncode == 2
    assert "not ebtables" in result.stderr
