"""A cgroup per sandbox session: one memory cap and one process cap for the whole session.

RLIMIT_AS bounds each process, not their sum: a session may run up to `max_processes`
processes of `memory_bytes` each. Where the host lets this server make cgroups (root, or
a delegated cgroup v2 subtree), every session gets its own, with `memory.max` (v2) or
`memory.limit_in_bytes` (v1) and `pids.max`, and its sandbox starts inside it: bwrap is
exec'd by a shell that first moves itself in, so no process of the sandbox is ever
outside. Where cgroups cannot be made, `SessionCgroups.open` says why and the manager
falls back to an address-space budget divided over the process limit (see
SandboxLimits.kernel_rlimits).

Both cgroup versions sit behind one interface, `SessionCgroups`; `_open_v2` and `_open_v1`
find where session cgroups live, and `create` differs only in file names.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SessionCgroup", "SessionCgroups"]

_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class SessionCgroup:
    """One session's cgroup(s): where to enter, and what they report."""

    dirs: tuple[Path, ...]  # v2: one; v1: the memory and the pids hierarchy's
    peak_file: Path | None

    def wrap(self, argv: list[str]) -> list[str]:
        """`argv` started from inside the cgroup: a shell joins it, then execs `argv`."""
        procs = [str(d / "cgroup.procs") for d in self.dirs]
        script = (
            'for f in "$@"; do [ "$f" = -- ] && break; echo $$ > "$f" || exit 111; done; shift '
            + str(len(procs) + 1)
            + '; exec "$@"'
        )
        return ["/bin/sh", "-c", script, "sh", *procs, "--", *argv]

    def memory_peak(self) -> int | None:
        if self.peak_file is None:
            return None
        try:
            return int(self.peak_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def remove(self) -> None:
        """Remove the cgroup once its processes are gone (an error leaves it for the next start)."""
        for directory in self.dirs:
            with contextlib.suppress(OSError):
                directory.rmdir()


class SessionCgroups:
    """Makes session cgroups under the server's own cgroup; `kind` says which version, or None."""

    def __init__(self, kind: str | None, parents: tuple[Path, ...], reason: str | None) -> None:
        self.kind = kind
        self.parents = parents
        self.unavailable = reason

    @classmethod
    def open(cls, name: str) -> SessionCgroups:
        """Find where session cgroups can live (a directory `name` under the server's cgroup)."""
        errors = []
        for attempt in (_open_v2, _open_v1):
            try:
                kind, parents = attempt(name)
                for parent in parents:
                    _remove_stale(parent)
                return cls(kind, parents, None)
            except (OSError, ValueError) as exc:
                errors.append(str(exc))
        return cls(None, (), "; ".join(errors))

    def create(self, session_id: str, memory_bytes: int, max_processes: int) -> SessionCgroup | None:
        if self.kind is None:
            return None
        dirs = tuple(parent / session_id for parent in self.parents)
        for directory in dirs:
            directory.mkdir(exist_ok=True)
        if self.kind == "v2":
            (dirs[0] / "memory.max").write_text(str(memory_bytes))
            with contextlib.suppress(OSError):
                (dirs[0] / "memory.swap.max").write_text("0")
            (dirs[0] / "pids.max").write_text(str(max_processes))
            peak = dirs[0] / "memory.peak"
            return SessionCgroup(dirs, peak if peak.exists() else None)
        memory, pids = dirs
        (memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
        (pids / "pids.max").write_text(str(max_processes))
        return SessionCgroup(dirs, memory / "memory.max_usage_in_bytes")

    def close(self) -> None:
        for parent in self.parents:
            _remove_tree(parent)


def _own_cgroup(controller: str | None) -> str:
    """This process's cgroup path in the v2 hierarchy (controller None) or a v1 controller's."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (controller is None and controllers == "") or (controller in controllers.split(",")):
            return path
    raise ValueError(f"no {'v2' if controller is None else controller} cgroup for this process")


def _open_v2(name: str) -> tuple[str, tuple[Path, ...]]:
    if not (_ROOT / "cgroup.controllers").exists():
        raise ValueError("cgroup v2 is not mounted at /sys/fs/cgroup")
    own = _ROOT / _own_cgroup(None).lstrip("/")
    available = (own / "cgroup.controllers").read_text().split()
    if not {"memory", "pids"} <= set(available):
        raise ValueError(f"cgroup v2: memory and pids are not delegated to {own}")
    # "No internal processes": the server moves into a leaf of its own cgroup so that its
    # cgroup may hand the controllers to the session cgroups beside it.
    if (own / "cgroup.procs").read_text().split():
        leaf = own / "threadlog-server"
        leaf.mkdir(exist_ok=True)
        (leaf / "cgroup.procs").write_text(str(os.getpid()))
    (own / "cgroup.subtree_control").write_text("+memory +pids")
    parent = own / name
    parent.mkdir(exist_ok=True)
    (parent / "cgroup.subtree_control").write_text("+memory +pids")
    return "v2", (parent,)


def _open_v1(name: str) -> tuple[str, tuple[Path, ...]]:
    parents = []
    for controller in ("memory", "pids"):
        root = _ROOT / controller
        if not (root / "cgroup.procs").exists():
            raise ValueError(f"cgroup v1: no {controller} hierarchy at {root}")
        parent = root / _own_cgroup(controller).lstrip("/") / name
        parent.mkdir(exist_ok=True)
        parents.append(parent)
    return "v1", tuple(parents)


def _remove_stale(parent: Path) -> None:
    """Session cgroups left by servers that were killed (named threadlog-<pid>, that pid gone)."""
    for sibling in parent.parent.glob("threadlog-*"):
        owner = sibling.name.removeprefix("threadlog-")
        if sibling == parent or not sibling.is_dir() or not owner.isdigit() or Path(f"/proc/{owner}").exists():
            continue
        _remove_tree(sibling)


def _remove_tree(directory: Path) -> None:
    """Remove a cgroup and its (empty) session cgroups; one that still has processes stays."""
    if not directory.is_dir():
        return
    for child in directory.iterdir():
        if child.is_dir():
            with contextlib.suppress(OSError):
                child.rmdir()
    with contextlib.suppress(OSError):
        directory.rmdir()
