"""The exception tree of Kilo.

    KiloError
    ├── ConfigError              bad flags or settings
    ├── TopologyError            the cluster cannot be turned into a mesh
    │   ├── LocalNodeMissing     the perspective node is not among the ready nodes
    │   └── AddressPoolExhausted the Kilo subnet has fewer addresses than segments
    ├── BackendError             reading the cluster failed (file, API server)
    ├── DataPlaneError           programming the node failed (netlink, WireGuard, iptables, files)
    └── SandboxError             the local sandbox (or the tests' testbed) could not be built,
                                 reached or removed

Third-party exceptions are translated at the adapter edge with ``raise ... from exc``.
"""

from __future__ import annotations


class KiloError(Exception):
    """Root of every error raised on purpose by Kilo."""


class ConfigError(KiloError):
    """A flag or setting has a value Kilo cannot use."""


class TopologyError(KiloError):
    """The topology cannot be built from the given nodes and peers."""


class LocalNodeMissing(TopologyError):
    """The node whose perspective was asked for is not a ready node."""

    def __init__(self, hostname: str) -> None:
        super().__init__(f"did not find any node named {hostname!r} among the ready nodes")
        self.hostname = hostname


class AddressPoolExhausted(TopologyError):
    """The Kilo subnet cannot give every segment its own WireGuard IP."""

    def __init__(self, subnet: str, segments: int, capacity: int) -> None:
        super().__init__(
            f"Kilo subnet {subnet} has room for {capacity} WireGuard IPs "
            f"but the mesh has {segments} segments; use a larger --subnet"
        )
        self.subnet = subnet
        self.segments = segments
        self.capacity = capacity


class BackendError(KiloError):
    """The cluster state could not be read or written."""


class DataPlaneError(KiloError):
    """The node's interfaces, routes, rules, iptables or files could not be read or changed."""


class SandboxError(KiloError):
    """The local sandbox, its control plane or the tests' testbed failed (kilo.sandbox)."""
