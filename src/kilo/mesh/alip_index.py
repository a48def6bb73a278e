"""Kilo's allowed-location-IP filter (reference §2.1), answered from integer indexes.

Pure. The topology (``kilo.mesh.topology``) filters each segment's allowed-location IPs
in Kilo's order with :class:`AllowedLocationIPFilter`; its segment memo keeps a
:class:`MaximalIndex` across builds to prove, without running the filter, that it would
drop nothing. Both count CIDRs in a :class:`CidrIndex` instead of comparing every pair
(Kilo's comparison is quadratic: minutes per node for a 5000-node full mesh).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Interface, IPv6Interface
from typing import Protocol

from kilo.mesh.ip import IPInterface, IPNetwork
from kilo.mesh.model import Peer


class Draft(Protocol):
    """A segment being filtered: its allowed IPs grow (its WireGuard /32) as it is built."""

    @property
    def allowed_ips(self) -> Sequence[IPInterface | IPNetwork]: ...

    @property
    def allowed_location_ips(self) -> Sequence[IPInterface]: ...


class Indexed(Draft, Protocol):
    """A built segment, known by its segment key."""

    @property
    def location(self) -> str: ...


class AllowedLocationIPFilter:
    """Kilo's order-dependent allowed-location-IP filter (reference §2.1), from indexes.

    Kilo compares each allowed-location IP with every allowed IP and allowed-location IP
    of every segment, which is quadratic: with one per node, a 5000-node full mesh took
    minutes per node. The same questions are answered here from ``CidrIndex`` lookups,
    with identical results.

    Segment ``k`` is filtered against the mesh as it is at that moment: segments before
    ``k`` are filtered and carry their WireGuard /32, later ones are unfiltered and have
    none yet. The indexes follow that state: ``filter(k)`` first indexes the allowed IPs
    segment ``k`` gained since (its WireGuard /32) and at the end forgets the
    allowed-location IPs it dropped.
    """

    def __init__(self, drafts: Sequence[Draft], peers: Sequence[Peer]) -> None:
        self._drafts = drafts
        self._allowed_ips = CidrIndex(span_of(a) for d in drafts for a in d.allowed_ips)
        self._indexed = [len(d.allowed_ips) for d in drafts]
        self._spans = [[span_of(a) for a in d.allowed_location_ips] for d in drafts]
        self._location_ips = CidrIndex(span for spans in self._spans for span in spans)
        self._peer_ips = CidrIndex(span_of(a) for p in peers for a in p.allowed_ips)

    def filter(self, index: int) -> list[IPInterface]:
        draft = self._drafts[index]
        for cidr in draft.allowed_ips[self._indexed[index] :]:
            self._allowed_ips.add(span_of(cidr))
        self._indexed[index] = len(draft.allowed_ips)
        spans = self._spans[index]
        if not spans:
            return []
        # The segment's own allowed-location IPs do not count against it: they are
        # subtracted from the counts of the (global) index. One of them (the usual case)
        # lies within its own range and its network contains its own address: 1 and 1.
        own = CidrIndex(spans) if len(spans) > 1 else None
        kept: list[IPInterface] = []
        dropped: list[Span] = []
        for alip, span in zip(draft.allowed_location_ips, spans, strict=True):
            if clashes(span, own, self._location_ips, self._allowed_ips, self._peer_ips):
                dropped.append(span)
            else:
                kept.append(alip)
        for span in dropped:
            self._location_ips.remove(span)
        return kept


def clashes(
    span: Span,
    own: CidrIndex | None,
    location_ips: CidrIndex,
    allowed_ips: CidrIndex,
    peer_ips: CidrIndex,
) -> bool:
    """Whether the allowed-location IP ``span`` of a segment (whose own ones, if more
    than one, are ``own``) clashes with the mesh the indexes hold (Kilo's filter)."""
    version, host_bits, address = span
    first = address >> host_bits << host_bits
    last = first | ((1 << host_bits) - 1)
    # It intersects another segment's allowed-location IP.
    own_within = 1 if own is None else own.within(version, first, last)
    if location_ips.within(version, first, last) > own_within:
        return True
    own_containing = 1 if own is None else own.containing(version, address)
    if location_ips.containing(version, address) > own_containing:
        return True
    # An allowed IP of any segment, its own included, contains its address.
    if allowed_ips.containing(version, address):
        return True
    # It intersects a peer's allowed IP.
    return bool(peer_ips.within(version, first, last) or peer_ips.containing(version, address))


# A CIDR as integers: IP version, number of host bits, address as stored.
Span = tuple[int, int, int]


def span_of(cidr: IPInterface | IPNetwork) -> Span:
    # int() of an interface is its address: ``.ip`` would build an address object.
    if isinstance(cidr, IPv4Interface | IPv6Interface):
        return cidr.version, cidr.max_prefixlen - cidr.network.prefixlen, int(cidr)
    return cidr.version, cidr.max_prefixlen - cidr.prefixlen, int(cidr.network_address)


class CidrIndex:
    """A multiset of CIDRs that counts, without a scan, the two halves of ``intersect``.

    * ``containing``: the CIDRs whose network contains an address (Go's
      ``IPNet.Contains``). Networks are kept per (IP version, host bits), so this is one
      dict lookup per prefix length present.
    * ``within``: the CIDRs whose address as stored lies in a range: a bisect on the
      sorted stored addresses.

    Different IP versions never match, as in ``ip.contains``.
    """

    def __init__(self, spans: Iterable[Span] = ()) -> None:
        # version -> host bits -> (address >> host bits) -> how many CIDRs
        self._networks: dict[int, dict[int, dict[int, int]]] = {4: {}, 6: {}}
        # version -> sorted stored addresses
        self._addresses: dict[int, list[int]] = {4: [], 6: []}
        for span in spans:
            self._count(span, 1)
            self._addresses[span[0]].append(span[2])
        self._addresses[4].sort()
        self._addresses[6].sort()

    def add(self, span: Span) -> None:
        self._count(span, 1)
        bisect.insort(self._addresses[span[0]], span[2])

    def remove(self, span: Span) -> None:
        self._count(span, -1)
        addresses = self._addresses[span[0]]
        del addresses[bisect.bisect_left(addresses, span[2])]

    def containing(self, version: int, address: int) -> int:
        count = 0
        for host_bits, networks in self._networks[version].items():
            count += networks.get(address >> host_bits, 0)
        return count

    def within(self, version: int, first: int, last: int) -> int:
        addresses = self._addresses[version]
        return bisect.bisect_right(addresses, last) - bisect.bisect_left(addresses, first)

    def _count(self, span: Span, delta: int) -> None:
        version, host_bits, address = span
        by_host_bits = self._networks[version]
        networks = by_host_bits.setdefault(host_bits, {})
        key = address >> host_bits
        count = networks.get(key, 0) + delta
        if count:
            networks[key] = count
            return
        del networks[key]
        if not networks:
            del by_host_bits[host_bits]


class MaximalIndex:
    """Every allowed IP and allowed-location IP of a topology's (unfiltered) segments, kept
    across builds and updated per segment that changed (see ``topology._SegmentMemo``)."""

    def __init__(self) -> None:
        self._allowed_ips = CidrIndex()
        self._location_ips = CidrIndex()
        # segment key -> (segment, its allowed IPs' spans, its allowed-location IPs' spans)
        self._indexed: dict[str, tuple[Indexed, list[Span], list[Span]]] = {}

    def update(self, segments: Sequence[Indexed], peers: Sequence[Peer]) -> bool:
        """Index ``segments`` instead of the previous ones; whether an allowed-location IP
        of them clashes with anything (then the filter may drop it)."""
        indexed = self._indexed
        current = {s.location: s for s in segments}
        stale = [k for k, (s, _, _) in indexed.items() if current.get(k) is not s]
        if not indexed or len(stale) > len(indexed) // 2:
            # The first build, or most segments changed (another perspective, granularity
            # or subnet): sorted once, rather than one insertion or removal at a time.
            indexed.clear()
            stale = []
            for segment in segments:
                spans = [span_of(a) for a in segment.allowed_ips]
                alips = [span_of(a) for a in segment.allowed_location_ips]
                indexed[segment.location] = (segment, spans, alips)
            self._allowed_ips = CidrIndex(s for _, spans, _ in indexed.values() for s in spans)
            self._location_ips = CidrIndex(s for _, _, spans in indexed.values() for s in spans)
        for location in stale:
            _, allowed, alips = indexed.pop(location)
            for span in allowed:
                self._allowed_ips.remove(span)
            for span in alips:
                self._location_ips.remove(span)
        for location, segment in current.items():
            if location in indexed:
                continue
            allowed = [span_of(a) for a in segment.allowed_ips]
            alips = [span_of(a) for a in segment.allowed_location_ips]
            for span in allowed:
                self._allowed_ips.add(span)
            for span in alips:
                self._location_ips.add(span)
            indexed[location] = (segment, allowed, alips)
        peer_ips = CidrIndex(span_of(a) for p in peers for a in p.allowed_ips)
        for _, _, spans in indexed.values():
            if not spans:
                continue
            own = CidrIndex(spans) if len(spans) > 1 else None
            for span in spans:
                if clashes(span, own, self._location_ips, self._allowed_ips, peer_ips):
                    return True
        return False
