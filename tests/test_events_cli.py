"""`threadlog events`: a thread's and a run's log printed beside a running server, filtered by
type, as JSON lines, and followed live until the run ends."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from server.fake_upstream import RunningUpstream
from tests.runs_fixtures import MODEL, message_value, read_sse, upstream_env
from tests.serverproc import ServerProcess, run_cli

pytestmark = [pytest.mark.sqlite_only, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def _events(data_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return run_cli("events", *argv, "--data-dir", str(data_dir))


def _text_of(lines: list[dict[str, object]]) -> str:
    return "".join(
        part["text"]["value"]  # type: ignore[index]
        for line in lines
        if line["type"] == "thread.message.delta"
        for part in line["data"]["delta"]["content"]  # type: ignore[index]
    )


def test_events_of_a_thread_and_a_run(upstream: RunningUpstream, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir=data_dir, env=upstream_env(upstream)).start()
    try:
        client = OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=60)
        assistant = client.beta.assistants.create(model=MODEL)
        thread = client.beta.threads.create(messages=[{"role": "user", "content": "long: 30"}])
        run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
        text = message_value(client.beta.threads.messages.list(thread_id=thread.id).data[0])

        as_json = _events(data_dir, run.id, "--json")
        assert as_json.returncode == 0, as_json.stderr
        lines = [json.loads(line) for line in as_json.stdout.splitlines()]
        with (
            httpx.Client(timeout=30) as http,
            http.stream("GET", f"{server.base_url}/threads/{thread.id}/runs/{run.id}/events") as replay,
        ):
            streamed = [e for e in read_sse(replay) if e.event != "done"]
        # The same events as the API's own replay of the run (which shows OpenAI's types only).
        openai_types = [line for line in lines if line["type"] in {e.event for e in streamed}]
        assert [(line["sequence"], line["type"]) for line in openai_types] == [
            (int(e.id or 0), e.event) for e in streamed
        ]
        assert _text_of(lines) == text

        whole = _events(data_dir, thread.id)
        assert whole.returncode == 0
        assert whole.stdout.splitlines()[0].split()[2] == "thread.created"
        assert len(whole.stdout.splitlines()) > len(lines)  # the thread's own events too

        only_runs = _events(data_dir, thread.id, "--type", "thread.run.*", "--type", "thread.created")
        types = {line.split()[2] for line in only_runs.stdout.splitlines()}
        assert types == {"thread.created", "thread.run.created", "thread.run.queued", "thread.run.in_progress",
                         "thread.run.step.created", "thread.run.step.in_progress", "thread.run.step.completed",
                         "thread.run.completed"}  # fmt: skip
        assert f"{run.id} completed tokens" in only_runs.stdout

        missing = _events(data_dir, "run_nope")
        assert missing.returncode == 1 and "no events for run_nope" in missing.stderr

        # --follow on a run that is still streaming prints it live and stops when it ends.
        slow_thread = client.beta.threads.create(messages=[{"role": "user", "content": "long: 40\nslow: 50"}])
        slow = client.beta.threads.runs.create(thread_id=slow_thread.id, assistant_id=assistant.id)
        followed = _events(data_dir, slow.id, "--follow", "--json")
        assert followed.returncode == 0, followed.stderr
        lines = [json.loads(line) for line in followed.stdout.splitlines()]
        assert lines[-1]["type"] == "thread.run.completed"
        final = message_value(client.beta.threads.messages.list(thread_id=slow_thread.id).data[0])
        assert _text_of(lines) == final
    finally:
        server.stop()
