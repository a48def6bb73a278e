"""The Peer object of ``kgctl showconf … --as-peer -o yaml|json`` (kilo-k8s-cli.md §4.5.1).

Whole texts are compared. Tests whose name ends in ``_deviation`` document a deliberate
difference from Kilo, whose output there yields Peers that Kilo rejects or misreads.
"""

from __future__ import annotations

import ipaddress

import pytest
import yaml

from kilo.mesh import ip as ipmod
from kilo.mesh.endpoint import Endpoint
from kilo.mesh.keys import Key
from kilo.mesh.model import Granularity, Node
from kilo.mesh.peerspec import JSONValue, peer_object, to_json, to_yaml
from kilo.mesh.topology import build_topology
from kilo.mesh.wireguard import WireGuardPeer, location_as_peer, with_extra_allowed_ips
from tests.examples import KILO_SUBNET

CONTROL_PLANE = "kind-cluster-kilo-control-plane"
NAMES = [CONTROL_PLANE, "kind-cluster-kilo-worker", "kind-cluster-kilo-worker2"]
KEYS = [Key(bytes([i + 1]) * 32) for i in range(3)]
PUBLIC = Key(bytes([0x50]) * 32)  # "UFBQ…UA="
PSK = Key(bytes([0x70]) * 32)  # "cHBw…cA="


def _kind_cluster_as_peer() -> WireGuardPeer:
    """§4.5.1: three kind nodes in one location, control-plane leads; --allowed-ips 10.43.0.0/16."""
    nodes = [
        Node(
            name=name,
            endpoint=Endpoint.parse(f"172.18.0.{i + 2}:51820"),
            key=KEYS[i],
            internal_ip=ipmod.parse_interface(f"172.18.0.{i + 2}/16"),
            subnet=ipaddress.ip_network(f"10.42.{i}.0/24"),
        )
        for i, name in enumerate(NAMES)
    ]
    t = build_topology(
        nodes, [], granularity=Granularity.LOCATION, hostname=CONTROL_PLANE, subnet=KILO_SUBNET
    )
    peer = location_as_peer(t)
    assert peer is not None
    return with_extra_allowed_ips(peer, [ipaddress.ip_network("10.43.0.0/16")])


def _peer(
    *,
    endpoint: Endpoint | None = None,
    persistent_keepalive: int = 0,
    preshared_key: Key | None = None,
) -> WireGuardPeer:
    return WireGuardPeer(
        public_key=PUBLIC,
        allowed_ips=(ipaddress.ip_interface("10.5.0.1/32"),),
        endpoint=endpoint,
        persistent_keepalive=persistent_keepalive,
        preshared_key=preshared_key,
    )


def test_yaml_matches_the_kgctl_example() -> None:
    expected = f"""\
apiVersion: kilo.squat.ai/v1alpha1
kind: Peer
metadata:
  name: kind-cluster-kilo-control-plane
spec:
  allowedIPs:
  - 10.42.0.0/24
  - 172.18.0.2/32
  - 10.42.1.0/24
  - 172.18.0.3/32
  - 10.42.2.0/24
  - 172.18.0.4/32
  - 10.4.0.1/32
  - 10.43.0.0/16
  endpoint:
    dnsOrIP:
      ip: 172.18.0.2
    port: 51820
  publicKey: {KEYS[0]}
"""
    assert to_yaml(peer_object(_kind_cluster_as_peer(), CONTROL_PLANE)) == expected


def test_json_of_the_kgctl_example_in_go_field_order_without_trailing_newline() -> None:
    expected = f"""\
{{
  "kind": "Peer",
  "apiVersion": "kilo.squat.ai/v1alpha1",
  "metadata": {{
    "name": "kind-cluster-kilo-control-plane"
  }},
  "spec": {{
    "allowedIPs": [
      "10.42.0.0/24",
      "172.18.0.2/32",
      "10.42.1.0/24",
      "172.18.0.3/32",
      "10.42.2.0/24",
      "172.18.0.4/32",
      "10.4.0.1/32",
      "10.43.0.0/16"
    ],
    "endpoint": {{
      "dnsOrIP": {{
        "ip": "172.18.0.2"
      }},
      "port": 51820
    }},
    "publicKey": "{KEYS[0]}"
  }}
}}"""
    assert to_json(peer_object(_kind_cluster_as_peer(), CONTROL_PLANE)) == expected


def test_json_with_every_field_in_go_struct_order() -> None:
    peer = _peer(
        endpoint=Endpoint.parse("1.2.3.4:51820"), persistent_keepalive=10, preshared_key=PSK
    )
    expected = f"""\
{{
  "kind": "Peer",
  "apiVersion": "kilo.squat.ai/v1alpha1",
  "metadata": {{
    "name": "laptop"
  }},
  "spec": {{
    "allowedIPs": [
      "10.5.0.1/32"
    ],
    "endpoint": {{
      "dnsOrIP": {{
        "ip": "1.2.3.4"
      }},
      "port": 51820
    }},
    "persistentKeepalive": 10,
    "presharedKey": "{PSK}",
    "publicKey": "{PUBLIC}"
  }}
}}"""
    assert to_json(peer_object(peer, "laptop")) == expected


def test_yaml_with_every_field_sorted() -> None:
    peer = _peer(
        endpoint=Endpoint.parse("[2001:db8::1]:51820"), persistent_keepalive=10, preshared_key=PSK
    )
    expected = f"""\
apiVersion: kilo.squat.ai/v1alpha1
kind: Peer
metadata:
  name: laptop
spec:
  allowedIPs:
  - 10.5.0.1/32
  endpoint:
    dnsOrIP:
      ip: 2001:db8::1
    port: 51820
  persistentKeepalive: 10
  presharedKey: {PSK}
  publicKey: {PUBLIC}
"""
    assert to_yaml(peer_object(peer, "laptop")) == expected


def test_no_allowed_ips_is_null_and_a_zero_key_is_an_empty_string() -> None:
    peer = WireGuardPeer(public_key=Key(bytes(32)))
    obj = peer_object(peer, "empty")
    assert to_json(obj) == (
        "{\n"
        '  "kind": "Peer",\n'
        '  "apiVersion": "kilo.squat.ai/v1alpha1",\n'
        '  "metadata": {\n'
        '    "name": "empty"\n'
        "  },\n"
        '  "spec": {\n'
        '    "allowedIPs": null,\n'
        '    "publicKey": ""\n'
        "  }\n"
        "}"
    )
    # go-yaml double-quotes a string that would otherwise read back as null.
    assert to_yaml(obj) == (
        "apiVersion: kilo.squat.ai/v1alpha1\n"
        "kind: Peer\n"
        "metadata:\n"
        "  name: empty\n"
        "spec:\n"
        "  allowedIPs: null\n"
        '  publicKey: ""\n'
    )


def test_a_zero_keepalive_is_omitted() -> None:
    obj = peer_object(_peer(persistent_keepalive=0), "p")
    assert obj["spec"] == {"allowedIPs": ["10.5.0.1/32"], "publicKey": str(PUBLIC)}


def test_an_unusable_endpoint_is_omitted() -> None:
    for endpoint in (Endpoint.new(None, 0), Endpoint(addr="no-port")):
        spec = peer_object(_peer(endpoint=endpoint), "p")["spec"]
        assert isinstance(spec, dict)
        assert "endpoint" not in spec


def test_json_escapes_html_characters_like_go() -> None:
    obj: dict[str, JSONValue] = {"metadata": {"name": "<a & b>\u2028é"}}
    assert to_json(obj) == (
        '{\n  "metadata": {\n    "name": "\\u003ca \\u0026 b\\u003e\\u2028é"\n  }\n}'
    )


@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("123", 'name: "123"'),
        ("y", 'name: "y"'),
        ("n", 'name: "n"'),
        ("yes", 'name: "yes"'),
        ("null", 'name: "null"'),
        ("1e5", 'name: "1e5"'),
        ("1.5", 'name: "1.5"'),
        ("0x1f", 'name: "0x1f"'),
        ("0o17", 'name: "0o17"'),
        ("09", 'name: "09"'),
        ("-1", 'name: "-1"'),
        (".5", 'name: ".5"'),
        ("99999999999999999999", 'name: "99999999999999999999"'),
        ("1e999", "name: 1e999"),
        ("2024-01-02", 'name: "2024-01-02"'),
        ("1:2:3:4:5:6:7:8", 'name: "1:2:3:4:5:6:7:8"'),
        ("a1", "name: a1"),
        ("node-1.example", "name: node-1.example"),
        ("10.4.0.1", "name: 10.4.0.1"),
        ("fd00::1", "name: fd00::1"),
    ],
)
def test_yaml_double_quotes_what_go_yaml_would_read_as_another_type(name: str, line: str) -> None:
    text = to_yaml({"name": name})
    assert text == line + "\n"
    assert yaml.safe_load(text) == {"name": name}


def test_keepalive_is_seconds_not_nanoseconds_deviation() -> None:
    # Kilo writes the Go duration: persistentKeepalive: 25000000000.
    obj = peer_object(_peer(persistent_keepalive=25), "laptop")
    assert to_yaml(obj) == (
        "apiVersion: kilo.squat.ai/v1alpha1\n"
        "kind: Peer\n"
        "metadata:\n"
        "  name: laptop\n"
        "spec:\n"
        "  allowedIPs:\n"
        "  - 10.5.0.1/32\n"
        "  persistentKeepalive: 25\n"
        f"  publicKey: {PUBLIC}\n"
    )


def test_dns_holds_the_host_name_not_the_port_deviation() -> None:
    # Kilo writes dnsOrIP: {dns: "51820", ip: "<nil>"}.
    obj = peer_object(_peer(endpoint=Endpoint.parse("vpn.example.com:51820")), "laptop")
    assert to_yaml(obj) == (
        "apiVersion: kilo.squat.ai/v1alpha1\n"
        "kind: Peer\n"
        "metadata:\n"
        "  name: laptop\n"
        "spec:\n"
        "  allowedIPs:\n"
        "  - 10.5.0.1/32\n"
        "  endpoint:\n"
        "    dnsOrIP:\n"
        "      dns: vpn.example.com\n"
        "    port: 51820\n"
        f"  publicKey: {PUBLIC}\n"
    )


def test_no_endpoint_omits_the_endpoint_deviation() -> None:
    # Kilo writes endpoint: {dnsOrIP: {ip: "<nil>"}, port: 0}, which fails validation.
    obj = peer_object(_peer(endpoint=None), "laptop")
    assert to_json(obj) == (
        "{\n"
        '  "kind": "Peer",\n'
        '  "apiVersion": "kilo.squat.ai/v1alpha1",\n'
        '  "metadata": {\n'
        '    "name": "laptop"\n'
        "  },\n"
        '  "spec": {\n'
        '    "allowedIPs": [\n'
        '      "10.5.0.1/32"\n'
        "    ],\n"
        f'    "publicKey": "{PUBLIC}"\n'
        "  }\n"
        "}"
    )


def test_dns_endpoint_has_no_ip_even_when_resolved_deviation() -> None:
    # Kilo writes ip: "<nil>" for an unresolved name (kgctl never resolves); a resolved
    # name is still written as the name only, so the Peer keeps following it.
    endpoint = Endpoint.parse("vpn.example.com:51820")
    assert endpoint is not None
    resolved = endpoint.resolved_to(ipaddress.ip_address("1.2.3.4"))
    obj = peer_object(_peer(endpoint=resolved), "laptop")
    assert to_json(obj) == (
        "{\n"
        '  "kind": "Peer",\n'
        '  "apiVersion": "kilo.squat.ai/v1alpha1",\n'
        '  "metadata": {\n'
        '    "name": "laptop"\n'
        "  },\n"
        '  "spec": {\n'
        '    "allowedIPs": [\n'
        '      "10.5.0.1/32"\n'
        "    ],\n"
        '    "endpoint": {\n'
        '      "dnsOrIP": {\n'
        '        "dns": "vpn.example.com"\n'
        "      },\n"
        '      "port": 51820\n'
        "    },\n"
        f'    "publicKey": "{PUBLIC}"\n'
        "  }\n"
        "}"
    )
