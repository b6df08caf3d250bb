"""Graceful shutdown: SIGTERM stops new runs (503), lets running ones finish, ends open streams
cleanly and exits 0; past the grace period the runs end as a restart would end them.

Real server processes, the openai SDK's stream helper, the fake upstream pacing its tokens so
the runs outlast every timer in the stack (uvicorn's 5 s graceful timeout, the 15 s ping).
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn
from openai import OpenAI

from events.records import REQUEST_ID
from server.fake_upstream import RunningUpstream
from server.shutdown import GracefulServer
from tests.runs_fixtures import MODEL, StreamingRuns, message_value, read_sse, upstream_env, wait_for
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}


def _server(upstream: RunningUpstream, data_dir: Path, grace: str) -> ServerProcess:
    return ServerProcess(
        data_dir=data_dir, env=upstream_env(upstream), log_level="info", args=("--grace-seconds", grace)
    ).start()


def _client(server: ServerProcess) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=120)


def _draining(server: ServerProcess) -> bool:
    try:
        return httpx.get(f"{server.root_url}/readyz", timeout=5).status_code == 503
    except httpx.HTTPError:
        return False


def test_sigterm_lets_ten_streaming_runs_finish_refuses_new_ones_and_exits_0(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    server = _server(upstream, tmp_path / "data", grace="90")
    client = _client(server)
    assistant = client.beta.assistants.create(model=MODEL, instructions="shutdown test")
    streams = StreamingRuns(client, assistant.id)
    # 200 tokens at 100 ms: each run outlasts uvicorn's 5 s shutdown timeout and the 15 s ping.
    running = [streams.stream("long: 200\nslow: 100") for _ in range(10)]
    streams.wait_started(10)
    idle_thread = client.beta.threads.create(messages=[{"role": "user", "content": "say: later"}])

    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    wait_for(lambda: _draining(server), timeout=30)

    with pytest.raises(openai.APIStatusError) as refused:
        client.beta.threads.runs.create(thread_id=idle_thread.id, assistant_id=assistant.id)
    assert refused.value.status_code == 503
    error = refused.value.body
    assert isinstance(error, dict)
    assert error["code"] == "server_shutting_down"
    assert error["type"] == "server_error"
    assert set(error) == {"message", "type", "param", "code"}
    with pytest.raises(openai.APIStatusError) as refused_too:
        client.beta.threads.create_and_run(assistant_id=assistant.id)
    assert refused_too.value.status_code == 503
    # Nothing changed: the idle thread has no run, and reads still work while draining.
    assert client.beta.threads.runs.list(thread_id=idle_thread.id).data == []
    assert client.beta.threads.retrieve(idle_thread.id).id == idle_thread.id

    finished = [future.result(timeout=120) for future in running]
    for recorder, run in finished:
        assert run.status == "completed", run.last_error
        assert recorder.names[-1] == "thread.run.completed"
        assert recorder.names.count("thread.message.delta") >= 50
    assert server.process.wait(timeout=60) == 0
    log = server.log()
    assert "shutting down: no new runs; waiting up to 90s for 10 running runs" in log
    assert "shutdown: runs drained, 0 ended by the shutdown" in log

    again = _server(upstream, tmp_path / "data", grace="0")
    try:
        after = _client(again)
        for _, run in finished:
            stored = after.beta.threads.runs.retrieve(thread_id=run.thread_id, run_id=run.id)
            assert stored.status == "completed"
            text = message_value(after.beta.threads.messages.list(thread_id=run.thread_id).data[0])
            assert len(text.split()) >= 150
        assert after.beta.threads.runs.list(thread_id=idle_thread.id).data == []
    finally:
        again.stop()


def test_past_the_grace_period_runs_end_as_a_restart_ends_them_and_streams_close_cleanly(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    server = _server(upstream, tmp_path / "data", grace="1")
    client = _client(server)
    assistant = client.beta.assistants.create(model=MODEL, instructions="shutdown test", tools=[TOOL])
    streams = StreamingRuns(client, assistant.id)
    cut = [streams.stream("long: 1000\nslow: 100") for _ in range(3)]  # 100 s each
    paused = streams.stream("call: lookup {}")
    streams.wait_started(4)
    _, paused_run = paused.result(timeout=60)
    assert paused_run.status == "requires_action"
    # Our own events stream of the paused run stays open (it does not stop at requires_action).
    events_url = f"{server.base_url}/threads/{paused_run.thread_id}/runs/{paused_run.id}/events"
    with httpx.Client(timeout=60) as http, http.stream("GET", events_url) as follow:
        assert follow.status_code == 200
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        events = read_sse(follow)  # to the end of the response: it raises if the connection is cut
    assert [e.event for e in events][-1] == "thread.run.requires_action"

    for future in cut:
        recorder, run = future.result(timeout=60)
        assert run.status == "failed"
        assert run.last_error is not None and run.last_error.code == "server_error"
        assert recorder.names[-1] == "thread.run.failed"
    assert server.process.wait(timeout=60) == 0
    assert "shutdown: runs drained, 3 ended by the shutdown" in server.log()

    again = _server(upstream, tmp_path / "data", grace="0")
    try:
        after = _client(again)
        for future in cut:
            run = future.result()[1]
            stored = after.beta.threads.runs.retrieve(thread_id=run.thread_id, run_id=run.id)
            assert stored.status == "failed"
            assert stored.last_error is not None and stored.last_error.code == "server_error"
        # The paused run is completable after the restart, as it would be after any restart.
        pending = paused_run.required_action.submit_tool_outputs.tool_calls
        with after.beta.threads.runs.submit_tool_outputs_stream(
            thread_id=paused_run.thread_id,
            run_id=paused_run.id,
            tool_outputs=[{"tool_call_id": c.id, "output": "42"} for c in pending],
        ) as resumed:
            resumed.until_done()
            assert resumed.get_final_run().status == "completed"
    finally:
        again.stop()


async def test_a_signal_during_a_request_does_not_lend_it_the_drain() -> None:
    """The signal handler runs in whatever context is current when the signal arrives, a
    request's among them: the drain it starts (and every line it logs) carries no request id."""
    seen: list[str | None] = []
    drained = asyncio.Event()

    async def on_drain() -> None:
        seen.append(REQUEST_ID.get())
        drained.set()

    server = GracefulServer(uvicorn.Config(app=None), on_drain)
    server._loop = asyncio.get_running_loop()
    server.started = True
    token = REQUEST_ID.set("req_during_the_signal")
    try:
        server.handle_exit(signal.SIGTERM, None)
    finally:
        REQUEST_ID.reset(token)
    await asyncio.wait_for(drained.wait(), 10)
    assert seen == [None]
    assert server.should_exit
