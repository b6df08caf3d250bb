"""Run options reaching the upstream, limits, one active run per thread, cancel, dropped clients,
upstream failures, a server without a provider, and expiry of runs waiting for tool outputs."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI

from server.fake_upstream import RunningUpstream
from tests.runs_fixtures import (
    MODEL,
    TERMINAL,
    SSEStream,
    assistant_text,
    count_until,
    http_client,
    log_head,
    make_sdk,
    message_value,
    pending_calls,
    poll_run,
    read_sse,
    start_server,
    thread_with,
    wait_for,
    wait_run,
)
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _unique(text: str) -> str:
    """`fail:` counters are keyed by the message text: keep each test's text its own."""
    return f"{text}\nnonce {uuid.uuid4().hex}"


# ------------------------------------------------------------------------- options


def test_instructions_additional_instructions_and_messages_reach_upstream(
    sdk: OpenAI, assistant: Any, upstream: RunningUpstream
) -> None:
    thread_id = thread_with(sdk, "first question")
    run = poll_run(
        sdk,
        thread_id,
        assistant,
        instructions="Override instructions.",
        additional_instructions="Also be brief.",
        additional_messages=[
            {"role": "assistant", "content": "an earlier answer"},
            {"role": "user", "content": "say: final from additional"},
        ],
    )
    assert run.status == "completed"
    assert run.instructions == "Override instructions.\n\nAlso be brief."
    sent = upstream.requests()[-1]["messages"]
    assert sent == [
        {"role": "system", "content": "Override instructions.\n\nAlso be brief."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an earlier answer"},
        {"role": "user", "content": "say: final from additional"},
    ]
    # The additional messages are now part of the thread, before the run's reply.
    messages = sdk.beta.threads.messages.list(thread_id, order="asc").data
    assert [(m.role, message_value(m)) for m in messages] == [
        ("user", "first question"),
        ("assistant", "an earlier answer"),
        ("user", "say: final from additional"),
        ("assistant", "final from additional"),
    ]


def test_assistant_instructions_used_by_default(sdk: OpenAI, assistant: Any, upstream: RunningUpstream) -> None:
    thread_id = thread_with(sdk, "say: ok")
    run = poll_run(sdk, thread_id, assistant, additional_instructions="Extra.")
    assert run.status == "completed"
    assert upstream.requests()[-1]["messages"][0] == {
        "role": "system",
        "content": "You are a test assistant.\n\nExtra.",
    }


def test_model_override(sdk: OpenAI, assistant: Any, upstream: RunningUpstream) -> None:
    thread_id = thread_with(sdk, "say: from another model")
    run = poll_run(sdk, thread_id, assistant, model="gpt-4o-mini")
    assert run.status == "completed"
    assert run.model == "gpt-4o-mini"
    assert upstream.requests()[-1]["model"] == "gpt-4o-mini"


def test_response_format_json_object(sdk: OpenAI, assistant: Any, upstream: RunningUpstream) -> None:
    thread_id = thread_with(sdk, "give me json")
    run = poll_run(sdk, thread_id, assistant, response_format={"type": "json_object"})
    assert run.status == "completed"
    assert upstream.requests()[-1]["response_format"] == {"type": "json_object"}
    (message,) = assistant_text(sdk, thread_id, run.id)
    assert json.loads(message_value(message)) == {"echo": "give me json"}


def test_temperature_and_top_p_forwarded(sdk: OpenAI, assistant: Any, upstream: RunningUpstream) -> None:
    thread_id = thread_with(sdk, "say: tuned")
    run = poll_run(sdk, thread_id, assistant, temperature=0.3, top_p=0.7)
    assert run.status == "completed"
    assert (run.temperature, run.top_p) == (0.3, 0.7)
    sent = upstream.requests()[-1]
    assert (sent["temperature"], sent["top_p"]) == (0.3, 0.7)


def test_truncation_last_messages(sdk: OpenAI, assistant: Any, upstream: RunningUpstream) -> None:
    messages: list[Any] = [{"role": "user", "content": f"message {i}"} for i in range(5)]
    thread = sdk.beta.threads.create(messages=[*messages, {"role": "user", "content": "say: truncated"}])
    run = poll_run(sdk, thread.id, assistant, truncation_strategy={"type": "last_messages", "last_messages": 2})
    assert run.status == "completed"
    assert run.truncation_strategy.type == "last_messages"
    assert run.truncation_strategy.last_messages == 2
    sent = upstream.requests()[-1]["messages"]
    assert sent == [
        {"role": "system", "content": "You are a test assistant."},
        {"role": "user", "content": "message 4"},
        {"role": "user", "content": "say: truncated"},
    ]


def test_max_prompt_tokens_too_small(sdk: OpenAI, assistant: Any, upstream: RunningUpstream) -> None:
    thread_id = thread_with(sdk, "say: never\n" + " ".join(f"word{i}" for i in range(2000)))
    before = len(upstream.requests())
    run = poll_run(sdk, thread_id, assistant, max_prompt_tokens=256)
    assert run.status == "incomplete"
    assert run.incomplete_details is not None and run.incomplete_details.reason == "max_prompt_tokens"
    assert run.usage is not None
    assert len(upstream.requests()) == before, "nothing was sent upstream"
    assert assistant_text(sdk, thread_id, run.id) == []


def test_max_completion_tokens(sdk: OpenAI, assistant: Any, upstream: RunningUpstream) -> None:
    thread_id = thread_with(sdk, "long: 400")
    run = poll_run(sdk, thread_id, assistant, max_completion_tokens=256)
    assert run.status == "incomplete"
    assert run.incomplete_details is not None and run.incomplete_details.reason == "max_completion_tokens"
    assert upstream.requests()[-1]["max_completion_tokens"] == 256
    (message,) = assistant_text(sdk, thread_id, run.id)
    assert message.status == "incomplete"
    assert message_value(message) == "".join(f"w{i} " for i in range(1, 257))
    assert run.usage is not None and run.usage.completion_tokens == 256
    steps = sdk.beta.threads.runs.steps.list(run.id, thread_id=thread_id).data
    assert len(steps) == 1 and steps[0].usage is not None
    assert steps[0].usage.completion_tokens == 256


def test_run_and_step_usage_non_null_and_consistent(sdk: OpenAI, assistant: Any) -> None:
    thread_id = thread_with(sdk, "say: counting tokens\nusage: 40 3")
    run = poll_run(sdk, thread_id, assistant)
    assert run.status == "completed"
    assert run.usage is not None
    assert (run.usage.prompt_tokens, run.usage.completion_tokens, run.usage.total_tokens) == (40, 3, 43)
    steps = sdk.beta.threads.runs.steps.list(run.id, thread_id=thread_id).data
    assert [(s.usage.prompt_tokens, s.usage.completion_tokens) for s in steps if s.usage] == [(40, 3)]


def test_metadata_update(sdk: OpenAI, assistant: Any) -> None:
    thread_id = thread_with(sdk, "long: 30\nslow: 10")
    run = sdk.beta.threads.runs.create(thread_id=thread_id, assistant_id=assistant.id, metadata={"a": "1"})
    updated = sdk.beta.threads.runs.update(run.id, thread_id=thread_id, metadata={"a": "2", "b": "x"})
    assert updated.metadata == {"a": "2", "b": "x"}
    final = wait_run(sdk, thread_id, run.id)
    assert final.status == "completed"
    # An update made while the run was active survives the run's later snapshots.
    assert final.metadata == {"a": "2", "b": "x"}
    again = sdk.beta.threads.runs.update(run.id, thread_id=thread_id, metadata={"c": "3"})
    assert again.metadata == {"c": "3"}
    assert sdk.beta.threads.runs.retrieve(run.id, thread_id=thread_id).metadata == {"c": "3"}
    assert sdk.beta.threads.runs.retrieve(run.id, thread_id=thread_id).status == "completed"


def test_metadata_updates_racing_a_stream_are_never_overwritten(sdk: OpenAI, assistant: Any) -> None:
    """Updates sent while runs stream and finish: each response, and the run after, has the update.

    The race is at the end of a run: its last snapshot was built with the old metadata and
    was on its way to the log when the update was committed. Many short runs hit it.
    """
    for k in range(20):
        thread_id = thread_with(sdk, "long: 20\nslow: 1")
        run = sdk.beta.threads.runs.create(thread_id=thread_id, assistant_id=assistant.id, metadata={"n": "start"})
        sent = 0
        while True:
            metadata = {"n": f"{k}-{sent}"}
            updated = sdk.beta.threads.runs.update(run.id, thread_id=thread_id, metadata=metadata)
            assert updated.metadata == metadata, (k, sent, updated.status)
            sent += 1
            if updated.status in TERMINAL:
                break
        final = sdk.beta.threads.runs.retrieve(run.id, thread_id=thread_id)
        assert final.metadata == metadata


# ------------------------------------------------------------------ one active run


def test_one_active_run_per_thread(sdk: OpenAI, assistant: Any) -> None:
    thread_id = thread_with(sdk, "long: 40\nslow: 20")
    run = sdk.beta.threads.runs.create(thread_id=thread_id, assistant_id=assistant.id)
    with pytest.raises(openai.BadRequestError) as info:
        sdk.beta.threads.runs.create(thread_id=thread_id, assistant_id=assistant.id)
    assert run.id in info.value.message
    with pytest.raises(openai.BadRequestError):
        sdk.beta.threads.messages.create(thread_id, role="user", content="while running")
    with pytest.raises(openai.BadRequestError):
        sdk.beta.threads.runs.create(thread_id=thread_id, assistant_id=assistant.id, stream=True)
    assert [r.id for r in sdk.beta.threads.runs.list(thread_id).data] == [run.id]
    final = wait_run(sdk, thread_id, run.id)
    assert final.status == "completed"
    # Once it ended, the thread takes new messages and runs again.
    sdk.beta.threads.messages.create(thread_id, role="user", content="say: next")
    assert poll_run(sdk, thread_id, assistant).status == "completed"


def test_one_active_run_while_requires_action(sdk: OpenAI, assistant: Any) -> None:
    thread_id = thread_with(sdk, 'call: get_weather {"city": "Bern"}')
    run = poll_run(sdk, thread_id, assistant)
    assert run.status == "requires_action"
    with pytest.raises(openai.BadRequestError):
        sdk.beta.threads.runs.create(thread_id=thread_id, assistant_id=assistant.id)
    with pytest.raises(openai.BadRequestError):
        sdk.beta.threads.messages.create(thread_id, role="user", content="while waiting")
    cancelled = sdk.beta.threads.runs.cancel(run.id, thread_id=thread_id)
    assert cancelled.status in ("cancelling", "cancelled")
    final = wait_run(sdk, thread_id, run.id)
    assert final.status == "cancelled"
    steps = sdk.beta.threads.runs.steps.list(run.id, thread_id=thread_id).data
    assert [s.status for s in steps] == ["cancelled"]


# --------------------------------------------------------------------------- cancel


def test_cancel_mid_stream(run_server: ServerProcess, sdk: OpenAI, assistant: Any, upstream: RunningUpstream) -> None:
    wait_for(lambda: upstream.stats()["open_streams"] == 0, timeout=10)
    thread_id = thread_with(sdk, "long: 200\nslow: 20")  # 4 s of generation
    with (
        http_client(run_server) as http,
        http.stream(
            "POST", f"/threads/{thread_id}/runs", json={"assistant_id": assistant.id, "stream": True}
        ) as response,
    ):
        sse = SSEStream(response)
        head = sse.read(stop=count_until("thread.message.delta", 3))
        run_id = head[0].json()["id"]
        assert upstream.stats()["open_streams"] == 1
        started = time.monotonic()
        cancelled = sdk.beta.threads.runs.cancel(run_id, thread_id=thread_id)
        assert cancelled.status == "cancelling"
        tail = sse.read()
    final = wait_run(sdk, thread_id, run_id, timeout=10)
    elapsed = time.monotonic() - started
    assert final.status == "cancelled"
    assert final.cancelled_at is not None
    assert elapsed < 1.5, f"cancel took {elapsed:.2f}s; the full generation takes 4s"
    names = [e.event for e in tail]
    assert "thread.run.cancelling" in names
    assert names[-2:] == ["thread.run.cancelled", "done"]
    assert names.index("thread.run.cancelling") < names.index("thread.run.cancelled")
    wait_for(lambda: upstream.stats()["open_streams"] == 0, timeout=5)
    (message,) = assistant_text(sdk, thread_id, run_id)
    assert message.status == "incomplete"
    assert message.incomplete_details is not None and message.incomplete_details.reason == "run_cancelled"
    assert 3 <= len(message_value(message).split()) < 200
    steps = sdk.beta.threads.runs.steps.list(run_id, thread_id=thread_id).data
    assert [s.status for s in steps] == ["cancelled"]
    # Cancelling again is refused: the run has ended.
    with pytest.raises(openai.BadRequestError):
        sdk.beta.threads.runs.cancel(run_id, thread_id=thread_id)


def test_cancel_racing_the_end_of_a_run_never_leaves_it_cancelling(
    run_server: ServerProcess, sdk: OpenAI, assistant: Any
) -> None:
    """A cancel that arrives as the run finishes either wins (cancelling -> cancelled) or is
    refused because the run has ended; the run is never left `cancelling` for good."""
    outcomes = set()
    for _ in range(12):
        thread_id = thread_with(sdk, "say: a b")
        with (
            http_client(run_server) as http,
            http.stream(
                "POST", f"/threads/{thread_id}/runs", json={"assistant_id": assistant.id, "stream": True}
            ) as response,
        ):
            sse = SSEStream(response)
            head = sse.read(stop=lambda e: e.event == "thread.message.completed")
            run_id = head[0].json()["id"]
            answer: str
            try:
                answer = sdk.beta.threads.runs.cancel(run_id, thread_id=thread_id).status
            except openai.BadRequestError:
                answer = "refused"
            tail = sse.read()
        final = wait_run(sdk, thread_id, run_id, timeout=5)
        outcomes.add((answer, final.status))
        assert (answer, final.status) in {("cancelling", "cancelled"), ("refused", "completed")}
        assert tail[-1].event == "done"
        assert tail[-2].event == f"thread.run.{final.status}"
        # The thread is not blocked by a run stuck in `cancelling`.
        sdk.beta.threads.messages.create(thread_id, role="user", content="after the race")
    assert outcomes


def test_dropped_client_does_not_stop_the_run(
    run_server: ServerProcess, sdk: OpenAI, assistant: Any, upstream: RunningUpstream
) -> None:
    thread_id = thread_with(sdk, "long: 40\nslow: 10")
    with (
        http_client(run_server) as http,
        http.stream(
            "POST", f"/threads/{thread_id}/runs", json={"assistant_id": assistant.id, "stream": True}
        ) as response,
    ):
        head = read_sse(response, stop=lambda e: e.event == "thread.message.delta")
        run_id = head[0].json()["id"]
    # The connection is closed here, mid-run.
    final = wait_run(sdk, thread_id, run_id, timeout=10)
    assert final.status == "completed"
    (message,) = assistant_text(sdk, thread_id, run_id)
    assert message.status == "completed"
    assert message_value(message) == "".join(f"w{i} " for i in range(1, 41))


# ------------------------------------------------------------------ upstream failure


def test_rate_limit_once_is_retried(sdk: OpenAI, assistant: Any, upstream: RunningUpstream) -> None:
    text = _unique("fail: 429 1\nsay: after a retry")
    before = len(upstream.requests())
    run = poll_run(sdk, thread_with(sdk, text), assistant)
    assert run.status == "completed"
    assert len(upstream.requests()) - before == 2
    assert [message_value(m) for m in assistant_text(sdk, run.thread_id, run.id)] == ["after a retry"]


def test_server_errors_fail_the_run(sdk: OpenAI, assistant: Any, upstream: RunningUpstream) -> None:
    before = len(upstream.requests())
    run = poll_run(sdk, thread_with(sdk, _unique("fail: 500 9")), assistant)
    assert run.status == "failed"
    assert run.last_error is not None and run.last_error.code == "server_error"
    assert "Provider 'default'" in run.last_error.message
    assert upstream.base_url in run.last_error.message
    assert "500" in run.last_error.message
    assert len(upstream.requests()) - before == 3  # one try + THREADLOG_UPSTREAM_MAX_RETRIES=2
    assert run.failed_at is not None
    assert run.usage is not None


def test_persistent_rate_limit_fails_the_run(sdk: OpenAI, assistant: Any) -> None:
    run = poll_run(sdk, thread_with(sdk, _unique("fail: 429 9")), assistant)
    assert run.status == "failed"
    assert run.last_error is not None and run.last_error.code == "rate_limit_exceeded"
    assert "Provider 'default'" in run.last_error.message


def test_stalled_upstream_fails_the_run(sdk: OpenAI, assistant: Any, upstream: RunningUpstream) -> None:
    thread_id = thread_with(sdk, "say: first then nothing\nstall")
    started = time.monotonic()
    run = sdk.beta.threads.runs.create(thread_id=thread_id, assistant_id=assistant.id)
    final = wait_run(sdk, thread_id, run.id, timeout=15)
    elapsed = time.monotonic() - started
    assert final.status == "failed"
    assert final.last_error is not None and final.last_error.code == "server_error"
    assert "timed out" in final.last_error.message
    assert elapsed < 6, f"a 2 s upstream timeout took {elapsed:.1f}s to fail the run"
    (message,) = assistant_text(sdk, thread_id, run.id)
    assert message.status == "incomplete"
    assert message_value(message) == "first "
    steps = sdk.beta.threads.runs.steps.list(run.id, thread_id=thread_id).data
    assert [s.status for s in steps] == ["failed"]
    wait_for(lambda: upstream.stats()["open_streams"] == 0, timeout=5)


# ---------------------------------------------------------------- separate servers


@pytest.fixture
def bare_server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path / "data", None, THREADLOG_UPSTREAM_BASE_URL="")
    try:
        yield proc
    finally:
        proc.stop()


def test_no_provider_configured(bare_server: ServerProcess) -> None:
    client = make_sdk(bare_server)
    head = log_head(bare_server)
    with pytest.raises(openai.BadRequestError) as info:
        client.beta.assistants.create(model=MODEL)
    assert info.value.code == "model_not_found"
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "model"
    assert "THREADLOG_UPSTREAM_BASE_URL" in info.value.message
    assert log_head(bare_server) == head, "nothing was appended"
    assert client.beta.assistants.list().data == []


def test_a_model_no_provider_serves_is_refused_at_create_and_at_run(tmp_path: Path) -> None:
    providers = tmp_path / "providers.toml"
    providers.write_text('[[providers]]\nname = "local"\nbase_url = "http://127.0.0.1:9/v1"\nmodels = ["local-*"]\n')
    proc = start_server(
        tmp_path / "data", None, THREADLOG_UPSTREAM_BASE_URL="", THREADLOG_PROVIDERS_FILE=str(providers)
    )
    try:
        client = make_sdk(proc)
        with pytest.raises(openai.BadRequestError) as refused:
            client.beta.assistants.create(model="gpt-4o")
        assert refused.value.code == "model_not_found" and "local: local-*" in refused.value.message
        helper = client.beta.assistants.create(model="local-llama")
        with pytest.raises(openai.BadRequestError) as renamed:
            client.beta.assistants.update(helper.id, model="gpt-4o")
        assert renamed.value.code == "model_not_found"
        assert client.beta.assistants.retrieve(helper.id).model == "local-llama"
        thread = client.beta.threads.create(messages=[{"role": "user", "content": "hello"}])
        head = log_head(proc)
        with pytest.raises(openai.BadRequestError) as info:
            client.beta.threads.runs.create(thread_id=thread.id, assistant_id=helper.id, model="gpt-4o")
        assert "gpt-4o" in info.value.message
        with pytest.raises(openai.BadRequestError):
            client.beta.threads.create_and_run(
                assistant_id=helper.id, model="gpt-4o", thread={"messages": [{"role": "user", "content": "hi"}]}
            )
        assert log_head(proc) == head, "nothing was appended"
        assert client.beta.threads.runs.list(thread.id).data == []
    finally:
        proc.stop()


def test_run_waiting_for_outputs_expires(upstream: RunningUpstream, tmp_path: Path) -> None:
    proc = start_server(tmp_path / "data", upstream, THREADLOG_RUN_EXPIRY_SECONDS="2")
    try:
        client = make_sdk(proc)
        helper = client.beta.assistants.create(
            model=MODEL,
            tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        )
        thread_id = thread_with(client, "call: f {}")
        run = client.beta.threads.runs.create_and_poll(thread_id=thread_id, assistant_id=helper.id, poll_interval_ms=20)
        assert run.status == "requires_action"
        assert run.expires_at is not None and run.expires_at - run.created_at == 2
        final = wait_run(client, thread_id, run.id, statuses=("expired",), timeout=10)
        assert final.status == "expired"
        assert final.required_action is None
        steps = client.beta.threads.runs.steps.list(run.id, thread_id=thread_id).data
        assert [s.status for s in steps] == ["expired"]
        with pytest.raises(openai.BadRequestError):
            client.beta.threads.runs.submit_tool_outputs(
                thread_id=thread_id,
                run_id=run.id,
                tool_outputs=[{"tool_call_id": pending_calls(run)[0].id, "output": "late"}],
            )
        # The thread is free again.
        client.beta.threads.messages.create(thread_id, role="user", content="say: after expiry")
        again = client.beta.threads.runs.create_and_poll(
            thread_id=thread_id, assistant_id=helper.id, poll_interval_ms=20
        )
        assert again.status == "completed"
    finally:
        proc.stop()


def test_runs_have_a_wall_clock_limit(upstream: RunningUpstream, tmp_path: Path) -> None:
    """An upstream that stays alive but never answers, and one that answers too slowly: both end
    `expired` at the limit, their upstream streams closed."""
    server = start_server(tmp_path / "data", upstream, THREADLOG_RUN_TIMEOUT_SECONDS="3")
    try:
        sdk = make_sdk(server)
        helper = sdk.beta.assistants.create(model=MODEL)
        alive = thread_with(sdk, "heartbeat")
        slow = thread_with(sdk, "long: 200\nslow: 100")
        started = time.monotonic()
        runs = [sdk.beta.threads.runs.create(thread_id=t, assistant_id=helper.id) for t in (alive, slow)]
        finals = [wait_run(sdk, t, r.id, timeout=20) for t, r in zip((alive, slow), runs, strict=True)]
        elapsed = time.monotonic() - started
        assert [f.status for f in finals] == ["expired", "expired"]
        assert 3 <= elapsed < 15
        assert all(f.expires_at is None and f.required_action is None for f in finals)
        (message,) = assistant_text(sdk, slow, runs[1].id)
        assert message.status == "incomplete"
        assert message.incomplete_details is not None and message.incomplete_details.reason == "run_expired"
        assert message_value(message).startswith("w1 w2 ")
        (step,) = sdk.beta.threads.runs.steps.list(runs[1].id, thread_id=slow).data
        assert step.status == "expired" and step.expired_at is not None
        wait_for(lambda: upstream.stats()["open_streams"] == 0, timeout=10)
    finally:
        server.stop()
