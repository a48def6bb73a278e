"""Interfaces, routes and IP rules through rtnetlink (pyroute2).

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

from __future__ import annotations

import errno
import os
import selectors
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from ipaddress import ip_interface
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (
    RTM_DELROUTE,
    RTM_DELRULE,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV4_RULE,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_IPV6_RULE,
)
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from kilo.errors import DataPlaneError
from kilo.mesh import route_sync
from kilo.mesh.discovery import Interface
from kilo.mesh.ip import IPInterface
from kilo.mesh.route_sync import RouteKey, RuleKey
from kilo.mesh.routes import RTPROT_STATIC, Device, Route, Rule, format_route, format_rule

__all__ = ["Links", "RouteTable"]

_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
_VERSION = {socket.AF_INET: 4, socket.AF_INET6: 6}
_IFF_UP = 0x1
_RTN_UNICAST = 1
_RTNH_F_ONLINK = 0x4
_RTM_F_CLONED = 0x200
_RT_SCOPE_NOWHERE = 255  # "any scope" when deleting, as `ip route del` sends
_FR_ACT_TO_TBL = 1
_FIB_RULE_INVERT = 0x2
_WATCH_GROUPS = RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE | RTMGRP_IPV4_RULE | RTMGRP_IPV6_RULE
_STOP_TIMEOUT = 5.0


def _reason(exc: BaseException) -> str:
    if isinstance(exc, NetlinkError):
        text = exc.args[1] if len(exc.args) > 1 and exc.args[1] else os.strerror(exc.code)
        return str(text)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


@contextmanager
def _failing(what: str) -> Iterator[None]:
    """Translate a netlink or socket error into a DataPlaneError that says what failed."""
    try:
        yield
    except (NetlinkError, OSError) as exc:
        raise DataPlaneError(f"{what}: {_reason(exc)}") from exc


def _where(netns: str | None) -> str:
    return "" if netns is None else f" in network namespace {netns}"


def _open(netns: str | None) -> Any:
    # groups=0: these sockets only send requests; unread events would pile up otherwise.
    # flags=0: never create a namespace that does not exist.
    with _failing(f"cannot open a netlink socket{_where(netns)}"):
        if netns is None:
            return IPRoute(groups=0)
        return IPRoute(netns=netns, flags=0, groups=0)


class _Netlink:
    """One pyroute2 socket, used only from a worker thread of its own.

    A pyroute2 socket belongs to the thread that opened it (it keeps a thread-local asyncio
    loop) and cannot be used at all from a thread that runs an asyncio loop, such as the
    agent's. Confined here, it can be called from any thread, and calls are serialised.
    Results are materialised on the worker (dumps become tuples).
    """

    def __init__(self, netns: str | None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kilo-netlink")
        try:
            self._ipr = self._pool.submit(_open, netns).result()
        except BaseException:
            self._pool.shutdown()
            raise
        self._closed = False

    def _request(self, method: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        if self._closed:
            raise DataPlaneError("the netlink socket is closed")

        def run() -> tuple[Any, ...]:
            result = getattr(self._ipr, method)(*args, **kwargs)
            return () if result is None else tuple(result)

        return self._pool.submit(run).result()

    def link(self, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        return self._request("link", *args, **kwargs)

    def addr(self, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        return self._request("addr", *args, **kwargs)

    def route(self, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        return self._request("route", *args, **kwargs)

    def rule(self, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        return self._request("rule", *args, **kwargs)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._pool.submit(self._ipr.close).result()
        finally:
            self._pool.shutdown()


class Links:
    """Interface helpers in the current network namespace (or a named one, for tests)."""

    def __init__(self, netns: str | None = None) -> None:
        self._ipr = _Netlink(netns)

    def close(self) -> None:
        self._ipr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _link(self, name: str) -> Any | None:
        try:
            links = self._ipr.link("get", ifname=name)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise DataPlaneError(f"cannot read interface {name}: {_reason(exc)}") from exc
        except OSError as exc:
            raise DataPlaneError(f"cannot read interface {name}: {_reason(exc)}") from exc
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
        with _failing("cannot list interfaces and addresses"):
            links = {int(m["index"]): str(m.get("ifname")) for m in self._ipr.link("dump")}
            addresses: dict[int, list[IPInterface]] = {}
            for m in self._ipr.addr("dump"):
                if m["family"] not in _VERSION:
                    continue
                address = _address_of(m)
                if address is not None:
                    addresses.setdefault(int(m["index"]), []).append(address)
        return [
            Interface(index=index, name=name, addresses=tuple(addresses.get(index, ())))
            for index, name in sorted(links.items())
        ]

    def default_route_interface(self) -> int | None:
        """The interface of the first main-table default route, IPv4 before IPv6 (§6.1.6)."""
        for family in (socket.AF_INET, socket.AF_INET6):
            with _failing("cannot list the default routes"):
                routes = tuple(self._ipr.route("dump", family=family, table=route_sync.MAIN_TABLE))
            for m in routes:
                if m.get("table") != route_sync.MAIN_TABLE or m["dst_len"] != 0:
                    continue
                oif = m.get("oif")
                if oif:
                    return int(oif)
        return None

    def mtu(self, name: str) -> int:
        return int(self._require(name).get("mtu"))

    def set_mtu(self, name: str, mtu: int) -> bool:
        link = self._require(name)
        if int(link.get("mtu")) == mtu:
            return False
        with _failing(f"cannot set the MTU of {name} to {mtu}"):
            self._ipr.link("set", index=link["index"], mtu=mtu)
        return True

    def set_up(self, name: str, up: bool) -> bool:
        link = self._require(name)
        if bool(link["flags"] & _IFF_UP) == up:
            return False
        state = "up" if up else "down"
        with _failing(f"cannot set {name} {state}"):
            self._ipr.link("set", index=link["index"], state=state)
        return True

    def _addresses(self, name: str, index: int) -> list[tuple[IPInterface, Any]]:
        with _failing(f"cannot list the addresses of {name}"):
            messages = self._ipr.addr("dump", index=index)
        found = []
        for m in messages:
            address = _address_of(m) if m["family"] in _VERSION else None
            if address is not None and int(m["index"]) == index:
                found.append((address, m))
        return found

    def _delete_address(self, name: str, index: int, address: IPInterface, m: Any) -> None:
        try:
            self._ipr.addr(
                "del",
                index=index,
                family=m["family"],
                address=m.get("address"),
                local=m.get("local"),
                prefixlen=m["prefixlen"],
            )
        except NetlinkError as exc:
            # Deleting a primary IPv4 address also deletes its secondaries.
            if exc.code != errno.EADDRNOTAVAIL:
                raise DataPlaneError(
                    f"cannot delete address {address} from {name}: {_reason(exc)}"
                ) from exc
        except OSError as exc:
            raise DataPlaneError(
                f"cannot delete address {address} from {name}: {_reason(exc)}"
            ) from exc

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
        with _failing(f"cannot set address {cidr} on {name}"):
            self._ipr.addr(
                "replace",
                index=index,
                family=_FAMILY[cidr.version],
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
        try:
            self._ipr.link("add", ifname=name, kind="wireguard", mtu=mtu)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                return False
            hint = ""
            if exc.code in (errno.EOPNOTSUPP, errno.EINVAL):
                hint = " (this kernel has no WireGuard support: load the wireguard module)"
            raise DataPlaneError(
                f"cannot create WireGuard interface {name}: {_reason(exc)}{hint}"
            ) from exc
        except OSError as exc:
            raise DataPlaneError(
                f"cannot create WireGuard interface {name}: {_reason(exc)}"
            ) from exc
        return True

    def delete(self, name: str) -> bool:
        link = self._link(name)
        if link is None:
            return False
        try:
            self._ipr.link("del", index=link["index"])
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            raise DataPlaneError(f"cannot delete interface {name}: {_reason(exc)}") from exc
        except OSError as exc:
            raise DataPlaneError(f"cannot delete interface {name}: {_reason(exc)}") from exc
        return True


def _address_of(m: Any) -> IPInterface | None:
    # IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on point-to-point
    # links (Go's netlink reads it the same way).
    address = m.get("local") or m.get("address")
    if address is None:
        return None
    return ip_interface(f"{address}/{m['prefixlen']}")


def _route_key_of(m: Any, names: Mapping[int, str]) -> RouteKey | None:
    version = _VERSION.get(m["family"])
    if version is None or m["type"] != _RTN_UNICAST or m["flags"] & _RTM_F_CLONED or m["tos"]:
        return None
    dev = names.get(m.get("oif") or 0)
    if dev is None:
        return None  # multipath, or an interface we do not know
    return route_sync.kernel_route_key(
        version=version,
        table=int(m.get("table") or m["table"]),
        dst=m.get("dst"),
        dst_len=m["dst_len"],
        dev=dev,
        gw=m.get("gateway"),
        src=m.get("prefsrc"),
        metric=m.get("priority"),
    )


def _rule_key_of(m: Any) -> RuleKey | None:
    version = _VERSION.get(m["family"])
    if (
        version is None
        or m.get("action") != _FR_ACT_TO_TBL
        or m["flags"] & _FIB_RULE_INVERT
        or m["tos"]
        or m.get("fwmark")
        or m.get("oifname")
    ):
        return None  # a rule with selectors Kilo never sets is not one of Kilo's
    return route_sync.kernel_rule_key(
        version=version,
        table=int(m.get("table") or m["table"]),
        src=m.get("src"),
        src_len=m["src_len"],
        dst=m.get("dst"),
        dst_len=m["dst_len"],
        iif=m.get("iifname"),
    )


class _Kernel:
    """One listing of the kernel: links, and Kilo-shaped routes and rules in every table."""

    def __init__(self, ipr: _Netlink) -> None:
        with _failing("cannot list interfaces"):
            self.names = {int(m["index"]): str(m.get("ifname")) for m in ipr.link("dump")}
        self.indexes = {name: index for index, name in self.names.items()}
        self.routes: set[RouteKey] = set()
        with _failing("cannot list routes"):
            for m in ipr.route("dump"):
                key = _route_key_of(m, self.names)
                if key is not None:
                    self.routes.add(key)
        # One key can match several kernel rules (same selectors, different priorities).
        self.rules: dict[RuleKey, list[int]] = {}
        with _failing("cannot list IP rules"):
            for m in ipr.rule("dump"):
                rule = _rule_key_of(m)
                if rule is not None:
                    self.rules.setdefault(rule, []).append(int(m.get("priority") or 0))


State = tuple[frozenset[RouteKey], frozenset[RuleKey]]


class RouteTable:
    """Kilo's routes and IP rules, tracked in every table they use.

    ``state_file`` keeps the tracked keys across restarts, so that an agent that stopped
    without cleaning up still removes, on its next :meth:`set` or :meth:`clean_up`, what
    the previous run added. A state file that cannot be read or parsed is ignored (nothing
    it lists is deleted) and :attr:`state_error` says why; it is overwritten on the next
    change.
    """

    def __init__(self, netns: str | None = None, state_file: Path | None = None) -> None:
        self._netns = netns
        self._state_file = state_file
        self.state_error: str | None = None
        # Guards what the watcher threads read: the tracked keys and the interface names.
        self._lock = threading.Lock()
        # One set() or clean_up() at a time: each lists the kernel, then acts on the listing.
        self._apply_lock = threading.Lock()
        self._routes: set[RouteKey] = set()
        self._rules: set[RuleKey] = set()
        self._names: dict[int, str] = {}
        self._saved: State | None = (frozenset(), frozenset())
        self._watchers: list[_Watcher] = []
        if state_file is not None:
            self._load(state_file)
        self._ipr = _Netlink(netns)

    # -- state file ----------------------------------------------------------------------

    def _load(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            self._saved = None
            self.state_error = (
                f"cannot read route state {path}: {_reason(exc)}; "
                "routes and rules of an earlier run are not removed"
            )
            return
        try:
            routes, rules = route_sync.decode_state(text)
        except ValueError as exc:
            self._saved = None
            self.state_error = (
                f"ignoring corrupt route state {path}: {exc}; "
                "routes and rules of an earlier run are not removed"
            )
            return
        self._routes, self._rules = set(routes), set(rules)
        self._saved = (routes, rules)

    def _save(self, routes: Iterable[RouteKey], rules: Iterable[RuleKey]) -> None:
        path = self._state_file
        state = (frozenset(routes), frozenset(rules))
        if path is None or state == self._saved:
            return
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # 0600 from the start, renamed into place: a crash never leaves half a file.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(route_sync.encode_state(*state))
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except OSError as exc:
            raise DataPlaneError(f"cannot write route state {path}: {_reason(exc)}") from exc
        self._saved = state

    # -- kernel changes ------------------------------------------------------------------

    def _add_route(self, key: RouteKey, route: Route, index: int) -> None:
        request: dict[str, Any] = {
            "family": _FAMILY[key.version],
            "dst": str(key.dst),
            "oif": index,
            "table": key.table,
            "proto": RTPROT_STATIC,
        }
        if key.gw is not None:
            request["gateway"] = str(key.gw)
        if key.src is not None:
            request["prefsrc"] = str(key.src)
        if route.onlink:
            request["flags"] = _RTNH_F_ONLINK
        self._ipr.route("replace", **request)

    def _delete_route(self, key: RouteKey, index: int) -> None:
        request: dict[str, Any] = {
            "family": _FAMILY[key.version],
            "dst": str(key.dst),
            "oif": index,
            "table": key.table,
            "scope": _RT_SCOPE_NOWHERE,
        }
        if key.version == 6:
            request["priority"] = route_sync.DEFAULT_METRIC[6]
        if key.gw is not None:
            request["gateway"] = str(key.gw)
        if key.src is not None:
            request["prefsrc"] = str(key.src)
        self._ipr.route("del", **request)

    def _add_rule(self, key: RuleKey) -> None:
        # No priority: the kernel numbers rules in the order they are added, as for Kilo.
        self._ipr.rule("add", priority=None, **_rule_request(key))

    def _delete_rule(self, key: RuleKey, priority: int) -> None:
        self._ipr.rule("del", priority=priority, **_rule_request(key))

    def _delete(
        self,
        routes: Sequence[RouteKey],
        rules: Sequence[RuleKey],
        kernel: _Kernel,
        failures: list[str],
    ) -> int:
        """Delete tracked items; untrack each first so that watchers ignore our own deletions."""
        removed = 0
        for rule in rules:
            with self._lock:
                self._rules.discard(rule)
            try:
                for priority in kernel.rules.get(rule, ()):
                    self._delete_rule(rule, priority)
                    removed += 1
            except (NetlinkError, OSError) as exc:
                if not _gone(exc):
                    with self._lock:
                        self._rules.add(rule)
                    failures.append(f"cannot delete rule {rule}: {_reason(exc)}")
        for route in routes:
            with self._lock:
                self._routes.discard(route)
            index = kernel.indexes.get(route.dev)
            if index is None:
                continue  # the interface went away, and its routes with it
            try:
                self._delete_route(route, index)
                removed += 1
            except (NetlinkError, OSError) as exc:
                if not _gone(exc):
                    with self._lock:
                        self._routes.add(route)
                    failures.append(f"cannot delete route {route}: {_reason(exc)}")
        return removed

    def _listing(self) -> _Kernel:
        kernel = _Kernel(self._ipr)
        with self._lock:
            self._names = dict(kernel.names)
        return kernel

    def _tracked(self) -> State:
        with self._lock:
            return frozenset(self._routes), frozenset(self._rules)

    def _save_collecting(
        self, routes: Iterable[RouteKey], rules: Iterable[RuleKey], failures: list[str]
    ) -> None:
        try:
            self._save(routes, rules)
        except DataPlaneError as exc:
            failures.append(str(exc))

    def set(
        self, routes: Sequence[Route], rules: Sequence[Rule], devices: Mapping[Device, str]
    ) -> tuple[int, int]:
        """Bring the kernel to ``routes`` and ``rules``; return (added, removed).

        ``devices`` names the interface of each device role. Planned items missing from
        the kernel are added, tracked items no longer planned are deleted from their own
        table, and planned items already in the kernel are tracked too. Every failure
        (including a route whose device has no interface) is collected; the rest is still
        applied, then one :class:`DataPlaneError` lists them all.
        """
        with self._apply_lock:
            return self._set(routes, rules, devices)

    def _set(
        self, routes: Sequence[Route], rules: Sequence[Rule], devices: Mapping[Device, str]
    ) -> tuple[int, int]:
        failures: list[str] = []
        desired = route_sync.desired_routes(routes, devices)
        for route in desired.unresolved:
            failures.append(
                f"route {format_route(route, devices)}: "
                f"no interface for device role {route.dev.value!r}"
            )
        planned_rules = route_sync.desired_rules(rules)
        kernel = self._listing()
        tracked_routes, tracked_rules = self._tracked()
        route_changes = route_sync.diff(desired.keys, kernel.routes, tracked_routes)
        rule_changes = route_sync.diff(
            [key for key, _ in planned_rules], kernel.rules.keys(), tracked_rules
        )
        with self._lock:
            self._routes.update(route_changes.adopt)
            self._rules.update(rule_changes.adopt)
        # Before touching the kernel, record everything that may be ours once this is done:
        # if the agent dies half-way, the next run still removes what it added.
        self._save_collecting(
            tracked_routes | set(route_changes.adopt) | set(route_changes.add),
            tracked_rules | set(rule_changes.adopt) | set(rule_changes.add),
            failures,
        )
        with self._lock:
            self._routes.difference_update(route_changes.forget)
            self._rules.difference_update(rule_changes.forget)
        removed = self._delete(route_changes.delete, rule_changes.delete, kernel, failures)

        added = 0
        route_of = dict(desired.routes)
        for key in route_changes.add:
            route = route_of[key]
            index = kernel.indexes.get(key.dev)
            if index is None:
                failures.append(
                    f"route {format_route(route, devices)}: interface {key.dev} does not exist"
                )
                continue
            try:
                self._add_route(key, route, index)
            except (NetlinkError, OSError) as exc:
                failures.append(f"cannot add route {format_route(route, devices)}: {_reason(exc)}")
                continue
            with self._lock:
                self._routes.add(key)
            added += 1
        rule_of = dict(planned_rules)
        for rule_key in rule_changes.add:
            try:
                self._add_rule(rule_key)
            except (NetlinkError, OSError) as exc:
                failures.append(f"cannot add rule {format_rule(rule_of[rule_key])}: {_reason(exc)}")
                continue
            with self._lock:
                self._rules.add(rule_key)
            added += 1
        self._save_collecting(*self._tracked(), failures)
        if failures:
            raise DataPlaneError(_summary(failures))
        return added, removed

    def clean_up(self) -> None:
        """Delete exactly the tracked routes and rules, in every table."""
        with self._apply_lock:
            self._clean_up()

    def _clean_up(self) -> None:
        failures: list[str] = []
        kernel = self._listing()
        tracked_routes, tracked_rules = self._tracked()
        route_changes = route_sync.diff((), kernel.routes, tracked_routes)
        rule_changes = route_sync.diff((), kernel.rules.keys(), tracked_rules)
        with self._lock:
            self._routes.difference_update(route_changes.forget)
            self._rules.difference_update(rule_changes.forget)
        self._delete(route_changes.delete, rule_changes.delete, kernel, failures)
        self._save_collecting(*self._tracked(), failures)
        if failures:
            raise DataPlaneError(_summary(failures))

    @property
    def tracked(self) -> State:
        """The routes and rules this table would delete on clean-up."""
        return self._tracked()

    # -- watching ------------------------------------------------------------------------

    def _tracked_deletion(self, messages: Iterable[Any]) -> bool:
        with self._lock:
            for m in messages:
                kind = m["header"]["type"]
                if kind == RTM_DELROUTE:
                    if _route_key_of(m, self._names) in self._routes:
                        return True
                elif kind == RTM_DELRULE and _rule_key_of(m) in self._rules:
                    return True
        return False

    def watch_deletions(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (on a background thread) when someone else deletes a tracked
        route or rule, or when events were lost; return a function that stops watching.

        The subscription is active when this returns. The callback should only signal the
        agent (for example set an event) and must not raise: an exception ends the watcher.
        The agent then calls :meth:`set` again. The stop function wakes the thread and joins
        it (for at most a few seconds); calling it twice is harmless.
        """
        with _failing(f"cannot subscribe to route and rule events{_where(self._netns)}"):
            sock = pyroute2_netns.create_socket(
                self._netns, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE, flags=0
            )
            try:
                sock.bind((0, _WATCH_GROUPS))
            except OSError:
                sock.close()
                raise
        watcher = _Watcher(self, sock, callback)
        self._watchers.append(watcher)
        watcher.start()
        return watcher.stop

    def close(self) -> None:
        for watcher in self._watchers:
            watcher.stop()
        self._watchers.clear()
        self._ipr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _rule_request(key: RuleKey) -> dict[str, Any]:
    request: dict[str, Any] = {
        "family": _FAMILY[key.version],
        "table": key.table,
        "action": "to_tbl",
    }
    if key.src is not None:
        request["src"] = str(key.src.network_address)
        request["src_len"] = key.src.prefixlen
    if key.dst is not None:
        request["dst"] = str(key.dst.network_address)
        request["dst_len"] = key.dst.prefixlen
    if key.iif is not None:
        request["iifname"] = key.iif
    return request


def _gone(exc: BaseException) -> bool:
    """The item is already gone: nothing left to delete."""
    return isinstance(exc, NetlinkError) and exc.code in (errno.ESRCH, errno.ENOENT)


def _summary(failures: Sequence[str]) -> str:
    what = "change" if len(failures) == 1 else "changes"
    return f"{len(failures)} route/rule {what} failed: " + "; ".join(failures)


class _Watcher:
    """A thread reading route and rule events from its own netlink socket."""

    def __init__(self, table: RouteTable, sock: socket.socket, callback: Callable[[], None]):
        self._table = table
        self._sock = sock
        self._callback = callback
        # Closing a socket does not wake a thread blocked on it; a wake-up pair does.
        self._wake_read, self._wake_write = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name="kilo-route-watch", daemon=True)
        self._stopped = False

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        marshal = MarshalRtnl()
        selector = selectors.DefaultSelector()
        try:
            selector.register(self._sock, selectors.EVENT_READ)
            selector.register(self._wake_read, selectors.EVENT_READ)
            while True:
                for ready, _ in selector.select():
                    if ready.fileobj is self._wake_read:
                        return
                    try:
                        data = self._sock.recv(65536)
                    except OSError as exc:
                        if exc.errno != errno.ENOBUFS:
                            return
                        self._callback()  # events were lost: one of them may matter
                        continue
                    if self._table._tracked_deletion(marshal.parse(data)):
                        self._callback()
        finally:
            selector.close()
            self._sock.close()
            self._wake_read.close()

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            with suppress(OSError):
                self._wake_write.send(b"\0")
        if threading.current_thread() is not self._thread and self._thread.is_alive():
            self._thread.join(_STOP_TIMEOUT)
        with suppress(OSError):
            self._wake_write.close()
