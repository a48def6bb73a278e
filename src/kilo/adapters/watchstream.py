"""One watch request of the Kubernetes API, its body decrypted in C.

Why not lightkube's watch: at 5000 nodes every agent reads 167 check-ins a second, each a
10 KB Node that the API server writes as a few chunks. Through httpx2, httpcore2, h11 and
anyio's TLS over a memory BIO, all in Python, one event cost 0.3-0.9 ms of CPU (README,
"5000 nodes"), most of a check-in's cost. Here the request is opened on a thread
(blocking connect, TLS handshake, credentials, response head), and the body is then read
by the event loop itself: a non-blocking socket watched with ``add_reader``, its TLS
records decrypted in C from memory (:mod:`kilo.adapters.tlsbio`), :class:`ChunkedBody`
cuts the chunks with ``bytes.find``, and each line goes to lightkube's own decoders
(msgspec), so an event is what lightkube's watch would
yield. No thread hands events over: that alone cost more than the decoding.

What stays lightkube's: the kubeconfig's TLS context and client certificate, and its
credentials (a token, a token file re-read on 401, a credential plugin), taken from
``lightkube.config.client_adapter`` and run the way httpx runs them. Failures are what
lightkube's watch raises, so :mod:`kilo.adapters.apierrors` describes them alike: an error
answer is an ``httpx2.HTTPStatusError`` (its body read, bounded), an ``ERROR`` event an
``ApiError``, a line that is not a watch event a msgspec error, the transport an
``OSError``, an answer that is not HTTP/1.1 a ``ValueError``.

A busy watch (more than :data:`BUSY_EVENTS` events a second: the Nodes' check-ins above
about 1500 nodes) is read every :data:`GATHER` seconds instead of per arrival
(``Watch._pace``): the loop's wake, not the event, was most of a check-in's cost.

Bounded: a response head over 64 KiB, a chunk-size line over 1 KiB and an event over
:data:`MAX_EVENT` end the watch with an error; the socket is not read while
:data:`MAX_PENDING` events, or events of :data:`MAX_PENDING_BYTES`, wait for the consumer,
and is read :data:`MAX_READ_PER_WAKE` at a time.

Past 500 lines as one module: the opening thread, the loop's reading and aclose share one
socket, lock and state, and the body's framing (:class:`ChunkedBody`, :class:`Lines`) is
read with the bounds above, which the tests lower.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx2
from lightkube import ApiError
from lightkube.config.client_adapter import ConnectionParams
from lightkube.config.kubeconfig import SingleConfig
from lightkube.core import decoders

from kilo.adapters import credentials, tlsbio

MAX_HEAD = 64 * 1024
MAX_CHUNK_LINE = 1024
# Kubernetes keeps objects of up to 1.5 MiB; an event wraps one.
MAX_EVENT = 4 * 1024 * 1024
MAX_ERROR_BODY = 64 * 1024
# The opening in all (connection, TLS handshake, request, the answer's head and an error's
# body), however the server dribbles it. The read timeout is the body's (minutes: a
# watch's length); a server that accepts a watch but does not answer it (a hung API server
# behind a load balancer that still accepts connections) must not hold the agent's watch
# for that long, when a new connection may reach a server that works.
MAX_OPEN = 60.0
READ_SIZE = 256 * 1024
# Events decoded but not yet taken: the socket is not read while this many wait, or while
# they came from this many bytes (4096 events of up to MAX_EVENT would be gigabytes).
MAX_PENDING = 4096
MAX_PENDING_BYTES = 16 * 1024 * 1024
# Read per wake of the loop: a backlog (a flood, a watch resumed far back) is read and
# decoded in slices, the loop's other work (Lease renewals, health checks, the consumer)
# running in between, instead of in one callback of up to MAX_PENDING_BYTES.
MAX_READ_PER_WAKE = 1024 * 1024
# Gathering (Watch._pace): a watch that brought more than BUSY_EVENTS events in a
# PACE_WINDOW is read every GATHER seconds, the socket told (SO_RCVLOWAT) not to wake the
# loop before GATHER_BYTES arrived; read per arrival again after a window of fewer.
BUSY_EVENTS = 50
PACE_WINDOW = 1.0
GATHER = 0.02
GATHER_BYTES = 64 * 1024

Event = tuple[str, dict[str, Any]]


# A watch's connection: plain (http), or TLS decrypted from memory (tlsbio).
_Socket = socket.socket | tlsbio.TLSSocket


def _raw(sock: _Socket) -> socket.socket:
    return sock.raw if isinstance(sock, tlsbio.TLSSocket) else sock


class ProtocolError(ValueError):
    """The server's answer is not the HTTP/1.1 a watch needs, or is past a bound."""


class Disconnected(ConnectionError):
    """The server closed the connection in the middle of its answer."""


class _Closed(Exception):
    """The watch was closed by its consumer while it was being opened."""


def _as_is(request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response, None]:
    yield request


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ChunkedBody:
    """An incremental reader of a chunked HTTP/1.1 body: :meth:`feed` takes what arrived
    and returns the body's data in it; :attr:`done` once the last chunk was read.

    Indexes into what arrived instead of slicing it per step: the API server writes an
    event as a few chunks, and this runs for each of them."""

    def __init__(self) -> None:
        self._buffer = b""
        self._remaining = 0  # of the current chunk's data
        self._crlf = False  # the CRLF after a chunk's data is next
        self.done = False

    def feed(self, data: bytes) -> bytes:
        buffer = self._buffer + data if self._buffer else data
        size = len(buffer)
        pieces: list[bytes] = []
        pos = 0
        remaining = self._remaining
        while pos < size and not self.done:
            if remaining:
                end = pos + remaining if pos + remaining < size else size
                pieces.append(buffer[pos:end])
                remaining -= end - pos
                pos = end
                self._crlf = not remaining
                continue
            if self._crlf:
                if size - pos < 2:
                    break
                if buffer[pos : pos + 2] != b"\r\n":
                    raise ProtocolError("a chunk not followed by CRLF")
                pos += 2
                self._crlf = False
                continue
            end = buffer.find(b"\r\n", pos, pos + MAX_CHUNK_LINE + 2)
            if end < 0:
                if size - pos > MAX_CHUNK_LINE:
                    raise ProtocolError(f"a chunk-size line longer than {MAX_CHUNK_LINE} bytes")
                break
            remaining = _chunk_size(buffer[pos:end])
            pos = end + 2
            if not remaining:
                self.done = True  # trailers, if any, are not read: the connection is closed
        self._remaining = remaining
        self._buffer = buffer[pos:] if pos < size else b""
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _chunk_size(line: bytes) -> int:
    text = line.split(b";", 1)[0].strip() if b";" in line else line.strip()
    try:
        if not 0 < len(text) <= 16:
            raise ValueError
        size = int(text, 16)
    except ValueError:
        raise ProtocolError(f"a bad chunk-size line: {line[:40]!r}") from None
    if size < 0:
        raise ProtocolError(f"a bad chunk-size line: {line[:40]!r}")
    if size > MAX_EVENT:
        raise ProtocolError(f"a chunk of {size} bytes (more than {MAX_EVENT})")
    return size


# Pieces of a line kept apart before they are joined into one buffer.
MAX_PARTS = 64


class Lines:
    """Cuts a body into lines (one watch event each), bounded by :data:`MAX_EVENT`."""

    def __init__(self) -> None:
        self._parts: list[bytes | bytearray] = []  # of the line not yet complete
        self._size = 0

    def feed(self, data: bytes) -> list[bytes]:
        self._parts.append(data)
        if b"\n" not in data:
            self._size += len(data)
            if self._size > MAX_EVENT:
                raise ProtocolError(f"a watch event longer than {MAX_EVENT} bytes")
            if len(self._parts) > MAX_PARTS:
                # A line in many small pieces (a server writing a few bytes a TLS record or
                # a chunk): each piece an object of 40 bytes besides its data, MAX_EVENT in
                # 2-byte pieces held 120 MB. Kept in one buffer, grown in place.
                first = self._parts[0]
                if isinstance(first, bytearray):
                    first += b"".join(self._parts[1:])
                else:
                    first = bytearray(b"".join(self._parts))
                self._parts = [first]
            return []
        lines = b"".join(self._parts).split(b"\n")
        rest = lines.pop()
        self._parts, self._size = ([rest], len(rest)) if rest else ([], 0)
        if any(len(line) > MAX_EVENT for line in lines):
            raise ProtocolError(f"a watch event longer than {MAX_EVENT} bytes")
        return lines

    def rest(self) -> bytes:
        return b"".join(self._parts)


def _request_target(server: str, path: str, params: dict[str, str]) -> tuple[str, str, int, str]:
    """(scheme, host, port, request target) for ``path`` on ``server``, which may carry a
    path prefix of its own (a proxy's ``https://host/k8s/clusters/c-1``)."""
    url = urlsplit(server)
    if url.scheme not in ("https", "http") or not url.hostname:
        raise ProtocolError(f"cannot watch through the server URL {server[:80]!r}")
    port = url.port or (443 if url.scheme == "https" else 80)
    target = url.path.rstrip("/") + path + "?" + urlencode(params)
    return url.scheme, url.hostname, port, target


class Connection:
    """What the watches of one kubeconfig share, as lightkube's client shares it between its
    requests: the TLS context (the CA and client certificate loaded once) and the
    credentials, so a credential plugin's token is kept until a 401 instead of the plugin
    running for every watch (one per resource every 5-10 minutes on every node).

    Made on the first opening's thread (it reads files); thread-safe."""

    def __init__(self, config: SingleConfig, *, plugin_timeout: float | None = None) -> None:
        self.config = config
        self._plugin_timeout = plugin_timeout  # None: lightkube's unbounded wait
        self._lock = threading.Lock()
        self._params: tuple[str, ssl.SSLContext, httpx2.Auth | None] | None = None

    def params(self) -> tuple[str, ssl.SSLContext, httpx2.Auth | None]:
        """(server URL, TLS context, credentials), as lightkube's client takes them."""
        with self._lock:
            if self._params is None:
                params = ConnectionParams(trust_env=False).httpx_params(self.config)
                auth = params["auth"]
                if self._plugin_timeout is not None:
                    auth = credentials.bounded(auth, self._plugin_timeout)
                self._params = (str(params["base_url"]), params["verify"], auth)
            return self._params


class Watch:
    """The events of one watch request: ``(type, object as lightkube's to_dict)``.

    An async iterator, used from the loop that created it; ``aclose()`` ends the request
    at once. Not restartable: the informer opens a new one per watch.
    """

    def __init__(
        self,
        config: SingleConfig | Connection,
        path: str,
        params: dict[str, str],
        *,
        decode: Callable[[bytes], dict[str, Any]],
        decode_event: Callable[[bytes], Event | None] | None = None,
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        """``decode`` turns an event's object into the dict an event carries;
        ``decode_event``, if given, a whole line in one pass: ``None``, or any exception,
        sends the line through lightkube's decoders and ``decode`` instead, so failures
        and ``ERROR`` events are theirs."""
        self._connection = config if isinstance(config, Connection) else Connection(config)
        self._path = path
        self._params = params
        self._decode = decode
        self._decode_event = decode_event
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._loop = asyncio.get_running_loop()
        self._events: collections.deque[Event] = collections.deque()
        self._sizes: collections.deque[int] = collections.deque()  # of each event's line
        self._pending = 0  # bytes: the sum of _sizes
        self._failure: BaseException | None = None
        self._ended = False  # nothing more will be read (the end, a failure, closed)
        self._ready = asyncio.Event()
        self._opening: asyncio.Future[None] | None = None
        self._started = False  # the opening's outcome was taken by a consumer
        # The socket: the opening thread's until it is opened, then the loop's. The lock
        # orders aclose against the thread's hand-over.
        self._sock: _Socket | None = None
        self._sock_lock = threading.Lock()
        self._closing = threading.Event()
        # Silence while streaming: the last read's time, checked by one timer re-armed
        # lazily (a timeout per event cost more than the rest of the event's handling).
        self._last_read = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self._opened = False
        self._open_deadline = 0.0  # set by the opening (time.monotonic)
        self._body: ChunkedBody | None = None
        self._lines = Lines()
        self._reading = False
        # Pacing: events since the window began, and the gathering's timer while busy.
        self._window = 0.0
        self._arrivals = 0
        self._gathering: asyncio.TimerHandle | None = None

    # --- the consumer's side ---

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        if not self._started:
            await self._open_once()
        while not self._events:
            if self._ended:
                if self._failure is not None:
                    failure, self._failure = self._failure, None
                    raise failure
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        self._pending -= self._sizes.popleft()
        if (
            not self._reading
            and not self._ended
            and len(self._events) <= MAX_PENDING // 2
            and self._pending <= MAX_PENDING_BYTES // 2
        ):
            self._resume()
        return self._events.popleft()

    async def _open_once(self) -> None:
        if self._opening is None:
            if self._ended:  # closed before it was opened
                raise StopAsyncIteration
            self._opening = opening = self._loop.create_future()
            # Taken here if no consumer takes it (one cancelled, then the watch closed):
            # asyncio logs a failure nobody took.
            opening.add_done_callback(lambda done: done.cancelled() or done.exception())
            # A thread of its own, not the loop's executor: a process that exits must not
            # wait for an opening that blocks (aclose wakes it, the daemon flag the rest).
            threading.Thread(target=self._open_thread, name="watch", daemon=True).start()
        try:
            # Shielded: a consumer cancelled while waiting leaves the opening to the next
            # __anext__ (or to aclose) instead of cancelling it half-way.
            await asyncio.shield(self._opening)
        except asyncio.CancelledError:
            raise
        except _Closed:
            self._started = True
            raise StopAsyncIteration from None
        except BaseException:
            self._started = self._ended = True
            raise
        self._started = True
        self._start_reading()

    async def aclose(self) -> None:
        self._ended = True
        self._stop_watchdog()
        self._ready.set()  # a consumer waiting in another task ends
        self._events.clear()
        self._sizes.clear()
        self._pending = 0
        self._failure = None
        with self._sock_lock:
            self._closing.set()
            sock, self._sock = self._sock, None
            if sock is None:
                return
            if not self._opened:
                # The opening thread is blocked on it: wake it, and it closes the socket.
                # The base class's shutdown: the TLS layer's would drop its state under
                # the thread.
                with contextlib.suppress(OSError):
                    _raw(sock).shutdown(socket.SHUT_RDWR)
                self._sock = sock
                return
            if self._reading:
                self._loop.remove_reader(sock.fileno())
                self._reading = False
        sock.close()

    # --- the body, read by the loop ---

    def _start_reading(self) -> None:
        if self._ended:
            return
        assert self._sock is not None
        self._sock.setblocking(False)
        self._last_read = self._loop.time()
        self._watchdog = self._loop.call_later(self._read_timeout, self._check_silence)
        self._resume()

    def _check_silence(self) -> None:
        """A connection silent for ``read_timeout`` while it is read is dead (a vanished
        host, a dropped NAT entry): the watch ends with ``TimeoutError``. A pause for a
        consumer behind is not silence."""
        now = self._loop.time()
        if self._ended:
            return
        if not self._reading:
            self._last_read = now
        silent = now - self._last_read
        if silent >= self._read_timeout:
            self._end(TimeoutError(f"the watch was silent for {silent:.0f} s"))
            self._ready.set()
            return
        self._watchdog = self._loop.call_later(self._read_timeout - silent, self._check_silence)

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._gathering is not None:
            self._gathering.cancel()
            self._gathering = None

    def _resume(self) -> None:
        assert self._sock is not None
        self._loop.add_reader(self._sock.fileno(), self._readable)
        self._reading = True
        # Data may wait already: decrypted by the TLS layer (read with the head), or in
        # the head's read itself.
        self._loop.call_soon(self._readable)

    def _pause(self) -> None:
        if self._reading and self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._reading = False

    def _readable(self) -> None:
        sock = self._sock
        if self._ended or sock is None or not self._reading:
            return
        arrived = more = False
        taken = 0
        # Bounded in the socket's bytes too: through TLS a server writing a byte a record
        # (22 bytes each) or records without data between them (session tickets) made a
        # wake read MAX_READ_PER_WAKE of the body as 20 times that or more.
        tls = sock if isinstance(sock, tlsbio.TLSSocket) else None
        start = tls.received if tls is not None else 0
        try:
            while len(self._events) < MAX_PENDING and self._pending < MAX_PENDING_BYTES:
                if taken >= MAX_READ_PER_WAKE or (
                    tls is not None and tls.received - start >= MAX_READ_PER_WAKE
                ):
                    more = True
                    break
                try:
                    data = sock.recv(READ_SIZE)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    break
                if not data:
                    body = self._body
                    if body is not None and not body.done:
                        raise Disconnected("the server closed the connection inside the watch")
                    self._end(None)
                    break
                taken += len(data)
                self._last_read = self._loop.time()
                arrived |= self._take(data)
                if self._body is not None and self._body.done:
                    self._end(None)
                    break
            else:
                self._pause()  # the consumer is behind: resumed when it catches up
        except BaseException as exc:
            self._end(exc)
        if arrived or self._ended:
            self._ready.set()
        if arrived and not self._ended:
            self._pace()
        if more:
            # Continued after the callbacks waiting now, the consumer's (set above) among
            # them: by the reader if more is in the socket, by this call if the TLS layer
            # holds it decrypted already, which does not wake the reader.
            self._loop.call_soon(self._readable)

    def _pace(self) -> None:
        """Read per arrival, or gathered while the watch is busy.

        Why: at 5000 nodes the Node watch brings 167 check-ins a second, each about three
        TLS records, and the loop woke for nearly every one. On the project's machine a
        wake costs 70-250 us of CPU by itself (README, "5000 nodes"), more than handling
        the event: kg spent 0.42 ms of CPU a check-in, 7 % of a core. Read every GATHER
        seconds, the same events cost 0.20 ms, 3.3 % (agent_bench, 5000 nodes), for at
        most GATHER more before a change is seen. A quiet watch (a smaller cluster, the
        Peers) keeps waking per arrival: nothing waits, and no timer runs.

        While gathering, the socket wakes the loop only for GATHER_BYTES (a flood, read as
        before) or its end; the timer reads what is there."""
        now = self._loop.time()
        elapsed = now - self._window
        if elapsed < PACE_WINDOW:
            return
        # The window just ended, or more have passed since without an event: not busy.
        busy = self._arrivals > BUSY_EVENTS and elapsed < 2 * PACE_WINDOW
        self._window, self._arrivals = now, 0
        if busy and self._gathering is None:
            self._set_low_water(GATHER_BYTES)
            self._gathering = self._loop.call_later(GATHER, self._gathered)
        elif not busy and self._gathering is not None:
            self._gathering.cancel()
            self._gathering = None
            self._set_low_water(1)

    def _set_low_water(self, size: int) -> None:
        """The bytes the socket waits for before it wakes the loop (1: Linux's default)."""
        if self._sock is not None:
            with contextlib.suppress(OSError):  # then woken per arrival, as before
                _raw(self._sock).setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)

    def _gathered(self) -> None:
        self._gathering = self._loop.call_later(GATHER, self._gathered)
        if self._reading:  # not while paused for a consumer behind
            self._readable()
        if self._gathering is not None:  # still streaming: ends gathering when quiet
            self._pace()

    def _take(self, data: bytes) -> bool:
        """Decode the events in ``data``; a failing one is raised after those before it."""
        body = self._body.feed(data) if self._body is not None else data
        if not body:
            return False
        before = len(self._events)
        for line in self._lines.feed(body):
            if line.strip():
                self._append(self._event(line), len(line))
        return len(self._events) > before

    def _append(self, event: Event, size: int) -> None:
        self._arrivals += 1
        self._events.append(event)
        self._sizes.append(size)
        self._pending += size

    def _event(self, line: bytes) -> Event:
        if self._decode_event is not None:
            try:
                fast = self._decode_event(line)
            except Exception:  # decoded again below: its own error, lightkube's
                fast = None
            if fast is not None:
                return fast
        event = decoders.decode_watch_event(line)
        if event.type == "ERROR":
            raise ApiError(status=decoders.decode_status(event.object))
        return event.type, self._decode(event.object)

    def _end(self, failure: BaseException | None) -> None:
        if failure is None and self._body is None:  # read until the server closed it
            rest = self._lines.rest()
            try:
                if rest.strip():
                    self._append(self._event(rest), len(rest))
            except BaseException as exc:
                failure = exc
        self._ended = True
        self._failure = failure
        self._stop_watchdog()
        self._pause()
        with self._sock_lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    # --- opening, on a thread ---

    def _open_thread(self) -> None:
        opening = self._opening
        assert opening is not None
        failure: BaseException | None = None
        try:
            self._open()
        except BaseException as exc:
            failure = exc

        def settle() -> None:
            if opening.done():  # defensive: only this thread settles it
                return
            if failure is None:
                opening.set_result(None)
            else:
                opening.set_exception(failure)

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            self._loop.call_soon_threadsafe(settle)

    def _open(self) -> None:
        """Connect, send the request with the credentials, read the answer's head: on a
        thread, as all of it blocks (a credential plugin may run)."""
        server, context, auth = self._connection.params()
        scheme, host, port, target = _request_target(server, self._path, self._params)
        request = httpx2.Request(
            "GET",
            f"{scheme}://{_authority(host, port)}{target}",
            headers={"Accept": "application/json", "User-Agent": "kilo"},
        )
        flow = auth.sync_auth_flow(request) if auth is not None else _as_is(request)
        request = next(flow)
        # From here: a credential plugin has its own limit (kilo.adapters.credentials).
        self._open_deadline = time.monotonic() + MAX_OPEN
        for attempt in range(3):
            sock = self._connect(scheme, host, port, context)
            try:
                sock.sendall(_request_head(request, target, _authority(host, port)))
                status, headers, rest = self._head(sock)
                if status == 401 and auth is not None and attempt < 2:
                    try:
                        # A token file re-read, a credential plugin run again.
                        request = flow.send(httpx2.Response(401, headers=headers, request=request))
                    except StopIteration:
                        pass
                    else:
                        self._drop(sock)
                        continue
                if status != 200:
                    body = self._error_body(sock, headers, rest)
                    response = httpx2.Response(
                        status, headers=headers, content=body, request=request
                    )
                    raise httpx2.HTTPStatusError(
                        f"the watch was answered with HTTP {status}",
                        request=request,
                        response=response,
                    )
                with self._sock_lock:  # handed to the loop, unless closed meanwhile
                    if self._closing.is_set():
                        raise _Closed
                    self._opened = True
            except BaseException:
                self._drop(sock)
                if self._closing.is_set():
                    raise _Closed from None
                raise
            chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            self._body = ChunkedBody() if chunked else None
            try:
                self._take(rest)
            except BaseException as exc:  # after the events before it
                self._end(exc)
            return
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _connect(self, scheme: str, host: str, port: int, context: ssl.SSLContext) -> _Socket:
        if self._closing.is_set():
            raise _Closed
        raw = socket.create_connection((host, port), timeout=self._connect_timeout)
        sock: _Socket = raw
        try:
            if scheme == "https":
                # The handshake after the socket is aclose's to wake: a server that
                # dribbles it holds it for a socket timeout per byte.
                sock = tlsbio.TLSSocket(raw, context, host)
        except BaseException:
            raw.close()
            raise
        with self._sock_lock:
            if self._closing.is_set():
                sock.close()
                raise _Closed
            self._sock = sock
        try:
            if isinstance(sock, tlsbio.TLSSocket):
                sock.do_handshake(self._open_deadline)
            sock.settimeout(self._open_remaining())
        except BaseException:
            self._drop(sock)
            if self._closing.is_set():
                raise _Closed from None
            raise
        return sock

    def _drop(self, sock: _Socket) -> None:
        with self._sock_lock:  # aclose never shuts down a descriptor reused elsewhere
            if self._sock is sock:
                self._sock = None
            sock.close()

    def _open_remaining(self) -> float:
        remaining = self._open_deadline - time.monotonic()
        if remaining <= 0:
            raise self._open_timed_out()
        return remaining

    @staticmethod
    def _open_timed_out() -> TimeoutError:
        return TimeoutError(f"the server did not answer the watch within {MAX_OPEN:g} s")

    def _recv(self, sock: _Socket) -> bytes:
        """A read of the opening (the answer's head, an error's body), within its time."""
        remaining = self._open_remaining()
        sock.settimeout(remaining)
        try:
            data = sock.recv(READ_SIZE)
        except TimeoutError:
            if self._open_deadline - time.monotonic() > 0:
                raise
            raise self._open_timed_out() from None
        if self._closing.is_set():
            raise _Closed
        return data

    def _head(self, sock: _Socket) -> tuple[int, dict[str, str], bytes]:
        # Searched and grown where it grew: a server dribbling its head a byte at a time
        # must not cost a scan and a copy of all of it per byte.
        buffer = bytearray()
        end = -1
        while end < 0:
            if len(buffer) > MAX_HEAD:
                raise ProtocolError(f"a response head longer than {MAX_HEAD} bytes")
            data = self._recv(sock)
            if not data:
                raise Disconnected("the server closed the connection before it answered")
            start = max(len(buffer) - 3, 0)
            buffer += data
            end = buffer.find(b"\r\n\r\n", start)
        head, rest = bytes(buffer[:end]), bytes(buffer[end + 4 :])
        if len(head) > MAX_HEAD:
            raise ProtocolError(f"a response head longer than {MAX_HEAD} bytes")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        # isdigit alone takes latin-1's superscripts, which int() refuses (saying them all).
        code = parts[1] if len(parts) > 1 else ""
        if (
            not parts[0].startswith("HTTP/1.")
            or not (len(code) == 3 and code.isascii())
            or not code.isdigit()
        ):
            raise ProtocolError(f"not an HTTP/1.1 status line: {status_line[:80]!r}")
        headers: dict[str, str] = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return int(code), headers, rest

    def _error_body(self, sock: _Socket, headers: dict[str, str], rest: bytes) -> bytes:
        """The body of an error answer, at most :data:`MAX_ERROR_BODY` bytes of it: what
        arrived is enough to describe the error, so failing to read more is not a failure."""
        chunks = (
            ChunkedBody() if "chunked" in headers.get("transfer-encoding", "").lower() else None
        )
        try:
            length = int(headers.get("content-length", "-1"))
        except ValueError:
            length = -1
        if chunks is not None or not 0 <= length < MAX_ERROR_BODY:
            length = MAX_ERROR_BODY
        # Cut incrementally (a chunk's data may hold what looks like the last chunk), each
        # read added once: a dribbled body costs no rescan.
        body = bytearray()
        data = rest
        with contextlib.suppress(OSError, ProtocolError):  # what was read describes it
            while True:
                body += chunks.feed(data) if chunks is not None else data
                if len(body) >= length or (chunks is not None and chunks.done):
                    break
                data = self._recv(sock)
                if not data:
                    break
        return bytes(body[:length])


def _request_head(request: httpx2.Request, target: str, authority: str) -> bytes:
    lines = [f"GET {target} HTTP/1.1".encode(), f"Host: {authority}".encode()]
    for name, value in request.headers.raw:
        if name.lower() in (b"host", b"connection"):
            continue
        # httpx keeps values as given, h11 refused these when lightkube sent the request:
        # a token of two lines would add a header. Not quoted: it is a credential.
        if any(c in value for c in b"\r\n\0") or any(c in name for c in b"\r\n\0: "):
            raise httpx2.LocalProtocolError(
                f"the {name[:40].decode('latin-1')!r} header of the request has a line break "
                "or a NUL in it",
                request=request,
            )
        lines.append(name + b": " + value)
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"
