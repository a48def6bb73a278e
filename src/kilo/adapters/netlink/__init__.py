"""Interfaces, routes and IP rules through rtnetlink (pyroute2).

``links.py`` the interfaces (:class:`Links`), ``route_table.py`` Kilo's routes and rules
(:class:`RouteTable`), ``rtnetlink.py`` the pyroute2 socket both use and its errors,
``wire.py`` route messages by hand and requests in batches (listing and writing thousands
of routes), ``memory.py`` the route table's in-memory fake (:class:`InMemoryRouteTable`)
for the loops' unit tests.

Thin: the decisions (which routes and rules to add, delete or adopt, and their identity)
are in :mod:`kilo.mesh.route_sync`; this module only lists the kernel, applies changes and
keeps the tracked set on disk. Every pyroute2 or socket error becomes a
:class:`~kilo.errors.DataPlaneError` naming the interface, route or rule.

Nothing here logs. :class:`RouteTable` reports a state file it could not use through
:attr:`RouteTable.state_error` (the agent logs it); a route or rule that could not be
changed does not stop the others, and one :class:`DataPlaneError` at the end lists them.

Threads: a pyroute2 socket belongs to the thread (and asyncio loop) that opened it, so
each :class:`Links` and :class:`RouteTable` keeps its socket on a worker thread of its
own; they can be called from any thread, the agent's event loop included (the call
blocks). :meth:`RouteTable.watch_deletions` reads events on its own raw netlink socket in
its own thread and shares only the tracked keys with the table, under a lock.

``netns`` (tests) names a network namespace in ``/var/run/netns``; the sockets are opened
inside it and the calling process stays where it is.
"""

from kilo.adapters.netlink.links import Links
from kilo.adapters.netlink.memory import InMemoryRouteTable
from kilo.adapters.netlink.route_table import RouteTable, State

__all__ = ["InMemoryRouteTable", "Links", "RouteTable", "State"]
