"""What the benchmarks print about the machine they ran on, so figures can be compared."""

from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
import timeit
from pathlib import Path

__all__ = ["calibration", "machine", "uptime"]


def machine() -> str:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"machine: nproc={cpus}, cpu={model!r}, python={platform.python_version()} "
        f"({platform.python_implementation()}), sqlite={sqlite3.sqlite_version}, "
        f"{platform.system()} {platform.release()}"
    )


def calibration() -> str:
    """How fast this CPU runs Python right now (shared machines vary): best of 5 of sum(range(1000))."""
    best = min(timeit.repeat("sum(range(1000))", number=2000, repeat=5)) / 2000 * 1e6
    return (
        f"calibration: sum(range(1000)) takes {best:.1f} us here (about 8-10 us on an idle modern x86 core); "
        f"load average {os.getloadavg()[0]:.2f}"
    )


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return f"load average {os.getloadavg()}"
