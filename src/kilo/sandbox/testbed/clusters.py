"""The testbed's Kubernetes clusters: their control planes in ``cp`` (or the forwarding to an
attached one), the objects a cluster holds before any agent runs (the Peer CRD, Kilo's
RBAC, its service account's kubeconfig, kubelet-like Nodes), and admin clients of them.
"""

from __future__ import annotations

import contextlib
import ipaddress
from pathlib import Path

from lightkube import ApiError, Client, KubeConfig
from lightkube.codecs import load_all_yaml
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.core_v1 import Node, ServiceAccount

from kilo.sandbox import kubelet, runs
from kilo.sandbox.controlplane import (
    AttachedControlPlane,
    Attachment,
    ControlPlane,
    Starting,
    build_binaries,
)
from kilo.sandbox.runs import TestbedError, wait_for
from kilo.sandbox.testbed.base import Base
from kilo.sandbox.testbed.values import CP_WAN, MANIFESTS, TOPOLOGY_LABEL, from_dict


class ControlPlanes(Base):
    """The control planes, the objects of each cluster, and admin clients of them."""

    def _start_control_planes(self) -> None:
        """etcd + kube-apiserver of each cluster in ``cp`` (each on ports of its own),
        started while the rest of the network is built (or, attached, the forwarding to
        them and a wait until they answer)."""
        if self.attached_plane is not None:
            attached = AttachedControlPlane(
                self.attached_plane, workdir=self.workdir / "controlplane", server_host=self.cp_ip
            )
            self._forward_to_attached_plane(attached.attachment)
            self.planes.append(attached)
        else:
            binaries = self.binaries or build_binaries()
            for index, cluster in enumerate(self.clusters):
                self.planes.append(
                    ControlPlane(
                        binaries,
                        # The first cluster's directory keeps its one-cluster name.
                        workdir=self.workdir / ("controlplane" if index == 0 else cluster.name),
                        netns=self._roles["cp"],
                        bind_address="0.0.0.0",
                        advertise_address=CP_WAN,
                        server_host=self.cp_ip,
                        extra_sans=(self.cp_ip,),
                        service_cidr=str(cluster.service_cidr),
                    )
                )
        self.plane = self.planes[0]
        for plane in self.planes:
            self._plane_starts.append(Starting(plane, name=f"{self.prefix}-controlplane"))

    def _forward_to_attached_plane(self, attachment: Attachment) -> None:
        """Move the attachment's NIC into ``cp`` and forward the API server's port on
        ``cp``'s own addresses (CP_WAN, the host link) to it; cp forwards nothing else.
        (Deleting ``cp`` gives the NIC back to the initial namespace.)"""
        cp = self._roles["cp"]
        nic = attachment.nic
        prefix = ipaddress.IPv4Network(attachment.link).prefixlen
        runs.run(["ip", "link", "set", nic, "netns", cp])
        self._ip(cp, "addr", "add", f"{attachment.guest_ip}/{prefix}", "dev", nic)
        self._ip(cp, "link", "set", nic, "up")
        self._sysctl(cp, "net.ipv4.ip_forward", "1")
        port = str(attachment.port)
        to = f"{attachment.address}:{port}"
        rules = [
            "*nat",
            *(
                f"-A PREROUTING -d {ip}/32 -p tcp --dport {port} -j DNAT --to-destination {to}"
                for ip in (CP_WAN, self.cp_ip)
            ),
            f"-A POSTROUTING -o {nic} -j MASQUERADE",
            "COMMIT",
            "*filter",
            ":FORWARD DROP [0:0]",
            f"-A FORWARD -o {nic} -d {attachment.address}/32 -p tcp --dport {port} -j ACCEPT",
            f"-A FORWARD -i {nic} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
            "COMMIT",
        ]
        runs.run(["ip", "netns", "exec", cp, "iptables-restore"], stdin="\n".join(rules) + "\n")

    def _populate_api(self) -> None:
        for index in range(len(self.clusters)):
            self._populate_cluster(index)

    def _populate_cluster(self, index: int) -> None:
        plane = self.planes[index]
        client = self.api(index)
        self._apply(MANIFESTS / "crds.yaml", index)

        def established() -> bool:
            crd = client.get(CustomResourceDefinition, "peers.kilo.squat.ai")
            conditions = (crd.status.conditions if crd.status else None) or []
            return any(c.type == "Established" and c.status == "True" for c in conditions)

        wait_for(established, timeout=30, message="the Peer CRD is not established")
        self._apply(MANIFESTS / "rbac.yaml", index)
        # The nodes use the shipped role through its service account, as a DaemonSet would.
        request = from_dict(
            ServiceAccount.Token,
            {
                "metadata": {"name": "kilo", "namespace": "kube-system"},
                "spec": {"expirationSeconds": 24 * 3600},
            },
        )
        token = client.create(request, "kilo", namespace="kube-system")
        path = self.node_kubeconfig_of(index)
        plane.write_kubeconfig(
            path,
            "kilo",
            token=token.status.token,
            server=f"https://{CP_WAN}:{plane.port}",
            # As kg sees it in a DaemonSet pod: where --leader-election=lease keeps Leases.
            namespace="kube-system",
        )
        path.chmod(0o644)
        by_name = {loc.name: loc for loc in self.locations}
        for node in self.nodes.values():
            if node.cluster != index:
                continue
            assert node.location is not None and node.lan_ip is not None
            # As a kubelet registers it (and the controllers fill it in): labels,
            # annotations and a status besides Kilo's, as Kilo meets Nodes in a cluster.
            obj = kubelet.node(
                node.name,
                internal_ip=node.lan_ip,
                external_ip=node.wan_ip,
                pod_cidr=node.pod_cidr,
                labels={TOPOLOGY_LABEL: node.location},
                annotations=by_name[node.location].annotations,
            )
            client.create(from_dict(Node, obj), field_manager=kubelet.FIELD_MANAGER)

    def _apply(self, path: Path, cluster: int = 0) -> None:
        for obj in load_all_yaml(path.read_text()):
            try:
                self.api(cluster).create(obj)
            except ApiError as exc:
                if exc.status.code != 409:
                    raise

    def _first_plane(self) -> ControlPlane:
        if self.plane is None:
            raise TestbedError(f"testbed {self.prefix} has no control plane yet")
        return self.plane

    @property
    def admin_kubeconfig(self) -> Path:
        return self._first_plane().admin_kubeconfig

    @property
    def api_port(self) -> int:
        return self._first_plane().port

    def admin_kubeconfig_of(self, cluster: int) -> Path:
        """The admin kubeconfig of cluster ``cluster`` (an index in :attr:`clusters`)."""
        if cluster >= len(self.planes):
            raise TestbedError(f"testbed {self.prefix} has no control plane {cluster} (yet)")
        return self.planes[cluster].admin_kubeconfig

    def close_client(self) -> None:
        """Close the admin clients (and their connections) and nothing else."""
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()

    def api(self, cluster: int = 0) -> Client:
        """An admin client of ``cluster`` for the test process (through the host<->cp link)."""
        if cluster not in self._clients:
            config = KubeConfig.from_file(str(self.admin_kubeconfig_of(cluster)))
            self._clients[cluster] = Client(config, trust_env=False)
        return self._clients[cluster]

    def node_annotations(self, name: str) -> dict[str, str]:
        node = self.api().get(Node, name)
        return dict((node.metadata.annotations if node.metadata else None) or {})
