"""``kilo-sandbox up|status|down``: a real multi-cloud Kilo mesh on this machine (root).

Exit status: 0 success (``up``: every path reachable; ``status``: every process running and
every path reachable), 1 failure (one sentence on stderr says why), 2 command-line mistake.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from kilo.errors import KiloError
from kilo.sandbox import commands

DIR_ENV = "KILO_SANDBOX_DIR"


def _count(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in {low}..{high}")
        return value

    return parse


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir",
        type=Path,
        default=Path(os.environ.get(DIR_ENV, str(commands.DEFAULT_DIR))),
        help=f"the sandbox's directory (default ${DIR_ENV}, else {commands.DEFAULT_DIR}); "
        "one sandbox per directory",
    )
    top = argparse.ArgumentParser(
        prog="kilo-sandbox",
        description="A Kilo mesh across simulated clouds, a NATed office and a VPN peer, in "
        "network namespaces on this machine: real WireGuard (wireguard-go), routes, "
        "iptables, CNI plugins and a real etcd + kube-apiserver. Needs root.",
        allow_abbrev=False,
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="up|status|down")
    up = sub.add_parser(
        "up",
        parents=[common],
        help="build the sandbox and wait until the mesh converges",
        allow_abbrev=False,
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
    sub.add_parser(
        "status",
        parents=[common],
        help="processes, kgctl list, leaders, WireGuard handshakes, reachability again",
        allow_abbrev=False,
    )
    sub.add_parser(
        "down",
        parents=[common],
        help="remove every namespace, process, link and file of the sandbox "
        "(also after a crash; safe to repeat)",
        allow_abbrev=False,
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
            )
            return commands.up(options, out, err)
        if args.command == "status":
            return commands.status(args.dir, out, err)
        return commands.down(args.dir, out, err)
    except KiloError as exc:
        err.write(f"kilo-sandbox {args.command}: {exc}\n")
        return 1
    except KeyboardInterrupt:
        err.write(f"kilo-sandbox {args.command}: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
