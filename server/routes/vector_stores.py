"""`/v1/vector_stores`: stores, their files, file batches, and search."""

from __future__ import annotations

import time
from typing import Any, Literal

import anyio
from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from events.records import NewEvent
from projections.views import Page
from server.errors import bad_request, not_found
from server.http import list_params, parse_body
from server.ids import new_id
from server.models.common import ChunkingStrategy, Metadata
from server.models.common import Request as Body
from server.services import Services, services
from server.vector_stores import VectorStores, vector_store_object

__all__ = ["routes"]


class ExpiresAfter(Body):
    anchor: Literal["last_active_at"]
    days: int = Field(ge=1, le=365)


class CreateVectorStore(Body):
    name: str | None = None
    file_ids: list[str] = Field(default_factory=list, max_length=500)
    chunking_strategy: ChunkingStrategy | None = None
    expires_after: ExpiresAfter | None = None
    metadata: Metadata = None


class ModifyVectorStore(Body):
    name: str | None = None
    expires_after: ExpiresAfter | None = None
    metadata: Metadata = None


class CreateVectorStoreFile(Body):
    file_id: str
    chunking_strategy: ChunkingStrategy | None = None
    attributes: dict[str, str | float | bool] | None = Field(None, max_length=16)


class CreateFileBatch(Body):
    file_ids: list[str] = Field(min_length=1, max_length=2000)
    chunking_strategy: ChunkingStrategy | None = None
    attributes: dict[str, str | float | bool] | None = Field(None, max_length=16)


class RankingOptions(Body):
    ranker: str = "auto"
    score_threshold: float = Field(0.0, ge=0, le=1)


class SearchRequest(Body):
    query: str | list[str]
    rewrite_query: bool = False
    max_num_results: int = Field(10, ge=1, le=50)
    filters: dict[str, Any] | None = None
    ranking_options: RankingOptions | None = None


def _stores(svc: Services) -> VectorStores:
    stores: VectorStores | None = svc.extras.get("vector_stores")
    if stores is None:
        raise bad_request("Vector stores are not available on this server (the retrieval extras are missing).")
    return stores


async def _store_or_404(svc: Services, store_id: str) -> dict[str, Any]:
    doc = await svc.views.get("vector_store", store_id)
    if doc is None:
        raise not_found("vector store", store_id)
    return doc


async def _check_files(svc: Services, file_ids: list[str], param: str) -> None:
    for i, file_id in enumerate(file_ids):
        if await svc.views.get("file", file_id) is None:
            raise bad_request(f"No file found with id '{file_id}'.", f"{param}[{i}]")


async def create_store(request: Request) -> JSONResponse:
    svc = services(request)
    body = await parse_body(request, CreateVectorStore)
    chunking = body.chunking_strategy.checked() if body.chunking_strategy else None
    await _check_files(svc, body.file_ids, "file_ids")
    stores = _stores(svc)
    doc = await stores.create(
        stores.new_id(),
        name=body.name,
        file_ids=body.file_ids,
        chunking=chunking,
        metadata=body.metadata,
        expires_after=body.expires_after.model_dump() if body.expires_after else None,
    )
    return JSONResponse(await vector_store_object(svc, await _store_or_404(svc, doc["id"])))


async def retrieve_store(request: Request) -> JSONResponse:
    svc = services(request)
    return JSONResponse(await vector_store_object(svc, await _store_or_404(svc, request.path_params["vs_id"])))


async def modify_store(request: Request) -> JSONResponse:
    svc = services(request)
    store_id = request.path_params["vs_id"]
    await _store_or_404(svc, store_id)
    body = await parse_body(request, ModifyVectorStore)
    changes: dict[str, Any] = {}
    if "name" in body.model_fields_set:
        changes["name"] = body.name
    if "metadata" in body.model_fields_set:
        changes["metadata"] = body.metadata or {}
    if "expires_after" in body.model_fields_set:
        changes["expires_after"] = body.expires_after.model_dump() if body.expires_after else None
        changes["expires_at"] = int(time.time()) + body.expires_after.days * 86400 if body.expires_after else None
    if changes:
        await svc.store.append(store_id, [NewEvent("vector_store.updated", {"id": store_id, **changes})])
    return JSONResponse(await vector_store_object(svc, await _store_or_404(svc, store_id)))


async def delete_store(request: Request) -> JSONResponse:
    svc = services(request)
    store_id = request.path_params["vs_id"]
    await _store_or_404(svc, store_id)
    await svc.store.append(store_id, [NewEvent("vector_store.deleted", {"id": store_id})])
    await _stores(svc).index.drop_store(store_id)
    return JSONResponse({"id": store_id, "object": "vector_store.deleted", "deleted": True})


async def list_stores(request: Request) -> JSONResponse:
    svc = services(request)
    params = list_params(request)
    page = await svc.views.list(
        "vector_store", limit=params.limit, order=params.order, after=params.after, before=params.before
    )
    data = [await vector_store_object(svc, d) for d in page.data]
    return JSONResponse({**page.envelope(), "data": data})


async def create_store_file(request: Request) -> JSONResponse:
    svc = services(request)
    store_id = request.path_params["vs_id"]
    await _store_or_404(svc, store_id)
    body = await parse_body(request, CreateVectorStoreFile)
    await _check_files(svc, [body.file_id], "file_id")
    chunking = body.chunking_strategy.checked() if body.chunking_strategy else None
    obj = await _stores(svc).add_file(store_id, body.file_id, chunking, body.attributes)
    return JSONResponse(obj)


async def _store_file_or_404(svc: Services, store_id: str, file_id: str) -> dict[str, Any]:
    await _store_or_404(svc, store_id)
    doc = await svc.views.get("vector_store_file", f"{store_id}/{file_id}")
    if doc is None:
        raise not_found("vector store file", file_id)
    return doc


async def retrieve_store_file(request: Request) -> JSONResponse:
    svc = services(request)
    p = request.path_params
    return JSONResponse(await _store_file_or_404(svc, p["vs_id"], p["file_id"]))


class UpdateVectorStoreFile(Body):
    attributes: dict[str, str | float | bool] | None = Field(max_length=16)


async def update_store_file(request: Request) -> JSONResponse:
    svc = services(request)
    p = request.path_params
    doc = await _store_file_or_404(svc, p["vs_id"], p["file_id"])
    body = await parse_body(request, UpdateVectorStoreFile)
    attributes = body.attributes or {}
    await svc.store.append(p["vs_id"], [NewEvent("vector_store.file.updated", {**_key(doc), "attributes": attributes})])
    if doc["status"] == "completed":
        await _stores(svc).index.update_attributes(p["vs_id"], p["file_id"], attributes)
    return JSONResponse(await _store_file_or_404(svc, p["vs_id"], p["file_id"]))


def _key(doc: dict[str, Any]) -> dict[str, Any]:
    return {"id": doc["id"], "vector_store_id": doc["vector_store_id"]}


async def store_file_content(request: Request) -> JSONResponse:
    """The parsed text of a file as the store indexed it."""
    from server.retrieval.parse import extract_text

    svc = services(request)
    p = request.path_params
    await _store_file_or_404(svc, p["vs_id"], p["file_id"])
    file = await svc.get_or_404("file", p["file_id"])
    try:
        data = await svc.files.read(p["file_id"])
        if data is None:
            raise FileNotFoundError(p["file_id"])
        text = await anyio.to_thread.run_sync(extract_text, file["filename"], data)
    except Exception as exc:
        raise bad_request(f"The file's content could not be extracted: {exc}") from exc
    return JSONResponse(
        {
            "object": "vector_store.file_content.page",
            "data": [{"type": "text", "text": text}],
            "has_more": False,
            "next_page": None,
        }
    )


async def delete_store_file(request: Request) -> JSONResponse:
    svc = services(request)
    p = request.path_params
    doc = await _store_file_or_404(svc, p["vs_id"], p["file_id"])
    await svc.store.append(p["vs_id"], [NewEvent("vector_store.file.deleted", doc)])
    await _stores(svc).index.remove_file(p["vs_id"], p["file_id"])
    return JSONResponse({"id": p["file_id"], "object": "vector_store.file.deleted", "deleted": True})


async def list_store_files(request: Request) -> JSONResponse:
    svc = services(request)
    store_id = request.path_params["vs_id"]
    await _store_or_404(svc, store_id)
    params = list_params(request)
    status = request.query_params.get("filter")
    if status is not None and status not in ("in_progress", "completed", "failed", "cancelled"):
        raise bad_request(f"Invalid value for 'filter': {status}.", "filter")
    page = await svc.views.list(
        "vector_store_file",
        parent_id=store_id,
        limit=params.limit,
        order=params.order,
        after=f"{store_id}/{params.after}" if params.after else None,
        before=f"{store_id}/{params.before}" if params.before else None,
        status=status,
    )
    return JSONResponse(page.envelope())


async def create_batch(request: Request) -> JSONResponse:
    svc = services(request)
    store_id = request.path_params["vs_id"]
    await _store_or_404(svc, store_id)
    body = await parse_body(request, CreateFileBatch)
    await _check_files(svc, body.file_ids, "file_ids")
    chunking = body.chunking_strategy.checked() if body.chunking_strategy else None
    batch_id = new_id("vsfb_")
    batch = {
        "id": batch_id,
        "object": "vector_store.files_batch",
        "created_at": int(time.time()),
        "vector_store_id": store_id,
        "status": "in_progress",
        "file_ids": body.file_ids,
    }
    await svc.store.append(store_id, [NewEvent("vector_store.file_batch.created", batch)])
    for file_id in body.file_ids:
        await _stores(svc).add_file(store_id, file_id, chunking, body.attributes)
    return JSONResponse(await _batch_object(svc, batch))


async def _batch_object(svc: Services, batch: dict[str, Any]) -> dict[str, Any]:
    counts = {"in_progress": 0, "completed": 0, "failed": 0, "cancelled": 0, "total": 0}
    for file_id in batch["file_ids"]:
        doc = await svc.views.get("vector_store_file", f"{batch['vector_store_id']}/{file_id}")
        if doc is not None:
            counts[doc["status"]] += 1
            counts["total"] += 1
    status = batch["status"]
    if status == "in_progress" and counts["in_progress"] == 0:
        status = "completed"
    return {k: v for k, v in batch.items() if k != "file_ids"} | {"status": status, "file_counts": counts}


async def _batch_or_404(svc: Services, store_id: str, batch_id: str) -> dict[str, Any]:
    await _store_or_404(svc, store_id)
    batch = await svc.views.get("file_batch", batch_id)
    if batch is None or batch["vector_store_id"] != store_id:
        raise not_found("file batch", batch_id)
    return batch


async def retrieve_batch(request: Request) -> JSONResponse:
    svc = services(request)
    p = request.path_params
    return JSONResponse(await _batch_object(svc, await _batch_or_404(svc, p["vs_id"], p["batch_id"])))


async def cancel_batch(request: Request) -> JSONResponse:
    svc = services(request)
    p = request.path_params
    batch = await _batch_or_404(svc, p["vs_id"], p["batch_id"])
    events = []
    for file_id in batch["file_ids"]:
        doc = await svc.views.get("vector_store_file", f"{p['vs_id']}/{file_id}")
        if doc is not None and doc["status"] == "in_progress":
            events.append(NewEvent("vector_store.file.cancelled", {**doc, "status": "cancelled"}))
    events.append(NewEvent("vector_store.file_batch.cancelled", {**batch, "status": "cancelled"}))
    await svc.store.append(p["vs_id"], events)
    return JSONResponse(await _batch_object(svc, await _batch_or_404(svc, p["vs_id"], p["batch_id"])))


async def list_batch_files(request: Request) -> JSONResponse:
    svc = services(request)
    p = request.path_params
    batch = await _batch_or_404(svc, p["vs_id"], p["batch_id"])
    params = list_params(request)
    status = request.query_params.get("filter")
    docs = []
    for file_id in batch["file_ids"]:
        doc = await svc.views.get("vector_store_file", f"{p['vs_id']}/{file_id}")
        if doc is not None and (status is None or doc["status"] == status):
            docs.append(doc)
    if params.order == "desc":
        docs.reverse()
    if params.after:
        ids = [d["id"] for d in docs]
        docs = docs[ids.index(params.after) + 1 :] if params.after in ids else []
    return JSONResponse(Page(docs[: params.limit], has_more=len(docs) > params.limit).envelope())


async def search_store(request: Request) -> JSONResponse:
    svc = services(request)
    store_id = request.path_params["vs_id"]
    await _store_or_404(svc, store_id)
    body = await parse_body(request, SearchRequest)
    query = body.query if isinstance(body.query, str) else " ".join(body.query)
    ranking = body.ranking_options or RankingOptions.model_validate({})
    try:
        hits = await _stores(svc).search(
            [store_id],
            query,
            max_num_results=body.max_num_results,
            score_threshold=ranking.score_threshold,
            filters=body.filters,
            ranker=ranking.ranker,
        )
    except ValueError as exc:  # FilterError included: a malformed filter or ranker is the caller's error
        raise bad_request(str(exc), "filters" if "filter" in type(exc).__name__.lower() else "ranking_options") from exc
    data = [
        {
            "file_id": h.file_id,
            "filename": h.filename,
            "score": float(h.score),
            "attributes": dict(h.attributes),
            "content": [{"type": "text", "text": h.content}],
        }
        for h in hits
    ]
    return JSONResponse(
        {
            "object": "vector_store.search_results.page",
            "search_query": query,
            "data": data,
            "has_more": False,
            "next_page": None,
        }
    )


routes = [
    Route("/v1/vector_stores", create_store, methods=["POST"]),
    Route("/v1/vector_stores", list_stores, methods=["GET"]),
    Route("/v1/vector_stores/{vs_id}", retrieve_store, methods=["GET"]),
    Route("/v1/vector_stores/{vs_id}", modify_store, methods=["POST"]),
    Route("/v1/vector_stores/{vs_id}", delete_store, methods=["DELETE"]),
    Route("/v1/vector_stores/{vs_id}/files", create_store_file, methods=["POST"]),
    Route("/v1/vector_stores/{vs_id}/files", list_store_files, methods=["GET"]),
    Route("/v1/vector_stores/{vs_id}/files/{file_id}", retrieve_store_file, methods=["GET"]),
    Route("/v1/vector_stores/{vs_id}/files/{file_id}", update_store_file, methods=["POST"]),
    Route("/v1/vector_stores/{vs_id}/files/{file_id}", delete_store_file, methods=["DELETE"]),
    Route("/v1/vector_stores/{vs_id}/files/{file_id}/content", store_file_content, methods=["GET"]),
    Route("/v1/vector_stores/{vs_id}/file_batches", create_batch, methods=["POST"]),
    Route("/v1/vector_stores/{vs_id}/file_batches/{batch_id}", retrieve_batch, methods=["GET"]),
    Route("/v1/vector_stores/{vs_id}/file_batches/{batch_id}/cancel", cancel_batch, methods=["POST"]),
    Route("/v1/vector_stores/{vs_id}/file_batches/{batch_id}/files", list_batch_files, methods=["GET"]),
    Route("/v1/vector_stores/{vs_id}/search", search_store, methods=["POST"]),
]
