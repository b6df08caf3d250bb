"""`threadlog backup` and `threadlog restore`: a consistent copy of a data dir, taken live.

The event log is the truth, and SQLite's online backup API copies it as one read
transaction: the copy is the log as of one commit, whatever the server appends meanwhile
(WAL readers never block the writer). Uploaded files are immutable once stored, so copying
the directory after the log holds every file the copied log refers to, unless one was deleted
in between (then its id is reported). LanceDB keeps immutable versions, so a copy of its
directory taken after the log holds at least what the log's vector stores had ingested;
`replay --verify` on the restored dir checks the views. For PostgreSQL, use `pg_dump`.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BackupReport", "backup", "restore"]

_LOG = "threadlog.sqlite"
_COPIED_DIRS = ("files", "lancedb")


@dataclass(frozen=True)
class BackupReport:
    events: int
    bytes: int
    missing_files: tuple[str, ...]


def backup(data_dir: Path, target: Path) -> BackupReport:
    """Copy `data_dir` (live or not) into `target`, which must not exist or be empty."""
    source = data_dir / _LOG
    if not source.exists():
        raise FileNotFoundError(f"no event log at {source}")
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} is not empty; back up into a new directory")
    target.mkdir(parents=True, exist_ok=True)
    with (
        contextlib.closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as live,
        contextlib.closing(sqlite3.connect(target / _LOG)) as copy,
    ):
        live.backup(copy)  # all pages in one step: one read transaction, one consistent state
    with contextlib.closing(sqlite3.connect(target / _LOG)) as copy:
        events = int(copy.execute("SELECT count(*) FROM events").fetchone()[0])
        file_ids = [row[0] for row in copy.execute("SELECT id FROM views WHERE kind = 'file'")]
    for name in _COPIED_DIRS:
        if (data_dir / name).is_dir():
            shutil.copytree(
                data_dir / name,
                target / name,
                ignore=shutil.ignore_patterns("*.part"),  # uploads still being received
                copy_function=_copy_if_present,
                dirs_exist_ok=True,
            )
    missing = tuple(f for f in file_ids if not (target / "files" / f).exists())
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    return BackupReport(events=events, bytes=size, missing_files=missing)


def restore(source: Path, data_dir: Path) -> int:
    """Copy a backup into `data_dir`, which must hold no event log; the number of events."""
    if not (source / _LOG).exists():
        raise FileNotFoundError(f"{source} holds no backup ({_LOG} is missing)")
    if (data_dir / _LOG).exists():
        raise FileExistsError(f"{data_dir} already holds an event log; restore into a new data dir")
    data_dir.mkdir(parents=True, exist_ok=True)
    with (
        contextlib.closing(sqlite3.connect(f"file:{source / _LOG}?mode=ro", uri=True)) as backup_db,
        contextlib.closing(sqlite3.connect(data_dir / _LOG)) as restored,
    ):
        backup_db.backup(restored)
        events = int(restored.execute("SELECT count(*) FROM events").fetchone()[0])
    for name in _COPIED_DIRS:
        if (source / name).is_dir():
            shutil.copytree(source / name, data_dir / name, dirs_exist_ok=True)
    return events


def _copy_if_present(src: str, dst: str) -> None:
    """A file deleted while the copy runs is skipped (the log's own copy decides what it needs)."""
    with contextlib.suppress(FileNotFoundError):
        shutil.copy2(src, dst)
