"""Rebuilding every view from sequence 0, and checking the rebuilt views against the live ones.

The fold runs in memory over a consistent snapshot of the log (one read transaction), so
`--verify` can run beside a live server: it compares the views as of the snapshot's
position with a fold of exactly the events up to it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from events.records import StoredEvent
from events.store import open_connection
from projections.base import View, ViewKey, ViewProjector, read_position, write_position

__all__ = ["RebuildReport", "fold_log", "rebuild", "verify"]


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
    """
    views: dict[ViewKey, View | None] = {}
    position = 0
    count = 0
    types = tuple(projector.event_types())
    marks = ",".join("?" for _ in types)
    bound = "" if upto is None else " AND sequence <= ?"
    sql = (
        "SELECT sequence, stream_id, version, type, data, created_at, run_id FROM events "
        f"WHERE sequence > ? AND type IN ({marks}){bound} ORDER BY sequence LIMIT ?"
    )

    async def fetch(after: int) -> list[Any]:
        args: tuple[Any, ...] = (after, *types) + (() if upto is None else (upto,)) + (batch,)
        async with conn.execute(sql, args) as cur:
            return list(await cur.fetchall())

    rows = await fetch(position)
    while rows:
        position = rows[-1][0]
        count += len(rows)
        ahead = asyncio.ensure_future(fetch(position)) if len(rows) == batch else None
        try:
            if not skip_superseded:
                for row in rows:
                    projector.fold_event(StoredEvent(*row), views, views.get)
            else:
                fold = projector.fold_event
                get = views.get
                for item in _unsuperseded(projector, rows):
                    if type(item) is tuple:
                        key, sequence = item
                        current = get(key)
                        views[key] = View({}, current.ordinal if current else sequence)
                    else:
                        fold(item, views, get)  # type: ignore[arg-type]
        except BaseException:
            if ahead is not None:
                ahead.cancel()
            raise
        rows = await ahead if ahead is not None else []
    return views, position, count


def _unsuperseded(projector: ViewProjector, rows: list[Any]) -> list[StoredEvent | tuple[ViewKey, int]]:
    """The batch's events minus what a later overwrite of their view makes moot (see fold_log).

    Walks the batch backwards keeping the views that a later event overwrites with only
    existence-preserving events in between. An existence-preserving event on such a view
    is dropped; a snapshot on one becomes `(key, sequence)`: the view exists from here
    with this ordinal (if new), whatever its doc, which the overwrite replaces.
    """
    keyed_by_id = projector.keyed_by_id
    preserving = projector.preserving
    snapshots = projector.snapshots
    overwrites = projector.overwrites
    superseded: set[ViewKey] = set()
    kept: list[StoredEvent | tuple[ViewKey, int]] = []
    for row in reversed(rows):
        type_ = row[3]
        kind = keyed_by_id.get(type_)
        event: StoredEvent | None = None
        if kind is not None:
            view_id = _leading_id(row[4])
            if view_id is None:
                event = StoredEvent(*row)
                view_id = str(event.data["id"])
            key = (kind, view_id)
            if key in superseded:
                if type_ in preserving:
                    continue
                if type_ in snapshots:
                    kept.append((key, row[0]))
                    continue
            if type_ in overwrites:
                superseded.add(key)
            elif type_ not in preserving:
                superseded.discard(key)
            kept.append(event or StoredEvent(*row))
            continue
        event = StoredEvent(*row)
        if type_ in overwrites:
            superseded.update(projector.keys_for(event))
        else:
            superseded.difference_update(projector.keys_for(event))
        kept.append(event)
    kept.reverse()
    return kept


def _leading_id(data: str) -> str | None:
    """The `id` of a payload that `events.records.encode` wrote with `id` first, without parsing it.

    encode() writes a dict's keys once each, in insertion order, so a payload starting with
    `{"id":"` has that string as its only `id`; one with an escape in it is left to json.
    """
    if not data.startswith('{"id":"'):
        return None
    end = data.find('"', 7)
    if end < 0:
        return None
    view_id = data[7:end]
    return None if "\\" in view_id else view_id


async def rebuild(db_path: Path, projector: ViewProjector) -> RebuildReport:
    """Replace the live views with a fold of the whole log. Run with the server stopped."""
    started = time.perf_counter()
    conn = await open_connection(db_path)
    try:
        await conn.executescript(projector.schema)
        await conn.execute("BEGIN IMMEDIATE")
        try:
            head = await _head(conn)
            views, _, count = await fold_log(conn, projector, upto=head)
            await conn.execute("DELETE FROM views")
            await projector.write_views(conn, {k: v for k, v in views.items() if v is not None})
            await write_position(conn, head)
            await conn.execute("COMMIT")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise
    finally:
        await conn.close()
    live = sum(1 for v in views.values() if v is not None)
    return RebuildReport(count, live, head, time.perf_counter() - started)


async def verify(db_path: Path, projector: ViewProjector) -> RebuildReport:
    """Fold the log and compare with the live views; names the first difference."""
    started = time.perf_counter()
    conn = await open_connection(db_path)
    try:
        await conn.executescript(projector.schema)
        await conn.execute("BEGIN")  # one snapshot for the log and the views
        try:
            position = await read_position(conn)
            views, _, count = await fold_log(conn, projector, upto=position)
            rebuilt = {k: v for k, v in views.items() if v is not None}
            async with conn.execute("SELECT kind, id, ordinal, doc FROM views ORDER BY kind, id") as cur:
                live = {(str(r[0]), str(r[1])): (int(r[2]), json.loads(r[3])) for r in await cur.fetchall()}
        finally:
            await conn.execute("COMMIT")
    finally:
        await conn.close()
    difference = _first_difference(rebuilt, live)
    return RebuildReport(count, len(rebuilt), position, time.perf_counter() - started, difference)


def _first_difference(rebuilt: Mapping[ViewKey, View | None], live: Mapping[ViewKey, tuple[int, Any]]) -> str | None:
    for key in sorted(set(rebuilt) | set(live)):
        kind, view_id = key
        if key not in live:
            return f"{kind} {view_id}: in the rebuilt views but missing from the live ones"
        view = rebuilt.get(key)
        if view is None:
            return f"{kind} {view_id}: in the live views but not in the rebuilt ones"
        ordinal, doc = live[key]
        if ordinal != view.ordinal:
            return f"{kind} {view_id}: created at sequence {view.ordinal} in the log, {ordinal} in the live view"
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
