"""Server-sent events of a run, read from the log: the same bytes live, resumed or replayed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from sse_starlette import EventSourceResponse

from events.records import StoredEvent
from events.store import EventStore

__all__ = ["OPENAI_STREAM_EVENTS", "run_stream", "run_stream_response"]

_RUN_END = {
    "thread.run.completed",
    "thread.run.incomplete",
    "thread.run.failed",
    "thread.run.cancelled",
    "thread.run.expired",
}
_PAUSE = "thread.run.requires_action"

OPENAI_STREAM_EVENTS = frozenset(
    {"thread.created", "error"}
    | {
        f"thread.run.{s}"
        for s in (
            "created",
            "queued",
            "in_progress",
            "requires_action",
            "completed",
            "incomplete",
            "failed",
            "cancelling",
            "cancelled",
            "expired",
        )
    }
    | {
        f"thread.run.step.{s}"
        for s in ("created", "in_progress", "delta", "completed", "failed", "cancelled", "expired")
    }
    | {f"thread.message.{s}" for s in ("created", "in_progress", "delta", "completed", "incomplete")}
)
"""Only OpenAI's event types go on the wire; our own (threadlog.*, updates) stay in the log."""


async def run_stream(
    store: EventStore,
    run_id: str,
    *,
    after: int,
    stop_at_requires_action: bool = True,
    prefix: Sequence[StoredEvent] = (),
) -> AsyncIterator[dict[str, str]]:
    """The run's events after `after` as SSE items, then `done` once the run ends (or pauses)."""
    for event in prefix:
        yield _item(event)
        after = max(after, event.sequence)
    async for event in store.subscribe(after=after, run_id=run_id):
        if event.type not in OPENAI_STREAM_EVENTS:
            continue
        yield _item(event)
        if event.type in _RUN_END or (stop_at_requires_action and event.type == _PAUSE):
            break
    yield {"event": "done", "data": "[DONE]"}


def run_stream_response(
    store: EventStore,
    run_id: str,
    *,
    after: int,
    stop_at_requires_action: bool = True,
    prefix: Sequence[StoredEvent] = (),
) -> EventSourceResponse:
    # The run lives on without the client: closing the connection only stops this reader.
    return EventSourceResponse(
        run_stream(store, run_id, after=after, stop_at_requires_action=stop_at_requires_action, prefix=prefix),
        ping=15,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _item(event: StoredEvent) -> dict[str, str]:
    return {"id": str(event.sequence), "event": event.type, "data": event.data_json}
