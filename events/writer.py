"""Group commit, for both backends: one writer task takes every append that queued while the
last transaction committed and commits them together (one fsync for many appends)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from events.leases import Fence
from events.records import NewEvent, StoredEvent

__all__ = ["PendingAppend", "run_writer"]


@dataclass(eq=False)
class PendingAppend:
    stream_id: str
    events: Sequence[NewEvent]
    expected_version: int | None
    future: asyncio.Future[list[StoredEvent]]
    request_id: str | None = None
    project_id: str | None = None  # None: the server's own append, in the stream's project
    fence: Fence | None = None


async def run_writer(
    queue: asyncio.Queue[PendingAppend | None],
    commit: Callable[[list[PendingAppend]], Awaitable[None]],
    max_batch: int,
) -> None:
    """Until a None is queued: commit what has queued, up to `max_batch` appends at a time."""
    stopping = False
    while not stopping:
        first = await queue.get()
        if first is None:
            break
        batch = [first]
        while len(batch) < max_batch:
            try:
                nxt = queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            if nxt is None:
                stopping = True
                break
            batch.append(nxt)
        try:
            await commit(batch)
        except Exception as exc:  # never let one bad batch kill the writer
            for req in batch:
                if not req.future.done():
                    req.future.set_exception(exc)
