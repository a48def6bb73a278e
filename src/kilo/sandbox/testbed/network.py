"""The testbed's network: the host link, the internet, each location's LAN and NAT
gateway, the machines on them and their holder processes.

Network safety: the only link in the host namespace is the veth to ``cp`` (one /30 that
overlaps no host route or address, chosen under a lock so that parallel runs do not pick
the same one). A NAT gateway masquerades its LAN to its ``wan0``, inside its own namespace.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import subprocess
from pathlib import Path

from kilo.sandbox import runs
from kilo.sandbox.runs import TestbedError, wait_for
from kilo.sandbox.testbed.base import Base
from kilo.sandbox.testbed.values import (
    CP_WAN,
    INTERNET,
    PRIVATE_DIRS,
    ROUTER,
    WG_INTERFACE,
    Location,
    Machine,
)


class Network(Base):
    """Namespaces, links and holders: the machines of the testbed and what connects them."""

    def _claim(self) -> None:
        """Record our ownership, then pick and create the host link under a lock (parallel
        runs must not choose the same /30)."""
        if runs.run_namespaces(self.prefix) or runs.link_exists(self.host_link):
            raise TestbedError(f"testbed {self.prefix} exists already (its namespaces or link)")
        self._claimed = True
        self.logs.mkdir(parents=True)
        runs.OWNERS.mkdir(mode=0o755, exist_ok=True)
        if self.owned:
            start = runs.process_start(os.getpid())
            record = {"pid": os.getpid(), "start": start, "workdir": str(self.workdir)}
            (runs.OWNERS / f"{self.prefix}.json").write_text(json.dumps(record))
        cp = self._add_namespace("cp")
        with open(runs.OWNERS / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            subnet = self._host_link_subnet()
            host, cp_ip = (str(a) for a in subnet.hosts())
            runs.run(
                ["ip", "link", "add", self.host_link, "type", "veth", "peer", "host0", "netns", cp]
            )
            runs.run(["ip", "addr", "add", f"{host}/30", "dev", self.host_link])
        self.host_ip, self.cp_ip = host, cp_ip
        runs.run(["ip", "link", "set", self.host_link, "up"])
        self._ip(cp, "addr", "add", f"{cp_ip}/30", "dev", "host0")
        self._ip(cp, "link", "set", "host0", "up")

    def _host_link_subnet(self) -> ipaddress.IPv4Network:
        if self._attachment is None:
            return runs.free_host_link_subnet()
        # The attached API server's certificate names this link's cp side.
        subnet = ipaddress.IPv4Network(self._attachment.host_link)
        if any(subnet.overlaps(n) for n in runs.host_networks()):
            raise TestbedError(f"the attached control plane's host link {subnet} is taken here")
        return subnet

    def _plug(self, netns: str, ifname: str, bridge_ns: str, alias: str) -> None:
        """A veth from ``netns`` (named ``ifname``) into br0 of ``bridge_ns``."""
        self._veths += 1
        port = f"v{self._veths}"
        self._ip(netns, "link", "add", ifname, "type", "veth", "peer", port, "netns", bridge_ns)
        self._ip(bridge_ns, "link", "set", port, "alias", alias)
        self._ip(bridge_ns, "link", "set", port, "master", "br0", "up")
        self._ip(netns, "link", "set", ifname, "up")

    def _bridge(self, netns: str) -> None:
        self._ip(netns, "link", "add", "br0", "type", "bridge")
        self._ip(netns, "link", "set", "br0", "up")

    def _wan_ip(self, kind: str) -> str:
        host = self._wan_hosts[kind]
        limit = {"node": 100, "gateway": 200, "laptop": 255}[kind]
        if host >= limit:
            raise TestbedError(f"testbed {self.prefix}: too many {kind}s on {INTERNET}")
        self._wan_hosts[kind] = host + 1
        return str(INTERNET[host])

    def _attach_wan(self, netns: str, alias: str, ip: str) -> None:
        self._plug(netns, "wan0", self._roles["internet"], alias)
        self._ip(netns, "addr", "add", f"{ip}/{INTERNET.prefixlen}", "dev", "wan0")

    def _build_internet(self) -> None:
        inet = self._add_namespace("internet")
        self._bridge(inet)
        self._ip(inet, "addr", "add", f"{ROUTER}/{INTERNET.prefixlen}", "dev", "br0")
        self._sysctl(inet, "net.ipv4.ip_forward", "1")
        self._attach_wan(self._roles["cp"], "cp", CP_WAN)

    def _build_location(self, index: int, location: Location) -> None:
        lan = ipaddress.IPv4Network(f"172.16.{index}.0/24")
        lan_ns = self._add_namespace(f"{location.name}-lan")
        self._bridge(lan_ns)
        gateway = None
        if location.nat:
            gateway = str(lan[1])
            gw = self._add_namespace(f"{location.name}-gw")
            self._plug(gw, "lan0", lan_ns, f"{location.name}-gw")
            self._ip(gw, "addr", "add", f"{gateway}/24", "dev", "lan0")
            wan = self._wan_ip("gateway")
            self._attach_wan(gw, f"{location.name}-gw", wan)
            self._ip(gw, "route", "add", "default", "via", ROUTER)
            self._sysctl(gw, "net.ipv4.ip_forward", "1")
            runs.run(
                [
                    *("ip", "netns", "exec", gw, "iptables", "-t", "nat", "-A", "POSTROUTING"),
                    *("-s", str(lan), "-o", "wan0", "-j", "MASQUERADE"),
                ]
            )
            self.gateways[location.name] = wan
        subnets = list(lan.subnets(new_prefix=lan.prefixlen + location.subnets.bit_length() - 1))
        for i in range(1, location.nodes + 1):
            name = f"{location.name}-{i}"
            netns = self._add_namespace(name)
            subnet = subnets[(i - 1) % len(subnets)]
            lan_ip = (
                str(lan[9 + i])
                if len(subnets) == 1
                else str(subnet[9 + (i - 1) // len(subnets) + 1])
            )
            self._plug(netns, "lan0", lan_ns, name)
            self._ip(netns, "addr", "add", f"{lan_ip}/{subnet.prefixlen}", "dev", "lan0")
            if len(subnets) > 1:
                self._ip(netns, "route", "add", str(lan), "dev", "lan0")
            wan_ip = None
            if gateway is None:
                wan_ip = self._wan_ip("node")
                self._attach_wan(netns, name, wan_ip)
                self._ip(netns, "route", "add", "default", "via", ROUTER)
            else:
                self._ip(netns, "route", "add", "default", "via", gateway)
            cluster = self.clusters[location.cluster]
            taken = sum(1 for n in self.nodes.values() if n.cluster == location.cluster)
            pod_cidr = list(cluster.pod_cidrs.subnets(new_prefix=24))[taken]
            self.nodes[name] = Machine(
                name=name,
                netns=netns,
                location=location.name,
                lan_ip=lan_ip,
                wan_ip=wan_ip,
                pod_cidr=str(pod_cidr),
                userspace=location.wireguard == "userspace",
                cluster=location.cluster,
            )

    def _write_hosts_file(self) -> None:
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        lines += [f"{n.lan_ip}\t{n.name}" for n in self.nodes.values()]
        (self.workdir / "hosts").write_text("\n".join(lines) + "\n")

    def _start_holder(self, machine: Machine) -> None:
        steps = [f"mkdir -p {d} && mount -t tmpfs -o mode=0755 kilo-e2e {d}" for d in PRIVATE_DIRS]
        steps.append(f"mount --bind {self.workdir / 'hosts'} /etc/hosts")
        if machine.userspace:
            steps.append(f"exec env WG_PROCESS_FOREGROUND=1 wireguard-go {WG_INTERFACE}")
        else:
            steps.append("exec sleep infinity")
        log = open(self.logs / f"{machine.name}.wireguard-go.log", "ab")  # noqa: SIM115
        with log:
            machine.process = subprocess.Popen(
                [
                    *("ip", "netns", "exec", machine.netns, "unshare", "-m", "--propagation"),
                    *("private", "sh", "-c", " && ".join(steps)),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _await_holder(self, machine: Machine, timeout: float = 60) -> None:
        socket_path = self.path(machine.name, f"/var/run/wireguard/{WG_INTERFACE}.sock")
        comm = Path(f"/proc/{machine.pid}/comm")

        def ready() -> bool:
            if not machine.running:
                log = (self.logs / f"{machine.name}.wireguard-go.log").read_text(errors="replace")
                raise TestbedError(f"{machine.name}: its holder is not running: {log}")
            if not machine.userspace:  # the holder has mounted everything once it is sleep
                with contextlib.suppress(OSError):
                    return comm.read_text().strip() == "sleep"
                return False
            return socket_path.is_socket()

        wait_for(
            ready,
            timeout=timeout,
            message=f"{machine.name}: no WireGuard UAPI socket"
            if machine.userspace
            else f"{machine.name}: its holder did not set up its mounts",
        )

    def add_laptop(self, name: str) -> Machine:
        """A machine on the internet with its own wireguard-go (``kilo0``), for Peer tests."""
        if name in self.nodes or name in self.laptops:
            raise TestbedError(f"testbed {self.prefix}: {name!r} exists already")
        self._check_name(name)
        netns = self._add_namespace(name)
        wan_ip = self._wan_ip("laptop")
        self._attach_wan(netns, name, wan_ip)
        self._ip(netns, "route", "add", "default", "via", ROUTER)
        laptop = Machine(name=name, netns=netns, wan_ip=wan_ip)
        self.laptops[name] = laptop
        self._start_holder(laptop)
        self._await_holder(laptop)
        return laptop
