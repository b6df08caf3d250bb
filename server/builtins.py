"""The built-in tools a run can call: file_search and code_interpreter, wired to their back ends."""

from __future__ import annotations

from typing import Any

from server.runs.engine import ToolResult
from server.services import Services

__all__ = ["Builtins"]


class Builtins:
    """Dispatches a model's built-in tool call to the service that does it."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc

    async def run_tool(self, name: str, arguments: dict[str, Any], run: dict[str, Any], call_index: int) -> ToolResult:
        if name == "file_search":
            stores = self.svc.extras.get("vector_stores")
            if stores is None:
                return ToolResult(
                    {"ranking_options": {"ranker": "auto", "score_threshold": 0.0}, "results": []},
                    "file_search is not available on this server.",
                )
            result: ToolResult = await stores.file_search_tool(arguments, run, call_index)
            return result
        if name == "code_interpreter":
            interpreter = self.svc.extras.get("code_interpreter")
            if interpreter is None:
                return ToolResult(
                    {"outputs": [{"type": "logs", "logs": "code_interpreter is not available."}]},
                    "code_interpreter is not available on this server.",
                )
            result = await interpreter.run(arguments, run)
            return result
        return ToolResult({}, f"Unknown tool {name}.")
