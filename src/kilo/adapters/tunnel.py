"""The encapsulators' device side (kilo-mesh.md §4.1): IPIP ``tunl0``, flannel and cilium.

The pure half (which gateway, when to encapsulate, which iptables rules) lives in
``kilo.mesh.routes`` and ``kilo.mesh.iptables``; this module only finds, creates, addresses
and removes the tunnel interface. ``tests/unit/test_tunnel.py`` runs it against a model of
the kernel's links, ``tests/kernel`` against Debian's kernel in a virtual machine.

``tunl0`` is special: when the ``ipip`` module loads, the kernel creates a fallback
``tunl0`` in every network namespace (and in each new one), and it cannot be deleted
(``ip link del tunl0`` succeeds and does nothing). So ``ip tunnel add tunl0 mode ipip`` finds
it "already there" even on a node that never had one, and Kilo's clean-up, which deletes it,
leaves it up with its address gone. Here clean-up deletes only a tunnel ``kg`` itself
created, and whatever is left afterwards (the fallback device, or a tunnel that was there
before) gets back the MTU and up/down state it had when ``kg`` found or created it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from kilo.errors import DataPlaneError, KiloError
from kilo.mesh.discovery import Interface
from kilo.mesh.ip import IPInterface
from kilo.mesh.model import Compatibility

IPIP_DEVICE = "tunl0"
FLANNEL_DEVICE = "flannel.1"
CILIUM_DEVICE = "cilium_tunl"
CILIUM_HOST = "cilium_host"
IPIP_OVERHEAD = 20


# What the encapsulators need of the links (the netlink adapter, or a fake in the tests).
class Links(Protocol):
    def index(self, name: str) -> int | None: ...
    def interfaces(self) -> list[Interface]: ...
    def mtu(self, name: str) -> int: ...
    def set_mtu(self, name: str, mtu: int) -> bool: ...
    def set_up(self, name: str, up: bool) -> bool: ...
    def set_address(self, name: str, cidr: IPInterface) -> bool: ...
    def delete_addresses(self, name: str) -> None: ...
    def delete(self, name: str) -> bool: ...


def ip_tunnel_add() -> None:
    """``ip tunnel add tunl0 mode ipip`` (the kernel loads ``ipip`` for it); "File exists"
    (the kernel's fallback tunl0) is fine."""
    try:
        result = subprocess.run(
            ["ip", "tunnel", "add", IPIP_DEVICE, "mode", "ipip"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataPlaneError(f"failed to create the IPIP tunnel {IPIP_DEVICE}: {exc}") from exc
    if result.returncode != 0 and "File exists" not in result.stderr:
        detail = (result.stderr.strip().splitlines() or ["unknown error"])[0]
        raise DataPlaneError(
            f"failed to create the IPIP tunnel {IPIP_DEVICE}: {detail} (does the kernel "
            "have the ipip module? without it, run with --encapsulate=never)"
        )


@dataclass(frozen=True, slots=True)
class _Found:
    """A tunnel's state before kg changed it: what clean-up gives back when it stays."""

    mtu: int
    up: bool


class Tunnel:
    """One encapsulator's interface, initialised against the private interface ``base``."""

    def __init__(
        self,
        links: Links,
        compatibility: Compatibility,
        base: str,
        *,
        create_ipip: Callable[[], None] = ip_tunnel_add,
    ) -> None:
        self._links = links
        self._compatibility = compatibility
        self._create = create_ipip
        self._owned = False
        self._created = False
        self._found: _Found | None = None
        self._device: str | None = None
        if compatibility == Compatibility.FLANNEL:
            return  # flannel.1 belongs to flannel; it may appear later
        if compatibility == Compatibility.CILIUM and links.index(CILIUM_DEVICE) is not None:
            self._device = CILIUM_DEVICE
            links.set_up(CILIUM_DEVICE, True)
            return
        self._create_ipip(base)

    def _create_ipip(self, base: str) -> None:
        existed = self._links.index(IPIP_DEVICE) is not None
        if not existed:
            self._create()
        self._owned = True
        self._created = not existed
        self._device = IPIP_DEVICE
        # As it is now: when our `ip tunnel add` loaded the module, the kernel's fallback
        # device as the kernel made it (down, its default MTU).
        mtu = self._links.mtu(IPIP_DEVICE)
        self._links.set_mtu(IPIP_DEVICE, self._links.mtu(base) - IPIP_OVERHEAD)
        was_up = not self._links.set_up(IPIP_DEVICE, True)
        self._found = _Found(mtu=mtu, up=was_up)

    @property
    def name(self) -> str | None:
        if self._compatibility == Compatibility.FLANNEL:
            return FLANNEL_DEVICE if self._links.index(FLANNEL_DEVICE) is not None else None
        return self._device

    def set(self, cidr: IPInterface) -> None:
        if self._compatibility == Compatibility.FLANNEL or self._device is None:
            return
        self._links.set_address(self._device, cidr)

    def cni_compatibility_ip(self) -> IPInterface | None:
        if self._compatibility != Compatibility.CILIUM:
            return None
        for interface in self._links.interfaces():
            if interface.name == CILIUM_HOST:
                return next((a for a in interface.addresses if a.version == 4), None)
        return None

    def clean_up(self) -> None:
        if not self._owned or self._device is None:
            return
        try:
            self._links.delete_addresses(self._device)
        except KiloError:
            return  # as Kilo: a tunnel whose addresses cannot be removed is left in place
        if self._created:
            self._links.delete(self._device)
        found = self._found
        if found is not None and self._links.index(self._device) is not None:
            # The fallback tunl0 (the kernel ignores its deletion) or one that was there.
            self._links.set_mtu(self._device, found.mtu)
            self._links.set_up(self._device, found.up)
