"""``kg`` on a kernel without WireGuard, for the tests of its start-up failures.

``python -m tests.e2e.veth_kg ARGS`` runs ``kilo.agent`` (the real ``kg``) with one change:
where ``kg`` creates its kernel WireGuard interface, a veth pair of that name is created
instead (CI kernels have no WireGuard module, and ``wireguard-go`` is not something ``kg``
creates). So the paths after ``kg`` has created its interface run here, and a test can see
whether the interface is removed when a later step of the start-up fails.
"""

from __future__ import annotations

import sys

from kilo.adapters import netlink
from kilo.agent.__main__ import main


def _create_veth(self: netlink.Links, name: str, mtu: int) -> bool:
    if self.index(name) is not None:
        return False
    self._ipr.link("add", ifname=name, kind="veth", peer="kgtestpeer", mtu=mtu)
    return True


if __name__ == "__main__":
    netlink.Links.create_wireguard = _create_veth  # type: ignore[method-assign]
    sys.exit(main())
