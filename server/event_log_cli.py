"""`threadlog events THREAD_OR_RUN`: a thread's or a run's log on the terminal.

It reads the SQLite file read-only, so it works beside a running server (WAL readers never
block the writer). `--follow` polls for what commits next, as `tail -f` does; following a run
stops once the run has ended. One line per event, or with `--json` one JSON object per line
(the stored event: sequence, stream, type, time, run, request id, payload) for `jq` and scripts.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import sqlite3
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from events.records import RUN_END_TYPES

__all__ = ["print_events"]

_POLL_S = 0.2


def print_events(
    db_path: Path,
    target: str,
    *,
    follow: bool = False,
    types: tuple[str, ...] = (),
    as_json: bool = False,
    out: TextIO = sys.stdout,
) -> int:
    """Print the events of `target` (a run id, else a stream id); the number printed."""
    column = "run_id" if target.startswith("run_") else "stream_id"
    printed = 0
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as conn:
        conn.execute("PRAGMA busy_timeout=5000")
        if not conn.execute(f"SELECT 1 FROM events WHERE {column} = ? LIMIT 1", (target,)).fetchone():
            raise LookupError(f"no events for {target} in {db_path}")
        after = 0
        while True:
            ended = False
            for sequence, stream_id, type_, data, created_at, run_id, request_id in _read(conn, column, target, after):
                after = sequence
                ended = ended or (column == "run_id" and type_ in RUN_END_TYPES)
                if types and not any(fnmatch.fnmatchcase(type_, pattern) for pattern in types):
                    continue
                payload = json.loads(data)
                if as_json:
                    record = {
                        "sequence": sequence,
                        "stream_id": stream_id,
                        "type": type_,
                        "created_at": created_at,
                        "run_id": run_id,
                        "request_id": request_id,
                        "data": payload,
                    }
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                else:
                    out.write(_line(sequence, type_, created_at, payload) + "\n")
                printed += 1
            out.flush()
            if not follow or ended:
                return printed
            time.sleep(_POLL_S)  # another process appends; nothing here to wait on but the file


def _read(conn: sqlite3.Connection, column: str, target: str, after: int) -> Iterator[tuple[Any, ...]]:
    yield from conn.execute(
        f"SELECT sequence, stream_id, type, data, created_at, run_id, request_id FROM events "
        f"WHERE {column} = ? AND sequence > ? ORDER BY sequence",
        (target, after),
    )


def _line(sequence: int, type_: str, created_at: float, data: dict[str, Any]) -> str:
    stamp = datetime.fromtimestamp(created_at, UTC).strftime("%H:%M:%S.%f")[:-3]
    return f"{sequence:>8}  {stamp}  {type_:<32}  {_summary(type_, data)}".rstrip()


def _summary(type_: str, data: dict[str, Any]) -> str:
    """What a person looks for in each kind of event, on one line."""
    if type_ == "thread.message.delta":
        parts = data.get("delta", {}).get("content") or []
        return "".join(json.dumps(p.get("text", {}).get("value", ""))[1:-1] for p in parts)
    if type_ == "thread.run.step.delta":
        calls = (data.get("delta", {}).get("step_details") or {}).get("tool_calls") or []
        return " ".join(json.dumps(c, separators=(",", ":")) for c in calls)[:200]
    if type_.startswith("thread.message."):
        text = " ".join(
            p.get("text", {}).get("value", "") for p in data.get("content") or [] if p.get("type") == "text"
        )
        return f"{data.get('id')} {data.get('role')} {data.get('status')} {json.dumps(text[:120])}"
    if type_.startswith("thread.run.step."):
        return f"{data.get('id')} {data.get('type')} {data.get('status')}"
    if type_.startswith("thread.run."):
        error = data.get("last_error") or {}
        usage = data.get("usage") or {}
        details = f" {error.get('code')}: {error.get('message')}" if error else ""
        tokens = f" tokens {usage.get('prompt_tokens')}/{usage.get('completion_tokens')}" if usage else ""
        return f"{data.get('id')} {data.get('status')}{tokens}{details}"
    return str(data.get("id", ""))
