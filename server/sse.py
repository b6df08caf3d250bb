"""Server-sent events of a run, read from the log: the same bytes live, resumed or replayed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from events.records import StoredEvent
from events.store import EventStore

__all__ = ["OPENAI_STREAM_EVENTS", "SSEResponse", "encode_item", "run_stream", "run_stream_response"]

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
) -> SSEResponse:
    # The run lives on without the client: closing the connection only stops this reader.
    return SSEResponse(
        run_stream(store, run_id, after=after, stop_at_requires_action=stop_at_requires_action, prefix=prefix)
    )


class SSEResponse(Response):
    """An SSE response that writes every event that is ready in one go.

    A reader task turns items into bytes; the writer sends whatever has gathered since its
    last send, so a client that falls behind a busy run gets one write for many events
    instead of one each, while an idle stream still sends each event as soon as it exists.
    The bytes are those sse-starlette writes (`id:`, `event:`, `data:` lines, CRLF); a
    comment line keeps idle connections alive; a client going away stops the reader.
    """

    media_type = "text/event-stream"

    def __init__(self, items: AsyncIterator[dict[str, str]], ping_s: float = 15.0) -> None:
        self.items = items
        self.ping_s = ping_s
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"connection", b"keep-alive"),
            (b"x-accel-buffering", b"no"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pending: list[bytes] = []
        ready = asyncio.Event()
        finished = False

        async def read() -> None:
            nonlocal finished
            try:
                async for item in self.items:
                    pending.append(encode_item(item))
                    ready.set()
            finally:
                finished = True
                ready.set()

        async def write() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            while True:
                if not pending and not finished:
                    try:
                        async with asyncio.timeout(self.ping_s):
                            await ready.wait()
                    except TimeoutError:
                        pending.append(b": ping\r\n\r\n")
                ready.clear()
                if pending:
                    body = b"".join(pending) if len(pending) > 1 else pending[0]
                    pending.clear()
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                if finished and not pending:
                    break
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        reader = asyncio.create_task(read())
        writer = asyncio.create_task(write())
        watcher = asyncio.create_task(watch())
        try:
            await asyncio.wait({writer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, writer, watcher):
                task.cancel()
            await asyncio.gather(reader, writer, watcher, return_exceptions=True)
            aclose = getattr(self.items, "aclose", None)
            if aclose is not None:
                await aclose()
        if writer.done() and not writer.cancelled():
            error = writer.exception()
            if error is not None and not isinstance(error, OSError):
                raise error


def encode_item(item: dict[str, str]) -> bytes:
    """One SSE item as sse-starlette encodes it (our ids, names and compact JSON hold no newlines)."""
    out = ""
    if "id" in item:
        out += f"id: {item['id']}\r\n"
    if "event" in item:
        out += f"event: {item['event']}\r\n"
    out += f"data: {item['data']}\r\n\r\n"
    return out.encode()


def _item(event: StoredEvent) -> dict[str, str]:
    return {"id": str(event.sequence), "event": event.type, "data": event.data_json}
