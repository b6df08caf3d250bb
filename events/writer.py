"""Group commit, for both backends: one writer task takes every append that queued while the
last transaction committed and commits them together (one fsync for many appends)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from events.leases import Fence
from events.records import NewEvent, StoredEvent

__all__ = ["AppendVoided", "PendingAppend", "run_writer", "void_reason"]


class AppendVoided(Exception):
    """An append made on condition that an earlier one commits (`after`), which failed: nothing
    of it was written. So a producer need not wait for one append before it enqueues the next."""


@dataclass(eq=False)
class PendingAppend:
    stream_id: str
    events: Sequence[NewEvent]
    expected_version: int | None
    future: asyncio.Future[list[StoredEvent]]
    request_id: str | None = None
    project_id: str | None = None  # None: the server's own append, in the stream's project
    fence: Fence | None = None
    after: asyncio.Future[list[StoredEvent]] | None = None  # commit only if this earlier append does


def void_reason(req: PendingAppend) -> AppendVoided | None:
    """Why `req` must not commit: the append it was made after failed. An `after` still pending
    is in the same transaction (appends commit in the order they were enqueued), so both
    commit or neither."""
    after = req.after
    if after is None or not after.done():
        return None
    if after.cancelled():
        return AppendVoided("an earlier append it was made after was withdrawn")
    error = after.exception()
    return None if error is None else AppendVoided(f"an earlier append it was made after failed: {error}")


async def run_writer(
    queue: asyncio.Queue[PendingAppend | None],
    commit: Callable[[list[PendingAppend]], Awaitable[None]],
    max_batch: int,
) -> None:
    """Until a None is queued: commit what has queued, up to `max_batch` appends at a time.

    An append made `after` one that is neither settled nor in the same batch (it was not this
    log's, or not enqueued first) waits outside the queue until that one settles."""
    stopping = False
    waiting: set[PendingAppend] = set()

    def wait_for_after(req: PendingAppend, after: asyncio.Future[list[StoredEvent]]) -> None:
        waiting.add(req)

        def settled(_: object) -> None:
            waiting.discard(req)
            if not stopping:
                queue.put_nowait(req)

        after.add_done_callback(settled)

    try:
        while not stopping:
            first = await queue.get()
            if first is None:
                break
            taken = [first]
            while len(taken) < max_batch:
                try:
                    nxt = queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if nxt is None:
                    stopping = True
                    break
                taken.append(nxt)
            batch: list[PendingAppend] = []
            in_batch: set[asyncio.Future[list[StoredEvent]]] = set()
            for req in taken:
                after = req.after
                if after is not None and not after.done() and after not in in_batch:
                    wait_for_after(req, after)
                    continue
                batch.append(req)
                in_batch.add(req.future)
            if not batch:
                continue
            try:
                await commit(batch)
            except Exception as exc:  # never let one bad batch kill the writer
                for req in batch:
                    if not req.future.done():
                        req.future.set_exception(exc)
    finally:
        stopping = True
        for req in waiting:
            if not req.future.done():
                req.future.set_exception(AppendVoided("the log closed before the append it was made after settled"))
