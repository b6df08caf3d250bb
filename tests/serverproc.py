"""Starting a real `threadlog serve` process for tests and benchmarks.

The server runs as its own process (real uvicorn on a free loopback port, real SQLite
file in a temp data dir), so tests can also kill -9 it and start it again on the same data.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

__all__ = ["BACKEND", "ServerProcess", "free_port", "run_cli"]

BACKEND = os.environ.get("THREADLOG_TEST_BACKEND", "sqlite")
"""`postgres`: every server the tests start keeps its log in PostgreSQL (a database per data dir, in
one private cluster for the session), so the whole suite runs against that backend too."""

_DATABASES: dict[Path, str] = {}


def _cli_backend_env(argv: tuple[str, ...]) -> dict[str, str]:
    """A CLI run on a data dir whose server kept its log in PostgreSQL reads that database."""
    if BACKEND != "postgres" or "--data-dir" not in argv:
        return {}
    known = _DATABASES.get(Path(argv[argv.index("--data-dir") + 1]).resolve())
    return {"THREADLOG_DATABASE_URL": known} if known else {}


def _backend_env(data_dir: Path) -> dict[str, str]:
    if BACKEND != "postgres":
        return {}
    from tests import pg_cluster

    key = data_dir.resolve()
    if key not in _DATABASES:  # a restart on the same data dir finds the same database
        _DATABASES[key] = pg_cluster.shared_database()
    return {"THREADLOG_DATABASE_URL": _DATABASES[key]}


_REPO = Path(__file__).resolve().parent.parent


def run_cli(*argv: str, timeout: float = 120, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`threadlog ARGV...` as its own process, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *argv],
        cwd=_REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **_cli_backend_env(argv), **(env or {})},
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    data_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    log_level: str = "warning"
    args: tuple[str, ...] = ()  # more `threadlog serve` options

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerProcess:
        # A test's stop() should not wait out the production grace period (30 s) for runs it
        # left running; the shutdown tests set --grace-seconds themselves.
        # Assistants are refused for a model no provider serves: CRUD-only tests get a provider
        # that is configured but never called (a closed port); run tests name the fake upstream.
        env = {
            **os.environ,
            "THREADLOG_GRACE_SECONDS": "0",
            "THREADLOG_UPSTREAM_BASE_URL": "http://127.0.0.1:9/v1",
            **_backend_env(self.data_dir),
            **self.env,
        }
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server.cli",
                "serve",
                "--host",
                self.host,
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                "--log-level",
                self.log_level,
                *self.args,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.root_url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)  # polling readiness of another process, not synchronising on work
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
