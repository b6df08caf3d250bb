"""`/v1/organization/...`: the admin API, in OpenAI's shape, called with an admin key.

Projects (create, list, retrieve, modify, archive), their service accounts with API keys
(the key shown once, in the create response), the keys (list, retrieve, delete), the
project's rate limit and model permissions, and the completions usage report. Every change
is an event in the project's stream that names the admin key that made it (its
fingerprint); the directory of keys the request path uses is changed once it committed.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from typing import Any, Literal

from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from events.records import DEFAULT_PROJECT, PROJECT, NewEvent
from events.store import ConcurrencyError
from projections.usage import DAY_SECONDS, usage_day
from projections.views import Page
from server.errors import bad_request, not_found
from server.http import list_params, parse_body
from server.ids import new_id
from server.models.common import Request as Body
from server.projects import DEFAULT_PROJECT_NAME, KEY_PREFIX, Directory, admin_actor, hash_key
from server.services import Services, services

__all__ = ["routes"]

RATE_LIMIT_ID = "rl-all-models"
"""Threadlog's one rate limit per project, for all its models together (OpenAI's are per model)."""


class CreateProject(Body):
    name: str = Field(min_length=1, max_length=256)
    max_file_storage_bytes: int | None = Field(default=None, ge=0)


class ModifyProject(Body):
    name: str | None = Field(default=None, min_length=1, max_length=256)
    max_file_storage_bytes: int | None = Field(default=None, ge=0)


class CreateServiceAccount(Body):
    name: str = Field(min_length=1, max_length=256)


class UpdateRateLimit(Body):
    max_requests_per_1_minute: int | None = Field(default=None, ge=0)
    max_tokens_per_1_minute: int | None = Field(default=None, ge=0)


class ModelPermissions(Body):
    mode: Literal["allow_list", "deny_list"]
    model_ids: list[str] = Field(max_length=1000)


# -- projects ----------------------------------------------------------------------------


async def create_project(request: Request) -> JSONResponse:
    svc = services(request)
    body = await parse_body(request, CreateProject)
    project_id = new_id("proj_")
    doc = _new_project(project_id, body.name)
    if body.max_file_storage_bytes is not None:
        doc["limits"]["max_file_storage_bytes"] = body.max_file_storage_bytes
    await _record(svc, request, project_id, [("organization.project.created", doc)], expected_version=0)
    _directory(svc).project_changed(doc)
    return JSONResponse(doc)


async def list_projects(request: Request) -> JSONResponse:
    svc = services(request)
    params = list_params(request, max_limit=100)
    include_archived = request.query_params.get("include_archived", "false").lower() == "true"
    docs = (await svc.views.list("project", limit=1_000_000, order="asc")).data
    if not any(doc["id"] == DEFAULT_PROJECT for doc in docs):
        docs.insert(0, _new_project(DEFAULT_PROJECT, DEFAULT_PROJECT_NAME, created_at=0))
    docs = [doc for doc in docs if include_archived or doc.get("status") != "archived"]
    if params.after is not None:
        ids = [doc["id"] for doc in docs]
        if params.after not in ids:
            raise bad_request(f"No project with id '{params.after}' to page from.", "after")
        docs = docs[ids.index(params.after) + 1 :]
    return JSONResponse(Page(docs[: params.limit], has_more=len(docs) > params.limit).envelope())


async def retrieve_project(request: Request) -> JSONResponse:
    return JSONResponse(await _project(services(request), request.path_params["project_id"]))


async def modify_project(request: Request) -> JSONResponse:
    svc = services(request)
    project_id = request.path_params["project_id"]
    doc = await _project(svc, project_id, create_default=True)
    body = await parse_body(request, ModifyProject)
    changes: dict[str, Any] = {}
    if body.name is not None:
        changes["name"] = body.name
    if "max_file_storage_bytes" in body.model_fields_set:
        changes["limits"] = {**doc["limits"], "max_file_storage_bytes": body.max_file_storage_bytes}
    return JSONResponse(await _change(svc, request, doc, "organization.project.updated", changes))


async def archive_project(request: Request) -> JSONResponse:
    svc = services(request)
    project_id = request.path_params["project_id"]
    if project_id == DEFAULT_PROJECT:
        raise bad_request("The default project cannot be archived.", "project_id")
    doc = await _project(svc, project_id)
    if doc.get("status") == "archived":
        return JSONResponse(doc)
    changes = {"status": "archived", "archived_at": int(time.time())}
    return JSONResponse(await _change(svc, request, doc, "organization.project.archived", changes))


# -- service accounts and keys -----------------------------------------------------------


async def create_service_account(request: Request) -> JSONResponse:
    svc = services(request)
    project = await _active_project(svc, request.path_params["project_id"])
    body = await parse_body(request, CreateServiceAccount)
    created = int(time.time())
    account = {
        "id": new_id("svc_acct_"),
        "object": "organization.project.service_account",
        "name": body.name,
        "role": "member",
        "created_at": created,
        "project_id": project["id"],
    }
    value = KEY_PREFIX + secrets.token_urlsafe(36)
    key = {
        "id": new_id("key_"),
        "object": "organization.project.api_key",
        "name": "Secret Key",
        "created_at": created,
        "last_used_at": None,
        "redacted_value": f"{value[:14]}...{value[-4:]}",
        "owner": {"type": "service_account", "service_account": _public(account)},
        "owner_project_access": "active",
        "project_id": project["id"],
        "service_account_id": account["id"],
        "sha256": hash_key(value),
    }
    await _record(
        svc,
        request,
        project["id"],
        [("organization.project.service_account.created", account), ("organization.project.api_key.created", key)],
    )
    _directory(svc).key_added(key["sha256"], key["id"], project["id"])
    shown = {"id": key["id"], "object": "organization.project.service_account.api_key", "name": key["name"],
             "created_at": created, "value": value}  # fmt: skip
    return JSONResponse({**_public(account), "api_key": shown})


async def list_service_accounts(request: Request) -> JSONResponse:
    return await _list_children(request, "service_account")


async def retrieve_service_account(request: Request) -> JSONResponse:
    svc = services(request)
    return JSONResponse(_public(await _child(svc, request, "service_account", "service_account_id")))


async def delete_service_account(request: Request) -> JSONResponse:
    svc = services(request)
    account = await _child(svc, request, "service_account", "service_account_id")
    keys = await svc.views.list("api_key", parent_id=account["project_id"], limit=1_000_000)
    owned = [key for key in keys.data if key.get("service_account_id") == account["id"]]
    events = [("organization.project.api_key.deleted", {"id": key["id"]}) for key in owned]
    events.append(("organization.project.service_account.deleted", {"id": account["id"]}))
    await _record(svc, request, account["project_id"], events)
    for key in owned:
        _directory(svc).key_deleted(key["id"])
    return JSONResponse(
        {"object": "organization.project.service_account.deleted", "id": account["id"], "deleted": True}
    )


async def list_api_keys(request: Request) -> JSONResponse:
    return await _list_children(request, "api_key")


async def retrieve_api_key(request: Request) -> JSONResponse:
    svc = services(request)
    return JSONResponse(_public(await _child(svc, request, "api_key", "key_id")))


async def delete_api_key(request: Request) -> JSONResponse:
    svc = services(request)
    key = await _child(svc, request, "api_key", "key_id")
    await _record(svc, request, key["project_id"], [("organization.project.api_key.deleted", {"id": key["id"]})])
    _directory(svc).key_deleted(key["id"])
    return JSONResponse({"object": "organization.project.api_key.deleted", "id": key["id"], "deleted": True})


# -- limits ------------------------------------------------------------------------------


async def list_rate_limits(request: Request) -> JSONResponse:
    doc = await _project(services(request), request.path_params["project_id"])
    limit = _rate_limit(doc)
    return JSONResponse({"object": "list", "data": [limit], "first_id": limit["id"], "last_id": limit["id"],
                         "has_more": False})  # fmt: skip


async def update_rate_limit(request: Request) -> JSONResponse:
    svc = services(request)
    doc = await _project(svc, request.path_params["project_id"], create_default=True)
    if request.path_params["rate_limit_id"] != RATE_LIMIT_ID:
        raise not_found("rate limit", request.path_params["rate_limit_id"], "rate_limit_id")
    body = await parse_body(request, UpdateRateLimit)
    limits = dict(doc["limits"])
    for name in ("max_requests_per_1_minute", "max_tokens_per_1_minute"):
        if name in body.model_fields_set:
            value = getattr(body, name)
            limits[name] = value or None  # 0: no limit
    doc = await _change(svc, request, doc, "organization.project.updated", {"limits": limits})
    return JSONResponse(_rate_limit(doc))


async def retrieve_model_permissions(request: Request) -> JSONResponse:
    doc = await _project(services(request), request.path_params["project_id"])
    return JSONResponse(_permissions(doc))


async def update_model_permissions(request: Request) -> JSONResponse:
    svc = services(request)
    doc = await _project(svc, request.path_params["project_id"], create_default=True)
    body = await parse_body(request, ModelPermissions)
    permissions = {"mode": body.mode, "model_ids": list(dict.fromkeys(body.model_ids))}
    doc = await _change(
        svc,
        request,
        doc,
        "organization.project.updated",
        {"limits": {**doc["limits"], "model_permissions": permissions}},
    )
    return JSONResponse(_permissions(doc))


async def delete_model_permissions(request: Request) -> JSONResponse:
    svc = services(request)
    doc = await _project(svc, request.path_params["project_id"], create_default=True)
    await _change(
        svc, request, doc, "organization.project.updated", {"limits": {**doc["limits"], "model_permissions": None}}
    )
    return JSONResponse({"object": "project.model_permissions.deleted", "deleted": True})


# -- usage -------------------------------------------------------------------------------


async def usage_completions(request: Request) -> JSONResponse:
    """Completions usage in daily buckets, from the usage projection (runs' end events)."""
    svc = services(request)
    query = request.query_params
    start = _int_param(query.get("start_time"), "start_time", required=True) or 0
    end = _int_param(query.get("end_time"), "end_time") or int(time.time()) + 1
    if query.get("bucket_width", "1d") != "1d":
        raise bad_request("Only bucket_width '1d' is supported.", "bucket_width")
    group_by = set(query.getlist("group_by") + query.getlist("group_by[]"))
    unknown = group_by - {"project_id", "model"}
    if unknown:
        raise bad_request(
            f"Cannot group by '{sorted(unknown)[0]}': Threadlog groups by project_id and model.", "group_by"
        )
    projects = set(query.getlist("project_ids") + query.getlist("project_ids[]"))
    models = set(query.getlist("models") + query.getlist("models[]"))
    limit = _int_param(query.get("limit"), "limit") or 7
    first = usage_day(start)
    if query.get("page"):
        first = _int_param(query.get("page"), "page") or first
    rows = [
        row for row in (await svc.views.list("usage", limit=10_000_000, order="asc")).data if row["start_time"] < end
    ]
    buckets: list[dict[str, Any]] = []
    day = first
    while day < end and len(buckets) < limit:
        totals: dict[tuple[str | None, str | None], dict[str, Any]] = {}
        for row in rows:
            if row["start_time"] != day or (projects and row["project_id"] not in projects):
                continue
            if models and row["model"] not in models:
                continue
            key = (
                row["project_id"] if "project_id" in group_by else None,
                row["model"] if "model" in group_by else None,
            )
            result = totals.setdefault(key, _empty_result(*key))
            for name in ("input_tokens", "output_tokens", "input_cached_tokens", "num_model_requests", "num_runs"):
                result[name] += row[name]
        buckets.append({"object": "bucket", "start_time": day, "end_time": day + DAY_SECONDS,
                        "results": list(totals.values())})  # fmt: skip
        day += DAY_SECONDS
    more = day < end
    return JSONResponse({"object": "page", "data": buckets, "has_more": more, "next_page": str(day) if more else None})


# -- audit log ---------------------------------------------------------------------------

_AUDIT_TYPES = {
    "organization.project.created": "project.created",
    "organization.project.updated": "project.updated",
    "organization.project.archived": "project.archived",
    "organization.project.service_account.created": "service_account.created",
    "organization.project.service_account.deleted": "service_account.deleted",
    "organization.project.api_key.created": "api_key.created",
    "organization.project.api_key.deleted": "api_key.deleted",
}


async def audit_logs(request: Request) -> JSONResponse:
    """The admin events of the log in the shape of OpenAI's audit log, newest first."""
    svc = services(request)
    query = request.query_params
    params = list_params(request, max_limit=100)
    wanted_projects = set(query.getlist("project_ids[]") + query.getlist("project_ids"))
    wanted_types = set(query.getlist("event_types[]") + query.getlist("event_types"))
    projects = {doc["id"]: doc for doc in (await svc.views.list("project", limit=1_000_000, order="asc")).data}
    entries = []
    for project_id, project in projects.items():
        if wanted_projects and project_id not in wanted_projects:
            continue
        for event in await svc.store.read(stream_id=project_id, limit=10_000_000):
            entry = _audit_entry(event.sequence, event.type, event.data, event.created_at, project)
            if entry is not None and (not wanted_types or entry["type"] in wanted_types):
                entries.append(entry)
    entries.sort(key=lambda e: int(e["id"].rsplit("-", 1)[1]), reverse=True)
    if params.after is not None:
        ids = [e["id"] for e in entries]
        if params.after not in ids:
            raise bad_request(f"No audit log entry with id '{params.after}' to page from.", "after")
        entries = entries[ids.index(params.after) + 1 :]
    return JSONResponse(Page(entries[: params.limit], has_more=len(entries) > params.limit).envelope())


def _audit_entry(
    sequence: int, event_type: str, data: dict[str, Any], created_at: float, project: dict[str, Any]
) -> dict[str, Any] | None:
    kind = _AUDIT_TYPES.get(event_type)
    if kind is None:
        return None
    details: dict[str, Any] = {"id": data.get("id")}
    if kind == "project.created":
        details["data"] = {"name": data.get("name"), "title": data.get("name")}
    elif kind == "project.updated":
        if "limits" in data and "name" not in data:
            kind = "rate_limit.updated"
            details = {"id": RATE_LIMIT_ID, "changes_requested": data["limits"]}
        else:
            details["changes_requested"] = {"title": data.get("name")}
    elif kind == "service_account.created":
        details["data"] = {"role": data.get("role")}
    elif kind == "api_key.created":
        details["data"] = {"scopes": []}
    actor = data.get("actor")
    return {
        "object": "organization.audit_log",
        "id": f"audit_log-{sequence}",
        "type": kind,
        "effective_at": int(created_at),
        "project": {"id": project["id"], "name": project.get("name")},
        "actor": {"type": "api_key", "api_key": {"id": actor, "type": "user"}} if actor else None,
        kind: details,
    }


# -- helpers -----------------------------------------------------------------------------


def _directory(svc: Services) -> Directory:
    assert svc.directory is not None
    return svc.directory


def _new_project(project_id: str, name: str, created_at: int | None = None) -> dict[str, Any]:
    return {
        "id": project_id,
        "object": "organization.project",
        "name": name,
        "created_at": int(time.time()) if created_at is None else created_at,
        "archived_at": None,
        "status": "active",
        "limits": {
            "max_requests_per_1_minute": None,
            "max_tokens_per_1_minute": None,
            "max_file_storage_bytes": None,
            "model_permissions": None,
        },
    }


async def _project(svc: Services, project_id: str, *, create_default: bool = False) -> dict[str, Any]:
    doc = await svc.views.get("project", project_id)
    if doc is not None:
        return doc
    if project_id != DEFAULT_PROJECT:
        raise not_found("project", project_id, "project_id")
    doc = _new_project(DEFAULT_PROJECT, DEFAULT_PROJECT_NAME, created_at=0)
    if create_default:  # the default project gets its stream when an admin first changes it
        with contextlib.suppress(ConcurrencyError):  # another request made it
            await _record(svc, None, DEFAULT_PROJECT, [("organization.project.created", doc)], expected_version=0)
        return await svc.views.get("project", DEFAULT_PROJECT) or doc
    return doc


async def _active_project(svc: Services, project_id: str) -> dict[str, Any]:
    doc = await _project(svc, project_id, create_default=True)
    if doc.get("status") == "archived":
        raise bad_request(f"Project {project_id} is archived.", "project_id")
    return doc


async def _change(
    svc: Services, request: Request, doc: dict[str, Any], event_type: str, changes: dict[str, Any]
) -> dict[str, Any]:
    if changes:
        await _record(svc, request, doc["id"], [(event_type, {"id": doc["id"], **changes})])
        doc = {**doc, **changes}
        _directory(svc).project_changed(doc)
    return doc


async def _record(
    svc: Services,
    request: Request | None,
    project_id: str,
    events: list[tuple[str, dict[str, Any]]],
    *,
    expected_version: int | None = None,
) -> None:
    """Append admin events to the project's own stream (which belongs to the project), each
    naming the admin key that made it (none for the default project's implicit creation)."""
    who = {"actor": admin_actor(dict(request.scope["headers"]))} if request is not None else {}
    token = PROJECT.set(project_id)
    try:
        new = [NewEvent(event_type, {**data, **who}) for event_type, data in events]
        await svc.store.append(project_id, new, expected_version=expected_version)
    finally:
        PROJECT.reset(token)


async def _child(svc: Services, request: Request, kind: str, param: str) -> dict[str, Any]:
    project = await _project(svc, request.path_params["project_id"])
    doc = await svc.views.get(kind, request.path_params[param])
    if doc is None or doc.get("project_id") != project["id"]:
        raise not_found(kind.replace("_", " "), request.path_params[param], param)
    return doc


async def _list_children(request: Request, kind: str) -> JSONResponse:
    svc = services(request)
    project = await _project(svc, request.path_params["project_id"])
    params = list_params(request, max_limit=100)
    page = await svc.views.list(kind, parent_id=project["id"], limit=params.limit, order="asc", after=params.after)
    envelope = page.envelope()
    envelope["data"] = [_public(doc) for doc in page.data]
    return JSONResponse(envelope)


def _public(doc: dict[str, Any]) -> dict[str, Any]:
    """An admin object as OpenAI shows it: no key hash, no bookkeeping fields."""
    return {k: v for k, v in doc.items() if k not in ("sha256", "project_id", "service_account_id")}


def _rate_limit(doc: dict[str, Any]) -> dict[str, Any]:
    limits = doc["limits"]
    return {
        "object": "project.rate_limit",
        "id": RATE_LIMIT_ID,
        "model": "*",
        "max_requests_per_1_minute": limits.get("max_requests_per_1_minute") or 0,
        "max_tokens_per_1_minute": limits.get("max_tokens_per_1_minute") or 0,
    }


def _permissions(doc: dict[str, Any]) -> dict[str, Any]:
    permissions = doc["limits"].get("model_permissions") or {"mode": "deny_list", "model_ids": []}
    return {"object": "project.model_permissions", **permissions}


def _empty_result(project_id: str | None, model: str | None) -> dict[str, Any]:
    return {
        "object": "organization.usage.completions.result",
        "input_tokens": 0,
        "output_tokens": 0,
        "input_cached_tokens": 0,
        "input_audio_tokens": 0,
        "output_audio_tokens": 0,
        "num_model_requests": 0,
        "num_runs": 0,
        "project_id": project_id,
        "user_id": None,
        "api_key_id": None,
        "model": model,
        "batch": None,
    }


def _int_param(raw: str | None, name: str, *, required: bool = False) -> int | None:
    if raw in (None, ""):
        if required:
            raise bad_request(f"Missing required parameter: '{name}'.", name)
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise bad_request(f"Invalid '{name}': expected an integer, got '{raw[:40]}'.", name) from exc


_P = "/v1/organization/projects/{project_id}"
routes = [
    Route("/v1/organization/projects", create_project, methods=["POST"]),
    Route("/v1/organization/projects", list_projects, methods=["GET"]),
    Route(_P, retrieve_project, methods=["GET"]),
    Route(_P, modify_project, methods=["POST"]),
    Route(f"{_P}/archive", archive_project, methods=["POST"]),
    Route(f"{_P}/service_accounts", create_service_account, methods=["POST"]),
    Route(f"{_P}/service_accounts", list_service_accounts, methods=["GET"]),
    Route(f"{_P}/service_accounts/{{service_account_id}}", retrieve_service_account, methods=["GET"]),
    Route(f"{_P}/service_accounts/{{service_account_id}}", delete_service_account, methods=["DELETE"]),
    Route(f"{_P}/api_keys", list_api_keys, methods=["GET"]),
    Route(f"{_P}/api_keys/{{key_id}}", retrieve_api_key, methods=["GET"]),
    Route(f"{_P}/api_keys/{{key_id}}", delete_api_key, methods=["DELETE"]),
    Route(f"{_P}/rate_limits", list_rate_limits, methods=["GET"]),
    Route(f"{_P}/rate_limits/{{rate_limit_id}}", update_rate_limit, methods=["POST"]),
    Route(f"{_P}/model_permissions", retrieve_model_permissions, methods=["GET"]),
    Route(f"{_P}/model_permissions", update_model_permissions, methods=["POST"]),
    Route(f"{_P}/model_permissions", delete_model_permissions, methods=["DELETE"]),
    Route("/v1/organization/usage/completions", usage_completions, methods=["GET"]),
    Route("/v1/organization/audit_logs", audit_logs, methods=["GET"]),
]
