"""A thread that reads route and rule events from a netlink socket of its own, and calls
back when one of them matters (someone else deleted a tracked route or rule) or when
events were lost."""

from __future__ import annotations

import errno
import selectors
import socket
import threading
from collections.abc import Callable
from contextlib import suppress

_STOP_TIMEOUT = 5.0


class Watcher:
    """A thread reading route and rule events from its own netlink socket; ``matters``
    gets each datagram as received (one or more netlink messages) and decodes what it
    needs of it."""

    def __init__(
        self,
        sock: socket.socket,
        matters: Callable[[bytes], bool],
        callback: Callable[[], None],
    ) -> None:
        self._matters = matters
        self._sock = sock
        self._callback = callback
        # Closing a socket does not wake a thread blocked on it; a wake-up pair does.
        self._wake_read, self._wake_write = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name="kilo-route-watch", daemon=True)
        self._stopped = False

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
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
                    try:
                        matters = self._matters(data)
                    except Exception:  # any datagram it cannot decode
                        # Unreadable: it may have been a deletion that matters. The thread
                        # keeps watching (it ending would hide every later deletion).
                        matters = True
                    if matters:
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
