"""Bounded log growth: drop the text and step deltas of runs that ended long enough ago.

Most of a log is deltas (`thread.message.delta`, `thread.run.step.delta`), and the snapshot
that closes each message and step (`thread.message.completed`, `thread.run.step.completed`,
or the failed / incomplete / cancelled one) holds everything they said. No view is folded
from a delta, so views, `replay --verify` and the event viewer stay as they were; a compacted
run replays as its snapshots. Runs that have not ended keep every event (a client may still
resume their stream). Sequences of the dropped events simply stay unused: readers go by
"after sequence N", and no stream's last event is a delta of an ended run, so the next
sequence and every stream's next version are unchanged.

It runs beside a live server: each batch of runs is one short write transaction, which the
server's writer waits out like any other (both use SQLite's busy timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from events.records import DELTA_TYPES, RUN_END_TYPES
from events.store import NOT_A_DELTA, sql_strings

__all__ = ["DELTA_TYPES", "CompactionReport", "compact", "compact_periodically"]

logger = logging.getLogger("threadlog.compaction")


@dataclass(frozen=True)
class CompactionReport:
    runs: int  # runs whose deltas were dropped (those that had any)
    events_removed: int
    bytes_before: int  # payload bytes of those runs' events, before and after
    bytes_after: int
    seconds: float

    @property
    def bytes_per_run_before(self) -> float:
        return self.bytes_before / self.runs if self.runs else 0.0

    @property
    def bytes_per_run_after(self) -> float:
        return self.bytes_after / self.runs if self.runs else 0.0


def compact(
    db_path: Path,
    older_than_s: float,
    *,
    now: float | None = None,
    batch_runs: int = 200,
    progress: Callable[[int, int], None] | None = None,
) -> CompactionReport:
    """Drop the deltas of runs that ended more than `older_than_s` seconds before `now`."""
    started = time.perf_counter()
    cutoff = (time.time() if now is None else now) - older_than_s
    with contextlib.closing(sqlite3.connect(db_path, timeout=30, isolation_level=None)) as conn:
        conn.execute("PRAGMA busy_timeout=30000")
        ended = _ended_runs_with_deltas(conn, cutoff)
        total = len({span["run"] for span in ended})
        done: set[object] = set()
        removed = before = after = 0
        for start in range(0, len(ended), batch_runs):
            chunk = ended[start : start + batch_runs]
            conn.execute("BEGIN IMMEDIATE")
            try:
                for span in chunk:
                    size, deltas_size = conn.execute(_SIZE_OF_RUN, span).fetchone()
                    removed += conn.execute(_DELETE_DELTAS, span).rowcount
                    before += int(size)
                    after += int(size) - int(deltas_size)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            done.update(span["run"] for span in chunk)
            if progress is not None:
                progress(len(done), total)
    return CompactionReport(len(done), removed, before, after, time.perf_counter() - started)


async def compact_periodically(db_path: Path, older_than_s: float, interval_s: float) -> None:
    """The server's background compaction: every `interval_s`, in a thread beside the writer."""
    while True:
        try:
            report = await asyncio.to_thread(compact, db_path, older_than_s)
        except sqlite3.Error as exc:
            logger.warning("background compaction failed: %s", exc)
        else:
            if report.runs:
                logger.info(
                    "compacted %d runs: removed %d delta events (%.0f -> %.0f bytes per run)",
                    report.runs,
                    report.events_removed,
                    report.bytes_per_run_before,
                    report.bytes_per_run_after,
                    extra={"event": "compaction", "runs": report.runs, "events_removed": report.events_removed},
                )
        await asyncio.sleep(interval_s)  # a schedule, not a wait for something


_DELTAS = sql_strings(DELTA_TYPES)
_IN_SPAN = "stream_id = :stream AND version BETWEEN :first AND :last AND run_id = :run"
_SIZE_OF_RUN = (
    f"SELECT COALESCE(sum(length(data)), 0), "
    f"COALESCE(sum(CASE WHEN type IN ({_DELTAS}) THEN length(data) ELSE 0 END), 0) FROM events WHERE {_IN_SPAN}"
)
_DELETE_DELTAS = f"DELETE FROM events WHERE {_IN_SPAN} AND type IN ({_DELTAS})"


def _ended_runs_with_deltas(conn: sqlite3.Connection, cutoff: float) -> list[dict[str, object]]:
    """Each ended run's span in each stream it wrote, from its first event to its last (its deltas
    lie between), found by the index of runs' marks (events/store.py): deltas are not indexed."""
    rows = conn.execute(
        "SELECT run_id, stream_id, MIN(version), MAX(version) FROM events "
        f"WHERE run_id IS NOT NULL AND {NOT_A_DELTA} GROUP BY run_id, stream_id "
        f"HAVING MAX(CASE WHEN type IN ({sql_strings(sorted(RUN_END_TYPES))}) THEN created_at END) < ?",
        (cutoff,),
    ).fetchall()
    spans = [
        {"run": str(run), "stream": str(stream), "first": int(first), "last": int(last)}
        for run, stream, first, last in rows
    ]
    return [
        span
        for span in spans
        if conn.execute(
            f"SELECT EXISTS (SELECT 1 FROM events WHERE {_IN_SPAN} AND type IN ({_DELTAS}))", span
        ).fetchone()[0]
    ]
