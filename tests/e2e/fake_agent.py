"""A stand-in for ``kg`` that proves where the testbed runs the agent: it reports its
arguments and what it sees of the node, then waits for a signal. Exit status 7 on SIGTERM,
so that a test can tell the code came from here."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
    seen = {
        "argv": sys.argv[1:],
        "wireguard": sorted(os.listdir("/var/run/wireguard")),
        "links": sorted(name for _, name in socket.if_nameindex()),
    }
    print(json.dumps(seen), flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
