"""A small model of a WireGuard device's UAPI ``set=1`` semantics (wireguard-go's rules).

Independent of ``kilo.mesh.wgdevice``'s planning code on purpose: the unit tests apply a
plan with it and compare against a device configured from scratch, and the e2e tests check
that wireguard-go ends in the same state as this model for the same text.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace

from kilo.mesh.endpoint import UDPAddr
from kilo.mesh.ip import IPNetwork
from kilo.mesh.keys import Key, clamp
from kilo.mesh.uapi import parse_udp_addr
from kilo.mesh.wgdevice import DeviceState, PeerState


class UAPISetError(ValueError):
    """What a device answers with ``errno=-22``."""


@dataclass
class _Peer:
    state: PeerState
    allowed: list[IPNetwork] = field(default_factory=list)


def _key(value: str) -> Key:
    if len(value) != 64:
        raise UAPISetError(f"bad key {value!r}")
    return Key(bytes.fromhex(value))


def apply_set(device: DeviceState, body: str) -> DeviceState:
    """``device`` after a ``set=1`` request with these lines (no ``set=1``, no blank line)."""
    private_key = device.private_key
    listen_port = device.listen_port
    peers: dict[Key, _Peer] = {
        p.public_key: _Peer(replace(p, allowed_ips=()), list(p.allowed_ips)) for p in device.peers
    }
    current: _Peer | None = None
    current_key: Key | None = None
    in_peer = False

    def public() -> Key | None:
        return None if private_key is None else private_key.public_key()

    for line in body.splitlines():
        key, equals, value = line.partition("=")
        if not equals:
            raise UAPISetError(f"not key=value: {line!r}")
        if key == "public_key":
            in_peer = True
            current_key = _key(value)
            if current_key == public():
                current = None  # wireguard-go ignores a peer with the device's own key
                continue
            current = peers.get(current_key)
            if current is None:
                current = _Peer(PeerState(public_key=current_key))
                peers[current_key] = current
            continue
        if not in_peer:
            if key == "private_key":
                raw = _key(value)
                private_key = None if raw.is_zero else Key(clamp(raw.raw))
                if private_key is not None:
                    peers.pop(private_key.public_key(), None)  # a peer cannot be the device
            elif key == "listen_port":
                listen_port = int(value)
            elif key == "replace_peers" and value == "true":
                peers.clear()
            elif key != "fwmark":
                raise UAPISetError(f"invalid UAPI device key: {key}")
            continue
        if current is None:
            continue
        assert current_key is not None
        if key == "remove" and value == "true":
            del peers[current_key]
            current = None
        elif key == "preshared_key":
            psk = _key(value)
            current.state = replace(current.state, preshared_key=None if psk.is_zero else psk)
        elif key == "endpoint":
            endpoint: UDPAddr | None = parse_udp_addr(value)
            if endpoint is None:
                raise UAPISetError(f"bad endpoint {value!r}")
            current.state = replace(current.state, endpoint=endpoint)
        elif key == "persistent_keepalive_interval":
            seconds = int(value)
            if not 0 <= seconds <= 65535:
                raise UAPISetError(f"bad keepalive {value!r}")
            current.state = replace(current.state, persistent_keepalive=seconds)
        elif key == "replace_allowed_ips" and value == "true":
            current.allowed.clear()
        elif key == "allowed_ip":
            network = ipaddress.ip_network(value, strict=False)
            for other in peers.values():
                if network in other.allowed:
                    other.allowed.remove(network)  # an allowed IP has one owner
            current.allowed.append(network)
        elif key not in ("protocol_version", "update_only"):
            raise UAPISetError(f"invalid UAPI peer key: {key}")
    return DeviceState(
        private_key=private_key,
        listen_port=listen_port,
        peers=tuple(replace(p.state, allowed_ips=tuple(p.allowed)) for p in peers.values()),
    )
