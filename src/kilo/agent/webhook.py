"""``kg webhook``: the Peer-validation admission webhook (kilo-k8s-cli.md §3.5).

Composition root of the webhook. Two servers, each a standard-library threading HTTP
server in a daemon thread:

* HTTPS on ``--listen`` (``--cert-file``/``--key-file``) serving only ``/validate``, any
  method; the TLS handshake runs in the connection's own thread, so a client that never
  finishes it cannot stall the others. Other paths answer 404.
* plain HTTP on ``--listen-metrics`` serving only ``/metrics``: Kilo's three webhook
  metrics, ``admission_requests_total{operation,response}``,
  ``http_requests_total{handler,method}`` and ``errors_total`` (no ``kilo_`` prefix), plus
  the process and Python collectors; no ``_created`` series
  (:func:`kilo.agent.metrics.new_registry`).

The decision itself is the pure :func:`kilo.mesh.admission.review`. For its overlap checks
(an extension: Kilo's webhook reads nothing from the cluster) a :class:`ClusterWatcher`
keeps Nodes and Peers with two Informers in an asyncio loop in a background thread and
publishes an immutable snapshot that request threads read without locks. Until both caches
have synced, Peers are judged with Kilo's checks only, and each such request says so in a
log line: the API server is never kept waiting for the cluster. Without any Kubernetes
configuration (no ``--kubeconfig``/``--master``, no kubeconfig file, not in a cluster) the
webhook runs with Kilo's checks only, as Kilo's does.

SIGINT/SIGTERM: stop accepting, let requests in progress finish (up to 5 s, as Kilo),
exit 0. Start-up failures (certificate, key, listen address, an explicit kubeconfig) are
one line on stderr and exit status 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import re
import signal
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from types import FrameType, MappingProxyType
from typing import TYPE_CHECKING, Any, TextIO, cast
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder, gzip_accepted

from kilo import __version__
from kilo.agent import listen as listen_mod
from kilo.agent import logs
from kilo.agent.listen import ListeningServer
from kilo.agent.metrics import new_registry
from kilo.agent.settings import WebhookSettings
from kilo.errors import BackendError, ConfigError, KiloError
from kilo.mesh import admission
from kilo.mesh.ip import IPNetwork
from kilo.mesh.model import Peer
from kilo.mesh.text import printable, shorten

if TYPE_CHECKING:
    from lightkube.config.kubeconfig import SingleConfig

VALIDATE = "/validate"
METRICS = "/metrics"
NOT_FOUND = "404 page not found"
# Larger than any AdmissionReview the API server sends (objects are limited to 3 MiB, and a
# review carries at most two of them).
MAX_BODY = 16 * 1024 * 1024
HANDSHAKE_TIMEOUT_SECONDS = 10.0
IDLE_TIMEOUT_SECONDS = 300.0
SHUTDOWN_GRACE_SECONDS = 5.0
OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT"})
NOT_SYNCED = (
    "the cluster state has not been synced yet: judging with Kilo's checks only, "
    "without the allowed-IP overlap checks"
)

_TEXT = "text/plain; charset=utf-8"


# --- cluster state -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClusterView:
    """What the overlap checks read: never mutated once published."""

    synced: bool = False
    peers: Mapping[str, Peer] = field(default_factory=lambda: MappingProxyType({}))
    pod_cidrs: Mapping[str, tuple[IPNetwork, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )


UNSYNCED = ClusterView()


class ClusterWatcher:
    """Nodes' pod CIDRs and valid Peers, kept current by two Informers in a background thread.

    ``view`` is an immutable snapshot; a new one is published only when a pod CIDR or a
    Peer's allowed IPs change, so the frequent ``last-seen`` patches of nodes cost nothing.
    A refused first list (RBAC, a missing CRD) is logged and retried with backoff; the
    webhook keeps answering with Kilo's checks in the meantime.
    """

    def __init__(
        self,
        config: SingleConfig,
        *,
        logger: logging.LoggerAdapter[logging.Logger],
        retry_initial: float = 1.0,
        retry_max: float = 60.0,
    ) -> None:
        self._config = config
        self._log = logger
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self.view: ClusterView = UNSYNCED
        self._pod_cidrs: dict[str, tuple[IPNetwork, ...]] = {}
        self._peers: dict[str, Peer] = {}
        self._synced: set[str] = set()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stopping = False
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    def start(self) -> None:
        """Start the thread; raises :class:`BackendError` if no API client can be built."""
        self._thread = threading.Thread(target=self._main, name="kilo-webhook-cluster", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self._thread.join()
            raise BackendError(
                f"cannot use the credentials for {self._config.cluster.server}: {self._start_error}"
            ) from self._start_error

    def current(self) -> ClusterView:
        return self.view

    def stop(self, timeout: float = SHUTDOWN_GRACE_SECONDS) -> None:
        self._stopping = True
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has ended already
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # a thread's boundary: report, never die silently
            if not self._started.is_set():
                self._start_error = exc
                self._started.set()
            else:
                self._log.exception("the cluster watcher failed; Kilo's checks only from now on")
                self.view = UNSYNCED

    async def _run(self) -> None:
        from lightkube import AsyncClient

        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        try:
            client = AsyncClient(self._config, trust_env=False)
        except Exception as exc:
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        if self._stopping:
            await client.close()
            return
        async with client:
            tasks = [
                asyncio.create_task(self._follow(client, resource))
                for resource in ("nodes", "peers")
            ]
            await self._stop.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _follow(self, client: Any, resource: str) -> None:
        from kilo.adapters import kubernetes

        server = str(self._config.cluster.server)

        def on_error(message: str) -> None:
            self._log.warning(
                f"the watch of {resource} failed; retrying", fields={"error": message}
            )

        informer = kubernetes.Informer(
            client, resource, server=server, retry_refusals=True, on_error=on_error
        )
        delay = self._retry_initial
        while True:
            events = informer.events()
            waiter = asyncio.create_task(self._wait_listed(informer, resource))
            try:
                async with contextlib.aclosing(events):
                    async for event in events:
                        self.apply_event(resource, event.type, event.name, event.obj)
            except BackendError as exc:
                # Refused before the first list (RBAC, the CRD): misconfiguration, but the
                # webhook must keep answering, so keep trying.
                self._log.error(
                    f"cannot read {resource}; {NOT_SYNCED} until it can; retrying in {delay:g} s",
                    fields={"error": str(exc)},
                )
            except Exception as exc:
                self._log.error(
                    f"reading {resource} failed; retrying in {delay:g} s",
                    fields={"error": f"{type(exc).__name__}: {exc}"},
                )
            finally:
                waiter.cancel()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._retry_max)

    async def _wait_listed(self, informer: Any, resource: str) -> None:
        # An empty first list yields no event, so the end of the first list is noticed by
        # looking at the informer, not by waiting for an event.
        while informer.relists == 0:
            await asyncio.sleep(0.05)
        self.listed(resource, informer.cache)

    def listed(self, resource: str, cache: Mapping[str, Mapping[str, Any]]) -> None:
        """The first list of ``resource`` is complete (called in the watcher's loop only)."""
        if resource in self._synced:
            return
        for name, obj in list(cache.items()):
            self._update(resource, name, obj)
        self._synced.add(resource)
        if self._synced == {"nodes", "peers"}:
            self._log.info(
                "the cluster state is synced; checking allowed IPs for overlaps",
                fields={"nodes": len(self._pod_cidrs), "peers": len(self._peers)},
            )
        self._publish()

    def apply_event(self, resource: str, kind: str, name: str, obj: Mapping[str, Any]) -> None:
        """One watch event (called in the watcher's loop only)."""
        changed = self._update(resource, name, None if kind == "DELETED" else obj)
        if changed:
            self._publish()

    def _update(self, resource: str, name: str, obj: Mapping[str, Any] | None) -> bool:
        """Record one object (``None``: deleted); whether the view changes.

        An object that cannot be read (a bug) keeps its last known state and is logged:
        one object must never keep the webhook from following the cluster.
        """
        try:
            return self._record(resource, name, obj)
        except Exception as exc:
            self._log.error(
                "could not read an object; it keeps its last known state",
                fields={
                    "resource": resource,
                    "name": shorten(name, 253),
                    "error": shorten(f"{type(exc).__name__}: {exc}", 200),
                },
            )
            return False

    def _record(self, resource: str, name: str, obj: Mapping[str, Any] | None) -> bool:
        if resource == "nodes":
            cidrs = admission.pod_cidrs_of(obj) if obj is not None else ()
            if self._pod_cidrs.get(name, ()) == cidrs:
                return False
            if cidrs:
                self._pod_cidrs[name] = cidrs
            else:
                self._pod_cidrs.pop(name, None)
            return True
        from kilo.mesh.translate import translate_peer

        # An invalid Peer is not in the mesh, so its allowed IPs cannot conflict.
        peer = translate_peer(obj).value if obj is not None else None
        previous = self._peers.get(name)
        if (previous.allowed_ips if previous else None) == (peer.allowed_ips if peer else None):
            return False
        if peer is not None:
            self._peers[name] = peer
        else:
            self._peers.pop(name, None)
        return True

    def _publish(self) -> None:
        self.view = ClusterView(
            synced=self._synced == {"nodes", "peers"},
            peers=MappingProxyType(dict(self._peers)),
            pod_cidrs=MappingProxyType(dict(self._pod_cidrs)),
        )


# --- metrics -------------------------------------------------------------------------------


class WebhookMetrics:
    """Kilo's webhook metrics (no ``kilo_`` prefix), registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.admission_requests = Counter(
            "admission_requests_total",
            "The number of received admission reviews requests",
            ["operation", "response"],
            registry=registry,
        )
        self.http_requests = Counter(
            "http_requests_total",
            "The number of received http requests",
            ["handler", "method"],
            registry=registry,
        )
        self.errors = Counter("errors_total", "The total number of errors", registry=registry)
        # Instead of Go's runtime collector, as for the agent.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)


# --- requests and answers ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


def error(status: int, message: str) -> Response:
    """Go's ``http.Error``."""
    return Response(
        status,
        (message + "\n").encode(),
        (("Content-Type", _TEXT), ("X-Content-Type-Options", "nosniff")),
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
    headers: Mapping[str, str]  # lower-case names; the first of repeated headers, as Go's Get
    body: Callable[[], bytes]  # reads the body; raises BodyError
    source: str  # the client's address, for logs


App = Callable[[Request], Response]


class WebhookApp:
    """``/validate``: one AdmissionReview in, one answer out."""

    def __init__(
        self,
        *,
        metrics: WebhookMetrics,
        view: Callable[[], ClusterView] | None,
        logger: logging.LoggerAdapter[logging.Logger],
    ) -> None:
        """``view`` is ``None`` when the webhook runs without cluster access."""
        self._metrics = metrics
        self._view = view
        self._log = logger

    def __call__(self, request: Request) -> Response:
        if request.path != VALIDATE:
            return error(404, NOT_FOUND)
        self._metrics.http_requests.labels(handler=VALIDATE, method=request.method).inc()
        try:
            body = request.body()
        except BodyError as exc:
            self._metrics.errors.inc()
            self._log.error(
                "failed to parse body from incoming request",
                fields={
                    "source": request.source,
                    "err": "failed to parse body from incoming request",
                    "error": exc.message,
                },
            )
            return error(exc.status, exc.message)
        view = self._view() if self._view is not None else UNSYNCED
        answer = admission.review(
            body,
            request.headers.get("content-type"),
            peers=view.peers,
            pod_cidrs=view.pod_cidrs,
        )
        if answer.allowed is None:
            self._metrics.errors.inc()
            self._log.error(
                answer.message, fields={"source": request.source, "err": answer.message}
            )
            return Response(
                answer.status,
                answer.body,
                (("Content-Type", answer.content_type), ("X-Content-Type-Options", "nosniff")),
            )
        response = "allowed" if answer.allowed else "denied"
        # Kubernetes sends one of four operations; any other text shares one label value, so
        # that a client cannot grow the metrics without bound.
        operation = answer.operation if answer.operation in OPERATIONS else "other"
        self._metrics.admission_requests.labels(operation=operation, response=response).inc()
        fields = {"name": answer.name, "operation": answer.operation, "uid": answer.uid}
        if answer.allowed:
            if self._view is not None and not view.synced and answer.operation != "DELETE":
                self._log.warning(f"peer allowed; {NOT_SYNCED}", fields=fields)
            self._log.debug("got valid peer spec", fields=fields)
        else:
            self._log.info("got invalid peer spec", fields={**fields, "reason": answer.message})
        return Response(answer.status, answer.body, (("Content-Type", answer.content_type),))


class MetricsApp:
    """``/metrics``: the Prometheus exposition of ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def __call__(self, request: Request) -> Response:
        if request.path != METRICS:
            return error(404, NOT_FOUND)
        encoder, content_type = choose_encoder(request.headers.get("accept") or "")
        body = encoder(self._registry)
        headers = [("Content-Type", content_type)]
        if gzip_accepted(request.headers.get("accept-encoding") or ""):
            body = gzip.compress(body)
            headers.append(("Content-Encoding", "gzip"))
        return Response(200, body, tuple(headers))


# --- the servers ---------------------------------------------------------------------------

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
            request = Request(
                method=self.command,
                path=urlsplit(self.path).path,
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
            return self._read()
        except BodyError:
            self.close_connection = True
            raise
        except OSError as exc:  # a timeout or a reset while reading
            self.close_connection = True
            raise BodyError(400, f"reading the request body failed: {exc}") from exc

    def _read(self) -> bytes:
        encoding = self.headers.get("Transfer-Encoding")
        if encoding is not None:
            if encoding.strip().lower() != "chunked":
                raise BodyError(501, f"unsupported Transfer-Encoding {encoding!r}")
            return self._read_chunked()
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return b""
        if not _DIGITS.fullmatch(length_text.strip()):
            raise BodyError(400, f"invalid Content-Length {length_text!r}")
        length = int(length_text)
        if length > MAX_BODY:
            raise BodyError(413, f"request body too large: {length} bytes; the limit is {MAX_BODY}")
        data = self.rfile.read(length)
        if len(data) < length:
            raise BodyError(400, "unexpected EOF")
        return data

    def _read_chunked(self) -> bytes:
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
            if len(body) + size > MAX_BODY:
                raise BodyError(413, f"request body too large; the limit is {MAX_BODY} bytes")
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
        logger: logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self.app = app
        self.tls = tls
        self.logger = logger
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
        tls: ssl.SSLContext | None = None,
        logger: logging.LoggerAdapter[logging.Logger],
    ) -> None:
        try:
            self._server = listen_mod.bind(
                listen,
                lambda family, address: _Server(family, address, app=app, tls=tls, logger=logger),
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(listen_mod.bind_error(listen, exc)) from exc
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, name="kilo-webhook-http", daemon=True
            )
            self._thread.start()

    def stop(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> bool:
        """Stop accepting, wait up to ``grace`` for requests in progress; whether they ended."""
        self._server.closing = True
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
        return self._server.drain(grace)


# --- start-up ------------------------------------------------------------------------------


def load_tls(cert_file: str, key_file: str) -> ssl.SSLContext:
    """The server's TLS context; :class:`ConfigError` names the flag, the file and the problem."""
    for flag, path in (("--cert-file", cert_file), ("--key-file", key_file)):
        if not path:
            raise ConfigError(f"{flag} is empty: the webhook serves HTTPS only")
    contents = {}
    for flag, path in (("--cert-file", cert_file), ("--key-file", key_file)):
        try:
            with open(path, "rb") as file:
                contents[flag] = file.read()
        except OSError as exc:
            raise ConfigError(f"cannot read {flag} {path}: {exc.strerror or exc}") from exc
    try:
        x509.load_pem_x509_certificates(contents["--cert-file"])
    except ValueError as exc:
        raise ConfigError(f"--cert-file {cert_file} holds no PEM certificate: {exc}") from exc
    try:
        serialization.load_pem_private_key(contents["--key-file"], password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"--key-file {key_file} holds no unencrypted PEM private key: {exc}"
        ) from exc
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"the certificate in --cert-file {cert_file} does not match the key in "
            f"--key-file {key_file}: {exc}"
        ) from exc
    return context


def kube_config(
    settings: WebhookSettings, log: logging.LoggerAdapter[logging.Logger]
) -> SingleConfig | None:
    """The API client config, or ``None`` (with a warning) when there is none to be found.

    A ``--kubeconfig`` or ``--master`` that cannot be used is an error, as for ``kg``.
    """
    import msgspec

    from kilo.adapters import kubeconfig

    try:
        config = kubeconfig.load(settings.kubeconfig or None)
    except BackendError as exc:
        if settings.kubeconfig or settings.master:
            raise ConfigError(f"failed to create Kubernetes config: {exc}") from exc
        log.warning(
            "no Kubernetes configuration: judging peers with Kilo's checks only, without the "
            "allowed-IP overlap checks",
            fields={"error": str(exc)},
        )
        return None
    if settings.master:
        config = config._replace(
            cluster=msgspec.structs.replace(config.cluster, server=settings.master)
        )
    return config


def main(settings: WebhookSettings, *, out: TextIO, err: TextIO) -> int:
    """Run the webhook until SIGINT/SIGTERM; the exit status."""
    logs.configure(settings.log.level, out)
    log = logs.get("webhook")
    stop = threading.Event()
    caught: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        caught.append(signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    servers: list[tuple[str, Server]] = []
    watcher: ClusterWatcher | None = None
    try:
        tls = load_tls(settings.cert_file, settings.key_file)
        config = kube_config(settings, log)
        registry = new_registry()
        metrics = WebhookMetrics(registry)
        if config is not None:
            watcher = ClusterWatcher(config, logger=log)
        view = watcher.current if watcher is not None else None
        webhook_app = WebhookApp(metrics=metrics, view=view, logger=log)
        # Kilo starts the metrics server first.
        metrics_server = Server(settings.listen_metrics, app=MetricsApp(registry), logger=log)
        servers.append(("metrics", metrics_server))
        servers.append(("webhook", Server(settings.listen, app=webhook_app, tls=tls, logger=log)))
        if watcher is not None:
            watcher.start()
    except KiloError as exc:
        for _, server in servers:
            server.stop(0)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        print(printable(str(exc)), file=err)
        return 1
    try:
        log.info(f"Starting Kilo peer-validation webhook '{__version__}'.")
        for (name, server), listen in zip(
            servers, (settings.listen_metrics, settings.listen), strict=True
        ):
            server.start()
            host, port = server.address
            log.info(
                f"starting {name} server", fields={"address": listen, "bound": f"{host}:{port}"}
            )
        stop.wait()
        log.info("received signal", fields={"signal": signal.Signals(caught[0]).name})
        return 0
    finally:
        for name, server in reversed(servers):
            log.info(f"shutting down {name} server gracefully")
            if not server.stop(SHUTDOWN_GRACE_SECONDS):
                log.error(f"failed to shut down {name} server gracefully: requests still open")
        if watcher is not None:
            watcher.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
