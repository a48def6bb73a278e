"""Kubernetes objects to mesh values (kilo-k8s-cli.md §1.1, §1.2, §1.3, §1.5).

Every value Kilo drops is dropped here too, and each drop is reported as exactly one
``Diagnostic`` naming the object, the annotation and the value; valid sibling fields keep
their values.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, ip_interface
from typing import Any

import pytest

from kilo.mesh import translate as tr
from kilo.mesh.endpoint import Endpoint, UDPAddr
from kilo.mesh.keys import ZERO_KEY, Key
from kilo.mesh.model import Diagnostic, Node, Peer, ready_nodes, ready_peers
from tests.examples import PUBLIC_KEYS, reference_objects

NAME = "n1"
KEY = str(PUBLIC_KEYS["alpha"])
OTHER_KEY = str(PUBLIC_KEYS["gamma"])
TOPOLOGY_LABEL = "topology.kubernetes.io/region"
LEGACY_LABEL = "failure-domain.beta.kubernetes.io/region"
DISCOVERED = f'{{"{OTHER_KEY}":{{"IP":"5.6.7.8","Port":41000,"Zone":""}}}}'

# A node with every annotation set to a valid value.
BASE_ANNOTATIONS: dict[str, Any] = {
    tr.ENDPOINT: "34.1.1.1:51820",
    tr.INTERNAL_IP: "10.128.0.2/20",
    tr.KEY: KEY,
    tr.LAST_SEEN: "1764000000",
    tr.WIREGUARD_IP: "10.4.0.2/16",
    tr.DISCOVERED_ENDPOINTS: DISCOVERED,
    tr.GRANULARITY: "location",
    tr.CNI_COMPATIBILITY_IP: "10.0.0.5/32",
    tr.PERSISTENT_KEEPALIVE: "25",
    tr.ALLOWED_LOCATION_IPS: "192.168.1.0/24,192.168.2.0/24",
    tr.LOCATION: "gcp",
    tr.LEADER: "",
}
BASE_LABELS: dict[str, Any] = {TOPOLOGY_LABEL: "us-east1"}

BASE_NODE = Node(
    name=NAME,
    endpoint=Endpoint.new(IPv4Address("34.1.1.1"), 51820),
    key=PUBLIC_KEYS["alpha"],
    internal_ip=IPv4Interface("10.128.0.2/20"),
    no_internal_ip=False,
    cni_compatibility_ip=IPv4Interface("10.0.0.5/32"),
    last_seen=1764000000,
    leader=True,
    location="gcp",
    persistent_keepalive=25,
    subnet=IPv4Network("10.2.0.0/24"),
    wireguard_ip=IPv4Interface("10.4.0.2/16"),
    discovered_endpoints={OTHER_KEY: UDPAddr(IPv4Address("5.6.7.8"), 41000)},
    allowed_location_ips=(IPv4Interface("192.168.1.0/24"), IPv4Interface("192.168.2.0/24")),
    granularity="location",
)


class _Delete:
    """Marks an annotation or label to remove from the base object."""


DELETE = _Delete()


def node_object(
    annotations: Mapping[str, Any] | None = None,
    labels: Mapping[str, Any] | None = None,
    *,
    pod_cidr: Any = "10.2.0.0/24",
    name: Any = NAME,
) -> dict[str, Any]:
    """The base node object with ``annotations`` and ``labels`` merged in (DELETE removes)."""
    merged_annotations = dict(BASE_ANNOTATIONS)
    merged_labels = dict(BASE_LABELS)
    for target, updates in ((merged_annotations, annotations), (merged_labels, labels)):
        for key, value in (updates or {}).items():
            if isinstance(value, _Delete):
                target.pop(key, None)
            else:
                target[key] = value
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "annotations": merged_annotations, "labels": merged_labels},
        "spec": {"podCIDR": pod_cidr},
    }


def translated(obj: Mapping[str, Any], **kwargs: Any) -> tuple[Node, list[Diagnostic]]:
    result = tr.translate_node(obj, **kwargs)
    assert result.value is not None
    return result.value, list(result.diagnostics)


def fields(diagnostics: list[Diagnostic]) -> list[tuple[str, str, str, str]]:
    return [(d.kind, d.name, d.field, d.value) for d in diagnostics]


# --- the base node and the reference cluster ---------------------------------------------------


def test_base_node() -> None:
    node, diagnostics = translated(node_object())
    assert node == BASE_NODE
    assert diagnostics == []


def test_reference_cluster_translates_without_diagnostics() -> None:
    for obj in reference_objects():
        translate = tr.translate_node if obj["kind"] == "Node" else tr.translate_peer
        result = translate(obj)
        assert result.value is not None
        assert result.diagnostics == ()


def test_a_minimal_node() -> None:
    node, diagnostics = translated({"metadata": {"name": "bare"}})
    assert node == Node(name="bare")
    assert diagnostics == []
    assert not node.is_ready(None)


# --- valid values: one row per rule of the field-derivation table ------------------------------


@pytest.mark.parametrize(
    ("annotations", "labels", "changes"),
    [
        # Subnet is tested below; Leader is presence-only.
        pytest.param({tr.LEADER: DELETE}, {}, {"leader": False}, id="leader-absent"),
        pytest.param({tr.LEADER: "true"}, {}, {"leader": True}, id="leader-true"),
        pytest.param({tr.LEADER: "yes please"}, {}, {"leader": True}, id="leader-any"),
        # Location: the annotation, even "", else the label.
        pytest.param({tr.LOCATION: ""}, {}, {"location": ""}, id="location-empty-wins"),
        pytest.param({tr.LOCATION: "aws"}, {}, {"location": "aws"}, id="location"),
        pytest.param({tr.LOCATION: DELETE}, {}, {"location": "us-east1"}, id="location-label"),
        pytest.param(
            {tr.LOCATION: DELETE}, {TOPOLOGY_LABEL: DELETE}, {"location": ""}, id="location-none"
        ),
        pytest.param(
            {tr.LOCATION: DELETE}, {TOPOLOGY_LABEL: ""}, {"location": ""}, id="label-empty"
        ),
        # Legacy region label: only when the topology label is absent.
        pytest.param(
            {tr.LOCATION: DELETE},
            {TOPOLOGY_LABEL: DELETE, LEGACY_LABEL: "eu"},
            {"location": "eu"},
            id="legacy-label",
        ),
        pytest.param(
            {tr.LOCATION: DELETE}, {LEGACY_LABEL: "eu"}, {"location": "us-east1"}, id="label-wins"
        ),
        pytest.param(
            {tr.LOCATION: DELETE},
            {TOPOLOGY_LABEL: "", LEGACY_LABEL: "eu"},
            {"location": ""},
            id="empty-label-wins",
        ),
        pytest.param({}, {LEGACY_LABEL: "eu"}, {}, id="annotation-beats-legacy"),
        # Endpoint: force-endpoint, else endpoint.
        pytest.param(
            {tr.FORCE_ENDPOINT: "9.9.9.9:1234"},
            {},
            {"endpoint": Endpoint.new(IPv4Address("9.9.9.9"), 1234)},
            id="force-endpoint",
        ),
        pytest.param(
            {tr.FORCE_ENDPOINT: "[2001:db8::1]:51820"},
            {},
            {"endpoint": Endpoint.new(IPv6Address("2001:db8::1"), 51820)},
            id="force-endpoint-v6",
        ),
        pytest.param(
            {tr.ENDPOINT: "vpn.example.com:51820"},
            {},
            {"endpoint": Endpoint(addr="vpn.example.com:51820")},
            id="dns-endpoint",
        ),
        pytest.param(
            {tr.FORCE_ENDPOINT: "vpn.example.com:4000"},
            {},
            {"endpoint": Endpoint(addr="vpn.example.com:4000")},
            id="dns-force-endpoint",
        ),
        pytest.param({tr.ENDPOINT: ""}, {}, {"endpoint": None}, id="endpoint-empty"),
        pytest.param({tr.ENDPOINT: DELETE}, {}, {"endpoint": None}, id="endpoint-absent"),
        # Legacy force-external-ip: the CIDR's address with the mesh port.
        pytest.param(
            {tr.FORCE_EXTERNAL_IP: "5.6.7.8/32"},
            {},
            {"endpoint": Endpoint.new(IPv4Address("5.6.7.8"), 51820)},
            id="force-external-ip",
        ),
        pytest.param(
            {tr.FORCE_EXTERNAL_IP: "5.6.7.8/24", tr.ENDPOINT: DELETE},
            {},
            {"endpoint": Endpoint.new(IPv4Address("5.6.7.8"), 51820)},
            id="force-external-ip-host-bits",
        ),
        pytest.param(
            {tr.FORCE_EXTERNAL_IP: "2001:db8::7/64"},
            {},
            {"endpoint": Endpoint.new(IPv6Address("2001:db8::7"), 51820)},
            id="force-external-ip-v6",
        ),
        pytest.param(
            {tr.FORCE_EXTERNAL_IP: "5.6.7.8/32", tr.FORCE_ENDPOINT: "9.9.9.9:1234"},
            {},
            {"endpoint": Endpoint.new(IPv4Address("9.9.9.9"), 1234)},
            id="force-endpoint-beats-force-external-ip",
        ),
        # Internal IP: force-internal-ip, else internal-ip; "" and "-" mean none.
        pytest.param(
            {tr.FORCE_INTERNAL_IP: "192.168.0.5/24"},
            {},
            {"internal_ip": IPv4Interface("192.168.0.5/24")},
            id="force-internal-ip",
        ),
        pytest.param(
            {tr.FORCE_INTERNAL_IP: ""},
            {},
            {"internal_ip": None, "no_internal_ip": True},
            id="no-internal-ip-empty",
        ),
        pytest.param(
            {tr.FORCE_INTERNAL_IP: "-"},
            {},
            {"internal_ip": None, "no_internal_ip": True},
            id="no-internal-ip-dash",
        ),
        pytest.param({tr.INTERNAL_IP: ""}, {}, {"internal_ip": None}, id="internal-ip-empty"),
        pytest.param(
            {tr.INTERNAL_IP: "::ffff:10.128.0.2/116"},
            {},
            {"internal_ip": IPv4Interface("10.128.0.2/20")},
            id="internal-ip-mapped",
        ),
        pytest.param(
            {tr.INTERNAL_IP: "2001:db8::5/64"},
            {},
            {"internal_ip": ip_interface("2001:db8::5/64")},
            id="internal-ip-v6",
        ),
        # CNI compatibility IP.
        pytest.param(
            {tr.CNI_COMPATIBILITY_IP: ""}, {}, {"cni_compatibility_ip": None}, id="cni-empty"
        ),
        # Last seen: int64, sign allowed.
        pytest.param({tr.LAST_SEEN: "+5"}, {}, {"last_seen": 5}, id="last-seen-plus"),
        pytest.param({tr.LAST_SEEN: "-5"}, {}, {"last_seen": -5}, id="last-seen-negative"),
        pytest.param({tr.LAST_SEEN: "0005"}, {}, {"last_seen": 5}, id="last-seen-zeros"),
        pytest.param(
            {tr.LAST_SEEN: "9223372036854775807"},
            {},
            {"last_seen": 2**63 - 1},
            id="last-seen-max",
        ),
        pytest.param({tr.LAST_SEEN: DELETE}, {}, {"last_seen": 0}, id="last-seen-absent"),
        # Persistent keepalive.
        pytest.param(
            {tr.PERSISTENT_KEEPALIVE: "0"}, {}, {"persistent_keepalive": 0}, id="keepalive-0"
        ),
        pytest.param(
            {tr.PERSISTENT_KEEPALIVE: "+7"}, {}, {"persistent_keepalive": 7}, id="keepalive-plus"
        ),
        pytest.param(
            {tr.PERSISTENT_KEEPALIVE: DELETE},
            {},
            {"persistent_keepalive": 0},
            id="keepalive-absent",
        ),
        # WireGuard IP.
        pytest.param({tr.WIREGUARD_IP: ""}, {}, {"wireguard_ip": None}, id="wireguard-ip-empty"),
        # Discovered endpoints.
        pytest.param(
            {tr.DISCOVERED_ENDPOINTS: ""}, {}, {"discovered_endpoints": None}, id="discovered-empty"
        ),
        pytest.param(
            {tr.DISCOVERED_ENDPOINTS: "{}"}, {}, {"discovered_endpoints": {}}, id="discovered-{}"
        ),
        pytest.param(
            {tr.DISCOVERED_ENDPOINTS: DELETE},
            {},
            {"discovered_endpoints": None},
            id="discovered-absent",
        ),
        # Allowed location IPs: host bits kept, "" means none.
        pytest.param(
            {tr.ALLOWED_LOCATION_IPS: "172.31.100.5/24"},
            {},
            {"allowed_location_ips": (IPv4Interface("172.31.100.5/24"),)},
            id="alip-host-bits",
        ),
        pytest.param(
            {tr.ALLOWED_LOCATION_IPS: ""}, {}, {"allowed_location_ips": ()}, id="alip-empty"
        ),
        # Granularity.
        pytest.param({tr.GRANULARITY: "full"}, {}, {"granularity": "full"}, id="granularity-full"),
        pytest.param({tr.GRANULARITY: ""}, {}, {"granularity": ""}, id="granularity-empty"),
        # Key: "" gives the zero key silently.
        pytest.param({tr.KEY: ""}, {}, {"key": ZERO_KEY}, id="key-empty"),
        pytest.param({tr.KEY: DELETE}, {}, {"key": ZERO_KEY}, id="key-absent"),
        pytest.param({tr.KEY: KEY[:20] + "\r\n" + KEY[20:]}, {}, {}, id="key-with-newline"),
    ],
)
def test_valid_values(
    annotations: dict[str, Any], labels: dict[str, Any], changes: dict[str, Any]
) -> None:
    node, diagnostics = translated(node_object(annotations, labels))
    assert node == dataclasses.replace(BASE_NODE, **changes)
    assert diagnostics == []


def test_custom_topology_label() -> None:
    obj = node_object({tr.LOCATION: DELETE}, {"example.com/zone": "zone-a"})
    node, _ = translated(obj, topology_label="example.com/zone")
    assert node.location == "zone-a"
    # The custom label is absent: the legacy label is the fallback, not the default label.
    obj = node_object({tr.LOCATION: DELETE}, {LEGACY_LABEL: "eu"})
    node, _ = translated(obj, topology_label="example.com/zone")
    assert node.location == "eu"


def test_force_external_ip_uses_the_mesh_port() -> None:
    node, diagnostics = translated(node_object({tr.FORCE_EXTERNAL_IP: "5.6.7.8/32"}), port=4242)
    assert node.endpoint == Endpoint.new(IPv4Address("5.6.7.8"), 4242)
    assert diagnostics == []


@pytest.mark.parametrize(
    ("pod_cidr", "subnet"),
    [
        ("10.2.0.0/24", IPv4Network("10.2.0.0/24")),
        ("10.2.0.1/24", IPv4Network("10.2.0.0/24")),  # masked to the network
        ("", None),
        (None, None),
    ],
)
def test_subnet(pod_cidr: Any, subnet: IPv4Network | None) -> None:
    node, diagnostics = translated(node_object(pod_cidr=pod_cidr))
    assert node == dataclasses.replace(BASE_NODE, subnet=subnet)
    assert diagnostics == []


def test_pod_cidrs_plural_is_ignored() -> None:
    obj = node_object(pod_cidr=None)
    obj["spec"]["podCIDRs"] = ["10.2.0.0/24"]
    node, _ = translated(obj)
    assert node.subnet is None


# --- invalid values: the value is dropped as Kilo drops it, and one diagnostic names it ----------


@pytest.mark.parametrize(
    ("annotation", "value", "changes", "reported"),
    [
        (tr.ENDPOINT, "1.2.3.4", {"endpoint": None}, None),
        (tr.ENDPOINT, "Example.com:80", {"endpoint": None}, None),
        (tr.ENDPOINT, "1.2.3.4:0", {"endpoint": None}, None),
        # An invalid force-endpoint falls back to endpoint.
        (tr.FORCE_ENDPOINT, "nonsense", {}, None),
        (tr.FORCE_ENDPOINT, "-", {}, None),
        (tr.FORCE_ENDPOINT, "", {}, None),
        (tr.FORCE_ENDPOINT, "1.2.3.4", {}, None),
        # An invalid force-external-ip falls back to endpoint.
        (tr.FORCE_EXTERNAL_IP, "5.6.7.8", {}, None),
        (tr.FORCE_EXTERNAL_IP, "5.6.7.8:51820", {}, None),
        # An invalid force-internal-ip (other than "" and "-") falls back to internal-ip.
        (tr.FORCE_INTERNAL_IP, "10.1.1.1", {}, None),
        (tr.FORCE_INTERNAL_IP, "none", {}, None),
        (tr.INTERNAL_IP, "10.128.0.2", {"internal_ip": None}, None),
        (tr.INTERNAL_IP, "10.128.0.2/255.255.240.0", {"internal_ip": None}, None),
        (tr.CNI_COMPATIBILITY_IP, "10.0.0.5", {"cni_compatibility_ip": None}, None),
        (tr.KEY, "not-a-key", {"key": ZERO_KEY}, None),
        (tr.KEY, KEY[:43], {"key": ZERO_KEY}, None),
        (tr.KEY, "AAAA", {"key": ZERO_KEY}, None),
        (tr.LAST_SEEN, "yesterday", {"last_seen": 0}, None),
        (tr.LAST_SEEN, "", {"last_seen": 0}, None),
        (tr.LAST_SEEN, "1764000000.5", {"last_seen": 0}, None),
        (tr.LAST_SEEN, "9223372036854775808", {"last_seen": 0}, None),
        (tr.LAST_SEEN, "1_000", {"last_seen": 0}, None),
        # Never raises; the value is quoted short.
        (tr.LAST_SEEN, "1" * 5000, {"last_seen": 0}, "1" * 79 + "…"),
        (tr.PERSISTENT_KEEPALIVE, "abc", {"persistent_keepalive": 0}, None),
        (tr.PERSISTENT_KEEPALIVE, "", {"persistent_keepalive": 0}, None),
        (tr.PERSISTENT_KEEPALIVE, "2.5", {"persistent_keepalive": 0}, None),
        (tr.PERSISTENT_KEEPALIVE, "25s", {"persistent_keepalive": 0}, None),
        # Kept as Kilo keeps it (it decides NAT substitution), but reported; WireGuard gets 0.
        (tr.PERSISTENT_KEEPALIVE, "-5", {"persistent_keepalive": -5}, None),
        (tr.WIREGUARD_IP, "10.4.0.2", {"wireguard_ip": None}, None),
        (tr.DISCOVERED_ENDPOINTS, "{not json", {"discovered_endpoints": None}, None),
        (tr.DISCOVERED_ENDPOINTS, "[]", {"discovered_endpoints": None}, None),
        (tr.DISCOVERED_ENDPOINTS, '{"k":{"IP":"nope"}}', {"discovered_endpoints": None}, None),
        (tr.DISCOVERED_ENDPOINTS, '{"k":{"Port":"1"}}', {"discovered_endpoints": None}, None),
        # allowed-location-ips is split on "," without trimming: only the bad item is dropped.
        (
            tr.ALLOWED_LOCATION_IPS,
            "192.168.1.0/24, 192.168.2.0/24",
            {"allowed_location_ips": (IPv4Interface("192.168.1.0/24"),)},
            " 192.168.2.0/24",
        ),
        (
            tr.ALLOWED_LOCATION_IPS,
            "192.168.1.0/24,192.168.2.0",
            {"allowed_location_ips": (IPv4Interface("192.168.1.0/24"),)},
            "192.168.2.0",
        ),
        (tr.ALLOWED_LOCATION_IPS, "192.168.1.0/24,,192.168.2.0/24", {}, ""),
        (
            tr.ALLOWED_LOCATION_IPS,
            "192.168.1.0/24,",
            {"allowed_location_ips": (IPv4Interface("192.168.1.0/24"),)},
            "",
        ),
        (tr.GRANULARITY, "auto", {"granularity": ""}, None),
        (tr.GRANULARITY, "Location", {"granularity": ""}, None),
        # Presence-only leader: "false" still means leader, but the operator is told.
        (tr.LEADER, "false", {}, None),
        (tr.LEADER, "0", {}, None),
        (tr.LEADER, " No ", {}, None),
    ],
)
def test_invalid_annotation(
    annotation: str, value: str, changes: dict[str, Any], reported: str | None
) -> None:
    node, diagnostics = translated(node_object({annotation: value}))
    assert node == dataclasses.replace(BASE_NODE, **changes)
    expected_value = value if reported is None else reported
    assert fields(diagnostics) == [("node", NAME, annotation, expected_value)]
    text = str(diagnostics[0])
    assert NAME in text
    assert annotation in text
    assert diagnostics[0].problem


def test_several_invalid_annotations_give_one_diagnostic_each() -> None:
    node, diagnostics = translated(
        node_object({tr.ENDPOINT: "nope", tr.KEY: "nope", tr.WIREGUARD_IP: "nope"})
    )
    assert node == dataclasses.replace(BASE_NODE, endpoint=None, key=ZERO_KEY, wireguard_ip=None)
    assert sorted(d.field for d in diagnostics) == sorted([tr.ENDPOINT, tr.KEY, tr.WIREGUARD_IP])


def test_invalid_force_endpoint_with_valid_force_external_ip() -> None:
    node, diagnostics = translated(
        node_object({tr.FORCE_ENDPOINT: "bad", tr.FORCE_EXTERNAL_IP: "5.6.7.8/32"})
    )
    assert node.endpoint == Endpoint.new(IPv4Address("5.6.7.8"), 51820)
    assert fields(diagnostics) == [("node", NAME, tr.FORCE_ENDPOINT, "bad")]


def test_invalid_force_internal_ip_and_no_internal_ip() -> None:
    node, diagnostics = translated(
        node_object({tr.FORCE_INTERNAL_IP: "bad", tr.INTERNAL_IP: DELETE})
    )
    assert node.internal_ip is None
    assert not node.no_internal_ip
    assert fields(diagnostics) == [("node", NAME, tr.FORCE_INTERNAL_IP, "bad")]


@pytest.mark.parametrize("pod_cidr", ["10.2.0.0", "10.2.0.0/33", "nope"])
def test_invalid_pod_cidr(pod_cidr: str) -> None:
    node, diagnostics = translated(node_object(pod_cidr=pod_cidr))
    assert node == dataclasses.replace(BASE_NODE, subnet=None)
    assert fields(diagnostics) == [("node", NAME, "spec.podCIDR", pod_cidr)]
    assert not node.is_ready(None)


def test_agent_written_empty_values_give_no_diagnostics() -> None:
    obj = node_object(
        {
            tr.WIREGUARD_IP: "",
            tr.DISCOVERED_ENDPOINTS: "",
            tr.INTERNAL_IP: "",
            tr.CNI_COMPATIBILITY_IP: "",
            tr.ENDPOINT: "",
            tr.GRANULARITY: "",
            tr.ALLOWED_LOCATION_IPS: "",
        }
    )
    node, diagnostics = translated(obj)
    assert diagnostics == []
    assert node.wireguard_ip is None
    assert node.discovered_endpoints is None
    assert node.internal_ip is None
    assert node.endpoint is None


# --- garbage never raises --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotations", "changes"),
    [
        ({tr.LAST_SEEN: 1764000000}, {}),
        ({tr.PERSISTENT_KEEPALIVE: 25}, {}),
        ({tr.LEADER: True}, {}),
        ({tr.LEADER: None}, {}),
        ({tr.FORCE_INTERNAL_IP: None}, {"internal_ip": None, "no_internal_ip": True}),
        ({tr.LOCATION: None}, {"location": ""}),
        ({tr.LOCATION: 5}, {"location": "5"}),
    ],
)
def test_yaml_scalars_are_read_as_text(
    annotations: dict[str, Any], changes: dict[str, Any]
) -> None:
    node, diagnostics = translated(node_object(annotations))
    assert node == dataclasses.replace(BASE_NODE, **changes)
    assert diagnostics == []


def test_yaml_false_leader_is_reported() -> None:
    node, diagnostics = translated(node_object({tr.LEADER: False}))
    assert node.leader
    assert fields(diagnostics) == [("node", NAME, tr.LEADER, "false")]


@pytest.mark.parametrize("value", [["a"], {"a": 1}, ("x",)])
def test_annotation_that_is_not_a_scalar_is_dropped(value: Any) -> None:
    node, diagnostics = translated(node_object({tr.LOCATION: value}))
    assert node.location == "us-east1"  # the annotation is treated as absent
    # Shown as JSON, as an operator reads Kubernetes objects.
    assert fields(diagnostics) == [("node", NAME, tr.LOCATION, json.dumps(value))]


def test_label_that_is_not_a_scalar_is_dropped() -> None:
    node, diagnostics = translated(node_object({tr.LOCATION: DELETE}, {TOPOLOGY_LABEL: ["x"]}))
    assert node.location == ""
    assert fields(diagnostics) == [("node", NAME, TOPOLOGY_LABEL, '["x"]')]


@pytest.mark.parametrize("pod_cidr", [5, ["10.2.0.0/24"], {"a": 1}, True])
def test_pod_cidr_that_is_not_a_string(pod_cidr: Any) -> None:
    node, diagnostics = translated(node_object(pod_cidr=pod_cidr))
    assert node.subnet is None
    assert fields(diagnostics) == [("node", NAME, "spec.podCIDR", json.dumps(pod_cidr))]


@pytest.mark.parametrize(
    "obj",
    [
        {},
        {"metadata": None},
        {"metadata": "x"},
        {"metadata": []},
        {"metadata": {}},
        {"metadata": {"name": ""}},
        {"metadata": {"name": None}},
        {"metadata": {"name": 5}},
        {"metadata": {"name": ["a"]}},
    ],
)
def test_node_without_a_name_is_ignored(obj: dict[str, Any]) -> None:
    result = tr.translate_node(obj)
    assert result.value is None
    assert [(d.kind, d.field) for d in result.diagnostics] == [("node", "metadata.name")]


@pytest.mark.parametrize(
    "obj",
    [
        {"metadata": {"name": "x", "annotations": None, "labels": None}, "spec": None},
        {"metadata": {"name": "x", "annotations": [], "labels": "y"}, "spec": []},
        {"metadata": {"name": "x", "annotations": "y", "labels": 5}, "spec": "z"},
        {"metadata": {"name": "x", "annotations": 3}, "spec": 5},
        {"metadata": {"name": "x"}},
    ],
)
def test_malformed_maps_are_treated_as_empty(obj: dict[str, Any]) -> None:
    node, _ = translated(obj)
    assert node == Node(name="x")


def test_peer_garbage_never_raises() -> None:
    for obj in (
        {},
        {"metadata": None},
        {"metadata": {"name": "p"}},
        {"metadata": {"name": "p"}, "spec": None},
        {"metadata": {"name": "p"}, "spec": []},
        {"metadata": {"name": "p"}, "spec": {"allowedIPs": "10.0.0.0/8"}},
        {"metadata": {"name": "p"}, "spec": {"allowedIPs": [5]}},
        {"metadata": {"name": "p"}, "spec": {"endpoint": "x"}},
        {"metadata": {"name": "p"}, "spec": {"endpoint": {"dnsOrIP": "x"}}},
        {"metadata": {"name": "p"}, "spec": {"endpoint": {"dnsOrIP": {"ip": 5}}}},
        {"metadata": {"name": "p"}, "spec": {"persistentKeepalive": "5"}},
        {"metadata": {"name": "p"}, "spec": {"publicKey": 5}},
        {"metadata": {"name": "p"}, "spec": {"publicKey": KEY, "presharedKey": 5}},
    ):
        result = tr.translate_peer(obj)
        assert result.diagnostics


# --- discovered endpoints --------------------------------------------------------------------


def test_discovered_endpoints_round_trip() -> None:
    text = (
        '{"a":{"IP":"5.6.7.8","Port":41000,"Zone":""},'
        '"b":{"IP":"2001:db8::1","Port":51820,"Zone":""},'
        '"c":{"IP":"fe80::1","Port":1,"Zone":"eth0"},'
        '"d":{"IP":"","Port":0,"Zone":""}}'
    )
    parsed = tr.parse_discovered_endpoints(text)
    assert parsed == {
        "a": UDPAddr(IPv4Address("5.6.7.8"), 41000),
        "b": UDPAddr(IPv6Address("2001:db8::1"), 51820),
        "c": UDPAddr(IPv6Address("fe80::1"), 1, "eth0"),
        "d": UDPAddr(None, 0),
    }
    assert tr.format_discovered_endpoints(parsed) == text


def test_format_discovered_endpoints() -> None:
    first, second = sorted([KEY, OTHER_KEY])
    endpoints = {  # inserted in reverse order: the text is sorted by key
        second: UDPAddr(IPv4Address("5.6.7.8"), 41000),
        first: UDPAddr(IPv4Address("1.1.1.1"), 1),
    }
    assert tr.format_discovered_endpoints(endpoints) == (
        f'{{"{first}":{{"IP":"{endpoints[first].ip}","Port":{endpoints[first].port},"Zone":""}},'
        f'"{second}":{{"IP":"{endpoints[second].ip}","Port":{endpoints[second].port},"Zone":""}}}}'
    )
    assert tr.format_discovered_endpoints({}) == "{}"
    assert tr.format_discovered_endpoints(None) == ""
    assert tr.format_discovered_endpoints({"k": UDPAddr(None, 5)}) == (
        '{"k":{"IP":"","Port":5,"Zone":""}}'
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{}", {}),
        ('{"k":{"ip":"1.2.3.4","port":5,"zone":""}}', UDPAddr(IPv4Address("1.2.3.4"), 5)),
        ('{"k":{"iP":"1.2.3.4","PORT":5}}', UDPAddr(IPv4Address("1.2.3.4"), 5)),
        # Go: a later key that matches the same field wins.
        ('{"k":{"iP":"1.2.3.4","IP":"5.6.7.8"}}', UDPAddr(IPv4Address("5.6.7.8"), 0)),
        ('{"k":{"IP":"::ffff:1.2.3.4","Port":1}}', UDPAddr(IPv4Address("1.2.3.4"), 1)),
        ('{"k":{"IP":""}}', UDPAddr(None, 0)),
        ('{"k":{"IP":null}}', UDPAddr(None, 0)),
        ('{"k":{}}', UDPAddr(None, 0)),
        # JSON null leaves a Go field at its zero value.
        ('{"k":{"IP":"1.2.3.4","Port":null,"Zone":null}}', UDPAddr(IPv4Address("1.2.3.4"), 0)),
        ('{"k":{"IP":"1.2.3.4","Port":1,"Other":[1]}}', UDPAddr(IPv4Address("1.2.3.4"), 1)),
    ],
)
def test_parse_discovered_endpoints(text: str, expected: dict[str, UDPAddr] | UDPAddr) -> None:
    parsed = tr.parse_discovered_endpoints(text)
    assert parsed == (expected if isinstance(expected, dict) else {"k": expected})


@pytest.mark.parametrize(
    "text",
    [
        "",
        "null",
        "[]",
        '"x"',
        "5",
        "{",
        '{"k":5}',
        '{"k":[]}',
        '{"k":"1.2.3.4:5"}',
        '{"k":{"IP":"1.2.3"}}',
        '{"k":{"IP":"fe80::1%eth0"}}',
        '{"k":{"IP":5}}',
        '{"k":{"Port":1.0}}',
        '{"k":{"Port":1e3}}',
        '{"k":{"Port":true}}',
        '{"k":{"Port":"5"}}',
        '{"k":{"Port":99999999999999999999}}',
        '{"k":{"Port":NaN}}',
        '{"k":{"IP":"1.2.3.4","Port":1,"Other":Infinity}}',
        '{"k":{"Zone":5}}',
    ],
)
def test_invalid_discovered_endpoints(text: str) -> None:
    assert tr.parse_discovered_endpoints(text) is None


# --- node_annotations (what the agent writes) --------------------------------------------------


def test_node_annotations_of_a_reference_node() -> None:
    alpha = next(o for o in reference_objects() if o["metadata"]["name"] == "alpha")
    node, _ = translated(alpha)
    annotations = tr.node_annotations(node)
    assert list(annotations) == list(tr.AGENT_ANNOTATIONS)
    assert annotations == {
        tr.ENDPOINT: "34.1.1.1:51820",
        tr.INTERNAL_IP: "10.128.0.2/20",
        tr.KEY: KEY,
        tr.LAST_SEEN: "1764000000",
        tr.WIREGUARD_IP: "10.4.0.2/16",
        tr.DISCOVERED_ENDPOINTS: "{}",
        tr.GRANULARITY: "location",
        tr.CNI_COMPATIBILITY_IP: "",
    }


def test_node_annotations_of_an_empty_node() -> None:
    assert tr.node_annotations(Node(name="x")) == {
        tr.ENDPOINT: "",
        tr.INTERNAL_IP: "",
        tr.KEY: "A" * 43 + "=",
        tr.LAST_SEEN: "0",
        tr.WIREGUARD_IP: "",
        tr.DISCOVERED_ENDPOINTS: "",
        tr.GRANULARITY: "",
        tr.CNI_COMPATIBILITY_IP: "",
    }


def test_node_annotations_prefer_the_dns_name_and_bracket_ipv6() -> None:
    dns = Endpoint(addr="vpn.example.com:51820").resolved_to(IPv4Address("9.9.9.9"))
    assert tr.node_annotations(Node(name="x", endpoint=dns))[tr.ENDPOINT] == (
        "vpn.example.com:51820"
    )
    v6 = Endpoint.new(IPv6Address("2001:db8::1"), 51820)
    assert tr.node_annotations(Node(name="x", endpoint=v6))[tr.ENDPOINT] == "[2001:db8::1]:51820"


@pytest.mark.parametrize("node", [BASE_NODE, Node(name=NAME)], ids=["full", "empty"])
def test_node_annotations_read_back_identically(node: Node) -> None:
    obj = {"metadata": {"name": NAME, "annotations": tr.node_annotations(node)}}
    back, diagnostics = translated(obj)
    # An agent without a key writes the all-zero key, which is reported when read back.
    assert [d.field for d in diagnostics] == ([] if not node.key.is_zero else [tr.KEY])
    agent_fields = (
        "endpoint",
        "internal_ip",
        "key",
        "last_seen",
        "wireguard_ip",
        "discovered_endpoints",
        "granularity",
        "cni_compatibility_ip",
    )
    for name in agent_fields:
        assert getattr(back, name) == getattr(node, name), name


# --- Peer.Validate (kilo-k8s-cli.md §1.5) --------------------------------------------------------

LAPTOP_KEY = str(PUBLIC_KEYS["laptop"])
PSK = "PSKPSKPSKPSKPSKPSKPSKPSKPSKPSKPSKPSKPSKPSKU="
VALID_SPEC: dict[str, Any] = {"allowedIPs": ["10.5.0.1/32"], "publicKey": LAPTOP_KEY}
DNS_REGEX_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
    "'-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', "
    "regex used for validation is "
    r"'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)


def spec(**changes: Any) -> dict[str, Any]:
    result = dict(VALID_SPEC)
    for key, value in changes.items():
        if isinstance(value, _Delete):
            result.pop(key, None)
        else:
            result[key] = value
    return result


def endpoint(ip: str = "", dns: str = "", port: Any = 51820) -> dict[str, Any]:
    return {"dnsOrIP": {"ip": ip, "dns": dns}, "port": port}


@pytest.mark.parametrize(
    "value",
    [
        VALID_SPEC,
        spec(allowedIPs=[]),
        spec(allowedIPs=DELETE),
        spec(allowedIPs=["10.5.0.1/24", "2001:db8::/64", "::ffff:1.2.3.4/120"]),
        spec(endpoint=endpoint(ip="1.2.3.4")),
        spec(endpoint=endpoint(dns="vpn.example.com")),
        spec(endpoint=endpoint(ip="1.2.3.4", dns="vpn.example.com", port=1)),
        spec(endpoint=endpoint(ip="2001:db8::1", port=65535)),
        spec(endpoint=None),
        spec(persistentKeepalive=0),
        spec(persistentKeepalive=25),
        spec(publicKey=LAPTOP_KEY[:10] + "\n" + LAPTOP_KEY[10:]),
        spec(presharedKey="not a key"),  # not validated
    ],
)
def test_validate_accepts(value: dict[str, Any]) -> None:
    assert tr.validate_peer_spec(value) is None


@pytest.mark.parametrize(
    ("value", "field", "message"),
    [
        (
            spec(allowedIPs=["10.5.0.1"]),
            "spec.allowedIPs",
            'failed to parse "10.5.0.1" as a valid IP address: invalid CIDR address: 10.5.0.1',
        ),
        (
            spec(allowedIPs=["10.5.0.1/32", "bad", "worse"], publicKey=""),
            "spec.allowedIPs",
            'failed to parse "bad" as a valid IP address: invalid CIDR address: bad',
        ),
        (
            spec(endpoint={}),
            "spec.endpoint.dnsOrIP",
            "either an endpoint DNS name IP address must be given",
        ),
        (
            spec(endpoint=endpoint()),
            "spec.endpoint.dnsOrIP",
            "either an endpoint DNS name IP address must be given",
        ),
        (spec(endpoint=endpoint(dns="Vpn.example.com")), "spec.endpoint.dnsOrIP.dns", None),
        (
            spec(endpoint=endpoint(dns="a" * 254)),
            "spec.endpoint.dnsOrIP.dns",
            "must be no more than 253 characters",
        ),
        (
            spec(endpoint=endpoint(dns="A" * 254)),
            "spec.endpoint.dnsOrIP.dns",
            "must be no more than 253 characters; " + DNS_REGEX_MESSAGE,
        ),
        # The DNS name is checked before the IP.
        (spec(endpoint=endpoint(ip="1.2.3", dns="x_y")), "spec.endpoint.dnsOrIP.dns", None),
        (
            spec(endpoint=endpoint(ip="1.2.3", dns="vpn.example.com")),
            "spec.endpoint.dnsOrIP.ip",
            'failed to parse "1.2.3" as a valid IP address',
        ),
        (
            spec(endpoint=endpoint(ip="fe80::1%eth0")),
            "spec.endpoint.dnsOrIP.ip",
            'failed to parse "fe80::1%eth0" as a valid IP address',
        ),
        (
            spec(endpoint=endpoint(ip="1.2.3.4", port=0)),
            "spec.endpoint.port",
            "port must be a valid UDP port number, got 0",
        ),
        (
            spec(endpoint={"dnsOrIP": {"ip": "1.2.3.4"}}),
            "spec.endpoint.port",
            "port must be a valid UDP port number, got 0",
        ),
        (
            spec(endpoint=endpoint(ip="1.2.3.4", port=65536)),
            "spec.endpoint.port",
            "port must be a valid UDP port number, got 65536",
        ),
        # Deliberate fix: Go prints %q of an int here ('\ufffd'); we print the number.
        (
            spec(persistentKeepalive=-1),
            "spec.persistentKeepalive",
            "persistent keepalive must be greater than or equal to zero; got -1",
        ),
        (spec(publicKey=""), "spec.publicKey", "WireGuard public key has invalid length"),
        (spec(publicKey=DELETE), "spec.publicKey", "WireGuard public key has invalid length"),
        (spec(publicKey="AAAA"), "spec.publicKey", "WireGuard public key has invalid length"),
        (
            spec(publicKey=LAPTOP_KEY[:43]),
            "spec.publicKey",
            "WireGuard public key is not base64 encoded: illegal base64 data at input byte 40",
        ),
        (
            spec(publicKey="abc!"),
            "spec.publicKey",
            "WireGuard public key is not base64 encoded: illegal base64 data at input byte 3",
        ),
        (None, "spec", "spec must be an object"),
    ],
)
def test_validate_rejects(value: Any, field: str, message: str | None) -> None:
    assert tr.validate_peer_spec(value) == (field, message or DNS_REGEX_MESSAGE)


# --- translate_peer -------------------------------------------------------------------------


def peer_object(spec_value: Any, name: Any = "laptop") -> dict[str, Any]:
    return {
        "apiVersion": "kilo.squat.ai/v1alpha1",
        "kind": "Peer",
        "metadata": {"name": name},
        "spec": spec_value,
    }


def translated_peer(spec_value: Any) -> tuple[Peer, list[Diagnostic]]:
    result = tr.translate_peer(peer_object(spec_value))
    assert result.value is not None
    return result.value, list(result.diagnostics)


def test_translate_peer() -> None:
    peer, diagnostics = translated_peer(
        spec(allowedIPs=["10.5.0.1/24", "10.6.0.0/16"], persistentKeepalive=25, presharedKey=PSK)
    )
    assert peer == Peer(
        name="laptop",
        allowed_ips=(IPv4Interface("10.5.0.1/24"), IPv4Interface("10.6.0.0/16")),  # host bits
        public_key=PUBLIC_KEYS["laptop"],
        preshared_key=Key.parse(PSK),
        persistent_keepalive=25,
        endpoint=None,
    )
    assert diagnostics == []
    assert peer.is_ready()


def test_peer_defaults() -> None:
    peer, diagnostics = translated_peer(spec(allowedIPs=DELETE))
    assert peer == Peer(name="laptop", public_key=PUBLIC_KEYS["laptop"])
    assert peer.persistent_keepalive == 0
    assert peer.preshared_key is None
    assert not peer.is_ready()  # no allowed IPs
    assert diagnostics == []


@pytest.mark.parametrize(
    ("endpoint_spec", "expected"),
    [
        (endpoint(ip="1.2.3.4"), Endpoint.new(IPv4Address("1.2.3.4"), 51820)),
        (endpoint(ip="::ffff:1.2.3.4", port=1), Endpoint.new(IPv4Address("1.2.3.4"), 1)),
        (endpoint(ip="2001:db8::1"), Endpoint.new(IPv6Address("2001:db8::1"), 51820)),
        (endpoint(dns="vpn.example.com"), Endpoint(addr="vpn.example.com:51820")),
        # Kilo lets the DNS name win over the IP.
        (
            endpoint(ip="1.2.3.4", dns="vpn.example.com", port=4000),
            Endpoint(addr="vpn.example.com:4000"),
        ),
        # A valid DNS name that is also an IP gives an IP endpoint.
        (endpoint(dns="1.2.3.4"), Endpoint.new(IPv4Address("1.2.3.4"), 51820)),
        (None, None),
    ],
)
def test_peer_endpoint(endpoint_spec: Any, expected: Endpoint | None) -> None:
    peer, diagnostics = translated_peer(spec(endpoint=endpoint_spec))
    assert peer.endpoint == expected
    assert diagnostics == []


@pytest.mark.parametrize(("keepalive", "expected"), [(DELETE, 0), (None, 0), (0, 0), (25, 25)])
def test_peer_keepalive(keepalive: Any, expected: int) -> None:
    peer, _ = translated_peer(spec(persistentKeepalive=keepalive))
    assert peer.persistent_keepalive == expected


@pytest.mark.parametrize("psk", [DELETE, None, ""])
def test_peer_without_a_preshared_key(psk: Any) -> None:
    peer, diagnostics = translated_peer(spec(presharedKey=psk))
    assert peer.preshared_key is None
    assert diagnostics == []


@pytest.mark.parametrize(
    "psk", ["not-a-key-SECRET", PSK[:43], "AAAA", PSK[:20] + "!" + PSK[21:], 12345]
)
def test_invalid_preshared_key_is_dropped_without_leaking_it(psk: Any) -> None:
    peer, diagnostics = translated_peer(spec(presharedKey=psk))
    assert peer.preshared_key is None
    assert peer.public_key == PUBLIC_KEYS["laptop"]  # siblings unaffected
    assert peer.allowed_ips == (IPv4Interface("10.5.0.1/32"),)
    assert [(d.kind, d.name, d.field) for d in diagnostics] == [
        ("peer", "laptop", "spec.presharedKey")
    ]
    diagnostic = diagnostics[0]
    secret = str(psk)
    for text in (diagnostic.value, diagnostic.problem, str(diagnostic), repr(diagnostic)):
        assert secret not in text
        assert secret[:8] not in text


@pytest.mark.parametrize(
    ("spec_value", "field", "value"),
    [
        (spec(allowedIPs=["10.5.0.1/32", "bad"]), "spec.allowedIPs", '["10.5.0.1/32", "bad"]'),
        (spec(endpoint=endpoint(ip="1.2.3.4", port=0)), "spec.endpoint.port", "0"),
        (spec(endpoint=endpoint(dns="Bad")), "spec.endpoint.dnsOrIP.dns", "Bad"),
        (spec(endpoint=endpoint(ip="1.2.3")), "spec.endpoint.dnsOrIP.ip", "1.2.3"),
        (spec(persistentKeepalive=-5), "spec.persistentKeepalive", "-5"),
        (spec(publicKey="nope"), "spec.publicKey", "nope"),
        (None, "spec", "null"),
    ],
)
def test_invalid_peer_is_ignored_with_a_diagnostic(spec_value: Any, field: str, value: str) -> None:
    result = tr.translate_peer(peer_object(spec_value))
    assert result.value is None
    assert [(d.kind, d.name, d.field, d.value) for d in result.diagnostics] == [
        ("peer", "laptop", field, value)
    ]
    problem = tr.validate_peer_spec(spec_value)
    assert problem is not None
    assert problem[1] in result.diagnostics[0].problem


def test_invalid_peer_diagnostic_does_not_leak_its_preshared_key() -> None:
    result = tr.translate_peer(peer_object(spec(presharedKey=PSK, publicKey="nope")))
    assert result.value is None
    assert all(PSK not in str(d) for d in result.diagnostics)


@pytest.mark.parametrize("name", [None, "", 5])
def test_peer_without_a_name_is_ignored(name: Any) -> None:
    result = tr.translate_peer(peer_object(VALID_SPEC, name=name))
    assert result.value is None
    assert [(d.kind, d.field) for d in result.diagnostics] == [("peer", "metadata.name")]


def test_reference_laptop_peer() -> None:
    laptop = next(o for o in reference_objects() if o["kind"] == "Peer")
    peer, diagnostics = translated_peer(laptop["spec"])
    assert peer == Peer(
        name="laptop",
        allowed_ips=(IPv4Interface("10.5.0.1/32"),),
        public_key=PUBLIC_KEYS["laptop"],
        persistent_keepalive=25,
    )
    assert diagnostics == []


def test_parse_int64() -> None:
    assert tr.parse_int64("0") == 0
    assert tr.parse_int64("-9223372036854775808") == -(2**63)
    assert tr.parse_int64("-9223372036854775809") is None
    assert tr.parse_int64("0" * 100 + "7") == 7
    assert tr.parse_int64("") is None
    assert tr.parse_int64("+") is None
    assert tr.parse_int64(" 1") is None
    assert tr.parse_int64("٣") is None
    assert tr.parse_int64("9" * 10000) is None


def test_discovered_endpoints_json_is_the_go_encoding() -> None:
    # The same bytes as Go's json.Marshal(map[string]*net.UDPAddr).
    text = tr.format_discovered_endpoints({"k": UDPAddr(IPv4Address("5.6.7.8"), 41000)})
    assert json.loads(text) == {"k": {"IP": "5.6.7.8", "Port": 41000, "Zone": ""}}
    assert " " not in text


# --- readiness (kilo-mesh.md §1.2, §1.3) -------------------------------------------------------

SEEN = BASE_NODE.last_seen


@pytest.mark.parametrize(
    ("changes", "now", "ready"),
    [
        ({}, None, True),  # now=None: liveness is not judged
        ({}, SEEN, True),
        ({}, SEEN + 59, True),
        ({}, SEEN + 60, False),  # strict: now - last_seen < 60
        ({}, SEEN - 1000, True),
        ({"last_seen": 0}, None, True),
        ({"endpoint": None}, None, False),
        ({"endpoint": Endpoint(addr="vpn.example.com:51820")}, None, True),
        ({"endpoint": Endpoint.new(None, 51820)}, None, False),
        ({"endpoint": Endpoint.new(IPv4Address("1.2.3.4"), 0)}, None, False),
        ({"key": ZERO_KEY}, None, False),
        ({"subnet": None}, None, False),
        # The internal IP and the WireGuard IP are not required.
        ({"internal_ip": None, "wireguard_ip": None, "no_internal_ip": True}, None, True),
    ],
)
def test_node_readiness(changes: dict[str, Any], now: int | None, ready: bool) -> None:
    node = dataclasses.replace(BASE_NODE, **changes)
    assert node.is_ready(now) is ready
    assert ready_nodes([node], now) == ([node] if ready else [])


def test_peer_readiness() -> None:
    ready = Peer(
        name="a", allowed_ips=(IPv4Interface("10.5.0.1/32"),), public_key=PUBLIC_KEYS["laptop"]
    )
    no_ips = dataclasses.replace(ready, name="b", allowed_ips=())
    zero_key = dataclasses.replace(ready, name="c", public_key=ZERO_KEY)
    assert ready.is_ready()  # no endpoint needed
    assert not no_ips.is_ready()
    assert not zero_key.is_ready()
    assert ready_peers([no_ips, ready, zero_key]) == [ready]


@pytest.mark.parametrize(
    ("obj", "field", "problem"),
    [
        (
            {"metadata": {"name": NAME, "annotations": [1, 2]}},
            "metadata.annotations",
            "is not a map; ignored",
        ),
        ({"metadata": {"name": NAME, "labels": "eu"}}, "metadata.labels", "is not a map; ignored"),
        (
            {"metadata": {"name": NAME}, "spec": [1]},
            "spec",
            "is not a map; the node has no pod CIDR",
        ),
        (
            {"metadata": {"name": NAME, "annotations": {tr.KEY: "A" * 43 + "="}}},
            tr.KEY,
            "is the all-zero key; the node is not ready",
        ),
        ({"metadata": {"name": 5}}, "metadata.name", "is not a string; the node is ignored"),
    ],
)
def test_malformed_structure_is_reported(obj: dict[str, Any], field: str, problem: str) -> None:
    result = tr.translate_node(obj)
    assert [(d.field, d.problem) for d in result.diagnostics] == [(field, problem)]


def test_null_discovered_endpoint_is_kept_as_kilo_keeps_it() -> None:
    text = f'{{"{KEY}":null}}'
    node, diagnostics = translated(node_object({tr.DISCOVERED_ENDPOINTS: text}))
    assert node.discovered_endpoints == {KEY: None}
    assert [d.field for d in diagnostics] == [tr.DISCOVERED_ENDPOINTS]
    assert tr.format_discovered_endpoints(node.discovered_endpoints) == text


def test_annotation_changes_are_only_the_changed_agent_keys() -> None:
    current = tr.node_annotations(BASE_NODE)
    assert tr.annotation_changes(current, BASE_NODE) == {}
    moved = dataclasses.replace(BASE_NODE, last_seen=BASE_NODE.last_seen + 30)
    assert tr.annotation_changes({**current, "other": "x"}, moved) == {
        tr.LAST_SEEN: str(BASE_NODE.last_seen + 30)
    }
    assert tr.annotation_changes(None, BASE_NODE) == tr.node_annotations(BASE_NODE)


# --- issue 11: one hostile object costs only itself, and is quoted short --------------------


@pytest.mark.parametrize(
    "value",
    ["[" * 1000, "{" * 100_000, '{"a":' * 3000 + "1" + "}" * 3000, '{"k": ' + "9" * 5000 + "}"],
    ids=["brackets", "braces", "deep-object", "huge-number"],
)
def test_discovered_endpoints_nested_too_deeply_are_ignored_not_raised(value: str) -> None:
    node, diagnostics = translated(node_object({tr.DISCOVERED_ENDPOINTS: value}))
    assert node == dataclasses.replace(BASE_NODE, discovered_endpoints=None)
    assert fields(diagnostics) == [("node", NAME, tr.DISCOVERED_ENDPOINTS, value[:79] + "…")]
    assert "is not valid JSON of endpoints; ignored" in diagnostics[0].problem


def test_every_value_in_a_diagnostic_is_quoted_short() -> None:
    huge = {
        tr.LOCATION: ["L" * 1_000_000],
        tr.ENDPOINT: "e" * 1_000_000,
        tr.KEY: "k" * 1_000_000,
        "x" * 10_000: {"deep": [[[[[["x" * 1_000_000]]]]]]},
    }
    obj = node_object(huge, {TOPOLOGY_LABEL: 10**5000}, pod_cidr=[10**5000], name="n" * 10_000)
    result = tr.translate_node(obj)
    assert result.diagnostics
    for diagnostic in result.diagnostics:
        assert len(diagnostic.name) <= 253
        assert len(diagnostic.field) <= 320
        assert len(diagnostic.value) <= 80
        assert len(str(diagnostic)) < 1000
    assert any(d.value == "[<16610-bit integer>]" for d in result.diagnostics)


def test_a_flood_of_bad_allowed_location_ips_is_reported_in_four_lines() -> None:
    node, diagnostics = translated(
        node_object({tr.ALLOWED_LOCATION_IPS: "10.9.0.0/24," + "bad," * 100_000})
    )
    assert node.allowed_location_ips == (ip_interface("10.9.0.0/24"),)
    assert [d.value for d in diagnostics[:3]] == ["bad"] * 3
    assert len(diagnostics) == 4
    assert diagnostics[3].problem == "has 99998 more items that are not CIDRs; they are dropped"


@pytest.mark.parametrize("obj", [[], "node", 5, None, [{"metadata": {"name": "n1"}}]])
def test_an_object_that_is_not_a_map_is_ignored(obj: Any) -> None:
    for translate in (tr.translate_node, tr.translate_peer):
        result = translate(obj)
        assert result.value is None
        assert [d.problem for d in result.diagnostics] == ["is not an object; ignored"]


@pytest.mark.parametrize(
    "keepalive", [65536, 10**12, 2**63, 10**5000], ids=["65536", "1e12", "2^63", "1e5000"]
)
def test_a_peer_keepalive_above_wireguards_maximum_is_capped_with_a_warning(
    keepalive: int,
) -> None:
    result = tr.translate_peer(
        peer_object(
            {"allowedIPs": ["10.5.0.1/32"], "publicKey": KEY, "persistentKeepalive": keepalive}
        )
    )
    assert result.value is not None
    assert result.value.persistent_keepalive == 65535
    [diagnostic] = result.diagnostics
    assert diagnostic.field == "spec.persistentKeepalive"
    assert diagnostic.problem == "exceeds WireGuard's maximum; WireGuard gets 65535"
    assert len(diagnostic.value) <= 80
