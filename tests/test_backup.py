"""`threadlog backup` while streaming runs append, `threadlog restore` into a new data dir, and
`replay --verify` on the restored log; the restored server serves what the backup holds.

Real server processes, the real CLI, the openai SDK; the runs are mid-stream when the backup
is taken (the test checks that the copy holds runs that had not ended).
"""

from __future__ import annotations

import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from openai import OpenAI

from server.fake_upstream import RunningUpstream
from tests.runs_fixtures import MODEL, StreamingRuns, upstream_env
from tests.serverproc import ServerProcess, run_cli

pytestmark = [pytest.mark.sqlite_only, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def _last_run_statuses(db: Path) -> dict[str, str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT run_id, data FROM events WHERE type LIKE 'thread.run.%' AND type NOT LIKE 'thread.run.step.%' "
            "ORDER BY sequence"
        ).fetchall()
    return {run_id: json.loads(data)["status"] for run_id, data in rows}


def test_a_backup_taken_under_load_restores_and_verifies(upstream: RunningUpstream, tmp_path: Path) -> None:
    live_dir, backup_dir, restored_dir = tmp_path / "live", tmp_path / "backup", tmp_path / "restored"
    server = ServerProcess(data_dir=live_dir, env=upstream_env(upstream)).start()
    try:
        client = OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=120)
        upload = client.files.create(file=("notes.txt", b"the backup keeps this file"), purpose="assistants")
        assistant = client.beta.assistants.create(model=MODEL)
        streams = StreamingRuns(client, assistant.id)
        running = [streams.stream("long: 150\nslow: 20") for _ in range(6)]  # ~3 s each
        streams.wait_started(6)

        taken = run_cli("backup", "--to", str(backup_dir), "--data-dir", str(live_dir))
        assert taken.returncode == 0, taken.stderr
        assert taken.stdout.startswith("backed up ")

        finished = [future.result(timeout=120) for future in running]
        assert all(run.status == "completed" for _, run in finished)
    finally:
        server.stop()

    copied = _last_run_statuses(backup_dir / "threadlog.sqlite")
    assert len(copied) == 6
    assert any(status == "in_progress" for status in copied.values()), copied  # taken mid-stream
    with sqlite3.connect(live_dir / "threadlog.sqlite") as live, sqlite3.connect(backup_dir / "threadlog.sqlite") as b:
        live_count = live.execute("SELECT count(*) FROM events").fetchone()[0]
        backup_count = b.execute("SELECT count(*) FROM events").fetchone()[0]
        # The copy is a prefix of the live log: the same events up to its last sequence.
        last = b.execute("SELECT max(sequence) FROM events").fetchone()[0]
        live_prefix = live.execute("SELECT sequence, type, data FROM events WHERE sequence <= ? ORDER BY 1", (last,))
        assert list(live_prefix) == list(b.execute("SELECT sequence, type, data FROM events ORDER BY 1"))
    assert 0 < backup_count < live_count

    refused = run_cli("backup", "--to", str(backup_dir), "--data-dir", str(live_dir))
    assert refused.returncode == 2 and "not empty" in refused.stderr

    restored = run_cli("restore", "--from", str(backup_dir), "--data-dir", str(restored_dir))
    assert restored.returncode == 0, restored.stderr
    assert f"restored {backup_count} events" in restored.stdout
    again = run_cli("restore", "--from", str(backup_dir), "--data-dir", str(restored_dir))
    assert again.returncode == 2 and "already holds an event log" in again.stderr

    # --data-dir defaults as for `serve`: THREADLOG_DATA_DIR.
    verified = run_cli("replay", "--verify", env={"THREADLOG_DATA_DIR": str(restored_dir)})
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "OK: rebuilt views equal the live views" in verified.stdout
    assert f"replayed up to sequence {backup_count:,} of {backup_count:,} (100%)" in verified.stderr

    server = ServerProcess(data_dir=restored_dir, env=upstream_env(upstream)).start()
    try:
        client = OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=30)
        assert client.files.content(upload.id).read() == b"the backup keeps this file"
        with ThreadPoolExecutor(4) as pool:
            runs = list(
                pool.map(
                    lambda r: client.beta.threads.runs.retrieve(thread_id=r.thread_id, run_id=r.id),
                    [run for _, run in finished],
                )
            )
        for run in runs:
            # A run the backup caught mid-stream ends as after any restart; the others as they were.
            expected = "completed" if copied[run.id] == "completed" else "failed"
            assert run.status == expected
    finally:
        server.stop()
