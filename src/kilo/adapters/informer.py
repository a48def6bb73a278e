"""The watch-backed cache: :class:`Informer` keeps a local copy of one resource current
with list + watch (through lightkube, the watch's body read by
:mod:`kilo.adapters.watchstream`).

It resumes from the last resourceVersion after a dropped connection (backoff with
jitter), and on ``410 Gone`` it lists again and reports every object that disappeared in
the gap as deleted, so that no deletion is ever lost. Events are the core's
:class:`~kilo.mesh.events.Event` values; failures are described by
:mod:`kilo.adapters.apierrors`. The resources it watches, and the dicts their objects
become, are :mod:`kilo.adapters.resources`'s. :mod:`kilo.adapters.kubernetes` re-exports
:class:`Informer` and :func:`watch_decoders`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol, cast

import msgspec
from lightkube import AsyncClient
from lightkube.core import decoders

from kilo.adapters import watchstream
from kilo.adapters.apierrors import (
    REQUEST_ERRORS,
    describe_failure,
    is_refusal,
    status_code,
    status_error,
)
from kilo.adapters.resources import NAMESPACED, RESOURCES, _to_dict
from kilo.errors import BackendError
from kilo.mesh.events import Event, EventType

# Objects per page of a (re)list, as client-go's reflector pages: one response of 5000
# kubelet-registered Nodes is about 50 MB of JSON, read whole before it is decoded, and the
# process keeps the memory that peak took.
LIST_CHUNK = 500
# A watch's connection and TLS handshake, as lightkube's clients time them out.
CONNECT_TIMEOUT = 10.0
# A watch the server ends sooner than this without an event is a failure, retried with
# backoff, as client-go's reflector has it ("very short watch"): a server or proxy that
# ends every watch at once would otherwise have every agent reconnect in a tight loop.
SHORT_WATCH = 1.0


class _EventStream(Protocol):
    """A watch's events, closed at once by ``aclose``."""

    def __aiter__(self) -> AsyncIterator[tuple[str, dict[str, Any]]]: ...

    def __anext__(self) -> Awaitable[tuple[str, dict[str, Any]]]: ...

    async def aclose(self) -> None: ...


class _ShortWatch(Exception):
    """The server ended a watch at once, without an event."""


class _ListFailure:
    """A list's failure, handed from the task that reads its pages to the consumer."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc


class Informer:
    """A local cache of one resource kept current by list + watch.

    ``events()`` yields an ADDED event per object of the initial list, then every change.
    The initial list's events are yielded as its pages come (``cache`` holds what has been
    yielded), with the next page asked for while the consumer handles this one's: the
    list is complete when :meth:`listed` returns, and a consumer that must not act on a
    part of it waits for that. After a relist, ``cache`` already holds the whole new
    listing while its events are being yielded; between events it is the state the
    events describe.
    """

    def __init__(
        self,
        client: AsyncClient,
        resource: str,
        *,
        server: str,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        watch_seconds: int = 300,
        retry_refusals: bool = False,
        plugin_timeout: float | None = None,
        on_error: Callable[[str], None] | None = None,
        namespace: str | None = None,
    ) -> None:
        self._client = client
        # The TLS context and credentials all its watches share (made on the first).
        self._connection: watchstream.Connection | None = None
        # A long-running agent retries refusals (401/403/404) once it has listed: a
        # restarting API server refuses requests until its RBAC caches are loaded.
        # Refusals before the first list (or in one-shot tools) are misconfiguration: fatal.
        self._retry_refusals = retry_refusals
        # The credential plugin's bound for the watches' own requests (the agent's; see
        # kilo.adapters.credentials), as for the client's.
        self._plugin_timeout = plugin_timeout
        self._on_error = on_error
        self._listed = False
        self._resource = resource
        self._res: Any = (  # the overloads of list and watch differ by scope
            NAMESPACED[resource] if namespace is not None else RESOURCES[resource]
        )
        # Only the namespaced calls take one (lightkube refuses it for global resources).
        self._where: dict[str, Any] = {} if namespace is None else {"namespace": namespace}
        self._server = server
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._watch_seconds = watch_seconds
        self.cache: dict[str, dict[str, Any]] = {}
        self.resource_version: str | None = None
        self.relists = 0
        self.last_error: str | None = None
        # Set by the first complete list: an empty one yields no event to wait for.
        self._first_list = asyncio.Event()

    async def listed(self) -> None:
        """Return once the first list is complete (``cache`` holds it); while ``events()``
        is being consumed, as only that drives the list."""
        await self._first_list.wait()

    def _fatal_list(self, exc: BaseException) -> BackendError | None:
        """What a failed list raises instead of ``exc``: a refusal before the first list."""
        if not isinstance(exc, REQUEST_ERRORS) or not self._fatal(exc):
            return None
        return BackendError(
            describe_failure(exc, self._client.config, verb="list", resource=self._resource)
        )

    async def _initial_list(self) -> AsyncGenerator[Event, None]:
        """A list into an empty cache, each object yielded (and cached) as it comes: a
        5000-node list is ten pages that the API server takes about as long to prepare as
        kg takes to handle their events (0.5-1.2 s each way at start-up), so the next page
        is asked for (by a task of its own, one page ahead) while this one's are handled.
        A list that fails half-way leaves what it yielded cached: the next one diffs."""
        listing = self._client.list(self._res, chunk_size=LIST_CHUNK, **self._where)
        pages: asyncio.Queue[Any] = asyncio.Queue(maxsize=LIST_CHUNK)
        end = object()

        async def fetch() -> None:
            try:
                async for obj in listing:
                    await pages.put(obj)
            except Exception as exc:  # handed to the consumer, raised there
                await pages.put(_ListFailure(exc))
                return
            await pages.put(end)

        fetcher = asyncio.create_task(fetch(), name=f"list {self._resource}")
        try:
            while (item := await pages.get()) is not end:
                if isinstance(item, _ListFailure):
                    fatal = self._fatal_list(item.exc)
                    if fatal is not None:
                        raise fatal from item.exc
                    raise item.exc
                data = _to_dict(item)
                name = data["metadata"]["name"]
                self.cache[name] = data
                yield Event(EventType.ADDED, name, data)
        finally:
            fetcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fetcher
        self._listed_whole(listing.resourceVersion)

    def _listed_whole(self, resource_version: str | None) -> None:
        self.resource_version = resource_version
        self._listed = True
        self.relists += 1
        self._first_list.set()

    async def _relist(self) -> list[Event]:
        listing = self._client.list(self._res, chunk_size=LIST_CHUNK, **self._where)
        fresh: dict[str, dict[str, Any]] = {}
        try:
            async for obj in listing:
                data = _to_dict(obj)
                fresh[data["metadata"]["name"]] = data
        except REQUEST_ERRORS as exc:
            fatal = self._fatal_list(exc)
            if fatal is not None:
                raise fatal from exc
            raise
        events: list[Event] = []
        for name, old in self.cache.items():
            current = fresh.get(name)
            # Deleted, or deleted and created again under the same name during the gap.
            if current is None or _uid(current) != _uid(old):
                events.append(Event(EventType.DELETED, name, old))
        for name, data in fresh.items():
            previous = self.cache.get(name)
            if previous is None or _uid(previous) != _uid(data):
                events.append(Event(EventType.ADDED, name, data))
            elif _version(previous) != _version(data):
                events.append(Event(EventType.MODIFIED, name, data))
        self.cache = fresh
        self._listed_whole(listing.resourceVersion)
        return events

    async def events(self) -> AsyncGenerator[Event, None]:
        delay = self._backoff_initial
        while True:
            try:
                if self.resource_version is None and not self.cache:
                    async for event in self._initial_list():
                        yield event
                elif self.resource_version is None:
                    for event in await self._relist():
                        yield event
                # The server ends each watch after server_timeout; a connection that goes
                # silent for longer than that (a vanished host, a dropped NAT entry) is dead.
                server_timeout = random.randint(self._watch_seconds, 2 * self._watch_seconds)
                watch, timed = self._watch(server_timeout)
                opened, received = asyncio.get_running_loop().time(), False
                # aclosing: closing this generator must close the HTTP stream at once.
                async with contextlib.aclosing(watch):
                    while True:
                        try:
                            if timed:  # the watch ends itself when silent too long
                                kind, data = await anext(watch)
                            else:
                                # asyncio.timeout, not wait_for: on Python 3.11 wait_for
                                # loses a cancellation that races with a completing event,
                                # and a busy watch (1000 nodes checking in) never stops.
                                async with asyncio.timeout(server_timeout + 30):
                                    kind, data = await anext(watch)
                        except StopAsyncIteration:
                            break
                        received = True
                        delay = self._backoff_initial
                        version = _version(data)
                        if version:
                            self.resource_version = version
                        change = self._apply(kind, data)
                        if change is not None:
                            yield change
                if not received and asyncio.get_running_loop().time() - opened < SHORT_WATCH:
                    raise _ShortWatch
            except _ShortWatch:
                self.last_error = (
                    f"the watch of {self._resource} on {self._server} ended at once without "
                    "an event"
                )
            except REQUEST_ERRORS as exc:  # TimeoutError (asyncio.timeout) is an OSError
                # A refused watch arrives as a plain HTTP status error, an ERROR event in the
                # stream as an ApiError.
                status = status_error(exc)
                if status is not None and status_code(status) == 410:
                    # The resourceVersion is gone (compaction, restart): list again and diff.
                    self.resource_version = None
                    continue
                config = self._client.config
                if isinstance(exc, msgspec.MsgspecError) and status is None:
                    self.last_error = f"a malformed watch event from {self._server}: {exc}"
                else:
                    self.last_error = describe_failure(
                        exc, config, verb="watch", resource=self._resource
                    )
                if self._fatal(exc):
                    raise BackendError(self.last_error) from exc
            else:
                continue  # the server closed the watch normally: resume from the last version
            if self._on_error is not None and self.last_error is not None:
                self._on_error(self.last_error)
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, self._backoff_max)

    def _watch(self, server_timeout: int) -> tuple[_EventStream, bool]:
        """One watch request from the last resourceVersion: ``(type, object as a dict)``,
        and whether it ends itself when the connection is silent too long.

        A lightkube client's body is read by the loop with the TLS in C
        (:mod:`kilo.adapters.watchstream`: a fraction of the CPU per event, and no
        timeout or generator per event around it); any other client (the tests' fakes)
        through its own ``watch``."""
        if isinstance(self._client, AsyncClient):
            return self._stream_watch(server_timeout), True
        return self._client_watch(server_timeout), False

    def _stream_watch(self, server_timeout: int) -> watchstream.Watch:
        params = {"watch": "true", "timeoutSeconds": str(server_timeout)}
        if self.resource_version is not None:
            params["resourceVersion"] = self.resource_version
        res = self._res

        decode, decode_event = watch_decoders(res)
        if self._connection is None:
            self._connection = watchstream.Connection(
                self._client.config, plugin_timeout=self._plugin_timeout
            )
        return watchstream.Watch(
            self._connection,
            _watch_path(res, self._where.get("namespace")),
            params,
            decode=decode,
            decode_event=decode_event,
            connect_timeout=CONNECT_TIMEOUT,
            # The server ends the watch after server_timeout; a connection silent for
            # longer is dead (a vanished host, a dropped NAT entry).
            read_timeout=server_timeout + 30,
        )

    async def _client_watch(
        self, server_timeout: int
    ) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
        watch = cast(
            AsyncGenerator[tuple[str, Any], None],
            self._client.watch(
                self._res,
                **self._where,
                resource_version=self.resource_version,
                server_timeout=server_timeout,
            ),
        )
        async with contextlib.aclosing(watch):
            async for kind, obj in watch:
                yield kind, _to_dict(obj)

    def _fatal(self, exc: BaseException) -> bool:
        """Refusals before the first list are misconfiguration (see ``__init__``)."""
        if not is_refusal(exc, self._client.config):
            return False
        return not (self._retry_refusals and self._listed)

    def _apply(self, kind: str, data: dict[str, Any]) -> Event | None:
        name = data.get("metadata", {}).get("name")
        if not name or kind == "BOOKMARK":
            return None
        if kind == "DELETED":
            if name not in self.cache:
                return None  # already gone (a relist reported it)
            return Event(EventType.DELETED, name, self.cache.pop(name))
        existed = name in self.cache
        self.cache[name] = data
        return Event(EventType.MODIFIED if existed else EventType.ADDED, name, data)


@functools.cache
def watch_decoders(
    res: Any,
) -> tuple[Callable[[bytes], dict[str, Any]], Callable[[bytes], watchstream.Event | None] | None]:
    """What a watch of ``res`` decodes with (:class:`watchstream.Watch`): an event's object
    into the dict the informer keeps, as lightkube's decoders give it; and, for a resource
    lightkube decodes as a msgspec struct (Nodes as :class:`ReadNode`, Leases), a whole
    event line in one pass instead of lightkube's two (the event with its object left raw,
    then the object): a check-in is 10 KB, 167 a second at 5000 nodes. ``None`` for the
    others (Peers: a dict)."""

    def decode(raw: bytes) -> dict[str, Any]:
        return _to_dict(decoders.decode_object(raw, res))

    if not (isinstance(res, type) and issubclass(res, msgspec.Struct)):
        return decode, None
    event_type = msgspec.defstruct(f"{res.__name__}WatchEvent", [("type", str), ("object", res)])
    decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(event_type)

    def decode_event(line: bytes) -> watchstream.Event | None:
        event = decoder.decode(line)
        if event.type == "ERROR":  # its object is a Status: lightkube's path
            return None
        return event.type, _to_dict(event.object)

    return decode, decode_event


def _watch_path(res: Any, namespace: str | None) -> str:
    """The collection's path, as lightkube forms it: ``/api/v1/nodes``,
    ``/apis/<group>/<version>[/namespaces/<namespace>]/<plural>``."""
    info = res._api_info
    group, version = info.resource.group, info.resource.version
    base = f"/apis/{group}/{version}" if group else f"/api/{version}"
    where = f"/namespaces/{namespace}" if namespace is not None else ""
    return f"{base}{where}/{info.plural}"


def _uid(data: Mapping[str, Any]) -> object:
    return data.get("metadata", {}).get("uid")


def _version(data: Mapping[str, Any]) -> str | None:
    version = data.get("metadata", {}).get("resourceVersion")
    return version if isinstance(version, str) else None
