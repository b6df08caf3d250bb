"""The views' tables in PostgreSQL: schema, and a projector's change sets written in the append's transaction.

The same rows as SQLite's (events/sqlite_views.py): the object as JSON text exactly as the API
returns it, its parent, run, list ordinal and project.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from events.log import ViewChanges, ViewKey, ViewQuery

__all__ = ["VIEWS_SCHEMA", "PostgresViewQueries", "load_views", "prepare_views", "read_position", "write_changes"]

POSITION_NAME = "views"

VIEWS_SCHEMA = """
CREATE TABLE IF NOT EXISTS views (
    kind       TEXT   NOT NULL,
    id         TEXT   NOT NULL,
    parent_id  TEXT,
    run_id     TEXT,
    ordinal    BIGINT NOT NULL,
    doc        TEXT   NOT NULL,
    project_id TEXT   NOT NULL DEFAULT 'proj_default',
    PRIMARY KEY (kind, id)
);
CREATE INDEX IF NOT EXISTS views_list ON views (kind, parent_id, ordinal);
CREATE INDEX IF NOT EXISTS views_project_top ON views (kind, project_id, ordinal) WHERE parent_id IS NULL;
CREATE TABLE IF NOT EXISTS projection_position (name TEXT PRIMARY KEY, position BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS projection_shape (name TEXT PRIMARY KEY, fingerprint TEXT NOT NULL);
"""

_UPSERT = (
    "INSERT INTO views (kind, id, parent_id, run_id, ordinal, doc, project_id) VALUES ($1, $2, $3, $4, $5, $6, $7) "
    "ON CONFLICT (kind, id) DO UPDATE SET parent_id = excluded.parent_id, run_id = excluded.run_id, doc = excluded.doc"
)


async def prepare_views(conn: Any, fingerprint: str) -> None:
    """The tables; views folded by another set of projections are dropped and refolded (position 0)."""
    await conn.execute(VIEWS_SCHEMA)
    known = await conn.fetchval("SELECT fingerprint FROM projection_shape WHERE name = $1", POSITION_NAME)
    if known == fingerprint:
        return
    async with conn.transaction():
        await conn.execute("DELETE FROM views")
        await _write_position(conn, 0)
        await conn.execute(
            "INSERT INTO projection_shape (name, fingerprint) VALUES ($1, $2) "
            "ON CONFLICT (name) DO UPDATE SET fingerprint = excluded.fingerprint",
            POSITION_NAME,
            fingerprint,
        )


async def read_position(conn: Any) -> int:
    value = await conn.fetchval("SELECT position FROM projection_position WHERE name = $1", POSITION_NAME)
    return int(value or 0)


async def load_views(conn: Any, keys: list[ViewKey]) -> Mapping[ViewKey, tuple[str, int, str]]:
    rows = await conn.fetch(
        "SELECT v.kind, v.id, v.doc, v.ordinal, v.project_id FROM views v "
        "JOIN unnest($1::text[], $2::text[]) AS k(kind, id) ON v.kind = k.kind AND v.id = k.id",
        [k for k, _ in keys],
        [i for _, i in keys],
    )
    return {(row["kind"], row["id"]): (row["doc"], int(row["ordinal"]), row["project_id"]) for row in rows}


async def write_changes(conn: Any, changes: ViewChanges) -> None:
    """Inside the caller's transaction (the append's)."""
    if changes.upserts:
        await conn.executemany(_UPSERT, [tuple(row) for row in changes.upserts])
    if changes.deletes:
        await conn.executemany("DELETE FROM views WHERE kind = $1 AND id = $2", changes.deletes)
    await _write_position(conn, changes.position)


async def _write_position(conn: Any, position: int) -> None:
    await conn.execute(
        "INSERT INTO projection_position (name, position) VALUES ($1, $2) "
        "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        POSITION_NAME,
        position,
    )


class PostgresViewQueries:
    """implements events.log.ViewQueries on a connection pool (docs are JSON text; read as jsonb)."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def get(self, kind: str, view_id: str) -> tuple[str, str] | None:
        row = await self._pool.fetchrow("SELECT doc, project_id FROM views WHERE kind = $1 AND id = $2", kind, view_id)
        return (row["doc"], row["project_id"]) if row is not None else None

    async def page(self, query: ViewQuery) -> list[str]:
        where = ["kind = $1", "parent_id IS NOT DISTINCT FROM $2"]
        args: list[Any] = [query.kind, query.parent_id]
        for clause, value in (
            ("project_id = ${}", query.project_id),
            ("run_id = ${}", query.run_id),
            ("(doc::jsonb ->> 'status') = ${}", query.status),
            ("ordinal > ${}", query.above),
            ("ordinal < ${}", query.below),
        ):
            if value is not None:
                args.append(value)
                where.append(clause.format(len(args)))
        direction = "ASC" if query.ascending else "DESC"
        args.append(query.limit)
        sql = f"SELECT doc FROM views WHERE {' AND '.join(where)} ORDER BY ordinal {direction} LIMIT ${len(args)}"
        return [row["doc"] for row in await self._pool.fetch(sql, *args)]

    async def ordinal(self, kind: str, view_id: str, project_id: str | None) -> int | None:
        sql = "SELECT ordinal FROM views WHERE kind = $1 AND id = $2 AND ($3::text IS NULL OR project_id = $3)"
        value = await self._pool.fetchval(sql, kind, view_id, project_id)
        return int(value) if value is not None else None

    async def select(
        self,
        kind: str,
        project_id: str | None,
        *,
        under: tuple[str | None] | None = None,
        statuses: tuple[str, ...] | None = None,
        id_suffix: str | None = None,
    ) -> list[str]:
        where = ["kind = $1"]
        args: list[Any] = [kind]
        if under is not None:
            args.append(under[0])
            where.append(f"parent_id IS NOT DISTINCT FROM ${len(args)}")
        if statuses is not None:
            args.append(list(statuses))
            where.append(f"(doc::jsonb ->> 'status') = ANY(${len(args)}::text[])")
        if id_suffix is not None:
            args.append(id_suffix)
            where.append(f"right(id, length(${len(args)})) = ${len(args)}")
        if project_id is not None:
            args.append(project_id)
            where.append(f"project_id = ${len(args)}")
        sql = f"SELECT doc FROM views WHERE {' AND '.join(where)} ORDER BY ordinal"
        return [row["doc"] for row in await self._pool.fetch(sql, *args)]

    async def total(self, kind: str, field: str, project_id: str | None) -> int:
        sql = (
            "SELECT COALESCE(SUM((doc::jsonb ->> $2)::numeric), 0) FROM views "
            "WHERE kind = $1 AND ($3::text IS NULL OR project_id = $3)"
        )
        return int(await self._pool.fetchval(sql, kind, field, project_id))


async def snapshot_for_verify(dsn: str) -> tuple[Any, int, dict[ViewKey, tuple[int, Any, str]]]:
    """For `threadlog replay --verify`: one repeatable-read snapshot of the views and their
    position, and the log's events up to it (an async iterator of batches over that snapshot)."""
    import json

    import asyncpg

    conn = await asyncpg.connect(dsn)
    transaction = conn.transaction(isolation="repeatable_read", readonly=True)
    await transaction.start()
    position = await read_position(conn)
    rows = await conn.fetch("SELECT kind, id, ordinal, doc, project_id FROM views")
    live = {(r["kind"], r["id"]): (int(r["ordinal"]), json.loads(r["doc"]), r["project_id"]) for r in rows}

    async def batches() -> Any:
        from events.postgres import _COLUMNS, _event

        after = 0
        try:
            while True:
                found = await conn.fetch(
                    f"SELECT {_COLUMNS} FROM events WHERE sequence > $1 AND sequence <= $2 "
                    "ORDER BY sequence LIMIT 10000",
                    after,
                    position,
                )
                if not found:
                    return
                yield [_event(row) for row in found]
                after = int(found[-1]["sequence"])
        finally:
            await transaction.rollback()
            await conn.close()

    return batches(), position, live
