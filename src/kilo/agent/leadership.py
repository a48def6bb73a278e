"""``kg --leader-election=lease``: the Lease of the local location, and the leaders of all.

Composition. Lease events (the ``leases`` Informer) become records (``kilo.mesh.leadership``,
which decides everything); a loop carries out the local node's decision through the
:class:`LeaseWriterPort`, wakes the reconcile loop whenever the leader of any location
changes (a write, an event, or a Lease lapsing with no event at all), and, while this node
holds its Lease, probes its data plane every ``PROBE_PERIOD``:

* WireGuard: a TCP connection to the WireGuard IP of every other location's leader, over
  ``kilo0``. Any answer (accepted or refused) needs a live WireGuard session, i.e. a
  handshake within the last 180 s; the probe is the traffic that keeps the session fresh.
  A holder that has never had an answer (a firewall that drops, or every other location
  down) is not judged by it, so that a world that is unreachable from every node of the
  location does not make the lead rotate among them. With only one other location it is
  not judged either (:func:`kilo.mesh.leadership.wireguard_healthy` says why).
* forwarding, the kernel's switch: ``net.ipv4.ip_forward`` on.
* forwarding, a packet through this node's forward path (squat/kilo#489: a leader whose
  FORWARD chain drops, or whose forwarding is broken otherwise, blackholes every other node
  of its location while kg and the API look healthy). The leader sends an ICMP echo request
  to another node of its location (``member``, in turn) whose source address is another
  location's leader's WireGuard IP (``remote``). The member answers to ``remote`` through
  its route to other locations, which is the leader: the reply enters the leader from the
  location's network (or its IPIP tunnel), crosses its FORWARD chain, routing and
  POSTROUTING, and leaves on ``kilo0``, exactly the path of the location's traffic (and of
  Kilo's ``forward packets from private IPs`` rule). A packet socket with a BPF filter that
  passes only this probe's replies sees both ends: the reply arriving and not leaving is a
  failure of this node (``DROPPED``); a reply that never arrives blames nobody (the member
  may be gone, may drop pings, or may filter by source; strict ``rp_filter`` on a member
  whose route to ``remote`` is the IPIP tunnel drops the request). The remote leader gets
  one echo reply it did not ask for per probe and drops it; nothing is created on the node
  (two sockets per probe, ``CAP_NET_RAW``, which kg has). Chosen over a probe namespace or a
  veth pair of the agent's own (more privileges, objects to clean up after a crash, and a
  path that is not the location's) and over asking the members to probe (their verdicts
  would have to travel to the holder). IPv4 only: an IPv6-only location is judged by the
  switch alone. Like the WireGuard half, it judges a node only once a probe of this kg
  went through: a host whose firewall passes pod traffic but not node addresses (a
  FORWARD policy DROP without ``--iptables-forward-rules``) would otherwise make the lead
  rotate among nodes that all forward the pods' traffic.

``FAILURES`` failed probes in a row make the holder release its Lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Protocol

from kilo.adapters import forwardprobe
from kilo.agent import logs
from kilo.errors import KiloError
from kilo.mesh import leadership
from kilo.mesh.events import Event, EventType, warning_line
from kilo.mesh.ip import IPAddress
from kilo.mesh.model import Node
from kilo.mesh.text import shorten

PROBE_PERIOD = 1.0  # seconds between probes of the holder's data plane
PROBE_TIMEOUT = 1.0  # seconds a probe connection may take
PROBE_PORT = 1107  # kg's default --listen port: answered, or refused, by the remote node
FORWARD_TIMEOUT = 0.5  # seconds the forwarding probe watches for the member's reply
FAILURES = 2  # failed probes in a row that make the holder release
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
WRITE_TIMEOUT = 5.0
SWEEP_PERIOD = 10.0  # seconds between looks for stale Leases (kilo.mesh.leadership)

log = logs.get("kilo")


class LeaseWriterPort(Protocol):
    async def write(
        self,
        name: str,
        *,
        holder: str,
        duration: int,
        observed: Mapping[str, Any] | None,
    ) -> bool: ...

    async def delete(self, name: str, *, observed: Mapping[str, Any]) -> bool: ...


def answers(address: IPAddress, port: int = PROBE_PORT, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether ``address`` answers a TCP connection attempt at all (accepting or refusing)."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((str(address), port))
        except ConnectionRefusedError:
            return True
        except OSError as exc:
            return exc.errno == errno.ECONNREFUSED
    return True


def forwards_through(
    probe: leadership.ForwardProbe, *, interface: str, timeout: float = FORWARD_TIMEOUT
) -> leadership.Forwarded:
    """The forwarding probe (module docstring); no verdict when it cannot run."""
    if not isinstance(probe.member, IPv4Address) or not isinstance(probe.remote, IPv4Address):
        return leadership.Forwarded.UNANSWERED
    try:
        arrived, left = forwardprobe.send_and_watch(
            probe.member, probe.remote, interface=interface, timeout=timeout
        )
    except OSError as exc:
        log.debug("the forwarding probe cannot run", fields={"error": str(exc)})
        return leadership.Forwarded.UNANSWERED
    return leadership.forwarding_verdict(arrived=arrived, left=left)


def forwarding(path: Path = IP_FORWARD) -> bool:
    try:
        return path.read_text().strip() == "1"
    except OSError:
        return False


class Election:
    """The Leases as this node sees them, and what it does about its own location's."""

    def __init__(
        self,
        *,
        hostname: str,
        writer: LeaseWriterPort,
        on_leaders_changed: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        reach: Callable[[IPAddress], bool] = answers,
        can_forward: Callable[[], bool] = forwarding,
        is_ours: Callable[[Mapping[str, Any]], bool] = lambda obj: False,
        interface: str = "kilo0",
        forward: Callable[[leadership.ForwardProbe], leadership.Forwarded] | None = None,
    ) -> None:
        self.hostname = hostname
        self.writer = writer
        self.on_leaders_changed = on_leaders_changed
        self.clock = clock
        self.wall = wall  # for the nodes' last-seen (Kilo's readiness), which is wall time
        self.reach = reach
        self.can_forward = can_forward
        self.is_ours = is_ours
        self._swept = -SWEEP_PERIOD
        self.forward = forward or (lambda probe: forwards_through(probe, interface=interface))
        self.records: dict[str, leadership.LeaseRecord] = {}
        self.specs: dict[str, leadership.LeaseSpec] = {}
        self.objects: dict[str, dict[str, Any]] = {}
        self.annotations: dict[str, str | None] = {}  # node -> its ANNOTATION
        self.nodes: dict[str, Node] = {}  # set by the agent: every translated node
        self.location: str | None = None  # the local location, while it has a segment
        # The other locations' leaders: (WireGuard IP, node), and since when each is so.
        self.targets: tuple[tuple[IPAddress, str], ...] = ()
        self._since: dict[tuple[str, str], float] = {}
        self.renewed: float | None = None
        self.failures = 0
        self.answered = False  # whether a probe got an answer since this node took the lead
        self.forwarded = False  # whether a forwarding probe went through since kg started
        self.rounds = 0
        self.listed = False  # whether the first list of Leases is in
        self.writes = 0
        self._wake = asyncio.Event()
        self._kick = asyncio.Event()
        self._absent_since: dict[str, float] = {}
        self._derived: dict[str, str] | None = None
        self._excluded: list[str] = []

    # -- inputs -----------------------------------------------------------------------------

    def on_node_event(self, event: Event) -> None:
        if event.type == EventType.DELETED:
            self.annotations.pop(event.name, None)
        else:
            metadata = event.obj.get("metadata")
            annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
            value = (
                annotations.get(leadership.ANNOTATION) if isinstance(annotations, dict) else None
            )
            self.annotations[event.name] = value if isinstance(value, str) else None
        self._wake.set()

    def on_lease_event(self, event: Event) -> None:
        name = event.name
        if event.type == EventType.DELETED:
            self.records.pop(name, None)
            self.specs.pop(name, None)
            self.objects.pop(name, None)
            self._wake.set()
            return
        spec, problems = leadership.parse_lease(event.obj)
        for problem in problems:
            message, fields = warning_line(problem)
            log.warning(message + "; its location falls back to Kilo's rule", fields=fields)
        self.objects[name] = event.obj
        if spec is None:
            self.records.pop(name, None)
            self.specs.pop(name, None)
        else:
            self.records[name] = leadership.observe(
                self.records.get(name), self.specs.get(name), spec, self.clock()
            )
            self.specs[name] = spec
        self._wake.set()

    def on_listed(self) -> None:
        self.listed = True
        self._wake.set()

    def set_topology(self, location: str | None, targets: Sequence[tuple[IPAddress, str]]) -> None:
        self.location = location
        if tuple(targets) != self.targets:
            # A new leader (or new peers): probe at once. The probe's packets make this side
            # start the WireGuard handshakes; otherwise a remote leader that switched to this
            # node first, and whose first handshake arrived before this node was programmed,
            # waits out WireGuard's 5 s retry (REKEY_TIMEOUT) before traffic resumes.
            self._kick.set()
            now = self.clock()
            self._since = {
                key: self._since.get(key, now) for key in ((str(ip), n) for ip, n in targets)
            }
        self.targets = tuple(targets)

    # -- outputs ----------------------------------------------------------------------------

    def _ready(self) -> list[Node]:
        wall = int(self.wall())
        return [node for node in self.nodes.values() if node.is_ready(wall)]

    def participants_ready(self) -> bool:
        """No ready node derives leaders by Kilo's rule alone (warned about when it changes)."""
        ready = [node.name for node in self._ready()]
        excluded = leadership.non_participants(self.annotations, ready)
        if excluded != self._excluded:
            self._excluded = excluded
            if excluded:
                shown = [shorten(n, 63) for n in excluded[:10]]
                log.warning(
                    "lease leader election is suspended: ready nodes without "
                    f"{leadership.ANNOTATION}={leadership.MODE} (Go Kilo, or kg without "
                    "--leader-election=lease) pick leaders by Kilo's rule, so every node does",
                    fields={"nodes": shown, "count": str(len(excluded))},
                )
            else:
                log.info("every ready node takes part in lease leader election")
        return not excluded

    def leaders(self) -> Callable[[Sequence[Node]], dict[str, str]] | None:
        """The leader override for the next apply, from a snapshot (it runs in a thread)."""
        now = self.clock()
        if not self.listed or not self.participants_ready():
            return None
        records = dict(self.records)
        return lambda ready: leadership.overrides(ready, records, now)

    # -- the loop ---------------------------------------------------------------------------

    def _record(self, name: str, now: float) -> leadership.LeaseRecord:
        record = self.records.get(name)
        if record is not None:
            return record
        since = self._absent_since.setdefault(name, now)
        return leadership.LeaseRecord(holder="", duration=0, observed=since, held_since=since)

    def _members(self, location: str) -> list[Node]:
        return [n for n in self._ready() if n.location == location and n.internal_ip is not None]

    async def _act(self, now: float) -> float:
        """One decision for the local location; returns when to decide again."""
        location = self.location
        if location is None or not self.listed or not self.participants_ready():
            return now + leadership.RENEW_PERIOD
        members = self._members(location)
        if self.hostname not in {n.name for n in members}:
            return now + leadership.RENEW_PERIOD
        name = leadership.lease_name(location)
        record = self._record(name, now)
        decision = leadership.decide(
            hostname=self.hostname,
            members=members,
            lease=record,
            renewed=self.renewed if record.holder == self.hostname else None,
            healthy=self.failures < FAILURES,
            now=now,
        )
        if decision.step == leadership.Step.WAIT:
            return decision.at
        duration = leadership.LEASE_DURATION
        if decision.step == leadership.Step.RELEASE:
            duration = leadership.RELEASED_DURATION
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                won = await self.writer.write(
                    name, holder=self.hostname, duration=duration, observed=self.objects.get(name)
                )
        except (KiloError, TimeoutError) as exc:
            log.error(
                "failed to write the location's lease",
                fields={"lease": name, "error": str(exc) or type(exc).__name__},
            )
            return now + leadership.STAGGER
        self.writes += 1
        if not won:
            log.debug(
                "the location's lease changed before this node's write", fields={"lease": name}
            )
            return now + leadership.STAGGER
        if decision.step == leadership.Step.ACQUIRE:
            self.failures = 0
            self.answered = False
            log.info("took the location's lease", fields={"lease": name, "node": self.hostname})
        elif decision.step == leadership.Step.RELEASE:
            log.warning(
                "released the location's lease: this leader's data plane failed its probe",
                fields={"lease": name, "node": self.hostname},
            )
        self.renewed = now
        # Until the watch reports the write, decide on what was written.
        spec = leadership.LeaseSpec(holder=self.hostname, duration=float(duration), renewed="")
        self.records[name] = leadership.observe(
            self.records.get(name), self.specs.get(name), spec, now
        )
        self.specs[name] = spec
        return now

    def _check_derived(self, now: float) -> float:
        """Wake the reconcile loop when any location's leader changed; returns when the
        next Lease lapses (a change no event announces)."""
        derived: dict[str, str] = {}
        if self.listed and self.participants_ready():
            derived = leadership.overrides(self._ready(), self.records, now)
        if derived != self._derived:
            self._derived = derived
            self.on_leaders_changed()
        expiries = [r.expires for r in self.records.values() if r.valid(now)]
        return min(expiries, default=now + 30.0)

    async def _sweep(self, now: float) -> None:
        """Delete the stale Leases this node is the one to delete (every ``SWEEP_PERIOD``)."""
        if now < self._swept + SWEEP_PERIOD or not self.listed or not self.participants_ready():
            return
        self._swept = now
        ours = [name for name, obj in self.objects.items() if self.is_ours(obj)]
        stale = leadership.stale_leases(
            hostname=self.hostname, nodes=self._ready(), leases=self.records, ours=ours, now=now
        )
        for name in stale:
            try:
                async with asyncio.timeout(WRITE_TIMEOUT):
                    deleted = await self.writer.delete(name, observed=self.objects[name])
            except (KiloError, TimeoutError) as exc:
                log.error(
                    "failed to delete a stale lease",
                    fields={"lease": name, "error": str(exc) or type(exc).__name__},
                )
                continue
            if deleted:
                log.info(
                    "deleted the lease of a location without ready nodes",
                    fields={"lease": name, "holder": self.records[name].holder},
                )

    async def run(self) -> None:
        while True:
            now = self.clock()
            await self._sweep(now)
            deadline = min(await self._act(now), self._check_derived(self.clock()))
            timeout = max(0.0, deadline - self.clock())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()

    async def release(self) -> None:
        """Before this node removes its data plane (a clean shutdown): hand the lead on now
        instead of leaving the next leader to wait out the Lease."""
        if not self.holds() or self.location is None:
            return
        name = leadership.lease_name(self.location)
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                await self.writer.write(
                    name,
                    holder=self.hostname,
                    duration=leadership.RELEASED_DURATION,
                    observed=self.objects.get(name),
                )
        except (KiloError, TimeoutError) as exc:
            log.error(
                "failed to release the location's lease; it lapses on its own",
                fields={"lease": name, "error": str(exc) or type(exc).__name__},
            )
            return
        log.info("released the location's lease on shutdown", fields={"lease": name})

    def holds(self) -> bool:
        if self.location is None:
            return False
        record = self.records.get(leadership.lease_name(self.location))
        return record is not None and record.holder == self.hostname and record.valid(self.clock())

    async def probe(self) -> None:
        """While this node holds its Lease: probe, count failures, wake the loop on a verdict."""
        started = self.clock()
        while True:
            # A round every PROBE_PERIOD from the start of the last, however long it took
            # (a forwarding probe that fails waits for its reply).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, started + PROBE_PERIOD - self.clock())):
                    await self._kick.wait()
            started = self.clock()
            kicked = self._kick.is_set()
            self._kick.clear()
            targets = self.targets
            judged = self.holds() or kicked
            location = self.location
            pair = None
            if judged and location is not None:
                pair = leadership.forward_probe(
                    hostname=self.hostname,
                    members=self._members(location),
                    remotes=[ip for ip, _ in targets],
                    round=self.rounds,
                )
                self.rounds += 1
            reached, forwarded = await asyncio.gather(
                asyncio.gather(
                    *(asyncio.to_thread(self.reach, ip) for ip, _ in targets) if judged else ()
                ),
                asyncio.to_thread(self.forward, pair) if pair is not None else _no_verdict(),
            )
            if not self.holds():
                self.failures = 0
                continue
            answers = {(str(ip), n): ok for (ip, n), ok in zip(targets, reached, strict=True)}
            wireguard = leadership.wireguard_healthy(
                answers, self._since, answered_before=self.answered, now=self.clock()
            )
            self.answered = self.answered or any(reached)
            dropped = forwarded == leadership.Forwarded.DROPPED and self.forwarded
            self.forwarded = self.forwarded or forwarded == leadership.Forwarded.FORWARDED
            switch = self.can_forward()
            ok = wireguard and switch and not dropped
            before = self.failures
            self.failures = 0 if ok else self.failures + 1
            if self.failures == FAILURES and before < FAILURES:
                fields = {
                    "node": self.hostname,
                    "wireguard": "ok" if wireguard else "no other leader answers",
                    "forwarding": "ok" if switch else "net.ipv4.ip_forward is 0",
                }
                if dropped and pair is not None:
                    fields["forwarded"] = (
                        f"the reply of {pair.member} to {pair.remote} reached this node "
                        "and did not leave on the WireGuard interface"
                    )
                log.warning("this leader's data plane failed its probe", fields=fields)
                self._wake.set()


async def _no_verdict() -> leadership.Forwarded:
    return leadership.Forwarded.UNANSWERED
