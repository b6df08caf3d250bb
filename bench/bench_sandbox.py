"""Benchmark of the code_interpreter sandbox: latency and throughput figures (no assertions).

    python bench/bench_sandbox.py [--warm 100] [--cold 10] [--sessions 8] [--rounds 5]

Prints: the machine; p50/p99 of `print(1)` on a new session (cold: bwrap +
interpreter start) and on a running one (warm); calls/s with N concurrent
sessions each running a small CPU loop; peak RSS of the kernels (from /proc).
Output is returned together with the result, so time to first output equals
time to result.

With --server (the default; --no-server skips it) the same is measured as a user
sees it: a real server process with the fake upstream as the model, runs streamed
over raw SSE, timed from the event that closes the model's code (the last
`code_interpreter.input` delta) to the first step delta carrying `outputs`, and to
the step's `thread.run.step.completed`: cold (a new thread each time) and warm
(the same thread).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.sandbox import SandboxLimits, SandboxManager, sandbox_status

CPU_LOOP = "s = 0\nfor i in range(300_000):\n    s += i * i\nprint(s)"


def machine() -> str:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    bwrap = shutil.which("bwrap")
    version = subprocess.run([bwrap, "--version"], capture_output=True, text=True).stdout.strip() if bwrap else "none"
    return (
        f"machine: nproc={os.cpu_count()} cpu={model!r} kernel={platform.release()} "
        f"python={platform.python_version()} {version} euid={os.geteuid()}"
    )


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index] * 1000


def describe(name: str, samples: list[float]) -> str:
    return (
        f"{name:<28} n={len(samples):<4} p50={pct(samples, 50):8.1f} ms  p99={pct(samples, 99):8.1f} ms  "
        f"mean={statistics.fmean(samples) * 1000:8.1f} ms"
    )


def sandbox_pids(manager: SandboxManager) -> dict[str, list[int]]:
    """Host pids of every process in each session's sandbox (children of its pid 1)."""
    result: dict[str, list[int]] = {}
    for session_id, session in manager._sessions.items():
        kernel = session.kernel
        if kernel is None:
            continue
        roots = [kernel.ns_init_pid] if kernel.ns_init_pid else [kernel.proc.pid]
        pids: list[int] = []
        while roots:
            pid = roots.pop()
            try:
                with open(f"/proc/{pid}/task/{pid}/children") as fh:
                    children = [int(p) for p in fh.read().split()]
            except OSError:
                children = []
            pids.extend(children)
            roots.extend(children)
        result[session_id] = pids
    return result


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


async def sample_rss(manager: SandboxManager, peaks: dict[str, int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        for session_id, pids in sandbox_pids(manager).items():
            total = sum(rss_kib(pid) for pid in pids)
            peaks[session_id] = max(peaks.get(session_id, 0), total)
        await asyncio.sleep(0.02)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cold", type=int, default=10)
    parser.add_argument("--warm", type=int, default=100)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--server", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--server-runs", type=int, default=40)
    args = parser.parse_args()

    print(machine())
    reason = sandbox_status()
    print(f"sandbox: {'available' if reason is None else reason}")
    if reason is not None:
        return
    limits = SandboxLimits(wall_time_s=60)
    with tempfile.TemporaryDirectory(prefix="threadlog-bench-") as root:
        manager = SandboxManager(Path(root), limits)
        try:
            await manager.execute("warmup", "print(1)")  # probe + page cache
            print(f"mode: {manager._mode}")

            cold: list[float] = []
            for i in range(args.cold):
                started = time.perf_counter()
                result = await manager.execute(f"cold{i}", "print(1)")
                cold.append(time.perf_counter() - started)
                assert result.logs == "1\n", result
                await manager.close_session(f"cold{i}")
            print(describe("print(1) cold session", cold))

            warm: list[float] = []
            for _ in range(args.warm):
                started = time.perf_counter()
                await manager.execute("warm", "print(1)")
                warm.append(time.perf_counter() - started)
            print(describe("print(1) warm session", warm))
            print("time to first output = time to result (output is returned with the result)")

            peaks: dict[str, int] = {}
            idle = sandbox_pids(manager).get("warm", [])
            print(f"idle kernel RSS: {sum(rss_kib(p) for p in idle) / 1024:.1f} MiB (bwrap pid 1 + python kernel)")

            sessions = [f"conc{i}" for i in range(args.sessions)]
            await asyncio.gather(*(manager.execute(s, "print(0)") for s in sessions))
            single: list[float] = []
            for _ in range(3):
                started = time.perf_counter()
                await manager.execute("conc0", CPU_LOOP)
                single.append(time.perf_counter() - started)
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample_rss(manager, peaks, stop))
            latencies: list[float] = []

            async def worker(session_id: str) -> None:
                for _ in range(args.rounds):
                    started = time.perf_counter()
                    result = await manager.execute(session_id, CPU_LOOP)
                    latencies.append(time.perf_counter() - started)
                    assert result.error is None, result

            started = time.perf_counter()
            await asyncio.gather(*(worker(s) for s in sessions))
            elapsed = time.perf_counter() - started
            stop.set()
            await sampler
            calls = args.sessions * args.rounds
            print(f"CPU loop alone (one session):  p50={pct(single, 50):.1f} ms")
            print(
                f"concurrent: {args.sessions} sessions x {args.rounds} CPU-loop calls on {os.cpu_count()} cores: "
                f"{calls / elapsed:.1f} calls/s, {describe('latency', latencies).strip()}"
            )
            conc = [peaks.get(s, 0) for s in sessions]
            print(
                f"peak RSS per sandbox: max={max(conc) / 1024:.1f} MiB mean={statistics.fmean(conc) / 1024:.1f} MiB; "
                f"sum over {len(conc)} sandboxes={sum(conc) / 1024:.1f} MiB"
            )

            started = time.perf_counter()
            result = await manager.execute("pandas", "import pandas, numpy\nprint(pandas.__version__)")
            print(f"first `import pandas, numpy` in a new session: {(time.perf_counter() - started) * 1000:.0f} ms")
            pandas_rss = sum(rss_kib(p) for p in sandbox_pids(manager).get("pandas", []))
            print(f"kernel RSS with pandas+numpy imported: {pandas_rss / 1024:.1f} MiB")
        finally:
            await manager.aclose()
    if args.server:
        await asyncio.to_thread(through_server, args.server_runs)


def through_server(runs: int) -> None:
    """Tool call → first output / finish, measured on the SSE stream of real runs."""
    import json

    import httpx

    from server.fake_upstream import serve_in_thread
    from tests.runs_fixtures import start_server

    upstream = serve_in_thread()
    with tempfile.TemporaryDirectory(prefix="threadlog-bench-srv-") as root:
        server = start_server(Path(root) / "data", upstream)
        try:
            with httpx.Client(base_url=server.base_url, timeout=60, headers={"OpenAI-Beta": "assistants=v2"}) as http:
                assistant = http.post(
                    "/assistants", json={"model": "fake-model", "tools": [{"type": "code_interpreter"}]}
                ).json()

                def one(thread_id: str | None) -> tuple[float, float, str]:
                    message = {"role": "user", "content": "code: print(1)"}
                    if thread_id is None:
                        url, body = "/threads/runs", {"thread": {"messages": [message]}}
                    else:
                        http.post(f"/threads/{thread_id}/messages", json=message).raise_for_status()
                        url, body = f"/threads/{thread_id}/runs", {}
                    body |= {"assistant_id": assistant["id"], "stream": True}
                    code_done = first_output = finished = 0.0
                    thread = thread_id or ""
                    with http.stream("POST", url, json=body) as response:
                        event = ""
                        for line in response.iter_lines():
                            if line.startswith("event: "):
                                event = line[7:]
                                continue
                            if not line.startswith("data: ") or line == "data: [DONE]":
                                continue
                            now = time.perf_counter()
                            data = json.loads(line[6:])
                            if event == "thread.run.created":
                                thread = data["thread_id"]
                            calls = (data.get("delta") or data).get("step_details", {}).get("tool_calls") or []
                            ci = [c.get("code_interpreter") or {} for c in calls if c.get("type") == "code_interpreter"]
                            if event == "thread.run.step.delta" and any(c.get("input") for c in ci):
                                code_done = now
                            if any(c.get("outputs") for c in ci) and not first_output:
                                first_output = now
                            if event == "thread.run.step.completed" and ci:
                                finished = now
                    assert code_done and first_output and finished, "no code_interpreter step seen"
                    return first_output - code_done, finished - code_done, thread

                _, _, warm_thread = one(None)
                cold_first, cold_done, warm_first, warm_done = [], [], [], []
                for _ in range(max(1, runs // 4)):
                    a, b, _ = one(None)
                    cold_first.append(a)
                    cold_done.append(b)
                for _ in range(runs):
                    a, b, _ = one(warm_thread)
                    warm_first.append(a)
                    warm_done.append(b)
            print("through the server (tool call = last code input delta on the SSE stream):")
            print(describe("cold: call -> first output", cold_first))
            print(describe("cold: call -> step completed", cold_done))
            print(describe("warm: call -> first output", warm_first))
            print(describe("warm: call -> step completed", warm_done))
        finally:
            server.stop()
            upstream.stop()


if __name__ == "__main__":
    asyncio.run(main())
