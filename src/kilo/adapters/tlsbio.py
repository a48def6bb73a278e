"""A TLS client connection whose records are decrypted from memory, for a watch's body.

Why not ``ssl.SSLSocket``: OpenSSL reading a socket itself makes two system calls a record
(its header, then its body) and one more to find the socket empty, raised as
``SSLWantReadError``. The API server writes a 10 KB check-in event as three records, an
agent at 5000 nodes reads 167 of them a second, and a system call costs about 5 us on the
project's machine: in a profile of kg the socket reads were about a third of its CPU. Here
one ``recv`` takes whatever arrived into a ``MemoryBIO`` and the records are decrypted from
there (``ssl.SSLObject``, the TLS asyncio uses), and a short ``recv`` (the socket emptied)
ends a non-blocking read without another system call: the loop's reader is level-triggered,
so bytes arriving later wake it again. A non-blocking read makes one system call at most,
also when what it read held no data for the reader (session tickets, key updates), and
:attr:`TLSSocket.received` counts the socket's bytes: a hostile server's records cannot
hold the loop in one read or in one wake of its reader. An answer the TLS layer writes
while reading (to a request for the client's certificate, a key update, a renegotiation)
is sent from that read.

The subset of the socket interface :mod:`kilo.adapters.watchstream` uses, with the same
outcomes as an ``SSLSocket`` made with ``suppress_ragged_eofs``: ``b""`` at the end (a
close_notify or the peer closing), ``BlockingIOError`` when a non-blocking read finds
nothing, ``TimeoutError`` and ``ssl.SSLError`` as raised.
"""

from __future__ import annotations

import socket
import ssl
import time

READ_SIZE = 256 * 1024


class TLSSocket:
    """``raw`` wrapped by ``context`` for ``server_hostname``; the handshake is
    :meth:`do_handshake` (blocking, with ``raw``'s timeout)."""

    def __init__(self, raw: socket.socket, context: ssl.SSLContext, server_hostname: str) -> None:
        self.raw = raw
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(
            self._incoming, self._outgoing, server_hostname=server_hostname
        )
        self._nonblocking = False
        self._drained = False  # the last recv emptied the socket
        self._eof = False
        # Bytes read from the socket: a reader bounds its work per wake of the loop in them,
        # as decrypted bytes can be far fewer (a byte a record, records without data).
        self.received = 0

    def fileno(self) -> int:
        return self.raw.fileno()

    def setblocking(self, flag: bool) -> None:
        self.raw.setblocking(flag)
        self._nonblocking = not flag

    def settimeout(self, timeout: float | None) -> None:
        self.raw.settimeout(timeout)
        self._nonblocking = timeout == 0.0

    def close(self) -> None:
        self.raw.close()

    def do_handshake(self, deadline: float | None = None) -> None:
        """The handshake, each read bounded by the socket's timeout and, if given, all of
        it by ``deadline`` (``time.monotonic``): a server that dribbles its part a byte at a
        time would otherwise hold it for a timeout a byte."""
        timeout = self.raw.gettimeout()
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError("the TLS handshake took too long") from None
                    self.raw.settimeout(remaining if timeout is None else min(timeout, remaining))
                try:
                    filled = self._fill()
                except TimeoutError:
                    if deadline is None or deadline - time.monotonic() > 0:
                        raise
                    raise TimeoutError("the TLS handshake took too long") from None
                if not filled:
                    raise ssl.SSLEOFError(
                        "the server closed the connection during the TLS handshake"
                    ) from None
        self._flush()

    def sendall(self, data: bytes) -> None:
        self._tls.write(data)
        self._flush()

    def recv(self, size: int) -> bytes:
        filled = False
        while True:
            if self._incoming.pending or self._tls.pending():
                try:
                    data = self._tls.read(size)
                except ssl.SSLWantReadError:
                    # A record not whole yet, or records without data for the reader. Those
                    # may want an answer the server waits for before it sends more (its
                    # request for the client's certificate after the handshake, a
                    # renegotiation): sent now, as an SSLSocket would, not after data that
                    # would only come once the answer did.
                    if self._outgoing.pending:
                        self._flush()
                else:
                    # b"" after a close_notify (SSLObject.read returns it, as SSLSocket's
                    # does); SSLEOFError needs the incoming BIO's write_eof, never called.
                    if self._outgoing.pending:  # a post-handshake message's answer
                        self._flush()
                    return data
            if self._eof:
                return b""
            # Non-blocking, one system call at most: a read that found only records without
            # data (session tickets, key updates) gives the loop back too, and the reader,
            # level-triggered, comes back for the rest. Otherwise a server streaming such
            # records faster than they are decrypted would hold the loop in this call.
            if self._nonblocking and (self._drained or filled):
                self._drained = False
                raise BlockingIOError("nothing more arrived")
            if not self._fill():
                self._eof = True
                return b""  # a record cut short by the close is dropped, as a ragged EOF
            filled = True

    def _fill(self) -> bool:
        """What arrived on the socket into the TLS layer; False at its end."""
        data = self.raw.recv(READ_SIZE)
        if not data:
            return False
        self._incoming.write(data)
        self.received += len(data)
        self._drained = len(data) < READ_SIZE
        return True

    def _flush(self) -> None:
        if not self._outgoing.pending:
            return
        try:
            self.raw.sendall(self._outgoing.read())
        except BlockingIOError:
            # Non-blocking, while the body is read: only an answer to a post-handshake
            # message (a key update) is sent then, a few bytes. Part of it sent and the
            # rest lost would break the TLS stream: the watch ends (a reader would take
            # BlockingIOError for "nothing arrived").
            raise ConnectionError("the socket could not take the TLS layer's answer") from None
