"""The tunnel device (kilo.adapters.tunnel) against a model of the kernel's links.

The model has what Debian's kernel showed in tests/kernel: loading ``ipip`` creates a
fallback ``tunl0`` (down, MTU 1480) in the namespace, ``ip tunnel add tunl0 mode ipip`` then
says "File exists", and deleting the fallback device is accepted and does nothing.
"""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass, field
from typing import Any

import pytest

from kilo.adapters import tunnel
from kilo.errors import DataPlaneError
from kilo.mesh.discovery import Interface
from kilo.mesh.ip import IPInterface
from kilo.mesh.model import Compatibility

POD = ipaddress.ip_interface("10.42.1.1/32")


@dataclass
class Link:
    index: int
    mtu: int
    up: bool = False
    addresses: list[IPInterface] = field(default_factory=list)
    fallback: bool = False


class KernelLinks:
    """Links, with ipip's fallback device unless ``fallback_tunnels`` is off (the sysctl
    net.core.fb_tunnels_only_for_init_net in a namespace other than the first)."""

    def __init__(self, *, fallback_tunnels: bool = True) -> None:
        self.links: dict[str, Link] = {"eth0": Link(index=2, mtu=1450, up=True)}
        self.fallback_tunnels = fallback_tunnels
        self.ipip_loaded = False

    def _add(self, name: str, **kwargs: Any) -> None:
        self.links[name] = Link(index=max(x.index for x in self.links.values()) + 1, **kwargs)

    def ip_tunnel_add(self) -> None:
        if not self.ipip_loaded:
            self.ipip_loaded = True
            if self.fallback_tunnels:
                self._add("tunl0", mtu=1480, fallback=True)
        if "tunl0" not in self.links:
            self._add("tunl0", mtu=1480)
        # else: "add tunnel "tunl0" failed: File exists", which is fine

    def index(self, name: str) -> int | None:
        link = self.links.get(name)
        return None if link is None else link.index

    def interfaces(self) -> list[Interface]:
        return [
            Interface(index=link.index, name=name, addresses=tuple(link.addresses))
            for name, link in self.links.items()
        ]

    def mtu(self, name: str) -> int:
        return self.links[name].mtu

    def set_mtu(self, name: str, mtu: int) -> bool:
        changed = self.links[name].mtu != mtu
        self.links[name].mtu = mtu
        return changed

    def set_up(self, name: str, up: bool) -> bool:
        changed = self.links[name].up != up
        self.links[name].up = up
        return changed

    def set_address(self, name: str, cidr: IPInterface) -> bool:
        changed = self.links[name].addresses != [cidr]
        self.links[name].addresses = [cidr]
        return changed

    def delete_addresses(self, name: str) -> None:
        if name in self.links:
            self.links[name].addresses = []

    def delete(self, name: str) -> bool:
        link = self.links.get(name)
        if link is None:
            return False
        if not link.fallback:  # ip_tunnel_dellink skips the fallback device
            del self.links[name]
        return True


def ipip(links: KernelLinks, compatibility: Compatibility = Compatibility.NONE) -> tunnel.Tunnel:
    return tunnel.Tunnel(links, compatibility, "eth0", create_ipip=links.ip_tunnel_add)


def test_the_fallback_tunl0_that_loading_ipip_created_goes_back_down_on_clean_up() -> None:
    links = KernelLinks()
    device = ipip(links)
    device.set(POD)
    tunl0 = links.links["tunl0"]
    assert device.name == "tunl0"
    assert (tunl0.up, tunl0.mtu, tunl0.addresses) == (True, 1450 - 20, [POD])
    device.clean_up()
    # Kilo deletes it, which the kernel ignores: it stayed up with Kilo's MTU.
    assert links.links["tunl0"] == Link(index=tunl0.index, mtu=1480, up=False, fallback=True)


def test_a_tunl0_that_was_there_is_not_deleted_and_gets_its_mtu_and_state_back() -> None:
    links = KernelLinks()
    links.ip_tunnel_add()  # the module was loaded before kg started
    links.links["tunl0"].mtu = 1400
    links.links["tunl0"].up = True
    device = ipip(links)
    device.set(POD)
    assert links.links["tunl0"].mtu == 1430
    device.clean_up()
    tunl0 = links.links["tunl0"]
    assert (tunl0.up, tunl0.mtu, tunl0.addresses) == (True, 1400, [])


def test_a_tunnel_kg_created_is_deleted() -> None:
    links = KernelLinks(fallback_tunnels=False)
    device = ipip(links)
    device.set(POD)
    assert links.links["tunl0"].up
    device.clean_up()
    assert "tunl0" not in links.links


def test_a_tunnel_whose_addresses_cannot_be_removed_is_left_as_is() -> None:
    links = KernelLinks(fallback_tunnels=False)
    device = ipip(links)

    def refuse(name: str) -> None:
        raise DataPlaneError("cannot delete address 10.42.1.1/32 from tunl0: busy")

    links.delete_addresses = refuse  # type: ignore[method-assign]
    device.clean_up()
    assert links.links["tunl0"].up


def test_a_failing_ip_tunnel_add_is_an_error() -> None:
    links = KernelLinks()

    def fail() -> None:
        raise DataPlaneError("failed to create the IPIP tunnel tunl0: no ipip")

    with pytest.raises(DataPlaneError, match="no ipip"):
        tunnel.Tunnel(links, Compatibility.NONE, "eth0", create_ipip=fail)


def test_cilium_uses_cilium_tunl_when_it_exists_and_leaves_it_on_clean_up() -> None:
    links = KernelLinks()
    links._add("cilium_tunl", mtu=1480)
    links._add("cilium_host", mtu=1500, up=True, addresses=[ipaddress.ip_interface("10.42.1.7/32")])
    created: list[str] = []
    device = tunnel.Tunnel(
        links, Compatibility.CILIUM, "eth0", create_ipip=lambda: created.append("tunl0")
    )
    assert device.name == "cilium_tunl" and created == []
    assert links.links["cilium_tunl"].up
    assert device.cni_compatibility_ip() == ipaddress.ip_interface("10.42.1.7/32")
    device.set(POD)
    device.clean_up()
    assert links.links["cilium_tunl"].up and links.links["cilium_tunl"].addresses == [POD]


def test_cilium_without_cilium_tunl_creates_and_cleans_up_tunl0() -> None:
    links = KernelLinks()
    device = ipip(links, Compatibility.CILIUM)
    assert device.name == "tunl0"
    assert device.cni_compatibility_ip() is None  # no cilium_host
    device.clean_up()
    assert not links.links["tunl0"].up


def test_flannel_follows_flannel_1_and_never_touches_it() -> None:
    links = KernelLinks()
    created: list[str] = []
    device = tunnel.Tunnel(
        links, Compatibility.FLANNEL, "eth0", create_ipip=lambda: created.append("tunl0")
    )
    assert device.name is None  # flannel.1 is not there yet
    links._add("flannel.1", mtu=1450, up=True)
    assert device.name == "flannel.1"
    device.set(POD)
    device.clean_up()
    assert created == []
    assert links.links["flannel.1"] == Link(index=links.links["flannel.1"].index, mtu=1450, up=True)


@pytest.mark.parametrize(
    ("returncode", "stderr", "error"),
    [
        (0, "", None),
        (1, 'add tunnel "tunl0" failed: File exists\n', None),
        (1, "ioctl: No such device\n", "No such device (does the kernel have the ipip module?"),
    ],
)
def test_ip_tunnel_add(
    monkeypatch: pytest.MonkeyPatch, returncode: int, stderr: str, error: str | None
) -> None:
    calls = []

    def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, returncode, "", stderr)

    monkeypatch.setattr(subprocess, "run", run)
    if error is None:
        tunnel.ip_tunnel_add()
    else:
        with pytest.raises(DataPlaneError) as raised:
            tunnel.ip_tunnel_add()
        assert error in str(raised.value)
    assert calls == [["ip", "tunnel", "add", "tunl0", "mode", "ipip"]]
