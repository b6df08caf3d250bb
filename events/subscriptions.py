"""Live readers of the log: what committed since each one last looked, handed over without gaps.

Both backends publish every committed event here (SQLite from its own writer; PostgreSQL from the
events its LISTEN connection is told of, whoever appended them); `follow` is the reader's side:
the backlog from the log, then live batches, each event once, in log order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import ClassVar

from events.records import StoredEvent

__all__ = ["Subscription", "Subscriptions"]

Reader = Callable[..., Awaitable[list[StoredEvent]]]
"""`read(after=, stream_id=, run_id=, limit=)`: committed events from the log."""


@dataclass(eq=False)
class Subscription:
    """Committed events waiting for one reader; the reader takes all of them at each wake-up.

    One list and one future rather than a queue: the writer hands a commit's events over
    without a task switch per event, and a reader that fell behind gets everything that
    accumulated in one piece (one write to its client). Past `LIMIT` events the reader is
    told it overflowed and catches up from the log instead.
    """

    stream_id: str | None
    run_id: str | None
    events: list[StoredEvent] = field(default_factory=list)
    waiter: asyncio.Future[None] | None = None
    overflowed: bool = False
    ended: bool = False  # the server is shutting down: the reader takes what is left, then stops

    LIMIT: ClassVar[int] = 10_000

    def push(self, event: StoredEvent) -> None:
        if self.overflowed:
            return
        if len(self.events) >= self.LIMIT:
            self.overflowed = True  # the reader falls back to the log and catches up
            self.events.clear()
        else:
            self.events.append(event)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def end(self) -> None:
        self.ended = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self) -> list[StoredEvent]:
        """The events pushed since the last take, waiting for one if there are none."""
        while not self.events and not self.overflowed and not self.ended:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        events, self.events = self.events, []
        return events


class Subscriptions:
    """The live readers of one log, indexed by what they follow."""

    def __init__(self) -> None:
        self._all: set[Subscription] = set()
        self._by_stream: dict[str, set[Subscription]] = {}
        self._by_run: dict[str, set[Subscription]] = {}
        self._ended = False

    def __bool__(self) -> bool:
        return bool(self._all or self._by_stream or self._by_run)

    def publish(self, events: Iterable[StoredEvent]) -> None:
        for event in events:
            for sub in self._all:
                sub.push(event)
            for sub in self._by_stream.get(event.stream_id, ()):
                sub.push(event)
            if event.run_id is not None:
                for sub in self._by_run.get(event.run_id, ()):
                    sub.push(event)

    def end_all(self) -> None:
        self._ended = True
        for subs in (self._all, *self._by_stream.values(), *self._by_run.values()):
            for sub in list(subs):
                sub.end()

    async def follow(
        self, read: Reader, *, after: int = 0, stream_id: str | None = None, run_id: str | None = None
    ) -> AsyncIterator[list[StoredEvent]]:
        """Events after `after` from the log, then live ones as they commit, without gaps.

        The subscription registers before it reads the backlog, so an event committed
        while the backlog is read is seen either there or live; duplicates are dropped by
        sequence.
        """
        sub = Subscription(stream_id=stream_id, run_id=run_id)
        self._register(sub)
        last = after
        try:
            while True:
                if sub.overflowed:
                    sub.overflowed = False
                backlog = await read(after=last, stream_id=stream_id, run_id=run_id, limit=1000)
                if backlog:
                    last = backlog[-1].sequence
                    yield backlog
                if len(backlog) == 1000:
                    continue
                while not sub.overflowed:
                    batch = await sub.take()
                    if not batch and sub.ended:
                        return
                    if batch and batch[0].sequence <= last:
                        batch = [event for event in batch if event.sequence > last]
                    if batch:
                        last = batch[-1].sequence
                        yield batch
        finally:
            self._unregister(sub)

    def _register(self, sub: Subscription) -> None:
        if self._ended:
            sub.ended = True
        if sub.run_id is not None:
            self._by_run.setdefault(sub.run_id, set()).add(sub)
        elif sub.stream_id is not None:
            self._by_stream.setdefault(sub.stream_id, set()).add(sub)
        else:
            self._all.add(sub)

    def _unregister(self, sub: Subscription) -> None:
        if sub.run_id is not None:
            _discard(self._by_run, sub.run_id, sub)
        elif sub.stream_id is not None:
            _discard(self._by_stream, sub.stream_id, sub)
        else:
            self._all.discard(sub)


def _discard(index: dict[str, set[Subscription]], key: str, sub: Subscription) -> None:
    subs = index.get(key)
    if subs is not None:
        subs.discard(sub)
        if not subs:
            del index[key]
