"""Shapes shared by several requests: metadata, tools, tool resources, response formats."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from server.errors import bad_request

__all__ = [
    "ChunkingStrategy",
    "Metadata",
    "Request",
    "ResponseFormat",
    "Tool",
    "ToolResources",
    "dump",
]


class Request(BaseModel):
    """Unknown fields are refused, as OpenAI does ("Unrecognized request argument")."""

    model_config = ConfigDict(extra="forbid")


def _check_metadata(value: dict[str, str] | None) -> dict[str, str] | None:
    if value is None:
        return None
    if len(value) > 16:
        raise ValueError("metadata can have at most 16 key-value pairs")
    for key, item in value.items():
        if len(key) > 64:
            raise ValueError(f"metadata key '{key[:20]}...' is longer than 64 characters")
        if len(item) > 512:
            raise ValueError(f"metadata value for '{key}' is longer than 512 characters")
    return value


Metadata = Annotated[dict[str, str] | None, AfterValidator(_check_metadata)]


class FunctionDefinition(Request):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class RankingOptions(Request):
    ranker: Literal["auto", "default_2024_08_21"] = "auto"
    score_threshold: float = Field(0.0, ge=0.0, le=1.0)


class FileSearchOptions(Request):
    max_num_results: int | None = Field(None, ge=1, le=50)
    ranking_options: RankingOptions | None = None


class CodeInterpreterTool(Request):
    type: Literal["code_interpreter"]


class FileSearchTool(Request):
    type: Literal["file_search"]
    file_search: FileSearchOptions | None = None


class FunctionTool(Request):
    type: Literal["function"]
    function: FunctionDefinition


Tool = Annotated[CodeInterpreterTool | FileSearchTool | FunctionTool, Field(discriminator="type")]


class CodeInterpreterResources(Request):
    file_ids: list[str] = Field(default_factory=list, max_length=20)


class StaticChunking(Request):
    max_chunk_size_tokens: int = Field(800, ge=100, le=4096)
    chunk_overlap_tokens: int = Field(400, ge=0)


class ChunkingStrategy(Request):
    type: Literal["auto", "static"]
    static: StaticChunking | None = None

    def checked(self) -> dict[str, Any]:
        if self.type == "static":
            if self.static is None:
                raise bad_request("static chunking needs 'static'.", "chunking_strategy.static")
            if self.static.chunk_overlap_tokens > self.static.max_chunk_size_tokens // 2:
                raise bad_request(
                    "chunk_overlap_tokens must be at most half of max_chunk_size_tokens.",
                    "chunking_strategy.static.chunk_overlap_tokens",
                )
        return self.model_dump(exclude_none=True)


class VectorStoreSpec(Request):
    """`tool_resources.file_search.vector_stores`: create a store with these files on the fly."""

    file_ids: list[str] = Field(default_factory=list, max_length=10000)
    chunking_strategy: ChunkingStrategy | None = None
    metadata: Metadata = None


class FileSearchResources(Request):
    vector_store_ids: list[str] = Field(default_factory=list, max_length=1)
    vector_stores: list[VectorStoreSpec] | None = Field(None, max_length=1)


class ToolResources(Request):
    code_interpreter: CodeInterpreterResources | None = None
    file_search: FileSearchResources | None = None


class TextFormat(Request):
    type: Literal["text"]


class JsonObjectFormat(Request):
    type: Literal["json_object"]


class JsonSchemaSpec(Request):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class JsonSchemaFormat(Request):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = (
    Literal["auto"] | Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]
)


def dump(value: Any) -> Any:
    """A validated model (or list/dict of them) back to plain JSON, omitting unset optionals."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(value, list):
        return [dump(v) for v in value]
    return value


def tool_json(tool: CodeInterpreterTool | FileSearchTool | FunctionTool) -> dict[str, Any]:
    """A tool as OpenAI returns it: file_search shows its effective options."""
    data: dict[str, Any] = tool.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(tool, FileSearchTool):
        options = tool.file_search or FileSearchOptions.model_validate({})
        ranking = options.ranking_options or RankingOptions.model_validate({})
        data["file_search"] = {
            "max_num_results": options.max_num_results or 20,
            "ranking_options": ranking.model_dump(mode="json"),
        }
    if isinstance(tool, FunctionTool):
        function = data["function"]
        function.setdefault("description", None)
        function.setdefault("parameters", None)
        function.setdefault("strict", False)
    return data
