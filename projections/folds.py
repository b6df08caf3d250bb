"""The folds most views need: create, take a snapshot, merge a patch, delete."""

from __future__ import annotations

from events.records import StoredEvent
from projections.base import Doc, creating, existence_preserving, overwriting, snapshotting


@creating
def create(doc: Doc | None, event: StoredEvent) -> Doc | None:
    """The event creates the object under a fresh id and carries it whole."""
    return dict(event.data)


@snapshotting
def snapshot(doc: Doc | None, event: StoredEvent) -> Doc | None:
    """The event carries the whole object (created, status changes)."""
    return dict(event.data)


@existence_preserving
def patch(doc: Doc | None, event: StoredEvent) -> Doc | None:
    """The event carries changed fields; an update of a missing object changes nothing."""
    if doc is None:
        return None
    return {**doc, **{k: v for k, v in event.data.items() if k != "id"}}


@overwriting
def delete(doc: Doc | None, event: StoredEvent) -> Doc | None:
    return None
