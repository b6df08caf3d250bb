"""Debugging from the log (Threadlog's own routes): fork a thread, re-run a run, diff two runs.

- `POST /v1/threads/{thread_id}/fork` with `at_sequence`, `before_run` or `after_message`.
- `POST /v1/threads/{thread_id}/runs/{run_id}/rerun`: a fork just before the run and a run
  there with the original's settings and the overrides; `model_source: "recorded"` plays the
  model's turns back from the original's log instead of calling it.
- `GET /v1/threads/{thread_id}/runs/{run_id}/diff?other_thread=…&other_run=…`.
- `GET /v1/threads/{thread_id}/export` (JSON lines; `?files=false` leaves file bytes out) and
  `POST /v1/threads/import` (that text as the body): a thread carried to another server.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from events.records import NewEvent
from server.errors import bad_request, not_found
from server.exports import export_thread, import_thread
from server.forks import cutoff_for, fork_thread
from server.http import parse_body
from server.ids import new_id
from server.models.common import Metadata, ResponseFormat, Tool, dump, tool_json
from server.models.common import Request as Body
from server.models.runs import ToolChoice
from server.routes.runs import _manager, _respond, _run_created
from server.run_diff import diff_runs
from server.runs.objects import now, queued_run_state
from server.runs.recorded import load_recording
from server.services import services
from server.threads import require_thread
from server.tool_resources import check_tools

__all__ = ["routes"]


class ForkBody(Body):
    at_sequence: int | None = None
    before_run: str | None = None
    after_message: str | None = None
    metadata: Metadata = None


class RerunBody(Body):
    model: str | None = None
    instructions: str | None = Field(None, max_length=256_000)
    tools: list[Tool] | None = Field(None, max_length=20)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    response_format: ResponseFormat | None = None
    tool_choice: ToolChoice | None = None
    model_source: Literal["live", "recorded"] = "live"
    stream: bool | None = None
    metadata: Metadata = None


async def fork(request: Request) -> JSONResponse:
    svc = services(request)
    thread_id = request.path_params["thread_id"]
    await require_thread(svc, thread_id)
    body = await parse_body(request, ForkBody)
    named = {k: v for k, v in body.model_dump(include={"before_run", "after_message"}).items() if v is not None}
    cutoff = await cutoff_for(svc, thread_id, at_sequence=body.at_sequence, **named)
    forked = await fork_thread(svc, thread_id, cutoff, body.metadata, **named)
    await svc.store.append(forked.thread_id, forked.events, expected_version=0)
    return JSONResponse(await require_thread(svc, forked.thread_id))


async def rerun(request: Request) -> Response:
    svc = services(request)
    svc.refuse_new_runs_when_draining()
    thread_id, run_id = request.path_params["thread_id"], request.path_params["run_id"]
    await require_thread(svc, thread_id)
    original = await svc.views.get("run", run_id)
    if original is None or original["thread_id"] != thread_id:
        raise not_found("run", run_id)
    body = await parse_body(request, RerunBody)
    recording = None
    if body.model_source == "recorded":
        recording = await load_recording(svc.store, svc.views, original)
        if recording is None:
            raise bad_request(
                f"Run {run_id} has no recorded model turns (it ran before Threadlog recorded them); re-run it live.",
                "model_source",
            )
    settings = _settings(original, body)
    if body.model_source == "live":
        svc.require_served_model(settings["model"])
    if body.tools is not None:
        await check_tools(svc, body.tools, param="tools")
    cutoff = await cutoff_for(svc, thread_id, before_run=run_id)
    forked = await fork_thread(svc, thread_id, cutoff, before_run=run_id)
    run = {
        **settings,
        "id": new_id("run_"),
        "thread_id": forked.thread_id,
        **queued_run_state(now(), svc.settings.run_expiry_s),
    }
    rerun_of = {
        "id": run["id"],
        "source_thread_id": thread_id,
        "source_run_id": run_id,
        "model_source": body.model_source,
        "overrides": sorted(body.model_fields_set - {"model_source", "stream", "metadata"}),
    }
    events = [*forked.events, NewEvent("threadlog.run.rerun", rerun_of, run_id=run["id"]), *_run_created(run)]
    opening = svc.store.enqueue(forked.thread_id, events, expected_version=0)
    _manager(svc).start(copy.deepcopy(run), opening=opening, messages=forked.messages, model_calls=recording)
    stored = await opening
    return _respond(svc, run, stored, body.stream)


def _settings(original: dict[str, Any], body: RerunBody) -> dict[str, Any]:
    """The original run's settings with the overrides the request gives."""
    settings = {k: v for k, v in original.items() if k not in ("id", "thread_id", "created_at")}
    for name in ("model", "instructions", "temperature", "top_p"):
        if getattr(body, name) is not None:
            settings[name] = getattr(body, name)
    if body.tools is not None:
        settings["tools"] = [tool_json(t) for t in body.tools]
    if body.response_format is not None:
        settings["response_format"] = dump(body.response_format)
    if body.tool_choice is not None:
        settings["tool_choice"] = dump(body.tool_choice)
    if body.metadata is not None:
        settings["metadata"] = body.metadata
    return copy.deepcopy(settings)


async def diff(request: Request) -> JSONResponse:
    svc = services(request)
    thread_id, run_id = request.path_params["thread_id"], request.path_params["run_id"]
    await require_thread(svc, thread_id)
    other_thread = request.query_params.get("other_thread") or thread_id
    other_run = request.query_params.get("other_run")
    if not other_run:
        raise bad_request("Missing required parameter: 'other_run'.", "other_run")
    return JSONResponse(await diff_runs(svc, (thread_id, run_id), (other_thread, other_run)))


async def export(request: Request) -> Response:
    svc = services(request)
    files = request.query_params.get("files", "true").lower() != "false"
    text = await export_thread(svc, request.path_params["thread_id"], include_files=files)
    return Response(text, media_type="application/x-ndjson")


async def import_(request: Request) -> JSONResponse:
    svc = services(request)
    try:
        text = (await request.body()).decode()
    except UnicodeDecodeError as exc:
        raise bad_request("The export must be UTF-8 JSON lines.") from exc
    imported = await import_thread(svc, text)
    thread = await require_thread(svc, imported["thread_id"])
    return JSONResponse({**thread, "threadlog_import": {"ids": imported["ids"]}})


routes = [
    Route("/v1/threads/import", import_, methods=["POST"]),
    Route("/v1/threads/{thread_id}/export", export, methods=["GET"]),
    Route("/v1/threads/{thread_id}/fork", fork, methods=["POST"]),
    Route("/v1/threads/{thread_id}/runs/{run_id}/rerun", rerun, methods=["POST"]),
    Route("/v1/threads/{thread_id}/runs/{run_id}/diff", diff, methods=["GET"]),
]
