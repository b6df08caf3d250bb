"""The messages view: snapshots from the run engine, plus the streamed text deltas."""

from __future__ import annotations

from typing import Any

from events.records import StoredEvent
from projections.base import Doc, Projection, existence_preserving
from projections.folds import delete, patch, snapshot


@existence_preserving
def apply_message_delta(doc: Doc | None, event: StoredEvent) -> Doc | None:
    """Fold a `thread.message.delta` into the message, as the SDK's stream helper does."""
    if doc is None:
        return None
    content: list[dict[str, Any]] = list(doc.get("content") or [])
    for part in event.data.get("delta", {}).get("content", []):
        index = int(part["index"])
        if index >= len(content):
            content.extend({} for _ in range(index + 1 - len(content)))
        content[index] = _merge_part(content[index], part)
    return {**doc, "content": content}


def _merge_part(current: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    kind = delta.get("type") or current.get("type")
    if kind != "text":
        merged = {**current, **{k: v for k, v in delta.items() if k != "index"}}
        return merged
    text = dict(current.get("text") or {"value": "", "annotations": []})
    text_delta = delta.get("text") or {}
    text["value"] = (text.get("value") or "") + (text_delta.get("value") or "")
    annotations = list(text.get("annotations") or [])
    for annotation in text_delta.get("annotations") or []:
        position = annotation.get("index", len(annotations))
        clean = {k: v for k, v in annotation.items() if k != "index"}
        if position < len(annotations):
            annotations[position] = {**annotations[position], **clean}
        else:
            annotations.append(clean)
    text["annotations"] = annotations
    return {"type": "text", "text": text}


_SNAPSHOTS = (
    "thread.message.created",
    "thread.message.in_progress",
    "thread.message.completed",
    "thread.message.incomplete",
)

MESSAGES = Projection(
    kind="message",
    folds={
        **{name: snapshot for name in _SNAPSHOTS},
        "thread.message.delta": apply_message_delta,
        "thread.message.updated": patch,
        "thread.message.deleted": delete,
    },
    parent_field="thread_id",
    run_field="run_id",
)
