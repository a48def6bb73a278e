"""tlsbio.TLSSocket against a real TLS server (Python's ssl over memory BIOs, so each test
decides which encrypted bytes reach the socket and when): a record read only when whole, the
end of a stream, an answer to a post-handshake message, a send the socket cannot take."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from kilo.adapters import tlsbio
from kilo.sandbox.controlplane import CertificateAuthority, pem_cert

HOST = "kilo.test"


class Server:
    """The server's end of a TLS connection, its records written to the socket by hand."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)

    def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.send_pending()
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("the client left during the handshake") from None
                self.incoming.write(data)
        self.send_pending()

    def records(self, data: bytes) -> bytes:
        """``data`` encrypted, not sent."""
        self.tls.write(data)
        return self.outgoing.read()

    def send_pending(self) -> None:
        self.sock.sendall(self.outgoing.read())


@dataclass
class Pair:
    server: Server
    client: tlsbio.TLSSocket
    ca_cert: Path
    client_context: ssl.SSLContext


@pytest.fixture
def certificates(tmp_path: Path) -> tuple[CertificateAuthority, Path]:
    ca = CertificateAuthority.create("tlsbio-test-ca")
    (tmp_path / "ca.crt").write_bytes(pem_cert(ca.cert))
    return ca, tmp_path / "ca.crt"


def server_context(ca: CertificateAuthority, ca_cert: Path, tmp_path: Path) -> ssl.SSLContext:
    cert, key = ca.issue("server", server_names=(HOST,), client=False)
    (tmp_path / "server.crt").write_bytes(cert)
    (tmp_path / "server.key").write_bytes(key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca_cert)
    context.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    return context


@contextlib.contextmanager
def connected(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> Iterator[tuple[Server, tlsbio.TLSSocket]]:
    server_end, client_end = socket.socketpair()
    server = Server(server_end, server_ctx)
    client = tlsbio.TLSSocket(client_end, client_ctx, HOST)
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            server.handshake()
        except BaseException as error:  # reported by the test's thread
            failure.append(error)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        client.settimeout(10.0)
        client.do_handshake()
        thread.join()
        assert not failure, failure
        yield server, client
    finally:
        client_end.close()
        server_end.close()
        thread.join()


@pytest.fixture
def pair(
    certificates: tuple[CertificateAuthority, Path], tmp_path: Path
) -> Iterator[tuple[Server, tlsbio.TLSSocket]]:
    ca, ca_cert = certificates
    with connected(
        server_context(ca, ca_cert, tmp_path), ssl.create_default_context(cafile=ca_cert)
    ) as ends:
        yield ends


def wake(client: tlsbio.TLSSocket) -> bytes:
    """What one wake of the loop's reader gets: reads until the socket is found empty."""
    data = b""
    while True:
        try:
            piece = client.recv(65536)
        except BlockingIOError:
            return data
        if not piece:
            return data
        data += piece


def readable(client: tlsbio.TLSSocket) -> bytes:
    """The wakes of a level-triggered reader while bytes wait on the socket: the first
    may find nothing (the last read before it emptied the socket)."""
    return wake(client) or wake(client)


def test_a_record_is_read_when_whole_and_a_short_read_ends_the_wake(
    pair: tuple[Server, tlsbio.TLSSocket],
) -> None:
    server, client = pair
    client.setblocking(False)
    one, two = server.records(b"one"), server.records(b"two")
    server.sock.sendall(one + two[:7])
    assert readable(client) == b"one"
    assert wake(client) == b""  # the half record waits, no read blocks
    server.sock.sendall(two[7:])
    assert readable(client) == b"two"
    assert wake(client) == b""


def test_a_close_notify_and_then_the_close_read_as_the_end(
    pair: tuple[Server, tlsbio.TLSSocket],
) -> None:
    server, client = pair
    server.sock.sendall(server.records(b"last"))
    with contextlib.suppress(ssl.SSLWantReadError):  # it would wait for the client's
        server.tls.unwrap()
    server.send_pending()
    assert client.recv(100) == b"last"
    assert client.recv(100) == b""
    server.sock.close()
    assert client.recv(100) == b""
    assert client.recv(100) == b""  # and stays the end


def test_a_server_closing_during_the_handshake_is_an_eof(
    certificates: tuple[CertificateAuthority, Path],
) -> None:
    _, ca_cert = certificates
    server_end, client_end = socket.socketpair()

    def leave() -> None:  # after the client's hello
        server_end.recv(65536)
        server_end.close()

    thread = threading.Thread(target=leave)
    thread.start()
    with server_end, client_end:
        client = tlsbio.TLSSocket(client_end, ssl.create_default_context(cafile=ca_cert), HOST)
        client.settimeout(10.0)
        with pytest.raises(ssl.SSLEOFError, match="closed the connection during the TLS"):
            client.do_handshake()
    thread.join()


def test_an_answer_to_a_post_handshake_message_is_sent_while_reading(
    certificates: tuple[CertificateAuthority, Path], tmp_path: Path
) -> None:
    """TLS 1.3 post-handshake authentication: the server asks for the client's certificate
    after the handshake; the client's answer goes out from recv."""
    ca, ca_cert = certificates
    server_ctx = server_context(ca, ca_cert, tmp_path)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.post_handshake_auth = True
    client_ctx = ssl.create_default_context(cafile=ca_cert)
    client_ctx.post_handshake_auth = True
    cert, key = ca.issue("the-client")
    (tmp_path / "client.crt").write_bytes(cert)
    (tmp_path / "client.key").write_bytes(key)
    client_ctx.load_cert_chain(tmp_path / "client.crt", tmp_path / "client.key")
    with connected(server_ctx, client_ctx) as (server, client):
        assert server.tls.getpeercert() is None  # not asked in the handshake
        server.tls.verify_client_post_handshake()
        server.sock.sendall(server.records(b"who are you?"))
        assert client.recv(100) == b"who are you?"
        server.sock.settimeout(10.0)
        while server.tls.getpeercert() is None:
            server.incoming.write(server.sock.recv(65536))
            with contextlib.suppress(ssl.SSLWantReadError):
                server.tls.read(100)
        der = server.tls.getpeercert(binary_form=True)
        assert der is not None
        subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
        assert subject == "CN=the-client"


def test_a_send_the_socket_cannot_take_ends_the_connection(
    pair: tuple[Server, tlsbio.TLSSocket],
) -> None:
    """Non-blocking, a part of a TLS record sent and the rest lost would garble the stream
    (and BlockingIOError reads as "nothing arrived"): ConnectionError instead."""
    _, client = pair
    client.setblocking(False)
    with pytest.raises(ConnectionError, match="could not take"):
        for _ in range(10_000):  # the server reads nothing: the socket's buffer fills
            client.sendall(b"x" * 65536)


def test_an_answer_the_server_waits_for_is_sent_before_any_data(
    certificates: tuple[CertificateAuthority, Path], tmp_path: Path
) -> None:
    """The server asks for the client's certificate after the handshake and sends nothing
    until it has it: the answer goes out from the read that found the request, not with
    data that would only come after it (a watch silent until its read timeout)."""
    ca, ca_cert = certificates
    server_ctx = server_context(ca, ca_cert, tmp_path)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.post_handshake_auth = True
    client_ctx = ssl.create_default_context(cafile=ca_cert)
    client_ctx.post_handshake_auth = True
    cert, key = ca.issue("the-client")
    (tmp_path / "client.crt").write_bytes(cert)
    (tmp_path / "client.key").write_bytes(key)
    client_ctx.load_cert_chain(tmp_path / "client.crt", tmp_path / "client.key")
    with connected(server_ctx, client_ctx) as (server, client):
        client.setblocking(False)
        server.tls.verify_client_post_handshake()
        with contextlib.suppress(ssl.SSLWantReadError):  # writes the request
            server.tls.do_handshake()
        server.send_pending()
        assert readable(client) == b""  # no data for the reader
        # Sent from the read itself: on the server's socket already.
        server.sock.setblocking(False)
        server.incoming.write(server.sock.recv(65536))
        with contextlib.suppress(ssl.SSLWantReadError):
            server.tls.read(100)
        der = server.tls.getpeercert(binary_form=True)
        assert der is not None
        subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
        assert subject == "CN=the-client"


def test_records_without_data_give_the_loop_back_after_one_read(
    certificates: tuple[CertificateAuthority, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A flood of records with nothing for the reader (session tickets here, key updates
    alike): a non-blocking recv reads the socket once and raises BlockingIOError, so a
    server streaming them faster than they are decrypted cannot hold the loop's reader
    in one call (its read timeout, Lease renewals and health checks waiting behind it)."""
    ca, ca_cert = certificates
    server_ctx = server_context(ca, ca_cert, tmp_path)
    server_ctx.num_tickets = 64  # about 16 KB of records, sent after the handshake
    monkeypatch.setattr(tlsbio, "READ_SIZE", 512)  # each read full, as under a flood
    with connected(server_ctx, ssl.create_default_context(cafile=ca_cert)) as (server, client):
        server.sock.sendall(server.records(b"after the tickets"))
        client.setblocking(False)
        reads = 0
        fill = client._fill

        def counted() -> bool:
            nonlocal reads
            reads += 1
            return fill()

        client._fill = counted  # type: ignore[method-assign]
        most = 0
        data = b""
        for _ in range(1000):
            before = reads
            with contextlib.suppress(BlockingIOError):
                data = client.recv(65536)
            most = max(most, reads - before)
            if data:
                break
        assert data == b"after the tickets"
        assert most == 1
        assert reads > 16_000 // 512  # the tickets were read, a slice per call
