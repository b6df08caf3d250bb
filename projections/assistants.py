"""The assistants view."""

from projections.base import Projection
from projections.folds import create, delete, patch

ASSISTANTS = Projection(
    kind="assistant",
    folds={"assistant.created": create, "assistant.updated": patch, "assistant.deleted": delete},
)
