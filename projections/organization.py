"""Projects, their service accounts and API keys: the admin API's views.

Admin events live in the project's own stream (its id), so a project's whole history reads
in order with `threadlog events --stream proj_…`. Each records who acted (`actor`, a
fingerprint of the admin key, never the key) in its payload; the folds leave it out of the
objects, which are exactly what the admin API returns (an API key's view also keeps the
SHA-256 of the key, which the routes never send).
"""

from __future__ import annotations

from events.records import StoredEvent
from projections.base import Doc, Projection, creating, existence_preserving
from projections.folds import delete

__all__ = ["API_KEYS", "PROJECTS", "SERVICE_ACCOUNTS"]


@creating
def _create(doc: Doc | None, event: StoredEvent) -> Doc | None:
    return {k: v for k, v in event.data.items() if k != "actor"}


@existence_preserving
def _patch(doc: Doc | None, event: StoredEvent) -> Doc | None:
    if doc is None:
        return None
    return {**doc, **{k: v for k, v in event.data.items() if k not in ("id", "actor")}}


PROJECTS = Projection(
    kind="project",
    folds={
        "organization.project.created": _create,
        "organization.project.updated": _patch,
        "organization.project.archived": _patch,
    },
)

SERVICE_ACCOUNTS = Projection(
    kind="service_account",
    folds={
        "organization.project.service_account.created": _create,
        "organization.project.service_account.deleted": delete,
    },
    parent_field="project_id",
)

API_KEYS = Projection(
    kind="api_key",
    folds={
        "organization.project.api_key.created": _create,
        "organization.project.api_key.deleted": delete,
    },
    parent_field="project_id",
)
