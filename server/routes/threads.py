"""`/v1/threads`: create (with initial messages), retrieve, modify, delete; and the event log."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from events.records import NewEvent, StoredEvent
from server.errors import bad_request
from server.http import parse_body, sequence_param
from server.ids import new_id
from server.models.threads import CreateThread, ModifyThread
from server.services import Services, services
from server.sse import without_content
from server.threads import (
    active_run,
    append_decided,
    attach_search_files,
    check_attachments,
    message_object,
    require_thread,
)
from server.tool_resources import resolve_tool_resources

__all__ = ["create_thread_events", "routes"]


async def create_thread_events(svc: Services, body: CreateThread) -> tuple[str, list[NewEvent], Any]:
    """The events that create a thread and its initial messages (one atomic append)."""
    await check_attachments(svc, body.messages or [], "messages")
    thread_id = new_id("thread_")
    resources, setup = await resolve_tool_resources(svc, body.tool_resources, owner_id=thread_id)
    now = int(time.time())
    thread = {
        "id": thread_id,
        "object": "thread",
        "created_at": now,
        "metadata": body.metadata or {},
        "tool_resources": resources or {},
    }
    events = [NewEvent("thread.created", thread)]
    events += [
        NewEvent("thread.message.created", message_object(thread_id, m, created_at=now)) for m in body.messages or []
    ]
    return thread_id, events, setup


async def create_thread(request: Request) -> JSONResponse:
    svc = services(request)
    body = await parse_body(request, CreateThread)
    thread_id, events, setup = await create_thread_events(svc, body)
    await setup()
    await svc.store.append(thread_id, events, expected_version=0)
    await attach_search_files(svc, thread_id, body.messages or [])
    return JSONResponse(await require_thread(svc, thread_id))


async def retrieve_thread(request: Request) -> JSONResponse:
    svc = services(request)
    return JSONResponse(await require_thread(svc, request.path_params["thread_id"]))


async def modify_thread(request: Request) -> JSONResponse:
    svc = services(request)
    thread_id = request.path_params["thread_id"]
    await require_thread(svc, thread_id)
    body = await parse_body(request, ModifyThread)
    changes: dict[str, Any] = {}
    if "metadata" in body.model_fields_set:
        changes["metadata"] = body.metadata or {}
    if "tool_resources" in body.model_fields_set:
        resources, setup = await resolve_tool_resources(svc, body.tool_resources, owner_id=thread_id)
        await setup()
        changes["tool_resources"] = resources or {}
    if changes:
        await svc.store.append(thread_id, [NewEvent("thread.updated", {"id": thread_id, **changes})])
    return JSONResponse(await require_thread(svc, thread_id))


async def delete_thread(request: Request) -> JSONResponse:
    svc = services(request)
    thread_id = request.path_params["thread_id"]

    async def decide(version: int) -> list[NewEvent]:
        await require_thread(svc, thread_id)
        run = await active_run(svc, thread_id)
        if run is not None:
            raise bad_request(
                f"Thread {thread_id} has an active run {run['id']}; cancel it before deleting the thread."
            )
        return [NewEvent("thread.deleted", {"id": thread_id})]

    await append_decided(svc, thread_id, decide)
    return JSONResponse({"id": thread_id, "object": "thread.deleted", "deleted": True})


async def list_thread_events(request: Request) -> JSONResponse:
    """Our extension: the thread's raw event log, for debugging and time travel."""
    svc = services(request)
    thread_id = request.path_params["thread_id"]
    query = request.query_params
    after = sequence_param(query.get("after"), "after")
    try:
        limit = int(query.get("limit") or 100)
    except ValueError as exc:
        raise bad_request("Invalid 'limit': expected an integer.", "limit") from exc
    if not 1 <= limit <= 1000:
        raise bad_request("Invalid 'limit': must be between 1 and 1000.", "limit")
    run_id = query.get("run_id") or None
    await require_thread(svc, thread_id)  # a deleted thread, or any other kind of id, is not found
    if run_id is not None:
        events = await svc.store.read(after=after, run_id=run_id, limit=limit + 1)
        events = [e for e in events if e.stream_id == thread_id]
    else:
        events = await svc.store.read(after=after, stream_id=thread_id, limit=limit + 1)
    page = events[:limit]
    return JSONResponse(
        {
            "object": "list",
            "data": await _redacted(svc, page),
            "first_id": page[0].sequence if page else None,
            "last_id": page[-1].sequence if page else None,
            "has_more": len(events) > limit,
        }
    )


async def _redacted(svc: Services, events: list[StoredEvent]) -> list[dict[str, Any]]:
    """The events as served, without the text of messages deleted since (the log keeps it for replay)."""
    ids = {e.data.get("id") for e in events if e.type.startswith("thread.message.")}
    deleted = {i for i in ids if isinstance(i, str) and not await svc.views.exists("message", i)}
    out = []
    for event in events:
        public = event.as_public()
        if event.type.startswith("thread.message.") and event.data.get("id") in deleted:
            public["data"] = without_content(public["data"])
            public["redacted"] = True
        out.append(public)
    return out


routes = [
    Route("/v1/threads", create_thread, methods=["POST"]),
    Route("/v1/threads/{thread_id}", retrieve_thread, methods=["GET"]),
    Route("/v1/threads/{thread_id}", modify_thread, methods=["POST"]),
    Route("/v1/threads/{thread_id}", delete_thread, methods=["DELETE"]),
    Route("/v1/threads/{thread_id}/events", list_thread_events, methods=["GET"]),
]
