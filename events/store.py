"""The event store: an append-only log in SQLite with group commit and live subscriptions.

One writer task owns every write. Appends queue up while a transaction is being
committed and then share the next one (group commit), so throughput does not collapse to
one fsync per event. Each append checks its stream's expected version (optimistic
concurrency) against the writer's own record of stream heads, which is authoritative
because no one else writes. A projector, if given, folds the events into its views inside
the same transaction, so a view is never behind an acknowledged event.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path

import aiosqlite

from events.leases import Fence, LocalRunLeases
from events.log import LoadViews, Projector, ViewKey
from events.records import (
    DEFAULT_PROJECT,
    DELTA_TYPES,
    PROJECT,
    REQUEST_ID,
    RUN_END_TYPES,
    SCHEMA_VERSION,
    NewEvent,
    StoredEvent,
    encode,
)
from events.sqlite_views import (
    SqliteViewQueries,
    Statement,
    change_statements,
    load_views,
    prepare_views,
    read_position,
)
from events.subscriptions import Subscriptions
from events.writer import PendingAppend, run_writer, void_reason

__all__ = [
    "EVENT_COLUMNS",
    "NOT_A_DELTA",
    "SYNCHRONOUS_MODES",
    "ConcurrencyError",
    "EventStore",
    "ForeignStream",
    "row_to_event",
    "sql_strings",
]

CHECKPOINT_INTERVAL_S = 0.25
"""At most this often, a checkpoint moves committed WAL frames into the database file."""

SYNCHRONOUS_MODES = ("NORMAL", "FULL")
"""WAL + NORMAL survives a crash of the process (kill -9); FULL also survives power loss."""


def sql_strings(values: Iterable[str]) -> str:
    """Constant strings as an SQL list's items: `'a', 'b'` (event types, which hold no quote)."""
    return ", ".join(f"'{value}'" for value in values)


NOT_A_DELTA = f"type NOT IN ({sql_strings(DELTA_TYPES)})"
"""The condition of the index of runs' marks, spelled as the index spells it: SQLite uses a
partial index only for a query whose WHERE contains that very term."""

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS events (
    sequence       INTEGER PRIMARY KEY,  -- global order of the log; also SQLite's rowid
    stream_id      TEXT    NOT NULL,     -- thread, assistant, file or vector store id
    version        INTEGER NOT NULL,     -- position within the stream, from 1
    type           TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    data           TEXT    NOT NULL,     -- JSON payload exactly as sent to clients
    created_at     REAL    NOT NULL,     -- unix seconds, ms precision
    run_id         TEXT,
    request_id     TEXT,                 -- x-request-id of the API request that appended it
    project_id     TEXT                  -- the stream's project; NULL: written before projects (the default)
);
-- Optimistic concurrency backstop and "read one stream in order" (rowid rides along).
CREATE UNIQUE INDEX IF NOT EXISTS events_stream_version ON events (stream_id, version);
-- A run's events other than its deltas (its "marks": created, each snapshot, its end): where
-- in its stream the run starts and ends, so "the run's events after N" is a range of the index
-- above. Deltas stay out: an index entry per delta dirtied a page per delta in every commit
-- (runs' keys are far apart), ~40 % of a streamed token's database time.
DROP INDEX IF EXISTS events_run;
CREATE INDEX IF NOT EXISTS events_run_marks ON events (run_id, sequence)
    WHERE run_id IS NOT NULL AND {NOT_A_DELTA};
"""

_RUN_SPAN = f"""
    SELECT stream_id, MIN(version) AS first,
           CASE WHEN SUM(type IN ({sql_strings(sorted(RUN_END_TYPES))})) > 0
                THEN MAX(version) ELSE {1 << 62} END AS last
    FROM events WHERE run_id = :run AND {NOT_A_DELTA} GROUP BY stream_id
"""
"""Where a run's events lie in each stream it wrote: from its first mark to its last once it has
ended (no delta follows a run's end; later marks, a metadata update, are in the index), else
to the stream's end."""

EVENT_COLUMNS = "sequence, stream_id, version, type, data, created_at, run_id, schema_version, request_id, project_id"
_INSERT = (
    "INSERT INTO events (sequence, stream_id, version, type, data, created_at, run_id, "
    "schema_version, request_id, project_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class ConcurrencyError(Exception):
    """The stream moved on since the caller read it; re-read and decide again."""

    def __init__(self, stream_id: str, expected: int, actual: int) -> None:
        super().__init__(f"stream {stream_id} is at version {actual}, expected {expected}")
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual


class ForeignStream(LookupError):
    """An append, made on behalf of one project, to a stream of another.

    The views hide other projects' objects, so a request never gets this far; the store
    refuses anyway, so no code path can write across projects.
    """

    def __init__(self, stream_id: str, project_id: str, stream_project: str) -> None:
        super().__init__(f"stream {stream_id} belongs to project {stream_project}, not {project_id}")
        self.stream_id = stream_id


async def run_transaction(conn: aiosqlite.Connection, statements: Sequence[Statement]) -> None:
    """Run the statements in one IMMEDIATE transaction, committed or rolled back as a whole.

    The whole transaction is one call into aiosqlite's database thread instead of a hop per
    statement: each hop costs a thread handoff and an event-loop wake-up (~40 us here), and
    an append is acknowledged only after its commit, so hops add straight to every append's
    latency. aiosqlite has no public call for "run this function in your thread"; where its
    private `_execute` is missing, the statements go one hop each.
    """
    in_thread = getattr(conn, "_execute", None)
    if in_thread is not None:
        await in_thread(_transaction, conn, statements)
        return
    await conn.execute("BEGIN IMMEDIATE")  # pragma: no cover - other aiosqlite versions
    try:
        for sql, rows in statements:
            await conn.executemany(sql, rows)
        await conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            await conn.execute("ROLLBACK")
        raise


def _transaction(conn: aiosqlite.Connection, statements: Sequence[Statement]) -> None:
    db = conn._conn  # in aiosqlite's thread: the sqlite3 connection it owns
    db.execute("BEGIN IMMEDIATE")
    try:
        for sql, rows in statements:
            _execute_rows(db, sql, rows)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


_ROW_PLACEHOLDERS = re.compile(r"\bVALUES\s*(\([?,\s]+\))")
_MAX_ROWS_PER_STATEMENT = 256


def _execute_rows(db: sqlite3.Connection, sql: str, rows: Sequence[Sequence[object]]) -> None:
    """Run `sql` for each row; an INSERT goes as multi-row VALUES statements, not row by row.

    `executemany` steps the statement once per row, and each step gives up the GIL and has
    to win it back from the busy event loop (up to the 5 ms switch interval each time): with
    500 streaming runs, commit p99 went from 21.9 to 14.5 ms with this. One statement for up
    to 256 rows binds them all at once and steps once. The chunk sizes are powers of two, so
    a handful of statement texts stay in sqlite3's statement cache.
    """
    match = _ROW_PLACEHOLDERS.search(sql) if sql.startswith("INSERT") else None
    if match is None or len(rows) < 2:
        db.executemany(sql, rows)
        return
    head, group, tail = sql[: match.start(1)], match.group(1), sql[match.end(1) :]
    at = 0
    while at < len(rows):
        size = min(_MAX_ROWS_PER_STATEMENT, 1 << ((len(rows) - at).bit_length() - 1))
        chunk = rows[at : at + size]
        db.execute(head + ",".join([group] * size) + tail, [value for row in chunk for value in row])
        at += size


class EventStore:
    """The log. `open()` before use, `close()` after; one instance per process."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = "NORMAL",
        projector: Projector | None = None,
        max_batch: int = 2048,
        on_commit: Callable[[int, float], None] | None = None,
    ) -> None:
        """`on_commit(events, seconds)` is told of each committed transaction (for metrics)."""
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}, not {synchronous!r}")
        self.path = path
        self.synchronous = synchronous
        self.projector = projector
        self._max_batch = max_batch
        self._on_commit = on_commit
        self._writer_conn: aiosqlite.Connection | None = None
        self._reader_conn: aiosqlite.Connection | None = None
        self._queue: asyncio.Queue[PendingAppend | None] = asyncio.Queue()
        self._writer_task: asyncio.Task[None] | None = None
        self._checkpoint_conn: aiosqlite.Connection | None = None
        self._checkpoint_task: asyncio.Task[None] | None = None
        self._wal_grew = asyncio.Event()
        self._versions: dict[str, int] = {}
        self._projects: dict[str, str] = {}  # stream -> project, for streams seen since open
        self._head = 0
        self._subscriptions = Subscriptions()

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer_conn = await open_connection(self.path, self.synchronous)
        # Commits never checkpoint (see `_run_checkpointer`); the WAL file shrinks back after one.
        await self._writer_conn.execute("PRAGMA wal_autocheckpoint=0")
        await self._writer_conn.execute(f"PRAGMA journal_size_limit={64 * 1024 * 1024}")
        await self._writer_conn.executescript(_SCHEMA)
        await _add_missing_columns(self._writer_conn)
        self._reader_conn = await open_connection(self.path, self.synchronous)
        rows = list(await self._writer_conn.execute_fetchall("SELECT COALESCE(MAX(sequence), 0) FROM events"))
        row = rows[0] if rows else None
        self._head = int(row[0]) if row else 0
        if self.projector is not None:
            await prepare_views(self._writer_conn, self.projector.fingerprint)
            await self._catch_up(self.projector)
        self._writer_task = asyncio.create_task(self._run_writer(), name="event-store-writer")
        self._checkpoint_conn = await open_connection(self.path, self.synchronous)
        self._checkpoint_task = asyncio.create_task(self._run_checkpointer(), name="event-store-checkpointer")

    async def _catch_up(self, projector: Projector) -> None:
        """Fold events the views have not seen (a projection added or rebuilt since)."""
        conn = self._writer_conn
        assert conn is not None
        position = await read_position(conn)
        load = self._loader(conn)
        while position < self._head:
            events = await self.read(after=position, limit=10_000, conn=conn)
            try:
                await projector.stage(events, load)
                position = events[-1].sequence
                await run_transaction(conn, change_statements(projector.changes(position)))
            except BaseException:
                projector.rollback()
                raise
            projector.commit()

    async def close(self) -> None:
        if self._writer_task is not None:
            await self._queue.put(None)
            await self._writer_task
            self._writer_task = None
        if self._checkpoint_task is not None:
            self._checkpoint_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoint_task
            self._checkpoint_task = None
        for conn in (self._reader_conn, self._checkpoint_conn, self._writer_conn):
            if conn is not None:
                await conn.close()  # the last one to close checkpoints the whole WAL
        self._reader_conn = self._checkpoint_conn = self._writer_conn = None

    async def _run_checkpointer(self) -> None:
        """Checkpoint the WAL beside the writer rather than inside one of its commits.

        SQLite's automatic checkpoint runs in whichever commit takes the WAL past 1,000
        pages, and copies pages into the database file and syncs it there, while every
        run's events wait for that commit. A PASSIVE checkpoint on a connection of its own
        takes no lock a writer needs; it copies the frames no reader still uses, and the
        next commit restarts the WAL from its beginning once all of it has been copied.
        """
        conn = self._checkpoint_conn
        assert conn is not None
        while True:
            await self._wal_grew.wait()
            self._wal_grew.clear()
            with contextlib.suppress(aiosqlite.Error):  # busy or the like: the next one copies what is left
                await conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            await asyncio.sleep(CHECKPOINT_INTERVAL_S)  # rate limit: each checkpoint syncs the file

    @property
    def head(self) -> int:
        """Sequence of the last committed event (0 for an empty log)."""
        return self._head

    @property
    def exclusive(self) -> bool:
        return True  # one process: the data dir's lock keeps others out

    def run_leases(self, ttl_s: float) -> LocalRunLeases:
        return LocalRunLeases(ttl_s)

    def view_queries(self) -> SqliteViewQueries:
        """The views' reads, on the reader connection."""
        return SqliteViewQueries(self.reader)

    @property
    def reader(self) -> aiosqlite.Connection:
        """A connection for reads; WAL lets it run beside the writer's transactions."""
        assert self._reader_conn is not None, "store is not open"
        return self._reader_conn

    # -- writing ---------------------------------------------------------------------------

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        *,
        expected_version: int | None = None,
        fence: Fence | None = None,
    ) -> list[StoredEvent]:
        """Append events to one stream atomically; returns them once committed.

        `expected_version` is the stream version the caller based its decision on (0 for
        a new stream); None appends at the head whatever it is. `fence` is ignored: this
        process owns the log, so no other can hold a lease on it.
        """
        if not events:
            return []
        return await self.enqueue(stream_id, events, expected_version=expected_version)

    def enqueue(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        *,
        expected_version: int | None = None,
        fence: Fence | None = None,
        after: asyncio.Future[list[StoredEvent]] | None = None,
    ) -> asyncio.Future[list[StoredEvent]]:
        """`append` without waiting: the future resolves when the events are committed.

        Appends are committed in the order they are enqueued, so a producer can keep one
        append in flight and enqueue the next from the future's callback, with no task
        of its own. Cancelling the future withdraws the append if it is not committed yet.
        """
        if self._writer_task is None:
            raise RuntimeError("event store is not open")
        future: asyncio.Future[list[StoredEvent]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(
            PendingAppend(stream_id, events, expected_version, future, REQUEST_ID.get(), PROJECT.get(), after=after)
        )
        return future

    async def probe_write(self) -> None:
        """A write transaction through the writer with no events (it rewrites the views'
        position): raises if the log cannot take writes now."""
        if self._writer_task is None or self._writer_task.done():
            raise RuntimeError("the event store's writer is not running")
        future: asyncio.Future[list[StoredEvent]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(PendingAppend("", (), None, future))
        await future

    async def stream_version(self, stream_id: str) -> int:
        """The stream's committed version: what to pass as `expected_version`."""
        cached = self._versions.get(stream_id)
        if cached is not None:
            return cached
        rows = list(
            await self.reader.execute_fetchall(
                "SELECT COALESCE(MAX(version), 0) FROM events WHERE stream_id = ?", (stream_id,)
            )
        )
        row = rows[0] if rows else None
        return int(row[0]) if row else 0

    async def _read_stream_project(self, conn: aiosqlite.Connection, stream_id: str) -> str | None:
        rows = list(
            await conn.execute_fetchall(
                "SELECT COALESCE(project_id, ?) FROM events WHERE stream_id = ? AND version = 1",
                (DEFAULT_PROJECT, stream_id),
            )
        )
        if not rows:
            return None
        project = str(rows[0][0])
        self._projects[stream_id] = project
        return project

    async def _run_writer(self) -> None:
        await run_writer(self._queue, lambda batch: self._commit_batch(batch), self._max_batch)

    async def _commit_batch(self, batch: list[PendingAppend]) -> None:
        await self._commit_group(batch, isolate=True)

    async def _commit_group(self, batch: list[PendingAppend], *, isolate: bool) -> None:
        """Commit the appends of `batch` in one transaction.

        If the transaction fails (an event SQLite cannot store, a view that cannot be
        written), each append is committed again in a transaction of its own, so that one
        client's bad append fails alone and the others in its batch still commit.
        """
        conn = self._writer_conn
        assert conn is not None
        now = round(time.time(), 3)
        sequence = self._head
        pending: dict[str, int] = {}
        accepted: list[tuple[PendingAppend, list[StoredEvent]]] = []
        rows: list[tuple[object, ...]] = []
        projector = self.projector
        handles = projector.handles if projector is not None else None
        versions = self._versions
        new_projects: dict[str, str] = {}  # streams this batch creates
        for req in batch:
            if req.future.done():
                continue
            if (void := void_reason(req)) is not None:
                req.future.set_exception(void)
                continue
            stream_id = req.stream_id
            current = pending.get(stream_id)
            if current is None:
                current = versions.get(stream_id)
                if current is None:
                    current = await self._committed_version(conn, stream_id)
            if req.expected_version is not None and req.expected_version != current:
                req.future.set_exception(ConcurrencyError(stream_id, req.expected_version, current))
                continue
            project = new_projects.get(stream_id) or self._projects.get(stream_id)
            if project is None and current > 0:
                project = await self._read_stream_project(conn, stream_id)
            if project is None:
                project = req.project_id or DEFAULT_PROJECT
            elif req.project_id is not None and req.project_id != project:
                req.future.set_exception(ForeignStream(stream_id, req.project_id, project))
                continue
            stored = []
            for i, event in enumerate(req.events, start=1):
                data_json = encode(event.data)
                stored.append(
                    StoredEvent(sequence + i, stream_id, current + i, event.type, data_json, now, event.run_id,
                                SCHEMA_VERSION, event.data, req.request_id, project)
                )  # fmt: skip
            if projector is not None and handles is not None and any(handles(e.type) for e in stored):
                try:
                    if not projector.stage_known(stored):
                        await projector.stage(stored, self._loader(conn))
                except Exception as exc:
                    req.future.set_exception(exc)
                    continue
            sequence += len(stored)
            pending[stream_id] = current + len(stored)
            accepted.append((req, stored))
            if current == 0:
                new_projects[stream_id] = project  # later appends of this batch to the stream see it
            rows.extend(
                (e.sequence, stream_id, e.version, e.type, e.data_json, now, e.run_id, SCHEMA_VERSION, req.request_id,
                 project)
                for e in stored
            )  # fmt: skip
        if not accepted:
            return
        statements: list[Statement] = [(_INSERT, rows)]
        started = time.perf_counter()
        try:
            if projector is not None:
                statements.extend(change_statements(projector.changes(sequence)))
            await run_transaction(conn, statements)
        except BaseException as exc:
            if projector is not None:
                projector.rollback()
            if isolate and len(accepted) > 1 and isinstance(exc, Exception):
                for req, _ in accepted:
                    with contextlib.suppress(Exception):  # a failing append has its exception set
                        await self._commit_group([req], isolate=False)
                return
            for req, _ in accepted:
                if not req.future.done():
                    req.future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
            raise
        if self._on_commit is not None:
            self._on_commit(len(rows), time.perf_counter() - started)
        versions.update(pending)
        self._projects.update(new_projects)
        self._head = sequence
        self._wal_grew.set()
        if projector is not None:
            projector.commit()
        for req, stored in accepted:
            if not req.future.done():
                req.future.set_result(stored)
        if self._subscriptions:
            for _, stored in accepted:
                self._subscriptions.publish(stored)

    @staticmethod
    def _loader(conn: aiosqlite.Connection) -> LoadViews:
        async def load(keys: list[ViewKey]) -> Mapping[ViewKey, tuple[str, int, str]]:
            return await load_views(conn, keys)

        return load

    async def _committed_version(self, conn: aiosqlite.Connection, stream_id: str) -> int:
        cached = self._versions.get(stream_id)
        if cached is not None:
            return cached
        rows = list(
            await conn.execute_fetchall(
                "SELECT COALESCE(MAX(version), 0) FROM events WHERE stream_id = ?", (stream_id,)
            )
        )
        row = rows[0] if rows else None
        version = int(row[0]) if row else 0
        self._versions[stream_id] = version
        return version

    # -- reading ---------------------------------------------------------------------------

    async def read(
        self,
        *,
        after: int = 0,
        stream_id: str | None = None,
        run_id: str | None = None,
        limit: int = 1000,
        conn: aiosqlite.Connection | None = None,
    ) -> list[StoredEvent]:
        """Committed events with sequence > `after`, oldest first, optionally of one stream or run."""
        conn = conn or self.reader
        if run_id is not None:
            return await _read_run(conn, run_id, after, limit)
        if stream_id is not None:
            sql = (
                f"SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = ? AND sequence > ? "
                "ORDER BY stream_id, version LIMIT ?"
            )
            args: tuple[object, ...] = (stream_id, after, limit)
        else:
            sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE sequence > ? ORDER BY sequence LIMIT ?"
            args = (after, limit)
        rows = list(await conn.execute_fetchall(sql, args))
        return [row_to_event(row) for row in rows]

    async def subscribe(
        self,
        *,
        after: int = 0,
        stream_id: str | None = None,
        run_id: str | None = None,
    ) -> AsyncIterator[StoredEvent]:
        """Events after `after` from the log, then live ones as they commit, without gaps."""
        async for batch in self.subscribe_batches(after=after, stream_id=stream_id, run_id=run_id):
            for event in batch:
                yield event

    def subscribe_batches(
        self,
        *,
        after: int = 0,
        stream_id: str | None = None,
        run_id: str | None = None,
    ) -> AsyncIterator[list[StoredEvent]]:
        """`subscribe`, a batch at a time: each batch is what committed while the reader was away."""
        return self._subscriptions.follow(self.read, after=after, stream_id=stream_id, run_id=run_id)

    def end_subscriptions(self) -> None:
        """Shutting down: every live reader gets what has committed, then its subscription ends.

        So open SSE streams finish as complete responses instead of being cut off when the
        server closes their connections; a subscription made after this ends the same way.
        """
        self._subscriptions.end_all()


async def open_connection(path: Path, synchronous: str = "NORMAL") -> aiosqlite.Connection:
    """A connection in WAL mode with explicit transactions (we issue BEGIN/COMMIT ourselves)."""
    conn = await aiosqlite.connect(path, isolation_level=None)
    await conn.execute("PRAGMA journal_mode=WAL")
    await conn.execute(f"PRAGMA synchronous={synchronous}")
    await conn.execute("PRAGMA busy_timeout=5000")
    return conn


async def _add_missing_columns(conn: aiosqlite.Connection) -> None:
    """Logs written by earlier releases get the columns added since (NULL for their events:
    no request id; the default project)."""
    columns = {row[1] for row in await conn.execute_fetchall("PRAGMA table_info(events)")}
    for name in ("request_id", "project_id"):
        if name not in columns:
            await conn.execute(f"ALTER TABLE events ADD COLUMN {name} TEXT")
    await conn.commit()


_READ_RUN_IN_STREAM = (
    f"SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = :stream AND version BETWEEN "
    "MAX(:first, COALESCE((SELECT version + 1 FROM events WHERE sequence = :after AND stream_id = :stream), 0)) "
    "AND :last AND run_id = :run AND sequence > :after ORDER BY version LIMIT :limit"
)
"""A run's events in one stream after `after`, in order, as a walk of the stream's index that
stops at `limit`: when `after` is one of the stream's events (a reader's cursor), the walk
starts just past it."""


async def _read_run(conn: aiosqlite.Connection, run_id: str, after: int, limit: int) -> list[StoredEvent]:
    """The run's events after `after`, oldest first, in one hop to the database's thread (a
    stream's first read, on the way to a new run's first token, would otherwise take two)."""
    rows: list[Sequence[object]] = await conn._execute(_run_rows, conn._conn, run_id, after, limit)  # type: ignore[no-untyped-call]
    return [row_to_event(row) for row in rows]


def _run_rows(db: sqlite3.Connection, run_id: str, after: int, limit: int) -> list[Sequence[object]]:
    """In aiosqlite's thread: the first `limit` of the run's rows in each stream it wrote (in a
    stream, version order is sequence order), merged by sequence."""
    spans = db.execute(_RUN_SPAN, {"run": run_id}).fetchall()
    rows: list[Sequence[object]] = []
    for stream_id, first, last in spans:
        bounds = {"run": run_id, "stream": stream_id, "first": first, "last": last, "after": after, "limit": limit}
        rows += db.execute(_READ_RUN_IN_STREAM, bounds).fetchall()
    if len(spans) > 1:
        rows.sort(key=lambda row: int(row[0]))  # type: ignore[call-overload]
    return rows[:limit]


def row_to_event(row: Sequence[object]) -> StoredEvent:
    sequence, stream_id, version, type_, data, created_at, run_id, schema_version, request_id, project_id = row
    return StoredEvent(
        sequence=int(sequence),  # type: ignore[call-overload]
        stream_id=str(stream_id),
        version=int(version),  # type: ignore[call-overload]
        type=str(type_),
        data_json=str(data),
        created_at=float(created_at),  # type: ignore[arg-type]
        run_id=None if run_id is None else str(run_id),
        schema_version=int(schema_version),  # type: ignore[call-overload]
        request_id=None if request_id is None else str(request_id),
        project_id=DEFAULT_PROJECT if project_id is None else str(project_id),
    )
