"""`/v1/threads/{thread_id}/messages`: create, retrieve, modify, delete, list."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from events.records import NewEvent
from server.errors import bad_request, not_found
from server.http import list_params, parse_body
from server.models.threads import CreateMessage, ModifyMessage
from server.services import Services, services
from server.threads import (
    active_run,
    append_decided,
    attach_search_files,
    check_attachments,
    message_object,
    require_thread,
)

__all__ = ["routes"]


async def _message_or_404(svc: Services, thread_id: str, message_id: str) -> dict[str, object]:
    await require_thread(svc, thread_id)
    message = await svc.views.get("message", message_id)
    if message is None or message.get("thread_id") != thread_id:
        raise not_found("message", message_id)
    return message


async def create_message(request: Request) -> JSONResponse:
    svc = services(request)
    thread_id = request.path_params["thread_id"]
    body = await parse_body(request, CreateMessage)
    await check_attachments(svc, [body], "messages")
    message = message_object(thread_id, body)

    async def decide(version: int) -> list[NewEvent]:
        await require_thread(svc, thread_id)
        run = await active_run(svc, thread_id)
        if run is not None:
            raise bad_request(f"Can't add messages to {thread_id} while a run {run['id']} is active.")
        return [NewEvent("thread.message.created", message)]

    await append_decided(svc, thread_id, decide)
    await attach_search_files(svc, thread_id, [body])
    return JSONResponse(message)


async def retrieve_message(request: Request) -> JSONResponse:
    svc = services(request)
    p = request.path_params
    return JSONResponse(await _message_or_404(svc, p["thread_id"], p["message_id"]))


async def modify_message(request: Request) -> JSONResponse:
    svc = services(request)
    p = request.path_params
    await _message_or_404(svc, p["thread_id"], p["message_id"])
    body = await parse_body(request, ModifyMessage)
    if "metadata" in body.model_fields_set:
        event = NewEvent("thread.message.updated", {"id": p["message_id"], "metadata": body.metadata or {}})
        await svc.store.append(p["thread_id"], [event])
    return JSONResponse(await _message_or_404(svc, p["thread_id"], p["message_id"]))


async def delete_message(request: Request) -> JSONResponse:
    svc = services(request)
    p = request.path_params
    await _message_or_404(svc, p["thread_id"], p["message_id"])
    event = NewEvent("thread.message.deleted", {"id": p["message_id"], "thread_id": p["thread_id"]})
    await svc.store.append(p["thread_id"], [event])
    return JSONResponse({"id": p["message_id"], "object": "thread.message.deleted", "deleted": True})


async def list_messages(request: Request) -> JSONResponse:
    svc = services(request)
    thread_id = request.path_params["thread_id"]
    await require_thread(svc, thread_id)
    params = list_params(request)
    page = await svc.views.list(
        "message",
        parent_id=thread_id,
        run_id=request.query_params.get("run_id") or None,
        limit=params.limit,
        order=params.order,
        after=params.after,
        before=params.before,
    )
    return JSONResponse(page.envelope())


routes = [
    Route("/v1/threads/{thread_id}/messages", create_message, methods=["POST"]),
    Route("/v1/threads/{thread_id}/messages", list_messages, methods=["GET"]),
    Route("/v1/threads/{thread_id}/messages/{message_id}", retrieve_message, methods=["GET"]),
    Route("/v1/threads/{thread_id}/messages/{message_id}", modify_message, methods=["POST"]),
    Route("/v1/threads/{thread_id}/messages/{message_id}", delete_message, methods=["DELETE"]),
]
