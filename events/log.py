"""What an event log is, whatever database keeps it: the interface both backends implement.

`events/store.py` keeps the log in SQLite (the embedded default, one process);
`events/postgres.py` in PostgreSQL, which several server processes can share. The server and
the tests talk to this interface; `tests/test_event_log_contract.py` runs the same checks on
both.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import NamedTuple, Protocol

from events.leases import Fence, RunLeases
from events.records import NewEvent, StoredEvent

__all__ = ["EventLog", "LoadViews", "Projector", "ViewChanges", "ViewKey", "ViewQueries", "ViewQuery", "ViewRow"]

ViewKey = tuple[str, str]
"""(kind, id) of a view."""


class ViewRow(NamedTuple):
    """One view as a store keeps it, whatever the database."""

    kind: str
    id: str
    parent_id: str | None
    run_id: str | None
    ordinal: int  # the sequence of the event that created it: list order
    doc: str  # the object as JSON, exactly as the API returns it
    project_id: str


class ViewChanges(NamedTuple):
    """What one append does to the views, handed to the store to write in the append's transaction."""

    upserts: list[ViewRow]
    deletes: list[ViewKey]
    position: int  # the sequence of the last event these changes reflect


LoadViews = Callable[[list[ViewKey]], Awaitable[Mapping[ViewKey, tuple[str, int, str]]]]
"""The store's read of stored views by key: (doc JSON, ordinal, project) of those that exist."""


class ViewQuery(NamedTuple):
    """One page of a list endpoint: a kind under a parent, ordinals strictly between the bounds."""

    kind: str
    parent_id: str | None
    run_id: str | None
    status: str | None
    project_id: str | None  # None: every project (the server's own read)
    above: int | None
    below: int | None
    ascending: bool
    limit: int


class ViewQueries(Protocol):
    """The reads of the stored views each backend answers in its own dialect (docs as JSON text,
    in list order); projections/views.py's ViewReader builds on them."""

    async def get(self, kind: str, view_id: str) -> tuple[str, str] | None:
        """(doc, project) of one view."""

    async def page(self, query: ViewQuery) -> list[str]: ...

    async def ordinal(self, kind: str, view_id: str, project_id: str | None) -> int | None: ...

    async def select(
        self,
        kind: str,
        project_id: str | None,
        *,
        under: tuple[str | None] | None = None,
        statuses: tuple[str, ...] | None = None,
        id_suffix: str | None = None,
    ) -> list[str]:
        """Every view of a kind, in list order; `under=(parent,)`: only those under that parent
        (None: top-level ones); `statuses`: whose status is one of them; `id_suffix`: whose id
        ends with it."""

    async def total(self, kind: str, field: str, project_id: str | None) -> int:
        """The sum of a numeric top-level field of a kind's views."""


class Projector(Protocol):
    """Folds events into views; the store writes what it folded in the append's own transaction.

    A projector knows no database: it asks the store for the views it needs (`load`) and
    hands back a change set, which each backend writes in its own dialect.
    """

    @property
    def fingerprint(self) -> str:
        """Which views fold which events: when it changes, the store refolds the views."""

    def handles(self, event_type: str) -> bool:
        """Whether any view folds this event type (appends of other types skip `stage`)."""

    async def stage(self, events: Sequence[StoredEvent], load: LoadViews) -> None:
        """Fold one append's events into the pending change set; raise to reject the append."""

    def stage_known(self, events: Sequence[StoredEvent]) -> bool:
        """`stage` without loading: False (nothing staged) when a view must be loaded first."""

    def changes(self, position: int) -> ViewChanges:
        """The pending change set, to write with the append."""

    def commit(self) -> None:
        """The transaction committed: pending changes become the known state."""

    def rollback(self) -> None:
        """The transaction failed: forget pending changes and anything cached from them."""

    def forget(self, events: Sequence[StoredEvent]) -> None:
        """Events another process committed (a shared log): what is cached of their views is stale."""


class EventLog(Protocol):
    @property
    def head(self) -> int:
        """Sequence of the last committed event this process knows of (0: an empty log)."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        *,
        expected_version: int | None = None,
        fence: Fence | None = None,
    ) -> list[StoredEvent]:
        """Append to one stream atomically, once committed; `expected_version` is the stream
        version the caller decided on (0: a new stream), else `ConcurrencyError`; `fence`, a
        lease another process must not hold, else `LeaseLost` (a log one process owns has
        nobody to take a lease, and ignores it)."""

    def enqueue(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        *,
        expected_version: int | None = None,
        fence: Fence | None = None,
        after: asyncio.Future[list[StoredEvent]] | None = None,
    ) -> asyncio.Future[list[StoredEvent]]:
        """`append` without waiting: appends are committed in the order they are enqueued. With
        `after` (an earlier append's future), it commits only if that one does; else its future
        fails with AppendVoided."""

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

    def view_queries(self) -> ViewQueries:
        """The reads of the views, on this log's own connections (once open)."""

    @property
    def exclusive(self) -> bool:
        """This process is the log's only writer: what its projector holds of the committed views
        is the truth (False for a shared log, whose views other processes change at any moment)."""

    def run_leases(self, ttl_s: float) -> RunLeases:
        """Who answers for each run that has not ended, kept where this log is (once open)."""
