"""Fork, re-run (live and recorded) and diff, through the openai SDK (raw `client.post` for the new
routes) against a real server whose model is the fake upstream, which counts what it is asked."""

from __future__ import annotations

import shutil
from typing import Any

import pytest
from openai import OpenAI

from server.fake_upstream import RunningUpstream
from tests.runs_fixtures import MODEL, http_client, message_value, pending_calls, read_sse, wait_run
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _post(sdk: OpenAI, path: str, body: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = sdk.post(path, body=body, cast_to=object)  # type: ignore[arg-type]
    return result


def _get(sdk: OpenAI, path: str, **query: str) -> dict[str, Any]:
    result: dict[str, Any] = sdk.get(path, cast_to=object, options={"params": query})  # type: ignore[arg-type]
    return result


def _messages(sdk: OpenAI, thread_id: str) -> list[tuple[str, str]]:
    return [(m.role, message_value(m)) for m in sdk.beta.threads.messages.list(thread_id, order="asc", limit=100)]


def _events(sdk: OpenAI, thread_id: str) -> list[dict[str, Any]]:
    return _get(sdk, f"/threads/{thread_id}/events", limit="1000")["data"]


def _tool_calls(sdk: OpenAI, thread_id: str, run_id: str) -> list[tuple[str, str, str]]:
    out = []
    for step in sdk.beta.threads.runs.steps.list(run_id, thread_id=thread_id, order="asc"):
        if step.type == "tool_calls":
            for call in step.step_details.tool_calls:  # type: ignore[union-attr]
                if call.type == "function":
                    out.append((call.type, call.function.name, call.function.arguments))
                elif call.type == "code_interpreter":
                    logs = "".join(o.logs for o in call.code_interpreter.outputs if o.type == "logs")
                    out.append((call.type, call.code_interpreter.input, logs))
    return out


def test_fork_at_a_message_and_at_a_sequence(sdk: OpenAI, assistant: Any) -> None:
    thread = sdk.beta.threads.create(
        messages=[{"role": "user", "content": "first"}, {"role": "user", "content": "second"}],
        metadata={"case": "fork"},
    )
    run = sdk.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, additional_messages=[{"role": "user", "content": "say: reply"}]
    )
    assert run.status == "completed"
    sdk.beta.threads.messages.create(thread.id, role="user", content="after the run")
    original = _messages(sdk, thread.id)
    assert original == [("user", "first"), ("user", "second"), ("user", "say: reply"), ("assistant", "reply"),
                        ("user", "after the run")]  # fmt: skip
    second = sdk.beta.threads.messages.list(thread.id, order="asc").data[1]
    at_message = _post(sdk, f"/threads/{thread.id}/fork", {"after_message": second.id})
    assert at_message["object"] == "thread" and at_message["id"] != thread.id
    assert at_message["metadata"] == {"case": "fork"}
    assert _messages(sdk, at_message["id"]) == original[:2]
    created = next(e for e in _events(sdk, thread.id) if e["type"] == "thread.run.created")
    at_sequence = _post(sdk, f"/threads/{thread.id}/fork", {"at_sequence": created["sequence"], "metadata": {"k": "v"}})
    assert _messages(sdk, at_sequence["id"]) == original[:3] and at_sequence["metadata"] == {"k": "v"}
    forked = [e for e in _events(sdk, at_sequence["id"]) if e["type"] == "threadlog.thread.forked"]
    assert [(e["data"]["source_thread_id"], e["data"]["at_sequence"]) for e in forked] == [
        (thread.id, created["sequence"])
    ]
    assert _messages(sdk, thread.id) == original  # the original is untouched
    fork_run = sdk.beta.threads.runs.create_and_poll(thread_id=at_message["id"], assistant_id=assistant.id)
    assert fork_run.status == "completed" and fork_run.thread_id == at_message["id"]


def test_rerun_live_with_another_model(sdk: OpenAI, assistant: Any, upstream: RunningUpstream) -> None:
    thread = sdk.beta.threads.create(messages=[{"role": "user", "content": "say: same words"}])
    run = sdk.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    before = len(upstream.requests())
    rerun = _post(sdk, f"/threads/{thread.id}/runs/{run.id}/rerun", {"model": "fake-model-2"})
    assert rerun["model"] == "fake-model-2" and rerun["thread_id"] != thread.id
    assert rerun["instructions"] == run.instructions and [t["type"] for t in rerun["tools"]] == [
        t.type for t in run.tools
    ]
    done = wait_run(sdk, rerun["thread_id"], rerun["id"])
    assert done.status == "completed"
    asked = upstream.requests()[before:]
    assert [r["model"] for r in asked] == ["fake-model-2"]
    assert _messages(sdk, rerun["thread_id"])[-1] == ("assistant", "same words")


def test_recorded_rerun_of_a_streamed_run_calls_no_model(
    sdk: OpenAI, assistant: Any, upstream: RunningUpstream, run_server: ServerProcess
) -> None:
    thread = sdk.beta.threads.create(messages=[{"role": "user", "content": 'call: get_weather {"city": "Oslo"}'}])
    with sdk.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant.id) as stream:
        stream.until_done()
    paused = sdk.beta.threads.runs.list(thread.id).data[0]
    assert paused.status == "requires_action"
    [call] = pending_calls(paused)
    with sdk.beta.threads.runs.submit_tool_outputs_stream(
        thread_id=thread.id, run_id=paused.id, tool_outputs=[{"tool_call_id": call.id, "output": "sunny, 21 C"}]
    ) as stream:
        stream.until_done()
    original = wait_run(sdk, thread.id, paused.id)
    assert original.status == "completed"
    before = len(upstream.requests())
    with (
        http_client(run_server) as http,
        http.stream(
            "POST", f"/threads/{thread.id}/runs/{original.id}/rerun", json={"model_source": "recorded", "stream": True}
        ) as response,
    ):
        assert response.status_code == 200
        events = read_sse(response)
    names = [e.event for e in events]
    assert names[0] == "thread.run.created" and names[-2:] == ["thread.run.requires_action", "done"], names
    created = events[0].json()
    fork_id, rerun_id = created["thread_id"], created["id"]
    assert fork_id != thread.id
    replayed = sdk.beta.threads.runs.retrieve(rerun_id, thread_id=fork_id)
    [again] = pending_calls(replayed)
    assert (again.function.name, again.function.arguments) == (call.function.name, call.function.arguments)
    sdk.beta.threads.runs.submit_tool_outputs_and_poll(
        thread_id=fork_id, run_id=rerun_id, tool_outputs=[{"tool_call_id": again.id, "output": "sunny, 21 C"}]
    )
    finished = wait_run(sdk, fork_id, rerun_id)
    assert finished.status == "completed"
    assert len(upstream.requests()) == before  # the model was not called
    assert _messages(sdk, fork_id) == _messages(sdk, thread.id)
    assert _tool_calls(sdk, fork_id, rerun_id) == _tool_calls(sdk, thread.id, original.id)
    assert finished.usage is not None and original.usage is not None
    assert finished.usage.total_tokens == original.usage.total_tokens
    record = [e["data"] for e in _events(sdk, fork_id) if e["type"] == "threadlog.run.rerun"]
    assert record == [{"id": rerun_id, "source_thread_id": thread.id, "source_run_id": original.id,
                       "model_source": "recorded", "overrides": []}]  # fmt: skip


def test_diff_shows_exactly_the_changed_parts(sdk: OpenAI, assistant: Any, upstream: RunningUpstream) -> None:
    thread = sdk.beta.threads.create(messages=[{"role": "user", "content": "say: compare me"}])
    run = sdk.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    rerun = _post(
        sdk,
        f"/threads/{thread.id}/runs/{run.id}/rerun",
        {"model_source": "recorded", "instructions": "Answer in one word."},
    )
    assert wait_run(sdk, rerun["thread_id"], rerun["id"]).status == "completed"
    diff = _get(sdk, f"/threads/{thread.id}/runs/{run.id}/diff", other_thread=rerun["thread_id"], other_run=rerun["id"])
    assert diff["object"] == "threadlog.run.diff" and diff["same"] is False
    assert diff["differences"] == [
        {"path": "run.instructions", "this": run.instructions, "other": "Answer in one word."}
    ]
    same = _get(sdk, f"/threads/{thread.id}/runs/{run.id}/diff", other_run=run.id)
    assert same["same"] is True and same["differences"] == []
    live = _post(sdk, f"/threads/{thread.id}/runs/{run.id}/rerun", {"instructions": "x" * 400})
    assert wait_run(sdk, live["thread_id"], live["id"]).status == "completed"
    changed = _get(
        sdk, f"/threads/{thread.id}/runs/{run.id}/diff", other_thread=live["thread_id"], other_run=live["id"]
    )
    paths = {d["path"] for d in changed["differences"]}
    assert paths == {"run.instructions", "run.usage.prompt_tokens", "run.usage.total_tokens",
                     "steps[0].usage.prompt_tokens", "steps[0].usage.total_tokens"}  # fmt: skip


def test_recorded_rerun_that_diverges_fails_saying_where(sdk: OpenAI, assistant: Any) -> None:
    thread = sdk.beta.threads.create(messages=[{"role": "user", "content": 'call: get_time {"tz": "UTC"}'}])
    run = sdk.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "requires_action"
    weather_only = [t.model_dump() for t in assistant.tools if t.function.name == "get_weather"]
    rerun = _post(sdk, f"/threads/{thread.id}/runs/{run.id}/rerun", {"model_source": "recorded", "tools": weather_only})
    failed = wait_run(sdk, rerun["thread_id"], rerun["id"])
    assert failed.status == "failed" and failed.last_error is not None
    assert "diverged at model turn 1" in failed.last_error.message and "get_time" in failed.last_error.message


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")
def test_recorded_rerun_runs_code_interpreter_again(sdk: OpenAI, upstream: RunningUpstream) -> None:
    coder = sdk.beta.assistants.create(model=MODEL, tools=[{"type": "code_interpreter"}])
    code = "import os; print(6*7, os.getpid() > 0)"
    thread = sdk.beta.threads.create(messages=[{"role": "user", "content": f"code: {code}"}])
    run = sdk.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=coder.id, timeout=60)
    assert run.status == "completed"
    before = len(upstream.requests())
    rerun = _post(sdk, f"/threads/{thread.id}/runs/{run.id}/rerun", {"model_source": "recorded"})
    done = wait_run(sdk, rerun["thread_id"], rerun["id"], timeout=60)
    assert done.status == "completed"
    assert len(upstream.requests()) == before
    [(kind, ran, logs)] = _tool_calls(sdk, rerun["thread_id"], rerun["id"])
    assert (kind, ran, logs.strip()) == ("code_interpreter", code, "42 True")
    outputs = [e for e in _events(sdk, rerun["thread_id"]) if e["type"] == "threadlog.tool_call.output"]
    assert outputs, "the code ran again in the re-run (its output is the re-run's own record)"


def test_rerun_refuses_a_run_of_another_thread(sdk: OpenAI, assistant: Any, run_server: ServerProcess) -> None:
    one = sdk.beta.threads.create(messages=[{"role": "user", "content": "say: a"}])
    two = sdk.beta.threads.create()
    run = sdk.beta.threads.runs.create_and_poll(thread_id=one.id, assistant_id=assistant.id)
    with http_client(run_server) as http:
        response = http.post(f"/threads/{two.id}/runs/{run.id}/rerun", json={})
        bad = http.post(f"/threads/{one.id}/fork", json={})
    assert response.status_code == 404 and response.json()["error"]["message"].endswith(f"'{run.id}'.")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "at_sequence"
