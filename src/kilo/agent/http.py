"""The agent's HTTP server on ``--listen``: ``/health``, ``/metrics``, ``/graph`` and an index.

Kilo's endpoints (kilo-k8s-cli.md §3.4), served by the standard library's threading HTTP
server in a daemon thread. Any method is answered, as Go's ``ServeMux`` does. Differences
from Kilo, all deliberate:

* ``/health`` answers 503 with a one-line reason until ``healthy()`` is true (the agent
  makes it true after its first successful apply); Kilo always answers 200.
* ``/graph`` answers 500 with the error's message when the graph cannot be built (Kilo
  crashes the handler when the local node is not ready, and the client sees a dropped
  connection). The DOT text is handed to Graphviz through ``subprocess.run(input=...)``,
  so a large graph cannot deadlock on a full pipe, and a missing ``dot`` is named.
* ``/debug/`` (Go's pprof) answers 501.

Errors are written like Go's ``http.Error``: ``text/plain; charset=utf-8``,
``X-Content-Type-Options: nosniff``, the message and a newline. Requests are logged at
debug level only.
"""

from __future__ import annotations

import errno
import gzip
import logging
import shutil
import socket
import socketserver
import subprocess
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from kilo.errors import DataPlaneError, KiloError

INDEX = (
    b"<html><head><title>Internal Kilo API</title></head><body>\n"
    b"<h1>Internal Kilo API</h1>\n"
    b"<p><a href='/debug/'>/debug/ - Exposes pprof endpoints to consume via HTTP</a></p>\n"
    b"<p><a href='/graph'>/graph - Exposes Kilo mesh topology graph</a></p>\n"
    b"<p><a href='/health'>/health - Exposes health checks</a></p>\n"
    b"<p><a href='/metrics'>/metrics - Exposes Prometheus metrics</a></p>\n"
    b"</body></html>"
)
# Graphviz output formats Kilo accepts, with the Content-Type Kilo's image sends.
GRAPH_FORMATS: Mapping[str, str] = {
    "svg": "image/svg+xml",
    "png": "image/png",
    "bmp": "application/octet-stream",
    "fig": "application/octet-stream",
    "gif": "image/gif",
    "json": "application/json",
    "ps": "application/octet-stream",
}
GRAPH_LAYOUTS = ("circo", "dot", "neato", "twopi", "fdp")
DEFAULT_FORMAT = "svg"
DEFAULT_LAYOUT = "circo"
RENDER_TIMEOUT_SECONDS = 60.0
UNHEALTHY = "not ready: the mesh has not been applied successfully yet"
NO_DOT = "unable to render graph: Graphviz's dot is not installed; use ?format=dot"
# An idle keep-alive connection is closed after this long, so its thread ends.
IDLE_TIMEOUT_SECONDS = 300.0

_TEXT = "text/plain; charset=utf-8"
# Binding "::" fails with these when the kernel has no IPv6; then "0.0.0.0" is used.
_NO_IPV6 = frozenset({errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL})


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
        (("Content-Type", _TEXT), ("X-Content-Type-Options", "nosniff")),
    )


def parse_listen(listen: str) -> tuple[str, int]:
    """Split a Go listen address (``":1107"``, ``"[::1]:1107"``, ``"host:port"``).

    Raises :class:`ValueError` with Go's wording for a malformed address.
    """
    if listen.startswith("["):
        end = listen.find("]")
        if end < 0:
            raise ValueError(f"address {listen}: missing ']' in address")
        host, rest = listen[1:end], listen[end + 1 :]
        if not rest.startswith(":"):
            raise ValueError(f"address {listen}: missing port in address")
        port_text = rest[1:]
    else:
        host, colon, port_text = listen.rpartition(":")
        if not colon:
            raise ValueError(f"address {listen}: missing port in address")
        if ":" in host:
            raise ValueError(f"address {listen}: too many colons in address")
    if port_text.isdigit():
        port = int(port_text)
    else:
        try:
            port = socket.getservbyname(port_text, "tcp")
        except OSError:
            port = -1
    if not 0 <= port <= 65535:
        raise ValueError(f"address {listen}: unknown port {port_text!r}")
    return host, port


def _bind_targets(host: str, port: int) -> list[tuple[socket.AddressFamily, tuple[Any, ...]]]:
    """Where to bind, in order of preference (Go: dual-stack for no host, IPv4 first)."""
    if not host:
        targets: list[tuple[socket.AddressFamily, tuple[Any, ...]]] = []
        if socket.has_ipv6:
            targets.append((socket.AF_INET6, ("::", port)))
        targets.append((socket.AF_INET, ("0.0.0.0", port)))
        return targets
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    return [(info[0], info[4]) for info in infos[:1]]


class ListeningServer(ThreadingHTTPServer):
    """A threading HTTP server bound like Go's ``net.Listen`` (shared by kg and kg webhook)."""

    daemon_threads = True

    def __init__(
        self,
        family: socket.AddressFamily,
        address: tuple[Any, ...],
        handler: type[BaseHTTPRequestHandler],
    ) -> None:
        self.address_family = family
        super().__init__(address, handler, bind_and_activate=False)
        try:
            if family == socket.AF_INET6 and address[0] == "::":
                # Like Go, an address without a host serves IPv4 too.
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            self.server_bind()
            self.server_activate()
        except BaseException:
            self.server_close()
            raise

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn), which can hang on DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class _Server(ListeningServer):
    def __init__(self, family: socket.AddressFamily, address: tuple[Any, ...], app: _App) -> None:
        self.app = app
        super().__init__(family, address, _Handler)


@dataclass(frozen=True, slots=True)
class _App:
    registry: CollectorRegistry
    healthy: Callable[[], bool]
    graph: Callable[[], str]
    logger: logging.Logger

    def handle(self, path: str, query: Mapping[str, list[str]], headers: Any) -> Response:
        if path == "/health":
            return self.health()
        if path == "/metrics":
            return self.metrics(query, headers)
        if path == "/graph":
            return self.render_graph(query)
        if path == "/debug" or path.startswith("/debug/"):
            return error(501, "not implemented: this agent has no pprof endpoints")
        return Response(200, INDEX, (("Content-Type", "text/html; charset=utf-8"),))

    def health(self) -> Response:
        if self.healthy():
            return Response(200)
        return error(503, UNHEALTHY)

    def metrics(self, query: Mapping[str, list[str]], headers: Any) -> Response:
        registry: Any = self.registry
        if "name[]" in query:
            registry = registry.restricted_registry(query["name[]"])
        encoder, content_type = choose_encoder(headers.get("Accept", ""))
        body = encoder(registry)
        response_headers = [("Content-Type", content_type)]
        if gzip_accepted(headers.get("Accept-Encoding", "")):
            body = gzip.compress(body)
            response_headers.append(("Content-Encoding", "gzip"))
        return Response(200, body, tuple(response_headers))

    def render_graph(self, query: Mapping[str, list[str]]) -> Response:
        try:
            text = self.graph()
        except KiloError as exc:
            return error(500, str(exc))
        output = _first(query, "format") or DEFAULT_FORMAT
        if output in ("dot", "gv"):
            return Response(200, text.encode(), (("Content-Type", _TEXT),))
        if output not in GRAPH_FORMATS:
            return error(500, "unsupported format")
        layout = _first(query, "layout") or DEFAULT_LAYOUT
        if layout not in GRAPH_LAYOUTS:
            return error(500, "unsupported layout")
        dot = shutil.which("dot")
        if dot is None:
            return error(500, NO_DOT)
        try:
            result = subprocess.run(
                [dot, f"-K{layout}", f"-T{output}"],
                input=text.encode(),
                capture_output=True,
                timeout=RENDER_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return error(
                500, f"unable to render graph: dot took longer than {RENDER_TIMEOUT_SECONDS:g} s"
            )
        except OSError as exc:
            return error(500, f"unable to render graph: {exc.strerror or exc}")
        if result.returncode != 0:
            self.logger.warning(
                "dot -K%s -T%s failed: %s",
                layout,
                output,
                result.stderr.decode(errors="replace").strip(),
            )
            return error(500, "unable to render graph")
        return Response(200, result.stdout, (("Content-Type", GRAPH_FORMATS[output]),))


def _first(query: Mapping[str, list[str]], name: str) -> str:
    values = query.get(name)
    return values[0] if values else ""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_SECONDS

    def __getattr__(self, name: str) -> Any:
        # Every method is served, as Go's ServeMux does (BaseHTTPRequestHandler looks up do_X).
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def _dispatch(self) -> None:
        app = cast(_Server, self.server).app
        url = urlsplit(self.path)
        try:
            response = app.handle(url.path, parse_qs(url.query), self.headers)
        except Exception:
            # A server boundary: whatever broke, the client gets an answer and the agent a log.
            app.logger.exception("HTTP %s %s failed", self.command, self.path)
            response = error(500, "internal server error")
        if self.headers.get("Content-Length", "0") != "0" or "Transfer-Encoding" in self.headers:
            # The request body is never read; do not parse it as the next request.
            self.close_connection = True
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

    def log_message(self, format: str, *args: Any) -> None:
        cast(_Server, self.server).app.logger.debug("%s %s", self.address_string(), format % args)


class HTTPServer:
    """Serves the agent's endpoints on ``listen`` once started."""

    def __init__(
        self,
        listen: str,
        *,
        registry: CollectorRegistry,
        healthy: Callable[[], bool],
        graph: Callable[[], str],
        logger: logging.Logger | None = None,
    ) -> None:
        app = _App(
            registry=registry,
            healthy=healthy,
            graph=graph,
            logger=logger or logging.getLogger(__name__),
        )
        try:
            host, port = parse_listen(listen)
            self._server = self._bind(host, port, app)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise DataPlaneError(f"failed to listen on {listen}: {reason}") from exc
        self._thread: threading.Thread | None = None

    @staticmethod
    def _bind(host: str, port: int, app: _App) -> _Server:
        targets = _bind_targets(host, port)
        for index, (family, address) in enumerate(targets):
            try:
                return _Server(family, address, app)
            except OSError as exc:
                # No IPv6 in this kernel: fall back to IPv4 for a host-less address.
                if index + 1 == len(targets) or exc.errno not in _NO_IPV6:
                    raise
        raise OSError("no address to listen on")

    @property
    def address(self) -> tuple[str, int]:
        """The bound address (the real port when ``listen`` asked for port 0)."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="kilo-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket; idempotent."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()


__all__ = [
    "DEFAULT_FORMAT",
    "DEFAULT_LAYOUT",
    "GRAPH_FORMATS",
    "GRAPH_LAYOUTS",
    "INDEX",
    "HTTPServer",
    "parse_listen",
]
