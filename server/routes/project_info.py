"""`GET /v1/threadlog/project`: which project the request's key acts in (Threadlog's own route).

The playground shows it beside the connection status; a script can check a key's project
before it writes anything. It names no object of the project, so it is the same for every key
of one project.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from events.records import DEFAULT_PROJECT
from server.services import services

__all__ = ["routes"]


async def current_project(request: Request) -> JSONResponse:
    svc = services(request)
    assert svc.directory is not None
    info = svc.directory.current()
    limits = info.limits
    return JSONResponse(
        {
            "object": "threadlog.project",
            "id": info.id,
            "name": info.name,
            "default": info.id == DEFAULT_PROJECT,
            "max_requests_per_1_minute": limits.requests_per_minute,
            "max_tokens_per_1_minute": limits.tokens_per_minute,
            "max_file_storage_bytes": info.max_file_storage_bytes,
        }
    )


routes = [Route("/v1/threadlog/project", current_project, methods=["GET"])]
