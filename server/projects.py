"""Which project a request acts in, decided from its key; the directory of projects and keys.

A project API key (made by the admin API) puts its requests in its project; the keys in
THREADLOG_API_KEYS, and every request when auth is off, act in the default project, where
everything written before projects existed also lives. The project goes into
`events.records.PROJECT` for the request's whole life: the views then show only that
project's objects (projections/views.py) and the log files new streams under it. Admin
keys (THREADLOG_ADMIN_KEYS) reach only `/v1/organization/...`, and act across projects.

Keys are kept only as SHA-256 hashes. The directory is loaded from the views at start and
changed by the admin routes once their events are committed, so a deleted key is refused
from the next request on, and requests still running with it (an SSE stream) are ended.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from events.log import EventLog
from events.records import DEFAULT_PROJECT, PROJECT
from projections.views import ViewReader
from server.auth import bearer_token, holds_key
from server.errors import APIError
from server.rate_limits import Limits, RateLimiter

__all__ = [
    "DEFAULT_PROJECT_NAME",
    "KEY_PREFIX",
    "Directory",
    "ProjectAccess",
    "ProjectInfo",
    "admin_actor",
    "hash_key",
]

KEY_PREFIX = "sk-svcacct-"
"""Project keys look like OpenAI's service-account keys; an unknown token with this prefix is
always refused (a deleted key must not fall back to the default project when auth is off)."""

DEFAULT_PROJECT_NAME = "Default project"

logger = logging.getLogger("threadlog")

_MODEL_ROUTES = ("/runs", "/submit_tool_outputs", "/v1/chat/completions", "/v1/embeddings")


def hash_key(key: str | bytes) -> str:
    return hashlib.sha256(key if isinstance(key, bytes) else key.encode()).hexdigest()


def admin_actor(headers: dict[bytes, bytes]) -> str:
    """Who made an admin request, for the log: a fingerprint of its admin key, never the key."""
    token = bearer_token(headers) or b""
    return "admin_key:" + hash_key(token)[:16]


@dataclass(frozen=True, slots=True)
class ProjectInfo:
    id: str
    name: str
    archived: bool = False
    limits: Limits = field(default_factory=Limits)
    max_file_storage_bytes: int | None = None
    model_mode: str | None = None  # "allow_list" / "deny_list" / None: every served model
    model_ids: frozenset[str] = frozenset()

    def allows_model(self, model: str) -> bool:
        if self.model_mode == "allow_list":
            return model in self.model_ids
        if self.model_mode == "deny_list":
            return model not in self.model_ids
        return True

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> ProjectInfo:
        limits = doc.get("limits") or {}
        permissions = limits.get("model_permissions") or {}
        return cls(
            id=doc["id"],
            name=doc.get("name") or "",
            archived=doc.get("status") == "archived",
            limits=Limits(limits.get("max_requests_per_1_minute"), limits.get("max_tokens_per_1_minute")),
            max_file_storage_bytes=limits.get("max_file_storage_bytes"),
            model_mode=permissions.get("mode"),
            model_ids=frozenset(permissions.get("model_ids") or ()),
        )


@dataclass(frozen=True, slots=True)
class _Key:
    id: str
    project_id: str


class Directory:
    """Projects and keys as the request path needs them: one dict lookup per request."""

    def __init__(self, api_keys: frozenset[str], admin_keys: frozenset[str]) -> None:
        self.api_keys = tuple(key.encode() for key in api_keys)
        self.admin_keys = tuple(key.encode() for key in admin_keys)
        self.limiter = RateLimiter()
        self._keys: dict[str, _Key] = {}  # sha256 hex -> key
        self._projects: dict[str, ProjectInfo] = {}
        self._watchers: dict[str, set[Callable[[], None]]] = {}

    async def load(self, views: ViewReader) -> None:
        """Everything from the views (at start; the server's own read, across projects)."""
        token = PROJECT.set(None)
        try:
            projects = (await views.list("project", limit=1_000_000, order="asc")).data
            keys = []
            for doc in projects:
                keys += (await views.list("api_key", parent_id=doc["id"], limit=1_000_000, order="asc")).data
        finally:
            PROJECT.reset(token)
        self._projects = {doc["id"]: ProjectInfo.from_doc(doc) for doc in projects}
        self._keys = {doc["sha256"]: _Key(doc["id"], doc["project_id"]) for doc in keys}

    async def follow(self, log: EventLog, views: ViewReader) -> None:
        """On a log other processes share: apply the admin changes they make (a key created on
        one process works on all; one deleted or archived ends its streams everywhere)."""
        async for batch in log.subscribe_batches(after=log.head):
            if not any(event.type.startswith("organization.") for event in batch):
                continue
            known_keys = {key.id for key in self._keys.values()}
            before = dict(self._projects)
            await self.load(views)
            for key_id in known_keys - {key.id for key in self._keys.values()}:
                self._revoked(key_id)
            for project_id, info in self._projects.items():
                if before.get(project_id) != info:
                    self._project_replaced(before.get(project_id), info)

    # -- changes made by the admin routes, after their events committed -------------------

    def project_changed(self, doc: dict[str, Any]) -> None:
        before = self._projects.get(doc["id"])
        info = self._projects[doc["id"]] = ProjectInfo.from_doc(doc)
        self._project_replaced(before, info)

    def _project_replaced(self, before: ProjectInfo | None, info: ProjectInfo) -> None:
        """New limits start counting afresh; an archived project's keys end their streams."""
        if before is None or before.limits != info.limits:
            self.limiter.forget(info.id)
        if info.archived:
            for key in [k for k in self._keys.values() if k.project_id == info.id]:
                self._revoked(key.id)

    def key_added(self, key_hash: str, key_id: str, project_id: str) -> None:
        self._keys[key_hash] = _Key(key_id, project_id)

    def key_deleted(self, key_id: str) -> None:
        self._keys = {h: k for h, k in self._keys.items() if k.id != key_id}
        self._revoked(key_id)

    def _revoked(self, key_id: str) -> None:
        for end in list(self._watchers.get(key_id, ())):
            end()

    # -- lookups ---------------------------------------------------------------------------

    def project(self, project_id: str | None) -> ProjectInfo:
        """The project's settings (the default project needs no admin event to exist)."""
        project_id = project_id or DEFAULT_PROJECT
        info = self._projects.get(project_id)
        if info is None:
            return ProjectInfo(project_id, DEFAULT_PROJECT_NAME if project_id == DEFAULT_PROJECT else "")
        return info

    def current(self) -> ProjectInfo:
        return self.project(PROJECT.get())

    def charge_tokens(self, tokens: int) -> None:
        """A model call of the current project used `tokens` (for its tokens-per-minute limit)."""
        info = self.current()
        self.limiter.charge_tokens(info.id, info.limits, tokens)

    def identify(self, headers: dict[bytes, bytes]) -> tuple[str, str | None] | APIError:
        """(project, key id or None) for a request's key, or the 401 to answer."""
        token = bearer_token(headers)
        if token:
            key = self._keys.get(hash_key(token))
            if key is not None:
                if self.project(key.project_id).archived:
                    return APIError(401, "The project of this API key is archived.", code="invalid_api_key")
                return key.project_id, key.id
            if token.startswith(KEY_PREFIX.encode()):
                return APIError(401, "Incorrect API key provided.", code="invalid_api_key")
        if not self.api_keys:
            return DEFAULT_PROJECT, None  # auth is off
        if holds_key(headers, self.api_keys):
            return DEFAULT_PROJECT, None
        if not headers.get(b"authorization"):
            return APIError(
                401,
                "You didn't provide an API key. Provide it in an Authorization header: Bearer YOUR_KEY.",
                code="invalid_api_key",
            )
        return APIError(401, "Incorrect API key provided.", code="invalid_api_key")

    def watch(self, key_id: str, end: Callable[[], None]) -> None:
        self._watchers.setdefault(key_id, set()).add(end)

    def unwatch(self, key_id: str, end: Callable[[], None]) -> None:
        watchers = self._watchers.get(key_id)
        if watchers is not None:
            watchers.discard(end)
            if not watchers:
                del self._watchers[key_id]


class ProjectAccess:
    """Pure ASGI middleware: authenticates `/v1/*`, sets the project, applies its rate limits."""

    def __init__(self, app: ASGIApp, directory: Directory) -> None:
        self.app = app
        self.directory = directory

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        directory = self.directory
        headers = dict(scope["headers"])
        if path.startswith("/v1/organization/"):
            if not directory.admin_keys:
                await _send_error(
                    send, APIError(401, "The admin API is off: set THREADLOG_ADMIN_KEYS.", code="invalid_api_key")
                )
                return
            if not holds_key(headers, directory.admin_keys):
                message = "This route needs an admin key (THREADLOG_ADMIN_KEYS)."
                await _send_error(send, APIError(401, message, code="invalid_api_key"))
                return
            token = PROJECT.set(None)
            try:
                await self.app(scope, receive, send)
            finally:
                PROJECT.reset(token)
            return
        identity = directory.identify(headers)
        if isinstance(identity, APIError):
            await _send_error(send, identity)
            return
        project_id, key_id = identity
        info = directory.project(project_id)
        try:
            extra = directory.limiter.admit(
                project_id, info.limits, calls_model=scope["method"] == "POST" and path.endswith(_MODEL_ROUTES)
            )
        except APIError as refused:
            await _send_error(send, refused)
            return
        token = PROJECT.set(project_id)
        scope.setdefault("state", {})["project_id"] = project_id  # for the access log line
        try:
            if key_id is None:
                await self.app(scope, receive, _with_headers(send, extra) if extra else send)
            else:
                await self._revocable(scope, receive, _with_headers(send, extra) if extra else send, key_id)
        finally:
            PROJECT.reset(token)

    async def _revocable(self, scope: Scope, receive: Receive, send: Send, key_id: str) -> None:
        """Run the request so that deleting its key ends it, an open SSE stream included."""
        response: dict[str, Any] = {}
        cancel = anyio.CancelScope()

        def revoked() -> None:
            # A plain request finishes (what it wrote is committed and answered as usual); a
            # stream ends now, or as soon as it starts.
            response["revoked"] = True
            if response.get("stream"):
                cancel.cancel()

        async def tracking(message: Message) -> None:
            if message["type"] == "http.response.start":
                response["stream"] = any(
                    k == b"content-type" and v.startswith(b"text/event-stream") for k, v in message.get("headers", ())
                )
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                response["ended"] = True
            await send(message)
            if response.get("stream") and response.get("revoked"):
                cancel.cancel()

        with cancel:
            self.directory.watch(key_id, revoked)
            try:
                await self.app(scope, receive, tracking)
            finally:
                self.directory.unwatch(key_id, revoked)
        if cancel.cancelled_caught and not response.get("ended"):
            error = APIError(401, "The API key of this request was deleted.", code="invalid_api_key")
            data = json.dumps(error.body()).encode()
            body = b"event: error\ndata: " + data + b"\n\n"
            await send({"type": "http.response.body", "body": body, "more_body": True})
            await send({"type": "http.response.body", "body": b""})


def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *extra]
        await send(message)

    return sending


async def _send_error(send: Send, error: APIError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *error.headers]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
