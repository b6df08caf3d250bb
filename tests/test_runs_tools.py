"""Function calling through the real SDK: requires_action, submitting outputs (streamed and polled),
validation of submitted outputs, parallel calls, tool_choice and tools overrides."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from openai import OpenAI

from server.fake_upstream import RunningUpstream
from tests.runs_fixtures import (
    Recorder,
    assistant_text,
    message_value,
    pending_calls,
    steps_of,
    thread_with,
    wait_run,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _requires_action(sdk: OpenAI, assistant: Any, text: str, **options: Any) -> tuple[str, Any]:
    thread_id = thread_with(sdk, text)
    run = sdk.beta.threads.runs.create_and_poll(
        thread_id=thread_id, assistant_id=assistant.id, poll_interval_ms=20, **options
    )
    return thread_id, run


def test_single_call_then_submit_stream(sdk: OpenAI, assistant: Any) -> None:
    thread_id = thread_with(sdk, 'call: get_weather {"city": "Paris"}')
    recorder = Recorder()
    with sdk.beta.threads.runs.stream(thread_id=thread_id, assistant_id=assistant.id, event_handler=recorder) as s:
        s.until_done()
        run = s.get_final_run()
        # The helper's merged step snapshot matches: each scalar was sent once.
        snapshot = s.current_run_step_snapshot
    calls = pending_calls(run)
    assert len(calls) == 1
    assert snapshot is not None and snapshot.step_details.type == "tool_calls"
    assert len(snapshot.step_details.tool_calls) == 1
    streamed: Any = snapshot.step_details.tool_calls[0]
    assert (streamed.id, streamed.function.name, streamed.function.arguments) == (
        calls[0].id,
        "get_weather",
        '{"city": "Paris"}',
    )
    assert calls[0].type == "function"
    assert calls[0].function.name == "get_weather"
    assert calls[0].function.arguments == '{"city": "Paris"}'
    assert calls[0].id.startswith("call_")
    assert recorder.names[-1] == "thread.run.requires_action"
    assert "thread.run.step.delta" in recorder.names
    # The step stays in_progress while the run waits.
    steps = sdk.beta.threads.runs.steps.list(run.id, thread_id=thread_id).data
    assert [(s.type, s.status) for s in steps] == [("tool_calls", "in_progress")]
    assert steps[0].usage is None

    resumed = Recorder()
    with sdk.beta.threads.runs.submit_tool_outputs_stream(
        thread_id=thread_id,
        run_id=run.id,
        tool_outputs=[{"tool_call_id": calls[0].id, "output": "22C and sunny"}],
        event_handler=resumed,
    ) as s:
        s.until_done()
        final = s.get_final_run()
        text = "".join(message_value(m) for m in s.get_final_messages())
    assert resumed.names[:3] == ["thread.run.step.completed", "thread.run.queued", "thread.run.in_progress"]
    completed_step = resumed.events[0].data
    assert completed_step.type == "tool_calls"
    assert completed_step.step_details.tool_calls[0].function.output == "22C and sunny"
    assert resumed.names[-1] == "thread.run.completed"
    assert final.status == "completed"
    assert text == "Tool results: 22C and sunny"
    assert [message_value(m) for m in assistant_text(sdk, thread_id, run.id)] == ["Tool results: 22C and sunny"]
    # Usage: the run's usage is the sum of its steps' usage, and both are non-null.
    done_steps = steps_of(sdk, thread_id, run.id)
    assert [(s.type, s.status) for s in done_steps] == [("tool_calls", "completed"), ("message_creation", "completed")]
    assert all(s.usage is not None and s.usage.total_tokens > 0 for s in done_steps)
    assert final.usage is not None
    assert final.usage.total_tokens == sum(s.usage.total_tokens for s in done_steps)
    assert final.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in done_steps)


def test_parallel_calls_submit_and_poll(sdk: OpenAI, assistant: Any, upstream: RunningUpstream) -> None:
    text = 'call: get_weather {"city": "Oslo"}\ncall: get_time {"tz": "CET"}\ncall: get_weather {"city": "Rome"}'
    thread_id, run = _requires_action(sdk, assistant, text)
    calls = pending_calls(run)
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Oslo"}),
        ("get_time", {"tz": "CET"}),
        ("get_weather", {"city": "Rome"}),
    ]
    assert len({c.id for c in calls}) == 3
    outputs = {calls[0].id: "cold", calls[1].id: "noon", calls[2].id: "warm"}
    final = sdk.beta.threads.runs.submit_tool_outputs_and_poll(
        thread_id=thread_id,
        run_id=run.id,
        tool_outputs=[{"tool_call_id": k, "output": v} for k, v in outputs.items()],
        poll_interval_ms=20,
    )
    assert final.status == "completed"
    assert final.required_action is None
    assert [message_value(m) for m in assistant_text(sdk, thread_id, run.id)] == ["Tool results: cold; noon; warm"]
    # The upstream saw the calls and their results in order.
    last = upstream.requests()[-1]["messages"]
    assert [m["role"] for m in last[-4:]] == ["assistant", "tool", "tool", "tool"]
    assert [m["tool_call_id"] for m in last[-3:]] == [c.id for c in calls]
    assert [m["content"] for m in last[-3:]] == ["cold", "noon", "warm"]
    # The tool step records each call's output.
    tool_step = steps_of(sdk, thread_id, run.id)[0]
    assert tool_step.type == "tool_calls" and tool_step.status == "completed"
    recorded = {
        c.id: (c.function.name, c.function.arguments, c.function.output) for c in tool_step.step_details.tool_calls
    }
    assert recorded == {c.id: (c.function.name, c.function.arguments, outputs[c.id]) for c in calls}
    retrieved: Any = sdk.beta.threads.runs.steps.retrieve(tool_step.id, thread_id=thread_id, run_id=run.id)
    assert [c.function.output for c in retrieved.step_details.tool_calls] == ["cold", "noon", "warm"]


def test_partial_or_unknown_tool_outputs_are_rejected(sdk: OpenAI, assistant: Any) -> None:
    thread_id, run = _requires_action(sdk, assistant, 'call: get_weather {"city": "A"}\ncall: get_time {"tz": "B"}')
    calls = pending_calls(run)
    assert len(calls) == 2
    bad_bodies: list[Any] = [
        [{"tool_call_id": calls[0].id, "output": "only one"}],
        [{"tool_call_id": calls[0].id, "output": "x"}, {"tool_call_id": "call_doesnotexist", "output": "y"}],
        [{"tool_call_id": "call_doesnotexist", "output": "y"}],
        [
            {"tool_call_id": calls[0].id, "output": "x"},
            {"tool_call_id": calls[1].id, "output": "y"},
            {"tool_call_id": "call_extra", "output": "z"},
        ],
    ]
    for body in bad_bodies:
        with pytest.raises(openai.BadRequestError) as info:
            sdk.beta.threads.runs.submit_tool_outputs(thread_id=thread_id, run_id=run.id, tool_outputs=body)
        assert info.value.status_code == 400
        still = sdk.beta.threads.runs.retrieve(run.id, thread_id=thread_id)
        assert still.status == "requires_action"
        assert [c.id for c in pending_calls(still)] == [c.id for c in calls]
    steps = sdk.beta.threads.runs.steps.list(run.id, thread_id=thread_id).data
    assert [s.status for s in steps] == ["in_progress"]
    # A complete submission still works afterwards.
    final = sdk.beta.threads.runs.submit_tool_outputs_and_poll(
        thread_id=thread_id,
        run_id=run.id,
        tool_outputs=[{"tool_call_id": c.id, "output": f"o{i}"} for i, c in enumerate(calls)],
        poll_interval_ms=20,
    )
    assert final.status == "completed"
    # ...and only once.
    with pytest.raises(openai.BadRequestError):
        sdk.beta.threads.runs.submit_tool_outputs(
            thread_id=thread_id,
            run_id=run.id,
            tool_outputs=[{"tool_call_id": c.id, "output": "again"} for c in calls],
        )


def test_parallel_tool_calls_false_yields_one_call(sdk: OpenAI, assistant: Any, upstream: RunningUpstream) -> None:
    thread_id, run = _requires_action(
        sdk,
        assistant,
        'call: get_weather {"city": "Lima"}\ncall: get_time {"tz": "PET"}',
        parallel_tool_calls=False,
    )
    calls = pending_calls(run)
    assert [(c.function.name, c.function.arguments) for c in calls] == [("get_weather", '{"city": "Lima"}')]
    assert upstream.requests()[-1]["parallel_tool_calls"] is False
    assert run.parallel_tool_calls is False
    final = sdk.beta.threads.runs.submit_tool_outputs_and_poll(
        thread_id=thread_id,
        run_id=run.id,
        tool_outputs=[{"tool_call_id": calls[0].id, "output": "dry"}],
        poll_interval_ms=20,
    )
    assert final.status == "completed"


def test_tool_choice_none(sdk: OpenAI, assistant: Any, upstream: RunningUpstream) -> None:
    thread_id, run = _requires_action(sdk, assistant, 'call: get_weather {"city": "X"}', tool_choice="none")
    assert run.status == "completed"
    assert upstream.requests()[-1]["tool_choice"] == "none"
    steps = sdk.beta.threads.runs.steps.list(run.id, thread_id=thread_id).data
    assert [s.type for s in steps] == ["message_creation"]


def test_tool_choice_required(sdk: OpenAI, assistant: Any, upstream: RunningUpstream) -> None:
    _, run = _requires_action(sdk, assistant, "what is the weather", tool_choice="required")
    calls = pending_calls(run)
    assert [(c.function.name, c.function.arguments) for c in calls] == [("get_weather", "{}")]
    assert upstream.requests()[-1]["tool_choice"] == "required"
    assert run.tool_choice == "required"


def test_tool_choice_named_function(sdk: OpenAI, assistant: Any, upstream: RunningUpstream) -> None:
    choice = {"type": "function", "function": {"name": "get_time"}}
    _, run = _requires_action(sdk, assistant, "what time is it", tool_choice=choice)
    calls = pending_calls(run)
    assert [(c.function.name, c.function.arguments) for c in calls] == [("get_time", "{}")]
    assert upstream.requests()[-1]["tool_choice"] == choice


def test_tool_choice_naming_an_absent_function_is_rejected(sdk: OpenAI, assistant: Any) -> None:
    thread_id = thread_with(sdk, "hello")
    with pytest.raises(openai.BadRequestError):
        sdk.beta.threads.runs.create(
            thread_id=thread_id,
            assistant_id=assistant.id,
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )
    assert sdk.beta.threads.runs.list(thread_id).data == []


def test_tools_override(sdk: OpenAI, assistant: Any, upstream: RunningUpstream) -> None:
    tools: list[Any] = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look something up",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
    ]
    _, run = _requires_action(sdk, assistant, 'call: lookup {"q": "threadlog"}', tools=tools)
    calls = pending_calls(run)
    assert [(c.function.name, c.function.arguments) for c in calls] == [("lookup", '{"q": "threadlog"}')]
    sent = upstream.requests()[-1]["tools"]
    assert [t["function"]["name"] for t in sent] == ["lookup"]
    assert sent[0]["function"]["parameters"] == tools[0]["function"]["parameters"]
    assert [t.function.name for t in run.tools if t.type == "function"] == ["lookup"]


def test_text_then_call_in_one_turn(sdk: OpenAI, assistant: Any) -> None:
    thread_id = thread_with(sdk, 'say: Let me check.\ncall: get_weather {"city": "Kyiv"}')
    recorder = Recorder()
    with sdk.beta.threads.runs.stream(thread_id=thread_id, assistant_id=assistant.id, event_handler=recorder) as s:
        s.until_done()
        run = s.get_final_run()
    calls = pending_calls(run)
    assert [(c.function.name, c.function.arguments) for c in calls] == [("get_weather", '{"city": "Kyiv"}')]
    names = recorder.names
    # The message is completed before the tool step starts: nothing interleaves.
    assert names.index("thread.message.completed") < names.index("thread.run.step.delta")
    resumed = Recorder()
    with sdk.beta.threads.runs.submit_tool_outputs_stream(
        thread_id=thread_id,
        run_id=run.id,
        tool_outputs=[{"tool_call_id": calls[0].id, "output": "snow"}],
        event_handler=resumed,
    ) as s:
        s.until_done()
        final = s.get_final_run()
    assert final.status == "completed"
    assert [message_value(m) for m in assistant_text(sdk, thread_id, run.id)] == [
        "Let me check.",
        "Tool results: snow",
    ]
    steps = sdk.beta.threads.runs.steps.list(run.id, thread_id=thread_id, order="asc").data
    assert [(s.type, s.status) for s in steps] == [
        ("message_creation", "completed"),
        ("tool_calls", "completed"),
        ("message_creation", "completed"),
    ]


def test_cancel_while_arguments_stream(sdk: OpenAI, assistant: Any, upstream: RunningUpstream) -> None:
    city = "x" * 200  # 50+ argument fragments at 20 ms each
    thread_id = thread_with(sdk, f'call: get_weather {{"city": "{city}"}}\nslow: 20')
    stream = sdk.beta.threads.runs.create(thread_id=thread_id, assistant_id=assistant.id, stream=True)
    run_id = None
    deltas = 0
    for event in stream:
        if event.event == "thread.run.created":
            run_id = event.data.id
        if event.event == "thread.run.step.delta":
            deltas += 1
            if deltas == 3:
                assert run_id is not None
                assert sdk.beta.threads.runs.cancel(run_id, thread_id=thread_id).status == "cancelling"
    assert run_id is not None
    final = wait_run(sdk, thread_id, run_id)
    assert final.status == "cancelled"
    assert final.required_action is None
    steps = sdk.beta.threads.runs.steps.list(run_id, thread_id=thread_id).data
    assert [(s.type, s.status) for s in steps] == [("tool_calls", "cancelled")]
