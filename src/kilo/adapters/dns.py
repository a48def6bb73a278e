"""Host names to IP addresses, as Go's resolver picks them (IPv4 first), never hanging.

The core's values hold no DNS: the agent resolves its host name at start-up (IP
discovery), and the agent's loop and ``kgctl connect`` resolve DNS endpoints here before
planning. A name that does not resolve in time is ``None``, never an exception.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import socket
from collections.abc import Callable

from kilo.mesh.endpoint import Endpoint
from kilo.mesh.ip import IPAddress

RESOLVE_TIMEOUT = 5.0

Resolver = Callable[[str], IPAddress | None]


def resolve(host: str, timeout: float = RESOLVE_TIMEOUT) -> IPAddress | None:
    """An IP for ``host`` (IPv4 preferred, as Go's ResolveUDPAddr), ``None`` on any failure
    or after ``timeout`` seconds (getaddrinfo itself cannot be given one)."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        infos = pool.submit(socket.getaddrinfo, host, None, 0, socket.SOCK_DGRAM).result(timeout)
    except (OSError, concurrent.futures.TimeoutError, UnicodeError):
        return None
    finally:
        pool.shutdown(wait=False)
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    return next((a for a in addresses if a.version == 4), addresses[0] if addresses else None)


def resolve_endpoint(endpoint: Endpoint | None, resolver: Resolver) -> tuple[Endpoint | None, bool]:
    """``endpoint`` with its DNS name resolved, and whether it resolved. An endpoint that
    needs no resolving (none, an IP) is returned as it is; one that does not resolve too,
    and its WireGuard peer then gets no endpoint until it does."""
    if endpoint is None or endpoint.resolved or not endpoint.addr:
        return endpoint, True
    address = resolver(endpoint.host)
    if address is None:
        return endpoint, False
    return endpoint.resolved_to(address), True
