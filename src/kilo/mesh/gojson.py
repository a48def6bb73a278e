"""JSON as Go's ``encoding/json`` reads and writes it, where Kilo's bytes must be matched.

Pure. Two places need Go's exact bytes: the CNI conflist Kilo rewrites (a
``map[string]interface{}`` round trip: numbers are float64, keys sorted) and the
webhook's AdmissionReview answers (Go structs: fields in declaration order). Both share
Go's string encoding: compact, ``<``, ``>``, ``&``, U+2028 and U+2029 escaped, and an
unpaired surrogate (which Python's decoder keeps) written as U+FFFD, as Go decodes it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")
_HTML_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_HTML_UNSAFE = re.compile("[<>&\u2028\u2029]")


def clean(text: str) -> str:
    """Unpaired surrogates become U+FFFD, as Go's decoder makes them."""
    return _SURROGATE.sub("\ufffd", text)


# --- decoding into interface{} ---------------------------------------------------------------


def _fix(value: Any) -> Any:
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, list):
        return [_fix(item) for item in value]
    return value  # objects are fixed by the pairs hook; numbers, booleans, null


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Duplicate keys: the last one wins, as in Go.
    return {clean(key): _fix(value) for key, value in pairs}


def _number(text: str) -> float:
    # Go decodes every number into a float64 and fails when it does not fit.
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"json: cannot unmarshal number {text} into Go value of type float64")
    return value


def _constant(text: str) -> Any:
    raise ValueError(f"invalid character {text[0]!r} looking for beginning of value")


def loads(text: str) -> Any:
    """Decode ``text`` as Go decodes JSON into ``interface{}``: every number is a float.

    Raises :class:`ValueError` where Go fails (invalid JSON, ``NaN``/``Infinity``
    literals, numbers beyond float64). Unpaired surrogate escapes become U+FFFD.
    """
    try:
        value = json.loads(
            text,
            object_pairs_hook=_object,
            parse_float=_number,
            parse_int=_number,
            parse_constant=_constant,
        )
    except RecursionError as exc:
        raise ValueError("JSON is nested too deeply") from exc
    return _fix(value)


# --- encoding -----------------------------------------------------------------------------------


def format_float(value: float) -> str:
    """Print a float64 as Go's ``encoding/json`` does.

    The shortest decimal that reads back as ``value``, in plain notation when
    1e-6 <= |value| < 1e21 (so ``1420.0`` prints ``1420`` and ``1e20`` prints
    ``100000000000000000000``) and in exponent notation otherwise (``1e+21``, ``1.5e-7``,
    ``1e-10``). Zero prints ``0`` and negative zero ``-0``.
    """
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"json: unsupported value: {value!r}")
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    magnitude = abs(value)
    if magnitude == 0:
        return sign + "0"
    digits, point = _shortest_digits(magnitude)
    if 1e-6 <= magnitude < 1e21:
        if point <= 0:
            return f"{sign}0.{'0' * -point}{digits}"
        if point >= len(digits):
            return sign + digits + "0" * (point - len(digits))
        return f"{sign}{digits[:point]}.{digits[point:]}"
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    exponent = point - 1
    # strconv writes at least two exponent digits; encoding/json trims "e-07" to "e-7".
    exponent_text = f"{abs(exponent):02d}" if exponent >= 0 else str(-exponent)
    return f"{sign}{mantissa}e{'+' if exponent >= 0 else '-'}{exponent_text}"


def _shortest_digits(magnitude: float) -> tuple[str, int]:
    """Digits ``d1..dn`` (no leading or trailing zeros) and ``p`` with value 0.d1..dn x 10^p.

    Python's ``repr`` and Go's ``strconv`` both give the shortest round-tripping digits.
    """
    mantissa, _, exponent = repr(magnitude).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    point = len(whole) + (int(exponent) if exponent else 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    return stripped.rstrip("0"), point


def escape(encoded: str) -> str:
    """JSON text with Go's escapes applied. The escaped characters can only occur inside
    strings, so escaping the whole text is the same as escaping each string."""
    return _HTML_UNSAFE.sub(lambda m: _HTML_ESCAPES[m.group()], encoded)


def _string(text: str) -> str:
    return escape(json.dumps(clean(text), ensure_ascii=False))


def dumps(value: Any, *, sort_keys: bool = True) -> str:
    """Encode ``value`` as Go's ``json.Marshal`` does.

    ``sort_keys``: a Go map (keys sorted); ``False``: a Go struct, whose fields keep the
    order given. Floats are printed by :func:`format_float`. Accepts what :func:`loads`
    returns, plus ints and tuples.
    """
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(dumps(item, sort_keys=sort_keys) for item in value) + "]"
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda item: item[0]) if sort_keys else value.items()
        return (
            "{"
            + ",".join(f"{_string(str(k))}:{dumps(v, sort_keys=sort_keys)}" for k, v in items)
            + "}"
        )
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")
