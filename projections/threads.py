"""The threads view."""

from projections.base import Projection
from projections.folds import delete, patch, snapshot

THREADS = Projection(
    kind="thread",
    folds={"thread.created": snapshot, "thread.updated": patch, "thread.deleted": delete},
)
