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
        # The resourceVersion whose diagnostics were reported, by (kind, name).
        self._reported: dict[tuple[str, str], object] = {}

    def node_event(self, event: Event) -> Change[Node]:
        new: Node | None = None
        diagnostics: tuple[Diagnostic, ...] = ()
        if event.type != EventType.DELETED:
            result = translate.translate_node(
                event.obj, topology_label=self.topology_label, port=self.port
            )
            new, diagnostics = result.value, result.diagnostics
        report = self._unreported("node", event, diagnostics)
        return Change(_store(self.nodes, event.name, new), new, report)

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
