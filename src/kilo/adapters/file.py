"""The offline backend: Nodes and Peers read from a cluster dump.

A dump is what ``kubectl get nodes,peers.kilo.squat.ai -o yaml`` (or ``-o json``) writes: a
``List`` of objects. Multi-document YAML, bare objects and ``NodeList``/``PeerList`` are
accepted too, so an operator can also hand-write a cluster to plan annotations before
applying them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kilo.errors import BackendError

PEER_API_GROUP = "kilo.squat.ai"


@dataclass(slots=True)
class Dump:
    """The raw objects of a dump, and what in it was skipped."""

    nodes: list[dict[str, Any]] = field(default_factory=list)
    peers: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def read_dump(path: str) -> Dump:
    """Read a dump from ``path`` (``-`` for standard input)."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise BackendError(f"cannot read cluster dump {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise BackendError(
            f"cannot read cluster dump {path}: not UTF-8 text ({exc.reason})"
        ) from exc
    return parse_dump(text, source=path)


def parse_dump(text: str, *, source: str = "<dump>") -> Dump:
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise BackendError(
            f"cluster dump {source} is not valid YAML or JSON{where}: {problem}"
        ) from exc
    except RecursionError as exc:
        raise BackendError(
            f"cluster dump {source} is nested too deeply to be a cluster dump"
        ) from exc
    dump = Dump()
    try:
        for index, document in enumerate(documents):
            if document is None:
                continue
            for obj, where in _objects(document, f"document {index + 1}"):
                _sort(obj, where, dump)
    except RecursionError as exc:
        raise BackendError(
            f"cluster dump {source} is nested too deeply to be a cluster dump"
        ) from exc
    return dump


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
    if kind == "Node" and api_version in ("v1", ""):
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
