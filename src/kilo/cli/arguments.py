"""argparse types of the values several ``kgctl`` commands take, checked by the pure rules
of :mod:`kilo.mesh.flags` (the same rules ``kg`` applies to its flags).

Each raises :class:`argparse.ArgumentTypeError` with a one-line message; kgctl prints it
as ``kgctl: argument FLAG: MESSAGE`` and exits with status 2, before anything runs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from kilo.mesh import flags
from kilo.mesh.endpoint import dns1123_subdomain_errors


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


def mtu(flag: str) -> Callable[[str], int]:
    """An MTU for a WireGuard interface (the IPv6 minimum is checked with the address)."""

    def parse(text: str) -> int:
        if not (text.isascii() and text.isdigit()):
            raise argparse.ArgumentTypeError(
                f"invalid {flag} {quote(text)}: not a whole number of bytes"
            )
        problem = flags.mtu_problem(int(text), ipv6=False)
        if problem:
            raise argparse.ArgumentTypeError(f"invalid {flag} {quote(text)}: {problem}")
        return int(text)

    return parse


def object_name(kind: str) -> Callable[[str], str]:
    """The name of a Kubernetes ``kind`` (Node, Peer): a DNS-1123 subdomain."""

    def parse(text: str) -> str:
        errors = dns1123_subdomain_errors(text)
        if errors:
            raise argparse.ArgumentTypeError(
                f"invalid {kind} name {quote(text)}: {'; '.join(errors)}"
            )
        return text

    return parse


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


__all__ = ["interface_name", "label_key", "mtu", "object_name", "path", "quote"]
