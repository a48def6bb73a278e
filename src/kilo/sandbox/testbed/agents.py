"""Kilo's agent on the testbed's nodes: ``kg`` started from this checkout (or from the image,
in a podman container), stopped, killed, and its log.

Every agent is a process in a session of its own, logging to ``logs/<node>.kg.log``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from kilo.sandbox import podman, runs
from kilo.sandbox.runs import TestbedError
from kilo.sandbox.testbed.base import Base
from kilo.sandbox.testbed.values import IMAGE_KUBECONFIG, Machine

_SIGTERM = signal.SIGTERM
_SIGKILL = signal.SIGKILL


class Agents(Base):
    """``kg`` on the nodes: started, stopped, killed, and its log."""

    def start_agent(
        self,
        node: str,
        *extra_args: str,
        granularity: str = "location",
        env: Mapping[str, str] | None = None,
        module: str = "kilo.agent",
        image: podman.Image | None = None,
    ) -> subprocess.Popen[bytes]:
        """``kg`` (``python -m module``) for ``node`` in its mount and network namespaces,
        logging to ``logs/<node>.kg.log``; extra arguments come last (and so win).

        With ``image``, the image's ``kg`` (its entrypoint) runs instead, in a podman
        container in the node's network namespace, with the node's ``/var/lib/kilo``,
        ``/etc/cni/net.d`` and ``/var/run/wireguard`` (wireguard-go's UAPI socket), the
        kubeconfig at ``/etc/kubernetes/kubeconfig`` and a ``/run/xtables.lock`` of its own
        mounted as a Kilo DaemonSet mounts them, with the image's security settings."""
        machine = self.nodes.get(node)
        if machine is None:
            raise TestbedError(f"testbed {self.prefix}: no node {node!r}")
        running = self._agents.get(node)
        if running is not None and running.poll() is None:
            raise TestbedError(f"node {node}: the agent is already running (pid {running.pid})")
        kubeconfig = str(self.node_kubeconfig_of(machine.cluster))
        cluster = self.clusters[machine.cluster]
        args = [
            f"--hostname={node}",
            f"--kubeconfig={kubeconfig if image is None else IMAGE_KUBECONFIG}",
            # Kilo's default subnet is the first cluster's; the others move theirs aside.
            *([f"--subnet={cluster.wireguard_cidr}"] if machine.cluster else []),
            *(["--create-interface=false"] if machine.userspace else []),
            *([f"--encapsulate={self.encapsulate}"] if self.encapsulate is not None else []),
            f"--mesh-granularity={granularity}",
            f"--listen={machine.lan_ip}:1107",
            "--resync-period=5s",
            "--log-level=debug",
            *extra_args,
        ]
        environ = {
            k: v
            for k, v in os.environ.items()
            if k != "KUBECONFIG" and not k.lower().endswith("_proxy")
        }
        if image is None:
            argv = [*self.enter(node), sys.executable, "-m", module, *args]
            environ["PYTHONUNBUFFERED"] = "1"
            environ.update(env or {})
        else:
            argv = [*self.enter(node), *self._agent_container(machine, image, args, env).argv()]
        log = open(self.agent_log_path(node), "ab")  # noqa: SIM115
        with log:
            log.write(f"--- {' '.join(argv)}\n".encode())
            log.flush()
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environ,
                start_new_session=True,
            )
        self._agents[node] = process
        return process

    def _agent_container(
        self,
        machine: Machine,
        image: podman.Image,
        args: Sequence[str],
        env: Mapping[str, str] | None,
    ) -> podman.Container:
        lock = self.workdir / f"{machine.name}.xtables.lock"
        lock.touch()
        name = f"{self.prefix}-{machine.name}-kg"
        self._containers[machine.name] = name
        # Paths resolve in the node's mount namespace, where podman runs.
        mounts = [podman.Mount(source=d, target=d) for d in ("/var/lib/kilo", "/etc/cni/net.d")]
        mounts += [
            podman.Mount(source="/var/run/wireguard", target="/var/run/wireguard"),
            podman.Mount(
                source=str(self.node_kubeconfig_of(machine.cluster)),
                target=IMAGE_KUBECONFIG,
                read_only=True,
            ),
            podman.Mount(source=str(lock), target="/run/xtables.lock"),
        ]
        return podman.Container(
            image=image.ref,
            name=name,
            args=tuple(args),
            env=dict(env or {}),
            mounts=tuple(mounts),
            network=f"ns:/proc/{machine.pid}/ns/net",
            security=image.security,
        )

    def _remove_container(self, node: str) -> None:
        """The agent's container, if it outlived its podman client (SIGKILL)."""
        name = self._containers.pop(node, None)
        if name is None:
            return
        machine = self.nodes[node]
        enter = self.enter(node) if machine.running else []
        runs.run([*enter, *podman.remove(name)], timeout=60)

    def agent_log_path(self, node: str) -> Path:
        return self.logs / f"{node}.kg.log"

    def agent_log(self, node: str) -> str:
        path = self.agent_log_path(node)
        return path.read_text(errors="replace") if path.exists() else ""

    @contextlib.contextmanager
    def agent_logs_on_failure(self, *, tail: int = 4000) -> Iterator[None]:
        """Write every agent's log tail to stderr when the block fails: the evidence a
        failed set-up leaves once the testbed is removed."""
        try:
            yield
        except BaseException:
            for node in self.nodes:
                sys.stderr.write(f"--- {node}\n{self.agent_log(node)[-tail:]}\n")
            raise

    def agent(self, node: str) -> subprocess.Popen[bytes] | None:
        return self._agents.get(node)

    def stop_agent(self, node: str, signal: int = _SIGTERM, *, timeout: float = 15) -> int:
        """Signal the agent (only its own process, as a container runtime would) and
        return its exit code; TestbedError (after a SIGKILL) if it outlives ``timeout``."""
        process = self._agents.pop(node, None)
        if process is None:
            raise TestbedError(f"node {node}: no agent was started")
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired as exc:
                runs.terminate(process, 0)
                self._remove_container(node)
                raise TestbedError(
                    f"node {node}: the agent ignored signal {signal} for {timeout:g} s; "
                    f"killed. Log tail:\n{self._tail(self.agent_log(node))}"
                ) from exc
        runs.signal_group(process, _SIGKILL)
        self._remove_container(node)
        return process.returncode

    def kill_agent(self, node: str) -> int:
        process = self._agents.pop(node, None)
        if process is None:
            raise TestbedError(f"node {node}: no agent was started")
        runs.signal_group(process, _SIGKILL)
        returncode = process.wait()
        # podman's container outlives its client; SIGKILL it the same way.
        self._remove_container(node)
        return returncode

    @staticmethod
    def _tail(text: str, lines: int = 30) -> str:
        return "\n".join(text.splitlines()[-lines:])
