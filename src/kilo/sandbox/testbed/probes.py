"""What the tests observe of the data plane: ping, TCP connections and exchanges between
namespaces, WireGuard devices and the routes, rules, links and iptables of a namespace.

Each probe is a short process in the source namespace; nothing here changes the network.
"""

from __future__ import annotations

import json
import re
import select
import subprocess
import sys
from typing import Any

from kilo.sandbox import runs
from kilo.sandbox.runs import CommandError
from kilo.sandbox.testbed.base import Base
from kilo.sandbox.testbed.values import IPTABLES_TABLES, WG_INTERFACE, Echo


class Probes(Base):
    """Reachability and what a namespace's data plane holds."""

    def ping(self, src: str, ip: str, *, count: int = 1, timeout: float = 2) -> bool:
        wait = str(max(1, round(timeout)))
        result = runs.run(
            [*self.enter(src), "ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", wait, ip],
            check=False,
            timeout=timeout * count + 5,
        )
        return result.returncode == 0

    def can_connect(self, src: str, ip: str, port: int, *, timeout: float = 3) -> bool:
        """Whether a TCP connection from ``src`` to ``ip:port`` is accepted."""
        code = (
            "import socket, sys\n"
            "try:\n"
            f"    socket.create_connection(({ip!r}, {port}), timeout={timeout}).close()\n"
            "except OSError as e:\n"
            "    sys.exit(str(e))\n"
        )
        return (
            runs.run(
                [*self.enter(src), sys.executable, "-c", code], check=False, timeout=timeout + 10
            ).returncode
            == 0
        )

    def tcp_exchange(
        self, src: str, dst: str, ip: str, port: int, *, payload: str = "hello", timeout: float = 5
    ) -> Echo:
        """A one-shot TCP echo: a server in ``dst`` (all addresses, ``port``), a client in
        ``src`` connecting to ``ip``. CommandError when the client cannot get through."""
        server_code = (
            "import socket, sys\n"
            "s = socket.socket()\n"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('0.0.0.0', {port}))\n"
            "s.listen(1)\n"
            f"s.settimeout({timeout})\n"
            "print('ready', flush=True)\n"
            "c, addr = s.accept()\n"
            f"c.settimeout({timeout})\n"
            "data = b''\n"
            "while chunk := c.recv(65536):\n"
            "    data += chunk\n"
            "c.sendall(data)\n"
            "c.close()\n"
            "print(addr[0], flush=True)\n"
        )
        client_code = (
            "import socket, sys\n"
            f"c = socket.create_connection(({ip!r}, {port}), timeout={timeout})\n"
            "c.sendall(sys.stdin.buffer.read())\n"
            "c.shutdown(socket.SHUT_WR)\n"
            "data = b''\n"
            "while chunk := c.recv(65536):\n"
            "    data += chunk\n"
            "sys.stdout.write(data.decode())\n"
        )
        server_argv = [*self.enter(dst), sys.executable, "-c", server_code]
        server = subprocess.Popen(
            server_argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._processes.append(server)
        try:
            assert server.stdout is not None and server.stderr is not None
            readable, _, _ = select.select([server.stdout], [], [], timeout + 5)
            line = server.stdout.readline().decode().strip() if readable else ""
            if line != "ready":
                runs.terminate(server, 1)
                raise CommandError(
                    server_argv, server.returncode, line, server.stderr.read().decode()
                )
            reply = runs.run(
                [*self.enter(src), sys.executable, "-c", client_code],
                stdin=payload,
                timeout=timeout + 10,
            ).stdout
            try:
                out, err = server.communicate(timeout=timeout + 5)
            except subprocess.TimeoutExpired as exc:
                raise CommandError(server_argv, None, "", "the echo server did not finish") from exc
            if server.returncode != 0:
                raise CommandError(server_argv, server.returncode, out.decode(), err.decode())
            return Echo(reply=reply, peer=out.decode().strip())
        finally:
            runs.terminate(server, 1)
            for pipe in (server.stdout, server.stderr):
                if pipe is not None:
                    pipe.close()
            self._processes.remove(server)

    def wg_dump(self, name: str, interface: str = WG_INTERFACE) -> str:
        return self.run(name, "wg", "show", interface, "dump")

    def snapshot(self, target: str) -> dict[str, Any]:
        """Routes (all tables), rules, links, addresses and iptables (counters and comments
        dropped), for before/after comparisons."""

        def ip_json(*args: str) -> Any:
            return json.loads(self.run(target, "ip", "-j", *args) or "[]")

        iptables = {}
        for table in IPTABLES_TABLES:
            text = self.run(target, "iptables-save", "-t", table)
            iptables[table] = [
                re.sub(r"\[\d+:\d+\]", "[0:0]", line)
                for line in text.splitlines()
                if line and not line.startswith("#")
            ]
        return {
            "routes": ip_json("route", "show", "table", "all"),
            "rules": ip_json("rule"),
            "links": ip_json("link"),
            "addrs": ip_json("addr"),
            "iptables": iptables,
        }
