"""Threadlog's code_interpreter kernel: a notebook-like Python REPL for one thread.

This file runs *inside* the sandbox as a script (`python -I kernel.py CONFIG`)
and imports nothing from the server. It keeps one namespace alive across calls
so variables persist, like a Jupyter kernel.

Channels (set up by the manager when it spawns the kernel):
  fd 0  control in   length-prefixed JSON frames {"op": "exec", ...}
  fd 1  control out  frames {"op": "ready"} / {"op": "result", ...}
  fd 2  output       the program's stdout+stderr (one pipe, so interleaving is
                     exact), ended per call by a sentinel carrying the call's nonce
At start-up the kernel moves the control fds aside, points 0 at /dev/null and
1 and 2 at the output pipe, so user code, subprocesses and C extensions all
print into the output and can never corrupt a control frame.
"""

from __future__ import annotations

import ast
import base64
import builtins
import contextlib
import errno
import importlib.abc
import importlib.machinery
import inspect
import io
import json
import linecache
import os
import resource
import signal
import struct
import sys
import time
import traceback
import types
from typing import Any

HEADER = struct.Struct(">I")
KERNEL_FILE = os.path.abspath(__file__)
MAX_IMAGES = 20
MAX_IMAGE_BYTES = 20 << 20


class ExecutionTimeout(BaseException):
    """Raised in the user's code when the call's wall time is up.

    A BaseException so that `except Exception:` in user code does not swallow it.
    """


class CpuTimeExceeded(BaseException):
    """Raised in the user's code on SIGXCPU (the per-call RLIMIT_CPU)."""


class Kernel:
    """State of the REPL process: channels, limits, namespace, figures."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.pid = os.getpid()
        self.ctl_in = os.dup(0)  # os.dup: non-inheritable, so subprocesses never see them
        self.ctl_out = os.dup(1)
        self.out_fd = os.dup(2)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        self.restore_fds()
        self.stdout, self.stderr = self.make_streams()
        self.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - lives as long as the kernel
        self.main = types.ModuleType("__main__")
        self.main.__dict__["__builtins__"] = builtins
        self.cell = 0
        self.in_cell = False
        self.images: list[bytes] = []
        self.loop: Any = None
        self.cpu_hard = resource.RLIM_INFINITY

    # --- set-up -----------------------------------------------------------
    def restore_fds(self) -> None:
        """Point fds 1 and 2 back at the output pipe (user code may have moved them)."""
        os.dup2(self.out_fd, 1)
        os.dup2(self.out_fd, 2)

    def make_streams(self) -> tuple[io.TextIOWrapper, io.TextIOWrapper]:
        """stdout and stderr share one buffer, so their order is kept exactly."""
        raw = io.FileIO(1, "w", closefd=False)
        buffer = io.BufferedWriter(raw, 8192)
        kwargs: dict[str, Any] = {"encoding": "utf-8", "errors": "backslashreplace", "line_buffering": True}
        return (
            io.TextIOWrapper(buffer, write_through=True, **kwargs),  # type: ignore[arg-type]
            io.TextIOWrapper(buffer, write_through=True, **kwargs),  # type: ignore[arg-type]
        )

    def apply_rlimits(self) -> None:
        """Limits the kernel and every process it forks inherit; hard = soft so code cannot raise them."""
        limits = self.config.get("rlimits", {})
        _set_limit(resource.RLIMIT_CORE, 0)
        for key, which in (
            ("as", resource.RLIMIT_AS),
            ("fsize", resource.RLIMIT_FSIZE),
            ("nproc", resource.RLIMIT_NPROC),
        ):
            if key in limits:
                _set_limit(which, int(limits[key]))
        self.cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)[1]

    def install_handlers(self) -> None:
        signal.signal(signal.SIGALRM, self._on_alarm)
        signal.signal(signal.SIGXCPU, self._on_xcpu)
        sys.meta_path.insert(0, _PyplotHook(self))

    def _on_alarm(self, signum: int, frame: Any) -> None:
        if self.in_cell:
            raise ExecutionTimeout()

    def _on_xcpu(self, signum: int, frame: Any) -> None:
        if self.in_cell:
            raise CpuTimeExceeded()

    # --- channel ----------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        body = json.dumps(message, separators=(",", ":")).encode("utf-8")
        _write_all(self.ctl_out, HEADER.pack(len(body)) + body)

    def receive(self) -> dict[str, Any] | None:
        header = _read_exact(self.ctl_in, HEADER.size)
        if header is None:
            return None
        (length,) = HEADER.unpack(header)
        body = _read_exact(self.ctl_in, length)
        if body is None:
            return None
        message = json.loads(body)
        return message if isinstance(message, dict) else None

    # --- figures ----------------------------------------------------------
    def capture_figures(self, *, end_of_cell: bool = False) -> None:
        """Render every open pyplot figure to PNG and close it (the inline backend's job).

        At the end of a cell a figure the code already saved to a file is closed without
        being shown: the saved file is an image output of its own, and showing both would
        put the same picture in the answer twice.
        """
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is None:
            return
        try:
            numbers = list(plt.get_fignums())
        except Exception:
            return
        for number in numbers:
            try:
                figure = plt.figure(number)
                if end_of_cell and getattr(figure, "_threadlog_saved_to_file", False):
                    continue
                if len(self.images) < MAX_IMAGES:
                    buf = io.BytesIO()
                    figure.savefig(buf, format="png", bbox_inches="tight")
                    if buf.tell() <= MAX_IMAGE_BYTES:
                        self.images.append(buf.getvalue())
            except Exception as exc:
                print(f"[figure {number} could not be rendered: {exc}]", file=sys.stderr)
            finally:
                with contextlib.suppress(Exception):
                    plt.close(number)

    # --- one call ---------------------------------------------------------
    def reset_streams(self) -> None:
        self.restore_fds()
        if self.stdout.closed or self.stderr.closed:
            self.stdout, self.stderr = self.make_streams()
        sys.stdout = sys.__stdout__ = self.stdout  # type: ignore[misc]
        sys.stderr = sys.__stderr__ = self.stderr  # type: ignore[misc]
        sys.stdin = sys.__stdin__ = self.stdin  # type: ignore[misc]

    def flush(self) -> None:
        for stream in (sys.stdout, sys.stderr, self.stdout, self.stderr):
            with contextlib.suppress(Exception):
                stream.flush()

    def execute(self, request: dict[str, Any]) -> dict[str, Any]:
        self.cell += 1
        self.images = []
        self.reset_streams()
        wall = float(request.get("wall_time_s", 60.0))
        cpu = int(request.get("cpu_time_s", 60))
        used = resource.getrusage(resource.RUSAGE_SELF)
        soft_cpu = int(used.ru_utime + used.ru_stime) + cpu + 1
        if self.cpu_hard != resource.RLIM_INFINITY:
            soft_cpu = min(soft_cpu, self.cpu_hard)
        error: str | None = None
        try:
            resource.setrlimit(resource.RLIMIT_CPU, (soft_cpu, self.cpu_hard))
            self.in_cell = True
            signal.setitimer(signal.ITIMER_REAL, wall)
            try:
                self.run_cell(str(request.get("code", "")))
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                self.in_cell = False
        except BaseException as exc:
            self.in_cell = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            self.leave_if_forked()
            error = self.report(exc, wall, cpu)
            if error is not None and error.startswith(("Execution timed out", "Process limit", "CPU time")):
                self.stop_strays()
        finally:
            self.in_cell = False
            resource.setrlimit(resource.RLIMIT_CPU, (self.cpu_hard, self.cpu_hard))
        self.leave_if_forked()
        try:
            self.in_cell = True  # rendering a huge figure can also be interrupted
            signal.setitimer(signal.ITIMER_REAL, max(1.0, wall / 4))
            self.capture_figures(end_of_cell=True)
        except BaseException:
            print("[figures could not be rendered in time]", file=sys.stderr)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self.in_cell = False
        self.flush()
        _write_all(self.out_fd, _sentinel(str(request.get("nonce", ""))))
        images = [
            {"name": f"figure_{self.cell}_{i + 1}.png", "data": base64.b64encode(png).decode("ascii")}
            for i, png in enumerate(self.images)
        ]
        self.images = []
        return {"op": "result", "nonce": request.get("nonce"), "error": error, "images": images}

    def stop_strays(self) -> None:
        """After a runaway call, kill every other process in the sandbox and reap them.

        Left alone, a fork bomb's sleeping children would hold the session's
        RLIMIT_NPROC budget and every later subprocess call would fail. Only
        done inside the sandbox: there kill(-1) reaches just the sandbox's
        own pid namespace, while unsandboxed it would hit the server's user.
        """
        if not self.config.get("sandboxed"):
            return
        try:
            os.kill(-1, signal.SIGKILL)  # never the caller itself, never pid 1 (bwrap)
        except OSError:
            return
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.01)
        print("[stray processes started by the code were stopped]", file=sys.stderr)

    def leave_if_forked(self) -> None:
        """A child forked by user code must never come back into the kernel loop."""
        if os.getpid() != self.pid:
            self.flush()
            os._exit(0)

    def run_cell(self, code: str) -> None:
        filename = f"<cell-{self.cell}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        tree = ast.parse(code, filename, "exec")
        last: ast.Expression | None = None
        final = tree.body[-1] if tree.body else None
        if isinstance(final, ast.Expr) and not code.rstrip().endswith(";"):
            tree.body.pop()
            last = ast.Expression(final.value)
        namespace = self.main.__dict__
        self.evaluate(compile(tree, filename, "exec", flags=flags, dont_inherit=True), namespace)
        if last is not None:
            value = self.evaluate(compile(last, filename, "eval", flags=flags, dont_inherit=True), namespace)
            if value is not None:
                namespace["_"] = value
                print(repr(value))

    def evaluate(self, code: types.CodeType, namespace: dict[str, Any]) -> Any:
        result = eval(code, namespace)
        if code.co_flags & inspect.CO_COROUTINE:
            if self.loop is None:
                import asyncio

                self.loop = asyncio.new_event_loop()
            result = self.loop.run_until_complete(result)
        return result

    def report(self, exc: BaseException, wall: float, cpu: int) -> str | None:
        """Print the traceback (without kernel frames) and return the error line."""
        if isinstance(exc, SystemExit) and exc.code in (None, 0):
            return None
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == KERNEL_FILE:
            tb = tb.tb_next
        try:
            if isinstance(exc, SyntaxError):
                lines = traceback.format_exception_only(type(exc), exc)
            else:
                lines = traceback.format_exception(type(exc), exc, tb)
            sys.stderr.write("".join(lines))
            line = _summary(traceback.format_exception_only(type(exc), exc)[-1])
        except Exception:
            line = type(exc).__name__
            sys.stderr.write(line + "\n")
        if isinstance(exc, ExecutionTimeout):
            print(f"[Execution timed out after {_fmt(wall)}s and was interrupted; variables are kept]", file=sys.stderr)
            return f"Execution timed out after {_fmt(wall)}s"
        if isinstance(exc, CpuTimeExceeded):
            print(f"[CPU time limit of {cpu}s exceeded; execution was interrupted]", file=sys.stderr)
            return f"CPU time limit exceeded ({cpu}s)"
        if isinstance(exc, MemoryError):
            return f"Memory limit exceeded ({line})"
        if isinstance(exc, OSError) and exc.errno == errno.EAGAIN and isinstance(exc, BlockingIOError):
            return f"Process limit exceeded ({line})"
        if isinstance(exc, RuntimeError) and "can't start new thread" in str(exc):
            return f"Process limit exceeded ({line})"
        if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
            return f"File size limit exceeded ({line})"
        return line

    def serve(self) -> None:
        self.send({"op": "ready", "pid": self.pid, "python": sys.version.split()[0]})
        while True:
            request = self.receive()
            if request is None or request.get("op") == "exit":
                return
            if request.get("op") == "exec":
                self.send(self.execute(request))
            else:
                self.send({"op": "error", "error": f"unknown op {request.get('op')!r}"})


class _PyplotHook(importlib.abc.MetaPathFinder):
    """Makes plt.show() hand figures to the kernel instead of doing nothing (Agg)."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.busy = False

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "matplotlib.pyplot" or self.busy:
            return None
        self.busy = True
        try:
            spec = None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        finally:
            self.busy = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        original = loader.exec_module
        kernel = self.kernel

        def exec_module(module: types.ModuleType) -> None:
            original(module)

            def show(*args: Any, **kwargs: Any) -> None:
                """Inline backend: render and close all open figures."""
                kernel.capture_figures()

            module.show = show  # type: ignore[attr-defined]
            _mark_figures_saved_to_files()

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _mark_figures_saved_to_files() -> None:
    """Wraps Figure.savefig to remember a figure written to a path (not to a buffer)."""
    from matplotlib.figure import Figure

    original = Figure.savefig
    if getattr(original, "_threadlog_wrapped", False):
        return

    def savefig(self: Any, fname: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, fname, *args, **kwargs)
        if isinstance(fname, (str, os.PathLike)):
            self._threadlog_saved_to_file = True
        return result

    savefig._threadlog_wrapped = True  # type: ignore[attr-defined]
    Figure.savefig = savefig  # type: ignore[method-assign]


def _set_limit(which: int, value: int) -> None:
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


def _summary(text: str) -> str:
    """One line "Name: message" even when the message spans lines (numpy's ImportError does)."""
    name, sep, message = text.strip().partition(":")
    first = next((line.strip() for line in message.splitlines() if line.strip()), "")
    line = f"{name}: {first}" if sep and first else name
    return line if len(line) <= 500 else line[:497] + "..."


def _fmt(seconds: float) -> str:
    return f"{seconds:g}"


def _sentinel(nonce: str) -> bytes:
    return f"\x1e\x1fthreadlog-end-{nonce}\x1f\x1e".encode("ascii")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except InterruptedError:
            continue


def _read_exact(fd: int, size: int) -> bytes | None:
    chunks: list[bytes] = []
    while size:
        try:
            chunk = os.read(fd, size)
        except InterruptedError:
            continue
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def main() -> None:
    config = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    kernel = Kernel(config)
    kernel.apply_rlimits()
    data_dir = config.get("data_dir")
    if data_dir:
        os.chdir(data_dir)
        sys.path.insert(0, data_dir)
    sys.modules["__main__"] = kernel.main
    kernel.install_handlers()
    kernel.reset_streams()
    kernel.serve()


if __name__ == "__main__":
    main()
