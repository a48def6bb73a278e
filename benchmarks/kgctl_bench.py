"""Time ``kgctl`` on cluster dumps of N nodes, as a user runs it: one process per command.

    python -m benchmarks.kgctl_bench [--nodes 5000] [--repeat 3]
                                     [--dumps bare,kubelet,bare-json,kubelet-json]
                                     [--commands list,graph,...] [--dir DIR]

Writes the dumps (``--dir``, else a temporary directory), each as ``kubectl get nodes,peers
-o yaml`` prints a cluster: a ``List`` of N Nodes (50 locations, 10 VPN Peers) in block
YAML, or with ``-json`` as ``-o json`` prints it (indented by four spaces).

* ``bare``: each Node holds what Kilo reads and little else: its name, a topology label,
  the annotations a Kilo agent writes (endpoint, internal IP, key, last-seen, location,
  granularity; a WireGuard IP on every fourth node, a leader per location) and its pod CIDR.
* ``kubelet``: the same Nodes as a cluster holds them: a kubelet's labels, annotations and
  status with 32 images (``kilo.sandbox.kubelet``), about 9 KB of JSON a Node.

Then runs every command ``--repeat`` times as a child process (``kgctl --backend file
--file DUMP ...``, output to a file) and prints the median and max wall time, the largest
resident set of the runs (``ru_maxrss`` of the child, from ``wait4``), the median CPU time
(user + system, also from ``wait4``: what the command costs whatever else the machine runs)
and the size of the output. kilo's modules are compiled to bytecode first (``compileall``),
as ``pip install`` leaves them: without it (``PYTHONDONTWRITEBYTECODE``, a fresh checkout)
every run compiles them again, about 0.1 s. ``graph`` runs twice: with
``--mesh-granularity location`` (one edge a pair of location leaders) and ``full`` (one
edge a pair of nodes: N(N-1)/2 of them).

Target (2-core machine): every command under 1.5 s on a 5000-node dump; ``graph`` of a
5000-node full mesh under 10 s and 1 GB.
"""

from __future__ import annotations

import argparse
import compileall
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

import kilo
from benchmarks import synthetic

PEERS = 10
# A fixed check-in time: the file backend judges a dump as of when it was taken.
LAST_SEEN = 1_767_225_600

# label -> kgctl arguments after "--backend file --file DUMP"
COMMANDS: dict[str, tuple[str, ...]] = {
    "list": ("list",),
    "graph location": ("--mesh-granularity", "location", "graph"),
    "graph full": ("--mesh-granularity", "full", "graph"),
    "showconf node": ("showconf", "node", "node-00000"),
    "showconf peer": ("showconf", "peer", "peer-00"),
    "plan node": ("plan", "node", "node-00050"),
    "plan node full": ("--mesh-granularity", "full", "plan", "node", "node-00000"),
}


def node_object(i: int, *, kubelet_like: bool) -> dict[str, Any]:
    key = synthetic.public_key(synthetic.node_name(i).encode())
    return synthetic.kilo_node(i, key=key, last_seen=LAST_SEEN, kubelet_like=kubelet_like)


def peer_object(p: int) -> dict[str, Any]:
    return {
        "apiVersion": "kilo.squat.ai/v1alpha1",
        "kind": "Peer",
        "metadata": {"name": f"peer-{p:02d}"},
        "spec": {
            "allowedIPs": [f"10.5.0.{p + 1}/32"],
            "publicKey": synthetic.public_key(f"peer-{p}".encode()),
            "persistentKeepalive": 10,
        },
    }


def write_dump(path: Path, nodes: int, *, kubelet_like: bool, as_json: bool = False) -> None:
    items = [node_object(i, kubelet_like=kubelet_like) for i in range(nodes)]
    items += [peer_object(p) for p in range(PEERS)]
    document = {"apiVersion": "v1", "items": items, "kind": "List", "metadata": {}}
    with path.open("w") as file:
        if as_json:
            json.dump(document, file, indent=4, sort_keys=True)
            return
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        yaml.dump(document, file, Dumper=dumper, default_flow_style=False, sort_keys=True)


def kgctl() -> list[str]:
    script = Path(sys.executable).with_name("kgctl")
    return [str(script)] if script.exists() else [sys.executable, "-m", "kilo.cli.kgctl"]


def run_once(argv: Sequence[str], out: Path) -> tuple[float, int, int, float]:
    """Wall seconds, max RSS in bytes, output size and CPU seconds of one run; fails on a
    non-zero exit."""
    with out.open("wb") as sink:
        start = time.perf_counter()
        child = subprocess.Popen(argv, stdout=sink, stderr=subprocess.PIPE)
        assert child.stderr is not None
        errors = child.stderr.read()
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {child.returncode}: {errors.decode()[-2000:]}")
    return wall, usage.ru_maxrss * 1024, out.stat().st_size, usage.ru_utime + usage.ru_stime


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dumps", default="bare,kubelet")
    parser.add_argument("--commands", default=",".join(COMMANDS))
    parser.add_argument("--dir", help="where to write the dumps (kept; reused if present)")
    args = parser.parse_args()
    commands = [c.strip() for c in args.commands.split(",")]
    unknown = [c for c in commands if c not in COMMANDS]
    if unknown:
        parser.error(f"unknown commands {unknown}; known: {', '.join(COMMANDS)}")
    compileall.compile_dir(Path(kilo.__file__).parent, quiet=1)
    with tempfile.TemporaryDirectory(prefix="kgctl-bench-") as scratch:
        directory = Path(args.dir or scratch)
        directory.mkdir(parents=True, exist_ok=True)
        print(
            f"{'dump':<12} {'nodes':>5} {'MB':>6} {'command':<15} {'median s':>9} {'max s':>7} "
            f"{'max RSS MiB':>11} {'output MB':>9} {'CPU s':>6}  load"
        )
        for kind in args.dumps.split(","):
            objects, _, syntax = kind.partition("-")
            if objects not in ("bare", "kubelet") or syntax not in ("", "json"):
                parser.error(f"unknown dump {kind!r}: bare or kubelet, with -json for JSON")
            dump = directory / f"dump-{objects}-{args.nodes}.{syntax or 'yaml'}"
            if not dump.exists():
                # In a child process: a child's ru_maxrss counts the memory of the process
                # it was forked from, and this one would hold every Node of the dump.
                writer = multiprocessing.get_context("spawn").Process(
                    target=write_dump,
                    args=(dump, args.nodes),
                    kwargs={"kubelet_like": objects == "kubelet", "as_json": bool(syntax)},
                )
                writer.start()
                writer.join()
                if writer.exitcode != 0:
                    raise SystemExit(f"writing {dump} failed (exit {writer.exitcode})")
            size = dump.stat().st_size / 1e6
            for label in commands:
                argv = [*kgctl(), "--backend", "file", "--file", str(dump), *COMMANDS[label]]
                runs = [run_once(argv, Path(scratch) / "out") for _ in range(args.repeat)]
                walls = [wall for wall, _, _, _ in runs]
                print(
                    f"{kind:<12} {args.nodes:>5} {size:>6.1f} {label:<15} "
                    f"{statistics.median(walls):>9.2f} {max(walls):>7.2f} "
                    f"{max(rss for _, rss, _, _ in runs) / 2**20:>11.0f} "
                    f"{runs[-1][2] / 1e6:>9.1f} "
                    f"{statistics.median(cpu for _, _, _, cpu in runs):>6.2f}  {load()}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
