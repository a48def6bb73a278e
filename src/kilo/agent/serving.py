"""HTTP serving for ``kg`` (``--listen``) and ``kg webhook`` (``--listen``, ``--listen-metrics``).

One home for what both servers do the same way, each a standard-library threading HTTP
server in a daemon thread, bound like Go's ``net.Listen`` (:mod:`kilo.agent.listen`):

* an *app* is a function from a :class:`Request` to a :class:`Response`; every method
  reaches it, as Go's ``ServeMux`` does, and an app that raises answers 500 (logged);
* errors are Go's ``http.Error``: ``text/plain; charset=utf-8``, ``nosniff``, the message
  and a newline; a request that cannot be parsed gets Go's plain-text answer;
* the body is read only when the app asks (``request.body()``), at most ``max_body``
  bytes, with ``Content-Length`` or chunked; what the app leaves unread is read away, so
  it is never parsed as the next request;
* with a TLS context the handshake runs in the connection's own thread (a client that
  never finishes it cannot stall the others) within ``HANDSHAKE_TIMEOUT_SECONDS``;
* :meth:`Server.stop` stops accepting and waits up to a grace period for requests in
  progress;
* a bind failure is a :class:`~kilo.errors.ConfigError` naming the address;
* requests are logged at debug level only.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from kilo.agent import listen as listen_mod
from kilo.agent.listen import ListeningServer
from kilo.errors import ConfigError

# Larger than any AdmissionReview the API server sends (objects are limited to 3 MiB, and a
# review carries at most two of them).
MAX_BODY = 16 * 1024 * 1024
HANDSHAKE_TIMEOUT_SECONDS = 10.0
# An idle keep-alive connection is closed after this long, so its thread ends.
IDLE_TIMEOUT_SECONDS = 300.0
SHUTDOWN_GRACE_SECONDS = 5.0
TEXT = "text/plain; charset=utf-8"

Logger = logging.Logger | logging.LoggerAdapter[Any]


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def error(status: int, message: str) -> Response:
    """Go's ``http.Error``."""
    return Response(
        status,
        (message + "\n").encode(),
        (("Content-Type", TEXT), ("X-Content-Type-Options", "nosniff")),
    )


class BodyError(Exception):
    """The request body could not be read; ``status`` and a one-line message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # without the query
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]  # lower-case names; the first of repeated headers, as Go's Get
    body: Callable[[], bytes]  # reads the body; raises BodyError
    source: str  # the client's address, for logs


App = Callable[[Request], Response]


def metrics(registry: CollectorRegistry, request: Request) -> Response:
    """The Prometheus exposition of ``registry``, as the client library's handler answers:
    the format the ``Accept`` header asks for, gzip when accepted, ``name[]`` filters."""
    selected: Any = registry
    if "name[]" in request.query:
        selected = registry.restricted_registry(request.query["name[]"])
    encoder, content_type = choose_encoder(request.headers.get("accept") or "")
    body = encoder(selected)
    headers = [("Content-Type", content_type)]
    if gzip_accepted(request.headers.get("accept-encoding") or ""):
        body = gzip.compress(body)
        headers.append(("Content-Encoding", "gzip"))
    return Response(200, body, tuple(headers))


# --- the handler ---------------------------------------------------------------------------

_DIGITS = re.compile(r"[0-9]+")
_HEX = re.compile(r"[0-9a-fA-F]+")


def _first_headers(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in items:
        headers.setdefault(name.lower(), value)
    return headers


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_SECONDS
    _body_done = False

    def __getattr__(self, name: str) -> Any:
        # Every method is served, as Go's ServeMux does (BaseHTTPRequestHandler looks up do_X).
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def _dispatch(self) -> None:
        server = cast(_Server, self.server)
        server.begin()
        try:
            self._body_done = False
            url = urlsplit(self.path)
            request = Request(
                method=self.command,
                path=url.path,
                query=parse_qs(url.query),
                headers=_first_headers(self.headers.items()),
                body=self._read_body,
                source=self.address_string(),
            )
            try:
                response = server.app(request)
            except Exception:
                # A server boundary: whatever broke, the client gets an answer and we a log.
                server.logger.exception(f"HTTP {self.command} {self.path} failed")
                response = error(500, "internal server error")
            if not self._body_done:
                # Read the unread body away: it must not be parsed as the next request, and
                # closing a socket with unread data resets it, which can lose the answer.
                with contextlib.suppress(BodyError):
                    self._read_body()
            if server.closing:
                self.close_connection = True
            self._send(response)
        finally:
            server.end()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # A request that cannot be parsed: Go's plain-text answer, not the library's HTML,
        # and always with an HTTP/1.1 status line.
        self.close_connection = True
        if self.request_version == "HTTP/0.9":
            self.request_version = self.protocol_version
        text = f"{code} {HTTPStatus(code).phrase}"
        self._send(error(code, f"{text}: {message}" if message else text))

    def _send(self, response: Response) -> None:
        self.log_request(response.status)
        self.send_response_only(response.status)
        self.send_header("Date", self.date_time_string())
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def _read_body(self) -> bytes:
        if self._body_done:
            raise BodyError(500, "the body was read already")
        self._body_done = True
        try:
            return self._read(cast(_Server, self.server).max_body)
        except BodyError:
            self.close_connection = True
            raise
        except OSError as exc:  # a timeout or a reset while reading
            self.close_connection = True
            raise BodyError(400, f"reading the request body failed: {exc}") from exc

    def _read(self, limit: int) -> bytes:
        encoding = self.headers.get("Transfer-Encoding")
        if encoding is not None:
            if encoding.strip().lower() != "chunked":
                raise BodyError(501, f"unsupported Transfer-Encoding {encoding!r}")
            return self._read_chunked(limit)
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return b""
        if not _DIGITS.fullmatch(length_text.strip()):
            raise BodyError(400, f"invalid Content-Length {length_text!r}")
        length = int(length_text)
        if length > limit:
            raise BodyError(413, f"request body too large: {length} bytes; the limit is {limit}")
        data = self.rfile.read(length)
        if len(data) < length:
            raise BodyError(400, "unexpected EOF")
        return data

    def _read_chunked(self, limit: int) -> bytes:
        body = bytearray()
        while True:
            line = self.rfile.readline(1024)
            if not line.endswith(b"\n"):
                raise BodyError(400, "malformed chunked encoding")
            size_text = line.split(b";", 1)[0].strip().decode("latin-1")
            if not _HEX.fullmatch(size_text) or len(size_text) > 8:
                raise BodyError(400, f"malformed chunk size {size_text!r}")
            size = int(size_text, 16)
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers are ignored
                return bytes(body)
            if len(body) + size > limit:
                raise BodyError(413, f"request body too large; the limit is {limit} bytes")
            chunk = self.rfile.read(size)
            if len(chunk) < size or self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise BodyError(400, "unexpected EOF")
            body += chunk

    def log_message(self, format: str, *args: Any) -> None:
        server = cast(_Server, self.server)
        server.logger.debug(f"{self.address_string()} {format % args}")


class _Server(ListeningServer):
    daemon_threads = True

    def __init__(
        self,
        family: socket.AddressFamily,
        address: tuple[Any, ...],
        *,
        app: App,
        tls: ssl.SSLContext | None,
        logger: Logger,
        max_body: int,
    ) -> None:
        self.app = app
        self.tls = tls
        self.logger = logger
        self.max_body = max_body
        self.closing = False
        self._active = 0
        self._idle = threading.Condition()
        super().__init__(family, address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        # The handshake runs here, in the connection's thread, not in the accept loop.
        request.settimeout(HANDSHAKE_TIMEOUT_SECONDS)
        try:
            connection = self.tls.wrap_socket(request, server_side=True)
        except (OSError, ValueError) as exc:
            self.logger.debug(f"TLS handshake with {client_address[0]} failed: {exc}")
            return
        try:
            super().finish_request(connection, client_address)
        finally:
            connection.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A broken connection ends its own thread only; the default prints a traceback.
        self.logger.debug(f"connection from {client_address[0]} failed", exc_info=True)

    def begin(self) -> None:
        with self._idle:
            self._active += 1

    def end(self) -> None:
        with self._idle:
            self._active -= 1
            self._idle.notify_all()

    def drain(self, timeout: float) -> bool:
        """Wait until no request is being answered; whether that happened in time."""
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout)


class Server:
    """One listening server (HTTPS with ``tls``), serving ``app`` once started."""

    def __init__(
        self,
        listen: str,
        *,
        app: App,
        logger: Logger,
        tls: ssl.SSLContext | None = None,
        max_body: int = MAX_BODY,
        name: str = "kilo-http",
    ) -> None:
        try:
            self._server = listen_mod.bind(
                listen,
                lambda family, address: _Server(
                    family, address, app=app, tls=tls, logger=logger, max_body=max_body
                ),
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(listen_mod.bind_error(listen, exc)) from exc
        self._name = name
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound address (the real port when ``listen`` asked for port 0)."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, name=self._name, daemon=True
            )
            self._thread.start()

    def stop(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> bool:
        """Stop accepting and close the socket, then wait up to ``grace`` for requests in
        progress; whether they ended. Idempotent."""
        self._server.closing = True
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
        return self._server.drain(grace)


__all__ = [
    "HANDSHAKE_TIMEOUT_SECONDS",
    "IDLE_TIMEOUT_SECONDS",
    "MAX_BODY",
    "SHUTDOWN_GRACE_SECONDS",
    "TEXT",
    "App",
    "BodyError",
    "Request",
    "Response",
    "Server",
    "error",
    "metrics",
]
