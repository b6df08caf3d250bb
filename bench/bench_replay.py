"""Rebuilding every view from the log (`threadlog replay`), and `replay --verify`, over a 1,000,000-event log.

The log is built directly with sqlite3 `executemany` into the event store's own schema, as
the server would have written it for streamed runs: threads, user messages, run status
snapshots, run steps, assistant messages with their streamed text deltas.

    python bench/bench_replay.py [--quick] [--events N] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import os
import pstats
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import calibration, machine, uptime
from events.compaction import compact
from events.records import SCHEMA_VERSION, encode
from events.store import EventStore, open_connection
from projections import build_projector
from projections.rebuild import fold_log, rebuild, verify

GOAL_EVENTS_PER_S = 200_000.0

TURNS_PER_THREAD = 8
DELTAS_PER_MESSAGE = 40
INSERT = (
    "INSERT INTO events (sequence, stream_id, version, type, data, created_at, run_id, schema_version) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "streaming", "tokens"]


Row = tuple[int, str, int, str, str, float, str | None, int]


def run_object(run_id: str, thread_id: str, status: str, created: int) -> dict[str, Any]:
    done = status == "completed"
    return {
        "id": run_id,
        "object": "thread.run",
        "created_at": created,
        "assistant_id": "asst_bench",
        "thread_id": thread_id,
        "status": status,
        "started_at": None if status in ("queued",) else created,
        "expires_at": None if done else created + 600,
        "cancelled_at": None,
        "failed_at": None,
        "completed_at": created + 2 if done else None,
        "required_action": None,
        "last_error": None,
        "model": "gpt-4o-mini",
        "instructions": "You are a helpful assistant. Answer briefly and cite your sources when you use files.",
        "tools": [{"type": "function", "function": {"name": "lookup", "description": None, "parameters": None}}],
        "tool_resources": {},
        "metadata": {},
        "incomplete_details": None,
        "usage": {"prompt_tokens": 120, "completion_tokens": 40, "total_tokens": 160} if done else None,
        "temperature": 1.0,
        "top_p": 1.0,
        "max_prompt_tokens": None,
        "max_completion_tokens": None,
        "truncation_strategy": {"type": "auto", "last_messages": None},
        "response_format": "auto",
        "tool_choice": "auto",
        "parallel_tool_calls": True,
    }


def message_object(message_id: str, thread_id: str, role: str, text: str | None, status: str, run_id: str | None,
                   created: int) -> dict[str, Any]:  # fmt: skip
    return {
        "id": message_id,
        "object": "thread.message",
        "created_at": created,
        "thread_id": thread_id,
        "status": status,
        "incomplete_details": None,
        "completed_at": created + 2 if status == "completed" and run_id else None,
        "incomplete_at": None,
        "role": role,
        "content": [] if text is None else [{"type": "text", "text": {"value": text, "annotations": []}}],
        "assistant_id": "asst_bench" if run_id else None,
        "run_id": run_id,
        "attachments": [],
        "metadata": {},
    }


def step_object(
    step_id: str, run_id: str, thread_id: str, message_id: str, status: str, created: int
) -> dict[str, Any]:
    done = status == "completed"
    return {
        "id": step_id,
        "object": "thread.run.step",
        "created_at": created,
        "run_id": run_id,
        "assistant_id": "asst_bench",
        "thread_id": thread_id,
        "type": "message_creation",
        "status": status,
        "cancelled_at": None,
        "completed_at": created + 2 if done else None,
        "expired_at": None,
        "failed_at": None,
        "last_error": None,
        "step_details": {"type": "message_creation", "message_creation": {"message_id": message_id}},
        "usage": {"prompt_tokens": 120, "completion_tokens": 40, "total_tokens": 160} if done else None,
        "metadata": {},
    }


def generate(total: int) -> Iterator[Row]:
    """Rows of a log as the server writes it, until `total` events."""
    sequence = 0
    created = 1_700_000_000
    t = 0
    while True:
        thread_id = f"thread_{t:020d}"
        version = 0
        stamp = float(created)

        def emit(
            type_: str,
            data: dict[str, Any] | str,
            run_id: str | None = None,
            stream: str = thread_id,
            at: float = stamp,
        ) -> Row:
            nonlocal sequence, version
            sequence += 1
            version += 1
            payload = data if isinstance(data, str) else encode(data)
            return (sequence, stream, version, type_, payload, at, run_id, SCHEMA_VERSION)

        yield emit("thread.created", {"id": thread_id, "object": "thread", "created_at": created, "metadata": {},
                                      "tool_resources": {}})  # fmt: skip
        for turn in range(TURNS_PER_THREAD):
            key = f"{t:012d}{turn:04d}"
            run_id, step_id = f"run_{key}", f"step_{key}"
            user_id, reply_id = f"msg_u{key}", f"msg_a{key}"
            question = " ".join(WORDS[(turn + i) % len(WORDS)] for i in range(12))
            yield emit("thread.message.created", message_object(user_id, thread_id, "user", question, "completed",
                                                                None, created))  # fmt: skip
            # As server/routes/runs.py and server/runs/engine.py write a streamed text answer.
            for name, status in (("created", "queued"), ("queued", "queued"), ("in_progress", "in_progress")):
                yield emit(f"thread.run.{name}", run_object(run_id, thread_id, status, created), run_id)
            for name in ("created", "in_progress"):
                yield emit(f"thread.run.step.{name}", step_object(step_id, run_id, thread_id, reply_id, "in_progress",
                                                                  created), run_id)  # fmt: skip
            for name in ("created", "in_progress"):
                pending = message_object(reply_id, thread_id, "assistant", None, "in_progress", run_id, created)
                yield emit(f"thread.message.{name}", pending, run_id)
            parts = []
            for d in range(DELTAS_PER_MESSAGE):
                word = (" " if d else "") + WORDS[(turn * 7 + d) % len(WORDS)]
                parts.append(word)
                annotations = ',"annotations":[]' if d == 0 else ""
                yield emit(
                    "thread.message.delta",
                    f'{{"id":"{reply_id}","object":"thread.message.delta","delta":{{"content":[{{"index":0,'
                    f'"type":"text","text":{{"value":{json.dumps(word)}{annotations}}}}}]}}}}',
                    run_id,
                )
            answer = "".join(parts)
            yield emit("thread.message.completed", message_object(reply_id, thread_id, "assistant", answer,
                                                                  "completed", run_id, created), run_id)  # fmt: skip
            yield emit("thread.run.step.completed", step_object(step_id, run_id, thread_id, reply_id, "completed",
                                                                created), run_id)  # fmt: skip
            yield emit("thread.run.completed", run_object(run_id, thread_id, "completed", created), run_id)
            if sequence >= total:
                return
        t += 1
        created += 1


def build_log(db_path: Path, total: int) -> int:
    async def schema() -> None:
        store = EventStore(db_path)
        await store.open()
        await store.close()

    asyncio.run(schema())
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("BEGIN")
    chunk: list[Row] = []
    count = 0
    for row in generate(total):
        chunk.append(row)
        if len(chunk) == 100_000:
            conn.executemany(INSERT, chunk)
            count += len(chunk)
            chunk = []
    conn.executemany(INSERT, chunk)
    count += len(chunk)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return count


def mix(db_path: Path) -> str:
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT type, COUNT(*) FROM events GROUP BY type ORDER BY 2 DESC").fetchall()
    return ", ".join(f"{t} {n:,}" for t, n in rows)


def profile_fold(db_path: Path, upto: int) -> None:
    """cProfile the fold over the first `upto` events (the part of a rebuild that scales with the log)."""

    async def fold() -> None:
        conn = await open_connection(db_path)
        try:
            await fold_log(conn, build_projector(), upto=upto)
        finally:
            await conn.close()

    profile = cProfile.Profile()
    profile.enable()
    asyncio.run(fold())
    profile.disable()
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(16)
    print(f"\nprofile of folding the first {upto:,} events (cProfile, by own time; profiling slows it ~2x):")
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip()))


def check_equivalence(db_path: Path, upto: int) -> tuple[str, float, float]:
    """Fold the first `upto` events both ways (skipping superseded work, and folding every event
    one by one through the same folds the live projector applies) and compare the views."""

    async def both() -> tuple[str, float, float]:
        conn = await open_connection(db_path)
        try:
            started = time.perf_counter()
            fast, _, _ = await fold_log(conn, build_projector(), upto=upto)
            fast_s = time.perf_counter() - started
            started = time.perf_counter()
            full, _, _ = await fold_log(conn, build_projector(), upto=upto, skip_superseded=False)
            full_s = time.perf_counter() - started
        finally:
            await conn.close()
        if fast.keys() != full.keys():
            return "MISMATCH: different view keys", fast_s, full_s
        for key, view in full.items():
            other = fast[key]
            if (view is None) != (other is None) or (
                view is not None and other is not None and (view.doc != other.doc or view.ordinal != other.ordinal)
            ):
                return f"MISMATCH at {key}", fast_s, full_s
        return f"identical ({len(full):,} views)", fast_s, full_s

    return asyncio.run(both())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100,000 events instead of 1,000,000")
    parser.add_argument("--events", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=2, help="rebuilds to run; the best is reported")
    parser.add_argument("--check", type=int, default=100_000, help="events to fold both ways and compare (0: skip)")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the rebuild (done anyway when the goal is missed)"
    )
    args = parser.parse_args()
    total = args.events or (100_000 if args.quick else 1_000_000)
    print(machine())
    print(calibration())
    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(tmp) / "threadlog.sqlite"
        started = time.perf_counter()
        count = build_log(db_path, total)
        size = db_path.stat().st_size / 1e6
        print(f"built a log of {count:,} events ({size:,.0f} MB) in {time.perf_counter() - started:.1f}s")
        print(f"mix: {mix(db_path)}")

        # What `threadlog replay --data-dir D` runs (server/cli.py): projections.rebuild.rebuild.
        reports = []
        for attempt in range(1, args.repeat + 1):
            cpu = time.process_time()
            report = asyncio.run(rebuild(db_path, build_projector()))
            cpu = time.process_time() - cpu
            reports.append((report, cpu))
            print(
                f"rebuild #{attempt}: {report.events:,} events -> {report.views:,} views in {report.seconds:.2f}s "
                f"= {report.events_per_second:,.0f} events/s (process CPU {cpu:.2f}s; load {os.getloadavg()[0]:.2f})"
            )
        best, best_cpu = max(reports, key=lambda r: r[0].events_per_second)
        checked = asyncio.run(verify(db_path, build_projector()))
        status = "OK" if checked.difference is None else f"MISMATCH {checked.difference}"
        print(
            f"verify:  {checked.events:,} events, {checked.views:,} views compared in {checked.seconds:.2f}s "
            f"({checked.events_per_second:,.0f} events/s): {status}"
        )
        equivalence = "not checked"
        if args.check:
            upto = min(count, args.check)
            same, fast_s, full_s = check_equivalence(db_path, upto)
            equivalence = (
                f"first {upto:,} events folded skipping superseded work ({upto / fast_s:,.0f} events/s) and "
                f"event by event ({upto / full_s:,.0f} events/s): {same}"
            )
        # What `threadlog compact --older-than 30d` runs (the log's runs all ended in 2023), then
        # the size the compacted log takes once its free pages are given back (VACUUM INTO).
        compacted = compact(db_path, 30 * 86400)
        vacuumed = Path(tmp) / "compacted.sqlite"
        with contextlib.closing(sqlite3.connect(db_path)) as conn:
            conn.execute(f"VACUUM INTO '{vacuumed}'")
        compacted_size = vacuumed.stat().st_size / 1e6
        after_check = asyncio.run(verify(vacuumed, build_projector()))
        after_status = "OK" if after_check.difference is None else f"MISMATCH {after_check.difference}"
        compaction = (
            f"{compacted.runs:,} runs, {compacted.events_removed:,} delta events removed in {compacted.seconds:.1f}s; "
            f"payload per run {compacted.bytes_per_run_before:,.0f} -> {compacted.bytes_per_run_after:,.0f} bytes; "
            f"log file {size:,.0f} MB -> {compacted_size:,.0f} MB ({compacted_size / size:.0%}); "
            f"verify after compaction: {after_status}"
        )
        print(f"compact: {compaction}")
        verdict = "met" if best.events_per_second >= GOAL_EVENTS_PER_S else "MISSED"
        print("\n== summary: projection rebuild (threadlog replay)")
        print(f"   {machine()}")
        print(f"   {calibration()}")
        print(f"   uptime: {uptime()}")
        print("   synchronous: NORMAL (replay is one write transaction; the mode only affects its single commit)")
        print(f"   log: {count:,} events, {size:,.0f} MB; {mix(db_path)}")
        print(
            f"   rebuild, best of {len(reports)}: {best.events_per_second:,.0f} events/s "
            f"({best.seconds:.2f}s wall, {best.events / best_cpu:,.0f} events per CPU-second)   "
            f"goal >= {GOAL_EVENTS_PER_S:,.0f} events/s: {verdict}"
        )
        print(f"   verify (rebuilt == live): {status}, {checked.events_per_second:,.0f} events/s")
        print(f"   equivalence: {equivalence}")
        print(f"   compaction (threadlog compact --older-than 30d): {compaction}")
        if args.profile or verdict == "MISSED":
            profile_fold(db_path, min(count, 200_000))


if __name__ == "__main__":
    main()
