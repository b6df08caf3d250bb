"""Providers file routing through the real server, `auto` truncation under max_prompt_tokens,
5xx retries, and the raw wire format of the submit and create-thread-and-run streams."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai import OpenAI

from server.fake_upstream import RunningUpstream, serve_in_thread
from server.runs.prompt import count_tokens
from tests.runs_fixtures import (
    MODEL,
    SSEEvent,
    SSEReader,
    assistant_text,
    http_client,
    log_head,
    make_sdk,
    message_value,
    pending_calls,
    poll_run,
    start_server,
    thread_with,
)
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# ----------------------------------------------------------------- truncation: auto


def test_auto_truncation_fits_max_prompt_tokens(sdk: OpenAI, assistant: Any, upstream: RunningUpstream) -> None:
    """`auto` drops the oldest messages after the first until the prompt fits max_prompt_tokens:
    the upstream receives fewer messages, the first and the newest ones among them."""
    filler = " ".join(f"filler{i}" for i in range(20))
    history: list[Any] = [{"role": "user", "content": f"message {i}: {filler}"} for i in range(12)]
    thread = sdk.beta.threads.create(messages=[*history, {"role": "user", "content": "say: fitted"}])
    everything = poll_run(sdk, thread.id, assistant)  # no limit: the whole thread goes up
    assert everything.status == "completed"
    full = upstream.requests()[-1]["messages"]
    assert len(full) == 1 + 12 + 1  # system, history, the last user message

    thread = sdk.beta.threads.create(messages=[*history, {"role": "user", "content": "say: fitted"}])
    budget = 400
    run = poll_run(sdk, thread.id, assistant, max_prompt_tokens=budget, truncation_strategy={"type": "auto"})
    assert run.status == "completed", (run.status, run.incomplete_details)
    assert run.max_prompt_tokens == budget
    assert run.truncation_strategy.type == "auto"
    sent = upstream.requests()[-1]["messages"]
    assert 4 <= len(sent) < len(full), "some history was dropped, not all of it"
    assert sent[0] == {"role": "system", "content": "You are a test assistant."}
    assert sent[1]["content"].startswith("message 0:"), "the thread's first message is kept"
    assert sent[-1] == {"role": "user", "content": "say: fitted"}, "the newest message is kept"
    kept = [int(m["content"].split(":")[0].split()[1]) for m in sent[1:-1]]
    assert kept == [0, *range(12 - len(kept) + 1, 12)], "the newest messages are kept, contiguous"
    # What went up fits the budget by the server's own count (4 tokens of overhead per message).
    assert sum(count_tokens(m["content"]) + 4 for m in sent) <= budget
    assert [message_value(m) for m in assistant_text(sdk, thread.id, run.id)] == ["fitted"]


def test_last_messages_and_max_prompt_tokens_together(sdk: OpenAI, assistant: Any, upstream: RunningUpstream) -> None:
    """last_messages applies first; a budget that the kept messages exceed ends the run
    incomplete with reason max_prompt_tokens and sends nothing upstream."""
    big = " ".join(f"w{i}" for i in range(800))
    thread = sdk.beta.threads.create(
        messages=[{"role": "user", "content": "old small"}, {"role": "user", "content": f"say: big\n{big}"}]
    )
    before = len(upstream.requests())
    run = poll_run(
        sdk,
        thread.id,
        assistant,
        max_prompt_tokens=300,
        truncation_strategy={"type": "last_messages", "last_messages": 1},
    )
    assert run.status == "incomplete"
    assert run.incomplete_details is not None and run.incomplete_details.reason == "max_prompt_tokens"
    assert len(upstream.requests()) == before


# ------------------------------------------------------------------ upstream errors


def test_upstream_503_once_is_retried(sdk: OpenAI, assistant: Any, upstream: RunningUpstream) -> None:
    text = f"fail: 503 1\nsay: recovered\nnonce {uuid.uuid4().hex}"
    before = len(upstream.requests())
    run = poll_run(sdk, thread_with(sdk, text), assistant)
    assert run.status == "completed"
    assert run.last_error is None
    assert len(upstream.requests()) - before == 2
    assert [message_value(m) for m in assistant_text(sdk, run.thread_id, run.id)] == ["recovered"]


def test_slow_steady_stream_longer_than_the_stall_timeout_completes(
    sdk: OpenAI, assistant: Any, upstream: RunningUpstream
) -> None:
    """The stall timeout (2 s for these servers) bounds silence, not the whole answer: a
    stream taking 3.5 s that never pauses for 2 s completes."""
    thread_id = thread_with(sdk, "long: 35\nslow: 100")
    started = time.monotonic()
    run = poll_run(sdk, thread_id, assistant)
    assert time.monotonic() - started > 3.0
    assert run.status == "completed", run.last_error
    (message,) = assistant_text(sdk, thread_id, run.id)
    assert message_value(message) == "".join(f"w{i} " for i in range(1, 36))


# ------------------------------------------------------------------ wire format


def _raw_events(server: ServerProcess, path: str, body: dict[str, Any]) -> tuple[str, list[SSEEvent]]:
    reader = SSEReader()
    raw = ""
    events: list[SSEEvent] = []
    with http_client(server) as http, http.stream("POST", path, json=body) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for text in response.iter_text():
            raw += text
            events.extend(reader.feed(text))
    return raw, events


def _check_wire(raw: str, events: list[SSEEvent]) -> list[SSEEvent]:
    assert raw.replace("\r\n", "\n").endswith("event: done\ndata: [DONE]\n\n")
    *body, done = events
    assert (done.event, done.data, done.id) == ("done", "[DONE]", None)
    ids = [int(e.id) for e in body if e.id is not None]
    assert len(ids) == len(body), "every event carries an id"
    assert ids == sorted(set(ids)), "ids strictly increase"
    return body


def test_submit_and_create_and_run_streams_wire_format(run_server: ServerProcess, sdk: OpenAI, assistant: Any) -> None:
    raw, events = _raw_events(
        run_server,
        "/threads/runs",
        {
            "assistant_id": assistant.id,
            "stream": True,
            "thread": {"messages": [{"role": "user", "content": 'call: get_time {"tz": "UTC"}'}]},
        },
    )
    body = _check_wire(raw, events)
    names = [e.event for e in body]
    assert names[:3] == ["thread.created", "thread.run.created", "thread.run.queued"]
    assert names[-1] == "thread.run.requires_action"
    thread_id = body[0].json()["id"]
    run = body[-1].json()
    (call,) = run["required_action"]["submit_tool_outputs"]["tool_calls"]

    raw, events = _raw_events(
        run_server,
        f"/threads/{thread_id}/runs/{run['id']}/submit_tool_outputs",
        {"tool_outputs": [{"tool_call_id": call["id"], "output": "noon"}], "stream": True},
    )
    last_id = int(body[-1].id or 0)
    body = _check_wire(raw, events)
    names = [e.event for e in body]
    assert names[:3] == ["thread.run.step.completed", "thread.run.queued", "thread.run.in_progress"]
    assert names[-1] == "thread.run.completed"
    assert int(body[0].id or 0) > last_id, "ids continue the log's sequence"
    text = "".join(e.json()["delta"]["content"][0]["text"]["value"] for e in body if e.event == "thread.message.delta")
    assert text == "Tool results: noon"


# ------------------------------------------------------------- providers file routing


@pytest.fixture(scope="module")
def alt_upstream() -> Iterator[RunningUpstream]:
    running = serve_in_thread(api_key="alt-secret")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def routed_server(
    upstream: RunningUpstream, alt_upstream: RunningUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("routed")
    providers = root / "providers.toml"
    providers.write_text(
        f"""
[[providers]]
name = "primary"
base_url = "{upstream.base_url}"
models = ["fake-model"]

[[providers]]
name = "alt"
base_url = "{alt_upstream.base_url}"
api_key_env = "ALT_UPSTREAM_KEY"
models = ["alt-*", "exact-alt"]
max_retries = 1
timeout_s = 5
"""
    )
    proc = start_server(
        root / "data",
        None,
        THREADLOG_PROVIDERS_FILE=str(providers),
        THREADLOG_UPSTREAM_BASE_URL="",  # no catch-all: only what the file routes
        ALT_UPSTREAM_KEY="alt-secret",
    )
    try:
        yield proc
    finally:
        proc.stop()


def test_providers_file_routes_exact_and_glob_names(
    routed_server: ServerProcess, upstream: RunningUpstream, alt_upstream: RunningUpstream
) -> None:
    client = make_sdk(routed_server)
    helper = client.beta.assistants.create(
        model=MODEL,
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    )
    marker = uuid.uuid4().hex

    def sent_to(running: RunningUpstream) -> list[str]:
        return [r["model"] for r in running.requests() if marker in str(r["messages"])]

    # Exact name -> primary.
    run = poll_run(client, thread_with(client, f"say: primary\n{marker}"), helper)
    assert run.status == "completed" and run.model == MODEL
    # Glob -> alt, with alt's own key (the fake alt upstream refuses any other key).
    run = poll_run(client, thread_with(client, f"say: via alt\n{marker}"), helper, model="alt-large")
    assert run.status == "completed", run.last_error
    assert run.model == "alt-large"
    assert [message_value(m) for m in assistant_text(client, run.thread_id, run.id)] == ["via alt"]
    # Exact entry of the alt provider, through a function call and a submit.
    run = poll_run(client, thread_with(client, f"call: f {{}}\n{marker}"), helper, model="exact-alt")
    (call,) = pending_calls(run)
    final = client.beta.threads.runs.submit_tool_outputs_and_poll(
        thread_id=run.thread_id, run_id=run.id, tool_outputs=[{"tool_call_id": call.id, "output": "ok"}]
    )
    assert final.status == "completed"
    assert sent_to(upstream) == [MODEL]
    assert sent_to(alt_upstream) == ["alt-large", "exact-alt", "exact-alt"]


def test_providers_file_failures_name_the_provider(routed_server: ServerProcess, alt_upstream: RunningUpstream) -> None:
    client = make_sdk(routed_server)
    helper = client.beta.assistants.create(model="alt-small")
    before = len(alt_upstream.requests())
    run = poll_run(client, thread_with(client, f"fail: 500 9\nnonce {uuid.uuid4().hex}"), helper)
    assert run.status == "failed"
    assert run.last_error is not None and run.last_error.code == "server_error"
    assert "Provider 'alt'" in run.last_error.message and alt_upstream.base_url in run.last_error.message
    assert len(alt_upstream.requests()) - before == 2  # the file's max_retries = 1


def test_providers_file_without_default_refuses_unrouted_models(routed_server: ServerProcess) -> None:
    client = make_sdk(routed_server)
    head = log_head(routed_server)
    with pytest.raises(openai.BadRequestError) as refused:
        client.beta.assistants.create(model="gpt-4o")  # refused at create, not at the first run
    assert refused.value.code == "model_not_found"
    assert log_head(routed_server) == head
    helper = client.beta.assistants.create(model="exact-alt")
    thread_id = thread_with(client, "hello")
    head = log_head(routed_server)
    with pytest.raises(openai.BadRequestError) as info:
        client.beta.threads.runs.create(thread_id=thread_id, assistant_id=helper.id, model="gpt-4o")
    message = info.value.message
    assert "'gpt-4o'" in message
    assert "THREADLOG_PROVIDERS_FILE" in message and "THREADLOG_UPSTREAM_BASE_URL" in message
    assert "alt: alt-*, exact-alt" in message, "the configured routes are listed"
    with pytest.raises(openai.BadRequestError):
        client.beta.threads.runs.create(thread_id=thread_id, assistant_id=helper.id, model="other-model")
    assert log_head(routed_server) == head, "nothing was appended"
    # A model the file routes is accepted on the same thread.
    assert poll_run(client, thread_id, helper, model="alt-1").status == "completed"
