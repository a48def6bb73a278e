"""The userspace fallback of ``kgctl connect``: a ``wireguard-go`` child process.

Shell: started when the kernel has no WireGuard, it creates the interface and its UAPI
socket; stopping it (always, with the command) removes the interface.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Protocol, TextIO

from kilo.cli import logs
from kilo.errors import DataPlaneError

SOCKET_DIR = Path("/var/run/wireguard")
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


class _Links(Protocol):
    def index(self, name: str) -> int | None: ...


class WireGuardGo:
    """One running ``wireguard-go INTERFACE``."""

    def __init__(self, process: subprocess.Popen[bytes], interface: str) -> None:
        self.process = process
        self.interface = interface

    @classmethod
    def start(cls, program: str, interface: str, *, err: TextIO) -> WireGuardGo:
        env = {**os.environ, "WG_PROCESS_FOREGROUND": "1"}
        # Its own messages go to stderr: stdout carries only our JSON lines.
        process = subprocess.Popen(
            [program, interface],
            stdin=subprocess.DEVNULL,
            stdout=err.fileno() if _has_fileno(err) else subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # a terminal's Ctrl-C reaches us; we stop it in order
        )
        return cls(process, interface)

    def wait_ready(self, links: _Links, log: logs.Logger) -> None:
        """Wait until the interface and its UAPI socket exist; a child that fails to make
        them is left to :meth:`stop`, as clean-up's last step."""
        interface, process = self.interface, self.process
        sock = SOCKET_DIR / f"{interface}.sock"
        deadline = time.monotonic() + START_TIMEOUT
        while not (sock.exists() and links.index(interface) is not None):
            code = process.poll()
            if code is not None:
                raise DataPlaneError(
                    f"wireguard-go {interface} exited with status {code} before creating "
                    "the interface (its messages are above, on stderr)"
                )
            if time.monotonic() > deadline:
                raise DataPlaneError(
                    f"wireguard-go {interface} did not create the interface and {sock} "
                    f"within {START_TIMEOUT:g} s"
                )
            time.sleep(0.05)
        log.info("started wireguard-go", fields={"interface": interface, "pid": process.pid})

    def stop(self, log: logs.Logger) -> None:
        process = self.process
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.info("stopped wireguard-go", fields={"pid": process.pid})


def _has_fileno(stream: TextIO) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True
