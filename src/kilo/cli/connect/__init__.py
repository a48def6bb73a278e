"""``kgctl connect [NAME]``: join this (Linux) machine to the mesh as the Kilo Peer ``NAME``.

Composition root (``flags.py`` its flags, ``connection.py`` the connection, start-up to
clean-up, ``wireguard_go.py`` the userspace fallback). Kilo's sequence (reference
kilo-k8s-cli.md §4.6), with its fragile parts fixed (each in docs/compatibility.md):

1. the private key: ``--private-key PATH``, else ``/var/lib/kilo/connect/NAME.key``; read
   if it exists (an unusable file is an error, never overwritten), else generated and
   *kept* (0600, directory 0700) so that a re-run has the key the Peer holds. Never logged.
2. the Peer: created (``allowedIPs: [--allowed-ip]``, ``persistentKeepalive``,
   ``publicKey``, no endpoint) when missing; used when it holds this machine's public key;
   otherwise refused, changing nothing (Kilo reuses it silently and nothing works).
3. the interface: an existing one is used as it is (a running wireguard-go, say) and never
   deleted; a missing one is created (kernel WireGuard, else ``wireguard-go`` as a child
   process) unless ``--create-interface=false``. Its address becomes ``--allowed-ip`` (as
   given: Kilo masks it, ``10.5.0.1/24`` would become the network address) and it is up.
4. the loop: Nodes and Peers are watched; the WireGuard config (only differences, never
   replace-peers) and routes (tracked in a state file next to the key) follow every change
   and every ``--resync-period``. A node whose DNS endpoint does not resolve gets no endpoint
   (WireGuard keeps what it learnt) instead of failing the whole sync as in Kilo.
5. SIGINT/SIGTERM: with ``--clean-up`` (the default) remove the routes, the interface if
   created here (else its peers and address), and the Peer if created here; exit 0. A
   wireguard-go started here always stops with the command.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from kilo.cli import logs
from kilo.cli.arguments import quote
from kilo.cli.connect.flags import add_arguments, check_arguments
from kilo.errors import ConfigError, KiloError
from kilo.mesh.endpoint import is_dns1123_subdomain
from kilo.mesh.events import MIN_RESYNC_PERIOD

__all__ = ["MIN_RESYNC_PERIOD", "add_arguments", "check_arguments", "run"]


def _hostname() -> str:
    import socket

    try:
        name = socket.gethostname()
    except OSError as exc:
        raise ConfigError(f"could not determine hostname: {exc.strerror or exc}") from exc
    if not name:
        raise ConfigError("could not determine hostname: it is empty; give NAME")
    return name


# --- the command -----------------------------------------------------------------------------


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if not sys.platform.startswith("linux"):
        raise KiloError("this command is not supported on this OS")
    if args.backend != "kubernetes":
        raise ConfigError("connect needs --backend kubernetes: it creates a Peer")
    name = args.name or _hostname()
    if not is_dns1123_subdomain(name):
        raise ConfigError(
            f"peer name {quote(name)} is not a valid Kubernetes object name (lower-case letters, "
            "digits, '-' and '.'); give NAME"
        )
    log = logs.configure(args.log_level, out)
    # Imported here: kgctl imports this package for its flags, and the Kubernetes client
    # and asyncio the connection needs would cost every other command a quarter of a second.
    import asyncio

    from kilo.cli.connect.connection import Connection

    return asyncio.run(Connection(args, name, log, err).run())
