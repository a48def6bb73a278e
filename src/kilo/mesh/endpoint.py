"""WireGuard endpoints: an IP and port, or a DNS name and port.

Pure. No DNS resolution happens here: an endpoint given as a name stays unresolved until an
adapter resolves it and builds a new endpoint with :meth:`Endpoint.resolved_to`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from kilo.mesh import ip as ipmod
from kilo.mesh.ip import IPAddress

# RFC 1123 subdomain, as validated by Kubernetes (and by Kilo).
_DNS1123_SUBDOMAIN_FMT = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_DNS1123_SUBDOMAIN = re.compile(_DNS1123_SUBDOMAIN_FMT)
DNS1123_MAX_LENGTH = 253
# Kubernetes' message for a name that does not match (validation.RegexError).
_DNS1123_SUBDOMAIN_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
    "'-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', "
    f"regex used for validation is '{_DNS1123_SUBDOMAIN_FMT}')"
)


def is_dns1123_subdomain(name: str) -> bool:
    return len(name) <= DNS1123_MAX_LENGTH and _DNS1123_SUBDOMAIN.fullmatch(name) is not None


def dns1123_subdomain_errors(name: str) -> list[str]:
    """Kubernetes' ``IsDNS1123Subdomain`` messages (empty when ``name`` is valid)."""
    errors: list[str] = []
    if len(name) > DNS1123_MAX_LENGTH:
        errors.append(f"must be no more than {DNS1123_MAX_LENGTH} characters")
    if _DNS1123_SUBDOMAIN.fullmatch(name) is None:
        errors.append(_DNS1123_SUBDOMAIN_MESSAGE)
    return errors


@dataclass(frozen=True, slots=True)
class UDPAddr:
    """An IP, port and IPv6 zone, as WireGuard reports a peer's endpoint."""

    ip: IPAddress | None
    port: int
    zone: str = ""

    def __str__(self) -> str:
        host = "" if self.ip is None else ipmod.text(self.ip)
        if self.zone:
            host = f"{host}%{self.zone}"
        if ":" in host:
            return f"[{host}]:{self.port}"
        return f"{host}:{self.port}"


def split_host_port(text: str) -> tuple[str, str] | None:
    """Go's ``net.SplitHostPort``: IPv6 hosts need brackets; ``None`` on failure."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            return None
        host, port = text[1:end], text[end + 2 :]
        if "[" in host or "]" in port or "[" in port:
            return None
        return host, port
    host, colon, port = text.rpartition(":")
    if not colon or ":" in host or "[" in text or "]" in text:
        return None
    return host, port


def parse_port(text: str) -> int | None:
    """A decimal UDP port in 1..65535 (leading zeros allowed, as Go's ParseUint allows)."""
    if not text or not text.isascii() or not text.isdigit() or len(text.lstrip("0")) > 10:
        return None
    port = int(text)
    return port if 1 <= port <= 65535 else None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a WireGuard peer can be reached.

    ``udp`` is set for IP endpoints (and for DNS endpoints once resolved); ``addr`` keeps
    the original ``host:port`` text of a DNS endpoint.
    """

    udp: UDPAddr | None = None
    addr: str = ""
    # ``str(self)``, computed once: a large mesh's configs print each endpoint on every
    # apply. Not part of the value (equality, hash, repr).
    _text: str = field(init=False, repr=False, compare=False, default="")

    def __post_init__(self) -> None:
        object.__setattr__(self, "_text", self.string(dns_first=True))

    @classmethod
    def parse(cls, text: str) -> Endpoint | None:
        """Parse ``host:port``; ``None`` unless host and port are both valid."""
        if not text:
            return None
        parts = split_host_port(text)
        if parts is None:
            return None
        host, port_text = parts
        port = parse_port(port_text)
        if port is None:
            return None
        if "%" in host:
            return None
        ip = ipmod.parse_ip(host)
        if ip is not None:
            return cls(udp=UDPAddr(ip, port))
        if is_dns1123_subdomain(host):
            return cls(addr=text)
        return None

    @classmethod
    def new(cls, ip: IPAddress | None, port: int) -> Endpoint:
        return cls(udp=UDPAddr(None if ip is None else ipmod.normalise(ip), port))

    @classmethod
    def from_udp(cls, udp: UDPAddr | None) -> Endpoint:
        if udp is None or udp.ip is None:
            return cls(udp=udp)
        return cls(udp=UDPAddr(ipmod.normalise(udp.ip), udp.port, udp.zone))

    def resolved_to(self, ip: IPAddress) -> Endpoint:
        """This endpoint with its DNS name resolved to ``ip``; the name is kept."""
        return Endpoint(udp=UDPAddr(ipmod.normalise(ip), self.port), addr=self.addr)

    @property
    def ready(self) -> bool:
        if self.udp is not None and self.udp.ip is not None and self.udp.port > 0:
            return True
        return bool(self.addr)

    @property
    def resolved(self) -> bool:
        return self.udp is not None

    @property
    def ip(self) -> IPAddress | None:
        return None if self.udp is None else self.udp.ip

    @property
    def port(self) -> int:
        if not self.ready:
            return 0
        if self.udp is not None:
            return self.udp.port
        parts = split_host_port(self.addr)
        return 0 if parts is None else parse_port(parts[1]) or 0

    @property
    def host(self) -> str:
        """The DNS name of a DNS endpoint (Kilo's ``DNS()`` returns the port: a quirk)."""
        if not self.addr:
            return ""
        parts = split_host_port(self.addr)
        return "" if parts is None else parts[0]

    def string(self, *, dns_first: bool = True) -> str:
        if self.udp is not None and (not dns_first or not self.addr):
            return str(self.udp)
        return self.addr

    def __str__(self) -> str:
        return self._text


def endpoint_ready(endpoint: Endpoint | None) -> bool:
    return endpoint is not None and endpoint.ready


def endpoint_string(endpoint: Endpoint | None, *, dns_first: bool = True) -> str:
    return "" if endpoint is None else endpoint.string(dns_first=dns_first)
