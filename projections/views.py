"""Reading views: what every GET and list endpoint goes through (never the raw log)."""

from __future__ import annotations

import builtins
import copy
import json
from dataclasses import dataclass
from typing import Any, Literal

import aiosqlite
import orjson

from events.records import PROJECT
from events.store import EVENT_COLUMNS, row_to_event
from projections.base import Doc, ViewProjector

__all__ = ["Page", "UnknownCursor", "ViewReader"]


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
    """

    def __init__(self, conn: aiosqlite.Connection, projector: ViewProjector | None = None) -> None:
        self._conn = conn
        self._projector = projector

    async def get(self, kind: str, view_id: str) -> Doc | None:
        """One view: from the projector's memory of committed views when it holds it (no query:
        the objects a request checks first, its thread and assistant, are usually there)."""
        project = PROJECT.get()
        if self._projector is not None:
            held, view = self._projector.committed_view(kind, view_id)
            if held:
                if view is None or (project is not None and view.project_id != project):
                    return None
                return (await self._streaming(kind, [_private_copy(view.doc)]))[0]
        rows = list(
            await self._conn.execute_fetchall(
                "SELECT doc, project_id FROM views WHERE kind = ? AND id = ?", (kind, view_id)
            )
        )
        row = rows[0] if rows else None
        if row is None or (project is not None and row[1] != project):
            return None
        return (await self._streaming(kind, [json.loads(row[0])]))[0]

    async def _streaming(self, kind: str, docs: builtins.list[Doc]) -> builtins.list[Doc]:
        projector = self._projector
        if projector is None or kind not in projector.streamed_kinds:
            return docs
        out = []
        for doc in docs:
            if doc.get("status") == "in_progress":
                live = projector.live_doc(kind, doc["id"])
                if live is None and doc.get("run_id"):
                    live = await self._fold_from_log(projector, kind, doc)
                doc = live or doc
            out.append(doc)
        return out

    async def _fold_from_log(self, projector: ViewProjector, kind: str, doc: Doc) -> Doc | None:
        sql = (
            f"SELECT {EVENT_COLUMNS} FROM events WHERE run_id = ? AND json_extract(data, '$.id') = ? ORDER BY sequence"
        )
        rows = await self._conn.execute_fetchall(sql, (doc["run_id"], doc["id"]))
        return projector.fold_streamed(kind, (row_to_event(row) for row in rows))

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
        where = ["kind = ?", "parent_id IS ?"]
        args: list[Any] = [kind, parent_id]
        _confine(where, args)
        if run_id is not None:
            where.append("run_id = ?")
            args.append(run_id)
        if status is not None:
            where.append("json_extract(doc, '$.status') = ?")
            args.append(status)
        ascending = order == "asc"
        if after is not None:
            ordinal = await self._ordinal(kind, after, "after")
            where.append("ordinal > ?" if ascending else "ordinal < ?")
            args.append(ordinal)
        if before is not None:
            ordinal = await self._ordinal(kind, before, "before")
            where.append("ordinal < ?" if ascending else "ordinal > ?")
            args.append(ordinal)
        # Paging backwards from `before` walks the other way and flips the page back.
        walk_ascending = ascending if before is None or after is not None else not ascending
        direction = "ASC" if walk_ascending else "DESC"
        sql = f"SELECT doc FROM views WHERE {' AND '.join(where)} ORDER BY ordinal {direction} LIMIT ?"
        rows = builtins.list(await self._conn.execute_fetchall(sql, (*args, limit + 1)))
        docs = await self._streaming(kind, [json.loads(row[0]) for row in rows[:limit]])
        if walk_ascending != ascending:
            docs.reverse()
        return Page(docs, has_more=len(rows) > limit)

    async def _ordinal(self, kind: str, view_id: str, param: str) -> int:
        where = ["kind = ?", "id = ?"]
        args: list[Any] = [kind, view_id]
        _confine(where, args)
        rows = list(await self._conn.execute_fetchall(f"SELECT ordinal FROM views WHERE {' AND '.join(where)}", args))
        row = rows[0] if rows else None
        if row is None:
            raise UnknownCursor(param, view_id)
        return int(row[0])

    async def exists(self, kind: str, view_id: str) -> bool:
        return bool(await self._select(["kind = ?", "id = ?"], [kind, view_id], "1"))

    async def find(self, kind: str, parent_id: str | None, statuses: tuple[str, ...]) -> builtins.list[Doc]:
        """Views of a kind under a parent whose status is one of `statuses` (e.g. active runs)."""
        marks = ",".join("?" for _ in statuses)
        where = ["kind = ?", "parent_id IS ?", f"json_extract(doc, '$.status') IN ({marks})"]
        rows = await self._select(where, [kind, parent_id, *statuses])
        return await self._streaming(kind, [json.loads(row[0]) for row in rows])

    async def with_id_suffix(self, kind: str, suffix: str) -> builtins.list[Doc]:
        """Views whose composite id ends with `suffix` (a file's entries in every vector store)."""
        rows = await self._select(["kind = ?", "substr(id, -length(?)) = ?"], [kind, suffix, suffix])
        return [json.loads(row[0]) for row in rows]

    async def all_of_kind(self, kind: str, statuses: tuple[str, ...]) -> builtins.list[Doc]:
        marks = ",".join("?" for _ in statuses)
        rows = await self._select(["kind = ?", f"json_extract(doc, '$.status') IN ({marks})"], [kind, *statuses])
        return await self._streaming(kind, [json.loads(row[0]) for row in rows])

    async def total(self, kind: str, path: str) -> int:
        """The sum of a numeric field over a kind's views (a project's file bytes)."""
        where = ["kind = ?"]
        args: list[Any] = [kind]
        _confine(where, args)
        sql = f"SELECT COALESCE(SUM(json_extract(doc, ?)), 0) FROM views WHERE {' AND '.join(where)}"
        rows = list(await self._conn.execute_fetchall(sql, [path, *args]))
        return int(rows[0][0]) if rows else 0

    async def _select(self, where: builtins.list[str], args: builtins.list[Any], columns: str = "doc") -> Any:
        _confine(where, args)
        sql = f"SELECT {columns} FROM views WHERE {' AND '.join(where)} ORDER BY ordinal"
        return list(await self._conn.execute_fetchall(sql, args))


def _confine(where: builtins.list[str], args: builtins.list[Any]) -> None:
    """Add the current project to a query's conditions (nothing for the server's own reads)."""
    project = PROJECT.get()
    if project is not None:
        where.append("project_id = ?")
        args.append(project)


def _private_copy(doc: Doc) -> Doc:
    """A copy the caller may change: cached docs are shared with the projector."""
    try:
        copied: Doc = orjson.loads(orjson.dumps(doc))
    except TypeError:  # what orjson refuses (a lone surrogate, a huge int): the slow way
        return copy.deepcopy(doc)
    return copied
