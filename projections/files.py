"""Files, vector stores, their files and file batches."""

from projections.base import Projection
from projections.folds import create, delete, patch, snapshot

FILES = Projection(kind="file", folds={"file.created": create, "file.deleted": delete})

VECTOR_STORES = Projection(
    kind="vector_store",
    folds={"vector_store.created": create, "vector_store.updated": patch, "vector_store.deleted": delete},
)

VECTOR_STORE_FILES = Projection(
    kind="vector_store_file",
    folds={
        "vector_store.file.created": snapshot,
        "vector_store.file.in_progress": snapshot,
        "vector_store.file.completed": snapshot,
        "vector_store.file.failed": snapshot,
        "vector_store.file.cancelled": snapshot,
        "vector_store.file.updated": patch,
        "vector_store.file.deleted": delete,
    },
    parent_field="vector_store_id",
    key=lambda data: f"{data['vector_store_id']}/{data['id']}",
)

FILE_BATCHES = Projection(
    kind="file_batch",
    folds={
        "vector_store.file_batch.created": snapshot,
        "vector_store.file_batch.completed": snapshot,
        "vector_store.file_batch.cancelled": snapshot,
    },
    parent_field="vector_store_id",
)
