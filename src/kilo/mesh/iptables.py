"""The iptables rules a node needs: Kilo's ``Topology.Rules`` and the encapsulators' ``Rules``.

Pure. Rules are values; applying them (``iptables -C/-A/-I/-D``, the rule cache and the
diffing controller) belongs to an adapter. Everything an adapter needs to diff two rule
sets is here:

* a :class:`Rule` or :class:`Chain` is identified by its string (``str(rule)``), exactly as
  Kilo identifies it. The string matches a line of ``iptables -t <table> -S <chain>``
  prefixed with ``"<table> "``; a chain's string is ``"<table> -N <name>"``.
* the string does not include the protocol, and a chain or a protocol-independent rule
  (the MASQUERADE rule, the IPIP INPUT rules) exists once per protocol with the same
  string. Kilo diffs the ``append`` list position by position, so this is harmless there;
  an adapter that keeps per-protocol state should use :attr:`Rule.key`, which is
  ``(protocol, string)``.

A :class:`RuleSet` holds an ordered ``append`` list (chains and rules that must appear in
this order at the end of their chains) and a ``prepend`` list (rules inserted at position 1;
every insert goes to the top, so a chain ends up in reverse insertion order).

The rule protocol follows the address family of the address or CIDR the rule is about.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kilo.mesh import ip as ipmod
from kilo.mesh.ip import IPAddress, IPInterface, IPNetwork
from kilo.mesh.model import Compatibility, Encapsulation
from kilo.mesh.topology import LOCATION_PREFIX, Segment, Topology

NAT_TABLE = "nat"
FILTER_TABLE = "filter"
NAT_CHAIN = "KILO-NAT"
IPIP_CHAIN = "KILO-IPIP"
# ``getprotobynumber(4)``; Kilo's image (and its no-cgo build) uses this name.
IPIP_PROTOCOL = "ipencap"


class Protocol(enum.StrEnum):
    """Which client a rule goes to: ``iptables`` or ``ip6tables`` (values as Kilo's metrics)."""

    IPV4 = "IPv4"
    IPV6 = "IPv6"


def protocol_of(value: IPAddress | IPInterface | IPNetwork) -> Protocol:
    """The protocol of a rule about ``value``: IPv4 for IPv4 (and mapped) addresses."""
    if value.version == 4:  # the common case, without building an address object
        return Protocol.IPV4
    address = ipmod.address_of(value) if isinstance(value, IPInterface | IPNetwork) else value
    return Protocol.IPV4 if ipmod.normalise(address).version == 4 else Protocol.IPV6


@dataclass(frozen=True, slots=True, kw_only=True)
class Chain:
    """A chain Kilo owns. Applying it creates it or flushes it (``-N``, else ``-F``)."""

    protocol: Protocol
    table: str
    name: str

    def __str__(self) -> str:
        return f"{self.table} -N {self.name}"

    @property
    def key(self) -> tuple[Protocol, str]:
        return (self.protocol, str(self))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "chain",
            "protocol": str(self.protocol),
            "table": self.table,
            "name": self.name,
            "text": str(self),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """A rule: ``spec`` is the argument list after ``-A <chain>``, as passed to iptables."""

    protocol: Protocol
    table: str
    chain: str
    spec: tuple[str, ...]

    def __str__(self) -> str:
        # Kilo's rule.String(): the argument after --comment is wrapped in double quotes
        # (without escaping, like Kilo), as iptables -S prints it.
        parts = [f"{self.table} -A {self.chain}"]
        for i, arg in enumerate(self.spec):
            parts.append(f'"{arg}"' if i > 0 and self.spec[i - 1] == "--comment" else arg)
        return " ".join(parts)

    @property
    def key(self) -> tuple[Protocol, str]:
        return (self.protocol, str(self))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "rule",
            "protocol": str(self.protocol),
            "table": self.table,
            "chain": self.chain,
            "spec": list(self.spec),
            "text": str(self),
        }


Entry = Chain | Rule

# A plan holds tens of thousands of rules at 5000 nodes. The dataclass's __init__ costs
# 1.3 us a rule (keyword arguments, then one object.__setattr__ a field of a frozen class);
# filling the slots directly costs 0.4 us and gives the same value (every field is set;
# tests/unit/test_fast_values.py compares it with the constructor's).
_new = object.__new__
_SET_PROTOCOL, _SET_TABLE, _SET_CHAIN, _SET_SPEC = (
    Rule.__dict__[name].__set__ for name in ("protocol", "table", "chain", "spec")
)


def _make_rule(protocol: Protocol, table: str, chain: str, spec: tuple[str, ...]) -> Rule:
    """``Rule(protocol=protocol, table=table, chain=chain, spec=spec)``, faster."""
    rule = _new(Rule)
    _SET_PROTOCOL(rule, protocol)
    _SET_TABLE(rule, table)
    _SET_CHAIN(rule, chain)
    _SET_SPEC(rule, spec)
    return rule


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleSet:
    """The rules submitted to the iptables controller in one apply."""

    append: tuple[Entry, ...] = ()
    prepend: tuple[Rule, ...] = ()

    def __add__(self, other: RuleSet) -> RuleSet:
        """``self``'s rules first, then ``other``'s, in both lists (Kilo's ``AppendRuleSet``)."""
        return RuleSet(append=self.append + other.append, prepend=self.prepend + other.prepend)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form, e.g. for ``kgctl plan -o json``."""
        return {
            "append": [entry.to_dict() for entry in self.append],
            "prepend": [rule.to_dict() for rule in self.prepend],
        }

    def lines(self) -> list[str]:
        """A human form: one ``"<append|prepend> <protocol> <rule string>"`` line per entry."""
        return [f"append {e.protocol} {e}" for e in self.append] + [
            f"prepend {r.protocol} {r}" for r in self.prepend
        ]

    def to_text(self) -> str:
        """:meth:`lines` joined, with a final newline (empty for an empty set)."""
        return "".join(line + "\n" for line in self.lines())


EMPTY = RuleSet()


def _rule(protocol: Protocol, table: str, chain: str, *spec: str) -> Rule:
    return _make_rule(protocol, table, chain, spec)


def _both(table: str, chain: str, *spec: str) -> tuple[Rule, Rule]:
    return _rule(Protocol.IPV4, table, chain, *spec), _rule(Protocol.IPV6, table, chain, *spec)


def _chains(table: str, name: str) -> tuple[Chain, Chain]:
    return (
        Chain(protocol=Protocol.IPV4, table=table, name=name),
        Chain(protocol=Protocol.IPV6, table=table, name=name),
    )


def _comment(text: str) -> tuple[str, str, str, str]:
    return ("-m", "comment", "--comment", text)


def _forward(cidr: IPInterface | IPNetwork, direction: str, comment: str) -> Rule:
    flag = "-s" if direction == "from" else "-d"
    return _rule(
        protocol_of(cidr),
        FILTER_TABLE,
        "FORWARD",
        *_comment(comment),
        flag,
        str(cidr),
        "-j",
        "ACCEPT",
    )


_RETURN_WIREGUARD = (
    *_comment("Kilo: do not NAT packets destined for WireGuared IPs"),
    "-j",
    "RETURN",
)
_RETURN_KNOWN = (*_comment("Kilo: do not NAT packets destined for known IPs"), "-j", "RETURN")

# The KILO-NAT RETURN rules are most of a large mesh's plan (one per allowed IP and one per
# WireGuard IP: 20 000 at 5000 nodes) and the same on every apply, so they are interned by
# the CIDR's text, which determines the whole rule. Handing out the same immutable value
# changes no result; it also spares the garbage collector tens of thousands of new objects
# an apply. Bounded like ``ip``'s interned CIDRs.
_INTERNED_RULES = 1 << 16


@functools.lru_cache(maxsize=_INTERNED_RULES)
def _return_wireguard(text: str) -> Rule:
    """``-d <text>`` RETURN for a WireGuard IP's one-address CIDR ``text``."""
    return _make_rule(
        _protocol_of_text(text), NAT_TABLE, NAT_CHAIN, ("-d", text, *_RETURN_WIREGUARD)
    )


@functools.lru_cache(maxsize=_INTERNED_RULES)
def _return_known(text: str) -> Rule:
    """``-d <text>`` RETURN for an allowed IP whose text is ``text``."""
    return _make_rule(_protocol_of_text(text), NAT_TABLE, NAT_CHAIN, ("-d", text, *_RETURN_KNOWN))


def _protocol_of_text(text: str) -> Protocol:
    """:func:`protocol_of` the CIDR printed as ``text`` (``ip.text`` of an allowed IP)."""
    if ":" not in text:
        return Protocol.IPV4  # only IPv6 is written with colons: no need to parse it
    cidr = ipmod.parse_interface(text)
    assert cidr is not None, text
    return protocol_of(cidr)


def _segment_rules(segment: Segment, local: bool) -> tuple[Rule, ...]:
    """A segment's prepended rules: KILO-NAT RETURNs for its WireGuard IP and allowed IPs
    and, for the local segment, the jumps for its allowed-location IPs."""
    rules = [_return_wireguard(ipmod.host_text(segment.wireguard_ip))]
    rules.extend([_return_known(text) for text in segment.allowed_ips_text])
    # Traffic to the local location's allowed-location IPs is NATed, so that the
    # replies of devices that know nothing of the mesh find their way back.
    if local:
        for alip in segment.allowed_location_ips:
            rules.append(
                _rule(
                    protocol_of(alip),
                    NAT_TABLE,
                    "POSTROUTING",
                    "-d",
                    str(alip),
                    *_comment("Kilo: jump to NAT chain"),
                    "-j",
                    NAT_CHAIN,
                )
            )
    return tuple(rules)


class _SegmentRulesMemo:
    """The last topology's rules of each segment, reused while the segment is the same
    object (``topology._SegmentMemo`` hands out unchanged segments again; a Segment is
    frozen) and is, or is not, the local one as before: at 5000 nodes the 500 segments'
    11 000 rules took 2-3 ms an apply to look up again. Only the last topology is kept
    (``wireguard._PeerMemo`` does the same for the WireGuard peers)."""

    def __init__(self) -> None:
        # segment key -> (segment, local, rules)
        self.previous: dict[str, tuple[Segment, bool, tuple[Rule, ...]]] = {}


_SEGMENT_RULES = _SegmentRulesMemo()


def topology_rules(t: Topology, *, cni: bool, forward: bool) -> RuleSet:
    """Kilo's ``Topology.Rules(cni, iptablesForwardRule)``, in Kilo's order.

    ``cni`` is ``--cni``; ``forward`` is ``--iptables-forward-rules``. The rules that name
    the local pod CIDR are left out when the topology has none (``t.subnet is None``):
    Kilo only applies a topology whose local node has a pod CIDR, and would otherwise
    print ``<nil>`` into the rule.
    """
    append: list[Entry] = [*_chains(NAT_TABLE, NAT_CHAIN)]
    prepend: list[Rule] = []
    pod_cidr = t.subnet
    if cni:
        if pod_cidr is not None:
            prepend.append(
                _rule(
                    protocol_of(pod_cidr),
                    NAT_TABLE,
                    "POSTROUTING",
                    "-s",
                    str(pod_cidr),
                    *_comment("Kilo: jump to KILO-NAT chain"),
                    "-j",
                    NAT_CHAIN,
                )
            )
        # Some hosts default FORWARD to DROP. A leader forwards for its whole location;
        # any other node only for its own pod CIDR.
        if forward and t.leader:
            local = t.local_segment
            if local is not None:
                for cidr in local.cidrs:
                    prepend.append(
                        _forward(cidr, "from", "Kilo: forward packets from the pod subnet")
                    )
                    prepend.append(_forward(cidr, "to", "Kilo: forward packets to the pod subnet"))
                for alip in local.allowed_location_ips:
                    prepend.append(
                        _forward(alip, "from", "Kilo: forward packets from allowed location IPs")
                    )
                    prepend.append(
                        _forward(alip, "to", "Kilo: forward packets to allowed location IPs")
                    )
                for private in local.private_ips:
                    host = ipmod.host_interface(private)
                    prepend.append(_forward(host, "from", "Kilo: forward packets from private IPs"))
                    prepend.append(_forward(host, "to", "Kilo: forward packets to private IPs"))
        elif forward and pod_cidr is not None:
            prepend.append(
                _forward(pod_cidr, "from", "Kilo: forward packets from the node's pod subnet")
            )
            prepend.append(
                _forward(pod_cidr, "to", "Kilo: forward packets to the node's pod subnet")
            )
    local_location = t.location
    previous = _SEGMENT_RULES.previous
    memo: dict[str, tuple[Segment, bool, tuple[Rule, ...]]] = {}
    for segment in t.segments:
        is_local = segment.location == local_location
        entry = previous.get(segment.location)
        if entry is None or entry[0] is not segment or entry[1] != is_local:
            entry = (segment, is_local, _segment_rules(segment, is_local))
        memo[segment.location] = entry
        prepend.extend(entry[2])
    _SEGMENT_RULES.previous = memo
    for peer in t.peers:
        for allowed_ip in peer.allowed_ips:
            protocol = protocol_of(allowed_ip)
            prepend.append(
                _rule(
                    protocol,
                    NAT_TABLE,
                    "POSTROUTING",
                    "-s",
                    str(allowed_ip),
                    *_comment("Kilo: jump to NAT chain"),
                    "-j",
                    NAT_CHAIN,
                )
            )
            prepend.append(
                _rule(
                    protocol,
                    NAT_TABLE,
                    NAT_CHAIN,
                    "-d",
                    str(allowed_ip),
                    *_comment("Kilo: do not NAT packets destined for peers"),
                    "-j",
                    "RETURN",
                )
            )
    for service in t.service_cidrs:
        append.append(
            _rule(
                protocol_of(service),
                NAT_TABLE,
                NAT_CHAIN,
                "-d",
                str(service),
                *_comment("Kilo: do not NAT packets destined for service CIDRs"),
                "-j",
                "RETURN",
            )
        )
    append.extend(
        _both(NAT_TABLE, NAT_CHAIN, *_comment("Kilo: NAT remaining packets"), "-j", "MASQUERADE")
    )
    return RuleSet(append=tuple(append), prepend=tuple(prepend))


def ipip_allowed_sources(t: Topology, local_node_location: str) -> list[IPInterface]:
    """The ``/32`` of every private IP of the segment keyed ``"location:" + local_node_location``.

    This is how Kilo's agent picks the sources allowed to send IPIP: it looks the
    *logical* location of the local node up among the segments, not ``t.location``. The
    two agree whenever the local segment is a logical location. In ``full`` granularity
    no segment matches and the list is empty. For a node without an internal IP
    (segment ``node:<name>``) in ``location`` granularity, the list holds the private IPs
    of the other nodes of its location label, if any.

    In a ``cross`` mesh no segment is a logical location, so #328 (which keeps this
    lookup) drops the IPIP traffic of every other node of the location, the very traffic
    ``cross`` keeps off WireGuard. Here the sources are the private IPs of the nodes of
    the local cross location (deliberate fix; it changes only the local node's firewall).
    """
    if t.node_locations:
        return [
            ipmod.host_interface(private)
            for segment in t.segments
            if t.in_own_location(segment)
            for private in segment.private_ips
        ]
    wanted = LOCATION_PREFIX + local_node_location
    for segment in t.segments:
        if segment.location == wanted:
            return [ipmod.host_interface(private) for private in segment.private_ips]
    return []


def ipip_rules(sources: Iterable[IPInterface], *, protocol_name: str = IPIP_PROTOCOL) -> RuleSet:
    """The IPIP (and Cilium) encapsulator's ``Rules(cidrs)``: accept IPIP only from ``sources``."""
    proto = ("-p", protocol_name)
    append: list[Entry] = [*_chains(FILTER_TABLE, IPIP_CHAIN)]
    append.extend(
        _both(
            FILTER_TABLE, "INPUT", *proto, *_comment("Kilo: jump to IPIP chain"), "-j", IPIP_CHAIN
        )
    )
    prepend = [
        _rule(
            protocol_of(source),
            FILTER_TABLE,
            IPIP_CHAIN,
            "-s",
            str(source),
            *_comment("Kilo: allow IPIP traffic"),
            "-j",
            "ACCEPT",
        )
        for source in sources
    ]
    append.extend(
        _both(
            FILTER_TABLE,
            "INPUT",
            *proto,
            *_comment("Kilo: reject other IPIP traffic"),
            "-j",
            "DROP",
        )
    )
    return RuleSet(append=tuple(append), prepend=tuple(prepend))


def encapsulation_rules(
    t: Topology, local_node_location: str, *, protocol_name: str = IPIP_PROTOCOL
) -> RuleSet:
    """The IPIP/Cilium encapsulation rules for the local node (§5.3), unconditionally.

    ``local_node_location`` is the local node's location (its label or annotation, not
    the segment key). The caller decides whether they apply at all: Kilo adds them only
    when ``--local`` is set, the strategy is not ``never`` and the encapsulator is IPIP or
    Cilium (Flannel and the no-op encapsulator have no rules). :func:`plan_rules` makes
    that decision.
    """
    return ipip_rules(ipip_allowed_sources(t, local_node_location), protocol_name=protocol_name)


def encapsulator_has_rules(compatibility: Compatibility, *, has_private_ip: bool = True) -> bool:
    """Whether the encapsulator chosen for ``compatibility`` contributes iptables rules.

    Kilo replaces the encapsulator with a no-op one (no rules) when the agent found no
    private IP at startup.
    """
    return has_private_ip and compatibility in (Compatibility.NONE, Compatibility.CILIUM)


def combine(enc: RuleSet, topo: RuleSet) -> RuleSet:
    """The set submitted each apply: encapsulation rules first, in both lists (§5.4)."""
    return enc + topo


def plan_rules(
    t: Topology,
    *,
    cni: bool,
    forward: bool,
    local: bool,
    encapsulation: Encapsulation,
    compatibility: Compatibility,
    local_location: str,
    has_private_ip: bool = True,
    protocol_name: str = IPIP_PROTOCOL,
) -> RuleSet:
    """Steps 10-11 of Kilo's apply: the topology rules, preceded by the encapsulation rules.

    ``cni``, ``forward``, ``local``, ``encapsulation`` and ``compatibility`` are the flags
    ``--cni``, ``--iptables-forward-rules``, ``--local``, ``--encapsulate`` and
    ``--compatibility``; ``local_location`` is the local node's location;
    ``has_private_ip`` is false when the agent runs without a private IP (no-op
    encapsulator).
    """
    topo = topology_rules(t, cni=cni, forward=forward)
    if (
        local
        and encapsulation != Encapsulation.NEVER
        and encapsulator_has_rules(compatibility, has_private_ip=has_private_ip)
    ):
        return combine(encapsulation_rules(t, local_location, protocol_name=protocol_name), topo)
    return topo
