"""The offline backend: Nodes and Peers read from a cluster dump.

A dump is what ``kubectl get nodes,peers.kilo.squat.ai -o yaml`` (or ``-o json``) writes: a
``List`` of objects. Multi-document YAML, bare objects and ``NodeList``/``PeerList`` are
accepted too, so an operator can also hand-write a cluster to plan annotations before
applying them.

What kgctl never reads of a dump is not built (``NODE_STATUS``): a Node's status blocks are
cut from a YAML dump before it is parsed, and left undecoded in a JSON ``List``; a
kubelet's status was 47 of a 5000-node YAML dump's 50 MB.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from kilo.adapters import yamlinput

PEER_API_GROUP = "kilo.squat.ai"


@dataclass(slots=True)
class Dump:
    """The raw objects of a dump, and what in it was skipped."""

    nodes: list[dict[str, Any]] = field(default_factory=list)
    peers: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def read_dump(path: str, *, stdin: BinaryIO | None = None) -> Dump:
    """Read a dump from ``path`` (``-`` for standard input)."""
    return parse_dump(yamlinput.read(path, yamlinput.CLUSTER_DUMP, stdin=stdin), source=path)


def parse_dump(data: bytes | str, *, source: str = "<dump>") -> Dump:
    documents = yamlinput.load_all(data, yamlinput.CLUSTER_DUMP, source=source, unread=NODE_STATUS)
    dump = Dump()
    # yamlinput bounds the nesting, and refuses recursive structures: no RecursionError here.
    for index, document in enumerate(documents):
        if document is None:
            continue
        for obj, where in _objects(document, f"document {index + 1}"):
            _sort(obj, where, dump)
    return dump


def _only_node_statuses(documents: list[Any], holders: list[dict[Any, Any]]) -> bool:
    """Whether every mapping a ``status`` block was cut from is a Node of the dump."""
    nodes = {
        id(obj)
        for document in documents
        for obj, _ in _objects(document, "")
        if isinstance(obj, Mapping) and _is_node(obj)
    }
    return all(id(holder) in nodes for holder in holders)


def _json_list(text: str) -> list[Any] | None:
    # Imported here: msgspec is for JSON dumps only (a few hundredths of a second).
    from kilo.adapters import dumpjson

    return dumpjson.read_list(text, _is_node)


# Kilo reads a Node's metadata and spec, never its status; a kubelet's status is most of
# a dump (the images a node holds, its conditions), so its blocks are cut before a YAML
# dump is parsed, and left undecoded in a JSON one.
NODE_STATUS = yamlinput.Unread(key="status", check=_only_node_statuses, json=_json_list)


def _is_node(obj: Mapping[Any, Any]) -> bool:
    return obj.get("kind") == "Node" and str(obj.get("apiVersion", "")) in ("v1", "")


def _objects(document: object, where: str) -> Iterator[tuple[object, str]]:
    if isinstance(document, list):
        for i, item in enumerate(document):
            yield from _objects(item, f"{where}, item {i + 1}")
        return
    if isinstance(document, Mapping) and str(document.get("kind", "")).endswith("List"):
        items = document.get("items") or []
        if isinstance(items, list):
            for i, item in enumerate(items):
                yield from _objects(item, f"{where}, item {i + 1}")
            return
    yield document, where


def _sort(obj: object, where: str, dump: Dump) -> None:
    if not isinstance(obj, Mapping):
        dump.warnings.append(f"{where}: not a Kubernetes object; skipped")
        return
    kind = obj.get("kind")
    api_version = str(obj.get("apiVersion", ""))
    if _is_node(obj):
        dump.nodes.append(dict(obj))
    elif kind == "Peer" and api_version.split("/", maxsplit=1)[0] in (PEER_API_GROUP, ""):
        dump.peers.append(dict(obj))
    else:
        name = (
            obj.get("metadata", {}).get("name")
            if isinstance(obj.get("metadata"), Mapping)
            else None
        )
        dump.warnings.append(
            f"{where}: skipped {kind or 'object without kind'} {name or ''}".rstrip()
        )
