"""What ``kgctl connect`` registers and programs for a machine that joins the mesh as a Peer.

Pure. No I/O, no clock, no logging: the shell (``kilo.cli.connect``) reads the cluster, the
key and the device, and applies what these functions return.

Three decisions live here:

* the ``Peer`` object to create (Kilo's shape: ``allowedIPs``, ``persistentKeepalive``,
  ``publicKey``, no endpoint);
* whether an existing ``Peer`` may be used: only when its public key is this machine's.
  Kilo silently reuses a Peer whose key belongs to someone else, so the machine configures
  itself with a key the mesh does not know and nothing works; here that is refused with a
  message naming both keys and the ways out;
* the WireGuard config and routes this machine needs (Kilo's ``showconf peer`` config plus
  the private key and listen port, and ``PeerRoutes``).

Differences from Kilo (each in docs/compatibility.md): ``--allowed-ips`` are attached to
the first segment, the one their routes go through (Kilo attaches them to the
alphabetically first node, which can be in another segment, so WireGuard and the routes
disagree); the Kilo subnet comes from the first node by name with a ``wireguard-ip``, or
``--subnet``; and an endpoint WireGuard learnt from a live session is kept
(:func:`keep_live_endpoints`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from kilo.errors import TopologyError
from kilo.mesh import cluster, ip, routes, topology, wireguard
from kilo.mesh.ip import IPInterface, IPNetwork
from kilo.mesh.keys import Key
from kilo.mesh.model import Granularity, Node, Peer
from kilo.mesh.wgdevice import DeviceState

__all__ = [
    "PEER_API_VERSION",
    "ConnectPlan",
    "PeerAction",
    "PeerDecision",
    "decide_peer",
    "keep_live_endpoints",
    "peer_object",
    "plan_connection",
]

PEER_API_VERSION = "kilo.squat.ai/v1alpha1"
# WireGuard drops a session's keys 180 s after the handshake (REJECT_AFTER_TIME); a
# handshake younger than that proves the endpoint it came from works.
LIVE_HANDSHAKE = 180.0


def peer_object(
    name: str, *, allowed_ip: IPInterface, public_key: Key, persistent_keepalive: int
) -> dict[str, Any]:
    """The ``Peer`` Kilo's ``kgctl connect`` creates (no endpoint: the machine dials in)."""
    return {
        "apiVersion": PEER_API_VERSION,
        "kind": "Peer",
        "metadata": {"name": name},
        "spec": {
            "allowedIPs": [str(allowed_ip)],
            "persistentKeepalive": persistent_keepalive,
            "publicKey": str(public_key),
        },
    }


class PeerAction(enum.StrEnum):
    CREATE = "create"  # no Peer of that name: create it (and delete it on clean-up)
    REUSE = "reuse"  # the Peer holds this machine's public key: use it, never delete it
    REFUSE = "refuse"  # the Peer belongs to another key: change nothing


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerDecision:
    action: PeerAction
    message: str = ""  # why a Peer is refused
    warnings: tuple[str, ...] = ()


def decide_peer(
    existing: Mapping[str, Any] | None,
    *,
    name: str,
    public_key: Key,
    allowed_ip: IPInterface,
    key_file: str,
) -> PeerDecision:
    """Create, reuse or refuse the Peer ``name`` (``existing`` is the API object or ``None``).

    ``key_file`` names where the local key lives, for the refusal message.
    """
    if existing is None:
        return PeerDecision(action=PeerAction.CREATE)
    spec = existing.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}
    text = spec.get("publicKey")
    theirs = Key.try_parse(text) if isinstance(text, str) else None
    if theirs != public_key:
        held = "no valid public key" if theirs is None else f"public key {theirs}"
        return PeerDecision(
            action=PeerAction.REFUSE,
            message=(
                f'Peer "{name}" already exists with {held}, but this machine\'s private key '
                f"({key_file}) has public key {public_key}: pass --private-key with the "
                f'private key of Peer "{name}", connect under another name, or delete the '
                f"Peer (kubectl delete peers.kilo.squat.ai {name}) if it is no longer used"
            ),
        )
    allowed = spec.get("allowedIPs")
    items = allowed if isinstance(allowed, list) else []
    cidrs = [c for c in (ip.parse_interface(a) for a in items if isinstance(a, str)) if c]
    warnings = []
    if not any(_covers(c, allowed_ip) for c in cidrs):
        shown = ", ".join(str(c) for c in cidrs) or "none"
        warnings.append(
            f'Peer "{name}" routes only its allowed IPs ({shown}) to this machine, which do '
            f"not cover --allowed-ip {allowed_ip}: traffic to {allowed_ip.ip} will not arrive; "
            "edit the Peer or pass a matching --allowed-ip"
        )
    return PeerDecision(action=PeerAction.REUSE, warnings=tuple(warnings))


def _covers(cidr: IPInterface, address: IPInterface) -> bool:
    return cidr.version == address.version and address.network.subnet_of(cidr.network)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectPlan:
    """What this machine's interface should hold."""

    config: wireguard.WireGuardConfig
    routes: tuple[routes.Route, ...]
    granularity: Granularity
    subnet: IPNetwork
    warnings: tuple[str, ...] = ()


def plan_connection(
    nodes: Sequence[Node],
    peers: Sequence[Peer],
    *,
    name: str,
    private_key: Key,
    port: int,
    granularity: str,
    subnet: IPNetwork | None = None,
    extra_allowed_ips: Sequence[IPNetwork] = (),
) -> ConnectPlan:
    """The config and routes of Peer ``name`` among the *ready* ``nodes`` and ``peers``.

    ``granularity`` is ``location``, ``full`` or ``auto`` (read from the nodes); ``subnet``
    ``None`` means: from the nodes' ``wireguard-ip`` annotations. Raises
    :class:`~kilo.errors.TopologyError` (Kilo's messages) when there is nothing to connect to.
    """
    ready = sorted(nodes, key=lambda n: n.name)
    if not ready:
        raise TopologyError("did not find any valid Kilo nodes in the cluster")
    chosen, warnings = cluster.resolve_granularity(granularity, ready)
    if subnet is None:
        if not any(n.wireguard_ip for n in ready):
            raise TopologyError(
                "did not find a valid Kilo subnet on any node (no node has a "
                "kilo.squat.ai/wireguard-ip yet); pass --subnet to choose"
            )
        subnet, subnet_warnings = cluster.infer_subnet(ready)
        warnings += subnet_warnings
    own = next((p for p in peers if p.name == name), None)
    if own is None:
        raise TopologyError(f'did not find any peer named "{name}" in the cluster')
    if own.public_key != private_key.public_key():
        raise TopologyError(
            f'Peer "{name}" now has public key {own.public_key}, not this machine\'s '
            f"{private_key.public_key()}; the mesh no longer routes to this machine"
        )
    ready = _with_extra_allowed_ips(ready, chosen, extra_allowed_ips)
    # Any perspective gives the same peer config; the first node by name is deterministic.
    t = topology.build_topology(
        ready,
        peers,
        granularity=chosen,
        hostname=ready[0].name,
        subnet=subnet,
        port=port,
        persistent_keepalive=own.persistent_keepalive,
    )
    config = replace(wireguard.peer_config(t, name), private_key=private_key, listen_port=port)
    return ConnectPlan(
        config=config,
        routes=routes.peer_routes(t, name=name),
        granularity=chosen,
        subnet=subnet,
        warnings=tuple(warnings),
    )


def _with_extra_allowed_ips(
    nodes: list[Node], granularity: Granularity, extra: Sequence[IPNetwork]
) -> list[Node]:
    """``extra`` as allowed-location IPs of the first node of the first segment.

    Then the topology's allowed-location-IP filter treats them like any other, and the
    WireGuard peer and the routes (both through the first segment) agree.
    """
    if not extra:
        return nodes
    first = min(topology.location_key(n, granularity) for n in nodes)
    owner = next(n for n in nodes if topology.location_key(n, granularity) == first)
    added = tuple(
        cidr for cidr in (ip.parse_interface(str(net)) for net in extra) if cidr is not None
    )
    return [
        replace(n, allowed_location_ips=n.allowed_location_ips + added) if n is owner else n
        for n in nodes
    ]


def keep_live_endpoints(
    config: wireguard.WireGuardConfig, device: DeviceState, *, now: float
) -> wireguard.WireGuardConfig:
    """``config`` with no endpoint (``None``: leave it) for peers in a live session.

    The endpoint of a location behind NAT is the one the *nodes* discovered: the NAT's
    mapping for their own traffic, which a NAT usually refuses to anyone else. This machine
    reaches such a location only once its leader, having learnt this machine's address,
    sends first; WireGuard then roams to the mapping that leader's packets came from.
    Setting the discovered endpoint again (as Kilo does on every resync) breaks that
    session until the leader's next keepalive. So a peer whose last handshake is younger
    than :data:`LIVE_HANDSHAKE` keeps whatever endpoint WireGuard has.
    """
    live = {
        p.public_key
        for p in device.peers
        if p.endpoint is not None
        and p.last_handshake is not None
        and now - p.last_handshake < LIVE_HANDSHAKE
    }
    if not live:
        return config
    peers = tuple(replace(p, endpoint=None) if p.public_key in live else p for p in config.peers)
    return replace(config, peers=peers)
