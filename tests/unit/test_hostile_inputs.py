"""Fuzz: Nodes and Peers of any shape, through everything kgctl, kg and kg webhook compute.

The only outcome allowed for any input is a result plus diagnostics (or, for a whole
cluster that cannot form a mesh, a :class:`~kilo.errors.KiloError` with a message):
never another exception, never an unbounded message. CI runs a bounded, derandomised
profile; ``make fuzz`` runs a long random one (``KILO_FUZZ_EXAMPLES``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kilo.errors import KiloError
from kilo.mesh import admission, cluster, graph, listing, peerspec, plan, route_sync, wireguard
from kilo.mesh import connect as connect_plan
from kilo.mesh import topology as topo
from kilo.mesh.events import Event, EventType
from kilo.mesh.keys import Key
from kilo.mesh.model import (
    Compatibility,
    Encapsulation,
    Granularity,
    Node,
    Peer,
    ready_nodes,
    ready_peers,
)
from kilo.mesh.wgdevice import DeviceState, plan_update
from tests import hostile
from tests.agent_harness import Harness

FUZZ = hostile.FUZZ

# A message may quote several bounded values (object name, field, value) and Kilo's text.
MAX_MESSAGE = 1200
NOW = 1_700_000_000
PRIVATE_KEY = Key(bytes(range(32)))

pytestmark = pytest.mark.fuzz


def _check_message(text: str) -> None:
    assert len(text) <= MAX_MESSAGE, text[:200]


def _plans(t: topo.Topology, node: Node) -> None:
    for encapsulation in Encapsulation:
        for compatibility in Compatibility:
            for local in (True, False):
                settings_ = plan.PlanSettings(
                    encapsulation=encapsulation,
                    compatibility=compatibility,
                    local=local,
                    iptables_forward_rules=local,
                )
                node_plan = plan.plan_node(t, node, settings_)
                plan.to_text(node_plan)
                json.loads(plan.to_json(node_plan))
                route_sync.desired_routes(node_plan.routes, node_plan.device_names)
                route_sync.desired_rules(node_plan.rules)
                node_plan.iptables.to_text()


def _perspective(t: topo.Topology, node: Node, peers: Sequence[Peer]) -> None:
    config = wireguard.node_config(t)
    wireguard.render(config)
    plan_update(config, DeviceState())
    as_peer = wireguard.location_as_peer(t)
    if as_peer is not None:
        wireguard.render_peers([as_peer])
        obj = peerspec.peer_object(as_peer, node.name)
        peerspec.to_yaml(obj)
        json.loads(peerspec.to_json(obj))
    for peer in peers:
        wireguard.render(wireguard.peer_config(t, peer.name))
    graph.dot(t)
    _plans(t, node)


def exercise(node_objects: Sequence[Any], peer_objects: Sequence[Any]) -> None:
    """Everything kgctl, kg and kg webhook compute from these objects."""
    c = cluster.translate_cluster(node_objects, peer_objects)
    for diagnostic in c.diagnostics:
        _check_message(str(diagnostic))
        _check_message(diagnostic.value)
    try:
        _, warnings = cluster.resolve_granularity(cluster.AUTO, c.nodes)
    except KiloError as exc:
        warnings = [str(exc)]
    subnet, more = cluster.infer_subnet(c.nodes)
    for warning in [*warnings, *more]:
        _check_message(warning)
    peers = ready_peers(c.peers)
    for now in (None, NOW):
        ready = ready_nodes(c.nodes, now)
        for granularity in Granularity:
            t0 = None
            for node in ready[:3]:
                try:
                    t = topo.build_topology(
                        ready,
                        peers,
                        granularity=granularity,
                        hostname=node.name,
                        subnet=subnet,
                        persistent_keepalive=node.persistent_keepalive,
                    )
                except KiloError as exc:
                    _check_message(str(exc))
                    continue
                t0 = t0 or t
                _perspective(t, node, peers)
            rows = listing.rows(c, t0, now=NOW, judge_liveness=now is not None)
            listing.to_text(*rows, now=NOW, wide=True)
            json.loads(listing.to_json(*rows))
            for peer in peers[:2]:
                try:
                    connect_plan.plan_connection(
                        ready,
                        peers,
                        name=peer.name,
                        private_key=PRIVATE_KEY,
                        port=51820,
                        granularity=granularity.value,
                    )
                except KiloError as exc:
                    _check_message(str(exc))
    pod_cidrs = {n.name: (n.subnet,) for n in c.nodes if n.subnet is not None}
    for obj in peer_objects:
        _admit(obj, {p.name: p for p in c.peers}, pod_cidrs)


def _admit(obj: Any, peers: dict[str, Peer], pod_cidrs: dict[str, Any]) -> None:
    review = {
        "apiVersion": admission.API_VERSION,
        "kind": admission.KIND,
        "request": {"uid": "u", "operation": "CREATE", "object": obj},
    }
    try:
        body = json.dumps(review).encode("utf-8", "surrogatepass")
    except (ValueError, RecursionError):
        return  # not JSON (NaN, a huge integer, nesting): the API server never sends it
    answer = admission.review(body, admission.JSON, peers=peers, pod_cidrs=pod_cidrs)
    _check_message(answer.message)
    assert len(answer.body) <= 4 * MAX_MESSAGE


@FUZZ
@given(hostile.clusters)
def test_any_nodes_and_peers_give_a_mesh_plus_diagnostics(objects: Any) -> None:
    exercise(*objects)


HEALTHY = [
    hostile.node(f"ok-{i}", 50 + i, internal_ip=f"10.97.0.{i + 1}/24", location=location)
    for i, location in enumerate(("aws", "aws", "gcp"))
]
GOOD_PEER = hostile.peer("good", {"allowedIPs": ["10.5.0.1/32"], "publicKey": hostile.KEYS[3]})


def healthy_view(node_objects: Sequence[Any], peer_objects: Sequence[Any]) -> Any:
    """What the healthy nodes and the good peer look like from ok-0: segments and peers."""
    c = cluster.translate_cluster(node_objects, peer_objects)
    t = topo.build_topology(
        ready_nodes(c.nodes, NOW),
        ready_peers(c.peers),
        granularity=Granularity.LOCATION,
        hostname="ok-0",
        subnet=ipaddress.ip_network("10.4.0.0/16"),
    )
    ours = {n["metadata"]["name"] for n in HEALTHY} | {"good"}
    segments = [s for s in t.segments if set(s.hostnames) <= ours]
    config = wireguard.node_config(t)
    keys = {s.key for s in segments} | {p.public_key for p in t.peers if p.name in ours}
    return segments, [p for p in config.peers if p.public_key in keys], t.peers


@pytest.mark.parametrize("obj", hostile.CORPUS_NODES, ids=lambda o: o["metadata"]["name"])
def test_each_hostile_node_costs_only_itself(obj: dict[str, Any]) -> None:
    exercise([*HEALTHY, obj], [GOOD_PEER, *hostile.CORPUS_PEERS])
    segments, peers, _ = healthy_view([*HEALTHY, obj], [GOOD_PEER])
    assert (segments, peers) == healthy_view(HEALTHY, [GOOD_PEER])[:2]
    assert len(segments) == 2


@pytest.mark.parametrize("obj", hostile.CORPUS_PEERS, ids=lambda o: o["metadata"]["name"])
def test_each_hostile_peer_costs_only_itself(obj: dict[str, Any]) -> None:
    exercise(HEALTHY, [GOOD_PEER, obj])
    segments, peers, all_peers = healthy_view(HEALTHY, [GOOD_PEER, obj])
    assert (segments, peers) == healthy_view(HEALTHY, [GOOD_PEER])[:2]
    assert "good" in [p.name for p in all_peers]


def test_values_are_quoted_short_in_every_diagnostic() -> None:
    c = cluster.translate_cluster(list(hostile.CORPUS_NODES), list(hostile.CORPUS_PEERS))
    assert c.diagnostics
    for diagnostic in c.diagnostics:
        assert len(diagnostic.value) <= 80
        assert len(str(diagnostic)) <= 500


@FUZZ
@given(st.lists(hostile.peer_objects(), min_size=1, max_size=3))
def test_admission_of_any_peer_answers(objects: list[Any]) -> None:
    pod_cidrs = {"n0": (ipaddress.ip_network("10.42.0.0/24"),)}
    for obj in objects:
        _admit(obj, {}, pod_cidrs)


@FUZZ
@given(hostile.clusters, st.booleans())
def test_the_agent_applies_any_cluster_the_api_server_can_hold(
    objects: Any, hostile_local_node: bool
) -> None:
    node_objects, peer_objects = objects
    h = Harness()
    h.node("a")
    for index, obj in enumerate(node_objects):
        name = "a" if hostile_local_node and index == 0 else f"n{index}"
        api = hostile.as_api_object(obj, name)
        if api is not None:
            h.agent.on_node_event(Event(EventType.MODIFIED, name, api))
    for index, obj in enumerate(peer_objects):
        api = hostile.as_api_object(obj, f"p{index}")
        if api is not None:
            h.agent.on_peer_event(Event(EventType.MODIFIED, f"p{index}", api))
    h.round(check_in=True, resync=True)
    h.round(resync=True)
    # Nothing failed: with these fakes only a bug could fail an apply.
    assert h.metrics.errors == []
    if h.agent.graph_input is not None:
        with contextlib.suppress(KiloError):
            graph_text = h.agent.graph()
            assert graph_text.startswith("digraph")
