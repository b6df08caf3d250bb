"""OpenAI's error envelope, `{"error": {"message", "type", "param", "code"}}`, for every failure."""

from __future__ import annotations

import logging
import re
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

__all__ = ["APIError", "bad_request", "error_response", "exception_handlers", "not_found", "validation_error"]

logger = logging.getLogger("threadlog")

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class APIError(Exception):
    """An error the client sees, with its HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type_: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.headers = headers or []  # sent with the error (a 429's rate-limit headers)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_ or _TYPES.get(status, "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def not_found(kind: str, object_id: str, param: str | None = None) -> APIError:
    return APIError(404, f"No {kind} found with id '{object_id}'.", param=param)


def error_response(error: APIError) -> JSONResponse:
    headers = {name.decode(): value.decode() for name, value in error.headers}
    return JSONResponse(error.body(), status_code=error.status, headers=headers or None)


def validation_error(exc: ValidationError) -> APIError:
    """The first pydantic error, with its location as OpenAI's dotted `param`."""
    first = exc.errors()[0]
    param = _param_from_loc(first.get("loc", ()))
    kind = first.get("type", "")
    if kind == "extra_forbidden":
        message = f"Unrecognized request argument supplied: {param}"
    elif kind == "missing":
        message = f"Missing required parameter: '{param}'."
    else:
        message = f"Invalid value for '{param}': {first.get('msg', 'invalid value')}." if param else first["msg"]
    return APIError(400, message, param=param or None, code="invalid_value" if kind != "missing" else None)


_UNION_LABEL = re.compile(r"^(function-|constrained-|list\[|dict\[|str$|int$|float$|bool$)")


def _param_from_loc(loc: tuple[Any, ...] | list[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and _UNION_LABEL.match(part):
            continue  # pydantic's union-branch labels are not request fields
        else:
            out += ("." if out else "") + str(part)
    return out


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    elif exc.status_code == 405:
        message = f"Method {request.method} not allowed for {request.url.path}"
    else:
        message = str(exc.detail)
    return error_response(APIError(exc.status_code, message))


exception_handlers: dict[Any, Any] = {
    APIError: _api_error,
    HTTPException: _http_error,
}
"""Anything else is answered by server.limits.CatchAll (which keeps the connection open)."""
