"""Runs and run steps: create (streamed or not), create-thread-and-run, retrieve, list, modify,
cancel, submit tool outputs; plus our SSE resume/replay endpoint for a run's events."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from events.records import NewEvent, StoredEvent
from server.errors import APIError, bad_request, not_found
from server.http import list_params, parse_body, sequence_param
from server.ids import new_id
from server.models.common import dump, tool_json
from server.models.runs import CreateRun, CreateThreadAndRun, ModifyRun, RunOptions, SubmitToolOutputs
from server.models.threads import CreateThread
from server.routes.threads import create_thread_events
from server.runs.manager import CannotCancel, RunManager
from server.runs.objects import now, queued_run_state
from server.runs.recorded import resumed_recording
from server.services import Services, services, shutting_down
from server.sse import OPENAI_STREAM_EVENTS, run_stream_response
from server.threads import active_run, append_decided, check_attachments, message_object, require_thread
from server.tool_resources import check_tools

__all__ = ["routes"]

FILE_SEARCH_CONTENT = "step_details.tool_calls[*].file_search.results[*].content"


def _manager(svc: Services) -> RunManager:
    assert svc.runs is not None
    return svc.runs


async def _new_run(
    svc: Services, thread_id: str, body: RunOptions, additional_instructions: str | None
) -> dict[str, Any]:
    """The run object for a create request, after checking what it refers to."""
    assistant = await svc.views.get("assistant", body.assistant_id)
    if assistant is None:
        raise APIError(404, f"No assistant found with id '{body.assistant_id}'.", param="assistant_id")
    model = body.model or assistant["model"]
    svc.require_served_model(model)
    if body.tools is not None:
        await check_tools(svc, body.tools, param="tools")
        tools = [tool_json(t) for t in body.tools]
    else:
        tools = assistant["tools"]
        if any(t["type"] == "code_interpreter" for t in tools) and svc.extras.get("sandbox_unavailable"):
            raise bad_request(
                f"The code_interpreter tool is not available on this server: {svc.extras['sandbox_unavailable']}",
                "assistant_id",
            )
    choice = dump(body.tool_choice) if body.tool_choice is not None else "auto"
    if isinstance(choice, dict):
        wanted = choice["function"]["name"] if choice["type"] == "function" and choice.get("function") else None
        if choice["type"] == "function" and not any(
            t["type"] == "function" and t["function"]["name"] == wanted for t in tools
        ):
            raise bad_request(
                f"tool_choice names function '{wanted}', which is not among the run's tools.", "tool_choice"
            )
        if choice["type"] != "function" and not any(t["type"] == choice["type"] for t in tools):
            raise bad_request(f"tool_choice names {choice['type']}, which is not among the run's tools.", "tool_choice")
    instructions = body.instructions if body.instructions is not None else assistant.get("instructions")
    if additional_instructions:
        instructions = f"{instructions}\n\n{additional_instructions}" if instructions else additional_instructions
    created = now()
    truncation = dump(body.truncation_strategy) if body.truncation_strategy else {"type": "auto"}
    truncation.setdefault("last_messages", None)
    return {
        "id": new_id("run_"),
        "object": "thread.run",
        "thread_id": thread_id,
        "assistant_id": assistant["id"],
        **queued_run_state(created, svc.settings.run_expiry_s),
        "model": model,
        "instructions": instructions or "",
        "tools": tools,
        "metadata": body.metadata or {},
        "temperature": body.temperature if body.temperature is not None else assistant.get("temperature", 1.0),
        "top_p": body.top_p if body.top_p is not None else assistant.get("top_p", 1.0),
        "max_prompt_tokens": body.max_prompt_tokens,
        "max_completion_tokens": body.max_completion_tokens,
        "truncation_strategy": truncation,
        "tool_choice": choice,
        "parallel_tool_calls": body.parallel_tool_calls if body.parallel_tool_calls is not None else True,
        "response_format": dump(body.response_format)
        if body.response_format is not None
        else assistant.get("response_format", "auto"),
        "reasoning_effort": body.reasoning_effort,
    }


def _run_created(run: dict[str, Any]) -> list[NewEvent]:
    return [
        NewEvent("thread.run.created", copy.deepcopy(run), run_id=run["id"]),
        NewEvent("thread.run.queued", copy.deepcopy(run), run_id=run["id"]),
    ]


def _respond(svc: Services, run: dict[str, Any], stored: list[StoredEvent], stream: bool | None) -> Response:
    if not stream:
        return JSONResponse(run)
    # The events just committed go out at once, without reading them back from the log.
    own = [e for e in stored if e.run_id == run["id"] and e.type in OPENAI_STREAM_EVENTS]
    return run_stream_response(svc.store, run["id"], after=own[-1].sequence, prefix=own)


async def create_run(request: Request) -> Response:
    svc = services(request)
    svc.refuse_new_runs_when_draining()
    thread_id = request.path_params["thread_id"]
    body = await parse_body(request, CreateRun)
    await require_thread(svc, thread_id)
    await check_attachments(svc, body.additional_messages or [], "additional_messages")
    run = await _new_run(svc, thread_id, body, body.additional_instructions)
    extra = [NewEvent("thread.message.created", message_object(thread_id, m)) for m in body.additional_messages or []]

    async def decide(version: int) -> list[NewEvent]:
        await require_thread(svc, thread_id)
        active = await active_run(svc, thread_id)
        if active is not None:
            raise bad_request(f"Thread {thread_id} already has an active run {active['id']}.")
        return extra + _run_created(run)

    def start(opening: asyncio.Future[list[StoredEvent]]) -> None:
        # The engine gets its own copy: it moves the run on while this response shows it queued.
        _manager(svc).start(copy.deepcopy(run), opening=opening, messages=[e.data for e in extra])

    stored = await append_decided(svc, thread_id, decide, on_enqueued=start)
    return _respond(svc, run, stored, body.stream)


async def create_thread_and_run(request: Request) -> Response:
    svc = services(request)
    svc.refuse_new_runs_when_draining()
    body = await parse_body(request, CreateThreadAndRun)
    thread_body = body.thread or CreateThread()
    if body.tool_resources is not None and thread_body.tool_resources is None:
        thread_body = thread_body.model_copy(update={"tool_resources": body.tool_resources})
    thread_id, events, setup = await create_thread_events(svc, thread_body)
    run = await _new_run(svc, thread_id, body, None)
    thread_created = events[0]
    # thread.created is part of this run's stream (it is the stream's first event).
    events[0] = NewEvent(thread_created.type, thread_created.data, run_id=run["id"])
    await setup()
    opening = svc.store.enqueue(thread_id, events + _run_created(run), expected_version=0)
    messages = [e.data for e in events if e.type == "thread.message.created"]
    _manager(svc).start(copy.deepcopy(run), opening=opening, messages=messages)
    stored = await opening
    return _respond(svc, run, stored, body.stream)


async def _run_or_404(svc: Services, thread_id: str, run_id: str) -> dict[str, Any]:
    await require_thread(svc, thread_id)
    run = await svc.views.get("run", run_id)
    if run is None or run["thread_id"] != thread_id:
        raise not_found("run", run_id)
    return run


async def retrieve_run(request: Request) -> JSONResponse:
    svc = services(request)
    p = request.path_params
    return JSONResponse(await _run_or_404(svc, p["thread_id"], p["run_id"]), headers={"openai-poll-after-ms": "200"})


async def list_runs(request: Request) -> JSONResponse:
    svc = services(request)
    thread_id = request.path_params["thread_id"]
    await require_thread(svc, thread_id)
    params = list_params(request)
    page = await svc.views.list(
        "run", parent_id=thread_id, limit=params.limit, order=params.order, after=params.after, before=params.before
    )
    return JSONResponse(page.envelope())


async def modify_run(request: Request) -> JSONResponse:
    svc = services(request)
    p = request.path_params
    await _run_or_404(svc, p["thread_id"], p["run_id"])
    body = await parse_body(request, ModifyRun)
    if "metadata" in body.model_fields_set:
        await _manager(svc).update_metadata(p["thread_id"], p["run_id"], body.metadata or {})
    return JSONResponse(await _run_or_404(svc, p["thread_id"], p["run_id"]))


async def cancel_run(request: Request) -> JSONResponse:
    svc = services(request)
    p = request.path_params
    await _run_or_404(svc, p["thread_id"], p["run_id"])
    try:
        run = await _manager(svc).cancel(p["run_id"])
    except CannotCancel as exc:
        raise bad_request(str(exc)) from exc
    return JSONResponse(run)


async def submit_tool_outputs(request: Request) -> Response:
    svc = services(request)
    p = request.path_params
    thread_id, run_id = p["thread_id"], p["run_id"]
    await _run_or_404(svc, thread_id, run_id)
    body = await parse_body(request, SubmitToolOutputs)
    resumed: dict[str, Any] = {}

    async def decide(version: int) -> list[NewEvent]:
        if _manager(svc).closed:
            # Past the grace period: the run stays in requires_action and takes its outputs
            # after the restart (or on another instance).
            raise shutting_down()
        run = await _run_or_404(svc, thread_id, run_id)
        if run["status"] != "requires_action" or _manager(svc).is_running(run_id):
            raise bad_request(f"Runs in status {run['status']} do not accept tool outputs.")
        pending = [c["id"] for c in run["required_action"]["submit_tool_outputs"]["tool_calls"]]
        given = [o.tool_call_id for o in body.tool_outputs]
        unknown = [c for c in given if c not in pending]
        if unknown:
            raise bad_request(f"No tool call found with id '{unknown[0]}' awaiting output in this run.", "tool_outputs")
        if len(set(given)) != len(given):
            raise bad_request("Each tool_call_id may be given only once.", "tool_outputs")
        missing = [c for c in pending if c not in given]
        if missing:
            raise bad_request(
                f"Expected tool outputs for call ids {pending}, got values for {given}; missing {missing}.",
                "tool_outputs",
            )
        outputs = {o.tool_call_id: o.output for o in body.tool_outputs}
        steps = await svc.views.list("step", parent_id=run_id, limit=100, order="desc")
        step = next(s for s in steps.data if s["type"] == "tool_calls" and s["status"] == "in_progress")
        step = copy.deepcopy(step)
        for call in step["step_details"]["tool_calls"]:
            if call["type"] == "function" and call["id"] in outputs:
                call["function"]["output"] = outputs[call["id"]]
        step.update(status="completed", completed_at=now())
        turn = await svc.views.get("step_usage", step["id"])
        step["usage"] = (turn or {}).get("usage") or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        queued = {**run, "status": "queued", "required_action": None}
        resumed.clear()
        resumed.update(queued)
        return [
            NewEvent("thread.run.step.completed", step, run_id=run_id),
            NewEvent("thread.run.queued", queued, run_id=run_id),
        ]

    stored = await append_decided(svc, thread_id, decide)
    recording = await resumed_recording(svc.store, svc.views, resumed)
    _manager(svc).start(copy.deepcopy(resumed), model_calls=recording)
    if not body.stream:
        return JSONResponse(resumed)
    return run_stream_response(svc.store, run_id, after=stored[-1].sequence, prefix=stored)


async def list_steps(request: Request) -> JSONResponse:
    svc = services(request)
    p = request.path_params
    await _run_or_404(svc, p["thread_id"], p["run_id"])
    params = list_params(request)
    page = await svc.views.list(
        "step", parent_id=p["run_id"], limit=params.limit, order=params.order, after=params.after, before=params.before
    )
    include = await _includes(svc, request, p["run_id"])
    return JSONResponse({**page.envelope(), "data": [_with_includes(s, include) for s in page.data]})


async def retrieve_step(request: Request) -> JSONResponse:
    svc = services(request)
    p = request.path_params
    await _run_or_404(svc, p["thread_id"], p["run_id"])
    step = await svc.views.get("step", p["step_id"])
    if step is None or step["run_id"] != p["run_id"]:
        raise not_found("run step", p["step_id"])
    return JSONResponse(_with_includes(step, await _includes(svc, request, p["run_id"])))


async def _includes(svc: Services, request: Request, run_id: str) -> dict[str, dict[str, Any]] | None:
    """file_search result contents, when `include[]` asks for them."""
    wanted = request.query_params.getlist("include[]") + request.query_params.getlist("include")
    for value in wanted:
        if value != FILE_SEARCH_CONTENT:
            raise bad_request(f"Invalid value for 'include[]': '{value}'.", "include")
    if not wanted:
        return None
    page = await svc.views.list("tool_output", parent_id=run_id, limit=100_000, order="asc")
    return {doc["id"]: doc for doc in page.data}


def _with_includes(step: dict[str, Any], include: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    if include is None or step["step_details"]["type"] != "tool_calls":
        return step
    step = copy.deepcopy(step)
    for call in step["step_details"]["tool_calls"]:
        recorded = include.get(call["id"])
        if call["type"] == "file_search" and recorded and recorded.get("results") is not None:
            call["file_search"]["results"] = recorded["results"]
    return step


async def stream_run_events(request: Request) -> Response:
    """Our extension: a run's events as SSE from the start or after `Last-Event-ID`, then live."""
    svc = services(request)
    p = request.path_params
    await _run_or_404(svc, p["thread_id"], p["run_id"])
    header = request.headers.get("last-event-id")
    if header is not None:
        after = sequence_param(header.strip(), "Last-Event-ID")
    else:
        after = sequence_param(request.query_params.get("after"), "after")
    stop = request.query_params.get("until") == "requires_action"
    redact = await _deleted_messages(svc, p["run_id"])
    return run_stream_response(svc.store, p["run_id"], after=after, stop_at_requires_action=stop, redact=redact)


async def _deleted_messages(svc: Services, run_id: str) -> frozenset[str]:
    """Ids of the run's messages deleted since: a replay must not serve their text again."""
    events = await svc.store.read(run_id=run_id, limit=100_000_000)
    ids = dict.fromkeys(str(e.data["id"]) for e in events if e.type == "thread.message.created")
    return frozenset([i for i in ids if not await svc.views.exists("message", i)])


routes = [
    Route("/v1/threads/runs", create_thread_and_run, methods=["POST"]),
    Route("/v1/threads/{thread_id}/runs", create_run, methods=["POST"]),
    Route("/v1/threads/{thread_id}/runs", list_runs, methods=["GET"]),
    Route("/v1/threads/{thread_id}/runs/{run_id}", retrieve_run, methods=["GET"]),
    Route("/v1/threads/{thread_id}/runs/{run_id}", modify_run, methods=["POST"]),
    Route("/v1/threads/{thread_id}/runs/{run_id}/cancel", cancel_run, methods=["POST"]),
    Route("/v1/threads/{thread_id}/runs/{run_id}/submit_tool_outputs", submit_tool_outputs, methods=["POST"]),
    Route("/v1/threads/{thread_id}/runs/{run_id}/steps", list_steps, methods=["GET"]),
    Route("/v1/threads/{thread_id}/runs/{run_id}/steps/{step_id}", retrieve_step, methods=["GET"]),
    Route("/v1/threads/{thread_id}/runs/{run_id}/events", stream_run_events, methods=["GET"]),
]
