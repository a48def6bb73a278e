"""What the agent says about its own node, and which node changes matter to the mesh.

Pure. Kilo's ``handle_local`` (reference kilo-mesh.md §6.5) fills in what the Node object
does not say yet (endpoint, internal IP) from IP discovery, adds the agent's key and the
results of the last apply, and writes the whole set as annotations. ``mesh_changed`` is
Kilo's ``nodesAreEqual`` (§6.4) negated: ``last_seen`` alone is not a change (every node
checks in every 30 s), but crossing the liveness window is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from kilo.mesh.endpoint import Endpoint, UDPAddr, endpoint_ready
from kilo.mesh.ip import IPInterface
from kilo.mesh.keys import Key
from kilo.mesh.model import Node, Peer


def local_node(
    observed: Node,
    *,
    public_key: Key,
    external_ip: IPInterface,
    private_ip: IPInterface | None,
    port: int,
    granularity: str,
    wireguard_ip: IPInterface | None,
    discovered_endpoints: Mapping[str, UDPAddr | None] | None,
    cni_compatibility_ip: IPInterface | None,
    last_seen: int,
) -> Node:
    """The local node as the agent publishes it.

    An endpoint or internal IP already on the Node (set by a user's ``force-*`` annotation
    or written by an earlier run) is kept: Kilo re-detects neither once written.
    """
    endpoint = observed.endpoint
    if not endpoint_ready(endpoint):
        endpoint = Endpoint.new(external_ip.ip, port)
    internal_ip = observed.internal_ip
    if internal_ip is None and not observed.no_internal_ip:
        internal_ip = private_ip
    return replace(
        observed,
        endpoint=endpoint,
        key=public_key,
        internal_ip=internal_ip,
        cni_compatibility_ip=cni_compatibility_ip,
        last_seen=last_seen,
        wireguard_ip=wireguard_ip,
        granularity=granularity,
        discovered_endpoints=discovered_endpoints,
    )


def mesh_changed(old: Node | None, new: Node | None, now: int) -> bool:
    """Whether replacing ``old`` by ``new`` can change this agent's topology."""
    if old is None or new is None:
        return old is not new
    if old.is_ready(now) != new.is_ready(now):
        return True
    return old.with_last_seen(0) != new.with_last_seen(0)


def peer_changed(old: Peer | None, new: Peer | None) -> bool:
    if old is None or new is None:
        return old is not new
    return old != new
