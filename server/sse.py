"""Server-sent events of a run, read from the log: the same bytes live, resumed or replayed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent

from events.records import StoredEvent, encode
from events.store import EventStore

__all__ = ["OPENAI_STREAM_EVENTS", "batched", "encode_item", "run_stream", "run_stream_response", "without_content"]

_RUN_END = {
    "thread.run.completed",
    "thread.run.incomplete",
    "thread.run.failed",
    "thread.run.cancelled",
    "thread.run.expired",
}
_PAUSE = "thread.run.requires_action"
_PING_S = 15.0  # a comment line keeps idle connections (and proxies) from timing out


class _KeepAlive(ServerSentEvent):
    """A comment line with no blank line after it: bytes on the wire, never an event.

    sse-starlette's ping is a comment plus a blank line. Per the SSE spec a blank line
    dispatches an event whenever a last event id is set, and every event of ours carries
    an id: the openai Python SDK then hands `data: ""` to `json.loads` and the stream
    crashes. A comment line alone is skipped by every decoder (browsers, Python, Node),
    and the next event's lines simply follow it.
    """

    def encode(self) -> bytes:
        return b": keep-alive\r\n"


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
    redact: frozenset[str] = frozenset(),
) -> AsyncIterator[dict[str, str]]:
    """The run's events after `after` as SSE items, then `done` once the run ends (or pauses).

    Messages named in `redact` (deleted since) are replayed without their content.
    """
    for event in prefix:
        yield _item(event)
        after = max(after, event.sequence)
    async for event in store.subscribe(after=after, run_id=run_id):
        if event.type not in OPENAI_STREAM_EVENTS:
            continue
        if redact and event.type.startswith("thread.message.") and event.data.get("id") in redact:
            yield _redacted(event)
        else:
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
    redact: frozenset[str] = frozenset(),
) -> EventSourceResponse:
    # The run lives on without the client: closing the connection only stops this reader.
    items = run_stream(
        store, run_id, after=after, stop_at_requires_action=stop_at_requires_action, prefix=prefix, redact=redact
    )
    return EventSourceResponse(batched(items), ping=_PING_S, ping_message_factory=_KeepAlive)


async def batched(items: AsyncIterator[dict[str, str]]) -> AsyncIterator[bytes]:
    """The encoded items, every item that is ready by the time the client takes more as one chunk.

    A client that falls behind a busy run gets one write for many events instead of one each,
    while an idle stream still sends each event as soon as it exists. Closing this generator
    (the client went away) stops the reader and closes `items`.
    """
    pending: list[bytes] = []
    ready = asyncio.Event()
    finished = False

    async def read() -> None:
        nonlocal finished
        try:
            async for item in items:
                pending.append(encode_item(item))
                ready.set()
        finally:
            finished = True
            ready.set()

    reader = asyncio.create_task(read())
    try:
        while True:
            await ready.wait()
            ready.clear()
            if pending:
                chunk = b"".join(pending) if len(pending) > 1 else pending[0]
                pending.clear()
                yield chunk
            if finished and not pending:
                break
        await reader  # re-raises what stopped the reader, if anything did
    finally:
        if not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


def encode_item(item: dict[str, str]) -> bytes:
    """One SSE item: the bytes sse-starlette's `ServerSentEvent.encode()` makes, built directly.

    Ids, event names and compact JSON hold no line breaks, so one `data:` line carries it;
    this runs once per delta, and the general encoder costs ten times as much.
    """
    out = f"id: {item['id']}\r\n" if "id" in item else ""
    if "event" in item:
        out += f"event: {item['event']}\r\n"
    return f"{out}data: {item['data']}\r\n\r\n".encode()


def _item(event: StoredEvent) -> dict[str, str]:
    return {"id": str(event.sequence), "event": event.type, "data": event.data_json}


def _redacted(event: StoredEvent) -> dict[str, str]:
    return {"id": str(event.sequence), "event": event.type, "data": encode(without_content(event.data))}


def without_content(data: dict[str, Any]) -> dict[str, Any]:
    """A message event's payload (snapshot or delta) with its content taken out."""
    data = dict(data)
    if "content" in data:
        data["content"] = []
    if isinstance(data.get("delta"), dict):
        data["delta"] = {**data["delta"], "content": []}
    return data
