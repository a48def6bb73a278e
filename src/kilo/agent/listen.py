"""Go's ``net.Listen("tcp", address)`` for ``kg --listen`` and ``kg webhook --listen[-metrics]``.

The one home of listen addresses: :func:`parse_listen` is what the flag checks in
:mod:`kilo.agent.settings` run and what :func:`bind` binds, so an address the flags accept
fails later only for reasons no syntax can show (the port is taken, the host name does not
resolve, the address is not on this machine). The syntax is Go's: ``host:port``, ``:port``
(every address, IPv4 and IPv6), ``[v6]:port``; the port is decimal (``""`` is 0: any free
port) or a service name (``/etc/services``, else Go's own table); the host an IP address or
a name Go would look up. Errors carry Go's wording, so that ``failed to listen on ADDRESS:
listen tcp: REASON`` reads as Kilo's.

Reads ``/etc/services`` for service names; binding resolves host names.
"""

from __future__ import annotations

import errno
import socket
import socketserver
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

from kilo.mesh import flags

# Binding "::" fails with these when the kernel has no IPv6; then "0.0.0.0" is used.
_NO_IPV6 = frozenset({errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL})
# Go looks up at most this many bytes of a service name (maxPortBufSize).
_MAX_SERVICE = len("mobility-header") + 10


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str  # "" for every address
    port: int  # 0 for any free port


def service_port(name: str) -> int | None:
    """The TCP port of service ``name`` as Go finds it: ``/etc/services``, then Go's table."""
    if len(name) > _MAX_SERVICE:
        return None
    lowered = name.lower()
    try:
        return socket.getservbyname(lowered, "tcp")
    except (OSError, UnicodeError):
        return flags.GO_TCP_SERVICES.get(lowered)


def parse_listen(
    address: str, *, lookup: Callable[[str], int | None] = service_port
) -> ListenAddress:
    """Read ``address`` as Go's ``net.Listen("tcp", ...)`` does.

    :class:`ValueError` carries Go's message after ``listen tcp: ``.
    """
    host, service = flags.split_host_port(address)
    port = flags.parse_decimal_port(service)
    if port is None:
        port = lookup(service)
        if port is None:
            raise ValueError(f"lookup tcp/{service}: unknown port")
    if not 0 <= port <= 65535:
        raise ValueError(f"address {service}: invalid port")
    if host and flags.host_problem(host) is not None:
        raise ValueError(f"lookup {host}: no such host")
    return ListenAddress(host, port)


def listen_error(address: str) -> str | None:
    """Kilo's error for an ``address`` :func:`parse_listen` refuses, or ``None``."""
    try:
        parse_listen(address)
    except ValueError as exc:
        return f"failed to listen on {address}: listen tcp: {exc}"
    return None


def bind_targets(address: ListenAddress) -> list[tuple[socket.AddressFamily, tuple[Any, ...]]]:
    """Where to bind, in order of preference (Go: dual-stack for no host, IPv4 first)."""
    if not address.host:
        targets: list[tuple[socket.AddressFamily, tuple[Any, ...]]] = []
        if socket.has_ipv6:
            targets.append((socket.AF_INET6, ("::", address.port)))
        targets.append((socket.AF_INET, ("0.0.0.0", address.port)))
        return targets
    infos = socket.getaddrinfo(
        address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    return [(info[0], info[4]) for info in infos[:1]]


S = TypeVar("S")


def bind(address: str, make: Callable[[socket.AddressFamily, tuple[Any, ...]], S]) -> S:
    """``make`` a server bound to ``address``; :class:`OSError` or :class:`ValueError`
    (Go's wording) when it cannot be."""
    targets = bind_targets(parse_listen(address))
    for index, (family, bound) in enumerate(targets):
        try:
            return make(family, bound)
        except OSError as exc:
            # No IPv6 in this kernel: fall back to IPv4 for a host-less address.
            if index + 1 == len(targets) or exc.errno not in _NO_IPV6:
                raise
    raise OSError("no address to listen on")


def bind_error(address: str, exc: OSError | ValueError) -> str:
    """The one-line error for a failed :func:`bind`: Kilo's for a malformed address, the
    system's reason for one that cannot be bound."""
    if isinstance(exc, ValueError):
        return f"failed to listen on {address}: listen tcp: {exc}"
    reason = exc.strerror or str(exc)
    if isinstance(exc, socket.gaierror):
        reason = f"lookup {parse_listen(address).host}: {reason}"
    return f"failed to listen on {address}: {reason}"


class ListeningServer(ThreadingHTTPServer):
    """A threading HTTP server bound like Go's ``net.Listen`` (shared by kg and kg webhook)."""

    daemon_threads = True

    def __init__(
        self,
        family: socket.AddressFamily,
        address: tuple[Any, ...],
        handler: type[BaseHTTPRequestHandler],
    ) -> None:
        self.address_family = family
        super().__init__(address, handler, bind_and_activate=False)
        try:
            if family == socket.AF_INET6 and address[0] == "::":
                # Like Go, an address without a host serves IPv4 too.
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            self.server_bind()
            self.server_activate()
        except BaseException:
            self.server_close()
            raise

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn), which can hang on DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


__all__ = [
    "ListenAddress",
    "ListeningServer",
    "bind",
    "bind_error",
    "bind_targets",
    "listen_error",
    "parse_listen",
    "service_port",
]
