"""Route messages of rtnetlink, packed and unpacked by hand, and requests sent in batches.

Why not pyroute2 for these: a full apply at 5000 nodes lists and writes some 9000 routes,
and through pyroute2 a route costs about 0.6 ms of CPU to add (its request filters, its
encoder, a hand-off to its event loop and back, one round trip each) and a listing of
9000 routes over a second to decode (every attribute becomes a Python object, read
through several layers of lookups). A route message here is one ``struct`` layout:

* :class:`RouteSocket` lists every route in every table (one dump) into
  :class:`RouteMessage` values, decoding only the attributes a route key needs;
* :meth:`RouteSocket.batch` sends many requests per ``send`` (each with ``NLM_F_ACK`` and
  a sequence number of its own) and collects one outcome per request: the kernel handles
  the messages of one send in order, each on its own, and acknowledges each, so a failure
  in the middle of a batch fails that request only, as a request of its own would.

The outcome of a failed request is a :class:`~pyroute2.netlink.exceptions.NetlinkError`
with the kernel's errno and its ``strerror``, as pyroute2 raises it (it does not decode the
kernel's extended-ack text either), so that the callers' error texts stay the same.
Interfaces and rules (a few each) stay with pyroute2.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from pyroute2 import netns as pyroute2_netns
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV4_RULE,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_IPV6_RULE,
)

from kilo.adapters import bpf
from kilo.mesh import route_sync
from kilo.mesh.route_sync import RouteKey
from kilo.mesh.routes import RTPROT_STATIC

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10  # the dump's table changed while it was read: it may miss routes
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26
RTM_DELRULE = 33

RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_PREFSRC = 7
RTA_TABLE = 15
RT_TABLE_MAIN = 254  # the header's table when the real one (RTA_TABLE) is above 255, as pyroute2
RTN_UNSPEC = 0
RTN_UNICAST = 1
RTNH_F_ONLINK = 0x4
RT_SCOPE_NOWHERE = 255  # "any scope" when deleting, as `ip route del` sends
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}

_SOL_NETLINK = 270
_SO_RCVBUFFORCE = 33  # not in Python's socket module
_NETLINK_CAP_ACK = 10  # acknowledgements without a copy of the request

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
_RTMSG = struct.Struct(
    "=BBBBBBBBI"
)  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_ATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_ERROR = struct.Struct("=i")
_HEADER_SIZE = _HEADER.size
_BODY = _HEADER_SIZE + _RTMSG.size

_RECEIVE_BUFFER = 1 << 20  # what the kernel may queue for this socket (acks, dumps)
_READ_SIZE = 1 << 16  # a dump's datagrams are at most 32 KiB
# Requests per send at most: their acknowledgements (about 1 KiB each as the kernel counts
# a socket's buffer) must fit in the receive buffer, or they are dropped; a socket granted
# less than the buffer asked for sends fewer (``batch_size``).
BATCH = 128
_ACK_BUDGET = 2048  # bytes of receive buffer per request in flight
TIMEOUT = 30.0


T = TypeVar("T")
Buffer = bytes | bytearray | memoryview


# A listing that the kernel marks interrupted is read again, up to this many times in all.
DUMP_TRIES = 3


class DumpInterrupted(NetlinkError):  # type: ignore[misc]
    """The kernel's routes changed while they were listed, :data:`DUMP_TRIES` times in a
    row: the listing may miss routes, and a route table that trusted it would forget
    routes it owns (which then stay in the kernel)."""

    def __init__(self) -> None:
        super().__init__(errno.EINTR, "the route listing was interrupted by changes")


class LostAck(OSError):
    """The kernel's acknowledgement of a request never came (the socket's buffer overran,
    or no answer in time): the request may or may not have been carried out."""


@dataclass(frozen=True, slots=True)
class RouteMessage:
    """The parts of an ``RTM_NEWROUTE``/``RTM_DELROUTE`` message a route key is made of
    (addresses as text, ``None`` when absent)."""

    kind: int
    family: int
    dst_len: int
    tos: int
    table: int  # RTA_TABLE when present, else the header's
    type: int
    flags: int
    dst: str | None
    oif: int | None
    gateway: str | None
    prefsrc: str | None
    priority: int | None


_U32_ATTRS = frozenset({RTA_OIF, RTA_PRIORITY, RTA_TABLE})


def messages(data: Buffer, size: int) -> Iterator[tuple[int, int, int, int, int]]:
    """``(type, flags, sequence, offset, length)`` of each message in ``data[:size]``."""
    offset = 0
    while offset + _HEADER_SIZE <= size:
        length, kind, flags, seq, _port = _HEADER.unpack_from(data, offset)
        if length < _HEADER_SIZE or offset + length > size:
            return
        yield kind, flags, seq, offset, length
        offset += (length + 3) & ~3


def route_message(data: Buffer, offset: int, length: int) -> RouteMessage | None:
    """The route message at ``offset``; ``None`` if it is too short to be one."""
    if length < _BODY:
        return None
    kind = _HEADER.unpack_from(data, offset)[1]
    family, dst_len, _src_len, tos, table, _proto, _scope, rtype, flags = _RTMSG.unpack_from(
        data, offset + _HEADER_SIZE
    )
    dst = oif = gateway = prefsrc = priority = None
    position = offset + _BODY
    end = offset + length
    while position + 4 <= end:
        size, attr = _ATTR.unpack_from(data, position)
        if size < 4 or position + size > end:
            break
        start = position + 4
        if attr in _U32_ATTRS and size < 8:
            pass  # too short for its value: as absent (the kernel never sends one)
        elif attr == RTA_DST:
            dst = _address(family, data[start : position + size])
        elif attr == RTA_OIF:
            oif = _U32.unpack_from(data, start)[0]
        elif attr == RTA_GATEWAY:
            gateway = _address(family, data[start : position + size])
        elif attr == RTA_PRIORITY:
            priority = _U32.unpack_from(data, start)[0]
        elif attr == RTA_PREFSRC:
            prefsrc = _address(family, data[start : position + size])
        elif attr == RTA_TABLE:
            table = _U32.unpack_from(data, start)[0]
        position += (size + 3) & ~3
    return RouteMessage(
        kind=kind,
        family=family,
        dst_len=dst_len,
        tos=tos,
        table=table,
        type=rtype,
        flags=flags,
        dst=dst,
        oif=oif,
        gateway=gateway,
        prefsrc=prefsrc,
        priority=priority,
    )


def _address(family: int, raw: Buffer) -> str | None:
    try:
        return socket.inet_ntop(family, bytes(raw))
    except (ValueError, OSError):
        return None  # not an address of the family: as absent


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return _ATTR.pack(size, kind) + payload + b"\0" * (-size % 4)


def route_request(
    kind: int,
    flags: int,
    key: RouteKey,
    index: int,
    *,
    priority: int | None = None,
    protocol: int = 0,
    scope: int = 0,
    route_type: int = RTN_UNICAST,
    route_flags: int = 0,
) -> bytes:
    """One request for the route ``key`` on the interface ``index`` (sequence number 0:
    :meth:`RouteSocket.batch` numbers them), byte for byte what pyroute2 sends for the
    same call: the table both in the header (main above 255) and as ``RTA_TABLE``, then
    the gateway, source and priority."""
    table = key.table
    body = _RTMSG.pack(
        _FAMILY[key.version],
        key.dst.prefixlen,
        0,
        0,
        table if table < 256 else RT_TABLE_MAIN,
        protocol,
        scope,
        route_type,
        route_flags,
    )
    attrs = [
        _attr(RTA_DST, key.dst.network_address.packed),
        _attr(RTA_OIF, _U32.pack(index)),
        _attr(RTA_TABLE, _U32.pack(table)),
    ]
    if key.gw is not None:
        attrs.append(_attr(RTA_GATEWAY, key.gw.packed))
    if key.src is not None:
        attrs.append(_attr(RTA_PREFSRC, key.src.packed))
    if priority is not None:
        attrs.append(_attr(RTA_PRIORITY, _U32.pack(priority)))
    payload = body + b"".join(attrs)
    return _HEADER.pack(_HEADER_SIZE + len(payload), kind, flags, 0, 0) + payload


ADD = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL  # ``ip route add``
REPLACE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE  # ``ip route replace``
DELETE = NLM_F_REQUEST | NLM_F_ACK


def add_request(key: RouteKey, index: int, flags: int, *, onlink: bool) -> bytes:
    """The request that adds (``flags``: or replaces) the route ``key`` on the interface
    ``index``: Kilo's routes are "proto static"."""
    return route_request(
        RTM_NEWROUTE,
        flags,
        key,
        index,
        protocol=RTPROT_STATIC,
        route_flags=RTNH_F_ONLINK if onlink else 0,
    )


def delete_request(key: RouteKey, index: int) -> bytes:
    """The request that deletes the route ``key`` on the interface ``index``, in any
    scope, as ``ip route del`` sends it (IPv6 needs the metric)."""
    return route_request(
        RTM_DELROUTE,
        DELETE,
        key,
        index,
        priority=route_sync.DEFAULT_METRIC[6] if key.version == 6 else None,
        scope=RT_SCOPE_NOWHERE,
        route_type=RTN_UNSPEC,
    )


def open_socket(netns: str | None) -> socket.socket:
    """A raw rtnetlink socket (in ``netns``, without creating it) for requests: no
    multicast groups, acknowledgements without a copy of the request."""
    sock: socket.socket = pyroute2_netns.create_socket(
        netns, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE, flags=0
    )
    try:
        for option in (_SO_RCVBUFFORCE, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, _RECEIVE_BUFFER)
                break
            except OSError:
                # SO_RCVBUFFORCE needs CAP_NET_ADMIN: the capped size then; and a refused
                # size leaves the default (lost acknowledgements are handled).
                continue
        try:
            sock.setsockopt(_SOL_NETLINK, _NETLINK_CAP_ACK, 1)
        except OSError as exc:
            # Kernels before 4.3: each acknowledgement carries a copy of its request
            # (about 100 bytes more), well within the buffer for a batch.
            if exc.errno != errno.ENOPROTOOPT:
                raise
        sock.bind((0, 0))
        sock.settimeout(TIMEOUT)
    except BaseException:
        sock.close()
        raise
    return sock


# The watch socket's filter: the type in a datagram's first netlink header, route and rule
# deletions kept, anything else dropped in the kernel. Route and rule notifications come
# one message to a datagram. Without it, the notifications of the agent's own additions
# (10 000 at a 5000-node leader's start-up) filled the socket's buffer while the watcher
# waited for the interpreter, the kernel reported lost events (ENOBUFS), and the agent
# ran a second full apply right after the first (0.5 s of CPU, and every table read).
_DELETIONS_ONLY = bpf.program(
    [
        (bpf.LD_H_ABS, 0, 0, 4),  # nlmsg_type, stored in host order
        (bpf.JEQ_K, 2, 0, bpf.host_order16(RTM_DELROUTE)),
        (bpf.JEQ_K, 1, 0, bpf.host_order16(RTM_DELRULE)),
        (bpf.RET_K, 0, 0, 0),
        (bpf.RET_K, 0, 0, bpf.KEEP_ALL),
    ]
)


WATCH_GROUPS = RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE | RTMGRP_IPV4_RULE | RTMGRP_IPV6_RULE


def open_watch_socket(netns: str | None) -> socket.socket:
    """A raw rtnetlink socket (in ``netns``, without creating it) subscribed to the route and
    rule events of both families (:data:`WATCH_GROUPS`) that receives only deletions."""
    sock: socket.socket = pyroute2_netns.create_socket(
        netns, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE, flags=0
    )
    try:
        bpf.attach(sock, _DELETIONS_ONLY)  # before bind(): nothing is queued unfiltered
        sock.bind((0, WATCH_GROUPS))
    except BaseException:
        sock.close()
        raise
    return sock


def batch_size(sock: socket.socket) -> int:
    """Requests per send on ``sock``: :data:`BATCH`, or fewer when the kernel granted a
    smaller receive buffer than asked for (no CAP_NET_ADMIN and a low ``rmem_max``)."""
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return max(1, min(BATCH, granted // _ACK_BUDGET))


class RouteSocket:
    """Route requests and dumps on a raw rtnetlink socket; one caller at a time (the
    route table's own lock), from any thread: the socket is a plain one."""

    def __init__(self, netns: str | None) -> None:
        self._netns = netns
        self._sock = open_socket(netns)
        self.batch_size = batch_size(self._sock)
        self._seq = 0
        self._buffer = bytearray(_READ_SIZE)

    def close(self) -> None:
        self._sock.close()

    def _reset(self) -> None:
        """A new socket after a dump or batch was abandoned half-way: the kernel would
        refuse the next dump while the last one is unfinished, and late answers would
        pile up."""
        self._sock.close()
        with contextlib.suppress(OSError):  # else the closed socket fails the next request
            self._sock = open_socket(self._netns)
            self.batch_size = batch_size(self._sock)

    def _next(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def _receive(self) -> tuple[bytearray, int]:
        size = self._sock.recv_into(self._buffer)
        return self._buffer, size

    def dump_routes(self, *, default_only: bool = False) -> list[RouteMessage]:
        """Every route in every table and family (``default_only``: the default routes,
        whose destination has length 0; the others are not decoded), in the kernel's
        order; a failure raises ``NetlinkError`` or ``OSError``."""

        def read(data: Buffer, offset: int, length: int) -> RouteMessage | None:
            if default_only and length >= _BODY and data[offset + _HEADER_SIZE + 1]:
                return None  # dst_len, the rtmsg's second byte, is not 0
            return route_message(data, offset, length)

        return self.dump(read)

    def dump(self, read: Callable[[Buffer, int, int], T | None]) -> list[T]:
        """What ``read(data, offset, length)`` makes of each route in every table and
        family, in the kernel's order (``None``: left out); a failure raises
        ``NetlinkError`` or ``OSError``."""
        for attempt in range(1, DUMP_TRIES + 1):
            try:
                return self._dump(read)
            except DumpInterrupted:
                if attempt == DUMP_TRIES:
                    raise
                # The dump ran to its end: the socket is ready for the next one.
            except OSError:
                self._reset()
                raise
            except (struct.error, ValueError, IndexError) as exc:
                # A message this decoder cannot read (the kernel never sends one): the
                # dump is abandoned, as after a failed read.
                self._reset()
                raise OSError(errno.EPROTO, f"an unreadable route listing: {exc}") from exc
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _dump(self, read: Callable[[Buffer, int, int], T | None]) -> list[T]:
        seq = self._next()
        request = _HEADER.pack(
            _HEADER_SIZE + _RTMSG.size, RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, seq, 0
        ) + _RTMSG.pack(0, 0, 0, 0, 0, 0, 0, 0, 0)
        self._sock.send(request)
        routes: list[T] = []
        interrupted = False
        while True:
            data, size = self._receive()
            for kind, flags, got, offset, length in messages(data, size):
                if got != seq:
                    continue  # a late acknowledgement of an earlier, abandoned batch
                interrupted = interrupted or bool(flags & NLM_F_DUMP_INTR)
                if kind == NLMSG_DONE:
                    # DONE carries the dump's outcome: a negative errno ended it early.
                    if length >= _HEADER_SIZE + _ERROR.size:
                        code = _ERROR.unpack_from(data, offset + _HEADER_SIZE)[0]
                        if code < 0:
                            raise NetlinkError(-code)
                    if interrupted:
                        raise DumpInterrupted()
                    return routes
                if kind == NLMSG_ERROR:
                    code = -_ERROR.unpack_from(data, offset + _HEADER_SIZE)[0]
                    raise NetlinkError(code)
                if kind == RTM_NEWROUTE:
                    route = read(data, offset, length)
                    if route is not None:
                        routes.append(route)

    def batch(self, requests: Sequence[bytes]) -> list[BaseException | None]:
        """Send ``requests`` (each made by :func:`route_request`), :attr:`batch_size` per send,
        and return their outcomes in order: ``None``, a ``NetlinkError`` (the kernel
        refused that request; the others are unaffected), or an ``OSError`` (the send
        failed: nothing of that send was done; :class:`LostAck`: unknown)."""
        outcomes: list[BaseException | None] = []
        size = self.batch_size
        for start in range(0, len(requests), size):
            outcomes += self._send(requests[start : start + size])
        return outcomes

    def _send(self, requests: Sequence[bytes]) -> list[BaseException | None]:
        buffer = bytearray()
        pending: dict[int, int] = {}
        for i, request in enumerate(requests):
            seq = self._next()
            pending[seq] = i
            offset = len(buffer)
            buffer += request
            struct.pack_into("=I", buffer, offset + 8, seq)
            buffer += b"\0" * (-len(buffer) % 4)
        outcomes: list[BaseException | None] = [None] * len(requests)
        try:
            self._sock.send(buffer)
        except OSError as exc:
            return [exc] * len(requests)
        lost: LostAck | None = None
        while pending:
            try:
                data, size = self._receive()
            except OSError as exc:
                if lost is not None:
                    break  # drained what was left after the overrun
                lost = LostAck(exc.errno or errno.ETIMEDOUT, f"no acknowledgement: {exc}")
                if exc.errno != errno.ENOBUFS:
                    break
                # The buffer overran: some acknowledgements were dropped; read the rest.
                self._sock.settimeout(0)
                continue
            for kind, _flags, seq, offset, _length in messages(data, size):
                if kind != NLMSG_ERROR:
                    continue
                if seq not in pending:
                    continue  # a late acknowledgement of an earlier batch
                i = pending.pop(seq)
                code = -_ERROR.unpack_from(data, offset + _HEADER_SIZE)[0]
                if code:
                    outcomes[i] = NetlinkError(code)
        if lost is not None:
            for i in pending.values():
                outcomes[i] = lost
            self._reset()
        return outcomes
