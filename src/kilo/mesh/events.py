"""Watch events of Nodes and Peers (Kilo's ``mesh.Event``), and the view of the cluster
they keep current.

Pure: no I/O, no clock, no logging. The Kubernetes adapter produces :class:`Event` values
from its list + watch; the agent's reconcile loop and ``kgctl connect`` consume them through
a :class:`ClusterView`, which translates each object, keeps the translated Nodes and Peers
by name, and hands back the diagnostics not yet reported for the object's version (so that
a problem is logged once, not on every relist). What changed is judged by the caller
(``localnode.mesh_changed`` and ``peer_changed``), whose clock is its own.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from kilo.mesh import translate
from kilo.mesh.model import Diagnostic, Node, Peer

# Both loops are woken by events and also re-apply everything this often at the most:
# Kilo's loop re-syncs without pause for a period of 0 or less.
MIN_RESYNC_PERIOD = 1.0
# Events that arrive together (a relist, a burst of check-ins) are applied together.
DEBOUNCE = 0.05

T = TypeVar("T")


class EventType(enum.StrEnum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    name: str
    obj: dict[str, Any]  # the new object, or the last known one for DELETED


# Kilo's names of watch events, in its "event" log field.
KILO_EVENTS = {EventType.ADDED: "add", EventType.MODIFIED: "update", EventType.DELETED: "delete"}


@dataclass(frozen=True, slots=True)
class Change(Generic[T]):
    """What one event did to the view: the object before and after (``None``: absent or
    unusable), and the diagnostics to report now."""

    old: T | None
    new: T | None
    report: tuple[Diagnostic, ...]
    # Nothing but a Node's last-seen changed (a check-in): ``new`` is ``old`` with the new
    # ``last_seen``, and only its readiness can have changed.
    checked_in: bool = False


def warning_line(diagnostic: Diagnostic) -> tuple[str, dict[str, str]]:
    """The log line (message, fields) of a diagnostic, as both loops write it."""
    d = diagnostic
    message = f"{d.kind} {d.name}: {d.field} {d.problem}"
    return message, {"kind": d.kind, "name": d.name, "field": d.field, "value": d.value}


def resync_period(requested: float) -> float:
    """The period a loop uses: ``requested``, raised to :data:`MIN_RESYNC_PERIOD`."""
    return max(requested, MIN_RESYNC_PERIOD)


class ClusterView:
    """The cluster's Nodes and Peers as the events so far describe them, translated."""

    def __init__(self, *, topology_label: str, port: int) -> None:
        self.topology_label = topology_label
        self.port = port
        self.nodes: dict[str, Node] = {}
        self.peers: dict[str, Peer] = {}
        # The object each Node was translated from and the translation's diagnostics, to
        # recognise a check-in. The object is the one the event carried: the watch's
        # cache holds the same dict, so this costs a reference, not a copy.
        self._node_sources: dict[str, tuple[dict[str, Any], tuple[Diagnostic, ...]]] = {}
        # The resourceVersion whose diagnostics were reported, by (kind, name).
        self._reported: dict[tuple[str, str], object] = {}

    def node_event(self, event: Event) -> Change[Node]:
        new: Node | None = None
        diagnostics: tuple[Diagnostic, ...] = ()
        checked_in = False
        if event.type == EventType.DELETED:
            self._node_sources.pop(event.name, None)
        else:
            checked_in_node = self._check_in(event)
            if checked_in_node is not None:
                new, diagnostics = checked_in_node
                checked_in = True
            else:
                result = translate.translate_node(
                    event.obj, topology_label=self.topology_label, port=self.port
                )
                new, diagnostics = result.value, result.diagnostics
            if new is None:
                self._node_sources.pop(event.name, None)
            else:
                self._node_sources[event.name] = (event.obj, diagnostics)
        report = self._unreported("node", event, diagnostics)
        return Change(_store(self.nodes, event.name, new), new, report, checked_in)

    def _check_in(self, event: Event) -> tuple[Node, tuple[Diagnostic, ...]] | None:
        """The Node and diagnostics of ``event`` when it differs from the object the stored
        Node was translated from only in a valid last-seen (and the object's version):
        the stored Node with the new ``last_seen``, exactly what ``translate_node`` returns
        for it, which reads nothing but the name, annotations and labels in ``metadata``
        and ``spec`` (tests/unit/test_cluster_view.py holds the two equal). ``None``
        when the event must be translated."""
        source = self._node_sources.get(event.name)
        old = self.nodes.get(event.name)
        if source is None or old is None:
            return None
        previous, diagnostics = source
        obj: object = event.obj
        if not isinstance(obj, dict):
            return None
        metadata, previous_metadata = obj.get("metadata"), previous.get("metadata")
        if not isinstance(metadata, dict) or not isinstance(previous_metadata, dict):
            return None
        annotations = metadata.get("annotations")
        previous_annotations = previous_metadata.get("annotations")
        if not isinstance(annotations, dict) or not isinstance(previous_annotations, dict):
            return None
        text = annotations.get(translate.LAST_SEEN)
        previous_text = previous_annotations.get(translate.LAST_SEEN)
        if not isinstance(text, str) or not isinstance(previous_text, str):
            return None
        last_seen = translate.parse_int64(text)
        # A last-seen that does not parse is reported: translate. So was the previous one
        # if it did not parse (a diagnostic of that field).
        if last_seen is None or any(d.field == translate.LAST_SEEN for d in diagnostics):
            return None
        if (
            obj.get("spec") != previous.get("spec")
            or metadata.get("name") != previous_metadata.get("name")
            or metadata.get("labels") != previous_metadata.get("labels")
        ):
            return None
        if text != previous_text:
            annotations = dict(annotations)
            annotations[translate.LAST_SEEN] = previous_text
        if annotations != previous_annotations:
            return None
        return old.with_last_seen(last_seen), diagnostics

    def peer_event(self, event: Event) -> Change[Peer]:
        new: Peer | None = None
        diagnostics: tuple[Diagnostic, ...] = ()
        if event.type != EventType.DELETED:
            result = translate.translate_peer(event.obj)
            new, diagnostics = result.value, result.diagnostics
        report = self._unreported("peer", event, diagnostics)
        return Change(_store(self.peers, event.name, new), new, report)

    def _unreported(
        self, kind: str, event: Event, diagnostics: tuple[Diagnostic, ...]
    ) -> tuple[Diagnostic, ...]:
        """``diagnostics`` unless they were reported for this version of the object."""
        version = event.obj.get("metadata", {}).get("resourceVersion")
        key = (kind, event.name)
        if not diagnostics:
            self._reported.pop(key, None)
            return ()
        if self._reported.get(key) == version:
            return ()
        self._reported[key] = version
        return diagnostics


def _store(objects: dict[str, T], name: str, new: T | None) -> T | None:
    """Put ``new`` under ``name`` (remove the name for ``None``); return what was there."""
    old = objects.get(name)
    if new is None:
        objects.pop(name, None)
    else:
        objects[name] = new
    return old
