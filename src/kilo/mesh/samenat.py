"""Nodes behind the same NAT reach each other over their internal IPs (opt-in, new).

Pure. No I/O, no clock, no logging.

Kilo replaces the endpoint of a node that keeps alive with the address other nodes saw it
at (its NAT-discovered endpoint). Two nodes behind one NAT therefore dial each other at
the NAT's public address, which works only if the NAT hairpins. With
``--same-nat-internal-endpoints`` a node dials such a node at its internal IP instead
(and so, as Kilo does for a node it dials at its private IP, reaches that IP over the
underlay, not through WireGuard), and does not publish what it learns from that path
(its ``discovered-endpoints`` annotation stays what Kilo's would be without hairpin NAT:
no entry for that node), so every other node computes exactly Kilo's mesh.

"Behind the same NAT" means: both nodes have an internal IP and a non-zero keepalive, and
some other node saw each of them at the same IP address. Two sites behind one
carrier-grade NAT also share its address, while their internal IPs do not reach each
other: that is why this is opt-in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from kilo.mesh.endpoint import Endpoint
from kilo.mesh.ip import IPAddress
from kilo.mesh.model import DEFAULT_PORT, Node
from kilo.mesh.topology import Topology


def internal_endpoints(nodes: Sequence[Node], hostname: str) -> dict[str, Endpoint]:
    """Public key (base64) -> internal IP and port of each node behind the NAT of ``hostname``.

    ``nodes`` are the ready nodes; what the local node itself observed is not used, since
    it dials those nodes directly.
    """
    local = next((n for n in nodes if n.name == hostname), None)
    if local is None or local.internal_ip is None or not local.persistent_keepalive:
        return {}
    seen = _seen_at(nodes, observer_excluded=hostname)
    own = seen.get(str(local.key), set())
    if not own:
        return {}
    result: dict[str, Endpoint] = {}
    for node in nodes:
        if node.name == hostname or node.internal_ip is None or not node.persistent_keepalive:
            continue
        if seen.get(str(node.key), set()) & own:
            port = node.endpoint.port if node.endpoint is not None else 0
            result[str(node.key)] = Endpoint.new(node.internal_ip.ip, port or DEFAULT_PORT)
    return result


def dial_internal(t: Topology, endpoints: Mapping[str, Endpoint]) -> Topology:
    """``t`` with the nodes in ``endpoints`` dialled there: the endpoint that Kilo's
    ``updateEndpoint`` substitutes for a node that keeps alive, in the WireGuard config
    and in the routes alike.

    The routes must see it too: Kilo routes a segment's private IPs through WireGuard,
    except a private IP equal to the endpoint it dials. Substituted into the WireGuard
    config alone, the internal IP kept its route through the WireGuard interface, so the
    handshakes sent to it went into the tunnel they were to set up: two restarted agents
    reached each other only if a first handshake left before that route was added.
    """
    if not endpoints:
        return t
    dialled = dict(t.discovered_endpoints)
    dialled.update((key, endpoint.udp) for key, endpoint in endpoints.items())
    return replace(t, discovered_endpoints=dialled)


def _seen_at(nodes: Sequence[Node], *, observer_excluded: str) -> dict[str, set[IPAddress]]:
    """Public key -> every IP address the other nodes published for it."""
    seen: dict[str, set[IPAddress]] = {}
    for observer in nodes:
        if observer.name == observer_excluded:
            continue
        for key, address in (observer.discovered_endpoints or {}).items():
            if address is not None and address.ip is not None:
                seen.setdefault(key, set()).add(address.ip)
    return seen
