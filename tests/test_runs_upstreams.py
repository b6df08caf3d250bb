"""Upstreams that behave like real providers, or break: through the real SDK and a real server.

The fake upstream's `chunking:` directive cuts tool calls the way OpenAI, Ollama, vLLM and
llama.cpp do; `broken:` and `malformed:` make it answer with something that is no
completion stream. Every case checks what the SDK's stream helper accumulated, what
`required_action` asks for and what `GET …/steps` returns, which must all agree.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai import OpenAI

from tests.runs_fixtures import Recorder, assistant_text, message_value, poll_run, steps_of, thread_with

PARIS = {"city": 'Paris, \u00eele-de-France \u2014 "centre" \\ \U0001f600'}
TOKYO = {"tz": "Asia/Tokyo"}


def _stream(sdk: OpenAI, assistant: Any, text: str) -> tuple[str, Any, Any]:
    thread_id = thread_with(sdk, text)
    recorder = Recorder()
    with sdk.beta.threads.runs.stream(thread_id=thread_id, assistant_id=assistant.id, event_handler=recorder) as s:
        s.until_done()
        run = s.get_final_run()
        snapshot = s.current_run_step_snapshot
    return thread_id, run, snapshot


@pytest.mark.parametrize(
    "chunking",
    ["openai", "whole", "split:1", "split:7", "interleaved", "index-first", "index-zero", "index-zero-split"],
)
def test_tool_calls_chunked_like_each_provider(sdk: OpenAI, assistant: Any, chunking: str) -> None:
    prompt = f"chunking: {chunking}\ncall: get_weather {json.dumps(PARIS)}\ncall: get_time {json.dumps(TOKYO)}"
    thread_id, run, snapshot = _stream(sdk, assistant, prompt)
    assert run.status == "requires_action", run.last_error
    calls = run.required_action.submit_tool_outputs.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", PARIS),
        ("get_time", TOKYO),
    ]
    assert len({c.id for c in calls}) == 2
    # What the SDK accumulated from the step deltas: each argument string once, not doubled.
    streamed = snapshot.step_details.tool_calls
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in streamed] == [
        (c.id, c.function.name, json.loads(c.function.arguments)) for c in calls
    ]
    # The stored step, read back while the run waits.
    (step,) = [s for s in steps_of(sdk, thread_id, run.id) if s.type == "tool_calls"]
    stored: Any = step.step_details
    assert [(c.id, c.function.arguments) for c in stored.tool_calls] == [(c.id, c.function.arguments) for c in calls]
    assert step.status == "in_progress"

    outputs = [{"tool_call_id": c.id, "output": f"out-{i}"} for i, c in enumerate(calls)]
    run = sdk.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id, thread_id=thread_id, tool_outputs=outputs, poll_interval_ms=20
    )
    assert run.status == "completed"
    assert message_value(assistant_text(sdk, thread_id, run.id)[-1]) == "Tool results: out-0; out-1"
    (step,) = [s for s in steps_of(sdk, thread_id, run.id) if s.type == "tool_calls"]
    done: Any = step.step_details
    assert [(c.function.arguments, c.function.output) for c in done.tool_calls] == [
        (c.function.arguments, f"out-{i}") for i, c in enumerate(calls)
    ]


def test_a_thread_without_messages_is_answered_from_the_instructions(sdk: OpenAI, upstream: Any) -> None:
    helper = sdk.beta.assistants.create(model="fake-model", instructions="say: Hello from the instructions")
    thread = sdk.beta.threads.create()
    upstream.reset()
    run = poll_run(sdk, thread.id, helper)
    assert run.status == "completed", (run.status, run.incomplete_details, run.last_error)
    sent = upstream.requests()[-1]["messages"]
    assert sent == [{"role": "system", "content": "say: Hello from the instructions"}]
    assert run.usage is not None and run.usage.prompt_tokens > 0
    assert len(assistant_text(sdk, thread.id, run.id)) == 1


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("random", "without a single completion chunk"),
        ("json", "content-type application/json"),
        ("done-only", "b'data: [DONE]"),
        ("html", "502 Bad Gateway"),
    ],
)
def test_a_broken_upstream_fails_the_run_naming_it(sdk: OpenAI, assistant: Any, kind: str, words: str) -> None:
    thread_id = thread_with(sdk, f"broken: {kind}")
    run = poll_run(sdk, thread_id, assistant)
    assert run.status == "failed"
    assert run.last_error is not None and run.last_error.code == "server_error"
    assert "Provider 'default'" in run.last_error.message
    assert words in run.last_error.message
    assert assistant_text(sdk, thread_id, run.id) == []


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("content-object", "'content' is an object, not a string"),
        ("choices-string", "'choices' is a string, not a list"),
        ("delta-list", "'delta' is a list, not an object"),
    ],
)
def test_malformed_chunks_fail_the_run_in_words(sdk: OpenAI, assistant: Any, kind: str, words: str) -> None:
    thread_id = thread_with(sdk, f"malformed: {kind}")
    run = poll_run(sdk, thread_id, assistant)
    assert run.status == "failed"
    assert run.last_error is not None and run.last_error.code == "server_error"
    assert words in run.last_error.message
    assert "Internal error" not in run.last_error.message
    assert "Traceback" not in run.last_error.message


def test_invalid_escape_in_builtin_arguments_is_fed_back_to_the_model(sdk: OpenAI) -> None:
    coder = sdk.beta.assistants.create(model="fake-model", tools=[{"type": "code_interpreter"}])
    thread_id = thread_with(sdk, "malformed: bad-escape")
    run = poll_run(sdk, thread_id, coder)
    assert run.status == "completed", run.last_error
    (step,) = [s for s in steps_of(sdk, thread_id, run.id) if s.type == "tool_calls"]
    call: Any = step.step_details.tool_calls[0]
    assert call.type == "code_interpreter"
    assert call.code_interpreter.input.startswith("\\uZZ12")
    answer = message_value(assistant_text(sdk, thread_id, run.id)[-1])
    assert answer.startswith("Tool results: Invalid arguments for code_interpreter:")
