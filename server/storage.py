"""Which event log the server runs on: the one place that knows there are two.

Without THREADLOG_DATABASE_URL (`--database-url`): SQLite in the data dir, the embedded default.
With `postgresql://…`: PostgreSQL, which several server processes can share. Everything else
talks to `events.log.EventLog` and `events.log.ViewQueries`.
"""

from __future__ import annotations

from collections.abc import Callable

from events.log import EventLog
from events.store import EventStore
from projections.base import ViewProjector
from server.config import Settings

__all__ = ["describe", "event_log", "owns_data_dir"]


def event_log(settings: Settings, projector: ViewProjector, on_commit: Callable[[int, float], None] | None) -> EventLog:
    """The log the settings name, not yet opened."""
    if settings.database_url:
        if not settings.database_url.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"THREADLOG_DATABASE_URL must be a postgresql:// URL, not {settings.database_url!r}")
        if settings.compact_older_than_s is not None:
            raise ValueError("THREADLOG_COMPACT_OLDER_THAN works on the SQLite log only (not with PostgreSQL yet)")
        from events.postgres import PostgresEventLog  # asyncpg only where PostgreSQL is used

        return PostgresEventLog(settings.database_url, projector=projector, on_commit=on_commit)
    return EventStore(settings.db_path, synchronous=settings.sqlite_synchronous, projector=projector,
                      on_commit=on_commit)  # fmt: skip


def owns_data_dir(settings: Settings) -> bool:
    """Whether the log is one process's (SQLite): then one server per data dir, which it locks.
    Processes that share a PostgreSQL log may share a data dir (its files, LanceDB) too."""
    return not settings.database_url


def describe(settings: Settings) -> str:
    """For the startup line."""
    if settings.database_url:
        host = settings.database_url.split("@")[-1].split("?")[0]  # no credentials in logs
        return f"PostgreSQL event log at {host}"
    return f"SQLite event log, {settings.sqlite_synchronous}"
