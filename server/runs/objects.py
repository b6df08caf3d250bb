"""Builders for the run, step and message objects and the delta events of a run, in OpenAI's shapes."""

from __future__ import annotations

import time
from typing import Any

from events.records import NewEvent
from server.ids import new_id

__all__ = [
    "message_event",
    "new_assistant_message",
    "new_step",
    "now",
    "queued_run_state",
    "run_event",
    "step_event",
    "text_delta",
    "tool_call_delta",
]


def now() -> int:
    return int(time.time())


def queued_run_state(created_at: int, expiry_s: int) -> dict[str, Any]:
    """The fields of a run that has just been created and not started yet."""
    return {
        "created_at": created_at,
        "status": "queued",
        "required_action": None,
        "last_error": None,
        "expires_at": created_at + expiry_s,
        "started_at": None,
        "cancelled_at": None,
        "failed_at": None,
        "completed_at": None,
        "incomplete_details": None,
        "usage": None,
    }


def new_step(run: dict[str, Any], step_type: str, details: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": new_id("step_"),
        "object": "thread.run.step",
        "created_at": now(),
        "run_id": run["id"],
        "assistant_id": run["assistant_id"],
        "thread_id": run["thread_id"],
        "type": step_type,
        "status": "in_progress",
        "cancelled_at": None,
        "completed_at": None,
        "expired_at": None,
        "failed_at": None,
        "last_error": None,
        "step_details": details,
        "usage": None,
        "metadata": {},
    }


def new_assistant_message(run: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": new_id("msg_"),
        "object": "thread.message",
        "created_at": now(),
        "thread_id": run["thread_id"],
        "status": "in_progress",
        "incomplete_details": None,
        "completed_at": None,
        "incomplete_at": None,
        "role": "assistant",
        "content": [],
        "assistant_id": run["assistant_id"],
        "run_id": run["id"],
        "attachments": [],
        "metadata": {},
    }


def run_event(run: dict[str, Any]) -> NewEvent:
    """A `thread.run.<status>` event carrying a copy of the whole run."""
    return NewEvent(f"thread.run.{run['status']}", _copy(run), run_id=run["id"])


def step_event(step: dict[str, Any], name: str | None = None, prefix: str = "thread.run.step.") -> NewEvent:
    return NewEvent(f"{prefix}{name or step['status']}", _copy(step), run_id=step["run_id"])


def message_event(message: dict[str, Any], name: str | None = None) -> NewEvent:
    return NewEvent(f"thread.message.{name or message['status']}", _copy(message), run_id=message["run_id"])


def text_delta(message: dict[str, Any], index: int, value: str, first: bool) -> NewEvent:
    text: dict[str, Any] = {"value": value}
    if first:
        text["annotations"] = []
    data = {
        "id": message["id"],
        "object": "thread.message.delta",
        "delta": {"content": [{"index": index, "type": "text", "text": text}]},
    }
    return NewEvent("thread.message.delta", data, run_id=message["run_id"])


def content_part_delta(message: dict[str, Any], index: int, part: dict[str, Any]) -> NewEvent:
    data = {
        "id": message["id"],
        "object": "thread.message.delta",
        "delta": {"content": [{"index": index, **_copy(part)}]},
    }
    return NewEvent("thread.message.delta", data, run_id=message["run_id"])


def annotations_delta(message: dict[str, Any], index: int, annotations: list[dict[str, Any]]) -> NewEvent:
    items = [{"index": i, **a} for i, a in enumerate(annotations)]
    data = {
        "id": message["id"],
        "object": "thread.message.delta",
        "delta": {"content": [{"index": index, "type": "text", "text": {"annotations": items}}]},
    }
    return NewEvent("thread.message.delta", data, run_id=message["run_id"])


def tool_call_delta(step: dict[str, Any], calls: list[dict[str, Any]], copy: bool = True) -> NewEvent:
    """`copy=False` when the caller hands over dicts it never touches again."""
    data = {
        "id": step["id"],
        "object": "thread.run.step.delta",
        "delta": {"step_details": {"type": "tool_calls", "tool_calls": _copy_list(calls) if copy else calls}},
    }
    return NewEvent("thread.run.step.delta", data, run_id=step["run_id"])


def _copy_list(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    import copy

    return copy.deepcopy(items)


def _copy(obj: dict[str, Any]) -> dict[str, Any]:
    """Deep enough that later in-place changes by the engine never reach a stored event."""
    import copy

    return copy.deepcopy(obj)
