"""Fixtures: a real server process, the real openai SDK pointed at it, a real fake upstream."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from tests.serverproc import ServerProcess

warnings.filterwarnings("ignore", category=DeprecationWarning, module="openai")
warnings.filterwarnings("ignore", message=".*Assistants API is deprecated.*")
warnings.filterwarnings("ignore", message="deprecated")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(data_dir=tmp_path / "data").start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def client(server: ServerProcess) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key="test-key", max_retries=0, timeout=30)


# Run tests' fixtures (fake upstream, server process against it, SDK, assistant).
pytest_plugins = ["tests.runs_fixtures"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only: reads the SQLite file or runs SQLite-only tooling (backup, compact, replay rebuild)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With THREADLOG_TEST_BACKEND=postgres every server keeps its log in PostgreSQL; the tests
    of SQLite's own files and tools do not apply there."""
    from tests.serverproc import BACKEND

    if BACKEND != "postgres":
        return
    skip = pytest.mark.skip(reason="SQLite-only: this backend run keeps the log in PostgreSQL")
    for item in items:
        if item.get_closest_marker("sqlite_only"):
            item.add_marker(skip)
