"""The runs and run steps views; every run status event carries the whole run."""

from __future__ import annotations

import copy
from typing import Any

from events.records import StoredEvent
from projections.base import Doc, Projection, existence_preserving
from projections.folds import patch, snapshot

RUN_STATUS_EVENTS = (
    "thread.run.created",
    "thread.run.queued",
    "thread.run.in_progress",
    "thread.run.requires_action",
    "thread.run.completed",
    "thread.run.incomplete",
    "thread.run.failed",
    "thread.run.cancelling",
    "thread.run.cancelled",
    "thread.run.expired",
)
STEP_STATUS_EVENTS = (
    "thread.run.step.created",
    "thread.run.step.in_progress",
    "thread.run.step.completed",
    "thread.run.step.failed",
    "thread.run.step.cancelled",
    "thread.run.step.expired",
)


@existence_preserving
def apply_step_delta(doc: Doc | None, event: StoredEvent) -> Doc | None:
    """Fold a `thread.run.step.delta`: tool calls merge by index, strings concatenate."""
    if doc is None:
        return None
    details_delta = event.data.get("delta", {}).get("step_details") or {}
    details = dict(doc.get("step_details") or {})
    if details_delta.get("type") == "tool_calls":
        calls: list[dict[str, Any]] = list(details.get("tool_calls") or [])
        for call in details_delta.get("tool_calls") or []:
            index = int(call["index"])
            while len(calls) <= index:
                calls.append({})
            calls[index] = merge_delta(calls[index], {k: v for k, v in call.items() if k != "index"})
        details["tool_calls"] = calls
    return {**doc, "step_details": details}


def merge_delta(current: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """The SDK's delta merge: strings concatenate, dicts recurse, lists merge by `index`."""
    merged = dict(current)
    for key, value in delta.items():
        old = merged.get(key)
        if isinstance(value, str) and isinstance(old, str) and key not in ("type", "id", "name"):
            merged[key] = old + value
        elif isinstance(value, dict) and isinstance(old, dict):
            merged[key] = merge_delta(old, value)
        elif isinstance(value, dict):
            merged[key] = merge_delta({}, value)  # never alias the event's own dicts
        elif isinstance(value, list) and isinstance(old, list):
            items = list(old)
            for item in value:
                if isinstance(item, dict) and "index" in item:
                    position = int(item["index"])
                    body = {k: v for k, v in item.items() if k != "index"}
                    while len(items) <= position:
                        items.append({})
                    items[position] = merge_delta(items[position], body)
                else:
                    items.append(copy.deepcopy(item))
            merged[key] = items
        elif isinstance(value, list):
            merged[key] = merge_delta({"_": []}, {"_": value})["_"]
        else:
            merged[key] = value
    return merged


RUNS = Projection(
    kind="run",
    folds={**{name: snapshot for name in RUN_STATUS_EVENTS}, "thread.run.updated": patch},
    parent_field="thread_id",
)

STEPS = Projection(
    kind="step",
    folds={**{name: snapshot for name in STEP_STATUS_EVENTS}, "thread.run.step.delta": apply_step_delta},
    parent_field="run_id",
    run_field="run_id",
)

TOOL_OUTPUTS = Projection(
    kind="tool_output",
    folds={"threadlog.tool_call.output": snapshot},
    parent_field="run_id",
    run_field="run_id",
)
"""What built-in tools returned to the model, per call: Threadlog's own record, not OpenAI's."""

STEP_USAGE = Projection(
    kind="step_usage",
    folds={"threadlog.step.usage": snapshot},
    parent_field="run_id",
)
"""Usage of a model turn whose tool_calls step waits for outputs (OpenAI shows step usage only once done)."""
