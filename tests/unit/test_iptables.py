"""The iptables rule model and the rules of kilo-mesh.md §5.1-5.4."""

from __future__ import annotations

import dataclasses
import json
from ipaddress import ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kilo.mesh import ip as ipmod
from kilo.mesh import iptables as iptables_mod
from kilo.mesh.endpoint import Endpoint
from kilo.mesh.iptables import (
    EMPTY,
    Chain,
    Protocol,
    Rule,
    RuleSet,
    combine,
    encapsulation_rules,
    encapsulator_has_rules,
    ipip_allowed_sources,
    plan_rules,
    protocol_of,
    topology_rules,
)
from kilo.mesh.keys import Key
from kilo.mesh.model import Compatibility, Encapsulation, Granularity, Node, Peer
from kilo.mesh.topology import Topology, build_topology
from tests.examples import KILO_SUBNET, reference_cluster
from tests.reference_iptables import (
    IPIP_APPEND,
    NAT_APPEND,
    PEER_RULES,
    SEGMENT_RETURNS,
    accept_ipip,
    jump_nat,
    known,
    wireguard,
)

SERVICE_CIDR = ip_network("10.96.0.0/12")
V4, V6 = Protocol.IPV4, Protocol.IPV6


def topology(hostname: str, granularity: Granularity = Granularity.LOCATION) -> Topology:
    nodes, peers = reference_cluster()
    return build_topology(
        nodes,
        peers,
        granularity=granularity,
        hostname=hostname,
        subnet=KILO_SUBNET,
        service_cidrs=[SERVICE_CIDR],
    )


def location_of(hostname: str) -> str:
    nodes, _ = reference_cluster()
    return next(n.location for n in nodes if n.name == hostname)


def plan(hostname: str, **overrides: object) -> RuleSet:
    options: dict[str, object] = {
        "cni": True,
        "forward": False,
        "local": True,
        "encapsulation": Encapsulation.ALWAYS,
        "compatibility": Compatibility.NONE,
        "local_location": location_of(hostname),
    }
    options.update(overrides)
    t = topology(hostname, options.pop("granularity", Granularity.LOCATION))  # type: ignore[arg-type]
    return plan_rules(t, **options)  # type: ignore[arg-type]


def strings(entries: tuple[Chain | Rule, ...]) -> list[str]:
    return [str(e) for e in entries]


# --- the rule model (§5.1) -----------------------------------------------------------------


def test_rule_string_quotes_the_comment_argument() -> None:
    rule = Rule(
        protocol=V4,
        table="nat",
        chain="POSTROUTING",
        spec=("-s", "10.2.0.0/24", "-m", "comment", "--comment", "a b", "-j", "KILO-NAT"),
    )
    assert str(rule) == 'nat -A POSTROUTING -s 10.2.0.0/24 -m comment --comment "a b" -j KILO-NAT'
    assert rule.key == (V4, str(rule))


def test_rule_string_without_spec_has_no_trailing_space() -> None:
    assert str(Rule(protocol=V4, table="filter", chain="INPUT", spec=())) == "filter -A INPUT"
    # A trailing --comment has nothing to quote.
    rule = Rule(protocol=V4, table="filter", chain="INPUT", spec=("--comment",))
    assert str(rule) == "filter -A INPUT --comment"


def test_chain_string() -> None:
    chain = Chain(protocol=V6, table="nat", name="KILO-NAT")
    assert str(chain) == "nat -N KILO-NAT"
    assert chain.key == (V6, "nat -N KILO-NAT")


def test_values_are_frozen_and_hashable() -> None:
    rule = Rule(protocol=V4, table="nat", chain="X", spec=("-j", "RETURN"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        rule.chain = "Y"  # type: ignore[misc]
    same = Rule(protocol=V4, table="nat", chain="X", spec=("-j", "RETURN"))
    assert rule == same
    assert len({rule, same}) == 1
    assert Rule(protocol=V6, table="nat", chain="X", spec=("-j", "RETURN")) != rule


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (ipmod.parse_ip("10.0.0.1"), V4),
        (ipmod.parse_ip("::ffff:10.0.0.1"), V4),
        (ipmod.parse_ip("fd00::1"), V6),
        (ipmod.parse_interface("10.5.0.1/24"), V4),
        (ip_network("fd10::/64"), V6),
        (ip_network("10.2.0.0/24"), V4),
    ],
)
def test_protocol_follows_the_address_family(value: object, expected: Protocol) -> None:
    assert protocol_of(value) == expected  # type: ignore[arg-type]


def test_ruleset_addition_keeps_order() -> None:
    a = Rule(protocol=V4, table="t", chain="A", spec=())
    b = Rule(protocol=V4, table="t", chain="B", spec=())
    c = Chain(protocol=V4, table="t", name="C")
    first = RuleSet(append=(c,), prepend=(a,))
    second = RuleSet(append=(a,), prepend=(b,))
    assert combine(first, second) == RuleSet(append=(c, a), prepend=(a, b))
    assert first + EMPTY == first
    assert EMPTY + first == first


# --- the worked example (§5.4) -------------------------------------------------------------


def test_alpha_combined_rules_match_the_reference() -> None:
    rules = plan("alpha")
    assert strings(rules.append) == IPIP_APPEND + NAT_APPEND
    assert [e.protocol for e in rules.append] == [V4, V6] * 3 + [V4, V6, V4, V4, V6]
    assert [type(e) for e in rules.append] == [Chain, Chain, *[Rule] * 4, Chain, Chain, *[Rule] * 3]
    assert strings(rules.prepend) == [
        accept_ipip("10.128.0.2/32"),
        accept_ipip("10.128.0.3/32"),
        jump_nat("10.2.0.0/24"),
        *SEGMENT_RETURNS,
        *PEER_RULES,
    ]
    assert {r.protocol for r in rules.prepend} == {V4}
    assert {r.table for r in rules.prepend[:2]} == {"filter"}


def test_topology_rules_alone_have_no_encapsulation_rules() -> None:
    rules = topology_rules(topology("alpha"), cni=True, forward=False)
    assert strings(rules.append) == NAT_APPEND
    assert strings(rules.prepend) == [jump_nat("10.2.0.0/24"), *SEGMENT_RETURNS, *PEER_RULES]


def test_gamma_nats_traffic_to_its_allowed_location_ips() -> None:
    rules = plan("gamma")
    assert strings(rules.append) == IPIP_APPEND + NAT_APPEND
    alip_jump = (
        'nat -A POSTROUTING -d 172.31.100.0/24 -m comment --comment "Kilo: jump to NAT chain" '
        "-j KILO-NAT"
    )
    assert strings(rules.prepend) == [
        accept_ipip("172.31.5.5/32"),
        jump_nat("10.2.2.0/24"),
        *SEGMENT_RETURNS[:4],
        alip_jump,
        *SEGMENT_RETURNS[4:],
        *PEER_RULES,
    ]


def test_alpha_does_not_nat_to_other_locations_allowed_location_ips() -> None:
    assert not any("172.31.100.0/24" in r for r in strings(plan("alpha").prepend))


def test_without_cni_there_is_no_pod_cidr_jump() -> None:
    rules = plan("alpha", cni=False, forward=True)
    assert strings(rules.prepend) == [
        accept_ipip("10.128.0.2/32"),
        accept_ipip("10.128.0.3/32"),
        *SEGMENT_RETURNS,
        *PEER_RULES,
    ]


def test_service_cidrs_are_appended_in_order() -> None:
    nodes, peers = reference_cluster()
    services = [ip_network("10.96.0.0/12"), ip_network("fd96::/108")]
    t = build_topology(
        nodes,
        peers,
        granularity=Granularity.LOCATION,
        hostname="beta",
        subnet=KILO_SUBNET,
        service_cidrs=services,
    )
    service_rules = [
        r
        for r in topology_rules(t, cni=True, forward=False).append
        if isinstance(r, Rule) and "service" in str(r)
    ]
    assert [(r.protocol, r.spec[1]) for r in service_rules] == [
        (V4, "10.96.0.0/12"),
        (V6, "fd96::/108"),
    ]


# --- FORWARD rules ---------------------------------------------------------------------------


def forward(direction: str, what: str, cidr: str) -> str:
    flag = "-s" if direction == "from" else "-d"
    return (
        f'filter -A FORWARD -m comment --comment "Kilo: forward packets {direction} {what}" '
        f"{flag} {cidr} -j ACCEPT"
    )


def test_forward_rules_on_a_leader_cover_the_whole_location() -> None:
    rules = plan("alpha", forward=True)
    assert strings(rules.prepend) == [
        accept_ipip("10.128.0.2/32"),
        accept_ipip("10.128.0.3/32"),
        jump_nat("10.2.0.0/24"),
        forward("from", "the pod subnet", "10.2.0.0/24"),
        forward("to", "the pod subnet", "10.2.0.0/24"),
        forward("from", "the pod subnet", "10.2.1.0/24"),
        forward("to", "the pod subnet", "10.2.1.0/24"),
        forward("from", "private IPs", "10.128.0.2/32"),
        forward("to", "private IPs", "10.128.0.2/32"),
        forward("from", "private IPs", "10.128.0.3/32"),
        forward("to", "private IPs", "10.128.0.3/32"),
        *SEGMENT_RETURNS,
        *PEER_RULES,
    ]
    assert all(r.table == "filter" for r in rules.prepend[3:11])


def test_forward_rules_on_a_leader_include_allowed_location_ips() -> None:
    forwards = [s for s in strings(plan("gamma", forward=True).prepend) if "FORWARD" in s]
    assert forwards == [
        forward("from", "the pod subnet", "10.2.2.0/24"),
        forward("to", "the pod subnet", "10.2.2.0/24"),
        forward("from", "allowed location IPs", "172.31.100.0/24"),
        forward("to", "allowed location IPs", "172.31.100.0/24"),
        forward("from", "private IPs", "172.31.5.5/32"),
        forward("to", "private IPs", "172.31.5.5/32"),
    ]


def test_forward_rules_on_a_non_leader_cover_its_own_pod_cidr() -> None:
    rules = plan("beta", forward=True)
    assert strings(rules.prepend)[:5] == [
        accept_ipip("10.128.0.2/32"),
        accept_ipip("10.128.0.3/32"),
        jump_nat("10.2.1.0/24"),
        forward("from", "the node's pod subnet", "10.2.1.0/24"),
        forward("to", "the node's pod subnet", "10.2.1.0/24"),
    ]
    assert strings(rules.prepend)[5:] == SEGMENT_RETURNS + PEER_RULES


def test_forward_rules_need_cni() -> None:
    for host in ("alpha", "beta"):
        assert not any(r.chain == "FORWARD" for r in plan(host, cni=False, forward=True).prepend)


# --- encapsulation rules (§5.3) ---------------------------------------------------------------


def test_full_granularity_has_an_empty_ipip_allow_list_but_still_drops() -> None:
    rules = plan("alpha", granularity=Granularity.FULL)
    assert strings(rules.append) == IPIP_APPEND + NAT_APPEND
    assert not any(r.chain == "KILO-IPIP" for r in rules.prepend)
    assert strings(rules.prepend)[0] == jump_nat("10.2.0.0/24")


def test_full_granularity_nat_returns_cover_every_node_segment() -> None:
    rules = topology_rules(topology("beta", Granularity.FULL), cni=True, forward=True)
    prepend = strings(rules.prepend)
    # beta is the leader of its own segment: forward rules for its CIDR and private IP.
    assert prepend[:7] == [
        jump_nat("10.2.1.0/24"),
        forward("from", "the pod subnet", "10.2.1.0/24"),
        forward("to", "the pod subnet", "10.2.1.0/24"),
        forward("from", "private IPs", "10.128.0.3/32"),
        forward("to", "private IPs", "10.128.0.3/32"),
        wireguard("10.4.0.1/32"),
        known("10.2.0.0/24"),
    ]
    assert sum("WireGuared" in s for s in prepend) == 4


def test_node_without_internal_ip_uses_its_locations_private_ips() -> None:
    # delta (location aws, no internal IP) is alone in segment node:delta, but Kilo looks
    # "location:aws" up among the segments and allows IPIP from gamma.
    t = topology("delta")
    assert t.location == "node:delta"
    assert [str(c) for c in ipip_allowed_sources(t, "aws")] == ["172.31.5.5/32"]
    assert strings(encapsulation_rules(t, "aws").prepend) == [accept_ipip("172.31.5.5/32")]
    assert ipip_allowed_sources(t, "nowhere") == []


def test_encapsulation_rules_take_the_protocol_name() -> None:
    rules = encapsulation_rules(topology("alpha"), "gcp", protocol_name="4")
    assert str(rules.append[2]) == (
        'filter -A INPUT -p 4 -m comment --comment "Kilo: jump to IPIP chain" -j KILO-IPIP'
    )


@pytest.mark.parametrize(
    ("overrides", "with_encapsulation"),
    [
        ({}, True),
        ({"encapsulation": Encapsulation.CROSSSUBNET}, True),
        ({"encapsulation": Encapsulation.NEVER}, False),
        ({"local": False}, False),
        ({"compatibility": Compatibility.CILIUM}, True),
        ({"compatibility": Compatibility.FLANNEL}, False),
        ({"has_private_ip": False}, False),
    ],
)
def test_encapsulation_rules_are_applied_only_when_kilo_would(
    overrides: dict[str, object], with_encapsulation: bool
) -> None:
    rules = plan("alpha", **overrides)
    topo = topology_rules(topology("alpha"), cni=True, forward=False)
    if with_encapsulation:
        assert rules == combine(encapsulation_rules(topology("alpha"), "gcp"), topo)
    else:
        assert rules == topo


def test_encapsulator_has_rules() -> None:
    assert encapsulator_has_rules(Compatibility.NONE)
    assert encapsulator_has_rules(Compatibility.CILIUM)
    assert not encapsulator_has_rules(Compatibility.FLANNEL)
    assert not encapsulator_has_rules(Compatibility.NONE, has_private_ip=False)


# --- IPv6 -------------------------------------------------------------------------------------


def v6_topology(hostname: str) -> Topology:
    def node(name: str, internal: str, endpoint: str, pod: str, location: str) -> Node:
        return Node(
            name=name,
            location=location,
            key=Key(bytes([len(name)]) * 32),
            endpoint=Endpoint.parse(endpoint),
            internal_ip=ipmod.parse_interface(internal),
            subnet=ip_network(pod),
        )

    nodes = [
        node("alpha", "fd00::2/64", "[2001:db8::1]:51820", "fd10::/64", "gcp"),
        node("beta", "fd00::3/64", "[fd00::3]:51820", "fd10:0:0:1::/64", "gcp"),
        node("gamma", "172.31.5.5/20", "3.3.3.3:51820", "10.2.2.0/24", "aws"),
    ]
    peer = Peer(
        name="laptop",
        public_key=Key(bytes([9]) * 32),
        allowed_ips=(ipmod.parse_interface("fd20::1/128"), ipmod.parse_interface("10.5.0.1/32")),  # type: ignore[arg-type]
    )
    return build_topology(
        nodes, [peer], granularity=Granularity.LOCATION, hostname=hostname, subnet=KILO_SUBNET
    )


def test_ipv6_rules_use_the_ipv6_protocol() -> None:
    t = v6_topology("alpha")
    rules = plan_rules(
        t,
        cni=True,
        forward=True,
        local=True,
        encapsulation=Encapsulation.ALWAYS,
        compatibility=Compatibility.NONE,
        local_location="gcp",
    )
    by_text = {str(r): r.protocol for r in rules.prepend}
    assert by_text[accept_ipip("fd00::2/128")] == V6
    assert by_text[accept_ipip("fd00::3/128")] == V6
    assert by_text[jump_nat("fd10::/64")] == V6
    assert by_text[forward("from", "the pod subnet", "fd10:0:0:1::/64")] == V6
    assert by_text[forward("to", "private IPs", "fd00::3/128")] == V6
    assert by_text[known("fd10::/64")] == V6
    assert by_text[known("fd00::2/128")] == V6
    assert by_text[wireguard("10.4.0.2/32")] == V4
    assert by_text[known("10.2.2.0/24")] == V4
    assert by_text[PEER_RULES[0].replace("10.5.0.1/32", "fd20::1/128")] == V6
    assert by_text[PEER_RULES[1]] == V4
    assert by_text[PEER_RULES[0]] == V4


def test_ipv6_non_leader_forward_rules() -> None:
    rules = topology_rules(v6_topology("beta"), cni=True, forward=True)
    assert [(r.protocol, str(r)) for r in rules.prepend[:3]] == [
        (V6, jump_nat("fd10:0:0:1::/64")),
        (V6, forward("from", "the node's pod subnet", "fd10:0:0:1::/64")),
        (V6, forward("to", "the node's pod subnet", "fd10:0:0:1::/64")),
    ]


def test_ipv6_kilo_subnet() -> None:
    nodes, peers = reference_cluster()
    t = build_topology(
        nodes,
        peers,
        granularity=Granularity.LOCATION,
        hostname="alpha",
        subnet=ip_network("fd04::/64"),
    )
    wg = [r for r in topology_rules(t, cni=True, forward=False).prepend if "WireGuared" in str(r)]
    assert [(r.protocol, r.spec[1]) for r in wg] == [
        (V6, "fd04::1/128"),
        (V6, "fd04::2/128"),
        (V6, "fd04::3/128"),
    ]


# --- representations --------------------------------------------------------------------------


def test_to_dict_is_json_friendly() -> None:
    rules = plan("alpha")
    data = json.loads(json.dumps(rules.to_dict()))
    assert data["append"][0] == {
        "kind": "chain",
        "protocol": "IPv4",
        "table": "filter",
        "name": "KILO-IPIP",
        "text": "filter -N KILO-IPIP",
    }
    assert data["prepend"][2] == {
        "kind": "rule",
        "protocol": "IPv4",
        "table": "nat",
        "chain": "POSTROUTING",
        "spec": [
            "-s",
            "10.2.0.0/24",
            "-m",
            "comment",
            "--comment",
            "Kilo: jump to KILO-NAT chain",
            "-j",
            "KILO-NAT",
        ],
        "text": jump_nat("10.2.0.0/24"),
    }
    assert len(data["append"]) == len(rules.append)
    assert len(data["prepend"]) == len(rules.prepend)


def test_text_form() -> None:
    rules = plan("alpha")
    lines = rules.to_text().splitlines()
    assert lines[0] == "append IPv4 filter -N KILO-IPIP"
    assert lines[1] == "append IPv6 filter -N KILO-IPIP"
    assert lines[len(rules.append)] == "prepend IPv4 " + accept_ipip("10.128.0.2/32")
    assert len(lines) == len(rules.append) + len(rules.prepend)
    assert EMPTY.to_text() == ""


@settings(max_examples=300, derandomize=True)
@given(
    st.ip_addresses()
    .flatmap(lambda a: st.tuples(st.just(a), st.integers(0, a.max_prefixlen)))
    .map(lambda t: f"{t[0]}/{t[1]}")
    | st.integers(0, 2**32 - 1).map(lambda n: f"::ffff:{n >> 16:x}:{n & 0xFFFF:x}/120")
)
def test_the_protocol_of_a_cidr_text_is_that_of_the_parsed_cidr(text: str) -> None:
    cidr = ipmod.parse_interface(text)
    assert cidr is not None
    printed = ipmod.text(cidr)  # what the plan hands over: allowed IPs as ip.text prints them
    assert iptables_mod._protocol_of_text(printed) == iptables_mod.protocol_of(cidr)
    assert iptables_mod._protocol_of_text(text) == iptables_mod.protocol_of(cidr)


def test_segment_rules_are_reused_only_for_the_same_segment_in_the_same_role() -> None:
    """topology_rules reuses a segment's rules while the segment is the same object and
    is (or is not) the local one as before: from gamma's perspective and then alpha's
    over the same segments, each result is the one an empty memo gives."""
    nodes, peers = reference_cluster()

    def rules(hostname: str) -> RuleSet:
        t = build_topology(
            nodes,
            peers,
            granularity=Granularity.LOCATION,
            hostname=hostname,
            subnet=KILO_SUBNET,
            service_cidrs=[SERVICE_CIDR],
        )
        return topology_rules(t, cni=True, forward=False)

    saved = iptables_mod._SEGMENT_RULES
    try:
        for hostname in ("gamma", "alpha", "gamma", "alpha"):
            reused = rules(hostname)
            iptables_mod._SEGMENT_RULES = iptables_mod._SegmentRulesMemo()
            assert reused == rules(hostname)
        # Only gamma's own segment has its allowed-location-IP jump.
        assert any("172.31.100.0/24" in str(r) for r in rules("gamma").prepend)
        assert not any("172.31.100.0/24" in str(r) for r in rules("alpha").prepend)
    finally:
        iptables_mod._SEGMENT_RULES = saved
