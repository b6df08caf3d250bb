"""Rebuilding every view from sequence 0, and checking the rebuilt views against the live ones.

The fold runs in memory over a consistent snapshot of the log (one read transaction), so
`--verify` can run beside a live server: it compares the views as of the snapshot's
position with a fold of exactly the events up to it.
"""

from __future__ import annotations

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
    conn: aiosqlite.Connection, projector: ViewProjector, upto: int | None = None, batch: int = 50_000
) -> tuple[dict[ViewKey, View | None], int, int]:
    """Fold the log (up to `upto`) into views in memory; returns views, position, event count."""
    views: dict[ViewKey, View | None] = {}
    position = 0
    count = 0
    types = tuple(projector.event_types())
    marks = ",".join("?" for _ in types)
    while True:
        bound = "" if upto is None else " AND sequence <= ?"
        args: tuple[Any, ...] = (position, *types) + (() if upto is None else (upto,)) + (batch,)
        sql = (
            "SELECT sequence, stream_id, version, type, data, created_at, run_id FROM events "
            f"WHERE sequence > ? AND type IN ({marks}){bound} ORDER BY sequence LIMIT ?"
        )
        async with conn.execute(sql, args) as cur:
            rows = list(await cur.fetchall())
        if not rows:
            break
        for sequence, stream_id, version, type_, data, created_at, run_id in rows:
            event = StoredEvent(sequence, stream_id, version, type_, data, created_at, run_id)
            projector.fold_event(event, views, views.get)
        position = rows[-1][0]
        count += len(rows)
    return views, position, count


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
