"""The informer's first list: its events are handed over as its pages come, the next page
asked for while the consumer handles this one's; a list that fails half-way leaves what
it handed over cached, and the next list reports what went in between."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import httpx2

from kilo.adapters.kubernetes import Informer
from kilo.mesh.events import EventType


class Obj:
    def __init__(self, name: str, version: int = 1) -> None:
        self.data = {"metadata": {"name": name, "uid": name, "resourceVersion": str(version)}}

    def to_dict(self) -> dict[str, Any]:
        return self.data


class PagedListing:
    """A list in pages, each read when the test opens its gate (as a page comes from the
    API server once it has prepared it); a page that is an exception fails the list."""

    resourceVersion = "7"

    def __init__(self, pages: list[list[Obj] | Exception]) -> None:
        self.pages = pages
        self.gates = [asyncio.Event() for _ in pages]
        self.asked = 0  # pages asked for so far

    def __aiter__(self) -> AsyncIterator[Obj]:
        return self._items()

    async def _items(self) -> AsyncIterator[Obj]:
        for number, page in enumerate(self.pages):
            self.asked = number + 1
            await self.gates[number].wait()
            if isinstance(page, Exception):
                raise page
            for obj in page:
                yield obj


class Client:
    config = SimpleNamespace(cluster=SimpleNamespace(server="https://test"))

    def __init__(self, *listings: PagedListing) -> None:
        self.listings = list(listings)

    def list(self, resource: Any, **kwargs: Any) -> PagedListing:
        return self.listings.pop(0)

    async def watch(self, resource: Any, **kwargs: Any) -> AsyncIterator[tuple[str, Obj]]:
        await asyncio.Event().wait()  # a quiet watch
        yield "MODIFIED", Obj("never")


def test_the_first_lists_events_come_page_by_page_with_the_next_page_asked_for_meanwhile() -> None:
    async def scenario() -> None:
        listing = PagedListing([[Obj("n0"), Obj("n1")], [Obj("n2")]])
        informer = Informer(Client(listing), "nodes", server="https://test")  # type: ignore[arg-type]
        events = informer.events()
        listed = asyncio.create_task(informer.listed())
        listing.gates[0].set()
        first = await anext(events)
        # The first page is handed over before the list is complete, and the second page
        # was asked for before the consumer got the first page's events.
        assert (first.type, first.name) == (EventType.ADDED, "n0")
        assert listing.asked == 2
        assert informer.cache.keys() == {"n0"}
        assert not listed.done()
        second = await anext(events)
        assert second.name == "n1" and not listed.done()
        listing.gates[1].set()
        third = await anext(events)
        assert (third.type, third.name) == (EventType.ADDED, "n2")
        # The list is whole once the consumer asks for more (then it waits on the watch).
        more = asyncio.create_task(anext(events))
        await listed
        more.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await more
        assert informer.cache.keys() == {"n0", "n1", "n2"}
        assert (informer.resource_version, informer.relists) == ("7", 1)
        await events.aclose()

    asyncio.run(scenario())


def test_a_first_list_that_fails_half_way_keeps_what_it_handed_over_and_the_next_one_diffs() -> (
    None
):
    async def scenario() -> None:
        failed = PagedListing([[Obj("n0"), Obj("n1")], httpx2.ReadError("connection reset")])
        again = PagedListing([[Obj("n1", 2), Obj("n2")]])
        for listing in (failed, again):
            for gate in listing.gates:
                gate.set()
        errors: list[str] = []
        informer = Informer(
            Client(failed, again),  # type: ignore[arg-type]
            "nodes",
            server="https://test",
            backoff_initial=0.001,
            on_error=errors.append,
        )
        events = informer.events()
        seen = [(e.type, e.name) for e in [await anext(events) for _ in range(5)]]
        assert seen == [
            (EventType.ADDED, "n0"),
            (EventType.ADDED, "n1"),
            # The second list: n0 went while the first one failed, n1 changed, n2 came.
            (EventType.DELETED, "n0"),
            (EventType.MODIFIED, "n1"),
            (EventType.ADDED, "n2"),
        ]
        assert informer.cache.keys() == {"n1", "n2"}
        assert len(errors) == 1 and "connection reset" in errors[0]
        await informer.listed()
        await events.aclose()

    asyncio.run(scenario())
