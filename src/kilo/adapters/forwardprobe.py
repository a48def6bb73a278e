"""A packet forwarded through this node: the leader's forwarding probe (I/O half).

Thin. :func:`send_and_watch` sends one ICMP echo request to a node of the location with
another location's leader's WireGuard IP as its source (a raw IPv4 socket, ``CAP_NET_RAW``),
and watches, on a packet socket (``CAP_NET_RAW``) whose classic BPF filter lets through only
the echo replies carrying this probe's identifier, whether the member's reply arrives here
and whether it then leaves on the WireGuard interface. The verdict is the core's
(:func:`kilo.mesh.leadership.forwarding_verdict`); why this probe is the honest one is in
:mod:`kilo.agent.leadership`. Nothing is created or changed on the node: two sockets, closed
when the probe ends.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import time
from ipaddress import IPv4Address

from kilo.adapters import bpf

ETH_P_ALL = 0x0003  # every protocol: outgoing packets reach only ETH_P_ALL taps
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8
PAYLOAD = b"kilo forwarding probe"
AFTER_ARRIVAL = 0.1  # seconds a reply that arrived may take to leave


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(source: IPv4Address, destination: IPv4Address, ident: int, seq: int) -> bytes:
    """An IPv4 packet carrying an ICMP echo request (the kernel fills in the IP header's
    length, identification and checksum: IPPROTO_RAW sockets do)."""
    icmp = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq) + PAYLOAD
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,  # IPv4, a 20-byte header
        0,
        20 + len(icmp),
        0,
        0,
        64,
        socket.IPPROTO_ICMP,
        0,
        source.packed,
        destination.packed,
    )
    return header + icmp


def reply_filter(ident: int) -> bytes:
    """The filter program (struct sock_filter[]): unfragmented IPv4 ICMP echo replies with
    identifier ``ident``. On a SOCK_DGRAM packet socket it sees the network header first."""
    return bpf.program(
        [
            (bpf.LD_H_ABS, 0, 0, bpf.AD_PROTOCOL),
            (bpf.JEQ_K, 0, 10, ETH_P_IP),
            (bpf.LD_B_ABS, 0, 0, 9),  # IP protocol
            (bpf.JEQ_K, 0, 8, socket.IPPROTO_ICMP),
            (bpf.LD_H_ABS, 0, 0, 6),  # flags and fragment offset
            (bpf.JSET_K, 6, 0, 0x1FFF),  # a later fragment: no ICMP header
            (bpf.LDX_B_MSH, 0, 0, 0),  # X = the IP header's length
            (bpf.LD_B_IND, 0, 0, 0),  # ICMP type
            (bpf.JEQ_K, 0, 3, ICMP_ECHO_REPLY),
            (bpf.LD_H_IND, 0, 0, 4),  # ICMP identifier
            (bpf.JEQ_K, 0, 1, ident),
            (bpf.RET_K, 0, 0, 0xFFFF),
            (bpf.RET_K, 0, 0, 0),
        ]
    )


def _bind_all(sock: socket.socket, protocol: int) -> None:
    """bind() to every interface (sll_ifindex 0), which Python's socket.bind cannot ask
    for (it looks an interface name up)."""
    address = struct.pack("=HHiHBB8s", socket.AF_PACKET, socket.htons(protocol), 0, 0, 0, 0, b"")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.bind(sock.fileno(), address, len(address)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def send_and_watch(
    member: IPv4Address, remote: IPv4Address, *, interface: str, timeout: float
) -> tuple[bool, bool]:
    """(arrived, left): whether ``member``'s echo reply to ``remote`` reached this node, and
    whether it left on ``interface``, within ``timeout`` seconds. OSError if the sockets
    cannot be had (no CAP_NET_RAW)."""
    ident = int.from_bytes(os.urandom(2), "big")
    seq = int.from_bytes(os.urandom(2), "big")
    arrived = left = False
    # Protocol 0 delivers nothing until bind(): no packet slips in before the filter.
    with socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0) as tap:
        bpf.attach(tap, reply_filter(ident))
        _bind_all(tap, ETH_P_ALL)
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
            raw.sendto(echo_request(remote, member, ident, seq), (str(member), 0))
        deadline = time.monotonic() + timeout
        while not left:
            # Past the deadline, what is queued already still counts (both copies of the
            # reply are queued within one softirq; the deadline may fall between reads).
            tap.settimeout(max(0.0, deadline - time.monotonic()))
            try:
                packet, address = tap.recvfrom(2048)
            except (TimeoutError, BlockingIOError):
                break
            if not _is_reply(packet, member, remote, ident, seq):
                continue
            if address[2] == PACKET_OUTGOING:
                left = left or address[0] == interface
            elif not arrived:
                arrived = True
                # A forwarded packet leaves within the softirq that received it: a reply
                # that has not left soon after it arrived will not.
                deadline = min(deadline, time.monotonic() + AFTER_ARRIVAL)
    return arrived, left


def _is_reply(
    packet: bytes, member: IPv4Address, remote: IPv4Address, ident: int, seq: int
) -> bool:
    if len(packet) < 20:
        return False
    length = (packet[0] & 0x0F) * 4
    if len(packet) < length + 8 or packet[12:16] != member.packed or packet[16:20] != remote.packed:
        return False
    kind, _, _, got_ident, got_seq = struct.unpack("!BBHHH", packet[length : length + 8])
    return bool(kind == ICMP_ECHO_REPLY and got_ident == ident and got_seq == seq)
