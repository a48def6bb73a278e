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

Here: ``main`` and the Kubernetes configuration; :mod:`.app` the two apps and the metrics,
:mod:`.cluster` the cluster watcher, :mod:`.tls` the certificate; the servers are
:mod:`kilo.agent.serving`'s, shared with ``kg``.

SIGINT/SIGTERM: stop accepting, let requests in progress finish (up to 5 s, as Kilo),
exit 0. Start-up failures (certificate, key, listen address, an explicit kubeconfig) are
one line on stderr and exit status 1.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING, TextIO

from kilo import __version__
from kilo.agent import logs
from kilo.agent.metrics import new_registry
from kilo.agent.serving import SHUTDOWN_GRACE_SECONDS, Server
from kilo.agent.settings import WebhookSettings
from kilo.agent.webhook.app import MetricsApp, WebhookApp, WebhookMetrics
from kilo.agent.webhook.cluster import ClusterWatcher
from kilo.agent.webhook.tls import load_tls
from kilo.errors import BackendError, ConfigError, KiloError
from kilo.mesh.text import printable

if TYPE_CHECKING:
    from lightkube.config.kubeconfig import SingleConfig


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
        metrics_server = Server(
            settings.listen_metrics, app=MetricsApp(registry), logger=log, name="kilo-metrics"
        )
        servers.append(("metrics", metrics_server))
        servers.append(
            (
                "webhook",
                Server(settings.listen, app=webhook_app, tls=tls, logger=log, name="kilo-webhook"),
            )
        )
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


__all__ = ["kube_config", "main"]
