"""Lease-based leader failover (``kg --leader-election=lease``): who leads a location.

Pure. No I/O, no clock: every function takes ``now`` (seconds on the caller's monotonic
or wall clock, the same clock for every value passed in). The Lease I/O is
``kilo.adapters.leases``; the health probe and the schedule are ``kilo.agent.leadership``.

The rules, chosen so that every node of the cluster derives the same leader from the same
objects, and so that a healthy holder is never displaced (no flapping):

* A location's leader is the holder of its valid Lease, when the holder is one of its
  ready nodes. A Lease is valid for its duration after it was last *observed* to change
  (client-go's rule): no node compares its clock with another's. A renewal observed late
  counts from when it would have been seen on time, by up to ``LATE_CAP`` (``observe``).
* Without a valid Lease, Kilo's rule decides (:func:`kilo.mesh.topology.find_leader`),
  except that a holder whose Lease lapsed goes last: lapsing means it stopped renewing,
  i.e. it died or found its own data plane broken.
* Candidates take a free or lapsed Lease in that order, the ``rank``-th one
  ``rank * STAGGER`` seconds after it lapsed, so the next node by Kilo's rule (the
  standby) wins without a race and the others only step in if it does not.
* The holder renews every ``RENEW_PERIOD`` while healthy, and releases (shortens its
  Lease to ``RELEASED_DURATION``) when its probe fails; a fresh holder is healthy for
  ``GRACE`` seconds, the time to program its peers and complete its first handshakes.
* A Lease of a location without a ready node (removed, or all of it down) is deleted once
  it has been lapsed for ``STALE_AFTER`` seconds, by one node whoever held it: the holder
  of the valid Lease of the first location by name (:func:`stale_leases`).
"""

from __future__ import annotations

import datetime
import enum
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from kilo.mesh import ip as ipmod
from kilo.mesh.model import Diagnostic, Node
from kilo.mesh.text import short_repr, shorten
from kilo.mesh.topology import LOCATION_PREFIX

# The node annotation a kg with the option writes: how every node can tell that no node of
# the cluster derives leaders by Kilo's rule alone (Go Kilo nodes lack it).
ANNOTATION = "kilo.squat.ai/leader-election"
MODE = "lease"

LEASE_DURATION = 6  # seconds: how long a holder that stops renewing keeps the lead
RENEW_PERIOD = 2.0  # seconds between renewals: three chances within one duration
RELEASED_DURATION = 1  # seconds: a release lets the next candidate in this soon
STAGGER = 1.0  # seconds between candidates of successive ranks
GRACE = 5.0  # seconds a fresh holder is healthy before its probe counts
SETTLE = 10.0  # seconds a remote leader is not judged by after it changed (handshakes)
LATE_CAP = 2.0  # seconds a renewal seen late is counted earlier, at most (``observe``)
LATE_WINDOW = 8  # renewals whose smallest delay is "on time"
STALE_AFTER = 10 * LEASE_DURATION  # seconds a lapsed Lease of a location without nodes stays

NAME_PREFIX = "kilo-leader-"
_NAME_PART = 40  # characters of the location kept in the name, for people reading it
_UNSAFE = re.compile(r"[^a-z0-9-]+")
_MAX_HOLDER = 253  # a holder is a node name: a DNS-1123 subdomain


def lease_name(location: str) -> str:
    """The Lease of ``location``: a valid object name (DNS-1123 subdomain, at most 70
    characters) for any text; the hash keeps locations that read alike apart."""
    digest = hashlib.sha256(location.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    readable = _UNSAFE.sub("-", location.lower())[:_NAME_PART].strip("-")
    return f"{NAME_PREFIX}{readable}-{digest}" if readable else f"{NAME_PREFIX}{digest}"


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseRecord:
    """A location's Lease as this node observed it."""

    holder: str  # empty: nobody
    duration: float  # seconds
    observed: float  # when this node saw the holder, renewal or duration change (on time)
    held_since: float  # when this node saw the holder change to ``holder``
    delays: tuple[float, ...] = ()  # of the holder's last renewals: seen here - renewTime

    def valid(self, now: float) -> bool:
        return bool(self.holder) and now < self.observed + self.duration

    @property
    def expires(self) -> float:
        return self.observed + self.duration


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseSpec:
    """The fields of a Lease object this module reads, checked."""

    holder: str
    duration: float
    renewed: str  # the renewTime text: compared, never parsed (no clock comparison)


def parse_lease(obj: Mapping[str, object]) -> tuple[LeaseSpec | None, tuple[Diagnostic, ...]]:
    """The spec of a Lease object from the API, or ``None`` and why: a malformed Lease
    costs only itself (its location falls back to Kilo's rule)."""
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    shown = shorten(name, 80) if isinstance(name, str) else "?"
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        return None, (_problem(shown, "spec", spec, "is not an object"),)
    holder = spec.get("holderIdentity") or ""
    if not isinstance(holder, str) or len(holder) > _MAX_HOLDER:
        return None, (_problem(shown, "spec.holderIdentity", holder, "is not a node name"),)
    duration = spec.get("leaseDurationSeconds")
    if isinstance(duration, bool) or not isinstance(duration, int) or not 0 < duration <= 3600:
        return None, (
            _problem(shown, "spec.leaseDurationSeconds", duration, "is not 1..3600 seconds"),
        )
    renewed = spec.get("renewTime") or ""
    if not isinstance(renewed, str):
        return None, (_problem(shown, "spec.renewTime", renewed, "is not a time"),)
    return LeaseSpec(holder=holder, duration=float(duration), renewed=shorten(renewed, 64)), ()


def _problem(name: str, field: str, value: object, problem: str) -> Diagnostic:
    return Diagnostic(
        kind="lease", name=name, field=field, value=short_repr(value, 80), problem=problem
    )


def renewed_at(text: str) -> float | None:
    """A renewTime (RFC 3339, on the holder's clock) as seconds, or None. Only differences
    between two renewTimes of one holder are used: never compared with this node's clock."""
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def observe(
    previous: LeaseRecord | None, previous_spec: LeaseSpec | None, spec: LeaseSpec, now: float
) -> LeaseRecord:
    """The record after seeing ``spec`` at ``now``: the clock restarts only on a change.

    A renewal seen late (a slow write, a slow watch: the API server under load) restarts
    the clock as if it had been seen on time, by up to ``LATE_CAP`` seconds: "on time" is
    the holder's renewTime plus the smallest delay (``now - renewTime``) of its last
    ``LATE_WINDOW`` renewals seen here. The difference of two delays cancels the offset
    between the two clocks, so no clock is compared with another. Without it, a holder
    that dies just after a renewal the API server took seconds to publish kept the lead
    for those seconds more than the Lease's duration (the lost-uplink case once took
    10.8 s instead of ~6 s)."""
    if previous is not None and previous_spec == spec:
        return previous
    held_since = now
    delays: tuple[float, ...] = ()
    same = previous is not None and previous.holder == spec.holder
    if previous is not None and same:
        held_since = previous.held_since
        delays = previous.delays
    late = 0.0
    at = renewed_at(spec.renewed)
    if at is not None:
        delay = now - at
        if delays:
            late = min(max(0.0, delay - min(delays)), LATE_CAP)
        delays = (*delays, delay)[-LATE_WINDOW:]
    return LeaseRecord(
        holder=spec.holder,
        duration=spec.duration,
        observed=now - late,
        held_since=held_since,
        delays=delays,
    )


def _rank(node: Node) -> tuple[int, str]:
    """Kilo's leader preference as a sort key: annotated and public, annotated, public,
    then by name (the first of this order is ``find_leader``'s choice)."""
    public = ipmod.is_public(None if node.endpoint is None else node.endpoint.ip)
    if node.leader:
        return (0 if public else 1), node.name
    return (2 if public else 3), node.name


def candidates(members: Iterable[Node], lapsed: str = "") -> list[str]:
    """The order in which ``members`` take a free Lease: Kilo's, with ``lapsed`` last."""
    order = [n.name for n in sorted(members, key=_rank)]
    if lapsed in order:
        order.remove(lapsed)
        order.append(lapsed)
    return order


def leader(members: Sequence[Node], lease: LeaseRecord | None, now: float) -> str:
    """The location's leader given its ready ``members`` (at least one)."""
    names = {n.name for n in members}
    if lease is not None and lease.valid(now) and lease.holder in names:
        return lease.holder
    lapsed = lease.holder if lease is not None else ""
    return candidates(members, lapsed)[0]


class Step(enum.Enum):
    WAIT = "wait"
    ACQUIRE = "acquire"  # create the Lease, or take over a free or lapsed one
    RENEW = "renew"
    RELEASE = "release"


@dataclass(frozen=True, slots=True)
class Decision:
    step: Step
    at: float  # when to decide again (for WAIT), else ``now``


def decide(
    *,
    hostname: str,
    members: Sequence[Node],
    lease: LeaseRecord | None,
    renewed: float | None,
    healthy: bool,
    now: float,
) -> Decision:
    """What ``hostname`` does with its location's Lease at ``now``.

    ``renewed``: when this node last wrote the Lease as its holder (None: never);
    ``healthy``: the verdict of its probe of the data plane (ignored during ``GRACE``).
    """
    if lease is not None and lease.valid(now):
        if lease.holder != hostname:
            if lease.holder in {n.name for n in members}:
                return Decision(Step.WAIT, lease.expires)
            # A holder that is not a ready node leads nobody: treat its Lease as lapsed.
        elif not healthy and now >= lease.held_since + GRACE:
            if lease.duration <= RELEASED_DURATION:
                return Decision(Step.WAIT, lease.expires)  # released already
            return Decision(Step.RELEASE, now)
        else:
            due = (renewed if renewed is not None else lease.observed) + RENEW_PERIOD
            return Decision(Step.RENEW, now) if now >= due else Decision(Step.WAIT, due)
    lapsed = lease.holder if lease is not None else ""
    order = candidates(members, lapsed)
    if hostname not in order:
        return Decision(Step.WAIT, now + RENEW_PERIOD)
    # Free since it lapsed; a valid Lease of a node that is not ready, since it was written;
    # a Lease never seen (the agent records an absent one as holder "") since now.
    if lease is None:
        free_since = now
    elif lease.valid(now):
        free_since = lease.observed
    else:
        free_since = min(lease.expires, now)
    start = free_since + order.index(hostname) * STAGGER
    return Decision(Step.ACQUIRE, now) if now >= start else Decision(Step.WAIT, start)


def wireguard_healthy(
    answers: Mapping[tuple[str, str], bool],
    since: Mapping[tuple[str, str], float],
    *,
    answered_before: bool,
    now: float,
) -> bool:
    """The WireGuard half of a holder's probe, from whether each other location's leader
    (WireGuard IP, node) answered, and since when that pair was programmed.

    Only leaders programmed ``SETTLE`` seconds ago count (a fresh one may still be
    handshaking), and only with two or more of them. With exactly one other location the
    evidence is symmetric: when the tunnel between the two leaders breaks, whichever end
    broke it, each sees "the other does not answer", the same observation. Judging it
    would release both Leases; the broken location's standby would take over (fine), but
    so would the healthy location's, whose every new holder fails the same way after its
    ``GRACE`` while the other end stays broken: its lead would rotate through all its
    nodes, each turn a few seconds of outage for it, for a fault that is not its own. The
    broken end's own Lease moves its lead instead (an uplink loss that takes the API with
    it stops the renewals; a broken forward path fails the forwarding probe). What this
    leaves uncaught with two locations: a leader that keeps its API and its forward path
    but loses only WireGuard (UDP blocked on its uplink). With two or more, the verdict is
    "none answers", which one remote location's fault cannot produce. A holder that never
    had an answer is not judged: a firewall that drops the probe, or a world that no node
    of this location could reach either, must not make the lead rotate.
    """
    settled = [target for target in answers if now - since.get(target, now) >= SETTLE]
    if len(settled) < 2 or not answered_before:
        return True
    return any(answers[target] for target in settled)


class Forwarded(enum.Enum):
    """What one forwarding probe saw (``kilo.agent.leadership`` explains the probe): the
    echo reply of a node of the location, addressed to another location's leader, arriving
    at this node and then leaving it on the WireGuard interface."""

    FORWARDED = "forwarded"  # it arrived and left on the WireGuard interface
    DROPPED = "dropped"  # it arrived and did not leave: this node's forward path drops
    UNANSWERED = "unanswered"  # it never arrived: no verdict (the member's fault, or its
    # firewall's, as likely as this node's)


def forwarding_verdict(*, arrived: bool, left: bool) -> Forwarded:
    """Only a reply that reached this node and was not forwarded blames this node."""
    if left:
        return Forwarded.FORWARDED
    return Forwarded.DROPPED if arrived else Forwarded.UNANSWERED


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardProbe:
    """One forwarding probe: an echo request to ``member`` (a node of this location) that
    claims to come from ``remote`` (another location's leader's WireGuard IP), so that the
    member's reply crosses this node's forward path, as the location's traffic does."""

    member: ipmod.IPAddress
    remote: ipmod.IPAddress


def forward_probe(
    *,
    hostname: str,
    members: Sequence[Node],
    remotes: Sequence[ipmod.IPAddress],
    round: int,
) -> ForwardProbe | None:
    """The pair probed in round ``round``: the other members in turn (one that does not
    answer only costs its rounds), with the first other leader of the same family. None:
    no other member (nobody forwards through this node) or no other location (nothing to
    forward to), or IPv6 only (the probe builds IPv4 packets)."""
    others = sorted(
        (n.internal_ip.ip, n.name)
        for n in members
        if n.name != hostname and n.internal_ip is not None and n.internal_ip.version == 4
    )
    remote = next((ip for ip in remotes if ip.version == 4), None)
    if not others or remote is None:
        return None
    return ForwardProbe(member=others[round % len(others)][0], remote=remote)


def non_participants(annotations: Mapping[str, str | None], ready: Iterable[str]) -> list[str]:
    """The ready nodes that do not take part (no ``ANNOTATION=lease``), sorted: while there
    is one, every node derives leaders by Kilo's rule alone, as a Go Kilo node does."""
    return sorted(name for name in ready if annotations.get(name) != MODE)


def overrides(
    nodes: Sequence[Node],
    leases: Mapping[str, LeaseRecord],
    now: float,
) -> dict[str, str]:
    """Segment key (``location:<name>``) -> leader for every location of ready ``nodes``
    with an internal IP (the others are segments of one node), given the Leases by name."""
    groups: dict[str, list[Node]] = {}
    for node in nodes:
        if node.internal_ip is not None:
            groups.setdefault(node.location, []).append(node)
    return {
        LOCATION_PREFIX + location: leader(members, leases.get(lease_name(location)), now)
        for location, members in groups.items()
    }


def stale_leases(
    *,
    hostname: str,
    nodes: Sequence[Node],
    leases: Mapping[str, LeaseRecord],
    ours: Iterable[str],
    now: float,
) -> list[str]:
    """The Leases ``hostname`` deletes now, sorted: of ``ours`` (the Leases kg wrote: name
    and labels), those of no location of the ready ``nodes`` that lapsed ``STALE_AFTER``
    seconds ago or more. Only the holder of the valid Lease of the first location by name
    deletes, so that one node does, whichever held the stale Lease (its holder is gone
    with its location), and only a node that is itself healthy and in the election. A
    location that comes back takes a new Lease as it took the first."""
    groups: dict[str, list[Node]] = {}
    for node in nodes:
        if node.internal_ip is not None:
            groups.setdefault(node.location, []).append(node)
    if not groups:
        return []
    first = min(groups)
    own = leases.get(lease_name(first))
    if own is None or not own.valid(now) or own.holder != hostname:
        return []
    if leader(groups[first], own, now) != hostname:
        return []
    live = {lease_name(location) for location in groups}
    return sorted(
        name
        for name in set(ours)
        if name not in live
        and (record := leases.get(name)) is not None
        and now >= record.expires + STALE_AFTER
    )


def participants(node_objects: Iterable[Mapping[str, object]]) -> dict[str, str | None]:
    """Node name -> its ``ANNOTATION`` value, from Node objects as the API returns them."""
    found: dict[str, str | None] = {}
    for obj in node_objects:
        metadata = obj.get("metadata")
        if not isinstance(metadata, Mapping) or not isinstance(metadata.get("name"), str):
            continue
        annotations = metadata.get("annotations")
        value = annotations.get(ANNOTATION) if isinstance(annotations, Mapping) else None
        found[str(metadata["name"])] = value if isinstance(value, str) else None
    return found


def snapshot_leaders(
    nodes: Sequence[Node],
    annotations: Mapping[str, str | None],
    leases: Iterable[Mapping[str, object]],
    now: float,
) -> dict[str, str] | None:
    """The leaders a one-time reader (``kgctl``) derives from Lease objects read once, or
    None when Kilo's rule decides (a ready node does not take part, as for kg).

    Unlike kg, which times a Lease from when it saw it change, a one-time reader has seen
    nothing change: a Lease counts as valid until its ``renewTime`` plus its duration on
    ``now``, the reader's wall clock, i.e. it compares the reader's clock with the holder's
    (a skew of a few seconds shows a lapsed Lease as valid, or the reverse, for that
    long)."""
    if non_participants(annotations, [n.name for n in nodes]):
        return None
    records: dict[str, LeaseRecord] = {}
    for obj in leases:
        spec, problems = parse_lease(obj)
        metadata = obj.get("metadata")
        name = metadata.get("name") if isinstance(metadata, Mapping) else None
        at = renewed_at(spec.renewed) if spec is not None else None
        if spec is None or problems or at is None or not isinstance(name, str):
            continue
        records[name] = LeaseRecord(
            holder=spec.holder, duration=spec.duration, observed=at, held_since=at
        )
    return overrides(nodes, records, now)
