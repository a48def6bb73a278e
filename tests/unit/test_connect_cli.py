"""``kgctl connect``'s shell: flags and defaults, the key file, one sync and the clean-up,
with in-memory stand-ins for the device, the routes, the links and the API server."""

from __future__ import annotations

import argparse
import dataclasses
import io
import ipaddress
import json
import socket
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from kilo.adapters import keyfile
from kilo.cli import commands, connect, kgctl, logs
from kilo.cli.connect import connection as connect_connection
from kilo.errors import ConfigError, DataPlaneError
from kilo.mesh import wireguard
from kilo.mesh.endpoint import Endpoint
from kilo.mesh.ip import IPInterface
from kilo.mesh.keys import Key
from kilo.mesh.routes import Device, Route, Rule
from kilo.mesh.wgdevice import DeviceChange, DeviceState
from kilo.mesh.wireguard import WireGuardConfig
from tests import golden
from tests.examples import PRIVATE_KEYS, PUBLIC_KEYS, reference_cluster

# Readiness is judged by the clock; the reference cluster's last-seen is long past.
FUTURE = 2**40


def parse(*argv: str) -> argparse.Namespace:
    return kgctl.build_parser().parse_args(["connect", *argv])


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = kgctl.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


# --- flags -----------------------------------------------------------------------------------


def test_kilos_flags_and_defaults() -> None:
    args = parse()
    assert args.name is None
    assert args.allowed_ip == ipaddress.ip_interface("10.10.10.10/32")
    assert args.allowed_ips == []
    assert args.private_key == ""
    assert args.clean_up is True
    assert args.create_interface is True
    assert args.mtu == 1420
    assert args.resync_period == 30.0
    assert args.interface == "kilo0"
    assert args.persistent_keepalive == 10
    assert args.log_level == "info"
    assert args.port == 51820
    assert args.run is commands.run_connect


def test_flags_with_kilos_syntax() -> None:
    args = parse(
        "laptop",
        "-a",
        "10.5.0.1/24",
        "--allowed-ips=10.43.0.0/16,10.44.0.1/16",
        "--allowed-ips",
        "192.168.0.0/24",
        "--clean-up=false",
        "--create-interface=false",
        "--resync-period=1m30s",
        "-i",
        "wg7",
        "--persistent-keepalive=0",
        "--log-level=debug",
        "--port=51999",
        "--private-key=/tmp/k",
    )
    assert args.name == "laptop"
    # Kept as given; Kilo masks it to 10.5.0.0/24.
    assert str(args.allowed_ip) == "10.5.0.1/24"
    assert [str(c) for c in args.allowed_ips] == ["10.43.0.0/16", "10.44.0.0/16", "192.168.0.0/24"]
    assert args.clean_up is False
    assert args.create_interface is False
    assert args.resync_period == 90.0
    assert args.interface == "wg7"
    assert args.persistent_keepalive == 0
    assert args.log_level == "debug"
    assert args.port == 51999
    assert args.private_key == "/tmp/k"
    assert parse("--clean-up").clean_up is True
    # Kilo's docs say "--clean-up false", which Kilo reads as the peer name "false".
    args = parse("--clean-up", "false")
    assert (args.clean_up, args.name) == (False, None)
    assert parse("--resync-period=500ms").resync_period == 0.5
    assert parse("--mtu=576").mtu == 576
    assert parse("--mtu=1280", "-a", "fd00::1/128").mtu == 1280
    assert parse("-i", "a" * 15).interface == "a" * 15
    assert parse("-a", "fe80::1/64").allowed_ip == ipaddress.ip_interface("fe80::1/64")
    assert parse("--topology-label=").topology_label == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--allowed-ip=nope"], 'invalid --allowed-ip "nope": not a CIDR'),
        (["--allowed-ips=10.0.0.0/8,x"], 'invalid --allowed-ips "x": not a CIDR'),
        (
            ["--clean-up=maybe"],
            'invalid argument "maybe" for "--clean-up" flag: strconv.ParseBool: parsing "maybe": '
            "invalid syntax",
        ),
        (["--clean-up=yes"], 'strconv.ParseBool: parsing "yes": invalid syntax'),
        (["--resync-period=30"], 'time: missing unit in duration "30"'),
        (["--resync-period=1x"], 'time: unknown unit "x" in duration "1x"'),
        (["--mtu=x"], 'invalid argument "x" for "--mtu" flag: strconv.ParseUint: parsing "x"'),
        (["--mtu=-1"], 'strconv.ParseUint: parsing "-1": invalid syntax'),
        (
            ["--mtu=1000", "-a", "fd00::1/128"],
            "invalid --mtu 1000 with the IPv6 --allowed-ip fd00::1/128: MTU must be in range "
            "[1280:65535] for IPv6, but got 1000",
        ),
        (["--persistent-keepalive=x"], 'strconv.ParseInt: parsing "x": invalid syntax'),
        (["--log-level=loud"], "log level loud unknown; possible values are: all, debug, info"),
        (["a", "b"], "unrecognized arguments: b"),
        (["--interface="], 'invalid --interface "": it is empty'),
        (["-i", "a" * 40], f'invalid --interface "{"a" * 40}": it is 40 bytes long'),
        (["-i", "a/b"], 'invalid --interface "a/b": it contains "/"'),
        (["-i", "wg%d"], 'invalid --interface "wg%d": it contains "%"'),
        (["-a", "0.0.0.0/32"], "an unspecified address cannot be this machine's address"),
        (["-a", "::/128"], "an unspecified address cannot be this machine's address"),
        (["-a", "127.0.0.2/32"], "a loopback address cannot be this machine's address"),
        (["-a", "ff02::1/128"], "a multicast address cannot be this machine's address"),
        (["-a", "10.5.0.1/0"], "a /0 would route every address to this machine"),
        (["--resync-period=3000000h"], 'time: invalid duration "3000000h"'),
        (["Not_A_Name"], 'invalid peer name "Not_A_Name": a lowercase RFC 1123 subdomain'),
        (["a" * 254], "must be no more than 253 characters"),
        (["--topology-label=a b"], 'invalid --topology-label "a b": its name "a b" must'),
    ],
)
def test_bad_flags_exit_2_with_one_line(argv: list[str], message: str) -> None:
    code, out, err = run("connect", *argv)
    assert code == 2
    assert out == ""
    assert message in err
    assert err.count("\n") == 1


def test_numbers_durations_and_bools_have_pflags_syntax() -> None:
    # Kilo's flags are pflag's: --mtu a uint, --persistent-keepalive an int (Go's literals),
    # --resync-period a Go duration, the bools Go's ParseBool.
    assert parse("--mtu=0x58c").mtu == 1420
    assert parse("--mtu=0o2600").mtu == 1408
    assert parse("--mtu=1_400").mtu == 1400
    assert parse("--persistent-keepalive=0x19").persistent_keepalive == 25
    assert parse("--persistent-keepalive=+5").persistent_keepalive == 5
    assert parse("--persistent-keepalive=010").persistent_keepalive == 8
    assert parse("--resync-period=1.5h").resync_period == 5400.0
    assert parse("--resync-period=0").resync_period == 0.0
    assert parse("--resync-period=-1s").resync_period == -1.0
    for text, value in (("T", True), ("TRUE", True), ("1", True), ("F", False), ("0", False)):
        assert parse(f"--clean-up={text}").clean_up is value


def test_an_mtu_of_0_is_the_default_as_in_kilo() -> None:
    # Kilo leaves an MTU of 0 out of its netlink request: the interface gets WireGuard's
    # default, 1420. Any MTU from 68 (below it the kernel takes IPv4 off the interface)
    # works as in Kilo.
    assert parse("--mtu=0").mtu == 1420
    assert parse("--mtu=68").mtu == 68
    assert parse("--mtu=100").mtu == 100
    assert parse("--mtu=0", "-a", "fd00::1/128").mtu == 1420


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--mtu=67"], 'invalid --mtu "67": MTU must be in range [68:65535], but got 67'),
        (["--mtu=70000"], 'invalid --mtu "70000": MTU must be in range [68:65535], but got 70000'),
        (["--mtu=0x100000000"], "MTU must be in range [68:65535], but got 4294967296"),
        (
            ["--persistent-keepalive=-1"],
            'invalid argument "-1" for "--persistent-keepalive" flag: persistent keepalive must '
            "be in range [0:65535] seconds, but got -1",
        ),
        (["--persistent-keepalive=65536"], "must be in range [0:65535] seconds, but got 65536"),
        (["--persistent-keepalive=0x10000"], "must be in range [0:65535] seconds, but got 65536"),
    ],
)
def test_an_mtu_or_keepalive_the_data_plane_cannot_carry_is_refused_deviation(
    argv: list[str], message: str
) -> None:
    # Kilo creates a kernel interface with any MTU: below 68 its IPv4 address is refused
    # after the Peer exists; above 65535 packets too big for one UDP datagram vanish. A
    # keepalive above 65535 is cut to 16 bits by WireGuard (70000 s becomes 4464 s) and a
    # negative one is refused by Kilo's own Peer validation.
    code, out, err = run("connect", *argv)
    assert (code, out) == (2, "")
    assert message in err
    assert err.count("\n") == 1


def test_a_resync_period_below_a_second_is_a_second_with_a_warning_deviation() -> None:
    # Kilo's loop re-syncs without pause for 0 or a negative period; here changes are
    # watched and the resync is a safety net: at most once a second.
    for period in ("0", "-1s", "10ms"):
        conn, out, _ = connection(f"--resync-period={period}")
        assert conn.resync_period == connect.MIN_RESYNC_PERIOD
        (entry,) = lines(out)
        assert entry["msg"] == "resync period raised to the minimum"
        assert entry["level"] == "warn"
    conn, out, _ = connection("--resync-period=2s")
    assert (conn.resync_period, out.getvalue()) == (2.0, "")


def test_refuses_the_file_backend_and_a_host_name_that_cannot_name_a_peer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, _, err = run("connect", "laptop", "--backend=file")
    assert (code, err) == (1, "kgctl: connect needs --backend kubernetes: it creates a Peer\n")
    # Without NAME the host name is the Peer's name; one that cannot be is no command-line
    # mistake (exit 1), but it is refused before anything is touched all the same.
    monkeypatch.setattr(socket, "gethostname", lambda: "My_Laptop")
    code, _, err = run("connect")
    assert code == 1
    assert 'peer name "My_Laptop" is not a valid Kubernetes object name' in err


# --- the key file ----------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_file_missing_is_none_and_written_private(tmp_path: Path) -> None:
    path = tmp_path / "connect" / "laptop.key"
    assert keyfile.read_key_file(path) is None
    keyfile.write_key_file(path, PRIVATE_KEYS["laptop"])
    assert mode(path.parent) == 0o700
    assert mode(path) == 0o600
    assert keyfile.read_key_file(path) == PRIVATE_KEYS["laptop"]


def test_key_file_written_by_wg_genkey_with_a_newline_is_read(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_text(f"{PRIVATE_KEYS['laptop']}\n")
    assert keyfile.read_key_file(path) == PRIVATE_KEYS["laptop"]


def test_an_unusable_key_file_is_an_error_and_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_text("my notes, not a key")
    with pytest.raises(ConfigError, match=f"failed to parse private key {path}"):
        keyfile.read_key_file(path)
    assert path.read_text() == "my notes, not a key"
    with pytest.raises(ConfigError, match="failed to read private key"):
        keyfile.read_key_file(tmp_path)  # a directory


# --- one sync and the clean-up, with stand-ins -----------------------------------------------


class FakeDevice:
    def __init__(self) -> None:
        self.applied: list[WireGuardConfig] = []
        self.fail = False

    def get(self) -> DeviceState:
        if self.fail:
            raise DataPlaneError("WireGuard device kilo0: no socket")
        return DeviceState()

    def apply(self, desired: WireGuardConfig) -> DeviceChange | None:
        if self.fail:
            raise DataPlaneError("WireGuard device kilo0: no socket")
        self.applied.append(desired)
        return DeviceChange()  # something was written


class FakeRoutes:
    def __init__(self) -> None:
        self.sets: list[tuple[tuple[Route, ...], Mapping[Device, str]]] = []
        self.cleaned = False
        self.closed = False

    def set(
        self, routes: Sequence[Route], rules: Sequence[Rule], devices: Mapping[Device, str]
    ) -> tuple[int, int]:
        assert list(rules) == []
        self.sets.append((tuple(routes), dict(devices)))
        return len(routes), 0

    @property
    def state_error(self) -> str | None:
        return None

    def watch_deletions(self, callback: Callable[[], None]) -> Callable[[], None]:
        return lambda: None

    def clean_up(self) -> None:
        self.cleaned = True

    def close(self) -> None:
        self.closed = True


class FakeLinks:
    """Records what clean-up asks; start-up (index, create, address, up) is the e2e's."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def index(self, name: str) -> int | None:
        return 3

    def create_wireguard(self, name: str, mtu: int) -> bool:
        raise AssertionError("start-up is not driven here")

    def set_mtu(self, name: str, mtu: int) -> bool:
        raise AssertionError("start-up is not driven here")

    def set_up(self, name: str, up: bool) -> bool:
        raise AssertionError("start-up is not driven here")

    def set_address(self, name: str, cidr: IPInterface) -> bool:
        raise AssertionError("start-up is not driven here")

    def delete(self, name: str) -> bool:
        self.calls.append(("delete", name))
        return True

    def delete_addresses(self, name: str) -> None:
        self.calls.append(("delete_addresses", name))

    def close(self) -> None:
        self.calls.append(("close",))


class FakeStore:
    def __init__(self, peer: dict[str, Any] | None) -> None:
        self.peer = peer
        self.deleted: list[str] = []

    def get(self, name: str) -> dict[str, Any] | None:
        return self.peer

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        raise AssertionError("start-up is not driven here")

    def delete(self, name: str) -> bool:
        self.deleted.append(name)
        return True

    def close(self) -> None:
        pass


@dataclasses.dataclass
class Fakes:
    """The stand-ins a connection drives, kept with their own types for the assertions."""

    device: FakeDevice = dataclasses.field(default_factory=FakeDevice)
    routes: FakeRoutes = dataclasses.field(default_factory=FakeRoutes)
    links: FakeLinks = dataclasses.field(default_factory=FakeLinks)
    store: FakeStore = dataclasses.field(default_factory=lambda: FakeStore(None))


def connection(*argv: str) -> tuple[connect_connection.Connection, io.StringIO, Fakes]:
    out = io.StringIO()
    log = logs.configure("debug", out)
    conn = connect_connection.Connection(parse("laptop", *argv), "laptop", log, io.StringIO())
    conn.private_key = PRIVATE_KEYS["laptop"]
    fakes = Fakes()
    conn.device, conn.routes, conn.links = fakes.device, fakes.routes, fakes.links
    return conn, out, fakes


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_sync_applies_the_peer_config_with_the_key_and_port_and_the_routes() -> None:
    conn, out, fakes = connection("--port=51821", "-i", "wg0")
    nodes, peers = reference_cluster()
    nodes = [dataclasses.replace(n, last_seen=FUTURE) for n in nodes]
    assert conn.sync(nodes, peers)
    (config,) = fakes.device.applied
    assert wireguard.render(config) == (
        f"[Interface]\nPrivateKey = {PRIVATE_KEYS['laptop']}\nListenPort = 51821\n\n"
        + golden.text("laptop.conf")
    )
    ((routes, devices),) = fakes.routes.sets
    assert devices == {Device.KILO: "wg0"}
    assert len(routes) == 11
    entries = lines(out)
    # Kilo's message for a device whose configuration differs.
    assert [e["msg"] for e in entries] == [
        "WireGuard configurations are different",
        "routes updated",
    ]
    assert all(str(PRIVATE_KEYS["laptop"]) not in json.dumps(e) for e in entries)


def test_a_failing_device_does_not_stop_the_routes_and_a_plan_error_is_logged() -> None:
    conn, out, fakes = connection()
    nodes, peers = reference_cluster()
    nodes = [dataclasses.replace(n, last_seen=FUTURE) for n in nodes]
    fakes.device.fail = True
    assert not conn.sync(nodes, peers)
    assert len(fakes.routes.sets) == 1
    assert not conn.sync(nodes, [])
    entries = lines(out)
    assert entries[0]["msg"] == "failed to sync WireGuard"
    assert entries[-1] == {
        **entries[-1],
        "level": "error",
        "msg": "failed to sync",
        "err": 'did not find any peer named "laptop" in the cluster',
        "error": 'did not find any peer named "laptop" in the cluster',
    }


def test_a_node_whose_dns_endpoint_does_not_resolve_does_not_abort_the_sync(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(connect_connection, "resolve", lambda host, timeout=0: None)
    conn, out, fakes = connection()
    nodes, peers = reference_cluster()
    nodes = [
        dataclasses.replace(
            n,
            last_seen=FUTURE,
            endpoint=Endpoint.parse("gamma.invalid:51820") if n.name == "gamma" else n.endpoint,
        )
        for n in nodes
    ]
    assert conn.sync(nodes, peers)
    (config,) = fakes.device.applied
    gamma = config.peer(PUBLIC_KEYS["gamma"])
    assert gamma is not None and gamma.endpoint is not None and not gamma.endpoint.resolved
    assert len(config.peers) == 3
    warnings = [e for e in lines(out) if e["level"] == "warn"]
    assert len(warnings) == 1 and "gamma.invalid:51820" in warnings[0]["msg"]
    conn.sync(nodes, peers)  # warned once
    assert len([e for e in lines(out) if e["level"] == "warn"]) == 1


def own_peer(key: Key) -> dict[str, Any]:
    return {
        "metadata": {"name": "laptop"},
        "spec": {"allowedIPs": ["10.10.10.10/32"], "publicKey": str(key)},
    }


def test_clean_up_of_an_existing_interface_removes_peers_and_address_and_our_peer() -> None:
    conn, out, fakes = connection()
    conn.interface_touched = True
    conn.peer_created = True
    conn.store = fakes.store = FakeStore(own_peer(PUBLIC_KEYS["laptop"]))
    conn._finish()
    assert fakes.routes.cleaned and fakes.routes.closed
    assert fakes.device.applied == [WireGuardConfig(private_key=None, peers=())]
    assert fakes.links.calls == [("delete_addresses", "kilo0"), ("close",)]
    assert fakes.store.deleted == ["laptop"]
    assert "deleted peer" in [e["msg"] for e in lines(out)]


def test_clean_up_deletes_a_created_interface_and_never_a_reused_peer() -> None:
    conn, _, fakes = connection()
    conn.interface_created = True
    conn.interface_touched = True
    conn.store = fakes.store = FakeStore(own_peer(PUBLIC_KEYS["laptop"]))
    conn._finish()
    assert fakes.links.calls == [("delete", "kilo0"), ("close",)]
    assert fakes.device.applied == []
    assert fakes.store.deleted == []


def test_clean_up_keeps_a_peer_that_now_holds_another_key() -> None:
    conn, out, fakes = connection()
    conn.peer_created = True
    conn.store = fakes.store = FakeStore(own_peer(PUBLIC_KEYS["alpha"]))
    conn._finish()
    assert fakes.store.deleted == []
    assert "not deleting the peer" in out.getvalue()


def test_clean_up_false_leaves_everything() -> None:
    conn, _, fakes = connection("--clean-up=false")
    conn.interface_created = True
    conn.interface_touched = True
    conn.peer_created = True
    conn.store = fakes.store = FakeStore(own_peer(PUBLIC_KEYS["laptop"]))
    conn._finish()
    assert not fakes.routes.cleaned and fakes.routes.closed
    assert fakes.links.calls == [("close",)]
    assert fakes.store.deleted == []


def test_a_missing_peer_is_told_apart_from_a_missing_crd() -> None:
    from lightkube import ApiError
    from lightkube.models.meta_v1 import Status, StatusDetails

    from kilo.adapters import apierrors, kubernetes

    missing_peer = ApiError(
        status=Status(
            code=404,
            message='peers.kilo.squat.ai "laptop" not found',
            details=StatusDetails(name="laptop", group="kilo.squat.ai", kind="peers"),
        )
    )
    missing_crd = ApiError(
        status=Status(code=404, message="the server could not find the requested resource")
    )
    assert kubernetes._object_not_found(missing_peer, "laptop")
    assert not kubernetes._object_not_found(missing_crd, "laptop")
    assert "the Peer CRD peers.kilo.squat.ai is not installed" in apierrors.describe_error(
        missing_crd, "https://api", verb="get", resource="peers"
    )
