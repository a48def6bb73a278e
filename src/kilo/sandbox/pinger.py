"""A continuous ping inside a testbed namespace, and the outages it saw.

For the failover test and benchmark (``tests/e2e/test_failover.py``,
``benchmarks/failover_bench.py``): ``ping -D`` every 0.1 s, its replies kept by wall-clock
time, so that "how long after the fault did traffic come back" is read from the replies
instead of from a poll.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import threading
from collections.abc import Sequence

_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from ")
GAP = 0.5  # seconds without a reply (five pings) that count as an outage


class Pinger:
    """``ping -D -i 0.1`` run with ``enter`` (a testbed's command prefix) to ``ip``."""

    def __init__(self, enter: Sequence[str], ip: str) -> None:
        self.replies: list[float] = []
        self._process = subprocess.Popen(
            [*enter, "ping", "-D", "-n", "-i", "0.1", "-W", "1", ip],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            match = _REPLY.match(line)
            if match:
                self.replies.append(float(match.group(1)))

    def flowing(self, now: float) -> bool:
        """Whether a reply came in the last ``GAP`` seconds before ``now``."""
        return bool(self.replies) and self.replies[-1] > now - GAP

    def resumed_after(self, since: float) -> float | None:
        """Seconds from ``since`` to the first reply that ended the first outage after it;
        None while traffic has not come back."""
        replies = [t for t in list(self.replies) if t >= since - 1.0]
        for before, after in itertools.pairwise(replies):
            if after >= since and after - before > GAP:
                return after - since
        return None

    def close(self) -> None:
        self._process.kill()
        self._process.wait()
        self._reader.join(5)
        if self._process.stdout is not None:
            self._process.stdout.close()
