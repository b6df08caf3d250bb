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
from events.leases import Fence, LeaseLost
from events.log import LoadViews, Projector, ViewKey
from events.postgres_leases import PostgresRunLeases
from events.records import DEFAULT_PROJECT, PROJECT, REQUEST_ID, SCHEMA_VERSION, NewEvent, StoredEvent, encode
from events.store import ConcurrencyError, ForeignStream
from events.subscriptions import Subscriptions
from events.writer import PendingAppend, run_writer, void_reason

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

# Each stream's version and project by two lookups in the (stream_id, version) index: an
# aggregate over the stream's rows (MAX with a FILTER) would read every event of every stream
# an append touches, under the log's lock.
_HEADS_OF_STREAMS = (
    "SELECT s.stream_id, "
    "(SELECT MAX(e.version) FROM events e WHERE e.stream_id = s.stream_id) AS version, "
    "(SELECT e.project_id FROM events e WHERE e.stream_id = s.stream_id AND e.version = 1) AS project_id{holder} "
    "FROM unnest($1::text[]) AS s(stream_id)"
)
_STREAM_HEADS = _HEADS_OF_STREAMS.format(holder="")
# The same, and who holds the fenced leases (rows with a holder), read under the log's lock by a
# statement of its own (so with a snapshot taken after the lock): a take-over changes a holder
# under that lock too (events/postgres_leases.py), so it comes wholly before or after an append.
_STREAM_HEADS_AND_HOLDERS = (
    _HEADS_OF_STREAMS.format(holder=", NULL::text AS holder")
    + " UNION ALL SELECT key, NULL, NULL, owner FROM leases WHERE key = ANY($2::text[])"
)

# The log's one lock: positions are handed out under it, so appends commit in sequence order.
_TAKE_POSITIONS = "UPDATE log_head SET head = head + $1 RETURNING head"

_COLUMNS = "sequence, stream_id, version, type, data, created_at, run_id, schema_version, request_id, project_id"

# One statement for all of a transaction's rows (a column array each) and the wake-up of every
# process's tailer, sent at commit.
_INSERT_AND_NOTIFY = (
    f"WITH inserted AS (INSERT INTO events ({_COLUMNS}) "
    "SELECT * FROM unnest($1::bigint[], $2::text[], $3::int[], $4::text[], $5::text[], $6::float8[], "
    "$7::text[], $8::int[], $9::text[], $10::text[])) "
    "SELECT pg_notify($11, $12)"
)


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
        self._notified_head = 0  # the highest commit end any process has announced
        self._head = 0
        self._subscriptions = Subscriptions()

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=self._pool_size, reset=_keep_session)
        async with self._pool.acquire() as conn:
            async with conn.transaction():  # one process creates the schema; the lock ends with it
                await conn.execute("SELECT pg_advisory_xact_lock(7412)")
                await conn.execute(_SCHEMA)
            self._head = self._tail = int(await conn.fetchval("SELECT head FROM log_head"))
            if self.projector is not None:
                await self._catch_up(conn, self.projector)
        self._listener = await asyncpg.connect(self.dsn)
        await self._listener.add_listener(CHANNEL, self._notified)
        # What committed between reading the head and listening was announced to nobody here.
        self._notified_head = max(self._notified_head, int(await self._listener.fetchval("SELECT head FROM log_head")))
        if self._notified_head > self._tail:
            self._wake.set()
        self._writer = asyncio.create_task(self._run_writer(), name="postgres-log-writer")
        self._tailer = asyncio.create_task(self._run_tailer(), name="postgres-log-tailer")

    async def _catch_up(self, conn: Any, projector: Projector) -> None:
        """Fold what the views have not seen (a new data base, a projection added), under the
        head's lock so that no append of any process interleaves."""
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(7412)")
            await postgres_views.prepare_views(conn, projector.fingerprint)
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
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        *,
        expected_version: int | None = None,
        fence: Fence | None = None,
    ) -> list[StoredEvent]:
        if not events:
            return []
        return await self.enqueue(stream_id, events, expected_version=expected_version, fence=fence)

    def enqueue(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        *,
        expected_version: int | None = None,
        fence: Fence | None = None,
        after: asyncio.Future[list[StoredEvent]] | None = None,
    ) -> asyncio.Future[list[StoredEvent]]:
        if self._writer is None:
            raise RuntimeError("event log is not open")
        future: asyncio.Future[list[StoredEvent]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(
            PendingAppend(stream_id, events, expected_version, future, REQUEST_ID.get(), PROJECT.get(), fence, after)
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
        foreign: list[StoredEvent] = []
        started = time.perf_counter()
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                head = int(await conn.fetchval(_TAKE_POSITIONS, total))
                sequence = head - total
                projector = self.projector
                seen = min(self._known, self._tail)
                if sequence > seen:  # other processes appended since: fold them out, and publish them
                    foreign = [
                        _event(row)
                        for row in await conn.fetch(
                            f"SELECT {_COLUMNS} FROM events WHERE sequence > $1 AND sequence <= $2 ORDER BY sequence",
                            seen,
                            sequence,
                        )
                    ]
                    if projector is not None:
                        projector.forget([event for event in foreign if event.sequence > self._known])
                streams = sorted({req.stream_id for req in pending})
                fences = sorted({req.fence.key for req in pending if req.fence is not None})
                if fences:
                    heads = await conn.fetch(_STREAM_HEADS_AND_HOLDERS, streams, fences)
                else:
                    heads = await conn.fetch(_STREAM_HEADS, streams)
                holders: dict[str, str] = {}  # lease key -> owner
                known: dict[str, tuple[int, str | None]] = {}  # stream -> (version, project)
                for row in heads:
                    if fences and row["holder"] is not None:
                        holders[row["stream_id"]] = row["holder"]
                    elif row["version"] is not None:
                        known[row["stream_id"]] = (int(row["version"]), row["project_id"])
                rows: list[tuple[Any, ...]] = []
                for req in pending:
                    if (void := void_reason(req)) is not None:
                        req.future.set_exception(void)
                        continue
                    if req.fence is not None and holders.get(req.fence.key, req.fence.owner) != req.fence.owner:
                        # no lease row is no one else's: released, or not yet claimed (a run
                        # starts before its claim commits); a take-over writes a row first
                        req.future.set_exception(LeaseLost(req.fence, holders[req.fence.key]))
                        continue
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
                            if not projector.stage_known(stored):
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
                    if projector is not None:
                        await postgres_views.write_changes(conn, projector.changes(sequence))
                    await conn.execute(_INSERT_AND_NOTIFY, *zip(*rows, strict=True), CHANNEL, str(sequence))
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
        committed = [event for event in foreign if event.sequence > self._tail]
        committed += [event for _, stored in accepted for event in stored]
        if committed and committed[0].sequence == self._tail + 1:
            # Everything up to this commit's end is in hand (other processes' appends before it
            # were read under the lock): publish now, as SQLite does, and the tailer need not read
            # them (what the shutdown's last commits wrote also reaches readers before they end).
            self._tail = committed[-1].sequence
            self._subscriptions.publish(committed)
        elif committed:  # the tailer published past part of it meanwhile: it reads the rest
            self._notified_head = max(self._notified_head, committed[-1].sequence)
            self._wake.set()

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
        try:
            end = int(payload)
        except ValueError:
            end = self._tail + 1  # not ours to parse: read to be sure
        if end > self._tail:  # not this process's own commit, nor one its commits already read
            self._notified_head = max(self._notified_head, end)
            self._wake.set()

    async def _run_tailer(self) -> None:
        """Hands every committed event, whichever process appended it, to this process's readers."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._notified_head > self._tail:
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


async def _keep_session(conn: Any) -> None:
    """A connection goes back to the pool as it is (asyncpg still rolls back an open transaction):
    nothing here sets session state, so the default reset's round trip would be pure cost."""


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
