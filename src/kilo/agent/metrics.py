"""The agent's Prometheus metrics: Kilo's set, plus per-peer WireGuard metrics.

Kilo's metrics keep their names, HELP texts and labels (kilo-k8s-cli.md §5), so existing
dashboards and alerts keep working:

* ``kilo_errors_total{event}`` with events ``run``, ``checkin``, ``local``, ``apply`` and
  ``cleanUp``; ``kilo_leader``, ``kilo_nodes``, ``kilo_peers``; ``kilo_reconciles_total``.
* ``kilo_iptables_operations_total{operation, table, chain}`` with the constant label
  ``protocol`` (``IPv4``/``IPv6``). prometheus_client has no constant labels per metric,
  so ``protocol`` is an ordinary label here, always set. The series are the same, and
  labels are printed sorted by name, as Go prints them. The operation names are Kilo's;
  :mod:`kilo.adapters.iptables` documents how its restore scripts map onto them.
* Instead of Go's runtime collector: ``process_*`` (ProcessCollector), ``python_info``
  (PlatformCollector) and ``python_gc_*`` (GCCollector).

Additions (Kilo has no such metrics), from the live WireGuard device through the ``peers``
callable, read on every scrape:

* ``kilo_wireguard_peer_last_handshake_seconds{public_key, name}``: the Unix time of the
  peer's last handshake; no series for a peer that never completed one.
* ``kilo_wireguard_peer_receive_bytes_total{public_key, name}`` and
  ``kilo_wireguard_peer_transmit_bytes_total{public_key, name}``: bytes received from and
  sent to the peer (counters; they restart at 0 when the interface is recreated).

``name`` is the node or Peer the key belongs to, or ``""`` when the key is unknown. A
``peers`` callable that raises :class:`~kilo.errors.KiloError` (the device is gone, for
example) makes the scrape show no WireGuard series instead of failing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kilo.errors import KiloError

# public key, name, last handshake (Unix time, None for never), received bytes, sent bytes
PeerStats = tuple[str, str, float | None, int, int]
PeerSource = Callable[[], Sequence[PeerStats]]

ERROR_EVENTS = ("run", "checkin", "local", "apply", "cleanUp")
IPTABLES_LABELS = ("chain", "operation", "protocol", "table")
PEER_LABELS = ("public_key", "name")

LAST_HANDSHAKE = "kilo_wireguard_peer_last_handshake_seconds"
RECEIVE_BYTES = "kilo_wireguard_peer_receive_bytes"
TRANSMIT_BYTES = "kilo_wireguard_peer_transmit_bytes"


class WireGuardPeerCollector(Collector):
    """Per-peer WireGuard metrics, read from the device on every scrape (a Kilo extension)."""

    def __init__(self, peers: PeerSource) -> None:
        self._peers = peers

    def describe(self) -> Iterable[Metric]:
        # Lets the registry check names without reading the device at registration.
        return self._families()

    def collect(self) -> Iterable[Metric]:
        handshake, received, sent = self._families()
        try:
            stats = list(self._peers())
        except KiloError:
            return [handshake, received, sent]
        for public_key, name, last_handshake, rx_bytes, tx_bytes in stats:
            labels = [public_key, name]
            if last_handshake is not None:
                handshake.add_metric(labels, last_handshake)
            received.add_metric(labels, rx_bytes)
            sent.add_metric(labels, tx_bytes)
        return [handshake, received, sent]

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, CounterMetricFamily, CounterMetricFamily]:
        return (
            GaugeMetricFamily(
                LAST_HANDSHAKE,
                "Unix time of the last WireGuard handshake with the peer.",
                labels=PEER_LABELS,
            ),
            CounterMetricFamily(
                RECEIVE_BYTES,
                "Number of bytes received from the WireGuard peer.",
                labels=PEER_LABELS,
            ),
            CounterMetricFamily(
                TRANSMIT_BYTES,
                "Number of bytes sent to the WireGuard peer.",
                labels=PEER_LABELS,
            ),
        )


class AgentMetrics:
    """Every metric of the agent, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry, peers: PeerSource | None = None) -> None:
        self.errors = Counter(
            "kilo_errors_total",
            "Number of errors that occurred while administering the mesh.",
            ["event"],
            registry=registry,
        )
        self.leader = Gauge("kilo_leader", "Leadership status of the node.", registry=registry)
        self.nodes = Gauge("kilo_nodes", "Number of nodes in the mesh.", registry=registry)
        self.peers_gauge = Gauge("kilo_peers", "Number of peers in the mesh.", registry=registry)
        self.reconciles = Counter(
            "kilo_reconciles_total", "Number of reconciliation attempts.", registry=registry
        )
        self.iptables_operations = Counter(
            "kilo_iptables_operations_total",
            "Number of iptables operations.",
            IPTABLES_LABELS,
            registry=registry,
        )
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        if peers is not None:
            registry.register(WireGuardPeerCollector(peers))

    def iptables_operation(self, protocol: str, operation: str, table: str, chain: str) -> None:
        """Count one iptables operation (the ``on_operation`` callback of the iptables adapter)."""
        self.iptables_operations.labels(
            chain=chain, operation=operation, protocol=protocol, table=table
        ).inc()


__all__ = [
    "ERROR_EVENTS",
    "AgentMetrics",
    "PeerSource",
    "PeerStats",
    "WireGuardPeerCollector",
]
