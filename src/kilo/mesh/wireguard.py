"""WireGuard configurations derived from a topology, and their INI text.

Pure. The three generators are Kilo's ``Conf`` (a node's own device), ``AsPeer`` (the local
location as a peer of some other interface) and ``PeerConf`` (what a Kilo Peer should run).
The text is byte-exact with Kilo's renderer, so ``wg setconf`` and existing scripts accept it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kilo.mesh.endpoint import Endpoint
from kilo.mesh.ip import IPInterface, IPNetwork
from kilo.mesh.keys import Key
from kilo.mesh.model import wireguard_keepalive
from kilo.mesh.topology import Topology

AllowedIP = IPInterface | IPNetwork


@dataclass(frozen=True, slots=True, kw_only=True)
class WireGuardPeer:
    public_key: Key
    allowed_ips: tuple[AllowedIP, ...] = ()
    endpoint: Endpoint | None = None
    persistent_keepalive: int = 0
    preshared_key: Key | None = None
    name: str = ""  # what this peer stands for (a segment key or a Peer name); not rendered


@dataclass(frozen=True, slots=True, kw_only=True)
class WireGuardConfig:
    """A device configuration; ``private_key is None`` means no ``[Interface]`` section."""

    private_key: Key | None = None
    listen_port: int = 0
    peers: tuple[WireGuardPeer, ...] = ()

    def peer(self, public_key: Key) -> WireGuardPeer | None:
        for p in self.peers:
            if p.public_key == public_key:
                return p
        return None


def node_config(t: Topology) -> WireGuardConfig:
    """Kilo's ``Conf``: the config of the local (leader) node's own device."""
    peers = [
        WireGuardPeer(
            name=s.location,
            allowed_ips=s.allowed_ips + s.allowed_location_ips,
            persistent_keepalive=t.persistent_keepalive,
            public_key=s.key,
            endpoint=t.update_endpoint(s.endpoint, s.key, s.persistent_keepalive),
        )
        for s in t.segments
        # In a cross mesh the nodes of the own location are reached over the underlay.
        if not t.in_own_location(s)
    ]
    peers.extend(
        WireGuardPeer(
            name=p.name,
            allowed_ips=p.allowed_ips,
            persistent_keepalive=t.persistent_keepalive,
            preshared_key=p.preshared_key,
            public_key=p.public_key,
            endpoint=t.update_endpoint(p.endpoint, p.public_key, p.persistent_keepalive),
        )
        for p in t.peers
    )
    return WireGuardConfig(private_key=t.key, listen_port=t.port, peers=tuple(peers))


def location_as_peer(t: Topology) -> WireGuardPeer | None:
    """Kilo's ``AsPeer``: the local location as one peer (no allowed-location IPs, no NAT)."""
    segment = t.local_segment
    if segment is None:
        return None
    return WireGuardPeer(
        name=segment.location,
        allowed_ips=segment.allowed_ips,
        public_key=segment.key,
        endpoint=segment.endpoint,
    )


def peer_config(t: Topology, name: str) -> WireGuardConfig:
    """Kilo's ``PeerConf``: the config the Kilo Peer ``name`` should run (no interface)."""
    own = next((p for p in t.peers if p.name == name), None)
    keepalive = 0 if own is None else own.persistent_keepalive
    psk = None if own is None else own.preshared_key
    peers = [
        WireGuardPeer(
            name=s.location,
            allowed_ips=s.allowed_ips + s.allowed_location_ips,
            persistent_keepalive=keepalive,
            preshared_key=psk,
            public_key=s.key,
            endpoint=t.update_endpoint(s.endpoint, s.key, s.persistent_keepalive),
        )
        for s in t.segments
    ]
    peers.extend(
        WireGuardPeer(
            name=p.name,
            allowed_ips=p.allowed_ips,
            persistent_keepalive=keepalive,
            public_key=p.public_key,
            endpoint=t.update_endpoint(p.endpoint, p.public_key, p.persistent_keepalive),
        )
        for p in t.peers
        if p.name != name
    )
    return WireGuardConfig(peers=tuple(peers))


def with_extra_allowed_ips(peer: WireGuardPeer, extra: Iterable[AllowedIP]) -> WireGuardPeer:
    """``peer`` with ``extra`` allowed IPs appended; repeats (by CIDR text) are dropped."""
    seen: set[str] = set()
    allowed: list[AllowedIP] = []
    for cidr in (*peer.allowed_ips, *extra):
        if str(cidr) not in seen:
            seen.add(str(cidr))
            allowed.append(cidr)
    return WireGuardPeer(
        name=peer.name,
        public_key=peer.public_key,
        allowed_ips=tuple(allowed),
        endpoint=peer.endpoint,
        persistent_keepalive=peer.persistent_keepalive,
        preshared_key=peer.preshared_key,
    )


def render(config: WireGuardConfig) -> str:
    """The INI text of ``config``, byte-exact with Kilo's ``Conf.Bytes``."""
    lines: list[str] = []
    if config.private_key is not None:
        lines.append("[Interface]")
        if not config.private_key.is_zero:
            lines.append(f"PrivateKey = {config.private_key}")
        lines.append(f"ListenPort = {config.listen_port}")
    for i, peer in enumerate(config.peers):
        if i > 0 or config.private_key is not None:
            lines.append("")
        lines.extend(_render_peer(peer))
    return "".join(line + "\n" for line in lines)


def render_peers(peers: Sequence[WireGuardPeer]) -> str:
    return render(WireGuardConfig(peers=tuple(peers)))


def _render_peer(peer: WireGuardPeer) -> list[str]:
    lines = ["[Peer]"]
    if peer.allowed_ips:
        lines.append("AllowedIPs = " + ", ".join(str(a) for a in peer.allowed_ips))
    endpoint = "" if peer.endpoint is None else str(peer.endpoint)
    if endpoint:
        lines.append(f"Endpoint = {endpoint}")
    lines.append(f"PersistentKeepalive = {wireguard_keepalive(peer.persistent_keepalive)}")
    if peer.preshared_key is not None and not peer.preshared_key.is_zero:
        lines.append(f"PresharedKey = {peer.preshared_key}")
    if not peer.public_key.is_zero:
        lines.append(f"PublicKey = {peer.public_key}")
    return lines
