"""WireGuard devices: userspace implementations over the UAPI socket, the kernel over netlink.

Both read the device (or take the state the caller knows), let
:func:`kilo.mesh.wgdevice.plan_changes` decide what differs, send only that and return it
(the agent keeps :func:`kilo.mesh.wgdevice.state_after` of it): never ``replace_peers``,
which would reset every session and drop every roamed endpoint on each change (Kilo's
quirk 23). Errors become :class:`DataPlaneError`
naming the interface (and the socket); no key is ever part of a message or a ``repr``.

The UAPI protocol is https://www.wireguard.com/xplatform/: connect to
``<socket_dir>/<interface>.sock``, send ``get=1`` or ``set=1`` and its lines, end with a
blank line; the reply ends with ``errno=N`` and a blank line.
"""

from __future__ import annotations

import base64
import os
import socket
import time
from pathlib import Path
from typing import Any, Protocol

from kilo.errors import DataPlaneError
from kilo.mesh import ip as ipmod
from kilo.mesh.endpoint import UDPAddr
from kilo.mesh.keys import Key
from kilo.mesh.uapi import UAPIParseError, parse_uapi
from kilo.mesh.wgdevice import (
    DeviceChange,
    DeviceState,
    PeerState,
    plan_changes,
    render_uapi,
)
from kilo.mesh.wireguard import WireGuardConfig

DEFAULT_SOCKET_DIR = Path("/var/run/wireguard")
_END = b"\n\n"
_MAX_REPLY = 64 * 1024 * 1024  # a device with tens of thousands of peers still fits


class WireGuardDevice(Protocol):
    """What the agent needs from its WireGuard interface."""

    @property
    def interface(self) -> str: ...

    def get(self) -> DeviceState:
        """The device as it is now."""
        ...

    def apply(
        self, desired: WireGuardConfig, current: DeviceState | None = None
    ) -> DeviceChange | None:
        """Change what differs from ``desired``; the change written, ``None`` if nothing.

        ``current`` is the device as the caller has just read it with :meth:`get` (or
        knows it from its own last write, :func:`kilo.mesh.wgdevice.state_after`), so that
        an apply reads (and parses) the device at most once; ``None``: read it here."""
        ...


def _strerror(errno: int) -> str:
    try:
        return os.strerror(abs(errno))
    except ValueError:
        return "unknown error"


class UAPIDevice:
    """A userspace WireGuard implementation (wireguard-go, boringtun...) via its UAPI socket."""

    def __init__(
        self, interface: str, socket_dir: Path = DEFAULT_SOCKET_DIR, timeout: float = 5.0
    ) -> None:
        self._interface = interface
        self.socket_path = socket_dir / f"{interface}.sock"
        self.timeout = timeout

    @property
    def interface(self) -> str:
        return self._interface

    @property
    def _where(self) -> str:
        return f"WireGuard device {self._interface} (UAPI socket {self.socket_path})"

    def __repr__(self) -> str:
        return f"UAPIDevice({self._interface!r}, socket_path={str(self.socket_path)!r})"

    def get(self) -> DeviceState:
        reply = self._request("get=1\n\n")
        try:
            return parse_uapi(reply)
        except UAPIParseError as exc:
            raise DataPlaneError(f"{self._where}: cannot read the device: {exc}") from exc

    def set(self, body: str) -> None:
        """Send one ``set=1`` request: ``body`` is its lines (as :func:`render_uapi` makes)."""
        if "\n\n" in body or (body and not body.endswith("\n")):
            raise ValueError("a UAPI set body is lines ending in a newline, with no blank line")
        self._request(f"set=1\n{body}\n")

    def apply(
        self, desired: WireGuardConfig, current: DeviceState | None = None
    ) -> DeviceChange | None:
        change = plan_changes(desired, self.get() if current is None else current)
        if change is not None:
            self.set(render_uapi(change))
        return change

    def _request(self, request: str) -> str:
        """Send ``request``; return the reply's lines, having checked its ``errno``."""
        where = self._where
        deadline = time.monotonic() + self.timeout
        reply = bytearray()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
                connection.settimeout(self.timeout)
                connection.connect(str(self.socket_path))
                connection.sendall(request.encode("ascii"))
                while not reply.endswith(_END):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError
                    connection.settimeout(remaining)
                    chunk = connection.recv(65536)
                    if not chunk:
                        raise DataPlaneError(f"{where}: closed the connection before replying")
                    reply += chunk
                    if len(reply) > _MAX_REPLY:
                        raise DataPlaneError(f"{where}: reply larger than {_MAX_REPLY} bytes")
        except FileNotFoundError as exc:
            raise DataPlaneError(
                f"{where}: no socket (is the userspace WireGuard implementation running?)"
            ) from exc
        except ConnectionRefusedError as exc:
            raise DataPlaneError(
                f"{where}: connection refused (the implementation has exited?)"
            ) from exc
        except TimeoutError as exc:
            raise DataPlaneError(f"{where}: no reply within {self.timeout:g} s") from exc
        except OSError as exc:
            raise DataPlaneError(f"{where}: {exc.strerror or exc}") from exc
        text = reply.decode("utf-8", "replace")
        lines = text[: -len(_END)].split("\n")
        status = lines[-1]
        if not status.startswith("errno="):
            raise DataPlaneError(f"{where}: the reply does not end with errno=")
        errno_text = status.removeprefix("errno=")
        try:
            errno = int(errno_text)
        except ValueError:
            raise DataPlaneError(f"{where}: bad status {status!r}") from None
        if errno != 0:
            verb = "rejected the configuration" if request.startswith("set=") else "failed"
            raise DataPlaneError(f"{where} {verb}: errno={errno} ({_strerror(errno)})")
        return "".join(line + "\n" for line in lines[:-1])


class KernelDevice:
    """Kernel WireGuard through generic netlink (pyroute2's ``WireGuard`` socket).

    The same plan as :class:`UAPIDevice`, sent as one netlink request per peer (pyroute2
    configures one peer per request) and never with replace-peers. CI exercises the UAPI
    path only: the CI machines have no kernel WireGuard module. The translation to and
    from pyroute2's messages is tested offline by encoding and decoding them.
    """

    def __init__(self, interface: str) -> None:
        self._interface = interface

    @property
    def interface(self) -> str:
        return self._interface

    def __repr__(self) -> str:
        return f"KernelDevice({self._interface!r})"

    def get(self) -> DeviceState:
        messages = self._netlink(lambda wg: wg.info(self._interface))
        return state_from_netlink(messages)

    def apply(
        self, desired: WireGuardConfig, current: DeviceState | None = None
    ) -> DeviceChange | None:
        change = plan_changes(desired, self.get() if current is None else current)
        if change is None:
            return None

        def send(wg: Any) -> None:
            for request in netlink_requests(change):
                wg.set(self._interface, **request)

        self._netlink(send)
        return change

    def _netlink(self, operation: Any) -> Any:
        from pyroute2 import WireGuard
        from pyroute2.netlink.exceptions import NetlinkError

        where = f"WireGuard device {self._interface} (kernel, generic netlink)"
        # pyroute2 leaks its socket and event loop when its constructor fails (no wireguard
        # family): construct in two steps so that the half-built object can be closed.
        wg = WireGuard.__new__(WireGuard)
        try:
            wg.__init__()
        except NetlinkError as exc:
            wg.close()
            raise DataPlaneError(
                f"{where}: the kernel has no WireGuard netlink family ({_strerror(exc.code)}); "
                "is the wireguard module loaded?"
            ) from exc
        except OSError as exc:
            wg.close()
            raise DataPlaneError(f"{where}: {exc.strerror or exc}") from exc
        try:
            return operation(wg)
        except NetlinkError as exc:
            raise DataPlaneError(f"{where}: {_strerror(exc.code)}") from exc
        except (OSError, ValueError) as exc:
            raise DataPlaneError(f"{where}: {exc}") from exc
        finally:
            wg.close()


# --- pyroute2 translation (kernel) ------------------------------------------------------

# pyroute2 puts a whole peer in one netlink message; split long allowed-IP lists so that a
# message stays well inside the socket buffer.
_ALLOWED_IPS_PER_REQUEST = 256


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def netlink_requests(change: DeviceChange) -> list[dict[str, Any]]:
    """Keyword arguments for ``pyroute2.WireGuard.set``, one request per peer (or part)."""
    requests: list[dict[str, Any]] = []
    device: dict[str, Any] = {}
    if change.private_key is not None:
        device["private_key"] = _b64(change.private_key.raw)
    if change.listen_port is not None:
        device["listen_port"] = change.listen_port
    if device:
        requests.append(device)
    for peer in change.peers:
        key = _b64(peer.public_key.raw)
        if peer.remove:
            requests.append({"peer": {"public_key": key, "remove": True}})
            continue
        request: dict[str, Any] = {"public_key": key}
        if peer.preshared_key is not None:
            request["preshared_key"] = _b64(peer.preshared_key.raw)
        if peer.endpoint is not None and peer.endpoint.ip is not None:
            request["endpoint_addr"] = str(peer.endpoint.ip)
            request["endpoint_port"] = peer.endpoint.port
        if peer.persistent_keepalive is not None:
            request["persistent_keepalive"] = peer.persistent_keepalive
        if peer.allowed_ips is None:
            requests.append({"peer": request})
            continue
        allowed = [str(cidr) for cidr in peer.allowed_ips]
        request["replace_allowed_ips"] = True
        request["allowed_ips"] = allowed[:_ALLOWED_IPS_PER_REQUEST]
        requests.append({"peer": request})
        for start in range(_ALLOWED_IPS_PER_REQUEST, len(allowed), _ALLOWED_IPS_PER_REQUEST):
            part = allowed[start : start + _ALLOWED_IPS_PER_REQUEST]
            requests.append({"peer": {"public_key": key, "allowed_ips": part}})
    return requests


def state_from_netlink(messages: Any) -> DeviceState:
    """A device from pyroute2's decoded ``WG_CMD_GET_DEVICE`` dump.

    The kernel splits a large device over several messages; a peer cut in two appears
    again at the start of the next message with the rest of its allowed IPs.
    """
    private_key: Key | None = None
    listen_port = 0
    peers: list[PeerState] = []
    for message in messages:
        raw_private = message.get_attr("WGDEVICE_A_PRIVATE_KEY")
        if raw_private is not None:
            private_key = Key(base64.b64decode(raw_private))
            private_key = None if private_key.is_zero else private_key
        port = message.get_attr("WGDEVICE_A_LISTEN_PORT")
        if port is not None:
            listen_port = port
        for attrs in message.get_attr("WGDEVICE_A_PEERS") or ():
            public_key = Key(base64.b64decode(attrs.get_attr("WGPEER_A_PUBLIC_KEY")))
            allowed = tuple(
                network
                for item in attrs.get_attr("WGPEER_A_ALLOWEDIPS") or ()
                if (network := ipmod.parse_network(str(item.get("addr")))) is not None
            )
            if peers and peers[-1].public_key == public_key:  # continued from the last message
                last = peers[-1]
                peers[-1] = PeerState(
                    public_key=last.public_key,
                    preshared_key=last.preshared_key,
                    endpoint=last.endpoint,
                    persistent_keepalive=last.persistent_keepalive,
                    allowed_ips=last.allowed_ips + allowed,
                    last_handshake=last.last_handshake,
                    rx_bytes=last.rx_bytes,
                    tx_bytes=last.tx_bytes,
                )
                continue
            psk_raw = attrs.get_attr("WGPEER_A_PRESHARED_KEY")
            psk = None if psk_raw is None else Key(base64.b64decode(psk_raw))
            endpoint = None
            address = attrs.get_attr("WGPEER_A_ENDPOINT")
            if address is not None and address.get("addr"):
                ip = ipmod.parse_ip(str(address["addr"]))
                if ip is not None and address.get("port"):
                    endpoint = UDPAddr(ip, int(address["port"]))
            handshake = attrs.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME") or {}
            sec, nsec = int(handshake.get("tv_sec", 0)), int(handshake.get("tv_nsec", 0))
            peers.append(
                PeerState(
                    public_key=public_key,
                    preshared_key=None if psk is None or psk.is_zero else psk,
                    endpoint=endpoint,
                    persistent_keepalive=int(
                        attrs.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or 0
                    ),
                    allowed_ips=allowed,
                    last_handshake=sec + nsec / 1e9 if sec or nsec else None,
                    rx_bytes=int(attrs.get_attr("WGPEER_A_RX_BYTES") or 0),
                    tx_bytes=int(attrs.get_attr("WGPEER_A_TX_BYTES") or 0),
                )
            )
    return DeviceState(private_key=private_key, listen_port=listen_port, peers=tuple(peers))


def open_device(interface: str, *, socket_dir: Path = DEFAULT_SOCKET_DIR) -> WireGuardDevice:
    """The UAPI device when its socket exists (a userspace implementation), else the kernel's."""
    device = UAPIDevice(interface, socket_dir)
    if device.socket_path.exists():
        return device
    return KernelDevice(interface)
