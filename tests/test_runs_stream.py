"""Streaming runs through the real SDK against a real server process and the fake upstream:
event order, the raw SSE wire format, the polling helpers, resume with Last-Event-ID and replay."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from openai import OpenAI

from server.fake_upstream import RunningUpstream
from tests.runs_fixtures import (
    Recorder,
    SSEEvent,
    SSEReader,
    assistant_text,
    count_until,
    http_client,
    message_value,
    read_sse,
    thread_with,
    wait_run,
)
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_stream_helper_event_order_text_and_usage(sdk: OpenAI, assistant: Any, upstream: RunningUpstream) -> None:
    thread_id = thread_with(sdk, "say: alpha beta gamma delta epsilon\nusage: 11 7")
    recorder = Recorder()
    with sdk.beta.threads.runs.stream(thread_id=thread_id, assistant_id=assistant.id, event_handler=recorder) as stream:
        stream.until_done()
        final_run = stream.get_final_run()
        final_messages = stream.get_final_messages()

    deltas = [n for n in recorder.names if n == "thread.message.delta"]
    assert len(deltas) >= 2  # the text arrives in several deltas
    assert recorder.names == [
        "thread.run.created",
        "thread.run.queued",
        "thread.run.in_progress",
        "thread.run.step.created",
        "thread.run.step.in_progress",
        "thread.message.created",
        "thread.message.in_progress",
        *deltas,
        "thread.message.completed",
        "thread.run.step.completed",
        "thread.run.completed",
    ]
    assert len(deltas) == 5  # one per token of the `say:` text
    pieces = [e.data.delta.content[0].text.value for e in recorder.events if e.event == "thread.message.delta"]
    assert "".join(pieces) == "alpha beta gamma delta epsilon"
    assert [message_value(m) for m in final_messages] == ["alpha beta gamma delta epsilon"]
    assert final_run.status == "completed"
    assert final_run.usage is not None
    assert (final_run.usage.prompt_tokens, final_run.usage.completion_tokens, final_run.usage.total_tokens) == (
        11,
        7,
        18,
    )
    # The stored message is what the stream showed.
    stored = assistant_text(sdk, thread_id, final_run.id)
    assert [message_value(m) for m in stored] == ["alpha beta gamma delta epsilon"]
    assert stored[0].status == "completed"
    # The step carries the same usage once completed.
    steps = sdk.beta.threads.runs.steps.list(final_run.id, thread_id=thread_id).data
    assert len(steps) == 1 and steps[0].status == "completed"
    assert steps[0].usage is not None and steps[0].usage.total_tokens == 18


def test_raw_sse_wire_format(run_server: ServerProcess, sdk: OpenAI, assistant: Any) -> None:
    thread_id = thread_with(sdk, "say: one two three")
    reader = SSEReader()
    raw = ""
    with (
        http_client(run_server) as http,
        http.stream(
            "POST", f"/threads/{thread_id}/runs", json={"assistant_id": assistant.id, "stream": True}
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events: list[SSEEvent] = []
        for text in response.iter_text():
            raw += text
            events.extend(reader.feed(text))
    assert raw.replace("\r\n", "\n").endswith("event: done\ndata: [DONE]\n\n")
    assert reader.buffer.strip() == ""
    *body, done = events
    assert (done.event, done.data) == ("done", "[DONE]")
    ids = [int(e.id) for e in body if e.id is not None]
    assert len(ids) == len(body), "every event carries an id"
    assert ids == sorted(ids) and len(set(ids)) == len(ids), "ids strictly increase"
    for event in body:
        assert event.event and event.event.startswith("thread.")
        assert isinstance(event.json(), dict)
    # Every non-comment line is one of id:/event:/data:.
    for line in reader.lines:
        if line and not line.startswith(":"):
            assert line.split(":", 1)[0] in ("id", "event", "data"), line
    names = [e.event for e in body]
    assert names[0] == "thread.run.created" and names[-1] == "thread.run.completed"
    text = "".join(e.json()["delta"]["content"][0]["text"]["value"] for e in body if e.event == "thread.message.delta")
    assert text == "one two three"


def test_create_and_poll(sdk: OpenAI, assistant: Any) -> None:
    thread_id = thread_with(sdk, "say: polled answer")
    run = sdk.beta.threads.runs.create_and_poll(thread_id=thread_id, assistant_id=assistant.id, poll_interval_ms=20)
    assert run.status == "completed"
    assert run.usage is not None and run.usage.total_tokens > 0
    assert run.completed_at is not None and run.expires_at is None
    assert [message_value(m) for m in assistant_text(sdk, thread_id, run.id)] == ["polled answer"]


def test_create_and_run_stream_starts_with_thread_created(sdk: OpenAI, assistant: Any) -> None:
    recorder = Recorder()
    with sdk.beta.threads.create_and_run_stream(
        assistant_id=assistant.id,
        thread={"messages": [{"role": "user", "content": "say: fresh thread reply"}]},
        event_handler=recorder,
    ) as stream:
        stream.until_done()
        run = stream.get_final_run()
        text = "".join(message_value(m) for m in stream.get_final_messages())
    assert recorder.names[0] == "thread.created"
    assert recorder.names[1:4] == ["thread.run.created", "thread.run.queued", "thread.run.in_progress"]
    assert recorder.names[-1] == "thread.run.completed"
    thread_id = recorder.events[0].data.id
    assert run.thread_id == thread_id
    assert text == "fresh thread reply"
    assert sdk.beta.threads.retrieve(thread_id).id == thread_id


def test_create_and_run_poll(sdk: OpenAI, assistant: Any) -> None:
    run = sdk.beta.threads.create_and_run_poll(
        assistant_id=assistant.id,
        thread={"messages": [{"role": "user", "content": "say: polled from a new thread"}]},
        poll_interval_ms=20,
    )
    assert run.status == "completed"
    assert [message_value(m) for m in assistant_text(sdk, run.thread_id, run.id)] == ["polled from a new thread"]


def _delta_text(events: list[SSEEvent]) -> str:
    return "".join(
        part["text"].get("value", "")
        for e in events
        if e.event == "thread.message.delta"
        for part in e.json()["delta"]["content"]
    )


def test_resume_with_last_event_id(run_server: ServerProcess, sdk: OpenAI, assistant: Any) -> None:
    thread_id = thread_with(sdk, "long: 60\nslow: 10")
    run = sdk.beta.threads.runs.create(thread_id=thread_id, assistant_id=assistant.id)
    path = f"/threads/{thread_id}/runs/{run.id}/events"
    with http_client(run_server) as http:
        with http.stream("GET", path) as response:
            assert response.status_code == 200
            first = read_sse(response, stop=count_until("thread.message.delta", 10))
        # The connection is dropped mid-run; the run goes on.
        last_id = first[-1].id
        assert last_id is not None
        with http.stream("GET", path, headers={"Last-Event-ID": last_id}) as response:
            assert response.status_code == 200
            rest = read_sse(response)
    assert rest[-1].event == "done"
    events = first + rest[:-1]
    ids = [int(e.id) for e in events if e.id is not None]
    assert len(ids) == len(events)
    assert all(a < b for a, b in itertools.pairwise(ids)), "no duplicates, strictly increasing"
    assert int(rest[0].id or 0) > int(last_id)
    final = wait_run(sdk, thread_id, run.id)
    assert final.status == "completed"
    full = "".join(f"w{i} " for i in range(1, 61))
    assert _delta_text(events) == full
    assert [message_value(m) for m in assistant_text(sdk, thread_id, run.id)] == [full]
    assert events[-1].event == "thread.run.completed"


def test_replay_of_finished_run_equals_live_stream(run_server: ServerProcess, sdk: OpenAI, assistant: Any) -> None:
    thread_id = thread_with(sdk, "say: replay me byte for byte\nlong: 5")
    live_lines: list[str] = []
    with sdk.beta.threads.runs.with_streaming_response.create(
        thread_id=thread_id, assistant_id=assistant.id, stream=True
    ) as response:
        live_lines.extend(response.iter_lines())
    live = [e for e in (parse_lines(live_lines)) if e.event != "done"]
    assert live and live[-1].event == "thread.run.completed"
    run_id = live[0].json()["id"]
    with http_client(run_server) as http, http.stream("GET", f"/threads/{thread_id}/runs/{run_id}/events") as r:
        replayed = read_sse(r)
    assert replayed[-1].event == "done"
    replayed = replayed[:-1]
    assert [(e.id, e.event, e.data) for e in replayed] == [(e.id, e.event, e.data) for e in live]
    # And the resume point in the middle of a finished run gives exactly the tail.
    middle = live[len(live) // 2]
    with (
        http_client(run_server) as http,
        http.stream(
            "GET", f"/threads/{thread_id}/runs/{run_id}/events", headers={"Last-Event-ID": str(middle.id)}
        ) as r,
    ):
        tail = read_sse(r)[:-1]
    assert [(e.id, e.event, e.data) for e in tail] == [(e.id, e.event, e.data) for e in live[len(live) // 2 + 1 :]]


def parse_lines(lines: list[str]) -> list[SSEEvent]:
    reader = SSEReader()
    return reader.feed("".join(line + "\n" for line in lines) + "\n")


def test_live_stream_json_is_the_stored_objects(sdk: OpenAI, assistant: Any) -> None:
    """The run snapshot in the stream's last event is what retrieve returns."""
    thread_id = thread_with(sdk, "say: consistent")
    stream = sdk.beta.threads.runs.create(thread_id=thread_id, assistant_id=assistant.id, stream=True)
    events = list(stream)
    final = events[-1]
    assert final.event == "thread.run.completed"
    retrieved = sdk.beta.threads.runs.retrieve(final.data.id, thread_id=thread_id)
    assert json.loads(retrieved.model_dump_json()) == json.loads(final.data.model_dump_json())


@pytest.mark.parametrize(
    "item",
    [
        {
            "id": "7",
            "event": "thread.message.delta",
            "data": '{"delta":{"content":[{"text":{"value":"a \\u00e9 \\u2603"}}]}}',
        },
        {"id": "12", "event": "thread.run.created", "data": "{}"},
        {"event": "done", "data": "[DONE]"},
    ],
)
def test_encoded_items_are_byte_for_byte_sse_starlette(item: dict[str, str]) -> None:
    from sse_starlette import ServerSentEvent

    from server.sse import encode_item

    expected = ServerSentEvent(data=item["data"], event=item.get("event"), id=item.get("id")).encode()
    assert encode_item(item) == expected


def test_a_message_read_while_it_streams_has_the_text_so_far(sdk: OpenAI, assistant: Any) -> None:
    """Stored views fold no deltas: reads of a streaming message merge them (projections/live.py)."""
    thread_id = thread_with(sdk, "long: 150\nslow: 20")
    run = sdk.beta.threads.runs.create(thread_id=thread_id, assistant_id=assistant.id)
    seen: list[int] = []
    for _ in range(500):
        messages = assistant_text(sdk, thread_id, run.id)
        if messages and messages[0].status == "in_progress":
            words = message_value(messages[0]).split()
            assert words == [f"w{i}" for i in range(1, len(words) + 1)]
            if words and (not seen or len(words) > seen[-1]):
                seen.append(len(words))
            retrieved = sdk.beta.threads.messages.retrieve(messages[0].id, thread_id=thread_id)
            assert message_value(retrieved).split()[: len(words)] == words
        if len(seen) >= 3 or (messages and messages[0].status != "in_progress"):
            break
    assert len(seen) >= 3, seen  # read three times mid-stream, each time longer
    final = wait_run(sdk, thread_id, run.id)
    assert final.status == "completed"
    (message,) = assistant_text(sdk, thread_id, run.id)
    assert message_value(message).split() == [f"w{i}" for i in range(1, 151)]
