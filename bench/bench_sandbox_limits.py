"""The code_interpreter sandbox's bounds, measured: memory per session, disk per session, live sessions.

    python bench/bench_sandbox_limits.py [--sessions 40] [--max-sessions 8]

Prints (no assertions):
* memory: which cap is in force; 3 children of 300 MB each under a 512 MiB session cap
  (each under the 1 GiB per-process limit): their exit codes and the session's peak
  memory as the cgroup recorded it, against the cap;
* disk: how the quota is enforced (an image per session as root, else a watchdog), then a
  call writing 16 MiB files as fast as it can against a 256 MiB quota: peak bytes on disk,
  time from passing the quota to the stop (watchdog), bytes left after the call;
* sessions: `--sessions` threads each running one call with `--max-sessions` allowed:
  live kernels at the end and their total RSS (from /proc), against what every session
  kept alive would hold.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import calibration, machine
from server.sandbox import SandboxLimits, SandboxManager
from server.sandbox import files as datafiles

HOG = """
import subprocess, sys
child = "import time; b = b'x' * (300 << 20); time.sleep(2)"
procs = [subprocess.Popen([sys.executable, '-c', child]) for _ in range(3)]
print(sorted(p.wait() for p in procs))
"""

WRITER = """
import os
block = os.urandom(16 << 20)
for i in range(64):
    with open(f'/mnt/data/f{i}.bin', 'wb') as f:
        f.write(block)
"""


def _rss_of_kernels(root_pid: int) -> tuple[int, int]:
    """(number of sandboxed python processes under root_pid, their total RSS in bytes)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    count = rss = 0
    stack = list(children.get(root_pid, []))
    while stack:
        pid = stack.pop()
        stack += children.get(pid, [])
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"kernel.py" in cmdline and b"bwrap" not in cmdline.split(b"\0")[0]:
            count += 1
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) * 1024
    return count, rss


async def memory(tmp: Path) -> None:
    limits = SandboxLimits(wall_time_s=60, cpu_time_s=60, memory_bytes=1 << 30, session_memory_bytes=512 << 20)
    manager = SandboxManager(tmp / "mem", limits)
    try:
        result = await manager.execute("hog", HOG)
        session = manager._sessions.get("hog")
        peak = session.cgroup.memory_peak() if session is not None and session.cgroup is not None else None
        print(f"memory: cap in force: {manager.memory_cap}")
        peak_text = f"{peak / 2**20:.0f} MiB" if peak is not None else "not reported"
        print(
            f"memory: 3 x 300 MB children (each under 1024 MiB per process): exit codes "
            f"{result.logs.strip().splitlines()[-1]}; session peak {peak_text} against a 512 MiB cap"
        )
    finally:
        await manager.aclose()


async def disk(tmp: Path) -> None:
    quota = 256 << 20
    limits = SandboxLimits(wall_time_s=60, cpu_time_s=60, disk_quota_bytes=quota)
    manager = SandboxManager(tmp / "disk", limits)
    data_dir = manager.work_root / "writer" / "data"
    peak = 0
    passed_at: float | None = None

    async def watch() -> None:
        nonlocal peak, passed_at
        while True:
            used = await asyncio.to_thread(datafiles.usage, data_dir) if data_dir.exists() else 0
            if used > quota and passed_at is None:
                passed_at = time.perf_counter()
            peak = max(peak, used)
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    try:
        result = await manager.execute("writer", WRITER)
        stopped = time.perf_counter()
        watcher.cancel()
        left = datafiles.usage(data_dir)
        delay = f"{(stopped - passed_at) * 1000:.0f} ms" if passed_at is not None else "n/a"
        print(f"disk: enforced as {manager.disk_cap}")
        print(
            f"disk: quota 256 MiB, writing 16 MiB files: peak on disk {peak / 2**20:.0f} MiB "
            f"(overshoot {(peak - quota) / 2**20:.0f} MiB), quota passed -> call stopped in {delay}, "
            f"{left / 2**20:.0f} MiB left after the call; error: {(result.error or '').splitlines()[-1:]}"
        )
    finally:
        watcher.cancel()
        await manager.aclose()


async def sessions(tmp: Path, count: int, allowed: int) -> None:
    limits = SandboxLimits(wall_time_s=60, cpu_time_s=60, max_sessions=allowed)
    manager = SandboxManager(tmp / "sessions", limits)
    try:
        for i in range(count):
            await manager.execute(f"thread{i}", "import numpy, pandas\nx = 1")
        live, rss = _rss_of_kernels(os.getpid())
        per = rss / live if live else 0
        print(
            f"sessions: {count} threads with max {allowed} live: {live} kernels alive, {rss / 2**20:.0f} MiB RSS "
            f"(~{per / 2**20:.0f} MiB each; all {count} kept alive would be ~{per * count / 2**20:.0f} MiB)"
        )
    finally:
        await manager.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=40)
    parser.add_argument("--max-sessions", type=int, default=8)
    args = parser.parse_args()
    print(machine())
    print(calibration())
    if shutil.which("bwrap") is None:
        print("bubblewrap is not installed: nothing to measure")
        return
    with tempfile.TemporaryDirectory() as tmp:
        await memory(Path(tmp))
        await disk(Path(tmp))
        await sessions(Path(tmp), args.sessions, args.max_sessions)


if __name__ == "__main__":
    asyncio.run(main())
