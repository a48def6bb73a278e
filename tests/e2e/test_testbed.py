"""The testbed's underlay, without the agent: what the agent's e2e tests stand on.

Two public clouds and a NATed office, a control plane reachable from the nodes and from
the test process, a private wireguard-go per node, real CNI plugins, and a teardown that
leaves nothing behind.
"""

from __future__ import annotations

import ipaddress
import json
import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from lightkube.resources.core_v1 import Node

from kilo.sandbox import kubelet, runs, testbed
from kilo.sandbox.runs import CommandError, TestbedError
from kilo.sandbox.testbed import Location, Testbed

ROOT = Path(__file__).resolve().parents[2]

KEEPALIVE = "kilo.squat.ai/persistent-keepalive"
LOCATIONS = [
    Location("aws", nodes=2),
    Location("gcp", nodes=2),
    Location("office", nodes=2, nat=True, annotations={KEEPALIVE: "10"}),
]


@pytest.fixture(scope="module")
def bed(controlplane_binaries: Path) -> Iterator[Testbed]:
    runs.cleanup_stale()
    with Testbed(LOCATIONS, binaries=controlplane_binaries) as built:
        yield built


def test_lan_neighbours_ping_each_other(bed: Testbed) -> None:
    for location in ("aws", "gcp", "office"):
        neighbour = bed.nodes[f"{location}-2"].lan_ip
        assert neighbour is not None
        assert bed.ping(f"{location}-1", neighbour), location


def test_public_nodes_ping_each_other_over_the_internet(bed: Testbed) -> None:
    for src, dst in (("aws-1", "gcp-2"), ("gcp-1", "aws-2")):
        wan = bed.nodes[dst].wan_ip
        assert wan is not None
        assert bed.ping(src, wan), (src, dst)
    # LANs of other locations are private: the internet router has no route to them.
    assert not bed.ping("aws-1", str(bed.nodes["gcp-1"].lan_ip))


def test_nat_nodes_reach_public_nodes_masqueraded(bed: Testbed) -> None:
    assert bed.nodes["office-1"].wan_ip is None
    echo = bed.tcp_exchange("office-1", "aws-1", str(bed.nodes["aws-1"].wan_ip), 8080)
    assert echo == testbed.Echo(reply="hello", peer=bed.gateways["office"])


def test_public_nodes_cannot_reach_nat_nodes(bed: Testbed) -> None:
    private = str(bed.nodes["office-1"].lan_ip)
    assert not bed.ping("aws-1", private)
    with pytest.raises(CommandError):
        bed.tcp_exchange("aws-1", "office-1", private, 8081, timeout=1)


def test_the_api_server_is_reachable_from_nodes_and_the_test_process(bed: Testbed) -> None:
    for node in ("aws-1", "office-2"):
        assert bed.can_connect(node, testbed.CP_WAN, bed.api_port), node
    listed = {str(n.metadata.name): n for n in bed.api().list(Node) if n.metadata}
    assert sorted(listed) == sorted(bed.nodes)
    cidrs = set()
    for name, obj in listed.items():
        assert obj.metadata is not None and obj.spec is not None and obj.status is not None
        # As a kubelet registers it: its labels, annotations and status besides Kilo's.
        assert obj.metadata.labels == {
            **kubelet.node(name, internal_ip="192.0.2.1")["metadata"]["labels"],
            testbed.TOPOLOGY_LABEL: name.split("-")[0],
        }
        assert obj.spec.podCIDR == bed.nodes[name].pod_cidr
        addresses = {a.type: a.address for a in obj.status.addresses or []}
        assert addresses["InternalIP"] == bed.nodes[name].lan_ip
        assert addresses.get("ExternalIP") == bed.nodes[name].wan_ip
        assert addresses["Hostname"] == name
        ready = [c for c in obj.status.conditions or [] if c.type == "Ready"]
        assert [c.status for c in ready] == ["True"]
        assert len(obj.status.images or []) == len(kubelet.IMAGES)
        cidrs.add(obj.spec.podCIDR)
    assert len(cidrs) == len(listed)
    assert bed.node_annotations("office-1") == {**kubelet.KUBELET_ANNOTATIONS, KEEPALIVE: "10"}
    assert bed.node_annotations("aws-1") == kubelet.KUBELET_ANNOTATIONS


def test_the_node_kubeconfig_points_at_the_internet_address(bed: Testbed) -> None:
    text = bed.node_kubeconfig.read_text()
    assert f"server: https://{testbed.CP_WAN}:{bed.api_port}" in text
    assert "token:" in text


def test_the_test_process_reaches_nothing_but_the_api_server(bed: Testbed) -> None:
    # The host link is a /30; the control plane namespace forwards nothing.
    assert bed.run("cp", "sysctl", "-n", "net.ipv4.ip_forward").strip() == "0"
    routes = json.loads(bed.run("cp", "ip", "-j", "route"))
    host_link = ipaddress.ip_interface(f"{bed.host_ip}/30").network
    assert {r["dst"] for r in routes} == {"203.0.113.0/24", str(host_link)}


def test_wireguard_go_sockets_live_in_the_node_mount_namespaces(bed: Testbed) -> None:
    for name in bed.nodes:
        sock = bed.path(name, "/var/run/wireguard/kilo0.sock")
        assert stat.S_ISSOCK(sock.stat().st_mode), name
        assert bed.run(name, "ls", "/var/run/wireguard").split() == ["kilo0.sock"]
        assert bed.wg_dump(name).split("\t")[2] != "0"  # a listen port
    assert not Path("/var/run/wireguard/kilo0.sock").exists()


def test_hostnames_resolve_to_lan_addresses_inside_the_nodes(bed: Testbed) -> None:
    out = bed.run("gcp-1", "getent", "hosts", "office-2")
    assert out.split() == [str(bed.nodes["office-2"].lan_ip), "office-2"]


def test_nodes_start_with_kilos_cni_template(bed: Testbed) -> None:
    assert bed.cni_config("gcp-2") == testbed.KILO_CNI_TEMPLATE
    assert bed.cni_ranges("gcp-2") == []


def test_a_pod_gets_an_address_from_its_node_pod_cidr(bed: Testbed) -> None:
    node = bed.nodes["aws-2"]
    config = json.loads(json.dumps(testbed.KILO_CNI_TEMPLATE))
    config["plugins"][0]["ipam"]["ranges"] = [[{"subnet": node.pod_cidr}]]
    bed.write_cni_config(node.name, config)
    pod = bed.add_pod(node.name, "pod1")
    assert node.pod_cidr is not None
    cidr = ipaddress.ip_network(node.pod_cidr)
    assert ipaddress.ip_address(pod.ip) in cidr
    assert pod.gateway == str(cidr[1])
    assert bed.ping("pod1", pod.gateway)
    bed.remove_pod("pod1")
    assert "pod1" not in bed.pods
    assert pod.netns not in runs.list_namespaces()


def test_add_pod_waits_for_the_agent_to_fill_in_the_ranges(bed: Testbed) -> None:
    with pytest.raises(AssertionError, match=r"gcp-1: .* has no IPAM ranges"):
        bed.add_pod("gcp-1", "never", timeout=0.3)
    assert "never" not in bed.pods


def test_wait_for_reports_the_message_and_the_last_value() -> None:
    values = iter(range(1000))
    with pytest.raises(AssertionError, match=r"still odd \(after 0.1 s; last value: False\)"):
        runs.wait_for(lambda: next(values) < 0, timeout=0.1, message="still odd")

    def broken() -> bool:
        raise ValueError("not yet")

    with pytest.raises(AssertionError, match=r"last value: ValueError\('not yet'\)"):
        runs.wait_for(broken, timeout=0.1, message="broken", ignoring=(ValueError,))
    assert runs.wait_for(lambda: 7, timeout=0, message="unused") == 7


def processes_in(namespaces: list[str]) -> list[int]:
    pids = []
    for netns in namespaces:
        out = subprocess.run(
            ["ip", "netns", "pids", netns], capture_output=True, text=True, check=True
        )
        pids += [int(p) for p in out.stdout.split()]
    return pids


def test_agent_hooks_run_the_agent_inside_the_node(bed: Testbed) -> None:
    """With a stand-in for kg: the real one is not this test's subject."""
    env = {"PYTHONPATH": str(ROOT)}
    bed.start_agent("gcp-1", "--extra=1", env=env, module="tests.e2e.fake_agent")
    line = runs.wait_for(
        lambda: [x for x in bed.agent_log("gcp-1").splitlines() if x.startswith("{")],
        timeout=10,
        message="the stand-in agent wrote nothing",
    )
    seen = json.loads(line[0])
    assert seen["argv"][0] == "--hostname=gcp-1"
    assert f"--kubeconfig={bed.node_kubeconfig}" in seen["argv"]
    assert f"--listen={bed.nodes['gcp-1'].lan_ip}:1107" in seen["argv"]
    assert seen["argv"][-1] == "--extra=1"
    assert seen["wireguard"] == ["kilo0.sock"]
    assert {"lan0", "wan0", "kilo0"} <= set(seen["links"])
    with pytest.raises(TestbedError, match="already running"):
        bed.start_agent("gcp-1", env=env, module="tests.e2e.fake_agent")
    assert bed.stop_agent("gcp-1") == 7
    bed.start_agent("gcp-2", env=env, module="tests.e2e.fake_agent")
    assert bed.kill_agent("gcp-2") == -9


CRASHING_RUN = """
import sys, time
from pathlib import Path
from kilo.sandbox.testbed import Location, Testbed
bed = Testbed([Location("aws", nodes=1)], binaries=Path(sys.argv[1])).start()
print(bed.prefix, flush=True)
time.sleep(600)
"""


def test_cleanup_stale_removes_a_crashed_run_and_spares_live_ones(
    bed: Testbed, controlplane_binaries: Path
) -> None:
    crashed = subprocess.Popen(
        [sys.executable, "-c", CRASHING_RUN, str(controlplane_binaries)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert crashed.stdout is not None
        prefix = crashed.stdout.readline().strip()
        assert prefix.startswith(runs.FAMILY), prefix
    finally:
        crashed.kill()
        crashed.wait()
        if crashed.stdout is not None:
            crashed.stdout.close()
    left = [n for n in runs.list_namespaces() if n.startswith(f"{prefix}-")]
    pids = processes_in(left)
    assert len(pids) >= 3  # wireguard-go, etcd, kube-apiserver outlive their owner
    assert prefix in runs.cleanup_stale()
    assert not [n for n in runs.list_namespaces() if n.startswith(prefix)]
    assert not [p for p in pids if runs.alive(p)]
    assert not runs.link_exists(f"{prefix}h")
    assert not (Path(tempfile.gettempdir()) / f"kilo-e2e-{prefix}").exists()
    # The module's testbed is alive: untouched.
    assert bed.prefix not in runs.cleanup_stale()
    assert bed.ping("aws-1", str(bed.nodes["aws-2"].lan_ip))


def test_close_removes_everything(bed: Testbed) -> None:
    laptop = bed.add_laptop("laptop")
    assert bed.ping("laptop", str(bed.nodes["gcp-1"].wan_ip))
    node = bed.nodes["office-2"]
    config = json.loads(json.dumps(testbed.KILO_CNI_TEMPLATE))
    config["plugins"][0]["ipam"]["ranges"] = [[{"subnet": node.pod_cidr}]]
    bed.write_cni_config(node.name, config)
    bed.add_pod(node.name, "left-behind")  # close() runs CNI DEL for it
    ours = [n for n in runs.list_namespaces() if n.startswith(f"{bed.prefix}-")]
    pids = processes_in(ours)
    assert laptop.pid in pids and bed.nodes["aws-1"].pid in pids
    assert bed.plane is not None and bed.plane.apiserver is not None
    assert bed.plane.apiserver.pid in pids
    bed.close()
    assert not bed.pods
    assert not [n for n in runs.list_namespaces() if n.startswith(bed.prefix)]
    assert not [p for p in pids if runs.alive(p)]
    assert not runs.link_exists(bed.host_link)
    assert not bed.workdir.exists() or os.environ.get(runs.KEEP_ENV)
    bed.close()  # idempotent


def test_a_failed_start_leaves_nothing(tmp_path: Path) -> None:
    bed = Testbed([Location("aws", nodes=1)], binaries=tmp_path / "missing")
    with pytest.raises(TestbedError, match="control plane"):
        bed.start()
    assert not [n for n in runs.list_namespaces() if n.startswith(bed.prefix)]
    assert not runs.link_exists(bed.host_link)


def test_a_scratch_namespace_goes_with_what_runs_in_it_also_when_the_body_fails() -> None:
    """The one home of the tests' and benchmarks' throwaway namespaces: a process left in
    one (a wireguard-go whose test failed) is killed, where ``ip netns del`` alone would
    leave it running in a namespace without a name."""
    sleeper: subprocess.Popen[bytes] | None = None
    with (
        pytest.raises(RuntimeError, match="the body failed"),
        runs.scratch_namespace("kilo-test", loopback=True) as netns,
    ):
        assert netns in runs.list_namespaces()
        link = runs.run(["ip", "-n", netns, "-j", "link", "show", "lo"]).stdout
        assert "UP" in json.loads(link)[0]["flags"]
        sleeper = subprocess.Popen(["ip", "netns", "exec", netns, "sleep", "600"])

        def pids() -> str:
            return runs.run(["ip", "netns", "pids", netns]).stdout.strip()

        runs.wait_for(
            pids,
            timeout=10,
            message="the sleeper did not start in the namespace",
        )
        raise RuntimeError("the body failed")
    assert netns not in runs.list_namespaces()
    assert sleeper is not None
    assert sleeper.wait(10) == -9  # killed, not finished
