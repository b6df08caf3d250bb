"""What an event log is, whatever database keeps it: the interface both backends implement.

`events/store.py` keeps the log in SQLite (the embedded default, one process);
`events/postgres.py` in PostgreSQL, which several server processes can share. The server and
the tests talk to this interface; `tests/test_event_log_contract.py` runs the same checks on
both.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from events.records import NewEvent, StoredEvent

__all__ = ["EventLog"]


class EventLog(Protocol):
    @property
    def head(self) -> int:
        """Sequence of the last committed event this process knows of (0: an empty log)."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def append(
        self, stream_id: str, events: Sequence[NewEvent], *, expected_version: int | None = None
    ) -> list[StoredEvent]:
        """Append to one stream atomically, once committed; `expected_version` is the stream
        version the caller decided on (0: a new stream), else `ConcurrencyError`."""

    def enqueue(
        self, stream_id: str, events: Sequence[NewEvent], *, expected_version: int | None = None
    ) -> asyncio.Future[list[StoredEvent]]:
        """`append` without waiting: appends are committed in the order they are enqueued."""

    async def stream_version(self, stream_id: str) -> int: ...

    async def read(
        self, *, after: int = 0, stream_id: str | None = None, run_id: str | None = None, limit: int = 1000
    ) -> list[StoredEvent]:
        """Committed events with sequence > `after`, in log order, optionally of one stream or run."""

    def subscribe_batches(
        self, *, after: int = 0, stream_id: str | None = None, run_id: str | None = None
    ) -> AsyncIterator[list[StoredEvent]]:
        """Events after `after`, then live ones as they commit (from any process), without gaps."""

    def end_subscriptions(self) -> None:
        """Shutting down: live readers get what has committed, then their subscriptions end."""

    async def probe_write(self) -> None:
        """Raises if the log cannot take writes now."""
