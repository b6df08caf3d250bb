"""A thread carried as a file: `threadlog export` on one server, `threadlog import` on a second with
its own data dir and no model at all, then a recorded re-run there gives the same output."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from server.fake_upstream import RunningUpstream
from tests.runs_fixtures import make_sdk, message_value, pending_calls, start_server, wait_run
from tests.serverproc import ServerProcess, run_cli

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _texts(sdk: OpenAI, thread_id: str) -> list[tuple[str, str]]:
    return [(m.role, message_value(m)) for m in sdk.beta.threads.messages.list(thread_id, order="asc", limit=100)]


def test_export_import_and_rerun_recorded_elsewhere(
    sdk: OpenAI, run_server: ServerProcess, assistant: Any, upstream: RunningUpstream, tmp_path: Path
) -> None:
    notes = sdk.files.create(file=("notes.txt", io.BytesIO(b"the notes that go with the bug")), purpose="assistants")
    thread = sdk.beta.threads.create(
        messages=[
            {
                "role": "user",
                "content": 'call: get_weather {"city": "Lima"}',
                "attachments": [{"file_id": notes.id, "tools": []}],
            }
        ]
    )
    with sdk.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant.id) as stream:
        stream.until_done()
    paused = sdk.beta.threads.runs.list(thread.id).data[0]
    [call] = pending_calls(paused)
    sdk.beta.threads.runs.submit_tool_outputs_and_poll(
        thread_id=thread.id, run_id=paused.id, tool_outputs=[{"tool_call_id": call.id, "output": "fog"}]
    )
    original = wait_run(sdk, thread.id, paused.id)
    assert original.status == "completed"
    env = {"OPENAI_BASE_URL": run_server.base_url, "OPENAI_API_KEY": "k"}
    exported = run_cli("export", thread.id, env=env)
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert lines[0]["object"] == "threadlog.export" and lines[0]["thread_id"] == thread.id
    assert [r["file"]["id"] for r in lines if r["object"] == "threadlog.export.file"] == [notes.id]
    bare = run_cli("export", thread.id, "--no-files", env=env)
    assert bare.returncode == 0 and "content_base64" not in bare.stdout
    report = tmp_path / "thread.jsonl"
    report.write_text(exported.stdout)

    # A second server: its own data dir, and a provider that is never reachable.
    other = start_server(tmp_path / "other-data", None)
    try:
        before = len(upstream.requests())
        imported = run_cli("import", str(report), "--base-url", other.base_url, "--api-key", "k")
        assert imported.returncode == 0, imported.stderr
        result = json.loads(imported.stdout)
        new_thread, ids = result["thread_id"], result["ids"]
        assert new_thread != thread.id and ids[thread.id] == new_thread and ids[original.id] != original.id
        there = make_sdk(other)
        assert _texts(there, new_thread) == _texts(sdk, thread.id)
        new_run = there.beta.threads.runs.retrieve(ids[original.id], thread_id=new_thread)
        assert new_run.status == "completed" and new_run.usage == original.usage
        first = there.beta.threads.messages.list(new_thread, order="asc").data[0]
        assert first.attachments and first.attachments[0].file_id == ids[notes.id]
        assert there.files.content(ids[notes.id]).read() == b"the notes that go with the bug"
        # The imported run re-runs offline, from its recorded turns.
        rerun: dict[str, Any] = there.post(
            f"/threads/{new_thread}/runs/{new_run.id}/rerun", body={"model_source": "recorded"}, cast_to=object
        )  # type: ignore[assignment]
        waiting = wait_run(there, rerun["thread_id"], rerun["id"], statuses=("requires_action",))
        [again] = pending_calls(waiting)
        assert (again.function.name, again.function.arguments) == (call.function.name, call.function.arguments)
        there.beta.threads.runs.submit_tool_outputs_and_poll(
            thread_id=rerun["thread_id"], run_id=rerun["id"], tool_outputs=[{"tool_call_id": again.id, "output": "fog"}]
        )
        done = wait_run(there, rerun["thread_id"], rerun["id"])
        assert done.status == "completed"
        assert _texts(there, rerun["thread_id"]) == _texts(sdk, thread.id)
        assert len(upstream.requests()) == before
        # Over HTTP too; a broken file is refused with the error envelope and changes nothing.
        head = httpx.get(f"{other.root_url}/healthz").json()["head"]
        broken = httpx.post(f"{other.base_url}/threads/import", content=b'{"object": "nope"}\nnot json\n')
        assert broken.status_code == 400 and "Line 2" in broken.json()["error"]["message"]
        assert httpx.get(f"{other.root_url}/healthz").json()["head"] == head
    finally:
        other.stop()
    over_http = httpx.get(f"{run_server.base_url}/threads/{thread.id}/export", params={"files": "false"})
    assert over_http.status_code == 200 and over_http.headers["content-type"].startswith("application/x-ndjson")
    assert over_http.text.splitlines()[1:] == bare.stdout.splitlines()[1:]  # the same events, assistants


def test_export_refuses_a_thread_with_a_run_in_progress(sdk: OpenAI, run_server: ServerProcess, assistant: Any) -> None:
    thread = sdk.beta.threads.create(messages=[{"role": "user", "content": "slow: 200\nlong: 100"}])
    run = sdk.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    refused = httpx.get(f"{run_server.base_url}/threads/{thread.id}/export")
    assert refused.status_code == 400 and run.id in refused.json()["error"]["message"]
    sdk.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    wait_run(sdk, thread.id, run.id)
    assert httpx.get(f"{run_server.base_url}/threads/{thread.id}/export").status_code == 200
