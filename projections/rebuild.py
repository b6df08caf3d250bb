"""Rebuilding every view from sequence 0, and checking the rebuilt views against the live ones.

The fold runs in memory over a consistent snapshot of the log (one read transaction), so
`--verify` can run beside a live server: it compares the views as of the snapshot's
position with a fold of exactly the events up to it.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from events.records import DEFAULT_PROJECT, StoredEvent
from events.sqlite_views import prepare_views, read_position, write_changes
from events.store import open_connection
from projections.base import View, ViewKey, ViewProjector

__all__ = ["RebuildReport", "fold_log", "rebuild", "verify", "verify_stream"]


@dataclass(frozen=True)
class RebuildReport:
    events: int
    views: int
    position: int
    seconds: float
    difference: str | None = None

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else float("inf")


async def fold_log(
    conn: aiosqlite.Connection,
    projector: ViewProjector,
    upto: int | None = None,
    batch: int = 50_000,
    *,
    skip_superseded: bool = True,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[ViewKey, View | None], int, int]:
    """Fold the log (up to `upto`) into views in memory; returns views, position, event count.

    With `skip_superseded` (the default), work a later overwrite would discard is not done:
    an event whose only fold is existence-preserving (a message or step delta, a patch)
    is not folded when a later event in the same batch overwrites the same view with only
    such events in between, and a snapshot in that position only marks the view as
    existing, without parsing its payload. The result is the same as folding every event
    (`bench/bench_replay.py` checks the two agree). Streamed text deltas are most of a
    real log and each message ends with a `completed` snapshot, so this skips most of the
    JSON parsing and merging. The next batch is read while this one is folded.

    The cyclic garbage collector is paused meanwhile: the fold makes no cycles, and its
    full collections, walking every view built so far, were ~40% of a rebuild's time.
    """
    with _gc_paused():
        return await _fold_log(conn, projector, upto, batch, skip_superseded, progress)


@contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


async def _fold_log(
    conn: aiosqlite.Connection,
    projector: ViewProjector,
    upto: int | None,
    batch: int,
    skip_superseded: bool,
    progress: Callable[[int], None] | None,
) -> tuple[dict[ViewKey, View | None], int, int]:
    views: dict[ViewKey, View | None] = {}
    position = 0
    count = 0
    types = tuple(projector.event_types())
    marks = ",".join("?" for _ in types)
    bound = "" if upto is None else " AND sequence <= ?"
    where = f"WHERE sequence > ? AND type IN ({marks}){bound}"
    columns = "sequence, stream_id, version, type, data, created_at, run_id, project_id"

    def args(after: int) -> tuple[Any, ...]:
        return (after, *types) + (() if upto is None else (upto,)) + (batch,)

    if not skip_superseded:
        sql = f"SELECT {columns} FROM events {where} ORDER BY sequence LIMIT ?"

        async def fetch(after: int) -> list[Any]:
            async with conn.execute(sql, args(after)) as cur:
                return list(await cur.fetchall())

        rows = await fetch(position)
        while rows:
            position = rows[-1][0]
            count += len(rows)
            ahead = asyncio.ensure_future(fetch(position)) if len(rows) == batch else None
            try:
                for row in rows:
                    projector.fold_event(_event(row), views, views.get)
            except BaseException:
                if ahead is not None:
                    ahead.cancel()
                raise
            rows = await ahead if ahead is not None else []
            if progress is not None:
                progress(position)
        return views, position, count

    unkeyed = tuple(t for t in types if t not in projector.keyed_by_id)
    # Pass 1: per event its sequence, type and what follows a leading `{"id":"` up to the
    # next quote (see _leading_id), cut by SQLite so most payloads never reach Python; the
    # payload itself only for the types the scan must parse to key.
    payload = f"CASE WHEN type IN ({','.join('?' for _ in unkeyed)}) THEN data END" if unkeyed else "NULL"
    scan_sql = (
        f"SELECT sequence, type, CASE WHEN substr(data, 1, 7) = '{_ID_PREFIX}' "
        f"THEN substr(data, 8, instr(substr(data, 8, {_ID_SPAN}), '\"') - 1) END, {payload} FROM events {where} "
        "ORDER BY sequence LIMIT ?"
    )
    # Pass 2: the whole rows of the events the scan keeps (and payloads it must parse).
    rows_sql = f"SELECT {columns} FROM events WHERE sequence IN (SELECT value FROM json_each(?)) ORDER BY sequence"

    async def scan(after: int) -> list[Any]:
        async with conn.execute(scan_sql, (*unkeyed, *args(after))) as cur:
            rows: list[Any] = list(await cur.fetchall())
        # Rows whose id SQLite could not cut (no leading id, an escape, a very long id):
        # the scan parses their payload, read here.
        keyed = projector.keyed_by_id
        unknown = [
            i
            for i, (_, type_, view_id, _) in enumerate(rows)
            if (view_id is None or view_id == '"' or "\\" in view_id) and type_ in keyed
        ]
        if unknown:
            whole = {row[0]: row for row in await fetch_rows([rows[i][0] for i in unknown])}
            for i in unknown:
                sequence, type_, _, _ = rows[i]
                rows[i] = (sequence, type_, None, whole[sequence][4])
        return rows

    async def fetch_rows(sequences: list[int]) -> list[Any]:
        async with conn.execute(rows_sql, (json.dumps(sequences),)) as cur:
            return list(await cur.fetchall())

    # The reader thread stays a batch ahead: it scans batch k+1 while batch k is sorted out,
    # reads k's whole rows, then scans k+2 while k is folded.
    rows = await scan(position)
    ahead = asyncio.ensure_future(scan(rows[-1][0])) if len(rows) == batch else None
    try:
        while rows:
            count += len(rows)
            kept, wanted = _unsuperseded(projector, rows)
            full = await fetch_rows(wanted)
            if len(full) != len(wanted):
                raise RuntimeError(f"read {len(full)} of {len(wanted)} events up to sequence {rows[-1][0]}")
            position = rows[-1][0]
            rows = await ahead if ahead is not None else []
            ahead = asyncio.ensure_future(scan(rows[-1][0])) if len(rows) == batch else None
            fold = projector.fold_event
            get = views.get
            events = iter(full)
            for item in kept:
                if isinstance(item, int):
                    fold(_event(next(events)), views, get)
                else:
                    key, sequence = item
                    current = get(key)
                    views[key] = View({}, current.ordinal if current else sequence)
            if progress is not None:
                progress(position)
    except BaseException:
        if ahead is not None:
            ahead.cancel()
        raise
    return views, position, count


def _event(row: Any) -> StoredEvent:
    sequence, stream_id, version, type_, data, created_at, run_id, project_id = row
    return StoredEvent(
        sequence, stream_id, version, type_, data, created_at, run_id, project_id=project_id or DEFAULT_PROJECT
    )


_PRESERVING, _SNAPSHOT, _OVERWRITE, _OTHER = range(4)
_ID_PREFIX = '{"id":"'
_ID_SPAN = 256


def _unsuperseded(projector: ViewProjector, rows: list[Any]) -> tuple[list[int | tuple[ViewKey, int]], list[int]]:
    """What of a scanned batch to fold, minus what a later overwrite of its view makes moot (see fold_log).

    `rows` are `(sequence, type, leading id or None, payload or None)` (the payload where
    the id is None or the type is not keyed by id). Walks the batch backwards keeping the
    views that a later event overwrites with only existence-preserving events in between.
    An existence-preserving event on such a view is dropped; a snapshot on one becomes
    `(key, sequence)`: the view exists from here with this ordinal (if new), whatever its
    doc, which the overwrite replaces. Any other event is kept as its sequence. Returns the
    kept items in log order and the sequences whose whole rows the fold needs, ascending.
    """
    table: dict[str, tuple[str, int]] = {}
    for type_, kind in projector.keyed_by_id.items():
        if type_ in projector.preserving:
            flag = _PRESERVING
        elif type_ in projector.snapshots:
            flag = _SNAPSHOT
        elif type_ in projector.overwrites:
            flag = _OVERWRITE
        else:
            flag = _OTHER
        table[type_] = (kind, flag)
    info = table.get
    superseded: set[ViewKey] = set()
    add = superseded.add
    discard = superseded.discard
    kept: list[int | tuple[ViewKey, int]] = []
    keep = kept.append
    wanted: list[int] = []
    want = wanted.append
    for sequence, type_, view_id, data in reversed(rows):
        entry = info(type_)
        if entry is not None:
            kind, flag = entry
            key = (kind, view_id if view_id is not None else str(json.loads(data)["id"]))
            if key in superseded:
                if flag == _PRESERVING:
                    continue
                if flag == _SNAPSHOT:
                    keep((key, sequence))
                    continue
            if flag == _OTHER:
                discard(key)
            elif flag != _PRESERVING:
                add(key)
        else:
            keys = projector.keys_for(StoredEvent(sequence, "", 0, type_, data, 0.0))
            if type_ in projector.overwrites:
                superseded.update(keys)
            else:
                superseded.difference_update(keys)
        keep(sequence)
        want(sequence)
    kept.reverse()
    wanted.reverse()
    return kept, wanted


async def rebuild(
    db_path: Path, projector: ViewProjector, progress: Callable[[int, int], None] | None = None
) -> RebuildReport:
    """Replace the live views with a fold of the whole log. Run with the server stopped."""
    started = time.perf_counter()
    conn = await open_connection(db_path)
    try:
        await prepare_views(conn, projector.fingerprint)
        await conn.execute("BEGIN IMMEDIATE")
        try:
            head = await _head(conn)
            with _gc_paused():
                told = (lambda position: progress(position, head)) if progress is not None else None
                views, folded_to, count = await fold_log(conn, projector, upto=head, progress=told)
                if progress is not None and folded_to < head:
                    progress(head, head)  # the events after the last folded one are not folded at all
                await conn.execute("DELETE FROM views")
                # In key order, so the inserts append to the views' primary-key b-tree.
                existing = {k: views[k] for k in sorted(views) if views[k] is not None}
                await write_changes(conn, projector.changes_of(existing, head))
            await conn.execute("COMMIT")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise
    finally:
        await conn.close()
    live = sum(1 for v in views.values() if v is not None)
    return RebuildReport(count, live, head, time.perf_counter() - started)


async def verify(
    db_path: Path, projector: ViewProjector, progress: Callable[[int, int], None] | None = None
) -> RebuildReport:
    """Fold the log and compare with the live views; names the first difference."""
    started = time.perf_counter()
    conn = await open_connection(db_path)
    try:
        await prepare_views(conn)  # reads only: views of another shape show as differences
        await conn.execute("BEGIN")  # one snapshot for the log and the views
        try:
            position = await read_position(conn)
            told = (lambda at: progress(at, position)) if progress is not None else None
            views, folded_to, count = await fold_log(conn, projector, upto=position, progress=told)
            if progress is not None and folded_to < position:
                progress(position, position)
            rebuilt = {k: v for k, v in views.items() if v is not None}
            sql = "SELECT kind, id, ordinal, doc, project_id FROM views ORDER BY kind, id"
            async with conn.execute(sql) as cur:
                live = {(str(r[0]), str(r[1])): (int(r[2]), json.loads(r[3]), str(r[4])) for r in await cur.fetchall()}
        finally:
            await conn.execute("COMMIT")
    finally:
        await conn.close()
    difference = _first_difference(rebuilt, live)
    return RebuildReport(count, len(rebuilt), position, time.perf_counter() - started, difference)


async def verify_stream(
    batches: AsyncIterator[list[StoredEvent]],
    live: Mapping[ViewKey, tuple[int, Any, str]],
    projector: ViewProjector,
    position: int,
) -> RebuildReport:
    """Any backend's verify: fold every event (no shortcuts) and compare with the live views,
    `(ordinal, doc, project)` by key, as of `position`."""
    started = time.perf_counter()
    views: dict[ViewKey, View | None] = {}
    count = 0
    with _gc_paused():
        async for batch in batches:
            for event in batch:
                projector.fold_event(event, views, views.get)
            count += len(batch)
    rebuilt = {k: v for k, v in views.items() if v is not None}
    difference = _first_difference(rebuilt, live)
    return RebuildReport(count, len(rebuilt), position, time.perf_counter() - started, difference)


def _first_difference(
    rebuilt: Mapping[ViewKey, View | None], live: Mapping[ViewKey, tuple[int, Any, str]]
) -> str | None:
    for key in sorted(set(rebuilt) | set(live)):
        kind, view_id = key
        if key not in live:
            return f"{kind} {view_id}: in the rebuilt views but missing from the live ones"
        view = rebuilt.get(key)
        if view is None:
            return f"{kind} {view_id}: in the live views but not in the rebuilt ones"
        ordinal, doc, project = live[key]
        if ordinal != view.ordinal:
            return f"{kind} {view_id}: created at sequence {view.ordinal} in the log, {ordinal} in the live view"
        if project != view.project_id:
            return f"{kind} {view_id}: in project {view.project_id} in the log, {project} in the live view"
        if doc != view.doc:
            return f"{kind} {view_id}: {_describe(view.doc, doc)}"
    return None


def _describe(rebuilt: Any, live: Any, path: str = "") -> str:
    if isinstance(rebuilt, dict) and isinstance(live, dict):
        for name in sorted(set(rebuilt) | set(live)):
            if rebuilt.get(name) != live.get(name):
                return _describe(rebuilt.get(name), live.get(name), f"{path}.{name}" if path else name)
    if isinstance(rebuilt, list) and isinstance(live, list) and len(rebuilt) == len(live):
        for i, (a, b) in enumerate(zip(rebuilt, live, strict=True)):
            if a != b:
                return _describe(a, b, f"{path}[{i}]")
    return f"field '{path or '(whole)'}' is {json.dumps(rebuilt)[:200]} when rebuilt, {json.dumps(live)[:200]} live"


async def _head(conn: aiosqlite.Connection) -> int:
    async with conn.execute("SELECT COALESCE(MAX(sequence), 0) FROM events") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0
