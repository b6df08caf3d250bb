"""One running kernel (bwrap + Python) as seen from the host, driven with asyncio.

Owns the three pipes: control frames in and out (stdin/stdout) and the
output pipe (stderr), which a background task drains continuously into the
current call's capped collector, or discards between calls, so a program
printing forever can neither block nor bloat the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from .launch import LaunchSpec
from .limits import KILL_GRACE_S, SandboxLimits
from .output import OutputCollector
from .protocol import ProtocolError, encode_frame, read_frame

STARTUP_TIMEOUT_S = 30.0
SENTINEL_WAIT_S = 2.0
READ_CHUNK = 1 << 16

Outcome = Literal["ok", "timeout", "died"]


class KernelStartError(RuntimeError):
    """The sandbox or the interpreter inside it did not come up."""


@dataclass
class CallOutcome:
    """Raw result of one call before files are collected."""

    outcome: Outcome
    collector: OutputCollector
    reply: dict[str, Any] = field(default_factory=dict)
    exit_detail: str = ""


def _read_info_pid(fd: int | None) -> int | None:
    """Parse bwrap's --info-fd JSON ({"child-pid": N}); it is written before the kernel runs."""
    if fd is None:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        pid = json.loads(data).get("child-pid")
    except (ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) and pid > 1 else None


class KernelProcess:
    """A started kernel; `execute` runs one cell, `kill` takes the whole sandbox down."""

    def __init__(self, proc: asyncio.subprocess.Process, spec: LaunchSpec) -> None:
        self.proc = proc
        self.spec = spec
        self.collector: OutputCollector | None = None
        self.ns_init_pid: int | None = None  # host pid of the sandbox's pid 1 (bwrap only)
        self.doomed = False  # killed without waiting (a cancelled call): never reuse
        self.pump = asyncio.get_running_loop().create_task(self._pump())

    @classmethod
    async def start(cls, spec: LaunchSpec) -> KernelProcess:
        """Spawn and wait for the kernel's ready frame; KernelStartError with bwrap's words if not."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *spec.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=spec.env,
                cwd=spec.cwd,
                pass_fds=spec.pass_fds,
                start_new_session=True,
            )
        except OSError as exc:
            if spec.info_fd is not None:
                os.close(spec.info_fd)
            raise KernelStartError(f"could not start {spec.argv[0]}: {exc}") from exc
        finally:
            for fd in spec.pass_fds:
                os.close(fd)
        kernel = cls(proc, spec)
        startup = OutputCollector(4_000)
        kernel.collector = startup
        try:
            assert proc.stdout is not None
            ready = await asyncio.wait_for(read_frame(proc.stdout), STARTUP_TIMEOUT_S)
            if ready.get("op") != "ready":
                raise ProtocolError(f"unexpected first frame {ready.get('op')!r}")
        except (EOFError, ProtocolError, TimeoutError, OSError) as exc:
            await kernel.kill()
            await kernel.drain_pump()
            if spec.info_fd is not None:
                os.close(spec.info_fd)
            startup.close()
            said = startup.text().strip()
            detail = said.splitlines()[-1] if said else str(exc) or type(exc).__name__
            raise KernelStartError(f"sandbox did not start ({kernel.exit_detail()}): {detail}") from exc
        kernel.collector = None
        kernel.ns_init_pid = _read_info_pid(spec.info_fd)
        return kernel

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and not self.doomed

    async def _pump(self) -> None:
        """Drain the output pipe for the kernel's whole life."""
        stream = self.proc.stderr
        assert stream is not None
        while True:
            chunk = await stream.read(READ_CHUNK)
            if not chunk:
                break
            collector = self.collector
            if collector is not None:
                collector.feed(chunk)
        if self.collector is not None:
            self.collector.close()

    async def drain_pump(self, timeout: float = SENTINEL_WAIT_S) -> None:
        """Wait (briefly) for the output pipe to reach EOF after the sandbox died."""
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self.pump), timeout)

    async def execute(self, code: str, limits: SandboxLimits) -> CallOutcome:
        """Run one cell under the wall-clock deadline."""
        nonce = secrets.token_hex(16)
        collector = OutputCollector(limits.max_output_chars, nonce)
        self.collector = collector
        request = {
            "op": "exec",
            "code": code,
            "nonce": nonce,
            "wall_time_s": limits.wall_time_s,
            "cpu_time_s": limits.cpu_time_s,
        }
        try:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(encode_frame(request))
            deadline = limits.wall_time_s + KILL_GRACE_S
            reply = await asyncio.wait_for(self._send_and_read(nonce), deadline)
        except asyncio.CancelledError:
            # The caller gave up (e.g. the run was cancelled) while the code may
            # still run; its late reply must never be taken for the next call's.
            self.doomed = True
            self.collector = None
            if not self._kill_ns_init():
                self._kill_group()
            raise
        except TimeoutError:
            await self.kill()
            await self.drain_pump()
            collector.close()
            self.collector = None
            return CallOutcome("timeout", collector)
        except (EOFError, ProtocolError, ConnectionError, OSError):
            await self.kill()
            await self.drain_pump()
            collector.close()
            self.collector = None
            return CallOutcome("died", collector, exit_detail=self.exit_detail())
        try:
            await asyncio.wait_for(collector.finished.wait(), SENTINEL_WAIT_S)
        except TimeoutError:
            collector.close()
        self.collector = None
        return CallOutcome("ok", collector, reply=reply)

    async def _send_and_read(self, nonce: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        await self.proc.stdin.drain()
        reply = await read_frame(self.proc.stdout)
        if reply.get("op") != "result" or reply.get("nonce") != nonce:
            raise ProtocolError(f"unexpected frame {reply.get('op')!r}")
        return reply

    def exit_detail(self) -> str:
        """Human words for how the sandbox ended (bwrap reports a signal as 128+N)."""
        code = self.proc.returncode
        if code is None:
            return "still running"
        number = -code if code < 0 else code - 128 if code > 128 else 0
        if number:
            try:
                return f"killed by {signal.Signals(number).name}"
            except ValueError:
                return f"killed by signal {number}"
        return f"exit code {code}"

    async def kill(self) -> None:
        """Kill everything in the sandbox and reap it.

        The sandbox's pid 1 is killed first: the kernel then kills every
        process of that pid namespace, and bwrap, whose child it is, reaps it
        and exits. Killing bwrap first would also work (--die-with-parent),
        but would orphan pid 1 to whatever reaps orphans on this host.
        """
        if self.proc.returncode is None:
            if not self._kill_ns_init():
                self._kill_group()
            try:
                await asyncio.wait_for(self.proc.wait(), 5.0)
            except TimeoutError:
                self._kill_group()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.proc.wait(), 5.0)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        await self._wait_namespace_gone()

    def _kill_ns_init(self) -> bool:
        """SIGKILL the namespace's pid 1 if it is still bwrap's child (guards against pid reuse)."""
        pid = self.ns_init_pid
        if pid is None:
            return False
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                parent = int(fh.read().rsplit(b")", 1)[1].split()[1])
            if parent != self.proc.pid:
                return False
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            return False
        return True

    def _kill_group(self) -> None:
        """SIGKILL bwrap's process group (its own session); --die-with-parent takes pid 1 along."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except PermissionError:
            self.proc.kill()

    async def _wait_namespace_gone(self, timeout: float = 5.0) -> None:
        """Return once the sandbox's pid 1 has finished dying.

        Killing bwrap makes its init die (--die-with-parent); an exiting pid-1
        first kills and waits for every other process of its namespace, so
        when it is a zombie or gone, nothing of the sandbox runs any more.
        """
        pid = self.ns_init_pid
        if pid is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/stat", "rb") as fh:
                    state = fh.read().rsplit(b")", 1)[1].split()[0]
            except (OSError, IndexError):
                return
            if state in (b"Z", b"X"):
                return
            await asyncio.sleep(0.005)
