"""Values quoted in messages, cut to a bounded length.

Pure. Anything an operator, a dump or another node wrote may be echoed in a warning, an
error or an admission answer; a 256 KiB annotation, a 5 MB CIDR in a Peer or a structure
nested ten thousand levels deep must cost one short line, never a flood of log output, a
huge HTTP answer or a ``RecursionError`` in ``repr``. Every echoed value goes through here.
"""

from __future__ import annotations

import itertools
import json
import reprlib

# How many characters of a value a message shows; the rest becomes "…".
LIMIT = 80
ELLIPSIS = "…"

# reprlib bounds the work as well as the output: nesting beyond ``maxlevel`` is "...", and
# long containers and strings are cut before they are formatted, so even a value nested
# far deeper than Python's recursion limit is shown in constant time.


class _BoundedRepr(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        # Python refuses to format integers of more than 4300 digits (ValueError); the
        # bit length is known without formatting, and an int this big is never valid.
        if x.bit_length() > 128:
            return f"<{x.bit_length()}-bit integer>"
        return super().repr_int(x, level)


_REPR = _BoundedRepr()  # keyword arguments only from Python 3.12
_REPR.maxlevel = 3
_REPR.maxtuple = _REPR.maxlist = _REPR.maxarray = _REPR.maxdict = 4
_REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = 4
_REPR.maxstring = _REPR.maxother = LIMIT
_REPR.maxlong = 40


def shorten(text: str, limit: int = LIMIT) -> str:
    """``text`` itself when it is at most ``limit`` characters, else its start and "…"."""
    if len(text) <= limit:
        return text
    return text[: max(limit - len(ELLIPSIS), 0)] + ELLIPSIS


def short_repr(value: object, limit: int = LIMIT) -> str:
    """A bounded ``repr`` of any value (strings are quoted, as ``repr`` quotes them)."""
    return shorten(_REPR.repr(value), limit)


def show(value: object, limit: int = LIMIT) -> str:
    """A value as a message shows it: a string as is, anything else as bounded JSON."""
    if isinstance(value, str):
        return shorten(value, limit)
    return short_json(value, limit)


def short_json(value: object, limit: int = LIMIT) -> str:
    """A bounded JSON rendering of a value read from JSON or YAML (``["a", 1]``).

    Operators read Kubernetes objects as JSON or YAML, so a spec field is shown that way
    rather than as a Python ``repr``. Nesting below three levels and items after the
    fourth are elided (``[...]``, ``…``), so the work is bounded however large the value.
    """
    return shorten(_json(value, 3, limit + 1), limit)


def _json(value: object, depth: int, budget: int) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return _REPR.repr_int(value, 0)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value[:budget], ensure_ascii=False)
    if isinstance(value, list | tuple | dict):
        is_map = isinstance(value, dict)
        opening, closing = ("{", "}") if is_map else ("[", "]")
        if not value:
            return opening + closing
        if depth == 0:
            return f"{opening}...{closing}"
        items = list(itertools.islice(value.items() if isinstance(value, dict) else value, 5))
        parts: list[str] = []
        used = 0
        for item in items[:4]:
            if is_map:
                key, inner = item
                text = f"{_json(str(key), depth - 1, budget)}: {_json(inner, depth - 1, budget)}"
            else:
                text = _json(item, depth - 1, budget)
            parts.append(text)
            used += len(text) + 2
            if used > budget:
                break
        if len(value) > len(parts):
            parts.append("…")
        return opening + ", ".join(parts) + closing
    return short_repr(value, budget)


def printable(text: str) -> str:
    """``text`` with control and format characters written as escapes (``\\x1b``).

    For text a terminal shows: a location or name written by someone else must not be able
    to move the cursor, colour the output or reverse its direction (U+202E).
    """
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )


def one_line(text: str, limit: int = LIMIT) -> str:
    """Text from elsewhere (a server, a plugin, a file) as one short line: runs of white
    space, newlines included, become one space, and the result is cut at ``limit``."""
    return shorten(" ".join(text.split()), limit)
