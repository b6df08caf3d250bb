"""A private PostgreSQL cluster for the tests: Debian's server binaries, `initdb` into a temp dir,
a free loopback port, started and stopped by the tests themselves (never the system's server).

As root, the cluster runs as the `postgres` user (PostgreSQL refuses to run as root); otherwise
as the current user. `scripts/install --test` installs the binaries (Debian's `postgresql`).
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.serverproc import free_port

__all__ = ["PostgresCluster", "cluster", "needs_postgres", "postgres_binaries"]


def postgres_binaries() -> Path | None:
    """The newest installed server's bin directory (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    return Path(on_path).parent if on_path else None


needs_postgres = pytest.mark.skipif(
    postgres_binaries() is None and not os.environ.get("CI"),  # CI must have them: fail there, never skip
    reason="PostgreSQL server binaries are missing (scripts/install --test installs them)",
)


class PostgresCluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._databases = 0

    def start(self, timeout: float = 60.0, settings: dict[str, str] | None = None) -> PostgresCluster:
        """`settings`: extra server settings (`-c name=value`), e.g. for a benchmark's statistics."""
        binaries = postgres_binaries()
        if binaries is None:
            raise RuntimeError("PostgreSQL server binaries are missing: run scripts/install --test")
        data, sockets = self.root / "data", self.root / "sockets"
        sockets.mkdir(parents=True, exist_ok=True)
        demote = _demoted(self.root)
        subprocess.run(
            [str(binaries / "initdb"), "-D", str(data), "-U", "threadlog", "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, preexec_fn=demote, cwd=self.root,
        )  # fmt: skip
        log = open(self.root / "postgres.log", "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [str(binaries / "postgres"), "-D", str(data), "-p", str(self.port), "-k", str(sockets),
             "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200",
             *[arg for name, value in (settings or {}).items() for arg in ("-c", f"{name}={value}")]],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=demote, cwd=self.root,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {(self.root / 'postgres.log').read_text()[-2000:]}")
            ready = subprocess.run(
                [str(binaries / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", "threadlog"],
                check=False,
            )
            if ready.returncode == 0:
                return self
            if time.monotonic() > deadline:
                raise RuntimeError("postgres did not start in time")
            time.sleep(0.1)

    def dsn(self, database: str) -> str:
        return f"postgresql://threadlog@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh empty database; its DSN (from any thread, with or without an event loop)."""
        binaries = postgres_binaries()
        assert binaries is not None
        self._databases += 1
        name = f"test_{os.getpid()}_{self._databases}"
        subprocess.run(
            [str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "threadlog", name],
            check=True, capture_output=True,
        )  # fmt: skip
        return self.dsn(name)

    async def new_database(self) -> str:
        return await asyncio.to_thread(self.create_database)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # smart shutdown: SIGTERM
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _demoted(root: Path) -> Callable[[], None] | None:
    if os.geteuid() != 0:
        return None
    user = pwd.getpwnam("postgres")
    for path in [root, *root.rglob("*")]:
        os.chown(path, user.pw_uid, user.pw_gid)
    os.chmod(root, 0o700)

    def demote() -> None:
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    return demote


@pytest.fixture(scope="session")
def cluster() -> Iterator[PostgresCluster]:
    """One private cluster for the whole session; each test takes a fresh database of it."""
    root = Path(tempfile.mkdtemp(prefix="threadlog-pg-"))  # under /tmp: the postgres user can reach it
    running = PostgresCluster(root).start()
    try:
        yield running
    finally:
        running.stop()
        shutil.rmtree(root, ignore_errors=True)


_SHARED: PostgresCluster | None = None


def shared_database() -> str:
    """A fresh database in the session's one cluster (started on first use, stopped at exit)."""
    global _SHARED
    if _SHARED is None:
        import atexit

        root = Path(tempfile.mkdtemp(prefix="threadlog-pg-"))
        _SHARED = PostgresCluster(root).start()
        atexit.register(lambda: (_SHARED.stop() if _SHARED else None, shutil.rmtree(root, ignore_errors=True)))
    return _SHARED.create_database()
