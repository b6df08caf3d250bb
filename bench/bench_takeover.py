"""How long the runs of a dead server process wait before a surviving process settles them.

Two `threadlog serve` processes on one PostgreSQL database (a private cluster, started here) and
the fake upstream. Process A executes N streaming runs; then A is
  - killed (kill -9): B finds A's process gone at its next scan (both on this machine), or
  - stopped (SIGSTOP, alive but silent, as a machine that dropped off the network): B waits
    for A's leases to lapse (THREADLOG_RUN_LEASE_SECONDS, default 7 s) and its next scan.
Printed: the time from the signal to each run's `failed` (read from B every 20 ms), p50 / max.

    python bench/bench_takeover.py [--runs 20] [--lease 7]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from openai import OpenAI  # noqa: E402

from bench.machine import calibration, machine, uptime  # noqa: E402
from server.fake_upstream import serve_in_thread  # noqa: E402
from tests.pg_cluster import PostgresCluster  # noqa: E402
from tests.serverproc import ServerProcess  # noqa: E402

MODEL = "fake-model"


def _server(root: Path, name: str, dsn: str, upstream_url: str, lease: float) -> ServerProcess:
    env = {
        "THREADLOG_DATABASE_URL": dsn,
        "THREADLOG_UPSTREAM_BASE_URL": upstream_url,
        "THREADLOG_RUN_LEASE_SECONDS": str(lease),
    }
    return ServerProcess(data_dir=root / name, env=env).start()


def _case(root: Path, cluster: PostgresCluster, upstream_url: str, how: str, runs: int, lease: float) -> list[float]:
    dsn = cluster.create_database()
    a = _server(root, f"{how}-a", dsn, upstream_url, lease)
    b = _server(root, f"{how}-b", dsn, upstream_url, lease)
    try:
        sdk_a = OpenAI(base_url=a.base_url, api_key="k", max_retries=0)
        sdk_b = OpenAI(base_url=b.base_url, api_key="k", max_retries=0)
        assistant = sdk_a.beta.assistants.create(model=MODEL)
        started: list[Any] = []
        for _ in range(runs):
            thread = sdk_a.beta.threads.create(messages=[{"role": "user", "content": "long: 600\nslow: 100"}])
            started.append(sdk_a.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id))
        pending = {run.id: run.thread_id for run in started}
        while any(sdk_b.beta.threads.runs.retrieve(r, thread_id=t).status != "in_progress" for r, t in pending.items()):
            time.sleep(0.02)
        assert a.process is not None
        a.process.send_signal(signal.SIGKILL if how == "kill -9" else signal.SIGSTOP)
        signalled = time.monotonic()
        if how == "kill -9":
            a.process.wait()  # reaped, as a supervisor does (a zombie's pid still exists)
        settled: list[float] = []
        while pending and time.monotonic() - signalled < 120:
            for run_id, thread_id in list(pending.items()):
                if sdk_b.beta.threads.runs.retrieve(run_id, thread_id=thread_id).status == "failed":
                    settled.append(time.monotonic() - signalled)
                    del pending[run_id]
            time.sleep(0.02)
        if pending:
            print(f"   {how}: {len(pending)} runs not settled after 120 s")
        return settled
    finally:
        if a.process is not None and a.process.poll() is None:
            a.process.send_signal(signal.SIGCONT)
        b.stop()
        a.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--lease", type=float, default=7.0, help="THREADLOG_RUN_LEASE_SECONDS")
    args = parser.parse_args()
    print(machine())
    print(calibration())
    upstream = serve_in_thread()
    root = Path(tempfile.mkdtemp(prefix="threadlog-bench-takeover-"))
    cluster = PostgresCluster(Path(tempfile.mkdtemp(prefix="threadlog-bench-pg-"))).start()
    lines = []
    try:
        for how in ("kill -9", "SIGSTOP"):
            times = sorted(_case(root, cluster, upstream.base_url, how, args.runs, args.lease))
            if not times:
                continue
            bound = "" if how == "kill -9" else f"; bound: lease {args.lease:.0f} s + scan {args.lease / 3:.1f} s"
            lines.append(
                f"   {how:8s} {len(times)} runs taken over: p50 {statistics.median(times):.2f} s, "
                f"max {times[-1]:.2f} s (first {times[0]:.2f} s){bound}"
            )
            print(lines[-1])
    finally:
        cluster.stop()
        upstream.stop()
    print("== summary: take-over of a dead process's runs (PostgreSQL, 2 server processes)")
    print(f"   {machine()}")
    print(f"   uptime: {uptime()}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
