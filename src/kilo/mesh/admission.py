"""Peer admission: judge one AdmissionReview for a Kilo ``Peer`` (the core of ``kg webhook``).

Pure. No I/O, no clock, no logging: the HTTP body and its Content-Type go in, the HTTP
answer comes out, together with what the shell needs for its metrics and logs. The
cluster state for the overlap checks (the other Peers and the Nodes' pod CIDRs) is passed
in by the caller, who keeps it current; empty mappings mean "Kilo's checks only".

Kilo's webhook (kilo-k8s-cli.md §3.5) first, with its messages and status codes:

1. a Content-Type other than ``application/json`` → 400
   ``received Content-Type=<ct>, expected application/json``;
2. a body that is not a JSON AdmissionReview → 400 ``Request could not be decoded: <why>``;
3. another ``apiVersion``/``kind`` than ``admission.k8s.io/v1`` ``AdmissionReview`` → 400
   ``only API v1 is supported``;
4. ``request.object`` that cannot be read as a Peer → 400
   ``could not unmarshal extension to peer spec: <why>``;
5. Kilo's ``Peer.Validate`` (:func:`kilo.mesh.translate.validate_peer_spec`) on the new
   object: 200 with ``allowed: false`` and Kilo's message, else ``allowed: true``.

Deliberate differences (docs/compatibility.md):

* Kilo crashes the handler (the client sees a dropped connection) for a review without
  ``request``; here that is 400 ``the AdmissionReview has no request``. An object whose
  ``kind`` is not ``Peer`` is 400 too (Kilo validates any object as if it were a Peer).
* A Content-Type with parameters (``application/json; charset=utf-8``) is accepted.
* Kilo's decoding error ends in a stray ``:``; the reasons here are our own words.
* A field of the wrong JSON type (``"port": "x"``) is a denial naming the field (Kilo:
  400), so that ``kubectl`` shows why.
* ``DELETE`` is always allowed (Kilo answers 400, as the object is empty).
* Extension: a Peer that Kilo accepts is still denied when one of its allowed IPs overlaps
  an allowed IP of another Peer (a Peer of the same name, the object being updated, does
  not count) or a Node's pod CIDR (``spec.podCIDR`` and ``spec.podCIDRs``): WireGuard
  and the routes Kilo programs would send that traffic to the wrong place. Kilo's webhook
  reads nothing from the cluster and cannot check this.

Answers are encoded as Go's ``encoding/json`` writes them (field order, ``<>&`` escaped),
so that the bytes equal Kilo's for the same review.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kilo.mesh import gojson, ip
from kilo.mesh.ip import IPNetwork
from kilo.mesh.model import MAX_KEEPALIVE, Peer
from kilo.mesh.text import short_json, shorten
from kilo.mesh.translate import validate_peer_spec

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"
PEER_API_VERSION = "kilo.squat.ai/v1alpha1"
PEER_KIND = "Peer"
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
DELETE = "DELETE"

ONLY_V1 = "only API v1 is supported"
NO_REQUEST = "the AdmissionReview has no request"
DECODE = "Request could not be decoded: "
UNMARSHAL = "could not unmarshal extension to peer spec: "


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """The HTTP answer to one request, and what the shell counts and logs about it."""

    status: int
    content_type: str
    body: bytes
    operation: str = ""  # request.operation ("" when no review was read)
    allowed: bool | None = None  # None: no review was answered (a 4xx)
    message: str = ""  # the error, or why the Peer was denied; "" when allowed
    name: str = ""  # the Peer's name, when known
    uid: str = ""


class _BadRequest(Exception):
    pass


def review(
    body: bytes,
    content_type: str | None,
    *,
    peers: Mapping[str, Peer],
    pod_cidrs: Mapping[str, Sequence[IPNetwork]],
) -> Answer:
    """Judge the AdmissionReview in ``body``; never raises for any input."""
    ct = content_type or ""
    if ct.partition(";")[0].strip().lower() != JSON:
        return _error(f"received Content-Type={shorten(ct)}, expected {JSON}")
    try:
        document = _decode(body)
        request = _request(document)
    except _BadRequest as exc:
        return _error(str(exc))
    uid = _string(request.get("uid"))
    operation = _string(request.get("operation"))
    if operation == DELETE:
        return _answer(uid=uid, operation=operation, name=_string(request.get("name")))
    try:
        name, spec = _peer(request)
    except _BadRequest as exc:
        return _error(str(exc), operation=operation, uid=uid)
    problem = validate_peer_spec(spec)
    message = problem[1] if problem is not None else None
    if message is None and isinstance(spec, Mapping):
        message = keepalive_problem(spec.get("persistentKeepalive"))
    if message is None and isinstance(spec, Mapping):
        allowed_ips = spec.get("allowedIPs") or []
        message = overlap(name, allowed_ips, peers=peers, pod_cidrs=pod_cidrs)
    return _answer(uid=uid, operation=operation, name=name, denied=message)


def keepalive_problem(keepalive: object) -> str | None:
    """Why a (Kilo-valid) keepalive cannot be used, or ``None``.

    WireGuard's persistent keepalive is a 16-bit number of seconds. Kilo accepts any
    non-negative integer and WireGuard then gets something else (agents here cap it at
    65535 with a warning), so the webhook denies what would be silently changed.
    """
    if isinstance(keepalive, int) and not isinstance(keepalive, bool) and keepalive > MAX_KEEPALIVE:
        return (
            f"persistent keepalive must be at most {MAX_KEEPALIVE} seconds (WireGuard's "
            f"maximum); got {short_json(keepalive)}"
        )
    return None


def overlap(
    name: str,
    allowed_ips: Sequence[str],
    *,
    peers: Mapping[str, Peer],
    pod_cidrs: Mapping[str, Sequence[IPNetwork]],
) -> str | None:
    """The first conflict of Peer ``name``'s allowed IPs (valid CIDR strings), or ``None``.

    Nodes are checked before Peers, each in name order, so the answer does not depend on
    the order of the cluster state.
    """
    for text in allowed_ips:
        cidr = ip.parse_interface(text)
        if cidr is None:
            continue
        for node in sorted(pod_cidrs):
            for pod_cidr in pod_cidrs[node]:
                if ip.intersect(cidr, pod_cidr):
                    return f"allowed IP {text} overlaps the pod CIDR {pod_cidr} of node {node}"
        for other in sorted(peers):
            if other == name:
                continue
            for theirs in peers[other].allowed_ips:
                if ip.intersect(cidr, theirs):
                    return f"allowed IP {text} overlaps allowed IP {theirs} of peer {other}"
    return None


def pod_cidrs_of(node: Mapping[str, Any]) -> tuple[IPNetwork, ...]:
    """A Node's pod CIDRs: ``spec.podCIDR`` and ``spec.podCIDRs``, valid ones, without repeats."""
    spec = node.get("spec")
    if not isinstance(spec, Mapping):
        return ()
    texts: list[object] = [spec.get("podCIDR")]
    many = spec.get("podCIDRs")
    if isinstance(many, list):
        texts += many
    found: dict[IPNetwork, None] = {}
    for text in texts:
        if isinstance(text, str) and text:
            network = ip.parse_network(text)
            if network is not None:
                found[network] = None
    return tuple(found)


# --- decoding -------------------------------------------------------------------------------


def _decode(body: bytes) -> dict[str, Any]:
    # Go's decoder replaces invalid UTF-8 inside strings with U+FFFD; outside strings the
    # replacement character is a syntax error, as it is for Go.
    text = body.decode("utf-8", errors="replace")
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise _BadRequest(f"{DECODE}the body is not JSON: {exc}") from None
    except RecursionError:
        raise _BadRequest(f"{DECODE}the body is nested too deeply") from None
    if not isinstance(document, dict):
        raise _BadRequest(f"{DECODE}the body is a JSON {_json_type(document)}, not an object")
    return document


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON value")


def _request(document: Mapping[str, Any]) -> Mapping[str, Any]:
    """The review's ``request``, after Kilo's checks of the review itself."""
    for field in ("apiVersion", "kind"):
        _expect_string(document, field, field, DECODE)
    request = document.get("request")
    if request is not None and not isinstance(request, dict):
        raise _BadRequest(f"{DECODE}request is a JSON {_json_type(request)}, not an object")
    if request is not None:
        for field in ("uid", "operation", "name"):
            _expect_string(request, field, f"request.{field}", DECODE)
    if (document.get("apiVersion"), document.get("kind")) != (API_VERSION, KIND):
        raise _BadRequest(ONLY_V1)
    if request is None:
        raise _BadRequest(NO_REQUEST)
    return request


def _peer(request: Mapping[str, Any]) -> tuple[str, object]:
    """The name and spec of ``request.object``, which must be a Peer."""
    obj = request.get("object")
    if obj is None:
        raise _BadRequest(f"{UNMARSHAL}request.object is empty")
    if not isinstance(obj, dict):
        raise _BadRequest(f"{UNMARSHAL}request.object is a JSON {_json_type(obj)}, not a Peer")
    for field in ("apiVersion", "kind"):
        _expect_string(obj, field, f"request.object.{field}", UNMARSHAL)
    kind, api_version = obj.get("kind"), obj.get("apiVersion")
    # Without apiVersion and kind the object is read as a Peer, as Kilo reads it.
    if (kind and kind != PEER_KIND) or (api_version and api_version != PEER_API_VERSION):
        what = shorten(" ".join(part for part in (api_version, kind) if part))
        raise _BadRequest(
            f"{UNMARSHAL}request.object is a {what}, not a {PEER_API_VERSION} {PEER_KIND}"
        )
    metadata = obj.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise _BadRequest(
            f"{UNMARSHAL}request.object.metadata is a JSON {_json_type(metadata)}, not an object"
        )
    _expect_string(metadata, "name", "request.object.metadata.name", UNMARSHAL)
    name = _string(metadata.get("name")) or _string(request.get("name"))
    spec = obj.get("spec")
    # Like Go, a missing or null spec is the empty spec (and fails on its empty key).
    return name, {} if spec is None else spec


def _expect_string(obj: Mapping[str, Any], key: str, label: str, prefix: str) -> None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise _BadRequest(f"{prefix}{label} is a JSON {_json_type(value)}, not a string")


def _string(value: object) -> str:
    return value if isinstance(value, str) else ""


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


# --- encoding -------------------------------------------------------------------------------


def _error(message: str, *, operation: str = "", uid: str = "") -> Answer:
    """Go's ``http.Error``: the message and a newline, as plain text."""
    text = gojson.clean(message)
    return Answer(
        status=400,
        content_type=TEXT,
        body=(text + "\n").encode("utf-8"),
        operation=shorten(gojson.clean(operation)),
        message=text,
        uid=shorten(gojson.clean(uid)),
    )


def _answer(*, uid: str, operation: str, name: str, denied: str | None = None) -> Answer:
    response: dict[str, object] = {"uid": uid, "allowed": denied is None}
    if denied is not None:
        response["status"] = {"metadata": {}, "message": denied}
    # A Go struct: fields in declaration order.
    body = gojson.dumps(
        {"kind": KIND, "apiVersion": API_VERSION, "response": response}, sort_keys=False
    ).encode("utf-8")
    return Answer(
        status=200,
        content_type=JSON,
        body=body,
        operation=shorten(gojson.clean(operation)),
        allowed=denied is None,
        message=gojson.clean(denied or ""),
        # For logs only: the body above echoes the uid exactly, as the API server needs.
        name=shorten(gojson.clean(name), 253),
        uid=shorten(gojson.clean(uid)),
    )


__all__ = [
    "API_VERSION",
    "JSON",
    "KIND",
    "NO_REQUEST",
    "ONLY_V1",
    "TEXT",
    "Answer",
    "keepalive_problem",
    "overlap",
    "pod_cidrs_of",
    "review",
]
