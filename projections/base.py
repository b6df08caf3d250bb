"""Projections: pure folds from events to view documents, applied in the append transaction.

A projection names the kind of view it keeps and, per event type, a fold
`(current doc or None, event) -> new doc or None (deleted)`. Folds are pure and never
mutate their inputs (documents in the cache are shared), so the same log always folds to
the same views: that is what `threadlog replay --verify` checks.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from events.log import LoadViews, ViewChanges, ViewKey, ViewRow
from events.records import DEFAULT_PROJECT, StoredEvent
from projections.live import LiveDoc, fold_deltas

__all__ = [
    "Doc",
    "Fold",
    "Projection",
    "View",
    "ViewKey",
    "ViewProjector",
    "by_id",
    "creating",
    "existence_preserving",
    "overwriting",
    "snapshotting",
]

Doc = dict[str, Any]
Fold = Callable[[Doc | None, StoredEvent], Doc | None]

_OVERWRITING: set[Fold] = set()
_SNAPSHOTTING: set[Fold] = set()
_EXISTENCE_PRESERVING: set[Fold] = set()
_CREATING: set[Fold] = set()


def overwriting(fold: Fold) -> Fold:
    """Mark a fold whose result ignores the current doc (a snapshot or a delete).

    Only whether a view existed before still matters to it (a snapshot keeps the
    view's ordinal). Replay uses this to skip work a later overwrite would discard.
    """
    _OVERWRITING.add(fold)
    return fold


def snapshotting(fold: Fold) -> Fold:
    """Mark an overwriting fold that never returns None (the event carries the whole object).

    Followed by another overwrite of the same view, only the fact that the view exists
    (and so keeps its ordinal) survives it, so replay need not parse its payload.
    """
    _SNAPSHOTTING.add(fold)
    return overwriting(fold)


def creating(fold: Fold) -> Fold:
    """Mark a snapshot fold whose event brings a new object, under a new id, into existence.

    There is no view to read before folding it, so an append that creates a run, a step or
    a message stages without a query: the commit of a run's first token waits for no read.
    """
    _CREATING.add(fold)
    return snapshotting(fold)


def existence_preserving(fold: Fold) -> Fold:
    """Mark a fold that returns None exactly when given None (a patch, a delta).

    Such an event followed, on the same view, only by others like it and then by an
    overwriting event, cannot change the folded result, so replay may skip it.
    """
    _EXISTENCE_PRESERVING.add(fold)
    return fold


def by_id(data: Mapping[str, Any]) -> str:
    """The default view key: the payload's `id`."""
    return str(data["id"])


VIEWS_REVISION = 1
"""Bumped when a fold changes what it makes of the same events: the views are then refolded at open."""


@dataclass(frozen=True)
class Projection:
    """One kind of view and the folds that keep it.

    `streamed` names delta event types (payload `{"id", "delta": {...}}`) that are not
    folded into the stored view but kept in memory until the next whole-object event
    (see projections/live.py): reads of an object that is streaming see them merged.
    """

    kind: str
    folds: Mapping[str, Fold]
    parent_field: str | None = None
    run_field: str | None = None
    key: Callable[[Mapping[str, Any]], str] = field(default=by_id)
    streamed: frozenset[str] = frozenset()
    event_key: Callable[[StoredEvent], str] | None = None
    """A key made from more than the payload (the event's project or time); replaces `key`."""

    def meta(self, doc: Doc) -> tuple[str | None, str | None]:
        parent = doc.get(self.parent_field) if self.parent_field else None
        run = doc.get(self.run_field) if self.run_field else None
        return parent, run


@dataclass(frozen=True, slots=True)
class View:
    doc: Doc
    ordinal: int
    project_id: str = DEFAULT_PROJECT  # every event of a view's stream is in the stream's project


class ViewProjector:
    """Keeps the `views` table in step with the log (implements events.Projector)."""

    def __init__(self, projections: Iterable[Projection], cache_size: int = 50_000) -> None:
        self._by_kind: dict[str, Projection] = {}
        self._handlers: dict[str, list[tuple[Projection, Fold]]] = {}
        for projection in projections:
            self._by_kind[projection.kind] = projection
            for event_type, fold in projection.folds.items():
                self._handlers.setdefault(event_type, []).append((projection, fold))
        # For replay (rebuild.fold_log): event types with one fold whose view is keyed by the
        # payload's `id` (the view kind), and which of those are existence-preserving or
        # snapshots; event types all of whose folds overwrite.
        self.keyed_by_id: dict[str, str] = {}
        self.preserving: set[str] = set()
        self.snapshots: set[str] = set()
        self.overwrites: set[str] = set()
        self._creates = {t for t, handlers in self._handlers.items() if all(f in _CREATING for _, f in handlers)}
        for event_type, handlers in self._handlers.items():
            if all(fold in _OVERWRITING for _, fold in handlers):
                self.overwrites.add(event_type)
            if len(handlers) == 1 and handlers[0][0].key is by_id and handlers[0][0].event_key is None:
                projection, fold = handlers[0]
                self.keyed_by_id[event_type] = projection.kind
                if fold in _EXISTENCE_PRESERVING:
                    self.preserving.add(event_type)
                if fold in _SNAPSHOTTING:
                    self.snapshots.add(event_type)
        self._cache: OrderedDict[ViewKey, View | None] = OrderedDict()
        self._cache_size = cache_size
        self._pending: dict[ViewKey, View | None] = {}
        self._streamed: dict[str, str] = {t: p.kind for p in self._by_kind.values() for t in p.streamed}
        self.streamed_kinds = frozenset(self._streamed.values())
        self._live: dict[ViewKey, LiveDoc] = {}
        # What the staged appends do to the live docs, in log order: a delta (with the
        # stored view it applies to), or a whole-object event on a key (the view it left).
        self._pending_live: list[tuple[ViewKey, dict[str, Any] | None, View | None, bool]] = []

    @property
    def fingerprint(self) -> str:
        """Which views fold which event types: another set (a projection added, a fold
        moved) means the stored views were folded differently, and are refolded."""
        shape = sorted((p.kind, sorted(p.folds), sorted(p.streamed)) for p in self._by_kind.values())
        return hashlib.sha256(json.dumps([VIEWS_REVISION, shape]).encode()).hexdigest()[:16]

    def handles(self, event_type: str) -> bool:
        return event_type in self._handlers or event_type in self._streamed

    def event_types(self) -> list[str]:
        return sorted(self._handlers)

    def keys_for(self, event: StoredEvent) -> list[ViewKey]:
        return [(projection.kind, _key(projection, event)) for projection, _ in self._handlers.get(event.type, ())]

    def fold_event(
        self,
        event: StoredEvent,
        into: MutableMapping[ViewKey, View | None],
        lookup: Callable[[ViewKey], View | None],
    ) -> None:
        """Fold one event into `into`; `lookup` gives the current view of a key."""
        for projection, fold in self._handlers.get(event.type, ()):
            key = (projection.kind, _key(projection, event))
            current = into[key] if key in into else lookup(key)
            doc = fold(current.doc if current else None, event)
            into[key] = (
                None if doc is None else View(doc, current.ordinal if current else event.sequence, event.project_id)
            )

    async def stage(self, events: Sequence[StoredEvent], load: LoadViews) -> None:
        loaded, missing = self._known(events)
        if missing:
            loaded.update(await self._load(load, missing))
        self._fold(events, loaded)

    def stage_known(self, events: Sequence[StoredEvent]) -> bool:
        """`stage` when every view the events need is known here (a streaming run's deltas: the
        cache holds their objects), with no coroutine to make and await per append; False, and
        nothing staged, when one must be loaded."""
        loaded, missing = self._known(events)
        if missing:
            return False
        self._fold(events, loaded)
        return True

    def _known(self, events: Sequence[StoredEvent]) -> tuple[dict[ViewKey, View | None], list[ViewKey]]:
        """The views the events fold that the pending changes and the cache hold, and the keys of
        those they do not (to load)."""
        loaded: dict[ViewKey, View | None] = {}
        missing: list[ViewKey] = []
        for event in events:
            streamed = self._streamed.get(event.type)
            # A delta needs its stored base (a cache hit while it streams); other events their folds' views.
            keys = [(streamed, str(event.data["id"]))] if streamed is not None else self.keys_for(event)
            creates = event.type in self._creates
            for key in keys:
                if key in self._pending or key in loaded:
                    continue
                if creates:
                    loaded[key] = None
                    continue
                if key in self._cache:  # the usual case while a run streams: no await per delta
                    self._cache.move_to_end(key)
                    loaded[key] = self._cache[key]
                else:
                    loaded[key] = None
                    missing.append(key)
        return loaded, missing

    def _fold(self, events: Sequence[StoredEvent], loaded: dict[ViewKey, View | None]) -> None:
        def lookup(key: ViewKey) -> View | None:
            return self._pending[key] if key in self._pending else loaded.get(key)

        overlay: dict[ViewKey, View | None] = {}
        live_ops: list[tuple[ViewKey, dict[str, Any] | None, View | None, bool]] = []
        for event in events:
            streamed = self._streamed.get(event.type)
            if streamed is not None:
                key = (streamed, str(event.data["id"]))
                base = overlay[key] if key in overlay else lookup(key)
                live_ops.append((key, event.data.get("delta") or {}, base, False))
                continue
            self.fold_event(event, overlay, lookup)
            if self._live or live_ops:
                handlers = self._handlers.get(event.type, ())
                for (projection, fold), key in zip(handlers, self.keys_for(event), strict=True):
                    if projection.streamed:
                        live_ops.append((key, None, overlay[key], fold in _OVERWRITING))
        self._pending.update(overlay)
        self._pending_live.extend(live_ops)

    def committed_view(self, kind: str, view_id: str) -> tuple[bool, View | None]:
        """Whether the cache holds a key and, if so, its committed view (None: known not to exist).

        The cache changes only after a transaction commits and before the append is
        acknowledged, so a reader served from it sees every acknowledged append.
        """
        key = (kind, view_id)
        return (True, self._cache[key]) if key in self._cache else (False, None)

    def live_doc(self, kind: str, view_id: str) -> Doc | None:
        """The streaming object with its deltas merged, if it is streaming (committed state)."""
        live = self._live.get((kind, view_id))
        return None if live is None else live.materialize()

    def fold_streamed(self, kind: str, events: Iterable[StoredEvent]) -> Doc | None:
        """One object's view folded from its events, deltas included (for one not kept in memory)."""
        doc: Doc | None = None
        deltas: list[dict[str, Any]] = []
        for event in events:
            if self._streamed.get(event.type) == kind:
                deltas.append(event.data.get("delta") or {})
                continue
            for projection, fold in self._handlers.get(event.type, ()):
                if projection.kind == kind:
                    if fold in _OVERWRITING:
                        deltas = []
                    elif doc is not None and deltas:
                        doc = fold_deltas(doc, deltas)
                        deltas = []
                    doc = fold(doc, event)
        return fold_deltas(doc, deltas) if doc is not None and deltas else doc

    def changes(self, position: int) -> ViewChanges:
        return self.changes_of(self._pending, position)

    def changes_of(self, views: Mapping[ViewKey, View | None], position: int) -> ViewChanges:
        """The rows to upsert and the keys to delete for `views` (a rebuild's, or the pending ones)."""
        upserts = []
        deletes = []
        for (kind, view_id), view in views.items():
            if view is None:
                deletes.append((kind, view_id))
            else:
                parent, run = self._by_kind[kind].meta(view.doc)
                doc = json.dumps(view.doc, ensure_ascii=False)
                upserts.append(ViewRow(kind, view_id, parent, run, view.ordinal, doc, view.project_id))
        return ViewChanges(upserts, deletes, position)

    def commit(self) -> None:
        for key, view in self._pending.items():
            self._cache[key] = view
            self._cache.move_to_end(key)
        self._pending.clear()
        for key, delta, view, overwritten in self._pending_live:
            live = self._live.get(key)
            if delta is None:  # a whole-object event
                if live is not None:
                    if overwritten or view is None:
                        del self._live[key]
                    else:
                        live.rebase(view.doc)
            elif live is not None:
                live.apply(delta)
            elif view is not None:
                live = self._live[key] = LiveDoc(view.doc)
                live.apply(delta)
        self._pending_live.clear()
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def forget(self, events: Sequence[StoredEvent]) -> None:
        """Events another process committed: what this one holds of their views is stale."""
        for event in events:
            streamed = self._streamed.get(event.type)
            keys = [(streamed, str(event.data["id"]))] if streamed is not None else self.keys_for(event)
            for key in keys:
                self._cache.pop(key, None)
                self._live.pop(key, None)

    def rollback(self) -> None:
        self._pending.clear()
        self._pending_live.clear()
        self._cache.clear()

    async def _load(self, load: LoadViews, keys: list[ViewKey]) -> dict[ViewKey, View | None]:
        """Views not in the cache, from the store in one call (one hop to the database).

        An append that creates a step and a message, say, misses the cache for each: read one
        by one, each a hop of its own, they held up the commit of the run's first token.
        """
        views: dict[ViewKey, View | None] = dict.fromkeys(keys)
        for key, (doc, ordinal, project) in (await load(keys)).items():
            views[key] = View(json.loads(doc), ordinal, project)
        for key, view in views.items():
            self._cache[key] = view
        return views


def _key(projection: Projection, event: StoredEvent) -> str:
    return projection.event_key(event) if projection.event_key is not None else projection.key(event.data)
