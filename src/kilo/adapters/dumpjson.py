"""A JSON cluster dump (``kubectl get nodes,peers -o json``) decoded without a Node's status.

msgspec keeps a field declared :class:`msgspec.Raw` as the bytes it spans, checked as JSON
syntax but not decoded: a kubelet's status, nine tenths of a Node, is 80 of a 5000-node
dump's 85 MB, and the json module built all of it (0.57 s with the checks, against 0.08 s
here). Only a Node's status is left so: every other field of the List and its items is
decoded (and checked by :mod:`kilo.adapters.yamlinput` as plain JSON, as the json module's
documents are), and a field the structs do not declare, a status of another kind, a float
outside a status, anything else than a ``List`` of objects, or anything msgspec refuses (a
lone surrogate, a number out of range, NaN, nesting deeper than it decodes) is left to
yamlinput's JSON path, which decodes the whole text (an unchecked field could hold what
makes the json module refuse the text, and the text is then read as YAML, with YAML's
values: ``1e3`` is a string there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

_UNSET = msgspec.UNSET


class _Item(msgspec.Struct, forbid_unknown_fields=True):
    """The fields a Kubernetes object of a dump has (kubectl writes no others)."""

    apiVersion: Any = _UNSET
    kind: Any = _UNSET
    metadata: Any = _UNSET
    spec: Any = _UNSET
    status: msgspec.Raw | msgspec.UnsetType = _UNSET  # checked JSON, not decoded


class _List(msgspec.Struct, forbid_unknown_fields=True):
    apiVersion: Any = _UNSET
    kind: Any = _UNSET
    metadata: Any = _UNSET
    items: list[_Item] | msgspec.UnsetType = _UNSET


_ITEM_FIELDS = tuple(name for name in _Item.__struct_fields__ if name != "status")
_LIST_FIELDS = tuple(name for name in _List.__struct_fields__ if name != "items")


class _Float(Exception):
    """A float outside a status: the text is decoded whole."""


def _refuse_float(text: str) -> float:
    # A status the json module refuses (1e400) makes yamlinput read the whole text as YAML,
    # where 1e3 is a string; a dump with no float outside its statuses reads the same
    # either way, and kubectl writes none there (a Node's quantities are strings).
    raise _Float(text)


_DECODER = msgspec.json.Decoder(_List, float_hook=_refuse_float)


def read_list(text: str, unread: Callable[[dict[str, Any]], bool]) -> list[Any] | None:
    """The one document of ``text``, a ``List`` whose items' status is dropped where
    ``unread`` says nobody reads it (given the item without it), or None: the text must be
    decoded whole."""
    try:
        document = _DECODER.decode(text)
    except (msgspec.MsgspecError, RecursionError, _Float):
        return None
    if not str(document.kind).endswith("List") or isinstance(document.items, msgspec.UnsetType):
        return None
    items = []
    for item in document.items:
        obj = {name: value for name in _ITEM_FIELDS if (value := getattr(item, name)) is not _UNSET}
        if str(obj.get("kind", "")).endswith("List"):
            return None  # a List in the List: its items are objects too
        if item.status is not _UNSET and not unread(obj):
            return None  # a status somebody may read: decoded with the rest
        items.append(obj)
    top = {name: value for name in _LIST_FIELDS if (value := getattr(document, name)) is not _UNSET}
    return [{**top, "items": items}]
