"""The views' tables in SQLite: their schema, and how a projector's change sets are written there.

The projector (projections/) knows no database; the SQLite store reads the views a fold needs
through `load` and writes each append's `ViewChanges` with the append's own statements.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import aiosqlite

from events.log import ViewChanges, ViewKey, ViewQuery
from events.records import DEFAULT_PROJECT

__all__ = [
    "POSITION_NAME",
    "VIEWS_SCHEMA",
    "SqliteViewQueries",
    "Statement",
    "change_statements",
    "load_views",
    "prepare_views",
    "read_position",
    "write_changes",
    "write_position",
]

Statement = tuple[str, Sequence[Sequence[object]]]
"""One SQL statement and the parameter rows it runs with (`executemany`)."""

POSITION_NAME = "views"

VIEWS_SCHEMA = """
CREATE TABLE IF NOT EXISTS views (
    kind      TEXT    NOT NULL,  -- assistant, thread, message, run, step, file, ...
    id        TEXT    NOT NULL,
    parent_id TEXT,              -- the thread of a message or run, the run of a step, ...
    run_id    TEXT,              -- the run that made a message or step
    ordinal   INTEGER NOT NULL,  -- sequence of the event that created it: list order
    doc       TEXT    NOT NULL,  -- the object exactly as the API returns it
    project_id TEXT   NOT NULL DEFAULT 'proj_default',  -- the project of its stream
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
-- Every list endpoint: one kind under one parent, in creation order, from a cursor.
CREATE INDEX IF NOT EXISTS views_list ON views (kind, parent_id, ordinal);
-- Lists of top-level objects (assistants, files, vector stores) in one project; children
-- are listed under their parent, which is in one project already.
CREATE INDEX IF NOT EXISTS views_project_top ON views (kind, project_id, ordinal) WHERE parent_id IS NULL;
CREATE TABLE IF NOT EXISTS projection_position (
    name     TEXT PRIMARY KEY,
    position INTEGER NOT NULL    -- sequence of the last event folded into the views
);
CREATE TABLE IF NOT EXISTS projection_shape (
    name        TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL    -- which views fold which events (ViewProjector.fingerprint)
);
"""


async def prepare_views(conn: aiosqlite.Connection, fingerprint: str | None = None) -> None:
    """Create the views' tables, or bring those of an earlier release up to date.

    A table from before projects gets its project column (the default project: everything
    written then belongs to it) before the indexes that use it. With `fingerprint`: views
    folded by another set of projections (a new one in this release, say) are dropped and
    their position reset, so the store's catch-up at open folds the whole log again.
    """
    columns = {row[1] for row in await conn.execute_fetchall("PRAGMA table_info(views)")}
    if columns and "project_id" not in columns:
        await conn.execute(f"ALTER TABLE views ADD COLUMN project_id TEXT NOT NULL DEFAULT '{DEFAULT_PROJECT}'")
        await conn.commit()
    await conn.executescript(VIEWS_SCHEMA)
    if fingerprint is None:
        return
    sql = "SELECT fingerprint FROM projection_shape WHERE name = ?"
    rows = list(await conn.execute_fetchall(sql, (POSITION_NAME,)))
    if rows and rows[0][0] == fingerprint:
        return
    await conn.execute("BEGIN IMMEDIATE")
    try:
        await conn.execute("DELETE FROM views")
        await write_position(conn, 0)
        await conn.execute(
            "INSERT INTO projection_shape (name, fingerprint) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET fingerprint = excluded.fingerprint",
            (POSITION_NAME, fingerprint),
        )
        await conn.execute("COMMIT")
    except BaseException:
        await conn.execute("ROLLBACK")
        raise


async def load_views(conn: aiosqlite.Connection, keys: list[ViewKey]) -> Mapping[ViewKey, tuple[str, int, str]]:
    """Stored views by key, one query per 400 keys: (doc JSON, ordinal, project) of those that exist."""
    found: dict[ViewKey, tuple[str, int, str]] = {}
    for start in range(0, len(keys), 400):
        part = keys[start : start + 400]
        values = ", ".join("(?, ?)" for _ in part)
        sql = f"SELECT kind, id, doc, ordinal, project_id FROM views WHERE (kind, id) IN (VALUES {values})"
        params = [item for key in part for item in key]
        for kind, view_id, doc, ordinal, project in await conn.execute_fetchall(sql, params):
            found[(str(kind), str(view_id))] = (str(doc), int(ordinal), str(project))
    return found


def change_statements(changes: ViewChanges) -> list[Statement]:
    """The writes of a change set and its position, for the append's transaction."""
    statements: list[Statement] = []
    if changes.upserts:
        statements.append((_UPSERT_VIEW, changes.upserts))
    if changes.deletes:
        statements.append(("DELETE FROM views WHERE kind = ? AND id = ?", changes.deletes))
    statements.append(position_statement(changes.position))
    return statements


async def write_changes(conn: aiosqlite.Connection, changes: ViewChanges) -> None:
    """A change set, inside the caller's transaction (a rebuild's)."""
    for sql, rows in change_statements(changes):
        await conn.executemany(sql, rows)


async def read_position(conn: aiosqlite.Connection) -> int:
    rows = list(
        await conn.execute_fetchall("SELECT position FROM projection_position WHERE name = ?", (POSITION_NAME,))
    )
    row = rows[0] if rows else None
    return int(row[0]) if row else 0


async def write_position(conn: aiosqlite.Connection, position: int) -> None:
    sql, rows = position_statement(position)
    await conn.execute(sql, rows[0])


def position_statement(position: int) -> Statement:
    return (
        "INSERT INTO projection_position (name, position) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        [(POSITION_NAME, position)],
    )


_UPSERT_VIEW = (
    "INSERT INTO views (kind, id, parent_id, run_id, ordinal, doc, project_id) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (kind, id) DO UPDATE SET parent_id = excluded.parent_id, "
    "run_id = excluded.run_id, doc = excluded.doc"
)


class SqliteViewQueries:
    """implements events.log.ViewQueries on the reader connection (WAL: beside the writer)."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def get(self, kind: str, view_id: str) -> tuple[str, str] | None:
        rows = list(
            await self._conn.execute_fetchall(
                "SELECT doc, project_id FROM views WHERE kind = ? AND id = ?", (kind, view_id)
            )
        )
        return (str(rows[0][0]), str(rows[0][1])) if rows else None

    async def page(self, query: ViewQuery) -> list[str]:
        where = ["kind = ?", "parent_id IS ?"]
        args: list[Any] = [query.kind, query.parent_id]
        _confine(where, args, query.project_id)
        if query.run_id is not None:
            where.append("run_id = ?")
            args.append(query.run_id)
        if query.status is not None:
            where.append("json_extract(doc, '$.status') = ?")
            args.append(query.status)
        if query.above is not None:
            where.append("ordinal > ?")
            args.append(query.above)
        if query.below is not None:
            where.append("ordinal < ?")
            args.append(query.below)
        direction = "ASC" if query.ascending else "DESC"
        sql = f"SELECT doc FROM views WHERE {' AND '.join(where)} ORDER BY ordinal {direction} LIMIT ?"
        return [str(row[0]) for row in await self._conn.execute_fetchall(sql, (*args, query.limit))]

    async def ordinal(self, kind: str, view_id: str, project_id: str | None) -> int | None:
        where = ["kind = ?", "id = ?"]
        args: list[Any] = [kind, view_id]
        _confine(where, args, project_id)
        rows = list(await self._conn.execute_fetchall(f"SELECT ordinal FROM views WHERE {' AND '.join(where)}", args))
        return int(rows[0][0]) if rows else None

    async def select(
        self,
        kind: str,
        project_id: str | None,
        *,
        under: tuple[str | None] | None = None,
        statuses: tuple[str, ...] | None = None,
        id_suffix: str | None = None,
    ) -> list[str]:
        where = ["kind = ?"]
        args: list[Any] = [kind]
        if under is not None:
            where.append("parent_id IS ?")
            args.append(under[0])
        if statuses is not None:
            where.append(f"json_extract(doc, '$.status') IN ({','.join('?' for _ in statuses)})")
            args += statuses
        if id_suffix is not None:
            where.append("substr(id, -length(?)) = ?")
            args += [id_suffix, id_suffix]
        _confine(where, args, project_id)
        sql = f"SELECT doc FROM views WHERE {' AND '.join(where)} ORDER BY ordinal"
        return [str(row[0]) for row in await self._conn.execute_fetchall(sql, args)]

    async def total(self, kind: str, field: str, project_id: str | None) -> int:
        where = ["kind = ?"]
        args: list[Any] = [kind]
        _confine(where, args, project_id)
        sql = f"SELECT COALESCE(SUM(json_extract(doc, ?)), 0) FROM views WHERE {' AND '.join(where)}"
        rows = list(await self._conn.execute_fetchall(sql, [f"$.{field}", *args]))
        return int(rows[0][0]) if rows else 0


def _confine(where: list[str], args: list[Any], project_id: str | None) -> None:
    if project_id is not None:
        where.append("project_id = ?")
        args.append(project_id)
