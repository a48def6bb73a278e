"""Route messages packed by hand (kilo.adapters.netlink.wire): byte for byte what pyroute2
sent for the same routes (captured with strace from pyroute2 0.9.7, sequence and port
numbers zeroed), and read back."""

from __future__ import annotations

import ipaddress
import socket
import threading

from pyroute2.netlink.exceptions import NetlinkError

from kilo.adapters.netlink import wire
from kilo.mesh.route_sync import RouteKey


def _hex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def _key(dst: str, dev: str = "kilo0", **extra: object) -> RouteKey:
    return RouteKey(dst=ipaddress.ip_network(dst), dev=dev, **extra)  # type: ignore[arg-type]


def test_a_replace_with_an_onlink_gateway_is_what_pyroute2_sends() -> None:
    key = _key("10.128.1.0/24", gw=ipaddress.ip_address("10.4.0.2"))
    assert wire.add_request(key, 3, wire.REPLACE, onlink=True) == _hex(
        "3c000000 1800 0505 00000000 00000000"
        "02180000 fe040001 04000000"
        "08000100 0a800100 08000400 03000000 08000f00 fe000000 08000500 0a040002"
    )


def test_an_exclusive_add_in_a_table_above_255_with_a_source_is_what_pyroute2_sends() -> None:
    key = _key("10.129.1.0/24", table=1107, src=ipaddress.ip_address("10.4.0.1"))
    assert wire.add_request(key, 3, wire.ADD, onlink=False) == _hex(
        "3c000000 1800 0506 00000000 00000000"
        "02180000 fe040001 00000000"
        "08000100 0a810100 08000400 03000000 08000f00 53040000 08000700 0a040001"
    )


def test_deletions_are_what_pyroute2_sends_with_the_metric_for_ipv6() -> None:
    assert wire.delete_request(_key("10.129.1.0/24", table=1107), 3) == _hex(
        "34000000 1900 0500 00000000 00000000"
        "02180000 fe00ff00 00000000"
        "08000100 0a810100 08000400 03000000 08000f00 53040000"
    )
    assert wire.delete_request(_key("fd00::/64"), 3) == _hex(
        "48000000 1900 0500 00000000 00000000"
        "0a400000 fe00ff00 00000000"
        "14000100 fd000000 00000000 00000000 00000000"
        "08000400 03000000 08000f00 fe000000 08000600 00040000"
    )


def test_a_route_message_reads_back_what_a_key_is_made_of() -> None:
    key = _key("10.129.1.0/24", table=1107, gw=ipaddress.ip_address("10.4.0.9"))
    data = wire.add_request(key, 7, wire.ADD, onlink=False)
    two = data + wire.delete_request(_key("fd00::/64"), 8)
    found = list(wire.messages(two, len(two)))
    assert [(kind, offset) for kind, _, _, offset, _ in found] == [
        (wire.RTM_NEWROUTE, 0),
        (wire.RTM_DELROUTE, len(data)),
    ]
    first = wire.route_message(two, 0, found[0][4])
    assert first == wire.RouteMessage(
        kind=wire.RTM_NEWROUTE,
        family=socket.AF_INET,
        dst_len=24,
        tos=0,
        table=1107,  # RTA_TABLE, not the header's
        type=wire.RTN_UNICAST,
        flags=0,
        dst="10.129.1.0",
        oif=7,
        gateway="10.4.0.9",
        prefsrc=None,
        priority=None,
    )
    second = wire.route_message(two, found[1][3], found[1][4])
    assert second is not None
    assert (second.dst, second.dst_len, second.priority, second.oif) == ("fd00::", 64, 1024, 8)


def test_a_truncated_message_is_not_read() -> None:
    data = wire.add_request(_key("10.0.0.0/8"), 1, wire.ADD, onlink=False)
    assert list(wire.messages(data, len(data) - 1)) == []
    assert wire.route_message(data, 0, 20) is None


# --- listings: what the kernel's side of a dump says, from the other end of a socket pair ---


class _Kernel:
    """A RouteSocket whose socket is one end of a datagram socket pair; the test writes
    the kernel's datagrams to the other end (the listing's sequence number is the one the
    RouteSocket sent)."""

    def __init__(self) -> None:
        ours, self.kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        ours.settimeout(5)
        self.route_socket = wire.RouteSocket.__new__(wire.RouteSocket)
        self.route_socket._netns = None
        self.route_socket._sock = ours
        self.route_socket._seq = 0
        self.route_socket._buffer = bytearray(1 << 16)
        self.listings = 0

    def close(self) -> None:
        self.route_socket.close()
        self.kernel.close()

    def answer(self, *replies: list[tuple[int, int, bytes]]) -> None:
        """Queue one reply per expected listing: (type, flags, payload) messages, all in
        one datagram, numbered with the sequence the RouteSocket will use next."""
        for reply in replies:
            self.listings += 1
            seq = self.route_socket._seq + self.listings
            self.kernel.send(
                b"".join(
                    wire._HEADER.pack(wire._HEADER_SIZE + len(p), kind, flags, seq, 0) + p
                    for kind, flags, p in reply
                )
            )


def _route(dst: str, flags: int = 0) -> tuple[int, int, bytes]:
    data = wire.add_request(_key(dst), 3, wire.ADD, onlink=False)
    return wire.RTM_NEWROUTE, flags, data[wire._HEADER_SIZE :]


_DONE = (wire.NLMSG_DONE, 0, wire._ERROR.pack(0))


def test_a_listing_the_kernel_marks_interrupted_is_read_again() -> None:
    kernel = _Kernel()
    try:
        intr = wire.NLM_F_DUMP_INTR
        kernel.answer(
            [_route("10.1.0.0/16", intr), (wire.NLMSG_DONE, intr, wire._ERROR.pack(0))],
            [_route("10.1.0.0/16"), _route("10.2.0.0/16"), _DONE],
        )
        routes = kernel.route_socket.dump_routes()
        assert [r.dst for r in routes] == ["10.1.0.0", "10.2.0.0"]
    finally:
        kernel.close()


def test_a_listing_interrupted_every_time_fails_instead_of_being_partial() -> None:
    kernel = _Kernel()
    try:
        intr = wire.NLM_F_DUMP_INTR
        kernel.answer(*([_route("10.1.0.0/16", intr), _DONE] for _ in range(wire.DUMP_TRIES)))
        try:
            kernel.route_socket.dump_routes()
        except wire.DumpInterrupted as exc:
            assert "interrupted" in str(exc)
        else:
            raise AssertionError("an interrupted listing was returned")
    finally:
        kernel.close()


def test_a_listing_ended_by_an_error_in_its_done_message_fails() -> None:
    kernel = _Kernel()
    try:
        kernel.answer([_route("10.1.0.0/16"), (wire.NLMSG_DONE, 0, wire._ERROR.pack(-12))])
        try:
            kernel.route_socket.dump_routes()
        except NetlinkError as exc:
            assert exc.code == 12  # ENOMEM
        else:
            raise AssertionError("a listing the kernel ended with ENOMEM was returned")
    finally:
        kernel.close()


def test_a_number_attribute_too_short_for_its_value_is_read_as_absent() -> None:
    body = wire._RTMSG.pack(socket.AF_INET, 8, 0, 0, 254, 0, 0, wire.RTN_UNICAST, 0)
    short_oif = wire._ATTR.pack(6, wire.RTA_OIF) + b"\x07\x00\x00\x00"  # 2 bytes of 4
    dst = wire._ATTR.pack(8, wire.RTA_DST) + bytes([10, 0, 0, 0])
    payload = body + short_oif + dst
    data = wire._HEADER.pack(wire._HEADER_SIZE + len(payload), wire.RTM_NEWROUTE, 0, 0, 0)
    data += payload
    message = wire.route_message(data, 0, len(data))
    assert message is not None
    assert (message.oif, message.dst) == (None, "10.0.0.0")


def test_the_deletion_watcher_survives_a_datagram_it_cannot_decode() -> None:
    from kilo.adapters.netlink.watcher import Watcher

    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    calls: list[bytes] = []
    called = threading.Semaphore(0)

    def matters(data: bytes) -> bool:
        calls.append(data)
        if data == b"garbage":
            raise ValueError("not a netlink message")
        return data == b"deleted"

    watcher = Watcher(ours, matters, called.release)
    watcher.start()
    try:
        kernel.send(b"garbage")
        assert called.acquire(timeout=10), "an undecodable datagram was not reported"
        kernel.send(b"deleted")
        assert called.acquire(timeout=10), "the watcher stopped after an undecodable datagram"
        assert calls == [b"garbage", b"deleted"]
    finally:
        watcher.stop()
        kernel.close()


def test_a_socket_granted_a_small_receive_buffer_sends_fewer_requests_at_once() -> None:
    small, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        small.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # the kernel doubles it
        granted = small.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        assert wire.batch_size(small) == granted // 2048 < wire.BATCH
        small.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        assert wire.batch_size(small) == wire.BATCH
    finally:
        small.close()
        other.close()
