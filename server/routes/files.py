"""`/v1/files`: upload (multipart, size-limited while streaming), list, retrieve, content, delete.

Bytes are received into local staging, then stored (server/file_store.py: a directory, or
S3-compatible object storage) before the `file.created` event is appended, so an
acknowledged upload survives a crash.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from events.records import NewEvent
from server.errors import APIError, bad_request, not_found
from server.ids import new_id
from server.limits import limited_receive
from server.services import services

__all__ = ["routes"]

UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
_MULTIPART_SLACK = 64 * 1024  # headers and boundaries around the file part


class _TooLarge(Exception):
    pass


def _limited(request: Request, limit: int) -> Request:
    """The request with a body reader that stops at `limit` bytes, before reading it all."""
    return Request(request.scope, limited_receive(request.receive, limit, _TooLarge))


async def upload_file(request: Request) -> JSONResponse:
    svc = services(request)
    limit = svc.settings.max_file_bytes
    too_large = APIError(
        413, f"File is too large: the limit is {limit} bytes (THREADLOG_MAX_FILE_BYTES).", param="file"
    )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + _MULTIPART_SLACK:
        raise too_large
    try:
        form = await _limited(request, limit + _MULTIPART_SLACK).form(max_files=1, max_fields=10)
    except _TooLarge:
        raise too_large from None
    except APIError:
        raise
    except Exception as exc:
        raise bad_request(f"Could not parse the multipart body: {exc}") from exc
    upload = form.get("file")
    purpose = form.get("purpose")
    if not isinstance(upload, UploadFile):
        raise bad_request("Missing required parameter: 'file'.", "file")
    if not isinstance(purpose, str) or purpose not in UPLOAD_PURPOSES:
        raise bad_request(
            f"Invalid value for 'purpose': expected one of {', '.join(UPLOAD_PURPOSES)}, got {purpose!r}.", "purpose"
        )
    expires_at = None
    seconds = form.get("expires_after[seconds]")
    if seconds is not None:
        if not isinstance(seconds, str) or not seconds.isdigit() or not 3600 <= int(seconds) <= 2_592_000:
            raise bad_request("expires_after[seconds] must be between 3600 and 2592000.", "expires_after")
        expires_at = int(time.time()) + int(seconds)
    quota = svc.directory.current().max_file_storage_bytes if svc.directory is not None else None
    room = None if quota is None else quota - await svc.views.total("file", "bytes")
    file_id = new_id("file-")
    svc.files.staging.mkdir(parents=True, exist_ok=True)
    tmp = svc.files.staging / f"{file_id}.part"
    size = 0
    with open(tmp, "wb") as out:
        while chunk := await upload.read(1 << 20):
            size += len(chunk)
            if size > limit or (room is not None and size > room):
                out.close()
                tmp.unlink(missing_ok=True)
                if size > limit:
                    raise too_large
                raise bad_request(
                    f"This upload would take the project's files past its storage limit of {quota} bytes "
                    f"({max(0, room or 0)} bytes left); delete files or ask an admin to raise the limit.",
                    "file",
                    "storage_limit_exceeded",
                )
            out.write(chunk)
        out.flush()
    try:
        await svc.files.save(file_id, tmp)
    finally:
        tmp.unlink(missing_ok=True)
    obj: dict[str, Any] = {
        "id": file_id,
        "object": "file",
        "bytes": size,
        "created_at": int(time.time()),
        "expires_at": expires_at,
        "filename": os.path.basename(upload.filename or "upload"),
        "purpose": purpose,
        "status": "processed",
        "status_details": None,
    }
    await svc.store.append(file_id, [NewEvent("file.created", obj)], expected_version=0)
    return JSONResponse(obj)


async def list_files(request: Request) -> JSONResponse:
    svc = services(request)
    query = request.query_params
    try:
        limit = int(query.get("limit") or 10000)
    except ValueError as exc:
        raise bad_request("Invalid 'limit'.", "limit") from exc
    if not 1 <= limit <= 10000:
        raise bad_request("Invalid 'limit': must be between 1 and 10000.", "limit")
    order = query.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise bad_request("Invalid 'order'.", "order")
    page = await svc.views.list("file", limit=limit, order=order, after=query.get("after") or None)  # type: ignore[arg-type]
    purpose = query.get("purpose")
    data = [f for f in page.data if purpose is None or f["purpose"] == purpose]
    return JSONResponse(
        {
            **page.envelope(),
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    )


async def retrieve_file(request: Request) -> JSONResponse:
    svc = services(request)
    return JSONResponse(await svc.get_or_404("file", request.path_params["file_id"]))


async def file_content(request: Request) -> Response:
    svc = services(request)
    obj = await svc.get_or_404("file", request.path_params["file_id"])
    path = svc.files.local_path(obj["id"])
    if path is not None:
        return FileResponse(path, media_type="application/octet-stream", filename=obj["filename"])
    chunks = svc.files.chunks(obj["id"])
    try:
        first = await anext(chunks)
    except FileNotFoundError:
        raise not_found("file content", obj["id"]) from None
    except StopAsyncIteration:
        first = b""

    async def body() -> AsyncIterator[bytes]:
        yield first
        async for chunk in chunks:
            yield chunk

    headers = {"content-disposition": _attachment(obj["filename"]), "content-length": str(obj["bytes"])}
    return StreamingResponse(body(), media_type="application/octet-stream", headers=headers)


def _attachment(filename: str) -> str:
    """As FileResponse writes it for a local file."""
    from urllib.parse import quote

    quoted = quote(filename)
    if quoted != filename:
        return f"attachment; filename*=utf-8''{quoted}"
    return f'attachment; filename="{filename}"'


async def delete_file(request: Request) -> JSONResponse:
    svc = services(request)
    file_id = request.path_params["file_id"]
    await svc.get_or_404("file", file_id)
    on_delete = svc.extras.get("on_file_deleted")
    if on_delete is not None:
        await on_delete(file_id)
    await svc.store.append(file_id, [NewEvent("file.deleted", {"id": file_id})])
    await svc.files.delete(file_id)
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})


routes = [
    Route("/v1/files", upload_file, methods=["POST"]),
    Route("/v1/files", list_files, methods=["GET"]),
    Route("/v1/files/{file_id}", retrieve_file, methods=["GET"]),
    Route("/v1/files/{file_id}", delete_file, methods=["DELETE"]),
    Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
]
