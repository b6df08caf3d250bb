"""The event log in PostgreSQL: shared by several server processes, in one global order readers can trust.

**Order.** A sequence handed out before commit (a PostgreSQL SEQUENCE) can commit after a later
one, and a reader tailing "events after N" would then skip it for good. Here the position is
taken inside the append's transaction from a one-row counter (`UPDATE log_head ... RETURNING`),
whose row lock is held until commit: the next append, from this process or another, waits for
it, so appends commit in sequence order and the committed log is always a prefix. A reader
that has seen N never misses N+1.

**Fan-out.** Every append sends `NOTIFY threadlog_events` in its transaction (delivered at
commit, in commit order). Each process LISTENs on a connection of its own and, on a
notification, reads the events after the last one it handed out and publishes them to its
subscribers: the notification is only the wake-up, the read by sequence is the truth.

**Group commit.** One writer task per process takes what has queued and commits it in one
transaction; each append's expected version is checked inside it (the stream's version read
under the counter lock cannot move).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import asyncpg

from events import postgres_views
from events.log import LoadViews, Projector, ViewKey
from events.postgres_leases import PostgresRunLeases
from events.records import DEFAULT_PROJECT, PROJECT, REQUEST_ID, SCHEMA_VERSION, NewEvent, StoredEvent, encode
from events.store import ConcurrencyError, ForeignStream
from events.subscriptions import Subscriptions
from events.writer import PendingAppend, run_writer

__all__ = ["CHANNEL", "PostgresEventLog"]

CHANNEL = "threadlog_events"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    sequence       BIGINT PRIMARY KEY,     -- global order; taken under log_head's row lock
    stream_id      TEXT NOT NULL,
    version        INTEGER NOT NULL,
    type           TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    data           TEXT NOT NULL,          -- the JSON exactly as sent to clients (not jsonb: bytes kept)
    created_at     DOUBLE PRECISION NOT NULL,
    run_id         TEXT,
    request_id     TEXT,
    project_id     TEXT,
    UNIQUE (stream_id, version)
);
CREATE INDEX IF NOT EXISTS events_run ON events (run_id, sequence) WHERE run_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS log_head (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    head     BIGINT NOT NULL
);
INSERT INTO log_head (only_row, head) VALUES (TRUE, 0) ON CONFLICT DO NOTHING;
"""

_COLUMNS = "sequence, stream_id, version, type, data, created_at, run_id, schema_version, request_id, project_id"


class PostgresEventLog:
    """implements events.log.EventLog over a PostgreSQL database (`dsn`: postgresql://...)."""

    def __init__(
        self,
        dsn: str,
        *,
        projector: Projector | None = None,
        max_batch: int = 2048,
        pool_size: int = 4,
        on_commit: Callable[[int, float], None] | None = None,
    ) -> None:
        """`on_commit(events, seconds)` is told of each committed transaction (for metrics)."""
        self.dsn = dsn
        self._on_commit = on_commit
        self.projector = projector
        self._known = 0  # the last sequence the projector has seen (its cache is good up to here)
        self._max_batch = max_batch
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._queue: asyncio.Queue[PendingAppend | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._tailer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._tail = 0  # the last sequence handed to this process's subscribers
        self._head = 0
        self._subscriptions = Subscriptions()

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=self._pool_size)
        async with self._pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock(7412)")  # one process creates the schema
            try:
                await conn.execute(_SCHEMA)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(7412)")
            self._head = self._tail = int(await conn.fetchval("SELECT head FROM log_head"))
            if self.projector is not None:
                await self._catch_up(conn, self.projector)
        self._listener = await asyncpg.connect(self.dsn)
        await self._listener.add_listener(CHANNEL, self._notified)
        self._writer = asyncio.create_task(self._run_writer(), name="postgres-log-writer")
        self._tailer = asyncio.create_task(self._run_tailer(), name="postgres-log-tailer")

    async def _catch_up(self, conn: Any, projector: Projector) -> None:
        """Fold what the views have not seen (a new data base, a projection added), under the
        head's lock so that no append of any process interleaves."""
        await conn.execute("SELECT pg_advisory_lock(7412)")
        try:
            await postgres_views.prepare_views(conn, projector.fingerprint)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(7412)")
        while True:
            async with conn.transaction():
                head = int(await conn.fetchval("SELECT head FROM log_head FOR UPDATE"))
                position = await postgres_views.read_position(conn)
                if position >= head:
                    self._known = head
                    return
                rows = await conn.fetch(
                    f"SELECT {_COLUMNS} FROM events WHERE sequence > $1 ORDER BY sequence LIMIT 10000", position
                )
                events = [_event(row) for row in rows]
                try:
                    await projector.stage(events, _loader(conn))
                    await postgres_views.write_changes(conn, projector.changes(events[-1].sequence))
                except BaseException:
                    projector.rollback()
                    raise
            projector.commit()

    async def close(self) -> None:
        if self._writer is not None:
            await self._queue.put(None)
            await self._writer
            self._writer = None
        if self._tailer is not None:
            self._tailer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tailer
            self._tailer = None
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def head(self) -> int:
        return max(self._head, self._tail)

    @property
    def exclusive(self) -> bool:
        return False  # other server processes append to the same database

    def run_leases(self, ttl_s: float) -> PostgresRunLeases:
        assert self._pool is not None, "event log is not open"
        return PostgresRunLeases(self._pool, self.dsn, ttl_s)

    def view_queries(self) -> postgres_views.PostgresViewQueries:
        assert self._pool is not None, "event log is not open"
        return postgres_views.PostgresViewQueries(self._pool)

    # -- writing ---------------------------------------------------------------------------

    async def append(
        self, stream_id: str, events: Sequence[NewEvent], *, expected_version: int | None = None
    ) -> list[StoredEvent]:
        if not events:
            return []
        return await self.enqueue(stream_id, events, expected_version=expected_version)

    def enqueue(
        self, stream_id: str, events: Sequence[NewEvent], *, expected_version: int | None = None
    ) -> asyncio.Future[list[StoredEvent]]:
        if self._writer is None:
            raise RuntimeError("event log is not open")
        future: asyncio.Future[list[StoredEvent]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(
            PendingAppend(stream_id, events, expected_version, future, REQUEST_ID.get(), PROJECT.get())
        )
        return future

    async def probe_write(self) -> None:
        assert self._pool is not None
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT head FROM log_head FOR UPDATE NOWAIT")

    async def stream_version(self, stream_id: str) -> int:
        assert self._pool is not None
        return int(
            await self._pool.fetchval("SELECT COALESCE(MAX(version), 0) FROM events WHERE stream_id = $1", stream_id)
        )

    async def _run_writer(self) -> None:
        await run_writer(self._queue, lambda batch: self._commit(batch, isolate=True), self._max_batch)

    async def _commit(self, batch: list[PendingAppend], *, isolate: bool) -> None:
        """Commit the batch's appends in one transaction; if it fails, each on its own."""
        pending = [req for req in batch if not req.future.done()]
        if not pending:
            return
        assert self._pool is not None
        now = round(time.time(), 3)
        total = sum(len(req.events) for req in pending)
        accepted: list[tuple[PendingAppend, list[StoredEvent]]] = []
        started = time.perf_counter()
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                head = int(await conn.fetchval("UPDATE log_head SET head = head + $1 RETURNING head", total))
                sequence = head - total
                projector = self.projector
                if projector is not None and sequence > self._known:  # other processes appended since
                    foreign = await conn.fetch(
                        f"SELECT {_COLUMNS} FROM events WHERE sequence > $1 AND sequence <= $2", self._known, sequence
                    )
                    projector.forget([_event(row) for row in foreign])
                streams = sorted({req.stream_id for req in pending})
                known = {
                    row["stream_id"]: (int(row["version"]), row["project_id"])
                    for row in await conn.fetch(
                        "SELECT stream_id, MAX(version) AS version, "
                        "MAX(project_id) FILTER (WHERE version = 1) AS project_id "
                        "FROM events WHERE stream_id = ANY($1::text[]) GROUP BY stream_id",
                        streams,
                    )
                }
                rows: list[tuple[Any, ...]] = []
                for req in pending:
                    current, project = known.get(req.stream_id, (0, None))
                    if req.expected_version is not None and req.expected_version != current:
                        req.future.set_exception(ConcurrencyError(req.stream_id, req.expected_version, current))
                        continue
                    if current > 0:
                        project = project or DEFAULT_PROJECT
                        if req.project_id is not None and req.project_id != project:
                            req.future.set_exception(ForeignStream(req.stream_id, req.project_id, project))
                            continue
                    else:
                        project = req.project_id or DEFAULT_PROJECT
                    stored = []
                    for i, event in enumerate(req.events, start=1):
                        data_json = encode(event.data)
                        stored.append(
                            StoredEvent(sequence + i, req.stream_id, current + i, event.type, data_json, now,
                                        event.run_id, SCHEMA_VERSION, event.data, req.request_id, project)
                        )  # fmt: skip
                    if projector is not None and any(projector.handles(e.type) for e in stored):
                        try:
                            await projector.stage(stored, _loader(conn))
                        except Exception as exc:
                            req.future.set_exception(exc)
                            continue
                    rows += [
                        (e.sequence, e.stream_id, e.version, e.type, e.data_json, now, e.run_id, SCHEMA_VERSION,
                         req.request_id, project)
                        for e in stored
                    ]  # fmt: skip
                    sequence += len(stored)
                    known[req.stream_id] = (current + len(stored), project)
                    accepted.append((req, stored))
                if sequence != head:  # refused appends give their positions back: no holes in the order
                    await conn.execute("UPDATE log_head SET head = $1", sequence)
                if rows:
                    await conn.executemany(
                        f"INSERT INTO events ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)", rows
                    )
                    if projector is not None:
                        await postgres_views.write_changes(conn, projector.changes(sequence))
                    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(sequence))
        except Exception as exc:
            if self.projector is not None:
                self.projector.rollback()
            if isolate and len(accepted) > 1:
                for req, _ in accepted:
                    with contextlib.suppress(Exception):
                        await self._commit([req], isolate=False)
                return
            for req, _ in accepted:
                if not req.future.done():
                    req.future.set_exception(exc)
            return
        self._known = max(self._known, sequence)
        if self.projector is not None:
            self.projector.commit()
        if self._on_commit is not None and accepted:
            self._on_commit(sum(len(stored) for _, stored in accepted), time.perf_counter() - started)
        if accepted:
            self._head = max(self._head, accepted[-1][1][-1].sequence)
        for req, stored in accepted:
            if not req.future.done():
                req.future.set_result(stored)
        committed = [event for _, stored in accepted for event in stored]
        if committed and committed[0].sequence == self._tail + 1:
            # Nothing before this commit is unpublished: hand it over now, as SQLite does (and so
            # what the shutdown's last commits wrote reaches the readers before they are ended).
            self._tail = committed[-1].sequence
            self._subscriptions.publish(committed)
        elif committed:
            self._wake.set()  # another process committed before: the tailer reads both, in order

    # -- reading ---------------------------------------------------------------------------

    async def read(
        self, *, after: int = 0, stream_id: str | None = None, run_id: str | None = None, limit: int = 1000
    ) -> list[StoredEvent]:
        assert self._pool is not None
        if run_id is not None:
            sql = f"SELECT {_COLUMNS} FROM events WHERE run_id = $1 AND sequence > $2 ORDER BY sequence LIMIT $3"
            args: tuple[Any, ...] = (run_id, after, limit)
        elif stream_id is not None:
            sql = f"SELECT {_COLUMNS} FROM events WHERE stream_id = $1 AND sequence > $2 ORDER BY version LIMIT $3"
            args = (stream_id, after, limit)
        else:
            sql = f"SELECT {_COLUMNS} FROM events WHERE sequence > $1 ORDER BY sequence LIMIT $2"
            args = (after, limit)
        return [_event(row) for row in await self._pool.fetch(sql, *args)]

    def subscribe_batches(
        self, *, after: int = 0, stream_id: str | None = None, run_id: str | None = None
    ) -> AsyncIterator[list[StoredEvent]]:
        return self._subscriptions.follow(self.read, after=after, stream_id=stream_id, run_id=run_id)

    def end_subscriptions(self) -> None:
        self._subscriptions.end_all()

    def _notified(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        self._wake.set()

    async def _run_tailer(self) -> None:
        """Hands every committed event, whichever process appended it, to this process's readers."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                try:
                    events = await self.read(after=self._tail, limit=10_000)
                except (asyncpg.PostgresError, OSError):
                    await asyncio.sleep(0.1)  # the next wake-up (or this retry) reads it
                    self._wake.set()
                    break
                fresh = [event for event in events if event.sequence > self._tail]  # not published meanwhile
                if fresh:
                    self._tail = fresh[-1].sequence
                    self._subscriptions.publish(fresh)
                if len(events) < 10_000:
                    break


def _loader(conn: Any) -> LoadViews:
    async def load(keys: list[ViewKey]) -> Any:
        return await postgres_views.load_views(conn, keys)

    return load


def _event(row: Any) -> StoredEvent:
    return StoredEvent(
        sequence=int(row["sequence"]),
        stream_id=row["stream_id"],
        version=int(row["version"]),
        type=row["type"],
        data_json=row["data"],
        created_at=float(row["created_at"]),
        run_id=row["run_id"],
        schema_version=int(row["schema_version"]),
        request_id=row["request_id"],
        project_id=row["project_id"] or DEFAULT_PROJECT,
    )
