"""Reading views: what every GET and list endpoint goes through (never the raw log)."""

from __future__ import annotations

import builtins
import copy
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from events.log import ViewQueries, ViewQuery
from events.records import PROJECT, StoredEvent
from projections.base import Doc, ViewProjector

__all__ = ["Page", "UnknownCursor", "ViewReader"]

ReadRun = Callable[..., Awaitable[builtins.list[StoredEvent]]]
"""The log's `read(run_id=..., limit=...)`."""


class UnknownCursor(LookupError):
    """An `after`/`before` id that names no object of the listed kind."""

    def __init__(self, param: str, value: str) -> None:
        super().__init__(f"No object with id '{value}' to page from.")
        self.param = param
        self.value = value


@dataclass(frozen=True)
class Page:
    data: list[Doc]
    has_more: bool

    def envelope(self) -> dict[str, Any]:
        """OpenAI's list envelope; the SDK pages with `after=last_id` while `has_more`."""
        return {
            "object": "list",
            "data": self.data,
            "first_id": self.data[0]["id"] if self.data else None,
            "last_id": self.data[-1]["id"] if self.data else None,
            "has_more": self.has_more,
        }


class ViewReader:
    """Reads the stored views; with the projector, objects that are streaming include their deltas.

    Stored views hold whole-object events only (see projections/live.py). An object read
    while `in_progress` is merged with its deltas: from the projector's memory, or, for one
    it does not hold (after a restart), folded from the object's events in the log.

    Every read is confined to the current request's project (`events.records.PROJECT`):
    another project's object reads exactly as a missing one, in every method, so no route
    can forget the check. Without a project (the server's own work) reads see everything.
    The queries themselves are the backend's (`events.log.ViewQueries`: SQLite or PostgreSQL).
    """

    def __init__(
        self,
        queries: ViewQueries,
        projector: ViewProjector | None = None,
        read_log: ReadRun | None = None,
        *,
        cached: bool = True,
    ) -> None:
        """`cached=False` for a log other processes write: the projector's memory of committed
        views may be behind theirs, so every read asks the database."""
        self._queries = queries
        self._projector = projector
        self._read_log = read_log
        self._cached = cached

    async def get(self, kind: str, view_id: str) -> Doc | None:
        """One view: from the projector's memory of committed views when it holds it (no query:
        the objects a request checks first, its thread and assistant, are usually there)."""
        project = PROJECT.get()
        if self._projector is not None and self._cached:
            held, view = self._projector.committed_view(kind, view_id)
            if held:
                if view is None or (project is not None and view.project_id != project):
                    return None
                return (await self._streaming(kind, [_private_copy(view.doc)]))[0]
        found = await self._queries.get(kind, view_id)
        if found is None or (project is not None and found[1] != project):
            return None
        return (await self._streaming(kind, [json.loads(found[0])]))[0]

    async def _streaming(self, kind: str, docs: builtins.list[Doc]) -> builtins.list[Doc]:
        projector = self._projector
        if projector is None or kind not in projector.streamed_kinds:
            return docs
        out = []
        for doc in docs:
            if doc.get("status") == "in_progress":
                live = projector.live_doc(kind, doc["id"])
                if live is None and doc.get("run_id") and self._read_log is not None:
                    events = await self._read_log(run_id=doc["run_id"], limit=100_000_000)
                    own = (e for e in events if e.data.get("id") == doc["id"])
                    live = projector.fold_streamed(kind, own)
                doc = live or doc
            out.append(doc)
        return out

    async def list(
        self,
        kind: str,
        *,
        parent_id: str | None = None,
        run_id: str | None = None,
        limit: int = 20,
        order: Literal["asc", "desc"] = "desc",
        after: str | None = None,
        before: str | None = None,
        status: str | None = None,
    ) -> Page:
        """One page of a kind under a parent, in creation order, OpenAI cursor semantics.

        `after` gives the items that follow the cursor in the requested order; `before`
        the ones that precede it, nearest first, returned in the requested order.
        """
        ascending = order == "asc"
        above: int | None = None  # ordinals strictly between these
        below: int | None = None
        if after is not None:
            ordinal = await self._ordinal(kind, after, "after")
            above, below = (ordinal, below) if ascending else (above, ordinal)
        if before is not None:
            ordinal = await self._ordinal(kind, before, "before")
            above, below = (above, ordinal) if ascending else (ordinal, below)
        # Paging backwards from `before` walks the other way and flips the page back.
        walk_ascending = ascending if before is None or after is not None else not ascending
        query = ViewQuery(
            kind=kind,
            parent_id=parent_id,
            run_id=run_id,
            status=status,
            project_id=PROJECT.get(),
            above=above,
            below=below,
            ascending=walk_ascending,
            limit=limit + 1,
        )
        rows = await self._queries.page(query)
        docs = await self._streaming(kind, [json.loads(doc) for doc in rows[:limit]])
        if walk_ascending != ascending:
            docs.reverse()
        return Page(docs, has_more=len(rows) > limit)

    async def _ordinal(self, kind: str, view_id: str, param: str) -> int:
        ordinal = await self._queries.ordinal(kind, view_id, PROJECT.get())
        if ordinal is None:
            raise UnknownCursor(param, view_id)
        return ordinal

    async def exists(self, kind: str, view_id: str) -> bool:
        return await self._queries.ordinal(kind, view_id, PROJECT.get()) is not None

    async def find(self, kind: str, parent_id: str | None, statuses: tuple[str, ...]) -> builtins.list[Doc]:
        """Views of a kind under a parent whose status is one of `statuses` (e.g. active runs)."""
        docs = await self._queries.select(kind, PROJECT.get(), under=(parent_id,), statuses=statuses)
        return await self._streaming(kind, [json.loads(doc) for doc in docs])

    async def with_id_suffix(self, kind: str, suffix: str) -> builtins.list[Doc]:
        """Views whose composite id ends with `suffix` (a file's entries in every vector store)."""
        return [json.loads(doc) for doc in await self._queries.select(kind, PROJECT.get(), id_suffix=suffix)]

    async def all_of_kind(self, kind: str, statuses: tuple[str, ...]) -> builtins.list[Doc]:
        docs = await self._queries.select(kind, PROJECT.get(), statuses=statuses)
        return await self._streaming(kind, [json.loads(doc) for doc in docs])

    async def total(self, kind: str, field: str) -> int:
        """The sum of a numeric top-level field over a kind's views (a project's file bytes)."""
        return await self._queries.total(kind, field, PROJECT.get())


def _private_copy(doc: Doc) -> Doc:
    """A copy the caller may change: cached docs are shared with the projector."""
    try:
        copied: Doc = orjson.loads(orjson.dumps(doc))
    except TypeError:  # what orjson refuses (a lone surrogate, a huge int): the slow way
        return copy.deepcopy(doc)
    return copied
