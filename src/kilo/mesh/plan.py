"""Everything the agent on one node would program, as one value (``kgctl plan``).

Pure. Combines the topology, WireGuard config, routes and rules, iptables rules and CNI
range that Kilo's apply step computes (reference §6.7) so that operators can read why a
packet goes where it goes. The private key never appears: a plan is built from a topology
whose key is the zero key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kilo.mesh import iptables, routes, wireguard
from kilo.mesh.ip import IPInterface, IPNetwork, host_interface
from kilo.mesh.model import DEFAULT_CNI_PATH, Compatibility, Encapsulation, Node
from kilo.mesh.routes import Device, EncapsulationPolicy, Route
from kilo.mesh.routes import Rule as IPRule
from kilo.mesh.topology import Topology

TUNNEL_NAMES = {
    Compatibility.NONE: "tunl0",
    Compatibility.FLANNEL: "flannel.1",
    Compatibility.CILIUM: "cilium_tunl",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanSettings:
    """The agent's data-plane flags that shape a plan."""

    interface: str = "kilo0"
    private_interface: str = "<private>"
    encapsulation: Encapsulation = Encapsulation.ALWAYS
    compatibility: Compatibility = Compatibility.NONE
    local: bool = True
    cni: bool = True
    iptables_forward_rules: bool = False
    cni_path: str = DEFAULT_CNI_PATH


@dataclass(frozen=True, slots=True, kw_only=True)
class NodePlan:
    node: str
    segment: str
    leader_name: str
    leader: bool
    settings: PlanSettings
    interface_up: bool
    address: IPInterface | None  # the WireGuard interface address (leaders only)
    wireguard: wireguard.WireGuardConfig | None  # leaders only; non-leaders leave it untouched
    routes: tuple[Route, ...]
    rules: tuple[IPRule, ...]
    iptables: iptables.RuleSet
    tunnel_address: IPInterface | None  # tunl0's address when IPIP rules apply
    cni_subnet: IPNetwork | None

    @property
    def device_names(self) -> dict[Device, str]:
        return {
            Device.KILO: self.settings.interface,
            Device.PRIVATE: self.settings.private_interface,
            Device.TUNNEL: TUNNEL_NAMES[self.settings.compatibility],
        }


def plan_node(t: Topology, node: Node, settings: PlanSettings) -> NodePlan:
    """The plan of the agent on ``node``, whose perspective ``t`` was built from."""
    segment = t.local_segment
    assert segment is not None, "the local node always has a segment"
    policy = EncapsulationPolicy(
        strategy=settings.encapsulation, compatibility=settings.compatibility
    )
    planned_routes, planned_rules = routes.plan_routes(
        t, kilo_interface=settings.interface, local=settings.local, policy=policy
    )
    rule_set = iptables.plan_rules(
        t,
        cni=settings.cni,
        forward=settings.iptables_forward_rules,
        local=settings.local,
        encapsulation=settings.encapsulation,
        compatibility=settings.compatibility,
        local_location=node.location,
        has_private_ip=t.private_ip is not None,
    )
    tunnel_address = None
    if (
        settings.local
        and settings.encapsulation != Encapsulation.NEVER
        and iptables.encapsulator_has_rules(
            settings.compatibility, has_private_ip=t.private_ip is not None
        )
        and t.subnet is not None
        and t.subnet.num_addresses > 1
    ):
        # Kilo gives the tunnel the first host address of the pod CIDR (§6.7 step 11).
        tunnel_address = host_interface(t.subnet.network_address + 1)
    return NodePlan(
        node=node.name,
        segment=segment.location,
        leader_name=segment.leader_name,
        leader=t.leader,
        settings=settings,
        interface_up=t.leader,
        address=t.wireguard_cidr if t.leader else None,
        wireguard=wireguard.node_config(t) if t.leader else None,
        routes=planned_routes,
        rules=planned_rules,
        iptables=rule_set,
        tunnel_address=tunnel_address,
        cni_subnet=t.subnet if settings.cni else None,
    )


def to_text(plan: NodePlan) -> str:
    names = plan.device_names
    out: list[str] = []
    role = "the leader" if plan.leader else f"not the leader (leader: {plan.leader_name})"
    out.append(f"# node {plan.node}: segment {plan.segment}, {role}")
    out.append("")
    out.append(f"## WireGuard interface {plan.settings.interface}")
    if plan.leader:
        out.append(f"state: up, address {plan.address}")
        out.append("")
        assert plan.wireguard is not None
        out.append(wireguard.render(plan.wireguard).rstrip("\n"))
    else:
        out.append(
            "state: down (only the leader of a segment runs WireGuard; traffic leaves "
            f"through {plan.leader_name})"
        )
    out.append("")
    out.append("## Routes (proto static)")
    out.extend(routes.format_route(r, names) for r in plan.routes)
    if not plan.routes:
        out.append("(none)")
    out.append("")
    out.append("## IP rules")
    out.extend(routes.format_rule(r) for r in plan.rules)
    if not plan.rules:
        out.append("(none)")
    out.append("")
    out.append("## iptables (append: in order at the end of the chain; prepend: at the top)")
    out.extend(plan.iptables.lines())
    if plan.tunnel_address is not None:
        out.append("")
        out.append(f"## Tunnel {names[Device.TUNNEL]}")
        out.append(f"address {plan.tunnel_address}")
    out.append("")
    out.append("## CNI")
    if plan.cni_subnet is None:
        out.append("not managed (--cni=false)" if not plan.settings.cni else "no pod CIDR")
    else:
        out.append(f"{plan.settings.cni_path}: IPAM range {plan.cni_subnet}")
    return "\n".join(out) + "\n"


def to_dict(plan: NodePlan) -> dict[str, Any]:
    names = plan.device_names
    wg: dict[str, Any] | None = None
    if plan.wireguard is not None:
        wg = {
            "listenPort": plan.wireguard.listen_port,
            "peers": [
                {
                    "name": p.name,
                    "publicKey": str(p.public_key),
                    "allowedIPs": [str(a) for a in p.allowed_ips],
                    "endpoint": "" if p.endpoint is None else str(p.endpoint),
                    "persistentKeepalive": p.persistent_keepalive,
                    "presharedKey": p.preshared_key is not None and not p.preshared_key.is_zero,
                }
                for p in plan.wireguard.peers
            ],
            "config": wireguard.render(plan.wireguard),
        }
    return {
        "node": plan.node,
        "segment": plan.segment,
        "leader": plan.leader,
        "leaderName": plan.leader_name,
        "interface": {
            "name": plan.settings.interface,
            "up": plan.interface_up,
            "address": None if plan.address is None else str(plan.address),
        },
        "wireguard": wg,
        "routes": [r.to_dict(names) for r in plan.routes],
        "rules": [r.to_dict() for r in plan.rules],
        "iptables": plan.iptables.to_dict(),
        "tunnel": None
        if plan.tunnel_address is None
        else {"name": names[Device.TUNNEL], "address": str(plan.tunnel_address)},
        "cni": None
        if plan.cni_subnet is None
        else {"path": plan.settings.cni_path, "subnet": str(plan.cni_subnet)},
    }


def to_json(plan: NodePlan) -> str:
    return json.dumps(to_dict(plan), indent=2)
