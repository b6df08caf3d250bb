"""Request ids, `openai-processing-ms`, and one access-log line per request.

Every response carries `x-request-id` (OpenAI's header; the SDK exposes it as
`_request_id`): the client's own, when it sends a usable one, else a new `req_…`. The id
is in a context variable for the whole request, so every log line the request causes
names it (see server/logs.py), and so do the run tasks a request starts (asyncio copies
the context into them). `openai-processing-ms` is the time until the response started;
the access line, written when the response ends, gives the whole time (a stream's too).
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Mapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from events.records import REQUEST_ID
from server import metrics, tracing

__all__ = ["REQUEST_ID", "RequestContext", "current_request_id"]


access_log = logging.getLogger("threadlog.access")

_USABLE_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


def current_request_id() -> str | None:
    return REQUEST_ID.get()


class RequestContext:
    """Pure ASGI (a streaming response passes through untouched); outermost middleware."""

    def __init__(self, app: ASGIApp, route_templates: Mapping[Any, str] | None = None) -> None:
        self.app = app
        # The router leaves the matched endpoint in the scope; its route's template is the
        # metrics label (bounded, unlike the raw path).
        self.route_templates = dict(route_templates or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), None)
        request_id = given.decode() if given is not None and _USABLE_ID.fullmatch(given) else _new_id()
        token = REQUEST_ID.set(request_id)
        status = 0

        async def send_with_ids(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                processing = f"{(time.perf_counter() - started) * 1000:.0f}"
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", request_id.encode()),
                    (b"openai-processing-ms", processing.encode()),
                ]
            await send(message)

        traced = tracing.request_span(scope) if tracing.ENABLED else None
        current: Any = traced.__enter__() if traced is not None else None
        try:
            await self.app(scope, receive, send_with_ids)
        finally:
            route = self.route_templates.get(scope.get("endpoint"))
            if traced is not None:
                if route is not None:
                    current.update_name(f"{scope['method']} {route}")
                    current.set_attribute("http.route", route)
                current.set_attribute("http.response.status_code", status)
                current.set_attribute("threadlog.request_id", request_id)
                traced.__exit__(None, None, None)
            elapsed = (time.perf_counter() - started) * 1000
            route = route or "unmatched"
            metrics.REQUESTS.labels(route, scope["method"], str(status)).inc()
            metrics.REQUEST_SECONDS.labels(route, scope["method"]).observe(elapsed / 1000)
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "%s %s %d %.1fms",
                    scope["method"],
                    scope["path"],
                    status,
                    elapsed,
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "ms": round(elapsed, 1),
                        "project_id": scope.get("state", {}).get("project_id"),
                    },
                )
            REQUEST_ID.reset(token)


def _new_id() -> str:
    return "req_" + secrets.token_hex(16)
