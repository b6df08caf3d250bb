"""Server-sent events of a run, read from the log: the same bytes live, resumed or replayed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Message, Send

from events.log import EventLog
from events.records import RUN_END_TYPES, StoredEvent, encode
from server import metrics

__all__ = ["OPENAI_STREAM_EVENTS", "encode_item", "run_stream", "run_stream_response", "without_content"]

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
    store: EventLog,
    run_id: str,
    *,
    after: int,
    stop_at_requires_action: bool = True,
    prefix: Sequence[StoredEvent] = (),
    redact: frozenset[str] = frozenset(),
) -> AsyncIterator[bytes]:
    """The run's events after `after` as SSE bytes, then `done` once the run ends (or pauses).

    Each chunk holds every event that committed while the client took the previous one:
    an idle stream sends each event as soon as it exists, and a client that falls behind
    a busy run gets one write for many events. Messages named in `redact` (deleted since)
    are replayed without their content.
    """
    metrics.SSE_STREAMS.inc()
    try:
        if prefix:
            yield b"".join(_encoded(event, redact) for event in prefix)
            after = max(after, prefix[-1].sequence)
        ended = False
        async for batch in store.subscribe_batches(after=after, run_id=run_id):
            parts = []
            for event in batch:
                if event.type not in OPENAI_STREAM_EVENTS:
                    continue
                parts.append(_encoded(event, redact))
                if event.type in RUN_END_TYPES or (stop_at_requires_action and event.type == _PAUSE):
                    ended = True
                    break
            if ended:
                parts.append(_DONE)
                yield b"".join(parts)
                return
            if parts:
                yield b"".join(parts) if len(parts) > 1 else parts[0]
    finally:
        metrics.SSE_STREAMS.dec()


def run_stream_response(
    store: EventLog,
    run_id: str,
    *,
    after: int,
    stop_at_requires_action: bool = True,
    prefix: Sequence[StoredEvent] = (),
    redact: frozenset[str] = frozenset(),
) -> EventSourceResponse:
    # The run lives on without the client: closing the connection only stops this reader.
    chunks = run_stream(
        store, run_id, after=after, stop_at_requires_action=stop_at_requires_action, prefix=prefix, redact=redact
    )
    return _EventStream(chunks, ping=_PING_S, ping_message_factory=_KeepAlive)


class _EventStream(EventSourceResponse):
    """sse-starlette's response, sending each chunk without a cancel scope around it.

    Its `send_timeout` wraps every send in an anyio cancel scope, a measurable share of a
    streamed token's cost; with no timeout set (ours) that scope can never fire, so the
    chunk goes to the server directly. A client that stops reading only holds up its own
    stream: the run goes on, and its reader catches up from the log.
    """

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        if self.send_timeout is not None:
            await super()._send_with_timeout(send, message)
            return
        try:
            await send(message)
        except BaseException:
            self._send_interrupted = True
            raise


def encode_item(item: dict[str, str]) -> bytes:
    """One SSE item: the bytes sse-starlette's `ServerSentEvent.encode()` makes, built directly.

    Ids, event names and compact JSON hold no line breaks, so one `data:` line carries it;
    this runs once per delta, and the general encoder costs ten times as much.
    """
    out = f"id: {item['id']}\r\n" if "id" in item else ""
    if "event" in item:
        out += f"event: {item['event']}\r\n"
    return f"{out}data: {item['data']}\r\n\r\n".encode()


_DONE = encode_item({"event": "done", "data": "[DONE]"})


def _encoded(event: StoredEvent, redact: frozenset[str]) -> bytes:
    data = event.data_json
    if redact and event.type.startswith("thread.message.") and event.data.get("id") in redact:
        data = encode(without_content(event.data))
    return encode_item({"id": str(event.sequence), "event": event.type, "data": data})


def without_content(data: dict[str, Any]) -> dict[str, Any]:
    """A message event's payload (snapshot or delta) with its content taken out."""
    data = dict(data)
    if "content" in data:
        data["content"] = []
    if isinstance(data.get("delta"), dict):
        data["delta"] = {**data["delta"], "content": []}
    return data
