"""Routes and IP rules (reference §4), checked against the §2.3 worked example."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import random
from collections.abc import Mapping
from typing import Any

import pytest

from kilo.mesh import ip as ipmod
from kilo.mesh.endpoint import Endpoint, UDPAddr
from kilo.mesh.keys import Key
from kilo.mesh.model import Compatibility, Encapsulation, Granularity, Node, Peer
from kilo.mesh.routes import (
    Device,
    EncapsulationPolicy,
    Route,
    Rule,
    format_route,
    format_rule,
    peer_routes,
    plan_routes,
)
from kilo.mesh.topology import Topology, build_topology
from tests import golden
from tests.examples import KILO_SUBNET, PRIVATE_KEYS, reference_cluster

IPIP_NAMES = {Device.KILO: "kilo0", Device.PRIVATE: "ens4", Device.TUNNEL: "tunl0"}
FLANNEL_NAMES = {**IPIP_NAMES, Device.TUNNEL: "flannel.1"}
CILIUM_NAMES = {**IPIP_NAMES, Device.TUNNEL: "cilium_tunl"}

ALWAYS = EncapsulationPolicy(strategy=Encapsulation.ALWAYS)
CROSSSUBNET = EncapsulationPolicy(strategy=Encapsulation.CROSSSUBNET)
NEVER = EncapsulationPolicy(strategy=Encapsulation.NEVER)
FLANNEL = EncapsulationPolicy(strategy=Encapsulation.ALWAYS, compatibility=Compatibility.FLANNEL)
CILIUM = EncapsulationPolicy(strategy=Encapsulation.ALWAYS, compatibility=Compatibility.CILIUM)


def ip(text: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(text)


def net(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text)


def iface(text: str) -> ipaddress.IPv4Interface:
    return ipaddress.IPv4Interface(text)


def cluster(**changes: Mapping[str, Any]) -> tuple[list[Node], list[Peer]]:
    """The reference cluster with some node fields replaced: ``cluster(beta={...})``."""
    nodes, peers = reference_cluster()
    nodes = [dataclasses.replace(n, **changes.get(n.name, {})) for n in nodes]
    return nodes, peers


def topology(
    hostname: str,
    *,
    granularity: Granularity = Granularity.LOCATION,
    nodes: list[Node] | None = None,
    peers: list[Peer] | None = None,
) -> Topology:
    if nodes is None or peers is None:
        default_nodes, default_peers = reference_cluster()
        nodes = default_nodes if nodes is None else nodes
        peers = default_peers if peers is None else peers
    return build_topology(
        nodes,
        peers,
        granularity=granularity,
        hostname=hostname,
        subnet=KILO_SUBNET,
        key=PRIVATE_KEYS[hostname],
    )


def plan_text(
    t: Topology,
    policy: EncapsulationPolicy,
    *,
    local: bool = True,
    names: dict[Device, str] = IPIP_NAMES,
) -> tuple[list[str], list[str]]:
    routes, rules = plan_routes(t, local=local, policy=policy)
    return [format_route(r, names) for r in routes], [format_rule(r) for r in rules]


# §4.5, --local=true --encapsulate=always, IPIP.

ALPHA_ROUTES = golden.lines("alpha.routes")
ALPHA_RULES = golden.lines("alpha.rules")
BETA_ROUTES = golden.lines("beta.routes")
BETA_RULES = golden.lines("beta.rules")


def test_alpha_leader_worked_example() -> None:
    t = topology("alpha")
    assert t.leader
    assert plan_text(t, ALWAYS) == (ALPHA_ROUTES, ALPHA_RULES)


def test_alpha_leader_worked_example_values() -> None:
    routes, rules = plan_routes(topology("alpha"), policy=ALWAYS)
    src = ip("10.128.0.2")
    assert routes == (
        Route(dst=net("10.2.2.0/24"), gw=ip("10.4.0.1"), dev=Device.KILO, onlink=True, src=src),
        Route(dst=net("172.31.5.5/32"), gw=ip("10.4.0.1"), dev=Device.KILO, onlink=True, src=src),
        # Allowed-location IPs keep the type (and host bits) they were annotated with.
        Route(
            dst=iface("172.31.100.0/24"), gw=ip("10.4.0.1"), dev=Device.KILO, onlink=True, src=src
        ),
        Route(dst=net("10.2.1.0/24"), gw=ip("10.128.0.3"), dev=Device.TUNNEL, onlink=True, src=src),
        Route(
            dst=net("10.128.0.3/32"),
            gw=ip("10.128.0.3"),
            dev=Device.TUNNEL,
            onlink=True,
            src=src,
            table=1107,
        ),
        Route(dst=net("10.2.3.0/24"), gw=ip("10.4.0.3"), dev=Device.KILO, onlink=True, src=src),
        Route(dst=iface("10.5.0.1/32"), dev=Device.KILO, src=src),
    )
    assert rules == (
        Rule(src=net("10.2.0.0/24"), dst=net("10.128.0.3/32"), table=1107),
        Rule(dst=net("10.128.0.3/32"), iif="kilo0", table=1107),
    )
    assert all(r.protocol == 4 for r in routes)


def test_beta_non_leader_worked_example() -> None:
    t = topology("beta")
    assert not t.leader
    assert plan_text(t, ALWAYS) == (BETA_ROUTES, BETA_RULES)


def test_plan_does_not_depend_on_input_order() -> None:
    nodes, peers = reference_cluster()
    random.Random(1107).shuffle(nodes)
    t = topology("beta", nodes=nodes, peers=peers)
    assert plan_text(t, ALWAYS) == (BETA_ROUTES, BETA_RULES)


# Other strategies: the gateway lies inside beta's own subnet 10.128.0.0/20.

BETA_UNENCAPSULATED = golden.lines("beta-unencapsulated.routes")


@pytest.mark.parametrize("policy", [CROSSSUBNET, NEVER], ids=["crosssubnet", "never"])
def test_beta_without_encapsulation(policy: EncapsulationPolicy) -> None:
    assert plan_text(topology("beta"), policy) == (BETA_UNENCAPSULATED, [])


@pytest.mark.parametrize("policy", [CROSSSUBNET, NEVER], ids=["crosssubnet", "never"])
def test_alpha_without_encapsulation(policy: EncapsulationPolicy) -> None:
    routes, rules = plan_text(topology("alpha"), policy)
    assert routes == [
        ALPHA_ROUTES[0],
        ALPHA_ROUTES[1],
        ALPHA_ROUTES[2],
        "10.2.1.0/24 via 10.128.0.3 dev ens4 proto static onlink",
        ALPHA_ROUTES[5],
        ALPHA_ROUTES[6],
    ]
    assert rules == []


def test_crosssubnet_encapsulates_across_subnets() -> None:
    # beta moves to another subnet of the same location: now traffic between alpha and
    # beta crosses subnets and must be encapsulated, in both directions.
    nodes, peers = cluster(
        beta={"internal_ip": iface("10.129.0.3/20"), "endpoint": Endpoint.parse("10.129.0.3:51820")}
    )
    alpha = topology("alpha", nodes=nodes, peers=peers)
    assert plan_text(alpha, CROSSSUBNET) == (
        [
            ALPHA_ROUTES[0],
            ALPHA_ROUTES[1],
            ALPHA_ROUTES[2],
            "10.2.1.0/24 via 10.129.0.3 dev tunl0 proto static onlink src 10.128.0.2",
            "10.129.0.3/32 via 10.129.0.3 dev tunl0 proto static onlink src 10.128.0.2 table 1107",
            ALPHA_ROUTES[5],
            ALPHA_ROUTES[6],
        ],
        [
            "from 10.2.0.0/24 to 10.129.0.3/32 lookup 1107",
            "to 10.129.0.3/32 iif kilo0 lookup 1107",
        ],
    )
    beta = topology("beta", nodes=nodes, peers=peers)
    routes, rules = plan_text(beta, CROSSSUBNET)
    assert routes == [r.replace("10.128.0.3", "10.129.0.3") for r in BETA_ROUTES]
    assert rules == ["from 10.2.1.0/24 to 10.128.0.2/32 lookup 1107"]


def test_local_false_drops_the_same_location_block() -> None:
    assert plan_text(topology("alpha"), ALWAYS, local=False) == (
        [
            "10.2.2.0/24 via 10.4.0.1 dev kilo0 proto static onlink src 10.128.0.2",
            "172.31.5.5/32 via 10.4.0.1 dev kilo0 proto static onlink src 10.128.0.2",
            "172.31.100.0/24 via 10.4.0.1 dev kilo0 proto static onlink src 10.128.0.2",
            "10.2.3.0/24 via 10.4.0.3 dev kilo0 proto static onlink src 10.128.0.2",
            "10.5.0.1/32 dev kilo0 proto static src 10.128.0.2",
        ],
        [],
    )
    assert plan_text(topology("beta"), ALWAYS, local=False) == (
        [
            "10.4.0.1/32 via 10.128.0.2 dev tunl0 proto static onlink src 10.128.0.3",
            "10.2.2.0/24 via 10.128.0.2 dev tunl0 proto static onlink src 10.128.0.3",
            "172.31.5.5/32 via 10.128.0.2 dev tunl0 proto static onlink src 10.128.0.3",
            "172.31.100.0/24 via 10.128.0.2 dev tunl0 proto static onlink src 10.128.0.3",
            "10.4.0.2/32 via 10.128.0.2 dev tunl0 proto static onlink src 10.128.0.3",
            "10.4.0.3/32 via 10.128.0.2 dev tunl0 proto static onlink src 10.128.0.3",
            "10.2.3.0/24 via 10.128.0.2 dev tunl0 proto static onlink src 10.128.0.3",
            "10.5.0.1/32 via 10.128.0.2 dev tunl0 proto static onlink src 10.128.0.3",
        ],
        [],
    )


# Flannel and Cilium compatibility.


def test_flannel_non_leader() -> None:
    routes, rules = plan_text(topology("beta"), FLANNEL, local=False, names=FLANNEL_NAMES)
    assert routes == [
        "10.4.0.1/32 via 10.2.0.0 dev flannel.1 proto static onlink src 10.128.0.3",
        "10.2.2.0/24 via 10.2.0.0 dev flannel.1 proto static onlink src 10.128.0.3",
        "172.31.5.5/32 via 10.2.0.0 dev flannel.1 proto static onlink src 10.128.0.3",
        "172.31.100.0/24 via 10.2.0.0 dev flannel.1 proto static onlink src 10.128.0.3",
        "10.4.0.2/32 via 10.2.0.0 dev flannel.1 proto static onlink src 10.128.0.3",
        "10.4.0.3/32 via 10.2.0.0 dev flannel.1 proto static onlink src 10.128.0.3",
        "10.2.3.0/24 via 10.2.0.0 dev flannel.1 proto static onlink src 10.128.0.3",
        "10.5.0.1/32 via 10.2.0.0 dev flannel.1 proto static onlink src 10.128.0.3",
    ]
    assert rules == []


def test_flannel_non_leader_local() -> None:
    routes, rules = plan_text(topology("beta"), FLANNEL, local=True, names=FLANNEL_NAMES)
    assert routes[5:7] == [
        "10.2.0.0/24 via 10.2.0.0 dev flannel.1 proto static onlink src 10.128.0.3",
        "10.128.0.2/32 via 10.2.0.0 dev flannel.1 proto static onlink src 10.128.0.3 table 1107",
    ]
    assert rules == BETA_RULES


def test_flannel_leader_return_path() -> None:
    routes, rules = plan_text(topology("alpha"), FLANNEL, local=False, names=FLANNEL_NAMES)
    assert routes == [
        ALPHA_ROUTES[0],
        ALPHA_ROUTES[1],
        ALPHA_ROUTES[2],
        "10.128.0.3/32 via 10.2.1.0 dev flannel.1 proto static onlink table 1107",
        ALPHA_ROUTES[5],
        ALPHA_ROUTES[6],
    ]
    assert rules == ["to 10.128.0.3/32 iif kilo0 lookup 1107"]


def test_flannel_leader_return_path_needs_encapsulation() -> None:
    policy = dataclasses.replace(FLANNEL, strategy=Encapsulation.NEVER)
    routes, rules = plan_text(topology("alpha"), policy, local=False, names=FLANNEL_NAMES)
    assert routes == [r for r in ALPHA_ROUTES if "10.128.0.3" not in r]
    assert rules == []


def test_flannel_without_its_device_plans_no_tunnel_routes() -> None:
    policy = dataclasses.replace(FLANNEL, tunnel_available=False)
    assert plan_routes(topology("beta"), policy=policy) == ((), ())
    routes, rules = plan_text(topology("alpha"), policy, local=False, names=FLANNEL_NAMES)
    assert routes == [r for r in ALPHA_ROUTES if "10.128.0.3" not in r]
    assert rules == []


def test_ipip_without_tunnel_keeps_other_routes() -> None:
    policy = dataclasses.replace(ALWAYS, tunnel_available=False)
    routes, rules = plan_text(topology("alpha"), policy)
    assert routes == [r for r in ALPHA_ROUTES if "tunl0" not in r]
    assert rules == []


CILIUM_IPS: dict[str, Mapping[str, Any]] = {
    "alpha": {"cni_compatibility_ip": iface("10.2.0.77/32")},
    "beta": {"cni_compatibility_ip": iface("10.2.1.88/32")},
}


def test_cilium_non_leader_with_compatibility_ip() -> None:
    nodes, peers = cluster(**CILIUM_IPS)
    routes, rules = plan_text(
        topology("beta", nodes=nodes, peers=peers), CILIUM, names=CILIUM_NAMES
    )
    assert routes == [
        r.replace("via 10.128.0.2 dev tunl0", "via 10.2.0.77 dev cilium_tunl") for r in BETA_ROUTES
    ]
    assert rules == BETA_RULES


def test_cilium_non_leader_without_compatibility_ip() -> None:
    routes, rules = plan_text(topology("beta"), CILIUM, names=CILIUM_NAMES)
    assert routes == [
        r.replace("via 10.128.0.2 dev tunl0", "via 10.2.0.0 dev cilium_tunl") for r in BETA_ROUTES
    ]
    assert rules == BETA_RULES


def test_cilium_leader_return_path() -> None:
    nodes, peers = cluster(**CILIUM_IPS)
    with_ip = topology("alpha", nodes=nodes, peers=peers)
    routes, rules = plan_text(with_ip, CILIUM, local=False, names=CILIUM_NAMES)
    assert routes == [
        ALPHA_ROUTES[0],
        ALPHA_ROUTES[1],
        ALPHA_ROUTES[2],
        "10.128.0.3/32 via 10.2.1.88 dev cilium_tunl proto static onlink table 1107",
        ALPHA_ROUTES[5],
        ALPHA_ROUTES[6],
    ]
    assert rules == ["to 10.128.0.3/32 iif kilo0 lookup 1107"]
    routes, _ = plan_text(topology("alpha"), CILIUM, local=False, names=CILIUM_NAMES)
    assert routes[3] == "10.128.0.3/32 via 10.2.1.0 dev cilium_tunl proto static onlink table 1107"


def test_cilium_leader_local() -> None:
    nodes, peers = cluster(**CILIUM_IPS)
    t = topology("alpha", nodes=nodes, peers=peers)
    routes, rules = plan_text(t, CILIUM, names=CILIUM_NAMES)
    assert routes[3:5] == [
        "10.2.1.0/24 via 10.2.1.88 dev cilium_tunl proto static onlink src 10.128.0.2",
        "10.128.0.3/32 via 10.2.1.88 dev cilium_tunl proto static onlink src 10.128.0.2 table 1107",
    ]
    assert rules == ALPHA_RULES


# Other shapes of mesh.


def test_full_granularity_every_node_leads() -> None:
    for name in ("alpha", "beta", "gamma", "delta"):
        assert topology(name, granularity=Granularity.FULL).leader
    t = topology("alpha", granularity=Granularity.FULL)
    assert plan_text(t, ALWAYS) == (
        [
            # beta's private IP is its endpoint: beta is reached on that IP only.
            "10.2.1.0/24 via 10.4.0.2 dev kilo0 proto static onlink src 10.128.0.2",
            "10.2.3.0/24 via 10.4.0.3 dev kilo0 proto static onlink src 10.128.0.2",
            "10.2.2.0/24 via 10.4.0.4 dev kilo0 proto static onlink src 10.128.0.2",
            "172.31.5.5/32 via 10.4.0.4 dev kilo0 proto static onlink src 10.128.0.2",
            "172.31.100.0/24 via 10.4.0.4 dev kilo0 proto static onlink src 10.128.0.2",
            "10.5.0.1/32 dev kilo0 proto static src 10.128.0.2",
        ],
        [],
    )


def test_leader_without_private_ip() -> None:
    t = topology("delta")
    assert t.leader
    assert t.private_ip is None
    assert plan_text(t, ALWAYS) == (
        [
            "10.2.2.0/24 via 10.4.0.1 dev kilo0 proto static onlink",
            "172.31.5.5/32 via 10.4.0.1 dev kilo0 proto static onlink",
            "172.31.100.0/24 via 10.4.0.1 dev kilo0 proto static onlink",
            "10.2.0.0/24 via 10.4.0.2 dev kilo0 proto static onlink",
            "10.128.0.2/32 via 10.4.0.2 dev kilo0 proto static onlink",
            "10.2.1.0/24 via 10.4.0.2 dev kilo0 proto static onlink",
            "10.128.0.3/32 via 10.4.0.2 dev kilo0 proto static onlink",
            "10.5.0.1/32 dev kilo0 proto static",
        ],
        [],
    )
    routes, _ = plan_routes(t, local=False, policy=FLANNEL)
    assert routes[-1] == Route(dst=iface("10.5.0.1/32"), dev=Device.KILO, src=None)


def test_nat_discovered_endpoint_equal_to_private_ip() -> None:
    nodes, peers = reference_cluster()
    gamma = next(n for n in nodes if n.name == "gamma")
    discovered = {str(gamma.key): UDPAddr(ip("172.31.5.5"), 51820)}
    # Without a keepalive, gamma does not declare itself behind NAT: the discovery is ignored.
    nodes = [
        dataclasses.replace(n, discovered_endpoints=discovered) if n.name == "alpha" else n
        for n in nodes
    ]
    routes, _ = plan_text(topology("alpha", nodes=nodes, peers=peers), ALWAYS)
    assert routes == ALPHA_ROUTES
    nodes = [
        dataclasses.replace(n, persistent_keepalive=25) if n.name == "gamma" else n for n in nodes
    ]
    routes, _ = plan_text(topology("alpha", nodes=nodes, peers=peers), ALWAYS)
    assert routes == [r for r in ALPHA_ROUTES if not r.startswith("172.31.5.5/32")]


def test_peer_allowed_ips_keep_host_bits() -> None:
    nodes, _ = reference_cluster()
    peers = [
        Peer(name="laptop", allowed_ips=(iface("10.5.0.1/24"),), public_key=Key(bytes(range(32))))
    ]
    routes, _ = plan_routes(topology("alpha", nodes=nodes, peers=peers), policy=ALWAYS)
    assert routes[-1].dst == iface("10.5.0.1/24")
    assert (
        format_route(routes[-1], IPIP_NAMES) == "10.5.0.1/24 dev kilo0 proto static src 10.128.0.2"
    )


def test_ipv6_one_address_cidr() -> None:
    route = Route(dst=ipmod.host_network(ipaddress.IPv6Address("fd00::1")), dev=Device.KILO)
    assert format_route(route, IPIP_NAMES) == "fd00::1/128 dev kilo0 proto static"


# The encapsulation policy (§4.1, §4.2).


def test_gateway_per_encapsulator() -> None:
    private, cni, pod = ip("10.128.0.3"), iface("10.2.1.88/32"), net("10.2.1.0/24")
    assert ALWAYS.gw(private, cni, pod) == private
    assert FLANNEL.gw(private, cni, pod) == ip("10.2.1.0")
    assert CILIUM.gw(private, cni, pod) == ip("10.2.1.88")
    assert CILIUM.gw(private, None, pod) == ip("10.2.1.0")
    for policy in (ALWAYS, FLANNEL, CILIUM):
        assert policy.without_private_ip().gw(private, cni, pod) is None


def test_without_private_ip_keeps_the_strategy() -> None:
    noop = CROSSSUBNET.without_private_ip()
    assert noop.strategy == Encapsulation.CROSSSUBNET
    assert noop.noop
    assert not noop.has_tunnel
    assert not dataclasses.replace(noop, tunnel_available=True).has_tunnel


def test_encapsulates() -> None:
    own = iface("10.128.0.2/20")
    assert ALWAYS.encapsulates(own, ip("10.128.0.3"))
    assert ALWAYS.encapsulates(None, None)
    assert not NEVER.encapsulates(own, ip("172.31.5.5"))
    assert not CROSSSUBNET.encapsulates(own, ip("10.128.0.3"))
    assert CROSSSUBNET.encapsulates(own, ip("10.129.0.3"))
    assert CROSSSUBNET.encapsulates(own, None)  # a missing gateway is never contained
    assert not CROSSSUBNET.encapsulates(None, ip("10.129.0.3"))


# Routes for a Kilo Peer (§4.6).


def test_peer_routes() -> None:
    nodes, peers = reference_cluster()
    phone = Peer(
        name="phone", allowed_ips=(iface("10.5.0.2/32"),), public_key=Key(bytes(range(32)))
    )
    t = topology("alpha", nodes=nodes, peers=[*peers, phone])
    routes = peer_routes(t, name="laptop", extra_allowed_ips=[net("10.43.0.0/16")])
    assert [format_route(r, {Device.KILO: "wg0"}) for r in routes] == [
        "10.2.2.0/24 via 10.4.0.1 dev wg0 proto static onlink",
        "172.31.5.5/32 via 10.4.0.1 dev wg0 proto static onlink",
        "172.31.100.0/24 via 10.4.0.1 dev wg0 proto static onlink",
        "10.4.0.1/32 dev wg0 proto static",
        "10.2.0.0/24 via 10.4.0.2 dev wg0 proto static onlink",
        "10.2.1.0/24 via 10.4.0.2 dev wg0 proto static onlink",
        "10.128.0.2/32 via 10.4.0.2 dev wg0 proto static onlink",
        "10.128.0.3/32 via 10.4.0.2 dev wg0 proto static onlink",
        "10.4.0.2/32 dev wg0 proto static",
        "10.2.3.0/24 via 10.4.0.3 dev wg0 proto static onlink",
        "10.4.0.3/32 dev wg0 proto static",
        "10.5.0.2/32 dev wg0 proto static",
        "10.43.0.0/16 via 10.4.0.1 dev wg0 proto static onlink",
    ]
    assert all(r.dev == Device.KILO and r.src is None and r.table is None for r in routes)
    unnamed = peer_routes(t)
    assert [str(r.dst) for r in unnamed[-2:]] == ["10.5.0.1/32", "10.5.0.2/32"]


# Rendering.


def test_format_route() -> None:
    route = Route(
        dst=net("10.128.0.3/32"),
        gw=ip("10.128.0.3"),
        dev=Device.TUNNEL,
        onlink=True,
        src=ip("10.128.0.2"),
        table=1107,
    )
    assert (
        format_route(route, IPIP_NAMES)
        == "10.128.0.3/32 via 10.128.0.3 dev tunl0 proto static onlink src 10.128.0.2 table 1107"
    )
    assert format_route(route, {}) == (
        "10.128.0.3/32 via 10.128.0.3 dev <tunnel> proto static onlink src 10.128.0.2 table 1107"
    )


def test_format_rule() -> None:
    assert (
        format_rule(Rule(src=net("10.2.0.0/24"), dst=net("10.128.0.3/32"), table=1107))
        == "from 10.2.0.0/24 to 10.128.0.3/32 lookup 1107"
    )
    assert (
        format_rule(Rule(dst=net("10.128.0.3/32"), iif="kilo0", table=1107))
        == "to 10.128.0.3/32 iif kilo0 lookup 1107"
    )
    assert format_rule(Rule(table=1107)) == "from all lookup 1107"


def test_to_dict() -> None:
    routes, rules = plan_routes(topology("alpha"), policy=ALWAYS)
    dicts = [r.to_dict(IPIP_NAMES) for r in routes]
    assert dicts[4] == {
        "dst": "10.128.0.3/32",
        "gw": "10.128.0.3",
        "role": "tunnel",
        "dev": "tunl0",
        "protocol": "static",
        "onlink": True,
        "src": "10.128.0.2",
        "table": 1107,
    }
    assert routes[-1].to_dict() == {
        "dst": "10.5.0.1/32",
        "role": "kilo",
        "protocol": "static",
        "onlink": False,
        "src": "10.128.0.2",
    }
    assert [r.to_dict() for r in rules] == [
        {"src": "10.2.0.0/24", "dst": "10.128.0.3/32", "table": 1107},
        {"dst": "10.128.0.3/32", "iif": "kilo0", "table": 1107},
    ]
    json.dumps([*dicts, *(r.to_dict() for r in rules)])  # plain values only


def test_values_are_frozen() -> None:
    route = Route(dst=net("10.2.0.0/24"), dev=Device.KILO)
    with pytest.raises(dataclasses.FrozenInstanceError):
        route.onlink = True  # type: ignore[misc]
