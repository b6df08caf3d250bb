"""Request plumbing shared by the routes: body parsing, list parameters, service lookup."""

from __future__ import annotations

import json
import re
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from server.errors import bad_request, validation_error

__all__ = ["MAX_JSON_DEPTH", "ListParams", "json_body", "list_params", "parse_body", "sequence_param"]

ModelT = TypeVar("ModelT", bound=BaseModel)


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; an empty body counts as `{}` (the SDK posts bodiless actions).

    Text that is not Unicode is refused here, before anything is stored: a lone UTF-16
    surrogate (`"\\ud800"`, which JavaScript clients make by cutting strings) is valid
    JSON but cannot be written as UTF-8, and would fail the transaction it lands in.
    """
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        text = raw.decode("utf-8")  # strict: json.loads(bytes) would let encoded surrogates through
        body = json.loads(text)
    except (ValueError, RecursionError) as exc:  # also integers over 4,300 digits, absurd nesting
        raise bad_request(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
            f"using your HTTP library correctly. The OpenAI API expects a JSON payload.) ({str(exc)[:200]})"
        ) from exc
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    deep = _too_deep(body)
    if deep is not None:
        raise bad_request(
            f"Invalid value for '{deep}': JSON nested more than {MAX_JSON_DEPTH} levels deep.", deep, "invalid_value"
        )
    if _SURROGATE_ESCAPE.search(text):
        path = _lone_surrogate(body, "")
        if path is not None:
            path = path.encode("utf-8", "backslashreplace").decode()  # the name itself may hold one
            raise bad_request(
                f"Invalid value for '{path or 'body'}': the string contains a lone UTF-16 surrogate, "
                "which is not valid Unicode.",
                path or None,
                "invalid_value",
            )
    return body


MAX_JSON_DEPTH = 64
"""Deeper request JSON is refused: nothing in the API needs it, and every later step (validation,
storage, the prompt) would walk it recursively."""


def _too_deep(body: dict[str, Any]) -> str | None:
    """The top-level field under which `body` nests past MAX_JSON_DEPTH, if any (an iterative walk)."""
    stack: list[tuple[Any, str, int]] = [(v, str(k), 2) for k, v in body.items()]
    while stack:
        value, field, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                return field
            items = value.values() if isinstance(value, dict) else value
            stack.extend((v, field, depth + 1) for v in items if isinstance(v, dict | list))
    return None


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(value: Any, path: str) -> str | None:
    """The dotted path of the first string (or key) holding a lone surrogate, if any."""
    if isinstance(value, str):
        return path if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{path}.{key}" if path else str(key)
            if _SURROGATE.search(key):
                return inner
            found = _lone_surrogate(item, inner)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _lone_surrogate(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None


async def parse_body(request: Request, model: type[ModelT]) -> ModelT:
    body = await json_body(request)
    return validate(model, body)


def validate(model: type[ModelT], body: dict[str, Any]) -> ModelT:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from exc


class ListParams(BaseModel):
    limit: int = 20
    order: Literal["asc", "desc"] = "desc"
    after: str | None = None
    before: str | None = None


def list_params(request: Request, max_limit: int = 100, default_limit: int = 20) -> ListParams:
    query = request.query_params
    raw_limit = query.get("limit")
    try:
        limit = default_limit if raw_limit in (None, "") else int(raw_limit)
    except ValueError as exc:
        raise bad_request(f"Invalid 'limit': expected an integer, got '{raw_limit}'.", "limit") from exc
    if not 1 <= limit <= max_limit:
        raise bad_request(f"Invalid 'limit': must be between 1 and {max_limit}, got {limit}.", "limit")
    order = query.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise bad_request(f"Invalid 'order': expected 'asc' or 'desc', got '{order}'.", "order")
    return ListParams(
        limit=limit,
        order=order,  # type: ignore[arg-type]
        after=query.get("after") or None,
        before=query.get("before") or None,
    )


MAX_SEQUENCE = 2**63 - 1


def sequence_param(raw: str | None, name: str) -> int:
    """An event sequence number from a query parameter or header: an integer in SQLite's range."""
    if raw in (None, ""):
        return 0
    try:
        value = int(raw)
    except ValueError as exc:
        raise bad_request(f"Invalid '{name}': expected an event sequence number, got '{raw[:40]}'.", name) from exc
    if not 0 <= value <= MAX_SEQUENCE:
        raise bad_request(f"Invalid '{name}': must be between 0 and {MAX_SEQUENCE}.", name)
    return value
