"""The light apply's memos against a from-scratch computation, over random change sequences.

Between events the agent hands the topology, the plan, the route table and the device diff
Nodes of which most are the very objects of the previous event, some are new objects
with equal mesh values (a check-in) and a few changed. Each step reuses what did not
change (``topology._SegmentMemo`` with its allowed-location-IP index, the leader's routes
and WireGuard peers per segment, route keys per Route, masked allowed IPs per WireGuard
peer, device replies per peer block, the iptables rules per segment); every result must
be the one the same inputs give with every memo empty.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
from collections.abc import Callable, Iterator
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kilo.mesh import (
    iptables,
    iptables_restore,
    route_sync,
    routes,
    topology,
    uapi,
    wgdevice,
    wgpeers,
    wireguard,
)
from kilo.mesh.endpoint import Endpoint, UDPAddr
from kilo.mesh.keys import Key
from kilo.mesh.model import Granularity, Node, Peer, ready_nodes
from kilo.mesh.plan import NodePlan, PlanSettings, plan_node
from kilo.mesh.routes import Device
from kilo.mesh.topology import Topology, build_topology
from kilo.mesh.uapi import parse_uapi
from kilo.mesh.wgdevice import DeviceState, plan_changes
from kilo.mesh.wireguard import WireGuardConfig
from tests.examples import KILO_SUBNET
from tests.strategies import (
    NodeSpec,
    alip_clusters,
    build_node,
    clusters,
    node_specs,
    overlapping_cidrs,
)

Cidrs = tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]

PRIVATE_KEY = Key(bytes(range(1, 33)))
DEVICES = {Device.KILO: "kilo0", Device.PRIVATE: "eth0", Device.TUNNEL: "tunl0"}


# Every memo of the light apply: (module, attribute, a new empty one).
MEMOS: tuple[tuple[Any, str, Callable[[], object]], ...] = (
    (topology, "_SEGMENTS", topology._SegmentMemo),
    (routes, "_LEADER_ROUTES", routes._LeaderRoutesMemo),
    (wireguard, "_SEGMENT_PEERS", wireguard._PeerMemo),
    (route_sync, "_ROUTE_KEYS", route_sync._RouteKeyMemo),
    (wgpeers, "_MASKED", wgpeers._MaskedTexts),
    (uapi, "_PEER_BLOCKS", uapi._PeerBlocks),
    (iptables, "_SEGMENT_RULES", iptables._SegmentRulesMemo),
    (iptables_restore, "_PARTITIONS", iptables_restore._PartitionMemo),
)


@contextlib.contextmanager
def empty_memos() -> Iterator[None]:
    """Every memo of the light apply empty, and the agent's ones back afterwards."""
    saved = [getattr(module, name) for module, name, _ in MEMOS]
    for module, name, empty in MEMOS:
        setattr(module, name, empty())
    try:
        yield
    finally:
        for (module, name, _), memo in zip(MEMOS, saved, strict=True):
            setattr(module, name, memo)


def uapi_reply(state: DeviceState) -> str:
    """A ``get=1`` reply of ``state`` as wireguard-go writes it."""
    lines = ["private_key=" + (state.private_key or Key(bytes(32))).raw.hex()]
    lines.append(f"listen_port={state.listen_port}")
    for peer in state.peers:
        lines.append(f"public_key={peer.public_key.raw.hex()}")
        if peer.endpoint is not None:
            lines.append(f"endpoint={peer.endpoint}")
        lines.append(f"persistent_keepalive_interval={peer.persistent_keepalive}")
        lines.extend(f"allowed_ip={cidr}" for cidr in peer.allowed_ips)
    return "".join(line + "\n" for line in lines)


def device_after(config: WireGuardConfig, before: DeviceState) -> DeviceState:
    """The device once the changes that bring ``before`` to ``config`` are written."""
    change = plan_changes(config, before)
    peers = {p.public_key: p for p in before.peers}
    for c in () if change is None else change.peers:
        if c.remove:
            del peers[c.public_key]
            continue
        old = peers.get(c.public_key, wgdevice.PeerState(public_key=c.public_key))
        peers[c.public_key] = dataclasses.replace(
            old,
            endpoint=old.endpoint if c.endpoint is None else c.endpoint,
            persistent_keepalive=old.persistent_keepalive
            if c.persistent_keepalive is None
            else c.persistent_keepalive,
            allowed_ips=old.allowed_ips if c.allowed_ips is None else c.allowed_ips,
        )
    return DeviceState(private_key=PRIVATE_KEY, listen_port=51820, peers=tuple(peers.values()))


def light_apply(
    nodes: list[Node], peers: list[Peer], granularity: Granularity, device: str
) -> tuple[Topology, NodePlan, object, object, DeviceState]:
    """What the leader's applier computes for one event (agent.apply)."""
    local = nodes[0]
    t = build_topology(
        ready_nodes(nodes, None),
        peers,
        granularity=granularity,
        hostname=local.name,
        subnet=KILO_SUBNET,
        key=PRIVATE_KEY,
        persistent_keepalive=local.persistent_keepalive,
    )
    plan = plan_node(t, local, PlanSettings(interface="kilo0", private_interface="eth0"))
    desired = route_sync.desired_routes(plan.routes, DEVICES)
    state = parse_uapi(device)
    config = plan.wireguard or WireGuardConfig(private_key=PRIVATE_KEY, peers=())
    change = plan_changes(config, state)
    return t, plan, desired, change, state


# One edit of the cluster between two events: (what, which node, a value to use).
edits = st.tuples(
    st.sampled_from(
        (
            "checkin",
            "copy",
            "alips",
            "endpoint",
            "internal endpoint",
            "keepalive",
            "discovered",
            "subnet",
            "leader",
            "remove",
            "add",
            "peers",
        )
    ),
    st.integers(min_value=0, max_value=40),
    st.lists(overlapping_cidrs, max_size=2).map(tuple),
    node_specs,
)


def edit(
    nodes: list[Node],
    peers: list[Peer],
    step: tuple[str, int, Cidrs, NodeSpec],
    serial: int,
) -> tuple[list[Node], list[Peer]]:
    what, which, cidrs, spec = step
    nodes = list(nodes)
    i = which % len(nodes)
    node = nodes[i]
    if what == "checkin":
        nodes[i] = dataclasses.replace(node, last_seen=node.last_seen + 1)
    elif what == "copy":
        nodes[i] = dataclasses.replace(node)
    elif what == "alips":
        nodes[i] = dataclasses.replace(node, allowed_location_ips=cidrs)
    elif what == "endpoint":
        nodes[i] = dataclasses.replace(
            node, endpoint=Endpoint.parse(f"198.51.100.{serial % 250 + 1}:{40000 + serial}")
        )
    elif what == "internal endpoint" and node.internal_ip is not None:
        # A node reachable only on its own private IP: no route to it through WireGuard.
        nodes[i] = dataclasses.replace(
            node, endpoint=Endpoint.parse(f"{node.internal_ip.ip}:51820")
        )
    elif what == "keepalive":
        nodes[i] = dataclasses.replace(node, persistent_keepalive=25 - node.persistent_keepalive)
    elif what == "discovered":
        # The local node's NAT-discovered endpoints (for segments whose leader keeps alive).
        discovered = {
            str(n.key): UDPAddr(ipaddress.ip_address(f"192.168.{serial}.{k + 1}"), 1024 + serial)
            for k, n in enumerate(nodes)
            if k % 2 == which % 2
        }
        nodes[0] = dataclasses.replace(nodes[0], discovered_endpoints=discovered)
    elif what == "subnet":
        nodes[i] = dataclasses.replace(
            node, subnet=ipaddress.ip_network(f"10.3.{serial % 256}.0/24")
        )
    elif what == "leader":
        nodes[i] = dataclasses.replace(node, leader=not node.leader)
    elif what == "remove" and i != 0 and len(nodes) > 1:
        del nodes[i]
    elif what == "add":
        nodes.append(build_node(100 + serial, spec))
    elif what == "peers" and peers:
        peers = [dataclasses.replace(peers[0], allowed_ips=peers[0].allowed_ips + cidrs)]
        peers += peers[1:]
    return nodes, peers


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(clusters(max_nodes=10), alip_clusters(max_nodes=10)),
    st.sampled_from((Granularity.LOCATION, Granularity.FULL, Granularity.CROSS)),
    st.lists(edits, min_size=1, max_size=8),
)
def test_a_light_apply_with_memos_is_the_one_from_scratch(
    cluster: tuple[list[Node], list[Peer]],
    granularity: Granularity,
    steps: list[tuple[str, int, Cidrs, NodeSpec]],
) -> None:
    nodes, peers = cluster
    state = DeviceState(private_key=PRIVATE_KEY, listen_port=51820)
    with empty_memos():  # this example's own memos, as an agent's
        for serial, step in enumerate([None, *steps]):
            if step is not None:  # the first apply is start-up's
                nodes, peers = edit(nodes, peers, step, serial)
            device = uapi_reply(state)
            got = light_apply(nodes, peers, granularity, device)
            with empty_memos():
                want = light_apply(nodes, peers, granularity, device)
            assert got[:4] == want[:4]
            assert [p.allowed_ips_text for p in got[4].peers] == [
                p.allowed_ips_text for p in want[4].peers
            ]
            assert got[4] == want[4]
            plan = got[1]
            config = plan.wireguard or WireGuardConfig(private_key=PRIVATE_KEY, peers=())
            state = device_after(config, got[4])


def test_a_new_discovered_endpoint_changes_the_peer_and_routes_of_an_unchanged_segment() -> None:
    """The segment is the same object (its Nodes did not change), but the local node's
    NAT-discovered endpoint of its leader did: its WireGuard peer takes that endpoint, and
    when it is the leader's private IP, the route to that IP goes (Kilo's rule)."""
    spec = NodeSpec(
        location="aws",
        has_internal_ip=True,
        leader=False,
        public_endpoint=True,
        keepalive=25,
        alip=None,
    )
    nodes = [build_node(0, spec), build_node(1, spec), build_node(2, spec)]
    remote = nodes[1]
    assert remote.internal_ip is not None
    state = DeviceState(private_key=PRIVATE_KEY, listen_port=51820)
    with empty_memos():
        light_apply(nodes, [], Granularity.FULL, uapi_reply(state))
        for address in ("192.0.2.7", str(remote.internal_ip.ip)):
            discovered = {str(remote.key): UDPAddr(ipaddress.ip_address(address), 4242)}
            nodes[0] = dataclasses.replace(nodes[0], discovered_endpoints=discovered)
            got = light_apply(nodes, [], Granularity.FULL, uapi_reply(state))
            with empty_memos():
                want = light_apply(nodes, [], Granularity.FULL, uapi_reply(state))
            assert got[:4] == want[:4]
            assert got[1].wireguard is not None
            peer = got[1].wireguard.peer(remote.key)
            assert peer is not None and peer.endpoint is not None
            assert str(peer.endpoint) == f"{address}:4242"
