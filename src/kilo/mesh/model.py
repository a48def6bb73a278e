"""The mesh's data model: nodes, peers and the settings that shape a topology.

Pure. Values are frozen; nothing here reads the clock: readiness takes ``now`` as an
argument, and ``now=None`` means "do not judge liveness" (a cluster dump read later than
it was taken).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from kilo.mesh.endpoint import Endpoint, UDPAddr, endpoint_ready
from kilo.mesh.ip import IPAddress, IPInterface, IPNetwork, host_interface, host_text, is_public
from kilo.mesh.ip import text as ip_text
from kilo.mesh.keys import ZERO_KEY, Key

# A node is alive while it checked in less than this many seconds ago (2 x check-in period).
LIVENESS_WINDOW = 60
CHECK_IN_PERIOD = 30
DEFAULT_PORT = 51820
DEFAULT_SUBNET = "10.4.0.0/16"
DEFAULT_INTERFACE = "kilo0"
# A WireGuard interface's MTU when the underlay's is unknown (Kilo's --mtu=auto fallback),
# and what WireGuard's encapsulation costs (auto: the underlay's MTU less this).
DEFAULT_MTU = 1420
WIREGUARD_OVERHEAD = 80
DEFAULT_CNI_PATH = "/etc/cni/net.d/10-kilo.conflist"
DEFAULT_TOPOLOGY_LABEL = "topology.kubernetes.io/region"
LEGACY_TOPOLOGY_LABEL = "failure-domain.beta.kubernetes.io/region"
LOCAL_ROUTE_TABLE = 1107
# WireGuard's persistent keepalive is a 16-bit number of seconds.
MAX_KEEPALIVE = 65535

T = TypeVar("T")


class Granularity(enum.StrEnum):
    """How nodes are grouped into segments."""

    LOCATION = "location"
    FULL = "full"
    # Beyond Kilo (squat/kilo#328, #490, not merged): every node is its own segment towards
    # the nodes of other locations; nodes of one location are not WireGuard peers.
    CROSS = "cross"


class Encapsulation(enum.StrEnum):
    """When traffic inside a location is encapsulated (IPIP)."""

    ALWAYS = "always"
    CROSSSUBNET = "crosssubnet"
    NEVER = "never"


class Compatibility(enum.StrEnum):
    """Which CNI Kilo runs alongside ("" means Kilo is the CNI and uses IPIP)."""

    NONE = ""
    FLANNEL = "flannel"
    CILIUM = "cilium"


@dataclass(frozen=True, slots=True, kw_only=True)
class Node:
    """A Kubernetes node as Kilo sees it (translated from its annotations)."""

    name: str
    endpoint: Endpoint | None = None
    key: Key = ZERO_KEY
    internal_ip: IPInterface | None = None
    no_internal_ip: bool = False
    cni_compatibility_ip: IPInterface | None = None
    last_seen: int = 0
    leader: bool = False
    location: str = ""
    persistent_keepalive: int = 0
    subnet: IPNetwork | None = None
    wireguard_ip: IPInterface | None = None
    discovered_endpoints: Mapping[str, UDPAddr | None] | None = None
    allowed_location_ips: tuple[IPInterface, ...] = ()
    granularity: str = ""
    # Derived from the fields above when the node is built: every topology reads them for
    # every node, and an agent keeps its Nodes across events while a 5000-node mesh builds
    # a topology on each apply. Not arguments, not part of the value (equality, hash, repr).
    private_ip: IPAddress | None = field(default=None, init=False, repr=False, compare=False)
    """The address of ``internal_ip``."""
    private_host: IPInterface | None = field(default=None, init=False, repr=False, compare=False)
    """``internal_ip``'s address as a one-address CIDR: the node's allowed IP."""
    private_host_text: str = field(default="", init=False, repr=False, compare=False)
    """``str(private_host)``."""
    subnet_text: str = field(default="", init=False, repr=False, compare=False)
    """``str(subnet)``."""
    public_endpoint: bool = field(default=False, init=False, repr=False, compare=False)
    """Whether the endpoint's IP is public (leader election's test, ``ip.is_public``)."""
    reachable: bool = field(default=False, init=False, repr=False, compare=False)
    """Ready but for liveness: an endpoint, a key and a pod CIDR (:meth:`is_ready`)."""

    def __post_init__(self) -> None:
        if self.internal_ip is not None:
            private_ip = self.internal_ip.ip
            object.__setattr__(self, "private_ip", private_ip)
            object.__setattr__(self, "private_host", host_interface(private_ip))
            object.__setattr__(self, "private_host_text", host_text(private_ip))
        if self.subnet is not None:
            object.__setattr__(self, "subnet_text", ip_text(self.subnet))
        if self.endpoint is not None:
            object.__setattr__(self, "public_endpoint", is_public(self.endpoint.ip))
        reachable = (
            endpoint_ready(self.endpoint) and not self.key.is_zero and self.subnet is not None
        )
        object.__setattr__(self, "reachable", reachable)

    def with_last_seen(self, last_seen: int) -> Node:
        """``replace(self, last_seen=last_seen)`` without ``__init__`` and
        ``__post_init__``: the derived fields do not read ``last_seen``, so they carry
        over. A check-in (167 a second at 5000 nodes) changes nothing else, and
        ``replace`` was a third of an agent's handling of one."""
        new = object.__new__(Node)
        for name in _NODE_SLOTS:
            object.__setattr__(new, name, getattr(self, name))
        object.__setattr__(new, "last_seen", last_seen)
        return new

    def is_ready(self, now: int | None) -> bool:
        """Kilo's ``Node.Ready``: reachable, keyed, with a pod CIDR, and alive at ``now``."""
        if not self.reachable:
            return False
        return now is None or now - self.last_seen < LIVENESS_WINDOW


# Every attribute of a Node, the derived ones too (``Node.with_last_seen`` copies them).
_NODE_SLOTS: tuple[str, ...] = Node.__slots__


@dataclass(frozen=True, slots=True, kw_only=True)
class Peer:
    """A Kilo ``Peer``: a WireGuard client outside the cluster (a VPN peer)."""

    name: str
    allowed_ips: tuple[IPInterface, ...] = ()
    public_key: Key = ZERO_KEY
    preshared_key: Key | None = None
    persistent_keepalive: int = 0
    endpoint: Endpoint | None = None

    def is_ready(self) -> bool:
        """Kilo's ``Peer.Ready``: a key and at least one allowed IP (a method, like
        :meth:`Node.is_ready`, which needs the time)."""
        return bool(self.allowed_ips) and not self.public_key.is_zero


@dataclass(frozen=True, slots=True, kw_only=True)
class Diagnostic:
    """Something wrong with one field of one object, reported instead of silently dropped."""

    kind: str  # "node" or "peer"
    name: str
    field: str  # annotation, label or spec field
    value: str
    problem: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name!r}: {self.field}={self.value!r} {self.problem}"


@dataclass(frozen=True, slots=True)
class Translated(Generic[T]):
    """A translated object (or ``None`` when it must be ignored) and what was wrong with it."""

    value: T | None
    diagnostics: tuple[Diagnostic, ...] = field(default_factory=tuple)


def wireguard_keepalive(seconds: int) -> int:
    """A keepalive WireGuard accepts: annotations may hold any integer, WireGuard 0..65535."""
    return max(0, min(seconds, MAX_KEEPALIVE))


def ready_nodes(nodes: Iterable[Node], now: int | None) -> list[Node]:
    return [n for n in nodes if n.is_ready(now)]


def ready_peers(peers: Iterable[Peer]) -> list[Peer]:
    return [p for p in peers if p.is_ready()]
