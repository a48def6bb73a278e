"""``kgctl connect``'s own flags and their checks (kgctl adds the global ones: --port,
--kubeconfig...), with pflag's syntax for their values."""

from __future__ import annotations

import argparse
from pathlib import Path

from kilo.cli import arguments, logs
from kilo.cli.arguments import quote
from kilo.mesh import flags, gosyntax, ip
from kilo.mesh.events import MIN_RESYNC_PERIOD
from kilo.mesh.ip import IPInterface, IPNetwork
from kilo.mesh.model import DEFAULT_MTU

DEFAULT_KEY_DIRECTORY = Path("/var/lib/kilo/connect")
DEFAULT_ALLOWED_IP = "10.10.10.10/32"
DEFAULT_INTERFACE = "kilo0"
DEFAULT_KEEPALIVE = 10
DEFAULT_RESYNC = "30s"
LOG_LEVELS = tuple(logs.LEVELS)
MAX_KEEPALIVE = 65535


def _allowed_ip(text: str) -> IPInterface:
    parsed = ip.parse_interface(text)
    if parsed is None:
        raise argparse.ArgumentTypeError(f"invalid --allowed-ip {quote(text)}: not a CIDR")
    # This machine's address: it goes on the interface (the kernel refuses these for IPv6,
    # after the Peer exists) and into the Peer, whose allowed IPs every node routes here.
    kind = (
        "an unspecified"
        if parsed.ip.is_unspecified
        else "a loopback"
        if parsed.ip.is_loopback
        else "a multicast"
        if parsed.ip.is_multicast
        else ""
    )
    if kind:
        raise argparse.ArgumentTypeError(
            f"invalid --allowed-ip {quote(text)}: {kind} address cannot be this machine's "
            "address in the mesh"
        )
    if parsed.network.prefixlen == 0:
        raise argparse.ArgumentTypeError(
            f"invalid --allowed-ip {quote(text)}: a /0 would route every address to this machine"
        )
    return parsed


def _cidrs(text: str) -> list[IPNetwork]:
    result = []
    for item in text.split(","):
        parsed = ip.parse_network(item.strip())
        if parsed is None:
            raise argparse.ArgumentTypeError(f"invalid --allowed-ips {quote(item)}: not a CIDR")
        result.append(parsed)
    return result


def _duration(text: str) -> float:
    """A Go duration (``30s``, ``1m30s``, ``500ms``, ``0``, ``-1s``), in seconds."""
    return gosyntax.parse_duration(text) / 1e9


def _keepalive(text: str) -> int:
    """pflag's int syntax; 0..65535, what the Peer's webhook and WireGuard take."""
    value = gosyntax.parse_int(text)
    if not 0 <= value <= MAX_KEEPALIVE:
        raise ValueError(
            f"persistent keepalive must be in range [0:{MAX_KEEPALIVE}] seconds, but got {value}"
        )
    return value


def _log_level(text: str) -> str:
    if text not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"log level {text} unknown; possible values are: {', '.join(LOG_LEVELS)}"
        )
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``connect``'s own flags (kgctl adds the global ones: --port, --kubeconfig...)."""
    parser.add_argument(
        "name",
        nargs="?",
        type=arguments.object_name("peer"),
        default=None,
        metavar="NAME",
        help="the Peer to connect as (default: this machine's host name)",
    )
    parser.add_argument(
        "--allowed-ip",
        "-a",
        type=_allowed_ip,
        default=_allowed_ip(DEFAULT_ALLOWED_IP),
        metavar="CIDR",
        help="this machine's address in the mesh, kept as given (Kilo masks it); it becomes "
        f"the interface's address and the Peer's allowed IP (default: {DEFAULT_ALLOWED_IP})",
    )
    parser.add_argument(
        "--allowed-ips",
        type=_cidrs,
        action="extend",
        default=[],
        metavar="CIDR[,CIDR...]",
        help="more cluster CIDRs to route here, e.g. the service CIDR (repeatable)",
    )
    parser.add_argument(
        "--private-key",
        type=arguments.FILE,
        default="",
        metavar="PATH",
        help="the private key: read if it exists, else generated and written there (0600) "
        f"(default: {DEFAULT_KEY_DIRECTORY}/NAME.key)",
    )
    arguments.add_go_bool(
        parser,
        "--clean-up",
        default=True,
        help="on SIGINT/SIGTERM remove the routes, the interface (or its peers and address) "
        "and the Peer this command created; --clean-up=false leaves them",
    )
    arguments.add_go_bool(
        parser,
        "--create-interface",
        default=True,
        help="create the interface when it does not exist (kernel WireGuard, else "
        "wireguard-go); with false it must exist already",
    )
    parser.add_argument(
        "--mtu",
        type=arguments.mtu("--mtu", default=DEFAULT_MTU),
        default=DEFAULT_MTU,
        help=f"MTU of an interface this command creates; 0 is the default (default: {DEFAULT_MTU})",
    )
    parser.add_argument(
        "--resync-period",
        type=arguments.go_value("--resync-period", _duration),
        default=_duration(DEFAULT_RESYNC),
        metavar="DURATION",
        help="how often to re-apply everything besides on changes; at least every "
        f"{MIN_RESYNC_PERIOD:g} s (default: {DEFAULT_RESYNC})",
    )
    parser.add_argument(
        "--interface",
        "-i",
        type=arguments.interface_name("--interface"),
        default=DEFAULT_INTERFACE,
        help=f"the WireGuard interface (default: {DEFAULT_INTERFACE})",
    )
    parser.add_argument(
        "--persistent-keepalive",
        type=arguments.go_value("--persistent-keepalive", _keepalive),
        default=DEFAULT_KEEPALIVE,
        metavar="SECONDS",
        help="keepalive of a Peer this command creates, and towards the nodes "
        f"(default: {DEFAULT_KEEPALIVE})",
    )
    parser.add_argument(
        "--log-level",
        type=arguments.Value(_log_level, choices=LOG_LEVELS),
        default="info",
        metavar="LEVEL",
        help=f"one of {', '.join(LOG_LEVELS)} (default: info); logs are JSON lines on stdout",
    )


def check_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with a combination of ``connect``'s flags, or ``None``."""
    if args.allowed_ip.version == 6:
        problem = flags.mtu_problem(args.mtu, ipv6=True, minimum=flags.MIN_IPV4_MTU)
        if problem:
            return (
                f"invalid --mtu {args.mtu} with the IPv6 --allowed-ip {args.allowed_ip}: {problem}"
            )
    return None
