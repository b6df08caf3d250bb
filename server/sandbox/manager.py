"""SandboxManager: one persistent sandboxed kernel per thread, and their lifecycle.

A session is keyed by the thread id. Its kernel starts on the first call and
keeps variables until it is closed, times out, dies or sits idle past
`idle_expiry_s`; its files live on in `work_root/<session_id>/data`, which is
the sandbox's /mnt/data. Calls on one session are serialised; calls on
different sessions run concurrently. Blocking file work runs in threads so
the event loop never stalls on a large input or output file.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import re
import shutil
import subprocess
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import files as datafiles
from .cgroups import SessionCgroup, SessionCgroups
from .launch import (
    Mode,
    build_launch,
    count_user_tasks,
    overlaps_sandbox_binds,
    preferred_mode,
    probe,
    session_uid,
)
from .limits import SandboxLimits
from .process import CallOutcome, KernelProcess, KernelStartError
from .results import ExecutionResult, InputFile, OutputFile, SandboxUnavailable
from .storage import DirectoryStorage, SessionStorage, storage_for

log = logging.getLogger(__name__)

SESSION_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}")
MAX_EXPIRY_NOTES = 10_000
DISK_CHECK_S = 0.2  # how often a running call's disk use is measured (bounds the overshoot)


def sandbox_status(allow_unsandboxed: bool = False) -> str | None:
    """None if code can be run; otherwise a reason to show when code_interpreter is requested.

    Probes by starting a throwaway sandbox once (cached), so a missing bwrap,
    blocked user namespaces or missing privileges are reported before a run
    needs them.
    """
    reason = probe(preferred_mode())
    if reason is None or allow_unsandboxed:
        return None
    return reason


@dataclass
class _Session:
    session_id: str
    data_dir: Path
    uid: int | None  # host uid of the sandbox in privileged mode
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    kernel: KernelProcess | None = None
    last_used: float = field(default_factory=time.monotonic)
    restart_note: str | None = None  # why variables were lost, told on the next call
    closed: bool = False
    cgroup: SessionCgroup | None = None


# The kernel's error lines for a call it interrupted at a limit (server/sandbox/kernel.py), and
# the reason each is counted under; a call that had to be killed is counted by `_interpret`.
_LIMIT_ERRORS = (
    ("Execution timed out", "wall_time"),
    ("CPU time limit exceeded", "cpu_time"),
    ("Memory limit exceeded", "memory"),
    ("Process limit exceeded", "processes"),
    ("File size limit exceeded", "file_size"),
)


class SandboxManager:
    """Runs model-written Python per thread in bubblewrap sandboxes."""

    def __init__(
        self,
        work_root: Path,
        limits: SandboxLimits = SandboxLimits(),  # noqa: B008 - frozen, so sharing the default is safe
        allow_unsandboxed: bool = False,
        storage: SessionStorage | None = None,
    ) -> None:
        """`storage` None picks loop-mounted images where they work (see storage.py)."""
        self.work_root = Path(os.path.abspath(work_root))
        self.limits = limits
        self.allow_unsandboxed = allow_unsandboxed
        self._sessions: dict[str, _Session] = {}
        self.kills: Counter[str] = Counter()  # calls stopped by a limit, by reason (for metrics)
        self._expired: OrderedDict[str, str] = OrderedDict()
        self._closing: dict[str, asyncio.Future[None]] = {}  # sessions whose kernel is being stopped
        self._mode: Mode | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False
        self._cgroups: SessionCgroups | None = None
        self._storage: SessionStorage = storage or DirectoryStorage()
        self._storage_chosen = storage is not None

    # --- public API -------------------------------------------------------
    async def execute(self, session_id: str, code: str, input_files: Sequence[InputFile] = ()) -> ExecutionResult:
        """Run `code` in the session's kernel and report output, files and errors.

        Raises SandboxUnavailable when no sandbox can be started (and the
        operator did not allow running unsandboxed), ValueError for a bad
        session id or input file name.
        """
        if self._closed:
            raise RuntimeError("SandboxManager is closed")
        if not SESSION_ID.fullmatch(session_id):
            raise ValueError(f"invalid session id: {session_id!r}")
        for item in input_files:
            datafiles.validate_input_name(item.name)
        mode = await self._ensure_mode()
        self._ensure_reaper()
        started = time.perf_counter()
        while True:
            closing = self._closing.get(session_id)
            if closing is not None:
                # The session's last kernel is still being shut down: its /mnt/data is
                # detached at the end of that, which must not happen under a new kernel.
                await asyncio.shield(closing)
                continue
            session = self._session(session_id, mode)
            async with session.lock:
                if session.closed:
                    continue  # closed while we waited: take a fresh one
                session.last_used = time.monotonic()
                try:
                    return await self._run(session, mode, code, list(input_files), started)
                finally:
                    session.last_used = time.monotonic()

    def has_session(self, session_id: str) -> bool:
        """Whether this manager has the session (its kernel may have idled out; its files are kept)."""
        return session_id in self._sessions or (self.work_root / session_id).exists()

    async def close_session(self, session_id: str) -> None:
        """Stop the session's processes now (a running call ends with an error); files stay on disk."""
        session = self._sessions.pop(session_id, None)
        if session is not None:
            await self._shutdown(session)

    async def aclose(self) -> None:
        """Kill every session's process tree and stop the idle reaper."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        sessions = list(self._sessions.values())
        self._sessions.clear()
        await asyncio.gather(*(self._shutdown(s) for s in sessions), return_exceptions=True)
        if self._cgroups is not None:
            await asyncio.to_thread(self._cgroups.close)

    @property
    def disk_cap(self) -> str:
        """How a session's disk quota is enforced (after the first call has chosen the storage)."""
        quota = self.limits.disk_quota_bytes >> 20
        if self._storage.kind == "loop":
            return f"a {quota} MiB ext4 image per session (loop-mounted at /mnt/data)"
        return f"{quota} MiB per session, measured every {DISK_CHECK_S:g}s while a call runs"

    @property
    def memory_cap(self) -> str:
        """Which cap on a whole session's memory is in force (for the logs and the README's claim)."""
        limits = self.limits
        if limits.session_memory_bytes is None:
            return f"none for the session; {limits.memory_bytes >> 20} MiB address space per process"
        cgroups = self._session_cgroups()
        if cgroups.kind is not None:
            return (
                f"cgroup {cgroups.kind}: {limits.session_memory_bytes >> 20} MiB memory and "
                f"{limits.max_processes} processes per session"
            )
        return (
            f"address-space budget: {limits.processes_within_budget()} processes x "
            f"{limits.memory_bytes >> 20} MiB per session (no cgroup: {cgroups.unavailable})"
        )

    def _session_cgroups(self) -> SessionCgroups:
        if self._cgroups is None:
            self._cgroups = SessionCgroups.open(f"threadlog-{os.getpid()}")
            if self._cgroups.unavailable:
                log.warning("code_interpreter sessions get no cgroup: %s", self._cgroups.unavailable)
        return self._cgroups

    # --- sessions ---------------------------------------------------------
    @property
    def live_sessions(self) -> int:
        """Sessions with a running Python process."""
        return sum(1 for s in self._sessions.values() if s.kernel is not None and s.kernel.alive)

    def _session(self, session_id: str, mode: Mode) -> _Session:
        session = self._sessions.get(session_id)
        if session is None:
            uid = None
            if mode == "privileged":
                taken = {s.uid for s in self._sessions.values() if s.uid is not None}
                uid = session_uid(f"{self.work_root}/{session_id}", taken)
            session = _Session(session_id, self.work_root / session_id / "data", uid)
            session.restart_note = self._expired.pop(session_id, None)
            self._sessions[session_id] = session
        return session

    async def _shutdown(self, session: _Session) -> None:
        session.closed = True
        done = asyncio.get_running_loop().create_future()
        self._closing[session.session_id] = done
        try:
            await self._stop_kernel(session)
        finally:
            if self._closing.get(session.session_id) is done:
                del self._closing[session.session_id]
            done.set_result(None)

    async def _stop_kernel(self, session: _Session) -> None:
        kernel, session.kernel = session.kernel, None
        if kernel is not None:
            await kernel.kill()
            await kernel.drain_pump(0.5)
        cgroup, session.cgroup = session.cgroup, None
        if cgroup is not None:
            await asyncio.to_thread(cgroup.remove)
        if kernel is not None:
            await asyncio.to_thread(self._storage.detach, session.data_dir.parent)

    async def _ensure_mode(self) -> Mode:
        if self._mode is not None:
            return self._mode
        preferred = preferred_mode()
        reason = await asyncio.to_thread(probe, preferred)
        if reason is None:
            bound = overlaps_sandbox_binds(self.work_root)
            if bound is not None:
                raise SandboxUnavailable(
                    f"work_root {self.work_root} overlaps {bound}, which every sandbox can read; move it elsewhere"
                )
            self._mode = preferred
            if not self._storage_chosen:
                self._storage = await asyncio.to_thread(storage_for, preferred == "privileged")
            log.info("code_interpreter disk quota: %s", self.disk_cap)
        elif self.allow_unsandboxed:
            log.warning("code_interpreter runs UNSANDBOXED (operator opt-in): %s", reason)
            self._mode = "unsandboxed"
        else:
            raise SandboxUnavailable(reason)
        return self._mode

    def _ensure_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap_idle())

    async def _reap_idle(self) -> None:
        """Shut down kernels idle past idle_expiry_s; their files stay."""
        idle = self.limits.idle_expiry_s
        interval = min(30.0, max(0.05, idle / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for session_id, session in list(self._sessions.items()):
                if session.lock.locked() or now - session.last_used < idle:
                    continue
                async with session.lock:
                    if session.closed or time.monotonic() - session.last_used < idle:
                        continue
                    if self._sessions.get(session_id) is session:
                        del self._sessions[session_id]
                    if session.kernel is not None:
                        self._note_expired(session_id, f"it was idle for more than {idle:g}s")
                    await self._shutdown(session)

    async def _make_room(self, starting: _Session) -> None:
        """Stop the least recently used idle sessions while `max_sessions` kernels are live.

        Their files stay; their next call starts a fresh kernel and is told why. Sessions
        in the middle of a call are never stopped, so the bound can be passed only while
        more than `max_sessions` calls run at once.
        """
        while True:
            live = [s for s in self._sessions.values() if s is not starting and s.kernel is not None]
            if len(live) < self.limits.max_sessions:
                return
            idle = [s for s in live if not s.lock.locked()]
            if not idle:
                return
            victim = min(idle, key=lambda s: s.last_used)
            if self._sessions.get(victim.session_id) is victim:
                del self._sessions[victim.session_id]
            self._note_expired(victim.session_id, f"more than {self.limits.max_sessions} sessions were open")
            await self._shutdown(victim)

    def _note_expired(self, session_id: str, why: str) -> None:
        self._expired[session_id] = why
        while len(self._expired) > MAX_EXPIRY_NOTES:
            self._expired.popitem(last=False)

    async def _start_kernel(self, session: _Session, mode: Mode) -> KernelProcess:
        owner = (session.uid, session.uid) if session.uid is not None else None
        extra = 0
        if mode != "privileged":
            extra = await asyncio.to_thread(count_user_tasks, os.getuid())
        try:
            await asyncio.to_thread(self._storage.attach, session.data_dir.parent, self.limits.disk_quota_bytes)
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("session %s: /mnt/data is a plain directory: %s", session.session_id, exc)
        await asyncio.to_thread(self._prepare_dirs, session.data_dir, owner)
        cgroup = None
        if self.limits.session_memory_bytes is not None:
            cgroups = self._session_cgroups()
            try:
                cgroup = await asyncio.to_thread(
                    cgroups.create, session.session_id, self.limits.session_memory_bytes, self.limits.max_processes
                )
            except OSError as exc:
                log.warning("no cgroup for session %s: %s", session.session_id, exc)
        spec = build_launch(
            mode,
            data_dir=session.data_dir,
            uid=session.uid,
            tmpfs_bytes=self.limits.tmpfs_bytes,
            kernel_config={"rlimits": self.limits.kernel_rlimits(extra, in_cgroup=cgroup is not None)},
        )
        if cgroup is not None:
            spec.argv = cgroup.wrap(spec.argv)
            session.cgroup = cgroup
        try:
            return await KernelProcess.start(spec)
        except KernelStartError as exc:
            if mode == "unsandboxed":
                raise RuntimeError(str(exc)) from exc
            raise SandboxUnavailable(str(exc)) from exc

    def _prepare_dirs(self, data_dir: Path, owner: tuple[int, int] | None) -> None:
        self.work_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        data_dir.parent.mkdir(exist_ok=True, mode=0o700)
        datafiles.prepare_data_dir(data_dir, owner)

    # --- one call ---------------------------------------------------------
    async def _run(
        self, session: _Session, mode: Mode, code: str, inputs: list[InputFile], started: float
    ) -> ExecutionResult:
        prefix = ""
        if session.kernel is None or not session.kernel.alive:
            if session.kernel is not None and session.restart_note is None:
                session.restart_note = "its process ended"
            await self._make_room(session)
            session.kernel = await self._start_kernel(session, mode)
            if session.restart_note:
                prefix = (
                    f"[The Python session was restarted because {session.restart_note}; "
                    "variables from earlier calls are gone, files in /mnt/data are kept.]\n"
                )
                session.restart_note = None
        kernel = session.kernel
        owner = (session.uid, session.uid) if session.uid is not None else None
        refused = await asyncio.to_thread(self._disk_refusal)
        if refused is not None:
            return ExecutionResult(logs=prefix + f"[{refused}]\n", files=[], error=refused, duration_s=0.0)
        before = await asyncio.to_thread(self._before_call, session.data_dir, inputs, owner)
        watchdog = asyncio.create_task(self._watch_disk(session, kernel))
        try:
            outcome = await kernel.execute(code, self.limits)
        except asyncio.CancelledError:
            session.restart_note = "the previous call was cancelled"
            raise
        finally:
            watchdog.cancel()
            await asyncio.wait({watchdog})
        over = None if watchdog.cancelled() else watchdog.result()
        if over is not None:
            # What the stopped call wrote is removed: the session is back under its quota.
            written = await asyncio.to_thread(self._changed, session.data_dir, before)
            await asyncio.to_thread(datafiles.remove_files, session.data_dir, written)
            session.kernel = None
            session.restart_note = "the previous call was stopped for writing too much"
            outcome.collector.append_note(f"[{over} The files it wrote were removed; variables are lost.]")
            logs = prefix + outcome.collector.text()
            return ExecutionResult(logs=logs, files=[], error=over, duration_s=time.perf_counter() - started)
        error, note = self._interpret(session, outcome)
        files, file_notes = await asyncio.to_thread(self._after_call, session.data_dir, before)
        files = self._figures(outcome) + files
        for line in [note, *file_notes]:
            if line:
                outcome.collector.append_note(line)
        logs = prefix + outcome.collector.text()
        return ExecutionResult(logs=logs, files=files, error=error, duration_s=time.perf_counter() - started)

    def _disk_refusal(self) -> str | None:
        """Why no call may start now: the disk holding the sandboxes (and the event log) is nearly full."""
        free = datafiles.free_bytes(self.work_root)  # made by the kernel's start, just before
        if free < self.limits.disk_reserve_bytes:
            return (
                f"The server's disk is nearly full ({free >> 20} MiB free, {self.limits.disk_reserve_bytes >> 20} "
                "MiB are kept for its own data): code_interpreter cannot run until space is freed."
            )
        return None

    async def _watch_disk(self, session: _Session, kernel: KernelProcess) -> str | None:
        """While a call runs: stop it once /mnt/data passes the quota or the disk's reserve is reached."""
        limits = self.limits
        # An image per session is its quota (writes past it fail): only a plain directory is measured.
        measured = self._storage.kind == "directory"
        start = await asyncio.to_thread(datafiles.usage, session.data_dir) if measured else 0
        while True:
            await asyncio.sleep(DISK_CHECK_S)
            used = await asyncio.to_thread(datafiles.usage, session.data_dir) if measured else 0
            free = await asyncio.to_thread(datafiles.free_bytes, self.work_root)  # the event log's disk
            reason = None
            if measured and used > limits.disk_quota_bytes and used > start:
                reason = (
                    f"The files in /mnt/data passed the session's disk quota of {limits.disk_quota_bytes >> 20} MiB; "
                    "the call was stopped."
                )
            elif free < limits.disk_reserve_bytes:
                reason = "The server's disk is nearly full; the call was stopped."
            if reason is not None:
                self.kills["disk_quota" if measured and used > limits.disk_quota_bytes else "disk_reserve"] += 1
                await kernel.kill()
                return reason

    def _changed(self, data_dir: Path, before: datafiles.Snapshot) -> list[str]:
        return datafiles.changed_files(before, datafiles.snapshot(data_dir))

    def _before_call(
        self, data_dir: Path, inputs: list[InputFile], owner: tuple[int, int] | None
    ) -> datafiles.Snapshot:
        datafiles.write_inputs(data_dir, inputs, owner)
        return datafiles.snapshot(data_dir)

    def _after_call(self, data_dir: Path, before: datafiles.Snapshot) -> tuple[list[OutputFile], list[str]]:
        names = self._changed(data_dir, before)
        staging = data_dir.parent / "outgoing"  # the server's side: not visible in the sandbox
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)  # copies of an earlier call not taken
        return datafiles.collect_outputs(data_dir, names, self.limits.file_size_bytes, staging)

    def _interpret(self, session: _Session, outcome: CallOutcome) -> tuple[str | None, str | None]:
        """The call's error line and a note for the logs when the kernel was lost."""
        wall = f"{self.limits.wall_time_s:g}"
        if outcome.outcome == "ok":
            error = outcome.reply.get("error")
            if error is not None:
                limit = next((name for prefix, name in _LIMIT_ERRORS if str(error).startswith(prefix)), None)
                if limit is not None:
                    self.kills[limit] += 1
            return (str(error) if error is not None else None), None
        session.kernel = None
        if session.closed:
            return "Session was closed", "[The session was closed while this call ran.]"
        if outcome.outcome == "timeout":
            self.kills["wall_time_killed"] += 1
            session.restart_note = "the previous call timed out"
            return (
                f"Execution timed out after {wall}s",
                f"[Execution timed out after {wall}s; the Python process was stopped. "
                "Variables are lost; files in /mnt/data are kept.]",
            )
        session.restart_note = "the previous call crashed it"
        detail = outcome.exit_detail
        self.kills["died"] += 1
        if "SIGKILL" in detail or "SIGSEGV" in detail or "SIGABRT" in detail:
            error = f"Python process died ({detail}); possibly the memory limit was exceeded"
        else:
            error = f"Python process died unexpectedly ({detail})"
        return error, f"[{error}. Variables are lost; files in /mnt/data are kept.]"

    @staticmethod
    def _figures(outcome: CallOutcome) -> list[OutputFile]:
        """PNG figures the kernel captured from plt.show() (or left open at the end)."""
        figures: list[OutputFile] = []
        images = outcome.reply.get("images") if outcome.outcome == "ok" else None
        if not isinstance(images, list):
            return figures
        for item in images:
            if not isinstance(item, dict):
                continue
            name, data = item.get("name"), item.get("data")
            if not isinstance(name, str) or not isinstance(data, str):
                continue
            try:
                png = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                continue
            figures.append(OutputFile(name=os.path.basename(name), is_image=True, content=png, size=len(png)))
        return figures
