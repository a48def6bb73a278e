"""argparse types of the values several ``kgctl`` commands take, checked by the pure rules
of :mod:`kilo.mesh.flags` (the same rules ``kg`` applies to its flags).

Each raises :class:`argparse.ArgumentTypeError` with a one-line message; kgctl prints it
as ``kgctl: argument FLAG: MESSAGE`` and exits with status 2, before anything runs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from kilo.mesh import flags, gosyntax
from kilo.mesh.endpoint import dns1123_subdomain_errors

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Value(Generic[T]):
    """An argparse type that also tells shell completion what its values can be: a fixed
    set (``choices``), file names (``path``), or names a completer finds (``completes``:
    ``node``, ``peer``)."""

    parse: Callable[[str], T]
    choices: tuple[str, ...] = ()
    path: bool = False
    completes: str = ""

    def __call__(self, text: str) -> T:
        return self.parse(text)


def file_name(text: str) -> str:
    return text


FILE = Value(file_name, path=True)


def quote(text: str) -> str:
    """Double-quoted like Go's ``%q``, as Kilo's messages quote values."""
    return json.dumps(text, ensure_ascii=False)


def interface_name(flag: str) -> Callable[[str], str]:
    """A Linux interface name for ``flag``."""

    def parse(text: str) -> str:
        problem = flags.interface_name_problem(text)
        if problem:
            raise argparse.ArgumentTypeError(f"invalid {flag} {quote(text)}: {problem}")
        return text

    return parse


def mtu(flag: str, *, default: int) -> Callable[[str], int]:
    """An MTU for a WireGuard interface ``kgctl connect`` creates: pflag's uint syntax
    (``1420``, ``0x58c``); 0 is ``default`` (Kilo leaves an MTU of 0 out of its netlink
    request, so the interface gets WireGuard's default). The IPv6 minimum is checked with
    the address."""
    read = go_value(flag, gosyntax.parse_uint)

    def parse(text: str) -> int:
        value = read(text)
        if value == 0:
            return default
        problem = flags.mtu_problem(value, ipv6=False, minimum=flags.MIN_IPV4_MTU)
        if problem:
            raise argparse.ArgumentTypeError(f"invalid {flag} {quote(text)}: {problem}")
        return value

    return parse


def object_name(kind: str) -> Value[str]:
    """The name of a Kubernetes ``kind`` (Node, Peer): a DNS-1123 subdomain."""

    def parse(text: str) -> str:
        errors = dns1123_subdomain_errors(text)
        if errors:
            raise argparse.ArgumentTypeError(
                f"invalid {kind} name {quote(text)}: {'; '.join(errors)}"
            )
        return text

    return Value(parse, completes=kind)


def go_value(flag: str, parse: Callable[[str], T]) -> Callable[[str], T]:
    """``parse`` (one of :mod:`kilo.mesh.gosyntax`) with pflag's message on failure:
    ``invalid argument "x" for "--port" flag: strconv.ParseInt: parsing "x": ...``."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                f"invalid argument {gosyntax.go_quote(text)} for {gosyntax.go_quote(flag)} "
                f"flag: {exc}"
            ) from None

    return convert


def go_bool(flag: str) -> Value[bool]:
    """A pflag bool flag's value: Go's ``strconv.ParseBool`` (``true``, ``1``, ``F``, ...).

    Register the flag with ``nargs="?"`` and ``const=True`` and pass the command line
    through :func:`explicit_bools`: then ``--flag`` alone is true and ``--flag=VALUE`` is
    VALUE, while the next word is never taken as the flag's value (``--as-peer node``)."""
    return Value(go_value(flag, gosyntax.parse_bool), choices=("true", "false"))


def add_go_bool(parser: argparse.ArgumentParser, flag: str, *, default: bool, help: str) -> None:
    """Register the pflag bool flag ``flag`` (see :func:`go_bool`); its help ends with its
    default, as pflag prints it."""
    parser.add_argument(
        flag,
        type=go_bool(flag),
        nargs="?",
        const=True,
        default=default,
        metavar="BOOL",
        help=f"{help} (default: {str(default).lower()})",
    )


def explicit_bools(argv: Sequence[str], bools: Collection[str]) -> list[str]:
    """``argv`` with each bare bool flag of ``bools`` written ``--flag=true``, so that
    argparse reads the flags as pflag does (up to a ``--``)."""
    result: list[str] = []
    for index, arg in enumerate(argv):
        if arg == "--":
            return result + list(argv[index:])
        result.append(f"{arg}=true" if arg in bools else arg)
    return result


def label_key(flag: str) -> Callable[[str], str]:
    """Empty (no label) or a Kubernetes label key."""

    def parse(text: str) -> str:
        problem = text and flags.label_key_problem(text)
        if problem:
            raise argparse.ArgumentTypeError(f"invalid {flag} {quote(text)}: {problem}")
        return text

    return parse


def path(flag: str) -> Callable[[str], str]:
    """A file path: not empty, not only white space."""

    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"invalid {flag} {quote(text)}: give a file path")
        return text

    return parse


__all__ = [
    "FILE",
    "Value",
    "explicit_bools",
    "go_bool",
    "go_value",
    "interface_name",
    "label_key",
    "mtu",
    "object_name",
    "path",
    "quote",
]
