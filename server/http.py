"""Request plumbing shared by the routes: body parsing, list parameters, service lookup."""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from server.errors import bad_request, validation_error

__all__ = ["ListParams", "json_body", "list_params", "parse_body"]

ModelT = TypeVar("ModelT", bound=BaseModel)


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; an empty body counts as `{}` (the SDK posts bodiless actions)."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad_request(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
            f"using your HTTP library correctly. The OpenAI API expects a JSON payload.) ({exc})"
        ) from exc
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    return body


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
