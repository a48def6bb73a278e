"""The agent's metrics: Kilo's names, HELP texts and labels, and the additions."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
from prometheus_client import CollectorRegistry, enable_created_metrics, generate_latest
from prometheus_client import metrics as prometheus_metrics

from kilo.agent.metrics import ERROR_EVENTS, AgentMetrics, PeerStats, new_registry
from kilo.errors import DataPlaneError

KEY_A = "GH4fCNZAAyT6EyxFJLZG2BmpFeo3iQMIqMUqwmTvIUE="
KEY_B = "cOdXJtGWSyFqXDwEBaBJtGDA6zM8yAF0qRZyhTNv8HA="


def exposition(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def test_kilo_metrics_have_kilos_names_help_and_labels() -> None:
    registry = CollectorRegistry()
    metrics = AgentMetrics(registry)
    metrics.errors.labels(event="apply").inc()
    metrics.leader.set(1)
    metrics.nodes.set(4)
    metrics.peers_gauge.set(1)
    metrics.reconciles.inc()
    metrics.iptables_operation("IPv4", "AppendUnique", "nat", "KILO-NAT")
    metrics.iptables_operation("IPv4", "AppendUnique", "nat", "KILO-NAT")
    metrics.iptables_operation("IPv6", "List", "filter", "*")
    text = exposition(registry)
    for line in [
        "# HELP kilo_errors_total Number of errors that occurred while administering the mesh.",
        "# TYPE kilo_errors_total counter",
        'kilo_errors_total{event="apply"} 1.0',
        "# HELP kilo_leader Leadership status of the node.",
        "# TYPE kilo_leader gauge",
        "kilo_leader 1.0",
        "# HELP kilo_nodes Number of nodes in the mesh.",
        "kilo_nodes 4.0",
        "# HELP kilo_peers Number of peers in the mesh.",
        "kilo_peers 1.0",
        "# HELP kilo_reconciles_total Number of reconciliation attempts.",
        "# TYPE kilo_reconciles_total counter",
        "kilo_reconciles_total 1.0",
        "# HELP kilo_iptables_operations_total Number of iptables operations.",
        "# TYPE kilo_iptables_operations_total counter",
        'kilo_iptables_operations_total{chain="KILO-NAT",operation="AppendUnique",'
        'protocol="IPv4",table="nat"} 2.0',
        'kilo_iptables_operations_total{chain="*",operation="List",protocol="IPv6",'
        'table="filter"} 1.0',
    ]:
        assert line in text.splitlines(), line


def test_error_series_start_at_zero_iptables_series_with_their_first_operation_deviation() -> None:
    """Kilo's error series appear at their first increment, which increase() and rate() never
    see; here the five events are exported at 0 from the start."""
    registry = CollectorRegistry()
    metrics = AgentMetrics(registry)
    lines = exposition(registry).splitlines()
    errors = sorted(line for line in lines if line.startswith("kilo_errors_total{"))
    assert errors == sorted(f'kilo_errors_total{{event="{e}"}} 0.0' for e in ERROR_EVENTS)
    assert set(ERROR_EVENTS) == {"run", "checkin", "local", "apply", "cleanUp"}
    assert not any(line.startswith("kilo_iptables") for line in lines)
    assert not any(line.startswith("kilo_node_info{") for line in lines)
    assert "kilo_leader 0.0" in lines
    metrics.errors.labels(event="apply").inc()
    assert 'kilo_errors_total{event="apply"} 1.0' in exposition(registry).splitlines()


def test_node_info_names_the_node_and_its_current_location() -> None:
    registry = CollectorRegistry()
    metrics = AgentMetrics(registry)
    metrics.set_node("aws-1", "aws")
    lines = exposition(registry).splitlines()
    assert "# TYPE kilo_node_info gauge" in lines
    assert 'kilo_node_info{location="aws",node="aws-1"} 1.0' in lines
    metrics.set_node("aws-1", "aws")
    metrics.set_node("aws-1", "")  # the location annotation and label were removed
    info = [line for line in exposition(registry).splitlines() if line.startswith("kilo_node_info")]
    assert info == ['kilo_node_info{location="",node="aws-1"} 1.0']


@pytest.fixture
def created_series_on() -> Iterator[None]:
    """prometheus_client's default, as in a fresh process; the setting is restored after."""
    before = prometheus_metrics._use_created
    enable_created_metrics()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        prometheus_metrics._use_created = before


@pytest.mark.usefixtures("created_series_on")
def test_the_processes_registry_has_no_created_series() -> None:
    plain = CollectorRegistry()
    AgentMetrics(plain).reconciles.inc()
    assert "kilo_reconciles_created " in exposition(plain)  # what prometheus_client adds
    registry = new_registry()  # as kg and kg webhook make theirs
    metrics = AgentMetrics(registry)
    metrics.reconciles.inc()
    metrics.iptables_operation("IPv4", "List", "nat", "*")
    text = exposition(registry)
    assert "kilo_reconciles_total 1.0" in text
    assert "_created" not in text
    assert "_created" not in exposition(plain)  # process-wide


def test_process_and_python_collectors_are_registered() -> None:
    registry = CollectorRegistry()
    AgentMetrics(registry)
    text = exposition(registry)
    assert "process_resident_memory_bytes" in text
    assert "python_info{" in text
    assert "python_gc_collections_total" in text


def test_wireguard_peer_metrics_are_read_on_every_scrape() -> None:
    live: list[PeerStats] = [(KEY_A, "beta", 1_700_000_000.0, 1024, 2048)]
    calls = 0

    def peers() -> Sequence[PeerStats]:
        nonlocal calls
        calls += 1
        return list(live)

    registry = CollectorRegistry()
    AgentMetrics(registry, peers)
    assert calls == 0  # registration does not read the device
    lines = exposition(registry).splitlines()
    assert (
        "# HELP kilo_wireguard_peer_last_handshake_seconds "
        "Unix time of the last WireGuard handshake with the peer."
    ) in lines
    assert "# TYPE kilo_wireguard_peer_last_handshake_seconds gauge" in lines
    assert (
        f'kilo_wireguard_peer_last_handshake_seconds{{name="beta",public_key="{KEY_A}"}} 1.7e+09'
    ) in lines
    assert "# TYPE kilo_wireguard_peer_receive_bytes_total counter" in lines
    assert (
        f'kilo_wireguard_peer_receive_bytes_total{{name="beta",public_key="{KEY_A}"}} 1024.0'
        in (lines)
    )
    assert (
        f'kilo_wireguard_peer_transmit_bytes_total{{name="beta",public_key="{KEY_A}"}} 2048.0'
    ) in lines

    live.append((KEY_B, "", None, 0, 0))  # a peer that never completed a handshake
    lines = exposition(registry).splitlines()
    assert calls == 2
    assert f'kilo_wireguard_peer_receive_bytes_total{{name="",public_key="{KEY_B}"}} 0.0' in lines
    assert not any(KEY_B in line and "last_handshake" in line for line in lines)


def test_a_failing_device_read_gives_no_wireguard_series_but_a_scrape() -> None:
    def peers() -> Sequence[PeerStats]:
        raise DataPlaneError("WireGuard device kilo0 does not exist")

    registry = CollectorRegistry()
    metrics = AgentMetrics(registry, peers)
    metrics.reconciles.inc()
    text = exposition(registry)
    assert "kilo_reconciles_total 1.0" in text
    assert "# TYPE kilo_wireguard_peer_receive_bytes_total counter" in text
    assert "kilo_wireguard_peer_receive_bytes_total{" not in text


def test_one_registry_holds_one_metric_set() -> None:
    registry = CollectorRegistry()
    AgentMetrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        AgentMetrics(registry)
