"""A WireGuard peer as a Kilo ``Peer`` object, in YAML or JSON (``kgctl showconf … --as-peer``).

Pure. No I/O, no clock, no logging. ``peer_object`` builds the object as a plain dict whose
key order is Go's struct field order; ``to_json`` and ``to_yaml`` render it the way kgctl's
apimachinery serialisers do (see kilo-k8s-cli.md §4.5.1):

* JSON: Go's ``json.MarshalIndent(obj, "", "  ")``: 2-space indent, struct field order, no
  trailing newline, and ``<``, ``>``, ``&``, U+2028 and U+2029 escaped as ``\\u003c``….
* YAML: sigs.k8s.io/yaml's ``JSONToYAML`` (go-yaml v2): keys sorted, 2-space indent, block
  sequences not indented under their key, trailing newline, and a string that go-yaml
  would read back as something else (``""``, ``"123"``, ``"y"``, ``"2024-01-02"``…) in
  double quotes.

Deliberate deviations from Kilo. Kilo's output here produces Peers that Kilo itself
rejects or misreads, so it is fixed rather than copied:

* ``persistentKeepalive`` is in seconds (Kilo writes the Go duration: nanoseconds);
* ``dnsOrIP.dns`` is the endpoint's DNS host name (Kilo writes its port, e.g. ``"51820"``),
  and ``dnsOrIP.ip`` is then omitted (Kilo writes ``"<nil>"``), even once the name was
  resolved: the Peer should keep following the name;
* ``endpoint`` is omitted when the peer has no usable endpoint (Kilo writes
  ``{dnsOrIP: {ip: "<nil>"}, port: 0}``, which fails the Peer validation).

Everything else is as Kilo writes it: ``allowedIPs`` is ``null`` when empty,
``persistentKeepalive`` is omitted unless positive, ``presharedKey`` is omitted when
there is none, ``publicKey`` is always present (``""`` for the zero key) and
``metadata`` holds only the name.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from collections.abc import Mapping
from typing import TypeAlias

import yaml

from kilo.mesh import gojson
from kilo.mesh.endpoint import Endpoint
from kilo.mesh.wireguard import WireGuardPeer

API_VERSION = "kilo.squat.ai/v1alpha1"
KIND = "Peer"

JSONValue: TypeAlias = bool | int | str | list["JSONValue"] | dict[str, "JSONValue"] | None


def peer_object(peer: WireGuardPeer, name: str) -> dict[str, JSONValue]:
    """The ``Peer`` named ``name`` that stands for ``peer`` (Kilo's ``translatePeer``)."""
    spec: dict[str, JSONValue] = {"allowedIPs": [str(a) for a in peer.allowed_ips] or None}
    endpoint = _endpoint(peer.endpoint)
    if endpoint is not None:
        spec["endpoint"] = endpoint
    if peer.persistent_keepalive > 0:
        spec["persistentKeepalive"] = peer.persistent_keepalive
    if peer.preshared_key is not None:
        spec["presharedKey"] = str(peer.preshared_key)
    spec["publicKey"] = "" if peer.public_key.is_zero else str(peer.public_key)
    metadata: dict[str, JSONValue] = {"name": name} if name else {}
    return {"kind": KIND, "apiVersion": API_VERSION, "metadata": metadata, "spec": spec}


def _endpoint(endpoint: Endpoint | None) -> dict[str, JSONValue] | None:
    if endpoint is None or not endpoint.ready:
        return None
    dns_or_ip: dict[str, JSONValue]
    if endpoint.host:
        dns_or_ip = {"dns": endpoint.host}
    elif endpoint.ip is not None:
        dns_or_ip = {"ip": str(endpoint.ip)}
    else:
        return None
    return {"dnsOrIP": dns_or_ip, "port": endpoint.port}


def to_json(obj: Mapping[str, JSONValue]) -> str:
    """``obj`` as Go's ``json.MarshalIndent(obj, "", "  ")`` writes it (no trailing newline)."""
    return gojson.escape(json.dumps(obj, indent=2, ensure_ascii=False))


def to_yaml(obj: Mapping[str, JSONValue]) -> str:
    """``obj`` as sigs.k8s.io/yaml's ``JSONToYAML`` writes it (keys sorted, trailing newline)."""
    return yaml.dump(
        obj,
        Dumper=_GoYAMLDumper,
        sort_keys=True,
        default_flow_style=False,
        allow_unicode=True,
    )


class _GoYAMLDumper(yaml.SafeDumper):
    """PyYAML's safe dumper, quoting strings the way go-yaml v2 does.

    Both emitters derive from libyaml and agree on layout and on when a string cannot be
    plain (PyYAML then uses single quotes, as go-yaml does). They differ on strings that
    are plain-safe but would be *read* as another type: go-yaml double-quotes those, using
    its own resolver, which also treats ``y``/``n`` as booleans and ``1e5`` as a float
    (and kubectl, reading ``name: y`` plain, would get a boolean). Where PyYAML's YAML 1.1
    resolver is the stricter one (``2024-13-02`` looks like a timestamp to it), PyYAML's
    single quotes are kept: still a string for every reader.
    """


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if _go_yaml_reads_as_non_string(value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_GoYAMLDumper.add_representer(str, _represent_str)

_GO_YAML_CONSTANTS = frozenset(
    {
        *("y", "Y", "yes", "Yes", "YES", "on", "On", "ON", "true", "True", "TRUE"),
        *("n", "N", "no", "No", "NO", "off", "Off", "OFF", "false", "False", "FALSE"),
        *("", "~", "null", "Null", "NULL"),
        *(".nan", ".NaN", ".NAN", ".inf", ".Inf", ".INF"),
        *("+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF"),
    }
)
_GO_INT = re.compile(
    r"[-+]?(?:0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)", re.ASCII
)
_GO_YAML_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?", re.ASCII)
_GO_FLOAT_AFTER_DOT = re.compile(r"\.[0-9]+(?:[eE][-+]?[0-9]+)?", re.ASCII)
_BASE60_FLOAT = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?", re.ASCII)
_TIMESTAMP = re.compile(
    r"([0-9]{4})-([0-9]{1,2})-([0-9]{1,2})"
    r"(?:[Tt][0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}(?:\.[0-9]+)?(?:Z|[-+][0-9]{2}:[0-9]{2})"
    r"| [0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}(?:\.[0-9]+)?)?",
    re.ASCII,
)
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1


def _go_yaml_reads_as_non_string(s: str) -> bool:
    """Whether go-yaml v2 would read ``s``, written plain, as a non-string (so quotes it).

    A close model of go-yaml v2's ``resolve`` for the values a Peer holds (names, CIDRs,
    IPs, DNS names, base64 keys); exotic spellings (hexadecimal floats) are not modelled.
    """
    if s in _GO_YAML_CONSTANTS or _BASE60_FLOAT.fullmatch(s):
        return True
    first = s[0]
    if first == ".":
        return _GO_FLOAT_AFTER_DOT.fullmatch(s) is not None
    if not (first.isascii() and (first.isdigit() or first in "+-")):
        return False
    if _is_timestamp(s):
        return True
    plain = s.replace("_", "")
    if _GO_INT.fullmatch(plain):
        # ParseInt (signed, int64) or else ParseUint (no sign, uint64).
        maximum = _INT64_MAX if plain[0] in "+-" else _UINT64_MAX
        if _INT64_MIN <= int(_python_int_literal(plain), 0) <= maximum:
            return True
    if _GO_YAML_FLOAT.fullmatch(plain):
        return not math.isinf(float(plain))  # ParseFloat fails on overflow
    return False


def _python_int_literal(go: str) -> str:
    """A Go integer literal (base prefix 0, 0x, 0o, 0b) as Python's ``int(…, 0)`` reads it."""
    sign = go[0] if go[0] in "+-" else ""
    digits = go[len(sign) :]
    if len(digits) > 1 and digits[0] == "0" and digits[1].isdigit():
        digits = "0o" + digits[1:]  # Go's leading-zero octal
    elif digits.strip("0") == "":
        digits = "0"
    return sign + digits


def _is_timestamp(s: str) -> bool:
    match = _TIMESTAMP.fullmatch(s)
    if match is None:
        return False
    try:
        datetime.date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return False
    return True
