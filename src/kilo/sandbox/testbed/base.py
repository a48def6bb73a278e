"""The testbed's state, and how to run something in one of its namespaces.

:class:`Base` holds what every part of the testbed reads and writes (the namespaces by
role, the machines, pods, control planes, agents and the processes to stop) and the
primitives all of them use: create a namespace, run ``ip`` or a command in a node's mount
and network namespaces, reach a node's files through ``/proc/<holder>/root``. The parts
(:mod:`~kilo.sandbox.testbed.network`, :mod:`~kilo.sandbox.testbed.clusters`,
:mod:`~kilo.sandbox.testbed.pods`, :mod:`~kilo.sandbox.testbed.agents`,
:mod:`~kilo.sandbox.testbed.probes`) each derive from it and use nothing of one another;
:class:`~kilo.sandbox.testbed.Testbed` combines them and orders their steps.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightkube import Client

from kilo.sandbox import runs
from kilo.sandbox.controlplane import Attachment, ControlPlane, Starting
from kilo.sandbox.runs import TestbedError, wait_for
from kilo.sandbox.testbed.values import CLUSTERS, NAME, PREFIX, Location, Machine, Pod


def _resolve_in(root: Path, path: str) -> Path:
    """``path`` under ``root`` (a /proc/<pid>/root), with absolute symbolic links such as
    /var/run -> /run kept under ``root``: the kernel would resolve them in our own root."""
    parts = [p for p in path.split("/") if p]
    current = root
    for _ in range(40):
        for i, part in enumerate(parts):
            candidate = current / part
            if part != ".." and candidate.is_symlink():
                target = os.readlink(candidate)
                rest = parts[i + 1 :]
                if target.startswith("/"):
                    current, parts = root, [p for p in target.split("/") if p] + rest
                else:
                    parts = [p for p in target.split("/") if p] + rest
                break
            current = candidate
        else:
            return current
    raise TestbedError(f"too many symbolic links in {path} under {root}")


class Base:
    """The testbed's state and the primitives its parts share (see the module)."""

    def __init__(
        self,
        locations: Sequence[Location],
        *,
        binaries: Path | None = None,
        prefix: str | None = None,
        workdir: Path | None = None,
        owned: bool = True,
        attached_plane: Path | None = None,
        encapsulate: str | None = "never",
    ) -> None:
        """``prefix`` (default: a fresh ``ktb…``) names every namespace and the host link;
        ``workdir`` (default ``$TMPDIR/kilo-e2e-<prefix>``, removed by :meth:`close`) holds
        logs, kubeconfigs and the control plane's files. An ``owned`` testbed records this
        process as its owner, so that :func:`kilo.sandbox.runs.cleanup_stale` removes it once
        this process is gone; a testbed meant to outlive its builder (the sandbox) is not owned.

        ``attached_plane`` is the directory of a control plane that runs elsewhere (see
        :class:`AttachedControlPlane`; the host of a virtual machine): instead of starting
        one, ``cp`` forwards the API server's port, on its own addresses, to it through the
        attachment's NIC, and forwards nothing else. ``encapsulate`` is the agents'
        ``--encapsulate`` (None: Kilo's default, ``always``; IPIP needs a kernel with it)."""
        names = [loc.name for loc in locations]
        if len(set(names)) != len(names):
            raise TestbedError(f"location names must be unique: {names}")
        for loc in locations:
            if not re.fullmatch(r"[a-z][a-z0-9]{0,11}", loc.name):
                raise TestbedError(f"location name {loc.name!r}: want [a-z][a-z0-9]{{0,11}}")
            if not 1 <= loc.nodes <= 90:
                raise TestbedError(f"location {loc.name}: 1 to 90 nodes, not {loc.nodes}")
            if loc.wireguard not in ("userspace", "kernel"):
                raise TestbedError(
                    f"location {loc.name}: wireguard is userspace or kernel, not {loc.wireguard!r}"
                )
            if loc.subnets not in (1, 2, 4) or (loc.subnets > 1 and loc.nat):
                raise TestbedError(
                    f"location {loc.name}: 1, 2 or 4 subnets (a NATed site has one), "
                    f"not {loc.subnets}"
                )
        used = sorted({loc.cluster for loc in locations})
        if used != list(range(len(used))) or len(used) > len(CLUSTERS):
            raise TestbedError(
                f"location clusters {used}: want 0 to {len(CLUSTERS) - 1}, none skipped"
            )
        if attached_plane is not None and len(used) > 1:
            raise TestbedError("an attached control plane serves one cluster only")
        self.clusters = list(CLUSTERS[: max(1, len(used))])
        self.locations = list(locations)
        self.binaries = binaries
        self.attached_plane = attached_plane
        self.encapsulate = encapsulate
        if prefix is not None and not PREFIX.fullmatch(prefix):
            raise TestbedError(f"prefix {prefix!r}: want {PREFIX.pattern}")
        self.prefix = prefix or self._new_prefix()
        self.owned = owned
        self.host_link = f"{self.prefix}h"
        self.workdir = workdir or Path(tempfile.gettempdir()) / f"kilo-e2e-{self.prefix}"
        self.logs = self.workdir / "logs"
        self.nodes: dict[str, Machine] = {}
        self.laptops: dict[str, Machine] = {}
        self.pods: dict[str, Pod] = {}
        self.gateways: dict[str, str] = {}  # NAT location -> gateway wan IP
        self.plane: ControlPlane | None = None  # cluster 0's, as in a one-cluster testbed
        self.planes: list[ControlPlane] = []  # one a cluster, in CLUSTERS order
        self._attachment: Attachment | None = (
            None if attached_plane is None else Attachment.load(attached_plane)
        )
        self.host_ip = ""
        self.cp_ip = ""
        self.node_kubeconfig = self.workdir / "node.kubeconfig"
        self._namespaces: list[str] = []  # in creation order
        self._roles: dict[str, str] = {}  # short role name -> namespace
        self._agents: dict[str, subprocess.Popen[bytes]] = {}
        self._containers: dict[str, str] = {}  # node -> the podman container of its kg
        self._processes: list[subprocess.Popen[bytes]] = []  # servers and the like
        self._clients: dict[int, Client] = {}
        self._conflists: dict[str, Mapping[str, Any]] = {}  # pod -> the conflist of its ADD
        self._veths = 0
        self._wan_hosts = {"node": 10, "gateway": 100, "laptop": 200}
        self._started = False
        self._claimed = False  # from here on, close() has something to remove
        self._plane_starts: list[Starting] = []  # one a plane, in self.planes order

    @staticmethod
    def _new_prefix() -> str:
        taken = {n.split("-", 1)[0] for n in runs.list_namespaces()}
        while True:
            prefix = f"{runs.FAMILY}{uuid.uuid4().hex[:6]}"
            if prefix not in taken and not runs.read_owner(prefix):
                return prefix

    wait_for = staticmethod(wait_for)

    def machine(self, name: str) -> Machine:
        machine = self.nodes.get(name) or self.laptops.get(name)
        if machine is None:
            raise TestbedError(
                f"testbed {self.prefix}: no node or laptop {name!r} "
                f"(nodes: {sorted(self.nodes)}, laptops: {sorted(self.laptops)})"
            )
        return machine

    def netns(self, role: str) -> str:
        """The namespace of a node, laptop, pod, ``internet``, ``cp``, ``<loc>-lan`` or
        ``<loc>-gw``."""
        if role in self.pods:
            return self.pods[role].netns
        if role in self._roles:
            return self._roles[role]
        if role in self._roles.values():
            return role
        raise TestbedError(f"testbed {self.prefix}: no namespace {role!r}")

    def enter(self, target: str) -> list[str]:
        """The command prefix that runs a program in ``target``: the mount and network
        namespaces of a node or laptop, else the network namespace."""
        if target in self.nodes or target in self.laptops:
            return ["nsenter", "-t", str(self.machine(target).pid), "-m", "-n"]
        return ["ip", "netns", "exec", self.netns(target)]

    def run(
        self,
        target: str,
        *argv: str,
        check: bool = True,
        timeout: float = 30,
        stdin: str | None = None,
    ) -> str:
        """Run ``argv`` in ``target`` (see :meth:`enter`); its stdout."""
        return runs.run(
            [*self.enter(target), *argv], check=check, timeout=timeout, stdin=stdin
        ).stdout

    def path(self, name: str, path: str) -> Path:
        """``path`` as seen in the mount namespace of node or laptop ``name``."""
        return _resolve_in(Path(f"/proc/{self.machine(name).pid}/root"), path)

    def node_kubeconfig_of(self, cluster: int) -> Path:
        """The kubeconfig the nodes of ``cluster`` give ``kg`` (Kilo's service account)."""
        if cluster == 0:
            return self.node_kubeconfig
        return self.workdir / f"node.{self.clusters[cluster].name}.kubeconfig"

    @staticmethod
    def _check_name(name: str) -> None:
        if not NAME.fullmatch(name):
            raise TestbedError(f"name {name!r}: want {NAME.pattern}")

    def _add_namespace(self, role: str) -> str:
        if role in self._roles:
            raise TestbedError(f"testbed {self.prefix}: {role!r} exists already")
        netns = f"{self.prefix}-{role}"
        runs.run(["ip", "netns", "add", netns])
        self._namespaces.append(netns)
        self._roles[role] = netns
        self._ip(netns, "link", "set", "lo", "up")
        self._sysctl(netns, "net.ipv4.ip_forward", "0")
        return netns

    @staticmethod
    def _ip(netns: str, *args: str) -> str:
        return runs.run(["ip", "-n", netns, *args]).stdout

    @staticmethod
    def _sysctl(netns: str, key: str, value: str) -> None:
        runs.run(["ip", "netns", "exec", netns, "sysctl", "-qw", f"{key}={value}"])
