"""The agent's HTTP server on ``--listen``: ``/health``, ``/metrics``, ``/graph`` and an index.

Kilo's endpoints (kilo-k8s-cli.md §3.4), served by :mod:`kilo.agent.serving` (shared with
``kg webhook``: any method answered, Go's ``http.Error``, debug-level request logs).
Differences from Kilo, all deliberate:

* ``/health`` answers 503 with a one-line reason until ``healthy()`` is true (the agent
  makes it true after its first successful apply); Kilo always answers 200.
* ``/graph`` answers 500 with the error's message when the graph cannot be built (Kilo
  crashes the handler when the local node is not ready, and the client sees a dropped
  connection). The DOT text is handed to Graphviz through ``subprocess.run(input=...)``,
  so a large graph cannot deadlock on a full pipe, and a missing ``dot`` is named.
* ``/debug/`` (Go's pprof) answers 501.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from kilo.agent import serving
from kilo.agent.serving import Request, Response, error
from kilo.errors import KiloError

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
# The agent reads no request body; what a client sends is read away up to this much.
MAX_BODY = 1024 * 1024


@dataclass(frozen=True, slots=True)
class AgentApp:
    """The agent's endpoints."""

    registry: CollectorRegistry
    healthy: Callable[[], bool]
    graph: Callable[[], str]
    logger: logging.Logger

    def __call__(self, request: Request) -> Response:
        path = request.path
        if path == "/health":
            return self.health()
        if path == "/metrics":
            return serving.metrics(self.registry, request)
        if path == "/graph":
            return self.render_graph(request.query)
        if path == "/debug" or path.startswith("/debug/"):
            return error(501, "not implemented: this agent has no pprof endpoints")
        return Response(200, INDEX, (("Content-Type", "text/html; charset=utf-8"),))

    def health(self) -> Response:
        if self.healthy():
            return Response(200)
        return error(503, UNHEALTHY)

    def render_graph(self, query: Mapping[str, list[str]]) -> Response:
        try:
            text = self.graph()
        except KiloError as exc:
            return error(500, str(exc))
        output = _first(query, "format") or DEFAULT_FORMAT
        if output in ("dot", "gv"):
            return Response(200, text.encode(), (("Content-Type", serving.TEXT),))
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


class HTTPServer(serving.Server):
    """Serves the agent's endpoints on ``listen`` once started; a ``listen`` that cannot be
    bound is a :class:`~kilo.errors.ConfigError` naming it."""

    def __init__(
        self,
        listen: str,
        *,
        registry: CollectorRegistry,
        healthy: Callable[[], bool],
        graph: Callable[[], str],
        logger: logging.Logger | None = None,
    ) -> None:
        log = logger or logging.getLogger(__name__)
        app = AgentApp(registry=registry, healthy=healthy, graph=graph, logger=log)
        super().__init__(listen, app=app, logger=log, max_body=MAX_BODY, name="kilo-http")


__all__ = [
    "DEFAULT_FORMAT",
    "DEFAULT_LAYOUT",
    "GRAPH_FORMATS",
    "GRAPH_LAYOUTS",
    "INDEX",
    "AgentApp",
    "HTTPServer",
]
