"""Cancelling a busy watch always stops it: the agent must answer SIGTERM at 1000 nodes.

Python 3.11's ``asyncio.wait_for`` returns the inner result instead of raising when the
task is cancelled in the loop iteration in which the awaited event arrived, so the
cancellation is lost and the watch runs on. The fake watch below releases an event and
the test cancels in exactly that iteration.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from kilo.adapters.kubernetes import Informer


class Obj:
    def __init__(self, name: str, version: int) -> None:
        self.data = {"metadata": {"name": name, "uid": name, "resourceVersion": str(version)}}

    def to_dict(self) -> dict[str, Any]:
        return self.data


class Listing:
    resourceVersion = "1"

    def __aiter__(self) -> AsyncIterator[Obj]:
        return self._items()

    async def _items(self) -> AsyncIterator[Obj]:
        yield Obj("n0", 1)


class GatedClient:
    """A watch whose next event arrives when the test opens the gate."""

    def __init__(self) -> None:
        self.gate: asyncio.Future[None] | None = None
        self.waiting = asyncio.Event()

    def list(self, resource: Any, **kwargs: Any) -> Listing:
        return Listing()

    async def watch(self, resource: Any, **kwargs: Any) -> AsyncIterator[tuple[str, Obj]]:
        version = 1
        while True:
            self.gate = asyncio.get_running_loop().create_future()
            self.waiting.set()
            await self.gate
            version += 1
            yield "MODIFIED", Obj("n0", version)


def test_cancelling_a_watch_as_an_event_arrives_stops_it() -> None:
    async def scenario() -> bool:
        client = GatedClient()
        informer = Informer(client, "nodes", server="https://test")  # type: ignore[arg-type]

        async def consume() -> None:
            async for _event in informer.events():
                pass

        task = asyncio.create_task(consume())
        await client.waiting.wait()
        for _ in range(3):  # let the informer settle into waiting for the event
            await asyncio.sleep(0)
        assert client.gate is not None
        client.gate.set_result(None)
        await asyncio.sleep(0)  # the event is delivered in this iteration...
        task.cancel()  # ...and the cancellation arrives in the same one
        done, _ = await asyncio.wait([task], timeout=2)
        if not done:
            task.cancel()
            await asyncio.wait([task], timeout=2)
        return bool(done)

    assert asyncio.run(scenario()), "the cancelled watch kept running"
