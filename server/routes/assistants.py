"""`/v1/assistants`: create, retrieve, modify, delete, list."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from events.records import NewEvent
from server.http import list_params, parse_body
from server.ids import new_id
from server.models.assistants import CreateAssistant, ModifyAssistant
from server.models.common import dump, tool_json
from server.services import services
from server.tool_resources import check_tools, resolve_tool_resources

__all__ = ["routes"]


async def create_assistant(request: Request) -> JSONResponse:
    svc = services(request)
    body = await parse_body(request, CreateAssistant)
    svc.require_served_model(body.model)
    await check_tools(svc, body.tools, param="tools")
    assistant_id = new_id("asst_")
    resources, setup = await resolve_tool_resources(svc, body.tool_resources, owner_id=assistant_id)
    assistant: dict[str, Any] = {
        "id": assistant_id,
        "object": "assistant",
        "created_at": int(time.time()),
        "name": body.name,
        "description": body.description,
        "model": body.model,
        "instructions": body.instructions,
        "tools": [tool_json(t) for t in body.tools],
        "tool_resources": resources or {},
        "metadata": body.metadata or {},
        "temperature": body.temperature if body.temperature is not None else 1.0,
        "top_p": body.top_p if body.top_p is not None else 1.0,
        "response_format": dump(body.response_format) if body.response_format is not None else "auto",
        "reasoning_effort": body.reasoning_effort,
    }
    await setup()
    await svc.store.append(assistant_id, [NewEvent("assistant.created", assistant)], expected_version=0)
    return JSONResponse(assistant)


async def retrieve_assistant(request: Request) -> JSONResponse:
    svc = services(request)
    return JSONResponse(await svc.get_or_404("assistant", request.path_params["assistant_id"]))


async def modify_assistant(request: Request) -> JSONResponse:
    svc = services(request)
    assistant_id = request.path_params["assistant_id"]
    await svc.get_or_404("assistant", assistant_id)
    body = await parse_body(request, ModifyAssistant)
    changes: dict[str, Any] = {}
    setup: Any = None
    for name in body.model_fields_set:
        value = getattr(body, name)
        if name == "tools":
            await check_tools(svc, value or [], param="tools")
            changes["tools"] = [tool_json(t) for t in value or []]
        elif name == "tool_resources":
            resources, setup = await resolve_tool_resources(svc, value, owner_id=assistant_id)
            changes["tool_resources"] = resources
        elif name == "metadata":
            changes["metadata"] = value or {}
        elif name == "response_format":
            changes["response_format"] = dump(value) if value is not None else "auto"
        elif name in ("temperature", "top_p") and value is None:
            changes[name] = 1.0
        elif name == "model" and value is None:
            continue
        elif name == "model":
            svc.require_served_model(value)
            changes["model"] = value
        else:
            changes[name] = value
    if setup is not None:  # only once every field is known to be valid: a refused request creates nothing
        await setup()
    if changes:
        await svc.store.append(assistant_id, [NewEvent("assistant.updated", {"id": assistant_id, **changes})])
    return JSONResponse(await svc.get_or_404("assistant", assistant_id))


async def delete_assistant(request: Request) -> JSONResponse:
    svc = services(request)
    assistant_id = request.path_params["assistant_id"]
    await svc.get_or_404("assistant", assistant_id)
    await svc.store.append(assistant_id, [NewEvent("assistant.deleted", {"id": assistant_id})])
    return JSONResponse({"id": assistant_id, "object": "assistant.deleted", "deleted": True})


async def list_assistants(request: Request) -> JSONResponse:
    svc = services(request)
    params = list_params(request)
    page = await svc.views.list(
        "assistant", limit=params.limit, order=params.order, after=params.after, before=params.before
    )
    return JSONResponse(page.envelope())


routes = [
    Route("/v1/assistants", create_assistant, methods=["POST"]),
    Route("/v1/assistants", list_assistants, methods=["GET"]),
    Route("/v1/assistants/{assistant_id}", retrieve_assistant, methods=["GET"]),
    Route("/v1/assistants/{assistant_id}", modify_assistant, methods=["POST"]),
    Route("/v1/assistants/{assistant_id}", delete_assistant, methods=["DELETE"]),
]
