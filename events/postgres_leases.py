"""Run leases in PostgreSQL, shared by every server process on the database (see events/leases.py).

One row per run that has not ended (and per vector store file being ingested): its owner and
when the lease lapses, in the database's own clock (so machines whose clocks disagree still
agree on who is dead). The owner renews all of its rows in one statement. A cancel asked of
another process sets the row's flag and sends `NOTIFY threadlog_control`: the notification is
the prompt path, the flag (read back at each renewal) the one that cannot be missed. A metadata
update for a run another process executes goes the same way, the metadata in the row (a
notification's payload is too small for it), taken from it by the owner exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
from collections.abc import Callable
from typing import Any

import asyncpg

__all__ = ["CONTROL_CHANNEL", "PostgresRunLeases"]

CONTROL_CHANNEL = "threadlog_control"

logger = logging.getLogger("threadlog.runs")

_OPEN_STATUSES = ("queued", "in_progress", "cancelling", "requires_action")

_OPEN_LIST = ", ".join(f"'{status}'" for status in _OPEN_STATUSES)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS leases (
    key              TEXT PRIMARY KEY,        -- a run id, or ingest:<store>/<file>
    owner            TEXT NOT NULL,
    expires_at       TIMESTAMPTZ NOT NULL,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE
);
ALTER TABLE leases ADD COLUMN IF NOT EXISTS metadata_request TEXT;  -- JSON, for the owner to take
CREATE INDEX IF NOT EXISTS leases_owner ON leases (owner);
CREATE INDEX IF NOT EXISTS leases_expiry ON leases (expires_at);
-- the runs that have not ended, for the scan that finds one nobody holds
CREATE INDEX IF NOT EXISTS views_open_runs ON views (id)
    WHERE kind = 'run' AND (doc::jsonb ->> 'status') IN ({_OPEN_LIST});
"""

_LAST_EVENT_AGE = (
    "extract(epoch FROM now()) - COALESCE("
    "(SELECT created_at FROM events e WHERE e.run_id = {run} ORDER BY sequence DESC LIMIT 1), 0)"
)


class PostgresRunLeases:
    """implements events.leases.RunLeases on the log's connection pool."""

    def __init__(self, pool: asyncpg.Pool, dsn: str, ttl_s: float = 7.0) -> None:
        self.owner = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"
        self.ttl_s = ttl_s
        self._pool = pool
        self._dsn = dsn
        self._listener: asyncpg.Connection | None = None
        self._callbacks: list[Callable[[str], None]] = []
        self._metadata_callbacks: list[Callable[[str, dict[str, str]], None]] = []
        self._taking: set[asyncio.Task[None]] = set()
        self._dead: list[str] = []  # owners on this machine whose process is gone (see `lapsed`)

    async def open(self) -> None:
        async with self._pool.acquire() as conn, conn.transaction():  # the lock ends with it
            await conn.execute("SELECT pg_advisory_xact_lock(7413)")  # one process creates the schema
            await conn.execute(_SCHEMA)
        self._listener = await asyncpg.connect(self._dsn)
        await self._listener.add_listener(CONTROL_CHANNEL, self._notified)

    async def close(self) -> None:
        for task in list(self._taking):
            task.cancel()
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None

    async def claim(self, key: str) -> None:
        await self._pool.execute(
            "INSERT INTO leases (key, owner, expires_at) VALUES ($1, $2, now() + make_interval(secs => $3)) "
            "ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at, "
            "cancel_requested = FALSE, metadata_request = NULL",
            key,
            self.owner,
            self.ttl_s,
        )

    async def take_over(self, key: str) -> tuple[bool, bool]:
        async with self._pool.acquire() as conn, conn.transaction():
            # Under the log's lock (events/postgres.py): an append fenced by this lease is then
            # wholly before the take-over, or sees the new holder and is refused.
            await conn.execute("SELECT head FROM log_head FOR UPDATE")
            row = await conn.fetchrow(
                "UPDATE leases SET owner = $2, expires_at = now() + make_interval(secs => $3) "
                "WHERE key = $1 AND (expires_at < now() OR owner = ANY($4::text[])) RETURNING cancel_requested",
                key,
                self.owner,
                self.ttl_s,
                self._dead,
            )
            if row is None:  # no lease at all: only once the run has been quiet for a whole lease
                row = await conn.fetchrow(
                    "INSERT INTO leases (key, owner, expires_at) "
                    "SELECT $1, $2, now() + make_interval(secs => $3) "
                    f"WHERE {_LAST_EVENT_AGE.format(run='$1')} > $3 "
                    "ON CONFLICT (key) DO NOTHING RETURNING cancel_requested",
                    key,
                    self.owner,
                    self.ttl_s,
                )
        if row is None:
            return False, False
        return True, bool(row["cancel_requested"])

    async def release(self, key: str, *, whoever_holds_it: bool = False) -> None:
        if whoever_holds_it:
            await self._pool.execute("DELETE FROM leases WHERE key = $1", key)
        else:
            await self._pool.execute("DELETE FROM leases WHERE key = $1 AND owner = $2", key, self.owner)

    async def renew(self) -> set[str]:
        rows = await self._pool.fetch(
            "UPDATE leases SET expires_at = now() + make_interval(secs => $2) WHERE owner = $1 "
            "RETURNING key, cancel_requested, metadata_request IS NOT NULL AS metadata_requested",
            self.owner,
            self.ttl_s,
        )
        for row in rows:
            if row["cancel_requested"]:
                self._cancel_requested(row["key"])
            if row["metadata_requested"]:
                await self._take_metadata(row["key"])
        return {row["key"] for row in rows}

    async def lapse_all(self) -> None:
        await self._pool.execute(
            "UPDATE leases SET expires_at = now() - interval '1 second' WHERE owner = $1", self.owner
        )

    async def lapsed(self) -> list[str]:
        """Also the leases of a process on this machine that no longer exists (killed, crashed):
        those need not wait until they lapse, a restart takes them over at once."""
        await self._find_dead_neighbours()
        rows = await self._pool.fetch(
            "SELECT key FROM leases WHERE (expires_at < now() OR owner = ANY($2::text[])) "
            "AND starts_with(key, 'run_') "
            "UNION "
            f"SELECT v.id FROM views v WHERE v.kind = 'run' AND (v.doc::jsonb ->> 'status') IN ({_OPEN_LIST}) "
            "AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.key = v.id) "
            f"AND {_LAST_EVENT_AGE.format(run='v.id')} > $1",
            self.ttl_s,
            self._dead,
        )
        return [row["key"] for row in rows]

    async def _find_dead_neighbours(self) -> None:
        host = socket.gethostname()
        owners = await self._pool.fetch(
            "SELECT DISTINCT owner FROM leases WHERE owner <> $1 AND starts_with(owner, $2)", self.owner, host + "/"
        )
        self._dead = [row["owner"] for row in owners if not _alive(row["owner"].split("/")[1])]

    async def request_cancel(self, key: str) -> bool:
        return await self._ask_holder(key, "cancel", "cancel_requested = TRUE")

    def on_cancel_requested(self, callback: Callable[[str], None]) -> None:
        self._callbacks.append(callback)

    async def request_metadata(self, key: str, metadata: dict[str, str]) -> bool:
        return await self._ask_holder(key, "metadata", "metadata_request = $3", json.dumps(metadata))

    async def _ask_holder(self, key: str, verb: str, change: str, *values: object) -> bool:
        """Mark the lease's row (`change`, its SET clause) when a live process holds it, and
        notify that process in the same transaction; False when none does."""
        async with self._pool.acquire() as conn, conn.transaction():
            owner = await conn.fetchval(
                f"UPDATE leases SET {change} "
                "WHERE key = $1 AND expires_at >= now() AND NOT owner = ANY($2::text[]) RETURNING owner",
                key,
                self._dead,
                *values,
            )
            if owner is None:
                return False
            await conn.execute("SELECT pg_notify($1, $2)", CONTROL_CHANNEL, f"{verb} {owner} {key}")
        return True

    def on_metadata_requested(self, callback: Callable[[str, dict[str, str]], None]) -> None:
        self._metadata_callbacks.append(callback)

    async def _take_metadata(self, key: str) -> None:
        """The metadata asked for a run this process holds, cleared from its row in the same
        statement: the notification and the renewal that both see it deliver it once."""
        requested = await self._pool.fetchval(
            "UPDATE leases l SET metadata_request = NULL "
            "FROM (SELECT key, metadata_request FROM leases WHERE key = $1 AND owner = $2 FOR UPDATE) asked "
            "WHERE l.key = asked.key AND asked.metadata_request IS NOT NULL RETURNING asked.metadata_request",
            key,
            self.owner,
        )
        if requested is None:
            return
        metadata = json.loads(requested)
        for callback in self._metadata_callbacks:
            try:
                callback(key, metadata)
            except Exception:
                logger.exception("metadata update for run %s failed", key)

    def _notified(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        verb, _, rest = payload.partition(" ")
        owner, _, key = rest.partition(" ")
        if owner != self.owner:
            return
        if verb == "cancel":
            self._cancel_requested(key)
        elif verb == "metadata":
            task = asyncio.get_running_loop().create_task(self._take_metadata(key), name=f"metadata-{key}")
            self._taking.add(task)
            task.add_done_callback(self._taken)

    def _taken(self, task: asyncio.Task[None]) -> None:
        self._taking.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("metadata update: could not read the request", exc_info=task.exception())

    def _cancel_requested(self, key: str) -> None:
        for callback in self._callbacks:
            try:
                callback(key)
            except Exception:
                logger.exception("cancel request for run %s failed", key)


def _alive(pid: str) -> bool:
    """Whether a process of this machine exists (one that we may not signal exists too)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True
