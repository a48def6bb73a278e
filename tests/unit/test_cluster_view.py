"""The cluster view's check-in path: a Node event that changes nothing but last-seen reuses
the stored translation, and must give exactly what translating the object gives."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kilo.mesh import translate
from kilo.mesh.events import Change, ClusterView, Event, EventType
from kilo.mesh.model import Diagnostic, Node
from kilo.sandbox import kubelet
from tests.agent_harness import OTHER_KEYS, Harness

LABEL = "topology.kubernetes.io/region"
NOW = 1_700_000_000


class TranslatingView(ClusterView):
    """The view as it was: every event translated."""

    def _check_in(self, event: Event) -> tuple[Node, tuple[Diagnostic, ...]] | None:
        return None


def node_object(version: int, last_seen: str | None = str(NOW)) -> dict[str, Any]:
    annotations = {
        translate.KEY: str(OTHER_KEYS["b"]),
        translate.ENDPOINT: "203.0.113.11:51820",
        translate.INTERNAL_IP: "10.0.0.11/24",
    }
    if last_seen is not None:
        annotations[translate.LAST_SEEN] = last_seen
    obj = kubelet.node(
        "b",
        internal_ip="10.0.0.11",
        pod_cidr="10.42.1.0/24",
        labels={LABEL: "gcp"},
        annotations=annotations,
        now=NOW,
    )
    del obj["status"]  # the informer drops it
    obj["metadata"].update(uid="uid-b", resourceVersion=str(version))
    return obj


def _map(parent: dict[str, Any], key: str) -> dict[str, Any]:
    """``parent[key]``, made a map again if an earlier mutation broke it."""
    if not isinstance(parent.get(key), dict):
        parent[key] = {}
    child: dict[str, Any] = parent[key]
    return child


def _set_annotation(key: str, value: object) -> Any:
    def mutate(obj: dict[str, Any]) -> None:
        _map(obj["metadata"], "annotations")[key] = value

    return mutate


def _drop_annotation(key: str) -> Any:
    def mutate(obj: dict[str, Any]) -> None:
        _map(obj["metadata"], "annotations").pop(key, None)

    return mutate


def _set(path: tuple[str, ...], value: object) -> Any:
    def mutate(obj: dict[str, Any]) -> None:
        target = obj
        for key in path[:-1]:
            target = _map(target, key)
        target[path[-1]] = value

    return mutate


# What a Node's next version may change: last-seen (valid or not, or gone), and everything
# else translate_node reads, or does not read.
MUTATIONS = [
    _set_annotation(translate.LAST_SEEN, str(NOW + 30)),
    _set_annotation(translate.LAST_SEEN, str(NOW + 31)),
    _set_annotation(translate.LAST_SEEN, str(NOW - 3600)),
    _set_annotation(translate.LAST_SEEN, "soon"),
    _set_annotation(translate.LAST_SEEN, "99999999999999999999"),
    _set_annotation(translate.LAST_SEEN, 17),
    _drop_annotation(translate.LAST_SEEN),
    _set_annotation(translate.ENDPOINT, "203.0.113.12:51820"),
    _set_annotation(translate.KEY, "garbage"),
    _set_annotation(translate.PERSISTENT_KEEPALIVE, "-1"),
    _set_annotation("example.com/unrelated", "x"),
    _drop_annotation(translate.INTERNAL_IP),
    _set(("metadata", "labels", LABEL), "aws"),
    _set(("metadata", "labels"), "not a map"),
    _set(("metadata", "annotations"), ["not", "a", "map"]),
    _set(("metadata", "name"), "c"),
    _set(("metadata", "uid"), "uid-b2"),
    _set(("spec", "podCIDR"), "10.42.2.0/24"),
    _set(("spec", "podCIDR"), "garbage"),
    _set(("spec",), None),
    _set(("spec", "unschedulable"), True),
]


def run(view: ClusterView, objects: list[dict[str, Any]]) -> list[Change[Node]]:
    return [view.node_event(Event(EventType.MODIFIED, "b", obj)) for obj in objects]


@settings(deadline=None)  # no timed assertion: the machine may be busy
@given(st.lists(st.lists(st.sampled_from(range(len(MUTATIONS))), max_size=3), max_size=6))
def test_a_check_in_gives_what_translating_the_object_gives(steps: list[list[int]]) -> None:
    objects = [node_object(1)]
    for k, step in enumerate(steps):
        obj = copy.deepcopy(objects[-1])
        obj["metadata"]["resourceVersion"] = str(k + 2)
        for index in step:
            MUTATIONS[index](obj)
        objects.append(obj)
    fast = run(ClusterView(topology_label=LABEL, port=51820), objects)
    slow = run(TranslatingView(topology_label=LABEL, port=51820), objects)
    assert [(c.old, c.new, c.report) for c in fast] == [(c.old, c.new, c.report) for c in slow]
    for change, obj in zip(fast, objects, strict=True):
        expected = translate.translate_node(obj, topology_label=LABEL).value
        assert change.new == expected
        # The derived attributes too, which equality does not compare.
        assert attributes(change.new) == attributes(expected)


def attributes(node: Node | None) -> tuple[object, ...] | None:
    """Every attribute of ``node``, the derived ones (``compare=False``) too."""
    return None if node is None else tuple(getattr(node, name) for name in Node.__slots__)


def test_with_last_seen_is_replace_with_every_derived_attribute() -> None:
    node = translate.translate_node(node_object(1), topology_label=LABEL).value
    assert node is not None and node.private_host is not None and node.reachable
    moved = node.with_last_seen(NOW + 30)
    assert moved.last_seen == NOW + 30 and node.last_seen == NOW
    assert attributes(moved) == attributes(replace(node, last_seen=NOW + 30))
    assert attributes(Node(name="bare").with_last_seen(7)) == attributes(
        Node(name="bare", last_seen=7)
    )


def test_a_check_in_is_recognised_and_keeps_the_diagnostics() -> None:
    view = ClusterView(topology_label=LABEL, port=51820)
    first = node_object(1)
    first["metadata"]["annotations"][translate.PERSISTENT_KEEPALIVE] = "-1"
    checked_in = copy.deepcopy(first)
    checked_in["metadata"]["annotations"][translate.LAST_SEEN] = str(NOW + 30)
    checked_in["metadata"]["resourceVersion"] = "2"
    a = view.node_event(Event(EventType.ADDED, "b", first))
    b = view.node_event(Event(EventType.MODIFIED, "b", checked_in))
    assert not a.checked_in and b.checked_in
    assert b.new is not None and a.new is not None and b.new.last_seen == NOW + 30
    # Reported again for the new version, as a translation would (one warning per version).
    assert b.report == a.report != ()
    # A change of anything else is translated.
    changed = copy.deepcopy(checked_in)
    changed["metadata"]["annotations"][translate.ENDPOINT] = "203.0.113.12:51820"
    assert not view.node_event(Event(EventType.MODIFIED, "b", changed)).checked_in
    # After a deletion, the next object is translated.
    view.node_event(Event(EventType.DELETED, "b", changed))
    assert not view.node_event(Event(EventType.ADDED, "b", checked_in)).checked_in


def test_a_check_in_that_makes_a_node_ready_again_is_applied() -> None:
    """Readiness depends on last-seen: a check-in after a lapse changes the mesh."""
    h = Harness()
    h.node("a")
    h.remote("b", location="gcp")
    h.round(check_in=True)
    assert [p.public_key for p in h.device.config.peers] == [OTHER_KEYS["b"]]
    h.now += 120  # b's last-seen lapses: not ready, so no longer a peer
    h.round(check_in=True, resync=True)
    assert not h.device.config.peers
    reconciles = h.metrics.reconciles
    changes: list[Change[Node]] = []
    node_event = h.agent.view.node_event

    def recorded(event: Event) -> Change[Node]:
        changes.append(node_event(event))
        return changes[-1]

    h.agent.view.node_event = recorded  # type: ignore[method-assign]
    h.remote("b", location="gcp")  # b checks in again
    assert [c.checked_in for c in changes] == [True]
    h.round()
    assert h.metrics.reconciles == reconciles + 1
    assert [p.public_key for p in h.device.config.peers] == [OTHER_KEYS["b"]]
