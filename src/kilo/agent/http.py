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

import gzip
import logging
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from kilo.agent import listen as listen_mod
from kilo.agent.listen import ListeningServer
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
            self._server = listen_mod.bind(
                listen, lambda family, address: _Server(family, address, app)
            )
        except (OSError, ValueError) as exc:
            raise DataPlaneError(listen_mod.bind_error(listen, exc)) from exc
        self._thread: threading.Thread | None = None

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
]
