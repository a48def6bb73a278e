"""Pods on the testbed's nodes: a network namespace each, plumbed by the real CNI plugins
(``/usr/lib/cni``) with the node's current conflist, as a kubelet would run them.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Mapping
from typing import Any

from kilo.sandbox import runs
from kilo.sandbox.runs import CommandError, TestbedError, wait_for
from kilo.sandbox.testbed.base import Base
from kilo.sandbox.testbed.values import CNI_BIN, CNI_CONFLIST, Pod


class Pods(Base):
    """Pods: namespaces plumbed by the CNI plugins with the node's conflist."""

    def cni_config(self, node: str) -> dict[str, Any]:
        config: dict[str, Any] = json.loads(self.path(node, CNI_CONFLIST).read_text())
        return config

    def write_cni_config(self, node: str, config: Mapping[str, Any]) -> None:
        path = self.path(node, CNI_CONFLIST)
        path.write_text(json.dumps(config))
        path.chmod(0o644)

    def cni_ranges(self, node: str) -> list[Any]:
        """The IPAM ranges of the node's conflist (empty while the agent has not set them)."""
        try:
            plugins = self.cni_config(node).get("plugins", [])
        except (OSError, ValueError):
            return []
        return [r for p in plugins for r in (p.get("ipam") or {}).get("ranges") or []]

    def _cni(
        self, node: str, command: str, pod_ns: str, container_id: str, config: Mapping[str, Any]
    ) -> str:
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            # Our mount namespace holds the bind mount of the pod's namespace; the node's
            # private mount namespace only sees an empty file at /run/netns/<name>.
            "CNI_NETNS": f"/proc/{os.getpid()}/root/run/netns/{pod_ns}",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(CNI_BIN),
        }
        argv = [*self.enter(node), str(CNI_BIN / config["type"])]
        try:
            result = subprocess.run(
                argv,
                input=json.dumps(config),
                capture_output=True,
                text=True,
                env=env,
                timeout=30,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise CommandError(argv, None, runs.text(exc.stdout), runs.text(exc.stderr)) from exc
        if result.returncode != 0:
            # Plugins report errors as JSON on stdout; CommandError falls back to it.
            raise CommandError(
                [f"CNI_COMMAND={command}", *argv], result.returncode, result.stdout, result.stderr
            )
        return result.stdout

    @staticmethod
    def _plugin_config(
        conflist: Mapping[str, Any], plugin: Mapping[str, Any], prev: Any
    ) -> dict[str, Any]:
        config = dict(plugin)
        config["cniVersion"] = conflist["cniVersion"]
        config["name"] = conflist["name"]
        if prev is not None:
            config["prevResult"] = prev
        return config

    def add_pod(self, node: str, name: str, *, timeout: float = 30) -> Pod:
        """A pod network namespace on ``node``, plumbed by the real CNI plugins with the
        node's current conflist once it has IPAM ranges (the agent writes them)."""
        self.machine(node)
        if name in self.pods or name in self._roles:
            raise TestbedError(f"testbed {self.prefix}: {name!r} exists already")
        self._check_name(name)
        wait_for(
            lambda: self.cni_ranges(node),
            timeout=timeout,
            message=f"node {node}: {CNI_CONFLIST} has no IPAM ranges (the agent fills them in "
            "from the pod CIDR)",
        )
        conflist = self.cni_config(node)
        netns = self._add_namespace(name)
        container_id = f"{self.prefix}-{name}"
        prev: Any = None
        done: list[Mapping[str, Any]] = []
        try:
            for plugin in conflist["plugins"]:
                config = self._plugin_config(conflist, plugin, prev)
                prev = json.loads(self._cni(node, "ADD", netns, container_id, config))
                done.append(plugin)
        except BaseException:
            for plugin in reversed(done):
                with contextlib.suppress(TestbedError):
                    self._cni(
                        node,
                        "DEL",
                        netns,
                        container_id,
                        self._plugin_config(conflist, plugin, prev),
                    )
            raise
        ips = prev.get("ips") or []
        if not ips:
            raise TestbedError(f"pod {name} on {node}: the CNI result has no IP: {prev}")
        pod = Pod(
            name=name,
            node=node,
            netns=netns,
            container_id=container_id,
            ip=ips[0]["address"].split("/")[0],
            gateway=ips[0].get("gateway", ""),
            result=prev,
        )
        self.pods[name] = pod
        self._conflists[name] = conflist
        return pod

    def remove_pod(self, name: str) -> None:
        """CNI DEL (plugins in reverse, with the ADD result), then the namespace."""
        pod = self.pods[name]
        conflist = self._conflists.get(name)
        try:
            if conflist is not None and self.machine(pod.node).running:
                for plugin in reversed(conflist["plugins"]):
                    config = self._plugin_config(conflist, plugin, pod.result)
                    self._cni(pod.node, "DEL", pod.netns, pod.container_id, config)
        finally:
            del self.pods[name]
            self._conflists.pop(name, None)
            runs.remove_namespaces([pod.netns], None)
            self._roles.pop(name, None)
            self._namespaces.remove(pod.netns)
