"""Checks and normalises `tools` and `tool_resources` for assistants, threads and runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from server.errors import bad_request
from server.models.common import CodeInterpreterTool, ToolResources
from server.services import Services

__all__ = ["check_tools", "resolve_tool_resources"]

Setup = Callable[[], Awaitable[None]]


async def _nothing() -> None:
    return None


async def check_tools(svc: Services, tools: Sequence[Any], *, param: str) -> None:
    """Refuse code_interpreter up front where no sandbox can be made (never run code unsandboxed)."""
    if any(isinstance(tool, CodeInterpreterTool) for tool in tools):
        reason = svc.extras.get("sandbox_unavailable")
        if reason:
            raise bad_request(f"The code_interpreter tool is not available on this server: {reason}", param)


async def resolve_tool_resources(
    svc: Services, resources: ToolResources | None, *, owner_id: str
) -> tuple[dict[str, Any] | None, Setup]:
    """The resources as stored, and a setup step to run once the request is known to be valid.

    Files and vector stores must exist. `file_search.vector_stores` asks us to create a
    store on the fly; that happens in the returned setup step so a request refused later
    creates nothing.
    """
    if resources is None:
        return None, _nothing
    out: dict[str, Any] = {}
    setup: Setup = _nothing
    if resources.code_interpreter is not None:
        for i, file_id in enumerate(resources.code_interpreter.file_ids):
            if await svc.views.get("file", file_id) is None:
                raise bad_request(
                    f"No file found with id '{file_id}'.", f"tool_resources.code_interpreter.file_ids[{i}]"
                )
        out["code_interpreter"] = {"file_ids": list(resources.code_interpreter.file_ids)}
    if resources.file_search is not None:
        search = resources.file_search
        ids = list(search.vector_store_ids)
        for i, store_id in enumerate(ids):
            if await svc.views.get("vector_store", store_id) is None:
                raise bad_request(
                    f"No vector store found with id '{store_id}'.", f"tool_resources.file_search.vector_store_ids[{i}]"
                )
        if search.vector_stores:
            if ids:
                raise bad_request(
                    "Provide either 'vector_store_ids' or 'vector_stores', not both.",
                    "tool_resources.file_search",
                )
            stores = svc.extras.get("vector_stores")
            if stores is None:
                raise bad_request("Vector stores are not available on this server.", "tool_resources.file_search")
            spec = search.vector_stores[0]
            for i, file_id in enumerate(spec.file_ids):
                if await svc.views.get("file", file_id) is None:
                    raise bad_request(
                        f"No file found with id '{file_id}'.",
                        f"tool_resources.file_search.vector_stores[0].file_ids[{i}]",
                    )
            new_store: str = stores.new_id()
            ids = [new_store]
            chunking = spec.chunking_strategy.checked() if spec.chunking_strategy else None

            async def setup() -> None:
                await stores.create(new_store, file_ids=spec.file_ids, chunking=chunking, metadata=spec.metadata)

        out["file_search"] = {"vector_store_ids": ids}
    return out, setup
