"""Streams that outlast the server's 15 s keep-alive timer, read by the official SDKs.

Each stream lasts about 40 s: slow tokens, or a 40 s silence (the model thinking, or a
long code_interpreter call) during which only keep-alives cross the wire. The Python
SDK's stream helpers (sync and async), `runs.create(stream=True)`,
`submit_tool_outputs_stream` and the Node SDK all read them at the same time, so the
test costs one 40 s wait, and every one of them must end without an error.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI, OpenAI

from server.fake_upstream import RunningUpstream
from tests.runs_fixtures import Recorder, assistant_text, message_value, start_server, thread_with
from tests.serverproc import ServerProcess

NODE_DIR = Path(__file__).parent / "node"
SLOW = "slow: 200\nlong: 200"  # 200 tokens, 200 ms apart: 40 s
GAP_MS = 40_000


@pytest.fixture(scope="module")
def patient_server(upstream: RunningUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server whose upstream stall timeout (90 s) is longer than the streams' silences."""
    proc = start_server(tmp_path_factory.mktemp("long") / "data", upstream, THREADLOG_UPSTREAM_TIMEOUT="90")
    try:
        yield proc
    finally:
        proc.stop()


def _sdk(server: ServerProcess) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=120)


def _words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(1, n + 1))


def test_forty_second_streams_read_by_every_sdk_helper(patient_server: ServerProcess) -> None:
    sdk = _sdk(patient_server)
    plain = sdk.beta.assistants.create(
        model="fake-model",
        tools=[{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
    )
    coder = sdk.beta.assistants.create(model="fake-model", tools=[{"type": "code_interpreter"}])
    sandboxed = shutil.which("bwrap") is not None

    def helper_slow_tokens() -> str:
        thread_id = thread_with(sdk, SLOW)
        recorder = Recorder()
        with sdk.beta.threads.runs.stream(thread_id=thread_id, assistant_id=plain.id, event_handler=recorder) as s:
            s.until_done()
            run = s.get_final_run()
        assert run.status == "completed"
        assert recorder.names.count("thread.message.delta") == 200
        return message_value(assistant_text(sdk, thread_id, run.id)[-1])

    def create_stream_silent_gap() -> str:
        thread_id = thread_with(sdk, f"pause: {GAP_MS}\nsay: after the silence")
        names = []
        with sdk.beta.threads.runs.create(thread_id=thread_id, assistant_id=plain.id, stream=True) as stream:
            for event in stream:
                names.append(event.event)
        assert names[-1] == "thread.run.completed"
        return message_value(assistant_text(sdk, thread_id)[-1])

    def submit_stream_slow_tokens() -> str:
        thread_id = thread_with(sdk, "call: lookup {}\nslow: 200")
        run = sdk.beta.threads.runs.create_and_poll(thread_id=thread_id, assistant_id=plain.id, poll_interval_ms=50)
        assert run.status == "requires_action"
        (call,) = run.required_action.submit_tool_outputs.tool_calls
        with sdk.beta.threads.runs.submit_tool_outputs_stream(
            thread_id=thread_id, run_id=run.id, tool_outputs=[{"tool_call_id": call.id, "output": _words(200)}]
        ) as s:
            s.until_done()
            run = s.get_final_run()
        assert run.status == "completed"
        return message_value(assistant_text(sdk, thread_id, run.id)[-1])

    async def async_helper(prompt: str, assistant_id: str) -> str:
        client = AsyncOpenAI(base_url=patient_server.base_url, api_key="k", max_retries=0, timeout=120)
        thread = await client.beta.threads.create(messages=[{"role": "user", "content": prompt}])
        async with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant_id) as s:
            await s.until_done()
            run = await s.get_final_run()
        assert run.status == "completed", run.last_error
        page = await client.beta.threads.messages.list(thread.id, order="asc")
        await client.close()
        return message_value([m for m in page.data if m.role == "assistant"][-1])

    def async_slow_tokens() -> str:
        return asyncio.run(async_helper(SLOW, plain.id))

    def async_long_tool_call() -> str:
        code = "code: import time\ntime.sleep(40)\nprint('slept')"
        return asyncio.run(async_helper(code, coder.id))

    def node_silent_gap() -> str:
        result = subprocess.run(
            ["node", "stream_run.mjs"],
            cwd=NODE_DIR,
            env={
                **os.environ,
                "BASE_URL": patient_server.base_url,
                "PROMPT": f"pause: {GAP_MS}\nsay: node after the silence",
            },
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        assert summary["events"][-1] == "thread.run.completed"
        return str(summary["final_text"])

    def raw_keep_alives() -> list[str]:
        """The bytes between events during a silence: keep-alive comments, no blank line after them."""
        thread_id = thread_with(sdk, f"pause: {GAP_MS}\nsay: raw")
        body = {"assistant_id": plain.id, "stream": True}
        with httpx.stream(
            "POST", f"{patient_server.base_url}/threads/{thread_id}/runs", json=body, timeout=120
        ) as response:
            text = "".join(response.iter_text())
        return text.replace("\r\n", "\n").split("\n")

    jobs: dict[str, Callable[[], Any]] = {
        "helper_slow_tokens": helper_slow_tokens,
        "create_stream_silent_gap": create_stream_silent_gap,
        "submit_stream_slow_tokens": submit_stream_slow_tokens,
        "async_slow_tokens": async_slow_tokens,
        "raw": raw_keep_alives,
    }
    if sandboxed:
        jobs["async_long_tool_call"] = async_long_tool_call
    if shutil.which("node") and (NODE_DIR / "node_modules" / "openai").exists():
        jobs["node_silent_gap"] = node_silent_gap
    elif os.environ.get("CI") == "true":
        pytest.fail("the Node SDK must be installed in CI (scripts/install --test)")
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        results = {name: future.result() for name, future in futures.items()}

    long_answer = " ".join(f"w{i}" for i in range(1, 201)) + " "
    assert results["helper_slow_tokens"] == long_answer
    assert results["async_slow_tokens"] == long_answer
    assert results["create_stream_silent_gap"] == "after the silence"
    assert results["submit_stream_slow_tokens"] == f"Tool results: {_words(200)}"
    if "async_long_tool_call" in results:
        assert results["async_long_tool_call"] == "Tool results: slept\n"
    if "node_silent_gap" in results:
        assert results["node_silent_gap"] == "node after the silence"
    lines = results["raw"]
    comments = [i for i, line in enumerate(lines) if line.startswith(":")]
    assert len(comments) >= 2, "a 40 s silence crosses at least two 15 s keep-alives"
    for i in comments:
        assert lines[i + 1] != "", "a blank line after a comment would dispatch an empty event"
