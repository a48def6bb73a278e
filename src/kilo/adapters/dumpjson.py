"""A JSON cluster dump (``kubectl get nodes,peers -o json``) decoded into what kgctl reads.

msgspec skips the fields a struct does not declare without building them: a kubelet's
status, nine tenths of a Node, is 80 of a 5000-node dump's 85 MB, and the json module built
all of it (0.57 s with the checks, against 0.08 s here). Anything else than a ``List`` of
objects, and anything msgspec refuses (a lone surrogate, a number out of range, NaN, nesting
deeper than it decodes), is left to :mod:`kilo.adapters.yamlinput`'s JSON path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec


class _Item(msgspec.Struct):
    apiVersion: Any = msgspec.UNSET
    kind: Any = msgspec.UNSET
    metadata: Any = msgspec.UNSET
    spec: Any = msgspec.UNSET


_FIELDS = frozenset(_Item.__struct_fields__)


class _List(msgspec.Struct):
    kind: Any = msgspec.UNSET
    items: list[_Item] | msgspec.UnsetType = msgspec.UNSET


def read_list(text: str, fields: Sequence[str]) -> list[Any] | None:
    """The one document of ``text``, a ``List`` whose items keep ``fields`` only (those
    present; of apiVersion, kind, metadata and spec), or None."""
    assert _FIELDS.issuperset(fields)
    try:
        document = msgspec.json.decode(text, type=_List)
    except (msgspec.MsgspecError, RecursionError):
        return None
    if not str(document.kind).endswith("List") or isinstance(document.items, msgspec.UnsetType):
        return None
    items = []
    for item in document.items:
        obj = {
            name: value for name in fields if (value := getattr(item, name)) is not msgspec.UNSET
        }
        if str(obj.get("kind", "")).endswith("List"):
            return None  # a List in the List: its items are objects too
        items.append(obj)
    return [{"kind": document.kind, "items": items}]
