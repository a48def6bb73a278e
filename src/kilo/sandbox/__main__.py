"""``kilo-sandbox up|status|down``: a real multi-cloud Kilo mesh on this machine (root).

Exit status: 0 success (``up``: every path reachable; ``status``: every process running and
every path reachable), 1 failure (one sentence on stderr says why), 2 command-line mistake
(one line on stderr, before anything is checked or created).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from kilo.errors import KiloError
from kilo.mesh.text import printable
from kilo.sandbox import commands

DIR_ENV = "KILO_SANDBOX_DIR"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``kilo-sandbox up: argument --nodes: ...``), exit 2,
    and no abbreviated options."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {printable(message)} (see {self.prog} --help)\n")


def _count(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        digits = text[1:] if text[:1] in "+-" else text
        if not (digits.isascii() and digits.isdigit()):
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in {low}..{high}")
        return value

    return parse


def _directory(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"{text!r} names no directory; give one, or leave --dir out for ${DIR_ENV}, else "
            f"{commands.DEFAULT_DIR}"
        )
    return Path(text)


def _default_directory() -> Path:
    """``$KILO_SANDBOX_DIR`` (empty counts as unset), else the default directory."""
    return Path(os.environ.get(DIR_ENV) or str(commands.DEFAULT_DIR))


def parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--dir",
        type=_directory,
        default=_default_directory(),
        help=f"the sandbox's directory (default ${DIR_ENV}, else {commands.DEFAULT_DIR}); "
        "one sandbox per directory",
    )
    top = _Parser(
        prog="kilo-sandbox",
        description="A Kilo mesh across simulated clouds, a NATed office and a VPN peer, in "
        "network namespaces on this machine: real WireGuard (wireguard-go), routes, "
        "iptables, CNI plugins and a real etcd + kube-apiserver. Needs root.",
        epilog="exit status: 0 success, 1 failure (one sentence on stderr), "
        "2 command-line mistake (one line on stderr)",
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="up|status|down")
    up = sub.add_parser(
        "up",
        parents=[common],
        help="build the sandbox and wait until the mesh converges",
    )
    up.add_argument(
        "--locations",
        type=_count(1, len(commands.CLOUDS)),
        default=2,
        help=f"public clouds ({', '.join(commands.CLOUDS)}, in this order; default 2); "
        "a NATed office comes on top",
    )
    up.add_argument(
        "--nodes",
        type=_count(1, commands.MAX_NODES),
        default=2,
        help="nodes per location, the office included (default 2)",
    )
    up.add_argument(
        "--granularity",
        choices=commands.GRANULARITIES,
        default="location",
        help="the mesh granularity of every kg (default location: one leader per location)",
    )
    up.add_argument(
        "--kernel",
        action="store_true",
        help="run the nodes in a virtual machine with Debian's kernel (QEMU, emulated; "
        "about 10 minutes): kernel WireGuard and IPIP, Kilo's defaults",
    )
    # Inside that virtual machine (not for users): up against the host's control plane,
    # then answer status requests.
    guest = sub.add_parser("guest", parents=[common])
    guest.add_argument("--attached-plane", type=Path, required=True)
    guest.add_argument("--locations", type=_count(1, len(commands.CLOUDS)), default=2)
    guest.add_argument("--nodes", type=_count(1, commands.MAX_NODES), default=2)
    guest.add_argument("--granularity", choices=commands.GRANULARITIES, default="location")
    sub.add_parser(
        "status",
        parents=[common],
        help="processes, kgctl list, leaders, WireGuard handshakes, reachability again",
    )
    sub.add_parser(
        "down",
        parents=[common],
        help="remove every namespace, process, link and file of the sandbox "
        "(also after a crash; safe to repeat)",
    )
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out, err = sys.stdout, sys.stderr
    try:
        if args.command == "up":
            options = commands.UpOptions(
                directory=args.dir,
                locations=args.locations,
                nodes=args.nodes,
                granularity=args.granularity,
                kernel=args.kernel,
            )
            return commands.up(options, out, err)
        if args.command == "guest":
            options = commands.UpOptions(
                directory=args.dir,
                locations=args.locations,
                nodes=args.nodes,
                granularity=args.granularity,
                attached_plane=args.attached_plane,
            )
            return commands.guest(options, args.attached_plane.parent)
        if args.command == "status":
            return commands.status(args.dir, out, err)
        return commands.down(args.dir, out, err)
    except KiloError as exc:
        err.write(f"kilo-sandbox {args.command}: {printable(str(exc))}\n")
        return 1
    except KeyboardInterrupt:
        err.write(f"kilo-sandbox {args.command}: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
