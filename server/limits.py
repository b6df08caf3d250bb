"""Bounds on what one request may make the server read, and errors that never drop the connection.

`BodyLimit` refuses a body over its cap from the declared `Content-Length`, before reading
a byte, and counts what arrives for bodies sent without one (chunked), so a client cannot
make the server buffer more than the cap. `CatchAll` answers an unexpected exception with
OpenAI's 500 envelope and does not re-raise it: Starlette's own handler re-raises after
responding, and uvicorn then closes the client's keep-alive connection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import APIError, error_response

__all__ = ["BodyLimit", "CatchAll", "limited_receive"]

logger = logging.getLogger("threadlog")


class BodyLimit:
    """413 for a body larger than `max_json_bytes` (or `max_upload_bytes` for multipart uploads)."""

    def __init__(self, app: ASGIApp, *, max_json_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_json_bytes = max_json_bytes
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        multipart = headers.get(b"content-type", b"").startswith(b"multipart/")
        limit = self.max_upload_bytes if multipart else self.max_json_bytes
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _respond(scope, send, APIError(400, "Invalid Content-Length header."))
                return
            if size > limit:
                await _respond(scope, send, _too_large(limit))
                return
        await self.app(scope, limited_receive(receive, limit, lambda: _too_large(limit)), send)


def limited_receive(receive: Receive, limit: int, too_large: Callable[[], Exception]) -> Receive:
    """`receive`, raising `too_large()` once more than `limit` body bytes have arrived."""
    received = 0

    async def counting() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise too_large()
        return message

    return counting


class CatchAll:
    """The last line: an exception no route handled becomes a 500 envelope, and the connection stays."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise  # half a response is out: only closing the connection can say it failed
            error = APIError(500, "The server had an error while processing your request.", type_="server_error")
            await _respond(scope, send, error)


def _too_large(limit: int) -> APIError:
    return APIError(413, f"Request body too large: the limit is {limit} bytes.", code="request_too_large")


async def _respond(scope: Scope, send: Send, error: APIError) -> None:
    await error_response(error)(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
