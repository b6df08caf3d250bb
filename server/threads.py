"""Thread-level decisions shared by routes and the run engine.

Anything that must hold across a thread (one active run at a time, no new user message
while a run is active) is decided against the thread's stream version and appended with
that version expected, so two racing requests cannot both pass the check.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from events.records import NewEvent, StoredEvent
from events.store import ConcurrencyError
from server.errors import APIError, bad_request, not_found
from server.ids import new_id
from server.models.threads import CreateMessage
from server.services import Services

__all__ = [
    "ACTIVE_RUN_STATUSES",
    "TERMINAL_RUN_STATUSES",
    "active_run",
    "append_decided",
    "message_object",
    "require_thread",
]

ACTIVE_RUN_STATUSES = ("queued", "in_progress", "requires_action", "cancelling")
TERMINAL_RUN_STATUSES = ("completed", "failed", "cancelled", "expired", "incomplete")


async def require_thread(svc: Services, thread_id: str) -> dict[str, Any]:
    thread = await svc.views.get("thread", thread_id)
    if thread is None:
        raise not_found("thread", thread_id)
    return thread


async def active_run(svc: Services, thread_id: str) -> dict[str, Any] | None:
    runs = await svc.views.find("run", thread_id, ACTIVE_RUN_STATUSES)
    return dict(runs[0]) if runs else None


async def append_decided(
    svc: Services,
    stream_id: str,
    decide: Callable[[int], Awaitable[list[NewEvent]]],
    attempts: int = 8,
    *,
    on_enqueued: Callable[[asyncio.Future[list[StoredEvent]]], None] | None = None,
) -> list[StoredEvent]:
    """Read the stream version, decide (may raise APIError), append expecting that version.

    Decisions on one stream take turns in this process, so concurrent requests on one
    thread (say, many messages added at once) do not keep invalidating each other's
    expected version; on a race lost to an append made outside this path, the decision
    is made again on fresh state. `decide` must not itself call `append_decided` on the
    same stream. `on_enqueued` gets each attempt's pending append before it commits (a
    run starts its model call meanwhile; the append's outcome tells it whether it exists).
    """
    locks: _StreamLocks = svc.extras.setdefault("stream_decision_locks", _StreamLocks())
    async with locks.hold(stream_id):
        for _ in range(attempts):
            version = await svc.store.stream_version(stream_id)
            events = await decide(version)
            if not events:
                return []
            pending = svc.store.enqueue(stream_id, events, expected_version=version)
            if on_enqueued is not None:
                on_enqueued(pending)
            try:
                return await pending
            except ConcurrencyError:
                continue
    raise APIError(409, "The thread changed too often while handling this request; try again.")


class _StreamLocks:
    """One asyncio lock per stream with waiters, dropped when the last holder leaves."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, stream_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(stream_id, (None, 0))
        lock = lock or asyncio.Lock()
        self._locks[stream_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            _, users = self._locks[stream_id]
            if users == 1:
                del self._locks[stream_id]
            else:
                self._locks[stream_id] = (lock, users - 1)


def message_object(
    thread_id: str,
    request: CreateMessage,
    *,
    created_at: int | None = None,
    message_id: str | None = None,
) -> dict[str, Any]:
    """A completed message as stored from a create-message request."""
    content: list[dict[str, Any]]
    if isinstance(request.content, str):
        content = [{"type": "text", "text": {"value": request.content, "annotations": []}}]
    else:
        content = []
        for part in request.content:
            if part.type == "text":
                content.append({"type": "text", "text": {"value": part.text, "annotations": []}})
            elif part.type == "image_file":
                content.append({"type": "image_file", "image_file": part.image_file.model_dump(exclude_none=True)})
            else:
                content.append({"type": "image_url", "image_url": part.image_url.model_dump(exclude_none=True)})
    attachments = [
        {"file_id": a.file_id, "tools": [{"type": t.type} for t in a.tools]} for a in request.attachments or []
    ]
    return {
        "id": message_id or new_id("msg_"),
        "object": "thread.message",
        "created_at": created_at if created_at is not None else int(time.time()),
        "thread_id": thread_id,
        "status": "completed",
        "incomplete_details": None,
        "completed_at": None,
        "incomplete_at": None,
        "role": request.role,
        "content": content,
        "assistant_id": None,
        "run_id": None,
        "attachments": attachments,
        "metadata": request.metadata or {},
    }


async def check_attachments(svc: Services, messages: list[CreateMessage], param: str) -> None:
    for i, message in enumerate(messages):
        for j, attachment in enumerate(message.attachments or []):
            if await svc.views.get("file", attachment.file_id) is None:
                raise bad_request(
                    f"No file found with id '{attachment.file_id}'.", f"{param}[{i}].attachments[{j}].file_id"
                )
        if not isinstance(message.content, str):
            for j, part in enumerate(message.content):
                if part.type == "image_file" and await svc.views.get("file", part.image_file.file_id) is None:
                    raise bad_request(
                        f"No file found with id '{part.image_file.file_id}'.",
                        f"{param}[{i}].content[{j}].image_file.file_id",
                    )


async def attach_search_files(svc: Services, thread_id: str, messages: list[CreateMessage]) -> None:
    """Files attached for file_search join the thread's vector store (created on first use)."""
    file_ids = [
        a.file_id for m in messages for a in m.attachments or [] if any(t.type == "file_search" for t in a.tools)
    ]
    stores = svc.extras.get("vector_stores")
    if file_ids and stores is not None:
        await stores.attach_for_search(thread_id, file_ids)
