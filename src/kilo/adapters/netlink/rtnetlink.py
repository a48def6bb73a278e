"""One rtnetlink socket on a worker thread of its own, and the errors it raises, said once.

A pyroute2 socket belongs to the thread that opened it (it keeps a thread-local asyncio
loop) and cannot be used at all from a thread that runs an asyncio loop, such as the
agent's; :class:`Netlink` confines it to its own worker thread.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from kilo.errors import DataPlaneError

FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
VERSION = {socket.AF_INET: 4, socket.AF_INET6: 6}


def reason(exc: BaseException) -> str:
    if isinstance(exc, NetlinkError):
        text = exc.args[1] if len(exc.args) > 1 and exc.args[1] else os.strerror(exc.code)
        return str(text)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


@dataclass
class Outcome:
    """Whether a request under :func:`failing` met one of the errors it tolerates."""

    tolerated: bool = False


@contextmanager
def failing(
    what: str, *, tolerate: frozenset[int] = frozenset(), hints: dict[int, str] | None = None
) -> Iterator[Outcome]:
    """Translate a netlink or socket error into a DataPlaneError that says what failed.

    A netlink error whose errno is in ``tolerate`` (the interface is already gone, the
    address went with its primary) ends the block quietly, with ``tolerated`` set; ``hints``
    add a sentence to the message for some errnos."""
    outcome = Outcome()
    try:
        yield outcome
    except NetlinkError as exc:
        if exc.code in tolerate:
            outcome.tolerated = True
            return
        hint = (hints or {}).get(exc.code, "")
        raise DataPlaneError(f"{what}: {reason(exc)}{hint}") from exc
    except OSError as exc:
        raise DataPlaneError(f"{what}: {reason(exc)}") from exc


def where(netns: str | None) -> str:
    return "" if netns is None else f" in network namespace {netns}"


def _open(netns: str | None) -> Any:
    # groups=0: these sockets only send requests; unread events would pile up otherwise.
    # flags=0: never create a namespace that does not exist.
    with failing(f"cannot open a netlink socket{where(netns)}"):
        if netns is None:
            return IPRoute(groups=0)
        return IPRoute(netns=netns, flags=0, groups=0)


class Netlink:
    """One pyroute2 socket, used only from a worker thread of its own.

    Confined there, it can be called from any thread, and calls are serialised. Results are
    materialised on the worker (dumps become tuples).
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


class Closing:
    """A context manager that closes what it holds (``with Links() as links: ...``)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
