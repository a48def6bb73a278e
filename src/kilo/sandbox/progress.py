"""Steps with their elapsed time: a spinner on a terminal, plain lines elsewhere.

Some steps take minutes (the first build of kube-apiserver takes about ten), so the user
sees that something is happening and for how long: on a terminal one line redraws itself
(``⠹ building etcd and kube-apiserver  2:41``) with the step's notes (build.sh's step lines)
printed above it; in a log (a pipe, CI) each step prints a start line, its notes, a
"still ..." line every ``heartbeat`` seconds and an end line with the time taken.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
CLEAR = "\r\x1b[2K"


def elapsed(seconds: float) -> str:
    """``0:07``, ``12:41``, ``1:02:03``."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Step:
    """One running step; :meth:`note` prints a line under it."""

    def __init__(self, progress: Progress, title: str) -> None:
        self.progress = progress
        self.title = title
        self.started = progress.clock()

    def note(self, line: str) -> None:
        self.progress.write_note(self, line)

    def seconds(self) -> float:
        return self.progress.clock() - self.started


class Progress:
    def __init__(
        self,
        stream: TextIO,
        *,
        tty: bool | None = None,
        heartbeat: float = 30.0,
        interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.heartbeat = heartbeat
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()

    def _line(self, step: Step, frame: int) -> str:
        return f"{FRAMES[frame % len(FRAMES)]} {step.title}  {elapsed(step.seconds())}"

    def write_note(self, step: Step, line: str) -> None:
        with self._lock:
            if self.tty:
                self.stream.write(f"{CLEAR}  {line}\n{self._line(step, 0)}")
            else:
                self.stream.write(f"  {line}\n")
            self.stream.flush()

    def _tick(self, step: Step, done: threading.Event) -> None:
        frame = 0
        last_beat = step.started
        while not done.wait(self.interval if self.tty else 1.0):
            frame += 1
            with self._lock:
                if self.tty:
                    self.stream.write(CLEAR + self._line(step, frame))
                elif self.clock() - last_beat >= self.heartbeat:
                    last_beat = self.clock()
                    self.stream.write(f"  still {step.title} ({elapsed(step.seconds())})\n")
                else:
                    continue
                self.stream.flush()

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[Step]:
        """Show ``title`` while the block runs; ``✓``/``✗`` and the time taken at the end."""
        step = Step(self, title)
        with self._lock:
            self.stream.write(self._line(step, 0) if self.tty else f"{title} ...\n")
            self.stream.flush()
        done = threading.Event()
        ticker = threading.Thread(target=self._tick, args=(step, done), daemon=True)
        ticker.start()
        ok = False
        try:
            yield step
            ok = True
        finally:
            done.set()
            ticker.join()
            mark = "✓" if ok else "✗"
            with self._lock:
                end = f"{mark} {title} ({elapsed(step.seconds())})\n"
                self.stream.write(CLEAR + end if self.tty else end)
                self.stream.flush()
