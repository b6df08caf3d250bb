"""Bearer-key checking on the API, when THREADLOG_API_KEYS is set."""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import APIError

__all__ = ["BearerKeyMiddleware", "bearer_token", "holds_key"]


def bearer_token(headers: dict[bytes, bytes]) -> bytes | None:
    scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else None


def holds_key(headers: dict[bytes, bytes], keys: Iterable[bytes]) -> bool:
    """Whether the request's bearer token is one of `keys` (compared in constant time)."""
    token = bearer_token(headers)
    return token is not None and any(hmac.compare_digest(token, key) for key in keys)


class BearerKeyMiddleware:
    """Rejects `/v1/*` requests without a known key, with OpenAI's 401 envelope.

    Pure ASGI rather than BaseHTTPMiddleware so streaming responses pass through untouched.
    """

    def __init__(self, app: ASGIApp, keys: frozenset[str]) -> None:
        self.app = app
        self.keys = tuple(k.encode() for k in keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if holds_key(headers, self.keys):
            await self.app(scope, receive, send)
            return
        header = headers.get(b"authorization", b"")
        message = (
            "You didn't provide an API key. Provide it in an Authorization header: Bearer YOUR_KEY."
            if not header
            else "Incorrect API key provided."
        )
        body = json.dumps(APIError(401, message, code="invalid_api_key").body()).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
