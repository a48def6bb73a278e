"""Routes and IP rules a node needs to reach the mesh (Kilo's ``Topology.Routes``).

Pure. No I/O, no clock, no logging; the same topology and policy always give the same
routes and rules in the same order. Routes name a device by its *role*
(:class:`Device`), never by an interface index: the netlink adapter maps roles to
indexes, and ``kgctl plan`` maps them to names for people.

The order of the returned routes and rules follows Kilo exactly (reference §4.3 and
§4.4), because rules get kernel priorities in the order they are added.

One deliberate difference from Kilo: when the tunnel device does not exist (Flannel's
``flannel.1`` has not appeared yet, or the node has no private IP so Kilo runs a no-op
encapsulator), Kilo still plans routes on interface index 0, which the kernel rejects,
aborting the rest of the route update. Here those routes, and the table-1107 rules that
only make sense with them, are left out, so every other route is still installed.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import ClassVar, TypeVar

from kilo.mesh import ip as ipmod
from kilo.mesh.ip import IPAddress, IPInterface, IPNetwork
from kilo.mesh.model import LOCAL_ROUTE_TABLE, Compatibility, Encapsulation
from kilo.mesh.topology import Segment, Topology

__all__ = [
    "RTPROT_STATIC",
    "Device",
    "EncapsulationPolicy",
    "Route",
    "Rule",
    "format_route",
    "format_rule",
    "peer_routes",
    "plan_routes",
]

RTPROT_STATIC = 4

CIDR = IPInterface | IPNetwork
T = TypeVar("T")


class Device(enum.StrEnum):
    """The role of the interface a route leaves through."""

    KILO = "kilo"  # the WireGuard interface
    PRIVATE = "private"  # the interface that holds the node's private IP
    TUNNEL = "tunnel"  # tunl0, flannel.1 or cilium_tunl, depending on the compatibility mode


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """One route; ``table=None`` is the main table."""

    # Every route Kilo installs is "proto static"; the adapters need not choose.
    protocol: ClassVar[int] = RTPROT_STATIC

    dst: CIDR  # as Kilo prints it: allowed(-location) IPs keep their host bits
    dev: Device
    gw: IPAddress | None = None
    src: IPAddress | None = None
    onlink: bool = False
    table: int | None = None

    def to_dict(
        self, device_names: Mapping[Device, str] | None = None
    ) -> dict[str, str | int | bool]:
        """A JSON-friendly form; absent values are left out, as ``ip -j route`` does."""
        result: dict[str, str | int | bool] = {"dst": str(self.dst)}
        if self.gw is not None:
            result["gw"] = str(self.gw)
        result["role"] = self.dev.value
        if device_names is not None and self.dev in device_names:
            result["dev"] = device_names[self.dev]
        result["protocol"] = "static"
        result["onlink"] = self.onlink
        if self.src is not None:
            result["src"] = str(self.src)
        if self.table is not None:
            result["table"] = self.table
        return result


# A 5000-node plan holds ten thousand routes or more. The dataclass's __init__ costs 1.5 us
# a route (keyword arguments, then one object.__setattr__ a field of a frozen class);
# filling the slots directly costs a third of that and gives the same value (every field
# is set; tests/unit/test_fast_values.py compares it with the constructor's).
_new = object.__new__
_SET_DST, _SET_DEV, _SET_GW, _SET_SRC, _SET_ONLINK, _SET_TABLE = (
    Route.__dict__[name].__set__ for name in ("dst", "dev", "gw", "src", "onlink", "table")
)


def _make_route(
    dst: CIDR, dev: Device, gw: IPAddress | None, src: IPAddress | None, onlink: bool
) -> Route:
    """``Route(dst=dst, dev=dev, gw=gw, src=src, onlink=onlink)`` (main table), faster."""
    route = _new(Route)
    _SET_DST(route, dst)
    _SET_DEV(route, dev)
    _SET_GW(route, gw)
    _SET_SRC(route, src)
    _SET_ONLINK(route, onlink)
    _SET_TABLE(route, None)
    return route


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """One IP rule. Kilo sets no priority: the kernel numbers rules in the order added."""

    table: int
    src: CIDR | None = None
    dst: CIDR | None = None
    iif: str | None = None  # an interface name, e.g. "kilo0"

    def to_dict(self) -> dict[str, str | int | bool]:
        """A JSON-friendly form; absent values are left out, as ``ip -j rule`` does."""
        result: dict[str, str | int | bool] = {}
        if self.src is not None:
            result["src"] = str(self.src)
        if self.dst is not None:
            result["dst"] = str(self.dst)
        if self.iif is not None:
            result["iif"] = self.iif
        result["table"] = self.table
        return result


@dataclass(frozen=True, slots=True, kw_only=True)
class EncapsulationPolicy:
    """The pure half of Kilo's ``Encapsulator``: which gateway to use and when to encapsulate.

    ``noop`` is Kilo's ``Noop(strategy)``, used when the node has no private IP: it keeps
    the strategy but has no gateway and no tunnel. :func:`plan_routes` switches to it on
    its own when the topology has no private IP.
    """

    strategy: Encapsulation = Encapsulation.ALWAYS
    compatibility: Compatibility = Compatibility.NONE
    tunnel_available: bool = True
    noop: bool = False

    def without_private_ip(self) -> EncapsulationPolicy:
        return replace(self, noop=True, tunnel_available=False)

    @property
    def has_tunnel(self) -> bool:
        # A no-op encapsulator never initialises a device, whatever the adapter reported.
        return self.tunnel_available and not self.noop

    def gw(
        self,
        private_ip: IPAddress | None,
        cni_ip: IPInterface | None,
        pod_cidr: IPNetwork | None,
    ) -> IPAddress | None:
        """The next hop towards a node inside the location (reference §4.1); Kilo also
        passes the endpoint's IP, which no encapsulator uses."""
        if self.noop:
            return None
        if self.compatibility == Compatibility.FLANNEL:
            # flannel.1 routes to a node through the network address of its pod CIDR.
            return None if pod_cidr is None else pod_cidr.network_address
        if self.compatibility == Compatibility.CILIUM:
            if cni_ip is not None:
                return cni_ip.ip
            return None if pod_cidr is None else pod_cidr.network_address
        return private_ip

    def encapsulates(self, own_private_ip: IPInterface | None, gw: IPAddress | None) -> bool:
        """Whether traffic towards ``gw`` must go through the tunnel.

        ``crosssubnet`` encapsulates only what leaves the node's own subnet (the private IP
        with its interface mask); a missing gateway is never inside that subnet.
        """
        if self.strategy == Encapsulation.ALWAYS:
            return True
        return (
            self.strategy == Encapsulation.CROSSSUBNET
            and own_private_ip is not None
            and not ipmod.contains(own_private_ip, gw)
        )


def plan_routes(
    t: Topology,
    *,
    kilo_interface: str = "kilo0",
    local: bool = True,
    policy: EncapsulationPolicy,
) -> tuple[tuple[Route, ...], tuple[Rule, ...]]:
    """The routes and rules of the local node of ``t``, in Kilo's order.

    ``local`` is the ``--local`` flag: manage routes between nodes of the same location.
    ``kilo_interface`` names the WireGuard interface in the ``iif`` of the leader's rules.
    """
    enc = policy if t.private_ip is not None else policy.without_private_ip()
    plan = _Plan(t, enc, kilo_interface)
    if t.leader:
        plan.leader(local=local)
    else:
        plan.non_leader(local=local)
    return tuple(plan.routes), tuple(plan.rules)


def peer_routes(
    t: Topology,
    *,
    name: str | None = None,
    extra_allowed_ips: Iterable[CIDR] = (),
) -> tuple[Route, ...]:
    """The routes a Kilo Peer ``name`` needs on its own WireGuard interface (reference §4.6).

    ``extra_allowed_ips`` (``kgctl connect --allowed-ips``) go through the first segment.
    Kilo plans no rules for a peer.
    """
    routes: list[Route] = []
    for seg in t.segments:
        via = seg.wireguard_ip
        routes.extend(_kilo_route(cidr, via) for cidr in seg.cidrs)
        routes.extend(_kilo_route(ipmod.host_network(ip), via) for ip in seg.private_ips)
        routes.extend(_kilo_route(alip, via) for alip in seg.allowed_location_ips)
        routes.append(Route(dst=ipmod.host_network(seg.wireguard_ip), dev=Device.KILO))
    for peer in t.peers:
        if peer.name == name:
            continue
        routes.extend(Route(dst=aip, dev=Device.KILO) for aip in peer.allowed_ips)
    extra = tuple(extra_allowed_ips)
    # Kilo indexes the first segment unconditionally; with no segments there is no gateway.
    if extra and t.segments:
        via = t.segments[0].wireguard_ip
        routes.extend(_kilo_route(cidr, via) for cidr in extra)
    return tuple(routes)


def format_route(route: Route, device_names: Mapping[Device, str]) -> str:
    """``route`` in the syntax of ``ip route add``; an unnamed device shows as ``<role>``."""
    # ipmod.text: str() of an address or CIDR without ipaddress's general formatter (a
    # full mesh's plan prints 10 000 routes).
    parts = [ipmod.text(route.dst)]
    if route.gw is not None:
        parts += ["via", ipmod.text(route.gw)]
    parts += ["dev", device_names.get(route.dev, f"<{route.dev.value}>"), "proto", "static"]
    if route.onlink:
        parts.append("onlink")
    if route.src is not None:
        parts += ["src", ipmod.text(route.src)]
    if route.table is not None:
        parts += ["table", str(route.table)]
    return " ".join(parts)


def format_rule(rule: Rule) -> str:
    """``rule`` in the syntax of ``ip rule add``."""
    parts: list[str] = []
    if rule.src is not None:
        parts += ["from", str(rule.src)]
    if rule.dst is not None:
        parts += ["to", str(rule.dst)]
    if not parts:
        parts = ["from", "all"]
    if rule.iif is not None:
        parts += ["iif", rule.iif]
    parts += ["lookup", str(rule.table)]
    return " ".join(parts)


def _kilo_route(dst: CIDR, via: IPAddress, src: IPAddress | None = None) -> Route:
    return Route(dst=dst, gw=via, dev=Device.KILO, onlink=True, src=src)


class _Plan:
    """Accumulates routes and rules in the order Kilo appends them."""

    def __init__(self, t: Topology, enc: EncapsulationPolicy, kilo_interface: str) -> None:
        self.t = t
        self.enc = enc
        self.kilo_interface = kilo_interface
        self.own_ip = None if t.private_ip is None else t.private_ip.ip
        self.routes: list[Route] = []
        self.rules: list[Rule] = []

    def add(self, route: Route) -> None:
        if route.dev == Device.TUNNEL and not self.enc.has_tunnel:
            return
        self.routes.append(route)

    def via_private(self, dst: CIDR, gw: IPAddress | None) -> None:
        """A route towards the location's gateway, through the tunnel when the policy says so.

        This is Kilo's ``encapsulateRoute`` applied to a route on the private interface.
        """
        if self.enc.encapsulates(self.t.private_ip, gw):
            # Pin the source to the private IP: the other nodes (and cloud SDNs) know it.
            self.add(_make_route(dst, Device.TUNNEL, gw, self.own_ip, True))
        else:
            self.add(_make_route(dst, Device.PRIVATE, gw, None, True))

    def non_leader(self, *, local: bool) -> None:
        t = self.t
        own = t.local_segment
        gw: IPAddress | None = None
        if own is not None:
            gw = self.enc.gw(
                _at(own.private_ips, own.leader),
                _at(own.cni_compat_ips, own.leader),
                _at(own.cidrs, own.leader),
            )
        # Every route of this loop goes to one gateway, so the policy is asked once.
        routes = self.routes
        dev, src = Device.PRIVATE, None
        if self.enc.encapsulates(t.private_ip, gw):
            # Pin the source to the private IP: the other nodes (and cloud SDNs) know it.
            dev, src = Device.TUNNEL, self.own_ip
        dropped = dev == Device.TUNNEL and not self.enc.has_tunnel
        host_network = ipmod.host_network
        for seg in t.segments:
            if not dropped:
                wireguard = host_network(seg.wireguard_ip)
                routes.append(_make_route(wireguard, dev, gw, src, True))
            if seg.location == t.location:
                if local:
                    self.same_location(seg, leader=False)
                continue
            if dropped:
                continue
            routes.extend([_make_route(cidr, dev, gw, src, True) for cidr in seg.cidrs])
            routes.extend(
                [_make_route(host_network(ip), dev, gw, src, True) for ip in seg.private_ips]
            )
            routes.extend(
                [_make_route(alip, dev, gw, src, True) for alip in seg.allowed_location_ips]
            )
        if dropped:
            return
        for peer in t.peers:
            routes.extend([_make_route(aip, dev, gw, src, True) for aip in peer.allowed_ips])

    def leader(self, *, local: bool) -> None:
        t = self.t
        # Kilo pins the source on WireGuard routes so that cloud SDNs see an address they know.
        src = self.own_ip
        routes = self.routes
        kilo = Device.KILO
        previous = _LEADER_ROUTES.previous
        current: dict[str, tuple[Segment, IPAddress | None, IPAddress | None, list[Route]]] = {}
        for seg in t.segments:
            # In a cross mesh every node leads its own segment and treats the segments of
            # the other nodes of its location as it treats its own (#328).
            if t.in_own_location(seg):
                if local and t.private_ip is not None:
                    self.same_location(seg, leader=True)
                if (
                    not local
                    and t.private_ip is not None
                    and self.enc.strategy != Encapsulation.NEVER
                ):
                    self.return_path(seg)
                # Nodes of the own location are reached directly, never through WireGuard.
                continue
            endpoint = t.update_endpoint(seg.endpoint, seg.key, seg.persistent_keepalive)
            endpoint_ip = None if endpoint is None else endpoint.ip
            entry = previous.get(seg.location)
            if (
                entry is not None
                and entry[0] is seg
                and (entry[1] is src or entry[1] == src)
                and entry[2] == endpoint_ip
            ):
                segment_routes = entry[3]
            else:
                segment_routes = _leader_segment_routes(seg, src, endpoint_ip)
            current[seg.location] = (seg, src, endpoint_ip, segment_routes)
            routes.extend(segment_routes)
        _LEADER_ROUTES.previous = current
        for peer in t.peers:
            routes.extend([_make_route(aip, kilo, None, src, False) for aip in peer.allowed_ips])

    def same_location(self, seg: Segment, *, leader: bool) -> None:
        """Routes to the other nodes of the own location, and the table-1107 detour."""
        t = self.t
        for cidr, private_ip, cni_ip in zip(
            seg.cidrs, seg.private_ips, seg.cni_compat_ips, strict=True
        ):
            if private_ip == self.own_ip:
                continue
            ngw = self.enc.gw(private_ip, cni_ip, cidr)
            self.via_private(cidr, ngw)
            if not self.enc.encapsulates(t.private_ip, private_ip):
                continue
            # Host traffic from the pod subnet (and, on the leader, traffic arriving from
            # WireGuard) must be encapsulated too, or cloud SDNs drop it.
            if not self.enc.has_tunnel:
                continue
            dst = ipmod.host_network(private_ip)
            self.add(
                Route(
                    dst=dst,
                    gw=ngw,
                    dev=Device.TUNNEL,
                    onlink=True,
                    src=self.own_ip,
                    table=LOCAL_ROUTE_TABLE,
                )
            )
            self.rules.append(Rule(src=t.subnet, dst=dst, table=LOCAL_ROUTE_TABLE))
            if leader:
                self.rules.append(Rule(dst=dst, iif=self.kilo_interface, table=LOCAL_ROUTE_TABLE))

    def return_path(self, seg: Segment) -> None:
        """With ``--local=false`` the CNI routes inside the location, but traffic from
        WireGuard to a node's private IP must still enter the CNI's tunnel (Flannel, Cilium).
        """
        for cidr, private_ip, cni_ip in zip(
            seg.cidrs, seg.private_ips, seg.cni_compat_ips, strict=True
        ):
            if private_ip == self.own_ip:
                continue
            ngw = self.enc.gw(private_ip, cni_ip, cidr)
            # IPIP's gateway is the private IP itself: the main table already covers it.
            if ngw is None or ngw == private_ip or not self.enc.has_tunnel:
                continue
            dst = ipmod.host_network(private_ip)
            self.add(
                Route(dst=dst, gw=ngw, dev=Device.TUNNEL, onlink=True, table=LOCAL_ROUTE_TABLE)
            )
            self.rules.append(Rule(dst=dst, iif=self.kilo_interface, table=LOCAL_ROUTE_TABLE))


def _leader_segment_routes(
    seg: Segment, src: IPAddress | None, endpoint_ip: IPAddress | None
) -> list[Route]:
    """A leader's routes through WireGuard to the segment ``seg`` of another location."""
    routes: list[Route] = []
    kilo = Device.KILO
    host_network = ipmod.host_network
    via = seg.wireguard_ip
    private_ips = seg.private_ips
    for i, cidr in enumerate(seg.cidrs):
        routes.append(_make_route(cidr, kilo, via, src, True))
        # Kilo pairs the i-th pod CIDR with the i-th private IP of the segment.
        private_ip = private_ips[i] if i < len(private_ips) else None
        # A node reachable only on its public IP cannot be reached through that IP.
        if private_ip is None or private_ip == endpoint_ip:
            continue
        routes.append(_make_route(host_network(private_ip), kilo, via, src, True))
    routes.extend([_make_route(alip, kilo, via, src, True) for alip in seg.allowed_location_ips])
    return routes


class _LeaderRoutesMemo:
    """The previous leader plan's routes to each segment, reused while the segment is the
    same object (``topology._SegmentMemo`` hands out unchanged segments again) and the
    source and the endpoint's IP they were planned with are equal: most of a large mesh's
    routes then come back as the same Route objects, which the route table's diff (keys
    memoised per Route, ``route_sync.desired_routes``) and the applier's "did the plan
    change" check compare by identity. Only the last plan is kept; values are immutable."""

    def __init__(self) -> None:
        # segment key -> (segment, source, endpoint IP, routes)
        self.previous: dict[str, tuple[Segment, IPAddress | None, IPAddress | None, list[Route]]]
        self.previous = {}


_LEADER_ROUTES = _LeaderRoutesMemo()


def _at(items: tuple[T, ...], index: int) -> T | None:
    return items[index] if 0 <= index < len(items) else None
