"""The WireGuard adapters against a fake UAPI socket, and pyroute2's messages offline."""

from __future__ import annotations

import base64
import ipaddress
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest

from kilo.adapters.wireguard import (
    KernelDevice,
    UAPIDevice,
    netlink_requests,
    open_device,
    state_from_netlink,
)
from kilo.errors import DataPlaneError
from kilo.mesh.endpoint import Endpoint, UDPAddr
from kilo.mesh.ip import parse_interface
from kilo.mesh.keys import Key
from kilo.mesh.wgdevice import (
    DeviceChange,
    DeviceState,
    PeerChange,
    PeerState,
    render_uapi,
    stored_private_key,
)
from kilo.mesh.wireguard import WireGuardConfig, WireGuardPeer
from tests.strategies import key_for
from tests.uapi_sim import UAPISetError, apply_set

PRIVATE = Key(bytes(range(1, 33)))
A, B = key_for(1, salt=5), key_for(2, salt=5)
PSK = Key(bytes([7]) * 32)

Handler = Callable[[str], str | None]


def render_get(state: DeviceState) -> str:
    """What wireguard-go answers to get=1 for ``state``."""
    lines = []
    if state.private_key is not None:
        lines.append(f"private_key={state.private_key.raw.hex()}")
    lines.append(f"listen_port={state.listen_port}")
    for p in state.peers:
        lines.append(f"public_key={p.public_key.raw.hex()}")
        lines.append(f"preshared_key={(p.preshared_key or Key(bytes(32))).raw.hex()}")
        lines.append("protocol_version=1")
        if p.endpoint is not None:
            lines.append(f"endpoint={p.endpoint}")
        lines.append("last_handshake_time_sec=0\nlast_handshake_time_nsec=0")
        lines.append(f"tx_bytes={p.tx_bytes}\nrx_bytes={p.rx_bytes}")
        lines.append(f"persistent_keepalive_interval={p.persistent_keepalive}")
        lines.extend(f"allowed_ip={a}" for a in p.allowed_ips)
    return "".join(line + "\n" for line in lines) + "errno=0\n\n"


class FakeUAPI:
    """A UAPI socket served by ``handler``: request text in, reply out (``None``: never reply)."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self.requests: list[str] = []
        self._stop = threading.Event()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen()
        self._server.settimeout(0.05)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._server.accept()
            except TimeoutError:
                continue
            with connection:
                data = b""
                while not data.endswith(b"\n\n"):
                    chunk = connection.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                request = data.decode()
                self.requests.append(request)
                reply = self.handler(request)
                if reply is None:
                    self._stop.wait()  # hold the connection open, silent
                elif reply:
                    connection.sendall(reply.encode())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.close()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # Short: a UNIX socket path has at most 107 characters.
    with tempfile.TemporaryDirectory(prefix="kwg-", dir="/tmp") as directory:
        yield Path(directory)


@pytest.fixture
def serve(socket_dir: Path) -> Iterator[Callable[[Handler], FakeUAPI]]:
    servers: list[FakeUAPI] = []

    def start(handler: Handler) -> FakeUAPI:
        server = FakeUAPI(socket_dir / "kilo0.sock", handler)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def simulated(initial: DeviceState) -> tuple[Handler, list[DeviceState]]:
    """A handler with wireguard-go's semantics (the model in tests/uapi_sim.py)."""
    state = [initial]

    def handle(request: str) -> str:
        if request == "get=1\n\n":
            return render_get(state[0])
        assert request.startswith("set=1\n")
        try:
            state[0] = apply_set(state[0], request.removeprefix("set=1\n").rstrip("\n"))
        except UAPISetError:
            return "errno=-22\n\n"
        return "errno=0\n\n"

    return handle, state


def desired() -> WireGuardConfig:
    return WireGuardConfig(
        private_key=PRIVATE,
        listen_port=51820,
        peers=(
            WireGuardPeer(
                public_key=A,
                allowed_ips=(parse_interface("10.4.0.2/32"),),  # type: ignore[arg-type]
                endpoint=Endpoint.parse("192.0.2.2:51820"),
                preshared_key=PSK,
            ),
            WireGuardPeer(public_key=B, allowed_ips=(parse_interface("10.5.0.1/24"),)),  # type: ignore[arg-type]
        ),
    )


def test_apply_sends_the_plan_once_then_nothing(serve, socket_dir: Path) -> None:
    handler, state = simulated(DeviceState(listen_port=40000))
    server = serve(handler)
    device = UAPIDevice("kilo0", socket_dir)
    change = device.apply(desired())
    assert change is not None
    assert server.requests[0] == "get=1\n\n"
    assert server.requests[1] == f"set=1\n{render_uapi(change)}\n"  # the change returned
    assert server.requests[1].startswith(
        f"set=1\nprivate_key={PRIVATE.raw.hex()}\nlisten_port=51820\n"
    )
    assert server.requests[1].endswith("allowed_ip=10.5.0.0/24\n\n")
    got = device.get()
    assert got == state[0]
    assert [p.public_key for p in got.peers] == [A, B]
    assert device.apply(desired()) is None
    assert [r.split("\n")[0] for r in server.requests] == ["get=1", "set=1", "get=1", "get=1"]


def test_set_rejected_names_interface_socket_and_errno_but_no_key(serve, socket_dir: Path) -> None:
    serve(lambda request: "errno=-22\n\n")
    device = UAPIDevice("kilo0", socket_dir)
    with pytest.raises(DataPlaneError) as info:
        device.apply(WireGuardConfig(private_key=PRIVATE, listen_port=51820))
    message = str(info.value)
    assert "kilo0" in message
    assert str(socket_dir / "kilo0.sock") in message
    assert "errno=-22 (Invalid argument)" in message
    assert PRIVATE.raw.hex() not in message
    assert str(PRIVATE)[:4] not in message


def test_a_bad_get_reply_is_a_data_plane_error(serve, socket_dir: Path) -> None:
    serve(lambda request: "listen_port=x\nerrno=0\n\n")
    with pytest.raises(DataPlaneError, match=r"kilo0 .*listen_port='x' is not a port"):
        UAPIDevice("kilo0", socket_dir).get()


def test_missing_socket(socket_dir: Path) -> None:
    with pytest.raises(DataPlaneError) as info:
        UAPIDevice("kilo0", socket_dir).get()
    assert str(info.value) == (
        f"WireGuard device kilo0 (UAPI socket {socket_dir}/kilo0.sock): no socket "
        "(is the userspace WireGuard implementation running?)"
    )


def test_a_socket_nobody_listens_on(socket_dir: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(socket_dir / "kilo0.sock"))
    stale.close()  # the file stays, as after a crash
    with pytest.raises(DataPlaneError, match=r"kilo0 .*connection refused"):
        UAPIDevice("kilo0", socket_dir).get()


def test_a_silent_device_times_out(serve, socket_dir: Path) -> None:
    serve(lambda request: None)
    with pytest.raises(DataPlaneError, match=r"kilo0 .*no reply within 0.2 s"):
        UAPIDevice("kilo0", socket_dir, timeout=0.2).get()


def test_a_connection_closed_early(serve, socket_dir: Path) -> None:
    serve(lambda request: "listen_port=1\n")  # no errno line, then closed
    with pytest.raises(DataPlaneError, match=r"kilo0 .*closed the connection before replying"):
        UAPIDevice("kilo0", socket_dir).get()


def test_set_refuses_a_body_with_a_blank_line(socket_dir: Path) -> None:
    with pytest.raises(ValueError, match="blank line"):
        UAPIDevice("kilo0", socket_dir).set("listen_port=1\n\nprivate_key=00\n")


def test_open_device_picks_uapi_when_the_socket_exists(serve, socket_dir: Path) -> None:
    assert isinstance(open_device("kilo0", socket_dir=socket_dir), KernelDevice)
    serve(lambda request: "errno=0\n\n")
    device = open_device("kilo0", socket_dir=socket_dir)
    assert isinstance(device, UAPIDevice)
    assert device.interface == "kilo0"
    assert repr(device) == f"UAPIDevice('kilo0', socket_path='{socket_dir}/kilo0.sock')"


def test_kernel_device_errors_name_the_interface() -> None:
    # No kernel WireGuard here (no module, or no such interface): either way, a clear error.
    with pytest.raises(DataPlaneError, match=r"WireGuard device kilo-absent0 \(kernel"):
        KernelDevice("kilo-absent0").get()


# --- pyroute2 translation, offline --------------------------------------------------------


def _b64(key: Key) -> str:
    return base64.b64encode(key.raw).decode()


def test_netlink_requests_carry_only_the_change() -> None:
    change = DeviceChange(
        private_key=PRIVATE,
        listen_port=51821,
        peers=(
            PeerChange(public_key=B, remove=True),
            PeerChange(
                public_key=A,
                preshared_key=PSK,
                endpoint=UDPAddr(ipaddress.ip_address("2001:db8::1"), 51820),
                persistent_keepalive=25,
                allowed_ips=(ipaddress.ip_network("10.4.0.2/32"),),
            ),
            PeerChange(public_key=B, persistent_keepalive=0),
        ),
    )
    assert netlink_requests(change) == [
        {"private_key": _b64(PRIVATE), "listen_port": 51821},
        {"peer": {"public_key": _b64(B), "remove": True}},
        {
            "peer": {
                "public_key": _b64(A),
                "preshared_key": _b64(PSK),
                "endpoint_addr": "2001:db8::1",
                "endpoint_port": 51820,
                "persistent_keepalive": 25,
                "replace_allowed_ips": True,
                "allowed_ips": ["10.4.0.2/32"],
            }
        },
        {"peer": {"public_key": _b64(B), "persistent_keepalive": 0}},
    ]


def test_long_allowed_ip_lists_are_split_without_replacing_again() -> None:
    networks = tuple(ipaddress.ip_network(f"10.{i // 256}.{i % 256}.0/24") for i in range(600))
    requests = netlink_requests(
        DeviceChange(peers=(PeerChange(public_key=A, allowed_ips=networks),))
    )
    assert [len(r["peer"]["allowed_ips"]) for r in requests] == [256, 256, 88]
    assert requests[0]["peer"]["replace_allowed_ips"] is True
    assert all("replace_allowed_ips" not in r["peer"] for r in requests[1:])
    assert [ip for r in requests for ip in r["peer"]["allowed_ips"]] == [str(n) for n in networks]


def _kernel_dump() -> list[object]:
    """Two decoded WG_CMD_GET_DEVICE messages, as the kernel splits a large device."""
    from pyroute2.netlink.generic.wireguard import wgmsg

    def allowed(family: int, raw: bytes, mask: int) -> dict[str, object]:
        attrs = [
            ["WGALLOWEDIP_A_FAMILY", family],
            ["WGALLOWEDIP_A_IPADDR", raw],
            ["WGALLOWEDIP_A_CIDR_MASK", mask],
        ]
        return {"attrs": attrs}

    first = {
        "attrs": [
            ["WGPEER_A_PUBLIC_KEY", _b64(A)],
            ["WGPEER_A_PRESHARED_KEY", _b64(PSK)],
            ["WGPEER_A_ENDPOINT", {"addr": "192.0.2.2", "port": 51820}],
            ["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", 25],
            ["WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": 1700000000, "tv_nsec": 500000000}],
            ["WGPEER_A_RX_BYTES", 148],
            ["WGPEER_A_TX_BYTES", 92],
            ["WGPEER_A_ALLOWEDIPS", [allowed(socket.AF_INET, bytes([10, 4, 0, 2]), 32)]],
        ]
    }
    continued = {
        "attrs": [
            ["WGPEER_A_PUBLIC_KEY", _b64(A)],
            ["WGPEER_A_ALLOWEDIPS", [allowed(socket.AF_INET6, bytes([0xFD]) + bytes(15), 64)]],
        ]
    }
    second = {
        "attrs": [
            ["WGPEER_A_PUBLIC_KEY", _b64(B)],
            ["WGPEER_A_PRESHARED_KEY", base64.b64encode(bytes(32)).decode()],
            ["WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": 0, "tv_nsec": 0}],
        ]
    }
    messages = []
    for attrs in (
        [
            ["WGDEVICE_A_IFNAME", "kilo0"],
            ["WGDEVICE_A_PRIVATE_KEY", _b64(stored_private_key(PRIVATE))],  # kernel clamps
            ["WGDEVICE_A_LISTEN_PORT", 51820],
            ["WGDEVICE_A_PEERS", [first]],
        ],
        [["WGDEVICE_A_IFNAME", "kilo0"], ["WGDEVICE_A_PEERS", [continued, second]]],
    ):
        message = wgmsg()
        message["cmd"] = 0
        message["version"] = 1
        message["attrs"] = attrs
        message.encode()
        decoded = wgmsg(message.data)
        decoded.decode()
        messages.append(decoded)
    return messages


def test_state_from_a_kernel_dump() -> None:
    assert state_from_netlink(_kernel_dump()) == DeviceState(
        private_key=stored_private_key(PRIVATE),
        listen_port=51820,
        peers=(
            PeerState(
                public_key=A,
                preshared_key=PSK,
                endpoint=UDPAddr(ipaddress.ip_address("192.0.2.2"), 51820),
                persistent_keepalive=25,
                allowed_ips=(
                    ipaddress.ip_network("10.4.0.2/32"),
                    ipaddress.ip_network("fd00::/64"),
                ),
                last_handshake=1700000000.5,
                rx_bytes=148,
                tx_bytes=92,
            ),
            PeerState(public_key=B),
        ),
    )


def test_a_reply_without_errno(serve, socket_dir: Path) -> None:
    serve(lambda request: "listen_port=1\n\n")
    with pytest.raises(DataPlaneError, match=r"kilo0 .*the reply does not end with errno="):
        UAPIDevice("kilo0", socket_dir).get()


class FakeNetlink:
    """Stands in for ``pyroute2.WireGuard``: a kernel dump in, set requests recorded."""

    calls: ClassVar[list[tuple[str, dict[str, object]]]] = []
    error: ClassVar[Exception | None] = None

    def info(self, interface: str) -> list[object]:
        if self.error is not None:
            raise self.error
        assert interface == "kilo0"
        return _kernel_dump()

    def set(self, interface: str, **request: object) -> None:
        self.calls.append((interface, request))

    def close(self) -> None:
        pass


@pytest.fixture
def fake_netlink(monkeypatch: pytest.MonkeyPatch) -> type[FakeNetlink]:
    import pyroute2

    FakeNetlink.calls = []
    FakeNetlink.error = None
    monkeypatch.setattr(pyroute2, "WireGuard", FakeNetlink)
    return FakeNetlink


def test_kernel_device_applies_the_plan_peer_by_peer(fake_netlink: type[FakeNetlink]) -> None:
    device = KernelDevice("kilo0")
    current = device.get()
    assert current == state_from_netlink(_kernel_dump())
    same = WireGuardConfig(
        private_key=PRIVATE,
        listen_port=51820,
        peers=(
            WireGuardPeer(
                public_key=A,
                preshared_key=PSK,
                persistent_keepalive=25,
                allowed_ips=tuple(map(ipaddress.ip_network, ("10.4.0.2/32", "fd00::/64"))),
            ),
            WireGuardPeer(public_key=B),
        ),
    )
    assert device.apply(same) is None
    assert fake_netlink.calls == []
    changed = replace(same, peers=same.peers[:1])
    assert device.apply(changed) == DeviceChange(peers=(PeerChange(public_key=B, remove=True),))
    assert fake_netlink.calls == [("kilo0", {"peer": {"public_key": _b64(B), "remove": True}})]


def test_kernel_device_netlink_errors_name_the_interface(fake_netlink: type[FakeNetlink]) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    fake_netlink.error = NetlinkError(19, "No such device")
    with pytest.raises(DataPlaneError) as info:
        KernelDevice("kilo0").get()
    assert str(info.value) == "WireGuard device kilo0 (kernel, generic netlink): No such device"
