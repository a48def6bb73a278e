"""Translation between Kubernetes objects (plain dicts) and mesh values.

Pure. Each field is parsed independently with Kilo's rules, so a Go Kilo node and a Python
one derive the same mesh from the same objects. Where Kilo silently drops a bad value, the
same value is dropped here too (the mesh must not change), but a :class:`Diagnostic` names
the object, the annotation and the value so that the operator can fix it.

One module although over 500 lines: a Node's and a Peer's translation in both directions
(annotations read, annotations written back by the agent) share the same field rules, and
keeping them side by side is what keeps the two directions from drifting; each field has
its own small parser.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from kilo.mesh import ip as ipmod
from kilo.mesh.endpoint import (
    DNS1123_MAX_LENGTH,
    Endpoint,
    UDPAddr,
    dns1123_subdomain_errors,
    is_dns1123_subdomain,
)
from kilo.mesh.ip import IPInterface
from kilo.mesh.keys import KEY_LENGTH, ZERO_KEY, InvalidKeyError, Key, decode_base64
from kilo.mesh.model import (
    DEFAULT_PORT,
    DEFAULT_TOPOLOGY_LABEL,
    LEGACY_TOPOLOGY_LABEL,
    MAX_KEEPALIVE,
    Diagnostic,
    Granularity,
    Node,
    Peer,
    Translated,
)
from kilo.mesh.text import short_json, shorten, show

PREFIX = "kilo.squat.ai/"
FORCE_ENDPOINT = PREFIX + "force-endpoint"
FORCE_EXTERNAL_IP = PREFIX + "force-external-ip"  # legacy name: a CIDR, the mesh port is added
ENDPOINT = PREFIX + "endpoint"
FORCE_INTERNAL_IP = PREFIX + "force-internal-ip"
INTERNAL_IP = PREFIX + "internal-ip"
KEY = PREFIX + "key"
LAST_SEEN = PREFIX + "last-seen"
LEADER = PREFIX + "leader"
LOCATION = PREFIX + "location"
PERSISTENT_KEEPALIVE = PREFIX + "persistent-keepalive"
WIREGUARD_IP = PREFIX + "wireguard-ip"
DISCOVERED_ENDPOINTS = PREFIX + "discovered-endpoints"
ALLOWED_LOCATION_IPS = PREFIX + "allowed-location-ips"
GRANULARITY = PREFIX + "granularity"
CNI_COMPATIBILITY_IP = PREFIX + "cni-compatibility-ip"

# The annotations a Kilo agent writes on its own node, in the order Kilo removes them.
AGENT_ANNOTATIONS = (
    ENDPOINT,
    INTERNAL_IP,
    KEY,
    LAST_SEEN,
    WIREGUARD_IP,
    DISCOVERED_ENDPOINTS,
    GRANULARITY,
    CNI_COMPATIBILITY_IP,
)

_INT64 = re.compile(r"[+-]?[0-9]+")
_INT64_MAX = 2**63 - 1


def parse_int64(text: str) -> int | None:
    """Go's ``strconv.ParseInt(text, 10, 64)``."""
    if not _INT64.fullmatch(text) or len(text.lstrip("+-").lstrip("0")) > 19:
        return None
    value = int(text)
    return value if -_INT64_MAX - 1 <= value <= _INT64_MAX else None


def _string_map(value: object) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Coerce a metadata map to str -> str; hand-written dumps may hold YAML numbers.

    A key that is not a string (a dump can hold any YAML key) and a value that is neither
    a string nor a plain number (a list, a map, an integer too big to be anything) are
    returned as ``bad``, both quoted short.
    """
    result: dict[str, str] = {}
    bad: list[tuple[str, str]] = []
    if not isinstance(value, Mapping):
        return result, bad
    for k, v in value.items():
        if not isinstance(k, str):
            bad.append((short_json(k), short_json(v)))
        elif isinstance(v, str):
            result[k] = v
        elif isinstance(v, bool):
            result[k] = "true" if v else "false"
        elif (isinstance(v, int) and v.bit_length() <= 64) or isinstance(v, float):
            result[k] = str(v)
        elif v is None:
            result[k] = ""
        else:
            bad.append((k, short_json(v)))
    return result, bad


# A field (annotation or label key) is at most 253 + 1 + 63 characters in Kubernetes.
_FIELD_LIMIT = 320
# Reporting every bad item of a list annotation would let one annotation flood the log.
_ITEMS_REPORTED = 3


class _Reporter:
    """Collects the diagnostics of one object; every value is cut to a bounded length."""

    def __init__(self, kind: str, name: str) -> None:
        self.kind = kind
        self.name = shorten(name, DNS1123_MAX_LENGTH)
        self.diagnostics: list[Diagnostic] = []

    def __call__(self, field: str, value: str, problem: str) -> None:
        self.diagnostics.append(
            Diagnostic(
                kind=self.kind,
                name=self.name,
                field=shorten(field, _FIELD_LIMIT),
                value=shorten(value),
                problem=problem,
            )
        )


def _identify(obj: object, kind: str) -> tuple[Mapping[str, Any], str | None, _Reporter]:
    """The metadata and name of an object; an object without a name is reported and ignored."""
    if not isinstance(obj, Mapping):
        report = _Reporter(kind, "<unnamed>")
        report("", short_json(obj), "is not an object; ignored")
        return {}, None, report
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        metadata = {}
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        report = _Reporter(kind, "<unnamed>")
        problem = "is missing" if name is None or name == "" else "is not a string"
        report("metadata.name", short_json(name), f"{problem}; the {kind} is ignored")
        return metadata, None, report
    return metadata, name, _Reporter(kind, name)


def parse_discovered_endpoints(text: str) -> dict[str, UDPAddr | None] | None:
    """Decode the ``discovered-endpoints`` JSON; ``None`` when it is not valid.

    A ``null`` entry is kept as ``None``: Kilo keeps it too, and it then hides that peer's
    endpoint (and any later report of it), which changes the mesh.
    """
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        # RecursionError: nesting deeper than Python's decoder goes ("[" * 1000). Go's
        # decoder refuses nesting deeper than 10000 and any such text is not a map of
        # endpoints either, so both ignore the annotation.
        return None
    if not isinstance(data, dict):
        return None
    result: dict[str, UDPAddr | None] = {}
    for key, value in data.items():
        if value is None:
            result[key] = None
            continue
        if not isinstance(value, dict):
            return None
        # Go's JSON decoder matches struct fields case-insensitively.
        fields = {str(k).lower(): v for k, v in value.items()}
        # JSON null leaves a Go field at its zero value.
        ip_text = fields.get("ip")
        port = fields.get("port")
        port = 0 if port is None else port
        zone = fields.get("zone")
        zone = "" if zone is None else zone
        if ip_text is None or ip_text == "":
            ip = None
        elif isinstance(ip_text, str):
            ip = ipmod.parse_ip(ip_text)
            if ip is None:
                return None
        else:
            return None
        if isinstance(port, bool) or not isinstance(port, int) or not isinstance(zone, str):
            return None
        if not -_INT64_MAX - 1 <= port <= _INT64_MAX:
            return None
        result[key] = UDPAddr(ip, port, zone)
    return result


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def format_discovered_endpoints(endpoints: Mapping[str, UDPAddr | None] | None) -> str:
    """Encode discovered endpoints exactly as Go's ``encoding/json`` does."""
    if endpoints is None:
        return ""
    return json.dumps(
        {
            key: None
            if a is None
            else {"IP": "" if a.ip is None else str(a.ip), "Port": a.port, "Zone": a.zone}
            for key, a in sorted(endpoints.items())
        },
        separators=(",", ":"),
    )


def translate_node(
    obj: Mapping[str, Any],
    *,
    topology_label: str = DEFAULT_TOPOLOGY_LABEL,
    port: int = DEFAULT_PORT,
) -> Translated[Node]:
    """Translate a ``v1.Node`` object into a mesh :class:`Node`.

    ``port`` is the mesh port, used only for the legacy ``force-external-ip`` annotation.
    """
    metadata, name, report = _identify(obj, "node")
    if name is None:
        return Translated(None, tuple(report.diagnostics))
    for field in ("annotations", "labels"):
        value = metadata.get(field)
        if value is not None and not isinstance(value, Mapping):
            report(f"metadata.{field}", short_json(value), "is not a map; ignored")
    annotations, bad = _string_map(metadata.get("annotations"))
    labels, bad_labels = _string_map(metadata.get("labels"))
    for bad_key, bad_value in bad + bad_labels:
        report(bad_key, bad_value, "is not a string; ignored")

    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        if spec is not None:
            report("spec", short_json(spec), "is not a map; the node has no pod CIDR")
        spec = {}
    pod_cidr = spec.get("podCIDR")
    subnet = None
    if isinstance(pod_cidr, str) and pod_cidr:
        subnet = ipmod.parse_network(pod_cidr)
        if subnet is None:
            report("spec.podCIDR", pod_cidr, "is not a CIDR; the node is not ready")
    elif pod_cidr is not None and not isinstance(pod_cidr, str):
        report("spec.podCIDR", short_json(pod_cidr), "is not a string; the node is not ready")

    leader = LEADER in annotations
    if leader and annotations[LEADER].strip().lower() in ("false", "no", "0"):
        report(
            LEADER,
            annotations[LEADER],
            "makes the node a preferred leader anyway: only the annotation's presence counts",
        )

    if LOCATION in annotations:
        location = annotations[LOCATION]
    elif topology_label in labels:
        location = labels[topology_label]
    else:
        location = labels.get(LEGACY_TOPOLOGY_LABEL, "")

    endpoint = _node_endpoint(annotations, port, report)

    no_internal_ip = FORCE_INTERNAL_IP in annotations and annotations[FORCE_INTERNAL_IP] in (
        "",
        "-",
    )
    internal_ip: IPInterface | None = None
    if not no_internal_ip:
        if FORCE_INTERNAL_IP in annotations:
            internal_ip = ipmod.parse_interface(annotations[FORCE_INTERNAL_IP])
            if internal_ip is None:
                report(FORCE_INTERNAL_IP, annotations[FORCE_INTERNAL_IP], "is not a CIDR; ignored")
        if internal_ip is None:
            internal_ip = _cidr(annotations, INTERNAL_IP, report)

    cni_ip = _cidr(annotations, CNI_COMPATIBILITY_IP, report)

    last_seen = 0
    if LAST_SEEN in annotations:
        parsed = parse_int64(annotations[LAST_SEEN])
        if parsed is None:
            report(LAST_SEEN, annotations[LAST_SEEN], "is not a Unix time; using 0")
        else:
            last_seen = parsed

    keepalive = 0
    if PERSISTENT_KEEPALIVE in annotations:
        parsed = parse_int64(annotations[PERSISTENT_KEEPALIVE])
        if parsed is None:
            report(
                PERSISTENT_KEEPALIVE,
                annotations[PERSISTENT_KEEPALIVE],
                "is not an integer; using 0",
            )
        else:
            keepalive = parsed
            if parsed < 0:
                report(
                    PERSISTENT_KEEPALIVE,
                    annotations[PERSISTENT_KEEPALIVE],
                    "is negative: WireGuard gets 0, but like Kilo the node still counts as "
                    "behind NAT",
                )
            elif parsed > MAX_KEEPALIVE:
                report(
                    PERSISTENT_KEEPALIVE,
                    annotations[PERSISTENT_KEEPALIVE],
                    f"exceeds WireGuard's maximum; WireGuard gets {MAX_KEEPALIVE}",
                )

    discovered = None
    if DISCOVERED_ENDPOINTS in annotations:
        text = annotations[DISCOVERED_ENDPOINTS]
        discovered = parse_discovered_endpoints(text) if text else None
        if text and discovered is None:
            report(DISCOVERED_ENDPOINTS, text, "is not valid JSON of endpoints; ignored")
        elif discovered is not None and None in discovered.values():
            report(
                DISCOVERED_ENDPOINTS,
                text,
                "has null entries; like Kilo, the peers they name get no endpoint",
            )

    allowed_location_ips: list[IPInterface] = []
    if annotations.get(ALLOWED_LOCATION_IPS):
        dropped = 0
        for item in annotations[ALLOWED_LOCATION_IPS].split(","):
            cidr = ipmod.parse_interface(item)
            if cidr is not None:
                allowed_location_ips.append(cidr)
                continue
            dropped += 1
            if dropped <= _ITEMS_REPORTED:
                hint = " (Kilo does not trim spaces)" if item != item.strip() else ""
                report(ALLOWED_LOCATION_IPS, item, f"is not a CIDR{hint}; this item is dropped")
        if dropped > _ITEMS_REPORTED:
            report(
                ALLOWED_LOCATION_IPS,
                annotations[ALLOWED_LOCATION_IPS],
                f"has {dropped - _ITEMS_REPORTED} more items that are not CIDRs; they are dropped",
            )

    granularity = annotations.get(GRANULARITY, "")
    # "cross" is read as #328 reads it; Kilo's own backend drops it (docs/compatibility.md).
    if granularity not in (Granularity.LOCATION, Granularity.FULL, Granularity.CROSS):
        if granularity:
            report(GRANULARITY, granularity, "is not location, full or cross; ignored")
        granularity = ""

    key = ZERO_KEY
    if annotations.get(KEY):
        parsed_key = Key.try_parse(annotations[KEY])
        if parsed_key is None:
            report(KEY, annotations[KEY], "is not a WireGuard key; the node is not ready")
        elif parsed_key.is_zero:
            report(KEY, annotations[KEY], "is the all-zero key; the node is not ready")
        else:
            key = parsed_key

    node = Node(
        name=name,
        endpoint=endpoint,
        key=key,
        internal_ip=internal_ip,
        no_internal_ip=no_internal_ip,
        cni_compatibility_ip=cni_ip,
        last_seen=last_seen,
        leader=leader,
        location=location,
        persistent_keepalive=keepalive,
        subnet=subnet,
        wireguard_ip=_cidr(annotations, WIREGUARD_IP, report),
        discovered_endpoints=discovered,
        allowed_location_ips=tuple(allowed_location_ips),
        granularity=granularity,
    )
    return Translated(node, tuple(report.diagnostics))


def _cidr(annotations: Mapping[str, str], key: str, report: _Reporter) -> IPInterface | None:
    text = annotations.get(key, "")
    if not text:
        return None
    cidr = ipmod.parse_interface(text)
    if cidr is None:
        report(key, text, "is not a CIDR; ignored")
    return cidr


def _node_endpoint(annotations: Mapping[str, str], port: int, report: _Reporter) -> Endpoint | None:
    if FORCE_ENDPOINT in annotations:
        endpoint = Endpoint.parse(annotations[FORCE_ENDPOINT])
        if endpoint is not None:
            return endpoint
        report(FORCE_ENDPOINT, annotations[FORCE_ENDPOINT], "is not host:port; ignored")
    if FORCE_EXTERNAL_IP in annotations:
        cidr = ipmod.parse_interface(annotations[FORCE_EXTERNAL_IP])
        if cidr is not None:
            return Endpoint.new(cidr.ip, port)
        report(FORCE_EXTERNAL_IP, annotations[FORCE_EXTERNAL_IP], "is not a CIDR; ignored")
    text = annotations.get(ENDPOINT, "")
    if not text:
        return None
    endpoint = Endpoint.parse(text)
    if endpoint is None:
        report(ENDPOINT, text, "is not host:port; the node is not ready")
    return endpoint


def node_annotations(node: Node) -> dict[str, str]:
    """The annotations an agent writes for its own node (Kilo's backend ``Set``)."""
    return {
        ENDPOINT: "" if node.endpoint is None else str(node.endpoint),
        INTERNAL_IP: "" if node.internal_ip is None else str(node.internal_ip),
        KEY: str(node.key),
        LAST_SEEN: str(node.last_seen),
        WIREGUARD_IP: "" if node.wireguard_ip is None else str(node.wireguard_ip),
        DISCOVERED_ENDPOINTS: format_discovered_endpoints(node.discovered_endpoints),
        GRANULARITY: node.granularity,
        CNI_COMPATIBILITY_IP: ""
        if node.cni_compatibility_ip is None
        else str(node.cni_compatibility_ip),
    }


def annotation_changes(current: Mapping[str, str] | None, node: Node) -> dict[str, str]:
    """The agent annotations of ``node`` that differ from ``current``: a merge patch body.

    Only changed keys are sent, so concurrent writers of other annotations are not
    overwritten; a node without any annotations is fine (Kilo would panic there).
    """
    existing = current or {}
    return {k: v for k, v in node_annotations(node).items() if existing.get(k) != v}


# --- Peers ---------------------------------------------------------------------------------


def validate_peer_spec(spec: object) -> tuple[str, str] | None:
    """Kilo's ``Peer.Validate``: ``(field, message)`` of the first problem, or ``None``.

    The messages are Kilo's own, so that the webhook answers like Kilo's.
    """
    if not isinstance(spec, Mapping):
        return "spec", "spec must be an object"
    allowed = spec.get("allowedIPs")
    if allowed is not None:
        if not isinstance(allowed, list):
            return "spec.allowedIPs", "allowedIPs must be a list of CIDRs"
        for item in allowed:
            if not isinstance(item, str) or ipmod.parse_interface(item) is None:
                shown = show(item)
                return (
                    "spec.allowedIPs",
                    f'failed to parse "{shown}" as a valid IP address: invalid CIDR address: '
                    f"{shown}",
                )
    endpoint = spec.get("endpoint")
    if endpoint is not None:
        problem = _validate_peer_endpoint(endpoint)
        if problem is not None:
            return problem
    keepalive = spec.get("persistentKeepalive")
    if keepalive is not None:
        if isinstance(keepalive, bool) or not isinstance(keepalive, int):
            return "spec.persistentKeepalive", "persistent keepalive must be an integer"
        if keepalive < 0:
            return (
                "spec.persistentKeepalive",
                "persistent keepalive must be greater than or equal to zero; "
                f"got {short_json(keepalive)}",
            )
    public_key = spec.get("publicKey", "")
    if not isinstance(public_key, str):
        return "spec.publicKey", "WireGuard public key must be a string"
    try:
        raw = decode_base64(public_key)
    except InvalidKeyError as exc:
        return "spec.publicKey", f"WireGuard public key is not base64 encoded: {exc}"
    if len(raw) != KEY_LENGTH:
        return "spec.publicKey", "WireGuard public key has invalid length"
    return None


def _validate_peer_endpoint(endpoint: object) -> tuple[str, str] | None:
    if not isinstance(endpoint, Mapping):
        return "spec.endpoint", "endpoint must be an object"
    dns_or_ip = endpoint.get("dnsOrIP") or {}
    if not isinstance(dns_or_ip, Mapping):
        return "spec.endpoint.dnsOrIP", "dnsOrIP must be an object"
    ip_text = dns_or_ip.get("ip") or ""
    dns = dns_or_ip.get("dns") or ""
    if not isinstance(ip_text, str) or not isinstance(dns, str):
        return "spec.endpoint.dnsOrIP", "dns and ip must be strings"
    if not ip_text and not dns:
        return "spec.endpoint.dnsOrIP", "either an endpoint DNS name IP address must be given"
    if dns and not is_dns1123_subdomain(dns):
        return "spec.endpoint.dnsOrIP.dns", "; ".join(dns1123_subdomain_errors(dns))
    if ip_text and ipmod.parse_ip(ip_text) is None:
        return (
            "spec.endpoint.dnsOrIP.ip",
            f'failed to parse "{shorten(ip_text)}" as a valid IP address',
        )
    port = endpoint.get("port", 0)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        return "spec.endpoint.port", f"port must be a valid UDP port number, got {show(port)}"
    return None


def translate_peer(obj: Mapping[str, Any]) -> Translated[Peer]:
    """Translate a ``kilo.squat.ai/v1alpha1`` ``Peer``; an invalid Peer is ignored as a whole."""
    _, name, report = _identify(obj, "peer")
    if name is None:
        return Translated(None, tuple(report.diagnostics))
    spec = obj.get("spec")
    problem = validate_peer_spec(spec)
    if problem is not None:
        field, message = problem
        report(field, _field_value(spec, field), f"is invalid ({message}); the peer is ignored")
        return Translated(None, tuple(report.diagnostics))
    assert isinstance(spec, Mapping)
    allowed_ips = tuple(
        cidr for cidr in (ipmod.parse_interface(s) for s in spec.get("allowedIPs") or []) if cidr
    )
    endpoint: Endpoint | None = None
    ep = spec.get("endpoint")
    if isinstance(ep, Mapping) and ep.get("port", 0) > 0:
        dns_or_ip = ep.get("dnsOrIP") or {}
        ip = ipmod.parse_ip(dns_or_ip.get("ip") or "")
        if ip is not None:
            endpoint = Endpoint.new(ip, ep["port"])
        if dns_or_ip.get("dns"):
            # Kilo lets the DNS name win over the IP (its API docs say the opposite).
            endpoint = Endpoint.parse(f"{dns_or_ip['dns']}:{ep['port']}")
    keepalive = spec.get("persistentKeepalive") or 0
    if keepalive > MAX_KEEPALIVE:
        # Only WireGuard reads a Peer's keepalive, and any non-zero value means the same
        # for the NAT-discovered endpoint, so capping it changes nothing else.
        report(
            "spec.persistentKeepalive",
            short_json(keepalive),
            f"exceeds WireGuard's maximum; WireGuard gets {MAX_KEEPALIVE}",
        )
        keepalive = MAX_KEEPALIVE
    peer = Peer(
        name=name,
        allowed_ips=allowed_ips,
        public_key=Key.parse(spec["publicKey"]),
        preshared_key=_preshared_key(spec.get("presharedKey"), report),
        persistent_keepalive=keepalive,
        endpoint=endpoint,
    )
    return Translated(peer, tuple(report.diagnostics))


def _preshared_key(value: object, report: _Reporter) -> Key | None:
    if not value:
        return None
    key = Key.try_parse(value) if isinstance(value, str) else None
    if key is None:
        report(
            "spec.presharedKey", "<redacted>", "is not a WireGuard key; no preshared key is used"
        )
    return key


def _field_value(spec: object, path: str) -> str:
    value: object = {"spec": spec}
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return ""
        value = value.get(part)
    return show(value)
