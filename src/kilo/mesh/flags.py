"""Checks of command-line values that more than one command takes.

Pure: no I/O. Each check returns what is wrong with a value as a phrase, or ``None`` when
the value can be used, so that every command words its error in its own style (``kg``:
Kilo's Go-style one-liners; ``kgctl``: its argparse lines) while all of them accept and
refuse exactly the same values. The rules are those of the part that later uses the
value, so that a value these checks accept cannot fail there for its syntax:

* interface names: the kernel's ``dev_valid_name`` (1 to 15 bytes, not ``.`` or ``..``,
  no ``/``, ``:`` or white space, white space as the kernel's ``isspace``: tab to
  carriage return, space and the byte 0xA0), plus no ``%``: a name with ``%`` is a
  template the kernel fills in (``wg%d`` creates ``wg0``), so the interface that appears
  would not be the one asked for;
* MTUs: what WireGuard (kernel or ``wireguard-go``) and IP can carry: up to 65535 (the
  largest IP packet), at least 1280 for IPv6, below which the kernel removes a device's
  IPv6 addresses, and at least 68 for IPv4 (below it the kernel takes IPv4 off the
  device and ``wireguard-go`` refuses the MTU; Kilo's ``kg`` and ``connect`` take any);
* host names in addresses: Go's ``isDomainName``, or an IP literal;
* API server URLs: ``http://`` or ``https://``, a host and an optional port, as the HTTP
  client needs (Kilo's client-go also takes a bare ``host:port``; the Python client does
  not);
* label keys: Kubernetes' qualified names (``[prefix/]name``).
"""

from __future__ import annotations

import ipaddress
import json
import re
from urllib.parse import urlsplit

from kilo.mesh.endpoint import DNS1123_MAX_LENGTH, is_dns1123_subdomain


def _q(text: str) -> str:
    """Double-quoted like Go's ``%q``, which the messages around these phrases use."""
    return json.dumps(text, ensure_ascii=False)


# --- interface names --------------------------------------------------------------------------

IFNAMSIZ = 16  # the kernel's buffer, with the terminating NUL
MAX_INTERFACE_NAME = IFNAMSIZ - 1
# The kernel's isspace (lib/ctype.c): \t \n \v \f \r, space, and 0xA0 in its Latin-1 table.
_KERNEL_SPACE = frozenset(b"\t\n\v\f\r \xa0")
_NOT_IN_INTERFACE_NAMES = '"/", ":", "%" or white space'


def interface_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a Linux network interface, or ``None``."""
    if not name:
        return "it is empty"
    data = name.encode("utf-8", "surrogateescape")
    if len(data) > MAX_INTERFACE_NAME:
        return f"it is {len(data)} bytes long; Linux allows at most {MAX_INTERFACE_NAME}"
    if name in (".", ".."):
        return '"." and ".." are not interface names'
    if b"\0" in data:
        return "it contains a NUL byte"
    for char in ("/", ":", "%"):
        if char in name:
            return f'it contains "{char}"; interface names cannot contain {_NOT_IN_INTERFACE_NAMES}'
    if any(byte in _KERNEL_SPACE for byte in data):
        return f"it contains white space; interface names cannot contain {_NOT_IN_INTERFACE_NAMES}"
    return None


# --- MTUs -------------------------------------------------------------------------------------

MIN_IPV4_MTU = 68
MIN_IPV6_MTU = 1280
MAX_MTU = 65535


def mtu_range(*, ipv6: bool, minimum: int = MIN_IPV4_MTU) -> tuple[int, int]:
    """The MTUs a WireGuard interface may have (``ipv6``: it carries IPv6; ``minimum``:
    the least for IPv4)."""
    return (max(MIN_IPV6_MTU, minimum) if ipv6 else minimum), MAX_MTU


def mtu_problem(mtu: int, *, ipv6: bool, minimum: int = MIN_IPV4_MTU) -> str | None:
    """Why ``mtu`` is no MTU for a WireGuard interface, or ``None``.

    The phrase has the shape of Kilo's port error: ``MTU must be in range [68:65535], but
    got 0``.
    """
    low, high = mtu_range(ipv6=ipv6, minimum=minimum)
    if low <= mtu <= high:
        return None
    why = " for IPv6" if ipv6 and minimum <= mtu < MIN_IPV6_MTU else ""
    return f"MTU must be in range [{low}:{high}]{why}, but got {mtu}"


# --- host names and IP literals ---------------------------------------------------------------


def is_domain_name(name: str) -> bool:
    """Go's ``net.isDomainName``: what Go's resolver will look up at all."""
    if name == ".":
        return True
    size = len(name)
    if size == 0 or size > 254 or (size == 254 and name[-1] != "."):
        return False
    last = "."
    non_numeric = False
    label = 0
    for char in name:
        if "a" <= char <= "z" or "A" <= char <= "Z" or char == "_":
            non_numeric = True
            label += 1
        elif "0" <= char <= "9":
            label += 1
        elif char == "-":
            if last == ".":
                return False
            label += 1
            non_numeric = True
        elif char == ".":
            if last in ".-" or label > 63 or label == 0:
                return False
            label = 0
        else:
            return False
        last = char
    if last == "-" or label > 63:
        return False
    return non_numeric


def is_ip_literal(host: str) -> bool:
    """An IPv4 or IPv6 address (an IPv6 one may carry a ``%zone``)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_problem(host: str) -> str | None:
    """Why ``host`` is neither an IP address nor a name Go would look up, or ``None``."""
    if is_ip_literal(host) or is_domain_name(host):
        return None
    return "no such host"


# --- listen addresses (Go's net.SplitHostPort and parsePort) ----------------------------------


def split_host_port(address: str) -> tuple[str, str]:
    """Go's ``net.SplitHostPort``; :class:`ValueError` with Go's message when malformed."""

    def fail(why: str) -> ValueError:
        return ValueError(f"address {address}: {why}")

    colon = address.rfind(":")
    if colon < 0:
        raise fail("missing port in address")
    start, end = 0, 0
    if address.startswith("["):
        close = address.find("]")
        if close < 0:
            raise fail("missing ']' in address")
        if close + 1 == len(address):
            raise fail("missing port in address")
        if close + 1 != colon:
            if address[close + 1] == ":":
                raise fail("too many colons in address")
            raise fail("missing port in address")
        host = address[1:close]
        start, end = 1, close + 1
    else:
        host = address[:colon]
        if ":" in host:
            raise fail("too many colons in address")
    if "[" in address[start:]:
        raise fail("unexpected '[' in address")
    if "]" in address[end:]:
        raise fail("unexpected ']' in address")
    return host, address[colon + 1 :]


def parse_decimal_port(service: str) -> int | None:
    """Go's ``parsePort``: the port of a decimal ``service`` (any sign, any size; ``""`` is
    0), or ``None`` when it is not decimal and must be looked up as a service name."""
    if service == "":
        return 0
    sign, digits = 1, service
    if digits[:1] in ("+", "-"):
        sign = -1 if digits[0] == "-" else 1
        digits = digits[1:]
    if not digits or not all("0" <= c <= "9" for c in digits):
        return None
    # Go saturates at 2**30; only whether the result is within 0..65535 matters here.
    return sign * min(int(digits), 1 << 30)


# Go's own table (net/lookup.go), used when /etc/services does not know the name.
GO_TCP_SERVICES = {
    "ftp": 21,
    "ftps": 990,
    "gopher": 70,
    "http": 80,
    "https": 443,
    "imap2": 143,
    "imap3": 220,
    "imaps": 993,
    "pop3": 110,
    "pop3s": 995,
    "smtp": 25,
    "submissions": 465,
    "ssh": 22,
    "telnet": 23,
}


# --- API server URLs --------------------------------------------------------------------------

URL_SCHEMES = ("http", "https")


def api_server_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be the API server's URL for the HTTP client, or ``None``."""
    if any(c.isspace() or not c.isprintable() for c in url):
        return "it contains white space or control characters"
    if "://" not in url:
        return "it is not a URL: it has no http:// or https:// in front"
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed "[" of an IPv6 address
        return f"it is not a URL: {exc}"
    scheme = parts.scheme.lower()
    if scheme not in URL_SCHEMES:
        return f"scheme {parts.scheme} unknown; possible values are: {', '.join(URL_SCHEMES)}"
    hostport = parts.netloc.rpartition("@")[2]
    if hostport.startswith("["):
        close = hostport.find("]")
        if close < 0:
            return "it is not a URL: the IPv6 address has no closing ']'"
        host, port_text = hostport[1:close], hostport[close + 1 :]
        if port_text and not port_text.startswith(":"):
            return f"it is not a URL: {_q(port_text)} follows the host"
        port_text = port_text[1:]
        if not is_ip_literal(host) or ":" not in host:
            return f"host [{host}] is not an IPv6 address"
    else:
        host, _, port_text = hostport.partition(":")
        if not host:
            return "it has no host"
        if host_problem(host) is not None:
            return f"host {_q(host)} is not an IP address or a DNS name"
    if port_text or hostport.endswith(":"):
        if not (port_text.isascii() and port_text.isdigit()):
            return f"port {_q(port_text)} is not a number"
        if not 1 <= int(port_text) <= 65535:
            return f"port must be in range [1:65535], but got {int(port_text)}"
    return None


# --- label keys -------------------------------------------------------------------------------

_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
LABEL_NAME_MAX_LENGTH = 63


def label_key_problem(key: str) -> str | None:
    """Why ``key`` is no Kubernetes label key (a qualified name), or ``None``."""
    prefix, slash, name = key.rpartition("/")
    if slash:
        if not prefix:
            return "its prefix before '/' is empty"
        if "/" in prefix:
            return "it contains more than one '/'"
        if not is_dns1123_subdomain(prefix):
            return (
                f"its prefix {_q(prefix)} is not a lower-case DNS subdomain of at most "
                f"{DNS1123_MAX_LENGTH} characters"
            )
    if not name:
        return "its name is empty"
    if len(name) > LABEL_NAME_MAX_LENGTH:
        return f"its name is {len(name)} characters long; at most {LABEL_NAME_MAX_LENGTH}"
    if _LABEL_NAME.fullmatch(name) is None:
        return (
            f"its name {_q(name)} must consist of alphanumeric characters, '-', '_' or '.', and "
            "must start and end with an alphanumeric character"
        )
    return None


__all__ = [
    "GO_TCP_SERVICES",
    "IFNAMSIZ",
    "MAX_INTERFACE_NAME",
    "MAX_MTU",
    "MIN_IPV4_MTU",
    "MIN_IPV6_MTU",
    "URL_SCHEMES",
    "api_server_url_problem",
    "host_problem",
    "interface_name_problem",
    "is_domain_name",
    "is_ip_literal",
    "label_key_problem",
    "mtu_problem",
    "mtu_range",
    "parse_decimal_port",
    "split_host_port",
]
