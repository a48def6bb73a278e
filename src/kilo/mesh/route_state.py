"""The route table's state file: the keys it tracks, as text, and back.

Pure: the netlink adapter reads and writes the file. The text is JSON, one key to a line,
sorted, so that equal sets give equal files; the table writes it before and after every
change of its routes (:class:`StateText` keeps that cheap with ten thousand of them).
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence

from kilo.mesh.route_sync import RouteKey, RuleKey

__all__ = ["STATE_VERSION", "StateText", "decode_state", "encode_state"]

STATE_VERSION = 1


def _text(value: object | None) -> str | None:
    return None if value is None else str(value)


def encode_state(routes: Iterable[RouteKey], rules: Iterable[RuleKey]) -> str:
    """The tracked keys as JSON text, one key to a line, sorted so that equal sets give
    equal files.

    The agent writes this before and after every change of its routes, so with thousands
    of routes it must cost little more than a join: each key's line is memoised (keys are
    immutable, and the tracked ones live from one change to the next)."""
    return _document(sorted(map(_route_line, routes)), sorted(map(_rule_line, rules)))


class StateText:
    """:func:`encode_state` of one table's tracked keys, from one call to the next.

    The route table writes its state before and after every change: at 5000 nodes some
    10 000 route lines, which :func:`encode_state` sorts again each time (about 8 ms of a
    leader's change). This keeps the last call's sorted lines and moves only the lines of
    the keys that came or went (set differences in C, a binary search each); the text is
    always ``encode_state(routes, rules)``."""

    def __init__(self) -> None:
        self._routes: frozenset[RouteKey] = frozenset()
        self._lines: list[str] = []

    def encode(self, routes: frozenset[RouteKey], rules: Iterable[RuleKey]) -> str:
        came, went = routes - self._routes, self._routes - routes
        if len(came) + len(went) > len(routes) // 4:
            lines = sorted(map(_route_line, routes))
        else:
            lines = self._lines
            for line in map(_route_line, went):
                del lines[bisect.bisect_left(lines, line)]
            for line in map(_route_line, came):
                bisect.insort(lines, line)
        self._routes, self._lines = routes, lines
        return _document(lines, sorted(map(_rule_line, rules)))


def _document(route_lines: Sequence[str], rule_lines: Sequence[str]) -> str:
    return (
        f'{{\n "version": {STATE_VERSION},\n'
        f' "routes": [{_lines(route_lines)}],\n'
        f' "rules": [{_lines(rule_lines)}]\n}}\n'
    )


def _lines(lines: Sequence[str]) -> str:
    return "".join(["\n  ", ",\n  ".join(lines), "\n "]) if lines else ""


@functools.lru_cache(maxsize=1 << 16)
def _route_line(key: RouteKey) -> str:
    return json.dumps(
        {
            "table": key.table,
            "dst": str(key.dst),
            "gw": _text(key.gw),
            "src": _text(key.src),
            "dev": key.dev,
        }
    )


@functools.lru_cache(maxsize=1 << 12)
def _rule_line(key: RuleKey) -> str:
    return json.dumps(
        {
            "family": key.version,
            "table": key.table,
            "src": _text(key.src),
            "dst": _text(key.dst),
            "iif": key.iif,
        }
    )


def _int(item: Mapping[str, object], name: str) -> int:
    value = item.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name!r} must be a positive integer, not {value!r}")
    return value


def _str(item: Mapping[str, object], name: str) -> str:
    value = item.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name!r} must be a non-empty string, not {value!r}")
    return value


def _optional(item: Mapping[str, object], name: str) -> str | None:
    value = item.get(name)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name!r} must be a string or null, not {value!r}")
    return value


def _items(document: Mapping[str, object], name: str) -> list[Mapping[str, object]]:
    items = document.get(name)
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ValueError(f"{name!r} must be a list of objects")
    return items


def _decode_route(item: Mapping[str, object]) -> RouteKey:
    gw, src = _optional(item, "gw"), _optional(item, "src")
    return RouteKey(
        dst=ipaddress.ip_network(_str(item, "dst")),
        dev=_str(item, "dev"),
        gw=None if gw is None else ipaddress.ip_address(gw),
        src=None if src is None else ipaddress.ip_address(src),
        table=_int(item, "table"),
    )


def _decode_rule(item: Mapping[str, object]) -> RuleKey:
    version = _int(item, "family")
    if version not in (4, 6):
        raise ValueError(f"'family' must be 4 or 6, not {version!r}")
    src, dst = _optional(item, "src"), _optional(item, "dst")
    return RuleKey(
        table=_int(item, "table"),
        version=version,
        src=None if src is None else ipaddress.ip_network(src),
        dst=None if dst is None else ipaddress.ip_network(dst),
        iif=_optional(item, "iif"),
    )


def decode_state(text: str) -> tuple[frozenset[RouteKey], frozenset[RuleKey]]:
    """Read :func:`encode_state`'s text; :class:`ValueError` says what is wrong with it."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    if document.get("version") != STATE_VERSION:
        raise ValueError(f"unknown version {document.get('version')!r}")
    routes = frozenset(_decode_route(item) for item in _items(document, "routes"))
    rules = frozenset(_decode_rule(item) for item in _items(document, "rules"))
    return routes, rules
