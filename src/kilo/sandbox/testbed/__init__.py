"""A Kilo testbed in network namespaces: clouds, a NATed office, a laptop, a control plane.

The end-to-end tests, the agent benchmark and ``kilo-sandbox`` all build on
:class:`Testbed`. Everything it creates carries one short run prefix (three letters + 6 hex
digits: ``ktb…`` for the tests' runs, random; the sandbox's is derived from its directory) so
that a crashed run can be recognised and removed (:func:`kilo.sandbox.runs.cleanup_stale`
for the tests' runs, whose owner process is recorded in ``/run/kilo-e2e``; :func:`remove_run`
for any prefix)
without touching anyone else's namespaces. A testbed outlives the process that built it
unless :meth:`Testbed.close` is called: every process it starts is in a session of its own.

Topology (addresses are documentation and private ranges that exist only inside our
namespaces)::

    this process ── <run>h 198.51.100.x/30 ── cp (etcd + kube-apiserver, 203.0.113.2)
                                                │
    internet: bridge br0, router 203.0.113.1 ───┼── public nodes  wan0 203.0.113.10+
                                                ├── NAT gateways  wan0 203.0.113.100+
                                                └── laptops       wan0 203.0.113.200+
    location i: bridge br0 in <run>-<loc>-lan, 172.16.i.0/24, nodes lan0 172.16.i.10+,
                NAT gateway 172.16.i.1 (MASQUERADE to its wan0, inside its namespace only)

Network safety: the only link in the host namespace is the veth to ``cp`` (one /30 that
overlaps no host route or address); ``cp`` forwards nothing and has no route beyond that
/30, so no packet of the testbed can reach the host's uplink, and the host reaches only the
API server.

Every node and laptop is one long-lived process, the holder: ``unshare -m --propagation
private`` in the node's network namespace, tmpfs on the node's private state directories
and its own ``/etc/hosts``, then ``exec wireguard-go kilo0`` in the foreground. Everything
else for that machine runs through ``nsenter -t <holder> -m -n`` and its files are reached
through ``/proc/<holder>/root``.

The package, one module a concept: :mod:`~kilo.sandbox.testbed.values` (locations,
machines, pods, the fixed addresses), :mod:`~kilo.sandbox.testbed.base` (the state every
part reads and the primitives they share: namespaces, running a command in a machine),
:mod:`~kilo.sandbox.testbed.network` (host link, internet, LANs, NAT gateways, holders),
:mod:`~kilo.sandbox.testbed.clusters` (control planes and the objects of each cluster),
:mod:`~kilo.sandbox.testbed.pods` (CNI), :mod:`~kilo.sandbox.testbed.agents` (``kg``) and
:mod:`~kilo.sandbox.testbed.probes` (ping, TCP, WireGuard and data-plane snapshots).
:class:`Testbed` combines the parts (mixins over one :class:`~kilo.sandbox.testbed.base.Base`:
the e2e tests, the kernel suite, the benchmarks and the sandbox call every step on the one
object) and orders them in :meth:`Testbed.start` and :meth:`Testbed.close`. What stands
alone lives beside the package: a run's namespaces and processes on the host in
:mod:`kilo.sandbox.runs`, the control plane in :mod:`kilo.sandbox.controlplane`, the
image's containers in :mod:`kilo.sandbox.podman`, kubelet-like Nodes in
:mod:`kilo.sandbox.kubelet`.
"""

from __future__ import annotations

import contextlib
import os
import shutil

from kilo.sandbox import prerequisites, runs
from kilo.sandbox.runs import TestbedError
from kilo.sandbox.testbed.agents import Agents
from kilo.sandbox.testbed.clusters import ControlPlanes
from kilo.sandbox.testbed.network import Network
from kilo.sandbox.testbed.pods import Pods
from kilo.sandbox.testbed.probes import Probes
from kilo.sandbox.testbed.values import (
    CLUSTERS,
    CNI_BIN,
    CNI_CONFLIST,
    CP_WAN,
    IMAGE_KUBECONFIG,
    INTERNET,
    IPTABLES_TABLES,
    KILO_CNI_TEMPLATE,
    MANIFESTS,
    NAME,
    POD_CIDRS,
    PREFIX,
    PRIVATE_DIRS,
    ROUTER,
    TOPOLOGY_LABEL,
    WG_INTERFACE,
    Cluster,
    Echo,
    Location,
    Machine,
    Pod,
    from_dict,
)

# The values are re-exported: callers name them as testbed.WG_INTERFACE, testbed.Location.
__all__ = [
    "CLUSTERS",
    "CNI_BIN",
    "CNI_CONFLIST",
    "CP_WAN",
    "IMAGE_KUBECONFIG",
    "INTERNET",
    "IPTABLES_TABLES",
    "KILO_CNI_TEMPLATE",
    "MANIFESTS",
    "NAME",
    "POD_CIDRS",
    "PREFIX",
    "PRIVATE_DIRS",
    "ROUTER",
    "TOPOLOGY_LABEL",
    "WG_INTERFACE",
    "Cluster",
    "Echo",
    "Location",
    "Machine",
    "Pod",
    "Testbed",
    "from_dict",
]


class Testbed(Network, ControlPlanes, Pods, Agents, Probes):
    """Build with :meth:`start` (or ``with Testbed(...) as bed``), remove with :meth:`close`."""

    __test__ = False

    def __enter__(self) -> Testbed:
        return self.start()

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            self.close()
        except TestbedError as error:
            if exc is None:
                raise
            exc.add_note(f"and the testbed teardown failed: {error}")

    def start(self) -> Testbed:
        if self._started:
            raise TestbedError(f"testbed {self.prefix} was already started")
        self._started = True
        try:
            self._check_host()
            self._claim()
            self._build_internet()
            self._start_control_planes()
            for index, location in enumerate(self.locations):
                self._build_location(index, location)
            self._write_hosts_file()
            for node in self.nodes.values():
                self._start_holder(node)
            for node in self.nodes.values():
                self._await_holder(node)
                self.write_cni_config(node.name, KILO_CNI_TEMPLATE)
            errors = [starting.wait() for starting in self._plane_starts]
            error = next((e for e in errors if e is not None), None)
            if error is not None:
                raise TestbedError(
                    f"testbed {self.prefix}: the control plane did not start: {error}"
                ) from error
            self._populate_api()
        except BaseException as exc:
            try:
                self.close()
            except TestbedError as error:
                exc.add_note(f"and the testbed teardown failed: {error}")
            raise
        return self

    def close(self) -> None:
        """Remove everything; safe after a partial start and when called twice."""
        if not self._claimed:
            return
        problems: list[str] = []
        self.close_client()
        for name in list(self._agents):
            with contextlib.suppress(TestbedError):
                self.stop_agent(name, timeout=10)
        for node in list(self._containers):
            try:
                self._remove_container(node)
            except TestbedError as exc:
                problems.append(f"node {node}: the agent's container was not removed: {exc}")
        for process in self._processes:
            runs.terminate(process, 5)
        self._processes.clear()
        for pod in list(self.pods.values()):
            try:
                self.remove_pod(pod.name)
            except TestbedError as exc:
                problems.append(f"pod {pod.name}: CNI DEL failed: {exc}")
                self.pods.pop(pod.name, None)
        for machine in [*self.laptops.values(), *self.nodes.values()]:
            if machine.process is not None:
                runs.terminate(machine.process, 5)
        for plane in self.planes:
            plane.stop()
        for starting in self._plane_starts:
            # A start still under way ends once its processes are gone; then nothing it
            # started late can survive.
            starting.wait(150)
            starting.plane.stop()
        ours = runs.run_namespaces(self.prefix)
        namespaces = list(dict.fromkeys([*reversed(self._namespaces), *ours]))
        left = runs.remove_namespaces(namespaces, self.host_link)
        if left:
            problems.append(f"namespaces not removed: {left}")
        if runs.link_exists(self.host_link):
            problems.append(f"host link {self.host_link} not removed")
        self._namespaces = left
        with contextlib.suppress(OSError):
            (runs.OWNERS / f"{self.prefix}.json").unlink()
        if not os.environ.get(runs.KEEP_ENV):
            shutil.rmtree(self.workdir, ignore_errors=True)
        if problems:
            raise TestbedError(f"testbed {self.prefix}: " + "; ".join(problems))

    def _check_host(self) -> None:
        problem = prerequisites.missing(
            prerequisites.observe(cni_dir=str(CNI_BIN)), subject="the testbed"
        )
        if problem is not None:
            raise TestbedError(problem)
