"""The messages view: snapshots from the run engine; its streamed text deltas are folded live (projections/live.py)."""

from __future__ import annotations

from projections.base import Projection
from projections.folds import create, delete, patch, snapshot

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
        "thread.message.created": create,
        "thread.message.updated": patch,
        "thread.message.deleted": delete,
    },
    parent_field="thread_id",
    run_field="run_id",
    streamed=frozenset({"thread.message.delta"}),
)
