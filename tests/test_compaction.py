"""`threadlog compact`: the deltas of ended runs go, beside a live server; what the API shows,
`replay --verify` and a compacted run's replay stream (its snapshots) stay right, a paused run
keeps every event, and new runs append after the gaps.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from events.compaction import DELTA_TYPES
from server.fake_upstream import RunningUpstream
from tests.runs_fixtures import MODEL, message_value, read_sse, upstream_env, wait_for
from tests.serverproc import ServerProcess, run_cli

pytestmark = [pytest.mark.sqlite_only, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}


def _deltas(db: Path, run_id: str) -> int:
    with sqlite3.connect(db) as conn:
        marks = ",".join("?" * len(DELTA_TYPES))
        return int(
            conn.execute(
                f"SELECT count(*) FROM events WHERE run_id = ? AND type IN ({marks})", (run_id, *DELTA_TYPES)
            ).fetchone()[0]
        )


def test_compaction_drops_deltas_of_ended_runs_only(upstream: RunningUpstream, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    db = data_dir / "threadlog.sqlite"
    server = ServerProcess(data_dir=data_dir, env=upstream_env(upstream)).start()
    try:
        client = OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=60)
        assistant = client.beta.assistants.create(model=MODEL, tools=[TOOL])
        ended = []
        for text in ("long: 80", "long: 40", "say: short answer"):
            thread = client.beta.threads.create(messages=[{"role": "user", "content": text}])
            with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant.id) as stream:
                stream.until_done()
                ended.append(stream.get_final_run())
        paused_thread = client.beta.threads.create(messages=[{"role": "user", "content": "call: lookup {}"}])
        paused = client.beta.threads.runs.create_and_poll(thread_id=paused_thread.id, assistant_id=assistant.id)
        assert paused.status == "requires_action"
        messages_before = {r.id: client.beta.threads.messages.list(thread_id=r.thread_id).model_dump() for r in ended}
        counted = [_deltas(db, r.id) for r in ended]
        assert all(n > 0 for n in counted)
        paused_deltas = _deltas(db, paused.id)
        assert paused_deltas > 0

        done = run_cli("compact", "--older-than", "0s", "--data-dir", str(data_dir))  # the server is running
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("compacted 3 runs: removed ")
        sizes = re.search(r"([\d,]+) bytes per run before, ([\d,]+) after", done.stdout)
        assert sizes is not None, done.stdout
        before, after = (int(g.replace(",", "")) for g in sizes.groups())
        assert after < before
        assert f"removed {sum(counted)} delta events" in done.stdout
        assert "compacted 3/3 runs" in done.stderr

        assert all(_deltas(db, r.id) == 0 for r in ended)
        assert _deltas(db, paused.id) == paused_deltas  # not ended: untouched
        for run in ended:
            assert client.beta.threads.messages.list(thread_id=run.thread_id).model_dump() == messages_before[run.id]
        # A compacted run replays as its snapshots: the full text arrives in message.completed.
        longest = ended[0]
        with (
            httpx.Client(timeout=30) as http,
            http.stream("GET", f"{server.base_url}/threads/{longest.thread_id}/runs/{longest.id}/events") as replay,
        ):
            events = read_sse(replay)
        names = [e.event for e in events]
        assert "thread.message.delta" not in names and names[-2:] == ["thread.run.completed", "done"]
        completed = next(e.json() for e in events if e.event == "thread.message.completed")
        text = message_value(client.beta.threads.messages.list(thread_id=longest.thread_id).data[0])
        assert completed["content"][0]["text"]["value"] == text
        # The log goes on after the gaps: a new run on a compacted thread, and the paused run ends.
        more = client.beta.threads.runs.create_and_poll(thread_id=longest.thread_id, assistant_id=assistant.id)
        assert more.status == "completed"
        calls = paused.required_action.submit_tool_outputs.tool_calls
        resumed = client.beta.threads.runs.submit_tool_outputs_and_poll(
            thread_id=paused.thread_id,
            run_id=paused.id,
            tool_outputs=[{"tool_call_id": c.id, "output": "1"} for c in calls],
        )
        assert resumed.status == "completed"
    finally:
        server.stop()

    verified = run_cli("replay", "--data-dir", str(data_dir), "--verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "OK: rebuilt views equal the live views" in verified.stdout
    again = run_cli("compact", "--older-than", "0s", "--data-dir", str(data_dir))
    assert again.returncode == 0 and again.stdout.startswith("compacted 2 runs")  # `more` and the resumed run


def test_recent_runs_are_kept_and_durations_are_checked(upstream: RunningUpstream, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir=data_dir, env=upstream_env(upstream)).start()
    try:
        client = OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=60)
        assistant = client.beta.assistants.create(model=MODEL)
        thread = client.beta.threads.create(messages=[{"role": "user", "content": "long: 20"}])
        run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
        assert run.status == "completed"
    finally:
        server.stop()
    kept = run_cli("compact", "--older-than", "30d", "--data-dir", str(data_dir))
    assert kept.returncode == 0 and kept.stdout.startswith("compacted 0 runs")
    assert _deltas(data_dir / "threadlog.sqlite", run.id) > 0
    bad = run_cli("compact", "--older-than", "soon", "--data-dir", str(data_dir))
    assert bad.returncode == 2 and "not a duration" in bad.stderr


def test_the_server_can_compact_in_the_background(upstream: RunningUpstream, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = upstream_env(upstream, THREADLOG_COMPACT_OLDER_THAN="0s", THREADLOG_COMPACT_INTERVAL_SECONDS="0.2")
    server = ServerProcess(data_dir=data_dir, env=env, log_level="info").start()
    try:
        client = OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=60)
        assistant = client.beta.assistants.create(model=MODEL)
        thread = client.beta.threads.create(messages=[{"role": "user", "content": "long: 30"}])
        run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
        assert run.status == "completed"
        wait_for(lambda: _deltas(data_dir / "threadlog.sqlite", run.id) == 0, timeout=30)
        text = message_value(client.beta.threads.messages.list(thread_id=thread.id).data[0])
        assert len(text.split()) == 30
        assert "compacted 1 runs: removed" in server.log()
    finally:
        server.stop()
