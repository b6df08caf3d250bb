"""Resource limits for one code_interpreter call, and their hand-off to the kernel.

The limits are enforced in two places on purpose: rlimits inside the sandbox
(the kernel sets them on itself before any user code runs, so every child it
forks inherits them) and a wall-clock deadline outside (the manager kills the
whole sandbox when the kernel does not answer in time). The outside deadline
is the one guarantee that cannot be switched off by the code being run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The kernel gets this much time after `wall_time_s` to interrupt the user's
# code itself (keeping the session's variables) before the manager kills it.
KILL_GRACE_S = 1.0

# /tmp and /dev/shm inside the sandbox are tmpfs, i.e. host memory that
# RLIMIT_AS does not see, so they get a fixed size.
MIN_TMPFS_BYTES = 64 << 20


@dataclass(frozen=True)
class SandboxLimits:
    """Per-call limits of a sandboxed Python session."""

    wall_time_s: float = 60.0  # per call
    cpu_time_s: int = 60  # per call (RLIMIT_CPU, re-armed before each call)
    memory_bytes: int = 1 << 30  # RLIMIT_AS of the kernel and each child
    file_size_bytes: int = 100 << 20  # RLIMIT_FSIZE
    max_processes: int = 64  # RLIMIT_NPROC of the sandbox's own uid
    max_output_chars: int = 20_000  # logs are capped with a marker
    idle_expiry_s: float = 900.0  # a session with no call for this long is shut down
    max_sessions: int = 16  # live sessions (kernels) at once; the least recently used is stopped first
    session_memory_bytes: int | None = None  # all of a session's processes together (a cgroup), if set
    disk_quota_bytes: int = 1 << 30  # a session's /mnt/data; a call that writes past it is stopped
    disk_reserve_bytes: int = 512 << 20  # free space on the data dir's disk that sandboxes never use

    def __post_init__(self) -> None:
        if self.wall_time_s <= 0 or self.cpu_time_s <= 0:
            raise ValueError("time limits must be positive")
        if self.memory_bytes < 64 << 20:
            raise ValueError("memory_bytes below 64 MiB cannot start Python")
        if self.file_size_bytes <= 0 or self.max_processes < 4 or self.max_output_chars < 100:
            raise ValueError("file_size_bytes, max_processes (>=4) or max_output_chars (>=100) too small")
        if self.idle_expiry_s <= 0:
            raise ValueError("idle_expiry_s must be positive")
        if self.max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        if self.session_memory_bytes is not None and self.session_memory_bytes < 64 << 20:
            raise ValueError("session_memory_bytes below 64 MiB cannot start Python")

    @property
    def tmpfs_bytes(self) -> int:
        """Size of the sandbox's /tmp: room for one maximal file plus scratch."""
        return max(MIN_TMPFS_BYTES, self.file_size_bytes)

    def processes_within_budget(self) -> int:
        """Without a cgroup, the session budget is divided over processes: how many may run."""
        if self.session_memory_bytes is None:
            return self.max_processes
        return max(4, min(self.max_processes, self.session_memory_bytes // self.memory_bytes))  # floor: Python's own

    def kernel_rlimits(self, extra_processes: int = 0, *, in_cgroup: bool = True) -> dict[str, Any]:
        """The rlimits the kernel applies to itself at start-up.

        `extra_processes` widens RLIMIT_NPROC when the sandbox shares its host
        uid with other processes (unprivileged mode): the kernel counts those
        too, so the budget is "what already runs + max_processes". Outside a
        cgroup (`in_cgroup` False) the process count is cut so that processes
        times RLIMIT_AS stays near the session's memory budget.
        """
        processes = self.max_processes if in_cgroup else self.processes_within_budget()
        return {
            "as": self.memory_bytes,
            "fsize": self.file_size_bytes,
            "nproc": processes + extra_processes,
            "cpu_per_call": self.cpu_time_s,
        }
