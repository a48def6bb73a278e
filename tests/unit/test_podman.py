"""The podman command lines of kilo.sandbox.podman (tests/image runs them for real)."""

from __future__ import annotations

import json
import resource

import pytest

from kilo.sandbox import podman
from tests.manifests import MANIFESTS, containers, load_file


def test_a_container_security_context_wins_over_the_pods() -> None:
    pod = {"securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000}}
    container = {
        "securityContext": {
            "runAsUser": 0,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
            "readOnlyRootFilesystem": True,
        }
    }
    security = podman.Security.from_kubernetes(container, pod)
    assert security == podman.Security(
        user=0,
        group=1000,
        no_new_privileges=True,
        drop=("ALL",),
        add=("NET_ADMIN", "NET_RAW"),
        read_only_root=True,
    )
    assert security.flags() == [
        "--user=0:1000",
        "--security-opt=no-new-privileges",
        "--cap-drop=all",
        "--cap-add=net_admin",
        "--cap-add=net_raw",
        "--read-only",
        "--read-only-tmpfs=false",
    ]


def test_no_security_context_is_the_images_user_and_the_runtimes_defaults() -> None:
    assert podman.Security.from_kubernetes({}).flags() == []
    privileged = podman.Security.from_kubernetes({"securityContext": {"privileged": True}})
    assert privileged.flags() == ["--privileged"]


def test_the_charts_agent_gets_exactly_its_capabilities() -> None:
    kilo = next(
        c for c in containers(load_file(MANIFESTS / "kilo-kubeadm.yaml")) if c.name == "kilo"
    )
    flags = podman.Security.from_kubernetes(kilo.spec, kilo.pod).flags()
    assert flags == [
        "--user=0",
        "--security-opt=no-new-privileges",
        "--cap-drop=all",
        "--cap-add=net_admin",
        "--cap-add=net_raw",
    ]


def test_the_command_line() -> None:
    container = podman.Container(
        image="localhost/kilo:test",
        name="kilo-test-1",
        command=("/bin/sh", "-c"),
        args=("echo hi",),
        env={"CNI_CONF_NAME": "10-kilo.conflist"},
        mounts=(podman.Mount(source="/tmp/x", target="/host/opt/cni/bin"),),
        network="ns:/run/netns/kilo-test",
        security=podman.Security(user=1000),
    )
    argv = container.argv()
    assert argv[: len(podman.launcher())] == podman.launcher()
    run = argv[len(podman.launcher()) :]
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert run[:7] == [
        "podman",
        "run",
        "--rm",
        "--name=kilo-test-1",
        "--network=ns:/run/netns/kilo-test",
        "--cgroups=disabled",
        f"--ulimit=nofile={nofile}:{nofile}",
    ]
    assert run[7].startswith("--ulimit=nproc=")
    assert run[8:] == [
        "--user=1000",
        "--volume=/tmp/x:/host/opt/cni/bin:rw",
        "--env=CNI_CONF_NAME=10-kilo.conflist",
        "--entrypoint=" + json.dumps(["/bin/sh", "-c"]),
        "localhost/kilo:test",
        "echo hi",
    ]


def test_the_launcher_gives_podman_an_empty_cgroup_tree_in_a_mount_namespace_of_its_own() -> None:
    prefix = podman.launcher()
    assert prefix[:4] == ["unshare", "--mount", "--propagation", "private"]
    script = prefix[prefix.index("-c") + 1]
    assert script.startswith("mount -t tmpfs") and " /sys/fs/cgroup && " in script
    assert script.endswith('exec "$@"')


@pytest.mark.parametrize("network", ["host", "bridge", "slirp4netns", "pasta", "ns:relative"])
def test_no_network_of_podman_is_ever_used(network: str) -> None:
    container = podman.Container(image="i", name="n", network=network)
    with pytest.raises(ValueError, match="want none or ns:PATH"):
        container.argv()


@pytest.mark.parametrize("path", ["/a:b", "/a,b"])
def test_paths_podman_cannot_mount_are_refused(path: str) -> None:
    with pytest.raises(ValueError, match="cannot bind-mount"):
        podman.Mount(source=path, target="/x").flag()
