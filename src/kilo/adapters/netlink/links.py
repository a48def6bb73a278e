"""Interfaces through rtnetlink: find, create, address, set up or down, delete.

Thin: every pyroute2 or socket error becomes a :class:`~kilo.errors.DataPlaneError` naming
the interface (:func:`~kilo.adapters.netlink.rtnetlink.failing`).
"""

from __future__ import annotations

import errno
import socket
import threading
from ipaddress import ip_interface
from typing import Any

from kilo.adapters.netlink import wire
from kilo.adapters.netlink.rtnetlink import FAMILY, VERSION, Closing, Netlink, failing, where
from kilo.errors import DataPlaneError
from kilo.mesh import route_sync
from kilo.mesh.discovery import Interface
from kilo.mesh.ip import IPInterface

_IFF_UP = 0x1
_NO_DEVICE = frozenset({errno.ENODEV})


class Links(Closing):
    """Interface helpers in the current network namespace (or a named one, for tests)."""

    def __init__(self, netns: str | None = None) -> None:
        self._netns = netns
        self._ipr = Netlink(netns)
        # For the default route: opened on first use, one caller at a time.
        self._routes: wire.RouteSocket | None = None
        self._routes_lock = threading.Lock()

    def close(self) -> None:
        self._ipr.close()
        with self._routes_lock:
            if self._routes is not None:
                self._routes.close()
                self._routes = None

    def _link(self, name: str) -> Any | None:
        links: tuple[Any, ...] = ()
        with failing(f"cannot read interface {name}", tolerate=_NO_DEVICE):
            links = self._ipr.link("get", ifname=name)
        return links[0] if links else None

    def _require(self, name: str) -> Any:
        link = self._link(name)
        if link is None:
            raise DataPlaneError(f"interface {name} does not exist")
        return link

    def index(self, name: str) -> int | None:
        link = self._link(name)
        return None if link is None else int(link["index"])

    def interfaces(self) -> list[Interface]:
        """Every link with its addresses (with their prefix), by index, for IP discovery."""
        with failing("cannot list interfaces and addresses"):
            links = {int(m["index"]): str(m.get("ifname")) for m in self._ipr.link("dump")}
            addresses: dict[int, list[IPInterface]] = {}
            for m in self._ipr.addr("dump"):
                if m["family"] not in VERSION:
                    continue
                address = address_of(m)
                if address is not None:
                    addresses.setdefault(int(m["index"]), []).append(address)
        return [
            Interface(index=index, name=name, addresses=tuple(addresses.get(index, ())))
            for index, name in sorted(links.items())
        ]

    def default_route_interface(self) -> int | None:
        """The interface of the first main-table default route, IPv4 before IPv6 (§6.1.6).

        One listing of the routes (the agent's auto MTU asks on every full apply, and a
        leader's main table holds thousands of Kilo's routes), in which only the default
        routes are decoded."""
        with self._routes_lock:
            with failing(f"cannot open a netlink socket{where(self._netns)}"):
                if self._routes is None:
                    self._routes = wire.RouteSocket(self._netns)
            with failing("cannot list the default routes"):
                routes = self._routes.dump_routes(default_only=True)
        for family in (socket.AF_INET, socket.AF_INET6):
            for m in routes:
                if m.family == family and m.table == route_sync.MAIN_TABLE and m.oif:
                    return m.oif
        return None

    def mtu(self, name: str) -> int:
        return int(self._require(name).get("mtu"))

    def set_mtu(self, name: str, mtu: int) -> bool:
        link = self._require(name)
        if int(link.get("mtu")) == mtu:
            return False
        with failing(f"cannot set the MTU of {name} to {mtu}"):
            self._ipr.link("set", index=link["index"], mtu=mtu)
        return True

    def set_up(self, name: str, up: bool) -> bool:
        link = self._require(name)
        if bool(link["flags"] & _IFF_UP) == up:
            return False
        state = "up" if up else "down"
        with failing(f"cannot set {name} {state}"):
            self._ipr.link("set", index=link["index"], state=state)
        return True

    def _addresses(self, name: str, index: int) -> list[tuple[IPInterface, Any]]:
        with failing(f"cannot list the addresses of {name}"):
            messages = self._ipr.addr("dump", index=index)
        found = []
        for m in messages:
            address = address_of(m) if m["family"] in VERSION else None
            if address is not None and int(m["index"]) == index:
                found.append((address, m))
        return found

    def _delete_address(self, name: str, index: int, address: IPInterface, m: Any) -> None:
        # Deleting a primary IPv4 address also deletes its secondaries: one gone is fine.
        with failing(
            f"cannot delete address {address} from {name}",
            tolerate=frozenset({errno.EADDRNOTAVAIL}),
        ):
            self._ipr.addr(
                "del",
                index=index,
                family=m["family"],
                address=m.get("address"),
                local=m.get("local"),
                prefixlen=m["prefixlen"],
            )

    def set_address(self, name: str, cidr: IPInterface) -> bool:
        """Kilo's ``set_address``: delete every other address, then add ``cidr`` if missing."""
        index = int(self._require(name)["index"])
        changed = False
        remaining = 0
        for address, m in self._addresses(name, index):
            if address.ip == cidr.ip and address.network.prefixlen == cidr.network.prefixlen:
                remaining += 1
                continue
            self._delete_address(name, index, address, m)
            changed = True
        if remaining == 1:
            return changed
        extra: dict[str, Any] = {}
        if cidr.version == 4 and cidr.network.prefixlen < 31:
            extra["broadcast"] = str(cidr.network.broadcast_address)  # as Kilo's netlink does
        with failing(f"cannot set address {cidr} on {name}"):
            self._ipr.addr(
                "replace",
                index=index,
                family=FAMILY[cidr.version],
                address=str(cidr.ip),
                prefixlen=cidr.network.prefixlen,
                **extra,
            )
        return True

    def delete_addresses(self, name: str) -> None:
        """Delete every address of ``name``; nothing to do if the interface does not exist."""
        link = self._link(name)
        if link is None:
            return
        index = int(link["index"])
        for address, m in self._addresses(name, index):
            self._delete_address(name, index, address, m)

    def create_wireguard(self, name: str, mtu: int) -> bool:
        """Create a kernel WireGuard link; False if ``name`` already exists (of any kind)."""
        if self._link(name) is not None:
            return False
        hint = " (this kernel has no WireGuard support: load the wireguard module)"
        with failing(
            f"cannot create WireGuard interface {name}",
            tolerate=frozenset({errno.EEXIST}),
            hints={errno.EOPNOTSUPP: hint, errno.EINVAL: hint},
        ) as outcome:
            self._ipr.link("add", ifname=name, kind="wireguard", mtu=mtu)
        return not outcome.tolerated

    def delete(self, name: str) -> bool:
        link = self._link(name)
        if link is None:
            return False
        with failing(f"cannot delete interface {name}", tolerate=_NO_DEVICE) as outcome:
            self._ipr.link("del", index=link["index"])
        return not outcome.tolerated


def address_of(m: Any) -> IPInterface | None:
    # IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on point-to-point
    # links (Go's netlink reads it the same way).
    address = m.get("local") or m.get("address")
    if address is None:
        return None
    return ip_interface(f"{address}/{m['prefixlen']}")
