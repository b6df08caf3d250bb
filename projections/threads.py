"""The threads view."""

from projections.base import Projection
from projections.folds import create, delete, patch

THREADS = Projection(
    kind="thread",
    folds={"thread.created": create, "thread.updated": patch, "thread.deleted": delete},
)
