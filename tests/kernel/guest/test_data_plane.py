"""Kilo's default data plane on a real kernel: kernel WireGuard and IPIP, end to end.

Runs inside the virtual machine of ``tests/kernel/test_vm.py`` (Debian's kernel, which has
the ``wireguard`` and ``ipip`` modules), on the testbed of the e2e tests with its control
plane on the VM's host. Every node runs ``kg`` with Kilo's defaults (kernel WireGuard that
``kg`` creates, ``--encapsulate=always``, ``--mtu=auto``) except where a test says:

* ``aws``: two nodes, the defaults (IPIP inside the location);
* ``gcp``: one node with ``wireguard-go`` (``--create-interface=false``): a mixed mesh;
* ``dc``: three nodes on two subnets of one LAN with ``--encapsulate=crosssubnet``;
  ``dc-3`` has no pod and ``--clean-up-interface=true``: its namespace is compared before
  its agent starts and after it stops.

The tests share one testbed and run in file order; the compatibility modes (flannel,
cilium) and the clean-up come last, because they restart agents.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kilo.adapters.kubernetes import RESOURCES
from kilo.mesh import translate
from kilo.sandbox import runs, testbed
from kilo.sandbox.testbed import Location, Testbed
from tests.testbed_harness import pod_ips, reachable, wg_peers

LOCATIONS = [
    Location("aws", nodes=2, wireguard="kernel"),
    Location("gcp", nodes=1, wireguard="userspace"),
    Location("dc", nodes=3, wireguard="kernel", subnets=2),
]
LEADERS = {"aws": "aws-1", "gcp": "gcp-1", "dc": "dc-1"}
# Every node but dc-3 has a pod (the bridge CNI plugin turns on forwarding, as on a node).
PODS = ("aws-1", "aws-2", "gcp-1", "dc-1", "dc-2")
BARE = "dc-3"  # same subnet as its leader dc-1; dc-2 is on the other one
# The underlay MTUs of aws-1, set before its agent starts: --mtu=auto follows them.
AWS1_WAN_MTU = 1400
AWS1_LAN_MTU = 1450
HEALTHY = "the mesh is applied; the agent is healthy"
CONVERGE = 300.0  # everything is slower under emulation, the more so on a busy host
STOP = 120.0  # the agent's clean-up too
# Kilo's default resync and log level: each apply costs CPU, which emulation has little of.
RESYNC = "--resync-period=30s"
INFO = "--log-level=info"
Peer = RESOURCES["peers"]


def agent_args(node: str) -> list[str]:
    if node.startswith("dc-"):
        args = ["--encapsulate=crosssubnet"]
        return [*args, "--clean-up-interface=true"] if node == BARE else args
    return []


def wait_for(predicate: Any, message: str, timeout: float = CONVERGE) -> Any:
    return runs.wait_for(predicate, timeout=timeout, message=message, interval=0.5)


def stop(bed: Testbed, node: str) -> int:
    return bed.stop_agent(node, timeout=STOP)


def healthy(bed: Testbed, node: str) -> bool:
    process = bed.agent(node)
    if process is None or process.poll() is not None:
        raise AssertionError(f"the agent of {node} is not running:\n{bed.agent_log(node)[-3000:]}")
    return HEALTHY in bed.agent_log(node).split("\n--- ")[-1]


def wait_healthy(bed: Testbed, nodes: Iterable[str]) -> None:
    for node in nodes:
        try:
            wait_for(lambda node=node: healthy(bed, node), f"{node} is not healthy")
        except AssertionError as exc:
            exc.add_note(bed.agent_log(node).split("\n--- ")[-1][-4000:])
            raise


def link(bed: Testbed, node: str, name: str) -> dict[str, Any]:
    """``ip -d -s -j link show`` of one link."""
    entries: list[dict[str, Any]] = json.loads(
        bed.run(node, "ip", "-d", "-s", "-j", "link", "show", "dev", name)
    )
    return entries[0]


def packets(bed: Testbed, node: str, name: str) -> tuple[int, int]:
    """(rx, tx) packets of a link."""
    stats = link(bed, node, name)["stats64"]
    return int(stats["rx"]["packets"]), int(stats["tx"]["packets"])


def ipip_accepted(bed: Testbed, node: str) -> dict[str, int]:
    """Packets accepted by each of Kilo's ``KILO-IPIP`` rules of ``node``, by source."""
    counts = {}
    for line in bed.run(node, "iptables-save", "-c", "-t", "filter").splitlines():
        match = re.match(r"\[(\d+):\d+\] -A KILO-IPIP -s (\S+) .*-j ACCEPT", line)
        if match:
            counts[match.group(2)] = int(match.group(1))
    return counts


def pings(bed: Testbed, src: str, ip: str, count: int = 5) -> None:
    out = bed.run(src, "ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "2", ip)
    assert f"{count} received" in out, out


def modules_loaded() -> set[str]:
    return {m for m in ("wireguard", "ipip") if Path(f"/sys/module/{m}").exists()}


@pytest.fixture(scope="module")
def bed(share: Path) -> Iterator[Testbed]:
    runs.cleanup_stale()
    with (
        Testbed(LOCATIONS, attached_plane=share / "plane", encapsulate=None) as built,
        built.agent_logs_on_failure(tail=6000),
    ):
        built.modules_before = modules_loaded()  # type: ignore[attr-defined]
        built.run("aws-1", "ip", "link", "set", "wan0", "mtu", str(AWS1_WAN_MTU))
        built.run("aws-1", "ip", "link", "set", "lan0", "mtu", str(AWS1_LAN_MTU))
        for node in built.nodes:
            if node != BARE:
                built.start_agent(node, RESYNC, INFO, *agent_args(node))
        # Once the agents have made the kernel load its modules, the fallback tunl0
        # that ipip creates in every namespace is part of what dc-3's agent finds.
        wait_for(lambda: modules_loaded() == {"wireguard", "ipip"}, "no modules loaded")
        built.before = built.snapshot(BARE)  # type: ignore[attr-defined]
        built.before_ip6tables = ip6tables(built, BARE)  # type: ignore[attr-defined]
        built.start_agent(BARE, RESYNC, INFO, *agent_args(BARE))
        wait_healthy(built, built.nodes)
        for node in PODS:
            built.add_pod(node, f"pod-{node}", timeout=CONVERGE)
        yield built


def test_kg_creates_kernel_wireguard_and_the_kernel_loads_its_modules(bed: Testbed) -> None:
    assert bed.modules_before == set()  # type: ignore[attr-defined]
    assert modules_loaded() == {"wireguard", "ipip"}  # loaded by the kernel for kg's links
    for name, node in bed.nodes.items():
        kind = link(bed, name, testbed.WG_INTERFACE).get("linkinfo", {}).get("info_kind")
        if node.userspace:
            assert kind == "tun", name  # wireguard-go's TUN device
        else:
            assert kind == "wireguard", name
            # No wireguard-go anywhere near it: the holder is a sleep.
            assert Path(f"/proc/{node.pid}/comm").read_text().strip() == "sleep"
    # The kernel's netlink interface answers wg(8) for the kernel leaders.
    for leader in ("aws-1", "dc-1"):
        assert len(wg_peers(bed, leader)) == 2, leader


def test_every_pod_reaches_every_pod_through_kernel_and_userspace_wireguard(bed: Testbed) -> None:
    ips = pod_ips(bed)
    for src, (dst, ip) in itertools.permutations(ips.items(), 2):
        wait_for(
            lambda src=src, ip=ip: reachable(bed, bed.pods[src[0]].netns, ip, timeout=2),
            f"{src[0]} does not reach {dst}",
            timeout=60,
        )
    # The kernel leader aws-1 and the wireguard-go leader gcp-1 have a live session.
    gcp_key = bed.node_annotations("gcp-1")[translate.KEY]
    aws_key = bed.node_annotations("aws-1")[translate.KEY]
    assert int(wg_peers(bed, "aws-1")[gcp_key][4]) > 0  # latest handshake
    assert int(wg_peers(bed, "gcp-1")[aws_key][5]) > 0  # bytes received from the kernel


def test_ipip_always_carries_a_non_leaders_pod_traffic_through_tunl0(bed: Testbed) -> None:
    aws1, aws2 = bed.nodes["aws-1"], bed.nodes["aws-2"]
    route = bed.run("aws-2", "ip", "route", "show", str(bed.nodes["gcp-1"].pod_cidr))
    assert f"via {aws1.lan_ip} dev tunl0" in route, route
    tunnel = link(bed, "aws-2", "tunl0")
    assert tunnel["linkinfo"]["info_kind"] == "ipip" and "UP" in tunnel["flags"]
    before = packets(bed, "aws-2", "tunl0"), packets(bed, "aws-1", "tunl0")
    accepted = ipip_accepted(bed, "aws-1")[f"{aws2.lan_ip}/32"]
    source = bed.pods["pod-aws-2"].netns
    pings(bed, source, bed.pods["pod-gcp-1"].ip)  # to another location, via the leader
    pings(bed, source, bed.pods["pod-aws-1"].ip)  # to the leader's pod
    after = packets(bed, "aws-2", "tunl0"), packets(bed, "aws-1", "tunl0")
    # Requests and replies, both ways: encapsulated on aws-2, decapsulated on aws-1.
    for node, (old, new) in zip(("aws-2", "aws-1"), zip(before, after, strict=True), strict=True):
        assert new[0] - old[0] >= 10 and new[1] - old[1] >= 10, (node, old, new)
    # And the IPIP packets (protocol 4) from aws-2's private IP passed Kilo's own filter.
    assert ipip_accepted(bed, "aws-1")[f"{aws2.lan_ip}/32"] - accepted >= 10


def test_crosssubnet_encapsulates_only_across_subnets(bed: Testbed) -> None:
    dc1, dc2, dc3 = (bed.nodes[f"dc-{i}"] for i in (1, 2, 3))
    assert ipaddress.ip_address(str(dc2.lan_ip)) not in ipaddress.ip_network(
        f"{dc1.lan_ip}/25", False
    )
    target = bed.pods["pod-aws-1"].ip
    aws_cidr = str(bed.nodes["aws-1"].pod_cidr)
    assert f"via {dc1.lan_ip} dev tunl0" in bed.run("dc-2", "ip", "route", "show", aws_cidr)
    assert f"via {dc1.lan_ip} dev lan0" in bed.run("dc-3", "ip", "route", "show", aws_cidr)
    before = ipip_accepted(bed, "dc-1")
    dc2_tunnel, dc3_tunnel = packets(bed, "dc-2", "tunl0"), packets(bed, "dc-3", "tunl0")
    pings(bed, bed.pods["pod-dc-2"].netns, target)
    pings(bed, "dc-3", target)
    after = ipip_accepted(bed, "dc-1")
    assert after[f"{dc2.lan_ip}/32"] - before[f"{dc2.lan_ip}/32"] >= 5
    assert after[f"{dc3.lan_ip}/32"] == before[f"{dc3.lan_ip}/32"]
    rx, tx = packets(bed, "dc-2", "tunl0")
    assert rx - dc2_tunnel[0] >= 5 and tx - dc2_tunnel[1] >= 5
    assert packets(bed, "dc-3", "tunl0") == dc3_tunnel


def mtu(bed: Testbed, node: str, name: str) -> int:
    return int(link(bed, node, name)["mtu"])


def test_mtu_auto_follows_the_underlay(bed: Testbed) -> None:
    assert mtu(bed, "aws-1", "kilo0") == AWS1_WAN_MTU - 80
    assert mtu(bed, "aws-1", "tunl0") == AWS1_LAN_MTU - 20
    for node in ("aws-2", "gcp-1", "dc-1", "dc-2"):
        assert mtu(bed, node, "kilo0") == 1500 - 80, node
    assert mtu(bed, "aws-2", "tunl0") == 1500 - 20
    # The largest packet kilo0 takes crosses the mesh, with its WireGuard header, through
    # aws-1's 1400-byte underlay; one byte more is refused by kilo0 itself.
    target = bed.pods["pod-gcp-1"].ip
    payload = AWS1_WAN_MTU - 80 - 28
    bed.run("aws-1", "ping", "-n", "-q", "-c", "2", "-M", "do", "-s", str(payload), target)
    too_big = runs.run(
        [*bed.enter("aws-1"), "ping", "-n", "-c", "1", "-M", "do", "-s", str(payload + 1), target],
        check=False,
    )
    assert f"message too long, mtu={AWS1_WAN_MTU - 80}" in too_big.stderr, too_big
    # A smaller underlay is picked up at the next resync.
    bed.run("aws-1", "ip", "link", "set", "wan0", "mtu", str(AWS1_WAN_MTU - 20))
    wait_for(lambda: mtu(bed, "aws-1", "kilo0") == AWS1_WAN_MTU - 100, "kilo0 kept its MTU")


def test_a_new_peer_leaves_the_kernel_leaders_sessions_untouched(bed: Testbed) -> None:
    """Diff-only updates on kernel devices: Kilo replaces every peer on any change, which
    resets every session (handshake 0, counters 0)."""
    leaders = ("aws-1", "dc-1")
    before = {leader: wg_peers(bed, leader) for leader in leaders}
    for leader, peers in before.items():
        assert len(peers) == 2 and all(int(p[4]) > 0 for p in peers.values()), (leader, peers)
    private = bed.run("dc-3", "wg", "genkey").strip()
    public = bed.run("dc-3", "wg", "pubkey", stdin=private).strip()
    peer = testbed.from_dict(
        Peer,
        {
            "apiVersion": "kilo.squat.ai/v1alpha1",
            "kind": "Peer",
            "metadata": {"name": "laptop"},
            "spec": {"allowedIPs": ["10.5.0.1/32"], "publicKey": public},
        },
    )
    bed.api().create(peer)
    wait_for(
        lambda: all(public in wg_peers(bed, leader) for leader in leaders),
        "the kernel leaders did not add the new peer",
        timeout=60,
    )
    for leader in leaders:
        after = wg_peers(bed, leader)
        for key, fields in before[leader].items():
            # Not removed and re-added: the handshake and the counters carry on.
            assert int(after[key][4]) >= int(fields[4]) > 0, (leader, key)
            assert int(after[key][5]) >= int(fields[5]), (leader, key)
            assert int(after[key][6]) >= int(fields[6]), (leader, key)
    bed.api().delete(Peer, "laptop")
    wait_for(
        lambda: not any(public in wg_peers(bed, leader) for leader in leaders),
        "the kernel leaders kept the deleted peer",
        timeout=60,
    )
    for leader in leaders:
        after = wg_peers(bed, leader)
        assert set(after) == set(before[leader])
        for key, fields in before[leader].items():
            assert int(after[key][4]) >= int(fields[4]), (leader, key)


def network(cidr: str | None) -> str:
    return str(ipaddress.ip_network(str(cidr)).network_address)


def emulate_flannel(bed: Testbed, nodes: tuple[str, ...]) -> None:
    """What flannel's VXLAN backend sets up for the nodes of one location: ``flannel.1``
    with the pod CIDR's network address, and for every other node a neighbour entry (its
    VTEP MAC), a forwarding entry (its private IP) and a route for its pod CIDR."""
    macs = {}
    for node in nodes:
        machine = bed.nodes[node]
        vxlan_mtu = mtu(bed, node, "lan0") - 50
        bed.run(
            node,
            *("ip", "link", "add", "flannel.1", "type", "vxlan", "id", "1"),
            *("local", str(machine.lan_ip), "dev", "lan0", "dstport", "8472", "nolearning"),
        )
        bed.run(node, "ip", "link", "set", "flannel.1", "mtu", str(vxlan_mtu), "up")
        bed.run(node, "ip", "addr", "add", f"{network(machine.pod_cidr)}/32", "dev", "flannel.1")
        macs[node] = link(bed, node, "flannel.1")["address"]
    for node, other in itertools.permutations(nodes, 2):
        peer = bed.nodes[other]
        gateway = network(peer.pod_cidr)
        bed.run(node, "ip", "neigh", "replace", gateway, "lladdr", macs[other], "dev", "flannel.1")
        bed.run(
            node,
            "bridge",
            "fdb",
            "append",
            macs[other],
            "dev",
            "flannel.1",
            "dst",
            str(peer.lan_ip),
        )
        bed.run(
            node,
            *("ip", "route", "replace", str(peer.pod_cidr), "via", gateway),
            *("dev", "flannel.1", "onlink"),
        )


AWS = ("aws-1", "aws-2")


def test_flannel_compatibility_through_a_real_vxlan_device(bed: Testbed) -> None:
    """Kilo over flannel (``--compatibility=flannel --local=false --cni=false``): inside a
    location flannel's ``flannel.1`` carries the traffic to and from the leader."""
    for node in AWS:
        assert stop(bed, node) == 0
    emulate_flannel(bed, AWS)
    for node in AWS:
        bed.start_agent(
            node, RESYNC, INFO, "--compatibility=flannel", "--local=false", "--cni=false"
        )
    wait_healthy(bed, AWS)
    aws1 = bed.nodes["aws-1"]
    # Once both agents see each other ready again (a restarted node is briefly not ready).
    wait_for(
        lambda: (
            f"via {network(aws1.pod_cidr)} dev flannel.1"
            in bed.run("aws-2", "ip", "route", "show", str(bed.nodes["gcp-1"].pod_cidr))
        ),
        "aws-2 does not route to gcp-1's pods through flannel.1",
    )
    wait_for(
        lambda: (
            f"to {bed.nodes['aws-2'].lan_ip} iif kilo0 lookup 1107"
            in bed.run("aws-1", "ip", "rule", "show", "table", "1107")
        ),
        "aws-1 has no table-1107 rule for aws-2",
    )
    before = packets(bed, "aws-2", "flannel.1"), packets(bed, "aws-1", "flannel.1")
    source = bed.pods["pod-aws-2"].netns
    wait_for(
        lambda: reachable(bed, source, bed.pods["pod-gcp-1"].ip, timeout=2),
        "pod-aws-2 does not reach pod-gcp-1 through flannel.1",
        timeout=60,
    )
    pings(bed, source, bed.pods["pod-gcp-1"].ip)
    pings(bed, source, bed.pods["pod-dc-2"].ip)
    after = packets(bed, "aws-2", "flannel.1"), packets(bed, "aws-1", "flannel.1")
    for node, (old, new) in zip(AWS[::-1], zip(before, after, strict=True), strict=True):
        assert new[0] - old[0] >= 10 and new[1] - old[1] >= 10, (node, old, new)
    # flannel.1 is flannel's: the clean-up leaves it (and flannel's routes) alone.
    for node in AWS:
        assert stop(bed, node) == 0
        device = link(bed, node, "flannel.1")
        assert "UP" in device["flags"], node
        gateway = network(bed.nodes[node].pod_cidr)
        assert f"inet {gateway}/32" in bed.run(node, "ip", "addr", "show", "dev", "flannel.1")
        other = bed.nodes["aws-2" if node == "aws-1" else "aws-1"]
        assert "flannel.1" in bed.run(node, "ip", "route", "show", str(other.pod_cidr))
        assert "1107" not in bed.run(node, "ip", "rule", "show")
        bed.run(node, "ip", "link", "del", "flannel.1")


def test_cilium_compatibility_with_cilium_host_and_cilium_tunl(bed: Testbed) -> None:
    """Kilo over Cilium (``--compatibility=cilium``): the devices only, not Cilium's eBPF
    data path. ``cilium_host``'s address becomes the node's ``cni-compatibility-ip`` and the
    gateway of the routes to it; an existing ``cilium_tunl`` is used and left in place, and
    without one ``kg`` creates (and removes) ``tunl0`` as with IPIP."""
    hosts = {}
    for node in AWS:
        cidr = ipaddress.ip_network(str(bed.nodes[node].pod_cidr))
        hosts[node] = str(cidr[-2])
        bed.run(node, "ip", "link", "add", "cilium_host", "type", "veth", "peer", "cilium_net")
        bed.run(node, "ip", "addr", "add", f"{hosts[node]}/32", "dev", "cilium_host")
        bed.run(node, "ip", "link", "set", "cilium_host", "up")
        bed.run(node, "ip", "link", "set", "cilium_net", "up")
    bed.run("aws-1", "ip", "link", "add", "cilium_tunl", "type", "ipip", "external")
    for node in AWS:
        if bed.agent(node) is not None:  # after a failure of the flannel test
            stop(bed, node)
        bed.start_agent(
            node, RESYNC, INFO, "--compatibility=cilium", "--local=false", "--cni=false"
        )
    wait_healthy(bed, AWS)
    for node in AWS:
        wait_for(
            lambda node=node: (
                bed.node_annotations(node).get(translate.CNI_COMPATIBILITY_IP)
                == f"{hosts[node]}/32"
            ),
            f"{node} did not publish its cilium_host address",
            timeout=60,
        )
    assert "UP" in link(bed, "aws-1", "cilium_tunl")["flags"]
    assert "UP" not in link(bed, "aws-1", "tunl0")["flags"]  # the fallback device, unused
    aws2 = bed.nodes["aws-2"]
    # Every planned route was accepted by the kernel (the agents are healthy), with the
    # cilium_host addresses as gateways.
    wait_for(
        lambda: (
            f"{aws2.lan_ip} via {hosts['aws-2']} dev cilium_tunl proto static onlink"
            in bed.run("aws-1", "ip", "route", "show", "table", "1107")
        ),
        "aws-1 has no route to aws-2 through cilium_tunl",
    )
    wait_for(
        lambda: (
            f"via {hosts['aws-1']} dev tunl0"
            in bed.run("aws-2", "ip", "route", "show", str(bed.nodes["gcp-1"].pod_cidr))
        ),
        "aws-2 does not route to gcp-1's pods through aws-1's cilium_host",
    )
    assert "UP" in link(bed, "aws-2", "tunl0")["flags"]
    for node in AWS:
        assert stop(bed, node) == 0
    assert "UP" in link(bed, "aws-1", "cilium_tunl")["flags"]  # Cilium's, not kg's
    assert "UP" not in link(bed, "aws-2", "tunl0")["flags"]
    assert "inet " not in bed.run("aws-2", "ip", "addr", "show", "dev", "tunl0")


def ip6tables(bed: Testbed, node: str) -> dict[str, list[str]]:
    """As the testbed's snapshot has iptables: table by table (so that a table with no
    rules reads the same whether or not the nft backend has created it), no counters."""
    return {
        table: [
            re.sub(r"\[\d+:\d+\]", "[0:0]", line)
            for line in bed.run(node, "ip6tables-save", "-t", table).splitlines()
            if line and not line.startswith("#")
        ]
        for table in testbed.IPTABLES_TABLES
    }


def test_clean_up_leaves_the_namespace_as_it_found_it(bed: Testbed) -> None:
    """dc-3 (kernel WireGuard created by kg, crosssubnet IPIP, ``--clean-up-interface``):
    links (tunl0's state too), addresses, routes in every table, rules and iptables are
    exactly as before its agent started."""
    assert stop(bed, BARE) == 0
    assert "caught interrupt; gracefully cleaning up" in bed.agent_log(BARE)
    after = bed.snapshot(BARE)
    before = bed.before  # type: ignore[attr-defined]
    for part in ("routes", "rules", "iptables"):
        assert after[part] == before[part], part
    for part in ("links", "addrs"):  # by interface, naming what differs
        now = {link["ifname"]: link for link in after[part]}
        for found in before[part]:
            was = now.pop(found["ifname"], {})
            differs = {k: (v, was.get(k)) for k, v in found.items() if was.get(k) != v}
            # The kernel gives a link its default qdisc the first time it goes up and keeps
            # it: tunl0 (never up before kg) shows noqueue instead of noop, nothing else.
            if found["ifname"] == "tunl0" and differs.get("qdisc") == ("noop", "noqueue"):
                del differs["qdisc"]
            assert differs == {}, (part, found["ifname"])
        assert now == {}, part
    assert ip6tables(bed, BARE) == bed.before_ip6tables  # type: ignore[attr-defined]
    annotations = bed.node_annotations(BARE)
    assert [a for a in translate.AGENT_ANNOTATIONS if a in annotations] == []


def test_clean_up_without_clean_up_interface_keeps_a_bare_kilo0(bed: Testbed) -> None:
    """Kilo's default (``--clean-up-interface=false``): kilo0 stays, down, with no address
    and no peers; the tunnel goes back to how the kernel made it."""
    node = "dc-2"
    assert stop(bed, node) == 0
    device = link(bed, node, "kilo0")
    assert device["linkinfo"]["info_kind"] == "wireguard"
    assert "UP" not in device["flags"]
    assert "inet" not in bed.run(node, "ip", "addr", "show", "dev", "kilo0")
    assert wg_peers(bed, node) == {}
    tunnel = link(bed, node, "tunl0")
    assert "UP" not in tunnel["flags"] and tunnel["mtu"] == 1480
    assert "inet" not in bed.run(node, "ip", "addr", "show", "dev", "tunl0")
