"""Go's syntax for command-line values, as Kilo's cobra/pflag flags read them.

Pure: no I/O. ``kg`` and ``kgctl`` read their flags the way Kilo's Go binaries do, so that a
command line written for Kilo means the same here:

* bool flags: ``strconv.ParseBool`` (``1 t T TRUE true True 0 f F FALSE false False``);
* int flags (``--port``): ``strconv.ParseInt(s, 0, 64)``: a sign, the ``0x``/``0o``/``0b``
  prefixes, a leading ``0`` for octal (``010`` is 8) and ``_`` between digits;
* uint flags (``kgctl connect --mtu``): ``strconv.ParseUint(s, 0, 64)``, the same without
  a sign;
* duration flags (``--resync-period``): ``time.ParseDuration`` (``30s``, ``1m30s``,
  ``-2ms``, ``0``).

Each parser raises :class:`ValueError` with Go's own message (``strconv.ParseInt: parsing
"x": invalid syntax``), which pflag wraps as ``invalid argument "x" for "--port" flag: ...``.
"""

from __future__ import annotations

_NS_PER_SECOND = 1_000_000_000


def go_quote(text: str) -> str:
    """Go's ``%q`` of a string (``strconv.Quote``)."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif 0xDC80 <= code <= 0xDCFF:  # an undecodable byte of argv (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char.isprintable() or char == " ":
            out.append(char)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_GO_ESCAPES["\v"] = "\\v"


def _time_quote(text: str) -> str:
    """The quoting of Go's ``time`` package errors: non-ASCII bytes as ``\\xNN``."""
    out = ['"']
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif " " <= char < "\x80":
            out.append(char)
        else:
            data = char.encode("utf-8", "surrogateescape")
            out.extend(f"\\x{byte:02x}" for byte in data)
    out.append('"')
    return "".join(out)


_DIGITS = {2: "01", 8: "01234567", 10: "0123456789", 16: "0123456789abcdefABCDEF"}


def _is_digit(char: str, base: int = 10) -> bool:
    return len(char) == 1 and char in _DIGITS[base]


def parse_bool(text: str) -> bool:
    """Go's ``strconv.ParseBool``."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(f"strconv.ParseBool: parsing {go_quote(text)}: invalid syntax")


def _underscore_ok(text: str) -> bool:
    """Go's ``underscoreOK``: ``_`` only between digits or after a base prefix."""
    saw = "^"
    body = text[1:] if text[:1] in ("+", "-") else text
    index = 0
    is_hex = False
    if len(body) >= 2 and body[0] == "0" and body[1] in "bBoOxX":
        index = 2
        saw = "0"
        is_hex = body[1] in "xX"
    for char in body[index:]:
        if _is_digit(char, 16 if is_hex else 10):
            saw = "0"
            continue
        if char == "_":
            if saw != "0":
                return False
            saw = "_"
            continue
        if saw == "_":
            return False
        saw = "!"
    return saw != "_"


def _digits_and_base(body: str) -> tuple[str, int]:
    """Go's base-0 rules: a ``0b``/``0o``/``0x`` prefix, else a leading ``0`` for octal."""
    if len(body) >= 2 and body[0] == "0" and body[1] in "bBoOxX":
        return body[2:], {"b": 2, "o": 8, "x": 16}[body[1].lower()]
    if len(body) > 1 and body[0] == "0":
        return body[1:], 8
    return body, 10


def parse_int(text: str, bits: int = 64) -> int:
    """Go's ``strconv.ParseInt(text, 0, bits)``, as pflag's int flags use it."""
    syntax = ValueError(f"strconv.ParseInt: parsing {go_quote(text)}: invalid syntax")
    body = text[1:] if text[:1] in ("+", "-") else text
    negative = text[:1] == "-"
    body, base = _digits_and_base(body)
    digits = body.replace("_", "")
    if not digits or not all(_is_digit(c, base) for c in digits):
        raise syntax
    if "_" in body and not _underscore_ok(text):
        raise syntax
    value = -int(digits, base) if negative else int(digits, base)
    if not -(1 << (bits - 1)) <= value < 1 << (bits - 1):
        raise ValueError(f"strconv.ParseInt: parsing {go_quote(text)}: value out of range")
    return value


def parse_uint(text: str, bits: int = 64) -> int:
    """Go's ``strconv.ParseUint(text, 0, bits)``, as pflag's uint flags use it (no sign)."""
    syntax = ValueError(f"strconv.ParseUint: parsing {go_quote(text)}: invalid syntax")
    body, base = _digits_and_base(text)
    digits = body.replace("_", "")
    if not digits or not all(_is_digit(c, base) for c in digits):
        raise syntax
    if "_" in body and not _underscore_ok(text):
        raise syntax
    value = int(digits, base)
    if value >= 1 << bits:
        raise ValueError(f"strconv.ParseUint: parsing {go_quote(text)}: value out of range")
    return value


def parse_uint32(text: str) -> int:
    """Go's ``strconv.ParseUint(text, 10, 32)``."""
    if not text or not all(_is_digit(c) for c in text):
        raise ValueError(f"strconv.ParseUint: parsing {go_quote(text)}: invalid syntax")
    value = int(text)
    if value >= 1 << 32:
        raise ValueError(f"strconv.ParseUint: parsing {go_quote(text)}: value out of range")
    return value


_UNITS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign
    "\u03bcs": 1_000,  # Greek mu
    "ms": 1_000_000,
    "s": _NS_PER_SECOND,
    "m": 60 * _NS_PER_SECOND,
    "h": 3600 * _NS_PER_SECOND,
}


def parse_duration(text: str) -> int:
    """Go's ``time.ParseDuration``, in nanoseconds (``1m30s``, ``1.5h``, ``-2ms``, ``0``)."""
    invalid = ValueError(f"time: invalid duration {_time_quote(text)}")
    rest = text
    negative = False
    if rest[:1] in ("+", "-"):
        negative = rest[0] == "-"
        rest = rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise invalid
    total = 0
    while rest:
        if not (rest[0] == "." or _is_digit(rest[0])):
            raise invalid
        end = 0
        while end < len(rest) and _is_digit(rest[end]):
            end += 1
        whole = int(rest[:end]) if end else 0
        if whole > 1 << 63:
            raise invalid
        has_whole = end > 0
        rest = rest[end:]
        fraction, scale, has_fraction = 0, 1.0, False
        if rest[:1] == ".":
            rest = rest[1:]
            end = 0
            while end < len(rest) and _is_digit(rest[end]):
                end += 1
            has_fraction = end > 0
            for char in rest[:end]:
                # Like Go, stop adding precision once it would overflow.
                if fraction > ((1 << 63) - 1) // 10:
                    break
                fraction = fraction * 10 + int(char)
                scale *= 10
            rest = rest[end:]
        if not has_whole and not has_fraction:
            raise invalid
        end = 0
        while end < len(rest) and not (rest[end] == "." or _is_digit(rest[end])):
            end += 1
        if end == 0:
            raise ValueError(f"time: missing unit in duration {_time_quote(text)}")
        unit_text, rest = rest[:end], rest[end:]
        unit = _UNITS.get(unit_text)
        if unit is None:
            raise ValueError(
                f"time: unknown unit {_time_quote(unit_text)} in duration {_time_quote(text)}"
            )
        if whole > (1 << 63) // unit:
            raise invalid
        value = whole * unit
        if fraction:
            value += int(float(fraction) * (float(unit) / scale))
            if value > 1 << 63:
                raise invalid
        total += value
        if total > 1 << 63:
            raise invalid
    if negative:
        return -total
    if total > (1 << 63) - 1:
        raise invalid
    return total


__all__ = [
    "go_quote",
    "parse_bool",
    "parse_duration",
    "parse_int",
    "parse_uint",
    "parse_uint32",
]
