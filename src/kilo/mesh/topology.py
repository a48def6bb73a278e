"""The topology: segments, leaders, WireGuard IPs and allowed IPs (Kilo's ``NewTopology``).

Pure. No I/O, no clock, no logging; input order never affects the result. Everything
here decides what other nodes must agree on, so it follows Kilo exactly, with one
deliberate difference: running out of WireGuard IPs is an error for the first segment
that does not fit (Kilo gives that segment an empty IP and fails only on the next one).

Why one module of about 560 lines: segments, leaders, WireGuard IPs, allowed IPs and the
memo that reuses unchanged segments are one computation in Kilo's order (``NewTopology``),
and every step reads the previous step's drafts; the allowed-location-IP filter
(``alip_index``), the endpoint rules and the model already live in modules of their own.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from kilo.errors import AddressPoolExhausted, LocalNodeMissing, TopologyError
from kilo.mesh import ip as ipmod
from kilo.mesh.alip_index import AllowedLocationIPFilter, MaximalIndex
from kilo.mesh.endpoint import Endpoint, UDPAddr
from kilo.mesh.ip import IPAddress, IPInterface, IPNetwork
from kilo.mesh.keys import ZERO_KEY, Key
from kilo.mesh.model import DEFAULT_PORT, Granularity, Node, Peer

LOCATION_PREFIX = "location:"
NODE_PREFIX = "node:"


@dataclass(frozen=True, slots=True, kw_only=True)
class Segment:
    """Nodes that share one leader and one WireGuard IP."""

    location: str  # the segment key: "location:<name>" or "node:<name>"
    hostnames: tuple[str, ...]
    leader: int  # index into hostnames
    endpoint: Endpoint | None
    key: Key
    persistent_keepalive: int  # the leader's annotation
    cidrs: tuple[IPNetwork, ...]  # pod CIDRs, one per node
    private_ips: tuple[IPAddress, ...]  # only of nodes that have an internal IP
    cni_compat_ips: tuple[IPInterface | None, ...]  # one per node
    wireguard_ip: IPAddress
    allowed_ips: tuple[IPInterface | IPNetwork, ...]  # pod CIDR, internal /32 per node; WG /32
    allowed_location_ips: tuple[IPInterface, ...]
    # The text of each allowed IP, as build_topology computed it once for the WireGuard
    # config and the iptables rules, which print every one. Not part of the value.
    _allowed_ips_text: tuple[str, ...] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def leader_name(self) -> str:
        return self.hostnames[self.leader]

    @property
    def allowed_ips_text(self) -> tuple[str, ...]:
        """``str()`` of each of :attr:`allowed_ips`."""
        return ipmod.texts(self._allowed_ips_text, self.allowed_ips)


@dataclass(frozen=True, slots=True, kw_only=True)
class Topology:
    """The mesh seen from one node (``hostname``)."""

    hostname: str
    granularity: Granularity
    location: str  # the local segment key
    leader: bool
    port: int
    key: Key  # the local private key; all zeros in kgctl
    persistent_keepalive: int  # the local node's
    private_ip: IPInterface | None  # the local internal IP with its interface mask
    subnet: IPNetwork | None  # the local pod CIDR
    kilo_subnet: IPNetwork
    wireguard_cidr: IPInterface  # the local WG IP with the Kilo prefix, if leader
    service_cidrs: tuple[IPNetwork, ...]
    segments: tuple[Segment, ...]
    peers: tuple[Peer, ...]  # sorted by name, allowed IPs de-duplicated
    discovered_endpoints: Mapping[str, UDPAddr | None] = field(default_factory=dict)
    # ``cross`` only: segment key -> the key of the location whose nodes reach that
    # segment's node over the underlay (see ``cross_locations``). Empty otherwise.
    node_locations: Mapping[str, str] = field(default_factory=dict)

    @property
    def node_location(self) -> str:
        """The location of the local node in a ``cross`` mesh (#328's ``nodeLocation``), else ""."""
        return self.node_locations.get(self.location, "")

    def in_own_location(self, segment: Segment) -> bool:
        """Whether ``segment`` is reached over the underlay rather than through WireGuard.

        The local segment always is; in a ``cross`` mesh so is every segment of another
        node of the local location (#328: ``t.nodeLocation == s.nodeLocation``).
        """
        if segment.location == self.location:
            return True
        own = self.node_location
        return own != "" and self.node_locations.get(segment.location) == own

    @property
    def local_segment(self) -> Segment | None:
        for segment in self.segments:
            if segment.location == self.location:
                return segment
        return None

    def update_endpoint(
        self, endpoint: Endpoint | None, key: Key, keepalive: int
    ) -> Endpoint | None:
        """The NAT-discovered endpoint replaces ``endpoint`` when the remote side keeps alive."""
        if not keepalive:
            return endpoint
        if str(key) not in self.discovered_endpoints:
            return endpoint
        # A null entry (Kilo keeps those) yields an empty endpoint, as in Kilo.
        return Endpoint.from_udp(self.discovered_endpoints[str(key)])


# A 5000-node full mesh has 5000 segments. The dataclass's __init__ costs 2.5 us a segment
# (keyword arguments, then one object.__setattr__ a field of a frozen class); filling the
# slots directly costs a fraction and gives the same value (every field is set;
# tests/unit/test_fast_values.py compares it with the constructor's).
_new = object.__new__
_SEGMENT_FIELDS = (
    "location",
    "hostnames",
    "leader",
    "endpoint",
    "key",
    "persistent_keepalive",
    "cidrs",
    "private_ips",
    "cni_compat_ips",
    "wireguard_ip",
    "allowed_ips",
    "allowed_location_ips",
    "_allowed_ips_text",
)
(
    _SET_LOCATION,
    _SET_HOSTNAMES,
    _SET_LEADER,
    _SET_ENDPOINT,
    _SET_KEY,
    _SET_KEEPALIVE,
    _SET_CIDRS,
    _SET_PRIVATE_IPS,
    _SET_CNI_COMPAT_IPS,
    _SET_WIREGUARD_IP,
    _SET_ALLOWED_IPS,
    _SET_ALLOWED_LOCATION_IPS,
    _SET_ALLOWED_IPS_TEXT,
) = (Segment.__dict__[name].__set__ for name in _SEGMENT_FIELDS)


def location_key(node: Node, granularity: Granularity | str) -> str:
    """The segment key of ``node``; an unknown granularity puts every node in one segment."""
    if granularity == Granularity.LOCATION:
        if node.internal_ip is None:
            return NODE_PREFIX + node.name
        return LOCATION_PREFIX + node.location
    if granularity in (Granularity.FULL, Granularity.CROSS):
        return NODE_PREFIX + node.name
    return ""


def cross_location(node: Node) -> str:
    """The location of ``node`` in a ``cross`` mesh: the nodes sharing it are not WireGuard
    peers of each other.

    #328 gives every node ``"location:" + node.location``. A node without an internal IP
    gets ``"node:" + name`` here instead, as ``location`` granularity gives it a segment
    of its own: with #328 the other nodes of its location would route to it over an
    underlay address it does not have (Go's Routes indexes its empty private IPs and
    panics), and it would have no path to them at all (docs/compatibility.md).
    """
    if node.internal_ip is None:
        return NODE_PREFIX + node.name
    return LOCATION_PREFIX + node.location


def cross_locations(nodes: Iterable[Node]) -> dict[str, str]:
    """Segment key -> :func:`cross_location`, for every node of a ``cross`` mesh."""
    return {NODE_PREFIX + node.name: cross_location(node) for node in nodes}


_name = operator.attrgetter("name")


def find_leader(nodes: Sequence[Node]) -> int:
    """Annotated and public > annotated > public > first by name."""
    leaders: list[int] = []
    public: list[int] = []
    for i, node in enumerate(nodes):
        public_endpoint = node.public_endpoint  # ip.is_public of its endpoint's IP
        if node.leader:
            if public_endpoint:
                return i
            leaders.append(i)
        if public_endpoint:
            public.append(i)
    if leaders:
        return leaders[0]
    if public:
        return public[0]
    return 0


def address_capacity(subnet: IPNetwork) -> int:
    """How many WireGuard IPs Kilo's allocator hands out: every address after the network."""
    return subnet.num_addresses - 1


def build_topology(
    nodes: Iterable[Node],
    peers: Iterable[Peer],
    *,
    granularity: Granularity,
    hostname: str,
    subnet: IPNetwork,
    port: int = DEFAULT_PORT,
    key: Key = ZERO_KEY,
    service_cidrs: Iterable[IPNetwork] = (),
    persistent_keepalive: int = 0,
    leaders: Mapping[str, str] | None = None,
) -> Topology:
    """Build the topology from the ready ``nodes`` and ``peers`` as seen from ``hostname``.

    ``leaders`` (segment key -> node name) replaces Kilo's choice of leader for a segment
    when that node is one of its members (``kg --leader-election=lease``)."""
    node_list = list(nodes)
    by_name = {node.name: node for node in node_list}
    if len(by_name) != len(node_list):
        # Which duplicate won would depend on input order; the backends guarantee unique names.
        counts = Counter(n.name for n in node_list)
        twice = sorted(name for name, count in counts.items() if count > 1)
        raise TopologyError(f"node names must be unique; repeated: {', '.join(twice)}")
    local = by_name.get(hostname)
    if local is None:
        raise LocalNodeMissing(hostname)
    local_location = location_key(local, granularity)

    groups: dict[str, list[Node]] = {}
    for node in by_name.values():
        group = groups.get(segment_key := location_key(node, granularity))
        if group is None:
            groups[segment_key] = [node]
        else:
            group.append(node)

    segment_keys = sorted(groups)
    capacity = address_capacity(subnet)
    if len(segment_keys) > capacity:
        raise AddressPoolExhausted(str(subnet), len(segment_keys), capacity)

    is_leader = False
    ordered: list[tuple[str, list[Node], int]] = []  # segment key, members by name, leader
    for location in segment_keys:
        members = groups[location]
        if len(members) > 1:
            members.sort(key=_name)
        leader = find_leader(members)
        if leaders and location in leaders:
            chosen = [i for i, n in enumerate(members) if n.name == leaders[location]]
            leader = chosen[0] if chosen else leader
        if location == local_location and members[leader].name == hostname:
            is_leader = True
        ordered.append((location, members, leader))

    sorted_peers = _deduplicate_peers(sorted(peers, key=lambda p: p.name))

    segments = _SEGMENTS.segments(
        ordered,
        subnet,
        sorted_peers,
        allowed_location_ips=any(node.allowed_location_ips for node in node_list),
    )

    discovered: dict[str, UDPAddr | None] = dict(local.discovered_endpoints or {})
    wireguard_cidr: IPInterface = ipmod.parse_interface(str(subnet)) or _unreachable()
    for segment, (location, members, _) in zip(segments, ordered, strict=True):
        if is_leader and location == local_location:
            wireguard_cidr = _interface(segment.wireguard_ip, subnet.prefixlen)
        for member in members:
            if member.discovered_endpoints:
                for peer_key, address in member.discovered_endpoints.items():
                    discovered.setdefault(peer_key, address)

    return Topology(
        hostname=hostname,
        granularity=granularity,
        location=local_location,
        leader=is_leader,
        port=port,
        key=key,
        persistent_keepalive=persistent_keepalive,
        private_ip=local.internal_ip,
        subnet=local.subnet,
        kilo_subnet=subnet,
        wireguard_cidr=wireguard_cidr,
        service_cidrs=tuple(service_cidrs),
        segments=segments,
        peers=tuple(sorted_peers),
        discovered_endpoints=discovered,
        # Segments, leaders and WireGuard IPs of a cross mesh are the full mesh's (#328).
        node_locations=cross_locations(node_list) if granularity == Granularity.CROSS else {},
    )


def _filtered_segments(
    ordered: Sequence[tuple[str, list[Node], int]],
    subnet: IPNetwork,
    peers: Sequence[Peer],
    unfiltered: Sequence[Segment] = (),
) -> tuple[Segment, ...]:
    """The segments, WireGuard IPs allocated and allowed-location IPs filtered in Kilo's
    order: segment ``k`` is filtered once it has its WireGuard IP (see the filter).

    ``unfiltered`` (if given) are the same segments before the filter, one per entry of
    ``ordered``: a segment the filter left whole is handed out as that object (the
    same value), so that what was derived from it before is reused downstream."""
    drafts = [_SegmentDraft.of(location, members, leader) for location, members, leader in ordered]
    alip_filter = AllowedLocationIPFilter(drafts, peers)
    network = int(subnet.network_address)
    segments: list[Segment] = []
    for index, draft in enumerate(drafts):
        draft.add_wireguard_ip(_address(subnet, network + index + 1))
        count = len(draft.allowed_location_ips)
        draft.allowed_location_ips = alip_filter.filter(index)
        if unfiltered and len(draft.allowed_location_ips) == count:
            segments.append(unfiltered[index])  # the filter keeps a subsequence: all of it
        else:
            segments.append(draft.freeze())
    return tuple(segments)


class _SegmentMemo:
    """The previous topology's segments, reused while their nodes are unchanged.

    A segment is a function of its nodes and of its WireGuard IP, i.e. of its place in the
    sorted segment keys; with allowed-location IPs also of the filter, which looks across
    segments (see below). An agent keeps the Nodes it already translated from one event
    to the next, so most segments of a large mesh come back unchanged, and rebuilding them
    was most of a 5000-node topology: the previous segment is handed out again when its
    members are the very same Node objects, or Nodes whose values a segment reads are
    equal (:func:`_same_node`: a check-in gives a node a new object that differs only in
    ``last_seen``), its leader is the same member and its IP is the same. Only the last
    build is kept: at most one topology's segments and the Nodes they came from.

    Allowed-location IPs: the memo keeps the segments unfiltered, and indexes, across
    builds, every allowed IP and allowed-location IP of them
    (:class:`~kilo.mesh.alip_index.MaximalIndex`, updated per changed segment). An
    allowed-location IP that clashes with nothing in that index clashes with nothing in
    the state Kilo's order-dependent filter checks it against (a subset: fewer
    allowed-location IPs, fewer WireGuard /32s); so when none clashes, the filter keeps
    every one and the unfiltered segments are the result. Otherwise the
    filter runs from scratch (:func:`_filtered_segments`).
    """

    def __init__(self) -> None:
        # segment key -> (members, leader, IP version, WireGuard IP as an integer, segment)
        self._previous: dict[str, tuple[list[Node], int, int, int, Segment]] = {}
        self._index: dict[str, MaximalIndex] = {}  # under "index" when not in use

    def segments(
        self,
        ordered: Sequence[tuple[str, list[Node], int]],
        subnet: IPNetwork,
        peers: Sequence[Peer] = (),
        *,
        allowed_location_ips: bool = False,
    ) -> tuple[Segment, ...]:
        previous = self._previous
        current: dict[str, tuple[list[Node], int, int, int, Segment]] = {}
        segments: list[Segment] = []
        version = subnet.version
        network = int(subnet.network_address)
        for index, (location, members, leader) in enumerate(ordered):
            value = network + index + 1
            entry = previous.get(location)
            if (
                entry is not None
                and entry[3] == value
                and entry[2] == version
                and entry[1] == leader
                and _same_nodes(entry[0], members)
            ):
                segment = entry[4]
                # The members of this build: the next one compares with these objects.
                current[location] = (members, leader, version, value, segment)
            else:
                draft = _SegmentDraft.of(location, members, leader)
                draft.add_wireguard_ip(_address(subnet, value))
                segment = draft.freeze()
                current[location] = (members, leader, version, value, segment)
            segments.append(segment)
        self._previous = current
        result = tuple(segments)
        # The index is taken out while it is updated (dict.pop is atomic): a topology built
        # meanwhile in another thread (the agent's /graph) builds an index of its own.
        # The other memos only swap whole values, which is safe as it is.
        maximal = self._index.pop("index", None)
        if not allowed_location_ips:
            return result
        if maximal is None:
            maximal = MaximalIndex()
        clash = maximal.update(result, peers)
        self._index["index"] = maximal
        if clash:
            return _filtered_segments(ordered, subnet, peers, result)
        return result


def _same_nodes(a: Sequence[Node], b: Sequence[Node]) -> bool:
    return len(a) == len(b) and all(map(_same_node, a, b))


def _same_node(a: Node, b: Node) -> bool:
    """Whether a segment of ``b`` is the segment of ``a``: the same object, or equal in
    every value :meth:`_SegmentDraft.of` and :meth:`_SegmentDraft.freeze` read (a
    check-in changes only ``last_seen``, and a new translation gives new objects)."""
    return a is b or (
        a.name == b.name
        and a.key == b.key
        and a.endpoint == b.endpoint
        and a.persistent_keepalive == b.persistent_keepalive
        and a.subnet == b.subnet
        and a.internal_ip == b.internal_ip
        and a.cni_compatibility_ip == b.cni_compatibility_ip
        and a.allowed_location_ips == b.allowed_location_ips
    )


_SEGMENTS = _SegmentMemo()


def _unreachable() -> IPInterface:
    raise AssertionError("a network always parses as an interface")


def _address(subnet: IPNetwork, value: int) -> IPAddress:
    return type(subnet.network_address)(value)


def _interface(address: IPAddress, prefix: int) -> IPInterface:
    iface = ipmod.parse_interface(f"{address}/{prefix}")
    assert iface is not None
    return iface


@dataclass(slots=True)
class _SegmentDraft:
    """A segment while WireGuard IPs are being allocated (Kilo mutates segments in place)."""

    location: str
    members: list[Node]
    leader: int
    allowed_ips: list[IPInterface | IPNetwork]
    allowed_ips_text: list[str]
    private_ips: list[IPAddress]
    allowed_location_ips: list[IPInterface]
    wireguard_ip: IPAddress | None = None

    @classmethod
    def of(cls, location: str, members: list[Node], leader: int) -> _SegmentDraft:
        allowed_ips: list[IPInterface | IPNetwork] = []
        allowed_ips_text: list[str] = []
        private_ips: list[IPAddress] = []
        allowed_location_ips: list[IPInterface] = []
        # The node's own derived values (model.Node), computed once when it was built.
        for node in members:
            if node.subnet is not None:
                allowed_ips.append(node.subnet)
                allowed_ips_text.append(node.subnet_text)
            private = node.private_ip
            if private is not None:
                assert node.private_host is not None
                allowed_ips.append(node.private_host)
                allowed_ips_text.append(node.private_host_text)
                private_ips.append(private)
            if node.allowed_location_ips:
                allowed_location_ips.extend(node.allowed_location_ips)
        if len(allowed_location_ips) > 1:
            allowed_location_ips = _unique_sorted(allowed_location_ips)
        return cls(
            location,
            members,
            leader,
            allowed_ips,
            allowed_ips_text,
            private_ips,
            allowed_location_ips,
        )

    def add_wireguard_ip(self, wireguard_ip: IPAddress) -> None:
        """Allocate ``wireguard_ip`` to the segment: its ``/32`` becomes an allowed IP."""
        self.wireguard_ip = wireguard_ip
        self.allowed_ips.append(ipmod.host_interface(wireguard_ip))
        self.allowed_ips_text.append(ipmod.host_text(wireguard_ip))

    def freeze(self) -> Segment:
        """The segment, built as ``Segment(...)`` would (see ``_SEGMENT_FIELDS``)."""
        members = self.members
        leader = members[self.leader]
        assert self.wireguard_ip is not None
        segment = _new(Segment)
        _SET_LOCATION(segment, self.location)
        _SET_HOSTNAMES(segment, tuple([n.name for n in members]))
        _SET_LEADER(segment, self.leader)
        _SET_ENDPOINT(segment, leader.endpoint)
        _SET_KEY(segment, leader.key)
        _SET_KEEPALIVE(segment, leader.persistent_keepalive)
        _SET_CIDRS(segment, tuple([n.subnet for n in members if n.subnet is not None]))
        _SET_PRIVATE_IPS(segment, tuple(self.private_ips))
        _SET_CNI_COMPAT_IPS(segment, tuple([n.cni_compatibility_ip for n in members]))
        _SET_WIREGUARD_IP(segment, self.wireguard_ip)
        _SET_ALLOWED_IPS(segment, tuple(self.allowed_ips))
        _SET_ALLOWED_LOCATION_IPS(segment, tuple(self.allowed_location_ips))
        _SET_ALLOWED_IPS_TEXT(segment, tuple(self.allowed_ips_text))
        return segment


def _unique_sorted(cidrs: list[IPInterface]) -> list[IPInterface]:
    """The first of each CIDR text, sorted by that text (Kilo sorts CIDRs as strings)."""
    by_text: dict[str, IPInterface] = {}
    for cidr in cidrs:
        by_text.setdefault(ipmod.text(cidr), cidr)
    return [by_text[text] for text in sorted(by_text)]


def _deduplicate_peers(peers: Sequence[Peer]) -> list[Peer]:
    """Keep each allowed IP (by CIDR text) only in the first peer that claims it."""
    seen: set[str] = set()
    result: list[Peer] = []
    for peer in peers:
        allowed: list[IPInterface] = []
        for cidr in peer.allowed_ips:
            if str(cidr) not in seen:
                seen.add(str(cidr))
                allowed.append(cidr)
        result.append(
            Peer(
                name=peer.name,
                allowed_ips=tuple(allowed),
                public_key=peer.public_key,
                preshared_key=peer.preshared_key,
                persistent_keepalive=peer.persistent_keepalive,
                endpoint=peer.endpoint,
            )
        )
    return result
