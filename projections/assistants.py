"""The assistants view."""

from projections.base import Projection
from projections.folds import delete, patch, snapshot

ASSISTANTS = Projection(
    kind="assistant",
    folds={"assistant.created": snapshot, "assistant.updated": patch, "assistant.deleted": delete},
)
