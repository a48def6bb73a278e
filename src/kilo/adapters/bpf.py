"""Classic BPF socket filters (linux/filter.h): the few opcodes Kilo's filters use, a
program's packing and its attachment to a socket.

Two sockets carry one: the forwarding probe's packet socket (only its own echo replies)
and the route watcher's rtnetlink socket (only deletions). A filter runs in the kernel
before a packet or message is queued, so what it drops costs the socket no buffer space
and the agent no wake-up.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Sequence

SO_ATTACH_FILTER = 26  # not in Python's socket module

LD_H_ABS = 0x28  # A = the 16 bits at k, read big-endian
LD_B_ABS = 0x30  # A = the byte at k
LD_H_IND = 0x48  # A = the 16 bits at X + k
LD_B_IND = 0x50  # A = the byte at X + k
LDX_B_MSH = 0xB1  # X = 4 * (the byte at k & 0xf): an IPv4 header's length
JEQ_K = 0x15  # if A == k skip jt instructions, else jf
JSET_K = 0x45  # if A & k skip jt instructions, else jf
RET_K = 0x06  # keep k bytes of the packet (0: drop it)
AD_PROTOCOL = -0x1000 & 0xFFFFFFFF  # SKF_AD_OFF + SKF_AD_PROTOCOL: skb->protocol
KEEP_ALL = 0xFFFFFFFF  # RET_K's "the whole packet, however long"

Instruction = tuple[int, int, int, int]  # code, jt, jf, k: struct sock_filter


def program(instructions: Sequence[Instruction]) -> bytes:
    """The filter program (struct sock_filter[]) of ``instructions``."""
    return b"".join(struct.pack("HBBI", *instruction) for instruction in instructions)


def host_order16(value: int) -> int:
    """What a 16-bit load (big-endian) reads of ``value`` stored in this host's byte order,
    as netlink stores its header fields."""
    return int.from_bytes(struct.pack("=H", value), "big")


def attach(sock: socket.socket, filter_program: bytes) -> None:
    """Attach ``filter_program`` to ``sock`` (before bind(), so nothing slips in unfiltered)."""
    buffer = ctypes.create_string_buffer(filter_program)
    fprog = struct.pack("@HP", len(filter_program) // 8, ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
