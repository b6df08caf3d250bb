"""Vector stores: ingestion in the background, search, and the file_search tool for runs.

Every state change (store created, file added, ingestion completed or failed, ...) is an
event in the log; chunks and embeddings live in LanceDB, one table per store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import anyio

from events.records import NewEvent
from server import metrics
from server.ids import new_id
from server.runs.engine import ToolResult
from server.services import Services

__all__ = ["VectorStores", "vector_store_object", "vs_file_object"]

logger = logging.getLogger("threadlog.vector_stores")


def vs_file_object(vector_store_id: str, file_id: str, chunking: dict[str, Any], attributes: Any) -> dict[str, Any]:
    return {
        "id": file_id,
        "object": "vector_store.file",
        "usage_bytes": 0,
        "created_at": int(time.time()),
        "vector_store_id": vector_store_id,
        "status": "in_progress",
        "last_error": None,
        "chunking_strategy": chunking,
        "attributes": attributes or {},
    }


def static_chunking(strategy: dict[str, Any] | None, auto: tuple[int, int]) -> dict[str, Any]:
    """The strategy as shown on a vector store file: `auto` becomes the static sizes it means."""
    if strategy and strategy.get("type") == "static":
        static = strategy.get("static") or {}
        size = int(static.get("max_chunk_size_tokens", 800))
        overlap = int(static.get("chunk_overlap_tokens", 400))
        return {"type": "static", "static": {"max_chunk_size_tokens": size, "chunk_overlap_tokens": overlap}}
    return {"type": "static", "static": {"max_chunk_size_tokens": auto[0], "chunk_overlap_tokens": auto[1]}}


def _ingestion_key(store_id: str, file_id: str) -> str:
    return f"ingest:{store_id}/{file_id}"


async def vector_store_object(svc: Services, doc: dict[str, Any]) -> dict[str, Any]:
    """A store with its derived parts (file counts, usage, status) computed from its files."""
    files = await svc.views.list("vector_store_file", parent_id=doc["id"], limit=100_000)
    counts = {"in_progress": 0, "completed": 0, "failed": 0, "cancelled": 0, "total": 0}
    usage = 0
    for f in files.data:
        counts[f["status"]] = counts.get(f["status"], 0) + 1
        counts["total"] += 1
        usage += int(f.get("usage_bytes") or 0)
    status = "in_progress" if counts["in_progress"] else "completed"
    expires_at = doc.get("expires_at")
    policy = doc.get("expires_after") or {}
    if policy.get("anchor") == "last_active_at" and policy.get("days"):
        # The anchor moves with every search, so the deadline does too.
        expires_at = int(doc.get("last_active_at") or doc["created_at"]) + int(policy["days"]) * 86400
    if expires_at and expires_at <= time.time():
        status = "expired"
    return {**doc, "file_counts": counts, "usage_bytes": usage, "status": status, "expires_at": expires_at}


class VectorStores:
    """Owns ingestion tasks and the LanceDB index."""

    def __init__(self, svc: Services, index: Any, auto_chunking: tuple[int, int] | None = None) -> None:
        from server.retrieval.chunking import auto_chunking_for

        self.svc = svc
        self.index = index
        # `auto` chunks fit the embedder's window, whichever embedder is configured
        # (254/64 for the local MiniLM, OpenAI's 800/400 for a wide upstream model).
        window = getattr(getattr(index, "embedder", None), "max_input_tokens", None)
        self.auto_chunking = auto_chunking_for(window) if window else (auto_chunking or auto_chunking_for(None))
        self._tasks: set[asyncio.Task[None]] = set()
        self._limit = asyncio.Semaphore(2)
        self._pending: dict[str, int] = {}
        self._active: set[tuple[str, str]] = set()  # (store, file) ingesting or queued here
        metrics.watch(metrics.INGESTION_QUEUE, lambda: sum(self._pending.values()))

    def new_id(self) -> str:
        return new_id("vs_")

    async def create(
        self,
        store_id: str,
        *,
        name: str | None = None,
        file_ids: list[str] | None = None,
        chunking: dict[str, Any] | None = None,
        metadata: dict[str, str] | None = None,
        expires_after: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        created = int(time.time())
        doc = {
            "id": store_id,
            "object": "vector_store",
            "created_at": created,
            "name": name,
            "usage_bytes": 0,
            "file_counts": {"in_progress": 0, "completed": 0, "failed": 0, "cancelled": 0, "total": 0},
            "status": "completed",
            "expires_after": expires_after,
            "expires_at": created + int(expires_after["days"]) * 86400 if expires_after else None,
            "last_active_at": created,
            "metadata": metadata or {},
        }
        events = [NewEvent("vector_store.created", doc)]
        strategy = static_chunking(chunking, self.auto_chunking)
        for file_id in file_ids or []:
            events.append(NewEvent("vector_store.file.created", vs_file_object(store_id, file_id, strategy, None)))
        await asyncio.gather(*(self._claim(store_id, file_id) for file_id in file_ids or []))
        await self.svc.store.append(store_id, events, expected_version=0)
        for file_id in file_ids or []:
            self.ingest(store_id, file_id)
        return doc

    async def add_file(
        self, store_id: str, file_id: str, chunking: dict[str, Any] | None, attributes: Any
    ) -> dict[str, Any]:
        obj = vs_file_object(store_id, file_id, static_chunking(chunking, self.auto_chunking), attributes)
        await self._claim(store_id, file_id)
        await self.svc.store.append(store_id, [NewEvent("vector_store.file.created", obj)])
        self.ingest(store_id, file_id)
        return obj

    async def _claim(self, store_id: str, file_id: str) -> None:
        """Before the file is listed `in_progress`: so a file being ingested always has a lease, and
        another process sharing the log never ingests it at the same time (LanceDB on object storage
        does not arbitrate two writers of one table)."""
        await self.svc.leases.claim(_ingestion_key(store_id, file_id))

    def ingest(self, store_id: str, file_id: str) -> None:
        self._active.add((store_id, file_id))
        task = asyncio.create_task(self._ingest(store_id, file_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ingest(self, store_id: str, file_id: str) -> None:
        self._pending[store_id] = self._pending.get(store_id, 0) + 1
        try:
            await self._ingest_one(store_id, file_id)
        finally:
            self._pending[store_id] -= 1
            if not self._pending[store_id]:
                del self._pending[store_id]
            self._active.discard((store_id, file_id))
            with contextlib.suppress(Exception):
                await self.svc.leases.release(_ingestion_key(store_id, file_id))
        if store_id not in self._pending:
            # The store's queue drained: fold the rows written since the last fold into
            # the FTS index now, in the background, instead of after every file.
            try:
                await self.index.fold_pending(store_id)
            except Exception:
                logger.exception("folding new rows of %s into its FTS index failed", store_id)

    async def wait_ready(self, store_ids: list[str], timeout: float = 120.0) -> None:
        """Runs search only once the stores' files are ingested, as OpenAI's runs wait too."""

        async def pending(store_id: str) -> bool:
            return bool(await self.svc.views.find("vector_store_file", store_id, ("in_progress",)))

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                for store_id in store_ids:
                    # The store's own events tell when a file is done, whichever process ingests it.
                    changes = self.svc.store.subscribe_batches(stream_id=store_id, after=self.svc.store.head)
                    try:
                        while await pending(store_id):
                            await anext(changes)
                    finally:
                        await changes.aclose()  # type: ignore[attr-defined]

    async def remove_file_everywhere(self, file_id: str) -> None:
        """A deleted file leaves every store it was in, chunks included."""
        for doc in await self.svc.views.with_id_suffix("vector_store_file", f"/{file_id}"):
            await self.svc.store.append(doc["vector_store_id"], [NewEvent("vector_store.file.deleted", doc)])
            await self.index.remove_file(doc["vector_store_id"], file_id)

    async def attach_for_search(self, thread_id: str, file_ids: list[str]) -> None:
        """Message attachments for file_search go into the thread's store, made on first use."""
        if not file_ids:
            return
        thread = await self.svc.views.get("thread", thread_id)
        if thread is None:
            return
        resources = dict(thread.get("tool_resources") or {})
        store_ids = list((resources.get("file_search") or {}).get("vector_store_ids") or [])
        if not store_ids:
            store_id = self.new_id()
            await self.create(
                store_id, name=f"thread {thread_id}", expires_after={"anchor": "last_active_at", "days": 7}
            )
            resources["file_search"] = {"vector_store_ids": [store_id]}
            await self.svc.store.append(
                thread_id, [NewEvent("thread.updated", {"id": thread_id, "tool_resources": resources})]
            )
            store_ids = [store_id]
        for file_id in dict.fromkeys(file_ids):
            if await self.svc.views.get("vector_store_file", f"{store_ids[0]}/{file_id}") is None:
                await self.add_file(store_ids[0], file_id, None, None)

    async def _ingest_one(self, store_id: str, file_id: str) -> None:
        from server.retrieval.chunking import chunk_text
        from server.retrieval.parse import InvalidFile, UnsupportedFile, extract_text

        async with self._limit:
            current = await self.svc.views.get("vector_store_file", f"{store_id}/{file_id}")
            if current is None or current["status"] != "in_progress":
                return
            file = await self.svc.views.get("file", file_id)
            error: dict[str, str] | None = None
            usage = 0
            try:
                if file is None:
                    raise InvalidFile("the file was deleted")
                data = await self.svc.files.read(file_id)
                if data is None:
                    raise InvalidFile("the file's content is missing from the file store")
                text = await anyio.to_thread.run_sync(extract_text, file["filename"], data)
                static = current["chunking_strategy"]["static"]
                chunks = await anyio.to_thread.run_sync(
                    lambda: chunk_text(text, static["max_chunk_size_tokens"], static["chunk_overlap_tokens"])
                )
                await self.index.add_file(store_id, file_id, file["filename"], chunks, current.get("attributes"))
                usage = sum(len(c.text.encode()) for c in chunks) + len(chunks) * 384 * 4
            except UnsupportedFile as exc:
                error = {"code": "unsupported_file", "message": str(exc) or "This file type is not supported."}
            except InvalidFile as exc:
                error = {"code": "invalid_file", "message": str(exc) or "The file could not be parsed."}
            except Exception as exc:  # one bad file must not harm the others
                logger.exception("ingesting %s into %s failed", file_id, store_id)
                error = {"code": "server_error", "message": f"Ingestion failed: {exc}"}
            latest = await self.svc.views.get("vector_store_file", f"{store_id}/{file_id}")
            if latest is None or latest["status"] != "in_progress":
                await self.index.remove_file(store_id, file_id)  # removed or cancelled meanwhile
                return
            if error is None:
                done = {**latest, "status": "completed", "usage_bytes": usage}
                await self.svc.store.append(store_id, [NewEvent("vector_store.file.completed", done)])
            else:
                metrics.INGESTION_FAILURES.inc()
                failed = {**latest, "status": "failed", "last_error": error}
                await self.svc.store.append(store_id, [NewEvent("vector_store.file.failed", failed)])

    async def recover(self) -> None:
        """Files whose ingestion a restart (or, on a shared log, another process's death) interrupted
        are ingested again: those whose lease this process gets."""
        for doc in await self.svc.views.all_of_kind("vector_store_file", ("in_progress",)):
            store_id, file_id = doc["vector_store_id"], doc["id"]
            if (store_id, file_id) in self._active:
                continue
            taken, _ = await self.svc.leases.take_over(_ingestion_key(store_id, file_id))
            if taken:
                self.ingest(store_id, file_id)

    async def supervise(self) -> None:
        """On a shared log: take over the ingestions of processes that died, once their leases lapse."""
        while True:
            await asyncio.sleep(self.svc.leases.ttl_s)
            try:
                await self.recover()
            except Exception:
                logger.exception("taking over interrupted ingestions failed")

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def search(
        self,
        store_ids: list[str],
        query: str,
        *,
        max_num_results: int = 20,
        score_threshold: float = 0.0,
        filters: dict[str, Any] | None = None,
        ranker: str = "auto",
    ) -> list[Any]:
        hits = await self.index.search(
            store_ids,
            query,
            max_num_results=max_num_results,
            score_threshold=score_threshold,
            filters=filters,
            ranker=ranker,
        )
        now = int(time.time())
        for store_id in store_ids:
            doc = await self.svc.views.get("vector_store", store_id)
            # At most one event per store and second: a busy store does not flood the log.
            if doc is not None and doc.get("last_active_at") != now:
                await self.svc.store.append(
                    store_id, [NewEvent("vector_store.updated", {"id": store_id, "last_active_at": now})]
                )
        return list(hits)

    # -- the file_search tool ----------------------------------------------------------------

    async def file_search_tool(self, arguments: dict[str, Any], run: dict[str, Any], call_index: int) -> ToolResult:
        from server.retrieval.index import RANKERS

        query = str(arguments.get("query") or "")
        tool: dict[str, Any] = next((t for t in run["tools"] if t["type"] == "file_search"), {})
        options = tool.get("file_search") or {}
        ranking = options.get("ranking_options") or {}
        ranking = {
            "ranker": ranking.get("ranker") or "auto",
            "score_threshold": float(ranking.get("score_threshold") or 0.0),
        }
        store_ids = await self._run_store_ids(run)
        hits = []
        if store_ids and query:
            await self.wait_ready(store_ids)
            hits = await self.search(
                store_ids,
                query,
                max_num_results=min(50, max(1, int(options.get("max_num_results") or 20))),
                score_threshold=min(1.0, max(0.0, ranking["score_threshold"])),
                ranker=ranking["ranker"] if ranking["ranker"] in RANKERS else "auto",
            )
        results = []
        lines = []
        citations: dict[str, str] = {}
        for i, hit in enumerate(hits):
            marker = f"【{call_index}:{i}†{hit.filename}】"
            citations[marker] = hit.file_id
            lines.append(f"{marker}\n{hit.content}")
            results.append(
                {
                    "file_id": hit.file_id,
                    "file_name": hit.filename,
                    "score": round(float(hit.score), 6),
                    "content": [{"type": "text", "text": hit.content}],
                }
            )
        output = "\n\n".join(lines) if lines else "No results found."
        summary = [{k: v for k, v in r.items() if k != "content"} for r in results]
        details = {"ranking_options": ranking, "results": summary, "full_results": results}
        return ToolResult(details, output, citations)

    async def _run_store_ids(self, run: dict[str, Any]) -> list[str]:
        ids: list[str] = []
        assistant = await self.svc.views.get("assistant", run["assistant_id"])
        thread = await self.svc.views.get("thread", run["thread_id"])
        for owner in (assistant, thread):
            resources = (owner or {}).get("tool_resources") or {}
            ids += (resources.get("file_search") or {}).get("vector_store_ids") or []
        return [i for i in dict.fromkeys(ids) if await self.svc.views.get("vector_store", i) is not None]
