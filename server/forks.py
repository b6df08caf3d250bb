"""A thread as it was at one point of its log, as the events of a new thread (fork, re-run).

The fork folds the thread's own events up to the chosen sequence with the same projections
the server keeps its views with, so its messages, tool resources and metadata are exactly
the original's at that point; they become a new thread under new ids, in one append that
also records where it came from (`threadlog.thread.forked`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from events.records import NewEvent, StoredEvent
from projections import build_projector
from projections.base import View, ViewKey
from server.errors import bad_request, not_found
from server.ids import new_id
from server.services import Services

__all__ = ["Fork", "cutoff_for", "fork_thread"]


@dataclass(frozen=True)
class Fork:
    thread_id: str
    events: list[NewEvent]
    messages: list[dict[str, Any]]  # the new thread's messages, oldest first
    at_sequence: int


async def cutoff_for(
    svc: Services,
    thread_id: str,
    *,
    at_sequence: int | None = None,
    before_run: str | None = None,
    after_message: str | None = None,
) -> int:
    """The last sequence a fork keeps, from exactly one of the three ways to name it."""
    given = [name for name, value in (("at_sequence", at_sequence), ("before_run", before_run),
                                      ("after_message", after_message)) if value is not None]  # fmt: skip
    if len(given) != 1:
        raise bad_request("Give exactly one of 'at_sequence', 'before_run' or 'after_message'.", "at_sequence")
    events = await _thread_events(svc, thread_id)
    if at_sequence is not None:
        if at_sequence < 0:
            raise bad_request("'at_sequence' must be a sequence number of the log (0 or more).", "at_sequence")
        return at_sequence
    if before_run is not None:
        run = await svc.views.get("run", before_run)
        if run is None or run.get("thread_id") != thread_id:
            raise not_found("run", before_run, "before_run")
        created = next(e for e in events if e.type == "thread.run.created" and e.data.get("id") == before_run)
        # The run's additional_messages are in its creating append, before thread.run.created: kept.
        return created.sequence - 1
    assert after_message is not None
    message = await svc.views.get("message", after_message)
    if message is None or message.get("thread_id") != thread_id:
        raise not_found("message", after_message, "after_message")
    return max(e.sequence for e in events if e.type.startswith("thread.message") and e.data.get("id") == after_message)


async def fork_thread(
    svc: Services, thread_id: str, at_sequence: int, metadata: dict[str, str] | None = None, **source: Any
) -> Fork:
    """The events that make a copy of `thread_id` as of `at_sequence`, and its messages."""
    events = [e for e in await _thread_events(svc, thread_id) if e.sequence <= at_sequence]
    if not events:
        raise bad_request(f"Thread {thread_id} did not exist yet at sequence {at_sequence}.", "at_sequence")
    projector = build_projector()
    views: dict[ViewKey, View | None] = {}
    for event in events:
        projector.fold_event(event, views, views.get)
    thread = views.get(("thread", thread_id))
    if thread is None:
        raise bad_request(f"Thread {thread_id} was deleted at sequence {at_sequence}.", "at_sequence")
    stamp = int(time.time())
    new_thread_id = new_id("thread_")
    new_thread = {
        **thread.doc,
        "id": new_thread_id,
        "created_at": stamp,
        "metadata": (thread.doc.get("metadata") or {}) if metadata is None else metadata,
    }
    kept = sorted(
        ((key, view) for key, view in views.items() if key[0] == "message" and view is not None),
        key=lambda item: item[1].ordinal,  # type: ignore[union-attr]
    )
    messages = []
    for (_, message_id), view in kept:
        assert view is not None
        doc = view.doc
        if doc.get("status") == "in_progress":  # cut mid-stream: the text it had by then
            own = [e for e in events if e.data.get("id") == message_id]
            doc = projector.fold_streamed("message", own) or doc
            doc = {**doc, "status": "incomplete", "incomplete_details": {"reason": "run_cancelled"}}
        messages.append({**doc, "id": new_id("msg_"), "thread_id": new_thread_id, "run_id": None})
    forked = {"id": new_thread_id, "source_thread_id": thread_id, "at_sequence": at_sequence, **source}
    new_events = [
        NewEvent("thread.created", new_thread),
        NewEvent("threadlog.thread.forked", forked),
        *(NewEvent("thread.message.created", m) for m in messages),
    ]
    return Fork(new_thread_id, new_events, messages, at_sequence)


async def _thread_events(svc: Services, thread_id: str) -> list[StoredEvent]:
    thread = await svc.views.get("thread", thread_id)
    if thread is None:
        raise not_found("thread", thread_id)
    return await svc.store.read(stream_id=thread_id, limit=100_000_000)
