"""Event records: what callers append and what the log gives back.

Events are immutable. A stored event carries its payload both parsed (for folds) and as
the exact JSON text that was committed, so SSE can send the bytes that were stored without
re-encoding them, and a replayed stream is byte-for-byte what a live client saw.
"""

from __future__ import annotations

import contextvars
import json
from dataclasses import dataclass, field
from typing import Any, TypeVar, dataclass_transform

import orjson

_T = TypeVar("_T")

SCHEMA_VERSION = 1
"""Version of the payload schemas; bumped (with an upcaster) if an event's shape changes."""

RUN_END_TYPES = frozenset(
    f"thread.run.{status}" for status in ("completed", "incomplete", "failed", "cancelled", "expired")
)
"""The events that end a run for good (a run in `requires_action` is paused, not ended)."""

DELTA_TYPES = ("thread.message.delta", "thread.run.step.delta")
"""A streamed run's many small events; every one lies between its run's first event and its end."""

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("threadlog_request_id", default=None)
"""The id of the API request being handled (its `x-request-id`), set by the server for the
request's whole life; a run's task inherits it. Every append records it with its events, so a
log line and the events one request caused can be matched."""

DEFAULT_PROJECT = "proj_default"
"""The project of events written before projects existed, and of every request made with a key
from THREADLOG_API_KEYS (or with auth off)."""

PROJECT: contextvars.ContextVar[str | None] = contextvars.ContextVar("threadlog_project", default=None)
"""The project the current request acts in, set by the server from the request's key (see
server/projects.py) and inherited by the tasks the request starts. Appends to a new stream put
it in this project; reads of the views see only its objects. None: the server's own work
(recovery, expiry), which sees every project and appends in each stream's own project."""


@dataclass_transform(frozen_default=True)
def _record(cls: type[_T]) -> type[_T]:
    """A record: immutable, as the type checker enforces it for a frozen dataclass. At run time a
    plain slotted dataclass: a frozen one's __init__ sets each field through object.__setattr__
    (2.0 us for a StoredEvent against 0.3 us), and one is made per streamed token."""
    return dataclass(slots=True, unsafe_hash=True)(cls)


@_record
class NewEvent:
    """An event not yet in the log."""

    type: str
    data: dict[str, Any]
    run_id: str | None = None


@_record
class StoredEvent:
    """An event as committed: position in the log, position in its stream, payload."""

    sequence: int
    stream_id: str
    version: int
    type: str
    data_json: str
    created_at: float
    run_id: str | None = None
    schema_version: int = SCHEMA_VERSION
    _data: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    request_id: str | None = None  # the request that caused the append (None: recovery, expiry...)
    project_id: str = DEFAULT_PROJECT  # the project of the event's stream

    @property
    def data(self) -> dict[str, Any]:
        """The payload, parsed once on demand (events read back from disk start unparsed)."""
        if self._data is None:
            object.__setattr__(self, "_data", orjson.loads(self.data_json))
        assert self._data is not None
        return self._data

    def as_public(self) -> dict[str, Any]:
        """The shape of our `/events` debugging endpoints."""
        return {
            "object": "thread.event",
            "sequence": self.sequence,
            "stream_id": self.stream_id,
            "version": self.version,
            "type": self.type,
            "run_id": self.run_id,
            "created_at": self.created_at,
            "schema_version": self.schema_version,
            "request_id": self.request_id,
            "project_id": self.project_id,
            "data": self.data,
        }


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode(data: dict[str, Any]) -> str:
    """Canonical JSON for payloads: compact, UTF-8 text unescaped, stable so replays compare equal.

    orjson writes what `json.dumps(data, separators=(",", ":"), ensure_ascii=False)` writes
    in a tenth of the time (this runs once per streamed token); what it refuses (integers
    beyond 64 bits, non-string keys) goes through the standard encoder.
    """
    try:
        return orjson.dumps(data).decode()
    except TypeError:
        return _ENCODER.encode(data)
