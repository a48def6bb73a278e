"""The webhook's two apps: ``/validate`` (an AdmissionReview in, Kilo's answer out) and
``/metrics`` (Kilo's three webhook metrics, no ``kilo_`` prefix).

The decision itself is the pure :func:`kilo.mesh.admission.review`; here are its HTTP
side, its metrics and its log lines.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)

from kilo.agent import serving
from kilo.agent.serving import BodyError, Request, Response, error
from kilo.agent.webhook.cluster import NOT_SYNCED, UNSYNCED, ClusterView
from kilo.mesh import admission

VALIDATE = "/validate"
METRICS = "/metrics"
NOT_FOUND = "404 page not found"
OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT"})


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
        return serving.metrics(self._registry, request)


__all__ = [
    "METRICS",
    "NOT_FOUND",
    "OPERATIONS",
    "VALIDATE",
    "MetricsApp",
    "WebhookApp",
    "WebhookMetrics",
]
