"""Crash recovery: kill -9 the server with runs waiting for tool outputs or mid-generation,
restart it on the same data, and check each run is settled; then `threadlog replay --verify`."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from server.fake_upstream import RunningUpstream
from tests.runs_fixtures import (
    MODEL,
    SSEStream,
    assistant_text,
    count_until,
    http_client,
    make_sdk,
    message_value,
    pending_calls,
    start_server,
    thread_with,
    wait_for,
    wait_run,
)
from tests.serverproc import ServerProcess, run_cli

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def _assistant(client: OpenAI) -> Any:
    return client.beta.assistants.create(model=MODEL, instructions="Recovery tests.", tools=TOOLS)


def _replay_verify(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("replay", "--data-dir", str(data_dir), "--verify")


def test_kill9_recovery(upstream: RunningUpstream, tmp_path: Path) -> None:
    """(a) a run in requires_action survives kill -9 and completes after a restart;
    (b) a run cut off mid-generation is failed on restart, its message incomplete."""
    data_dir = tmp_path / "data"
    first = start_server(data_dir, upstream)
    second: ServerProcess | None = None
    try:
        client = make_sdk(first)
        helper = _assistant(client)

        waiting_thread = thread_with(client, 'call: get_weather {"city": "Turin"}')
        waiting = client.beta.threads.runs.create_and_poll(
            thread_id=waiting_thread, assistant_id=helper.id, poll_interval_ms=20
        )
        assert waiting.status == "requires_action"
        (call,) = pending_calls(waiting)

        busy_thread = thread_with(client, "long: 300\nslow: 20")  # 6 s of generation
        with (
            http_client(first) as http,
            http.stream(
                "POST", f"/threads/{busy_thread}/runs", json={"assistant_id": helper.id, "stream": True}
            ) as response,
        ):
            events = SSEStream(response).read(stop=count_until("thread.message.delta", 5))
            busy_run_id = events[0].json()["id"]
            first.kill9()
        # The upstream notices its client went away.
        wait_for(lambda: upstream.stats()["open_streams"] == 0, timeout=10)

        second = start_server(data_dir, upstream)
        client = make_sdk(second)

        # (b) never stuck in_progress: failed with server_error, message incomplete, step failed.
        busy = client.beta.threads.runs.retrieve(busy_run_id, thread_id=busy_thread)
        assert busy.status == "failed"
        assert busy.last_error is not None and busy.last_error.code == "server_error"
        assert busy.failed_at is not None
        (message,) = assistant_text(client, busy_thread, busy_run_id)
        assert message.status == "incomplete"
        assert message.incomplete_details is not None and message.incomplete_details.reason == "run_failed"
        words = message_value(message).split()
        assert 5 <= len(words) < 300
        assert words == [f"w{i}" for i in range(1, len(words) + 1)], "the text streamed so far is kept, in order"
        steps = client.beta.threads.runs.steps.list(busy_run_id, thread_id=busy_thread).data
        assert [s.status for s in steps] == ["failed"]
        # The thread is usable again.
        client.beta.threads.messages.create(busy_thread, role="user", content="say: back again")
        again = client.beta.threads.runs.create_and_poll(
            thread_id=busy_thread, assistant_id=helper.id, poll_interval_ms=20
        )
        assert again.status == "completed"

        # (a) the waiting run still waits, and submitting its outputs completes it.
        still = client.beta.threads.runs.retrieve(waiting.id, thread_id=waiting_thread)
        assert still.status == "requires_action"
        assert [c.id for c in pending_calls(still)] == [call.id]
        final = client.beta.threads.runs.submit_tool_outputs_and_poll(
            thread_id=waiting_thread,
            run_id=waiting.id,
            tool_outputs=[{"tool_call_id": call.id, "output": "foggy"}],
            poll_interval_ms=20,
        )
        assert final.status == "completed"
        assert [message_value(m) for m in assistant_text(client, waiting_thread, waiting.id)] == ["Tool results: foggy"]
        assert final.usage is not None and final.usage.total_tokens > 0
    finally:
        first.stop()
        if second is not None:
            second.stop()
    result = _replay_verify(data_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_replay_verify_after_a_session_with_runs(upstream: RunningUpstream, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = start_server(data_dir, upstream)
    try:
        client = make_sdk(server)
        helper = _assistant(client)
        statuses = []
        cases: list[tuple[str, dict[str, Any]]] = [
            ("say: plain", {}),
            ("long: 300", {"max_completion_tokens": 256}),
            (f"fail: 500 9\nnonce {tmp_path.name}", {}),
        ]
        for text, options in cases:
            run = client.beta.threads.runs.create_and_poll(
                thread_id=thread_with(client, text), assistant_id=helper.id, poll_interval_ms=20, **options
            )
            statuses.append(run.status)
        tool_thread = thread_with(client, 'call: get_weather {"city": "Nice"}')
        run = client.beta.threads.runs.create_and_poll(
            thread_id=tool_thread, assistant_id=helper.id, poll_interval_ms=20
        )
        (call,) = pending_calls(run)
        run = client.beta.threads.runs.submit_tool_outputs_and_poll(
            thread_id=tool_thread,
            run_id=run.id,
            tool_outputs=[{"tool_call_id": call.id, "output": "mild"}],
            poll_interval_ms=20,
        )
        statuses.append(run.status)
        cancel_thread = thread_with(client, "long: 200\nslow: 20")
        run = client.beta.threads.runs.create(thread_id=cancel_thread, assistant_id=helper.id)
        wait_for(lambda: assistant_text(client, cancel_thread, run.id), timeout=10)
        client.beta.threads.runs.cancel(run.id, thread_id=cancel_thread)
        statuses.append(wait_run(client, cancel_thread, run.id).status)
        client.beta.threads.runs.update(run.id, thread_id=cancel_thread, metadata={"k": "v"})
        assert statuses == ["completed", "incomplete", "failed", "completed", "cancelled"]
        # Verifying is allowed while the server runs...
        live = _replay_verify(data_dir)
        assert live.returncode == 0, live.stdout + live.stderr
    finally:
        server.stop()
    # ...and after it stopped.
    result = _replay_verify(data_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: rebuilt views equal the live views" in result.stdout
