"""The agent's Prometheus metrics: Kilo's set, plus per-peer WireGuard metrics.

Kilo's metrics keep their names, HELP texts and labels (kilo-k8s-cli.md §5), so existing
dashboards and alerts keep working:

* ``kilo_errors_total{event}`` with events ``run``, ``checkin``, ``local``, ``apply`` and
  ``cleanUp``; ``kilo_leader``, ``kilo_nodes``, ``kilo_peers``; ``kilo_reconciles_total``.
  Unlike Kilo, each of the five error series is exported from the start, at 0: a series that
  first appears at 1 has no ``increase()`` or ``rate()``, so a dashboard or an alert would
  never see the first error of an event.
* ``kilo_iptables_operations_total{operation, table, chain}`` with the constant label
  ``protocol`` (``IPv4``/``IPv6``). prometheus_client has no constant labels per metric,
  so ``protocol`` is an ordinary label here, always set. The series are the same, and
  labels are printed sorted by name, as Go prints them. The operation names are Kilo's;
  :mod:`kilo.adapters.iptables` documents how its restore scripts map onto them.
* Instead of Go's runtime collector: ``process_*`` (ProcessCollector), ``python_info``
  (PlatformCollector) and ``python_gc_*`` (GCCollector).

Additions (Kilo has no such metrics):

* ``kilo_node_info{node, location}``, always 1: the agent's node and its location as the mesh
  sees it (``""`` for none), set at each apply. ``kilo_leader`` has no location, so this is
  what a dashboard joins it with to show the leader of each location.

From the live WireGuard device through the ``peers`` callable, read on every scrape:

* ``kilo_wireguard_peer_last_handshake_seconds{public_key, name}``: the Unix time of the
  peer's last handshake; no series for a peer that never completed one.
* ``kilo_wireguard_peer_receive_bytes_total{public_key, name}`` and
  ``kilo_wireguard_peer_transmit_bytes_total{public_key, name}``: bytes received from and
  sent to the peer (counters; they restart at 0 when the interface is recreated).

``name`` is the node or Peer the key belongs to, or ``""`` when the key is unknown. A
``peers`` callable that raises :class:`~kilo.errors.KiloError` (the device is gone, for
example) makes the scrape show no WireGuard series instead of failing.

prometheus_client adds a ``<name>_created`` series (the start time) to every counter; Kilo's
Go client has none, and they would double the series Prometheus stores for nothing a
dashboard uses. :func:`new_registry` turns them off for the whole process, which is why only
the composition roots (``kg`` and ``kg webhook``) call it.
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
    disable_created_metrics,
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

NODE_LABELS = ("node", "location")

LAST_HANDSHAKE = "kilo_wireguard_peer_last_handshake_seconds"
RECEIVE_BYTES = "kilo_wireguard_peer_receive_bytes"
TRANSMIT_BYTES = "kilo_wireguard_peer_transmit_bytes"


def new_registry() -> CollectorRegistry:
    """The registry of a ``kg`` or ``kg webhook`` process, without ``_created`` series.

    Process-wide: every counter created afterwards, in any registry, has no ``_created``
    series. For composition roots only.
    """
    disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client
    return CollectorRegistry()


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
        for event in ERROR_EVENTS:
            self.errors.labels(event=event)
        self.leader = Gauge("kilo_leader", "Leadership status of the node.", registry=registry)
        self.node_info = Gauge(
            "kilo_node_info",
            "The node of this agent and its location in the mesh; always 1.",
            NODE_LABELS,
            registry=registry,
        )
        self._node: tuple[str, str] | None = None
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

    def set_node(self, node: str, location: str) -> None:
        """``kilo_node_info``: one series, for the node's current location."""
        if self._node == (node, location):
            return
        if self._node is not None:
            self.node_info.remove(*self._node)
        self.node_info.labels(node=node, location=location).set(1)
        self._node = (node, location)

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
    "new_registry",
]
