"""The iptables rules of the reference cluster (kilo-mesh.md §5.4), shared by the tests.

Rule texts as ``str(rule)`` prints them (and ``kgctl plan`` shows them), built from the
reference cluster of ``tests/examples.py``; and ``alpha_rule_set()``, the rule set of the
leader alpha that the end-to-end tests apply with real iptables.
"""

from __future__ import annotations

import ipaddress

from kilo.mesh import iptables
from kilo.mesh.model import Compatibility, Encapsulation, Granularity
from kilo.mesh.topology import build_topology
from tests.examples import KILO_SUBNET, reference_cluster


def known(cidr: str) -> str:
    return (
        f'nat -A KILO-NAT -d {cidr} -m comment --comment "Kilo: do not NAT packets destined '
        'for known IPs" -j RETURN'
    )


def wireguard(cidr: str) -> str:
    return (
        f'nat -A KILO-NAT -d {cidr} -m comment --comment "Kilo: do not NAT packets destined '
        'for WireGuared IPs" -j RETURN'
    )


IPIP_APPEND = [
    "filter -N KILO-IPIP",
    "filter -N KILO-IPIP",
    'filter -A INPUT -p ipencap -m comment --comment "Kilo: jump to IPIP chain" -j KILO-IPIP',
    'filter -A INPUT -p ipencap -m comment --comment "Kilo: jump to IPIP chain" -j KILO-IPIP',
    'filter -A INPUT -p ipencap -m comment --comment "Kilo: reject other IPIP traffic" -j DROP',
    'filter -A INPUT -p ipencap -m comment --comment "Kilo: reject other IPIP traffic" -j DROP',
]
NAT_APPEND = [
    "nat -N KILO-NAT",
    "nat -N KILO-NAT",
    'nat -A KILO-NAT -d 10.96.0.0/12 -m comment --comment "Kilo: do not NAT packets destined '
    'for service CIDRs" -j RETURN',
    'nat -A KILO-NAT -m comment --comment "Kilo: NAT remaining packets" -j MASQUERADE',
    'nat -A KILO-NAT -m comment --comment "Kilo: NAT remaining packets" -j MASQUERADE',
]
SEGMENT_RETURNS = [
    wireguard("10.4.0.1/32"),
    known("10.2.2.0/24"),
    known("172.31.5.5/32"),
    known("10.4.0.1/32"),
    wireguard("10.4.0.2/32"),
    known("10.2.0.0/24"),
    known("10.128.0.2/32"),
    known("10.2.1.0/24"),
    known("10.128.0.3/32"),
    known("10.4.0.2/32"),
    wireguard("10.4.0.3/32"),
    known("10.2.3.0/24"),
    known("10.4.0.3/32"),
]
PEER_RULES = [
    'nat -A POSTROUTING -s 10.5.0.1/32 -m comment --comment "Kilo: jump to NAT chain" -j KILO-NAT',
    'nat -A KILO-NAT -d 10.5.0.1/32 -m comment --comment "Kilo: do not NAT packets destined '
    'for peers" -j RETURN',
]


def accept_ipip(cidr: str) -> str:
    return (
        f'filter -A KILO-IPIP -s {cidr} -m comment --comment "Kilo: allow IPIP traffic" -j ACCEPT'
    )


def jump_nat(pod_cidr: str) -> str:
    return (
        f'nat -A POSTROUTING -s {pod_cidr} -m comment --comment "Kilo: jump to KILO-NAT chain" '
        "-j KILO-NAT"
    )


def alpha_rule_set(
    *, with_peers: bool = True, encapsulation: Encapsulation = Encapsulation.ALWAYS
) -> iptables.RuleSet:
    """alpha's rules with the CNI, forward rules and the service CIDR 10.96.0.0/12."""
    nodes, peers = reference_cluster()
    t = build_topology(
        nodes,
        peers if with_peers else [],
        granularity=Granularity.LOCATION,
        hostname="alpha",
        subnet=KILO_SUBNET,
        service_cidrs=[ipaddress.ip_network("10.96.0.0/12")],
    )
    return iptables.plan_rules(
        t,
        cni=True,
        forward=True,
        local=True,
        encapsulation=encapsulation,
        compatibility=Compatibility.NONE,
        local_location="gcp",
    )
