"""Event append throughput and latency of the event log (group commit): SQLite per durability mode,
and PostgreSQL beside it (`--modes NORMAL,FULL,postgres`; a private cluster on loopback, started here).

Each appender appends 1-event batches in a loop to its own stream, awaiting each ack, with
the production projector attached (so every commit also writes the projection position,
and folded event types update their views in the same transaction).

    python bench/bench_events.py [--quick] [--modes NORMAL,FULL,postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import calibration, machine, uptime
from events.log import EventLog
from events.records import NewEvent
from events.store import EventStore
from projections import build_projector

GOAL_THROUGHPUT_256 = 50_000.0  # events/s
GOAL_P50_MS = 1.0

PROMISES = {
    "NORMAL": "WAL + synchronous=NORMAL: an acknowledged append survives a crash of the process (kill -9); "
    "the last commits before a power loss or OS crash may be lost (the WAL is fsynced at checkpoints).",
    "FULL": "WAL + synchronous=FULL: the WAL is fsynced at every commit, so an acknowledged append also "
    "survives power loss and OS crashes.",
    "postgres": "PostgreSQL (Debian's server, a private cluster on loopback, default settings: fsync on, "
    "synchronous_commit on): an acknowledged append survives power loss; positions taken under one row lock.",
}

_CLUSTER: Any = None  # the PostgreSQL cluster, started at the first postgres case


def _postgres_dsn() -> str:
    global _CLUSTER
    if _CLUSTER is None:
        from tests.pg_cluster import PostgresCluster

        _CLUSTER = PostgresCluster(Path(tempfile.mkdtemp(prefix="threadlog-bench-pg-"))).start()
    dsn: str = _CLUSTER.create_database()
    return dsn


def delta_event(message_id: str, n: int) -> NewEvent:
    return NewEvent(
        "thread.message.delta",
        {
            "id": message_id,
            "object": "thread.message.delta",
            "delta": {"content": [{"index": 0, "type": "text", "text": {"value": f" tok{n}"}}]},
        },
        run_id="run_bench",
    )


def plain_event(stream: str, n: int) -> NewEvent:
    return NewEvent("bench.tick", {"stream": stream, "n": n})


async def open_store(path: Path, mode: str, on_commit: Callable[[int, float], None] | None = None) -> EventLog:
    store: EventLog
    if mode == "postgres":
        from events.postgres import PostgresEventLog

        store = PostgresEventLog(_postgres_dsn(), projector=build_projector(), on_commit=on_commit)
    else:
        store = EventStore(path, synchronous=mode, projector=build_projector(), on_commit=on_commit)
    await store.open()
    return store


async def seed_messages(store: EventLog, streams: list[str]) -> None:
    """One thread + in-progress message per stream, for the delta workload to fold into."""
    for stream in streams:
        message = {
            "id": f"msg_{stream}",
            "object": "thread.message",
            "created_at": 0,
            "thread_id": stream,
            "status": "in_progress",
            "incomplete_details": None,
            "completed_at": None,
            "incomplete_at": None,
            "role": "assistant",
            "content": [],
            "assistant_id": "asst_bench",
            "run_id": "run_bench",
            "attachments": [],
            "metadata": {},
        }
        await store.append(stream, [NewEvent("thread.message.created", message, run_id="run_bench")])


async def throughput(
    path: Path, mode: str, appenders: int, per_appender: int, kind: str
) -> tuple[float, int, int, float]:
    """events/s, appends, transactions, process CPU seconds (all threads, incl. SQLite's; not the
    PostgreSQL server's own)."""
    transactions = 0

    def counting(events: int, seconds: float) -> None:
        nonlocal transactions
        transactions += 1

    store = await open_store(path, mode, counting)
    streams = [f"thread_{appenders}_{i}" for i in range(appenders)]
    if kind == "delta":
        await seed_messages(store, streams)
    transactions = 0

    async def appender(stream: str) -> None:
        def make(n: int) -> NewEvent:
            return delta_event(f"msg_{stream}", n) if kind == "delta" else plain_event(stream, n)

        for n in range(per_appender):
            await store.append(stream, [make(n)])

    cpu = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(appender(s) for s in streams))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    await store.close()
    total = appenders * per_appender
    return total / elapsed, total, transactions, cpu


async def latency(path: Path, mode: str, count: int) -> tuple[float, float, float]:
    """p50, p99, mean of single appends (ms) with one appender."""
    store = await open_store(path, mode)
    for n in range(50):  # warm-up
        await store.append("lat", [plain_event("lat", n)])
    samples = []
    for n in range(count):
        started = time.perf_counter_ns()
        await store.append("lat", [plain_event("lat", n)])
        samples.append((time.perf_counter_ns() - started) / 1e6)
    await store.close()
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return samples[len(samples) // 2], p99, statistics.mean(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--modes", default="NORMAL,FULL")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each case; the best is reported")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
        loop_name = "uvloop"
    except ImportError:
        loop_name = "asyncio"

    print(machine())
    print(calibration())
    print(f"event loop: {loop_name} (as the server); projector: production views; each appender awaits every ack\n")
    budget = {1: 1500, 16: 12_000, 256: 60_000} if not args.quick else {1: 300, 16: 2_000, 256: 10_240}
    lat_count = 300 if args.quick else 3000
    summary: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            print(f"== {'PostgreSQL' if mode == 'postgres' else f'synchronous={mode}'}")
            print(f"   {PROMISES[mode]}")
            summary.append(f"   {mode if mode == 'postgres' else 'synchronous=' + mode}: {PROMISES[mode]}")
            for kind, label in (("plain", "log-only events"), ("delta", "message deltas folded into views")):
                for appenders in (1, 16, 256):
                    per = max(1, budget[appenders] // appenders)
                    runs = []
                    for attempt in range(args.repeat):
                        path = Path(tmp) / f"{mode}-{kind}-{appenders}-{attempt}.sqlite"
                        runs.append(asyncio.run(throughput(path, mode, appenders, per, kind)))
                    rate, total, transactions, cpu = max(runs)
                    goal = ""
                    if appenders == 256:
                        verdict = "met" if rate >= GOAL_THROUGHPUT_256 else "MISSED"
                        goal = f"   goal >= {GOAL_THROUGHPUT_256:,.0f}/s: {verdict}"
                    line = (
                        f"append {label:34s} {appenders:4d} appenders: {rate:8,.0f} events/s "
                        f"(best of {len(runs)}: {', '.join(f'{r[0]:,.0f}' for r in runs)}; "
                        f"{total / transactions:.1f} appends/txn; {total / cpu:,.0f} events per CPU-s){goal}"
                    )
                    print(f"   {line}")
                    summary.append(f"   {mode:6s} {line}")
            path = Path(tmp) / f"{mode}-latency.sqlite"
            p50, p99, mean = min(asyncio.run(latency(path, mode, lat_count)) for _ in range(args.repeat))
            verdict = "met" if p50 <= GOAL_P50_MS else "MISSED"
            line = (
                f"single-append latency, 1 appender ({lat_count} appends, best of {args.repeat}): p50 {p50:.3f} ms, "
                f"p99 {p99:.3f} ms, mean {mean:.3f} ms   goal p50 <= {GOAL_P50_MS} ms: {verdict}"
            )
            print(f"   {line}\n")
            summary.append(f"   {mode:6s} {line}")
    print("== summary: event append (events/store.py, group commit)")
    print(f"   {machine()}")
    print(f"   {calibration()}")
    print(f"   uptime: {uptime()}")
    print(f"   event loop: {loop_name}; setting: THREADLOG_SQLITE_SYNCHRONOUS / --synchronous (default NORMAL)")
    print("\n".join(summary))
    if _CLUSTER is not None:
        _CLUSTER.stop()


if __name__ == "__main__":
    main()
