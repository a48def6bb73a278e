"""Kilo's log lines that an operator's query may name: their ``msg``, ``level``, ``component``
and fields, as ``kg`` writes them (reference kilo-k8s-cli.md §3.1; Kilo's pkg/mesh/mesh.go and
cmd/kg/main.go). Lines Kilo does not have, and fields beyond Kilo's, are ours; the
differences are listed in docs/compatibility.md."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from kilo import jsonlog
from kilo.agent import logs
from kilo.agent.settings import LogLevel
from kilo.errors import DataPlaneError
from kilo.mesh import translate
from kilo.mesh.events import Event, EventType
from kilo.mesh.wireguard import WireGuardConfig, WireGuardPeer
from tests.agent_harness import OTHER_KEYS, Harness


@pytest.fixture
def log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    logs.configure(LogLevel.DEBUG, stream)
    try:
        yield stream
    finally:
        logging.getLogger(logs.LOGGER).handlers.clear()


def entries(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def find(stream: io.StringIO, msg: str) -> list[dict[str, Any]]:
    return [e for e in entries(stream) if e.get("msg") == msg]


def test_unleveled_lines_have_no_level_and_pass_every_level() -> None:
    # go-kit's level filter lets lines without a level through, even at --log-level=none.
    stream = io.StringIO()
    logs.configure(LogLevel.NONE, stream)
    try:
        logs.get("").log(jsonlog.UNLEVELED, "Starting Kilo network mesh 'v'.")
        logs.get("kilo").error("silenced")
    finally:
        logging.getLogger(logs.LOGGER).handlers.clear()
    (entry,) = entries(stream)
    assert sorted(entry) == ["caller", "msg", "ts"]
    assert entry["msg"] == "Starting Kilo network mesh 'v'."


def test_the_detected_endpoint_is_kilos_overriding_endpoint(log: io.StringIO) -> None:
    h = Harness()
    h.node("a")
    h.round(check_in=True)
    (entry,) = find(log, "overriding endpoint")
    assert entry == {
        **entry,
        "level": "info",
        "component": "kilo",
        "node": "a",
        "old endpoint": "",
        "new endpoint": "203.0.113.1:51820",
    }
    # A node that names its endpoint keeps it: nothing is overridden.
    log.truncate(0)
    log.seek(0)
    h = Harness()
    h.node("a", annotations={translate.FORCE_ENDPOINT: "198.51.100.1:51820"})
    h.round(check_in=True)
    assert find(log, "overriding endpoint") == []


def test_auto_mtu_lines_as_kilo_words_them_when_the_value_changes(log: io.StringIO) -> None:
    h = Harness()
    h.node("a")
    h.round(check_in=True)
    h.round(resync=True)
    messages = [e["msg"] for e in entries(log) if "MTU" in e.get("msg", "")]
    assert messages == [
        "detected underlay MTU 1500 on default interface eth0",
        "auto-detected WireGuard MTU: 1420 (underlay 1500 - overhead 80)",
    ]
    h.links.mtus["eth0"] = 9001
    h.round(resync=True)
    assert find(log, "auto-detected WireGuard MTU: 8921 (underlay 9001 - overhead 80)")
    h.links.default_route_interface = lambda: None  # type: ignore[method-assign]
    h.round(resync=True)
    (warning,) = find(log, "failed to get default interface for MTU detection, using default MTU")
    assert warning["level"] == "warn" and "error" in warning
    assert h.links.mtus["kilo0"] == 1420


def test_mesh_changes_carry_kilos_event_names(log: io.StringIO) -> None:
    h = Harness()
    h.node("a")
    h.remote("b", location="gcp")
    obj = {"metadata": {"name": "c", "annotations": {}}, "spec": {"podCIDR": "10.42.9.0/24"}}
    h.agent.on_node_event(Event(EventType.ADDED, "c", obj))
    h.agent.on_node_event(Event(EventType.DELETED, "b", {"metadata": {"name": "b"}}))
    events = [(e["node"], e["event"]) for e in find(log, "node changed")]
    assert events == [("b", "update"), ("c", "add"), ("b", "delete")]
    peer = {
        "metadata": {"name": "laptop"},
        "spec": {"allowedIPs": ["10.5.0.1/32"], "publicKey": str(h.agent.host.public_key)},
    }
    h.agent.on_peer_event(Event(EventType.ADDED, "laptop", peer))
    assert [(e["peer"], e["event"]) for e in find(log, "peer changed")] == [("laptop", "add")]


def test_apply_lines_use_kilos_messages(log: io.StringIO) -> None:
    h = Harness()
    h.node("a")
    h.remote("b", location="gcp")
    h.round(check_in=True)
    (wireguard,) = find(log, "WireGuard configurations are different")
    assert wireguard["level"] == "info" and wireguard["component"] == "kilo"
    (cni,) = find(log, "setting CIDR in CNI file")
    assert cni["CIDR"] == "10.42.0.0/24"
    planned = h.iptables.planned
    assert planned is not None
    iptables = [e for e in entries(log) if e.get("component") == "iptables"]
    assert [e["msg"] for e in iptables] == [
        f"applying {len(planned.append) + len(planned.prepend)} iptables rules"
    ]


def test_the_wireguard_line_names_the_peers_that_change(log: io.StringIO) -> None:
    # Kilo's line carries its text of the whole diff; this one the names of the peers the
    # write adds, changes or removes (all of them were 500 names a change at 5000 nodes).
    h = Harness("--resync-period=300s")
    h.node("a")
    h.remote("b", location="gcp", pod=1)
    h.remote("c", location="azure", pod=2)
    h.remote("d", location="do", pod=3)
    stray = OTHER_KEYS["e"]  # a peer put on the device by hand: no name, its public key
    h.device.config = WireGuardConfig(peers=(WireGuardPeer(public_key=stray),))
    h.round(check_in=True)
    (first,) = find(log, "WireGuard configurations are different")
    assert first["peers"] == [str(stray), "location:azure", "location:do", "location:gcp"]
    log.truncate(0)
    log.seek(0)
    h.remote("c", location="azure", pod=2, extra={translate.ALLOWED_LOCATION_IPS: "192.168.7.0/24"})
    h.round()
    (changed,) = find(log, "WireGuard configurations are different")
    assert changed["peers"] == ["location:azure"]
    log.truncate(0)
    log.seek(0)
    h.agent.on_node_event(Event(EventType.DELETED, "b", {"metadata": {"name": "b"}}))
    h.round()
    (removed,) = find(log, "WireGuard configurations are different")
    assert removed["peers"] == ["location:gcp"]  # by the name the last apply gave it
    assert h.device.reads == 1  # all planned on the state the writes left
    log.truncate(0)
    log.seek(0)
    h.round()
    assert find(log, "WireGuard configurations are different") == []


def test_error_fields_start_with_kilos_text(log: io.StringIO) -> None:
    h = Harness()
    h.node("a")
    h.writer.fail = True
    h.round(check_in=True)
    (entry,) = find(log, "failed to update the local node's annotations")
    assert entry["level"] == "error"
    assert entry["error"] == "failed to set local node: https://192.0.2.1:6443 is unreachable"

    def fail(*args: object) -> bool:
        raise DataPlaneError("netlink: operation not permitted")

    h.writer.fail = False
    h.links.set_mtu = fail  # type: ignore[method-assign,assignment]
    h.round(resync=True)
    (entry,) = find(log, "failed to apply the MTU")
    assert entry["error"] == (
        "failed to set MTU on WireGuard interface: netlink: operation not permitted"
    )
    h.iptables.clean_up = fail  # type: ignore[method-assign,assignment]
    h.routes.clean_up = fail  # type: ignore[method-assign,assignment]
    h.writer.fail = True
    asyncio.run(h.agent.clean_up())
    errors = {e["msg"]: e["error"] for e in entries(log) if e.get("level") == "error"}
    assert errors["failed to clean up iptables rules"].startswith("failed to clean up IP tables: ")
    assert errors["failed to clean up routes and rules"].startswith("failed to clean up routes: ")
    assert errors["failed to remove the local node's annotations"].startswith(
        "failed to clean up node backend: "
    )
